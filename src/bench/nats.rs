//! Just enough of the NATS text protocol to subscribe and publish over nats-server's WebSocket
//! listener, so `bench --proto nats` drives NATS with the very same WebSocket client code.
//!
//! Sans-IO: [`NatsParser`] takes bytes as they arrive (one WebSocket message may hold several
//! protocol lines, or part of one) and yields [`NatsOp`]s; [`connect_and_subscribe`] and
//! [`publish`] build the client lines. Only what the bench needs: `INFO`, `MSG` (no headers),
//! `PING`/`PONG`, `+OK`, `-ERR`. Every buffered byte is bounded by [`MAX_PENDING`].

use bytes::{Buf, Bytes, BytesMut};

/// Most bytes buffered waiting for the end of an operation.
pub(crate) const MAX_PENDING: usize = 4 * 1024 * 1024;

/// One server operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NatsOp {
    /// A delivered message's payload.
    Msg(Bytes),
    /// The server pings: answer `PONG`.
    Ping,
    /// Answer to our `PING` (also: our earlier lines were processed).
    Pong,
    /// Server info or `+OK`: nothing to do.
    Info,
    /// `-ERR` with its text.
    Err(String),
}

/// Why the byte stream is not NATS.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NatsError {
    /// A line this parser does not know or cannot read.
    #[error("nats: unexpected line {0:?}")]
    Line(String),
    /// More than [`MAX_PENDING`] bytes without a complete operation.
    #[error("nats: operation too large")]
    TooLarge,
}

/// Incremental parser of server operations.
#[derive(Debug, Default)]
pub(crate) struct NatsParser {
    buf: BytesMut,
}

impl NatsParser {
    /// Appends received bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), NatsError> {
        if self.buf.len() + bytes.len() > MAX_PENDING {
            return Err(NatsError::TooLarge);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete operation, `Ok(None)` if more bytes are needed.
    pub(crate) fn next_op(&mut self) -> Result<Option<NatsOp>, NatsError> {
        let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &self.buf[..eol];
        if line.starts_with(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let text = std::str::from_utf8(line).map_err(|_| NatsError::Line("MSG".into()))?;
            let len: usize = text
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| NatsError::Line(text.into()))?;
            let need = eol + 2 + len + 2;
            if self.buf.len() < need {
                return Ok(None);
            }
            self.buf.advance(eol + 2);
            let payload = self.buf.split_to(len).freeze();
            self.buf.advance(2);
            return Ok(Some(NatsOp::Msg(payload)));
        }
        let op = if line == b"PING" {
            NatsOp::Ping
        } else if line == b"PONG" {
            NatsOp::Pong
        } else if line.starts_with(b"INFO") || line == b"+OK" {
            NatsOp::Info
        } else if let Some(rest) = line.strip_prefix(b"-ERR") {
            NatsOp::Err(String::from_utf8_lossy(rest).trim().to_owned())
        } else {
            return Err(NatsError::Line(String::from_utf8_lossy(line).into_owned()));
        };
        self.buf.advance(eol + 2);
        Ok(Some(op))
    }
}

/// The lines a subscriber sends first: CONNECT, SUB `subject` with sid 1, and a PING whose PONG
/// says the subscription is in place.
pub(crate) fn connect_and_subscribe(subject: &str) -> String {
    format!("{}SUB {subject} 1\r\nPING\r\n", connect())
}

/// The CONNECT line (no echo, no verbose acks).
pub(crate) fn connect() -> String {
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"lang\":\"rust\",\"version\":\"linkcast-bench\"}\r\n".into()
}

/// A PUB of `payload` to `subject`.
pub(crate) fn publish(subject: &str, payload: &str) -> String {
    format!("PUB {subject} {}\r\n{payload}\r\n", payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_and_batched_operations() {
        let mut p = NatsParser::default();
        p.push(b"INFO {\"x\":1}\r\nPING\r\nMSG room 1 5\r\nhel").expect("push");
        assert_eq!(p.next_op().expect("ok"), Some(NatsOp::Info));
        assert_eq!(p.next_op().expect("ok"), Some(NatsOp::Ping));
        assert_eq!(p.next_op().expect("ok"), None);
        p.push(b"lo\r\nMSG room 1 reply 2\r\nhi\r\nPONG\r\n").expect("push");
        assert_eq!(p.next_op().expect("ok"), Some(NatsOp::Msg(Bytes::from_static(b"hello"))));
        assert_eq!(p.next_op().expect("ok"), Some(NatsOp::Msg(Bytes::from_static(b"hi"))));
        assert_eq!(p.next_op().expect("ok"), Some(NatsOp::Pong));
        assert_eq!(p.next_op().expect("ok"), None);
        p.push(b"WHAT\r\n").expect("push");
        assert!(p.next_op().is_err());
        assert_eq!(publish("r", "abc"), "PUB r 3\r\nabc\r\n");
    }
}
