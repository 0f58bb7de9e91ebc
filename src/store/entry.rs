//! One history entry as the store keeps it in Redis: `<seq>\n<blob>`, the blob being the
//! message's fields in a fixed binary layout (this file owns that layout and nothing else).
//!
//! Data flow: [`super::RedisStore::publish_batch`] encodes a publish with [`encode_blob`]; the
//! publish script prefixes the seq it assigns (it treats the blob as opaque bytes); an acquire
//! returns the list's entries, which [`decode_entry`] turns back into [`StoredMessage`]s.
//!
//! Blob layout (all integers big-endian):
//! `ts_micros: u64 | flags: u16 | sender_len: u8 | sender (UTF-8) | data (the rest)`.
//! Entries come from Redis, which anything with network access to it can write: decoding
//! checks every length and answers [`EntryError`] instead of panicking.

use bytes::Bytes;

/// Bytes of the blob before the sender: ts (8), flags (2), sender length (1).
const HEADER: usize = 11;

/// A message as stored in a room's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its seq in the room (the room's epoch is the store's, not the entry's).
    pub seq: u64,
    /// When the hub sequenced it, microseconds since the Unix epoch.
    pub ts_micros: u64,
    /// The publishing user (`""` for the HTTP API).
    pub sender: String,
    /// The frame flags the hub gave it.
    pub flags: u16,
    /// The payload.
    pub data: Bytes,
}

/// Why an entry could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The sender does not fit the one-byte length.
    #[error("sender is {0} bytes; the store keeps at most 255")]
    SenderTooLong(usize),
    /// No `\n` after the seq, or the seq is not a decimal number.
    #[error("history entry has no valid `<seq>\\n` prefix")]
    BadSeq,
    /// The blob is shorter than its header or its sender length.
    #[error("history entry is truncated ({0} blob bytes)")]
    Truncated(usize),
    /// The sender is not UTF-8.
    #[error("history entry's sender is not UTF-8")]
    BadSender,
}

/// Encodes a message's fields (everything but its seq, which the script assigns).
pub fn encode_blob(ts_micros: u64, flags: u16, sender: &str, data: &[u8]) -> Result<Vec<u8>, EntryError> {
    let sender_len = u8::try_from(sender.len()).map_err(|_| EntryError::SenderTooLong(sender.len()))?;
    let mut blob = Vec::with_capacity(HEADER + sender.len() + data.len());
    blob.extend_from_slice(&ts_micros.to_be_bytes());
    blob.extend_from_slice(&flags.to_be_bytes());
    blob.push(sender_len);
    blob.extend_from_slice(sender.as_bytes());
    blob.extend_from_slice(data);
    Ok(blob)
}

/// Decodes one history entry (`<seq>\n<blob>`). `data` shares `entry`'s allocation.
pub fn decode_entry(entry: Bytes) -> Result<StoredMessage, EntryError> {
    let newline = entry.iter().position(|&b| b == b'\n').ok_or(EntryError::BadSeq)?;
    let seq = std::str::from_utf8(&entry[..newline]).ok().and_then(|s| s.parse::<u64>().ok()).ok_or(EntryError::BadSeq)?;
    let blob = entry.slice(newline + 1..);
    if blob.len() < HEADER {
        return Err(EntryError::Truncated(blob.len()));
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&blob[..8]);
    let flags = u16::from_be_bytes([blob[8], blob[9]]);
    let sender_end = HEADER + usize::from(blob[10]);
    let sender = blob.get(HEADER..sender_end).ok_or(EntryError::Truncated(blob.len()))?;
    let sender = std::str::from_utf8(sender).map_err(|_| EntryError::BadSender)?.to_owned();
    Ok(StoredMessage { seq, ts_micros: u64::from_be_bytes(ts), sender, flags, data: blob.slice(sender_end..) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, blob: &[u8]) -> Bytes {
        let mut e = format!("{seq}\n").into_bytes();
        e.extend_from_slice(blob);
        Bytes::from(e)
    }

    #[test]
    fn round_trip() {
        let blob = encode_blob(1_700_000_000_123_456, 0x0102, "alice", b"{\"hi\":1}\n\0binary").expect("fits");
        let message = decode_entry(entry(42, &blob)).expect("decodes");
        assert_eq!(
            message,
            StoredMessage {
                seq: 42,
                ts_micros: 1_700_000_000_123_456,
                sender: "alice".into(),
                flags: 0x0102,
                data: Bytes::from_static(b"{\"hi\":1}\n\0binary"),
            }
        );
    }

    #[test]
    fn empty_sender_and_payload() {
        let blob = encode_blob(0, 0, "", b"").expect("fits");
        assert_eq!(blob.len(), HEADER);
        let message = decode_entry(entry(u64::MAX, &blob)).expect("decodes");
        assert_eq!((message.seq, message.sender.as_str(), message.data.len()), (u64::MAX, "", 0));
    }

    #[test]
    fn long_sender_is_refused() {
        let sender = "x".repeat(256);
        assert_eq!(encode_blob(1, 0, &sender, b""), Err(EntryError::SenderTooLong(256)));
        assert!(encode_blob(1, 0, &sender[..255], b"").is_ok());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode_entry(Bytes::from_static(b"12")), Err(EntryError::BadSeq));
        assert_eq!(decode_entry(Bytes::from_static(b"x1\nabc")), Err(EntryError::BadSeq));
        assert_eq!(decode_entry(Bytes::from_static(b"\nabc")), Err(EntryError::BadSeq));
        assert_eq!(decode_entry(entry(1, b"short")), Err(EntryError::Truncated(5)));
        let mut blob = encode_blob(1, 0, "bob", b"").expect("fits");
        blob[10] = 200; // sender length past the end
        assert!(matches!(decode_entry(entry(1, &blob)), Err(EntryError::Truncated(_))));
        let mut blob = encode_blob(1, 0, "bob", b"").expect("fits");
        blob[HEADER] = 0xff;
        assert_eq!(decode_entry(entry(1, &blob)), Err(EntryError::BadSender));
        for len in 0..40 {
            let _ = decode_entry(Bytes::from(vec![b'1'; len]));
            let mut noise = vec![0xa5u8; len];
            noise.insert(0, b'\n');
            noise.insert(0, b'7');
            let _ = decode_entry(Bytes::from(noise));
        }
    }
}
