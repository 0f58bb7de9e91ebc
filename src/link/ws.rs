//! The WebSocket connection driver: one upgraded connection (`upgrade.rs` did the HTTP part)
//! run as a [`WsConnection`] on its shard's thread, by two drivers and no task of its own:
//! - **the shard loop** (delivery path): when a ring the connection is parked on gets a frame,
//!   [`WsConnection::deliver`] moves the connection's new frames into its [`OutQueue`] and
//!   writes them with one non-blocking `writev` — no wake, no channel, no timer touched;
//! - **the shard's WebSocket driver** (`ws_driver.rs`, everything else): the connection is a
//!   slot ([`Served`]) in the driver's slab, stepped when its socket, its mailbox or a timer
//!   wakes it ([`Served::step`]): hub answers and close requests from its mailbox, client frames
//!   (read into the shard's one scratch buffer, decoded in place by `linkcast_core::ws_read`;
//!   only a frame cut by a read is kept, in a buffer freed once it completes), and writing a
//!   full socket as it drains; the driver's tick runs its timers ([`Served::tick`]: keep-alive
//!   ping, idle, stall and lag checks, and the token's expiry: close 1008 `token expired`
//!   within a tick of it, moved by a `refresh`).
//!
//! A connection admitted without a token in its URL ([`Pending::Auth`]) first runs
//! [`authenticate`] in a task of its own: its first message must be `{"op":"auth","token"}`
//! within [`AUTH_TIMEOUT`], or it is closed with 1008 before any session exists. Closing a
//! connection (the close frame, a short wait for the client's) is a task too, only while it
//! lasts.
//!
//! The connection's life (admission, session, close) is the shared [`Connection`]; this file
//! only moves WebSocket frames. Ring frames are pulled only while less than
//! `write_batch_bytes` wait in the socket queue, so a client that does not read costs one batch
//! here plus its ring cursor, never a private copy of the room. An idle connection holds no
//! buffer at all: its memory is its `WsConnection`, its driver slot and its room membership.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use linkcast_core::auth::Claims;
use linkcast_core::link_session::{refuse, ReqId, ToClient, Wire};
use linkcast_core::protocol::{ClientError, ClientOp, Refusal};
use linkcast_core::ws_frame;
use linkcast_core::ws_read::{Incoming, MessageReader};

use crate::config::KeepAlive;
use super::conn_io::{Flushed, OutQueue};
use super::admission::Admitted;
use super::connection::{count_close, ConnContext, Connection, Pending, AUTH_TIMEOUT};
use super::shard::{DirectDelivery, Mailbox};
use super::socket::ClientSocket;
use super::tally;
use super::wire::encode;

/// Time given to a close frame to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of each shard's read buffer.
const SCRATCH_BYTES: usize = 16 * 1024;
/// Most reads from one socket per wake-up (others on the shard get their turn).
const READS_PER_WAKE: usize = 4;

thread_local! {
    /// The shard's one read buffer: every socket of the shard is read into it and decoded in place.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
    /// The shard's one list of items on their way from a session to a socket queue.
    static FRAMES: RefCell<Vec<ToClient>> = const { RefCell::new(Vec::new()) };
}

/// Runs `produce` with the shard's item list and queues what it produced on `out`, encoded, in
/// order.
fn into_queue<R>(out: &mut OutQueue, produce: impl FnOnce(&mut Vec<ToClient>) -> R) -> R {
    FRAMES.with(|frames| match frames.try_borrow_mut() {
        Ok(mut frames) => {
            let result = produce(&mut frames);
            for item in frames.drain(..) {
                out.push(encode(Wire::Ws, item));
            }
            result
        }
        Err(_) => {
            let mut frames = Vec::new();
            let result = produce(&mut frames);
            for item in frames {
                out.push(encode(Wire::Ws, item));
            }
            result
        }
    })
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The Link closes it with this error's close code.
    Refused(ClientError),
    /// The client sent a close frame (with this code): answer it, then hang up.
    PeerClosed(Option<u16>),
    /// The socket failed or reached EOF: nothing more can be sent.
    Gone,
}

/// One upgraded WebSocket connection, shared (`Rc`) by its driver slot and its shard (see the
/// module docs).
#[derive(Debug)]
pub(crate) struct WsConnection {
    socket: ClientSocket,
    conn: RefCell<Connection>,
    out: RefCell<OutQueue>,
    /// The connection's mailbox (kept here, not in `conn`: reached while `conn` is borrowed).
    mailbox: Rc<Mailbox>,
    /// Set by the shard's direct delivery when the connection must end.
    ended: Cell<Option<End>>,
}

impl DirectDelivery for WsConnection {
    /// The shard got frames on a ring this connection is parked on: move them to the socket now
    /// (one non-blocking vectored write); a full socket is left to its driver slot.
    fn deliver(&self) {
        if self.ended.get().is_some() {
            return;
        }
        let Ok(mut out) = self.out.try_borrow_mut() else { return self.mailbox.ring() };
        let Ok(mut conn) = self.conn.try_borrow_mut() else { return self.mailbox.ring() };
        conn.mark_ring();
        if out.queued() > 0 || self.socket.wants_write() {
            // Waiting for the socket already: its slot pulls when it drains.
            return self.mailbox.ring();
        }
        if !conn.shard_free() {
            return self.mailbox.ring();
        }
        let batch = conn.write_batch();
        let filled = into_queue(&mut out, |items| conn.fill(batch, items));
        if let Err(error) = filled {
            self.end(End::Refused(error));
            return;
        }
        match out.flush(&self.socket) {
            Ok(Flushed::All) if !conn.wants_fill() => {}
            Ok(_) => self.mailbox.wake(),
            Err(_) => self.end(End::Gone),
        }
    }
}

impl WsConnection {
    fn end(&self, end: End) {
        if self.ended.get().is_none() {
            self.ended.set(Some(end));
        }
        self.mailbox.wake();
    }

    /// Moves hub answers and ring frames into the socket queue and writes what the socket takes,
    /// pulling more from the rings each time the socket drained, until it is full or there is
    /// nothing more: a connection that was stalled hears of what it lost the moment its socket
    /// drains, not at the next timer tick.
    fn pump(&self) -> Result<(), End> {
        if let Some(end) = self.ended.get() {
            return Err(end);
        }
        let mut out = self.out.borrow_mut();
        let mut conn = self.conn.borrow_mut();
        let result = into_queue(&mut out, |items| conn.handle_events(&self.mailbox, items)).map_err(End::Refused);
        let outcome = loop {
            if let Err(end) = result {
                break Err(end);
            }
            let (queued, batch) = (out.queued(), conn.write_batch());
            if conn.wants_fill() && queued < batch {
                let filled = into_queue(&mut out, |items| conn.fill(batch - queued, items));
                if let Err(error) = filled {
                    break Err(End::Refused(error));
                }
            }
            let flushed = out.flush(&self.socket);
            if matches!(flushed, Ok(Flushed::All)) && out.queued() == 0 {
                // Replays handed out so far have left: a cut one may continue.
                conn.drained();
            }
            match flushed {
                Ok(Flushed::All) if conn.wants_fill() => continue,
                Ok(_) => break Ok(()),
                Err(_) => break Err(End::Gone),
            }
        };
        tally::flush();
        outcome
    }

    /// Reads what the socket has (into the shard's scratch buffer) and handles every whole
    /// message; a frame cut by the read waits in `pending`.
    fn read(&self, reader: &mut MessageReader, pending: &mut Vec<u8>) -> Result<ReadState, End> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut heard = false;
            for _ in 0..READS_PER_WAKE {
                let n = match self.socket.try_read(&mut scratch) {
                    Ok(0) => return Err(End::Gone),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(End::Gone),
                };
                heard = true;
                if pending.is_empty() {
                    let used = self.decode(reader, &mut scratch[..n])?;
                    if used < n {
                        pending.extend_from_slice(&scratch[used..n]);
                    }
                } else {
                    pending.extend_from_slice(&scratch[..n]);
                    let used = self.decode(reader, pending)?;
                    pending.drain(..used);
                    if pending.is_empty() {
                        *pending = Vec::new(); // an idle connection keeps no buffer
                    }
                }
                if n < scratch.len() {
                    break;
                }
            }
            Ok(if heard { ReadState::Heard } else { ReadState::Nothing })
        })
    }

    /// Decodes and handles the whole messages at the front of `buf`; returns the bytes used.
    fn decode(&self, reader: &mut MessageReader, buf: &mut [u8]) -> Result<usize, End> {
        let mut at = 0;
        while let Some((used, message)) = reader.decode(&mut buf[at..]).map_err(End::Refused)? {
            at += used;
            match message {
                Some(Incoming::Text(text)) => self.handle_text(&text)?,
                Some(Incoming::Ping(payload)) => self.out.borrow_mut().push(ws_frame::control_frame(0xa, &payload)),
                Some(Incoming::Pong) | None => {}
                Some(Incoming::Close(code)) => return Err(End::PeerClosed(code)),
            }
        }
        Ok(at)
    }

    fn handle_text(&self, text: &str) -> Result<(), End> {
        let mut conn = self.conn.borrow_mut();
        let result = into_queue(&mut self.out.borrow_mut(), |items| match ClientOp::parse(text) {
            Ok(op) => conn.handle_request(op.into(), items),
            Err(refused) => refuse(refused.error, refused.room.as_deref(), Some(ReqId::Json(refused.id)), items),
        });
        result.map_err(End::Refused)
    }

    /// Waits until everything queued is written (or `CLOSE_TIMEOUT`); false if it was not.
    async fn drain(&self) -> bool {
        let drained = tokio::time::timeout(CLOSE_TIMEOUT, async {
            loop {
                let flushed = self.out.borrow_mut().flush(&self.socket);
                match flushed {
                    Ok(Flushed::All) => return true,
                    Ok(Flushed::Blocked) => {
                        if self.socket.writable().await.is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        drained
    }
}

/// Whether a read found client bytes.
enum ReadState {
    Heard,
    Nothing,
}

/// The first message of a connection without a token in its URL: `{"op":"auth","token"}`
/// within [`AUTH_TIMEOUT`]. `Ok`: its claims and the bytes after that message. `Err(Some)`:
/// close with that error; `Err(None)`: the client went away.
async fn authenticate(
    socket: &ClientSocket,
    mut buf: Vec<u8>,
    reader: &mut MessageReader,
    ctx: &ConnContext,
) -> Result<(Claims, Vec<u8>), Option<ClientError>> {
    let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    loop {
        let mut at = 0;
        while let Some((used, message)) = reader.decode(&mut buf[at..]).map_err(Some)? {
            at += used;
            match message {
                Some(Incoming::Text(text)) => {
                    let claims = Pending::authenticate(ctx, &text).map_err(Some)?;
                    return Ok((claims, buf[at..].to_vec()));
                }
                Some(Incoming::Close(_)) => return Err(None),
                // Control frames are no message: still waiting for `auth`.
                Some(Incoming::Ping(_) | Incoming::Pong) | None => {}
            }
        }
        buf.drain(..at);
        match tokio::time::timeout_at(deadline, socket.read_some(&mut buf)).await {
            Err(_) => return Err(Some(ClientError::AuthTimeout)),
            Ok(Ok(0) | Err(_)) => return Err(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// Closes a connection that never got a session with `error`'s close code and reason.
async fn close_unauthenticated(socket: ClientSocket, error: ClientError) {
    count_close(error);
    let (Refusal::Close(code, reason) | Refusal::Error(code, reason)) = error.refusal();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        socket.write_all(&ws_frame::close(code, reason)).await?;
        // Read (and drop) until the client's close reply or EOF so it reads our reason before
        // the FIN: closing with unread input would reset the connection.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while matches!(socket.read_some(&mut sink).await, Ok(n) if n > 0) {
                sink.clear();
            }
        })
        .await;
        std::io::Result::Ok(())
    })
    .await;
}

/// Starts an upgraded connection on this shard: `early` holds the bytes the client sent right
/// behind its request head. A connection with its token ([`Pending::Ready`]) gets its session
/// and its driver slot ([`Served`]) at once; a [`Pending::Auth`] one first gets a task that
/// waits for its `auth` message, which then starts the same way.
///
/// A running connection has no task: a slot in the shard's driver keeps only what its loop
/// needs between wake-ups — not a task's cell and future (768 bytes), nor the handshake's or the
/// authentication's state.
pub(crate) fn run(socket: ClientSocket, early: Vec<u8>, who: Pending, admitted: Admitted, ctx: Rc<ConnContext>) {
    let reader = MessageReader::new(ctx.link.max_message_bytes);
    match who {
        Pending::Ready(claims) => start(socket, early, claims, reader, admitted, ctx),
        Pending::Auth => {
            tokio::task::spawn_local(async move {
                let mut reader = reader;
                match authenticate(&socket, early, &mut reader, &ctx).await {
                    Ok((claims, early)) => start(socket, early, claims, reader, admitted, ctx),
                    Err(Some(error)) => close_unauthenticated(socket, error).await,
                    Err(None) => {}
                }
            });
        }
    }
}

/// Opens the session of an authenticated connection, hands the shard its direct-delivery
/// handle and puts it in the shard's WebSocket driver (`ws_driver.rs`): from now on it is a slot
/// there, not a task.
fn start(socket: ClientSocket, early: Vec<u8>, claims: Claims, mut reader: MessageReader, admitted: Admitted, ctx: Rc<ConnContext>) {
    let (conn, mailbox) = Connection::open(ctx.clone(), Wire::Ws, claims, admitted);
    let id = conn.id();
    let ws = Rc::new(WsConnection {
        socket,
        conn: RefCell::new(conn),
        out: RefCell::new(OutQueue::default()),
        mailbox,
        ended: Cell::new(None),
    });
    ctx.shard.borrow_mut().set_direct(id, ws.clone());
    // What the client sent behind its head (or its `auth` message) is handled before the
    // connection is first stepped; a frame cut short waits in `pending`.
    let mut pending = Vec::new();
    if !early.is_empty() {
        let mut early = early;
        match ws.decode(&mut reader, &mut early) {
            Ok(used) => pending.extend_from_slice(&early[used..]),
            Err(end) => ws.end(end),
        }
    }
    let now = Stamp::now();
    let ping_every = Duration::from_secs(ctx.link.ping_interval_secs.max(1));
    let pending = (!pending.is_empty()).then(|| Box::new(pending));
    let next_ping = now.after(ping_every);
    let mut served = Served { ws, reader, pending, last_heard: now, last_progress: now, next_ping, next_due: next_ping, reported_queue: 0 };
    served.next_due = served.due(now, crate::clock::now_secs());
    if let Err((served, error)) = ctx.ws_driver.insert(served) {
        // The kernel refused to watch one more socket (`fs.epoll.max_user_watches`): the
        // connection cannot be served; it ends (its client reconnects), the others go on.
        tracing::error!(%error, "cannot watch a client socket; closing it");
        served.finish(&ctx);
    }
}

/// Most rounds of [`Served::step`] (pump, write, read) before a busy connection lets the other
/// connections of the shard go first.
const ROUNDS_PER_STEP: usize = 4;

/// What [`Served::step`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stepped {
    /// Waiting: its socket, mailbox or a tick will wake it.
    Idle,
    /// It could go on (input still readable): step it again after the others.
    More,
    /// The connection ended: take it out and [`Served::finish`] it.
    Ended,
}

/// A running WebSocket connection as its shard's driver holds it: the connection and what
/// its loop keeps between wake-ups (the reader's state, a frame cut by a read, the keep-alive
/// clocks). What used to be the locals of a task per connection, now a slot in a slab: 56
/// bytes, kept small because an idle connection has one.
#[derive(Debug)]
pub(crate) struct Served {
    ws: Rc<WsConnection>,
    reader: MessageReader,
    /// A frame cut by a read, until the rest arrives (rare: boxed, 8 bytes instead of 24).
    #[allow(clippy::box_collection)]
    pending: Option<Box<Vec<u8>>>,
    last_heard: Stamp,
    last_progress: Stamp,
    next_ping: Stamp,
    /// When the driver's tick must next look at it: its next ping or its token's expiry. Kept
    /// here, in the slab, so a tick skips every connection with nothing due without touching it
    /// (1 M connections: 2 M checks a second otherwise, each a cache miss).
    next_due: Stamp,
    /// Socket-queue bytes last added to the shard's `queued_bytes`.
    reported_queue: u32,
}

/// A connection's clock reading in 4 bytes: milliseconds since the process's first reading,
/// wrapping every 49 days. Compared by wrapping difference, which holds for the spans it
/// measures: silence is checked every `ping_interval_secs` (and ends the connection past
/// `idle_timeout_secs`), progress is refreshed while the queue is empty, pings are due within
/// `ping_interval_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(u32);

impl Stamp {
    /// Now.
    pub(crate) fn now() -> Stamp {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        Stamp(EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u32)
    }

    /// `span` later.
    fn after(self, span: Duration) -> Stamp {
        Stamp(self.0.wrapping_add(u32::try_from(span.as_millis()).unwrap_or(u32::MAX / 2)))
    }

    /// Time from `earlier` to this reading.
    fn since(self, earlier: Stamp) -> Duration {
        Duration::from_millis(u64::from(self.0.wrapping_sub(earlier.0)))
    }

    /// Whether this reading is at or past `deadline`.
    fn reached(self, deadline: Stamp) -> bool {
        (self.0.wrapping_sub(deadline.0) as i32) >= 0
    }
}

impl Served {
    /// The connection's mailbox (its driver gives it the slot's waker).
    pub(crate) fn mailbox(&self) -> &Mailbox {
        &self.ws.mailbox
    }

    /// The connection's socket (its driver watches it in the shard's epoll set).
    pub(crate) fn socket(&self) -> &ClientSocket {
        &self.ws.socket
    }

    /// Runs the connection until it has to wait, as its task did on each wake-up: mailbox
    /// events and ring frames into the socket queue ([`WsConnection::pump`]), the socket written
    /// while it takes bytes, the client's input read while the queue leaves room for replies.
    /// A socket that would block waits for its next event from the shard's epoll set
    /// (`socket_poll.rs`), which steps the slot again.
    pub(crate) fn step(&mut self, ctx: &ConnContext) -> Stepped {
        match self.rounds(ctx) {
            Ok((stepped, heard)) => {
                if heard {
                    // A client message may have been a `refresh`: the token's expiry moved.
                    self.next_due = self.due(Stamp::now(), crate::clock::now_secs());
                }
                stepped
            }
            Err(end) => {
                self.ws.ended.set(Some(end));
                Stepped::Ended
            }
        }
    }

    /// [`Served::step`]'s rounds; also says whether the client was heard.
    fn rounds(&mut self, ctx: &ConnContext) -> Result<(Stepped, bool), End> {
        let ws = &*self.ws;
        let mut heard = false;
        // Above this, client input is not read until the socket drains (replies need room too).
        let input_cap = ctx.link.write_batch_bytes.max(1) * 2 + 64 * 1024;
        for _ in 0..ROUNDS_PER_STEP {
            ws.pump()?;
            let queued = ws.out.borrow().queued();
            let reported = u32::try_from(queued).unwrap_or(u32::MAX);
            if reported != self.reported_queue {
                ctx.stats.queued_bytes.fetch_add(reported as usize, Ordering::Relaxed);
                ctx.stats.queued_bytes.fetch_sub(self.reported_queue as usize, Ordering::Relaxed);
                self.reported_queue = reported;
            }
            // Progress, or nothing waiting: the stall clock starts over.
            if ws.out.borrow_mut().take_progress() || queued == 0 {
                self.last_progress = Stamp::now();
            }
            let mut again = false;
            if (queued > 0 || ws.socket.wants_write()) && ws.socket.write_ready() {
                again = true;
            }
            if queued < input_cap && ws.socket.read_ready() {
                let mut pending = self.pending.take().map(|cut| *cut).unwrap_or_default();
                let read = ws.read(&mut self.reader, &mut pending)?;
                if !pending.is_empty() {
                    self.pending = Some(Box::new(pending));
                }
                if let ReadState::Heard = read {
                    self.last_heard = Stamp::now();
                    heard = true;
                }
                again = true;
            }
            if !again {
                return Ok((Stepped::Idle, heard));
            }
        }
        Ok((Stepped::More, heard))
    }

    /// The connection's timers, at a driver tick: nothing unless something is due
    /// ([`Served::due`]: the common case costs one comparison in the slab). Then the token's
    /// expiry (close 1008 `token expired`), and every `ping_interval_secs` the idle and stall
    /// checks (silent for `idle_timeout_secs`, or a socket queue that did not move for as long),
    /// the session's check (lag policy) and a keep-alive ping. True when it must be stepped (it
    /// ended, or a ping waits in its queue).
    pub(crate) fn tick(&mut self, now: Stamp, now_secs: u64, ctx: &ConnContext) -> bool {
        if !now.reached(self.next_due) {
            return false;
        }
        let stepped = self.timers(now, now_secs, ctx);
        self.next_due = self.due(now, now_secs);
        stepped
    }

    fn timers(&mut self, now: Stamp, now_secs: u64, ctx: &ConnContext) -> bool {
        let ws = &*self.ws;
        let Ok(conn) = ws.conn.try_borrow() else { return false };
        if conn.expires() <= now_secs {
            drop(conn);
            ws.end(End::Refused(ClientError::TokenExpired));
            return true;
        }
        if !now.reached(self.next_ping) {
            return false;
        }
        let link = &ctx.link;
        self.next_ping = now.after(Duration::from_secs(link.ping_interval_secs.max(1)));
        let idle = Duration::from_secs(link.idle_timeout_secs.max(1));
        let queued = ws.out.borrow().queued();
        // With the kernel's keep-alive (`link.keepalive = "tcp"`) a dead client ends its socket
        // by itself: no ping, and silence is no reason to close (a member that only reads says
        // nothing for hours).
        let pings = link.keepalive == KeepAlive::Ping;
        let silent = pings && now.since(self.last_heard) > idle;
        let stalled = queued > 0 && now.since(self.last_progress) > idle;
        let checked = conn.check();
        drop(conn);
        if silent || stalled {
            ws.end(End::Refused(ClientError::Idle));
        } else if let Err(error) = checked {
            ws.end(End::Refused(error));
        } else if pings {
            ws.out.borrow_mut().push(ws_frame::ping());
        }
        true
    }

    /// When a tick must next look at this connection: its next ping, or its token's expiry if
    /// that comes first (at most an hour ahead: looked at again then, like a refresh).
    fn due(&self, now: Stamp, now_secs: u64) -> Stamp {
        // Borrowed elsewhere (it never is between steps): look again at the next tick.
        let exp = self.ws.conn.try_borrow().map_or(now_secs, |conn| conn.expires());
        let expiry = now.after(Duration::from_secs(exp.saturating_sub(now_secs).min(3600)));
        if expiry.reached(self.next_ping) {
            self.next_ping
        } else {
            expiry
        }
    }

    /// Ends a connection its step said [`Stepped::Ended`]: the session leaves its rooms, and a
    /// task of its own (only while it closes) writes the close frame.
    pub(crate) fn finish(self, ctx: &Rc<ConnContext>) {
        let Served { ws, reported_queue, .. } = self;
        let end = ws.ended.get().unwrap_or(End::Gone);
        ws.conn.borrow_mut().finish();
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            close(&ws, end, ctx.link.max_message_bytes).await;
            ctx.stats.queued_bytes.fetch_sub(reported_queue as usize, Ordering::Relaxed);
        });
    }
}

/// Ends a connection that had a session: a close frame with `end`'s code and reason (the client's
/// own code echoed when it closed first), written within [`CLOSE_TIMEOUT`]; nothing when the
/// socket is gone.
async fn close(ws: &WsConnection, end: End, max_message_bytes: usize) {
    match end {
        End::Refused(error) => {
            count_close(error);
            if let Refusal::Close(code, text) = error.refusal() {
                if error == ClientError::SlowConsumer {
                    ws.out.borrow_mut().discard_unsent();
                }
                let close = match ws.conn.borrow().close_reason() {
                    Some(reason) => ws_frame::close(code, reason),
                    None => ws_frame::close(code, text),
                };
                ws.out.borrow_mut().push(close);
                if ws.drain().await {
                    // Wait briefly for the client's close reply so it reads our reason before
                    // the FIN (closing with unread input would reset the connection).
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        let mut closing = MessageReader::new(max_message_bytes);
                        let mut rest = Vec::new();
                        loop {
                            if ws.socket.readable().await.is_err() {
                                break;
                            }
                            match ws.read_until_close(&mut closing, &mut rest) {
                                Ok(false) => {}
                                _ => break,
                            }
                        }
                    })
                    .await;
                }
            }
        }
        End::PeerClosed(code) => {
            // Echo the client's code (RFC 6455 §5.5.1); 1005 "no code" cannot be sent back.
            let code = code.filter(|c| *c != 1005).unwrap_or(1000);
            ws.out.borrow_mut().push(ws_frame::close(code, ""));
            ws.drain().await;
        }
        End::Gone => {}
    }
}

impl WsConnection {
    /// After our close frame: discards client input until its close frame (`Ok(true)`), EOF or
    /// an error; `Ok(false)` = nothing more yet.
    fn read_until_close(&self, reader: &mut MessageReader, pending: &mut Vec<u8>) -> std::io::Result<bool> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match self.socket.try_read(&mut scratch) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            pending.extend_from_slice(&scratch[..n]);
            let mut at = 0;
            loop {
                match reader.decode(&mut pending[at..]) {
                    Ok(Some((_, Some(Incoming::Close(_))))) | Err(_) => return Ok(true),
                    Ok(Some((used, _))) => at += used,
                    Ok(None) => break,
                }
            }
            pending.drain(..at);
            Ok(false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_compare_across_the_wrap() {
        let before_wrap = Stamp(u32::MAX - 500);
        let after = before_wrap.after(Duration::from_millis(1_500));
        assert_eq!(after, Stamp(999));
        assert_eq!(after.since(before_wrap), Duration::from_millis(1_500));
        assert!(after.reached(before_wrap) && after.reached(after));
        assert!(!before_wrap.reached(after), "a deadline 1.5 s ahead across the wrap is not reached");
    }

    #[test]
    fn an_idle_connection_slot_stays_small() {
        // What every idle connection costs its shard's driver (issue 17: Link memory per
        // connection); a field added here is paid a million times.
        assert!(std::mem::size_of::<Served>() <= 56, "{}", std::mem::size_of::<Served>());
    }

    #[test]
    fn a_connection_record_fits_the_256_byte_allocation_class() {
        // Every connection's record is one allocation of this type in an `Rc` (16 bytes more).
        // At 256 bytes it fits mimalloc's 256-byte size class; 8 bytes more take a 320-byte
        // block: 64 bytes per connection, 61 MiB a million. For this reason the session's
        // counters and its queue for the coordinator are the shard's (`SessionOut`), the
        // token's claims are kept as a few fields, a publisher's state is boxed
        // (`Occasional`), the bytes written go to the shard's tally, and the connection keeps
        // neither its admission guard nor a second pointer to its mailbox.
        let record = std::mem::size_of::<WsConnection>() + 16;
        assert!(record <= 256, "{record} bytes");
    }

    #[test]
    fn a_mailbox_fits_the_80_byte_allocation_class() {
        // Every connection has one, in an `Rc` (16 bytes more): 80 bytes is a size class of
        // its own; 8 more take 96.
        let mailbox = std::mem::size_of::<Mailbox>() + 16;
        assert!(mailbox <= 80, "{mailbox} bytes");
    }
}
