//! The client ↔ Link WebSocket protocol: the one definition of its JSON operations, used by the
//! Link (to read what clients send and to write its answers) and by the client library (to write
//! requests and read answers). docs/protocol.md ("WebSocket") is the contract this file encodes.
//!
//! Sans-IO like the rest of the core: no sockets, no clocks, no tokio — text in, values out, and
//! back. What it owns:
//! - [`ClientOp`]: a client → server message. The Link calls [`ClientOp::parse`] on every text
//!   message (bad input becomes a [`ParseError`] carrying what to echo); the client library writes
//!   with [`ClientOp::to_json`] (or [`publish_json`], which splices a payload without a copy).
//! - [`ServerMsg`]: a server → client message. The client decodes with [`ServerMsg::decode`]
//!   (borrowing room and sender from the text, generic over the payload type); the Link writes the
//!   control messages with [`ServerMsg::encode`], [`encode_published`] and [`encode_error`] (its
//!   hot path, the room message, is rendered straight from the hub's frame by
//!   `ws_frame.rs`, and tested there to decode here).
//! - [`ClientError`] / [`Refusal`]: everything a client can do wrong and what it gets for it
//!   (error code or close code, reason), and which refusals may be retried
//!   ([`ClientError::retry_after_ms`]).
//! - The wire spellings shared by both sides: room epochs as 16 lowercase hex digits
//!   ([`format_epoch`], [`parse_epoch`]) and a publish id's idempotency key ([`publish_key`]).
//!
//! What it does not own: what the operations mean for a room's position (`client/session.rs` on
//! the client, the Link session on the server) and how bytes are framed (WebSocket framing is
//! `ws_frame.rs` and `ws_read.rs`; QUIC clients use `frame.rs` frames instead).
//!
//! ```text
//!  client library                                   Link
//!  ClientOp::to_json ──── {"op":"join",...} ──────▶ ClientOp::parse ─▶ session
//!  ServerMsg::decode ◀─── {"op":"joined",...} ───── ServerMsg::encode / ws_frame
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::AuthError;
use crate::frame::is_valid_room;

/// Longest publish `id`, as compact JSON text (docs/protocol.md "Publish ids").
pub const MAX_ID_BYTES: usize = 128;

/// A client → server message (docs/protocol.md "Client → server").
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    /// Join `room`, replaying what follows position (`epoch`, `since`).
    Join {
        /// The room.
        room: String,
        /// Last seq the client has; `None`: live only.
        since: Option<u64>,
        /// The epoch `since` belongs to; `None`: the room's current one.
        epoch: Option<u64>,
        /// Also send this connection `member_joined` / `member_left` events of the room.
        presence: bool,
    },
    /// Leave `room`.
    Leave {
        /// The room.
        room: String,
    },
    /// Publish `data` to `room`.
    Publish {
        /// The room.
        room: String,
        /// The JSON text of `data` (compact when parsed; spliced verbatim when written).
        data: Bytes,
        /// The publish id (a JSON scalar, at most [`MAX_ID_BYTES`] as JSON text): echoed in the
        /// answer and the publish's idempotency key ([`publish_key`]). `null` counts as none.
        id: Option<Value>,
    },
    /// Application-level ping, answered with `pong`.
    Ping,
    /// The token, as the connection's first message when the URL carried none (URLs end up in
    /// proxy logs). No answer; a refused token closes the connection.
    Auth {
        /// The JWT.
        token: String,
    },
    /// A fresh token for the same user before the current one expires: answered with
    /// `refreshed`; its `rooms` replace the old ones.
    Refresh {
        /// The JWT.
        token: String,
    },
}

/// A client message the Link refuses, with what its `error` answer echoes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct ParseError {
    /// What was wrong.
    pub error: ClientError,
    /// The message's `room`, only if it is a valid room name.
    pub room: Option<String>,
    /// The message's `id`, only if it is a valid id (a scalar within [`MAX_ID_BYTES`]).
    pub id: Option<Value>,
}

impl ClientOp {
    /// Parses one WebSocket text message. Checks, in order: JSON object (else `MalformedJson`);
    /// `room` a string if present (else `BadField`); `op` known (else `UnknownOp`); then per op:
    /// join `since` (u64 or null) and `epoch` (null or 1–16 hex digits), leave, publish `data`
    /// present and `id` a scalar of at most [`MAX_ID_BYTES`] (else `BadField`); the room name
    /// (else `BadRoom`, missing: `BadField`).
    pub fn parse(text: &str) -> Result<ClientOp, ParseError> {
        let malformed = || ParseError { error: ClientError::MalformedJson, room: None, id: None };
        let value: Value = serde_json::from_str(text).map_err(|_| malformed())?;
        let Value::Object(mut map) = value else {
            return Err(malformed());
        };
        let id = map.remove("id").filter(|id| !id.is_null());
        let id_ok = id.as_ref().is_none_or(valid_id);
        let echo_id = if id_ok { id.clone() } else { None };
        let room = match map.get("room") {
            None => None,
            Some(Value::String(room)) => Some(room.clone()),
            Some(_) => return Err(ParseError { error: ClientError::BadField, room: None, id: echo_id }),
        };
        let fail = |error: ClientError| ParseError {
            error,
            room: room.clone().filter(|r| is_valid_room(r)),
            id: echo_id.clone(),
        };
        let op = map.get("op").and_then(Value::as_str).ok_or_else(|| fail(ClientError::UnknownOp))?;
        let need_room = || match &room {
            None => Err(fail(ClientError::BadField)),
            Some(room) if is_valid_room(room) => Ok(room.clone()),
            Some(_) => Err(fail(ClientError::BadRoom)),
        };
        match op {
            "join" => {
                let since = match map.get("since") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| fail(ClientError::BadField))?),
                };
                let epoch = match map.get("epoch") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(parse_epoch(s).ok_or_else(|| fail(ClientError::BadField))?),
                    Some(_) => return Err(fail(ClientError::BadField)),
                };
                let presence = match map.get("presence") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(on)) => *on,
                    Some(_) => return Err(fail(ClientError::BadField)),
                };
                Ok(ClientOp::Join { room: need_room()?, since, epoch, presence })
            }
            "leave" => Ok(ClientOp::Leave { room: need_room()? }),
            "publish" => {
                let room = need_room()?;
                let data = map.get("data").ok_or_else(|| fail(ClientError::BadField))?;
                if !id_ok {
                    return Err(fail(ClientError::BadField));
                }
                // Re-serializing a parsed value cannot fail.
                let data = Bytes::from(serde_json::to_vec(data).unwrap_or_default());
                Ok(ClientOp::Publish { room, data, id })
            }
            "ping" => Ok(ClientOp::Ping),
            "auth" | "refresh" => {
                let token = match map.get("token") {
                    Some(Value::String(token)) if !token.is_empty() => token.clone(),
                    _ => return Err(fail(ClientError::BadField)),
                };
                Ok(if op == "auth" { ClientOp::Auth { token } } else { ClientOp::Refresh { token } })
            }
            _ => Err(fail(ClientError::UnknownOp)),
        }
    }

    /// A publish's id when it is an unsigned integer (the ids the client library hands out).
    pub fn publish_id(&self) -> Option<u64> {
        match self {
            ClientOp::Publish { id: Some(id), .. } => id.as_u64(),
            _ => None,
        }
    }

    /// The message as JSON text (the client's encoder). An epoch is written as 16 lowercase hex
    /// digits; a publish's `data` must be JSON text and is spliced in as is.
    pub fn to_json(&self) -> String {
        match self {
            ClientOp::Join { room, since, epoch, presence } => {
                let mut out = join_json(room, *since, *epoch);
                if *presence {
                    out.pop();
                    out.push_str(r#","presence":true}"#);
                }
                out
            }
            ClientOp::Leave { room } => {
                let mut out = String::with_capacity(32 + room.len());
                out.push_str(r#"{"op":"leave","room":"#);
                push_json_str(&mut out, room);
                out.push('}');
                out
            }
            ClientOp::Publish { room, data, id } => publish_json(room, data, id.as_ref()),
            ClientOp::Ping => r#"{"op":"ping"}"#.to_owned(),
            ClientOp::Auth { token } | ClientOp::Refresh { token } => {
                let op = if matches!(self, ClientOp::Auth { .. }) { "auth" } else { "refresh" };
                let mut out = String::with_capacity(32 + token.len());
                let _ = write!(out, r#"{{"op":"{op}","token":"#);
                push_json_str(&mut out, token);
                out.push('}');
                out
            }
        }
    }
}

/// `{"op":"join","room":R,"since":N?,"epoch":E?}` (what [`ClientOp::to_json`] writes for a join).
pub fn join_json(room: &str, since: Option<u64>, epoch: Option<u64>) -> String {
    let mut out = String::with_capacity(64 + room.len());
    out.push_str(r#"{"op":"join","room":"#);
    push_json_str(&mut out, room);
    if let Some(since) = since {
        let _ = write!(out, r#","since":{since}"#);
    }
    if let Some(epoch) = epoch {
        let _ = write!(out, r#","epoch":"{}""#, format_epoch(epoch));
    }
    out.push('}');
    out
}

/// `{"op":"publish","room":R,"id":K?,"data":D}` with `data` (JSON text) spliced verbatim — what
/// [`ClientOp::to_json`] writes for a publish, without building the op (no payload copy). A
/// `data` that is not UTF-8 cannot be JSON and is written as `null` rather than as broken JSON.
pub fn publish_json(room: &str, data: &[u8], id: Option<&Value>) -> String {
    let mut out = String::with_capacity(48 + room.len() + data.len());
    out.push_str(r#"{"op":"publish","room":"#);
    push_json_str(&mut out, room);
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(&publish_key(id));
    }
    out.push_str(r#","data":"#);
    out.push_str(std::str::from_utf8(data).unwrap_or("null"));
    out.push('}');
    out
}

/// A room epoch as JSON writes it: 16 lowercase hex digits.
pub fn format_epoch(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// An epoch from its JSON spelling: 1 to 16 hex digits (either case), nothing else.
pub fn parse_epoch(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The idempotency key of a WebSocket publish id: its compact JSON text (id `7` → `7`, id `"a"`
/// → `"a"` with the quotes). A QUIC client's key for request `7` is also `7`, so both
/// transports name the same publish the same way.
pub fn publish_key(id: &Value) -> String {
    // Serializing a `Value` cannot fail.
    serde_json::to_string(id).unwrap_or_default()
}

/// Whether `id` may be a publish id: a scalar whose JSON text fits [`MAX_ID_BYTES`].
fn valid_id(id: &Value) -> bool {
    !id.is_object() && !id.is_array() && publish_key(id).len() <= MAX_ID_BYTES
}

/// A server → client message (docs/protocol.md "Server → client"), generic over the payload
/// type `D` of room messages: the client library uses `serde_json::Value`, `linkcast bench` a
/// struct holding its time stamp, the Link `()` for control messages.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg<'a, D> {
    /// A room message (live or replayed).
    Message {
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
    /// A join completed: replayed messages came before, live ones follow.
    Joined {
        /// The room.
        room: Cow<'a, str>,
        /// The room's epoch.
        epoch: u64,
        /// The room's last seq.
        last_seq: u64,
    },
    /// The client's position belongs to another epoch: it is now (`epoch`, 0).
    Reset {
        /// The room.
        room: Cow<'a, str>,
        /// The room's current epoch.
        epoch: u64,
        /// The room's last seq.
        last_seq: u64,
    },
    /// Messages `first_lost..=last_lost` will never come; the next is `resume_from`.
    Gap {
        /// The room.
        room: Cow<'a, str>,
        /// First lost seq.
        first_lost: u64,
        /// Last lost seq.
        last_lost: u64,
        /// Next seq.
        resume_from: u64,
    },
    /// A leave completed.
    Left {
        /// The room.
        room: Cow<'a, str>,
    },
    /// A publish got `seq` of `epoch`.
    Published {
        /// The room.
        room: Cow<'a, str>,
        /// The seq.
        seq: u64,
        /// The epoch the seq belongs to.
        epoch: u64,
        /// The echoed id, when it is an unsigned integer (the client library's always are).
        id: Option<u64>,
    },
    /// A refusal; the connection stays open.
    Error {
        /// HTTP-like code.
        code: u16,
        /// Reason text.
        reason: Cow<'a, str>,
        /// Room concerned.
        room: Option<Cow<'a, str>>,
        /// Publish id concerned, when it is an unsigned integer.
        id: Option<u64>,
        /// The request may be sent again after this many milliseconds.
        retry_after_ms: Option<u32>,
    },
    /// Answer to a ping.
    Pong,
    /// A `refresh` was accepted: the connection now lives until `exp`.
    Refreshed {
        /// The new token's expiry, seconds since the Unix epoch.
        exp: u64,
    },
    /// The room's member count (all Links), sent when it changes, at most once per room per
    /// `hub.presence_interval_ms`.
    Presence {
        /// The room.
        room: Cow<'a, str>,
        /// Members (connections) in the room.
        members: u64,
        /// `Some(false)`: the room is over `hub.presence_events_max_members`, join/leave events
        /// stop until it is back under; `Some(true)`/`None`: events are on.
        events: Option<bool>,
    },
    /// A user's first connection entered the room (to members that joined with `presence`).
    MemberJoined {
        /// The room.
        room: Cow<'a, str>,
        /// The user.
        user: Cow<'a, str>,
    },
    /// A user's last connection left the room (to members that joined with `presence`).
    MemberLeft {
        /// The room.
        room: Cow<'a, str>,
        /// The user.
        user: Cow<'a, str>,
    },
    /// An operator took this connection out of the room (no `left` follows; do not rejoin).
    Removed {
        /// The room.
        room: Cow<'a, str>,
        /// The operator's reason.
        reason: Cow<'a, str>,
    },
}

/// Why a server text message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not the shape of any server message.
    #[error("malformed server message: {0}")]
    Json(#[from] serde_json::Error),
    /// An `op` this side does not know, or a message missing a field its op needs.
    #[error("unexpected server message (op {0:?})")]
    Unexpected(String),
}

/// Every field any server message may carry; `decode` sorts them by `op`.
#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct Flat<'a, D> {
    #[serde(borrow, default)]
    op: Option<Text<'a>>,
    #[serde(borrow, default)]
    room: Option<Text<'a>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    from: Option<Text<'a>>,
    #[serde(default)]
    ts: Option<u64>,
    /// `Some` whenever the field is present — `"data":null` is a payload, not an absent field.
    #[serde(default = "none", deserialize_with = "present")]
    data: Option<D>,
    #[serde(borrow, default)]
    epoch: Option<Text<'a>>,
    #[serde(default)]
    last_seq: Option<u64>,
    #[serde(default)]
    first_lost: Option<u64>,
    #[serde(default)]
    last_lost: Option<u64>,
    #[serde(default)]
    resume_from: Option<u64>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    reason: Option<Text<'a>>,
    #[serde(default)]
    retry_after_ms: Option<u32>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    members: Option<u64>,
    #[serde(default)]
    events: Option<bool>,
    #[serde(borrow, default)]
    user: Option<Text<'a>>,
}

fn none<D>() -> Option<D> {
    None
}

/// A string borrowed from the text when it needs no unescaping. (serde borrows a bare
/// `Cow<str>` field but not one inside an `Option`, so the visitor is written out.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<De: serde::Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

fn present<'de, D: Deserialize<'de>, De: serde::Deserializer<'de>>(deserializer: De) -> Result<Option<D>, De::Error> {
    D::deserialize(deserializer).map(Some)
}

impl<'a, D: Deserialize<'a>> ServerMsg<'a, D> {
    /// Reads one server text message, borrowing room, sender and reason from `text` where it can.
    pub fn decode(text: &'a str) -> Result<ServerMsg<'a, D>, DecodeError> {
        let flat: Flat<'a, D> = serde_json::from_str(text)?;
        let cow = |t: Option<Text<'a>>| t.map(|t| t.0);
        let (op, room, from, reason, user) = (cow(flat.op), cow(flat.room), cow(flat.from), cow(flat.reason), cow(flat.user));
        let op = op.as_deref();
        let unexpected = || DecodeError::Unexpected(op.unwrap_or("").to_owned());
        let epoch = match &flat.epoch {
            None => None,
            Some(e) => Some(parse_epoch(&e.0).ok_or_else(unexpected)?),
        };
        let id = flat.id.as_ref().and_then(Value::as_u64);
        let msg = match op {
            None => match (room, flat.seq, flat.data) {
                (Some(room), Some(seq), Some(data)) => ServerMsg::Message {
                    room,
                    seq,
                    from: from.unwrap_or(Cow::Borrowed("")),
                    ts: flat.ts.unwrap_or(0),
                    data,
                },
                _ => return Err(unexpected()),
            },
            Some("joined") => match (room, epoch, flat.last_seq) {
                (Some(room), Some(epoch), Some(last_seq)) => ServerMsg::Joined { room, epoch, last_seq },
                _ => return Err(unexpected()),
            },
            Some("reset") => match (room, epoch, flat.last_seq) {
                (Some(room), Some(epoch), Some(last_seq)) => ServerMsg::Reset { room, epoch, last_seq },
                _ => return Err(unexpected()),
            },
            Some("gap") => match (room, flat.first_lost, flat.last_lost, flat.resume_from) {
                (Some(room), Some(first_lost), Some(last_lost), Some(resume_from)) => {
                    ServerMsg::Gap { room, first_lost, last_lost, resume_from }
                }
                _ => return Err(unexpected()),
            },
            Some("left") => match room {
                Some(room) => ServerMsg::Left { room },
                None => return Err(unexpected()),
            },
            Some("published") => match (room, flat.seq, epoch) {
                (Some(room), Some(seq), Some(epoch)) => ServerMsg::Published { room, seq, epoch, id },
                _ => return Err(unexpected()),
            },
            Some("error") => ServerMsg::Error {
                code: flat.code.unwrap_or(0),
                reason: reason.unwrap_or(Cow::Borrowed("")),
                room,
                id,
                retry_after_ms: flat.retry_after_ms,
            },
            Some("pong") => ServerMsg::Pong,
            Some("refreshed") => match flat.exp {
                Some(exp) => ServerMsg::Refreshed { exp },
                None => return Err(unexpected()),
            },
            Some("presence") => match (room, flat.members) {
                (Some(room), Some(members)) => ServerMsg::Presence { room, members, events: flat.events },
                _ => return Err(unexpected()),
            },
            Some("member_joined") => match (room, user) {
                (Some(room), Some(user)) => ServerMsg::MemberJoined { room, user },
                _ => return Err(unexpected()),
            },
            Some("member_left") => match (room, user) {
                (Some(room), Some(user)) => ServerMsg::MemberLeft { room, user },
                _ => return Err(unexpected()),
            },
            Some("removed") => match room {
                Some(room) => ServerMsg::Removed { room, reason: reason.unwrap_or(Cow::Borrowed("")) },
                None => return Err(unexpected()),
            },
            Some(_) => return Err(unexpected()),
        };
        Ok(msg)
    }
}

impl<D> ServerMsg<'_, D> {
    /// The same message owning its strings (to keep it past the text it was decoded from).
    pub fn into_owned(self) -> ServerMsg<'static, D> {
        use std::borrow::Cow::Owned;
        match self {
            ServerMsg::Message { room, seq, from, ts, data } => {
                ServerMsg::Message { room: Owned(room.into_owned()), seq, from: Owned(from.into_owned()), ts, data }
            }
            ServerMsg::Joined { room, epoch, last_seq } => ServerMsg::Joined { room: Owned(room.into_owned()), epoch, last_seq },
            ServerMsg::Reset { room, epoch, last_seq } => ServerMsg::Reset { room: Owned(room.into_owned()), epoch, last_seq },
            ServerMsg::Gap { room, first_lost, last_lost, resume_from } => {
                ServerMsg::Gap { room: Owned(room.into_owned()), first_lost, last_lost, resume_from }
            }
            ServerMsg::Left { room } => ServerMsg::Left { room: Owned(room.into_owned()) },
            ServerMsg::Published { room, seq, epoch, id } => {
                ServerMsg::Published { room: Owned(room.into_owned()), seq, epoch, id }
            }
            ServerMsg::Error { code, reason, room, id, retry_after_ms } => ServerMsg::Error {
                code,
                reason: Owned(reason.into_owned()),
                room: room.map(|r| Owned(r.into_owned())),
                id,
                retry_after_ms,
            },
            ServerMsg::Pong => ServerMsg::Pong,
            ServerMsg::Refreshed { exp } => ServerMsg::Refreshed { exp },
            ServerMsg::Presence { room, members, events } => ServerMsg::Presence { room: Owned(room.into_owned()), members, events },
            ServerMsg::MemberJoined { room, user } => {
                ServerMsg::MemberJoined { room: Owned(room.into_owned()), user: Owned(user.into_owned()) }
            }
            ServerMsg::MemberLeft { room, user } => ServerMsg::MemberLeft { room: Owned(room.into_owned()), user: Owned(user.into_owned()) },
            ServerMsg::Removed { room, reason } => ServerMsg::Removed { room: Owned(room.into_owned()), reason: Owned(reason.into_owned()) },
        }
    }
}

impl<D: Serialize> ServerMsg<'_, D> {
    /// Appends the message's JSON text to `out` (docs/protocol.md shapes; epochs as hex strings,
    /// `room`, `id` and `retry_after_ms` of an error only when present).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerMsg::Message { room, seq, from, ts, data } => {
                out.extend_from_slice(br#"{"room":"#);
                push_json(out, room);
                let _ = write!(ByteWriter(out), r#","seq":{seq},"from":"#);
                push_json(out, from);
                let _ = write!(ByteWriter(out), r#","ts":{ts},"data":"#);
                let at = out.len();
                if serde_json::to_writer(&mut *out, data).is_err() {
                    out.truncate(at);
                    out.extend_from_slice(b"null");
                }
                out.push(b'}');
            }
            ServerMsg::Joined { room, epoch, last_seq } => position(out, "joined", room, *epoch, *last_seq),
            ServerMsg::Reset { room, epoch, last_seq } => position(out, "reset", room, *epoch, *last_seq),
            ServerMsg::Gap { room, first_lost, last_lost, resume_from } => {
                out.extend_from_slice(br#"{"op":"gap","room":"#);
                push_json(out, room);
                let _ = write!(
                    ByteWriter(out),
                    r#","first_lost":{first_lost},"last_lost":{last_lost},"resume_from":{resume_from}}}"#
                );
            }
            ServerMsg::Left { room } => {
                out.extend_from_slice(br#"{"op":"left","room":"#);
                push_json(out, room);
                out.push(b'}');
            }
            ServerMsg::Published { room, seq, epoch, id } => {
                encode_published(out, room, *seq, *epoch, id.map(Value::from).as_ref());
            }
            ServerMsg::Error { code, reason, room, id, retry_after_ms } => {
                encode_error(out, *code, reason, room.as_deref(), id.map(Value::from).as_ref(), *retry_after_ms);
            }
            ServerMsg::Pong => out.extend_from_slice(br#"{"op":"pong"}"#),
            ServerMsg::Refreshed { exp } => {
                let _ = write!(ByteWriter(out), r#"{{"op":"refreshed","exp":{exp}}}"#);
            }
            ServerMsg::Presence { room, members, events } => encode_presence(out, room, *members, *events),
            ServerMsg::MemberJoined { room, user } => encode_member(out, room, user, true),
            ServerMsg::MemberLeft { room, user } => encode_member(out, room, user, false),
            ServerMsg::Removed { room, reason } => {
                out.extend_from_slice(br#"{"op":"removed","room":"#);
                push_json(out, room);
                out.extend_from_slice(br#","reason":"#);
                push_json(out, reason);
                out.push(b'}');
            }
        }
    }

    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(96);
        self.encode(&mut out);
        // Everything written above is UTF-8 (JSON from serde_json and ASCII).
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Appends `{"op":"published","room":R,"seq":N,"epoch":E,"id":K?}` — the Link's form of
/// [`ServerMsg::Published`], whose echoed `id` may be any valid id, not only an integer.
pub fn encode_published(out: &mut Vec<u8>, room: &str, seq: u64, epoch: u64, id: Option<&Value>) {
    out.extend_from_slice(br#"{"op":"published","room":"#);
    push_json(out, room);
    let _ = write!(ByteWriter(out), r#","seq":{seq},"epoch":"{}""#, format_epoch(epoch));
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        push_json(out, id);
    }
    out.push(b'}');
}

/// Appends `{"op":"error","code":C,"reason":T,"room":R?,"id":K?,"retry_after_ms":M?}` — the
/// Link's form of [`ServerMsg::Error`] (any valid id echoed).
pub fn encode_error(out: &mut Vec<u8>, code: u16, reason: &str, room: Option<&str>, id: Option<&Value>, retry_after_ms: Option<u32>) {
    let _ = write!(ByteWriter(out), r#"{{"op":"error","code":{code},"reason":"#);
    push_json(out, reason);
    if let Some(room) = room {
        out.extend_from_slice(br#","room":"#);
        push_json(out, room);
    }
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        push_json(out, id);
    }
    if let Some(ms) = retry_after_ms {
        let _ = write!(ByteWriter(out), r#","retry_after_ms":{ms}"#);
    }
    out.push(b'}');
}

/// Appends `{"op":"presence","room":R,"members":N}` (with `"events":false` when events are off;
/// `"events":true` only when given) — built once per room per Link and shared by its members.
pub fn encode_presence(out: &mut Vec<u8>, room: &str, members: u64, events: Option<bool>) {
    out.extend_from_slice(br#"{"op":"presence","room":"#);
    push_json(out, room);
    let _ = write!(ByteWriter(out), r#","members":{members}"#);
    if let Some(events) = events {
        let _ = write!(ByteWriter(out), r#","events":{events}"#);
    }
    out.push(b'}');
}

/// Appends `{"op":"member_joined"|"member_left","room":R,"user":U}`.
pub fn encode_member(out: &mut Vec<u8>, room: &str, user: &str, joined: bool) {
    out.extend_from_slice(if joined { br#"{"op":"member_joined","room":"# } else { br#"{"op":"member_left","room":"# });
    push_json(out, room);
    out.extend_from_slice(br#","user":"#);
    push_json(out, user);
    out.push(b'}');
}

/// `joined` and `reset` share a shape.
fn position(out: &mut Vec<u8>, op: &str, room: &str, epoch: u64, last_seq: u64) {
    let _ = write!(ByteWriter(out), r#"{{"op":"{op}","room":"#);
    push_json(out, room);
    let _ = write!(ByteWriter(out), r#","epoch":"{}","last_seq":{last_seq}}}"#, format_epoch(epoch));
}

/// `fmt::Write` over a byte buffer (the encoders write ASCII and serde_json's UTF-8).
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Strings and `Value`s serialize into a Vec without failing.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn push_json_str(out: &mut String, s: &str) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// A client mistake or a limit hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The text is not JSON (or not an object).
    #[error("malformed JSON")]
    MalformedJson,
    /// `op` missing or unknown.
    #[error("unknown op")]
    UnknownOp,
    /// A field has the wrong type or is missing.
    #[error("bad field")]
    BadField,
    /// The room name is not valid.
    #[error("invalid room name")]
    BadRoom,
    /// The token does not grant the room.
    #[error("room not allowed by token")]
    RoomNotAllowed,
    /// `join` of a room already joined.
    #[error("already joined")]
    AlreadyJoined,
    /// `leave`/`publish` of a room not joined (publish does not need a join; leave does).
    #[error("not joined")]
    NotJoined,
    /// More rooms than `link.max_rooms_per_conn`.
    #[error("too many rooms")]
    TooManyRooms,
    /// Publish rate above the token bucket.
    #[error("rate limited")]
    RateLimited,
    /// The owner hub is not connected (or its queue is full).
    #[error("hub unavailable")]
    HubUnavailable,
    /// The request was in flight when the Link lost its hub connection (retryable; a publish
    /// retried with the same id is sequenced once).
    #[error("hub connection lost")]
    HubLost,
    /// A payload above the limit.
    #[error("message too big")]
    TooBig,
    /// A binary WebSocket message.
    #[error("binary frames not supported")]
    Binary,
    /// A WebSocket framing violation (unmasked, reserved bits or opcode, bad fragmentation).
    #[error("protocol error")]
    Protocol,
    /// A text message or close reason that is not UTF-8.
    #[error("invalid UTF-8")]
    BadUtf8,
    /// Rate limit refusals went on: the connection is closed.
    #[error("publish flood")]
    Flood,
    /// The connection fell off its ring with `lag_policy = "disconnect"`.
    #[error("slow consumer")]
    SlowConsumer,
    /// The user opened a newer connection beyond `max_conns_per_user`.
    #[error("too many connections for user")]
    TooManyConnections,
    /// No frame from the client within `idle_timeout_secs`.
    #[error("idle timeout")]
    Idle,
    /// The token expired while connected.
    #[error("token expired")]
    TokenExpired,
    /// The Link is stopping.
    #[error("server shutting down")]
    ShuttingDown,
    /// More joins than `link.join_rate` allows (answered with the bucket's own retry hint).
    #[error("join rate limited")]
    JoinRateLimited,
    /// A connection without a token in its URL sent something else than `auth` first.
    #[error("authentication required")]
    AuthRequired,
    /// A connection without a token in its URL sent no `auth` within 5 s.
    #[error("authentication timeout")]
    AuthTimeout,
    /// The token of an `auth` op was refused (the reason is the token's).
    #[error("{0}")]
    AuthFailed(AuthError),
    /// The token of a `refresh` op was refused; the connection keeps its current token.
    #[error("{0}")]
    RefreshRefused(AuthError),
    /// A `refresh` token names another user than the connection's.
    #[error("refresh token for another user")]
    RefreshOtherUser,
    /// A publish into a room only the HTTP API writes (`all`, `user:*`; `system_rooms`).
    #[error("room is read-only for clients")]
    ReadOnlyRoom,
    /// An operator closed the user's connections (`POST /v1/users/{uid}/disconnect`); the close
    /// reason sent is the operator's when one was given.
    #[error("kicked")]
    Kicked,
    /// The user is banned (a disconnect with `ban_seconds`, or a connect during a ban).
    #[error("banned")]
    Banned,
    /// The connection's token was issued before the user's revocation time.
    #[error("token revoked")]
    TokenRevoked,
}

/// What the offender gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An error message with an HTTP-like code; the connection stays open.
    Error(u16, &'static str),
    /// A close with a WebSocket close code and reason.
    Close(u16, &'static str),
}

impl ClientError {
    /// The refusal for this error (docs/protocol.md "Error codes" and "Close codes").
    pub fn refusal(&self) -> Refusal {
        use ClientError::*;
        match self {
            MalformedJson => Refusal::Error(400, "malformed JSON"),
            UnknownOp => Refusal::Error(400, "unknown op"),
            BadField => Refusal::Error(400, "bad field"),
            BadRoom => Refusal::Error(400, "invalid room name"),
            RoomNotAllowed => Refusal::Error(403, "room not allowed by token"),
            AlreadyJoined => Refusal::Error(409, "already joined"),
            NotJoined => Refusal::Error(409, "not joined"),
            TooManyRooms => Refusal::Error(429, "too many rooms"),
            RateLimited => Refusal::Error(429, "rate limited"),
            HubUnavailable => Refusal::Error(503, "hub unavailable"),
            HubLost => Refusal::Error(503, "hub connection lost"),
            TooBig => Refusal::Close(1009, "message too big"),
            Binary => Refusal::Close(1003, "binary frames not supported"),
            Protocol => Refusal::Close(1002, "protocol error"),
            BadUtf8 => Refusal::Close(1007, "invalid UTF-8"),
            Flood => Refusal::Close(1008, "publish flood"),
            // 41xx: the client reconnects after the hint in the reason (docs/protocol.md).
            SlowConsumer => Refusal::Close(4100, "slow consumer; retry_after_ms=1000"),
            // 40xx: the client does not reconnect (it would evict its other session, forever).
            TooManyConnections => Refusal::Close(4003, "too many connections for user"),
            Idle => Refusal::Close(1001, "idle timeout"),
            TokenExpired => Refusal::Close(1008, "token expired"),
            ShuttingDown => Refusal::Close(1001, "server shutting down"),
            JoinRateLimited => Refusal::Error(429, "join rate limited"),
            AuthRequired => Refusal::Close(1008, "authentication required"),
            AuthTimeout => Refusal::Close(1008, "authentication timeout"),
            AuthFailed(error) => Refusal::Close(1008, error.reason()),
            RefreshRefused(error) => Refusal::Error(error.status(), error.reason()),
            RefreshOtherUser => Refusal::Error(403, "refresh token for another user"),
            ReadOnlyRoom => Refusal::Error(403, "room is read-only for clients"),
            Kicked => Refusal::Close(4000, "kicked"),
            Banned => Refusal::Close(4001, "banned"),
            TokenRevoked => Refusal::Close(4002, "token revoked"),
        }
    }

    /// A short label for the `reason` of `linkcast_link_closes_total`.
    pub fn label(&self) -> &'static str {
        match self.refusal() {
            Refusal::Error(_, reason) | Refusal::Close(_, reason) => reason,
        }
    }

    /// The `retry_after_ms` hint of a retryable refusal: the hub being away (503) and the
    /// publish rate limit (429). `None`: retrying the same request cannot help.
    pub fn retry_after_ms(&self) -> Option<u32> {
        match self {
            ClientError::HubUnavailable | ClientError::HubLost | ClientError::RateLimited | ClientError::JoinRateLimited => Some(1000),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn err(text: &str) -> ParseError {
        ClientOp::parse(text).expect_err(text)
    }

    fn parse_error(error: ClientError, room: Option<&str>, id: Option<Value>) -> ParseError {
        ParseError { error, room: room.map(str::to_owned), id }
    }

    #[test]
    fn ops_parse() {
        assert_eq!(
            ClientOp::parse(r#"{"op":"join","room":"lobby","since":4,"epoch":"00000000000000ff"}"#),
            Ok(ClientOp::Join { room: "lobby".into(), since: Some(4), epoch: Some(255), presence: false })
        );
        assert_eq!(
            ClientOp::parse(r#"{"op":"join","room":"lobby","since":null,"epoch":null}"#),
            Ok(ClientOp::Join { room: "lobby".into(), since: None, epoch: None, presence: false })
        );
        assert_eq!(
            ClientOp::parse(r#"{"op":"join","room":"lobby","presence":true}"#),
            Ok(ClientOp::Join { room: "lobby".into(), since: None, epoch: None, presence: true })
        );
        assert_eq!(ClientOp::parse(r#"{"op":"leave","room":"a"}"#), Ok(ClientOp::Leave { room: "a".into() }));
        assert_eq!(ClientOp::parse(r#"{"op":"ping"}"#), Ok(ClientOp::Ping));
        assert_eq!(
            ClientOp::parse(r#"{"op":"publish","room":"r","data":{ "a" : [1, 2] },"id":"k"}"#),
            Ok(ClientOp::Publish { room: "r".into(), data: Bytes::from_static(br#"{"a":[1,2]}"#), id: Some(json!("k")) })
        );
        assert_eq!(
            ClientOp::parse(r#"{"op":"publish","room":"r","data":1,"id":null}"#),
            Ok(ClientOp::Publish { room: "r".into(), data: Bytes::from_static(b"1"), id: None }),
            "a null id is no id (else every null-id publish would share one dedupe key)"
        );
        let longest = format!(r#"{{"op":"publish","room":"r","data":1,"id":"{}"}}"#, "x".repeat(MAX_ID_BYTES - 2));
        assert!(ClientOp::parse(&longest).is_ok(), "an id of exactly {MAX_ID_BYTES} bytes of JSON");
    }

    #[test]
    fn every_parse_error() {
        use ClientError::*;
        assert_eq!(err("{nope"), parse_error(MalformedJson, None, None));
        assert_eq!(err("[1]"), parse_error(MalformedJson, None, None));
        assert_eq!(err(r#"{"op":"join","room":5,"id":3}"#), parse_error(BadField, None, Some(json!(3))));
        assert_eq!(err(r#"{"room":"x"}"#), parse_error(UnknownOp, Some("x"), None));
        assert_eq!(err(r#"{"op":7,"room":"x"}"#), parse_error(UnknownOp, Some("x"), None));
        assert_eq!(err(r#"{"op":"dance","room":"x","id":1}"#), parse_error(UnknownOp, Some("x"), Some(json!(1))));
        assert_eq!(err(r#"{"op":"join","room":"a b"}"#), parse_error(BadRoom, None, None));
        assert_eq!(err(r#"{"op":"join"}"#), parse_error(BadField, None, None));
        assert_eq!(err(r#"{"op":"leave","room":""}"#), parse_error(BadRoom, None, None));
        assert_eq!(err(r#"{"op":"join","room":"r","since":-1}"#), parse_error(BadField, Some("r"), None));
        assert_eq!(err(r#"{"op":"join","room":"r","since":"3"}"#), parse_error(BadField, Some("r"), None));
        for epoch in [r#""""#, r#""0123456789abcdef0""#, r#""xyz""#, r#""+1""#, "12", "true"] {
            let text = format!(r#"{{"op":"join","room":"r","epoch":{epoch}}}"#);
            assert_eq!(err(&text), parse_error(BadField, Some("r"), None), "{text}");
        }
        assert_eq!(err(r#"{"op":"publish","room":"r","id":7}"#), parse_error(BadField, Some("r"), Some(json!(7))));
        assert_eq!(err(r#"{"op":"publish","room":"r","data":1,"id":{"a":1}}"#), parse_error(BadField, Some("r"), None));
        assert_eq!(err(r#"{"op":"publish","room":"r","data":1,"id":[1]}"#), parse_error(BadField, Some("r"), None));
        let too_long = format!(r#"{{"op":"publish","room":"r","data":1,"id":"{}"}}"#, "x".repeat(MAX_ID_BYTES - 1));
        assert_eq!(err(&too_long), parse_error(BadField, Some("r"), None), "an id over {MAX_ID_BYTES} bytes");
        assert_eq!(err(r#"{"op":"publish","room":"a b","data":1}"#), parse_error(BadRoom, None, None));
    }

    #[test]
    fn epochs_and_keys_are_spelled_as_documented() {
        assert_eq!(format_epoch(0x9f86_d081_884c_7d65), "9f86d081884c7d65");
        assert_eq!(format_epoch(1), "0000000000000001");
        assert_eq!(parse_epoch("9F86D081884C7D65"), Some(0x9f86_d081_884c_7d65));
        assert_eq!(parse_epoch("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_epoch("1"), Some(1));
        for bad in ["", "g", "+1", "-1", " 1", "00000000000000000"] {
            assert_eq!(parse_epoch(bad), None, "{bad:?}");
        }
        assert_eq!(publish_key(&json!(7)), "7");
        assert_eq!(publish_key(&json!("a")), "\"a\"");
        assert_eq!(
            ClientOp::Join { room: "r".into(), since: Some(3), epoch: Some(10), presence: false }.to_json(),
            r#"{"op":"join","room":"r","since":3,"epoch":"000000000000000a"}"#
        );
        assert_eq!(ClientOp::Join { room: "a".into(), since: None, epoch: None, presence: false }.to_json(), r#"{"op":"join","room":"a"}"#);
        assert_eq!(
            ClientOp::Join { room: "a".into(), since: None, epoch: None, presence: true }.to_json(),
            r#"{"op":"join","room":"a","presence":true}"#
        );
        assert_eq!(publish_json("r", b"{\"x\":1}", Some(&json!(3))), r#"{"op":"publish","room":"r","id":3,"data":{"x":1}}"#);
    }

    #[test]
    fn server_messages_decode_as_documented() {
        type Msg<'a> = ServerMsg<'a, Value>;
        let m = Msg::decode(r#"{"room":"a","seq":5,"from":"u","ts":9,"data":{"t":1}}"#).expect("message");
        assert_eq!(m, ServerMsg::Message { room: "a".into(), seq: 5, from: "u".into(), ts: 9, data: json!({"t": 1}) });
        let j = Msg::decode(r#"{"op":"joined","room":"a","epoch":"9f86d081884c7d65","last_seq":4}"#).expect("joined");
        assert_eq!(j, ServerMsg::Joined { room: "a".into(), epoch: 0x9f86_d081_884c_7d65, last_seq: 4 });
        let r = Msg::decode(r#"{"op":"reset","room":"a","epoch":"0000000000000002","last_seq":0}"#).expect("reset");
        assert_eq!(r, ServerMsg::Reset { room: "a".into(), epoch: 2, last_seq: 0 });
        let e = Msg::decode(r#"{"op":"error","code":503,"reason":"hub unavailable","room":"a","id":2,"retry_after_ms":1000}"#)
            .expect("error");
        assert_eq!(
            e,
            ServerMsg::Error { code: 503, reason: "hub unavailable".into(), room: Some("a".into()), id: Some(2), retry_after_ms: Some(1000) }
        );
        let p = Msg::decode(r#"{"op":"published","room":"a","seq":3,"epoch":"0000000000000001","id":"x"}"#).expect("published");
        assert_eq!(p, ServerMsg::Published { room: "a".into(), seq: 3, epoch: 1, id: None }, "a non-integer id is not ours");
        assert!(Msg::decode(r#"{"op":"joined","room":"a","last_seq":4}"#).is_err(), "joined needs its epoch");
        assert!(Msg::decode(r#"{"op":"joined","room":"a","epoch":12,"last_seq":4}"#).is_err(), "an epoch is a string");
        let p = Msg::decode(r#"{"op":"presence","room":"a","members":48213,"events":false}"#).expect("presence");
        assert_eq!(p, ServerMsg::Presence { room: "a".into(), members: 48_213, events: Some(false) });
        let j = Msg::decode(r#"{"op":"member_joined","room":"a","user":"bob"}"#).expect("member_joined");
        assert_eq!(j, ServerMsg::MemberJoined { room: "a".into(), user: "bob".into() });
        let l = Msg::decode(r#"{"op":"member_left","room":"a","user":"bob"}"#).expect("member_left");
        assert_eq!(l, ServerMsg::MemberLeft { room: "a".into(), user: "bob".into() });
        let r = Msg::decode(r#"{"op":"removed","room":"a","reason":"spam"}"#).expect("removed");
        assert_eq!(r, ServerMsg::Removed { room: "a".into(), reason: "spam".into() });
        assert!(Msg::decode(r#"{"op":"member_left","room":"a"}"#).is_err(), "an event names its user");
        assert!(Msg::decode(r#"{"op":"weird"}"#).is_err());
        assert!(Msg::decode("not json").is_err());
        // Room and sender are borrowed from the text when they need no unescaping.
        let text = r#"{"room":"a","seq":1,"from":"u","ts":1,"data":null}"#;
        assert!(matches!(Msg::decode(text), Ok(ServerMsg::Message { room: Cow::Borrowed(_), from: Cow::Borrowed(_), .. })));
    }

    /// Every variant, so that adding one without a refusal the docs list fails to compile here.
    fn all_errors() -> Vec<ClientError> {
        use ClientError::*;
        let all = vec![
            MalformedJson, UnknownOp, BadField, BadRoom, RoomNotAllowed, AlreadyJoined, NotJoined, TooManyRooms,
            RateLimited, HubUnavailable, HubLost, TooBig, Binary, Protocol, BadUtf8, Flood, SlowConsumer,
            TooManyConnections, Idle, TokenExpired, ShuttingDown, JoinRateLimited, AuthRequired, AuthTimeout,
            AuthFailed(AuthError::BadSignature), RefreshRefused(AuthError::Expired), RefreshRefused(AuthError::NotYetValid),
            RefreshOtherUser, ReadOnlyRoom, Kicked, Banned, TokenRevoked,
        ];
        for e in &all {
            match e {
                MalformedJson | UnknownOp | BadField | BadRoom | RoomNotAllowed | AlreadyJoined | NotJoined
                | TooManyRooms | RateLimited | HubUnavailable | HubLost | TooBig | Binary | Protocol | BadUtf8
                | Flood | SlowConsumer | TooManyConnections | Idle | TokenExpired | ShuttingDown | JoinRateLimited
                | AuthRequired | AuthTimeout | AuthFailed(_) | RefreshRefused(_) | RefreshOtherUser | ReadOnlyRoom
                | Kicked | Banned | TokenRevoked => {}
            }
        }
        all
    }

    #[test]
    fn every_error_maps_to_a_code_docs_protocol_md_lists() {
        let doc = include_str!("../../docs/protocol.md");
        let error_codes = doc
            .split("Error codes (`code`, HTTP-like):")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("docs/protocol.md has the error code list");
        let close_table = doc.split("### Close codes").nth(1).and_then(|rest| rest.split("\n## ").next()).expect("close table");
        for e in all_errors() {
            match e.refusal() {
                Refusal::Error(code, reason) => {
                    assert!((400..600).contains(&code), "{e:?}");
                    let listed = error_codes.split(|c: char| !c.is_ascii_digit()).any(|n| n == code.to_string());
                    assert!(listed, "{e:?}: code {code} not in the docs' error list");
                    assert_eq!(e.label(), reason);
                }
                Refusal::Close(code, reason) => {
                    assert!((1000..=1013).contains(&code) || (4000..=4199).contains(&code), "{e:?}");
                    assert!(close_table.contains(&format!("| {code} |")), "{e:?}: close {code} not in the docs' table");
                    assert_eq!(e.label(), reason);
                }
            }
            let retryable = matches!(e.refusal(), Refusal::Error(503 | 429, _)) && e != ClientError::TooManyRooms;
            assert_eq!(e.retry_after_ms().is_some(), retryable, "{e:?}");
        }
        assert_eq!(ClientError::HubLost.refusal(), Refusal::Error(503, "hub connection lost"));
        assert_eq!(ClientError::TooBig.refusal(), Refusal::Close(1009, "message too big"));
    }

    fn room() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:@#-]{1,128}"
    }

    fn json_value() -> impl Strategy<Value = Value> {
        // No floats: their text does not always survive a parse/print round trip exactly.
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z\"\\\\é]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn id() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            any::<u64>().prop_map(|n| Some(Value::from(n))),
            "[ -~é✓]{0,40}".prop_map(|s| Some(Value::from(s))),
        ]
    }

    fn client_op() -> impl Strategy<Value = ClientOp> {
        prop_oneof![
            (room(), any::<Option<u64>>(), any::<Option<u64>>(), any::<bool>())
                .prop_map(|(room, since, epoch, presence)| ClientOp::Join { room, since, epoch, presence }),
            room().prop_map(|room| ClientOp::Leave { room }),
            (room(), json_value(), id()).prop_map(|(room, data, id)| ClientOp::Publish {
                room,
                data: Bytes::from(serde_json::to_vec(&data).expect("json")),
                id
            }),
            Just(ClientOp::Ping),
            "[A-Za-z0-9._-]{1,40}".prop_map(|token| ClientOp::Refresh { token }),
            "[A-Za-z0-9._-]{1,40}".prop_map(|token| ClientOp::Auth { token }),
        ]
    }

    fn cow() -> impl Strategy<Value = Cow<'static, str>> {
        ".{0,20}".prop_map(Cow::Owned)
    }

    fn server_msg() -> impl Strategy<Value = ServerMsg<'static, Value>> {
        let room = || room().prop_map(Cow::Owned);
        prop_oneof![
            (room(), any::<u64>(), cow(), any::<u64>(), json_value())
                .prop_map(|(room, seq, from, ts, data)| ServerMsg::Message { room, seq, from, ts, data }),
            (room(), any::<u64>(), any::<u64>()).prop_map(|(room, epoch, last_seq)| ServerMsg::Joined { room, epoch, last_seq }),
            (room(), any::<u64>(), any::<u64>()).prop_map(|(room, epoch, last_seq)| ServerMsg::Reset { room, epoch, last_seq }),
            (room(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(room, first_lost, last_lost, resume_from)| {
                ServerMsg::Gap { room, first_lost, last_lost, resume_from }
            }),
            room().prop_map(|room| ServerMsg::Left { room }),
            (room(), any::<u64>(), any::<u64>(), any::<Option<u64>>())
                .prop_map(|(room, seq, epoch, id)| ServerMsg::Published { room, seq, epoch, id }),
            (any::<u16>(), cow(), proptest::option::of(room()), any::<Option<u64>>(), any::<Option<u32>>()).prop_map(
                |(code, reason, room, id, retry_after_ms)| ServerMsg::Error { code, reason, room, id, retry_after_ms }
            ),
            Just(ServerMsg::Pong),
            any::<u64>().prop_map(|exp| ServerMsg::Refreshed { exp }),
            (room(), any::<u64>(), any::<Option<bool>>())
                .prop_map(|(room, members, events)| ServerMsg::Presence { room, members, events }),
            (room(), cow(), any::<bool>()).prop_map(|(room, user, joined)| match joined {
                true => ServerMsg::MemberJoined { room, user },
                false => ServerMsg::MemberLeft { room, user },
            }),
            (room(), cow()).prop_map(|(room, reason)| ServerMsg::Removed { room, reason }),
        ]
    }

    proptest! {
        #[test]
        fn client_ops_round_trip(op in client_op()) {
            let text = op.to_json();
            prop_assert_eq!(ClientOp::parse(&text), Ok(op), "{}", text);
        }

        #[test]
        fn server_messages_round_trip(msg in server_msg()) {
            let text = msg.to_json();
            let back = ServerMsg::<Value>::decode(&text).map(ServerMsg::into_owned);
            prop_assert_eq!(back.ok(), Some(msg), "{}", text);
        }
    }
}
