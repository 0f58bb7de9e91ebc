//! Caps on connections that have not authenticated yet, shared by the hub's Link port
//! (`hub/links.rs`) and the Link's QUIC client port (`link/quic_clients.rs`) — and, in the
//! "share under pressure" form, by the Link's WebSocket port (`link/upgrade.rs`), where a slot is
//! held from the TCP accept until the upgrade is answered.
//!
//! An accept loop asks [`PreAuthCaps::try_admit`] for every `quinn::Incoming` *before* the
//! handshake: it gets a [`PreAuthSlot`] (one of `global` permits and one of `per_ip` for the
//! source address) or `None`, and then refuses the connection at once (`Incoming::refuse`, no
//! handshake work). The slot travels with the connection and is dropped when its `Hello` was
//! accepted or refused, or when the one pre-auth deadline passed, which returns both permits.
//! So one source address holds at most `per_ip` half-open connections, and all sources together
//! at most `global`; authenticated connections are counted elsewhere. With
//! [`PreAuthCaps::shared_under_pressure`] the per-address cap applies only once half of `global`
//! is taken: a burst from one address onto an idle listener (a NAT, a load generator) is not
//! refused, while a flood from one host still leaves half the slots to the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The pre-auth caps of one listener.
#[derive(Clone, Debug)]
pub(crate) struct PreAuthCaps {
    global: Arc<Semaphore>,
    global_cap: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_cap: usize,
    /// The per-address cap applies once this many slots are taken (0: always).
    per_ip_from: usize,
}

/// Why a slot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// All `global` slots are taken.
    Total,
    /// The source address holds its `per_ip` slots.
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

/// A connection's place under the caps until it authenticates; returned on drop.
#[derive(Debug)]
pub(crate) struct PreAuthSlot {
    _global: OwnedSemaphorePermit,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PreAuthCaps {
    /// At most `global` connections before auth, at most `per_ip` from one source address.
    pub(crate) fn new(global: usize, per_ip: usize) -> Self {
        let global = global.max(1);
        PreAuthCaps { global: Arc::new(Semaphore::new(global)), global_cap: global, per_ip: Arc::default(), per_ip_cap: per_ip.max(1), per_ip_from: 0 }
    }

    /// As [`PreAuthCaps::new`], the per-address cap applying only once half of `global` is taken.
    pub(crate) fn shared_under_pressure(global: usize, per_ip: usize) -> Self {
        let caps = PreAuthCaps::new(global, per_ip);
        PreAuthCaps { per_ip_from: caps.global_cap / 2, ..caps }
    }

    /// A slot for a connection from `ip`, or `None` when either cap is reached. IPv6 sources
    /// are counted per /64 (one subscriber's usual allocation), IPv4-mapped ones as IPv4.
    pub(crate) fn try_admit(&self, ip: IpAddr) -> Option<PreAuthSlot> {
        self.admit(ip).ok()
    }

    /// [`PreAuthCaps::try_admit`], saying which cap refused.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<PreAuthSlot, Refused> {
        let ip = source_key(ip);
        let taken = self.global_cap - self.global.available_permits();
        let global = self.global.clone().try_acquire_owned().map_err(|_| Refused::Total)?;
        let mut counts = lock(&self.per_ip);
        let count = counts.entry(ip).or_insert(0);
        if taken >= self.per_ip_from && *count >= self.per_ip_cap {
            return Err(Refused::PerAddress);
        }
        *count += 1;
        Ok(PreAuthSlot { _global: global, per_ip: self.per_ip.clone(), ip })
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.per_ip);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The address a source is counted under: IPv4 as is, IPv6 by its /64 prefix.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The map stays consistent through a panic elsewhere (each update is one statement).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_is_capped_and_slots_come_back() {
        let caps = PreAuthCaps::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = caps.try_admit(a);
        let second = caps.try_admit(a);
        assert!(first.is_some() && second.is_some());
        assert!(caps.try_admit(a).is_none(), "per-address cap");
        let other = caps.try_admit(b);
        assert!(other.is_some(), "another address still gets in");
        assert!(caps.try_admit(b).is_none(), "global cap");
        drop(first);
        assert!(caps.try_admit(a).is_some(), "a returned slot is reusable");
    }

    #[test]
    fn under_pressure_one_address_gets_its_share_only() {
        let caps = PreAuthCaps::shared_under_pressure(4, 1);
        let a: IpAddr = [127, 0, 0, 1].into();
        let first = caps.admit(a).expect("first");
        let second = caps.admit(a).expect("beyond its share while the pool is quiet");
        assert_eq!(caps.admit(a).err(), Some(Refused::PerAddress), "under pressure: no more than its share");
        let third = caps.admit([127, 0, 0, 3].into()).expect("another address still gets in");
        let fourth = caps.admit([127, 0, 0, 4].into()).expect("up to the total");
        assert_eq!(caps.admit([127, 0, 0, 5].into()).err(), Some(Refused::Total));
        drop((first, second, third, fourth));
        assert!(caps.admit(a).is_ok(), "slots come back");
    }

    #[test]
    fn ipv6_sources_count_per_slash_64() {
        let caps = PreAuthCaps::new(10, 1);
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _held = caps.try_admit(one);
        assert!(caps.try_admit(same_64).is_none());
        assert!(caps.try_admit(other_64).is_some());
        let _v4 = caps.try_admit("127.0.0.5".parse().expect("ip"));
        assert!(caps.try_admit("::ffff:127.0.0.5".parse().expect("ip")).is_none(), "mapped IPv4 is IPv4");
    }
}
