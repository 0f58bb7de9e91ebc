//! A token bucket: the per-connection publish and join rate limits of a Link session.
//!
//! `rate` tokens per second, at most `burst` stored; one publish takes one token. Time comes in
//! as an argument (microseconds), so the bucket is sans-IO and tested without a clock. A client
//! that keeps publishing into an empty bucket is told 429 a burst's worth of times, then the
//! verdict turns to [`Verdict::Flood`] and its connection is closed.

/// A token bucket (see the module docs).
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

    /// The `retry_after_ms` of the last refusal, in microseconds, as of the last
    /// [`TokenBucket::take`]: the time until the token for this refusal, counting the ones
    /// refused just before it (refused in a row, they are told to come back one after the
    /// other, not all at the next token). 0 when unlimited.
    pub fn wait_micros(&self) -> u64 {
        if self.rate <= 0.0 {
            return 0;
        }
        let owed = f64::from(self.strikes.max(1)) - self.tokens;
        (owed.max(0.0) / self.rate * 1e6).ceil() as u64
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
        let mut bucket = TokenBucket::new(4, 2, 0);
        assert_eq!(bucket.take(0), Verdict::Allow);
        assert_eq!(bucket.take(0), Verdict::Allow);
        assert_eq!(bucket.wait_micros(), 250_000, "a quarter second to the next token at 4/s");
        assert_eq!(bucket.take(0), Verdict::Limited);
        assert_eq!(bucket.take(0), Verdict::Limited);
        assert_eq!(bucket.wait_micros(), 500_000, "the second refused in a row comes back after the first");
    }
}
