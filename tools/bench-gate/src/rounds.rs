//! Repeated, alternating runs: `scripts/bench-gate` runs the base and the head bench binaries
//! in turn, `rounds` times (base, head, then head, base, …), each run saving its own criterion
//! baseline `base-<i>` / `head-<i>`. This module reads those means and turns each bench's rounds
//! into one [`Measured`] that [`crate::decision`] judges with its usual rules.
//!
//! Per round `i` the change is `head_i / base_i - 1` (the two ran back to back, so slow drifts
//! of a shared machine hit both). The bench's change is the MEDIAN of those per-round changes;
//! its interval is [min, max] over the rounds. So a bench is `REGRESSED` only when the median
//! round is slower by more than the threshold AND every round saw it slower by more than half
//! the threshold ([`Evidence::Rounds`]); one noisy round can neither make nor hide a regression
//! by itself.
//!
//! Layout read (criterion 0.5, `--save-baseline NAME` writes `<bench id>/NAME/estimates.json`):
//! `<criterion-dir>/<bench id>/{base-1,head-1,base-2,head-2,…}/estimates.json`.
//! A bench directory is one holding `base-1/estimates.json`; rounds are read from 1 up while both
//! `base-<i>` and `head-<i>` exist (a bench absent from one side is not judged).

use std::fs;
use std::path::Path;

use crate::estimates::{self, ConfidenceInterval, Estimate, EstimatesError, Evidence, Measured, ESTIMATES_FILE, REPORT_DIR};

/// Baseline name of round `round` (1-based) of `side` (`base` or `head`).
pub fn baseline_name(side: &str, round: usize) -> String {
    format!("{side}-{round}")
}

/// Walks `criterion_dir` and summarizes every bench that has at least one complete round.
/// An empty result is [`EstimatesError::NoEstimates`]: a gate that compared nothing must fail.
pub fn discover(criterion_dir: &Path) -> Result<Vec<Measured>, EstimatesError> {
    if !criterion_dir.is_dir() {
        return Err(EstimatesError::MissingDir { path: criterion_dir.to_owned() });
    }
    let mut found = Vec::new();
    let mut pending = vec![criterion_dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let rounds = read_rounds(&dir)?;
        if let Some(measured) = summarize(estimates::bench_id(criterion_dir, &dir), &rounds) {
            found.push(measured);
        }
        let entries = fs::read_dir(&dir).map_err(|source| estimates::io_error(&dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| estimates::io_error(&dir, source))?;
            let file_type = entry.file_type().map_err(|source| estimates::io_error(&entry.path(), source))?;
            if file_type.is_dir() && entry.file_name() != REPORT_DIR {
                pending.push(entry.path());
            }
        }
    }
    if found.is_empty() {
        return Err(EstimatesError::NoEstimates { path: criterion_dir.to_owned() });
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// `(base mean, head mean)` in ns of each complete round of the bench in `dir`, in order.
fn read_rounds(dir: &Path) -> Result<Vec<(f64, f64)>, EstimatesError> {
    let mut rounds = Vec::new();
    for round in 1.. {
        let mean = |side| estimates::read_absolute_mean(&dir.join(baseline_name(side, round)).join(ESTIMATES_FILE));
        match (mean("base")?, mean("head")?) {
            (Some(base), Some(head)) => rounds.push((base, head)),
            _ => break,
        }
    }
    Ok(rounds)
}

/// One bench's rounds as a [`Measured`]: change = median per-round change, interval = its
/// [min, max], base/head = the median means. `None` without a usable round.
pub fn summarize(id: estimates::BenchId, rounds: &[(f64, f64)]) -> Option<Measured> {
    let mut changes: Vec<f64> = rounds
        .iter()
        .filter(|(base, head)| *base > 0.0 && base.is_finite() && head.is_finite())
        .map(|(base, head)| head / base - 1.0)
        .collect();
    if changes.is_empty() {
        return None;
    }
    changes.sort_by(f64::total_cmp);
    let lower_bound = changes[0];
    let upper_bound = changes[changes.len() - 1];
    let bases: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let heads: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    Some(Measured {
        id,
        change: Estimate {
            // Not a confidence level: the interval is the rounds' range (see the module doc).
            confidence_interval: ConfidenceInterval { confidence_level: 1.0, lower_bound, upper_bound },
            point_estimate: median(changes),
        },
        base_mean_ns: Some(median(bases)),
        head_mean_ns: Some(median(heads)),
        evidence: Evidence::Rounds,
    })
}

/// Median of a non-empty list (mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::decision::{decide, Threshold, Verdict};
    use crate::estimates::BenchId;

    fn verdict(rounds: &[(f64, f64)]) -> Verdict {
        let measured = summarize(BenchId("b".into()), rounds).expect("rounds");
        decide(vec![measured], Threshold::from_percent(10.0).expect("valid")).rows[0].verdict
    }

    #[test]
    fn the_median_round_decides_and_one_outlier_does_not() {
        // Identical code, one round disturbed by a neighbour: the median is ok.
        assert_eq!(verdict(&[(100.0, 101.0), (100.0, 140.0), (100.0, 99.0)]), Verdict::Ok);
        // A real 20 % slowdown seen in every round.
        assert_eq!(verdict(&[(100.0, 121.0), (100.0, 119.0), (100.0, 125.0)]), Verdict::Regressed);
        // Median beyond the threshold but one round faster: not conclusive.
        assert_eq!(verdict(&[(100.0, 121.0), (100.0, 95.0), (100.0, 125.0)]), Verdict::Noise);
        assert_eq!(verdict(&[(100.0, 80.0), (100.0, 82.0)]), Verdict::Faster);
    }

    #[test]
    fn every_round_must_be_past_half_the_threshold() {
        // The false alarm of the idle machine (identical code, a 26 ns bench): median +11.1 %,
        // every round slower, but one by 1.1 %: noise.
        assert_eq!(verdict(&[(26.0, 26.0 * 1.011), (26.0, 26.0 * 1.111), (26.0, 26.0 * 1.258)]), Verdict::Noise);
        // Every round at least 5 % (half of 10 %) slower, median over 10 %: regressed.
        assert_eq!(verdict(&[(100.0, 105.5), (100.0, 112.0), (100.0, 130.0)]), Verdict::Regressed);
        // The same rule for speed-ups.
        assert_eq!(verdict(&[(100.0, 98.0), (100.0, 85.0), (100.0, 80.0)]), Verdict::Noise);
        assert_eq!(verdict(&[(100.0, 94.0), (100.0, 85.0), (100.0, 80.0)]), Verdict::Faster);
    }

    #[test]
    fn summary_reports_medians_and_the_rounds_range() {
        let m = summarize(BenchId("b".into()), &[(100.0, 110.0), (200.0, 180.0), (100.0, 100.0)]).expect("rounds");
        assert_eq!(m.change.point_estimate, 0.0);
        assert!((m.change.confidence_interval.lower_bound + 0.1).abs() < 1e-12);
        assert!((m.change.confidence_interval.upper_bound - 0.1).abs() < 1e-12);
        assert_eq!(m.base_mean_ns, Some(100.0));
        assert_eq!(m.head_mean_ns, Some(110.0));
        assert!(summarize(BenchId("b".into()), &[]).is_none());
    }

    #[test]
    fn discover_reads_complete_rounds_only() {
        let dir = std::env::temp_dir().join(format!("bench-gate-rounds-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let write = |bench: &str, baseline: &str, mean: f64| {
            let path = dir.join(bench).join(baseline);
            fs::create_dir_all(&path).expect("mkdir");
            let estimate = json!({"confidence_interval": {"confidence_level": 0.95, "lower_bound": mean, "upper_bound": mean}, "point_estimate": mean});
            fs::write(path.join(ESTIMATES_FILE), json!({"mean": estimate}).to_string()).expect("write");
        };
        write("g/f", "base-1", 100.0);
        write("g/f", "head-1", 130.0);
        write("g/f", "base-2", 100.0);
        write("g/f", "head-2", 120.0);
        write("g/f", "base-3", 100.0); // round 3 incomplete: ignored
        write("g/only_base", "base-1", 100.0);
        let found = discover(&dir).expect("found");
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, BenchId("g/f".into()));
        assert!((found[0].change.point_estimate - 0.25).abs() < 1e-12);
    }
}
