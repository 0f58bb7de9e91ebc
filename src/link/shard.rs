//! One shard: a thread with its own single-threaded tokio runtime, its listening socket, its
//! connections and its per-room rings (DESIGN principle 3).
//!
//! Data flow into a shard is one bounded channel of [`ShardMsg`] from the coordinator:
//! - [`ShardMsg::Room`]: a room message ([`Delivery`]: the hub's frame plus the WebSocket frame
//!   built once per Link). The shard pushes it once onto that room's ring and wakes only the
//!   members parked on it; each connection then drains from its own cursor.
//! - [`ShardMsg::ToConn`]: a hub answer (replay, gap, joined, ack, error) for one connection or
//!   one of its requests, found by id in [`ShardState`].
//! - [`ShardMsg::Quic`]: a QUIC client handed over by the shard that owns the UDP endpoint.
//!
//! Everything in [`ShardState`] is touched only from this shard's thread (`Rc<RefCell<..>>`,
//! never borrowed across an `.await`); nothing on the delivery path is shared with another shard.
//! Ids of connections and requests carry the shard index in their top 8 bits
//! ([`shard_of`]), so the coordinator routes an answer without a shared table.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::fanout::{Cursor, ReadOutcome, RingLimits, ShardRoom};
use crate::frame::Frame;

use super::limits::ClientError;
use super::{quic_clients, ws, Shared};

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

/// How the shard reaches one of its connection tasks.
#[derive(Debug)]
pub struct ConnSlot {
    /// Answers and close requests (bounded by the protocol: at most one join answer per room
    /// joined and one ack per rate-limited publish are ever outstanding).
    pub inbox: mpsc::UnboundedSender<ConnEvent>,
    /// Woken when a ring the connection is parked on gets a frame.
    pub notify: Rc<Notify>,
}

/// What a connection task gets from [`ShardState::register_conn`].
#[derive(Debug)]
pub struct Registered {
    /// The connection id (carries the shard index).
    pub id: u64,
    /// The shard's index.
    pub index: usize,
    /// A sender to the connection's own inbox (for the user registry).
    pub inbox_tx: mpsc::UnboundedSender<ConnEvent>,
    /// The connection's inbox.
    pub inbox: mpsc::UnboundedReceiver<ConnEvent>,
    /// Woken when a ring the connection is parked on gets a frame.
    pub notify: Rc<Notify>,
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

    /// Registers a connection task.
    pub fn add_conn(&mut self, id: u64, slot: ConnSlot) {
        self.conns.insert(id, slot);
    }

    /// Gives a new connection (WebSocket or QUIC) its id, inbox and ring waker, registered.
    pub fn register_conn(&mut self) -> Registered {
        let id = self.new_id();
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let notify = Rc::new(Notify::new());
        self.add_conn(id, ConnSlot { inbox: inbox_tx.clone(), notify: notify.clone() });
        Registered { id, index: self.index, inbox_tx, inbox, notify }
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

    /// Reads for a member (see `fanout::FanoutRing::read`); `Idle` for an unknown room.
    pub fn read(&self, room: &str, cursor: &mut Cursor, max_bytes: usize, batch: &mut Vec<Delivery>) -> ReadOutcome {
        match self.rooms.get(room) {
            Some(r) => r.read(cursor, max_bytes, batch),
            None => ReadOutcome::Idle,
        }
    }

    /// True when `cursor` has fallen off `room`'s ring.
    pub fn lagging(&self, room: &str, cursor: &Cursor) -> bool {
        self.rooms.get(room).is_some_and(|r| cursor.position() < r.ring().head())
    }

    /// Parks connection `conn` on `room` until the next push.
    pub fn park(&mut self, room: &str, conn: u64) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.park(conn);
        }
    }

    /// Pushes a room message once and wakes the room's parked members.
    pub fn push(&mut self, delivery: Delivery) {
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
                slot.notify.notify_one();
            }
        }
    }

    /// Hands a hub answer to the connection it is for (directly or through its request).
    pub fn route(&mut self, id: u64, frame: Frame) {
        let conn = if self.conns.contains_key(&id) { Some(id) } else { self.requests.get(&id).copied() };
        if let Some(slot) = conn.and_then(|c| self.conns.get(&c)) {
            let _ = slot.inbox.send(ConnEvent::Hub(frame));
        }
    }

    /// Asks every connection to close with `reason`.
    pub fn close_all(&mut self, reason: ClientError) {
        for slot in self.conns.values() {
            let _ = slot.inbox.send(ConnEvent::Close(reason));
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
        while let Some(msg) = inbox.recv().await {
            match msg {
                ShardMsg::Room(delivery) => state.borrow_mut().push(delivery),
                ShardMsg::ToConn { id, frame } => state.borrow_mut().route(id, frame),
                ShardMsg::Quic(incoming) => {
                    tokio::task::spawn_local(quic_clients::handle(*incoming, shared.clone(), state.clone()));
                }
                ShardMsg::Shutdown => break,
            }
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
