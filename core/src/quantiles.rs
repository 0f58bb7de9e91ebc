//! Latency quantiles as reports print them: count, p50, p90, p99, p99.9, max (and a mean where
//! the source keeps one).
//!
//! Owns the one summary shape both load tools report — `linkcast bench` (from its HDR histograms
//! of real deliveries) and the simulator (from its histograms of virtual-time deliveries) — and
//! the list of points read. It holds no samples and knows no histogram type: the caller passes a
//! function answering "value at quantile q", so neither tool's histogram crate enters the core.
//! Pure: no clock, no IO.

use serde::{Deserialize, Serialize};

/// Quantiles of a distribution of latencies, in microseconds. All zero when nothing was measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Values measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean, where the source keeps one (the bench does; the simulator's report has none, and
    /// its JSON then has no `mean` field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
}

impl Quantiles {
    /// Reads the quantiles of a distribution of `count` values with largest `max` from
    /// `value_at(q)`, which is not called when `count` is 0 (then every quantile is 0).
    pub fn read(count: u64, max: u64, mean: Option<f64>, value_at: impl Fn(f64) -> u64) -> Quantiles {
        if count == 0 {
            return Quantiles { count, max, mean, ..Quantiles::default() };
        }
        Quantiles { count, p50: value_at(0.5), p90: value_at(0.9), p99: value_at(0.99), p999: value_at(0.999), max, mean }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_read_in_order_and_an_empty_source_is_not_asked() {
        let q = Quantiles::read(1000, 999, None, |q| (q * 1000.0) as u64);
        assert_eq!((q.p50, q.p90, q.p99, q.p999, q.max), (500, 900, 990, 999, 999));
        let empty = Quantiles::read(0, 0, Some(0.0), |_| panic!("empty sources are not read"));
        assert_eq!(empty, Quantiles { mean: Some(0.0), ..Quantiles::default() });
    }

    #[test]
    fn the_mean_is_in_the_json_only_when_kept() {
        let with = Quantiles::read(1, 7, Some(7.0), |_| 7);
        let text = serde_json::to_string(&with).expect("serializes");
        assert_eq!(text, r#"{"count":1,"p50":7,"p90":7,"p99":7,"p999":7,"max":7,"mean":7.0}"#);
        assert_eq!(serde_json::from_str::<Quantiles>(&text).expect("reads back"), with);
        let without = serde_json::to_string(&Quantiles { mean: None, ..with }).expect("serializes");
        assert_eq!(without, r#"{"count":1,"p50":7,"p90":7,"p99":7,"p999":7,"max":7}"#);
    }
}
