//! The linkcast client library: connect to a Link, join rooms, publish, and survive drops.
//!
//! A [`Client`] is a handle to one background task (the *connection task*) that owns one
//! connection at a time — WebSocket or QUIC, found directly or through the hub's `locate` — and a
//! sans-IO [`Session`] that decides everything about rooms and retries. When the connection drops
//! the task waits the session's jittered backoff (longer after close 1013 or an HTTP 503 / retry
//! hint), locates again, reconnects and rejoins every room with its position — the room's epoch
//! and the last seq it delivered; replayed messages it already had are dropped; what the server
//! could no longer replay arrives as an [`Event::Gap`], a room whose history was lost (new epoch)
//! as an [`Event::Reset`]. So the application sees each room's messages in order, once, and is
//! told explicitly about any hole (docs/protocol.md, "Ordering and exactly-once"). A join or
//! publish the Link refuses with 503 and a retry hint (it lost its hub) is sent again after the
//! hint — a publish with the same id, so the hub sequences it once.
//!
//! Layout:
//! - `session.rs`: the resume/dedupe/retry/backoff state machine ([`Session`], sans-IO,
//!   unit-tested; [`Session::handle_server_msg`] is the one place a server message is applied);
//! - [`linkcast_core::protocol`]: the WebSocket JSON messages (shared with the Link); `ws.rs`,
//!   `quic.rs`: the two transports (crate-internal; `linkcast bench` dials with `ws.rs` too);
//! - [`http`]: the hub's HTTP API (locate, publish) over a keep-alive connection;
//! - this file: the connection task and the public handle.
//!
//! ```no_run
//! use linkcast::client::{Client, ClientOptions, Event, Target};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Locate the room's Link through the hub, then connect over WebSocket.
//! let options = ClientOptions::new(Target::locate_ws("http://127.0.0.1:7070", "lobby"));
//! let mut client = Client::start(options);
//! client.join("lobby")?;
//! client.publish("lobby", &serde_json::json!({"text": "hello"})).await?;
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         Event::Message(m) => println!("#{} {}: {}", m.seq, m.from, m.data),
//!         Event::Gap { first_lost, last_lost, .. } => println!("lost {first_lost}..={last_lost}"),
//!         Event::Closed { .. } => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod http;
mod quic;
mod session;
pub(crate) mod ws;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::http::{HttpApi, HttpError};
use self::quic::QuicTransport;
pub use self::session::{
    Backoff, Disconnect, Event, Message, MessageVerdict, Received, Session, SessionConfig, SessionError, SessionStats, MAX_RETRIES,
};
use self::ws::{WsTransport, WsUrl};
use crate::tls::Trust;
pub use linkcast_core::protocol::ClientOp;
use linkcast_core::protocol::ServerMsg;

/// Where a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Link's WebSocket URL (`ws://127.0.0.1:7080/ws`).
    Ws(String),
    /// A Link's QUIC address.
    Quic(SocketAddr),
    /// Ask the hub at `http` where `room` lives before every (re)connect; use `transport`.
    Locate {
        /// Hub base URL (`http://127.0.0.1:7070`).
        http: String,
        /// Room to locate (the client may join others on the same connection).
        room: String,
        /// Transport to the located Link.
        transport: Transport,
    },
}

impl Target {
    /// Locate `room` through the hub at `http`, then WebSocket.
    pub fn locate_ws(http: &str, room: &str) -> Target {
        Target::Locate { http: http.into(), room: room.into(), transport: Transport::Ws }
    }
}

/// Transport to a located Link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket (JSON text).
    Ws,
    /// QUIC (frames).
    Quic,
}

/// How a [`Client`] connects and behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Where to connect.
    pub target: Target,
    /// The JWT (None in dev mode).
    pub token: Option<String>,
    /// Source address to connect from (None: the system's choice).
    pub bind: Option<IpAddr>,
    /// Session tuning (backoff, publish queue).
    pub session: SessionConfig,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// Bound on one connect (TCP/QUIC handshake + upgrade).
    pub connect_timeout: Duration,
    /// Application ping period while the connection is quiet.
    pub ping_interval: Duration,
    /// Events buffered for the application before the connection task waits for it.
    pub event_buffer: usize,
    /// How `https://`, `wss://` and QUIC servers are checked (default: unverified, loopback
    /// servers only — set a CA or pin for anything else).
    pub trust: Trust,
}

impl ClientOptions {
    /// Defaults for `target`: no token, 5 s connect timeout, 15 s pings, random jitter seed.
    pub fn new(target: Target) -> ClientOptions {
        let seed = crate::clock::now_micros() | 1;
        ClientOptions {
            target,
            token: None,
            bind: None,
            session: SessionConfig::default(),
            seed,
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            event_buffer: 1024,
            trust: Trust::LoopbackDev,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The room name is not valid (docs/protocol.md "Names and limits").
    #[error("invalid room name {0:?}")]
    BadRoom(String),
    /// The session refused (queue full, closed).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The payload could not be serialized.
    #[error("payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// The connection task has ended.
    #[error("client stopped")]
    Stopped,
}

enum Command {
    Join(String),
    Leave(String),
    Publish(String, Bytes, oneshot::Sender<Result<u64, SessionError>>),
    Refresh(String),
    DropConnection,
    Close,
}

/// A resuming client (see the module docs). Dropping it stops the connection task.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<SessionStats>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Join(_) => "Join",
            Command::Leave(_) => "Leave",
            Command::Publish(..) => "Publish",
            Command::Refresh(_) => "Refresh",
            Command::DropConnection => "DropConnection",
            Command::Close => "Close",
        })
    }
}

impl Client {
    /// Starts the connection task (on the current tokio runtime); it connects right away.
    pub fn start(options: ClientOptions) -> Client {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(options.event_buffer.max(1));
        let session = Session::new(options.session, options.seed);
        let task = tokio::spawn(ConnectionTask { options, session, commands: command_rx, events: event_tx, http: None }.run());
        Client { commands, events, task }
    }

    /// Joins `room` (rejoined automatically after reconnects).
    pub fn join(&self, room: &str) -> Result<(), Error> {
        check_room(room)?;
        self.commands.send(Command::Join(room.to_owned())).map_err(|_| Error::Stopped)
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) -> Result<(), Error> {
        check_room(room)?;
        self.commands.send(Command::Leave(room.to_owned())).map_err(|_| Error::Stopped)
    }

    /// Publishes `data` to `room`; returns the id the matching [`Event::Published`] (or
    /// [`Event::Error`]) carries. Waits for a connection if there is none (bounded queue).
    pub async fn publish(&self, room: &str, data: &serde_json::Value) -> Result<u64, Error> {
        check_room(room)?;
        let bytes = Bytes::from(serde_json::to_vec(data)?);
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Publish(room.to_owned(), bytes, tx)).map_err(|_| Error::Stopped)?;
        Ok(rx.await.map_err(|_| Error::Stopped)??)
    }

    /// Hands the Link a fresh token for the same user before the current one expires, so a
    /// long-lived connection is not closed at expiry (WebSocket `{"op":"refresh"}`; answered by
    /// [`Event::Refreshed`]). Reconnects use the new token; over QUIC only they do.
    pub fn refresh(&self, token: &str) -> Result<(), Error> {
        self.commands.send(Command::Refresh(token.to_owned())).map_err(|_| Error::Stopped)
    }

    /// The next event; `None` once the connection task has ended (after [`Event::Closed`]).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Cuts the current connection abruptly, as a network failure would (for tests and
    /// `linkcast bench resume`); the client then reconnects and resumes as usual.
    pub fn drop_connection(&self) {
        let _ = self.commands.send(Command::DropConnection);
    }

    /// Closes the connection politely and ends the connection task; returns the session's counters.
    pub async fn close(self) -> SessionStats {
        let _ = self.commands.send(Command::Close);
        let Client { events, task, .. } = self;
        // The task may be waiting for room in the event channel: let it finish.
        drop(events);
        task.await.unwrap_or_default()
    }
}

fn check_room(room: &str) -> Result<(), Error> {
    if linkcast_core::frame::is_valid_room(room) {
        Ok(())
    } else {
        Err(Error::BadRoom(room.to_owned()))
    }
}

/// One live connection of either transport.
enum Conn {
    Ws(Box<WsTransport>),
    Quic(Box<QuicTransport>),
}

impl Conn {
    async fn send(&mut self, op: &ClientOp) -> Result<(), Disconnect> {
        match self {
            Conn::Ws(ws) => ws.send_text(op.to_json()).await.map_err(|e| e.to_disconnect()),
            Conn::Quic(q) => q.send_op(op).await.map_err(|e| e.to_disconnect()),
        }
    }

    /// The next server message, owned. A malformed text is skipped (and logged), not fatal.
    async fn recv(&mut self) -> Result<ServerMsg<'static, serde_json::Value>, Disconnect> {
        match self {
            Conn::Ws(ws) => loop {
                let msg = ws.recv().await.map_err(|e| e.to_disconnect())?;
                let Some(text) = msg.as_text() else { continue };
                match ServerMsg::<serde_json::Value>::decode(text) {
                    Ok(decoded) => return Ok(decoded.into_owned()),
                    Err(e) => tracing::debug!("client: skipping server message: {e}"),
                }
            },
            Conn::Quic(q) => q.recv().await.map_err(|e| e.to_disconnect()),
        }
    }

    async fn close(self) {
        match self {
            Conn::Ws(ws) => ws.close().await,
            Conn::Quic(q) => q.close().await,
        }
    }
}

/// How a connection ended.
enum Ended {
    /// Lost (or dropped on purpose): retry.
    Lost(Disconnect),
    /// The application closed the client.
    Closed,
}

/// The task behind a [`Client`]: owns the session and one connection at a time, applies the
/// handle's commands and hands the session's events to the application.
struct ConnectionTask {
    options: ClientOptions,
    session: Session,
    /// From the [`Client`] handle; closed when it is dropped.
    commands: mpsc::UnboundedReceiver<Command>,
    /// To the application (bounded by [`ClientOptions::event_buffer`]).
    events: mpsc::Sender<Event>,
    /// The hub's HTTP API, kept across reconnects for `locate` (opened at the first one).
    http: Option<HttpApi>,
}

impl ConnectionTask {
    /// Connect, run, wait, reconnect — until the session closes or the handle is dropped.
    async fn run(mut self) -> SessionStats {
        loop {
            if !self.wait_for_connect().await {
                break;
            }
            match self.connect().await {
                Ok(conn) => {
                    self.session.handle_connected(Instant::now().into_std());
                    match self.serve(conn).await {
                        Ended::Lost(cause) => self.session.handle_disconnected(Instant::now().into_std(), cause),
                        Ended::Closed => self.session.close("closed by the application"),
                    }
                }
                Err(cause) => self.session.handle_disconnected(Instant::now().into_std(), cause),
            }
            if !self.flush_events().await {
                break;
            }
        }
        let _ = self.flush_events().await;
        self.session.stats()
    }

    /// Waits until the session wants a connection, applying commands meanwhile. False: stop.
    async fn wait_for_connect(&mut self) -> bool {
        loop {
            if self.session.is_closed() {
                return false;
            }
            if self.session.poll_connect(Instant::now().into_std()) {
                return true;
            }
            let wake = self.session.poll_timeout().map(Instant::from_std);
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Close) | None => self.session.close("closed by the application"),
                    Some(command) => self.apply(command),
                },
                _ = sleep_until(wake) => {}
            }
            if !self.flush_events().await {
                return false;
            }
        }
    }

    async fn connect(&mut self) -> Result<Conn, Disconnect> {
        let timeout = self.options.connect_timeout;
        let token = self.session.token().map(str::to_owned).or_else(|| self.options.token.clone());
        let bind = self.options.bind;
        let (transport, ws_url, quic_addr) = match &self.options.target {
            Target::Ws(url) => (Transport::Ws, Some(url.clone()), None),
            Target::Quic(addr) => (Transport::Quic, None, Some(*addr)),
            Target::Locate { http, room, transport } => {
                let (http, room, transport) = (http.clone(), room.clone(), *transport);
                let api = match &mut self.http {
                    Some(api) => api,
                    // The client's token is its credential for locate on a secured hub.
                    None => self.http.insert(
                        HttpApi::with_trust(&http, token.clone(), self.options.trust.clone()).map_err(|e| Disconnect::io(e.to_string()))?,
                    ),
                };
                let links = api.locate(&room).await.map_err(locate_disconnect)?;
                // Rotate through the group on successive retries: the best Link may be the one down.
                let pick = self.session.stats().disconnects as usize % links.len().max(1);
                let link = links.get(pick).ok_or_else(|| Disconnect::io("locate returned no Links"))?;
                let quic = crate::client::http::resolve(&link.quic);
                (transport, Some(link.ws.clone()), quic)
            }
        };
        match transport {
            Transport::Ws => {
                let url = ws_url.ok_or_else(|| Disconnect::io("no WebSocket URL"))?;
                let url = WsUrl::parse(&url, token.as_deref()).map_err(|e| Disconnect::io(e.to_string()))?;
                WsTransport::connect(&url, bind, timeout, &self.options.trust).await.map(|c| Conn::Ws(Box::new(c))).map_err(|e| e.to_disconnect())
            }
            Transport::Quic => {
                let addr = quic_addr.ok_or_else(|| Disconnect::io("no QUIC address"))?;
                QuicTransport::connect(addr, token.as_deref(), bind, timeout, &self.options.trust)
                    .await
                    .map(|q| Conn::Quic(Box::new(q)))
                    .map_err(|e| e.to_disconnect())
            }
        }
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, mut conn: Conn) -> Ended {
        let mut ping = tokio::time::interval(self.options.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            while let Some(op) = self.session.poll_transmit() {
                if let Err(cause) = conn.send(&op).await {
                    return Ended::Lost(cause);
                }
            }
            if !self.flush_events().await {
                conn.close().await;
                return Ended::Closed;
            }
            tokio::select! {
                biased;
                msg = conn.recv() => match msg {
                    Ok(msg) => {
                        if let Some(message) = self.handle(msg) {
                            if !self.flush_events().await || self.events.send(Event::Message(message)).await.is_err() {
                                conn.close().await;
                                return Ended::Closed;
                            }
                        }
                    }
                    Err(cause) => return Ended::Lost(cause),
                },
                command = self.commands.recv() => match command {
                    Some(Command::DropConnection) => {
                        // No close frame: the server sees the socket vanish, as on a network cut.
                        drop(conn);
                        return Ended::Lost(Disconnect::io("connection dropped by the application"));
                    }
                    Some(Command::Close) | None => {
                        conn.close().await;
                        return Ended::Closed;
                    }
                    Some(command) => self.apply(command),
                },
                _ = ping.tick() => self.session.ping(),
                _ = sleep_until(self.session.poll_timeout().map(Instant::from_std)) => {
                    self.session.handle_timeout(Instant::now().into_std());
                }
            }
        }
    }

    /// Feeds one server message to the session; returns a message to deliver, if any.
    fn handle(&mut self, msg: ServerMsg<'static, serde_json::Value>) -> Option<Message> {
        match self.session.handle_server_msg(Instant::now().into_std(), msg) {
            Received::Deliver { room, seq, from, ts, data } => Some(Message { room: room.into_owned(), seq, from: from.into_owned(), ts, data }),
            Received::Duplicate | Received::Joined | Received::Refused { .. } | Received::Absorbed => None,
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Join(room) => self.session.join(&room),
            Command::Leave(room) => self.session.leave(&room),
            Command::Publish(room, data, reply) => {
                let _ = reply.send(self.session.publish(&room, data));
            }
            Command::Refresh(token) => self.session.refresh(&token),
            Command::DropConnection | Command::Close => {}
        }
    }

    /// Hands the session's events to the application. False if the application is gone.
    async fn flush_events(&mut self) -> bool {
        while let Some(event) = self.session.poll_event() {
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        true
    }
}

fn locate_disconnect(e: HttpError) -> Disconnect {
    match e {
        HttpError::Status { status, body, retry_after } => {
            Disconnect { http_status: Some(status), reason: body, retry_after, ..Disconnect::default() }
        }
        other => Disconnect::io(other.to_string()),
    }
}

/// Sleeps until `at`; with no instant, forever (a `select!` arm that never fires).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
