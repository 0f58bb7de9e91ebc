//! One client connection's room state, whatever carries it (WebSocket or QUIC).
//!
//! A [`Session`] takes parsed client [`Request`]s and hub answers, and produces the bytes to
//! send (already encoded for its [`Wire`]). Its drivers (`ws.rs`, `quic_clients.rs`) only move
//! bytes and timers.
//!
//! Join, exactly as docs/protocol.md promises (no loss, no duplicate between replay and live):
//! 1. take a cursor at the tail of the shard's ring for the room *now*, and send `Join {conn,
//!    since}` to the owner hub (through the coordinator, which announces interest first);
//! 2. do not read the ring yet; deliver the hub's `Replay` frames in order (after its `Gap`, if
//!    any);
//! 3. on `Joined` (header seq `L`) send `joined` with `last_seq = L`, then read the ring from the
//!    cursor, delivering only frames with seq greater than the last one delivered (`L` at first):
//!    anything at or below it came with the replay.
//!
//! A cursor that fell off the ring yields a `gap` marker (first lost .. next delivered) or, with
//! `lag_policy = "disconnect"`, [`ClientError::SlowConsumer`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use metrics::Counter;

use crate::auth::Claims;
use crate::fanout::{Cursor, LagPolicy, ReadOutcome};
use crate::frame::{is_valid_room, ArchivedBody, Body, Frame, FrameBuilder, Kind, FLAG_JSON};

use super::coordinator::CoordMsg;
use super::limits::{ClientError, Refusal, TokenBucket, Verdict};
use super::shard::{Delivery, ShardState};
use super::{wsframe, Shared};

thread_local! {
    /// The shard's one list of ring frames on their way to a connection (a connection keeps none).
    static BATCH: RefCell<Vec<Delivery>> = const { RefCell::new(Vec::new()) };
}

/// Most publishes of one connection awaiting their hub ack.
const MAX_PENDING_PUBLISHES: usize = 1024;

/// How a session's output is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// JSON text frames (`wsframe`).
    Ws,
    /// linkcast frames (`frame.rs`).
    Quic,
}

/// The client's correlation id of a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum ReqId {
    /// A WebSocket publish's optional `id` (any JSON scalar, echoed).
    Json(Option<serde_json::Value>),
    /// A QUIC `Publish {request}`.
    Quic(u64),
}

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Join `room`, replaying after `since`.
    Join {
        /// Room.
        room: String,
        /// Last seq the client has.
        since: Option<u64>,
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
    },
    /// Application ping (`{"op":"ping"}` or a QUIC `Heartbeat`).
    Ping {
        /// QUIC heartbeat nonce (0 for WebSocket).
        nonce: u64,
    },
}

/// Parses one WebSocket text message. On error, also returns the room and id to echo.
pub fn parse_ws(text: &str) -> Result<Request, (ClientError, Option<String>, Option<serde_json::Value>)> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| (ClientError::MalformedJson, None, None))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err((ClientError::MalformedJson, None, None));
    };
    let id = map.remove("id");
    let room = match map.get("room") {
        None => None,
        Some(serde_json::Value::String(room)) => Some(room.clone()),
        Some(_) => return Err((ClientError::BadField, None, id)),
    };
    let fail = |e: ClientError| (e, room.clone().filter(|r| is_valid_room(r)), id.clone());
    let op = map.get("op").and_then(|op| op.as_str()).ok_or_else(|| fail(ClientError::UnknownOp))?;
    let need_room = || {
        let room = room.clone().ok_or_else(|| fail(ClientError::BadField))?;
        if is_valid_room(&room) {
            Ok(room)
        } else {
            Err(fail(ClientError::BadRoom))
        }
    };
    match op {
        "join" => {
            let since = match map.get("since") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| fail(ClientError::BadField))?),
            };
            Ok(Request::Join { room: need_room()?, since })
        }
        "leave" => Ok(Request::Leave { room: need_room()? }),
        "publish" => {
            let room = need_room()?;
            let data = map.get("data").ok_or_else(|| fail(ClientError::BadField))?;
            if id.as_ref().is_some_and(|id| id.is_object() || id.is_array()) {
                return Err(fail(ClientError::BadField));
            }
            // Re-serializing a parsed value cannot fail.
            let data = serde_json::to_vec(data).unwrap_or_default();
            Ok(Request::Publish { room, data, flags: FLAG_JSON, id: ReqId::Json(id) })
        }
        "ping" => Ok(Request::Ping { nonce: 0 }),
        _ => Err(fail(ClientError::UnknownOp)),
    }
}

/// Parses one frame from a QUIC client (after its `Hello`).
pub fn parse_quic(frame: &Frame) -> Result<Request, ClientError> {
    match frame.body() {
        ArchivedBody::Join { since, .. } => Ok(Request::Join {
            room: frame.room().to_owned(),
            since: since.as_ref().map(|s| s.to_native()),
        }),
        ArchivedBody::Leave { .. } => Ok(Request::Leave { room: frame.room().to_owned() }),
        ArchivedBody::Publish { request, data } => {
            let flags = frame.flags();
            if flags & FLAG_JSON != 0 && serde_json::from_slice::<serde::de::IgnoredAny>(data.as_slice()).is_err() {
                return Err(ClientError::MalformedJson);
            }
            if flags & FLAG_JSON == 0 && std::str::from_utf8(data.as_slice()).is_err() {
                return Err(ClientError::BadField);
            }
            Ok(Request::Publish {
                room: frame.room().to_owned(),
                data: data.as_slice().to_vec(),
                flags,
                id: ReqId::Quic(request.to_native()),
            })
        }
        ArchivedBody::Heartbeat { nonce } => Ok(Request::Ping { nonce: nonce.to_native() }),
        _ => Err(ClientError::UnknownOp),
    }
}

#[derive(Debug)]
struct Member {
    cursor: Cursor,
    /// `Joined` arrived: the ring may be read.
    joined: bool,
    /// Highest seq delivered (replay or live).
    last_delivered: u64,
    /// The cursor lagged: first seq lost, reported with the next delivered frame.
    pending_gap: Option<u64>,
    /// Parked on the shard room (avoid parking twice in one idle period).
    parked: bool,
}

/// A connection's rooms: a short list (at most `link.max_rooms_per_conn`, usually one), kept as
/// one small allocation rather than a hash table per connection.
#[derive(Debug, Default)]
struct Rooms(Vec<(String, Member)>);

impl Rooms {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn contains_key(&self, room: &str) -> bool {
        self.get(room).is_some()
    }

    fn get(&self, room: &str) -> Option<&Member> {
        self.0.iter().find(|(r, _)| r == room).map(|(_, m)| m)
    }

    fn get_mut(&mut self, room: &str) -> Option<&mut Member> {
        self.0.iter_mut().find(|(r, _)| r == room).map(|(_, m)| m)
    }

    fn insert(&mut self, room: &str, member: Member) {
        self.0.push((room.to_owned(), member));
    }

    fn remove(&mut self, room: &str) -> Option<Member> {
        let at = self.0.iter().position(|(r, _)| r == room)?;
        let (_, member) = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(member)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.0.iter().map(|(r, m)| (r, m))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Member)> {
        self.0.iter_mut().map(|(r, m)| (&*r, m))
    }
}

/// One connection's rooms, publishes and limits.
#[derive(Debug)]
pub struct Session {
    /// Connection id (shard index in the top bits).
    pub id: u64,
    wire: Wire,
    /// The token's claims.
    pub claims: Claims,
    shared: Arc<Shared>,
    state: Rc<RefCell<ShardState>>,
    rooms: Rooms,
    pending: HashMap<u64, (String, ReqId)>,
    bucket: TokenBucket,
    /// A ring may have frames for this connection: call [`Session::fill`].
    pub dirty: bool,
    lagging: Counter,
    joins: Counter,
}

impl Session {
    /// A session for connection `id` with `claims`.
    pub fn new(id: u64, wire: Wire, claims: Claims, shared: Arc<Shared>, state: Rc<RefCell<ShardState>>, now_micros: u64) -> Self {
        let link = &shared.config.link;
        let bucket = TokenBucket::new(link.publish_rate, link.publish_burst, now_micros);
        Session {
            id,
            wire,
            claims,
            shared,
            state,
            rooms: Rooms::default(),
            pending: HashMap::new(),
            bucket,
            dirty: false,
            lagging: metrics::counter!("linkcast_link_lagging_total"),
            joins: metrics::counter!("linkcast_link_joins_total"),
        }
    }

    /// Rooms joined (or joining).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Handles a request; refusals that keep the connection open are answered into `out`.
    /// `Err` means: close the connection with that error.
    pub fn handle_request(&mut self, request: Request, now_micros: u64, out: &mut Vec<Bytes>) -> Result<(), ClientError> {
        match request {
            Request::Join { room, since } => {
                if let Err(e) = self.join(&room, since) {
                    return self.refuse(e, Some(&room), None, out);
                }
            }
            Request::Leave { room } => {
                if self.rooms.contains_key(&room) {
                    self.leave(&room);
                    if self.wire == Wire::Ws {
                        out.push(wsframe::left(&room));
                    }
                } else {
                    return self.refuse(ClientError::NotJoined, Some(&room), None, out);
                }
            }
            Request::Publish { room, data, flags, id } => {
                if !self.claims.allows(&room) {
                    return self.refuse(ClientError::RoomNotAllowed, Some(&room), Some(&id), out);
                }
                if data.len() > self.shared.config.link.max_message_bytes {
                    return Err(ClientError::TooBig);
                }
                match self.bucket.take(now_micros) {
                    Verdict::Allow => {}
                    Verdict::Limited => return self.refuse(ClientError::RateLimited, Some(&room), Some(&id), out),
                    Verdict::Flood => return Err(ClientError::Flood),
                }
                if self.pending.len() >= MAX_PENDING_PUBLISHES {
                    return self.refuse(ClientError::RateLimited, Some(&room), Some(&id), out);
                }
                let request = {
                    let mut state = self.state.borrow_mut();
                    let request = state.new_id();
                    state.add_request(request, self.id);
                    request
                };
                let frame = FrameBuilder::new(&room)
                    .sender(&self.claims.sub)
                    .flags(flags)
                    .build(&Body::Publish { request, data });
                self.pending.insert(request, (room, id));
                self.shared.coordinate(CoordMsg::Publish { frame });
            }
            Request::Ping { nonce } => out.push(match self.wire {
                Wire::Ws => wsframe::pong(),
                Wire::Quic => FrameBuilder::new("").build(&Body::Heartbeat { nonce }).into_bytes(),
            }),
        }
        Ok(())
    }

    /// Answers a refusal into `out`, or turns it into a close.
    pub fn refuse(&self, error: ClientError, room: Option<&str>, id: Option<&ReqId>, out: &mut Vec<Bytes>) -> Result<(), ClientError> {
        match error.refusal() {
            Refusal::Close(..) => Err(error),
            Refusal::Error(code, reason) => {
                out.push(self.error_bytes(code, reason, room, id));
                Ok(())
            }
        }
    }

    fn error_bytes(&self, code: u16, reason: &str, room: Option<&str>, id: Option<&ReqId>) -> Bytes {
        match self.wire {
            Wire::Ws => {
                let json_id = match id {
                    Some(ReqId::Json(id)) => id.as_ref(),
                    _ => None,
                };
                wsframe::error(code, reason, room, json_id)
            }
            Wire::Quic => {
                let request = match id {
                    Some(ReqId::Quic(request)) => *request,
                    _ => 0,
                };
                let room = room.filter(|r| is_valid_room(r)).unwrap_or("");
                FrameBuilder::new(room).build(&Body::Error { request, code, reason: reason.to_owned() }).into_bytes()
            }
        }
    }

    fn join(&mut self, room: &str, since: Option<u64>) -> Result<(), ClientError> {
        if !is_valid_room(room) {
            return Err(ClientError::BadRoom);
        }
        if !self.claims.allows(room) {
            return Err(ClientError::RoomNotAllowed);
        }
        if self.rooms.contains_key(room) {
            return Err(ClientError::AlreadyJoined);
        }
        if self.rooms.len() >= self.shared.config.link.max_rooms_per_conn {
            return Err(ClientError::TooManyRooms);
        }
        let (cursor, shard) = {
            let mut state = self.state.borrow_mut();
            (state.join_room(room), state.index)
        };
        self.rooms.insert(
            room,
            Member { cursor, joined: false, last_delivered: 0, pending_gap: None, parked: false },
        );
        self.joins.increment(1);
        self.shared.coordinate(CoordMsg::Join { shard, conn: self.id, room: room.to_owned(), since });
        Ok(())
    }

    fn leave(&mut self, room: &str) {
        if self.rooms.remove(room).is_some() {
            let shard = {
                let mut state = self.state.borrow_mut();
                state.leave_room(room);
                state.index
            };
            self.shared.coordinate(CoordMsg::Leave { shard, room: room.to_owned() });
        }
    }

    /// Handles a hub answer for this connection.
    pub fn handle_hub(&mut self, frame: Frame, out: &mut Vec<Bytes>) {
        let room = frame.room().to_owned();
        match (frame.kind(), frame.body()) {
            (Kind::Replay, _) => {
                let Some(member) = self.rooms.get_mut(&room) else { return };
                if member.joined || frame.seq() <= member.last_delivered && member.last_delivered > 0 {
                    return;
                }
                member.last_delivered = frame.seq();
                super::tally::delivered(1);
                out.push(match self.wire {
                    Wire::Ws => wsframe::message(&frame),
                    Wire::Quic => frame.into_bytes(),
                });
            }
            (Kind::Gap, ArchivedBody::Gap { first_lost, last_lost, resume_from, .. }) => {
                if self.rooms.get(&room).is_none_or(|m| m.joined) {
                    return;
                }
                out.push(match self.wire {
                    Wire::Ws => wsframe::gap(&room, first_lost.to_native(), last_lost.to_native(), resume_from.to_native()),
                    Wire::Quic => frame.into_bytes(),
                });
            }
            (Kind::Joined, _) => {
                let Some(member) = self.rooms.get_mut(&room) else { return };
                if member.joined {
                    return;
                }
                let last_seq = frame.seq();
                member.joined = true;
                member.last_delivered = last_seq;
                self.dirty = true;
                out.push(match self.wire {
                    Wire::Ws => wsframe::joined(&room, last_seq),
                    Wire::Quic => FrameBuilder::new(&room).seq(last_seq).build(&Body::Joined { conn: 0 }).into_bytes(),
                });
            }
            (Kind::PublishAck, ArchivedBody::PublishAck { request }) => {
                let request = request.to_native();
                self.state.borrow_mut().remove_request(request);
                let Some((room, id)) = self.pending.remove(&request) else { return };
                out.push(match (self.wire, &id) {
                    (Wire::Ws, ReqId::Json(id)) => wsframe::published(&room, frame.seq(), id.as_ref()),
                    (_, ReqId::Quic(request)) => {
                        FrameBuilder::new(&room).seq(frame.seq()).build(&Body::PublishAck { request: *request }).into_bytes()
                    }
                    (Wire::Quic, ReqId::Json(_)) => return,
                });
            }
            (Kind::Error, ArchivedBody::Error { request, code, reason }) => {
                let request = request.to_native();
                let code = code.to_native();
                if request == self.id {
                    // A join was refused: forget the room.
                    self.leave(&room);
                    out.push(self.error_bytes(code, reason.as_str(), Some(&room), None));
                } else if let Some((room, id)) = self.pending.remove(&request) {
                    self.state.borrow_mut().remove_request(request);
                    out.push(self.error_bytes(code, reason.as_str(), Some(&room), Some(&id)));
                }
            }
            _ => {}
        }
    }

    /// Moves up to about `budget` bytes of ring frames into `out`. `Err(SlowConsumer)` when a
    /// cursor fell off its ring under `lag_policy = "disconnect"`.
    pub fn fill(&mut self, budget: usize, out: &mut Vec<Bytes>) -> Result<(), ClientError> {
        BATCH.with(|batch| match batch.try_borrow_mut() {
            Ok(mut batch) => self.fill_with(budget, out, &mut batch),
            Err(_) => self.fill_with(budget, out, &mut Vec::new()),
        })
    }

    fn fill_with(&mut self, mut budget: usize, out: &mut Vec<Bytes>, batch: &mut Vec<Delivery>) -> Result<(), ClientError> {
        self.dirty = false;
        let policy = self.shared.config.link.lag_policy;
        let mut delivered = 0u64;
        let mut state = self.state.borrow_mut();
        for (room, member) in self.rooms.iter_mut() {
            if !member.joined {
                continue;
            }
            loop {
                if budget == 0 {
                    self.dirty = true;
                    break;
                }
                batch.clear();
                match state.read(room, self.id, &mut member.cursor, budget, batch, &mut member.parked) {
                    ReadOutcome::Idle => break,
                    ReadOutcome::Lagged { .. } => {
                        self.lagging.increment(1);
                        if policy == LagPolicy::Disconnect {
                            super::tally::delivered(delivered);
                            return Err(ClientError::SlowConsumer);
                        }
                        member.pending_gap.get_or_insert(member.last_delivered + 1);
                    }
                    ReadOutcome::Read { .. } => {
                        for delivery in batch.drain(..) {
                            if delivery.seq <= member.last_delivered {
                                continue;
                            }
                            if let Some(first_lost) = member.pending_gap.take() {
                                if delivery.seq > first_lost {
                                    let gap = match self.wire {
                                        Wire::Ws => wsframe::gap(room, first_lost, delivery.seq - 1, delivery.seq),
                                        Wire::Quic => FrameBuilder::new(room)
                                            .build(&Body::Gap {
                                                conn: 0,
                                                first_lost,
                                                last_lost: delivery.seq - 1,
                                                resume_from: delivery.seq,
                                            })
                                            .into_bytes(),
                                    };
                                    out.push(gap);
                                }
                            }
                            member.last_delivered = delivery.seq;
                            let bytes = match self.wire {
                                Wire::Ws => delivery.ws,
                                Wire::Quic => delivery.frame.into_bytes(),
                            };
                            budget = budget.saturating_sub(bytes.len());
                            delivered += 1;
                            out.push(bytes);
                        }
                    }
                }
            }
        }
        super::tally::delivered(delivered);
        Ok(())
    }

    /// True when some cursor fell off its ring (checked on timer ticks for stalled sockets).
    pub fn lagging(&self) -> bool {
        let state = self.state.borrow();
        self.rooms.iter().any(|(room, m)| state.lagging(room, &m.cursor))
    }

    /// Leaves every room and forgets outstanding requests (the connection ended).
    pub fn finish(&mut self) {
        let rooms: Vec<String> = self.rooms.0.iter().map(|(room, _)| room.clone()).collect();
        for room in rooms {
            self.leave(&room);
        }
        let mut state = self.state.borrow_mut();
        for request in self.pending.keys() {
            state.remove_request(*request);
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_requests_parse_and_errors_carry_context() {
        assert_eq!(
            parse_ws(r#"{"op":"join","room":"lobby","since":4}"#),
            Ok(Request::Join { room: "lobby".into(), since: Some(4) })
        );
        assert_eq!(parse_ws(r#"{"op":"join","room":"lobby"}"#), Ok(Request::Join { room: "lobby".into(), since: None }));
        assert!(matches!(parse_ws("{nope"), Err((ClientError::MalformedJson, None, None))));
        assert!(matches!(parse_ws(r#"{"op":"dance","room":"x"}"#), Err((ClientError::UnknownOp, Some(_), None))));
        assert!(matches!(parse_ws(r#"{"op":"join","room":"a b"}"#), Err((ClientError::BadRoom, None, None))));
        assert!(matches!(parse_ws(r#"{"op":"publish","room":"r","id":7}"#), Err((ClientError::BadField, Some(_), Some(_)))));
        match parse_ws(r#"{"op":"publish","room":"r","data":{"a":[1,2]},"id":"k"}"#) {
            Ok(Request::Publish { data, flags, id, .. }) => {
                assert_eq!(data, br#"{"a":[1,2]}"#);
                assert_eq!(flags, FLAG_JSON);
                assert_eq!(id, ReqId::Json(Some("k".into())));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
