//! The shard fan-out ring: how one Link shard delivers a room's frames to its members so that a
//! slow client never slows the room.
//!
//! Per room, a shard keeps one [`FanoutRing`] of recent items (usually the WebSocket frame
//! `Bytes` built once per message per Link, principle 2) bounded by bytes and count. A
//! connection keeps only a [`Cursor`] — a position in that ring — never a private copy or queue.
//!
//! - [`FanoutRing::push`] is O(1) whatever the member count (it may evict the oldest items).
//! - [`FanoutRing::read`] hands a connection everything from its cursor on, as a batch of clones
//!   (for `Bytes`, a reference count bump each) ready for one vectored write.
//! - A connection whose cursor fell behind the oldest item gets [`ReadOutcome::Lagged`] with the
//!   number of items it lost; the driver applies the configured [`LagPolicy`] (tell it with a
//!   gap marker and continue from the oldest, or close it). Memory never grows with a slow reader.
//!
//! [`ShardRoom`] adds the wake-up plan on top: members that drained the ring *park*; a push
//! returns the parked members to wake, so a burst of pushes wakes each waiting member once. A
//! member holds a [`ParkTicket`] so it parks once per idle period, and a wake is never lost: a
//! member whose ticket predates the last wake parks again.
//!
//! Sans-IO and single-threaded by design: a shard owns its rings; nothing here locks.

use std::collections::VecDeque;

/// Bounds of one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingLimits {
    /// Most bytes of items kept (the newest item is always kept, even if larger).
    pub max_bytes: usize,
    /// Most items kept.
    pub max_items: usize,
}

impl Default for RingLimits {
    fn default() -> Self {
        RingLimits { max_bytes: 1024 * 1024, max_items: 4096 }
    }
}

/// What a Link does with a connection that fell off the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LagPolicy {
    /// Send a gap marker (what was lost) and continue from the oldest item still held.
    #[default]
    Gap,
    /// Close the connection with a reason; the client reconnects and recovers from history.
    Disconnect,
}

/// A connection's read position in one ring. Only the ring that made it may read with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    next: u64,
}

impl Cursor {
    /// Absolute ring position of the next item this cursor reads.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Moves the cursor forward to `position` (never backwards): items before it are skipped.
    pub fn skip_to(&mut self, position: u64) {
        self.next = self.next.max(position);
    }
}

/// The outcome of one [`FanoutRing::read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum ReadOutcome {
    /// Nothing new.
    Idle,
    /// `count` items totalling `bytes` were appended to the batch.
    Read {
        /// Items read.
        count: usize,
        /// Their bytes.
        bytes: usize,
    },
    /// The cursor had fallen off the ring: `missed` items are gone for this reader. The cursor
    /// now points at the oldest item held; read again to continue.
    Lagged {
        /// Items this reader will never get from the ring.
        missed: u64,
    },
}

/// A byte- and count-bounded ring of recent items with absolute positions.
#[derive(Debug, Clone)]
pub struct FanoutRing<T> {
    items: VecDeque<(T, usize)>,
    /// Absolute position of `items[0]`.
    first: u64,
    bytes: usize,
    /// The limits in 32 bits (a ring of 4 GiB or four billion items is no ring): every room on
    /// every shard holds a copy, a user's personal room among them.
    max_bytes: u32,
    max_items: u32,
}

impl<T: Clone> FanoutRing<T> {
    /// An empty ring.
    pub fn new(limits: RingLimits) -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        FanoutRing {
            items: VecDeque::new(),
            first: 0,
            bytes: 0,
            max_bytes: clamp(limits.max_bytes),
            max_items: clamp(limits.max_items).max(1),
        }
    }

    /// Appends an item of `bytes` bytes; evicts the oldest beyond the limits. Returns its
    /// position. O(1) amortized, independent of how many cursors exist.
    pub fn push(&mut self, item: T, bytes: usize) -> u64 {
        let position = self.tail();
        self.items.push_back((item, bytes));
        self.bytes += bytes;
        while self.items.len() > 1 && (self.bytes > self.max_bytes as usize || self.items.len() > self.max_items as usize) {
            if let Some((_, evicted)) = self.items.pop_front() {
                self.bytes -= evicted;
                self.first += 1;
            }
        }
        position
    }

    /// A cursor that reads only items pushed from now on.
    pub fn cursor(&self) -> Cursor {
        Cursor { next: self.tail() }
    }

    /// A cursor at the oldest item still held.
    pub fn cursor_at_oldest(&self) -> Cursor {
        Cursor { next: self.first }
    }

    /// Position the next pushed item will get.
    pub fn tail(&self) -> u64 {
        self.first + self.items.len() as u64
    }

    /// Position of the oldest item held.
    pub fn head(&self) -> u64 {
        self.first
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items between `cursor` and the tail (including any the cursor already lost).
    pub fn pending(&self, cursor: &Cursor) -> u64 {
        self.tail().saturating_sub(cursor.next)
    }

    /// Appends to `batch` the items from `cursor` on, up to about `max_bytes` (at least one
    /// item), and advances the cursor past them.
    pub fn read(&self, cursor: &mut Cursor, max_bytes: usize, batch: &mut Vec<T>) -> ReadOutcome {
        if cursor.next < self.first {
            let missed = self.first - cursor.next;
            cursor.next = self.first;
            return ReadOutcome::Lagged { missed };
        }
        let start = (cursor.next - self.first) as usize;
        if start >= self.items.len() {
            return ReadOutcome::Idle;
        }
        let mut count = 0;
        let mut bytes = 0;
        for (item, size) in self.items.range(start..) {
            if count > 0 && bytes + size > max_bytes {
                break;
            }
            batch.push(item.clone());
            count += 1;
            bytes += size;
        }
        cursor.next += count as u64;
        ReadOutcome::Read { count, bytes }
    }
}

/// One room on one shard: its ring, its member count and the members waiting to be woken.
///
/// `C` is the driver's connection handle (an index, a waker, …).
#[derive(Debug, Clone)]
pub struct ShardRoom<T, C> {
    ring: FanoutRing<T>,
    members: u32,
    parked: Parked<C>,
    /// Wakes so far: a ticket from before the last wake is no longer in `parked`.
    wakes: u64,
}

/// The members parked on a room. Most rooms on a Link are a user's personal room, with one
/// member: that one is held inline (a list of one cost its room 24 bytes more, and a block of
/// its own); a busy room's list is a `Vec` and keeps its capacity from wake to wake.
#[derive(Debug, Clone)]
enum Parked<C> {
    One(Option<C>),
    Many(Vec<C>),
}

impl<C> Parked<C> {
    fn push(&mut self, conn: C) {
        match self {
            Parked::One(slot) => match slot.take() {
                None => *slot = Some(conn),
                Some(first) => *self = Parked::Many(vec![first, conn]),
            },
            Parked::Many(list) => list.push(conn),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Parked::One(slot) => slot.is_none(),
            Parked::Many(list) => list.is_empty(),
        }
    }

    /// Moves every parked member into `wake`.
    fn drain_into(&mut self, wake: &mut Vec<C>) {
        match self {
            Parked::One(slot) => wake.extend(slot.take()),
            Parked::Many(list) => wake.append(list),
        }
    }
}

/// A member's record of where it parked: in the parked list since the room's wake `w`, stored
/// as `w + 1` (the default, 0: never parked). Eight bytes: every member of every room holds
/// one, and an `Option<u64>` takes sixteen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParkTicket(u64);

impl<T: Clone, C> ShardRoom<T, C> {
    /// An empty room.
    pub fn new(limits: RingLimits) -> Self {
        ShardRoom { ring: FanoutRing::new(limits), members: 0, parked: Parked::One(None), wakes: 0 }
    }

    /// The ring.
    pub fn ring(&self) -> &FanoutRing<T> {
        &self.ring
    }

    /// Members on this shard.
    pub fn members(&self) -> usize {
        self.members as usize
    }

    /// Adds a member; its cursor starts at the tail (live from now).
    pub fn join(&mut self) -> Cursor {
        self.members += 1;
        self.ring.cursor()
    }

    /// Removes a member. Returns true when it was the last one (the driver may drop the room).
    /// A parked handle of the member may still be returned by a later push: drivers ignore
    /// wakes for connections that left.
    pub fn leave(&mut self) -> bool {
        self.members = self.members.saturating_sub(1);
        self.members == 0
    }

    /// Registers a member that read everything and now waits, unless its `ticket` says it is
    /// parked already (since the last wake).
    pub fn park(&mut self, conn: C, ticket: &mut ParkTicket) {
        let now = ParkTicket(self.wakes + 1);
        if *ticket == now {
            return;
        }
        self.parked.push(conn);
        *ticket = now;
    }

    /// Pushes an item and moves every parked member into `wake`.
    pub fn push(&mut self, item: T, bytes: usize, wake: &mut Vec<C>) -> u64 {
        let position = self.ring.push(item, bytes);
        if !self.parked.is_empty() {
            self.wakes += 1;
            self.parked.drain_into(wake);
        }
        position
    }

    /// Reads for a member (see [`FanoutRing::read`]).
    pub fn read(&self, cursor: &mut Cursor, max_bytes: usize, batch: &mut Vec<T>) -> ReadOutcome {
        self.ring.read(cursor, max_bytes, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn limits(max_bytes: usize, max_items: usize) -> RingLimits {
        RingLimits { max_bytes, max_items }
    }

    #[test]
    fn readers_get_everything_in_order_as_shared_bytes() {
        let mut ring = FanoutRing::new(limits(1 << 20, 100));
        let mut a = ring.cursor();
        let mut b = ring.cursor();
        let frames: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("frame-{i}"))).collect();
        for frame in &frames {
            ring.push(frame.clone(), frame.len());
        }
        let mut batch = Vec::new();
        assert!(matches!(ring.read(&mut a, usize::MAX, &mut batch), ReadOutcome::Read { count: 10, .. }));
        assert_eq!(batch, frames);
        // Same buffers, not copies.
        assert_eq!(batch[3].as_ptr(), frames[3].as_ptr());
        assert_eq!(ring.read(&mut a, usize::MAX, &mut batch), ReadOutcome::Idle);
        let mut small = Vec::new();
        assert!(matches!(ring.read(&mut b, 16, &mut small), ReadOutcome::Read { count: 2, .. }));
        assert_eq!(ring.pending(&b), 8);
    }

    #[test]
    fn a_reader_that_falls_off_is_told_how_much_it_lost() {
        let mut ring = FanoutRing::new(limits(1 << 20, 4));
        let mut slow = ring.cursor();
        for i in 0..10u32 {
            ring.push(i, 1);
        }
        assert_eq!(ring.len(), 4);
        let mut batch = Vec::new();
        assert_eq!(ring.read(&mut slow, usize::MAX, &mut batch), ReadOutcome::Lagged { missed: 6 });
        assert!(batch.is_empty());
        assert!(matches!(ring.read(&mut slow, usize::MAX, &mut batch), ReadOutcome::Read { count: 4, .. }));
        assert_eq!(batch, vec![6, 7, 8, 9]);
    }

    #[test]
    fn bytes_bound_keeps_memory_flat_and_keeps_the_newest() {
        let mut ring = FanoutRing::new(limits(1000, 1_000_000));
        for i in 0..10_000u32 {
            ring.push(i, 100);
            assert!(ring.bytes() <= 1000);
        }
        ring.push(99_999, 5000);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.bytes(), 5000);
    }

    #[test]
    fn shard_room_wakes_each_parked_member_once() {
        let mut room: ShardRoom<u32, usize> = ShardRoom::new(RingLimits::default());
        let _c0 = room.join();
        let _c1 = room.join();
        let (mut t0, mut t1) = (ParkTicket::default(), ParkTicket::default());
        room.park(0, &mut t0);
        room.park(0, &mut t0);
        room.park(1, &mut t1);
        let mut wake = Vec::new();
        room.push(1, 1, &mut wake);
        room.push(2, 1, &mut wake);
        assert_eq!(wake, vec![0, 1], "parked once, woken once");
        // Woken members that park again are woken by the next push: no wake is lost.
        room.park(0, &mut t0);
        room.park(0, &mut t0);
        wake.clear();
        room.push(3, 1, &mut wake);
        assert_eq!(wake, vec![0]);
        assert!(!room.leave());
        assert!(room.leave());
    }

    #[test]
    fn a_lone_member_is_parked_inline_and_woken_every_time() {
        let mut room: ShardRoom<u32, usize> = ShardRoom::new(RingLimits::default());
        let _c = room.join();
        let mut ticket = ParkTicket::default();
        let mut wake = Vec::new();
        for round in 0..3 {
            room.park(7, &mut ticket);
            room.park(7, &mut ticket);
            assert!(matches!(room.parked, Parked::One(Some(7))), "round {round}: one member, no list");
            room.push(round, 1, &mut wake);
            room.push(round, 1, &mut wake);
            assert_eq!(wake, vec![7], "round {round}: woken once");
            assert!(room.parked.is_empty());
            wake.clear();
        }
    }

    proptest! {
        /// Any interleaving of pushes and reads: a reader sees a contiguous, ordered suffix of
        /// what was pushed, with lost items counted exactly.
        #[test]
        fn reads_are_ordered_and_losses_are_counted(
            ops in proptest::collection::vec((any::<bool>(), 1usize..50), 1..300),
            max_items in 1usize..20,
        ) {
            let mut ring = FanoutRing::new(limits(200, max_items));
            let mut cursor = ring.cursor();
            let mut next_value = 0u64;
            let mut delivered = 0u64;
            let mut lost = 0u64;
            let mut expected_next = 0u64;
            for (is_push, size) in ops {
                if is_push {
                    ring.push(next_value, size);
                    next_value += 1;
                } else {
                    let mut batch = Vec::new();
                    match ring.read(&mut cursor, size * 4, &mut batch) {
                        ReadOutcome::Lagged { missed } => { lost += missed; expected_next += missed; }
                        ReadOutcome::Read { count, .. } => {
                            prop_assert_eq!(batch.len(), count);
                            for v in batch { prop_assert_eq!(v, expected_next); expected_next += 1; delivered += 1; }
                        }
                        ReadOutcome::Idle => prop_assert_eq!(expected_next, next_value),
                    }
                }
            }
            prop_assert_eq!(delivered + lost + ring.pending(&cursor), next_value);
        }
    }
}
