//! The Link's exported series that are not a plain counter bumped where the event happens:
//! registered at start, read at scrape time, or recorded once per burst.
//!
//! - [`register`] (at `start`): every labelled counter a dashboard or alert names exists from
//!   the first scrape — `linkcast_link_closes_total{reason}` for every close reason,
//!   `linkcast_link_gaps_total{reason}` for every [`GapReason`], `linkcast_link_connections` and
//!   `linkcast_link_queued_bytes` for every shard, the delivery counters — and the served
//!   certificate's expiry.
//! - Scrape-time gauges: `linkcast_link_queued_bytes{shard}` (bytes in the shard's client socket
//!   queues, already kept in [`ShardStats::queued_bytes`] by the connection drivers) and
//!   `linkcast_link_hubs_connected` (kept by the coordinator) are summed over the Links alive in
//!   the process when `/metrics` is rendered: nothing is added to the delivery path.
//! - [`gaps`]: a session's gap counts by reason, bumped where the shared counters already are.
//! - [`DeliveryClock`]: `linkcast_link_delivery_seconds`, publish (the frame's `ts_micros`,
//!   stamped by the owner hub) → written to client sockets, recorded by the shard loop once per
//!   room message per shard after the burst's direct writes — never per socket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

use linkcast_core::protocol::ClientError;
use linkcast_core::shard_rooms::GapReason;

use super::shard::ShardStats;
use crate::tls::ServerCert;

/// The close reasons a Link counts (`count_close`): every closing refusal without a parameter,
/// and every token refusal.
fn close_reasons() -> impl Iterator<Item = &'static str> {
    use linkcast_core::auth::AuthError;
    use ClientError::*;
    let plain = [
        TooBig, Binary, Protocol, BadUtf8, Flood, SlowConsumer, TooManyConnections, Idle, TokenExpired, ShuttingDown,
        AuthRequired, AuthTimeout, Kicked, Banned, TokenRevoked,
    ];
    let auth = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::UnsupportedAlgorithm,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::BadSubject,
        AuthError::RoomNotAllowed,
        AuthError::NotYetValid,
        AuthError::BadIssuer,
        AuthError::BadAudience,
    ];
    plain.into_iter().chain(auth.into_iter().map(AuthFailed)).map(|e| e.label())
}

/// What the scrape-time gauges read: the live Links of this process.
struct Watched {
    shards: Vec<Weak<ShardStats>>,
    hubs_connected: Weak<AtomicUsize>,
}

static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
static COLLECTOR: Once = Once::new();

/// Registers a starting Link's series (see the module docs).
pub(crate) fn register(stats: &[Arc<ShardStats>], hubs_connected: &Arc<AtomicUsize>, cert: &Arc<ServerCert>) {
    let _ = crate::telemetry::prometheus();
    for reason in close_reasons() {
        metrics::counter!("linkcast_link_closes_total", "reason" => reason).increment(0);
    }
    for reason in GapReason::ALL {
        metrics::counter!("linkcast_link_gaps_total", "reason" => reason.label()).increment(0);
    }
    // Made on a shard's first burst otherwise (`tally.rs`).
    for name in ["linkcast_link_deliveries_total", "linkcast_link_bytes_out_total"] {
        metrics::counter!(name).increment(0);
    }
    for shard in 0..stats.len() {
        metrics::gauge!("linkcast_link_connections", "shard" => shard.to_string()).increment(0.0);
    }
    crate::cert_expiry::export("link", cert);
    WATCHED.lock().unwrap_or_else(|p| p.into_inner()).push(Watched {
        shards: stats.iter().map(Arc::downgrade).collect(),
        hubs_connected: Arc::downgrade(hubs_connected),
    });
    COLLECTOR.call_once(|| {
        let mut shards_seen = 0;
        crate::telemetry::on_scrape(move || {
            let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
            watched.retain(|w| w.hubs_connected.strong_count() > 0);
            let mut queued = vec![0usize; shards_seen];
            let mut hubs = 0;
            for link in watched.iter() {
                hubs += link.hubs_connected.upgrade().map_or(0, |h| h.load(Ordering::Relaxed));
                for (shard, stats) in link.shards.iter().enumerate() {
                    if queued.len() <= shard {
                        queued.resize(shard + 1, 0);
                    }
                    queued[shard] += stats.upgrade().map_or(0, |s| s.queued_bytes.load(Ordering::Relaxed));
                }
            }
            // Shards of Links that stopped read 0 rather than their last value.
            shards_seen = queued.len();
            for (shard, bytes) in queued.iter().enumerate() {
                metrics::gauge!("linkcast_link_queued_bytes", "shard" => shard.to_string()).set(*bytes as f64);
            }
            metrics::gauge!("linkcast_link_hubs_connected").set(hubs as f64);
            true
        });
    });
}

/// Adds a session's gap counts (indexed by [`GapReason::index`]) to `linkcast_link_gaps_total`.
pub(crate) fn gaps(by_reason: &[u32; GapReason::ALL.len()]) {
    for reason in GapReason::ALL {
        let n = by_reason[reason.index()];
        if n > 0 {
            metrics::counter!("linkcast_link_gaps_total", "reason" => reason.label()).increment(n.into());
        }
    }
}

/// Times room messages from their publish to the end of the shard burst that wrote them
/// (`linkcast_link_delivery_seconds`); one per shard thread.
#[derive(Debug)]
pub(crate) struct DeliveryClock {
    histogram: metrics::Histogram,
    /// Publish times (µs) of the room messages pushed in the current burst.
    stamps: Vec<u64>,
}

/// Most messages timed per burst (a burst is at most `MAX_BURST` messages; the bound keeps the
/// buffer fixed whatever a caller does).
const MAX_STAMPS: usize = 256;

impl DeliveryClock {
    /// A clock recording into the process's histogram.
    pub(crate) fn new() -> Self {
        let _ = crate::telemetry::prometheus();
        DeliveryClock { histogram: metrics::histogram!("linkcast_link_delivery_seconds"), stamps: Vec::with_capacity(MAX_STAMPS) }
    }

    /// A room message with publish time `ts_micros` was pushed onto this shard's rings.
    pub(crate) fn pushed(&mut self, ts_micros: u64) {
        if self.stamps.len() < MAX_STAMPS {
            self.stamps.push(ts_micros);
        }
    }

    /// The burst's direct writes are done: records each pushed message's latency. `now` (µs)
    /// is read only when the burst had room messages, so an idle or control-only turn of the
    /// shard loop costs no clock read.
    pub(crate) fn written(&mut self, now: impl FnOnce() -> u64) {
        if self.stamps.is_empty() {
            return;
        }
        let now = now();
        for ts in self.stamps.drain(..) {
            self.histogram.record(now.saturating_sub(ts) as f64 / 1e6);
        }
    }
}
