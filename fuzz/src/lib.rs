//! The fuzz checks: one function per target, bytes in, a panic on any crash or broken invariant.
//!
//! Each libFuzzer target in `fuzz_targets/` is one line calling a function here, and
//! `core/tests/fuzz_regressions.rs` includes this very file (`#[path]`) to replay the committed
//! seeds (`fuzz/seeds/<target>/`) and every input that once failed (`fuzz/regressions/<target>/`)
//! through the same function in the normal test command. So this file may use only what the core
//! crate's tests can: `linkcast_core`, `bytes` and `serde_json`.
//!
//! Inputs that stand for a stream (frame decoder, WebSocket reader, HTTP head) start with a
//! split prefix (see [`split`]): the rest is fed in the chunks it describes, the way reads cut a
//! socket's bytes, and the result must be the same as when fed at once.

use bytes::BytesMut;
use linkcast_core::frame::{self, ArchivedBody, Body, Frame, FrameBuilder, Kind, DEFAULT_MAX_FRAME_LEN, FLAG_JSON};
use linkcast_core::http_upgrade::{self, HeadScanner, RequestHead, MAX_HEAD};
use linkcast_core::protocol::{self, ClientOp, ServerMsg};
use linkcast_core::ws_frame;
use linkcast_core::ws_read::{Incoming, MessageReader};
use serde_json::Value;

/// Splits an input into read sizes and the stream: the low 3 bits of the first byte say how
/// many of the next bytes are read sizes (each `1 + byte`, used in turn, cycling); 0 means one
/// read of everything. Returns the sizes, the first byte's other bits and the stream.
pub fn split(data: &[u8]) -> (Vec<usize>, u8, &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return (Vec::new(), 0, &[]) };
    let count = usize::from(first & 7).min(rest.len());
    let sizes = rest[..count].iter().map(|&b| 1 + usize::from(b)).collect();
    (sizes, first >> 3, &rest[count..])
}

/// The stream cut into reads of `sizes` (cycling); one read when `sizes` is empty.
fn chunks<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Frame decoder (Link ↔ hub and QUIC client streams).

/// What a frame stream decoded to: the frames, then the error that ended it (if any), then how
/// many bytes were left undecoded (0 after an error).
#[derive(Debug, PartialEq)]
struct FrameOutcome {
    frames: Vec<Frame>,
    error: Option<frame::FrameError>,
    left: usize,
}

/// Decodes a stream read in `reads`, the way `quic::FrameReader` does.
fn decode_frames(reads: &[&[u8]], max_len: usize) -> FrameOutcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match frame::decode(&mut buf, max_len) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                // What is left after an error depends on how much had been read: not compared.
                Err(error) => return FrameOutcome { frames, error: Some(error), left: 0 },
            }
        }
    }
    FrameOutcome { frames, error: None, left: buf.len() }
}

/// Fuzz target `frame_decode`: `frame::decode` over a stream in arbitrary reads, and
/// `Frame::from_bytes_limited` over the stream as one frame. Bit 0 of the prefix's flags picks a
/// small limit (256 bytes) instead of the default. Checks: the same frames and error whether read
/// at once or in pieces; every frame within the limit and re-validating; its body read the way
/// the hub and Link read it, and rebuilt from those values to an equal frame; its WebSocket
/// rendering (what the Link sends members) decodes with the client's parser.
pub fn frame_decode(data: &[u8]) {
    let (sizes, flags, stream) = split(data);
    let max_len = if flags & 1 != 0 { 256 } else { DEFAULT_MAX_FRAME_LEN };
    let whole = decode_frames(&[stream], max_len);
    let pieces = decode_frames(&chunks(stream, &sizes), max_len);
    assert_eq!(whole, pieces, "decoding depends on how the stream was read");
    if whole.error.is_none() {
        let used: usize = whole.frames.iter().map(Frame::len).sum();
        assert_eq!(used + whole.left, stream.len(), "bytes lost between frames");
    }
    for frame in &whole.frames {
        check_frame(frame, max_len);
    }
    if let Ok(frame) = Frame::from_bytes_limited(bytes::Bytes::copy_from_slice(stream), max_len) {
        assert_eq!(frame.len(), stream.len());
        check_frame(&frame, max_len);
    }
}

fn check_frame(frame: &Frame, max_len: usize) {
    assert!(frame.len() <= max_len, "frame of {} bytes passed a limit of {max_len}", frame.len());
    assert_eq!(frame::peek_total_len(frame.as_bytes()), Some(frame.len()));
    let again = Frame::from_bytes_limited(frame.as_bytes().clone(), max_len).expect("a decoded frame re-validates");
    assert_eq!(&again, frame);
    let room = frame.room();
    let roomless = matches!(frame.kind(), Kind::Heartbeat | Kind::Hello | Kind::Error | Kind::OwnerMap);
    assert!(frame::is_valid_room(room) || roomless && room.is_empty(), "room {room:?} passed");
    assert!(frame.sender().len() <= frame::MAX_SENDER_LEN);
    assert_eq!(frame.flags() & !FLAG_JSON, 0);
    let Some(body) = owned_body(frame.body()) else { return };
    assert_eq!(body.kind() == frame.kind(), frame.kind() != Kind::InterestRemove);
    match &body {
        Body::Message { data } | Body::Replay { data, .. } | Body::Publish { data, .. } => {
            assert_eq!(frame.payload(), &data[..])
        }
        _ => assert!(frame.payload().is_empty()),
    }
    // Rebuilt from what was read, the frame reads back the same.
    let mut builder = FrameBuilder::new(room).sender(frame.sender()).seq(frame.seq()).ts_micros(frame.ts_micros()).flags(frame.flags());
    if frame.kind() == Kind::InterestRemove {
        builder = builder.interest_remove();
    }
    let rebuilt = builder.build(&body);
    let rebuilt = Frame::from_bytes_limited(rebuilt.into_bytes(), usize::MAX).expect("a rebuilt frame validates");
    assert_eq!(
        (rebuilt.kind(), rebuilt.room(), rebuilt.sender(), rebuilt.seq(), rebuilt.ts_micros(), rebuilt.flags()),
        (frame.kind(), frame.room(), frame.sender(), frame.seq(), frame.ts_micros(), frame.flags())
    );
    assert_eq!(owned_body(rebuilt.body()), Some(body.clone()));
    // What the Link writes to WebSocket members for room messages.
    if matches!(body, Body::Message { .. } | Body::Replay { .. }) {
        let wire = ws_frame::message(frame);
        let text = server_text(&wire);
        let json_payload = frame.flags() & FLAG_JSON != 0 && !frame.payload().is_empty();
        // A FLAG_JSON payload is pasted verbatim: the hub vouches for it (issue 13, item 1), so
        // only a payload that is JSON must come out readable.
        if !json_payload || serde_json::from_slice::<Value>(frame.payload()).is_ok() {
            let text = std::str::from_utf8(text).expect("the Link writes UTF-8 text frames");
            match ServerMsg::<Value>::decode(text) {
                Ok(ServerMsg::Message { room, seq, from, ts, data }) => {
                    assert_eq!((&*room, seq, &*from, ts), (frame.room(), frame.seq(), frame.sender(), frame.ts_micros()));
                    if !json_payload {
                        assert_eq!(data, Value::String(String::from_utf8_lossy(frame.payload()).into_owned()));
                    }
                }
                other => panic!("rendered room message reads back as {other:?}"),
            }
        }
    }
}

/// The payload of one unmasked, unfragmented server text frame as `ws_frame` writes it.
fn server_text(wire: &[u8]) -> &[u8] {
    assert_eq!(wire[0], 0x81);
    let (len, at) = match wire[1] {
        126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
        127 => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&wire[2..10]);
            (u64::from_be_bytes(raw) as usize, 10)
        }
        short => (usize::from(short), 2),
    };
    assert_eq!(wire.len(), at + len);
    &wire[at..]
}

/// The archived body as an owned [`Body`], reading every field the way the hub and Link do;
/// `None` for a variant added to `Body` after this was written (then only the rest is checked).
pub fn owned_body(body: &ArchivedBody) -> Option<Body> {
    Some(match body {
        ArchivedBody::Message { data } => Body::Message { data: data.as_slice().to_vec() },
        ArchivedBody::Replay { request, data } => Body::Replay { request: request.to_native(), data: data.as_slice().to_vec() },
        ArchivedBody::Gap { request, first_lost, last_lost, resume_from } => Body::Gap {
            request: request.to_native(),
            first_lost: first_lost.to_native(),
            last_lost: last_lost.to_native(),
            resume_from: resume_from.to_native(),
        },
        ArchivedBody::Publish { request, key, data } => {
            Body::Publish { request: request.to_native(), key: key.as_str().to_owned(), data: data.as_slice().to_vec() }
        }
        ArchivedBody::PublishAck { request, epoch } => Body::PublishAck { request: request.to_native(), epoch: epoch.to_native() },
        ArchivedBody::Join { request, since, epoch } => {
            Body::Join {
                request: request.to_native(),
                since: since.as_ref().map(|v| v.to_native()),
                epoch: epoch.as_ref().map(|v| v.to_native()),
            }
        }
        ArchivedBody::Joined { request, epoch } => Body::Joined { request: request.to_native(), epoch: epoch.to_native() },
        ArchivedBody::Leave { request } => Body::Leave { request: request.to_native() },
        ArchivedBody::Interest { link, members } => Body::Interest { link: link.to_native(), members: members.to_native() },
        ArchivedBody::Heartbeat { nonce } => Body::Heartbeat { nonce: nonce.to_native() },
        ArchivedBody::Error { request, code, reason, retry_after_ms } => Body::Error {
            request: request.to_native(),
            code: code.to_native(),
            reason: reason.as_str().to_owned(),
            retry_after_ms: retry_after_ms.to_native(),
        },
        ArchivedBody::Hello { link, secret, ws, quic, admin } => Body::Hello {
            link: link.to_native(),
            secret: secret.as_str().to_owned(),
            ws: ws.as_str().to_owned(),
            quic: quic.as_str().to_owned(),
            admin: admin.as_str().to_owned(),
        },
        ArchivedBody::Reset { request, epoch } => Body::Reset { request: request.to_native(), epoch: epoch.to_native() },
        ArchivedBody::OwnerMap { version, hubs } => {
            Body::OwnerMap { version: version.to_native(), hubs: hubs.iter().map(|h| h.to_native()).collect() }
        }
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// WebSocket frame reader (client → Link).

/// What a client stream decoded to: the messages, then the error that ended it (if any).
#[derive(Debug, PartialEq)]
struct WsOutcome {
    messages: Vec<Incoming>,
    error: Option<protocol::ClientError>,
}

/// Feeds `reads` to a reader the way the Link's `ws.rs` does: each read is decoded in place
/// while nothing is pending; a frame cut by a read waits in `pending`, which later reads extend.
/// Stops at a close, as the Link does. Checks on every call that an incomplete frame leaves the buffer untouched (the Link copies it
/// to `pending` and decodes it again) and that a frame uses at least its 6-byte header.
fn read_client(reads: &[&[u8]], max_message: usize) -> WsOutcome {
    let mut reader = MessageReader::new(max_message);
    let mut pending: Vec<u8> = Vec::new();
    let mut messages = Vec::new();
    let mut decode = |buf: &mut [u8], messages: &mut Vec<Incoming>| -> Result<usize, protocol::ClientError> {
        let mut at = 0;
        loop {
            let before = buf[at..].to_vec();
            match reader.decode(&mut buf[at..])? {
                Some((used, message)) => {
                    assert!((6..=buf.len() - at).contains(&used), "used {used} of {}", buf.len() - at);
                    at += used;
                    if let Some(message) = message {
                        check_incoming(&message, max_message);
                        let close = matches!(message, Incoming::Close(_));
                        messages.push(message);
                        if close {
                            return Ok(at); // the Link stops reading at a close
                        }
                    }
                }
                None => {
                    assert_eq!(&buf[at..], &before[..], "an incomplete frame was modified");
                    return Ok(at);
                }
            }
        }
    };
    for read in reads {
        let mut scratch = read.to_vec();
        let result = if pending.is_empty() {
            decode(&mut scratch, &mut messages).map(|used| pending.extend_from_slice(&scratch[used..]))
        } else {
            pending.extend_from_slice(&scratch);
            decode(&mut pending, &mut messages).map(|used| {
                pending.drain(..used);
            })
        };
        if let Err(error) = result {
            return WsOutcome { messages, error: Some(error) };
        }
        if matches!(messages.last(), Some(Incoming::Close(_))) {
            break; // the Link stops reading at a close
        }
    }
    WsOutcome { messages, error: None }
}

fn check_incoming(message: &Incoming, max_message: usize) {
    match message {
        Incoming::Text(text) => assert!(text.len() <= max_message, "{} bytes passed a limit of {max_message}", text.len()),
        Incoming::Ping(payload) => assert!(payload.len() <= 125),
        Incoming::Pong | Incoming::Close(_) => {}
    }
}

/// Fuzz target `ws_read`: client frames through `MessageReader`, in arbitrary reads. Bits 0–1
/// of the prefix's flags pick the message limit (16, 125, 1,024 or 65,536 bytes). Checks: the
/// same messages and error whether read at once or in pieces (up to where a close or error ends
/// the connection); no message above the limit; incomplete frames untouched.
pub fn ws_read(data: &[u8]) {
    let (sizes, flags, stream) = split(data);
    let max_message = [16, 125, 1024, 65_536][usize::from(flags & 3)];
    let whole = read_client(&[stream], max_message);
    let pieces = read_client(&chunks(stream, &sizes), max_message);
    assert_eq!(whole, pieces, "decoding depends on how the stream was read");
    for message in &whole.messages {
        if let Incoming::Text(text) = message {
            json_ops(text.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP upgrade head (Link's WebSocket port, before the upgrade).

/// The first `\r\n\r\n`'s end in `buf`, found the slow obvious way.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// `%XX` (two hex digits) and `+` decoded, anything else kept: the reference for
/// `http_upgrade::percent_decode`.
fn percent_decode_reference(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fuzz target `http_upgrade`: a request head arriving in arbitrary reads, as the Link's
/// `upgrade.rs` reads it (scan after each read, give up at [`MAX_HEAD`]), then parsed. Checks:
/// the resumed scanner finds exactly the first `\r\n\r\n` a one-pass scan finds, at every read;
/// a parsed head ends within the buffer and no later than the scanner's end; query parameters
/// and percent-decoding agree with a reference decoder; the upgrade answers build.
pub fn http_upgrade(data: &[u8]) {
    let (sizes, _, stream) = split(data);
    let mut scanner = HeadScanner::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut found = None;
    let mut reads = chunks(stream, &sizes).into_iter();
    loop {
        let end = scanner.scan(&buf);
        assert_eq!(end, head_end(&buf), "resumed scan disagrees at {} bytes", buf.len());
        assert_eq!(end, HeadScanner::default().scan(&buf));
        if end.is_some() {
            found = end;
            break;
        }
        if buf.len() >= MAX_HEAD {
            break;
        }
        match reads.next() {
            Some(read) => buf.extend_from_slice(read),
            None => break,
        }
    }
    if let Some(end) = found {
        if let Some(head) = RequestHead::parse(&buf) {
            assert!(head.len <= end, "head of {} bytes parsed past the blank line at {end}", head.len);
            let _ = &buf[head.len..]; // the early frames the Link keeps
            let _ = head.websocket_key().map(http_upgrade::switching_protocols);
            for name in ["token", "room", ""] {
                let got = head.query_param(name);
                let want = head.query.split('&').find_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (key == name).then(|| percent_decode_reference(value))
                });
                assert_eq!(got, want, "query {:?} param {name:?}", head.query);
            }
        }
    }
    let text = String::from_utf8_lossy(stream);
    assert_eq!(http_upgrade::percent_decode(&text), percent_decode_reference(&text), "percent_decode({text:?})");
    let _ = http_upgrade::accept_key(&text);
    let body = http_upgrade::error_response(400, "bad_request", &text);
    let json = &body[body.find("\r\n\r\n").map_or(0, |at| at + 4)..];
    let parsed: Value = serde_json::from_str(json).expect("error bodies are JSON");
    assert_eq!(parsed["reason"].as_str(), Some(&*text));
}

// ---------------------------------------------------------------------------------------------
// JSON ops (client ↔ Link).

/// Two JSON values alike, up to the last bits of floats: serde_json's default float parser is
/// not exact (its `float_roundtrip` feature is; not enabled here), so a float, or an integer
/// above u64, may come back 1 ulp off after one write and read (found by this target:
/// fuzz/regressions/json_ops/float_not_exact_after_round_trip).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Two client ops alike (publish data and ids compared with [`same_json`]).
fn same_op(a: &ClientOp, b: &ClientOp) -> bool {
    match (a, b) {
        (ClientOp::Publish { room, data, id }, ClientOp::Publish { room: r, data: d, id: i }) => {
            let json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).ok();
            room == r
                && match (json(data), json(d)) {
                    (Some(x), Some(y)) => same_json(&x, &y),
                    _ => false,
                }
                && match (id, i) {
                    (Some(x), Some(y)) => same_json(x, y),
                    (x, y) => x == y,
                }
        }
        _ => a == b,
    }
}

/// Fuzz target `json_ops`: the input (when UTF-8) as a client op (`ClientOp::parse`, what the
/// Link does with every text message) and as a server message (`ServerMsg::decode`, what the
/// client library does). Checks: a parsed op writes (`to_json`) to text that parses to the same
/// op; what a refusal echoes (room, id) is valid and its error message reads back; a decoded
/// server message encodes to text that decodes to the same message (payloads alike as
/// [`same_json`] says); epochs round-trip.
pub fn json_ops(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ClientOp::parse(text) {
        Ok(op) => {
            // `if let`, not `match`: ops added to the protocol keep this compiling (and are
            // still round-tripped below).
            if let ClientOp::Join { room, .. } | ClientOp::Leave { room } = &op {
                assert!(frame::is_valid_room(room), "room {room:?} passed");
            }
            if let ClientOp::Publish { room, data, id } = &op {
                assert!(frame::is_valid_room(room), "room {room:?} passed");
                serde_json::from_slice::<Value>(data).expect("publish data is JSON");
                if let Some(id) = id {
                    assert!(!id.is_null() && !id.is_array() && !id.is_object());
                    assert!(protocol::publish_key(id).len() <= protocol::MAX_ID_BYTES);
                }
            }
            let written = op.to_json();
            let again = ClientOp::parse(&written).unwrap_or_else(|e| panic!("{written} does not parse: {e:?}"));
            assert!(same_op(&again, &op), "{text} → {written} → {again:?}");
        }
        Err(refused) => {
            if let Some(room) = &refused.room {
                assert!(frame::is_valid_room(room), "echoed room {room:?}");
            }
            if let Some(id) = &refused.id {
                assert!(!id.is_null() && !id.is_array() && !id.is_object());
                assert!(protocol::publish_key(id).len() <= protocol::MAX_ID_BYTES);
            }
            let (code, reason) = match refused.error.refusal() {
                protocol::Refusal::Error(code, reason) | protocol::Refusal::Close(code, reason) => (code, reason),
            };
            let mut out = Vec::new();
            protocol::encode_error(&mut out, code, reason, refused.room.as_deref(), refused.id.as_ref(), None);
            let out = String::from_utf8(out).expect("the Link writes UTF-8");
            match ServerMsg::<Value>::decode(&out) {
                Ok(ServerMsg::Error { code: c, reason: r, room, id, retry_after_ms: None }) => {
                    assert_eq!((c, &*r, room.as_deref()), (code, reason, refused.room.as_deref()));
                    assert_eq!(id, refused.id.as_ref().and_then(Value::as_u64));
                }
                other => panic!("{out} reads back as {other:?}"),
            }
        }
    }
    if let Ok(msg) = ServerMsg::<Value>::decode(text) {
        let written = msg.to_json();
        let again = ServerMsg::<Value>::decode(&written).unwrap_or_else(|e| panic!("{written} does not decode: {e}"));
        match (&again, &msg) {
            (ServerMsg::Message { room, seq, from, ts, data }, ServerMsg::Message { room: r, seq: s, from: f, ts: t, data: d }) => {
                assert_eq!((room, seq, from, ts), (r, s, f, t), "{text} → {written}");
                assert!(same_json(data, d), "{text} → {written}");
            }
            _ => assert_eq!(again, msg, "{text} → {written}"),
        }
    }
    if let Some(epoch) = protocol::parse_epoch(text) {
        assert_eq!(protocol::parse_epoch(&protocol::format_epoch(epoch)), Some(epoch));
    }
}
