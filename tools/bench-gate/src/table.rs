//! Renders a [`Decision`] as the plain-text table `main.rs` prints: one row per bench with base
//! and head mean time, relative change, confidence interval and verdict, then a summary line.
//! Pure formatting: returns a `String`, prints nothing, reads nothing.
//!
//! ```text
//! bench           base       head       change   CI                  verdict
//! frame/decode    800.00 ns  960.00 ns  +20.00%  [+15.00%, +25.00%]  REGRESSED
//! ```

use std::fmt::Write as _;

use crate::decision::{Decision, Verdict};

/// Column headers, in order.
const HEADERS: [&str; 6] = ["bench", "base", "head", "change", "CI", "verdict"];
/// Spaces between columns.
const GAP: &str = "  ";

/// The full report: header, one line per row, blank line, summary.
pub fn render(decision: &Decision) -> String {
    let cells: Vec<[String; 6]> = decision
        .rows
        .iter()
        .map(|row| {
            let m = &row.measured;
            let ci = m.change.confidence_interval;
            [
                m.id.to_string(),
                format_time(m.base_mean_ns),
                format_time(m.head_mean_ns),
                format_percent(m.change.point_estimate),
                format!(
                    "[{}, {}]",
                    format_percent(ci.lower_bound),
                    format_percent(ci.upper_bound)
                ),
                row.verdict.as_str().to_owned(),
            ]
        })
        .collect();

    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    push_line(&mut out, &HEADERS.map(str::to_owned), &widths);
    for row in &cells {
        push_line(&mut out, row, &widths);
    }
    out.push('\n');
    out.push_str(&summary(decision));
    out.push('\n');
    out
}

/// Mean time per iteration with a unit that keeps 1-3 integer digits; `-` when unknown.
pub fn format_time(ns: Option<f64>) -> String {
    match ns {
        Some(ns) if ns.is_finite() => {
            let (value, unit) = if ns.abs() < 1e3 {
                (ns, "ns")
            } else if ns.abs() < 1e6 {
                (ns / 1e3, "µs")
            } else if ns.abs() < 1e9 {
                (ns / 1e6, "ms")
            } else {
                (ns / 1e9, "s")
            };
            format!("{value:.2} {unit}")
        }
        _ => "-".to_owned(),
    }
}

/// A fraction as a signed percentage: `0.05` → `+5.00%`.
pub fn format_percent(fraction: f64) -> String {
    format!("{:+.2}%", fraction * 100.0)
}

/// One line; the first column (bench id) and the last (verdict) are left-aligned, numbers right.
fn push_line(out: &mut String, cells: &[String; 6], widths: &[usize; 6]) {
    let last = cells.len() - 1;
    let mut line = String::new();
    for (i, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push_str(GAP);
        }
        if i == 0 || i == last {
            // Writing to a String cannot fail.
            let _ = write!(line, "{cell:<width$}");
        } else {
            let _ = write!(line, "{cell:>width$}");
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Counts per verdict and the outcome in words.
fn summary(decision: &Decision) -> String {
    let threshold = decision.threshold.percent();
    let regressed = decision.count(Verdict::Regressed);
    let counts = format!(
        "{} {}: {regressed} regressed, {} faster, {} noise, {} ok (threshold {threshold}%)",
        decision.rows.len(),
        if decision.rows.len() == 1 {
            "bench"
        } else {
            "benches"
        },
        decision.count(Verdict::Faster),
        decision.count(Verdict::Noise),
        decision.count(Verdict::Ok),
    );
    let outcome = if regressed > 0 {
        format!(
            "FAIL: {regressed} {} slower by more than {threshold}% with the whole \
             confidence interval above zero",
            if regressed == 1 { "bench" } else { "benches" }
        )
    } else {
        "PASS: no bench regressed".to_owned()
    };
    format!("{counts}\n{outcome}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{decide, Threshold};
    use crate::estimates::{BenchId, ConfidenceInterval, Estimate, Evidence, Measured};

    #[test]
    fn times_pick_a_readable_unit() {
        assert_eq!(format_time(Some(812.345)), "812.35 ns");
        assert_eq!(format_time(Some(1_500.0)), "1.50 µs");
        assert_eq!(format_time(Some(2_500_000.0)), "2.50 ms");
        assert_eq!(format_time(Some(3e9)), "3.00 s");
        assert_eq!(format_time(None), "-");
        assert_eq!(format_percent(0.05), "+5.00%");
        assert_eq!(format_percent(-0.1234), "-12.34%");
    }

    #[test]
    fn table_lists_rows_and_verdicts() {
        let measured = Measured {
            id: BenchId("frame/decode".to_owned()),
            change: Estimate {
                confidence_interval: ConfidenceInterval {
                    confidence_level: 0.95,
                    lower_bound: 0.15,
                    upper_bound: 0.25,
                },
                point_estimate: 0.20,
            },
            base_mean_ns: Some(800.0),
            head_mean_ns: Some(960.0),
            evidence: Evidence::Confidence,
        };
        let threshold = Threshold::from_percent(10.0).expect("valid percentage");
        let text = render(&decide(vec![measured], threshold));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("bench"));
        assert!(lines[1].starts_with("frame/decode"));
        for needle in [
            "800.00 ns",
            "960.00 ns",
            "+20.00%",
            "[+15.00%, +25.00%]",
            "REGRESSED",
        ] {
            assert!(
                lines[1].contains(needle),
                "{needle:?} missing from {:?}",
                lines[1]
            );
        }
        assert!(text.contains("1 bench: 1 regressed"), "{text}");
        assert!(text.contains("FAIL"));
    }
}
