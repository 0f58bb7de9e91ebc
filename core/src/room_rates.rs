//! Per-room publish rates at the owner hub, and the top-K of them (`GET /v1/top/rooms`,
//! `linkcast top`).
//!
//! Data flow: [`RoomTable`](crate::room_table::RoomTable) keeps one [`PublishRate`] inside each
//! room's slot and calls [`PublishRate::record`] with the publish's `now` when it sequences a
//! message (HTTP, client or store-sequenced publish) — the slot is already looked up for the
//! publish, so the rate costs no extra hash lookup: a division and two integer updates. Reading
//! ([`PublishRate::per_sec`]) happens only when an operator asks: the table walks its rooms and
//! keeps the biggest `k` with [`top_k`] (O(rooms · log k), on the hub task, like `GET /v1/rooms`).
//!
//! The estimate is a sliding window of [`WINDOW_MICROS`] made of two fixed windows (the current
//! one and the one before it): `rate = (previous · (1 − elapsed/W) + current) / W`, the way
//! rate limiters approximate a sliding log. Memory is 16 bytes per owned room, so it is bounded
//! by `hub.max_rooms` with the rooms themselves (no separate map to grow or evict). A room that
//! published nothing for two windows reads 0. No clock here: `now` (micros) is passed in; a
//! `now` earlier than the last one seen (a clock step back) counts into the current window.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Length of one window, micros; the rate is averaged over about this long.
pub const WINDOW_MICROS: u64 = 5_000_000;

/// A room's publish counter over the current and the previous window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishRate {
    /// Index of the current window (`now / WINDOW_MICROS`).
    window: u64,
    /// Messages in the current window.
    current: u32,
    /// Messages in the window before it.
    previous: u32,
}

impl PublishRate {
    /// Counts one message sequenced at `now`.
    #[inline]
    pub fn record(&mut self, now: u64) {
        let window = now / WINDOW_MICROS;
        if window > self.window {
            self.previous = if window == self.window + 1 { self.current } else { 0 };
            self.current = 0;
            self.window = window;
        }
        self.current = self.current.saturating_add(1);
    }

    /// Messages per second at `now`, averaged over the last [`WINDOW_MICROS`].
    pub fn per_sec(&self, now: u64) -> f64 {
        let window = now / WINDOW_MICROS;
        let (current, previous) = match window.checked_sub(self.window) {
            None | Some(0) => (self.current, self.previous),
            Some(1) => (0, self.current),
            Some(_) => (0, 0),
        };
        let elapsed = if window < self.window { 0 } else { now % WINDOW_MICROS };
        let previous_weight = (WINDOW_MICROS - elapsed) as f64 / WINDOW_MICROS as f64;
        (f64::from(previous) * previous_weight + f64::from(current)) * 1e6 / WINDOW_MICROS as f64
    }
}

/// One candidate of [`top_k`]: ordered by rate, then by name (smaller name ranks higher).
#[derive(Debug)]
struct Ranked<T> {
    rate: f64,
    name: String,
    extra: T,
}

impl<T> Ranked<T> {
    /// "Better" is greater: a higher rate, then the smaller name.
    fn rank(&self, other: &Self) -> Ordering {
        self.rate.total_cmp(&other.rate).then_with(|| other.name.cmp(&self.name))
    }
}

impl<T> PartialEq for Ranked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.rank(other) == Ordering::Equal
    }
}
impl<T> Eq for Ranked<T> {}
impl<T> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Ranked<T> {
    /// Reversed, so the `BinaryHeap` (a max-heap) keeps the worst kept candidate on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank(self)
    }
}

/// The `k` entries with the highest rate (ties: by name), biggest first; entries with a rate of
/// 0 (or NaN) are left out. Holds at most `k + 1` candidates at a time; names are copied only
/// for candidates that are kept.
pub fn top_k<'a, T>(entries: impl IntoIterator<Item = (&'a str, f64, T)>, k: usize) -> Vec<(String, f64, T)> {
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Ranked<T>> = BinaryHeap::with_capacity(k + 1);
    for (name, rate, extra) in entries {
        // NaN is not above 0 either.
        if rate.partial_cmp(&0.0) != Some(Ordering::Greater) {
            continue;
        }
        if heap.len() == k {
            let Some(worst) = heap.peek() else { continue };
            let beats = rate.total_cmp(&worst.rate).then_with(|| worst.name.as_str().cmp(name)) == Ordering::Greater;
            if !beats {
                continue;
            }
            heap.pop();
        }
        heap.push(Ranked { rate, name: name.to_owned(), extra });
    }
    // `into_sorted_vec` is ascending by `Ord`, which is reversed: best first.
    heap.into_sorted_vec().into_iter().map(|r| (r.name, r.rate, r.extra)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_steady_rate_reads_as_that_rate() {
        let mut rate = PublishRate::default();
        let start = 1_000 * SEC;
        // 20 msgs/s for 30 s.
        for i in 0..600 {
            rate.record(start + i * SEC / 20);
        }
        let now = start + 30 * SEC;
        let measured = rate.per_sec(now);
        assert!((measured - 20.0).abs() < 1.0, "measured {measured}");
        // Halfway through the next window only the older half still counts…
        let later = rate.per_sec(now + WINDOW_MICROS / 2);
        assert!(later > 0.0 && later < measured, "decays: {later}");
        // … and two windows of silence read 0.
        assert_eq!(rate.per_sec(now + 2 * WINDOW_MICROS), 0.0);
    }

    #[test]
    fn a_burst_counts_then_fades() {
        let mut rate = PublishRate::default();
        let t = 77 * WINDOW_MICROS;
        for _ in 0..50 {
            rate.record(t);
        }
        assert_eq!(rate.per_sec(t), 50.0 * SEC as f64 / WINDOW_MICROS as f64);
        let next_window = rate.per_sec(t + WINDOW_MICROS);
        assert_eq!(next_window, 50.0 * SEC as f64 / WINDOW_MICROS as f64, "the previous window at full weight");
        // A publish after a long silence starts afresh (the old count is not carried over).
        rate.record(t + 10 * WINDOW_MICROS);
        assert_eq!(rate.per_sec(t + 10 * WINDOW_MICROS), SEC as f64 / WINDOW_MICROS as f64);
    }

    #[test]
    fn a_clock_step_back_counts_into_the_current_window() {
        let mut rate = PublishRate::default();
        rate.record(100 * SEC);
        rate.record(10 * SEC);
        assert!(rate.per_sec(10 * SEC) > 0.0);
        assert_eq!(rate.current, 2);
    }

    #[test]
    fn top_k_keeps_the_biggest_rates_first() {
        let rooms = [("a", 1.0, 1u64), ("b", 9.0, 2), ("c", 0.0, 3), ("d", 5.0, 4), ("e", 9.0, 5)];
        let top = top_k(rooms.iter().map(|&(n, r, m)| (n, r, m)), 3);
        assert_eq!(top, vec![("b".to_owned(), 9.0, 2), ("e".to_owned(), 9.0, 5), ("d".to_owned(), 5.0, 4)]);
        assert!(top_k(rooms.iter().map(|&(n, r, m)| (n, r, m)), 0).is_empty());
        assert_eq!(top_k(rooms.iter().map(|&(n, r, m)| (n, r, m)), 10).len(), 4, "rate 0 is left out");
    }

    proptest! {
        #[test]
        fn top_k_equals_sorting_everything(
            rates in proptest::collection::vec(0u32..20, 0..200),
            k in 0usize..20,
        ) {
            let names: Vec<String> = (0..rates.len()).map(|i| format!("room-{i:03}")).collect();
            let entries: Vec<(&str, f64, usize)> =
                rates.iter().enumerate().map(|(i, &r)| (names[i].as_str(), f64::from(r) / 4.0, i)).collect();
            let mut expected: Vec<(String, f64, usize)> =
                entries.iter().filter(|e| e.1 > 0.0).map(|&(n, r, i)| (n.to_owned(), r, i)).collect();
            expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            expected.truncate(k);
            prop_assert_eq!(top_k(entries.iter().copied(), k), expected);
        }

        #[test]
        fn the_rate_never_exceeds_what_was_recorded(
            gaps in proptest::collection::vec(0u64..3 * WINDOW_MICROS, 1..300),
            probe in 0u64..3 * WINDOW_MICROS,
        ) {
            let mut rate = PublishRate::default();
            let mut now = 5 * WINDOW_MICROS;
            for gap in &gaps {
                now += gap;
                rate.record(now);
            }
            let read = rate.per_sec(now + probe);
            // At most the messages of two windows, spread over one.
            let bound = (2 * gaps.len()) as f64 * SEC as f64 / WINDOW_MICROS as f64;
            prop_assert!(read >= 0.0 && read <= bound, "read {} bound {}", read, bound);
            prop_assert!(read > 0.0 || probe >= WINDOW_MICROS, "a message within the last window reads above 0");
        }
    }
}
