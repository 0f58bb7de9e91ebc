//! Placement: which Links a room's members are steered to (the "LBS of the seeds").
//!
//! A [`Placement`] maps a room name to an ordered list of Links, best first. Every hub and every
//! process must agree on that list without talking to each other, so the mapping is a pure
//! function of (room, set of Links) built on a **stable** hash ([`StableHasher`]): the same
//! answer across processes, platforms and Rust versions (pinned by golden-value tests below).
//!
//! Implementations:
//! - [`HashRing`]: the default, the `consistent_hash_ring` crate with virtual nodes; adding or
//!   removing one of N Links moves about 1/N of the rooms.
//! - [`Rendezvous`]: highest-random-weight hashing, O(N) per lookup, for comparison in `sim/`.
//! - [`BoundedLoad`]: wraps either and skips, for *new* rooms, any Link whose load is above
//!   `c × mean` (consistent hashing with bounded loads), and remembers each room's group so that
//!   load changes never move a placed room. This is what the hub's `locate` uses.
//!
//! Placement only makes the set of Links per room small; delivery is decided by interest (see
//! `room.rs`), so a client that connects off its room's group still gets every message.
//!
//! Sans-IO: no sockets, no clocks, no randomness.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::ControlFlow;

use consistent_hash_ring::{Ring, RingBuilder};

/// A Link's cluster-wide id (from the cluster config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LinkId(pub u32);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link-{}", self.0)
    }
}

/// Virtual nodes per Link on the default ring.
///
/// Inserting into `consistent_hash_ring` is O(total vnodes), so building a 1,024-Link ring costs
/// O((N·v)²) bytes moved; 100 keeps that to a few seconds while [`BoundedLoad`] provides the
/// balance guarantee that more vnodes would only approximate.
pub const DEFAULT_VNODES: usize = 100;

/// Default `c` of [`BoundedLoad`]: a Link above 1.08 × mean load takes no new rooms.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.08;

/// Room → ordered Links. Implemented by [`HashRing`] and [`Rendezvous`].
pub trait Placement {
    /// Adds a Link; false if it was already present.
    fn add_link(&mut self, link: LinkId) -> bool;

    /// Removes a Link; false if it was absent.
    fn remove_link(&mut self, link: LinkId) -> bool;

    /// Number of Links.
    fn len(&self) -> usize;

    /// True without Links.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit` with every Link in preference order for `room`, each once, until it breaks.
    fn for_each_candidate(&self, room: &str, visit: &mut dyn FnMut(LinkId) -> ControlFlow<()>);

    /// Writes the best `k` Links for `room` into `out` (cleared first), best first.
    fn locate_into(&self, room: &str, k: usize, out: &mut Vec<LinkId>) {
        out.clear();
        if k == 0 {
            return;
        }
        self.for_each_candidate(room, &mut |link| {
            out.push(link);
            if out.len() >= k {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    }

    /// The best `k` Links for `room`, best first.
    fn locate(&self, room: &str, k: usize) -> Vec<LinkId> {
        let mut out = Vec::with_capacity(k);
        self.locate_into(room, k, &mut out);
        out
    }
}

/// A 64-bit hasher whose output depends only on the bytes written, never on the platform,
/// process or Rust version: FNV-1a over little-endian integers, finished with the murmur3
/// 64-bit finalizer for avalanche (FNV alone clusters on short keys).
#[derive(Clone, Copy, Debug)]
pub struct StableHasher {
    state: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher { state: FNV_OFFSET }
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state ^= u64::from(byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }
    fn write_u16(&mut self, i: u16) {
        self.write(&i.to_le_bytes());
    }
    fn write_u32(&mut self, i: u32) {
        self.write(&i.to_le_bytes());
    }
    fn write_u64(&mut self, i: u64) {
        self.write(&i.to_le_bytes());
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        fmix64(self.state)
    }
}

/// `BuildHasher` for [`StableHasher`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StableBuildHasher;

impl BuildHasher for StableBuildHasher {
    type Hasher = StableHasher;
    fn build_hasher(&self) -> StableHasher {
        StableHasher::default()
    }
}

/// The stable 64-bit hash of a byte string (used for room keys and by the simulator).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hasher = StableHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The default placement: a consistent hash ring with virtual nodes.
///
/// The room is hashed with [`stable_hash`] first and the ring is keyed by that `u64`, so the
/// result never depends on how `str` feeds a `Hasher` in some Rust version.
#[derive(Clone)]
pub struct HashRing {
    ring: Ring<LinkId, StableBuildHasher>,
}

impl HashRing {
    /// An empty ring with `vnodes` virtual nodes per Link.
    pub fn new(vnodes: usize) -> Self {
        HashRing { ring: RingBuilder::new(StableBuildHasher).vnodes(vnodes.max(1)).build() }
    }

    /// A ring of `links` with [`DEFAULT_VNODES`].
    pub fn with_links(links: impl IntoIterator<Item = LinkId>) -> Self {
        let mut ring = HashRing::new(DEFAULT_VNODES);
        for link in links {
            ring.add_link(link);
        }
        ring
    }
}

impl Placement for HashRing {
    fn add_link(&mut self, link: LinkId) -> bool {
        if self.ring.weight(&link).is_some() {
            return false;
        }
        self.ring.insert(link)
    }

    fn remove_link(&mut self, link: LinkId) -> bool {
        self.ring.remove(&link)
    }

    fn len(&self) -> usize {
        self.ring.len()
    }

    fn for_each_candidate(&self, room: &str, visit: &mut dyn FnMut(LinkId) -> ControlFlow<()>) {
        let key = stable_hash(room.as_bytes());
        // The first candidate is a plain binary search; only further ones need the crate's
        // replica walk (which allocates its `seen` set).
        let Some(first) = self.ring.try_get(key) else { return };
        if visit(*first).is_break() {
            return;
        }
        for link in self.ring.replicas(key).skip(1) {
            if visit(*link).is_break() {
                return;
            }
        }
    }

    fn locate_into(&self, room: &str, k: usize, out: &mut Vec<LinkId>) {
        out.clear();
        let key = stable_hash(room.as_bytes());
        match k {
            0 => {}
            1 => out.extend(self.ring.try_get(key).copied()),
            _ => out.extend(self.ring.replicas(key).take(k).copied()),
        }
    }
}

/// Rendezvous (highest random weight) hashing: each Link scores `hash(room, link)`, best first.
/// O(N log N) per full ordering; kept for comparison in the simulator.
#[derive(Clone, Debug, Default)]
pub struct Rendezvous {
    links: Vec<LinkId>,
}

impl Rendezvous {
    /// Rendezvous placement over `links`.
    pub fn with_links(links: impl IntoIterator<Item = LinkId>) -> Self {
        let mut placement = Rendezvous::default();
        for link in links {
            placement.add_link(link);
        }
        placement
    }

    fn score(room_key: u64, link: LinkId) -> u64 {
        let mut hasher = StableHasher::default();
        hasher.write_u64(room_key);
        hasher.write_u32(link.0);
        hasher.finish()
    }
}

impl Placement for Rendezvous {
    fn add_link(&mut self, link: LinkId) -> bool {
        match self.links.binary_search(&link) {
            Ok(_) => false,
            Err(at) => {
                self.links.insert(at, link);
                true
            }
        }
    }

    fn remove_link(&mut self, link: LinkId) -> bool {
        match self.links.binary_search(&link) {
            Ok(at) => {
                self.links.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    fn len(&self) -> usize {
        self.links.len()
    }

    fn for_each_candidate(&self, room: &str, visit: &mut dyn FnMut(LinkId) -> ControlFlow<()>) {
        let key = stable_hash(room.as_bytes());
        let mut scored: Vec<(u64, LinkId)> =
            self.links.iter().map(|&link| (Rendezvous::score(key, link), link)).collect();
        // Highest score first; ties (astronomically rare) broken by id for determinism.
        scored.sort_unstable_by(|a, b| b.cmp(a));
        for (_, link) in scored {
            if visit(link).is_break() {
                return;
            }
        }
    }

    fn locate_into(&self, room: &str, k: usize, out: &mut Vec<LinkId>) {
        out.clear();
        if k == 1 {
            let key = stable_hash(room.as_bytes());
            out.extend(self.links.iter().copied().max_by_key(|&link| (Rendezvous::score(key, link), link)));
            return;
        }
        self.for_each_candidate(room, &mut |link| {
            if out.len() < k {
                out.push(link);
            }
            if out.len() >= k {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    }
}

/// Consistent hashing with bounded loads, plus stickiness.
///
/// A room is placed once, on the first `k` candidates of the inner placement whose load is
/// below `ceil(c × (total + weight) / links)`; the group is remembered until [`release`] so
/// the hub's locate answers do not flap as loads move. Removing a Link forgets the groups that
/// contained it (they are re-placed on next lookup). Memory: one entry per placed room.
///
/// [`release`]: BoundedLoad::release
#[derive(Clone)]
pub struct BoundedLoad<P> {
    inner: P,
    factor: f64,
    load: HashMap<LinkId, u64>,
    total: u64,
    groups: HashMap<String, (Vec<LinkId>, u64)>,
}

impl<P: Placement> BoundedLoad<P> {
    /// Wraps `inner`; `factor` is `c` (≥ 1.0; values below are raised to 1.0).
    pub fn new(inner: P, factor: f64) -> Self {
        BoundedLoad { inner, factor: factor.max(1.0), load: HashMap::new(), total: 0, groups: HashMap::new() }
    }

    /// The wrapped pure placement.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Current load of a Link (sum of the weights of rooms placed on it).
    pub fn load(&self, link: LinkId) -> u64 {
        self.load.get(&link).copied().unwrap_or(0)
    }

    /// Number of rooms currently placed.
    pub fn placed_rooms(&self) -> usize {
        self.groups.len()
    }

    /// The group of `room`, placing it with `weight` if new. Best first; at most `k` Links.
    pub fn place(&mut self, room: &str, k: usize, weight: u64) -> &[LinkId] {
        if !self.groups.contains_key(room) {
            let group = self.choose(room, k, weight);
            for &link in &group {
                *self.load.entry(link).or_insert(0) += weight;
            }
            self.total += weight * group.len() as u64;
            self.groups.insert(room.to_owned(), (group, weight));
        }
        self.groups.get(room).map(|(group, _)| group.as_slice()).unwrap_or(&[])
    }

    /// The group `room` was placed on, if it is placed.
    pub fn group(&self, room: &str) -> Option<&[LinkId]> {
        self.groups.get(room).map(|(group, _)| group.as_slice())
    }

    /// Forgets `room`'s group and gives back its load (the room became empty).
    pub fn release(&mut self, room: &str) -> bool {
        let Some((group, weight)) = self.groups.remove(room) else { return false };
        for link in group {
            if let Some(load) = self.load.get_mut(&link) {
                *load = load.saturating_sub(weight);
            }
            self.total = self.total.saturating_sub(weight);
        }
        true
    }

    /// Adds a Link (new rooms may go to it; placed rooms stay where they are).
    pub fn add_link(&mut self, link: LinkId) -> bool {
        self.load.entry(link).or_insert(0);
        self.inner.add_link(link)
    }

    /// Removes a Link and forgets every group that contained it.
    pub fn remove_link(&mut self, link: LinkId) -> bool {
        let removed = self.inner.remove_link(link);
        self.load.remove(&link);
        let orphaned: Vec<String> =
            self.groups.iter().filter(|(_, (group, _))| group.contains(&link)).map(|(room, _)| room.clone()).collect();
        for room in orphaned {
            self.release(&room);
        }
        removed
    }

    fn choose(&self, room: &str, k: usize, weight: u64) -> Vec<LinkId> {
        let links = self.inner.len().max(1) as f64;
        let cap = (self.factor * (self.total + weight * k as u64) as f64 / links).ceil() as u64;
        let mut group = Vec::with_capacity(k);
        let mut overflow = Vec::new();
        self.inner.for_each_candidate(room, &mut |link| {
            if self.load(link) + weight <= cap.max(weight) {
                group.push(link);
            } else if overflow.len() < k {
                overflow.push(link);
            }
            if group.len() >= k {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        // Every Link is at its cap (only possible with k close to N): fall back to ring order.
        for link in overflow {
            if group.len() >= k {
                break;
            }
            group.push(link);
        }
        group
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn links(n: u32) -> impl Iterator<Item = LinkId> {
        (0..n).map(LinkId)
    }

    #[test]
    fn stable_hash_golden_values() {
        // These must never change: every hub and Link of a cluster, on any platform and Rust
        // version, has to agree on them. If this fails, placement changed for every room.
        let golden: [(&[u8], u64); 4] = [
            (b"", 0xefd0_1f60_ba99_2926),
            (b"lobby", 0xb4ea_f00b_b6c1_c767),
            (b"room-1", 0x656b_b5e5_6c35_0c3f),
            (b"event:final", 0xcb8f_1fd7_c2be_38fb),
        ];
        for (input, expected) in golden {
            assert_eq!(stable_hash(input), expected, "{:?}", std::str::from_utf8(input));
        }
    }

    #[test]
    fn placement_golden_values() {
        let ring = HashRing::with_links(links(8));
        let hrw = Rendezvous::with_links(links(8));
        let got: Vec<(u32, u32)> = ["lobby", "room-1", "event:final", "a", "b"]
            .iter()
            .map(|room| (ring.locate(room, 1)[0].0, hrw.locate(room, 1)[0].0))
            .collect();
        assert_eq!(got, GOLDEN_PLACEMENT.to_vec());
        assert_eq!(ring.locate("lobby", 4), vec![LinkId(4), LinkId(5), LinkId(3), LinkId(7)]);
    }

    /// (ring, rendezvous) owner of "lobby", "room-1", "event:final", "a", "b" over Links 0..8.
    const GOLDEN_PLACEMENT: [(u32, u32); 5] = [(4, 3), (3, 4), (7, 3), (2, 5), (1, 3)];

    #[test]
    fn locate_is_ordered_distinct_and_prefix_stable() {
        let ring = HashRing::with_links(links(16));
        for room in ["a", "b", "lobby", "x:y"] {
            let three = ring.locate(room, 3);
            let five = ring.locate(room, 5);
            assert_eq!(three.len(), 3);
            assert_eq!(&five[..3], &three[..]);
            let mut dedup = five.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), 5);
            // The lazy walk and locate_into agree.
            let mut walked = Vec::new();
            ring.for_each_candidate(room, &mut |l| {
                walked.push(l);
                if walked.len() == 5 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            });
            assert_eq!(walked, five);
        }
        assert!(HashRing::new(10).locate("a", 2).is_empty());
        assert_eq!(ring.locate("a", 100).len(), 16);
    }

    fn counts(placement: &dyn Placement, rooms: usize, n: usize) -> Vec<usize> {
        let mut counts = vec![0usize; n];
        let mut out = Vec::new();
        for r in 0..rooms {
            placement.locate_into(&format!("room-{r}"), 1, &mut out);
            counts[out[0].0 as usize] += 1;
        }
        counts
    }

    fn max_over_mean(counts: &[usize]) -> f64 {
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        *counts.iter().max().unwrap_or(&0) as f64 / mean
    }

    #[test]
    fn default_placement_is_balanced_64_links_100k_rooms() {
        let mut placement = BoundedLoad::new(HashRing::with_links(links(64)), DEFAULT_LOAD_FACTOR);
        let mut bounded = vec![0usize; 64];
        for r in 0..100_000 {
            let group = placement.place(&format!("room-{r}"), 1, 1);
            bounded[group[0].0 as usize] += 1;
        }
        let ratio = max_over_mean(&bounded);
        assert!(ratio <= 1.10, "bounded-load max/mean = {ratio}");
        // The pure ring alone is reasonable but not that tight; rendezvous is near-perfect.
        let ring_ratio = max_over_mean(&counts_of_ring());
        assert!(ring_ratio < 1.5, "ring max/mean = {ring_ratio}");
        let hrw_ratio = max_over_mean(&counts(&Rendezvous::with_links(links(64)), 100_000, 64));
        assert!(hrw_ratio < 1.10, "rendezvous max/mean = {hrw_ratio}");
    }

    fn counts_of_ring() -> Vec<usize> {
        counts(&HashRing::with_links(links(64)), 100_000, 64)
    }

    fn moved(before: &dyn Placement, after: &dyn Placement, rooms: usize) -> usize {
        (0..rooms)
            .filter(|r| {
                let room = format!("room-{r}");
                before.locate(&room, 1) != after.locate(&room, 1)
            })
            .count()
    }

    #[test]
    fn adding_or_removing_a_link_moves_about_one_nth() {
        let rooms = 20_000;
        let n = 32;
        let ring = HashRing::with_links(links(n));
        let mut grown = ring.clone();
        grown.add_link(LinkId(n));
        let mut shrunk = ring.clone();
        shrunk.remove_link(LinkId(3));
        let ideal = rooms as f64 / n as f64;
        for (name, m) in [("add", moved(&ring, &grown, rooms)), ("remove", moved(&ring, &shrunk, rooms))] {
            let ratio = m as f64 / ideal;
            assert!((0.5..1.6).contains(&ratio), "{name}: moved {m} rooms, ideal {ideal}");
        }
        // Removal moves only the rooms that were on the removed Link.
        for r in 0..rooms {
            let room = format!("room-{r}");
            let was = ring.locate(&room, 1)[0];
            if was != LinkId(3) {
                assert_eq!(shrunk.locate(&room, 1)[0], was);
            }
        }
    }

    #[test]
    fn bounded_load_is_sticky_and_forgets_removed_links() {
        let mut placement = BoundedLoad::new(HashRing::with_links(links(4)), 1.25);
        let first = placement.place("lobby", 2, 1).to_vec();
        assert_eq!(first.len(), 2);
        for r in 0..100 {
            placement.place(&format!("r{r}"), 2, 1);
        }
        assert_eq!(placement.place("lobby", 2, 1), &first[..]);
        placement.remove_link(first[0]);
        assert!(placement.group("lobby").is_none());
        let again = placement.place("lobby", 2, 1).to_vec();
        assert!(!again.contains(&first[0]));
        assert!(placement.release("lobby"));
        assert!(!placement.release("lobby"));
    }

    proptest! {
        #[test]
        fn locate_is_deterministic(room in "[a-z0-9]{1,40}", n in 1u32..40, k in 1usize..5) {
            let a = HashRing::with_links(links(n));
            let b = HashRing::with_links((0..n).rev().map(LinkId));
            prop_assert_eq!(a.locate(&room, k), b.locate(&room, k));
            let c = Rendezvous::with_links(links(n));
            let d = Rendezvous::with_links((0..n).rev().map(LinkId));
            prop_assert_eq!(c.locate(&room, k), d.locate(&room, k));
        }
    }
}
