//! The bench message payload: the publisher's send time stamp, padded to the requested size.
//!
//! Every published payload is the JSON object `{"t":MICROS,"p":"xxxx…"}` where `t` is the
//! publisher's wall clock in microseconds since the Unix epoch at the moment it hands the message
//! to its socket, and `p` pads the whole text to `--size` bytes. Receivers run on the same machine
//! (same clock), so `now - t` is the publish→deliver latency including every hop. The same bytes
//! are sent to every server under test (linkcast wraps them as `data`; uWebSockets.js and NATS
//! deliver them verbatim), so the comparison moves equal payloads.

use serde::Deserialize;

/// The part of a payload a receiver reads: the send time stamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Stamp {
    /// Send time, microseconds since the Unix epoch.
    #[serde(default)]
    pub t: u64,
}

/// A payload stamped `t`, padded to `size` bytes (never shorter than the stamp needs).
pub(crate) fn make(t: u64, size: usize) -> String {
    let mut out = format!(r#"{{"t":{t},"p":""#);
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// The stamp of a raw payload (uWebSockets.js / NATS deliver the bytes as sent). Reads the
/// digits after the leading `{"t":` without a JSON parse.
pub(crate) fn stamp_of(raw: &[u8]) -> Option<u64> {
    let digits = raw.strip_prefix(br#"{"t":"#)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_and_stamp() {
        for size in [0, 30, 64, 1000] {
            let p = make(1_700_000_000_000_000, size);
            assert!(size < 40 || p.len() == size, "size {size}: {}", p.len());
            assert_eq!(stamp_of(p.as_bytes()), Some(1_700_000_000_000_000));
            let stamp: Stamp = serde_json::from_str(&p).expect("json");
            assert_eq!(stamp.t, 1_700_000_000_000_000);
        }
        assert_eq!(stamp_of(b"nope"), None);
    }
}
