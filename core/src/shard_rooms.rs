//! One Link shard's rooms: the per-room fan-out rings, the ids the shard hands out and which
//! connection each outstanding request belongs to. It also lends the sessions of the shard what
//! they need for one call and no longer (the read batch; [`SessionOut`]: what the session just
//! called owes the coordinator, and its counters), so an idle connection carries none of it.
//!
//! Data flow: the Link's coordinator turns what the hub sends for a room into [`RingItem`]s —
//! room messages ([`RoomMessage`]: the hub's frame plus the WebSocket frame built once per Link),
//! and two room-wide markers, a [`RingItem::Gap`] (the Link itself missed messages: its hub
//! queue overflowed, or its rejoin after a reconnect found them gone) and a [`RingItem::Reset`]
//! (the room's history was lost: new epoch), plus presence [`RingItem::Notice`]s (counts and
//! join/leave events, no seq). The shard pushes each item once onto the room's
//! ring ([`ShardRooms::push`]); every member reads it from its own cursor through its
//! [`crate::link_session::LinkSession`], which turns markers into `gap` / `reset` messages in order
//! with the room's messages. Markers therefore reach every member of the room on the Link,
//! including members whose socket was full when the marker was pushed.
//!
//! Ids: connection and request ids carry the shard index in their top 8 bits ([`shard_of`]),
//! so the coordinator routes a hub answer to the right shard without a shared table; index
//! [`COORDINATOR_SHARD`] is reserved for the coordinator's own requests (room rejoins).
//!
//! Sans-IO and single-threaded: a shard owns its `ShardRooms`; nothing here locks.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::fanout::{Cursor, ParkTicket, ReadOutcome, RingLimits, ShardRoom};
use crate::frame::Frame;
use crate::link_session::{SessionOut, SessionStats, ToCoordinator};
use crate::room::LostRange;
use crate::sparse_tables::shrink_if_sparse;

/// Bits of an id below the shard index.
const SHARD_SHIFT: u32 = 56;

/// The "shard index" of ids issued by the Link's coordinator (room rejoins after a reconnect).
pub const COORDINATOR_SHARD: usize = 255;

/// Ring bytes charged for a marker (it holds no payload).
const MARKER_BYTES: usize = 64;

/// Set in connection ids only ([`ShardRooms::new_conn_id`]): a request id never has it (its
/// counter stays far below 2^55), so a request id never reads as a connection's.
const CONN_BIT: u64 = 1 << 55;

/// Bits of a connection id that hold its slot on the shard.
const SLOT_BITS: u32 = 24;

/// Bits of a connection id that count the shard's connections: those between the slot and
/// [`CONN_BIT`].
const COUNT_BITS: u32 = CONN_BIT.trailing_zeros() - SLOT_BITS;

/// Most connection slots a shard hands out (16.7 M: far above what one shard can hold).
pub const MAX_CONN_SLOTS: u32 = 1 << SLOT_BITS;

/// The slot a connection id names on its shard (`None` for a request id): its driver finds the
/// connection by index, with no table lookup.
pub fn conn_slot(id: u64) -> Option<u32> {
    (id & CONN_BIT != 0).then_some((id & u64::from(MAX_CONN_SLOTS - 1)) as u32)
}

/// The shard that issued connection or request id `id`.
pub fn shard_of(id: u64) -> usize {
    (id >> SHARD_SHIFT) as usize
}

/// The id number `n` of shard `index`.
pub fn make_id(index: usize, n: u64) -> u64 {
    ((index as u64) << SHARD_SHIFT) | (n & ((1 << SHARD_SHIFT) - 1))
}

/// A room message as a shard ring holds it: shared buffers only.
#[derive(Clone, Debug)]
pub struct RoomMessage {
    /// The room seq.
    pub seq: u64,
    /// The room epoch the seq belongs to (0: not known yet to the Link).
    pub epoch: u64,
    /// The complete WebSocket text frame, built once per Link.
    pub ws: Bytes,
    /// The hub's frame, forwarded unchanged to QUIC clients.
    pub frame: Frame,
}

impl RoomMessage {
    /// The message with both buffers copied: one per shard, not one per Link.
    ///
    /// Why: every delivery clones the message's `Bytes` (a reference-count increment, and a
    /// decrement once written). Shared by two shards on two cores, that count's cache line moves
    /// between the cores once per delivery: each shard's CPU per delivery rose by 1.4–2×
    /// (`core/benches/shard_scaling.rs`, three alternated rounds: 2 shards gave 1.05–1.28× the
    /// deliveries/s of one). With a copy per shard (one ~200-byte copy per shard per message,
    /// nothing per member) 2 shards gave 1.73–2.03×, at the CPU per delivery of one.
    pub fn copy_for_shard(&self) -> RoomMessage {
        RoomMessage { seq: self.seq, epoch: self.epoch, ws: Bytes::copy_from_slice(&self.ws), frame: self.frame.copied() }
    }
}

/// One item of a room's ring, in the order the hub's stream put it there.
#[derive(Clone, Debug)]
pub enum RingItem {
    /// A room message.
    Message(RoomMessage),
    /// Every member of the room on this Link missed `lost` (of `epoch`).
    Gap {
        /// The epoch the lost seqs belong to.
        epoch: u64,
        /// What was lost and where delivery continues.
        lost: LostRange,
        /// Why the Link missed it ([`GapReason::HubQueue`], [`GapReason::Outage`] or
        /// [`GapReason::ShardQueue`]).
        reason: GapReason,
    },
    /// The room's history was lost under its members: positions restart at (`epoch`, 0).
    Reset {
        /// The room's new epoch.
        epoch: u64,
        /// Its last seq when the Link learnt of it.
        last_seq: u64,
    },
    /// Presence (no seq): the room's member count (`{"op":"presence",...}`, to every member) or
    /// a user's join/leave (`member_joined` / `member_left`, only to members that joined with
    /// `presence`), in order with the room's messages. Encoded once per Link.
    Notice {
        /// The complete WebSocket text frame.
        ws: Bytes,
        /// The hub's `Presence` / `Member` frame, forwarded unchanged to QUIC clients.
        frame: Frame,
        /// Only for members that asked for join/leave events.
        events_only: bool,
    },
}

/// Why a client was told a `gap` (the `reason` label of `linkcast_link_gaps_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The member fell off its room's ring (a slow reader under `lag_policy = "gap"`).
    Lagging,
    /// Its join or resume asked for seqs the hub no longer holds (outside the history window).
    History,
    /// The hub's queue to this Link overflowed: every member on the Link missed them.
    HubQueue,
    /// The Link lost its hub (or the room moved) and the rejoin could not replay everything.
    Outage,
    /// This shard's inbox was full (`link.shard_queue_bytes`): its members missed these
    /// (`shard_queue.rs`).
    ShardQueue,
}

impl GapReason {
    /// Every reason, in [`GapReason::index`] order.
    pub const ALL: [GapReason; 5] = [GapReason::Lagging, GapReason::History, GapReason::HubQueue, GapReason::Outage, GapReason::ShardQueue];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            GapReason::Lagging => "lagging",
            GapReason::History => "history",
            GapReason::HubQueue => "hub_queue",
            GapReason::Outage => "outage",
            GapReason::ShardQueue => "shard_queue",
        }
    }

    /// Position in [`GapReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl RingItem {
    /// The bytes this item pins in a ring.
    pub fn size(&self) -> usize {
        match self {
            RingItem::Message(d) => d.ws.len() + d.frame.len(),
            RingItem::Gap { .. } | RingItem::Reset { .. } => MARKER_BYTES,
            RingItem::Notice { ws, frame, .. } => ws.len() + frame.len(),
        }
    }
}

/// A shard's rooms, ids and outstanding requests (see the module docs).
#[derive(Debug)]
pub struct ShardRooms {
    index: usize,
    /// Boxed: a hash table keeps up to half its slots empty, and a room (96 bytes) in every
    /// slot made each personal room cost ≈ 260 bytes here; a slot is now 24 bytes. The names are
    /// shared with the members and the coordinator (`join_room`).
    rooms: HashMap<Arc<str>, Box<ShardRoom<RingItem, u64>>>,
    /// Outstanding join and publish request id → connection id.
    requests: HashMap<u64, u64>,
    /// The room's count (a hub `Presence`) that came with a join's answers, kept for right
    /// after its `joined`: by join request, here rather than in every member (most never hold
    /// one, and 8 bytes more put a connection's three rooms in a bigger allocation class).
    counts: HashMap<u64, Frame>,
    next_id: u64,
    /// Connections given an id so far ([`ShardRooms::new_conn_id`]).
    next_conn: u64,
    limits: RingLimits,
    bytes: usize,
    items: usize,
    /// The shard's one read batch: what a member's fill reads off a ring before delivering it.
    /// One per shard, not one per connection: a batch grown by a burst (tens of items) would
    /// otherwise stay allocated in every idle session for its whole life.
    batch: Vec<RingItem>,
    /// What the session being called owes the coordinator, and the sessions' counters (see
    /// [`SessionOut`]).
    pub(crate) session_out: SessionOut,
}

impl ShardRooms {
    /// Shard `index`'s empty rooms, with rings bounded by `limits`.
    pub fn new(index: usize, limits: RingLimits) -> Self {
        ShardRooms {
            index,
            rooms: HashMap::new(),
            requests: HashMap::new(),
            counts: HashMap::new(),
            next_id: 1,
            next_conn: 0,
            limits,
            bytes: 0,
            items: 0,
            batch: Vec::new(),
            session_out: SessionOut::default(),
        }
    }

    /// The next thing the coordinator must do for the session just called. Drain it after every
    /// call into a session: the queue is the shard's, and it carries no connection id.
    pub fn poll_coordinator(&mut self) -> Option<ToCoordinator> {
        self.session_out.to_coordinator.pop_front()
    }

    /// The sessions' counters since the last call.
    pub fn take_session_stats(&mut self) -> SessionStats {
        std::mem::take(&mut self.session_out.stats)
    }

    /// Lends the shard's read batch (empty) to a member's fill; give it back with
    /// [`ShardRooms::return_batch`] (a fill that nests gets a fresh one).
    pub fn take_batch(&mut self) -> Vec<RingItem> {
        std::mem::take(&mut self.batch)
    }

    /// Returns the batch lent by [`ShardRooms::take_batch`], emptied, for the next fill.
    pub fn return_batch(&mut self, mut batch: Vec<RingItem>) {
        batch.clear();
        if batch.capacity() >= self.batch.capacity() {
            self.batch = batch;
        }
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// A fresh id (connection or request) carrying this shard's index.
    pub fn new_id(&mut self) -> u64 {
        let id = make_id(self.index, self.next_id);
        self.next_id += 1;
        id
    }

    /// A fresh connection id for the connection in `slot` (below [`MAX_CONN_SLOTS`]): this
    /// shard's index, a count of connections (31 bits: a slot reused gets another id, and ids
    /// repeat only after two billion connections on one shard) and the slot.
    pub fn new_conn_id(&mut self, slot: u32) -> u64 {
        debug_assert!(slot < MAX_CONN_SLOTS);
        let count = self.next_conn & ((1 << COUNT_BITS) - 1);
        self.next_conn += 1;
        make_id(self.index, CONN_BIT | (count << SLOT_BITS) | u64::from(slot & (MAX_CONN_SLOTS - 1)))
    }

    /// Records that request `request` belongs to connection `conn`.
    pub fn add_request(&mut self, request: u64, conn: u64) {
        self.requests.insert(request, conn);
    }

    /// Forgets a request (answered, or its connection or membership ended), and the count
    /// kept for it.
    pub fn remove_request(&mut self, request: u64) {
        self.requests.remove(&request);
        shrink_if_sparse(&mut self.requests);
        if !self.counts.is_empty() {
            self.counts.remove(&request);
        }
        shrink_if_sparse(&mut self.counts);
    }

    /// Keeps the room's count that came with join `request`'s answers, for after its `joined`.
    pub fn stash_count(&mut self, request: u64, count: Frame) {
        if self.requests.contains_key(&request) {
            self.counts.insert(request, count);
        }
    }

    /// The count kept for join `request`, if one came.
    pub fn take_count(&mut self, request: u64) -> Option<Frame> {
        let count = self.counts.remove(&request);
        shrink_if_sparse(&mut self.counts);
        count
    }

    /// The connection an outstanding request belongs to.
    pub fn conn_of(&self, request: u64) -> Option<u64> {
        self.requests.get(&request).copied()
    }

    /// Outstanding requests.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Adds a member to `room` (creating its ring); the cursor reads from now on. Also returns
    /// the shard's name for the room: members and the coordinator keep that one, not copies.
    pub fn join_room(&mut self, room: &str) -> (Cursor, Arc<str>) {
        let name: Arc<str> = match self.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        let limits = self.limits;
        let cursor = self.rooms.entry(name.clone()).or_insert_with(|| Box::new(ShardRoom::new(limits))).join();
        (cursor, name)
    }

    /// Removes a member; drops the ring with the last one.
    pub fn leave_room(&mut self, room: &str) {
        let last = self.rooms.get_mut(room).is_some_and(|r| r.leave());
        if last {
            if let Some(gone) = self.rooms.remove(room) {
                self.bytes -= gone.ring().bytes();
                self.items -= gone.ring().len();
            }
            shrink_if_sparse(&mut self.rooms);
        }
    }

    /// True when the shard has members in `room`.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Position the next item pushed onto `room`'s ring will get.
    pub fn tail(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|r| r.ring().tail())
    }

    /// Reads for member `conn` (see [`crate::fanout::FanoutRing::read`]); `Idle` for an unknown
    /// room. On `Idle` the member is parked on the room unless its `ticket` says it is already.
    pub fn read(
        &mut self,
        room: &str,
        conn: u64,
        cursor: &mut Cursor,
        max_bytes: usize,
        batch: &mut Vec<RingItem>,
        ticket: &mut ParkTicket,
    ) -> ReadOutcome {
        let Some(r) = self.rooms.get_mut(room) else { return ReadOutcome::Idle };
        let outcome = r.read(cursor, max_bytes, batch);
        if outcome == ReadOutcome::Idle {
            r.park(conn, ticket);
        }
        outcome
    }

    /// True when `cursor` has fallen off `room`'s ring.
    pub fn lagging(&self, room: &str, cursor: &Cursor) -> bool {
        self.rooms.get(room).is_some_and(|r| cursor.position() < r.ring().head())
    }

    /// Pushes `item` once onto `room`'s ring (nothing if the shard has no member there) and adds
    /// the connections parked on it to `woken`.
    pub fn push(&mut self, room: &str, item: RingItem, woken: &mut Vec<u64>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        push_counted(r, item, (&mut self.bytes, &mut self.items), woken);
    }

    /// [`ShardRooms::push`] of a room message, its room read from the message itself (no copy
    /// of the room name or refcount bump on the hot path).
    pub fn push_message(&mut self, message: RoomMessage, woken: &mut Vec<u64>) {
        let Some(r) = self.rooms.get_mut(message.frame.room()) else { return };
        push_counted(r, RingItem::Message(message), (&mut self.bytes, &mut self.items), woken);
    }

    /// Bytes held in this shard's rings.
    pub fn ring_bytes(&self) -> usize {
        self.bytes
    }

    /// Items held in this shard's rings.
    pub fn ring_items(&self) -> usize {
        self.items
    }
}

/// Pushes `item` onto ring `r`, keeping the shard's byte and item totals (`held`) current.
fn push_counted(r: &mut ShardRoom<RingItem, u64>, item: RingItem, held: (&mut usize, &mut usize), woken: &mut Vec<u64>) {
    let (bytes_before, items_before) = (r.ring().bytes(), r.ring().len());
    let size = item.size();
    r.push(item, size, woken);
    *held.0 = *held.0 + r.ring().bytes() - bytes_before;
    *held.1 = *held.1 + r.ring().len() - items_before;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(room: &str, seq: u64) -> RingItem {
        let frame = Frame::message(room, seq, 1, "u", 0, b"x");
        RingItem::Message(RoomMessage { seq, epoch: 1, ws: Bytes::from_static(b"ws"), frame })
    }

    #[test]
    fn tables_give_their_memory_back_once_a_storm_of_members_left() {
        let mut shard = ShardRooms::new(0, RingLimits { max_bytes: 1 << 20, max_items: 16 });
        let mut requests = Vec::new();
        for i in 0..10_000 {
            shard.join_room(&format!("user:u{i}"));
            let request = shard.new_id();
            shard.add_request(request, 7);
            requests.push(request);
        }
        let (rooms, pending) = (shard.rooms.capacity(), shard.requests.capacity());
        for (i, request) in requests.into_iter().enumerate() {
            shard.leave_room(&format!("user:u{i}"));
            shard.remove_request(request);
        }
        assert!(shard.rooms.capacity() < crate::sparse_tables::MIN_CAPACITY, "rooms: {} of a peak of {rooms}", shard.rooms.capacity());
        assert!(shard.requests.capacity() < crate::sparse_tables::MIN_CAPACITY, "requests: {} of a peak of {pending}", shard.requests.capacity());
    }

    #[test]
    fn a_room_fits_the_96_byte_class() {
        // Every connection brings a room of its own (`user:{sub}`) to its shard's table.
        let size = std::mem::size_of::<ShardRoom<RingItem, u64>>();
        assert!(size <= 96, "{size}");
    }

    #[test]
    fn a_copy_for_another_shard_has_the_same_bytes_in_buffers_of_its_own() {
        let frame = Frame::message("r", 7, 1, "alice", 0, b"hello");
        let ws = Bytes::from(b"ws-frame".to_vec());
        let message = RoomMessage { seq: 7, epoch: 3, ws, frame };
        let copy = message.copy_for_shard();
        assert_eq!((copy.seq, copy.epoch, &copy.ws, copy.frame.as_bytes()), (7, 3, &message.ws, message.frame.as_bytes()));
        assert_eq!((copy.frame.room(), copy.frame.sender(), copy.frame.seq(), copy.frame.payload()), ("r", "alice", 7, &b"hello"[..]));
        assert_ne!(copy.ws.as_ptr(), message.ws.as_ptr(), "not the shared buffer");
        assert_ne!(copy.frame.as_bytes().as_ptr(), message.frame.as_bytes().as_ptr(), "not the shared buffer");
    }

    #[test]
    fn ids_name_their_shard_and_requests_route_to_connections() {
        let mut shard = ShardRooms::new(3, RingLimits::default());
        let conn = shard.new_id();
        let request = shard.new_id();
        assert_eq!((shard_of(conn), shard_of(request)), (3, 3));
        assert_ne!(conn, request);
        shard.add_request(request, conn);
        assert_eq!(shard.conn_of(request), Some(conn));
        shard.remove_request(request);
        assert_eq!(shard.conn_of(request), None);
        assert_eq!(shard_of(make_id(COORDINATOR_SHARD, 9)), COORDINATOR_SHARD);
    }

    #[test]
    fn connection_ids_name_their_slot_and_never_a_request_s() {
        let mut shard = ShardRooms::new(200, RingLimits::default());
        let first = shard.new_conn_id(5);
        let again = shard.new_conn_id(5);
        let last = shard.new_conn_id(MAX_CONN_SLOTS - 1);
        assert_eq!((conn_slot(first), conn_slot(again), conn_slot(last)), (Some(5), Some(5), Some(MAX_CONN_SLOTS - 1)));
        assert_ne!(first, again, "a reused slot gets another id");
        assert_eq!((shard_of(first), shard_of(last)), (200, 200));
        for _ in 0..1000 {
            assert_eq!(conn_slot(shard.new_id()), None, "request ids name no slot");
        }
        assert_eq!(conn_slot(make_id(200, (1 << 55) - 1)), None, "the largest request count");
    }

    #[test]
    fn members_of_a_room_share_the_shard_s_name_for_it() {
        let mut shard = ShardRooms::new(0, RingLimits { max_bytes: 1 << 20, max_items: 2 });
        let (_, first) = shard.join_room("user:alice");
        let (_, second) = shard.join_room("user:alice");
        assert!(Arc::ptr_eq(&first, &second), "one allocation for the name, however many members");
        assert_eq!(&*first, "user:alice");
        shard.leave_room("user:alice");
        shard.leave_room("user:alice");
        let (_, again) = shard.join_room("user:alice");
        assert!(!Arc::ptr_eq(&first, &again), "a room made again names itself again");
    }

    #[test]
    fn pushes_reach_members_rooms_only_and_ring_totals_follow() {
        let mut shard = ShardRooms::new(0, RingLimits { max_bytes: 1 << 20, max_items: 2 });
        let mut woken = Vec::new();
        shard.push("nobody", message("nobody", 1), &mut woken);
        assert_eq!(shard.ring_items(), 0);
        let (mut cursor, _) = shard.join_room("r");
        let mut ticket = ParkTicket::default();
        let mut batch = Vec::new();
        assert_eq!(shard.read("r", 7, &mut cursor, usize::MAX, &mut batch, &mut ticket), ReadOutcome::Idle);
        shard.push("r", message("r", 1), &mut woken);
        assert_eq!(woken, vec![7], "the parked member is woken");
        shard.push("r", RingItem::Reset { epoch: 2, last_seq: 0 }, &mut woken);
        shard.push("r", message("r", 1), &mut woken);
        assert_eq!(shard.ring_items(), 2, "bounded by count");
        assert!(shard.lagging("r", &cursor));
        shard.leave_room("r");
        assert_eq!((shard.ring_items(), shard.ring_bytes()), (0, 0));
        assert!(!shard.has_room("r"));
    }
}
