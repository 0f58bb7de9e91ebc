//! `bench-gate` binary: parses arguments, runs [`bench_gate::decision::gate`] on the criterion
//! directory, prints the table to stdout and exits 0 (pass), 1 (a bench regressed) or 2 (usage
//! error, or nothing to judge; the message goes to stderr). All logic lives in the library;
//! this file owns only the command line and the exit code.
//!
//! Normally called by `scripts/bench-gate` after both criterion runs:
//! `cargo run -q --release -p bench-gate -- --criterion-dir target/criterion --threshold 10`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use bench_gate::decision::{self, GateExit, Threshold};
use bench_gate::table;

const USAGE: &str = "\
usage: bench-gate [--criterion-dir DIR] [--threshold PERCENT] [--baseline NAME | --rounds]

Reads <DIR>/**/change/estimates.json written by `cargo bench -- --baseline NAME` and fails
when a bench's mean got slower by more than PERCENT with its whole confidence interval
above zero.

options:
  --criterion-dir DIR   criterion output directory [default: target/criterion]
  --threshold PERCENT   allowed slowdown of the mean, in percent [default: 10]
  --baseline NAME       baseline directory the absolute base times are read from [default: base]
  --rounds              judge alternating runs instead: <id>/base-<i>/ and <id>/head-<i>/
                        (scripts/bench-gate); a bench's change is its median round's, its
                        interval the rounds' [min, max]
  -h, --help            print this help

exit status: 0 no regression, 1 regression, 2 usage error or no estimates found";

/// Parsed command line.
#[derive(Debug)]
struct Args {
    /// Where criterion wrote its results.
    criterion_dir: PathBuf,
    /// Allowed slowdown.
    threshold: Threshold,
    /// Name given to `--save-baseline` / `--baseline`.
    baseline: String,
    /// Judge `base-<i>`/`head-<i>` rounds (`bench_gate::rounds`) instead of one change file.
    rounds: bool,
}

/// A command line that cannot be run; printed with the usage text, exit 2.
#[derive(Debug)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the command line asked for.
#[derive(Debug)]
enum Command {
    Run(Args),
    Help,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("bench-gate: error: {err}\n\n{USAGE}");
            return ExitCode::from(GateExit::Unusable.code());
        }
    };
    let decided = if args.rounds {
        decision::gate_rounds(&args.criterion_dir, args.threshold)
    } else {
        decision::gate(&args.criterion_dir, &args.baseline, args.threshold)
    };
    match decided {
        Ok(decision) => {
            print!("{}", table::render(&decision));
            ExitCode::from(decision.exit().code())
        }
        Err(err) => {
            eprintln!("bench-gate: error: {err}");
            ExitCode::from(GateExit::Unusable.code())
        }
    }
}

fn parse_args(mut raw: impl Iterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut criterion_dir = PathBuf::from("target/criterion");
    let mut threshold = Threshold::default();
    let mut baseline = String::from("base");
    let mut rounds = false;

    while let Some(arg) = raw.next() {
        let arg = arg
            .into_string()
            .map_err(|bad| UsageError(format!("argument {bad:?} is not UTF-8")))?;
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = |name: &str| -> Result<String, UsageError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => raw
                    .next()
                    .ok_or_else(|| UsageError(format!("{name} needs a value")))?
                    .into_string()
                    .map_err(|bad| UsageError(format!("value {bad:?} of {name} is not UTF-8"))),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--criterion-dir" => criterion_dir = PathBuf::from(value("--criterion-dir")?),
            "--threshold" => {
                let text = value("--threshold")?;
                let percent: f64 = text.trim_end_matches('%').parse().map_err(|_| {
                    UsageError(format!("--threshold {text:?} is not a number of percent"))
                })?;
                threshold = Threshold::from_percent(percent)
                    .map_err(|err| UsageError(format!("--threshold: {err}")))?;
            }
            "--baseline" => baseline = checked_baseline(value("--baseline")?)?,
            "--rounds" if inline.is_none() => rounds = true,
            other => return Err(UsageError(format!("unexpected argument {other:?}"))),
        }
    }
    Ok(Command::Run(Args {
        criterion_dir,
        threshold,
        baseline,
        rounds,
    }))
}

/// A baseline is one directory name that criterion itself does not use for something else.
fn checked_baseline(name: String) -> Result<String, UsageError> {
    let reserved = ["", ".", "..", "new", "change", "report"];
    if reserved.contains(&name.as_str()) || name.contains(['/', '\\']) {
        return Err(UsageError(format!(
            "--baseline {name:?} is not a usable baseline name"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, UsageError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn run_args(args: &[&str]) -> Args {
        match parse(args) {
            Ok(Command::Run(args)) => args,
            other => panic!("{args:?} should parse to a run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_script() {
        let args = run_args(&[]);
        assert_eq!(args.criterion_dir, PathBuf::from("target/criterion"));
        assert_eq!(args.threshold, Threshold::default());
        assert_eq!(args.baseline, "base");
        assert!(!args.rounds);
        assert!(run_args(&["--rounds"]).rounds);
    }

    #[test]
    fn flags_take_separate_or_inline_values() {
        let args = run_args(&[
            "--criterion-dir",
            "/x/criterion",
            "--threshold=5%",
            "--baseline",
            "b",
        ]);
        assert_eq!(args.criterion_dir, PathBuf::from("/x/criterion"));
        assert_eq!(args.threshold.percent(), 5.0);
        assert_eq!(args.baseline, "b");
        assert!(matches!(parse(&["-h"]), Ok(Command::Help)));
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for bad in [
            &["--threshold"][..],
            &["--threshold", "ten"],
            &["--threshold", "-3"],
            &["--baseline", "new"],
            &["--baseline", "a/b"],
            &["--frobnicate"],
            &["target/criterion"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
