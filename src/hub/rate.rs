//! Publish rate limiting: one token bucket per API key (`hub.publish_rate`, 0 = off).
//!
//! Only the room's owner hub counts a publish (a non-owner forwards it unconsumed), so a
//! publish is charged once, and the limit applies per API key per owner hub. The bucket holds
//! one second's worth of tokens (burst = rate). Keys are the configured API keys (or the empty
//! key in dev mode), so the table is bounded by configuration; a limiter never sees an unknown
//! key because authentication runs first.

use std::collections::HashMap;
use std::sync::Mutex;

use linkcast_core::token_bucket::{Rate, TokenBucket, Verdict};

/// Token buckets keyed by API key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: u32,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    /// `rate` publishes per second per key; 0 = unlimited.
    pub(crate) fn new(rate: u32) -> Self {
        RateLimiter { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key` at `now_micros`; false when the bucket is empty. A key that keeps
    /// publishing into an empty bucket is simply refused again (HTTP has no connection to close).
    pub(crate) fn allow(&self, key: &str, now_micros: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        // A poisoned lock only means another handler panicked mid-update; the buckets are
        // still plain numbers, so keep using them.
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let rate = Rate::new(self.rate, self.rate);
        let bucket = buckets.entry(key.to_owned()).or_insert_with(|| TokenBucket::new(rate, now_micros));
        bucket.take(rate, now_micros) == Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_refills_and_keys_are_separate() {
        let limiter = RateLimiter::new(3);
        let t0 = 1_000_000;
        assert!((0..3).all(|_| limiter.allow("a", t0)));
        assert!(!limiter.allow("a", t0));
        assert!(limiter.allow("b", t0));
        assert!(limiter.allow("a", t0 + 400_000));
        assert!(!limiter.allow("a", t0 + 400_000));
        assert!((0..100).all(|_| !limiter.allow("a", t0 + 400_000)), "refusals in a row stay refusals");
        assert!((0..1000).all(|_| RateLimiter::new(0).allow("a", t0)));
    }
}
