//! Server → client WebSocket frames, built once per message per Link (DESIGN principle 2).
//!
//! A room message reaches a Link once, as the hub's [`Frame`]. The coordinator turns it here into
//! the complete WebSocket text frame — header *and* JSON payload in one `Bytes` — and every shard
//! and every member socket writes clones of that same buffer. Server frames are unmasked
//! (RFC 6455 §5.1), so the bytes on the wire are identical for every member.
//!
//! Why the header is written here rather than by tokio-websockets: its `Sink` encodes a fresh
//! 2–14 byte header for each socket on every send, which would put per-member work back on the
//! fan-out path. Only *outgoing data frames* are framed here (one FIN text frame, no extensions,
//! no masking), plus the few control frames (close, ping, pong). Client frames are read by
//! `ws_read.rs`; tokio-websockets is the client side (`client/`, tests).
//!
//! The JSON shapes are those of docs/protocol.md ("Server → client"). Control messages (joined,
//! reset, gap, left, published, error, pong) are written by `protocol.rs`'s encoder, the same
//! module whose decoder the client library uses. The room message, the hot path, is rendered here
//! straight from the hub's frame (no intermediate value); a test checks that it decodes with
//! `protocol::ServerMsg`. Room names are restricted to `A-Z a-z 0-9 _ - . : @ #`
//! (`frame::is_valid_room`), so they are written without escaping; user ids go through serde_json.

use bytes::Bytes;

use crate::frame::{ArchivedBody, Frame, FLAG_JSON};
use crate::protocol::{self, ServerMsg};

/// Room-message JSON payload room reserved for the longest WebSocket header (1 + 1 + 8 bytes).
const MAX_HEADER: usize = 10;

/// A JSON text body under construction, with room in front for its WebSocket header.
#[derive(Debug)]
pub struct TextFrame {
    buf: Vec<u8>,
}

impl TextFrame {
    /// An empty text frame expecting about `capacity` payload bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + capacity);
        buf.resize(MAX_HEADER, 0);
        TextFrame { buf }
    }

    /// The payload written so far (JSON text).
    pub fn payload(&self) -> &[u8] {
        &self.buf[MAX_HEADER..]
    }

    /// Appends raw payload bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes the header in front of the payload and freezes header + payload into one `Bytes`.
    pub fn finish(self) -> Bytes {
        let mut buf = self.buf;
        let len = buf.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x81; // FIN + text opcode
        let header_len = if len < 126 {
            header[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let start = MAX_HEADER - header_len;
        buf[start..MAX_HEADER].copy_from_slice(&header[..header_len]);
        Bytes::from(buf).slice(start..)
    }
}

/// A whole WebSocket text frame around `json`.
pub fn text(json: &[u8]) -> Bytes {
    let mut frame = TextFrame::with_capacity(json.len());
    frame.push(json);
    frame.finish()
}

/// Renders a `Message` or `Replay` frame as `{"room","seq","from","ts","data"}` and frames it.
///
/// `data` is the payload verbatim when the header says JSON ([`FLAG_JSON`]), else the UTF-8
/// payload as a JSON string (invalid UTF-8 is replaced, never trusted).
pub fn message(frame: &Frame) -> Bytes {
    let payload = frame.payload();
    let mut out = TextFrame::with_capacity(64 + frame.room().len() + frame.sender().len() + payload.len() + payload.len() / 8);
    render_message(frame, &mut out.buf);
    out.finish()
}

/// Appends the JSON of a room message to `out` (used by [`message`] and by tests).
pub fn render_message(frame: &Frame, out: &mut Vec<u8>) {
    let mut number = itoa_buf();
    out.extend_from_slice(b"{\"room\":\"");
    out.extend_from_slice(frame.room().as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(fmt_u64(&mut number, frame.seq()));
    out.extend_from_slice(b",\"from\":");
    json_string(out, frame.sender());
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(fmt_u64(&mut number, frame.ts_micros()));
    out.extend_from_slice(b",\"data\":");
    let payload = frame.payload();
    if frame.flags() & FLAG_JSON != 0 && !payload.is_empty() {
        out.extend_from_slice(payload);
    } else {
        json_string(out, &String::from_utf8_lossy(payload));
    }
    out.push(b'}');
}

/// `{"op":"joined","room":R,"epoch":E,"last_seq":N}`.
pub fn joined(room: &str, epoch: u64, last_seq: u64) -> Bytes {
    control(&ServerMsg::Joined { room: room.into(), epoch, last_seq })
}

/// `{"op":"reset","room":R,"epoch":E,"last_seq":N}`.
pub fn reset(room: &str, epoch: u64, last_seq: u64) -> Bytes {
    control(&ServerMsg::Reset { room: room.into(), epoch, last_seq })
}

/// `{"op":"gap","room":R,"first_lost":A,"last_lost":B,"resume_from":C}`.
pub fn gap(room: &str, first_lost: u64, last_lost: u64, resume_from: u64) -> Bytes {
    control(&ServerMsg::Gap { room: room.into(), first_lost, last_lost, resume_from })
}

/// `{"op":"left","room":R}`.
pub fn left(room: &str) -> Bytes {
    control(&ServerMsg::Left { room: room.into() })
}

/// `{"op":"published","room":R,"seq":N,"epoch":E,"id":K}` (`id` only when the client gave one).
pub fn published(room: &str, seq: u64, epoch: u64, id: Option<&serde_json::Value>) -> Bytes {
    let mut out = TextFrame::with_capacity(80 + room.len());
    protocol::encode_published(&mut out.buf, room, seq, epoch, id);
    out.finish()
}

/// `{"op":"error","code":C,"reason":TEXT,"room":R?,"id":K?,"retry_after_ms":T?}`.
pub fn error(code: u16, reason: &str, room: Option<&str>, id: Option<&serde_json::Value>, retry_after_ms: Option<u32>) -> Bytes {
    let mut out = TextFrame::with_capacity(96 + reason.len() + room.map_or(0, str::len));
    protocol::encode_error(&mut out.buf, code, reason, room, id, retry_after_ms);
    out.finish()
}

/// `{"op":"pong"}`.
pub fn pong() -> Bytes {
    text(br#"{"op":"pong"}"#)
}

/// A server control frame (unmasked, FIN): `opcode` 0x8 close, 0x9 ping, 0xA pong.
/// `payload` is at most 125 bytes (RFC 6455 §5.5); longer is cut.
pub fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(125)];
    let mut out = Vec::with_capacity(2 + payload.len());
    out.push(0x80 | opcode);
    out.push(payload.len() as u8);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A close frame with `code` and `reason`.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    control_frame(0x8, &payload)
}

/// The Link's keep-alive ping (payload `lc`), shared by every connection.
pub fn ping() -> Bytes {
    Bytes::from_static(&[0x89, 0x02, b'l', b'c'])
}

/// A replayed message for one connection (rendered like a live one).
pub fn replay(frame: &Frame) -> Option<Bytes> {
    matches!(frame.body(), ArchivedBody::Replay { .. }).then(|| message(frame))
}

/// A control message encoded by `protocol` straight into a frame buffer.
fn control(msg: &ServerMsg<'_, ()>) -> Bytes {
    let mut out = TextFrame::with_capacity(96);
    msg.encode(&mut out.buf);
    out.finish()
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn fmt_u64(buf: &mut [u8; 20], mut value: u64) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_is_header_plus_json() {
        let frame = Frame::message("lobby", 42, 7, "al\"ice", FLAG_JSON, br#"{"t":1}"#);
        let bytes = message(&frame);
        assert_eq!(bytes[0], 0x81);
        let len = bytes[1] as usize;
        assert_eq!(len, bytes.len() - 2);
        let json: serde_json::Value = serde_json::from_slice(&bytes[2..]).expect("json");
        assert_eq!(json, serde_json::json!({"room":"lobby","seq":42,"from":"al\"ice","ts":7,"data":{"t":1}}));
        let text_frame = Frame::message("lobby", 1, 0, "u", 0, b"plain \"text\"");
        let bytes = message(&text_frame);
        let json: serde_json::Value = serde_json::from_slice(&bytes[2..]).expect("json");
        assert_eq!(json["data"], "plain \"text\"");
    }

    #[test]
    fn long_payloads_get_extended_lengths() {
        for len in [125usize, 126, 65_535, 65_536, 70_000] {
            let json = vec![b'1'; len];
            let bytes = text(&json);
            let (header, payload_len) = match bytes[1] {
                126 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
                127 => (10, u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize),
                n => (2, n as usize),
            };
            assert_eq!(payload_len, len);
            assert_eq!(bytes.len(), header + len);
        }
    }

    #[test]
    fn control_frames() {
        assert_eq!(&close(1009, "message too big")[..4], &[0x88, 17, 0x03, 0xf1]);
        assert_eq!(&ping()[..], &[0x89, 2, b'l', b'c']);
        let long = control_frame(0xa, &[7u8; 300]);
        assert_eq!((long[0], long[1], long.len()), (0x8a, 125, 127));
    }

    /// The Link's encoder and the client's decoder agree on every server message.
    #[test]
    fn every_server_frame_decodes_with_the_client_protocol() {
        use std::borrow::Cow;
        type Msg = ServerMsg<'static, serde_json::Value>;
        fn decoded(frame: &Bytes) -> Msg {
            let payload = match frame[1] {
                126 => &frame[4..],
                127 => &frame[10..],
                _ => &frame[2..],
            };
            let text = std::str::from_utf8(payload).expect("utf-8");
            ServerMsg::decode(text).map(ServerMsg::into_owned).unwrap_or_else(|e| panic!("{text}: {e}"))
        }
        let room = || Cow::Borrowed("lobby");
        let frame = Frame::message("lobby", 42, 7, "al\"ice", FLAG_JSON, br#"{"t":[1,null]}"#);
        assert_eq!(
            decoded(&message(&frame)),
            Msg::Message { room: room(), seq: 42, from: "al\"ice".into(), ts: 7, data: serde_json::json!({"t": [1, null]}) }
        );
        let plain = Frame::message("lobby", 1, 2, "u", 0, b"not \"json\"");
        assert!(matches!(decoded(&message(&plain)), Msg::Message { data: serde_json::Value::String(s), .. } if s == "not \"json\""));
        let big = Frame::message("lobby", 3, 4, "u", FLAG_JSON, format!("\"{}\"", "x".repeat(70_000)).as_bytes());
        assert!(matches!(decoded(&message(&big)), Msg::Message { seq: 3, .. }));
        assert_eq!(decoded(&joined("lobby", u64::MAX, 9)), Msg::Joined { room: room(), epoch: u64::MAX, last_seq: 9 });
        assert_eq!(decoded(&reset("lobby", 0x9f86_d081_884c_7d65, 0)), Msg::Reset { room: room(), epoch: 0x9f86_d081_884c_7d65, last_seq: 0 });
        assert_eq!(
            decoded(&gap("lobby", 2, 81, 82)),
            Msg::Gap { room: room(), first_lost: 2, last_lost: 81, resume_from: 82 }
        );
        assert_eq!(decoded(&left("lobby")), Msg::Left { room: room() });
        let id = serde_json::json!(17);
        assert_eq!(decoded(&published("lobby", 5, 1, Some(&id))), Msg::Published { room: room(), seq: 5, epoch: 1, id: Some(17) });
        assert_eq!(decoded(&published("lobby", 5, 1, None)), Msg::Published { room: room(), seq: 5, epoch: 1, id: None });
        assert_eq!(
            decoded(&error(503, "hub unavailable", Some("lobby"), Some(&id), Some(1000))),
            Msg::Error { code: 503, reason: "hub unavailable".into(), room: Some(room()), id: Some(17), retry_after_ms: Some(1000) }
        );
        assert_eq!(decoded(&pong()), Msg::Pong);
    }

    #[test]
    fn control_json_is_exactly_the_documented_shape() {
        let json = |frame: Bytes| serde_json::from_slice::<serde_json::Value>(&frame[2..]).expect("json");
        assert_eq!(
            json(joined("r", 0x9f86_d081_884c_7d65, 4)),
            serde_json::json!({"op": "joined", "room": "r", "epoch": "9f86d081884c7d65", "last_seq": 4})
        );
        assert_eq!(json(reset("r", 2, 0)), serde_json::json!({"op": "reset", "room": "r", "epoch": "0000000000000002", "last_seq": 0}));
        let id = serde_json::json!("k-1");
        assert_eq!(
            json(published("r", 3, 1, Some(&id))),
            serde_json::json!({"op": "published", "room": "r", "seq": 3, "epoch": "0000000000000001", "id": "k-1"})
        );
        assert_eq!(
            json(error(400, "bad field", None, None, None)),
            serde_json::json!({"op": "error", "code": 400, "reason": "bad field"}),
            "no room, id or retry_after_ms unless given"
        );
        assert_eq!(
            json(error(503, "hub connection lost", Some("r"), Some(&id), Some(1000))),
            serde_json::json!({"op": "error", "code": 503, "reason": "hub connection lost", "room": "r", "id": "k-1", "retry_after_ms": 1000})
        );
    }

    #[test]
    fn numbers_format() {
        let mut buf = itoa_buf();
        assert_eq!(fmt_u64(&mut buf, 0), b"0");
        assert_eq!(fmt_u64(&mut buf, u64::MAX), u64::MAX.to_string().as_bytes());
    }
}
