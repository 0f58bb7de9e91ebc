//! Server (and own) process cost from `/proc`: CPU seconds and resident memory.
//!
//! `bench --server-pid P` (repeatable: a hub plus several Links, or a peer server) samples each
//! process before connections open, once they are all up, and around the publish phase; the
//! report turns the differences into CPU-seconds per run, deliveries per CPU-second and bytes of
//! RSS per connection. Linux only; a pid that cannot be read counts as zero and is reported.

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/PID/stat` times. Linux has reported USER_HZ = 100 to user
/// space on every architecture for decades; reading `sysconf` would need libc for one constant.
const TICKS_PER_SEC: f64 = 100.0;

/// One sample of one or several processes (summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProcSample {
    /// User + system CPU seconds so far.
    pub cpu_secs: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Processes that could not be read.
    pub unreadable: u32,
}

impl ProcSample {
    /// Sums a sample of every pid in `pids`.
    pub(crate) fn of(pids: &[u32]) -> ProcSample {
        let mut total = ProcSample::default();
        for pid in pids {
            match (cpu_secs(&pid.to_string()), rss_bytes(&pid.to_string())) {
                (Some(cpu), Some(rss)) => {
                    total.cpu_secs += cpu;
                    total.rss_bytes += rss;
                }
                _ => total.unreadable += 1,
            }
        }
        total
    }

    /// This process.
    pub(crate) fn own() -> ProcSample {
        ProcSample {
            cpu_secs: cpu_secs("self").unwrap_or(0.0),
            rss_bytes: rss_bytes("self").unwrap_or(0),
            unreadable: 0,
        }
    }
}

/// utime + stime of `/proc/{who}/stat`, in seconds.
fn cpu_secs(who: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// Fields 14 and 15 (1-based) of a stat line; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ")" come field 3 (state) onwards: utime is the 12th of those, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// `VmRSS` of `/proc/{who}/status`, in bytes.
fn rss_bytes(who: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    parse_status_rss(&status)
}

fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_parse() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_status_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 * 1024 * 1024));
        let own = ProcSample::own();
        assert!(own.rss_bytes > 0);
        assert_eq!(ProcSample::of(&[u32::MAX]).unreadable, 1);
    }
}
