//! Giving a table's memory back once most of its entries have left.
//!
//! A Rust hash table never shrinks by itself: after a join storm of a million connections
//! left, a Link's per-room and per-user tables kept the capacity of their peak (≈ 150 bytes for
//! every connection the Link once held, measured in issue 17), and so did the requests in
//! flight and the counts waiting for them. Each table that grows with connections calls
//! [`shrink_if_sparse`] after a removal: once it holds less than a quarter of its capacity, it is
//! shrunk to twice its entries. The next shrink then needs three quarters of those to leave
//! again, and the next growth half as many to arrive, so the rehashing stays amortized O(1) per
//! insert and removal; tables below [`MIN_CAPACITY`] are left as they are. (`capacity()` is a
//! lower bound of what a table holds: a removal can leave a tombstone that lowers it until the
//! next rehash, so a table full of them shrinks later, never wrongly.)

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

/// Tables with less capacity than this are not worth shrinking.
pub const MIN_CAPACITY: usize = 256;

/// Whether a table holding `len` entries with room for `capacity` should shrink.
pub fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity >= MIN_CAPACITY && len < capacity / 4
}

/// Shrinks `map` to twice its entries when it is [sparse](is_sparse).
pub fn shrink_if_sparse<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if is_sparse(map.len(), map.capacity()) {
        map.shrink_to(map.len() * 2);
    }
}

/// [`shrink_if_sparse`] for a set.
pub fn shrink_set_if_sparse<K: Eq + Hash, S: BuildHasher>(set: &mut HashSet<K, S>) {
    if is_sparse(set.len(), set.capacity()) {
        set.shrink_to(set.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_emptied_after_a_storm_gives_its_capacity_back() {
        let mut map: HashMap<u64, u64> = (0..100_000).map(|i| (i, i)).collect();
        let peak = map.capacity();
        for i in 0..100_000 {
            map.remove(&i);
            shrink_if_sparse(&mut map);
        }
        assert!(map.capacity() < MIN_CAPACITY, "{} of a peak of {peak}", map.capacity());
    }

    #[test]
    fn shrinking_is_amortized_and_leaves_room_to_grow() {
        let mut map: HashMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
        let mut shrinks = 0;
        let mut capacity = map.capacity();
        for i in 0..9_000 {
            map.remove(&i);
            shrink_if_sparse(&mut map);
            // (A removal may lower `capacity()` by one: a slot left as a tombstone until the
            // next rehash. A shrink halves it at least.)
            if map.capacity() < capacity / 2 {
                shrinks += 1;
                capacity = map.capacity();
                assert!(capacity >= map.len() * 2, "shrunk to twice its entries: {} for {}", capacity, map.len());
            }
        }
        assert!((1..=3).contains(&shrinks), "{shrinks} shrinks for 9,000 removals");
        // Small tables are left alone; a quarter full is not sparse yet.
        assert!(!is_sparse(1, MIN_CAPACITY - 1));
        assert!(!is_sparse(1_000, 4_000) && is_sparse(999, 4_000));
    }

    #[test]
    fn sets_shrink_too() {
        let mut set: HashSet<u64> = (0..10_000).collect();
        set.retain(|k| *k < 10);
        shrink_set_if_sparse(&mut set);
        assert!(set.capacity() < MIN_CAPACITY);
    }
}
