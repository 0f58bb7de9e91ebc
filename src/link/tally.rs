//! Hot-path counters of one shard, added to the process-wide metrics once per burst.
//!
//! Bumping the shared `metrics` counters (deliveries, bytes out) per member per message would be
//! two atomic read-modify-writes on cache lines every shard writes. Instead the shard's thread
//! adds to plain cells here ([`delivered`], [`wrote`]) and [`flush`] moves the sums into the
//! counters — the shard loop calls it after each burst of room messages, connection tasks after
//! their own work — so `/metrics` lags by at most one burst.

use std::cell::Cell;

use metrics::Counter;

struct Tally {
    deliveries: Cell<u64>,
    bytes_out: Cell<u64>,
    deliveries_total: Counter,
    bytes_out_total: Counter,
}

thread_local! {
    static TALLY: Tally = Tally {
        deliveries: Cell::new(0),
        bytes_out: Cell::new(0),
        deliveries_total: metrics::counter!("linkcast_link_deliveries_total"),
        bytes_out_total: metrics::counter!("linkcast_link_bytes_out_total"),
    };
}

/// Counts `n` messages delivered to a client.
pub(crate) fn delivered(n: u64) {
    if n > 0 {
        TALLY.with(|t| t.deliveries.set(t.deliveries.get() + n));
    }
}

/// Counts `n` bytes written to client sockets.
pub(crate) fn wrote(n: u64) {
    if n > 0 {
        TALLY.with(|t| t.bytes_out.set(t.bytes_out.get() + n));
    }
}

/// Adds this thread's sums to the metrics.
pub(crate) fn flush() {
    TALLY.with(|t| {
        let deliveries = t.deliveries.replace(0);
        if deliveries > 0 {
            t.deliveries_total.increment(deliveries);
        }
        let bytes = t.bytes_out.replace(0);
        if bytes > 0 {
            t.bytes_out_total.increment(bytes);
        }
    });
}

/// Takes this thread's bytes written not yet added to the metrics (tests).
#[cfg(test)]
pub(crate) fn take_bytes_out() -> u64 {
    TALLY.with(|t| t.bytes_out.replace(0))
}
