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
//! `wsread.rs`; tokio-websockets is the client side (`client/`, tests).
//!
//! The JSON shapes are those of docs/protocol.md ("Server → client"). Room names are restricted
//! to `A-Z a-z 0-9 _ - . : @ #` (`frame::is_valid_room`), so they are written without escaping;
//! user ids and reasons go through serde_json.

use bytes::Bytes;

use crate::frame::{ArchivedBody, Frame, FLAG_JSON};

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

/// `{"op":"joined","room":R,"last_seq":N}`.
pub fn joined(room: &str, last_seq: u64) -> Bytes {
    control(&serde_json::json!({"op": "joined", "room": room, "last_seq": last_seq}))
}

/// `{"op":"gap","room":R,"first_lost":A,"last_lost":B,"resume_from":C}`.
pub fn gap(room: &str, first_lost: u64, last_lost: u64, resume_from: u64) -> Bytes {
    control(&serde_json::json!({
        "op": "gap", "room": room, "first_lost": first_lost, "last_lost": last_lost, "resume_from": resume_from
    }))
}

/// `{"op":"left","room":R}`.
pub fn left(room: &str) -> Bytes {
    control(&serde_json::json!({"op": "left", "room": room}))
}

/// `{"op":"published","room":R,"seq":N,"id":K}` (`id` only when the client gave one).
pub fn published(room: &str, seq: u64, id: Option<&serde_json::Value>) -> Bytes {
    let mut value = serde_json::json!({"op": "published", "room": room, "seq": seq});
    if let (Some(id), Some(map)) = (id, value.as_object_mut()) {
        map.insert("id".into(), id.clone());
    }
    control(&value)
}

/// `{"op":"error","code":C,"reason":TEXT,"room":R?,"id":K?}`.
pub fn error(code: u16, reason: &str, room: Option<&str>, id: Option<&serde_json::Value>) -> Bytes {
    let mut value = serde_json::json!({"op": "error", "code": code, "reason": reason});
    if let Some(map) = value.as_object_mut() {
        if let Some(room) = room {
            map.insert("room".into(), room.into());
        }
        if let Some(id) = id {
            map.insert("id".into(), id.clone());
        }
    }
    control(&value)
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

fn control(value: &serde_json::Value) -> Bytes {
    // Serializing a `Value` into a Vec cannot fail.
    text(&serde_json::to_vec(value).unwrap_or_default())
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

    #[test]
    fn numbers_format() {
        let mut buf = itoa_buf();
        assert_eq!(fmt_u64(&mut buf, 0), b"0");
        assert_eq!(fmt_u64(&mut buf, u64::MAX), u64::MAX.to_string().as_bytes());
    }
}
