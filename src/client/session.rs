//! The client's resume state machine: where each room stands, when to reconnect, what to send.
//!
//! This file is sans-IO (the quinn-proto shape of STYLE.md §2): no sockets, no clocks, no tokio.
//! Time comes in as `now: Instant`, randomness (backoff jitter) from a seed given to
//! [`Session::new`]. The client's connection task in `client/mod.rs` — and `linkcast bench`,
//! which drives thousands of these without it — feeds it with `handle_*` and drains `poll_*`:
//!
//! - input: [`Session::handle_connected`], [`Session::handle_disconnected`],
//!   [`Session::handle_message`], [`Session::handle_joined`], [`Session::handle_reset`],
//!   [`Session::handle_gap`], [`Session::handle_published`], [`Session::handle_error`],
//!   [`Session::handle_left`], [`Session::handle_timeout`] — or, for any decoded server message,
//!   [`Session::handle_server_msg`], which calls the right one; user intents [`Session::join`],
//!   [`Session::leave`], [`Session::publish`], [`Session::close`];
//! - output, in this order after every input: [`Session::poll_transmit`] (ops to send now),
//!   [`Session::poll_event`] (what the application sees), [`Session::poll_timeout`] (when to call
//!   [`Session::poll_connect`] — while disconnected — or [`Session::handle_timeout`] — while
//!   connected, for retries — next).
//!
//! What it guarantees (docs/protocol.md, "Ordering and exactly-once"): per room it remembers its
//! position, the room's epoch and the last seq delivered; after a reconnect it rejoins every room
//! with `since` and `epoch`; a message with seq ≤ last is dropped as a duplicate and counted; a
//! hole in the seqs or a server `gap` becomes an [`Event::Gap`], a server `reset` (the room's
//! history was lost: new epoch) an [`Event::Reset`] after which the position restarts at
//! (new epoch, 0) — never a silent loss, and nothing of the new epoch dropped as a duplicate of the
//! old one. A join or publish refused with 503 and a `retry_after_ms` hint (the Link lost its hub)
//! is sent again after that delay, up to [`MAX_RETRIES`] times — a publish with the same id, which
//! the hub dedupes, so it is sequenced once. Reconnects wait a jittered exponential backoff, at
//! least the server's retry hint and at least [`Backoff::overload_min`] after close 1012/1013 or
//! HTTP 503.
//!
//! Close codes of the operator's range (docs/protocol.md): **4000–4099** end the session for good
//! (kicked, banned, token revoked, too many connections: [`Event::Closed`] carries the code and
//! reason, no reconnect); **4100–4199** reconnect after the server's hint — `retry_after_ms=N` in
//! the close reason, else the `retry_after_ms` of the error op just before the close, else the
//! normal backoff — plus up to a fifth of it as jitter (so a Link that shed many clients is not
//! hit by all of them at once). A **1001** whose reason carries `retry_after_ms=N` (a draining
//! Link) is treated the same way. A room the server took the connection out of (`removed`) is
//! not rejoined.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use linkcast_core::protocol::{ClientOp, ServerMsg};

/// Most times one refused join or publish is retried (on 503 with `retry_after_ms`) before its
/// error reaches the application.
pub const MAX_RETRIES: u32 = 10;

/// Reconnect timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter); doubled per failed attempt.
    pub initial: Duration,
    /// Upper bound of the (pre-jitter) delay.
    pub max: Duration,
    /// Least delay after the server said it is overloaded (close 1012/1013, HTTP 503).
    pub overload_min: Duration,
    /// A connection that lived this long resets the attempt counter when it drops.
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            overload_min: Duration::from_secs(1),
            stable_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The pre-jitter delay of retry number `attempt` (1-based): `initial · 2^(attempt-1)`, capped.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Tuning of a [`Session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Reconnect timing.
    pub backoff: Backoff,
    /// Publishes kept while disconnected; beyond this [`Session::publish`] refuses.
    pub max_queued_publishes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { backoff: Backoff::default(), max_queued_publishes: 1024 }
    }
}

/// Why a connection ended or could not be made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// WebSocket close code sent by the server, if any.
    pub close_code: Option<u16>,
    /// HTTP status of a refused upgrade or locate, if any.
    pub http_status: Option<u16>,
    /// Human-readable reason.
    pub reason: String,
    /// The server's retry hint (`Retry-After`), if any.
    pub retry_after: Option<Duration>,
}

impl Disconnect {
    /// A transport failure with no server word (reset, refused, timed out, EOF).
    pub fn io(reason: impl Into<String>) -> Disconnect {
        Disconnect { reason: reason.into(), ..Disconnect::default() }
    }

    /// Whether retrying cannot help: a policy close, an operator's close (4000–4099: kicked,
    /// banned, token revoked, too many connections) or a refused token (the application must act).
    pub fn is_fatal(&self) -> bool {
        matches!(self.close_code, Some(1003 | 1008 | 1009 | 4000..=4099)) || matches!(self.http_status, Some(401 | 403))
    }

    /// Whether the server asked to reconnect after a delay it gives: close 4100–4199, or 1001
    /// with a `retry_after_ms=N` hint in its reason (a draining Link: `link draining;
    /// retry_after_ms=N`; the reconnect locates again, so it lands on another Link).
    pub fn is_retry_later(&self) -> bool {
        matches!(self.close_code, Some(4100..=4199)) || self.close_code == Some(1001) && self.reason_hint().is_some()
    }

    /// The `retry_after_ms=N` hint in the close reason (`"slow consumer; retry_after_ms=1000"`).
    pub fn reason_hint(&self) -> Option<Duration> {
        let (_, rest) = self.reason.split_once("retry_after_ms=")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok().map(Duration::from_millis)
    }

    /// Whether the server asked for a slower retry.
    fn is_overload(&self) -> bool {
        matches!(self.close_code, Some(1012 | 1013)) || matches!(self.http_status, Some(503))
    }
}

/// What the application sees. Messages are built by the runtime (they carry the payload); the
/// session emits every other kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A connection is up; rooms are being rejoined.
    Connected {
        /// Retry number that succeeded (0: first try since the last stable connection).
        attempt: u32,
    },
    /// The connection is down; the next try is in `delay`.
    Reconnecting {
        /// Retry number about to be made (1-based).
        attempt: u32,
        /// Wait before it.
        delay: Duration,
        /// What ended the previous connection.
        cause: Disconnect,
    },
    /// The Link took a token given to [`Session::refresh`]: the connection lives until `exp`.
    Refreshed {
        /// The new token's expiry, seconds since the Unix epoch.
        exp: u64,
    },
    /// A join (or rejoin) completed: everything replayed came before this event.
    Joined {
        /// The room.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// The room's last seq at the server.
        last_seq: u64,
    },
    /// The room's history was lost (hub restart without a store, idle drop): the position kept
    /// belonged to an older epoch and is forgotten. Messages of `epoch` follow from seq 1 (after
    /// a gap if not all are held); seqs restart, so they are new messages, not duplicates.
    Reset {
        /// The room.
        room: String,
        /// The room's new epoch.
        epoch: u64,
        /// The room's last seq in that epoch.
        last_seq: u64,
    },
    /// A leave completed.
    Left {
        /// The room.
        room: String,
    },
    /// The room's member count (all Links) changed.
    Presence {
        /// The room.
        room: String,
        /// Members (connections) in the room.
        members: u64,
        /// `false`: join/leave events are off (the room is too big for them).
        events: bool,
    },
    /// A user joined (`joined`) or left the room (only after a join with presence).
    Member {
        /// The room.
        room: String,
        /// The user.
        user: String,
        /// Joined, else left.
        joined: bool,
    },
    /// An operator took this connection out of the room; it is not rejoined.
    Removed {
        /// The room.
        room: String,
        /// The operator's reason.
        reason: String,
    },
    /// A room message, in seq order, never twice.
    Message(Message),
    /// Messages `first_lost..=last_lost` of `room` will never come; the next is `resume_from`.
    Gap {
        /// The room.
        room: String,
        /// First lost seq.
        first_lost: u64,
        /// Last lost seq.
        last_lost: u64,
        /// Next seq expected.
        resume_from: u64,
    },
    /// A publish got its seq.
    Published {
        /// The room.
        room: String,
        /// The seq it got.
        seq: u64,
        /// The room epoch the seq belongs to.
        epoch: u64,
        /// The id [`Session::publish`] returned.
        id: u64,
    },
    /// The server refused a request (the connection stays up) and it will not be retried (or
    /// was retried [`MAX_RETRIES`] times), or a publish's fate is unknown.
    Error {
        /// HTTP-like code (docs/protocol.md); 0 for "connection lost before the ack".
        code: u16,
        /// Reason text.
        reason: String,
        /// Room concerned, if any.
        room: Option<String>,
        /// Publish id concerned, if any.
        id: Option<u64>,
    },
    /// The session ended for good (closed by the application or a fatal refusal).
    Closed {
        /// What ended it.
        cause: Disconnect,
    },
}

/// A delivered room message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The room.
    pub room: String,
    /// Its seq in the room.
    pub seq: u64,
    /// The sender's user id.
    pub from: String,
    /// Hub time stamp, microseconds since the Unix epoch.
    pub ts: u64,
    /// The payload.
    pub data: serde_json::Value,
}

/// What one server message leaves for the caller of [`Session::handle_server_msg`], once the
/// session has taken its part (positions, gaps, retries, events).
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub enum Received<'a, D> {
    /// A room message new to the session: hand it to the application.
    Deliver {
        /// The room.
        room: Cow<'a, str>,
        /// Its seq.
        seq: u64,
        /// The sender.
        from: Cow<'a, str>,
        /// Hub time stamp, microseconds since the Unix epoch.
        ts: u64,
        /// The payload.
        data: D,
    },
    /// A room message already delivered: dropped (counted in [`SessionStats::duplicates`]).
    Duplicate,
    /// A join (or rejoin) completed.
    Joined,
    /// The server refused a request; the session retries it or emits [`Event::Error`].
    Refused {
        /// HTTP-like code.
        code: u16,
        /// Reason text.
        reason: Cow<'a, str>,
    },
    /// Nothing beyond what the session itself emits (a message for a room it is not in, a gap,
    /// a reset, a leave, a publish ack, a pong).
    Absorbed,
}

/// What to do with an incoming room message, by its seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum MessageVerdict {
    /// New: hand it to the application.
    Deliver,
    /// seq ≤ the last delivered: drop it (counted in [`SessionStats::duplicates`]).
    Duplicate,
    /// Not a room we are in: drop it.
    NotJoined,
}

/// Why a request was refused locally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Too many publishes waiting for a connection.
    #[error("publish queue full ({0} waiting)")]
    QueueFull(usize),
    /// The session is closed.
    #[error("session closed")]
    Closed,
}

/// Counters of what the session absorbed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Messages dropped because their seq was already delivered.
    pub duplicates: u64,
    /// Messages reported lost (server gaps plus holes seen in the seqs).
    pub lost: u64,
    /// Gap events emitted.
    pub gaps: u64,
    /// Room resets (new epoch) seen.
    pub resets: u64,
    /// Joins and publishes sent again after a 503 with a retry hint.
    pub retries: u64,
    /// Connections made (first included).
    pub connects: u64,
    /// Connections lost or refused.
    pub disconnects: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Never connected: connect right away.
    Idle,
    /// The caller is connecting.
    Connecting,
    /// Up.
    Connected,
    /// Down; retry at the instant.
    Waiting(Instant),
    /// Over.
    Closed,
}

/// Where the session stands in one room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RoomState {
    /// The room epoch `last` belongs to (None until the first `joined` or `reset`).
    epoch: Option<u64>,
    /// Last seq delivered (None: nothing yet — the first join is live only).
    last: Option<u64>,
    /// Refused joins retried in a row (reset by `joined`).
    retries: u32,
    /// A refused join is sent again at this instant.
    rejoin_at: Option<Instant>,
}

/// A publish sent and not yet acknowledged.
#[derive(Clone, Debug)]
struct InFlight {
    room: String,
    /// Kept to send it again, with the same id, after a retryable refusal.
    data: Bytes,
    /// Times it was refused and sent again.
    retries: u32,
    /// Scheduled to be sent again at this instant.
    resend_at: Option<Instant>,
}

/// The resume state of one client connection (sans-IO; see the module docs).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    /// Rooms the application wants to be in, and where it stands in each.
    rooms: BTreeMap<String, RoomState>,
    link: LinkState,
    /// Retry number of the current outage (0 while stable).
    attempt: u32,
    connected_at: Option<Instant>,
    /// Ops to send; while disconnected only publishes wait here (joins are rebuilt from `rooms`).
    outbox: VecDeque<ClientOp>,
    /// Publishes sent and not yet acknowledged (or waiting to be sent again), by id.
    in_flight: BTreeMap<u64, InFlight>,
    events: VecDeque<Event>,
    next_id: u64,
    rng: u64,
    /// The `retry_after_ms` of the last error op on this connection (for a close 41xx).
    last_error_hint: Option<Duration>,
    stats: SessionStats,
    /// A token given by [`Session::refresh`]: it replaces the configured one for reconnects.
    token: Option<String>,
}

impl Session {
    /// A session that will connect at the first [`Session::poll_connect`]. `seed` drives jitter.
    pub fn new(config: SessionConfig, seed: u64) -> Session {
        Session {
            config,
            rooms: BTreeMap::new(),
            link: LinkState::Idle,
            attempt: 0,
            connected_at: None,
            outbox: VecDeque::new(),
            in_flight: BTreeMap::new(),
            events: VecDeque::new(),
            next_id: first_publish_id(seed),
            // xorshift must not start at 0.
            rng: seed | 1,
            last_error_hint: None,
            stats: SessionStats::default(),
            token: None,
        }
    }

    // ---- getters ----

    /// The token last given to [`Session::refresh`], if any (reconnects use it).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.link == LinkState::Connected
    }

    /// Whether the session ended for good.
    pub fn is_closed(&self) -> bool {
        self.link == LinkState::Closed
    }

    /// The last seq delivered in `room`, if the session is in it and has seen one.
    pub fn last_seq(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(|r| r.last)
    }

    /// The epoch of `room` that [`Session::last_seq`] belongs to, once the server told it.
    pub fn epoch(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(|r| r.epoch)
    }

    /// The rooms the session is in (or rejoining).
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// Counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    // ---- user intents ----

    /// Enters `room` (now if connected, else at the next connect). Idempotent.
    pub fn join(&mut self, room: &str) {
        if self.link == LinkState::Closed || self.rooms.contains_key(room) {
            return;
        }
        self.rooms.insert(room.to_owned(), RoomState::default());
        if self.link == LinkState::Connected {
            self.outbox.push_back(ClientOp::Join { room: room.to_owned(), since: None, epoch: None, presence: false });
        }
    }

    /// Leaves `room` and forgets its position.
    pub fn leave(&mut self, room: &str) {
        if self.rooms.remove(room).is_some() && self.link == LinkState::Connected {
            self.outbox.push_back(ClientOp::Leave { room: room.to_owned() });
        }
    }

    /// Publishes `data` (JSON text) to `room`; returns the id the [`Event::Published`] will carry.
    /// While disconnected the publish waits (bounded) for the next connection.
    ///
    /// The id is also the publish's idempotency key at the hub (per room and user), so ids must
    /// not repeat across the sessions of one user: they count up from an offset drawn from the
    /// session's seed (below 2^52, so they stay exact as JSON numbers in JavaScript too).
    pub fn publish(&mut self, room: &str, data: Bytes) -> Result<u64, SessionError> {
        if self.link == LinkState::Closed {
            return Err(SessionError::Closed);
        }
        if self.link != LinkState::Connected && self.outbox.len() >= self.config.max_queued_publishes {
            return Err(SessionError::QueueFull(self.outbox.len()));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.outbox.push_back(ClientOp::Publish { room: room.to_owned(), data, id: Some(id.into()) });
        Ok(id)
    }

    /// Queues an application ping (the connection task sends one when the connection is quiet).
    pub fn ping(&mut self) {
        if self.link == LinkState::Connected {
            self.outbox.push_back(ClientOp::Ping);
        }
    }

    /// Ends the session: no more reconnects; emits [`Event::Closed`].
    pub fn close(&mut self, reason: &str) {
        if self.link != LinkState::Closed {
            self.fail_in_flight();
            self.link = LinkState::Closed;
            self.outbox.clear();
            self.events.push_back(Event::Closed { cause: Disconnect { close_code: Some(1000), reason: reason.into(), ..Disconnect::default() } });
        }
    }

    // ---- connection lifecycle ----

    /// Whether the caller should open a connection now (then it reports back with
    /// `handle_connected` or `handle_disconnected`).
    pub fn poll_connect(&mut self, now: Instant) -> bool {
        match self.link {
            LinkState::Idle => {
                self.link = LinkState::Connecting;
                true
            }
            LinkState::Waiting(at) if now >= at => {
                self.link = LinkState::Connecting;
                true
            }
            _ => false,
        }
    }

    /// When to call [`Session::poll_connect`] (while waiting to reconnect) or
    /// [`Session::handle_timeout`] (while connected: the next retry of a refused request).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.link {
            LinkState::Waiting(at) => Some(at),
            LinkState::Connected => {
                let rejoins = self.rooms.values().filter_map(|r| r.rejoin_at);
                let resends = self.in_flight.values().filter_map(|p| p.resend_at);
                rejoins.chain(resends).min()
            }
            _ => None,
        }
    }

    /// A connection is up: rejoin every room with `since`, then send waiting publishes.
    pub fn handle_connected(&mut self, now: Instant) {
        if self.link == LinkState::Closed {
            return;
        }
        self.last_error_hint = None;
        self.link = LinkState::Connected;
        self.connected_at = Some(now);
        self.stats.connects += 1;
        self.events.push_back(Event::Connected { attempt: self.attempt });
        let publishes = std::mem::take(&mut self.outbox);
        for (room, state) in &mut self.rooms {
            state.retries = 0;
            state.rejoin_at = None;
            self.outbox.push_back(ClientOp::Join { room: room.clone(), since: state.last, epoch: state.epoch, presence: false });
        }
        self.outbox.extend(publishes);
    }

    /// The connection ended or could not be made: schedule a retry, or close on a fatal cause.
    pub fn handle_disconnected(&mut self, now: Instant, cause: Disconnect) {
        if matches!(self.link, LinkState::Closed | LinkState::Waiting(_)) {
            return;
        }
        self.stats.disconnects += 1;
        // Joins, leaves and pings are rebuilt from `rooms` at the next connect; publishes sent
        // before (resends of in-flight ones) are in doubt, reported below, not sent again.
        let in_flight = &self.in_flight;
        self.outbox.retain(|op| op.publish_id().is_some_and(|id| !in_flight.contains_key(&id)));
        self.fail_in_flight();
        if cause.is_fatal() {
            self.link = LinkState::Closed;
            self.events.push_back(Event::Closed { cause });
            return;
        }
        if let Some(at) = self.connected_at.take() {
            if now.saturating_duration_since(at) >= self.config.backoff.stable_after {
                self.attempt = 0;
            }
        }
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.retry_delay(&cause);
        self.link = LinkState::Waiting(now + delay);
        self.events.push_back(Event::Reconnecting { attempt: self.attempt, delay, cause });
    }

    // ---- server messages ----

    /// A room message arrived: deliver, or drop as a duplicate. A hole before it becomes a gap.
    pub fn handle_message(&mut self, room: &str, seq: u64) -> MessageVerdict {
        let Some(state) = self.rooms.get_mut(room) else {
            return MessageVerdict::NotJoined;
        };
        match state.last {
            Some(l) if seq <= l => {
                self.stats.duplicates += 1;
                return MessageVerdict::Duplicate;
            }
            Some(l) if seq > l + 1 => {
                state.last = Some(seq);
                self.note_gap(room, l + 1, seq - 1, seq);
            }
            _ => state.last = Some(seq),
        }
        MessageVerdict::Deliver
    }

    /// A join completed at the server's (`epoch`, `last_seq`) (replays, if any, came before).
    pub fn handle_joined(&mut self, room: &str, epoch: u64, last_seq: u64) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        state.retries = 0;
        state.rejoin_at = None;
        // The protocol sends `reset` before a join answer of another epoch, and never answers
        // behind our position within one. A server that does either anyway reset the room under
        // us: say so rather than drop the new epoch's messages as duplicates.
        let other_epoch = state.epoch.is_some_and(|e| e != epoch);
        let behind = state.last.is_some_and(|l| l > last_seq);
        if other_epoch || behind {
            state.epoch = Some(epoch);
            state.last = Some(if other_epoch { 0 } else { last_seq });
            self.note_reset(room, epoch, last_seq);
        }
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        state.epoch = Some(epoch);
        let mut hole = None;
        match state.last {
            None => state.last = Some(last_seq),
            Some(l) if l < last_seq => {
                // Replay ended short of the room's position without a `gap`: say so.
                state.last = Some(last_seq);
                hole = Some(l + 1);
            }
            Some(_) => {}
        }
        if let Some(first) = hole {
            self.note_gap(room, first, last_seq, last_seq + 1);
        }
        self.events.push_back(Event::Joined { room: room.to_owned(), epoch, last_seq });
    }

    /// The room's history was lost: our position belonged to another epoch. It becomes
    /// (`epoch`, 0): the messages of `epoch` that follow are delivered from seq 1.
    pub fn handle_reset(&mut self, room: &str, epoch: u64, last_seq: u64) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        state.epoch = Some(epoch);
        state.last = Some(0);
        self.note_reset(room, epoch, last_seq);
    }

    /// The server says `first_lost..=last_lost` will never come; the next is `resume_from`.
    pub fn handle_gap(&mut self, room: &str, first_lost: u64, last_lost: u64, resume_from: u64) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        let position = resume_from.saturating_sub(1);
        if state.last.is_none_or(|l| l < position) {
            state.last = Some(position);
        }
        self.note_gap(room, first_lost, last_lost, resume_from);
    }

    /// A publish got `seq` of `epoch`.
    pub fn handle_published(&mut self, room: &str, seq: u64, epoch: u64, id: u64) {
        self.in_flight.remove(&id);
        self.events.push_back(Event::Published { room: room.to_owned(), seq, epoch, id });
    }

    /// A request was refused. A refusal with code 503 and a `retry_after_ms` hint (the Link lost
    /// or cannot reach the room's hub) is retried after that delay, at most [`MAX_RETRIES`]
    /// times: a join with the position kept, a publish with the same id. Anything else — or the
    /// last refusal — becomes an [`Event::Error`]; a refused join (no publish id) then takes the
    /// room out of the session (except 409: already joined).
    pub fn handle_error(&mut self, now: Instant, code: u16, reason: &str, room: Option<&str>, id: Option<u64>, retry_after_ms: Option<u32>) {
        // A close 41xx without its own hint uses the one of the error op just before it.
        self.last_error_hint = retry_after_ms.map(|ms| Duration::from_millis(u64::from(ms)));
        let retry_in = match (code, retry_after_ms, self.link) {
            (503, Some(ms), LinkState::Connected) => Some(Duration::from_millis(u64::from(ms.max(1)))),
            // A join refused by the Link's join rate limit: its hint spaces the retries.
            (429, Some(ms), LinkState::Connected) if id.is_none() => Some(Duration::from_millis(u64::from(ms.max(1)))),
            _ => None,
        };
        if let Some(id) = id {
            if let (Some(delay), Some(publish)) = (retry_in, self.in_flight.get_mut(&id)) {
                if publish.retries < MAX_RETRIES {
                    publish.retries += 1;
                    publish.resend_at = Some(now + delay);
                    self.stats.retries += 1;
                    return;
                }
            }
            self.in_flight.remove(&id);
        } else if let Some(name) = room {
            if let (Some(delay), Some(state)) = (retry_in, self.rooms.get_mut(name)) {
                if state.retries < MAX_RETRIES {
                    state.retries += 1;
                    state.rejoin_at = Some(now + delay);
                    self.stats.retries += 1;
                    return;
                }
            }
            if code != 409 {
                self.rooms.remove(name);
            }
        }
        self.events.push_back(Event::Error { code, reason: reason.to_owned(), room: room.map(str::to_owned), id });
    }

    /// Time passed: joins and publishes whose retry delay is over are queued again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.link != LinkState::Connected {
            return;
        }
        for (room, state) in &mut self.rooms {
            if state.rejoin_at.is_some_and(|at| at <= now) {
                state.rejoin_at = None;
                self.outbox.push_back(ClientOp::Join { room: room.clone(), since: state.last, epoch: state.epoch, presence: false });
            }
        }
        for (id, publish) in &mut self.in_flight {
            if publish.resend_at.is_some_and(|at| at <= now) {
                publish.resend_at = None;
                self.outbox.push_back(ClientOp::Publish { room: publish.room.clone(), data: publish.data.clone(), id: Some((*id).into()) });
            }
        }
    }

    /// A leave completed.
    pub fn handle_left(&mut self, room: &str) {
        self.events.push_back(Event::Left { room: room.to_owned() });
    }

    /// One decoded server message, whatever its kind: calls the `handle_*` above that it is for
    /// and returns what is left for the caller (a message to deliver, mostly). `now` is used by
    /// refusals that schedule a retry.
    pub fn handle_server_msg<'a, D>(&mut self, now: Instant, msg: ServerMsg<'a, D>) -> Received<'a, D> {
        match msg {
            ServerMsg::Message { room, seq, from, ts, data } => match self.handle_message(&room, seq) {
                MessageVerdict::Deliver => Received::Deliver { room, seq, from, ts, data },
                MessageVerdict::Duplicate => Received::Duplicate,
                MessageVerdict::NotJoined => Received::Absorbed,
            },
            ServerMsg::Joined { room, epoch, last_seq } => {
                self.handle_joined(&room, epoch, last_seq);
                Received::Joined
            }
            ServerMsg::Reset { room, epoch, last_seq } => {
                self.handle_reset(&room, epoch, last_seq);
                Received::Absorbed
            }
            ServerMsg::Gap { room, first_lost, last_lost, resume_from } => {
                self.handle_gap(&room, first_lost, last_lost, resume_from);
                Received::Absorbed
            }
            ServerMsg::Left { room } => {
                self.handle_left(&room);
                Received::Absorbed
            }
            ServerMsg::Published { room, seq, epoch, id } => {
                self.handle_published(&room, seq, epoch, id.unwrap_or(0));
                Received::Absorbed
            }
            ServerMsg::Error { code, reason, room, id, retry_after_ms } => {
                self.handle_error(now, code, &reason, room.as_deref(), id, retry_after_ms);
                Received::Refused { code, reason }
            }
            ServerMsg::Pong => Received::Absorbed,
            ServerMsg::Refreshed { exp } => {
                self.events.push_back(Event::Refreshed { exp });
                Received::Absorbed
            }
            ServerMsg::Presence { room, members, events } => {
                self.events.push_back(Event::Presence { room: room.into_owned(), members, events: events.unwrap_or(true) });
                Received::Absorbed
            }
            ServerMsg::MemberJoined { room, user } => {
                self.events.push_back(Event::Member { room: room.into_owned(), user: user.into_owned(), joined: true });
                Received::Absorbed
            }
            ServerMsg::MemberLeft { room, user } => {
                self.events.push_back(Event::Member { room: room.into_owned(), user: user.into_owned(), joined: false });
                Received::Absorbed
            }
            ServerMsg::Removed { room, reason } => {
                self.rooms.remove(room.as_ref());
                self.events.push_back(Event::Removed { room: room.into_owned(), reason: reason.into_owned() });
                Received::Absorbed
            }
        }
    }

    /// Hands the Link a fresh token before the current one expires (`{"op":"refresh"}`; the
    /// answer is [`Event::Refreshed`], a refusal an [`Event::Error`]); reconnects use it too.
    /// While disconnected it is only kept for the next connection.
    pub fn refresh(&mut self, token: &str) {
        self.token = Some(token.to_owned());
        if self.link == LinkState::Connected {
            self.outbox.push_back(ClientOp::Refresh { token: token.to_owned() });
        }
    }

    // ---- outputs ----

    /// The next op to send, if connected.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ClientOp> {
        if self.link != LinkState::Connected {
            return None;
        }
        let op = self.outbox.pop_front()?;
        if let (ClientOp::Publish { room, data, .. }, Some(id)) = (&op, op.publish_id()) {
            let publish = self.in_flight.entry(id).or_insert_with(|| InFlight {
                room: room.clone(),
                data: data.clone(),
                retries: 0,
                resend_at: None,
            });
            publish.resend_at = None;
        }
        Some(op)
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn note_reset(&mut self, room: &str, epoch: u64, last_seq: u64) {
        self.stats.resets += 1;
        self.events.push_back(Event::Reset { room: room.to_owned(), epoch, last_seq });
    }

    fn note_gap(&mut self, room: &str, first_lost: u64, last_lost: u64, resume_from: u64) {
        self.stats.gaps += 1;
        self.stats.lost += last_lost.saturating_sub(first_lost) + 1;
        self.events.push_back(Event::Gap { room: room.to_owned(), first_lost, last_lost, resume_from });
    }

    fn fail_in_flight(&mut self) {
        for (id, publish) in std::mem::take(&mut self.in_flight) {
            self.events.push_back(Event::Error {
                code: 0,
                reason: "connection lost before the ack; the publish may or may not have happened".into(),
                room: Some(publish.room),
                id: Some(id),
            });
        }
    }

    /// Equal jitter: half the base delay fixed, half random; floored by overload and hints.
    fn retry_delay(&mut self, cause: &Disconnect) -> Duration {
        let backoff = self.config.backoff;
        let base = backoff.base_delay(self.attempt);
        let half = base / 2;
        let span = half.as_micros().min(u64::MAX as u128) as u64;
        let jitter = if span == 0 { 0 } else { self.next_random() % (span + 1) };
        let mut delay = half + Duration::from_micros(jitter);
        if cause.is_retry_later() {
            if let Some(hint) = cause.reason_hint().or(self.last_error_hint.take()) {
                // The server's delay, jittered up by at most a fifth.
                let span = (hint.as_micros() / 5).min(u64::MAX as u128) as u64;
                let jitter = if span == 0 { 0 } else { self.next_random() % (span + 1) };
                return hint + Duration::from_micros(jitter);
            }
        }
        if cause.is_overload() {
            delay = delay.max(backoff.overload_min);
        }
        if let Some(hint) = cause.retry_after {
            delay = delay.max(hint);
        }
        delay
    }

    /// xorshift64*: cheap, seeded, good enough for jitter.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The first publish id of a session seeded with `seed`: a splitmix64 draw below 2^52 (ids stay
/// exact as JavaScript numbers for 2^52 more publishes), never 0.
fn first_publish_id(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 12) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let config = SessionConfig {
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
                overload_min: Duration::from_secs(1),
                stable_after: Duration::from_secs(5),
            },
            max_queued_publishes: 2,
        };
        Session::new(config, 42)
    }

    fn drain_ops(s: &mut Session) -> Vec<ClientOp> {
        std::iter::from_fn(|| s.poll_transmit()).take(1000).collect()
    }

    fn drain_events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).take(1000).collect()
    }

    fn join(room: &str, since: Option<u64>, epoch: Option<u64>) -> ClientOp {
        ClientOp::Join { room: room.into(), since, epoch, presence: false }
    }

    /// A session connected at `t0` and joined to `room` at (epoch 7, `last_seq`).
    fn joined(t0: Instant, room: &str, last_seq: u64) -> Session {
        let mut s = session();
        s.join(room);
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        assert_eq!(drain_ops(&mut s), vec![join(room, None, None)]);
        s.handle_joined(room, 7, last_seq);
        drain_events(&mut s);
        s
    }

    #[test]
    fn a_refresh_is_sent_when_connected_and_kept_for_reconnects() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 0);
        s.refresh("new-token");
        assert_eq!(drain_ops(&mut s), vec![ClientOp::Refresh { token: "new-token".into() }]);
        assert_eq!(s.token(), Some("new-token"));
        let _ = s.handle_server_msg(t0, ServerMsg::Refreshed::<serde_json::Value> { exp: 42 });
        assert_eq!(drain_events(&mut s), vec![Event::Refreshed { exp: 42 }]);
        s.handle_disconnected(t0, Disconnect::io("gone"));
        s.refresh("newer");
        let _ = drain_events(&mut s);
        assert!(drain_ops(&mut s).is_empty(), "nothing sent while disconnected");
        assert_eq!(s.token(), Some("newer"), "the next connection uses it");
    }

    /// Drops the connection at `now` and reconnects at the scheduled time; returns it.
    fn reconnect(s: &mut Session, now: Instant) -> Instant {
        s.handle_disconnected(now, Disconnect::io("eof"));
        let at = s.poll_timeout().expect("waiting");
        assert!(s.poll_connect(at));
        s.handle_connected(at);
        at
    }

    #[test]
    fn first_connect_joins_live_then_rejoins_with_since() {
        let t0 = Instant::now();
        let mut s = session();
        s.join("lobby");
        assert!(drain_ops(&mut s).is_empty(), "nothing is sent before a connection");
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        assert_eq!(drain_ops(&mut s), vec![join("lobby", None, None)]);
        s.handle_joined("lobby", 7, 10);
        for seq in 11..=13 {
            assert_eq!(s.handle_message("lobby", seq), MessageVerdict::Deliver);
        }
        s.handle_disconnected(t0 + Duration::from_secs(1), Disconnect::io("reset"));
        assert!(!s.poll_connect(t0 + Duration::from_secs(1)));
        let at = s.poll_timeout().expect("waiting");
        assert!(s.poll_connect(at));
        s.handle_connected(at);
        assert_eq!(drain_ops(&mut s), vec![join("lobby", Some(13), Some(7))], "since and epoch");
        // Replays overlap what we had: duplicates dropped, new ones delivered.
        assert_eq!(s.handle_message("lobby", 13), MessageVerdict::Duplicate);
        assert_eq!(s.handle_message("lobby", 14), MessageVerdict::Deliver);
        s.handle_joined("lobby", 7, 14);
        assert_eq!(s.stats().duplicates, 1);
        assert_eq!(s.stats().lost, 0);
        let events = drain_events(&mut s);
        assert!(events.iter().all(|e| !matches!(e, Event::Gap { .. })), "{events:?}");
    }

    #[test]
    fn holes_and_server_gaps_are_events() {
        let t0 = Instant::now();
        let mut s = session();
        s.join("r");
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        s.handle_joined("r", 7, 0);
        assert_eq!(s.handle_message("r", 1), MessageVerdict::Deliver);
        assert_eq!(s.handle_message("r", 4), MessageVerdict::Deliver);
        s.handle_gap("r", 5, 9, 10);
        assert_eq!(s.handle_message("r", 10), MessageVerdict::Deliver);
        let gaps: Vec<_> = drain_events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                Event::Gap { first_lost, last_lost, resume_from, .. } => Some((first_lost, last_lost, resume_from)),
                _ => None,
            })
            .collect();
        assert_eq!(gaps, vec![(2, 3, 4), (5, 9, 10)]);
        assert_eq!(s.stats().lost, 7);
    }

    #[test]
    fn a_reset_forgets_the_position_instead_of_dropping_the_new_epoch() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 50);
        for seq in 51..=60 {
            assert_eq!(s.handle_message("r", seq), MessageVerdict::Deliver);
        }
        let at = reconnect(&mut s, t0);
        assert_eq!(drain_ops(&mut s), vec![join("r", Some(60), Some(7))]);
        drain_events(&mut s);
        // The hub restarted without a store: epoch 9, three messages so far, all held.
        s.handle_reset("r", 9, 3);
        assert_eq!((s.epoch("r"), s.last_seq("r")), (Some(9), Some(0)), "position is (new epoch, 0)");
        for seq in 1..=3 {
            assert_eq!(s.handle_message("r", seq), MessageVerdict::Deliver, "seq {seq} of the new epoch is new");
        }
        s.handle_joined("r", 9, 3);
        assert_eq!(s.handle_message("r", 4), MessageVerdict::Deliver);
        assert_eq!(
            drain_events(&mut s),
            vec![Event::Reset { room: "r".into(), epoch: 9, last_seq: 3 }, Event::Joined { room: "r".into(), epoch: 9, last_seq: 3 }]
        );
        assert_eq!((s.stats().resets, s.stats().duplicates, s.stats().lost), (1, 0, 0));
        // The next rejoin carries the new position.
        reconnect(&mut s, at);
        assert_eq!(drain_ops(&mut s), vec![join("r", Some(4), Some(9))]);
    }

    #[test]
    fn a_live_reset_restarts_the_room_and_a_gap_may_follow() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 5);
        s.handle_reset("r", 11, 40);
        s.handle_gap("r", 1, 30, 31);
        assert_eq!(s.handle_message("r", 30), MessageVerdict::Duplicate, "covered by the gap");
        assert_eq!(s.handle_message("r", 31), MessageVerdict::Deliver);
        let events = drain_events(&mut s);
        assert_eq!(events[0], Event::Reset { room: "r".into(), epoch: 11, last_seq: 40 });
        assert!(matches!(events[1], Event::Gap { first_lost: 1, last_lost: 30, resume_from: 31, .. }), "{events:?}");
    }

    #[test]
    fn a_join_answer_of_another_epoch_without_reset_is_still_a_reset() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 50);
        reconnect(&mut s, t0);
        drain_events(&mut s);
        s.handle_joined("r", 8, 3);
        let events = drain_events(&mut s);
        assert_eq!(events[0], Event::Reset { room: "r".into(), epoch: 8, last_seq: 3 });
        assert!(matches!(events[1], Event::Gap { first_lost: 1, last_lost: 3, resume_from: 4, .. }), "{events:?}");
        assert_eq!(events[2], Event::Joined { room: "r".into(), epoch: 8, last_seq: 3 });
        assert_eq!(s.handle_message("r", 4), MessageVerdict::Deliver);
    }

    #[test]
    fn a_join_refused_for_a_lost_hub_is_retried_after_the_hint_then_surfaced() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 20);
        let at = reconnect(&mut s, t0);
        assert_eq!(drain_ops(&mut s), vec![join("r", Some(20), Some(7))]);
        drain_events(&mut s);
        let mut now = at;
        for attempt in 1..=MAX_RETRIES {
            s.handle_error(now, 503, "hub connection lost", Some("r"), None, Some(250));
            assert!(drain_events(&mut s).is_empty(), "retried silently (attempt {attempt})");
            let due = s.poll_timeout().expect("a retry is scheduled");
            assert_eq!(due - now, Duration::from_millis(250));
            s.handle_timeout(due - Duration::from_millis(1));
            assert!(drain_ops(&mut s).is_empty(), "not before the hint");
            s.handle_timeout(due);
            assert_eq!(drain_ops(&mut s), vec![join("r", Some(20), Some(7))], "same position");
            assert_eq!(s.poll_timeout(), None);
            now = due;
        }
        assert_eq!(s.stats().retries, u64::from(MAX_RETRIES));
        s.handle_error(now, 503, "hub connection lost", Some("r"), None, Some(250));
        assert!(matches!(drain_events(&mut s)[..], [Event::Error { code: 503, .. }]), "bounded: surfaced at last");
        assert_eq!(s.rooms().count(), 0, "a refused join left the room");
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_successful_rejoin_resets_the_retry_budget() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 0);
        for _ in 0..3 {
            s.handle_error(t0, 503, "hub unavailable", Some("r"), None, Some(10));
            s.handle_timeout(t0 + Duration::from_millis(10));
            let _ = drain_ops(&mut s);
        }
        s.handle_joined("r", 7, 0);
        for _ in 0..MAX_RETRIES {
            s.handle_error(t0, 503, "hub unavailable", Some("r"), None, Some(10));
            s.handle_timeout(t0 + Duration::from_millis(10));
        }
        assert!(drain_events(&mut s).iter().all(|e| !matches!(e, Event::Error { .. })));
        assert_eq!(s.rooms().count(), 1);
    }

    #[test]
    fn a_publish_refused_for_a_lost_hub_is_resent_with_the_same_id() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 0);
        let id = s.publish("r", Bytes::from_static(br#"{"n":1}"#)).expect("queued");
        let sent = drain_ops(&mut s);
        assert_eq!(sent, vec![ClientOp::Publish { room: "r".into(), data: Bytes::from_static(br#"{"n":1}"#), id: Some(id.into()) }]);
        s.handle_error(t0, 503, "hub connection lost", Some("r"), Some(id), Some(1000));
        assert!(drain_events(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        s.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(drain_ops(&mut s), sent, "the same op, the same id: the hub dedupes it");
        s.handle_published("r", 1, 7, id);
        assert_eq!(drain_events(&mut s), vec![Event::Published { room: "r".into(), seq: 1, epoch: 7, id }]);
        // Other refusals are not retried.
        let other = s.publish("r", Bytes::from_static(b"2")).expect("queued");
        let _ = drain_ops(&mut s);
        s.handle_error(t0, 429, "rate limited", Some("r"), Some(other), Some(1000));
        assert!(matches!(drain_events(&mut s)[..], [Event::Error { code: 429, id: Some(i), .. }] if i == other));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn publish_retries_are_bounded_and_a_drop_puts_them_in_doubt() {
        let t0 = Instant::now();
        let mut s = joined(t0, "r", 0);
        let id = s.publish("r", Bytes::from_static(b"1")).expect("queued");
        let _ = drain_ops(&mut s);
        for _ in 0..MAX_RETRIES {
            s.handle_error(t0, 503, "hub unavailable", Some("r"), Some(id), Some(5));
            s.handle_timeout(t0 + Duration::from_millis(5));
            assert_eq!(drain_ops(&mut s).len(), 1);
        }
        s.handle_error(t0, 503, "hub unavailable", Some("r"), Some(id), Some(5));
        assert!(matches!(drain_events(&mut s)[..], [Event::Error { code: 503, id: Some(i), .. }] if i == id));
        // A publish waiting for its retry when the connection drops is in doubt, not resent.
        let second = s.publish("r", Bytes::from_static(b"2")).expect("queued");
        let _ = drain_ops(&mut s);
        s.handle_error(t0, 503, "hub unavailable", Some("r"), Some(second), Some(5));
        s.handle_timeout(t0 + Duration::from_millis(5));
        reconnect(&mut s, t0 + Duration::from_millis(5));
        let ops = drain_ops(&mut s);
        assert!(ops.iter().all(|op| !matches!(op, ClientOp::Publish { .. })), "{ops:?}");
        let doubt: Vec<_> = drain_events(&mut s).into_iter().filter(|e| matches!(e, Event::Error { code: 0, .. })).collect();
        assert_eq!(doubt.len(), 1, "{doubt:?}");
    }

    #[test]
    fn publish_ids_depend_on_the_seed_and_stay_javascript_safe() {
        let mut a = Session::new(SessionConfig::default(), 1);
        let mut b = Session::new(SessionConfig::default(), 2);
        let (ia, ib) = (a.publish("r", Bytes::from_static(b"1")).expect("a"), b.publish("r", Bytes::from_static(b"1")).expect("b"));
        assert_ne!(ia, ib, "two sessions of one user do not share idempotency keys");
        assert_eq!(a.publish("r", Bytes::from_static(b"2")).expect("a"), ia + 1);
        assert!(ia < 1 << 52 && ib < 1 << 52 && ia > 0);
    }

    #[test]
    fn ops_encode_through_the_protocol() {
        let join = join("lobby", Some(7), Some(0xab)).to_json();
        assert_eq!(ClientOp::parse(&join), Ok(ClientOp::Join { room: "lobby".into(), since: Some(7), epoch: Some(0xab), presence: false }));
        let publish = ClientOp::Publish { room: "a".into(), data: Bytes::from_static(br#"{"x":1}"#), id: Some(3.into()) }.to_json();
        assert_eq!(
            ClientOp::parse(&publish),
            Ok(ClientOp::Publish { room: "a".into(), data: Bytes::from_static(br#"{"x":1}"#), id: Some(serde_json::json!(3)) })
        );
        assert_eq!(ClientOp::parse(&ClientOp::Leave { room: "a".into() }.to_json()), Ok(ClientOp::Leave { room: "a".into() }));
        assert_eq!(ClientOp::parse(&ClientOp::Ping.to_json()), Ok(ClientOp::Ping));
    }

    #[test]
    fn backoff_grows_jitters_and_honours_hints() {
        let t0 = Instant::now();
        let mut s = session();
        assert!(s.poll_connect(t0));
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            s.handle_disconnected(now, Disconnect::io("refused"));
            let at = s.poll_timeout().expect("waiting");
            delays.push(at - now);
            now = at;
            assert!(s.poll_connect(now));
        }
        for (i, d) in delays.iter().enumerate() {
            let base = s.config.backoff.base_delay(i as u32 + 1);
            assert!(*d >= base / 2 && *d <= base, "attempt {}: {d:?} vs base {base:?}", i + 1);
        }
        assert!(delays[7] <= Duration::from_secs(2), "capped");
        // Overload close: at least overload_min; a retry hint: at least the hint.
        s.handle_disconnected(now, Disconnect { close_code: Some(1013), ..Disconnect::default() });
        assert!(s.poll_timeout().expect("waiting") - now >= Duration::from_secs(1));
        now = s.poll_timeout().expect("waiting");
        assert!(s.poll_connect(now));
        let hint = Disconnect { http_status: Some(503), retry_after: Some(Duration::from_secs(7)), ..Disconnect::default() };
        s.handle_disconnected(now, hint);
        assert_eq!(s.poll_timeout().expect("waiting") - now, Duration::from_secs(7));
    }

    #[test]
    fn operator_closes_end_the_session_and_41xx_reconnects_after_the_hint() {
        let t0 = Instant::now();
        for (code, reason) in [(4000, "spam"), (4001, "banned"), (4002, "token revoked"), (4003, "too many connections for user")] {
            let mut s = session();
            assert!(s.poll_connect(t0));
            s.handle_connected(t0);
            drain_events(&mut s);
            s.handle_disconnected(t0, Disconnect { close_code: Some(code), reason: reason.into(), ..Disconnect::default() });
            let events = drain_events(&mut s);
            assert!(
                matches!(events.as_slice(), [Event::Closed { cause }] if cause.close_code == Some(code) && cause.reason == reason),
                "{code}: {events:?}"
            );
            assert_eq!(s.poll_timeout(), None, "{code}: no reconnect");
            assert!(!s.poll_connect(t0 + Duration::from_secs(3600)));
        }
        // 4100 with the hint in its reason: that delay, jittered up by at most a fifth.
        let mut s = session();
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        let slow = Disconnect { close_code: Some(4100), reason: "slow consumer; retry_after_ms=1000".into(), ..Disconnect::default() };
        s.handle_disconnected(t0, slow);
        let delay = s.poll_timeout().expect("reconnects") - t0;
        assert!(delay >= Duration::from_millis(1000) && delay <= Duration::from_millis(1200), "{delay:?}");
        // Without one in the reason: the error op's just before the close.
        let now = t0 + delay;
        assert!(s.poll_connect(now));
        s.handle_connected(now);
        s.handle_error(now, 503, "draining", None, None, Some(3000));
        s.handle_disconnected(now, Disconnect { close_code: Some(4150), reason: "later".into(), ..Disconnect::default() });
        let delay = s.poll_timeout().expect("reconnects") - now;
        assert!(delay >= Duration::from_millis(3000) && delay <= Duration::from_millis(3600), "{delay:?}");
        assert_eq!(Disconnect { reason: "x; retry_after_ms=25".into(), ..Disconnect::default() }.reason_hint(), Some(Duration::from_millis(25)));
    }

    #[test]
    fn a_draining_links_1001_with_a_hint_reconnects_after_it() {
        let t0 = Instant::now();
        let mut s = session();
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        let draining = Disconnect { close_code: Some(1001), reason: "link draining; retry_after_ms=700".into(), ..Disconnect::default() };
        assert!(draining.is_retry_later() && !draining.is_fatal());
        s.handle_disconnected(t0, draining);
        let delay = s.poll_timeout().expect("reconnects") - t0;
        assert!(delay >= Duration::from_millis(700) && delay <= Duration::from_millis(840), "{delay:?}");
        let plain = Disconnect { close_code: Some(1001), reason: "server shutting down".into(), ..Disconnect::default() };
        assert!(!plain.is_retry_later(), "a 1001 without a hint keeps the normal backoff");
    }

    #[test]
    fn a_stable_connection_resets_the_attempt_counter() {
        let t0 = Instant::now();
        let mut s = session();
        assert!(s.poll_connect(t0));
        s.handle_disconnected(t0, Disconnect::io("x"));
        let at = s.poll_timeout().expect("waiting");
        assert!(s.poll_connect(at));
        s.handle_connected(at);
        s.handle_disconnected(at + Duration::from_secs(6), Disconnect::io("y"));
        let events = drain_events(&mut s);
        assert!(matches!(events.last(), Some(Event::Reconnecting { attempt: 1, .. })), "{events:?}");
    }

    #[test]
    fn fatal_closes_end_the_session() {
        let t0 = Instant::now();
        let mut s = session();
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        s.handle_disconnected(t0, Disconnect { close_code: Some(1008), reason: "token expired".into(), ..Disconnect::default() });
        assert!(s.is_closed());
        assert!(s.poll_timeout().is_none());
        assert!(matches!(drain_events(&mut s).last(), Some(Event::Closed { .. })));
        assert_eq!(s.publish("r", Bytes::from_static(b"1")), Err(SessionError::Closed));
    }

    #[test]
    fn publishes_wait_bounded_and_unacked_ones_are_reported() {
        let t0 = Instant::now();
        let mut s = session();
        s.join("r");
        let a = s.publish("r", Bytes::from_static(b"1")).expect("queued");
        let _b = s.publish("r", Bytes::from_static(b"2")).expect("queued");
        assert_eq!(s.publish("r", Bytes::from_static(b"3")), Err(SessionError::QueueFull(2)));
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        let ops = drain_ops(&mut s);
        assert_eq!(ops.len(), 3, "join first, then the two publishes: {ops:?}");
        assert_eq!(ops[0], join("r", None, None));
        s.handle_published("r", 1, 7, a);
        s.handle_disconnected(t0, Disconnect::io("eof"));
        let lost: Vec<_> = drain_events(&mut s)
            .into_iter()
            .filter(|e| matches!(e, Event::Error { code: 0, .. }))
            .collect();
        assert_eq!(lost.len(), 1, "only the unacked publish is in doubt");
    }

    #[test]
    fn refused_join_leaves_the_room() {
        let t0 = Instant::now();
        let mut s = session();
        s.join("secret");
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        let _ = drain_ops(&mut s);
        s.handle_error(t0, 403, "room not allowed", Some("secret"), None, None);
        assert_eq!(s.rooms().count(), 0);
        assert_eq!(s.handle_message("secret", 1), MessageVerdict::NotJoined);
    }

    #[test]
    fn server_messages_are_dispatched_to_their_handlers() {
        let t0 = Instant::now();
        let mut s = session();
        s.join("r");
        assert!(s.poll_connect(t0));
        s.handle_connected(t0);
        drain_ops(&mut s);
        drain_events(&mut s);
        let joined: ServerMsg<u64> = ServerMsg::Joined { room: "r".into(), epoch: 7, last_seq: 2 };
        assert_eq!(s.handle_server_msg(t0, joined), Received::Joined);
        let message = |seq| ServerMsg::Message { room: "r".into(), seq, from: "u".into(), ts: 5, data: seq * 10 };
        assert_eq!(s.handle_server_msg(t0, message(3)), Received::Deliver { room: "r".into(), seq: 3, from: "u".into(), ts: 5, data: 30 });
        assert_eq!(s.handle_server_msg(t0, message(3)), Received::Duplicate);
        let elsewhere = ServerMsg::Message { room: "other".into(), seq: 1, from: "u".into(), ts: 5, data: 0 };
        assert_eq!(s.handle_server_msg(t0, elsewhere), Received::Absorbed);
        let gap: ServerMsg<u64> = ServerMsg::Gap { room: "r".into(), first_lost: 4, last_lost: 5, resume_from: 6 };
        assert_eq!(s.handle_server_msg(t0, gap), Received::Absorbed);
        assert_eq!(s.last_seq("r"), Some(5));
        let refusal: ServerMsg<u64> = ServerMsg::Error { code: 403, reason: "no".into(), room: Some("r".into()), id: None, retry_after_ms: None };
        assert_eq!(s.handle_server_msg(t0, refusal), Received::Refused { code: 403, reason: "no".into() });
        assert_eq!(s.rooms().count(), 0, "a refused join takes the room out, as handle_error does");
        let events = drain_events(&mut s);
        assert!(matches!(events.as_slice(), [Event::Joined { .. }, Event::Gap { first_lost: 4, .. }, Event::Error { code: 403, .. }]), "{events:?}");
    }
}
