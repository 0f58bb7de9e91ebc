//! One shard: a thread with its own single-threaded tokio runtime, its listening socket, its
//! connections and its per-room rings (DESIGN principle 3).
//!
//! Data flow into a shard is one bounded channel of [`ShardMsg`] from the coordinator:
//! - [`ShardMsg::Room`]: a room message ([`RoomMessage`]: the hub's frame plus the WebSocket frame
//!   built once per Link), or [`ShardMsg::Marker`]: a room-wide gap or reset (`shard_rooms.rs`).
//!   The shard pushes it once onto that room's ring; the members parked on
//!   it (caught up, waiting) are then served from the shard loop itself: a WebSocket member's
//!   frames are written to its socket right there with one non-blocking `writev`
//!   (`ws::WsConn::deliver`: no task wake, no channel), and only a socket that is full (or a QUIC
//!   connection) is left to its task, which drains from its own cursor when it can. Messages
//!   already queued are applied before anyone is served, so a burst leaves as one write.
//! - [`ShardMsg::ToConn`] / [`ShardMsg::Close`]: a hub answer (replay, gap, joined, ack, error)
//!   or a close request for one connection (or one of its requests), found by id in
//!   [`ShardState`] and posted to that connection's [`Mailbox`] with the room ring's tail at
//!   that moment (the boundary between what a `Joined` covers and what the ring delivers).
//! - [`ShardMsg::Quic`]: a QUIC client handed over by the shard that owns the UDP endpoint.
//!
//! Everything in [`ShardState`] is touched only from this shard's thread (`Rc<RefCell<..>>`,
//! never borrowed across an `.await`); nothing on the delivery path is shared with another shard.
//! The rings, ids and request routing are the sans-IO [`ShardRooms`]; ids of connections and
//! requests carry the shard index in their top 8 bits ([`shard_of`]), so the coordinator routes
//! an answer without a shared table.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};


use linkcast_core::frame::Frame;

use linkcast_core::protocol::ClientError;
use super::{quic_clients, ws, Shared};

/// Most coordinator messages applied before the woken members are written to.
const MAX_BURST: usize = 256;

pub use linkcast_core::shard_rooms::{shard_of, RoomMessage, RingItem, ShardRooms};

/// Coordinator → shard.
#[derive(Debug)]
pub enum ShardMsg {
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
    /// A hub answer for this connection, and where the room's ring stood when it was routed.
    Hub {
        /// The hub's frame.
        frame: Frame,
        /// The ring's tail at routing time (`None`: the shard has no ring for the room).
        ring_tail: Option<u64>,
    },
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
    /// Rings, ids and outstanding requests.
    pub rooms: ShardRooms,
    conns: HashMap<u64, ConnSlot>,
    woken_ids: Vec<u64>,
    /// Ring bytes and items last added to the shared stats.
    reported: (usize, usize),
    shared: Arc<Shared>,
    /// Set once shutdown started: new connections are refused.
    pub stopping: bool,
}

impl ShardState {
    /// An empty shard.
    pub fn new(index: usize, shared: Arc<Shared>) -> Self {
        let limits = shared.config.link.ring_limits();
        ShardState {
            rooms: ShardRooms::new(index, limits),
            conns: HashMap::new(),
            woken_ids: Vec::new(),
            reported: (0, 0),
            shared,
            stopping: false,
        }
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.rooms.index()
    }

    /// Gives a new connection (WebSocket or QUIC) its id and mailbox, registered.
    pub fn register_conn(&mut self) -> Registered {
        let id = self.rooms.new_id();
        let mailbox = Rc::new(Mailbox::default());
        self.conns.insert(id, ConnSlot { mailbox: mailbox.clone(), direct: None });
        Registered { id, index: self.index(), mailbox }
    }

    /// Lets the shard write ring frames straight to WebSocket connection `id`.
    pub fn set_direct(&mut self, id: u64, conn: Rc<ws::WsConn>) {
        if let Some(slot) = self.conns.get_mut(&id) {
            slot.direct = Some(conn);
        }
    }

    /// Forgets a connection task.
    pub fn remove_conn(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// Connections on this shard.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Brings the shared ring counters up to date with the rings.
    pub fn sync_stats(&mut self) {
        let now = (self.rooms.ring_bytes(), self.rooms.ring_items());
        if now != self.reported {
            let stats = &self.shared.stats[self.index()];
            stats.ring_bytes.fetch_add(now.0, Ordering::Relaxed);
            stats.ring_bytes.fetch_sub(self.reported.0, Ordering::Relaxed);
            stats.ring_items.fetch_add(now.1, Ordering::Relaxed);
            stats.ring_items.fetch_sub(self.reported.1, Ordering::Relaxed);
            self.reported = now;
        }
    }

    /// Pushes a ring item once; the room's parked members are added to `woken` (wake them
    /// once this borrow of the state is released: a direct delivery reads the rings).
    pub fn push(&mut self, room: &str, item: RingItem, woken: &mut Vec<Woken>) {
        self.rooms.push(room, item, &mut self.woken_ids);
        self.wake(woken);
    }

    /// [`ShardState::push`] of a room message (the room is read from the message).
    pub fn push_message(&mut self, delivery: RoomMessage, woken: &mut Vec<Woken>) {
        self.rooms.push_message(delivery, &mut self.woken_ids);
        self.wake(woken);
    }

    /// Turns the ids the last push woke into connections to serve.
    fn wake(&mut self, woken: &mut Vec<Woken>) {
        for conn in self.woken_ids.drain(..) {
            if let Some(slot) = self.conns.get(&conn) {
                woken.push(match &slot.direct {
                    Some(direct) => Woken::Direct(direct.clone()),
                    None => Woken::Task(slot.mailbox.clone()),
                });
            }
        }
    }

    /// Hands a hub answer to the connection it is for (by connection or request id).
    pub fn route(&mut self, id: u64, frame: Frame) {
        let conn = if self.conns.contains_key(&id) { Some(id) } else { self.rooms.conn_of(id) };
        if let Some(slot) = conn.and_then(|c| self.conns.get(&c)) {
            let ring_tail = self.rooms.tail(frame.room());
            slot.mailbox.post(ConnEvent::Hub { frame, ring_tail });
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
                    ShardMsg::Room(delivery) => state.borrow_mut().push_message(delivery, &mut woken),
                    ShardMsg::Marker { room, item } => state.borrow_mut().push(&room, item, &mut woken),
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
            state.borrow_mut().sync_stats();
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
