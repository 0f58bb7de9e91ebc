//! Client → server WebSocket frames (RFC 6455 §5), decoded in place from whatever bytes a read
//! returned — sans-IO: bytes in, whole messages out, no socket, no buffer of its own.
//!
//! Why not tokio-websockets' reader: its `FramedRead` keeps an 8 KiB read buffer per connection
//! for the connection's whole life, and an idle member of a million-member room reads almost
//! nothing. The Link instead reads every socket of a shard into one shard-wide scratch buffer
//! (`ws.rs`) and decodes here; only a frame cut in half by a read is copied into a per-connection
//! buffer, which is freed again once the frame completes. Server → client frames are built by
//! `ws_frame.rs`; the upgrade is parsed by `http_upgrade.rs` and answered by the Link's `upgrade.rs`.
//!
//! [`MessageReader::decode`] takes the unread bytes, unmasks the first frame in place and returns
//! how many bytes it used plus, when a message is complete, what it was ([`Incoming`]). A message
//! split into fragments is assembled in the reader (bounded by the message limit); control frames
//! may arrive between fragments, as the RFC allows. Every violation is a [`ClientError`] whose
//! close code the driver sends: 1002 protocol error, 1003 binary, 1007 invalid UTF-8, 1009 too big.

use crate::protocol::ClientError;

/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A complete client message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (validated UTF-8).
    Text(String),
    /// A ping; the payload is echoed in the pong.
    Ping(Vec<u8>),
    /// A pong (an answer to the Link's ping).
    Pong,
    /// The client closes, with its code (if any).
    Close(Option<u16>),
}

/// A text message being assembled from fragments.
#[derive(Debug)]
struct Fragments {
    data: Vec<u8>,
}

/// Decodes one connection's client frames (see the module docs).
#[derive(Debug)]
pub struct MessageReader {
    max_message: usize,
    /// Boxed: a reader waits between messages for its connection's whole life, and fragmented
    /// messages are rare (16 bytes per reader instead of 32).
    fragments: Option<Box<Fragments>>,
}

impl MessageReader {
    /// A reader refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        MessageReader { max_message, fragments: None }
    }

    /// Decodes the first frame of `buf` (unmasking its payload in place). `Ok(None)`: `buf` does
    /// not hold a whole frame yet. `Ok(Some((used, message)))`: the frame took `used` bytes and
    /// completed `message` (`None` for a fragment that is not the last).
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Option<(usize, Option<Incoming>)>, ClientError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (first, second) = (buf[0], buf[1]);
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(ClientError::Protocol); // RSV bits: no extension was negotiated
        }
        let opcode = first & 0x0f;
        if second & 0x80 == 0 {
            return Err(ClientError::Protocol); // client frames must be masked (§5.1)
        }
        let control = opcode & 0x08 != 0;
        match opcode {
            0x0 | 0x1 | 0x8 | 0x9 | 0xa => {}
            0x2 => return Err(ClientError::Binary),
            _ => return Err(ClientError::Protocol),
        }
        let (len, mut at) = match second & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(b);
                    (u64::from_be_bytes(raw), 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if control && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
            return Err(ClientError::Protocol);
        }
        let assembled = self.fragments.as_ref().map_or(0, |f| f.data.len()) as u64;
        if !control && assembled.saturating_add(len) > self.max_message as u64 {
            return Err(ClientError::TooBig); // refused from the header, before the payload arrives
        }
        match (opcode, &self.fragments) {
            (0x0, None) => return Err(ClientError::Protocol), // continuation of nothing
            (0x1, Some(_)) => return Err(ClientError::Protocol), // new message inside a fragmented one
            _ => {}
        }
        let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        at += 4;
        // `len` is at most max_message (data) or 125 (control) here, so it fits a usize.
        let end = at + len as usize;
        let Some(payload) = buf.get_mut(at..end) else { return Ok(None) };
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        let payload = &buf[at..end];
        let message = match opcode {
            0x9 => Some(Incoming::Ping(payload.to_vec())),
            0xa => Some(Incoming::Pong),
            0x8 => Some(Incoming::Close(close_code(payload)?)),
            0x1 if fin => Some(Incoming::Text(utf8(payload.to_vec())?)),
            0x1 => {
                self.fragments = Some(Box::new(Fragments { data: payload.to_vec() }));
                None
            }
            _ => {
                // A continuation (checked above that a message is open).
                let mut fragments = self.fragments.take().ok_or(ClientError::Protocol)?;
                fragments.data.extend_from_slice(payload);
                if fin {
                    Some(Incoming::Text(utf8(std::mem::take(&mut fragments.data))?))
                } else {
                    self.fragments = Some(fragments);
                    None
                }
            }
        };
        Ok(Some((end, message)))
    }
}

fn utf8(data: Vec<u8>) -> Result<String, ClientError> {
    String::from_utf8(data).map_err(|_| ClientError::BadUtf8)
}

/// The code of a close frame's payload (`None` when empty); a reason must be UTF-8.
fn close_code(payload: &[u8]) -> Result<Option<u16>, ClientError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ClientError::Protocol),
        [a, b, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| ClientError::BadUtf8)?;
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
}

/// Builds a masked client frame (tests and benches play the client).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    fn decode_all(reader: &mut MessageReader, mut bytes: Vec<u8>) -> Result<Vec<Incoming>, ClientError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            match reader.decode(&mut bytes[at..])? {
                Some((used, message)) => {
                    at += used;
                    out.extend(message);
                }
                None => break,
            }
        }
        Ok(out)
    }

    #[test]
    fn text_ping_close_and_fragments_decode() {
        let mut reader = MessageReader::new(1024);
        let mut wire = client_frame(0x1, true, br#"{"op":"ping"}"#, MASK);
        wire.extend(client_frame(0x9, true, b"hi", MASK));
        wire.extend(client_frame(0x1, false, b"hel", MASK));
        wire.extend(client_frame(0xa, true, b"", MASK)); // control between fragments
        wire.extend(client_frame(0x0, false, b"lo ", MASK));
        wire.extend(client_frame(0x0, true, "wörld".as_bytes(), MASK));
        wire.extend(client_frame(0x8, true, &[0x03, 0xe8, b'o', b'k'], MASK));
        let got = decode_all(&mut reader, wire).expect("valid");
        assert_eq!(
            got,
            vec![
                Incoming::Text(r#"{"op":"ping"}"#.into()),
                Incoming::Ping(b"hi".to_vec()),
                Incoming::Pong,
                Incoming::Text("hello wörld".into()),
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn lengths_16_and_64_bit() {
        let mut reader = MessageReader::new(1 << 20);
        let medium = "m".repeat(300);
        let large = "L".repeat(70_000);
        let mut wire = client_frame(0x1, true, medium.as_bytes(), MASK);
        wire.extend(client_frame(0x1, true, large.as_bytes(), MASK));
        assert_eq!(decode_all(&mut reader, wire).expect("valid"), vec![Incoming::Text(medium), Incoming::Text(large)]);
    }

    #[test]
    fn violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, ClientError)> = vec![
            (client_frame(0x2, true, b"bin", MASK), ClientError::Binary),
            (vec![0x81, 0x02, b'h', b'i'], ClientError::Protocol), // unmasked
            (client_frame(0x1 | 0x40, true, b"x", MASK), ClientError::Protocol), // RSV1
            (client_frame(0x3, true, b"x", MASK), ClientError::Protocol), // reserved opcode
            (client_frame(0x0, true, b"x", MASK), ClientError::Protocol), // lone continuation
            (client_frame(0x9, false, b"x", MASK), ClientError::Protocol), // fragmented control
            (client_frame(0x9, true, &[0; 126], MASK), ClientError::Protocol), // control too long
            (client_frame(0x1, true, &[0xff, 0xfe], MASK), ClientError::BadUtf8),
            (client_frame(0x8, true, &[0x03], MASK), ClientError::Protocol),
            (client_frame(0x1, true, &[b'a'; 65], MASK), ClientError::TooBig),
        ];
        for (wire, expected) in cases {
            let mut reader = MessageReader::new(64);
            assert_eq!(decode_all(&mut reader, wire.clone()), Err(expected), "{wire:02x?}");
        }
        // A new text message inside a fragmented one.
        let mut reader = MessageReader::new(64);
        let mut wire = client_frame(0x1, false, b"a", MASK);
        wire.extend(client_frame(0x1, true, b"b", MASK));
        assert_eq!(decode_all(&mut reader, wire), Err(ClientError::Protocol));
        // Fragments adding up beyond the limit.
        let mut reader = MessageReader::new(64);
        let mut wire = client_frame(0x1, false, &[b'a'; 40], MASK);
        wire.extend(client_frame(0x0, true, &[b'a'; 40], MASK));
        assert_eq!(decode_all(&mut reader, wire), Err(ClientError::TooBig));
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut reader = MessageReader::new(1000);
        let wire = client_frame(0x1, true, &vec![b'a'; 100_000], MASK);
        let mut head = wire[..10].to_vec();
        assert_eq!(reader.decode(&mut head), Err(ClientError::TooBig));
    }

    proptest! {
        #[test]
        fn any_split_point_yields_the_same_messages(text in "[ -~é]{0,300}", split in 0usize..400) {
            let mut wire = client_frame(0x1, true, text.as_bytes(), MASK);
            wire.extend(client_frame(0x9, true, b"p", MASK));
            let split = split.min(wire.len());
            let mut reader = MessageReader::new(4096);
            // First read: only the bytes before `split`; then the rest appended, as ws.rs does.
            let mut pending = wire[..split].to_vec();
            let mut got = Vec::new();
            while let Some((used, message)) = reader.decode(&mut pending).expect("valid") {
                got.extend(message);
                pending.drain(..used);
            }
            pending.extend_from_slice(&wire[split..]);
            got.extend(decode_all(&mut reader, pending).expect("valid"));
            prop_assert_eq!(got, vec![Incoming::Text(text), Incoming::Ping(b"p".to_vec())]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut reader = MessageReader::new(128);
            let _ = decode_all(&mut reader, bytes);
        }
    }
}
