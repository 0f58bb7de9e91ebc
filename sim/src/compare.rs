//! Placement comparison: where would the members of many rooms land under each strategy, and
//! what moves when a Link is added or removed?
//!
//! Computed next to the event-driven run (same seed, no virtual time): `cmp_rooms` rooms
//! (default 10,000) with Zipf(1)-distributed sizes summing to `cmp_members`, placed on the run's
//! Links by
//!
//! - `hash_ring`: the core's [`HashRing`] (consistent hashing, virtual nodes), `k` Links per room;
//! - `rendezvous`: the core's [`Rendezvous`] (highest random weight), `k` Links per room;
//! - `bounded_load`: the core's [`BoundedLoad`]`<HashRing>` — what the hub's locate uses (sticky
//!   groups, no Link above `c ×` mean rooms);
//! - `random`: the room-agnostic baseline — each member on a seeded-random Link
//!   (`hash(seed, room, member) mod N`), what a plain L4 load balancer does.
//!
//! A room's members are split round-robin over its group. For each strategy: rooms and members per
//! Link (max / mean), Links touched per room (= hub sends per publish, publish-weighted by room
//! size), and rooms / members moved when Link `N` is added and when Link 0 is removed.
//! No sockets, no clocks; a pure function of (config, seed).

use linkcast_core::placement::{stable_hash, BoundedLoad, HashRing, LinkId, Placement, Rendezvous};

use crate::scenario::zipf_cdf;

/// Max and mean of a per-Link quantity.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Balance {
    /// Largest Link.
    pub max: u64,
    /// Mean over Links.
    pub mean: f64,
    /// `max / mean` (1.0 = perfect balance).
    pub max_over_mean: f64,
}

impl Balance {
    /// Max and mean of `values`.
    pub fn of(values: &[u64]) -> Balance {
        let max = values.iter().copied().max().unwrap_or(0);
        let mean = if values.is_empty() { 0.0 } else { values.iter().sum::<u64>() as f64 / values.len() as f64 };
        Balance { max, mean: round3(mean), max_over_mean: if mean > 0.0 { round3(max as f64 / mean) } else { 0.0 } }
    }
}

/// One strategy's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StrategyStats {
    /// Strategy name.
    pub name: &'static str,
    /// Rooms with members per Link.
    pub rooms_per_link: Balance,
    /// Members per Link.
    pub members_per_link: Balance,
    /// Mean Links touched per room (unweighted).
    pub links_touched_per_room_mean: f64,
    /// Most Links touched by one room.
    pub links_touched_per_room_max: u64,
    /// Hub sends per publish when rooms publish in proportion to their size.
    pub hub_sends_per_publish: f64,
    /// Rooms whose Links changed when a Link was added.
    pub rooms_moved_on_add: u64,
    /// Members whose Link changed when a Link was added.
    pub members_moved_on_add: u64,
    /// Rooms whose Links changed when Link 0 was removed.
    pub rooms_moved_on_remove: u64,
    /// Members whose Link changed when Link 0 was removed (its own members must move).
    pub members_moved_on_remove: u64,
}

/// The whole comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlacementComparison {
    /// Rooms placed.
    pub rooms: u32,
    /// Members over all rooms.
    pub members: u64,
    /// Links.
    pub links: u32,
    /// Links per room group.
    pub group_size: usize,
    /// Hub sends per publish in the naive design (one per member), publish-weighted.
    pub naive_sends_per_publish: f64,
    /// Per strategy.
    pub strategies: Vec<StrategyStats>,
}

/// Assignment of every member of every room to a Link: `links_of[room]` holds one Link per
/// member (round-robin over the room's group, or drawn per member for `random`).
struct Assignment {
    links_of: Vec<Vec<u32>>,
}

/// Runs the comparison.
pub fn compare(rooms: u32, members: u64, links: u32, group_size: usize, load_factor: f64, seed: u64) -> PlacementComparison {
    let rooms = rooms.max(1);
    let links = links.max(2);
    let cdf = zipf_cdf(rooms);
    let mut sizes: Vec<u64> = Vec::with_capacity(rooms as usize);
    let mut prev = 0.0;
    for c in &cdf {
        sizes.push(((c - prev) * members as f64).round().max(1.0) as u64);
        prev = *c;
    }
    let names: Vec<String> = (0..rooms).map(|i| format!("room-{i}")).collect();
    let total: u64 = sizes.iter().sum();
    let naive = sizes.iter().map(|&s| (s * s) as f64).sum::<f64>() / total as f64;
    let all: Vec<LinkId> = (0..links).map(LinkId).collect();
    let grow: Vec<LinkId> = (0..=links).map(LinkId).collect();
    let shrink: Vec<LinkId> = (1..links).map(LinkId).collect();
    let k = group_size.max(1);

    let by_group = |groups: &dyn Fn(&str) -> Vec<u32>| -> Assignment {
        Assignment {
            links_of: names
                .iter()
                .zip(&sizes)
                .map(|(name, &size)| {
                    let group = groups(name);
                    (0..size).map(|j| group[(j % group.len() as u64) as usize]).collect()
                })
                .collect(),
        }
    };
    let ring = |set: &[LinkId]| {
        let placement = HashRing::with_links(set.iter().copied());
        by_group(&|room| placement.locate(room, k).iter().map(|l| l.0).collect())
    };
    let rendezvous = |set: &[LinkId]| {
        let placement = Rendezvous::with_links(set.iter().copied());
        by_group(&|room| placement.locate(room, k).iter().map(|l| l.0).collect())
    };
    let random = |n: u32, skip_zero: bool| Assignment {
        links_of: names
            .iter()
            .zip(&sizes)
            .map(|(name, &size)| {
                let room_key = stable_hash(name.as_bytes()) ^ seed.rotate_left(13);
                (0..size)
                    .map(|j| {
                        let h = stable_hash(&(room_key ^ j.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
                        if skip_zero {
                            1 + (h % u64::from(n - 1)) as u32
                        } else {
                            (h % u64::from(n)) as u32
                        }
                    })
                    .collect()
            })
            .collect(),
    };

    // Bounded load is stateful: place every room, then add / remove on the same instance.
    let bounded = || {
        let mut placement = BoundedLoad::new(HashRing::with_links(all.iter().copied()), load_factor);
        let base = place_all(&mut placement, &names, &sizes, k);
        let mut added = placement.clone();
        let _ = added.add_link(LinkId(links));
        let after_add = place_all(&mut added, &names, &sizes, k);
        let mut removed = placement;
        let _ = removed.remove_link(LinkId(0));
        let after_remove = place_all(&mut removed, &names, &sizes, k);
        (base, after_add, after_remove)
    };

    let mut strategies = Vec::new();
    strategies.push(stats("hash_ring", links, &sizes, &ring(&all), &ring(&grow), &ring(&shrink)));
    strategies.push(stats("rendezvous", links, &sizes, &rendezvous(&all), &rendezvous(&grow), &rendezvous(&shrink)));
    let (base, add, remove) = bounded();
    strategies.push(stats("bounded_load", links, &sizes, &base, &add, &remove));
    strategies.push(stats("random", links, &sizes, &random(links, false), &random(links + 1, false), &random(links, true)));
    PlacementComparison { rooms, members: total, links, group_size: k, naive_sends_per_publish: round3(naive), strategies }
}

fn place_all(placement: &mut BoundedLoad<HashRing>, names: &[String], sizes: &[u64], k: usize) -> Assignment {
    Assignment {
        links_of: names
            .iter()
            .zip(sizes)
            .map(|(name, &size)| {
                let group: Vec<u32> = placement.place(name, k, 1).iter().map(|l| l.0).collect();
                (0..size).map(|j| group[(j % group.len() as u64) as usize]).collect()
            })
            .collect(),
    }
}

fn stats(name: &'static str, links: u32, sizes: &[u64], base: &Assignment, add: &Assignment, remove: &Assignment) -> StrategyStats {
    let n = links as usize;
    let mut rooms_per_link = vec![0u64; n];
    let mut members_per_link = vec![0u64; n];
    let mut touched_sum = 0u64;
    let mut touched_max = 0u64;
    let mut weighted = 0f64;
    let total: u64 = sizes.iter().sum();
    let mut seen = vec![false; n + 1];
    for (room, assigned) in base.links_of.iter().enumerate() {
        seen.iter_mut().for_each(|s| *s = false);
        let mut touched = 0u64;
        for &l in assigned {
            members_per_link[l as usize] += 1;
            if !seen[l as usize] {
                seen[l as usize] = true;
                touched += 1;
                rooms_per_link[l as usize] += 1;
            }
        }
        touched_sum += touched;
        touched_max = touched_max.max(touched);
        weighted += touched as f64 * sizes[room] as f64;
    }
    let moved = |other: &Assignment| -> (u64, u64) {
        let mut rooms = 0;
        let mut members = 0;
        for (a, b) in base.links_of.iter().zip(&other.links_of) {
            let m = a.iter().zip(b).filter(|(x, y)| x != y).count() as u64;
            members += m;
            rooms += u64::from(m > 0);
        }
        (rooms, members)
    };
    let (rooms_moved_on_add, members_moved_on_add) = moved(add);
    let (rooms_moved_on_remove, members_moved_on_remove) = moved(remove);
    StrategyStats {
        name,
        rooms_per_link: Balance::of(&rooms_per_link),
        members_per_link: Balance::of(&members_per_link),
        links_touched_per_room_mean: round3(touched_sum as f64 / sizes.len().max(1) as f64),
        links_touched_per_room_max: touched_max,
        hub_sends_per_publish: round3(weighted / total.max(1) as f64),
        rooms_moved_on_add,
        members_moved_on_add,
        rooms_moved_on_remove,
        members_moved_on_remove,
    }
}

/// Rounds to 3 decimals so reports stay short and stable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_strategies_move_little_and_random_moves_a_lot() {
        let c = compare(500, 20_000, 8, 2, 1.08, 9);
        let get = |name: &str| c.strategies.iter().find(|s| s.name == name).expect("strategy present").clone();
        let ring = get("hash_ring");
        let random = get("random");
        let bounded = get("bounded_load");
        assert!(c.members.abs_diff(20_000) < 100, "Zipf sizes round to about the total");
        assert!(ring.links_touched_per_room_max <= 2);
        assert!(random.links_touched_per_room_max == 8, "big rooms touch every Link under random");
        assert!(ring.rooms_moved_on_add < random.rooms_moved_on_add / 2, "{} vs {}", ring.rooms_moved_on_add, random.rooms_moved_on_add);
        assert_eq!(bounded.rooms_moved_on_add, 0, "bounded load is sticky");
        assert!(ring.hub_sends_per_publish <= 2.0 && c.naive_sends_per_publish > 100.0);
        assert!(bounded.rooms_per_link.max_over_mean <= ring.rooms_per_link.max_over_mean + 1e-9);
    }
}
