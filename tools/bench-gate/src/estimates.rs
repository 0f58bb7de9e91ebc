//! Finds and reads the estimates criterion 0.5 wrote for each benchmark. This is the only module
//! that touches the file system; it judges nothing (that is [`crate::decision`]).
//!
//! Layout, as written by criterion-0.5.1 `src/analysis/mod.rs` and `src/analysis/compare.rs`,
//! under the output directory (`$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else the
//! target dir from `cargo metadata` + `/criterion`):
//!
//! ```text
//! <criterion-dir>/<bench id>/new/estimates.json      this run (the working tree), absolute ns
//! <criterion-dir>/<bench id>/<baseline>/estimates.json  the saved baseline (the base ref)
//! <criterion-dir>/<bench id>/change/estimates.json   relative change of this run vs baseline
//! <criterion-dir>/report/ and <group>/report/        HTML only; skipped
//! ```
//!
//! `<bench id>` is criterion's directory name: `group`, `group/function` or
//! `group/function/value`, each part made filename-safe. A bench directory is any directory that
//! holds `change/estimates.json`, so ids of every depth are found. Criterion only writes
//! `change/` when it compared against a baseline, so its presence is what makes a bench judgeable.
//!
//! Relative values are fractions: `0.05` is +5 %. Absolute values are nanoseconds per iteration.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// File name criterion uses for estimates in `new/`, `<baseline>/` and `change/`.
pub(crate) const ESTIMATES_FILE: &str = "estimates.json";
/// Directory criterion writes the relative change into.
const CHANGE_DIR: &str = "change";
/// Directory criterion writes the current run into.
const NEW_DIR: &str = "new";
/// HTML report directories: never hold estimates, can be large.
pub(crate) const REPORT_DIR: &str = "report";

/// A bench's id: its directory relative to the criterion dir, parts joined with `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BenchId(pub String);

impl fmt::Display for BenchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Criterion's confidence interval around a point estimate (`estimate.rs`, `ConfidenceInterval`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ConfidenceInterval {
    /// E.g. `0.95`; criterion's `--confidence-level`.
    pub confidence_level: f64,
    /// Lower end; for a change, a fraction (`0.01` is +1 %).
    pub lower_bound: f64,
    /// Upper end, same unit as `lower_bound`.
    pub upper_bound: f64,
}

/// One statistic with its interval (`estimate.rs`, `Estimate`). `standard_error` is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Estimate {
    /// Bootstrap confidence interval.
    pub confidence_interval: ConfidenceInterval,
    /// The point estimate: ns for absolute files, a fraction for `change/`.
    pub point_estimate: f64,
}

/// `change/estimates.json` (`ChangeEstimates`); only the mean is gated, the median is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ChangeEstimates {
    /// Relative change of the mean time per iteration, head vs baseline.
    pub mean: Estimate,
}

/// `new/` or `<baseline>/estimates.json` (`Estimates`); only the mean is read, because the
/// change file compares means too.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct AbsoluteEstimates {
    /// Mean time per iteration in ns.
    pub mean: Estimate,
}

/// Everything read for one bench: the change (always) and the absolute means (for display).
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Where it was found.
    pub id: BenchId,
    /// Relative change of the mean, head vs baseline.
    pub change: Estimate,
    /// Baseline mean in ns; `None` if `<baseline>/estimates.json` is absent.
    pub base_mean_ns: Option<f64>,
    /// Head mean in ns; `None` if `new/estimates.json` is absent.
    pub head_mean_ns: Option<f64>,
    /// What `change`'s interval is, and so how far it must clear zero to count.
    pub evidence: Evidence,
}

/// Where a change's interval comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// criterion's confidence interval of one base/head comparison: it must exclude zero.
    Confidence,
    /// The [min, max] of the per-round changes of alternating rounds ([`crate::rounds`]): every
    /// round must be past HALF the threshold. A range of three rounds all above zero is a coin
    /// that comes up "slower" three times in eight on identical code; on the idle machine it
    /// flagged a 26 ns bench whose rounds were +1.1 %, +11.1 % and +25.8 %.
    Rounds,
}

/// Why the estimates could not be read. Every variant means "nothing trustworthy to judge".
#[derive(Debug)]
pub enum EstimatesError {
    /// The criterion directory does not exist or is not a directory.
    MissingDir {
        /// The directory asked for.
        path: PathBuf,
    },
    /// The walk found no `change/estimates.json` at all.
    NoEstimates {
        /// The directory walked.
        path: PathBuf,
    },
    /// Reading a directory or file failed.
    Io {
        /// The path being read.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file was not the JSON shape criterion 0.5 writes.
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde_json rejected.
        source: serde_json::Error,
    },
}

impl fmt::Display for EstimatesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingDir { path } => write!(
                f,
                "criterion directory {} does not exist; run the benches first \
                 (scripts/bench-gate does both runs)",
                path.display()
            ),
            Self::NoEstimates { path } => write!(
                f,
                "no */{CHANGE_DIR}/{ESTIMATES_FILE} under {}; criterion writes it only when \
                 the head run compares against a baseline (--baseline / --baseline-lenient), \
                 and the filter may have matched no bench",
                path.display()
            ),
            Self::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Parse { path, source } => write!(
                f,
                "{} is not criterion 0.5 estimates JSON: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for EstimatesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Parse { source, .. } => Some(source),
            Self::MissingDir { .. } | Self::NoEstimates { .. } => None,
        }
    }
}

/// Walks `criterion_dir` and reads every bench that has `change/estimates.json`, sorted by id.
///
/// `baseline` names the directory the absolute base times come from (`base` for
/// `--baseline base`). An empty result is an error ([`EstimatesError::NoEstimates`]): a gate
/// that compared nothing must not pass silently.
pub fn discover(criterion_dir: &Path, baseline: &str) -> Result<Vec<Measured>, EstimatesError> {
    if !criterion_dir.is_dir() {
        return Err(EstimatesError::MissingDir {
            path: criterion_dir.to_owned(),
        });
    }
    let mut found = Vec::new();
    let mut pending = vec![criterion_dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let change_file = dir.join(CHANGE_DIR).join(ESTIMATES_FILE);
        if change_file.is_file() {
            found.push(read_bench(criterion_dir, &dir, &change_file, baseline)?);
        }
        let entries = fs::read_dir(&dir).map_err(|source| io_error(&dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| io_error(&dir, source))?;
            // `file_type` does not follow symlinks, so a link loop cannot trap the walk.
            let file_type = entry
                .file_type()
                .map_err(|source| io_error(&entry.path(), source))?;
            if file_type.is_dir() && entry.file_name() != REPORT_DIR {
                pending.push(entry.path());
            }
        }
    }
    if found.is_empty() {
        return Err(EstimatesError::NoEstimates {
            path: criterion_dir.to_owned(),
        });
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Reads one bench directory: the change file must parse; absent absolute files become `None`.
fn read_bench(
    root: &Path,
    dir: &Path,
    change_file: &Path,
    baseline: &str,
) -> Result<Measured, EstimatesError> {
    let change: ChangeEstimates = read_json(change_file)?;
    let base_mean_ns = read_absolute_mean(&dir.join(baseline).join(ESTIMATES_FILE))?;
    let head_mean_ns = read_absolute_mean(&dir.join(NEW_DIR).join(ESTIMATES_FILE))?;
    Ok(Measured {
        id: bench_id(root, dir),
        change: change.mean,
        base_mean_ns,
        head_mean_ns,
        evidence: Evidence::Confidence,
    })
}

/// The bench id of `dir`: its path below `root`, with `/` between parts on every platform.
pub(crate) fn bench_id(root: &Path, dir: &Path) -> BenchId {
    // `dir` was reached by walking down from `root`, so the prefix is always there; fall back
    // to the full path rather than panic if that ever changes.
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    BenchId(parts.join("/"))
}

/// The mean of an absolute estimates file, or `None` if the file is not there.
pub(crate) fn read_absolute_mean(path: &Path) -> Result<Option<f64>, EstimatesError> {
    if !path.is_file() {
        return Ok(None);
    }
    let estimates: AbsoluteEstimates = read_json(path)?;
    Ok(Some(estimates.mean.point_estimate))
}

/// Reads and parses one JSON file, keeping its path in the error.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EstimatesError> {
    let text = fs::read_to_string(path).map_err(|source| io_error(path, source))?;
    serde_json::from_str(&text).map_err(|source| EstimatesError::Parse {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> EstimatesError {
    EstimatesError::Io {
        path: path.to_owned(),
        source,
    }
}
