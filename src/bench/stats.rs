//! Latency and throughput recording for `linkcast bench`: HDR histograms, a per-second series,
//! and the compact text form in which worker processes ship them to the parent.
//!
//! A [`Recorder`] holds one whole-run latency histogram (microseconds, 3 significant digits, up to
//! an hour) plus, per wall-clock second, the deliveries seen and a coarser histogram (2 digits)
//! for the plot. Recording is done under a `Mutex` that only a handful of subscriber tasks share
//! ([`ShardedRecorder`] spreads them), so it is uncontended in practice. Merging is exact:
//! [`encode_histogram`] writes every non-empty bucket as (value, count) LEB128 pairs, base64'd,
//! and [`decode_histogram_into`] records them back into a histogram of the same configuration, where
//! each lands in the bucket it came from. (hdrhistogram's own V2 serializer would pull in flate2
//! and nom; this form is as lossless for our use and needs nothing new.)

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use linkcast_core::quantiles::Quantiles;

/// Largest latency recorded (µs); larger values saturate here.
pub(crate) const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A whole-run latency histogram.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds: low 1, high > 2·low, 3 digits")
}

/// A per-second (plot) histogram: 2 significant digits are plenty for a line.
fn new_second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("constant bounds: low 1, high > 2·low, 2 digits")
}

/// Why an encoded histogram could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HistogramCodecError {
    /// Not base64.
    #[error("histogram: bad base64")]
    Base64,
    /// Truncated or overlong varint.
    #[error("histogram: malformed varint data")]
    Varint,
}

/// `hist` as base64 of LEB128 (value delta, count) pairs over its non-empty buckets.
pub(crate) fn encode_histogram(hist: &Histogram<u64>) -> String {
    let mut out = Vec::new();
    let mut previous = 0u64;
    for v in hist.iter_recorded() {
        let value = v.value_iterated_to();
        put_varint(&mut out, value - previous);
        put_varint(&mut out, v.count_at_value());
        previous = value;
    }
    STANDARD.encode(out)
}

/// Adds an [`encode_histogram`] text into `into`.
pub(crate) fn decode_histogram_into(text: &str, into: &mut Histogram<u64>) -> Result<(), HistogramCodecError> {
    let raw = STANDARD.decode(text).map_err(|_| HistogramCodecError::Base64)?;
    let mut rest = raw.as_slice();
    let mut value = 0u64;
    // Each pair consumes at least two bytes, so this loop is bounded by the input length.
    while !rest.is_empty() {
        value = value.checked_add(take_varint(&mut rest)?).ok_or(HistogramCodecError::Varint)?;
        let count = take_varint(&mut rest)?;
        into.saturating_record_n(value, count);
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(rest: &mut &[u8]) -> Result<u64, HistogramCodecError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first().ok_or(HistogramCodecError::Varint)?;
        *rest = tail;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(HistogramCodecError::Varint)
}

/// The report's summary of a latency histogram, in microseconds (all zero when it is empty).
pub(crate) fn quantiles(hist: &Histogram<u64>) -> Quantiles {
    if hist.is_empty() {
        return Quantiles { mean: Some(0.0), ..Quantiles::default() };
    }
    Quantiles::read(hist.len(), hist.max(), Some(hist.mean()), |q| hist.value_at_quantile(q))
}

/// One second of the run.
#[derive(Debug)]
struct Second {
    delivered: u64,
    latency: Histogram<u64>,
}

/// Latencies and deliveries of one set of subscribers.
#[derive(Debug)]
pub(crate) struct Recorder {
    latency: Histogram<u64>,
    /// Unix second → that second's deliveries and latencies (bounded by the run's length).
    seconds: BTreeMap<u64, Second>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { latency: new_histogram(), seconds: BTreeMap::new() }
    }
}

/// A [`Recorder`]'s content in transferable form (worker → parent, JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RecorderDump {
    /// [`encode_histogram`] of the whole-run latencies.
    pub latency: String,
    /// (unix second, deliveries, encoded latencies of that second).
    pub seconds: Vec<(u64, u64, String)>,
}

/// One point of the time series, after merging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds since the first publish.
    pub t: u64,
    /// Deliveries in that second.
    pub delivered: u64,
    /// Median latency (µs) of that second's deliveries.
    pub p50_us: u64,
    /// 99th percentile latency (µs) of that second's deliveries.
    pub p99_us: u64,
}

impl Recorder {
    /// Records one delivery of latency `latency_us` at unix second `now_sec`.
    pub(crate) fn record(&mut self, now_sec: u64, latency_us: u64) {
        let latency_us = latency_us.max(1);
        self.latency.saturating_record(latency_us);
        let second = self
            .seconds
            .entry(now_sec)
            .or_insert_with(|| Second { delivered: 0, latency: new_second_histogram() });
        second.delivered += 1;
        second.latency.saturating_record(latency_us);
    }

    /// Adds `other` into this recorder.
    pub(crate) fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        for (sec, s) in &other.seconds {
            let mine = self.seconds.entry(*sec).or_insert_with(|| Second { delivered: 0, latency: new_second_histogram() });
            mine.delivered += s.delivered;
            let _ = mine.latency.add(&s.latency);
        }
    }

    /// The transferable form.
    pub(crate) fn dump(&self) -> RecorderDump {
        RecorderDump {
            latency: encode_histogram(&self.latency),
            seconds: self.seconds.iter().map(|(sec, s)| (*sec, s.delivered, encode_histogram(&s.latency))).collect(),
        }
    }

    /// Adds a dump into this recorder.
    pub(crate) fn merge_dump(&mut self, dump: &RecorderDump) -> Result<(), HistogramCodecError> {
        decode_histogram_into(&dump.latency, &mut self.latency)?;
        for (sec, delivered, hist) in &dump.seconds {
            let mine = self.seconds.entry(*sec).or_insert_with(|| Second { delivered: 0, latency: new_second_histogram() });
            mine.delivered += delivered;
            decode_histogram_into(hist, &mut mine.latency)?;
        }
        Ok(())
    }

    /// The whole-run latency histogram.
    pub(crate) fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// The per-second series from unix second `start_sec` on.
    pub(crate) fn series(&self, start_sec: u64) -> Vec<SeriesPoint> {
        self.seconds
            .range(start_sec..)
            .map(|(sec, s)| SeriesPoint {
                t: sec - start_sec,
                delivered: s.delivered,
                p50_us: s.latency.value_at_quantile(0.5),
                p99_us: s.latency.value_at_quantile(0.99),
            })
            .collect()
    }
}

/// Recorders shared by many subscriber tasks: task `i` uses shard `i % n`, so locks are rarely
/// contended on a 2-core machine.
#[derive(Debug)]
pub(crate) struct ShardedRecorder {
    shards: Vec<Mutex<Recorder>>,
}

/// Recorder shards per fleet: four per core, enough that the runtime's threads rarely meet on
/// one lock. Not more: every shard starts a per-second histogram (26 KB) each second it
/// records in, kept to the end of the run. With 64 shards, 55 workers at 1 M made 94 MB/s of
/// fresh histograms while a broadcast was delivered: +6 GB over three broadcasts, and a tenth
/// of the machine's CPU zeroing their pages (docs/benchmarks.md).
pub(crate) fn recorder_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get()).saturating_mul(4).clamp(1, 64)
}

impl ShardedRecorder {
    /// `n` shards (at least one).
    pub(crate) fn new(n: usize) -> ShardedRecorder {
        ShardedRecorder { shards: (0..n.max(1)).map(|_| Mutex::new(Recorder::default())).collect() }
    }

    /// Records a delivery for subscriber `index`.
    pub(crate) fn record(&self, index: usize, now_sec: u64, latency_us: u64) {
        let shard = &self.shards[index % self.shards.len()];
        // A poisoned lock only means another task panicked mid-record; the data is still usable.
        let mut recorder = shard.lock().unwrap_or_else(|p| p.into_inner());
        recorder.record(now_sec, latency_us);
    }

    /// All shards merged.
    pub(crate) fn merged(&self) -> Recorder {
        let mut all = Recorder::default();
        for shard in &self.shards {
            let recorder = shard.lock().unwrap_or_else(|p| p.into_inner());
            all.merge(&recorder);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_histogram(text: &str) -> Result<Histogram<u64>, HistogramCodecError> {
        let mut hist = new_histogram();
        decode_histogram_into(text, &mut hist)?;
        Ok(hist)
    }

    #[test]
    fn histograms_round_trip_exactly() {
        let mut h = new_histogram();
        for v in [1u64, 2, 3, 250, 251, 10_000, 1_234_567, MAX_LATENCY_US * 2] {
            h.saturating_record_n(v, v % 7 + 1);
        }
        let back = decode_histogram(&encode_histogram(&h)).expect("decodes");
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q={q}");
        }
        assert!(decode_histogram("!!!").is_err());
        assert!(decode_histogram(&STANDARD.encode([0x80u8])).is_err());
    }

    #[test]
    fn a_per_second_histogram_is_small_and_a_fleet_has_few_shards() {
        // What `recorder_shards`' comment counts on: each shard-second costs this much.
        let bytes = new_second_histogram().distinct_values() * std::mem::size_of::<u64>();
        assert!((20_000..=32_768).contains(&bytes), "{bytes} B per second histogram");
        assert!((1..=64).contains(&recorder_shards()));
    }

    #[test]
    fn recorders_merge_like_one() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        let mut one = Recorder::default();
        for i in 0..1000u64 {
            let (sec, lat) = (100 + i % 3, 10 + i * 13 % 5000);
            if i % 2 == 0 { a.record(sec, lat) } else { b.record(sec, lat) }
            one.record(sec, lat);
        }
        let mut merged = Recorder::default();
        merged.merge_dump(&a.dump()).expect("a");
        merged.merge_dump(&b.dump()).expect("b");
        assert_eq!(quantiles(merged.latency()), quantiles(one.latency()));
        assert_eq!(merged.series(100), one.series(100));
        assert_eq!(merged.series(100).iter().map(|p| p.delivered).sum::<u64>(), 1000);
    }
}
