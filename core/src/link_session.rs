//! One client connection's rooms at a Link — join, replay, live hand-over, de-duplication,
//! gaps and resets — as a sans-IO state machine, whatever carries the connection (WebSocket or
//! QUIC).
//!
//! Driven the quinn-proto way: events in, actions out, time passed in.
//! - [`LinkSession::handle_request`]: a parsed client operation ([`Request`], from
//!   [`crate::protocol::ClientOp`] or a QUIC frame);
//! - [`LinkSession::handle_hub_frame`]: a hub answer for this connection (routed by request id);
//! - [`LinkSession::fill`]: read the shard's rings ([`ShardRooms`]) from this connection's cursors.
//!
//! Out come [`ToClient`] values (what to send the client, still to be encoded for the wire by
//! the driver — ring deliveries already are, as shared buffers) and, through
//! [`ShardRooms::poll_coordinator`], what the Link's coordinator must tell the hub. That queue
//! and the sessions' counters ([`SessionOut`]) are the shard's, not each connection's: the
//! driver drains them after every call into a session, so an idle connection carries neither.
//!
//! The join, exactly as docs/protocol.md promises (no loss, no duplicate, never a silent jump):
//! 1. take a cursor at the tail of the shard's ring for the room *now*, give the join its own
//!    request id, and ask the owner hub for `Join {request, since, epoch}`;
//! 2. until `Joined`, deliver only the hub's answers to *that* request, in order: `Reset` (the
//!    position was of another epoch: it restarts at (epoch, 0)), `Gap`, `Replay`…; answers to
//!    an earlier join of the same room (left meanwhile) carry another request id and are dropped;
//! 3. on `Joined {epoch}` (header seq `L`) send `joined`, move the cursor to where the ring stood
//!    when the shard routed `Joined` (everything before it in the hub's stream is covered by the
//!    replay), then read the ring.
//!
//! Reading the ring, per member: a message at or below the member's last seq is a duplicate and
//! skipped; a message beyond `last + 1` is preceded by a `gap` (the member fell off the ring, or
//! the Link missed messages); a room-wide [`RingItem::Gap`] or [`RingItem::Reset`] becomes the
//! member's `gap` / `reset` in order; an item of an epoch the member has not been told of is
//! preceded by a `reset`. So a member never sees a lower seq or a jump without being told. A
//! cursor that fell off its ring counts as lagging; with `lag_policy = "disconnect"` the session
//! ends with [`ClientError::SlowConsumer`] instead.
//!
//! Limits around joins: joins take a token from a per-connection bucket (`link.join_rate`;
//! refused with 429 and a spaced `retry_after_ms`, never closed). A replay is handed out up to
//! `link.replay_bytes` between two drains of the driver's socket queue
//! ([`LinkSession::drained`]); beyond that (or when the driver dropped replays:
//! [`LinkSession::replay_dropped`]) the join is **paged**: its further replays are ignored, and
//! after its `Joined` — once the socket drained — it is continued with a new `Join` from the last
//! replayed seq (a `Join` + `Leave` pair for the coordinator, so the room's interest is
//! unchanged). The hub pages too: a `Joined` with `FLAG_PARTIAL` (its per-join replay cap was
//! reached) is continued the same way. The client sees one replay, then `joined`. A [`LinkSession::refresh`] swaps the
//! claims (same `sub`), leaving rooms the new ones no longer allow.
//!
//! Automatic rooms (`system_rooms.rs`): right after authentication the driver calls
//! [`LinkSession::join_system_rooms`]: the connection joins `user:{sub}` (unless the Link's
//! `personal_room` is off) and `all` (unless its `broadcast_room` is off), live only, outside
//! `max_rooms` and the join rate (a room the Link leaves out is the client's to join, as one of
//! its own). A client `join` of one of them *with* a position is a resume: the room is asked
//! again from there, and replayed seqs the member already got live (`live_from..=last`, kept
//! aside as a `Skip` until the resume's `Joined`) are accounted for but not sent twice;
//! *without* a position it is answered `joined` again. Clients never publish into these rooms
//! (`403 room is read-only for clients`), and join another user's personal room never
//! (`system_rooms::may_join`). An operator's removal ([`LinkSession::remove`]) leaves a room
//! with `removed` instead of `left`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::Claims;
use crate::fanout::{Cursor, LagPolicy, ParkTicket, ReadOutcome};
use crate::frame::{is_valid_room, ArchivedBody, Body, Frame, FrameBuilder, Kind, FLAG_JSON, FLAG_PARTIAL};
use crate::protocol::{publish_key, ClientError, ClientOp, Refusal};
use crate::room::LostRange;
use crate::shard_rooms::{GapReason, RingItem, ShardRooms};
use crate::system_rooms::{is_server_only, may_join, personal_room, user_key, BROADCAST_ROOM, PERSONAL_PREFIX};
use crate::token_bucket::{Rate, TokenBucket, Verdict};

/// Most publishes of one connection awaiting their hub ack.
pub const MAX_PENDING_PUBLISHES: usize = 1024;

/// Largest publish payload whatever `link.max_message_bytes` says: a publish must fit one
/// Link↔hub frame (an oversize frame would end the Link's whole hub connection).
pub const MAX_PUBLISH_BYTES: usize = crate::frame::DEFAULT_MAX_FRAME_LEN - 4096;

/// How a session's output is encoded by its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// JSON text frames.
    Ws,
    /// linkcast frames (`frame.rs`).
    Quic,
}

/// The client's correlation id of a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum ReqId {
    /// A WebSocket publish's optional `id` (any JSON scalar, echoed; its idempotency key).
    Json(Option<serde_json::Value>),
    /// A QUIC `Publish {request}`.
    Quic(u64),
}

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Join `room`, replaying after `since` of `epoch`.
    Join {
        /// Room.
        room: String,
        /// Last seq the client has.
        since: Option<u64>,
        /// The epoch `since` belongs to.
        epoch: Option<u64>,
        /// Also deliver the room's `member_joined` / `member_left` events.
        presence: bool,
    },
    /// Leave `room`.
    Leave {
        /// Room.
        room: String,
    },
    /// Publish `data` (JSON when `flags` has `FLAG_JSON`) to `room`.
    Publish {
        /// Room.
        room: String,
        /// Payload.
        data: Vec<u8>,
        /// Header flags for the hub.
        flags: u16,
        /// Echoed in the ack.
        id: ReqId,
        /// Idempotency key (`""`: none).
        key: String,
    },
    /// Application ping (`{"op":"ping"}` or a QUIC `Heartbeat`).
    Ping {
        /// QUIC heartbeat nonce (0 for WebSocket).
        nonce: u64,
    },
    /// A new token for the connection (`refresh`, or `auth` once authenticated). The driver
    /// verifies it and calls [`LinkSession::refresh`]; the session itself cannot.
    Refresh {
        /// The JWT.
        token: String,
    },
}

impl From<ClientOp> for Request {
    fn from(op: ClientOp) -> Request {
        match op {
            ClientOp::Join { room, since, epoch, presence } => Request::Join { room, since, epoch, presence },
            ClientOp::Leave { room } => Request::Leave { room },
            ClientOp::Publish { room, data, id } => {
                let key = id.as_ref().map(publish_key).unwrap_or_default();
                Request::Publish { room, data: data.into(), flags: FLAG_JSON, id: ReqId::Json(id), key }
            }
            ClientOp::Ping => Request::Ping { nonce: 0 },
            ClientOp::Auth { token } | ClientOp::Refresh { token } => Request::Refresh { token },
        }
    }
}

impl Request {
    /// Parses one frame from a QUIC client (after its `Hello`).
    pub fn from_quic(frame: &Frame) -> Result<Request, ClientError> {
        match frame.body() {
            ArchivedBody::Join { since, epoch, .. } => Ok(Request::Join {
                room: frame.room().to_owned(),
                since: since.as_ref().map(|s| s.to_native()),
                epoch: epoch.as_ref().map(|e| e.to_native()),
                // QUIC clients get the room's counts; join/leave events are a WebSocket opt-in.
                presence: false,
            }),
            ArchivedBody::Leave { .. } => Ok(Request::Leave { room: frame.room().to_owned() }),
            ArchivedBody::Publish { request, key, data } => {
                let flags = frame.flags();
                if flags & FLAG_JSON != 0 && serde_json::from_slice::<serde::de::IgnoredAny>(data.as_slice()).is_err() {
                    return Err(ClientError::MalformedJson);
                }
                if flags & FLAG_JSON == 0 && std::str::from_utf8(data.as_slice()).is_err() {
                    return Err(ClientError::BadField);
                }
                if key.len() > crate::protocol::MAX_ID_BYTES {
                    return Err(ClientError::BadField);
                }
                Ok(Request::Publish {
                    room: frame.room().to_owned(),
                    data: data.as_slice().to_vec(),
                    flags,
                    id: ReqId::Quic(request.to_native()),
                    key: key.as_str().to_owned(),
                })
            }
            ArchivedBody::Heartbeat { nonce } => Ok(Request::Ping { nonce: nonce.to_native() }),
            _ => Err(ClientError::UnknownOp),
        }
    }
}

/// Something to send the client; the driver encodes it for its [`Wire`].
#[derive(Debug, Clone, PartialEq)]
pub enum ToClient {
    /// Bytes already encoded for this connection's wire (ring deliveries: shared buffers).
    Encoded(Bytes),
    /// A replayed message (the hub's `Replay` frame).
    Replay(Frame),
    /// A join completed.
    Joined {
        /// Room.
        room: String,
        /// Its epoch.
        epoch: u64,
        /// Its last seq.
        last_seq: u64,
    },
    /// The client's position in the room is void: it is now (epoch, 0).
    Reset {
        /// Room.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// The room's last seq (0 when not known).
        last_seq: u64,
    },
    /// Messages `first_lost..=last_lost` will never come.
    Gap {
        /// Room.
        room: String,
        /// What was lost.
        lost: LostRange,
    },
    /// A leave completed.
    Left {
        /// Room.
        room: String,
    },
    /// A publish got its seq.
    Published {
        /// Room.
        room: String,
        /// Seq.
        seq: u64,
        /// Epoch.
        epoch: u64,
        /// The client's id.
        id: ReqId,
    },
    /// A refused request; the connection stays open.
    Error {
        /// HTTP-like code.
        code: u16,
        /// Reason.
        reason: String,
        /// Room concerned.
        room: Option<String>,
        /// The client's publish id.
        id: Option<ReqId>,
        /// Retry hint.
        retry_after_ms: Option<u32>,
    },
    /// Answer to a ping.
    Pong {
        /// QUIC heartbeat nonce.
        nonce: u64,
    },
    /// A refresh was accepted: the connection now lives until `exp`.
    Refreshed {
        /// The new token's expiry, seconds since the Unix epoch.
        exp: u64,
    },
    /// An operator took the connection out of `room` (no `left`).
    Removed {
        /// Room.
        room: String,
        /// The operator's reason.
        reason: String,
    },
}

/// What the Link's coordinator must do for this connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ToCoordinator {
    /// Count a member in `room` and send `Join` to its owner hub.
    Join {
        /// The join's request id.
        request: u64,
        /// Room (the shard's name for it, shared).
        room: Arc<str>,
        /// Position's seq.
        since: Option<u64>,
        /// Position's epoch.
        epoch: Option<u64>,
    },
    /// A member left `room`.
    Leave {
        /// Room (the shard's name for it, shared).
        room: Arc<str>,
    },
    /// Send this `Publish` frame to the room's owner hub.
    Publish {
        /// The frame (request id and key inside).
        frame: Frame,
    },
}

/// A session's limits (from `[link]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionLimits {
    /// Rooms one connection may be in.
    pub max_rooms: usize,
    /// Largest publish payload.
    pub max_message_bytes: usize,
    /// What to do with a member that fell off its ring.
    pub lag_policy: LagPolicy,
    /// Publishes per second.
    pub publish_rate: u32,
    /// Publish burst.
    pub publish_burst: u32,
    /// Joins per second (0: unlimited).
    pub join_rate: u32,
    /// Join burst.
    pub join_burst: u32,
    /// Replayed bytes handed to the driver between two drains of its socket queue
    /// ([`LinkSession::drained`]); a longer replay is paged.
    pub replay_bytes: usize,
}

impl SessionLimits {
    /// The publish bucket's rate.
    pub fn publish(&self) -> Rate {
        Rate::new(self.publish_rate, self.publish_burst)
    }

    /// The join bucket's rate.
    pub fn join(&self) -> Rate {
        Rate::new(self.join_rate, self.join_burst)
    }
}

/// Counters since the last [`ShardRooms::take_session_stats`]. 32-bit: a driver takes them
/// after every call into a session (they count one call's work).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Joins requested.
    pub joins: u32,
    /// Times a cursor fell off its ring.
    pub lagging: u32,
    /// Messages delivered (replayed or live).
    pub delivered: u32,
    /// Gaps told to the client.
    pub gaps: u32,
    /// `gaps` by reason, indexed by [`GapReason::index`].
    pub gaps_by: [u32; GapReason::ALL.len()],
    /// Resets told to the client.
    pub resets: u32,
    /// Replays cut at the connection's replay cap, to be continued once its socket drains.
    pub replay_pages: u32,
    /// Joins refused by the join rate limit.
    pub joins_limited: u32,
}

/// What the sessions of a shard hand their driver besides the client's output: the
/// coordinator's work and the counters. One per shard, inside its [`ShardRooms`] (as the read
/// batch is), not one per connection: the driver drains it after every call into a session
/// ([`ShardRooms::poll_coordinator`], [`ShardRooms::take_session_stats`]), so it is empty
/// between calls, and an idle connection carries neither a queue (32 bytes) nor counters (48).
#[derive(Debug, Default)]
pub struct SessionOut {
    pub(crate) to_coordinator: VecDeque<ToCoordinator>,
    pub(crate) stats: SessionStats,
}

/// One room of a connection. 64 bytes (a test keeps it so): an idle connection is in three
/// rooms (its room, `user:{sub}`, `all`), and three members with their names fit a 256-byte
/// block, where 80-byte members took a 320-byte one. Hence the epoch as a value and a flag
/// ([`Member::epoch`]) rather than an `Option<u64>` (16 bytes).
#[derive(Debug)]
struct Member {
    cursor: Cursor,
    /// The request id of the join in progress (answers to other ids are stale).
    request: u64,
    /// `Joined` arrived: the ring may be read.
    joined: bool,
    /// The join asked for a replay (it had a position).
    replay: bool,
    /// `epoch_value` is known.
    has_epoch: bool,
    /// The epoch of `last`, once known (`has_epoch`).
    epoch_value: u64,
    /// Highest seq delivered or accounted for (by a gap) in `epoch`.
    last: u64,
    ticket: ParkTicket,
    /// This request's replay was cut (replay cap, or replays dropped by the driver's mailbox):
    /// its further replays are ignored and the join is continued from `last` after `Joined`.
    truncated: bool,
    /// Waiting for the socket to drain to continue the cut replay.
    resume: bool,
    /// Joined by the Link itself (the personal and broadcast rooms): not counted against
    /// `max_rooms`, and a client `join` of it with a position is a resume.
    auto: bool,
    /// First seq of `epoch` this member got from the live ring (after its last `Joined`): what
    /// a resume must not deliver again is `live_from..=last`.
    live_from: u64,
    /// Joined with `"presence": true`: also gets the room's join/leave events.
    presence: bool,
}

impl Member {
    /// The epoch of `last`, once known.
    fn epoch(&self) -> Option<u64> {
        self.has_epoch.then_some(self.epoch_value)
    }

    fn set_epoch(&mut self, epoch: Option<u64>) {
        self.has_epoch = epoch.is_some();
        self.epoch_value = epoch.unwrap_or(0);
    }
}

/// Seqs a resumed automatic room already delivered live: replays inside are skipped.
#[derive(Debug)]
struct Skip {
    room: String,
    epoch: u64,
    from: u64,
    to: u64,
}

/// One connection's rooms, publishes and limits (see the module docs).
#[derive(Debug)]
pub struct LinkSession {
    id: u64,
    wire: Wire,
    /// The user's key, `user:{sub}` (its personal room's name, [`user_key`]): the shard's own
    /// name once the session is in that room, so the user id is kept once per connection, in
    /// the name the shard, the Link's registry and presence share. [`LinkSession::sub`] reads
    /// the id back. (The token's [`Claims`] are kept as these few fields, not as they came:
    /// every connection carries them, and 72 bytes of the record were theirs.)
    user: Arc<str>,
    /// The token's expiry, seconds since the Unix epoch (`u64::MAX`: never).
    exp: u64,
    /// The token's `iat`, when `has_iat` (a value and a flag, not an `Option`: 8 bytes less).
    iat_value: u64,
    has_iat: bool,
    /// The token's `rooms` allow any room (`"*"`); then `allowed` is empty: a dev-mode or
    /// `"*"` token costs the connection no allocation.
    any_room: bool,
    /// The token's other `rooms`.
    allowed: Box<[Box<str>]>,
    /// Shared by every session of a Link (the same `[link]` limits).
    limits: Arc<SessionLimits>,
    /// Exactly as many as joined (a boxed slice: no spare capacity, 8 bytes less than a `Vec`):
    /// an idle connection is in a few rooms, and a doubled capacity would cost it a whole unused
    /// member each. The names are the shard's own ([`ShardRooms::join_room`]), shared: no
    /// allocation per member, and the coordinator's table keeps the same one.
    rooms: Box<[(Arc<str>, Member)]>,
    /// What only a publishing or resuming connection needs, made by its first publish or
    /// resume (most members of a live room only read: 8 bytes instead of 48).
    occasional: Option<Box<Occasional>>,
    /// A ring may have items for this connection: call [`LinkSession::fill`].
    pub dirty: bool,
    join_bucket: TokenBucket,
    /// Replayed bytes handed out since the driver's socket queue was last empty (at most
    /// `limits.replay_bytes` plus one message: 32 bits, like the counters).
    replay_held: u32,
    /// Members with `resume` set.
    resuming: u32,
}

/// The part of a session most connections never use (see [`LinkSession::occasional`]).
#[derive(Debug)]
struct Occasional {
    /// Publish request id → (room, client id).
    pending: HashMap<u64, (String, ReqId)>,
    /// The publish rate. Made with the box, at the first publish or resume, not at connect:
    /// the same, since a bucket nobody took from is full whenever it is looked at.
    bucket: TokenBucket,
    /// Resumes of automatic rooms in progress.
    skips: Vec<Skip>,
}

impl LinkSession {
    /// A session for connection `id` (issued by its shard) with `claims`.
    pub fn new(id: u64, wire: Wire, claims: Claims, limits: Arc<SessionLimits>, now_micros: u64) -> Self {
        let mut session = LinkSession {
            id,
            wire,
            join_bucket: TokenBucket::new(limits.join(), now_micros),
            replay_held: 0,
            resuming: 0,
            user: user_key(&claims.sub).into(),
            exp: 0,
            iat_value: 0,
            has_iat: false,
            any_room: false,
            allowed: Box::default(),
            limits,
            rooms: Box::default(),
            occasional: None,
            dirty: false,
        };
        session.keep_claims(claims);
        session
    }

    /// Keeps what the session needs of a token's claims (its user is the session's already).
    fn keep_claims(&mut self, claims: Claims) {
        self.exp = claims.exp;
        self.iat_value = claims.iat.unwrap_or(0);
        self.has_iat = claims.iat.is_some();
        self.any_room = claims.rooms.iter().any(|room| room == "*");
        self.allowed = if self.any_room { Box::default() } else { claims.rooms.into_iter().map(String::into_boxed_str).collect() };
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What carries the connection.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// The user id (the token's `sub`).
    pub fn sub(&self) -> &str {
        sub_of(&self.user)
    }

    /// The token's expiry, seconds since the Unix epoch (`u64::MAX`: never).
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// The token's `iat` (issued at, seconds since the Unix epoch), if it had one.
    pub fn iat(&self) -> Option<u64> {
        self.has_iat.then_some(self.iat_value)
    }

    /// Whether the token allows `room` (as [`Claims::allows`]).
    fn allows(&self, room: &str) -> bool {
        self.any_room || self.allowed.iter().any(|allowed| &**allowed == room)
    }

    /// Rooms joined (or joining).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Handles a client request; refusals that keep the connection open are answered into
    /// `out`. `Err` means: close the connection with that error.
    pub fn handle_request(
        &mut self,
        request: Request,
        now_micros: u64,
        shard: &mut ShardRooms,
        out: &mut Vec<ToClient>,
    ) -> Result<(), ClientError> {
        match request {
            Request::Join { room, since, epoch, presence } => {
                if self.join_bucket.take(self.limits.join(), now_micros) != Verdict::Allow {
                    // Refused, never closed: a client retrying too eagerly keeps its connection.
                    shard.session_out.stats.joins_limited += 1;
                    let wait_ms = self.join_bucket.wait_micros(self.limits.join()).div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32;
                    out.push(ToClient::Error {
                        code: 429,
                        reason: ClientError::JoinRateLimited.label().to_owned(),
                        room: is_valid_room(&room).then_some(room),
                        id: None,
                        retry_after_ms: Some(wait_ms),
                    });
                    return Ok(());
                }
                if self.member(&room).is_some_and(|m| m.auto) {
                    self.join_again(&room, since, epoch, shard, out);
                    return Ok(());
                }
                if let Err(e) = self.join(&room, since, epoch, presence, false, shard) {
                    return refuse(e, Some(&room), None, out);
                }
            }
            Request::Leave { room } => {
                if !self.leave(&room, shard) {
                    return refuse(ClientError::NotJoined, Some(&room), None, out);
                }
                out.push(ToClient::Left { room });
            }
            Request::Publish { room, data, flags, id, key } => {
                if !is_valid_room(&room) {
                    return refuse(ClientError::BadRoom, None, Some(id), out);
                }
                if is_server_only(&room) {
                    return refuse(ClientError::ReadOnlyRoom, Some(&room), Some(id), out);
                }
                if !self.allows(&room) {
                    return refuse(ClientError::RoomNotAllowed, Some(&room), Some(id), out);
                }
                if data.len() > self.limits.max_message_bytes.min(MAX_PUBLISH_BYTES) {
                    return Err(ClientError::TooBig);
                }
                let rate = self.limits.publish();
                let occasional = self.occasional.get_or_insert_with(|| Occasional::new(rate, now_micros));
                match occasional.bucket.take(rate, now_micros) {
                    Verdict::Allow => {}
                    Verdict::Limited => return refuse(ClientError::RateLimited, Some(&room), Some(id), out),
                    Verdict::Flood => return Err(ClientError::Flood),
                }
                if occasional.pending.len() >= MAX_PENDING_PUBLISHES {
                    return refuse(ClientError::RateLimited, Some(&room), Some(id), out);
                }
                let request = shard.new_id();
                shard.add_request(request, self.id);
                let frame = FrameBuilder::new(&room).sender(sub_of(&self.user)).flags(flags).build(&Body::Publish { request, key, data });
                occasional.pending.insert(request, (room, id));
                shard.session_out.to_coordinator.push_back(ToCoordinator::Publish { frame });
            }
            Request::Ping { nonce } => out.push(ToClient::Pong { nonce }),
            // Verified by the driver, which calls `refresh`; a session on its own cannot.
            Request::Refresh { .. } => return refuse(ClientError::UnknownOp, None, None, out),
        }
        Ok(())
    }

    /// Takes a new, verified token: same user (else a 403 error and nothing changes), its
    /// `rooms` replace the old ones — rooms no longer allowed are left, each with a 403 error —
    /// and the client is told `refreshed`.
    pub fn refresh(&mut self, claims: Claims, shard: &mut ShardRooms, out: &mut Vec<ToClient>) {
        if claims.sub != self.sub() {
            let _ = refuse(ClientError::RefreshOtherUser, None, None, out);
            return;
        }
        let exp = claims.exp;
        self.keep_claims(claims);
        let revoked: Vec<String> =
            self.rooms.iter().map(|(room, _)| room).filter(|room| !may_join(self.sub(), room, self.allows(room))).map(|room| room.to_string()).collect();
        for room in revoked {
            self.leave(&room, shard);
            let _ = refuse(ClientError::RoomNotAllowed, Some(&room), None, out);
        }
        out.push(ToClient::Refreshed { exp });
    }

    /// The driver dropped replays of join `request` (its mailbox was over the replay cap):
    /// they are asked for again after `Joined`, like a replay cut here.
    pub fn replay_dropped(&mut self, request: u64) {
        if let Some((_, member)) = self.rooms.iter_mut().find(|(_, m)| m.request == request && !m.joined) {
            member.truncated = true;
        }
    }

    /// Whether [`LinkSession::drained`] has anything to do (replayed bytes handed out, or a cut
    /// replay waiting): a driver may skip the call otherwise.
    pub fn wants_drained(&self) -> bool {
        self.replay_held > 0 || self.resuming > 0
    }

    /// The driver's socket queue is empty: replayed bytes handed out so far have left, and cut
    /// replays waiting for this are continued (a `Join` from where each stopped).
    pub fn drained(&mut self, shard: &mut ShardRooms) {
        self.replay_held = 0;
        if self.resuming == 0 {
            return;
        }
        for (room, member) in self.rooms.iter_mut().filter(|(_, m)| m.resume) {
            member.resume = false;
            member.truncated = false;
            let request = shard.new_id();
            shard.add_request(request, self.id);
            member.request = request;
            shard.session_out.stats.replay_pages += 1;
            // The coordinator counts a member per `Join` and uncounts one per `Leave`: the pair
            // asks the hub again without changing the room's interest.
            shard.session_out.to_coordinator.push_back(ToCoordinator::Join {
                request,
                room: room.clone(),
                since: Some(member.last),
                epoch: member.epoch(),
            });
            shard.session_out.to_coordinator.push_back(ToCoordinator::Leave { room: room.clone() });
        }
        self.resuming = 0;
    }

    /// Joins the rooms the Link keeps for every connection, live only (no position): when
    /// `personal`, the user's personal room `user:{sub}` (when its id makes a valid room name)
    /// and, when `broadcast`, the room `all`. Not counted against `max_rooms` nor the join rate.
    /// The client gets `joined` for each, as for its own joins. A room left out here is still
    /// the client's to join (`may_join`), as one of its own rooms.
    pub fn join_system_rooms(&mut self, personal: bool, broadcast: bool, shard: &mut ShardRooms) {
        if let Some(room) = personal.then(|| personal_room(self.sub())).flatten() {
            if self.join(&room, None, None, false, true, shard).is_ok() {
                // The shard's name from now on: this session's own copy goes.
                if let Some((name, _)) = self.rooms.iter().find(|(name, _)| **name == *self.user) {
                    self.user = name.clone();
                }
            }
        }
        if broadcast {
            let _ = self.join(BROADCAST_ROOM, None, None, false, true, shard);
        }
    }

    /// The user's key at the Link: the name of its personal room, `user:{sub}`. Once the
    /// session has joined that room, the shard's own name (shared with the room tables: the
    /// Link's user registry and presence keep it, not copies of the user id).
    pub fn user_key(&self) -> Arc<str> {
        self.user.clone()
    }

    /// A client `join` of an automatic room it is already in. With a position (`since`) it is
    /// a **resume**: the room is asked again from that position (a `Join` + `Leave` pair for the
    /// coordinator: interest unchanged) and the client gets the replay, then `joined`; what it
    /// already got live since its automatic join is not delivered twice. Without a position it
    /// is answered `joined` again (current epoch and last seq) and nothing else changes.
    fn join_again(&mut self, room: &str, since: Option<u64>, epoch: Option<u64>, shard: &mut ShardRooms, out: &mut Vec<ToClient>) {
        let Some((name, member)) = self.rooms.iter_mut().find(|(r, _)| **r == *room) else { return };
        let Some(since) = since else {
            if member.joined {
                out.push(ToClient::Joined { room: room.to_owned(), epoch: member.epoch().unwrap_or(0), last_seq: member.last });
            }
            return; // still joining: its `joined` is on the way
        };
        forget_skips(&mut self.occasional, room);
        if let Some(known) = member.epoch().filter(|_| member.joined && member.live_from <= member.last) {
            let rate = self.limits.publish();
            let occasional = self.occasional.get_or_insert_with(|| Occasional::new(rate, 0));
            occasional.skips.push(Skip { room: room.to_owned(), epoch: known, from: member.live_from, to: member.last });
        }
        if member.resume {
            member.resume = false;
            self.resuming -= 1;
        }
        shard.remove_request(member.request);
        let request = shard.new_id();
        shard.add_request(request, self.id);
        member.request = request;
        member.joined = false;
        member.replay = true;
        member.set_epoch(epoch);
        member.last = since;
        member.truncated = false;
        shard.session_out.stats.joins += 1;
        shard.session_out.to_coordinator.push_back(ToCoordinator::Join { request, room: name.clone(), since: Some(since), epoch });
        shard.session_out.to_coordinator.push_back(ToCoordinator::Leave { room: name.clone() });
    }

    fn join(
        &mut self,
        room: &str,
        since: Option<u64>,
        epoch: Option<u64>,
        presence: bool,
        auto: bool,
        shard: &mut ShardRooms,
    ) -> Result<(), ClientError> {
        if !is_valid_room(room) {
            return Err(ClientError::BadRoom);
        }
        if !may_join(self.sub(), room, self.allows(room)) {
            return Err(ClientError::RoomNotAllowed);
        }
        if self.member(room).is_some() {
            return Err(ClientError::AlreadyJoined);
        }
        if !auto && self.rooms.iter().filter(|(_, m)| !m.auto).count() >= self.limits.max_rooms {
            return Err(ClientError::TooManyRooms);
        }
        let (cursor, name) = shard.join_room(room);
        let request = shard.new_id();
        shard.add_request(request, self.id);
        let member = Member {
            cursor,
            request,
            joined: false,
            replay: since.is_some(),
            has_epoch: epoch.is_some(),
            epoch_value: epoch.unwrap_or(0),
            last: since.unwrap_or(0),
            ticket: ParkTicket::default(),
            truncated: false,
            resume: false,
            auto,
            live_from: 1,
            presence,
        };
        let mut rooms = std::mem::take(&mut self.rooms).into_vec();
        rooms.reserve_exact(1);
        rooms.push((name.clone(), member));
        self.rooms = rooms.into_boxed_slice();
        shard.session_out.stats.joins += 1;
        shard.session_out.to_coordinator.push_back(ToCoordinator::Join { request, room: name, since, epoch });
        Ok(())
    }

    /// Leaves `room`; false if the connection was not in it.
    fn leave(&mut self, room: &str, shard: &mut ShardRooms) -> bool {
        let Some(at) = self.rooms.iter().position(|(r, _)| **r == *room) else { return false };
        let mut rooms = std::mem::take(&mut self.rooms).into_vec();
        let (room, member) = rooms.swap_remove(at);
        self.rooms = rooms.into_boxed_slice(); // exactly the rooms left (none: no allocation)
        if member.resume {
            self.resuming -= 1;
        }
        forget_skips(&mut self.occasional, &room);
        shard.leave_room(&room);
        shard.remove_request(member.request);
        shard.session_out.to_coordinator.push_back(ToCoordinator::Leave { room });
        true
    }

    fn member(&self, room: &str) -> Option<&Member> {
        self.rooms.iter().find(|(r, _)| **r == *room).map(|(_, m)| m)
    }

    /// Handles a hub answer routed to this connection. `ring_tail` is where the room's ring on
    /// this shard stood when the shard routed the answer (the boundary of a `Joined`).
    pub fn handle_hub_frame(&mut self, frame: Frame, ring_tail: Option<u64>, shard: &mut ShardRooms, out: &mut Vec<ToClient>) {
        match frame.body() {
            ArchivedBody::PublishAck { request, epoch } => {
                let request = request.to_native();
                shard.remove_request(request);
                if let Some((room, id)) = self.occasional.as_mut().and_then(|o| o.pending.remove(&request)) {
                    out.push(ToClient::Published { room, seq: frame.seq(), epoch: epoch.to_native(), id });
                }
                return;
            }
            ArchivedBody::Error { request, code, reason, retry_after_ms } => {
                let request = request.to_native();
                let code = code.to_native();
                let retry = Some(retry_after_ms.to_native()).filter(|ms| *ms > 0);
                shard.remove_request(request);
                if let Some((room, _)) = self.rooms.iter().find(|(_, m)| m.request == request && !m.joined) {
                    // A join was refused: the connection is not in the room.
                    let room = room.to_string();
                    self.leave(&room, shard);
                    out.push(ToClient::Error { code, reason: reason.as_str().to_owned(), room: Some(room), id: None, retry_after_ms: retry });
                } else if let Some((room, id)) = self.occasional.as_mut().and_then(|o| o.pending.remove(&request)) {
                    out.push(ToClient::Error { code, reason: reason.as_str().to_owned(), room: Some(room), id: Some(id), retry_after_ms: retry });
                }
                return;
            }
            _ => {}
        }
        if let ArchivedBody::Presence { .. } = frame.body() {
            // The room's count, routed with the join's answers: kept for after `joined`.
            if let Some((_, member)) = self.rooms.iter().find(|(r, m)| &**r == frame.room() && !m.joined) {
                shard.stash_count(member.request, frame);
            }
            return;
        }
        let request = match frame.body() {
            ArchivedBody::Reset { request, .. }
            | ArchivedBody::Gap { request, .. }
            | ArchivedBody::Replay { request, .. }
            | ArchivedBody::Joined { request, .. } => request.to_native(),
            _ => return,
        };
        let room = frame.room();
        let Some((_, member)) = self.rooms.iter_mut().find(|(r, m)| **r == *room && m.request == request && !m.joined) else {
            return; // an answer to a join left meanwhile, or a duplicate
        };
        let room = room.to_owned();
        match (frame.kind(), frame.body()) {
            (Kind::Reset, ArchivedBody::Reset { epoch, .. }) => {
                let epoch = epoch.to_native();
                member.set_epoch(Some(epoch));
                member.last = 0;
                shard.session_out.stats.resets += 1;
                out.push(ToClient::Reset { room, epoch, last_seq: frame.seq() });
            }
            (Kind::Gap, ArchivedBody::Gap { first_lost, last_lost, resume_from, .. }) => {
                let lost = LostRange {
                    first_lost: first_lost.to_native(),
                    last_lost: last_lost.to_native(),
                    resume_from: resume_from.to_native(),
                };
                tell_gap(&room, member, lost, GapReason::History, &mut shard.session_out.stats, out);
            }
            (Kind::Replay, _) => {
                let seq = frame.seq();
                if seq <= member.last || member.truncated {
                    return;
                }
                if self.occasional.as_deref().is_some_and(|o| skipped(&o.skips, &room, member.epoch(), seq)) {
                    // Delivered live before this resume: accounted for, not sent twice.
                    member.last = seq;
                    return;
                }
                let len = frame.len();
                if self.replay_held > 0 && self.replay_held as usize + len > self.limits.replay_bytes {
                    // Over the cap: the rest is asked for again once the socket drained.
                    member.truncated = true;
                    return;
                }
                jump(&room, member, seq, GapReason::History, &mut shard.session_out.stats, out);
                member.last = seq;
                self.replay_held = self.replay_held.saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
                shard.session_out.stats.delivered += 1;
                out.push(ToClient::Replay(frame));
            }
            (Kind::Joined, ArchivedBody::Joined { epoch, .. }) => {
                let epoch = epoch.to_native();
                let last_seq = frame.seq();
                // The hub cut its answer at its per-join cap (`FLAG_PARTIAL`), or this session
                // cut the replay at its own: either way it is continued from `last`.
                let partial = frame.flags() & FLAG_PARTIAL != 0 && member.last < last_seq;
                if (member.truncated || partial) && member.epoch().is_none_or(|e| e == epoch) {
                    // A cut replay: continued from `last` once the socket drained.
                    member.set_epoch(Some(epoch));
                    member.truncated = false;
                    member.resume = true;
                    self.resuming += 1;
                    shard.remove_request(request);
                    if self.replay_held == 0 {
                        self.drained(shard);
                    }
                    return;
                }
                if member.epoch() != Some(epoch) && member.replay && member.epoch().is_some() {
                    // The hub answers a stale position with Reset first; this is defence in depth.
                    out.push(ToClient::Reset { room: room.clone(), epoch, last_seq: 0 });
                    shard.session_out.stats.resets += 1;
                    member.last = 0;
                }
                member.set_epoch(Some(epoch));
                if member.replay && member.last < last_seq {
                    let lost = LostRange { first_lost: member.last + 1, last_lost: last_seq, resume_from: last_seq + 1 };
                    tell_gap(&room, member, lost, GapReason::History, &mut shard.session_out.stats, out);
                }
                member.last = member.last.max(last_seq);
                member.joined = true;
                member.live_from = member.last + 1;
                forget_skips(&mut self.occasional, &room);
                if let Some(tail) = ring_tail {
                    member.cursor.skip_to(tail);
                }
                let count = shard.take_count(request);
                shard.remove_request(request);
                self.dirty = true;
                out.push(ToClient::Joined { room: room.clone(), epoch, last_seq });
                if let Some(count) = count {
                    out.push(ToClient::Encoded(encode_count(&room, &count, self.wire)));
                }
            }
            _ => {}
        }
    }

    /// Moves up to about `budget` bytes of ring items into `out`, in order, with the `gap` and
    /// `reset` messages they call for. `Err(SlowConsumer)` when a cursor fell off its ring under
    /// `lag_policy = "disconnect"`. Leaves `dirty` set when the budget ran out first.
    pub fn fill(&mut self, mut budget: usize, shard: &mut ShardRooms, out: &mut Vec<ToClient>) -> Result<(), ClientError> {
        self.dirty = false;
        let mut batch = shard.take_batch();
        let result = 'rooms: {
            for (room, member) in self.rooms.iter_mut() {
                if !member.joined {
                    continue;
                }
                loop {
                    if budget == 0 {
                        self.dirty = true;
                        break 'rooms Ok(());
                    }
                    batch.clear();
                    match shard.read(room, self.id, &mut member.cursor, budget, &mut batch, &mut member.ticket) {
                        ReadOutcome::Idle => break,
                        ReadOutcome::Lagged { .. } => {
                            shard.session_out.stats.lagging += 1;
                            if self.limits.lag_policy == LagPolicy::Disconnect {
                                break 'rooms Err(ClientError::SlowConsumer);
                            }
                            // The next item read is beyond the member's last seq: it gets its gap.
                        }
                        ReadOutcome::Read { .. } => {
                            for item in batch.drain(..) {
                                budget = budget.saturating_sub(deliver(room, member, item, self.wire, &mut shard.session_out.stats, out));
                            }
                        }
                    }
                }
            }
            Ok(())
        };
        shard.return_batch(batch);
        result
    }

    /// True when some cursor fell off its ring (checked on timer ticks for stalled sockets).
    pub fn lagging(&self, shard: &ShardRooms) -> bool {
        self.rooms.iter().any(|(room, m)| m.joined && shard.lagging(room, &m.cursor))
    }

    /// An operator took this connection out of `room`: it leaves it (no `left`) and the client
    /// is told `removed` with the reason. False if the connection was not in it.
    pub fn remove(&mut self, room: &str, reason: &str, shard: &mut ShardRooms, out: &mut Vec<ToClient>) -> bool {
        if !self.leave(room, shard) {
            return false;
        }
        out.push(ToClient::Removed { room: room.to_owned(), reason: reason.to_owned() });
        true
    }

    /// The rooms this connection is in (or joining), for an operator's `GET /v1/users/{uid}`.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.iter().map(|(room, _)| &**room)
    }

    /// Leaves every room and forgets outstanding requests (the connection ended).
    pub fn finish(&mut self, shard: &mut ShardRooms) {
        while let Some((room, _)) = self.rooms.last() {
            let room = room.clone();
            self.leave(&room, shard);
        }
        for request in self.occasional.take().into_iter().flat_map(|o| o.pending.into_keys()) {
            shard.remove_request(request);
        }
    }
}

/// A hub `Presence` frame for one client: `{"op":"presence",...}` (with `"events":false` while
/// off) in a WebSocket frame, or the frame itself for QUIC.
fn encode_count(room: &str, frame: &Frame, wire: Wire) -> Bytes {
    match (wire, frame.body()) {
        (Wire::Ws, ArchivedBody::Presence { members, events }) => {
            let mut json = Vec::with_capacity(64 + room.len());
            crate::protocol::encode_presence(&mut json, room, members.to_native(), (!*events).then_some(false));
            crate::ws_frame::text(&json)
        }
        _ => frame.clone().into_bytes(),
    }
}

/// Answers a refusal into `out`, or turns it into a close.
pub fn refuse(error: ClientError, room: Option<&str>, id: Option<ReqId>, out: &mut Vec<ToClient>) -> Result<(), ClientError> {
    match error.refusal() {
        Refusal::Close(..) => Err(error),
        Refusal::Error(code, reason) => {
            out.push(ToClient::Error {
                code,
                reason: reason.to_owned(),
                room: room.filter(|r| is_valid_room(r)).map(str::to_owned),
                id,
                retry_after_ms: error.retry_after_ms(),
            });
            Ok(())
        }
    }
}

/// Whether a replayed `seq` of `room` was already delivered live (a resumed automatic room).
impl Occasional {
    /// `now_micros` is when the bucket was last full: any time up to now will do for a full
    /// bucket (a resume, which has no clock, passes 0).
    fn new(publish: Rate, now_micros: u64) -> Box<Self> {
        Box::new(Occasional { pending: HashMap::new(), bucket: TokenBucket::new(publish, now_micros), skips: Vec::new() })
    }
}

/// The user id in a user's key `user:{sub}` (the key is always made by [`user_key`]).
fn sub_of(user: &str) -> &str {
    &user[PERSONAL_PREFIX.len()..]
}

/// Drops `room`'s skips (its resume is over, or it was left).
fn forget_skips(occasional: &mut Option<Box<Occasional>>, room: &str) {
    if let Some(occasional) = occasional {
        if !occasional.skips.is_empty() {
            occasional.skips.retain(|skip| skip.room != room);
        }
    }
}

fn skipped(skips: &[Skip], room: &str, epoch: Option<u64>, seq: u64) -> bool {
    skips.iter().any(|s| s.room == room && epoch.is_none_or(|e| e == s.epoch) && (s.from..=s.to).contains(&seq))
}

/// Tells the member of a lost range (the part after what it already has), and moves it past.
fn tell_gap(room: &str, member: &mut Member, lost: LostRange, reason: GapReason, stats: &mut SessionStats, out: &mut Vec<ToClient>) {
    if lost.last_lost <= member.last {
        return;
    }
    let first_lost = lost.first_lost.max(member.last + 1);
    stats.gaps += 1;
    stats.gaps_by[reason.index()] += 1;
    out.push(ToClient::Gap { room: room.to_owned(), lost: LostRange { first_lost, ..lost } });
    member.last = lost.last_lost;
}

/// Before delivering `seq`: a gap for anything between the member's last seq and it.
fn jump(room: &str, member: &mut Member, seq: u64, reason: GapReason, stats: &mut SessionStats, out: &mut Vec<ToClient>) {
    if seq > member.last + 1 {
        let lost = LostRange { first_lost: member.last + 1, last_lost: seq - 1, resume_from: seq };
        tell_gap(room, member, lost, reason, stats, out);
    }
}

/// Before an item of `epoch`: a reset if the member's position is of another epoch (it missed
/// the room-wide reset, e.g. because it fell off the ring).
fn follow_epoch(room: &str, member: &mut Member, epoch: u64, stats: &mut SessionStats, out: &mut Vec<ToClient>) {
    if epoch != 0 && member.epoch() != Some(epoch) {
        member.set_epoch(Some(epoch));
        member.last = 0;
        member.live_from = 1;
        stats.resets += 1;
        out.push(ToClient::Reset { room: room.to_owned(), epoch, last_seq: 0 });
    }
}

/// Delivers one ring item to a joined member; returns the bytes queued.
fn deliver(room: &str, member: &mut Member, item: RingItem, wire: Wire, stats: &mut SessionStats, out: &mut Vec<ToClient>) -> usize {
    match item {
        RingItem::Message(delivery) => {
            follow_epoch(room, member, delivery.epoch, stats, out);
            if delivery.seq <= member.last {
                return 0;
            }
            jump(room, member, delivery.seq, GapReason::Lagging, stats, out);
            member.last = delivery.seq;
            stats.delivered += 1;
            let bytes = match wire {
                Wire::Ws => delivery.ws,
                Wire::Quic => delivery.frame.into_bytes(),
            };
            let len = bytes.len();
            out.push(ToClient::Encoded(bytes));
            len
        }
        RingItem::Gap { epoch, lost, reason } => {
            follow_epoch(room, member, epoch, stats, out);
            tell_gap(room, member, lost, reason, stats, out);
            0
        }
        RingItem::Notice { ws, frame, events_only } => {
            if events_only && !member.presence {
                return 0;
            }
            let bytes = match wire {
                Wire::Ws => ws,
                Wire::Quic => frame.into_bytes(),
            };
            let len = bytes.len();
            out.push(ToClient::Encoded(bytes));
            len
        }
        RingItem::Reset { epoch, last_seq } => {
            if member.epoch() != Some(epoch) {
                member.set_epoch(Some(epoch));
                member.last = 0;
                member.live_from = 1;
                stats.resets += 1;
                out.push(ToClient::Reset { room: room.to_owned(), epoch, last_seq });
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_stays_56_bytes() {
        // Every connection holds three (its room, `user:{sub}`, `all`), each with a 16-byte
        // name: 3 × 72 = 216 bytes fit a 224-byte block (3 × 80 took 256).
        assert!(std::mem::size_of::<(Arc<str>, Member)>() <= 72, "{}", std::mem::size_of::<(Arc<str>, Member)>());
    }
    use crate::fanout::RingLimits;
    use crate::shard_rooms::RoomMessage;

    const E1: u64 = 0x1111;
    const E2: u64 = 0x2222;

    fn limits(lag_policy: LagPolicy) -> SessionLimits {
        SessionLimits {
            max_rooms: 4,
            max_message_bytes: 1024,
            lag_policy,
            publish_rate: 0,
            publish_burst: 10,
            join_rate: 0,
            join_burst: 10,
            replay_bytes: 1 << 20,
        }
    }

    fn claims() -> Claims {
        Claims { sub: "alice".into(), exp: u64::MAX, rooms: vec!["*".into()], iat: None }
    }

    /// A shard with one session on it, driven as the Link drives it.
    struct Rig {
        shard: ShardRooms,
        session: LinkSession,
        out: Vec<ToClient>,
    }

    impl Rig {
        fn new(ring_items: usize, policy: LagPolicy) -> Rig {
            let mut shard = ShardRooms::new(2, RingLimits { max_bytes: 1 << 20, max_items: ring_items });
            let id = shard.new_id();
            Rig { shard, session: LinkSession::new(id, Wire::Ws, claims(), Arc::new(limits(policy)), 0), out: Vec::new() }
        }

        fn request(&mut self, request: Request) -> Result<(), ClientError> {
            self.session.handle_request(request, 0, &mut self.shard, &mut self.out)
        }

        fn join(&mut self, room: &str, since: Option<u64>, epoch: Option<u64>) -> u64 {
            self.request(Request::Join { room: room.into(), since, epoch, presence: false }).expect("join accepted");
            match self.shard.poll_coordinator() {
                Some(ToCoordinator::Join { request, .. }) => request,
                other => panic!("expected a join for the coordinator, got {other:?}"),
            }
        }

        /// The hub's answer, routed as the shard routes it (with the ring tail at that moment).
        fn hub(&mut self, frame: Frame) {
            let tail = self.shard.tail(frame.room());
            self.session.handle_hub_frame(frame, tail, &mut self.shard, &mut self.out);
        }

        fn ring(&mut self, room: &str, item: RingItem) {
            let mut woken = Vec::new();
            self.shard.push(room, item, &mut woken);
        }

        fn live(&mut self, room: &str, seq: u64, epoch: u64) {
            let frame = Frame::message(room, seq, 1, "u", 0, b"m");
            let ws = Bytes::from(format!("{room}:{seq}"));
            self.ring(room, RingItem::Message(RoomMessage { seq, epoch, ws, frame }));
        }

        fn fill(&mut self) -> Result<(), ClientError> {
            self.session.fill(usize::MAX, &mut self.shard, &mut self.out)
        }

        /// What the client got so far, as short strings.
        fn seen(&mut self) -> Vec<String> {
            self.out
                .drain(..)
                .map(|item| match item {
                    ToClient::Encoded(bytes) => format!("live {}", String::from_utf8_lossy(&bytes)),
                    ToClient::Replay(frame) => format!("replay {}", frame.seq()),
                    ToClient::Joined { epoch, last_seq, .. } => format!("joined {epoch:x} {last_seq}"),
                    ToClient::Reset { epoch, last_seq, .. } => format!("reset {epoch:x} {last_seq}"),
                    ToClient::Gap { lost, .. } => format!("gap {}..={} next {}", lost.first_lost, lost.last_lost, lost.resume_from),
                    ToClient::Left { room } => format!("left {room}"),
                    ToClient::Published { seq, epoch, .. } => format!("published {seq} {epoch:x}"),
                    ToClient::Error { code, retry_after_ms, .. } => format!("error {code} {retry_after_ms:?}"),
                    ToClient::Pong { .. } => "pong".into(),
                    ToClient::Refreshed { exp } => format!("refreshed {exp}"),
                    ToClient::Removed { room, reason } => format!("removed {room} {reason}"),
                })
                .collect()
        }
    }

    fn replay(room: &str, request: u64, seq: u64) -> Frame {
        FrameBuilder::new(room).seq(seq).sender("u").build(&Body::Replay { request, data: b"m".to_vec() })
    }

    fn joined(room: &str, request: u64, epoch: u64, last_seq: u64) -> Frame {
        FrameBuilder::new(room).seq(last_seq).build(&Body::Joined { request, epoch })
    }

    fn gap(room: &str, request: u64, first_lost: u64, last_lost: u64) -> Frame {
        FrameBuilder::new(room).build(&Body::Gap { request, first_lost, last_lost, resume_from: last_lost + 1 })
    }

    fn reset(room: &str, request: u64, epoch: u64, last_seq: u64) -> Frame {
        FrameBuilder::new(room).seq(last_seq).build(&Body::Reset { request, epoch })
    }

    #[test]
    fn replay_then_joined_then_only_newer_live_messages() {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let request = rig.join("r", Some(3), Some(E1));
        // Live messages reach the ring before the hub's answer; the replay covers them.
        rig.live("r", 4, E1);
        rig.live("r", 5, E1);
        rig.fill().expect("fill");
        assert!(rig.seen().is_empty(), "nothing from the ring before joined");
        rig.hub(replay("r", request, 4));
        rig.hub(replay("r", request, 5));
        rig.hub(joined("r", request, E1, 5));
        rig.live("r", 6, E1);
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["replay 4", "replay 5", "joined 1111 5", "live r:6"]);
    }

    #[test]
    fn joined_moves_the_cursor_past_what_the_replay_covered() {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let request = rig.join("r", None, None);
        rig.live("r", 7, E1);
        rig.hub(joined("r", request, E1, 7));
        rig.live("r", 8, E1);
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["joined 1111 7", "live r:8"]);
    }

    #[test]
    fn answers_to_a_join_that_was_left_are_ignored_and_the_rejoin_is_exact() {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let first = rig.join("r", Some(0), Some(E1));
        rig.request(Request::Leave { room: "r".into() }).expect("leave");
        assert_eq!(rig.shard.poll_coordinator(), Some(ToCoordinator::Leave { room: "r".into() }));
        let second = rig.join("r", Some(2), Some(E1));
        assert_ne!(first, second);
        // The first join's answers arrive late: they belong to nobody now.
        rig.hub(replay("r", first, 1));
        rig.hub(replay("r", first, 2));
        rig.hub(replay("r", first, 3));
        rig.hub(joined("r", first, E1, 3));
        rig.live("r", 4, E1);
        rig.hub(replay("r", second, 3));
        rig.hub(replay("r", second, 4));
        rig.hub(joined("r", second, E1, 4));
        rig.live("r", 5, E1);
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["left r", "replay 3", "replay 4", "joined 1111 4", "live r:5"]);
        assert_eq!(rig.shard.pending_requests(), 0, "answered and abandoned requests are forgotten");
    }

    #[test]
    fn a_gap_before_joined_and_a_stale_epoch_reset() {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let request = rig.join("r", Some(2), Some(E1));
        rig.hub(reset("r", request, E2, 6));
        rig.hub(gap("r", request, 1, 4));
        rig.hub(replay("r", request, 5));
        rig.hub(replay("r", request, 6));
        rig.hub(joined("r", request, E2, 6));
        rig.live("r", 7, E2);
        rig.fill().expect("fill");
        assert_eq!(
            rig.seen(),
            vec!["reset 2222 6", "gap 1..=4 next 5", "replay 5", "replay 6", "joined 2222 6", "live r:7"]
        );
    }

    #[test]
    fn room_wide_gap_and_reset_reach_every_joined_member_in_order() {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let request = rig.join("r", None, None);
        rig.hub(joined("r", request, E1, 10));
        rig.live("r", 11, E1);
        let lost = LostRange { first_lost: 12, last_lost: 20, resume_from: 21 };
        rig.ring("r", RingItem::Gap { epoch: E1, lost, reason: GapReason::HubQueue });
        rig.live("r", 21, E1);
        rig.ring("r", RingItem::Reset { epoch: E2, last_seq: 0 });
        rig.live("r", 1, E2);
        rig.fill().expect("fill");
        assert_eq!(
            rig.seen(),
            vec!["joined 1111 10", "live r:11", "gap 12..=20 next 21", "live r:21", "reset 2222 0", "live r:1"]
        );
        let stats = rig.shard.take_session_stats();
        assert_eq!((stats.gaps, stats.gaps_by[GapReason::HubQueue.index()]), (1, 1), "counted with the ring item's reason");
        // A room-wide gap the member already has (it joined later) is not repeated.
        rig.ring("r", RingItem::Gap { epoch: E2, lost: LostRange { first_lost: 1, last_lost: 1, resume_from: 2 }, reason: GapReason::Outage });
        rig.fill().expect("fill");
        assert!(rig.seen().is_empty());
    }

    #[test]
    fn a_room_wide_reset_mid_stream_restarts_members_at_the_new_epoch() {
        // The store lost the room's history while the Link was attached (hub `Reset {request:
        // 0}`): members mid-stream are reset, then read the new epoch from seq 1 — or from a gap
        // when the reset says the new epoch already has messages the Link will not get.
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let request = rig.join("r", None, None);
        rig.hub(joined("r", request, E1, 10));
        rig.live("r", 11, E1);
        rig.ring("r", RingItem::Reset { epoch: E2, last_seq: 0 });
        rig.live("r", 1, E2);
        rig.live("r", 2, E2);
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["joined 1111 10", "live r:11", "reset 2222 0", "live r:1", "live r:2"]);
        rig.ring("r", RingItem::Reset { epoch: E1, last_seq: 3 });
        rig.live("r", 4, E1);
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["reset 1111 3", "gap 1..=3 next 4", "live r:4"]);
        // A second reset to the epoch the member already follows is not repeated.
        rig.ring("r", RingItem::Reset { epoch: E1, last_seq: 4 });
        rig.live("r", 5, E1);
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["live r:5"]);
    }

    #[test]
    fn a_member_that_fell_off_the_ring_gets_its_gap_then_the_live_stream() {
        let mut rig = Rig::new(4, LagPolicy::Gap);
        let request = rig.join("r", None, None);
        rig.hub(joined("r", request, E1, 0));
        rig.fill().expect("fill");
        for seq in 1..=10 {
            rig.live("r", seq, E1);
        }
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["joined 1111 0", "gap 1..=6 next 7", "live r:7", "live r:8", "live r:9", "live r:10"]);
        let stats = rig.shard.take_session_stats();
        assert_eq!((stats.lagging, stats.gaps_by[GapReason::Lagging.index()]), (1, 1));
        // Over a reset it missed, the member is told of the reset first.
        rig.ring("r", RingItem::Reset { epoch: E2, last_seq: 0 });
        for seq in 1..=6 {
            rig.live("r", seq, E2);
        }
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["reset 2222 0", "gap 1..=2 next 3", "live r:3", "live r:4", "live r:5", "live r:6"]);
    }

    #[test]
    fn disconnect_policy_ends_a_member_that_fell_off() {
        let mut rig = Rig::new(2, LagPolicy::Disconnect);
        let request = rig.join("r", None, None);
        rig.hub(joined("r", request, E1, 0));
        for seq in 1..=5 {
            rig.live("r", seq, E1);
        }
        assert!(rig.session.lagging(&rig.shard));
        assert_eq!(rig.fill(), Err(ClientError::SlowConsumer));
    }

    #[test]
    fn a_refused_join_leaves_the_room_and_carries_the_retry_hint() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        let request = rig.join("r", Some(1), Some(E1));
        let error = FrameBuilder::new("r").build(&Body::Error {
            request,
            code: 503,
            reason: "hub connection lost".into(),
            retry_after_ms: 1000,
        });
        rig.hub(error);
        assert_eq!(rig.seen(), vec!["error 503 Some(1000)"]);
        assert_eq!(rig.session.room_count(), 0);
        assert!(!rig.shard.has_room("r"));
        assert_eq!(rig.shard.poll_coordinator(), Some(ToCoordinator::Leave { room: "r".into() }));
        // The room can be joined again.
        rig.join("r", Some(1), Some(E1));
    }

    #[test]
    fn publishes_carry_their_key_and_acks_their_epoch() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        let id = ReqId::Json(Some(serde_json::json!("k-1")));
        let publish = Request::Publish { room: "r".into(), data: b"{}".to_vec(), flags: FLAG_JSON, id, key: "\"k-1\"".into() };
        rig.request(publish).expect("publish");
        let Some(ToCoordinator::Publish { frame }) = rig.shard.poll_coordinator() else { panic!("expected a publish") };
        let ArchivedBody::Publish { request, key, .. } = frame.body() else { panic!("not a publish frame") };
        assert_eq!(key.as_str(), "\"k-1\"");
        let request = request.to_native();
        rig.hub(FrameBuilder::new("r").seq(9).build(&Body::PublishAck { request, epoch: E1 }));
        assert_eq!(rig.seen(), vec!["published 9 1111"]);
        assert_eq!(rig.shard.pending_requests(), 0);
    }

    /// A rig whose session has a replay cap of `replay_bytes` and a join bucket.
    fn rig_with(replay_bytes: usize, join_rate: u32, join_burst: u32) -> Rig {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let limits = SessionLimits { replay_bytes, join_rate, join_burst, ..limits(LagPolicy::Gap) };
        let id = rig.shard.new_id();
        rig.session = LinkSession::new(id, Wire::Ws, claims(), Arc::new(limits), 0);
        rig
    }

    #[test]
    fn a_replay_beyond_the_cap_is_paged_as_the_socket_drains() {
        let frame_len = replay("r", 1, 1).len();
        let mut rig = rig_with(frame_len * 2, 0, 10);
        let first = rig.join("r", Some(0), None);
        for seq in 1..=5 {
            rig.hub(replay("r", first, seq));
        }
        rig.hub(joined("r", first, E1, 5));
        assert_eq!(rig.seen(), vec!["replay 1", "replay 2"], "two frames fit the cap; the rest waits");
        assert_eq!(rig.shard.poll_coordinator(), None, "nothing asked before the socket drained");
        rig.session.drained(&mut rig.shard);
        let Some(ToCoordinator::Join { request: second, since, epoch, .. }) = rig.shard.poll_coordinator() else {
            panic!("expected the continuation")
        };
        assert_eq!((since, epoch), (Some(2), Some(E1)));
        assert_eq!(rig.shard.poll_coordinator(), Some(ToCoordinator::Leave { room: "r".into() }), "interest unchanged");
        rig.live("r", 6, E1);
        for seq in 3..=6 {
            rig.hub(replay("r", second, seq));
        }
        rig.hub(joined("r", second, E1, 6));
        rig.session.drained(&mut rig.shard);
        let third = match rig.shard.poll_coordinator() {
            Some(ToCoordinator::Join { request, since: Some(4), .. }) => request,
            other => panic!("expected a continuation from 4, got {other:?}"),
        };
        let _ = rig.shard.poll_coordinator();
        rig.hub(replay("r", third, 5));
        rig.hub(replay("r", third, 6));
        rig.hub(joined("r", third, E1, 6));
        rig.live("r", 7, E1);
        rig.fill().expect("fill");
        assert_eq!(
            rig.seen(),
            vec!["replay 3", "replay 4", "replay 5", "replay 6", "joined 1111 6", "live r:7"],
            "every message once, in order, no gap"
        );
        assert_eq!(rig.shard.take_session_stats().replay_pages, 2);
        assert_eq!(rig.shard.pending_requests(), 0);
    }

    #[test]
    fn a_joined_the_hub_marked_partial_is_continued_not_told_as_a_gap() {
        let mut rig = rig_with(1 << 20, 0, 10);
        let first = rig.join("r", Some(0), None);
        rig.hub(replay("r", first, 1));
        rig.hub(replay("r", first, 2));
        // The hub stopped at its per-join cap: the room is at 4.
        let partial = FrameBuilder::new("r").seq(4).flags(crate::frame::FLAG_PARTIAL).build(&Body::Joined { request: first, epoch: E1 });
        rig.hub(partial);
        assert_eq!(rig.seen(), vec!["replay 1", "replay 2"], "no gap, no joined yet");
        rig.session.drained(&mut rig.shard);
        let Some(ToCoordinator::Join { request: second, since: Some(2), epoch: Some(E1), .. }) = rig.shard.poll_coordinator() else {
            panic!("the join continues from 2")
        };
        let _ = rig.shard.poll_coordinator();
        rig.hub(replay("r", second, 3));
        rig.hub(replay("r", second, 4));
        rig.hub(joined("r", second, E1, 4));
        assert_eq!(rig.seen(), vec!["replay 3", "replay 4", "joined 1111 4"]);
        assert_eq!(rig.shard.take_session_stats().gaps, 0);
    }

    #[test]
    fn replays_dropped_on_the_way_are_asked_again_not_told_as_a_gap() {
        let mut rig = rig_with(1 << 20, 0, 10);
        let first = rig.join("r", Some(0), None);
        rig.hub(replay("r", first, 1));
        // 2 and 3 were dropped by a full mailbox, which says so.
        rig.session.replay_dropped(first);
        rig.hub(replay("r", first, 4));
        rig.hub(joined("r", first, E1, 4));
        assert_eq!(rig.seen(), vec!["replay 1"]);
        rig.session.drained(&mut rig.shard);
        let Some(ToCoordinator::Join { request: second, since: Some(1), .. }) = rig.shard.poll_coordinator() else {
            panic!("the join continues once the socket drained")
        };
        let _ = rig.shard.poll_coordinator();
        for seq in 2..=4 {
            rig.hub(replay("r", second, seq));
        }
        rig.hub(joined("r", second, E1, 4));
        assert_eq!(rig.seen(), vec!["replay 2", "replay 3", "replay 4", "joined 1111 4"]);
        // A hole nobody dropped is told as a gap, as before.
        let third = rig.join("s", Some(0), None);
        rig.hub(replay("s", third, 3));
        rig.hub(joined("s", third, E1, 3));
        assert_eq!(rig.seen(), vec!["gap 1..=2 next 3", "replay 3", "joined 1111 3"]);
    }

    #[test]
    fn joins_beyond_the_rate_are_refused_with_a_retry_hint_never_closed() {
        let mut rig = rig_with(1 << 20, 1, 2);
        rig.join("a", None, None);
        rig.join("b", None, None);
        for _ in 0..10 {
            rig.request(Request::Join { room: "c".into(), since: None, epoch: None, presence: false }).expect("refused, not closed");
        }
        let seen = rig.seen();
        assert_eq!(seen.len(), 10);
        assert!(seen.iter().all(|s| s.starts_with("error 429 Some(")), "{seen:?}");
        assert_eq!(rig.session.room_count(), 2);
        // A second later a token is back.
        rig.session.handle_request(Request::Join { room: "c".into(), since: None, epoch: None, presence: false }, 1_000_000, &mut rig.shard, &mut rig.out).expect("join");
        assert_eq!(rig.session.room_count(), 3);
    }

    #[test]
    fn a_refresh_keeps_the_user_and_leaves_rooms_no_longer_allowed() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        rig.join("a", None, None);
        rig.join("b", None, None);
        let mallory = Claims { sub: "mallory".into(), exp: 10, rooms: vec!["*".into()], iat: None };
        rig.session.refresh(mallory, &mut rig.shard, &mut rig.out);
        assert_eq!(rig.seen(), vec!["error 403 None"]);
        assert_eq!(rig.session.sub(), "alice");
        let narrower = Claims { sub: "alice".into(), exp: 99, rooms: vec!["a".into()], iat: None };
        rig.session.refresh(narrower, &mut rig.shard, &mut rig.out);
        assert_eq!(rig.seen(), vec!["error 403 None", "refreshed 99"]);
        assert_eq!(rig.session.room_count(), 1);
        assert_eq!(rig.session.exp(), 99);
        assert_eq!(rig.shard.poll_coordinator(), Some(ToCoordinator::Leave { room: "b".into() }));
        assert!(!rig.shard.has_room("b"));
    }

    #[test]
    fn the_session_keeps_the_token_s_claims_as_they_came() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        assert_eq!((rig.session.sub(), rig.session.exp(), rig.session.iat()), ("alice", u64::MAX, None));
        assert!(rig.session.allows("anything"), "\"*\" allows any room");
        let issued = Claims { sub: "alice".into(), exp: 99, rooms: vec!["a".into(), "b".into()], iat: Some(0) };
        rig.session.refresh(issued, &mut rig.shard, &mut rig.out);
        assert_eq!((rig.session.exp(), rig.session.iat()), (99, Some(0)), "an iat of 0 is an iat, not none (revocation tells them apart)");
        assert!(rig.session.allows("a") && rig.session.allows("b") && !rig.session.allows("c"));
        assert!(!rig.session.any_room && rig.session.allowed.len() == 2);
        let any = Claims { sub: "alice".into(), exp: 99, rooms: vec!["a".into(), "*".into()], iat: None };
        rig.session.refresh(any, &mut rig.shard, &mut rig.out);
        assert!(rig.session.allows("c") && rig.session.allowed.is_empty(), "\"*\" anywhere allows any room, and keeps no list");
        let empty = Claims { sub: String::new(), exp: 1, rooms: Vec::new(), iat: None };
        let session = LinkSession::new(1, Wire::Ws, empty, rig.session.limits.clone(), 0);
        assert_eq!(session.sub(), "", "an empty user id reads back empty (it has no personal room)");
        assert!(!session.allows("a"));
    }

    #[test]
    fn a_reader_holds_no_publisher_state_and_a_publisher_gets_its_whole_burst() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        let mut limits = limits(LagPolicy::Gap);
        (limits.publish_rate, limits.publish_burst) = (1, 2);
        rig.session = LinkSession::new(rig.session.id(), Wire::Ws, claims(), Arc::new(limits), 0);
        rig.join("r", None, None);
        assert!(rig.session.occasional.is_none(), "a member that only reads carries no publish state");
        let publish = || Request::Publish { room: "r".into(), data: b"{}".to_vec(), flags: FLAG_JSON, id: ReqId::Json(None), key: String::new() };
        // Its first publish, an hour in: the bucket made now is as full as one made at connect.
        let hour = 3_600_000_000;
        for _ in 0..3 {
            rig.session.handle_request(publish(), hour, &mut rig.shard, &mut rig.out).expect("allowed or refused, not closed");
        }
        assert_eq!(rig.seen(), vec!["error 429 Some(1000)"], "the burst of 2 went, the third waits a second");
        assert!(rig.session.occasional.as_ref().is_some_and(|o| o.pending.len() == 2));
        assert_eq!(rig.session.handle_request(publish(), hour, &mut rig.shard, &mut rig.out), Ok(()));
        assert_eq!(rig.session.handle_request(publish(), hour, &mut rig.shard, &mut rig.out), Err(ClientError::Flood), "refusals past a burst close");
    }

    #[test]
    fn an_idle_session_stays_small() {
        // Inside every connection's record (issue 17: the record's 256-byte class, `ws.rs`).
        assert!(std::mem::size_of::<LinkSession>() <= 120, "{}", std::mem::size_of::<LinkSession>());
    }

    #[test]
    fn a_publish_above_the_frame_limit_is_refused_whatever_the_config() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        Arc::make_mut(&mut rig.session.limits).max_message_bytes = usize::MAX;
        let big = Request::Publish {
            room: "r".into(),
            data: vec![b'x'; MAX_PUBLISH_BYTES + 1],
            flags: 0,
            id: ReqId::Json(None),
            key: String::new(),
        };
        assert_eq!(rig.request(big), Err(ClientError::TooBig));
        assert_eq!(rig.shard.poll_coordinator(), None, "nothing reaches the hub link");
    }

    fn room_of(item: &ToCoordinator) -> &str {
        match item {
            ToCoordinator::Join { room, .. } | ToCoordinator::Leave { room } => room,
            ToCoordinator::Publish { frame } => frame.room(),
        }
    }

    /// A rig whose session joined its automatic rooms; returns their join request ids.
    fn rig_with_system_rooms() -> (Rig, u64, u64) {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        rig.session.join_system_rooms(true, true, &mut rig.shard);
        let mut requests = Vec::new();
        while let Some(item) = rig.shard.poll_coordinator() {
            let ToCoordinator::Join { request, since: None, epoch: None, .. } = &item else { panic!("live joins only: {item:?}") };
            requests.push((room_of(&item).to_owned(), *request));
        }
        let rooms: Vec<&str> = requests.iter().map(|(room, _)| room.as_str()).collect();
        assert_eq!(rooms, vec!["user:alice", "all"]);
        (rig, requests[0].1, requests[1].1)
    }

    #[test]
    fn the_user_key_is_the_shard_s_name_of_the_personal_room() {
        let (rig, _, _) = rig_with_system_rooms();
        let key = rig.session.user_key();
        let sub = rig.session.sub().to_owned();
        assert_eq!(&*key, format!("user:{sub}"));
        assert!(rig.session.rooms.iter().any(|(name, _)| Arc::ptr_eq(name, &key)), "the member's (the shard's) name, not a copy");
        assert!(Arc::ptr_eq(&key, &rig.session.user_key()));
        // A user id that makes no room name has no personal room: a key of its own.
        let claims = Claims { sub: "has space".into(), exp: u64::MAX, rooms: vec!["*".into()], iat: None };
        let session = LinkSession::new(1, Wire::Ws, claims, rig.session.limits.clone(), 0);
        assert_eq!(&*session.user_key(), "user:has space");
    }

    #[test]
    fn system_rooms_are_joined_live_outside_the_room_limit() {
        let (mut rig, personal, all) = rig_with_system_rooms();
        rig.hub(joined("user:alice", personal, E1, 4));
        rig.hub(joined("all", all, E2, 9));
        assert_eq!(rig.seen(), vec!["joined 1111 4", "joined 2222 9"]);
        for room in ["a", "b", "c", "d"] {
            rig.join(room, None, None);
        }
        assert_eq!(rig.session.room_count(), 6, "max_rooms (4) counts the client's own rooms only");
        rig.request(Request::Join { room: "e".into(), since: None, epoch: None, presence: false }).expect("refused, not closed");
        assert_eq!(rig.seen(), vec!["error 429 None"]);
        // Another user's personal room: never, whatever the token's `rooms` (here `*`).
        rig.request(Request::Join { room: "user:bob".into(), since: None, epoch: None, presence: false }).expect("refused");
        assert_eq!(rig.seen(), vec!["error 403 None"]);
        // A refresh keeps them (its `rooms` need not list them).
        let narrower = Claims { sub: "alice".into(), exp: 99, rooms: vec!["a".into()], iat: Some(5) };
        rig.session.refresh(narrower, &mut rig.shard, &mut rig.out);
        let rooms: Vec<&str> = rig.session.rooms().collect();
        assert!(rooms.contains(&"user:alice") && rooms.contains(&"all") && rooms.contains(&"a"), "{rooms:?}");
    }

    #[test]
    fn a_link_without_personal_rooms_joins_all_only_and_the_client_may_join_its_own() {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        rig.session.join_system_rooms(false, true, &mut rig.shard);
        let item = rig.shard.poll_coordinator();
        let Some(ToCoordinator::Join { request: all, since: None, .. }) = &item else { panic!("a live join of `all`: {item:?}") };
        assert_eq!(item.as_ref().map(room_of), Some("all"));
        assert_eq!(rig.shard.poll_coordinator(), None, "no personal room");
        rig.hub(joined("all", *all, E2, 9));
        assert_eq!(rig.seen(), vec!["joined 2222 9"]);
        assert_eq!(&*rig.session.user_key(), "user:alice", "the user is keyed as before");
        // Its own personal room is the client's to join, as one of its rooms (within max_rooms).
        for room in ["user:alice", "a", "b", "c"] {
            rig.join(room, None, None);
        }
        rig.request(Request::Join { room: "d".into(), since: None, epoch: None, presence: false }).expect("refused, not closed");
        assert_eq!(rig.seen(), vec!["error 429 None"], "max_rooms (4) counted the personal room");
        rig.request(Request::Join { room: "user:bob".into(), since: None, epoch: None, presence: false }).expect("refused");
        assert_eq!(rig.seen(), vec!["error 403 None"], "another user's, never");
    }

    #[test]
    fn clients_cannot_publish_into_system_rooms() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        for room in ["all", "user:alice", "user:bob"] {
            let publish = Request::Publish { room: room.into(), data: b"{}".to_vec(), flags: FLAG_JSON, id: ReqId::Json(None), key: String::new() };
            rig.request(publish).expect("refused, not closed");
        }
        assert_eq!(rig.seen(), vec!["error 403 None"; 3]);
        assert_eq!(rig.shard.poll_coordinator(), None, "nothing reaches the hub");
        assert_eq!(ClientError::ReadOnlyRoom.refusal(), Refusal::Error(403, "room is read-only for clients"));
    }

    #[test]
    fn a_resume_of_a_system_room_replays_what_is_missing_and_nothing_twice() {
        let (mut rig, personal, _) = rig_with_system_rooms();
        rig.hub(joined("user:alice", personal, E1, 10));
        rig.live("user:alice", 11, E1);
        rig.live("user:alice", 12, E1);
        rig.fill().expect("fill");
        assert_eq!(rig.seen(), vec!["joined 1111 10", "live user:alice:11", "live user:alice:12"]);
        // The client (reconnected) had up to 8: it resumes from there.
        rig.request(Request::Join { room: "user:alice".into(), since: Some(8), epoch: Some(E1), presence: false }).expect("resume");
        let Some(ToCoordinator::Join { request, since: Some(8), epoch: Some(E1), .. }) = rig.shard.poll_coordinator() else {
            panic!("the room is asked again from 8")
        };
        assert_eq!(rig.shard.poll_coordinator(), Some(ToCoordinator::Leave { room: "user:alice".into() }), "interest unchanged");
        rig.live("user:alice", 13, E1);
        for seq in 9..=13 {
            rig.hub(replay("user:alice", request, seq));
        }
        rig.hub(joined("user:alice", request, E1, 13));
        rig.live("user:alice", 14, E1);
        rig.fill().expect("fill");
        assert_eq!(
            rig.seen(),
            vec!["replay 9", "replay 10", "replay 13", "joined 1111 13", "live user:alice:14"],
            "11 and 12 came live already; 13 once"
        );
        // A join without a position while in the room: `joined` again, nothing else.
        rig.request(Request::Join { room: "user:alice".into(), since: None, epoch: None, presence: false }).expect("harmless");
        assert_eq!(rig.seen(), vec!["joined 1111 14"]);
        assert_eq!(rig.shard.poll_coordinator(), None);
        // A client-joined room is still `already joined`.
        rig.join("r", None, None);
        rig.request(Request::Join { room: "r".into(), since: Some(1), epoch: None, presence: false }).expect("refused");
        assert_eq!(rig.seen(), vec!["error 409 None"]);
    }

    #[test]
    fn an_operator_removal_leaves_the_room_with_removed_not_left() {
        let mut rig = Rig::new(8, LagPolicy::Gap);
        let request = rig.join("r", None, None);
        rig.hub(joined("r", request, E1, 0));
        assert!(rig.session.remove("r", "spam", &mut rig.shard, &mut rig.out));
        assert_eq!(rig.seen(), vec!["joined 1111 0", "removed r spam"]);
        assert_eq!(rig.shard.poll_coordinator(), Some(ToCoordinator::Leave { room: "r".into() }));
        assert!(!rig.session.remove("r", "spam", &mut rig.shard, &mut rig.out), "idempotent");
        assert_eq!(rig.session.room_count(), 0);
    }

    #[test]
    fn client_ops_become_requests_with_their_idempotency_key() {
        let op = ClientOp::parse(r#"{"op":"publish","room":"r","data":1,"id":7}"#).expect("valid");
        match Request::from(op) {
            Request::Publish { key, id, .. } => {
                assert_eq!(key, "7");
                assert_eq!(id, ReqId::Json(Some(serde_json::json!(7))));
            }
            other => panic!("unexpected {other:?}"),
        }
        let op = ClientOp::parse(r#"{"op":"join","room":"r","since":3,"epoch":"00000000000000ff"}"#).expect("valid");
        assert_eq!(Request::from(op), Request::Join { room: "r".into(), since: Some(3), epoch: Some(255), presence: false });
    }

    #[test]
    fn the_room_s_count_comes_right_after_joined_and_goes_with_its_join() {
        let mut rig = Rig::new(64, LagPolicy::Gap);
        let count = |room: &str| FrameBuilder::new(room).build(&Body::Presence { members: 2, events: true });
        rig.request(Request::Join { room: "r".into(), since: None, epoch: None, presence: false }).expect("join");
        let Some(ToCoordinator::Join { request, .. }) = rig.shard.poll_coordinator() else { panic!("a join") };
        rig.hub(count("r"));
        assert!(rig.seen().is_empty(), "kept for after `joined`");
        rig.hub(joined("r", request, E1, 0));
        let seen = rig.seen();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], "joined 1111 0");
        assert!(seen[1].ends_with(r#""members":2}"#), "{seen:?}");
        assert!(rig.shard.take_count(request).is_none(), "nothing left behind");
        // A join left before its `joined`: its count goes with it.
        rig.request(Request::Join { room: "q".into(), since: None, epoch: None, presence: false }).expect("join");
        let Some(ToCoordinator::Join { request, .. }) = rig.shard.poll_coordinator() else { panic!("a join") };
        rig.hub(count("q"));
        rig.request(Request::Leave { room: "q".into() }).expect("leave");
        assert!(rig.shard.take_count(request).is_none(), "forgotten with its request");
    }

    #[test]
    fn counts_reach_every_member_and_join_leave_events_only_those_that_asked() {
        let notice = |text: &'static str, events_only| {
            let frame = FrameBuilder::new("r").build(&Body::Presence { members: 2, events: true });
            RingItem::Notice { ws: Bytes::from_static(text.as_bytes()), frame, events_only }
        };
        for presence in [false, true] {
            let mut rig = Rig::new(64, LagPolicy::Gap);
            rig.request(Request::Join { room: "r".into(), since: None, epoch: None, presence }).expect("join");
            let request = match rig.shard.poll_coordinator() {
                Some(ToCoordinator::Join { request, .. }) => request,
                other => panic!("expected a join, got {other:?}"),
            };
            rig.hub(joined("r", request, E1, 0));
            rig.ring("r", notice("count", false));
            rig.live("r", 1, E1);
            rig.ring("r", notice("joined:bob", true));
            rig.fill().expect("fill");
            let mut expected = vec!["joined 1111 0", "live count", "live r:1"];
            if presence {
                expected.push("live joined:bob");
            }
            assert_eq!(rig.seen(), expected, "presence = {presence}");
        }
    }
}
