//! What a run measures while it runs: counters, latency histograms and per-second time series.
//!
//! The world (`world.rs`) feeds this; `report.rs` turns it into the JSON report and `plots.rs`
//! into SVGs. Latencies are recorded in aggregate: one delivery job of `n` members adds
//! [`LATENCY_SPREAD_BUCKETS`] histogram buckets with `record_n`, spreading the `n` deliveries
//! evenly over the job's `[start, end]` interval, instead of `n` separate records.
//!
//! [`LATENCY_SPREAD_BUCKETS`]: crate::config::LATENCY_SPREAD_BUCKETS

use hdrhistogram::Histogram;

use linkcast_core::quantiles::Quantiles;

/// One hour in microseconds: the histogram's range (a latency above it is clamped).
const HIST_MAX_US: u64 = 3_600_000_000;

/// Microsecond latency histogram.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
    max: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            // Bounds are constants that `new_with_bounds` accepts (low ≥ 1, high ≥ 2 × low).
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid constant bounds"),
            max: 0,
        }
    }
}

impl Latency {
    /// Records `count` deliveries that took `us` microseconds.
    pub fn record_n(&mut self, us: u64, count: u64) {
        if count == 0 {
            return;
        }
        let v = us.clamp(1, HIST_MAX_US);
        // Saturating record: the value is clamped into range above, so this cannot fail.
        self.hist.saturating_record_n(v, count);
        self.max = self.max.max(us);
    }

    /// Notes an exact maximum (the last delivery of a job) without a histogram record.
    pub fn note_max(&mut self, us: u64) {
        self.max = self.max.max(us);
    }

    /// Deliveries recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Largest latency seen.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The report's summary: the histogram's quantiles and the exact largest latency seen.
    pub fn quantiles(&self) -> Quantiles {
        Quantiles::read(self.count(), self.max, None, |q| self.hist.value_at_quantile(q))
    }

    /// Adds another histogram's records.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.hist.add(&other.hist);
        self.max = self.max.max(other.max);
    }

    /// `(latency_us, cumulative fraction)` points for a CDF plot, one per ~1% step.
    pub fn cdf(&self) -> Vec<(u64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<(u64, f64)> = Vec::new();
        for i in 0..=200u32 {
            let q = f64::from(i) / 200.0;
            let v = self.hist.value_at_quantile(q);
            points.push((v, q));
        }
        points.push((self.max, 1.0));
        points
    }
}

/// A per-second counter series that grows as virtual time advances.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Value per virtual second.
    pub per_sec: Vec<u64>,
}

impl Series {
    /// Adds `n` at virtual time `t_us`.
    pub fn add(&mut self, t_us: u64, n: u64) {
        let sec = (t_us / 1_000_000) as usize;
        if self.per_sec.len() <= sec {
            self.per_sec.resize(sec + 1, 0);
        }
        self.per_sec[sec] += n;
    }
}

/// Every counter of a run. Field docs say what increments them.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Publishes sequenced by a room.
    pub publishes: u64,
    /// Publishes a room refused (payload too large).
    pub publishes_rejected: u64,
    /// Frames the hub sent to Links (one per interested Link per publish).
    pub hub_sends: u64,
    /// Their bytes.
    pub hub_bytes: u64,
    /// Sends the naive design would make (one per connected member per publish).
    pub naive_sends: u64,
    /// Their bytes.
    pub naive_bytes: u64,
    /// Frames that reached a Link that had died since they were sent.
    pub frames_to_dead_links: u64,
    /// Member deliveries committed by shard jobs (event side).
    pub live_deliveries: u64,
    /// Member deliveries by replay after a join with `since` (event side).
    pub replay_deliveries: u64,
    /// Member-seqs lost to ring lag (event side).
    pub ring_lost: u64,
    /// Member-seqs lost because `since` was older than the history window.
    pub history_lost: u64,
    /// Ring lag events (a group fell off its ring).
    pub lag_events: u64,
    /// Members disconnected by a Link failure or the lag policy.
    pub disconnects: u64,
    /// Successful re-joins after a disconnect.
    pub reconnects: u64,
    /// Connect attempts refused by admission control.
    pub admission_refusals: u64,
    /// Connect attempts that found no Link with room.
    pub no_link_available: u64,
    /// Members that exhausted their attempts.
    pub gave_up: u64,
    /// Joins answered with `Reset` (must stay 0: rooms are never recreated in the model).
    pub resets: u64,
    /// Largest unread bytes on one shard.
    pub peak_shard_backlog_bytes: u64,
    /// Largest bytes held by one (shard, room) ring.
    pub peak_ring_bytes: u64,
    /// First disconnect caused by a failure (virtual µs).
    pub storm_start_us: Option<u64>,
    /// Last re-join of a disconnected member (virtual µs).
    pub storm_end_us: Option<u64>,
}
