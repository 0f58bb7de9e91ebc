//! Connections still in their handshake on the Link's WebSocket port (TCP accepted, TLS and the
//! HTTP upgrade not finished): how many, Link-wide and per source address.
//!
//! Every accepted socket takes a [`Handshake`] slot before anything is read from it and keeps it
//! until its upgrade is answered, which `upgrade.rs` bounds in time. Beyond
//! `link.max_handshakes` in all a new socket is closed at once; once half of those are taken, an
//! address already holding `link.max_handshakes_per_ip` is refused too — so a flood of half-open
//! upgrades from one host costs at most that many file descriptors for at most the handshake
//! timeout, and clients from other hosts still get in, while a burst from one address onto an
//! idle Link (a NAT, a load generator) is not refused.
//! Cold path (once per connection): a mutex-guarded map, never touched by delivery.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Handshakes in progress (see the module docs); one per Link, shared by its shards.
#[derive(Debug)]
pub(crate) struct Handshakes {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a handshake slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `link.max_handshakes` are in progress.
    Total,
    /// `link.max_handshakes_per_ip` are in progress from this address.
    PerAddress,
}

impl Refused {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::Total => "handshakes",
            Refused::PerAddress => "handshakes per address",
        }
    }
}

impl Handshakes {
    /// At most `max_total` handshakes, `max_per_ip` from one address (0 = 1).
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Handshakes { max_total: max_total.max(1), max_per_ip: max_per_ip.max(1), open: Mutex::new(Open::default()) }
    }

    /// A slot for a handshake from `ip`, held until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<Handshake, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(Refused::Total);
        }
        // One address may take more than its share only while the pool is not under pressure
        // (a load generator or a NAT bursting on an idle Link is fine).
        let pressure = open.total >= self.max_total / 2;
        let from_ip = open.per_ip.entry(ip).or_insert(0);
        if pressure && *from_ip >= self.max_per_ip {
            return Err(Refused::PerAddress);
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Handshake { handshakes: self.clone(), ip })
    }

    /// Handshakes in progress now.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// One handshake slot (see [`Handshakes::begin`]).
#[derive(Debug)]
pub(crate) struct Handshake {
    handshakes: Arc<Handshakes>,
    ip: IpAddr,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut open = self.handshakes.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_address_and_in_all() {
        let handshakes = Arc::new(Handshakes::new(4, 1));
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let first = handshakes.begin(a).expect("first");
        let second = handshakes.begin(a).expect("beyond its share while the pool is quiet");
        assert_eq!(handshakes.begin(a).err(), Some(Refused::PerAddress), "under pressure: no more than its share");
        drop(second);
        let second = handshakes.begin(b).expect("another address");
        let third = handshakes.begin("127.0.0.3".parse().expect("ip")).expect("a third address still gets in");
        let fourth = handshakes.begin("127.0.0.4".parse().expect("ip")).expect("and a fourth, up to the total");
        assert_eq!(handshakes.begin("127.0.0.5".parse().expect("ip")).err(), Some(Refused::Total));
        drop((first, second, third, fourth));
        assert_eq!(handshakes.total(), 0);
        assert!(handshakes.begin(a).is_ok());
    }
}
