//! The gate's judgement: turns each bench's relative change into a [`Verdict`] and the whole run
//! into a [`GateExit`]. Pure: no file system, no clock, no printing; input comes from
//! [`crate::estimates::discover`], output goes to [`crate::table::render`] and `main.rs`.
//!
//! Rules, with `t` the threshold as a fraction and `[lo, hi]` criterion's confidence interval
//! of the change of the mean:
//!
//! | condition                        | verdict     | fails the gate |
//! |----------------------------------|-------------|----------------|
//! | point > t and lo > 0             | `REGRESSED` | yes            |
//! | point < -t and hi < 0            | `faster`    | no             |
//! | abs(point) > t, interval spans 0 | `noise`     | no             |
//! | abs(point) <= t                  | `ok`        | no             |
//!
//! A regression must be both large (over the threshold) and real (the whole interval above
//! zero); either alone is not enough. Comparisons are strict, so a change of exactly `t` is ok.
//! When the interval is the range of alternating rounds rather than a confidence interval
//! ([`Evidence::Rounds`]), "real" is stricter: the whole range must be past `t / 2` (below
//! `-t / 2` for `faster`), since three rounds on the same side of zero happen by chance.

use std::fmt;
use std::path::Path;

use crate::estimates::{self, Estimate, EstimatesError, Evidence, Measured};

/// Threshold used when none is given: +10 % on the mean.
pub const DEFAULT_THRESHOLD_PERCENT: f64 = 10.0;

/// How large a change must be, in either direction, before it counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// Kept as a fraction because criterion's change files are fractions (`0.1` = 10 %).
    fraction: f64,
}

impl Threshold {
    /// A threshold from a percentage such as `10` (for 10 %); must be finite and not negative.
    pub fn from_percent(percent: f64) -> Result<Self, ThresholdError> {
        if percent.is_finite() && percent >= 0.0 {
            Ok(Self {
                fraction: percent / 100.0,
            })
        } else {
            Err(ThresholdError { percent })
        }
    }

    /// The threshold as a fraction, the unit of criterion's change estimates.
    pub fn fraction(self) -> f64 {
        self.fraction
    }

    /// The threshold as a percentage, for display.
    pub fn percent(self) -> f64 {
        self.fraction * 100.0
    }
}

impl Default for Threshold {
    fn default() -> Self {
        Self {
            fraction: DEFAULT_THRESHOLD_PERCENT / 100.0,
        }
    }
}

/// A threshold that is negative, infinite or NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdError {
    /// The rejected percentage.
    pub percent: f64,
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "threshold must be a finite percentage >= 0, got {}",
            self.percent
        )
    }
}

impl std::error::Error for ThresholdError {}

/// What the gate concluded about one bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Change within the threshold (significant or not).
    Ok,
    /// Slower by more than the threshold, interval entirely above zero. Fails the gate.
    Regressed,
    /// Faster by more than the threshold, interval entirely below zero.
    Faster,
    /// Point estimate beyond the threshold but the interval includes zero: not conclusive.
    Noise,
}

impl Verdict {
    /// The label printed in the table; a regression is upper-case so it stands out in CI logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Regressed => "REGRESSED",
            Self::Faster => "faster",
            Self::Noise => "noise",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The process exit status of the gate; `scripts/bench-gate` passes it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateExit {
    /// No bench regressed.
    Pass,
    /// At least one bench regressed.
    Regressed,
    /// Bad arguments, or no estimates to judge: the run proves nothing.
    Unusable,
}

impl GateExit {
    /// The exit code: 0, 1 or 2.
    pub fn code(self) -> u8 {
        match self {
            Self::Pass => 0,
            Self::Regressed => 1,
            Self::Unusable => 2,
        }
    }
}

/// One judged bench.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was read from disk.
    pub measured: Measured,
    /// What the rules made of it.
    pub verdict: Verdict,
}

/// Every judged bench, in id order, and the threshold used.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// One row per bench with a change estimate.
    pub rows: Vec<Row>,
    /// The threshold the verdicts were made with.
    pub threshold: Threshold,
}

impl Decision {
    /// How many rows have `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.rows
            .iter()
            .filter(|row| row.verdict == verdict)
            .count()
    }

    /// [`GateExit::Regressed`] if any bench regressed, else [`GateExit::Pass`].
    pub fn exit(&self) -> GateExit {
        if self.count(Verdict::Regressed) > 0 {
            GateExit::Regressed
        } else {
            GateExit::Pass
        }
    }
}

/// Applies the rules in the module doc to one change-of-the-mean estimate.
pub fn judge(change: &Estimate, evidence: Evidence, threshold: Threshold) -> Verdict {
    let point = change.point_estimate;
    let interval = change.confidence_interval;
    let t = threshold.fraction();
    // How far past zero the whole interval must be for the change to be real.
    let margin = match evidence {
        Evidence::Confidence => 0.0,
        Evidence::Rounds => t / 2.0,
    };
    if point > t {
        if interval.lower_bound > margin {
            Verdict::Regressed
        } else {
            Verdict::Noise
        }
    } else if point < -t {
        if interval.upper_bound < -margin {
            Verdict::Faster
        } else {
            Verdict::Noise
        }
    } else {
        Verdict::Ok
    }
}

/// Judges every bench, keeping their order.
pub fn decide(measured: Vec<Measured>, threshold: Threshold) -> Decision {
    let rows = measured
        .into_iter()
        .map(|measured| {
            let verdict = judge(&measured.change, measured.evidence, threshold);
            Row { measured, verdict }
        })
        .collect();
    Decision { rows, threshold }
}

/// Discovery of alternating rounds ([`crate::rounds`]) plus judgement: `main.rs` with `--rounds`.
pub fn gate_rounds(criterion_dir: &Path, threshold: Threshold) -> Result<Decision, EstimatesError> {
    Ok(decide(crate::rounds::discover(criterion_dir)?, threshold))
}

/// Discovery plus judgement: what `main.rs` runs.
pub fn gate(
    criterion_dir: &Path,
    baseline: &str,
    threshold: Threshold,
) -> Result<Decision, EstimatesError> {
    Ok(decide(
        estimates::discover(criterion_dir, baseline)?,
        threshold,
    ))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::estimates::{BenchId, ConfidenceInterval};

    fn change(point: f64, lower: f64, upper: f64) -> Estimate {
        Estimate {
            confidence_interval: ConfidenceInterval {
                confidence_level: 0.95,
                lower_bound: lower,
                upper_bound: upper,
            },
            point_estimate: point,
        }
    }

    fn measured(id: &str, change: Estimate) -> Measured {
        Measured {
            id: BenchId(id.to_owned()),
            change,
            base_mean_ns: Some(100.0),
            head_mean_ns: Some(100.0 * (1.0 + change.point_estimate)),
            evidence: Evidence::Confidence,
        }
    }

    fn ten_percent() -> Threshold {
        Threshold::from_percent(10.0).expect("10 is a valid percentage")
    }

    #[test]
    fn clear_regression_fails() {
        let c = change(0.25, 0.20, 0.30);
        assert_eq!(judge(&c, Evidence::Confidence, ten_percent()), Verdict::Regressed);
        let decision = decide(vec![measured("frame/decode", c)], ten_percent());
        assert_eq!(decision.exit(), GateExit::Regressed);
        assert_eq!(decision.exit().code(), 1);
    }

    #[test]
    fn noise_over_threshold_passes() {
        // +12 % point estimate, but the interval reaches below zero: not a proven slowdown.
        let c = change(0.12, -0.02, 0.26);
        assert_eq!(judge(&c, Evidence::Confidence, ten_percent()), Verdict::Noise);
        let decision = decide(vec![measured("frame/decode", c)], ten_percent());
        assert_eq!(decision.exit(), GateExit::Pass);
        assert_eq!(decision.exit().code(), 0);
    }

    #[test]
    fn small_significant_change_passes() {
        // Real (+2 %..+6 %) but under the threshold.
        let c = change(0.04, 0.02, 0.06);
        assert_eq!(judge(&c, Evidence::Confidence, ten_percent()), Verdict::Ok);
        assert_eq!(
            decide(vec![measured("a", c)], ten_percent()).exit(),
            GateExit::Pass
        );
    }

    #[test]
    fn improvement_is_faster_and_passes() {
        let c = change(-0.30, -0.35, -0.25);
        assert_eq!(judge(&c, Evidence::Confidence, ten_percent()), Verdict::Faster);
        assert_eq!(
            decide(vec![measured("a", c)], ten_percent()).exit(),
            GateExit::Pass
        );
        // A large but inconclusive speed-up is noise, not faster.
        assert_eq!(
            judge(&change(-0.30, -0.60, 0.01), Evidence::Confidence, ten_percent()),
            Verdict::Noise
        );
    }

    #[test]
    fn boundaries_are_strict() {
        assert_eq!(judge(&change(0.10, 0.05, 0.15), Evidence::Confidence, ten_percent()), Verdict::Ok);
        assert_eq!(
            judge(&change(0.11, 0.0, 0.2), Evidence::Confidence, ten_percent()),
            Verdict::Noise
        );
        assert_eq!(
            judge(&change(-0.10, -0.15, -0.05), Evidence::Confidence, ten_percent()),
            Verdict::Ok
        );
        let zero = Threshold::from_percent(0.0).expect("0 is a valid percentage");
        assert_eq!(
            judge(&change(0.001, 0.0005, 0.002), Evidence::Confidence, zero),
            Verdict::Regressed
        );
    }

    #[test]
    fn one_regression_among_many_fails() {
        let decision = decide(
            vec![
                measured("a", change(-0.30, -0.35, -0.25)),
                measured("b", change(0.12, -0.02, 0.26)),
                measured("c", change(0.15, 0.11, 0.19)),
                measured("d", change(0.01, -0.01, 0.03)),
            ],
            ten_percent(),
        );
        let verdicts: Vec<Verdict> = decision.rows.iter().map(|r| r.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Faster,
                Verdict::Noise,
                Verdict::Regressed,
                Verdict::Ok
            ]
        );
        assert_eq!(decision.count(Verdict::Regressed), 1);
        assert_eq!(decision.exit(), GateExit::Regressed);
    }

    #[test]
    fn invalid_thresholds_are_rejected() {
        assert!(Threshold::from_percent(-1.0).is_err());
        assert!(Threshold::from_percent(f64::NAN).is_err());
        assert!(Threshold::from_percent(f64::INFINITY).is_err());
        assert_eq!(Threshold::default(), ten_percent());
        assert_eq!(GateExit::Unusable.code(), 2);
    }

    /// A scratch directory under the system temp dir, removed on drop (also when a test panics).
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(test: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("bench-gate-test-{}-{test}", std::process::id()));
            // Left over only if a previous process with the same pid was killed mid-test.
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("temp dir is writable");
            Self(path)
        }

        /// Writes `value` as JSON at `relative`, creating parent directories.
        fn write(&self, relative: &str, value: &serde_json::Value) {
            let path = self.0.join(relative);
            let parent = path
                .parent()
                .expect("relative path has a parent inside the scratch dir");
            fs::create_dir_all(parent).expect("temp dir is writable");
            fs::write(&path, value.to_string()).expect("temp dir is writable");
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// One estimate in criterion 0.5's JSON shape (`estimate.rs`, `Estimate`).
    fn estimate_json(point: f64, lower: f64, upper: f64) -> serde_json::Value {
        json!({
            "confidence_interval": {
                "confidence_level": 0.95,
                "lower_bound": lower,
                "upper_bound": upper
            },
            "point_estimate": point,
            "standard_error": (upper - lower) / 4.0
        })
    }

    /// `change/estimates.json`: mean and median, fractions.
    fn change_json(point: f64, lower: f64, upper: f64) -> serde_json::Value {
        json!({
            "mean": estimate_json(point, lower, upper),
            "median": estimate_json(point, lower, upper)
        })
    }

    /// `new/` or `base/estimates.json`: absolute ns, with criterion's other statistics.
    fn absolute_json(mean_ns: f64) -> serde_json::Value {
        let e = estimate_json(mean_ns, mean_ns * 0.99, mean_ns * 1.01);
        let spread = estimate_json(1.0, 0.5, 1.5);
        json!({
            "mean": e,
            "median": e,
            "median_abs_dev": spread,
            "slope": e,
            "std_dev": spread
        })
    }

    #[test]
    fn discovers_tree_and_decides_exit() {
        let dir = ScratchDir::new("tree");
        // Two-level id, full set of files: +20 %, interval above zero.
        dir.write("frame/decode/base/estimates.json", &absolute_json(800.0));
        dir.write("frame/decode/new/estimates.json", &absolute_json(960.0));
        dir.write(
            "frame/decode/change/estimates.json",
            &change_json(0.20, 0.15, 0.25),
        );
        // Three-level id (group/function/value): faster.
        dir.write(
            "ring/push/1024/base/estimates.json",
            &absolute_json(2_000_000.0),
        );
        dir.write(
            "ring/push/1024/new/estimates.json",
            &absolute_json(1_000_000.0),
        );
        dir.write(
            "ring/push/1024/change/estimates.json",
            &change_json(-0.5, -0.55, -0.45),
        );
        // One-level id, baseline file missing: still judged, base shown as unknown.
        dir.write("fanout/new/estimates.json", &absolute_json(50.0));
        dir.write(
            "fanout/change/estimates.json",
            &change_json(0.12, -0.02, 0.26),
        );
        // Never compared (no change/): not a row.
        dir.write("room/join/new/estimates.json", &absolute_json(10.0));
        // HTML report dirs are skipped even if something estimate-shaped sits inside.
        dir.write("report/change/estimates.json", &change_json(9.0, 8.0, 10.0));
        fs::write(dir.0.join("report/index.html"), "<html></html>").expect("writable");

        let decision = gate(&dir.0, "base", ten_percent()).expect("tree has estimates");
        let ids: Vec<&str> = decision
            .rows
            .iter()
            .map(|r| r.measured.id.0.as_str())
            .collect();
        assert_eq!(ids, ["fanout", "frame/decode", "ring/push/1024"]);
        let verdicts: Vec<Verdict> = decision.rows.iter().map(|r| r.verdict).collect();
        assert_eq!(
            verdicts,
            [Verdict::Noise, Verdict::Regressed, Verdict::Faster]
        );

        let frame = &decision.rows[1].measured;
        assert_eq!(frame.base_mean_ns, Some(800.0));
        assert_eq!(frame.head_mean_ns, Some(960.0));
        assert_eq!(frame.change.point_estimate, 0.20);
        assert_eq!(decision.rows[0].measured.base_mean_ns, None);
        assert_eq!(decision.exit(), GateExit::Regressed);

        // Fix the regression on disk: the same tree now passes.
        dir.write(
            "frame/decode/change/estimates.json",
            &change_json(0.03, 0.01, 0.05),
        );
        let decision = gate(&dir.0, "base", ten_percent()).expect("tree has estimates");
        assert_eq!(decision.exit(), GateExit::Pass);

        // A different baseline name reads absolute base times from that directory instead.
        let decision = gate(&dir.0, "main", ten_percent()).expect("tree has estimates");
        assert!(decision
            .rows
            .iter()
            .all(|r| r.measured.base_mean_ns.is_none()));
    }

    #[test]
    fn nothing_to_judge_is_an_error() {
        let dir = ScratchDir::new("empty");
        dir.write("frame/decode/new/estimates.json", &absolute_json(800.0));
        assert!(matches!(
            gate(&dir.0, "base", ten_percent()),
            Err(EstimatesError::NoEstimates { .. })
        ));
        assert!(matches!(
            gate(&dir.0.join("absent"), "base", ten_percent()),
            Err(EstimatesError::MissingDir { .. })
        ));
    }

    #[test]
    fn malformed_change_file_is_an_error() {
        let dir = ScratchDir::new("malformed");
        // What serde_json writes for a NaN point estimate.
        dir.write(
            "a/change/estimates.json",
            &json!({ "mean": { "point_estimate": null } }),
        );
        let err = gate(&dir.0, "base", ten_percent()).expect_err("null is not an estimate");
        assert!(matches!(err, EstimatesError::Parse { .. }));
        assert!(err.to_string().contains("a/change/estimates.json"));
    }
}
