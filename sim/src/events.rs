//! The discrete-event queue: what happens next in virtual time.
//!
//! A binary heap of [`SimEvent`]s ordered by `(time, sequence number)`: the sequence number is a
//! counter stamped at scheduling, so two events at the same microsecond always pop in the order
//! they were scheduled. That tie-break, plus the seeded RNG, is what makes a run reproducible
//! byte for byte (a heap alone does not keep insertion order among equals).
//!
//! Only the world (`world.rs`) schedules and pops; inputs from the workload are not put here but
//! merged in by the loop (an input at time t runs before any event at time t).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Something the world must do at a virtual time. Kept small (≤ 32 bytes): a reconnect storm
/// of a million members has that many events in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimEvent {
    /// A room frame reaches a Link from the hub.
    FrameArrive {
        /// Receiving Link.
        link: u32,
        /// The Link's incarnation when the frame was sent (a frame to a dead Link is dropped).
        link_epoch: u32,
        /// Room index.
        room: u32,
        /// Frame wire size.
        bytes: u32,
        /// The frame's seq.
        seq: u64,
    },
    /// A shard finished delivering one frame to all members of one room on it.
    JobDone {
        /// Link.
        link: u32,
        /// Its incarnation when the job started.
        link_epoch: u32,
        /// Shard.
        shard: u32,
    },
    /// A member's connect + join passed admission and reaches its Link.
    Connected {
        /// Member index.
        member: u32,
        /// The member's epoch when it started connecting (stale if it left meanwhile).
        member_epoch: u32,
        /// Link.
        link: u32,
        /// The Link's incarnation at admission.
        link_epoch: u32,
    },
    /// A member (re)tries to connect: after its join op, a backoff, or a refusal.
    Attempt {
        /// Member index.
        member: u32,
        /// Its epoch when the attempt was scheduled.
        member_epoch: u32,
    },
}

#[derive(Debug)]
struct Scheduled {
    t_us: u64,
    seq: u64,
    event: SimEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.t_us, self.seq) == (other.t_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap and we want the earliest `(t, seq)` on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.t_us, other.seq).cmp(&(self.t_us, self.seq))
    }
}

/// Events ordered by `(time, scheduling order)`.
#[derive(Debug, Default)]
pub struct EventQueue {
    heap: BinaryHeap<Scheduled>,
    next_seq: u64,
    peak: usize,
}

impl EventQueue {
    /// An empty queue.
    pub fn new() -> Self {
        EventQueue::default()
    }

    /// Schedules `event` at `t_us`.
    pub fn schedule(&mut self, t_us: u64, event: SimEvent) {
        self.heap.push(Scheduled { t_us, seq: self.next_seq, event });
        self.next_seq += 1;
        self.peak = self.peak.max(self.heap.len());
    }

    /// Time of the next event.
    pub fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|s| s.t_us)
    }

    /// Removes and returns the next event.
    pub fn pop(&mut self) -> Option<(u64, SimEvent)> {
        self.heap.pop().map(|s| (s.t_us, s.event))
    }

    /// Events ever scheduled.
    pub fn scheduled(&self) -> u64 {
        self.next_seq
    }

    /// Largest number of events pending at once.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_scheduling_order() {
        let mut q = EventQueue::new();
        let ev = |member| SimEvent::Attempt { member, member_epoch: 0 };
        q.schedule(10, ev(1));
        q.schedule(5, ev(2));
        q.schedule(10, ev(3));
        q.schedule(5, ev(4));
        let order: Vec<(u64, SimEvent)> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![(5, ev(2)), (5, ev(4)), (10, ev(1)), (10, ev(3))]);
        assert!(std::mem::size_of::<SimEvent>() <= 32);
    }
}
