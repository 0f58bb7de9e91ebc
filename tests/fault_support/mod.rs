//! Shared by the "no silent loss" fault tests (`no_silent_loss.rs`, `no_silent_loss_link.rs`):
//!
//! - [`Stream`]/[`Checker`]: THE invariant of docs/protocol.md, checked on every message a
//!   client receives: per room, seqs strictly increasing by one; every jump preceded by a `gap`
//!   covering exactly the missing range, or a `reset` (seqs restart in the new epoch); nothing
//!   before `joined` on a live-only join; `joined.last_seq` = what was replayed; after `left`
//!   nothing until the next join.
//! - [`Member`]: a real WebSocket client on loopback whose reader task feeds every message to
//!   a [`Checker`] and logs it with the time it arrived; it can be paused (stops reading its
//!   socket) and resumed.
//! - A tiny HTTP/1.1 client ([`http`]), Prometheus parsing ([`metric`]), child processes of the
//!   `linkcast` binary killed / stopped by the pid this test started ([`Processes`]), free
//!   ports, and a pausable UDP relay ([`Relay`]) to cut a Link↔hub QUIC connection.
//!
//! Every wait is bounded; a violation fails the test with the client's recent history.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// Longest any single step (connect, one HTTP request) may take.
pub const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The invariant
// ---------------------------------------------------------------------------------------------

/// One thing a client received (or the end of its connection).
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    /// A room message.
    Msg { room: String, seq: u64, data: Value },
    /// `{"op":"gap"}`.
    Gap { room: String, first: u64, last: u64, resume: u64 },
    /// `{"op":"reset"}`.
    Reset { room: String, epoch: String, last_seq: u64 },
    /// `{"op":"joined"}`.
    Joined { room: String, epoch: String, last_seq: u64 },
    /// `{"op":"left"}`.
    Left { room: String },
    /// `{"op":"published"}` (the whole JSON).
    Published(Value),
    /// `{"op":"error"}` (the whole JSON).
    Error(Value),
    /// `{"op":"pong"}`.
    Pong,
    /// A close frame.
    Close(u16, String),
    /// The connection ended without a close frame.
    End,
}

impl Ev {
    /// A one-line summary (room messages without their payload).
    pub fn short(&self) -> String {
        match self {
            Ev::Msg { room, seq, .. } => format!("msg {room}#{seq}"),
            Ev::Gap { room, first, last, resume } => format!("gap {room} {first}..={last} resume {resume}"),
            Ev::Reset { room, epoch, last_seq } => format!("reset {room} epoch {epoch} last_seq {last_seq}"),
            Ev::Joined { room, epoch, last_seq } => format!("joined {room} epoch {epoch} last_seq {last_seq}"),
            Ev::Left { room } => format!("left {room}"),
            Ev::Published(v) => format!("published {v}"),
            Ev::Error(v) => format!("error {v}"),
            Ev::Pong => "pong".into(),
            Ev::Close(code, reason) => format!("close {code} {reason:?}"),
            Ev::End => "end".into(),
        }
    }

    /// The room message's seq, if this is one of `room`.
    pub fn seq_in(&self, room: &str) -> Option<u64> {
        match self {
            Ev::Msg { room: r, seq, .. } if r == room => Some(*seq),
            _ => None,
        }
    }
}

/// True for 16 lowercase hex digits (the JSON form of an epoch).
pub fn is_epoch(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn field_u64(value: &Value, name: &str) -> Result<u64, String> {
    value[name].as_u64().ok_or_else(|| format!("`{name}` missing or not a number in {value}"))
}

fn field_str(value: &Value, name: &str) -> Result<String, String> {
    value[name].as_str().map(str::to_owned).ok_or_else(|| format!("`{name}` missing or not a string in {value}"))
}

/// Parses one server→client JSON message.
pub fn parse(value: &Value) -> Result<Ev, String> {
    let room = || field_str(value, "room");
    match value.get("op").and_then(Value::as_str) {
        None => Ok(Ev::Msg { room: room()?, seq: field_u64(value, "seq")?, data: value["data"].clone() }),
        Some("gap") => Ok(Ev::Gap {
            room: room()?,
            first: field_u64(value, "first_lost")?,
            last: field_u64(value, "last_lost")?,
            resume: field_u64(value, "resume_from")?,
        }),
        Some("reset") => Ok(Ev::Reset { room: room()?, epoch: field_str(value, "epoch")?, last_seq: field_u64(value, "last_seq")? }),
        Some("joined") => Ok(Ev::Joined { room: room()?, epoch: field_str(value, "epoch")?, last_seq: field_u64(value, "last_seq")? }),
        Some("left") => Ok(Ev::Left { room: room()? }),
        Some("published") => Ok(Ev::Published(value.clone())),
        Some("error") => Ok(Ev::Error(value.clone())),
        Some("pong") => Ok(Ev::Pong),
        Some(other) => Err(format!("unknown op {other:?} in {value}")),
    }
}

/// A request the client sent that the server has not answered yet.
#[derive(Clone, Debug)]
enum Pending {
    Join { since: Option<u64>, epoch: Option<String> },
    Leave,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Not in the room: no message may arrive.
    Out,
    /// A join is being answered. `live_only`: no `since` (and no reset yet), so nothing may
    /// arrive before `joined`.
    Joining { live_only: bool },
    /// Joined: live messages.
    In,
}

/// The invariant for one (client, room).
#[derive(Debug)]
pub struct Stream {
    room: String,
    /// The epoch the client's position belongs to (once known).
    epoch: Option<String>,
    /// The last seq accounted for (received or declared lost) in `epoch`.
    pos: u64,
    phase: Phase,
    /// Requests in flight, oldest first; the front join (if the phase is `Joining`) is the one
    /// being answered.
    pending: VecDeque<Pending>,
}

impl Stream {
    /// A client that has not joined `room`.
    pub fn new(room: &str) -> Stream {
        Stream { room: room.to_owned(), epoch: None, pos: 0, phase: Phase::Out, pending: VecDeque::new() }
    }

    /// The epoch of the client's position, once known.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// The last seq received or declared lost in the current epoch.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn start_front(&mut self) {
        if let Some(Pending::Join { since, epoch }) = self.pending.front() {
            if let Some(epoch) = epoch {
                self.epoch = Some(epoch.clone());
            }
            self.pos = since.unwrap_or(0);
            self.phase = Phase::Joining { live_only: since.is_none() };
        }
    }

    /// The client sent a join.
    pub fn sent_join(&mut self, since: Option<u64>, epoch: Option<String>) {
        self.pending.push_back(Pending::Join { since, epoch });
        if self.pending.len() == 1 && self.phase == Phase::Out {
            self.start_front();
        }
    }

    /// The client sent a leave.
    pub fn sent_leave(&mut self) {
        self.pending.push_back(Pending::Leave);
    }

    /// Feeds one received event of this room; `Err` says what broke the invariant.
    pub fn feed(&mut self, ev: &Ev) -> Result<(), String> {
        match ev {
            Ev::Msg { seq, .. } => {
                match self.phase {
                    Phase::Out => return Err(format!("message seq {seq} while not in the room")),
                    Phase::Joining { live_only: true } => {
                        return Err(format!("message seq {seq} before `joined` of a join without `since`"))
                    }
                    _ => {}
                }
                if *seq != self.pos + 1 {
                    return Err(format!(
                        "seq {seq} after {} with no gap/reset covering it (epoch {:?})",
                        self.pos, self.epoch
                    ));
                }
                self.pos = *seq;
            }
            Ev::Gap { first, last, resume, .. } => {
                if matches!(self.phase, Phase::Out | Phase::Joining { live_only: true }) {
                    return Err(format!("gap while {:?}", self.phase));
                }
                if *first != self.pos + 1 || last < first || *resume != last + 1 {
                    return Err(format!(
                        "gap {first}..={last} resume {resume} does not continue from {} (must be first_lost = {}, last_lost >= first_lost, resume_from = last_lost + 1)",
                        self.pos,
                        self.pos + 1
                    ));
                }
                self.pos = *last;
            }
            Ev::Reset { epoch, .. } => {
                if self.phase == Phase::Out {
                    return Err(format!("reset to {epoch} while not in the room"));
                }
                if !is_epoch(epoch) {
                    return Err(format!("reset epoch {epoch:?} is not 16 lowercase hex digits"));
                }
                if self.epoch.as_deref() == Some(epoch.as_str()) {
                    return Err(format!("reset to the epoch the client already has ({epoch})"));
                }
                self.epoch = Some(epoch.clone());
                self.pos = 0;
                if let Phase::Joining { .. } = self.phase {
                    self.phase = Phase::Joining { live_only: false };
                }
            }
            Ev::Joined { epoch, last_seq, .. } => {
                let Phase::Joining { live_only } = self.phase else {
                    return Err(format!("joined while {:?} (no join being answered)", self.phase));
                };
                if !is_epoch(epoch) {
                    return Err(format!("joined epoch {epoch:?} is not 16 lowercase hex digits"));
                }
                if let Some(known) = &self.epoch {
                    if known != epoch {
                        return Err(format!("joined in epoch {epoch} but the client's position is in {known} and no reset came"));
                    }
                }
                if live_only {
                    self.pos = *last_seq;
                } else if *last_seq != self.pos {
                    return Err(format!("joined last_seq {last_seq} but the replay reached {}", self.pos));
                }
                self.epoch = Some(epoch.clone());
                self.pending.pop_front();
                self.phase = Phase::In;
            }
            Ev::Left { .. } => {
                let Some(at) = self.pending.iter().position(|p| matches!(p, Pending::Leave)) else {
                    return Err("left without a pending leave".into());
                };
                self.pending.drain(..=at);
                self.phase = Phase::Out;
                self.start_front();
            }
            Ev::Error(value) => {
                // A refused join or leave (publish errors carry the publish's `id`, not this).
                match self.pending.pop_front() {
                    Some(_) => {
                        self.phase = Phase::Out;
                        self.start_front();
                    }
                    None => return Err(format!("error for the room with nothing pending: {value}")),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The invariant for one client over all its rooms, plus a log of what it received.
#[derive(Debug, Default)]
pub struct Checker {
    rooms: HashMap<String, Stream>,
    recent: VecDeque<String>,
}

impl Checker {
    fn stream(&mut self, room: &str) -> &mut Stream {
        self.rooms.entry(room.to_owned()).or_insert_with(|| Stream::new(room))
    }

    /// The room's stream state (if the client ever used the room).
    pub fn room(&self, room: &str) -> Option<&Stream> {
        self.rooms.get(room)
    }

    /// Records a client→server op (joins and leaves change what may be received).
    pub fn sent(&mut self, op: &Value) {
        let room = op["room"].as_str().unwrap_or("").to_owned();
        match op["op"].as_str() {
            Some("join") => {
                let epoch = op["epoch"].as_str().map(str::to_owned);
                self.stream(&room).sent_join(op["since"].as_u64(), epoch);
            }
            Some("leave") => self.stream(&room).sent_leave(),
            _ => {}
        }
        self.note(format!("sent {op}"));
    }

    fn note(&mut self, line: String) {
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// Checks one received JSON message; `Err` names the violation and shows recent history.
    pub fn received(&mut self, value: &Value) -> Result<Ev, String> {
        let ev = parse(value);
        self.note(match &ev {
            Ok(ev) => format!("got {}", ev.short()),
            Err(_) => format!("got {value}"),
        });
        let ev = ev.map_err(|e| self.explain(&e))?;
        let room = match &ev {
            Ev::Msg { room, .. } | Ev::Gap { room, .. } | Ev::Reset { room, .. } | Ev::Joined { room, .. } | Ev::Left { room } => {
                Some(room.clone())
            }
            // Publish answers carry the publish `id`; room-level refusals (join/leave) do not.
            Ev::Error(v) if v.get("id").is_none() => v["room"].as_str().map(str::to_owned),
            _ => None,
        };
        if let Some(room) = room {
            if let Err(e) = self.stream(&room).feed(&ev) {
                return Err(self.explain(&format!("room {room}: {e}")));
            }
        }
        Ok(ev)
    }

    fn explain(&self, what: &str) -> String {
        let recent: Vec<&str> = self.recent.iter().map(String::as_str).collect();
        format!("NO-SILENT-LOSS VIOLATION: {what}\nrecent traffic (oldest first):\n  {}", recent.join("\n  "))
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket members
// ---------------------------------------------------------------------------------------------

/// A WebSocket client stream.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects to `url` (`ws://host:port/ws`).
pub async fn ws_connect(url: &str) -> Ws {
    let uri: http::Uri = url.parse().expect("ws url");
    let (ws, _) = tokio::time::timeout(STEP, ClientBuilder::from_uri(uri).connect())
        .await
        .expect("ws connect in time")
        .expect("ws upgrade accepted");
    ws
}

/// Connects over a socket with a small receive buffer (a reader that stalls fast).
pub async fn ws_connect_small(addr: SocketAddr, rcvbuf: u32) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("rcvbuf");
    let stream = tokio::time::timeout(STEP, socket.connect(addr)).await.expect("connect in time").expect("connect");
    let uri: http::Uri = format!("ws://{addr}/ws").parse().expect("uri");
    let (ws, _) = tokio::time::timeout(STEP, ClientBuilder::from_uri(uri).connect_on(MaybeTlsStream::Plain(stream)))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    ws
}

/// One received event and when it arrived.
#[derive(Clone, Debug)]
pub struct Logged {
    pub at: Instant,
    pub ev: Ev,
}

#[derive(Default)]
struct MemberState {
    log: Vec<Logged>,
    violation: Option<String>,
    checker: Checker,
}

/// A WebSocket client whose task reads everything, checks the invariant and logs it.
pub struct Member {
    pub name: String,
    state: Arc<Mutex<MemberState>>,
    out: mpsc::UnboundedSender<Value>,
    reading: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Member {
    /// Connects to `url` and starts reading.
    pub async fn connect(name: impl Into<String>, url: &str) -> Member {
        Member::start(name, ws_connect(url).await)
    }

    /// Wraps a connected stream and starts reading.
    pub fn start(name: impl Into<String>, mut ws: Ws) -> Member {
        let state = Arc::new(Mutex::new(MemberState::default()));
        let (out, mut outgoing) = mpsc::unbounded_channel::<Value>();
        let (reading, mut gate) = watch::channel(true);
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let read = *gate.borrow_and_update();
                    tokio::select! {
                        op = outgoing.recv() => {
                            let Some(op) = op else { break };
                            lock(&state).checker.sent(&op);
                            if ws.send(Message::text(op.to_string())).await.is_err() {
                                let mut s = lock(&state);
                                s.log.push(Logged { at: Instant::now(), ev: Ev::End });
                                break;
                            }
                        }
                        changed = gate.changed() => if changed.is_err() { break },
                        message = ws.next(), if read => {
                            let now = Instant::now();
                            let ev = match message {
                                None | Some(Err(_)) => Ev::End,
                                Some(Ok(message)) => {
                                    if let Some((code, reason)) = message.as_close() {
                                        Ev::Close(code.into(), reason.to_owned())
                                    } else if let Some(text) = message.as_text() {
                                        let mut s = lock(&state);
                                        let value: Value = match serde_json::from_str(text) {
                                            Ok(v) => v,
                                            Err(e) => {
                                                s.violation = Some(format!("not JSON ({e}): {text}"));
                                                break;
                                            }
                                        };
                                        match s.checker.received(&value) {
                                            Ok(ev) => ev,
                                            Err(violation) => {
                                                s.violation = Some(violation);
                                                break;
                                            }
                                        }
                                    } else {
                                        continue;
                                    }
                                }
                            };
                            let end = matches!(ev, Ev::End | Ev::Close(..));
                            lock(&state).log.push(Logged { at: now, ev });
                            if end {
                                break;
                            }
                        }
                    }
                }
            })
        };
        Member { name: name.into(), state, out, reading, task }
    }

    /// Sends one op (the checker sees it in order with what is received).
    pub fn send(&self, op: Value) {
        assert!(self.out.send(op).is_ok(), "{}: connection task ended", self.name);
    }

    /// Sends `join` (with `since` and `epoch` when given).
    pub fn join(&self, room: &str, since: Option<u64>, epoch: Option<&str>) {
        let mut op = json!({"op": "join", "room": room});
        if let Some(since) = since {
            op["since"] = since.into();
        }
        if let Some(epoch) = epoch {
            op["epoch"] = epoch.into();
        }
        self.send(op);
    }

    /// Stops reading the socket (what the server sends piles up in the kernel buffers).
    pub fn stop_reading(&self) {
        let _ = self.reading.send(false);
    }

    /// Reads again.
    pub fn resume_reading(&self) {
        let _ = self.reading.send(true);
    }

    /// Panics with the violation, if the reader found one.
    pub fn assert_clean(&self) {
        if let Some(v) = &lock(&self.state).violation {
            panic!("{}: {v}", self.name);
        }
    }

    /// A copy of everything received so far.
    pub fn log(&self) -> Vec<Logged> {
        self.assert_clean();
        lock(&self.state).log.clone()
    }

    /// The events received so far.
    pub fn events(&self) -> Vec<Ev> {
        self.log().into_iter().map(|l| l.ev).collect()
    }

    /// Seqs of `room` received so far.
    pub fn seqs(&self, room: &str) -> Vec<u64> {
        self.events().iter().filter_map(|e| e.seq_in(room)).collect()
    }

    /// The (epoch, pos) of the client's position in `room`.
    pub fn position(&self, room: &str) -> (Option<String>, u64) {
        self.assert_clean();
        let s = lock(&self.state);
        s.checker.room(room).map_or((None, 0), |r| (r.epoch().map(str::to_owned), r.pos()))
    }

    /// Waits until `done(log)` holds; panics with `what` and the log tail after `within`.
    pub async fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&[Logged]) -> bool) -> Vec<Logged> {
        let deadline = Instant::now() + within;
        loop {
            {
                let s = lock(&self.state);
                if let Some(v) = &s.violation {
                    panic!("{}: {v}", self.name);
                }
                if done(&s.log) {
                    return s.log.clone();
                }
                if Instant::now() >= deadline {
                    let tail: Vec<String> = s.log.iter().rev().take(12).rev().map(|l| l.ev.short()).collect();
                    panic!("{}: {what} did not happen within {within:?}; {} events, last: {tail:#?}", self.name, s.log.len());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the client has accounted for `room` up to `seq` (received or gap).
    pub async fn wait_pos(&self, room: &str, seq: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (_, pos) = self.position(room);
            if pos >= seq {
                return;
            }
            if Instant::now() >= deadline {
                let tail: Vec<String> = self.log().iter().rev().take(12).rev().map(|l| l.ev.short()).collect();
                panic!("{}: room {room} reached only seq {pos} of {seq} within {within:?}; last: {tail:#?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the client's position in `room` is exactly (`epoch`, `seq`).
    pub async fn wait_position(&self, room: &str, epoch: &str, seq: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.position(room);
            if now.0.as_deref() == Some(epoch) && now.1 == seq {
                return;
            }
            if Instant::now() >= deadline {
                let tail: Vec<String> = self.log().iter().rev().take(12).rev().map(|l| l.ev.short()).collect();
                panic!("{}: room {room} is at {now:?}, not ({epoch}, {seq}), after {within:?}; last: {tail:#?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for `joined` of `room` (the n-th one, counting from 1) and returns it.
    pub async fn wait_joined(&self, room: &str, nth: usize, within: Duration) -> (String, u64) {
        let log = self
            .wait_until(within, &format!("joined #{nth} of {room}"), |log| {
                log.iter().filter(|l| matches!(&l.ev, Ev::Joined { room: r, .. } if r == room)).count() >= nth
            })
            .await;
        log.iter()
            .filter_map(|l| match &l.ev {
                Ev::Joined { room: r, epoch, last_seq } if r == room => Some((epoch.clone(), *last_seq)),
                _ => None,
            })
            .nth(nth - 1)
            .expect("counted above")
    }

    /// A handle that reads this client's progress from other tasks.
    pub fn watcher(&self) -> Watcher {
        Watcher { state: self.state.clone() }
    }

    /// Stops the reader task.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Reads a [`Member`]'s progress from another task.
#[derive(Clone)]
pub struct Watcher {
    state: Arc<Mutex<MemberState>>,
}

impl Watcher {
    /// The last seq of `room` the client received or was told is lost.
    pub fn pos(&self, room: &str) -> u64 {
        lock(&self.state).checker.room(room).map_or(0, Stream::pos)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 request (`Connection: close`); returns status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    tokio::time::timeout(STEP, http_inner(addr, method, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("HTTP {method} {path} to {addr}: no answer within {STEP:?}"))
        .unwrap_or_else(|e| panic!("HTTP {method} {path} to {addr}: {e}"))
}

/// Like [`http`] but `None` when the server is not there (connect refused, reset, timeout).
pub async fn try_http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(2), http_inner(addr, method, path, &[], b"")).await.ok()?.ok()
}

async fn http_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    tcp.write_all(&request).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| invalid("no status"))?;
    let mut body = raw[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("bad chunk"))?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16).map_err(|_| invalid("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| invalid("short chunk"))?);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET path` answered 200 with JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, &[], b"").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// `POST /v1/rooms/{room}/messages` (dev mode, no key); returns `{"seq","epoch"}` after
/// checking the status and the epoch's form.
pub async fn publish(hub: SocketAddr, room: &str, body: &[u8], idempotency_key: Option<&str>) -> (u64, String) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(key) = idempotency_key {
        headers.push(("Idempotency-Key", key));
    }
    let (status, text) = http(hub, "POST", &format!("/v1/rooms/{room}/messages"), &headers, body).await;
    assert_eq!(status, 200, "publish to {room}: {text}");
    let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("publish answer not JSON ({e}): {text}"));
    let seq = answer["seq"].as_u64().unwrap_or_else(|| panic!("publish answer without seq: {answer}"));
    let epoch = answer["epoch"].as_str().unwrap_or_else(|| panic!("publish answer without epoch: {answer}")).to_owned();
    assert!(is_epoch(&epoch), "publish answer epoch is not 16 lowercase hex digits: {answer}");
    (seq, epoch)
}

/// A JSON payload of about `size` bytes tagged with `n`.
pub fn payload(n: u64, size: usize) -> Vec<u8> {
    format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(size.saturating_sub(20))).into_bytes()
}

/// Every message of `room` in the hub's history after `since` (paging by 1000).
pub async fn history(hub: SocketAddr, room: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut since = 0;
    loop {
        let page = get_json(hub, &format!("/v1/rooms/{room}/messages?since={since}&limit=1000")).await;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        let Some(last) = messages.last().and_then(|m| m["seq"].as_u64()) else { return out };
        out.extend(messages);
        since = last;
    }
}

/// The value of the series `name{labels...}` (every given label must match; 0 if absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: Vec<(&str, &str)> = series_labels
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|l| have.contains(l)) {
            return value.trim().parse().unwrap_or(0.0);
        }
    }
    0.0
}

/// `GET /metrics` of a hub or a Link's WebSocket port.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

// ---------------------------------------------------------------------------------------------
// Processes, ports, relay
// ---------------------------------------------------------------------------------------------

/// A free loopback TCP port (bound, then released).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free tcp port")
}

/// A free loopback UDP port (bound, then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("free udp port")
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Child processes of the `linkcast` binary, each signalled only through the pid this test got
/// from spawning it; all killed when the test ends, however it ends.
pub struct Processes {
    children: Vec<(String, Child)>,
    pub dir: PathBuf,
}

impl Processes {
    /// A fresh temp dir named after `tag` for configs and logs.
    pub fn new(tag: &str) -> Processes {
        let dir = std::env::temp_dir().join(format!("linkcast-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Processes { children: Vec::new(), dir }
    }

    /// Writes the config file; returns its path.
    pub fn write_config(&self, toml: &str) -> String {
        let path = self.dir.join("cluster.toml");
        std::fs::write(&path, toml).expect("write config");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// Starts `linkcast ARGS` as `name` (output to `name.log`, appended across restarts).
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        // tracing writes to stdout: both streams go to the log.
        let out = log.try_clone().expect("log file handle");
        let child = Command::new(env!("CARGO_BIN_EXE_linkcast"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn linkcast");
        self.children.retain(|(n, _)| n != name);
        self.children.push((name.to_owned(), child));
    }

    fn pid(&self, name: &str) -> i32 {
        let (_, child) = self.children.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no process {name}"));
        i32::try_from(child.id()).expect("pid fits")
    }

    /// SIGKILL (through `Child::kill`, i.e. our own pid) and reap.
    pub fn kill(&mut self, name: &str) {
        if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, name: &str, signal: i32) {
        let pid = self.pid(name);
        // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    /// SIGSTOP the process.
    pub fn stop(&self, name: &str) {
        self.signal(name, libc::SIGSTOP);
    }

    /// SIGCONT the process.
    pub fn cont(&self, name: &str) {
        self.signal(name, libc::SIGCONT);
    }

    /// True while the process has not exited.
    pub fn running(&mut self, name: &str) -> bool {
        self.children.iter_mut().find(|(n, _)| n == name).is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of `name.log`.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // A stopped child must be continued to die promptly on some systems; SIGKILL works
            // on stopped processes on Linux, so kill is enough.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("process logs are in {}", self.dir.display());
        }
    }
}

/// A UDP relay on loopback: datagrams to `listen` go to `target` (one upstream socket per
/// source address) and answers come back; while paused, every datagram in either direction
/// is dropped (a network cut).
pub struct Relay {
    paused: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    /// Starts relaying `listen` → `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Relay {
        let socket = Arc::new(UdpSocket::bind(listen).await.expect("relay bind"));
        let paused = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (paused, dropped, forwarded, tasks) = (paused.clone(), dropped.clone(), forwarded.clone(), tasks.clone());
            tokio::spawn(async move {
                let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else { break };
                    if paused.load(Ordering::SeqCst) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if let std::collections::hash_map::Entry::Vacant(slot) = upstreams.entry(from) {
                        let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                        if up.connect(target).await.is_err() {
                            continue;
                        }
                        let up = Arc::new(up);
                        let back = {
                            let (up, socket, paused, dropped, forwarded) =
                                (up.clone(), socket.clone(), paused.clone(), dropped.clone(), forwarded.clone());
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 65_536];
                                loop {
                                    // Errors (ICMP unreachable while the target is down) are not fatal.
                                    let Ok(n) = up.recv(&mut buf).await else {
                                        tokio::time::sleep(Duration::from_millis(5)).await;
                                        continue;
                                    };
                                    if paused.load(Ordering::SeqCst) {
                                        dropped.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    forwarded.fetch_add(1, Ordering::Relaxed);
                                    let _ = socket.send_to(&buf[..n], from).await;
                                }
                            })
                        };
                        lock(&tasks).push(back);
                        slot.insert(up);
                    }
                    if let Some(up) = upstreams.get(&from) {
                        forwarded.fetch_add(1, Ordering::Relaxed);
                        let _ = up.send(&buf[..n]).await;
                    }
                }
            })
        };
        lock(&tasks).push(task);
        Relay { paused, dropped, forwarded, tasks }
    }

    /// Cuts the path (drops everything) or restores it.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Datagrams dropped while paused.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams forwarded.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
