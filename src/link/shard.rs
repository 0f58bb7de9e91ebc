//! One shard: a thread with its own single-threaded tokio runtime, its listening socket, its
//! connections and its per-room rings (DESIGN principle 3).
//!
//! Data flow into a shard is one bounded channel of [`ShardMsg`] from the coordinator:
//! - [`ShardMsg::Room`]: a room message ([`Delivery`]: the hub's frame plus the WebSocket frame
//!   built once per Link). The shard pushes it once onto that room's ring; the members parked on
//!   it (caught up, waiting) are then served from the shard loop itself: a WebSocket member's
//!   frames are written to its socket right there with one non-blocking `writev`
//!   (`ws::WsConn::deliver`: no task wake, no channel), and only a socket that is full (or a QUIC
//!   connection) is left to its task, which drains from its own cursor when it can. Messages
//!   already queued are applied before anyone is served, so a burst leaves as one write.
//! - [`ShardMsg::ToConn`] / [`ShardMsg::Close`]: a hub answer (replay, gap, joined, ack, error)
//!   or a close request for one connection (or one of its requests), found by id in
//!   [`ShardState`] and posted to that connection's [`Mailbox`].
//! - [`ShardMsg::Quic`]: a QUIC client handed over by the shard that owns the UDP endpoint.
//!
//! Everything in [`ShardState`] is touched only from this shard's thread (`Rc<RefCell<..>>`,
//! never borrowed across an `.await`); nothing on the delivery path is shared with another shard.
//! Ids of connections and requests carry the shard index in their top 8 bits
//! ([`shard_of`]), so the coordinator routes an answer without a shared table.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};


use crate::fanout::{Cursor, ReadOutcome, RingLimits, ShardRoom};
use crate::frame::Frame;

use super::limits::ClientError;
use super::{quic_clients, ws, Shared};

/// Most coordinator messages applied before the woken members are written to.
const MAX_BURST: usize = 256;

/// Bits of an id below the shard index.
const SHARD_SHIFT: u32 = 56;

/// The shard that issued connection or request id `id`.
pub fn shard_of(id: u64) -> usize {
    (id >> SHARD_SHIFT) as usize
}

/// One room message as a shard holds it: shared buffers only.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The room seq (dedupe against replay).
    pub seq: u64,
    /// The complete WebSocket text frame, built once per Link (`wsframe::message`).
    pub ws: Bytes,
    /// The hub's frame, forwarded unchanged to QUIC clients.
    pub frame: Frame,
}

impl Delivery {
    /// Bytes this delivery pins in a ring.
    pub fn size(&self) -> usize {
        self.ws.len() + self.frame.len()
    }
}

/// Coordinator → shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// A room message for every member of the room on this shard.
    Room(Delivery),
    /// A hub answer for connection (or request) `id`.
    ToConn {
        /// Connection or request id issued by this shard.
        id: u64,
        /// The hub's frame.
        frame: Frame,
    },
    /// Close connection `id` with `reason` (e.g. the user opened too many).
    Close {
        /// Connection id.
        id: u64,
        /// Why.
        reason: ClientError,
    },
    /// A QUIC client connection to run on this shard (boxed: it is large and rare).
    Quic(Box<quinn::Incoming>),
    /// Close every connection with 1001 and stop.
    Shutdown,
}

/// Shard → one connection task.
#[derive(Debug)]
pub enum ConnEvent {
    /// A hub answer for this connection.
    Hub(Frame),
    /// Close the connection for this reason.
    Close(ClientError),
}

/// Most events a mailbox holds. The protocol bounds them far below this (one join answer per
/// room joined, one ack per rate-limited publish); a connection that gets more is closed.
const MAX_MAILBOX: usize = 4096;

/// A connection task's inbox on its shard: hub answers, close requests and "a ring has frames
/// for you". Same thread only (no channel, no allocation while empty).
#[derive(Debug, Default)]
pub struct Mailbox {
    events: RefCell<VecDeque<ConnEvent>>,
    ring: Cell<bool>,
    notify: Notify,
}

impl Mailbox {
    /// Queues `event` and wakes the task.
    pub fn post(&self, event: ConnEvent) {
        {
            let mut events = self.events.borrow_mut();
            if events.len() >= MAX_MAILBOX {
                events.clear();
                events.push_back(ConnEvent::Close(ClientError::Flood));
            } else {
                events.push_back(event);
            }
        }
        self.notify.notify_one();
    }

    /// Tells the task that a ring it is parked on has frames.
    pub fn ring(&self) {
        self.ring.set(true);
        self.notify.notify_one();
    }

    /// Wakes the task (to look at its socket and state again).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Waits for the next post, ring or wake (a wake before the wait is not lost).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// The next queued event.
    pub fn next_event(&self) -> Option<ConnEvent> {
        self.events.borrow_mut().pop_front()
    }

    /// Whether a ring had frames since the last call.
    pub fn take_ring(&self) -> bool {
        self.ring.replace(false)
    }
}

/// How the shard reaches one of its connections.
#[derive(Debug)]
struct ConnSlot {
    mailbox: Rc<Mailbox>,
    /// A WebSocket connection the shard writes to directly when its rings get frames.
    direct: Option<Rc<ws::WsConn>>,
}

/// A connection a ring push woke: written to right away, or told through its mailbox.
#[derive(Debug)]
pub enum Woken {
    /// A WebSocket connection: [`ws::WsConn::deliver`].
    Direct(Rc<ws::WsConn>),
    /// Any other connection task: [`Mailbox::ring`].
    Task(Rc<Mailbox>),
}

impl Woken {
    /// Delivers (direct) or signals (task). Call with no borrow of the shard state held.
    pub fn wake(self) {
        match self {
            Woken::Direct(conn) => conn.deliver(),
            Woken::Task(mailbox) => mailbox.ring(),
        }
    }
}

/// What a connection task gets from [`ShardState::register_conn`].
#[derive(Debug)]
pub struct Registered {
    /// The connection id (carries the shard index).
    pub id: u64,
    /// The shard's index.
    pub index: usize,
    /// The connection's mailbox.
    pub mailbox: Rc<Mailbox>,
}

/// The state of one shard (single-threaded; see the module docs).
#[derive(Debug)]
pub struct ShardState {
    /// This shard's index.
    pub index: usize,
    rooms: HashMap<String, ShardRoom<Delivery, u64>>,
    conns: HashMap<u64, ConnSlot>,
    /// Publish request id → connection id.
    requests: HashMap<u64, u64>,
    next_id: u64,
    limits: RingLimits,
    wake: Vec<u64>,
    shared: Arc<Shared>,
    /// Set once shutdown started: new connections are refused.
    pub stopping: bool,
}

impl ShardState {
    /// An empty shard.
    pub fn new(index: usize, shared: Arc<Shared>) -> Self {
        let limits = shared.config.link.ring_limits();
        ShardState {
            index,
            rooms: HashMap::new(),
            conns: HashMap::new(),
            requests: HashMap::new(),
            next_id: 1,
            limits,
            wake: Vec::new(),
            shared,
            stopping: false,
        }
    }

    /// A fresh id (connection or request) carrying this shard's index.
    pub fn new_id(&mut self) -> u64 {
        let id = ((self.index as u64) << SHARD_SHIFT) | (self.next_id & ((1 << SHARD_SHIFT) - 1));
        self.next_id += 1;
        id
    }

    /// Gives a new connection (WebSocket or QUIC) its id and mailbox, registered.
    pub fn register_conn(&mut self) -> Registered {
        let id = self.new_id();
        let mailbox = Rc::new(Mailbox::default());
        self.conns.insert(id, ConnSlot { mailbox: mailbox.clone(), direct: None });
        Registered { id, index: self.index, mailbox }
    }

    /// Lets the shard write ring frames straight to WebSocket connection `id`.
    pub fn set_direct(&mut self, id: u64, conn: Rc<ws::WsConn>) {
        if let Some(slot) = self.conns.get_mut(&id) {
            slot.direct = Some(conn);
        }
    }

    /// Forgets a connection task and its outstanding requests.
    pub fn remove_conn(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// Connections on this shard.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Records that publish `request` belongs to connection `conn`.
    pub fn add_request(&mut self, request: u64, conn: u64) {
        self.requests.insert(request, conn);
    }

    /// Forgets a request (answered, or its connection ended).
    pub fn remove_request(&mut self, request: u64) {
        self.requests.remove(&request);
    }

    /// Adds a member to `room` (creating its ring); the cursor reads from now on.
    pub fn join_room(&mut self, room: &str) -> Cursor {
        let limits = self.limits;
        self.rooms.entry(room.to_owned()).or_insert_with(|| ShardRoom::new(limits)).join()
    }

    /// Removes a member; drops the ring with the last one.
    pub fn leave_room(&mut self, room: &str) {
        let last = self.rooms.get_mut(room).is_some_and(|r| r.leave());
        if last {
            if let Some(gone) = self.rooms.remove(room) {
                let stats = &self.shared.stats[self.index];
                stats.ring_bytes.fetch_sub(gone.ring().bytes(), Ordering::Relaxed);
                stats.ring_items.fetch_sub(gone.ring().len(), Ordering::Relaxed);
            }
        }
    }

    /// Reads for member `conn` (see `fanout::FanoutRing::read`); `Idle` for an unknown room.
    /// On `Idle` the member is parked on the room (one lookup for both) unless `parked` says it
    /// already is; `parked` is updated.
    pub fn read(
        &mut self,
        room: &str,
        conn: u64,
        cursor: &mut Cursor,
        max_bytes: usize,
        batch: &mut Vec<Delivery>,
        parked: &mut bool,
    ) -> ReadOutcome {
        let Some(r) = self.rooms.get_mut(room) else { return ReadOutcome::Idle };
        let outcome = r.read(cursor, max_bytes, batch);
        match outcome {
            ReadOutcome::Idle if !*parked => {
                r.park(conn);
                *parked = true;
            }
            ReadOutcome::Read { .. } => *parked = false,
            _ => {}
        }
        outcome
    }

    /// True when `cursor` has fallen off `room`'s ring.
    pub fn lagging(&self, room: &str, cursor: &Cursor) -> bool {
        self.rooms.get(room).is_some_and(|r| cursor.position() < r.ring().head())
    }

    /// Pushes a room message once; the room's parked members are added to `woken` (wake them
    /// once this borrow of the state is released: a direct delivery reads the rings).
    pub fn push(&mut self, delivery: Delivery, woken: &mut Vec<Woken>) {
        let Some(room) = self.rooms.get_mut(delivery.frame.room()) else { return };
        let (bytes_before, items_before) = (room.ring().bytes(), room.ring().len());
        let size = delivery.size();
        room.push(delivery, size, &mut self.wake);
        let stats = &self.shared.stats[self.index];
        let (bytes_after, items_after) = (room.ring().bytes(), room.ring().len());
        stats.ring_bytes.fetch_add(bytes_after, Ordering::Relaxed);
        stats.ring_bytes.fetch_sub(bytes_before, Ordering::Relaxed);
        stats.ring_items.fetch_add(items_after, Ordering::Relaxed);
        stats.ring_items.fetch_sub(items_before, Ordering::Relaxed);
        for conn in self.wake.drain(..) {
            if let Some(slot) = self.conns.get(&conn) {
                woken.push(match &slot.direct {
                    Some(direct) => Woken::Direct(direct.clone()),
                    None => Woken::Task(slot.mailbox.clone()),
                });
            }
        }
    }

    /// Hands a hub answer to the connection it is for (directly or through its request).
    pub fn route(&mut self, id: u64, frame: Frame) {
        let conn = if self.conns.contains_key(&id) { Some(id) } else { self.requests.get(&id).copied() };
        if let Some(slot) = conn.and_then(|c| self.conns.get(&c)) {
            slot.mailbox.post(ConnEvent::Hub(frame));
        }
    }

    /// Asks connection `id` to close with `reason`.
    pub fn close(&mut self, id: u64, reason: ClientError) {
        if let Some(slot) = self.conns.get(&id) {
            slot.mailbox.post(ConnEvent::Close(reason));
        }
    }

    /// Asks every connection to close with `reason`.
    pub fn close_all(&mut self, reason: ClientError) {
        for slot in self.conns.values() {
            slot.mailbox.post(ConnEvent::Close(reason));
        }
    }
}

/// Runs shard `index` on the current thread until shutdown: accepts on `listener`, applies
/// coordinator messages, and runs QUIC clients handed to it. `quic` is the client endpoint's
/// socket when this shard hosts the endpoint.
pub fn run(
    index: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mut inbox: mpsc::Receiver<ShardMsg>,
    quic: Option<std::net::UdpSocket>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let state = Rc::new(RefCell::new(ShardState::new(index, shared.clone())));
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let accept = tokio::task::spawn_local(ws::accept_loop(listener, shared.clone(), state.clone()));
        let quic_endpoint = match quic {
            Some(socket) => Some(quic_clients::start_endpoint(socket, shared.clone())?),
            None => None,
        };
        let mut woken = Vec::new();
        'run: while let Some(first) = inbox.recv().await {
            // Take what is already queued (up to a bound) before waking anyone, so a burst of
            // room messages reaches each member socket as one vectored write.
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(msg) = next.take() {
                match msg {
                    ShardMsg::Room(delivery) => state.borrow_mut().push(delivery, &mut woken),
                    ShardMsg::ToConn { id, frame } => state.borrow_mut().route(id, frame),
                    ShardMsg::Close { id, reason } => state.borrow_mut().close(id, reason),
                    ShardMsg::Quic(incoming) => {
                        tokio::task::spawn_local(quic_clients::handle(*incoming, shared.clone(), state.clone()));
                    }
                    ShardMsg::Shutdown => break 'run,
                }
                taken += 1;
                if taken < MAX_BURST {
                    next = inbox.try_recv().ok();
                }
            }
            for conn in woken.drain(..) {
                conn.wake();
            }
            super::tally::flush();
        }
        accept.abort();
        if let Some(endpoint) = &quic_endpoint {
            endpoint.set_server_config(None);
        }
        {
            let mut state = state.borrow_mut();
            state.stopping = true;
            state.close_all(ClientError::ShuttingDown);
        }
        // Give connections a moment to send their close frames.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while state.borrow().conn_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Some(endpoint) = quic_endpoint {
            endpoint.close(quinn::VarInt::from_u32(1001), b"server shutting down");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        Ok::<(), std::io::Error>(())
    })
}
