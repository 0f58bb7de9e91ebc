//! WebSocket clients: the HTTP checks and the upgrade, then one small task per connection that
//! the shard can bypass on the delivery path.
//!
//! Before the upgrade (plain HTTP/1.1, read here with a size and time limit), in this order:
//! `GET /healthz` and `GET /metrics` are answered directly; anything but `/ws` is 404; a
//! missing upgrade or WebSocket version other than 13 is 400; a refused `Origin` is 403, a full
//! Link 503, a missing/bad/expired token 401 — each with the JSON body `{"error","reason"}` of
//! docs/protocol.md. Then the Link answers `101 Switching Protocols` itself (RFC 6455 §4.2.2)
//! and drops every byte of the HTTP exchange.
//!
//! After the upgrade a connection is a [`WsConn`] shared by two drivers on the shard's thread:
//! - **the shard loop** (delivery path): when a ring the connection is parked on gets a frame,
//!   [`WsConn::deliver`] moves the connection's new frames into its [`OutQueue`] and writes them
//!   with one non-blocking `writev` — no task wake, no channel, no timer touched;
//! - **its task** (everything else): hub answers and close requests from its [`Mailbox`],
//!   client frames (read into the shard's one scratch buffer, decoded in place by `linkcast_core::ws_read`; only
//!   a frame cut by a read is kept, in a buffer freed once it completes), waiting for a full
//!   socket to drain, and a ping timer (keep-alive, idle, stall, lag and token-expiry checks).
//!
//! Ring frames are pulled by the [`LinkSession`] only while less than `write_batch_bytes` wait in
//! the socket queue, so a client that does not read costs one batch here plus its ring cursor,
//! never a private copy of the room. An idle connection holds no buffer at all: its memory is
//! its `WsConn`, its task and its room membership.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn_io::{Flushed, OutQueue};
use linkcast_core::protocol::{ClientError, Refusal};
use super::session::{encode, ReqId, LinkSession, ToClient, Wire};
use linkcast_core::link_session::refuse;
use linkcast_core::protocol::ClientOp;
use super::shard::{ConnEvent, Mailbox, Registered, ShardState};
use linkcast_core::ws_frame;

use super::tally;
use linkcast_core::ws_read::{Incoming, MessageReader};
use super::Shared;
use crate::clock::now_micros;

/// Longest HTTP request head accepted before the upgrade.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time given to a close frame to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts TCP connections on this shard's listening socket until aborted.
pub async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, state: Rc<RefCell<ShardState>>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::task::spawn_local(handle_tcp(tcp, shared.clone(), state.clone()));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What the Link needs from the request head.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    query: String,
    origin: Option<String>,
    upgrade: bool,
    /// `Sec-WebSocket-Key`.
    key: Option<String>,
    /// `Sec-WebSocket-Version`.
    version: Option<String>,
    /// Bytes of the head (what follows is the client's first frames, if it sent any early).
    len: usize,
}

fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    let target = request.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    Some(Head {
        method: request.method?.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        origin: header("origin").map(str::to_owned),
        upgrade: header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        key: header("sec-websocket-key").map(str::to_owned),
        version: header("sec-websocket-version").map(str::to_owned),
        len,
    })
}

/// The value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads up to the end of the request head; `None` if the peer closed or sent too much.
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn respond(tcp: &mut TcpStream, status: u16, content_type: &str, body: &str) {
    let text = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

async fn refuse_http(tcp: &mut TcpStream, status: u16, error: &str, reason: &str) {
    let body = serde_json::json!({"error": error, "reason": reason}).to_string();
    respond(tcp, status, "application/json", &body).await;
}

/// Decrements the Link's connection count when dropped.
struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_tcp(tcp: TcpStream, shared: Arc<Shared>, state: Rc<RefCell<ShardState>>) {
    // Everything of the HTTP exchange is dropped before the connection runs (an idle
    // connection keeps no request bytes).
    let Some((tcp, early, claims, admitted)) = upgrade(tcp, &shared, &state).await else { return };
    run_connection(tcp, early, claims, shared, state).await;
    drop(admitted);
}

/// Checks the request head and answers it: an HTTP error, or `101 Switching Protocols` and the
/// socket, the bytes the client sent behind its head, its claims and its admission.
async fn upgrade(
    mut tcp: TcpStream,
    shared: &Arc<Shared>,
    state: &Rc<RefCell<ShardState>>,
) -> Option<(TcpStream, Vec<u8>, linkcast_core::auth::Claims, Admitted)> {
    let _ = tcp.set_nodelay(true);
    if shared.config.link.socket_send_buffer > 0 {
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(shared.config.link.socket_send_buffer);
    }
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            refuse_http(&mut tcp, 431, "bad_request", "request head too large or incomplete").await;
            return None;
        }
        _ => return None,
    };
    let Some(request) = parse_head(&head) else {
        refuse_http(&mut tcp, 400, "bad_request", "malformed HTTP request").await;
        return None;
    };
    if request.method != "GET" {
        refuse_http(&mut tcp, 400, "bad_request", "only GET is served").await;
        return None;
    }
    match request.path.as_str() {
        "/healthz" => {
            respond(&mut tcp, 200, "application/json", r#"{"status":"ok"}"#).await;
            return None;
        }
        "/metrics" => {
            let text = crate::telemetry::prometheus().render();
            respond(&mut tcp, 200, "text/plain; version=0.0.4", &text).await;
            return None;
        }
        "/ws" => {}
        _ => {
            refuse_http(&mut tcp, 404, "not_found", "no such route").await;
            return None;
        }
    }
    let key = match (&request.key, request.upgrade, request.version.as_deref()) {
        (Some(key), true, Some("13")) => key,
        (_, true, Some(version)) if version != "13" => {
            refuse_http(&mut tcp, 400, "bad_request", "unsupported WebSocket version (need 13)").await;
            return None;
        }
        _ => {
            refuse_http(&mut tcp, 400, "bad_request", "expected a WebSocket upgrade").await;
            return None;
        }
    };
    let link = &shared.config.link;
    if !link.allowed_origins.is_empty() {
        let allowed = request.origin.as_deref().is_some_and(|o| link.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            metrics::counter!("linkcast_link_closes_total", "reason" => "origin not allowed").increment(1);
            refuse_http(&mut tcp, 403, "forbidden", "origin not allowed").await;
            return None;
        }
    }
    if shared.connections.fetch_add(1, Ordering::Relaxed) >= link.max_connections || state.borrow().stopping {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        refuse_http(&mut tcp, 503, "unavailable", "too many connections").await;
        return None;
    }
    let admitted = Admitted(shared.clone());
    let token = query_param(&request.query, "token");
    let anonymous = format!("anon-{}", shared.anonymous.fetch_add(1, Ordering::Relaxed) + 1);
    let now_secs = now_micros() / 1_000_000;
    let claims = match shared.verifier.verify(token.as_deref(), now_secs, &anonymous) {
        Ok(claims) => claims,
        Err(error) => {
            metrics::counter!("linkcast_link_auth_failures_total").increment(1);
            refuse_http(&mut tcp, 401, "unauthorized", error.reason()).await;
            return None;
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    match tokio::time::timeout(HEAD_TIMEOUT, tcp.write_all(response.as_bytes())).await {
        Ok(Ok(())) => {}
        _ => return None,
    }
    let early = head[request.len..].to_vec();
    Some((tcp, early, claims, admitted))
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    use base64::Engine;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

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

/// One upgraded WebSocket connection, shared (`Rc`) by its task and its shard (see the module docs).
#[derive(Debug)]
pub struct WsConn {
    tcp: TcpStream,
    session: RefCell<LinkSession>,
    state: Rc<RefCell<ShardState>>,
    shared: Arc<Shared>,
    out: RefCell<OutQueue>,
    mailbox: Rc<Mailbox>,
    /// Ring frames are pulled only while less than this waits in `out`.
    batch: usize,
    /// Set by the shard's direct delivery when the connection must end.
    ended: Cell<Option<End>>,
}

impl WsConn {
    /// The shard got frames on a ring this connection is parked on: move them to the socket now
    /// (one non-blocking vectored write); a full socket is left to the task.
    pub fn deliver(&self) {
        if self.ended.get().is_some() {
            return;
        }
        let Ok(mut out) = self.out.try_borrow_mut() else { return self.mailbox.ring() };
        let Ok(mut session) = self.session.try_borrow_mut() else { return self.mailbox.ring() };
        session.dirty = true;
        if out.queued() > 0 {
            // Waiting for the socket already: the task pulls when it drains.
            return self.mailbox.ring();
        }
        let Ok(mut state) = self.state.try_borrow_mut() else { return self.mailbox.ring() };
        let filled = into_queue(&mut out, |items| session.fill(self.batch, &mut state.rooms, items));
        drop(state);
        super::session::forward(&mut session, &self.shared);
        if let Err(error) = filled {
            self.end(End::Refused(error));
            return;
        }
        match out.flush(&self.tcp) {
            Ok(Flushed::All) if !session.dirty => {}
            Ok(_) => self.mailbox.wake(),
            Err(_) => self.end(End::Gone),
        }
        tally::wrote(out.take_written());
    }

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
        let mut session = self.session.borrow_mut();
        let result = into_queue(&mut out, |items| {
            let mut state = self.state.borrow_mut();
            while let Some(event) = self.mailbox.next_event() {
                match event {
                    ConnEvent::Hub { frame, ring_tail } => session.handle_hub_frame(frame, ring_tail, &mut state.rooms, items),
                    ConnEvent::Close(error) => return Err(End::Refused(error)),
                }
            }
            Ok(())
        });
        if self.mailbox.take_ring() {
            session.dirty = true;
        }
        let outcome = loop {
            if let Err(end) = result {
                break Err(end);
            }
            let queued = out.queued();
            if session.dirty && queued < self.batch {
                let filled = into_queue(&mut out, |items| session.fill(self.batch - queued, &mut self.state.borrow_mut().rooms, items));
                if let Err(error) = filled {
                    break Err(End::Refused(error));
                }
            }
            match out.flush(&self.tcp) {
                Ok(Flushed::All) if session.dirty => continue,
                Ok(_) => break Ok(()),
                Err(_) => break Err(End::Gone),
            }
        };
        super::session::forward(&mut session, &self.shared);
        tally::wrote(out.take_written());
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
                let n = match self.tcp.try_read(&mut scratch) {
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
        let mut session = self.session.borrow_mut();
        let result = into_queue(&mut self.out.borrow_mut(), |items| match ClientOp::parse(text) {
            Ok(op) => session.handle_request(op.into(), now_micros(), &mut self.state.borrow_mut().rooms, items),
            Err(refused) => refuse(refused.error, refused.room.as_deref(), Some(ReqId::Json(refused.id)), items),
        });
        super::session::forward(&mut session, &self.shared);
        result.map_err(End::Refused)
    }

    /// Waits until everything queued is written (or `CLOSE_TIMEOUT`); false if it was not.
    async fn drain(&self) -> bool {
        let drained = tokio::time::timeout(CLOSE_TIMEOUT, async {
            loop {
                let flushed = self.out.borrow_mut().flush(&self.tcp);
                match flushed {
                    Ok(Flushed::All) => return true,
                    Ok(Flushed::Blocked) => {
                        if self.tcp.writable().await.is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        tally::wrote(self.out.borrow_mut().take_written());
        drained
    }
}

/// Whether a read found client bytes.
enum ReadState {
    Heard,
    Nothing,
}

/// Size of each shard's read buffer.
const SCRATCH_BYTES: usize = 16 * 1024;
/// Most reads from one socket per wake-up (others on the shard get their turn).
const READS_PER_WAKE: usize = 4;

async fn run_connection(tcp: TcpStream, early: Vec<u8>, claims: linkcast_core::auth::Claims, shared: Arc<Shared>, state: Rc<RefCell<ShardState>>) {
    let Registered { id, index, mailbox } = state.borrow_mut().register_conn();
    let link = &shared.config.link;
    shared.register_user(&claims.sub, id);
    let user = claims.sub.clone();
    let expires = claims.exp;
    let stats = &shared.stats[index];
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let gauge = metrics::gauge!("linkcast_link_connections", "shard" => index.to_string());
    gauge.increment(1.0);
    let session = LinkSession::new(id, Wire::Ws, claims, super::session::limits(link), now_micros());
    let batch = link.write_batch_bytes.max(1);
    let conn = Rc::new(WsConn {
        tcp,
        session: RefCell::new(session),
        state: state.clone(),
        shared: shared.clone(),
        out: RefCell::new(OutQueue::default()),
        mailbox: mailbox.clone(),
        batch,
        ended: Cell::new(None),
    });
    state.borrow_mut().set_direct(id, conn.clone());

    // Above this, client input is not read until the socket drains (replies need room too).
    let input_cap = batch * 2 + 64 * 1024;
    let idle = Duration::from_secs(link.idle_timeout_secs.max(1));
    let mut ping = tokio::time::interval(Duration::from_secs(link.ping_interval_secs.max(1)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut reader = MessageReader::new(link.max_message_bytes);
    let mut pending: Vec<u8> = Vec::new();
    let mut last_heard = Instant::now();
    let mut last_progress = Instant::now();
    let mut reported_queue = 0usize;

    let mut end = if early.is_empty() {
        Ok(())
    } else {
        // Bytes the client sent right behind its request head.
        let mut early = early;
        conn.decode(&mut reader, &mut early).map(|used| pending.extend_from_slice(&early[used..]))
    };
    let end: End = loop {
        if let Err(e) = end.and_then(|_| conn.pump()) {
            break e;
        }
        let queued = conn.out.borrow().queued();
        if queued != reported_queue {
            stats.queued_bytes.fetch_add(queued, Ordering::Relaxed);
            stats.queued_bytes.fetch_sub(reported_queue, Ordering::Relaxed);
            reported_queue = queued;
        }
        if conn.out.borrow_mut().take_progress() {
            last_progress = Instant::now();
        }
        let read_allowed = queued < input_cap;
        end = tokio::select! {
            biased;
            _ = mailbox.wait() => Ok(()),
            ready = conn.tcp.writable(), if queued > 0 => ready.map_err(|_| End::Gone),
            ready = conn.tcp.readable(), if read_allowed => match ready {
                Ok(()) => match conn.read(&mut reader, &mut pending) {
                    Ok(ReadState::Heard) => {
                        last_heard = Instant::now();
                        Ok(())
                    }
                    Ok(ReadState::Nothing) => Ok(()),
                    Err(e) => Err(e),
                },
                Err(_) => Err(End::Gone),
            },
            _ = ping.tick() => {
                let now = Instant::now();
                let silent = now.duration_since(last_heard) > idle;
                let stalled = queued > 0 && now.duration_since(last_progress) > idle;
                if silent || stalled {
                    Err(End::Refused(ClientError::Idle))
                } else if link.lag_policy == linkcast_core::fanout::LagPolicy::Disconnect && conn.session.borrow().lagging(&state.borrow().rooms) {
                    Err(End::Refused(ClientError::SlowConsumer))
                } else if expires <= now_micros() / 1_000_000 {
                    Err(End::Refused(ClientError::TokenExpired))
                } else {
                    conn.out.borrow_mut().push(ws_frame::ping());
                    Ok(())
                }
            }
        };
    };

    conn.ended.set(Some(end));
    state.borrow_mut().remove_conn(id);
    {
        let mut session = conn.session.borrow_mut();
        session.finish(&mut state.borrow_mut().rooms);
        super::session::forward(&mut session, &shared);
    }
    shared.users.unregister(&user, id);
    match end {
        End::Refused(error) => {
            count_close(error);
            if let Refusal::Close(code, text) = error.refusal() {
                if error == ClientError::SlowConsumer {
                    conn.out.borrow_mut().discard_unsent();
                }
                conn.out.borrow_mut().push(ws_frame::close(code, text));
                if conn.drain().await {
                    // Wait briefly for the client's close reply so it reads our reason before
                    // the FIN (closing with unread input would reset the connection).
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        let mut closing = MessageReader::new(link.max_message_bytes);
                        let mut rest = Vec::new();
                        loop {
                            if conn.tcp.readable().await.is_err() {
                                break;
                            }
                            match conn.read_until_close(&mut closing, &mut rest) {
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
            conn.out.borrow_mut().push(ws_frame::close(code, ""));
            conn.drain().await;
        }
        End::Gone => {}
    }
    stats.queued_bytes.fetch_sub(reported_queue, Ordering::Relaxed);
    stats.connections.fetch_sub(1, Ordering::Relaxed);
    gauge.decrement(1.0);
}

impl WsConn {
    /// After our close frame: discards client input until its close frame (`Ok(true)`), EOF or
    /// an error; `Ok(false)` = nothing more yet.
    fn read_until_close(&self, reader: &mut MessageReader, pending: &mut Vec<u8>) -> std::io::Result<bool> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match self.tcp.try_read(&mut scratch) {
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

fn count_close(error: ClientError) {
    metrics::counter!("linkcast_link_closes_total", "reason" => error.label()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_and_queries_parse() {
        let head = b"GET /ws?token=a.b%2Ec&x=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nOrigin: https://a\r\n\r\n";
        let parsed = parse_head(head).expect("valid");
        assert_eq!(parsed.path, "/ws");
        assert!(parsed.upgrade);
        assert_eq!(parsed.origin.as_deref(), Some("https://a"));
        assert_eq!(query_param(&parsed.query, "token").as_deref(), Some("a.b.c"));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(percent_decode("%zz%"), "%zz%");
        assert!(parse_head(b"garbage\r\n\r\n").is_none());
    }
}
