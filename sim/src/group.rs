//! One room on one Link shard, in aggregate: the real [`ShardRoom`] ring plus the bookkeeping
//! that lets a million members be accounted without one event (or one loop step) per member per
//! message.
//!
//! A real shard gives each connection its own [`Cursor`]. In the model every member of a
//! (shard, room) is served by the same shard worker at the same pace, so they share one cursor:
//! the group reads the ring one frame at a time, and the delivery of that frame to all its
//! members is a single job on the shard (see `world.rs`). What still differs per member is where
//! its stream starts (`live_from`: the first seq it gets live, fixed at its join), so the group
//! keeps:
//!
//! - `active`: members whose `live_from` ≤ `processed_upto` (they count for every further frame);
//! - `waiting`: `(live_from, count)` runs of members not yet reached, sorted — joins arrive in
//!   non-decreasing `live_from` because the hub's seq only grows;
//! - `lost`: seq ranges the shard worker fell off the ring for ([`ReadOutcome::Lagged`]), with a
//!   running total so that "how many seqs in `[a, b]` were lost" is a binary search.
//!
//! From these, a member's outcome at the end of its session is computed lazily: it received every
//! seq in `[live_from, processed_upto]` except the lost ones. The event side adds `active` per
//! committed frame; the member side sums lazily; `world.rs` cross-checks the two totals.
//!
//! [`ShardRoom`]: linkcast_core::fanout::ShardRoom
//! [`Cursor`]: linkcast_core::fanout::Cursor
//! [`ReadOutcome::Lagged`]: linkcast_core::fanout::ReadOutcome::Lagged

use std::collections::VecDeque;

use linkcast_core::fanout::{Cursor, ParkTicket, ReadOutcome, RingLimits, ShardRoom};

/// What the shard worker found when it read the group's next frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Deliver this frame (seq, wire bytes) to the group's members.
    Frame {
        /// Seq.
        seq: u64,
        /// Wire bytes.
        bytes: u64,
    },
    /// The worker fell off the ring: seqs `first..=last` are lost for the active members.
    Lost {
        /// First lost seq.
        first: u64,
        /// Last lost seq.
        last: u64,
        /// Member-seq pairs lost (members active for each lost seq, summed).
        member_seqs: u64,
        /// Bytes of those frames that left the backlog.
        bytes: u64,
    },
    /// Nothing new: the group parked itself in its `ShardRoom`.
    Idle,
}

/// What a frame arriving at the Link did to the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Published before the group existed: none of its members expect it.
    Skipped,
    /// Queued in the ring; the group is already scheduled on its shard.
    Queued,
    /// Queued, and the group was parked: put it on its shard's run queue.
    Woke,
}

/// The group's view of one member session, when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOutcome {
    /// Seqs received live during the session.
    pub delivered: u64,
    /// Seqs lost to ring lag during the session.
    pub lost: u64,
    /// The member's last accounted seq (unchanged if the session received nothing).
    pub last_seq: u64,
}

/// One room on one shard of one Link.
#[derive(Debug)]
pub struct ShardGroup {
    /// Room index (for the run queue and the frame look-ups).
    pub room: u32,
    /// The real ring (items are seqs; sizes are the real frame sizes) and member count.
    shard_room: ShardRoom<u64, ()>,
    /// The shared read position of all members of the group.
    cursor: Cursor,
    /// Members reached by the stream.
    active: u64,
    /// Members not yet reached: `(live_from, count)`, sorted by `live_from`.
    waiting: VecDeque<(u64, u64)>,
    /// Last seq pushed into the ring (frames at or below it are not for this group).
    pushed_upto: u64,
    /// Last seq taken out of the ring (delivered, in delivery, or lost).
    read_upto: u64,
    /// Last seq whose delivery was committed or declared lost.
    processed_upto: u64,
    /// `(first, last, lost_before)`: lost ranges in order, with the total of earlier ranges.
    lost: Vec<(u64, u64, u64)>,
    /// Sizes of frames still unread, oldest first (to keep the shard backlog in bytes exact).
    unread_bytes: VecDeque<u64>,
    /// True while in the shard's run queue or being delivered.
    pub scheduled: bool,
}

impl ShardGroup {
    /// A new group for `room`, created when the room's seq is `last_seq`: it will carry seqs
    /// after that.
    pub fn new(room: u32, limits: RingLimits, last_seq: u64) -> Self {
        let mut shard_room = ShardRoom::new(limits);
        // The aggregate cursor starts idle: parked, so the first push wakes it.
        shard_room.park((), &mut ParkTicket::default());
        let cursor = shard_room.ring().cursor();
        ShardGroup {
            room,
            shard_room,
            cursor,
            active: 0,
            waiting: VecDeque::new(),
            pushed_upto: last_seq,
            read_upto: last_seq,
            processed_upto: last_seq,
            lost: Vec::new(),
            unread_bytes: VecDeque::new(),
            scheduled: false,
        }
    }

    /// Members on this shard (active + waiting), as the real `ShardRoom` counts them.
    pub fn members(&self) -> usize {
        self.shard_room.members()
    }

    /// Members the stream has reached.
    pub fn active(&self) -> u64 {
        self.active
    }

    /// Last committed seq.
    pub fn processed_upto(&self) -> u64 {
        self.processed_upto
    }

    /// Bytes held by the real ring.
    pub fn ring_bytes(&self) -> usize {
        self.shard_room.ring().bytes()
    }

    /// Adds a member whose live stream starts at `live_from`.
    pub fn join(&mut self, live_from: u64) {
        let _ = self.shard_room.join();
        debug_assert!(live_from > self.processed_upto, "a new member is never behind the stream");
        match self.waiting.back_mut() {
            Some((from, count)) if *from == live_from => *count += 1,
            _ => {
                debug_assert!(self.waiting.back().is_none_or(|(from, _)| *from < live_from));
                self.waiting.push_back((live_from, 1));
            }
        }
    }

    /// Ends a member's session; returns what it got. The caller frees the group when
    /// [`ShardGroup::members`] drops to 0.
    pub fn leave(&mut self, live_from: u64, last_seq: u64) -> SessionOutcome {
        let _ = self.shard_room.leave();
        if live_from <= self.processed_upto {
            self.active -= 1;
            let lost = self.lost_between(live_from, self.processed_upto);
            let span = self.processed_upto - live_from + 1;
            SessionOutcome { delivered: span - lost, lost, last_seq: self.processed_upto }
        } else {
            if let Ok(at) = self.waiting.binary_search_by_key(&live_from, |&(from, _)| from) {
                self.waiting[at].1 -= 1;
                if self.waiting[at].1 == 0 {
                    let _ = self.waiting.remove(at);
                }
            }
            SessionOutcome { delivered: 0, lost: 0, last_seq }
        }
    }

    /// What a member's session would yield if it ended now (end-of-run accounting, no mutation).
    pub fn peek_session(&self, live_from: u64, last_seq: u64) -> SessionOutcome {
        if live_from <= self.processed_upto {
            let lost = self.lost_between(live_from, self.processed_upto);
            let span = self.processed_upto - live_from + 1;
            SessionOutcome { delivered: span - lost, lost, last_seq: self.processed_upto }
        } else {
            SessionOutcome { delivered: 0, lost: 0, last_seq }
        }
    }

    /// A frame reached the Link: pushes it into the ring if it is for this group. `Err(expected)`
    /// if the seq is not the next one (a model bug: the hub must send an interested Link every
    /// seq, in order).
    pub fn push(&mut self, seq: u64, bytes: u64) -> Result<Pushed, u64> {
        if seq <= self.pushed_upto {
            // Published before this group existed: its members start after it.
            return Ok(Pushed::Skipped);
        }
        if seq != self.pushed_upto + 1 {
            return Err(self.pushed_upto + 1);
        }
        self.pushed_upto = seq;
        self.unread_bytes.push_back(bytes);
        let mut wake = Vec::new();
        let _ = self.shard_room.push(seq, bytes as usize, &mut wake);
        Ok(if wake.is_empty() { Pushed::Queued } else { Pushed::Woke })
    }

    /// The shard worker reads the group's next frame (one at a time: each is one delivery job).
    pub fn poll_next(&mut self) -> Next {
        let mut batch = Vec::with_capacity(1);
        match self.shard_room.read(&mut self.cursor, 0, &mut batch) {
            ReadOutcome::Idle => {
                self.shard_room.park((), &mut ParkTicket::default());
                Next::Idle
            }
            ReadOutcome::Lagged { missed } => {
                let first = self.read_upto + 1;
                let last = self.read_upto + missed;
                let mut member_seqs = 0;
                for seq in first..=last {
                    self.activate(seq);
                    member_seqs += self.active;
                }
                let mut bytes = 0;
                for _ in 0..missed {
                    bytes += self.unread_bytes.pop_front().unwrap_or(0);
                }
                let before = self.lost.last().map(|&(a, b, n)| n + (b - a + 1)).unwrap_or(0);
                self.lost.push((first, last, before));
                self.read_upto = last;
                self.processed_upto = last;
                Next::Lost { first, last, member_seqs, bytes }
            }
            ReadOutcome::Read { .. } => {
                // `read` with `Read` appended at least one item (it always reads one).
                let seq = batch[0];
                self.read_upto = seq;
                let bytes = self.unread_bytes.pop_front().unwrap_or(0);
                Next::Frame { seq, bytes }
            }
        }
    }

    /// Members that will receive `seq` (activating those whose stream starts at or before it).
    pub fn activate(&mut self, seq: u64) -> u64 {
        while let Some(&(from, count)) = self.waiting.front() {
            if from > seq {
                break;
            }
            self.active += count;
            let _ = self.waiting.pop_front();
        }
        self.active
    }

    /// Commits the delivery of `seq` to the active members; returns how many got it.
    pub fn commit(&mut self, seq: u64) -> u64 {
        let n = self.activate(seq);
        self.processed_upto = seq;
        n
    }

    /// True if frames are waiting in the ring for this group.
    pub fn has_pending(&self) -> bool {
        self.shard_room.ring().pending(&self.cursor) > 0
    }

    /// The seq the next successful read must return (for the ring-consistency check).
    pub fn expected_next(&self) -> u64 {
        self.read_upto + 1
    }

    /// Bytes of frames pushed but not yet read (leave the shard backlog when the group is freed).
    pub fn unread_bytes(&self) -> u64 {
        self.unread_bytes.iter().sum()
    }

    fn lost_between(&self, lo: u64, hi: u64) -> u64 {
        // Ranges are disjoint and sorted; count the overlap of each with [lo, hi]. Binary search
        // for the first range ending at or after `lo`, then walk (ranges overlapping a session
        // are few; the running totals make the fully-inside ones O(1)).
        let start = self.lost.partition_point(|&(_, last, _)| last < lo);
        let end = self.lost.partition_point(|&(first, _, _)| first <= hi);
        if start >= end {
            return 0;
        }
        let clip = |&(a, b, _): &(u64, u64, u64)| b.min(hi).saturating_sub(a.max(lo)) + 1;
        if end - start == 1 {
            return clip(&self.lost[start]);
        }
        let first = clip(&self.lost[start]);
        let last = clip(&self.lost[end - 1]);
        let (_, _, before_second) = self.lost[start + 1];
        let (_, _, before_last) = self.lost[end - 1];
        first + (before_last - before_second) + last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_get_every_seq_from_their_start_minus_counted_losses() {
        let mut g = ShardGroup::new(0, RingLimits { max_bytes: 1 << 20, max_items: 3 }, 10);
        g.join(11);
        g.join(11);
        assert_eq!(g.push(10, 100), Ok(Pushed::Skipped), "published before the group");
        assert_eq!(g.push(11, 100), Ok(Pushed::Woke), "parked group wakes");
        assert_eq!(g.poll_next(), Next::Frame { seq: 11, bytes: 100 });
        assert_eq!(g.commit(11), 2);
        g.join(13);
        for seq in 12..=17 {
            assert_eq!(g.push(seq, 100), Ok(Pushed::Queued));
        }
        assert_eq!(g.push(19, 1), Err(18));
        // Ring holds 15..=17: 12..=14 are lost; the member starting at 13 loses 13 and 14.
        assert_eq!(g.poll_next(), Next::Lost { first: 12, last: 14, member_seqs: 2 + 3 + 3, bytes: 300 });
        for seq in 15..=17 {
            assert_eq!(g.poll_next(), Next::Frame { seq, bytes: 100 });
            assert_eq!(g.commit(seq), 3);
        }
        assert_eq!(g.poll_next(), Next::Idle);
        assert_eq!(g.leave(11, 10), SessionOutcome { delivered: 4, lost: 3, last_seq: 17 });
        assert_eq!(g.peek_session(13, 12), SessionOutcome { delivered: 3, lost: 2, last_seq: 17 });
        assert_eq!(g.members(), 2);
    }

    #[test]
    fn lost_between_counts_overlaps() {
        let mut g = ShardGroup::new(0, RingLimits::default(), 0);
        g.lost = vec![(2, 3, 0), (6, 8, 2), (10, 10, 5), (20, 24, 6)];
        assert_eq!(g.lost_between(1, 30), 11);
        assert_eq!(g.lost_between(3, 7), 1 + 2);
        assert_eq!(g.lost_between(4, 5), 0);
        assert_eq!(g.lost_between(7, 22), 2 + 1 + 3);
        assert_eq!(g.lost_between(10, 10), 1);
        assert_eq!(g.lost_between(25, 40), 0);
    }
}
