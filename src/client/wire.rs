//! The WebSocket JSON messages of docs/protocol.md, client side: [`encode_op`] and [`decode`].
//!
//! Owns only the text shapes; what they mean for a room's position is `session.rs`'s business.
//! [`decode`] borrows room and sender from the text where it can (no allocation per message on
//! the bench's hot path) and is generic over the payload type `D`: the client library asks for
//! `serde_json::Value`, `linkcast bench` for a two-field struct holding its send time stamp.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

use super::session::Op;

/// A server → client message.
#[derive(Debug, PartialEq)]
pub enum ServerMsg<'a, D> {
    /// A room message (live or replayed).
    Message {
        /// The room.
        room: Cow<'a, str>,
        /// Its seq.
        seq: u64,
        /// The sender.
        from: Cow<'a, str>,
        /// Hub time stamp, microseconds since the epoch.
        ts: u64,
        /// The payload.
        data: D,
    },
    /// A join completed.
    Joined {
        /// The room.
        room: Cow<'a, str>,
        /// The room's last seq.
        last_seq: u64,
    },
    /// Messages `first_lost..=last_lost` will never come.
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
    /// A publish got its seq.
    Published {
        /// The room.
        room: Cow<'a, str>,
        /// The seq.
        seq: u64,
        /// The echoed id, when it was an unsigned integer (ours always are).
        id: Option<u64>,
    },
    /// A refusal.
    Error {
        /// HTTP-like code.
        code: u16,
        /// Reason text.
        reason: Cow<'a, str>,
        /// Room concerned.
        room: Option<Cow<'a, str>>,
        /// Publish id concerned.
        id: Option<u64>,
    },
    /// Answer to a ping.
    Pong,
}

/// Why a text message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not JSON, or not the shape of any server message.
    #[error("malformed server message: {0}")]
    Json(#[from] serde_json::Error),
    /// An `op` this client does not know, or a message missing a field its op needs.
    #[error("unexpected server message (op {0:?})")]
    Unexpected(String),
}

/// Every field any server message may carry; `decode` sorts them by `op`.
#[derive(Deserialize)]
struct Flat<'a, D> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default = "none")]
    data: Option<D>,
    #[serde(default)]
    last_seq: Option<u64>,
    #[serde(default)]
    first_lost: Option<u64>,
    #[serde(default)]
    last_lost: Option<u64>,
    #[serde(default)]
    resume_from: Option<u64>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

fn none<D>() -> Option<D> {
    None
}

/// Reads one server text message.
pub fn decode<'a, D: Deserialize<'a>>(text: &'a str) -> Result<ServerMsg<'a, D>, WireError> {
    let flat: Flat<'a, D> = serde_json::from_str(text)?;
    let unexpected = |op: &Option<Cow<'a, str>>| WireError::Unexpected(op.as_deref().unwrap_or("").to_owned());
    let id = flat.id.as_ref().and_then(serde_json::Value::as_u64);
    let msg = match flat.op.as_deref() {
        None => match (flat.room, flat.seq, flat.data) {
            (Some(room), Some(seq), Some(data)) => ServerMsg::Message {
                room,
                seq,
                from: flat.from.unwrap_or(Cow::Borrowed("")),
                ts: flat.ts.unwrap_or(0),
                data,
            },
            _ => return Err(unexpected(&flat.op)),
        },
        Some("joined") => match (flat.room, flat.last_seq) {
            (Some(room), Some(last_seq)) => ServerMsg::Joined { room, last_seq },
            _ => return Err(unexpected(&flat.op)),
        },
        Some("gap") => match (flat.room, flat.first_lost, flat.last_lost, flat.resume_from) {
            (Some(room), Some(first_lost), Some(last_lost), Some(resume_from)) => {
                ServerMsg::Gap { room, first_lost, last_lost, resume_from }
            }
            _ => return Err(unexpected(&flat.op)),
        },
        Some("left") => match flat.room {
            Some(room) => ServerMsg::Left { room },
            None => return Err(unexpected(&flat.op)),
        },
        Some("published") => match (flat.room, flat.seq) {
            (Some(room), Some(seq)) => ServerMsg::Published { room, seq, id },
            _ => return Err(unexpected(&flat.op)),
        },
        Some("error") => ServerMsg::Error {
            code: flat.code.unwrap_or(0),
            reason: flat.reason.unwrap_or(Cow::Borrowed("")),
            room: flat.room,
            id,
        },
        Some("pong") => ServerMsg::Pong,
        Some(_) => return Err(unexpected(&flat.op)),
    };
    Ok(msg)
}

/// Writes `op` as its JSON text. A publish's `data` must already be JSON text; it is spliced in
/// as is (no re-encoding).
pub fn encode_op(op: &Op) -> String {
    let mut out = String::with_capacity(64);
    match op {
        Op::Join { room, since } => {
            let _ = write!(out, r#"{{"op":"join","room":{}"#, json_str(room));
            if let Some(since) = since {
                let _ = write!(out, r#","since":{since}"#);
            }
            out.push('}');
        }
        Op::Leave { room } => {
            let _ = write!(out, r#"{{"op":"leave","room":{}}}"#, json_str(room));
        }
        Op::Publish { room, data, id } => {
            let _ = write!(out, r#"{{"op":"publish","room":{},"id":{id},"data":"#, json_str(room));
            // `data` is JSON text by construction (Client::publish serializes it); a payload that
            // is not UTF-8 cannot be, so it goes as null rather than as broken JSON.
            out.push_str(std::str::from_utf8(data).unwrap_or("null"));
            out.push('}');
        }
        Op::Ping => out.push_str(r#"{"op":"ping"}"#),
    }
    out
}

fn json_str(s: &str) -> String {
    // Serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn ops_are_the_documented_json() {
        let join = encode_op(&Op::Join { room: "lobby".into(), since: Some(7) });
        assert_eq!(join, r#"{"op":"join","room":"lobby","since":7}"#);
        assert_eq!(encode_op(&Op::Join { room: "a".into(), since: None }), r#"{"op":"join","room":"a"}"#);
        let publish = encode_op(&Op::Publish { room: "a".into(), data: Bytes::from_static(br#"{"x":1}"#), id: 3 });
        let v: serde_json::Value = serde_json::from_str(&publish).expect("json");
        assert_eq!(v["op"], "publish");
        assert_eq!(v["data"]["x"], 1);
        assert_eq!(v["id"], 3);
    }

    #[test]
    fn server_messages_decode() {
        let m: ServerMsg<'_, serde_json::Value> =
            decode(r#"{"room":"a","seq":5,"from":"u","ts":9,"data":{"t":1}}"#).expect("message");
        assert!(matches!(m, ServerMsg::Message { seq: 5, ts: 9, .. }));
        let j: ServerMsg<'_, serde_json::Value> = decode(r#"{"op":"joined","room":"a","last_seq":4}"#).expect("joined");
        assert_eq!(j, ServerMsg::Joined { room: "a".into(), last_seq: 4 });
        let g: ServerMsg<'_, serde_json::Value> =
            decode(r#"{"op":"gap","room":"a","first_lost":1,"last_lost":2,"resume_from":3}"#).expect("gap");
        assert!(matches!(g, ServerMsg::Gap { first_lost: 1, last_lost: 2, resume_from: 3, .. }));
        let e: ServerMsg<'_, serde_json::Value> =
            decode(r#"{"op":"error","code":403,"reason":"no","room":"a","id":2}"#).expect("error");
        assert!(matches!(e, ServerMsg::Error { code: 403, id: Some(2), .. }));
        assert!(decode::<serde_json::Value>(r#"{"op":"weird"}"#).is_err());
        assert!(decode::<serde_json::Value>("not json").is_err());
    }
}
