//! A token bucket: the per-connection publish and join rate limits of a Link session.
//!
//! `rate` tokens per second, at most `burst` stored; one publish takes one token. Time comes in
//! as an argument (microseconds), so the bucket is sans-IO and tested without a clock. A client
//! that keeps publishing into an empty bucket is told 429 a burst's worth of times, then the
//! verdict turns to [`Verdict::Flood`] and its connection is closed.

/// A bucket's policy: `per_sec` tokens a second, at most `burst` stored. Kept apart from the
/// bucket's state, so the sessions of a Link share one (their `[link]` limits) and each
/// connection carries only its own 16 bytes of [`TokenBucket`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_sec: f64,
    burst: f64,
}

impl Rate {
    /// `per_sec` tokens a second, `burst` at most (at least 1). `per_sec == 0` means unlimited.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Rate { per_sec: f64::from(per_sec), burst: f64::from(burst.max(1)) }
    }

    fn unlimited(&self) -> bool {
        self.per_sec <= 0.0
    }
}

/// A token bucket's state (see the module docs); its policy is the [`Rate`] passed to each call,
/// the same one every time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens stored (at most the rate's burst; a fraction is a token partly refilled). As an
    /// f32 each refill rounds by at most tokens × 2⁻²⁴: 6 × 10⁻⁵ of a token per call at a burst of
    /// 1,000, and far less when few are stored, which is when a limit bites.
    tokens: f32,
    /// Refusals in a row; reset by an accepted publish.
    strikes: u32,
    last_micros: u64,
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
    /// A full bucket of `rate`.
    pub fn new(rate: Rate, now_micros: u64) -> Self {
        TokenBucket { tokens: rate.burst as f32, strikes: 0, last_micros: now_micros }
    }

    /// Takes one token of `rate` at `now_micros`.
    pub fn take(&mut self, rate: Rate, now_micros: u64) -> Verdict {
        if rate.unlimited() {
            return Verdict::Allow;
        }
        let elapsed = now_micros.saturating_sub(self.last_micros) as f64 / 1e6;
        self.last_micros = now_micros;
        let tokens = (f64::from(self.tokens) + elapsed * rate.per_sec).min(rate.burst);
        if tokens >= 1.0 {
            self.tokens = (tokens - 1.0) as f32;
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.tokens = tokens as f32;
        self.strikes += 1;
        // Refusals beyond one more burst's worth mean the client ignores the 429s.
        if f64::from(self.strikes) > rate.burst {
            Verdict::Flood
        } else {
            Verdict::Limited
        }
    }

    /// The `retry_after_ms` of the last refusal, in microseconds, as of the last
    /// [`TokenBucket::take`]: the time until the token for this refusal, counting the ones
    /// refused just before it (refused in a row, they are told to come back one after the
    /// other, not all at the next token). 0 when unlimited.
    pub fn wait_micros(&self, rate: Rate) -> u64 {
        if rate.unlimited() {
            return 0;
        }
        let owed = f64::from(self.strikes.max(1)) - f64::from(self.tokens);
        (owed.max(0.0) / rate.per_sec * 1e6).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_limits_then_floods() {
        let rate = Rate::new(10, 3);
        let mut bucket = TokenBucket::new(rate, 0);
        assert_eq!((0..3).map(|_| bucket.take(rate, 0)).collect::<Vec<_>>(), vec![Verdict::Allow; 3]);
        assert_eq!(bucket.take(rate, 0), Verdict::Limited);
        assert_eq!(bucket.take(rate, 100_000), Verdict::Allow, "one token refilled after 100 ms");
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, 100_000), Verdict::Limited);
        }
        assert_eq!(bucket.take(rate, 100_000), Verdict::Flood);
        let unlimited = Rate::new(0, 0);
        assert_eq!(TokenBucket::new(unlimited, 0).take(unlimited, 0), Verdict::Allow);
        let rate = Rate::new(4, 2);
        let mut bucket = TokenBucket::new(rate, 0);
        assert_eq!(bucket.take(rate, 0), Verdict::Allow);
        assert_eq!(bucket.take(rate, 0), Verdict::Allow);
        assert_eq!(bucket.wait_micros(rate), 250_000, "a quarter second to the next token at 4/s");
        assert_eq!(bucket.take(rate, 0), Verdict::Limited);
        assert_eq!(bucket.take(rate, 0), Verdict::Limited);
        assert_eq!(bucket.wait_micros(rate), 500_000, "the second refused in a row comes back after the first");
    }

    #[test]
    fn a_slow_rate_refills_in_small_steps_without_drifting() {
        // One token a second, asked for every millisecond: the f32 state must add up the 1,000
        // small refills to one token (f32 rounding may cost it a millisecond, never more).
        let rate = Rate::new(1, 1);
        let mut bucket = TokenBucket::new(rate, 0);
        assert_eq!(bucket.take(rate, 0), Verdict::Allow);
        let mut allowed_at = None;
        for ms in 1..=1_100u64 {
            if bucket.take(rate, ms * 1_000) == Verdict::Allow {
                allowed_at = Some(ms);
                break;
            }
        }
        assert!(matches!(allowed_at, Some(1_000..=1_001)), "the next token comes after one second: {allowed_at:?}");
        assert_eq!(std::mem::size_of::<TokenBucket>(), 16, "a connection carries two of these");
    }
}
