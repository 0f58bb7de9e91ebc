//! The one place linkcast reads the wall clock.
//!
//! The core (`linkcast-core`) never reads a clock: every state machine takes `now_micros` as an
//! argument, so tests and the simulator can drive time. The runtimes call [`now_micros`] here and
//! pass the value in. Wall time (not a monotonic clock) because the values cross processes: a
//! message's `ts`, a JWT's `exp`, a bench payload's send stamp.

/// Microseconds since the Unix epoch (0 if the system clock is before 1970).
pub(crate) fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Seconds since the Unix epoch: what token expiries (`exp`) are in.
pub(crate) fn now_secs() -> u64 {
    now_micros() / 1_000_000
}
