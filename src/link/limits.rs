//! What a client can do wrong, and the per-connection limits that catch it (principle 7).
//!
//! Every refusal a peer can cause is a variant here, mapped by one method to what it gets:
//! [`Refusal::Error`] (an `{"op":"error"}` / `Error` frame; the connection stays open) or
//! [`Refusal::Close`] (a close code with a static reason). Codes and reasons are those of
//! docs/protocol.md. [`TokenBucket`] is the per-connection publish rate limit; time comes in as
//! an argument, so it is tested without a clock.

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
            TooBig => Refusal::Close(1009, "message too big"),
            Binary => Refusal::Close(1003, "binary frames not supported"),
            Protocol => Refusal::Close(1002, "protocol error"),
            BadUtf8 => Refusal::Close(1007, "invalid UTF-8"),
            Flood => Refusal::Close(1008, "publish flood"),
            SlowConsumer => Refusal::Close(1013, "slow consumer"),
            TooManyConnections => Refusal::Close(1008, "too many connections for user"),
            Idle => Refusal::Close(1001, "idle timeout"),
            TokenExpired => Refusal::Close(1008, "token expired"),
            ShuttingDown => Refusal::Close(1001, "server shutting down"),
        }
    }

    /// A short label for the `reason` of `linkcast_link_closes_total`.
    pub fn label(&self) -> &'static str {
        match self.refusal() {
            Refusal::Error(_, reason) | Refusal::Close(_, reason) => reason,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` stored. Time in microseconds.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_micros: u64,
    /// Refusals in a row; reset by an accepted publish.
    strikes: u32,
}

/// The bucket's verdict on one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refuse with 429.
    Limited,
    /// Refused too often in a row: close with "publish flood".
    Flood,
}

impl TokenBucket {
    /// A full bucket. `rate == 0` means unlimited.
    pub fn new(rate: u32, burst: u32, now_micros: u64) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket { rate: f64::from(rate), burst, tokens: burst, last_micros: now_micros, strikes: 0 }
    }

    /// Takes one token at `now_micros`.
    pub fn take(&mut self, now_micros: u64) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Allow;
        }
        let elapsed = now_micros.saturating_sub(self.last_micros) as f64 / 1e6;
        self.last_micros = now_micros;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.strikes += 1;
        // Refusals beyond one more burst's worth mean the client ignores the 429s.
        if f64::from(self.strikes) > self.burst {
            Verdict::Flood
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_limits_then_floods() {
        let mut bucket = TokenBucket::new(10, 3, 0);
        assert_eq!((0..3).map(|_| bucket.take(0)).collect::<Vec<_>>(), vec![Verdict::Allow; 3]);
        assert_eq!(bucket.take(0), Verdict::Limited);
        assert_eq!(bucket.take(100_000), Verdict::Allow, "one token refilled after 100 ms");
        for _ in 0..3 {
            assert_eq!(bucket.take(100_000), Verdict::Limited);
        }
        assert_eq!(bucket.take(100_000), Verdict::Flood);
        assert_eq!(TokenBucket::new(0, 0, 0).take(0), Verdict::Allow);
    }

    #[test]
    fn every_error_has_a_protocol_answer() {
        assert_eq!(ClientError::TooBig.refusal(), Refusal::Close(1009, "message too big"));
        assert_eq!(ClientError::RoomNotAllowed.refusal(), Refusal::Error(403, "room not allowed by token"));
        assert_eq!(ClientError::SlowConsumer.refusal(), Refusal::Close(1013, "slow consumer"));
    }
}
