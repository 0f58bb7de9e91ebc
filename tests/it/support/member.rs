//! A WebSocket member whose reader task feeds every message to a [`Checker`] and logs it with
//! the time it arrived; it can stop reading its socket (what the server sends piles up in the
//! kernel buffers) and read again. A violation fails the test with the client's recent history.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_websockets::Message;

use super::checker::{Checker, Ev, Stream};
use super::ws::{self, WsClient};

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
        Member::start(name, WsClient::connect(url).await)
    }

    /// Wraps a connected client and starts reading.
    pub fn start(name: impl Into<String>, client: WsClient) -> Member {
        let mut ws: ws::Stream = client.into_stream();
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
                                        if ws::is_system_room_message(&value) {
                                            // The Link's own joins (`all`, `user:*`): not this
                                            // checker's rooms (tests about them read raw).
                                            continue;
                                        }
                                        if value["op"] == "presence" || value["op"] == "member_joined" || value["op"] == "member_left" {
                                            continue; // presence: tests/it/presence.rs
                                        }
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

/// `per_link` members on each Link of `cluster` (named `link<id>-member<i>`), joined to `room`
/// from seq 0; returned once each got its `joined` (within `within`).
pub async fn join_on_every_link(cluster: &super::cluster::Cluster, room: &str, per_link: usize, within: Duration) -> Vec<Member> {
    let mut members = Vec::new();
    for link in 0..cluster.links.len() {
        for i in 0..per_link {
            let member = Member::connect(format!("link{}-member{i}", link + 1), &cluster.url(link)).await;
            member.join(room, Some(0), None);
            members.push(member);
        }
    }
    for member in &members {
        member.wait_joined(room, 1, within).await;
    }
    members
}
