//! One shard's state: its connections and its per-room rings (DESIGN principle 3). The thread
//! that drives it is `shard_thread.rs`; the connections' drivers are `ws.rs` and
//! `quic_clients.rs`.
//!
//! Data flow into a shard is one inbox of [`ShardMsg`] from the coordinator, bounded in bytes
//! (`shard_inbox.rs`):
//! - [`ShardMsg::Room`]: a room message ([`RoomMessage`]: the hub's frame plus the WebSocket
//!   frame built once per Link), or [`ShardMsg::Marker`]: a room-wide gap or reset
//!   (`shard_rooms.rs`). [`ShardState::push`] puts it once onto that room's ring and returns the
//!   members parked on it (caught up, waiting) as [`Woken`]: a connection registered for
//!   [`DirectDelivery`] (WebSocket) is written to from the shard loop itself, with no task wake
//!   and no channel; any other (a full socket, QUIC) is told through its [`Mailbox`] and drains
//!   from its own cursor when it can.
//! - [`ShardMsg::ToConn`] / [`ShardMsg::Close`]: a hub answer (replay, gap, joined, ack, error)
//!   or a close request for one connection (or one of its requests), found by id in
//!   [`ShardState`] and posted to that connection's [`Mailbox`] with the room ring's tail at
//!   that moment (the boundary between what a `Joined` covers and what the ring delivers).
//!   [`ShardMsg::ReplayDropped`]: a replay the full inbox could not take; the connection asks
//!   for it again.
//! - [`ShardMsg::Moderate`]: an operator's action for one connection ([`ConnAction`], from
//!   `moderation.rs`), posted to its mailbox like a close request.
//! - [`ShardMsg::Quic`]: a QUIC client handed over by the shard that owns the UDP endpoint.
//!
//! Everything in [`ShardState`] is touched only from this shard's thread (`Rc<RefCell<..>>`,
//! never borrowed across an `.await`); nothing on the delivery path is shared with another shard.
//! The rings, ids and request routing are the sans-IO [`ShardRooms`]; ids of connections and
//! requests carry the shard index in their top 8 bits ([`shard_of`]), so the coordinator routes
//! an answer without a shared table. The shard's counters ([`ShardStats`]) are the only thing
//! other threads read.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::task::{Poll, Waker};

use linkcast_core::fanout::RingLimits;
use linkcast_core::frame::{ArchivedBody, Frame};
use linkcast_core::protocol::ClientError;
use linkcast_core::shard_rooms::{conn_slot, MAX_CONN_SLOTS};
pub(crate) use linkcast_core::shard_rooms::{shard_of, RingItem, RoomMessage, ShardRooms};

/// Counters of one shard, readable from any thread (tests and `/metrics` use them).
#[derive(Debug, Default)]
pub(crate) struct ShardStats {
    /// Open client connections.
    pub(crate) connections: AtomicUsize,
    /// Bytes held in this shard's rooms' rings.
    pub(crate) ring_bytes: AtomicUsize,
    /// Frames held in this shard's rooms' rings.
    pub(crate) ring_items: AtomicUsize,
    /// Bytes queued in connections' socket queues, not yet written.
    pub(crate) queued_bytes: AtomicUsize,
}

/// Coordinator → shard.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// A room message for every member of the room on this shard.
    Room(RoomMessage),
    /// A room-wide gap or reset for every member of `room` on this shard.
    Marker {
        /// The room.
        room: String,
        /// [`RingItem::Gap`] or [`RingItem::Reset`].
        item: RingItem,
    },
    /// A hub answer for connection (or request) `id`.
    ToConn {
        /// Connection or request id issued by this shard.
        id: u64,
        /// The hub's frame.
        frame: Frame,
    },
    /// Replays of join request `id` did not fit the shard's inbox: the connection asks for them
    /// again (as when its mailbox drops them).
    ReplayDropped {
        /// The join's request id.
        id: u64,
    },
    /// Close connection `id` with `reason` (e.g. the user opened too many).
    Close {
        /// Connection id.
        id: u64,
        /// Why.
        reason: ClientError,
    },
    /// An operator's action for connection `id` (`moderation.rs`).
    Moderate {
        /// Connection id.
        id: u64,
        /// What to do (boxed: rare).
        action: Box<ConnAction>,
    },
    /// A QUIC client connection to run on this shard (boxed: it is large and rare).
    Quic(Box<super::quic_clients::Accepted>),
    /// The Link drains: close every connection with 1001 and `link draining; retry_after_ms=N`,
    /// N jittered per connection in [`retry_after_ms`, 2 × `retry_after_ms`).
    Drain {
        /// Least retry hint, milliseconds.
        retry_after_ms: u32,
    },
    /// Close every connection with 1001 and stop.
    Shutdown,
}

/// What one connection is asked to do (posted to its mailbox by its shard).
#[derive(Debug)]
pub(crate) enum ConnAction {
    /// Close with `error`'s code and this reason.
    Close {
        /// 4000 kicked or 4001 banned.
        error: ClientError,
        /// The operator's reason (or the error's own).
        reason: Box<str>,
    },
    /// Close with 4002 if the connection's token was issued before `before` (or has no `iat`).
    Revoke {
        /// Revocation time, seconds.
        before: u64,
    },
    /// Leave `room`, telling the client `removed` with `reason`.
    Remove {
        /// The room.
        room: Box<str>,
        /// The operator's reason.
        reason: Box<str>,
    },
    /// Tell the rooms the connection is in.
    Query(tokio::sync::oneshot::Sender<Vec<String>>),
}

/// Shard → one connection (its mailbox).
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A hub answer for this connection, and where the room's ring stood when it was routed.
    Hub {
        /// The hub's frame.
        frame: Frame,
        /// The ring's tail at routing time (`None`: the shard has no ring for the room).
        ring_tail: Option<u64>,
    },
    /// Close the connection for this reason.
    Close(ClientError),
    /// Replays of join `request` were dropped (the mailbox held its replay cap): the session
    /// asks for them again.
    Dropped {
        /// The join request.
        request: u64,
    },
    /// An operator's action (`moderation.rs`).
    Moderate(Box<ConnAction>),
}

/// Most events other than replays a mailbox holds. The protocol bounds them far below this (one
/// ack per pending publish, a few answers per join); a connection that gets more is closed
/// ("publish flood"). Replays are not counted here: a catch-up is never a flood.
const MAX_MAILBOX: usize = 4096;

/// A connection's inbox on its shard: hub answers, close requests and "a ring has frames for
/// you". Same thread only (no channel, no allocation while empty).
///
/// Whoever drives the connection is woken through one [`Waker`]: a QUIC connection's task
/// registers its own by awaiting [`Mailbox::wait`]; a WebSocket connection, driven by its
/// shard's `ws_driver.rs` with no task of its own, is given its slot's waker once
/// ([`Mailbox::set_waker`]).
///
/// Replayed messages are held up to `replay_cap` bytes (`link.replay_bytes`); one beyond that is
/// dropped here, and the session, seeing its replay stop short, asks the hub again from where it
/// stopped once the socket drained (`LinkSession` paging): nothing is lost, nothing is unbounded.
///
/// 64 bytes, 80 with its `Rc` (a test keeps it so): every connection has one, so its counts are
/// 32-bit (at most [`MAX_MAILBOX`] events, and replays up to a cap of at most 4 GiB), and its
/// queue and waker are `Cell`s, taken and put back by each call (no borrow flags: 16 bytes).
#[derive(Default)]
pub(crate) struct Mailbox {
    events: Cell<VecDeque<ConnEvent>>,
    /// Events in `events` that are not replays.
    others: Cell<u32>,
    /// Bytes of replays in `events` (saturating).
    replay_bytes: Cell<u32>,
    replay_cap: u32,
    ring: Cell<bool>,
    /// A wake not yet seen by [`Mailbox::wait`] (a wake before the wait is not lost).
    signalled: Cell<bool>,
    /// Who to wake: the connection's driver.
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("others", &self.others.get())
            .field("replay_bytes", &self.replay_bytes.get())
            .field("ring", &self.ring.get())
            .field("signalled", &self.signalled.get())
            .finish_non_exhaustive()
    }
}

/// Whether `event` is a replayed message: its size and join request.
fn replay_len(event: &ConnEvent) -> Option<(usize, u64)> {
    match event {
        ConnEvent::Hub { frame, .. } => match frame.body() {
            ArchivedBody::Replay { request, .. } => Some((frame.len(), request.to_native())),
            _ => None,
        },
        _ => None,
    }
}

impl Mailbox {
    /// An empty mailbox holding at most `replay_cap` bytes of replays.
    pub(crate) fn new(replay_cap: usize) -> Self {
        // Below `u32::MAX`: the saturating count of held bytes always exceeds it.
        Mailbox { replay_cap: u32::try_from(replay_cap).unwrap_or(u32::MAX / 2).min(u32::MAX / 2), ..Mailbox::default() }
    }

    /// Queues `event` and wakes the connection's driver.
    pub(crate) fn post(&self, event: ConnEvent) {
        {
            let mut events = self.events.take();
            match replay_len(&event) {
                Some((len, request)) => {
                    let held = self.replay_bytes.get();
                    let len32 = u32::try_from(len).unwrap_or(u32::MAX);
                    if held > 0 && held.saturating_add(len32) > self.replay_cap {
                        // Dropped, and said once per run: the session asks for it again.
                        metrics::counter!("linkcast_link_replay_dropped_bytes_total").increment(len as u64);
                        if !matches!(events.back(), Some(ConnEvent::Dropped { request: r }) if *r == request) {
                            self.others.set(self.others.get() + 1);
                            events.push_back(ConnEvent::Dropped { request });
                        }
                    } else {
                        self.replay_bytes.set(held.saturating_add(len32));
                        events.push_back(event);
                    }
                }
                None if self.others.get() as usize >= MAX_MAILBOX => {
                    events.clear();
                    self.others.set(1);
                    self.replay_bytes.set(0);
                    events.push_back(ConnEvent::Close(ClientError::Flood));
                }
                None => {
                    self.others.set(self.others.get() + 1);
                    events.push_back(event);
                }
            }
            self.events.set(events);
        }
        self.wake();
    }

    /// Tells the driver that a ring the connection is parked on has frames.
    pub(crate) fn ring(&self) {
        self.ring.set(true);
        self.wake();
    }

    /// Wakes the driver (to look at the socket and state again).
    pub(crate) fn wake(&self) {
        self.signalled.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake_by_ref();
            self.waker.set(Some(waker));
        }
    }

    /// Wakes `waker` from now on, whenever something is posted or rung.
    pub(crate) fn set_waker(&self, waker: Waker) {
        self.waker.set(Some(waker));
    }

    /// Waits for the next post, ring or wake (a wake before the wait is not lost): for a
    /// connection with a task of its own (QUIC).
    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.signalled.replace(false) {
                return Poll::Ready(());
            }
            let waker = match self.waker.take() {
                Some(waker) if waker.will_wake(cx.waker()) => waker,
                _ => cx.waker().clone(),
            };
            self.waker.set(Some(waker));
            Poll::Pending
        })
        .await;
    }

    /// The next queued event.
    pub(crate) fn next_event(&self) -> Option<ConnEvent> {
        let mut events = self.events.take();
        // Drained, the queue is not put back: an idle connection keeps none (it grew to hold
        // its join answers).
        let event = events.pop_front()?;
        self.events.set(events);
        match replay_len(&event) {
            Some((len, _)) => self.replay_bytes.set(self.replay_bytes.get().saturating_sub(u32::try_from(len).unwrap_or(u32::MAX))),
            None => self.others.set(self.others.get().saturating_sub(1)),
        }
        Some(event)
    }

    /// Whether a ring had frames since the last call.
    pub(crate) fn take_ring(&self) -> bool {
        self.ring.replace(false)
    }
}

/// A connection the shard loop writes ring frames to itself, the moment a ring it is parked on
/// gets them (a WebSocket connection: one non-blocking vectored write, no task wake).
pub(crate) trait DirectDelivery: std::fmt::Debug {
    /// A ring this connection is parked on got items: move them to the socket now, or leave
    /// them to the connection's driver (its slot in `ws_driver.rs`) if the socket is full.
    fn deliver(&self);
}

/// How the shard reaches one of its connections.
#[derive(Debug)]
struct ConnSlot {
    /// The connection's id (names this slot: `shard_rooms::conn_slot`).
    id: u64,
    mailbox: Rc<Mailbox>,
    /// Set for a connection the shard writes to directly when its rings get frames.
    direct: Option<Rc<dyn DirectDelivery>>,
}

/// A connection a ring push woke: written to right away, or told through its mailbox.
#[derive(Debug)]
pub(crate) enum Woken {
    /// A connection written to by the shard loop: [`DirectDelivery::deliver`].
    Direct(Rc<dyn DirectDelivery>),
    /// Any other connection (a full socket, QUIC): [`Mailbox::ring`].
    Task(Rc<Mailbox>),
}

impl Woken {
    /// Delivers (direct) or signals (mailbox). Call with no borrow of the shard state held.
    pub(crate) fn wake(self) {
        match self {
            Woken::Direct(conn) => conn.deliver(),
            Woken::Task(mailbox) => mailbox.ring(),
        }
    }
}

/// What a new connection gets from [`ShardState::register_conn`].
#[derive(Debug)]
pub(crate) struct Registered {
    /// The connection id (carries the shard index).
    pub(crate) id: u64,
    /// The connection's mailbox.
    pub(crate) mailbox: Rc<Mailbox>,
}

/// The state of one shard (single-threaded; see the module docs).
#[derive(Debug)]
pub(crate) struct ShardState {
    /// Rings, ids and outstanding requests.
    pub(crate) rooms: ShardRooms,
    /// The shard's connections by slot, the slot named by each connection's id: a wake finds
    /// its connection by index (a hash table cost every connection ≈ 68 bytes and a hash per
    /// wake). Freed slots are reused (`free`); the slab stays as long as the most connections
    /// the shard held at once.
    conns: Vec<Option<ConnSlot>>,
    free: Vec<u32>,
    conn_count: usize,
    woken_ids: Vec<u64>,
    /// Ring bytes and items last added to `stats`.
    reported: (usize, usize),
    /// This shard's counters, read by other threads.
    stats: Arc<ShardStats>,
    /// Set once shutdown started: new connections are refused.
    pub(crate) stopping: bool,
}

impl ShardState {
    /// An empty shard.
    pub(crate) fn new(index: usize, limits: RingLimits, stats: Arc<ShardStats>) -> Self {
        ShardState {
            rooms: ShardRooms::new(index, limits),
            conns: Vec::new(),
            free: Vec::new(),
            conn_count: 0,
            woken_ids: Vec::new(),
            reported: (0, 0),
            stats,
            stopping: false,
        }
    }

    /// This shard's index.
    pub(crate) fn index(&self) -> usize {
        self.rooms.index()
    }

    /// Gives a new connection (WebSocket or QUIC) its id and mailbox (holding at most
    /// `replay_cap` bytes of replays), registered.
    pub(crate) fn register_conn(&mut self, replay_cap: usize) -> Registered {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                // Never reached: a shard's connections are its sockets, far fewer than the 16.7 M
                // slots an id can name (a process here opens at most 20,000 files).
                u32::try_from(self.conns.len() - 1).unwrap_or(MAX_CONN_SLOTS - 1).min(MAX_CONN_SLOTS - 1)
            }
        };
        let id = self.rooms.new_conn_id(slot);
        let mailbox = Rc::new(Mailbox::new(replay_cap));
        self.conns[slot as usize] = Some(ConnSlot { id, mailbox: mailbox.clone(), direct: None });
        self.conn_count += 1;
        Registered { id, mailbox }
    }

    /// Connection `id`'s slot, if it is still registered.
    fn conn(&self, id: u64) -> Option<&ConnSlot> {
        let slot = conn_slot(id)?;
        self.conns.get(slot as usize)?.as_ref().filter(|c| c.id == id)
    }

    /// Every registered connection.
    fn conns(&self) -> impl Iterator<Item = &ConnSlot> {
        self.conns.iter().flatten()
    }

    /// Lets the shard write ring frames straight to connection `id`.
    pub(crate) fn set_direct(&mut self, id: u64, conn: Rc<dyn DirectDelivery>) {
        let Some(slot) = conn_slot(id) else { return };
        if let Some(Some(c)) = self.conns.get_mut(slot as usize) {
            if c.id == id {
                c.direct = Some(conn);
            }
        }
    }

    /// Forgets a connection.
    pub(crate) fn remove_conn(&mut self, id: u64) {
        let Some(slot) = conn_slot(id) else { return };
        if let Some(entry) = self.conns.get_mut(slot as usize) {
            if entry.as_ref().is_some_and(|c| c.id == id) {
                *entry = None;
                self.free.push(slot);
                self.conn_count -= 1;
            }
        }
    }

    /// Connections on this shard.
    pub(crate) fn conn_count(&self) -> usize {
        self.conn_count
    }

    /// Brings the shared ring counters up to date with the rings.
    pub(crate) fn sync_stats(&mut self) {
        let now = (self.rooms.ring_bytes(), self.rooms.ring_items());
        if now != self.reported {
            let stats = &self.stats;
            stats.ring_bytes.fetch_add(now.0, Ordering::Relaxed);
            stats.ring_bytes.fetch_sub(self.reported.0, Ordering::Relaxed);
            stats.ring_items.fetch_add(now.1, Ordering::Relaxed);
            stats.ring_items.fetch_sub(self.reported.1, Ordering::Relaxed);
            self.reported = now;
        }
    }

    /// Pushes a ring item once; the room's parked members are added to `woken` (wake them
    /// once this borrow of the state is released: a direct delivery reads the rings).
    pub(crate) fn push(&mut self, room: &str, item: RingItem, woken: &mut Vec<Woken>) {
        self.rooms.push(room, item, &mut self.woken_ids);
        self.wake(woken);
    }

    /// [`ShardState::push`] of a room message (the room is read from the message).
    pub(crate) fn push_message(&mut self, message: RoomMessage, woken: &mut Vec<Woken>) {
        self.rooms.push_message(message, &mut self.woken_ids);
        self.wake(woken);
    }

    /// Turns the ids the last push woke into connections to serve.
    fn wake(&mut self, woken: &mut Vec<Woken>) {
        let mut woken_ids = std::mem::take(&mut self.woken_ids);
        for conn in woken_ids.drain(..) {
            if let Some(slot) = self.conn(conn) {
                woken.push(match &slot.direct {
                    Some(direct) => Woken::Direct(direct.clone()),
                    None => Woken::Task(slot.mailbox.clone()),
                });
            }
        }
        self.woken_ids = woken_ids;
    }

    /// Hands a hub answer to the connection it is for (by connection or request id).
    pub(crate) fn route(&mut self, id: u64, frame: Frame) {
        let conn = if self.conn(id).is_some() { Some(id) } else { self.rooms.conn_of(id) };
        if let Some(slot) = conn.and_then(|c| self.conn(c)) {
            let ring_tail = self.rooms.tail(frame.room());
            slot.mailbox.post(ConnEvent::Hub { frame, ring_tail });
        }
    }

    /// Tells the connection of join request `id` that replays of it were dropped before they
    /// reached it (it asks for them again).
    pub(crate) fn replay_dropped(&mut self, id: u64) {
        if let Some(slot) = self.rooms.conn_of(id).and_then(|c| self.conn(c)) {
            slot.mailbox.post(ConnEvent::Dropped { request: id });
        }
    }

    /// Asks connection `id` to close with `reason`.
    pub(crate) fn close(&mut self, id: u64, reason: ClientError) {
        if let Some(slot) = self.conn(id) {
            slot.mailbox.post(ConnEvent::Close(reason));
        }
    }

    /// Posts an operator's action to connection `id` (dropped if it is gone).
    pub(crate) fn moderate(&mut self, id: u64, action: Box<ConnAction>) {
        if let Some(slot) = self.conn(id) {
            slot.mailbox.post(ConnEvent::Moderate(action));
        }
    }

    /// Asks every connection to close with 1001 and a retry hint of at least `retry_after_ms`,
    /// jittered per connection (so its clients do not all come back at the same instant).
    pub(crate) fn close_all_draining(&mut self, retry_after_ms: u32) {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new();
        let base = u64::from(retry_after_ms.max(1));
        for slot in self.conns() {
            let mut hasher = seed.build_hasher();
            hasher.write_u64(slot.id);
            let retry = base + hasher.finish() % base;
            let reason = format!("link draining; retry_after_ms={retry}").into_boxed_str();
            slot.mailbox.post(ConnEvent::Moderate(Box::new(ConnAction::Close { error: ClientError::ShuttingDown, reason })));
        }
    }

    /// Asks every connection to close with `reason`.
    pub(crate) fn close_all(&mut self, reason: ClientError) {
        for slot in self.conns() {
            slot.mailbox.post(ConnEvent::Close(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use linkcast_core::fanout::ParkTicket;
    use linkcast_core::frame::{Body, FrameBuilder};

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn replay(request: u64) -> ConnEvent {
        let frame = FrameBuilder::new("r").seq(1).sender("u").build(&Body::Replay { request, data: vec![b'x'; 100] });
        ConnEvent::Hub { frame, ring_tail: None }
    }

    #[derive(Debug)]
    struct Direct;

    impl DirectDelivery for Direct {
        fn deliver(&self) {}
    }

    #[test]
    fn connections_are_found_by_their_id_s_slot_and_a_reused_slot_forgets_the_old_id() {
        let mut shard = ShardState::new(3, RingLimits::default(), Arc::default());
        let a = shard.register_conn(1 << 20).id;
        let b = shard.register_conn(1 << 20).id;
        assert_eq!((shard_of(a), shard_of(b), shard.conn_count()), (3, 3, 2));
        shard.set_direct(b, Rc::new(Direct));
        shard.remove_conn(a);
        shard.remove_conn(a); // twice: no effect
        assert_eq!(shard.conn_count(), 1);
        let c = shard.register_conn(1 << 20).id;
        assert_eq!(conn_slot(c), conn_slot(a), "the freed slot is reused");
        assert!(shard.conn(a).is_none() && shard.conn(c).is_some(), "under another id");
        shard.remove_conn(a); // the old id does not remove the new connection
        assert_eq!(shard.conn_count(), 2);
        // Hub answers reach a connection by its id, or by a request of it; stale ids nowhere.
        let request = shard.rooms.new_id();
        shard.rooms.add_request(request, c);
        let answer = || FrameBuilder::new("r").build(&Body::Presence { members: 1, events: true });
        shard.route(request, answer());
        shard.route(c, answer());
        shard.route(a, answer());
        let mailbox = shard.conn(c).map(|slot| slot.mailbox.clone()).expect("c");
        assert!(mailbox.next_event().is_some() && mailbox.next_event().is_some() && mailbox.next_event().is_none());
        // A ring push wakes its parked members: b directly, c through its mailbox; a member
        // whose connection is gone, nobody.
        let mut batch = Vec::new();
        for conn in [b, c, a] {
            let (mut cursor, _) = shard.rooms.join_room("r");
            let _ = shard.rooms.read("r", conn, &mut cursor, 1 << 20, &mut batch, &mut ParkTicket::default());
        }
        let mut woken = Vec::new();
        shard.push("r", RingItem::Notice { ws: bytes::Bytes::from_static(b"n"), frame: answer(), events_only: false }, &mut woken);
        assert!(matches!(woken[..], [Woken::Direct(_), Woken::Task(_)]), "{woken:?}");
        assert_eq!(shard.conns().count(), 2);
    }

    #[test]
    fn a_mailbox_keeps_order_caps_replays_wakes_each_time_and_frees_its_queue() {
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let mailbox = Mailbox::new(150);
        mailbox.set_waker(Waker::from(woken.clone()));
        mailbox.post(replay(7));
        mailbox.post(replay(7)); // beyond the replay cap: dropped, said once
        mailbox.post(replay(7));
        mailbox.post(ConnEvent::Close(ClientError::Idle));
        mailbox.ring();
        assert_eq!(woken.0.load(Ordering::Relaxed), 5, "every post and ring wakes the driver");
        assert!(matches!(mailbox.next_event(), Some(ConnEvent::Hub { .. })));
        assert!(matches!(mailbox.next_event(), Some(ConnEvent::Dropped { request: 7 })));
        assert!(matches!(mailbox.next_event(), Some(ConnEvent::Close(ClientError::Idle))));
        assert!(mailbox.next_event().is_none());
        assert!(mailbox.take_ring() && !mailbox.take_ring());
        let events = mailbox.events.take();
        assert_eq!(events.capacity(), 0, "a drained mailbox keeps no queue");
        // Room for replays again once the held one was taken.
        mailbox.post(replay(8));
        assert!(matches!(mailbox.next_event(), Some(ConnEvent::Hub { .. })));
    }
}
