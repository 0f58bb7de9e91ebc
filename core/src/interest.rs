//! A Link's interest in rooms: how many of its members are in each room, on which shards, and
//! what the rooms' owner hubs must be told about it (DESIGN "interest set"). No sockets, no
//! clocks.
//!
//! Data flow: the Link's coordinator (and the simulator's model of a Link) reports members
//! coming and going with [`LinkInterest::handle_join`] / [`LinkInterest::handle_leave`]. They
//! return the [`Announcement`] that must reach the owner hub *right away*:
//! - a join while the hub does not know the Link is interested in the room (its first member,
//!   or an earlier announcement that could not be queued): the announcement goes before the
//!   join, on the same ordered channel, so the hub counts the Link in before it answers the
//!   join (the no-loss join of `link_session`);
//! - the last member leaving: the hub stops sending the room to this Link.
//!
//! Any other change of a room's count only marks the room *dirty*;
//! [`LinkInterest::poll_announcements`] hands out every dirty room with its current count (the
//! coordinator calls it once a second, so a busy room costs at most one announcement per
//! second; the simulator after every change). The caller says with
//! [`LinkInterest::handle_sent`] whether each announcement was queued; one that was not stays
//! owed. After a hub (re)connects, [`LinkInterest::handle_hub_up`] owes it every room it owns
//! that still has members, and forgets the ones without (a new hub connection starts with no
//! interest). A room is forgotten once it has no member and its removal was sent.
//!
//! Rooms are keys of any hashable type: room names at the Link, room indices in the simulator.
//!
//! Each room also carries a payload of the caller's (`V`, default `()`): the Link's coordinator
//! keeps its position in the room there ([`LinkInterest::payload`]), so a room is one entry of
//! one table, not two (every connection brings a room of its own, `user:{sub}`: two tables
//! cost it ≈ 75 bytes more). The payload is reset whenever the room has no member: a room
//! whose removal is still owed keeps nothing for the next member who joins it.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::sparse_tables::{shrink_if_sparse, shrink_set_if_sparse};

/// "Tell `room`'s owner hub that this Link has `members` members there" (0: interest removed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Announcement<K> {
    /// The room.
    pub room: K,
    /// The Link's member count in the room.
    pub members: u64,
}

/// One room's members at the Link, and the caller's payload.
#[derive(Debug, Default)]
struct RoomMembers<V> {
    /// Members per shard: the shards that get the room's messages are those with members.
    per_shard: PerShard,
    /// Members on all shards (32 bits, like `per_shard`: a Link holds far fewer connections).
    total: u32,
    /// The count the owner hub was last told (0: the hub does not count this Link in).
    announced: u32,
    payload: V,
}

/// A room's members per shard. Most rooms on a Link are a user's personal room, whose members
/// (usually one) are all on one shard: that shard and its count are held inline. A room that
/// gets members on a second shard gets a count per shard of the Link (a boxed slice: a block of
/// 4 bytes per shard, which every personal room paid before).
#[derive(Debug)]
enum PerShard {
    One { shard: u32, count: u32 },
    Many(Box<[u32]>),
}

impl Default for PerShard {
    fn default() -> Self {
        PerShard::One { shard: 0, count: 0 }
    }
}

impl PerShard {
    /// Members on `shard`.
    fn get(&self, shard: usize) -> u32 {
        match self {
            PerShard::One { shard: one, count } => {
                if *one as usize == shard {
                    *count
                } else {
                    0
                }
            }
            PerShard::Many(counts) => counts.get(shard).copied().unwrap_or(0),
        }
    }

    /// One member more on `shard`, of a Link of `shards` shards.
    fn add(&mut self, shard: usize, shards: usize) {
        match self {
            PerShard::One { count: 0, .. } => *self = PerShard::One { shard: shard as u32, count: 1 },
            PerShard::One { shard: one, count } if *one as usize == shard => *count += 1,
            PerShard::One { shard: one, count } => {
                let mut counts = vec![0; shards.max(shard + 1).max(*one as usize + 1)];
                counts[*one as usize] = *count;
                counts[shard] = 1;
                *self = PerShard::Many(counts.into_boxed_slice());
            }
            PerShard::Many(counts) => {
                if counts.len() <= shard {
                    let mut grown = std::mem::take(counts).into_vec();
                    grown.resize(shards.max(shard + 1), 0);
                    *counts = grown.into_boxed_slice();
                }
                counts[shard] += 1;
            }
        }
    }

    /// One member less on `shard` (none below zero).
    fn remove(&mut self, shard: usize) {
        match self {
            PerShard::One { shard: one, count } if *one as usize == shard => *count = count.saturating_sub(1),
            PerShard::One { .. } => {}
            PerShard::Many(counts) => {
                if let Some(count) = counts.get_mut(shard) {
                    *count = count.saturating_sub(1);
                }
            }
        }
    }
}

/// A Link's member counts per room and the announcements it owes (see the module docs).
#[derive(Debug)]
pub struct LinkInterest<K, V = ()> {
    shards: usize,
    /// Boxed: a hash table keeps up to half its slots empty, and most rooms at a Link are a
    /// user's personal room, one per connection: a 72-byte entry in every slot cost each
    /// ≈ 130–150 bytes of table; a slot is now the name and a pointer.
    rooms: HashMap<K, Box<RoomMembers<V>>>,
    /// Rooms whose count the hub must still be told; every key is also in `rooms`.
    dirty: HashSet<K>,
}

impl<K: Hash + Eq + Clone, V: Default> LinkInterest<K, V> {
    /// No interest, for a Link of `shards` shards.
    pub fn new(shards: usize) -> Self {
        LinkInterest { shards, rooms: HashMap::new(), dirty: HashSet::new() }
    }

    /// Members of `room` on this Link.
    pub fn members<Q>(&self, room: &Q) -> u64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rooms.get(room).map_or(0, |r| u64::from(r.total))
    }

    /// The caller's payload of `room` (a room with members, or with a removal still owed: then
    /// the default).
    pub fn payload<Q>(&self, room: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rooms.get(room).map(|r| &r.payload)
    }

    /// The caller's payload of `room`, to change.
    pub fn payload_mut<Q>(&mut self, room: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rooms.get_mut(room).map(|r| &mut r.payload)
    }

    /// Every known room with its member count and payload.
    pub fn rooms(&self) -> impl Iterator<Item = (&K, u64, &V)> {
        self.rooms.iter().map(|(room, r)| (room, u64::from(r.total), &r.payload))
    }

    /// Every known room with its member count and payload, to change.
    pub fn rooms_mut(&mut self) -> impl Iterator<Item = (&K, u64, &mut V)> {
        self.rooms.iter_mut().map(|(room, r)| (room, u64::from(r.total), &mut r.payload))
    }

    /// True when `room`'s owner hub counts this Link in (an announcement with members was sent
    /// since the hub last (re)connected).
    pub fn is_announced<Q>(&self, room: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rooms.get(room).is_some_and(|r| r.announced > 0)
    }

    /// Members of `room` on `shard`.
    pub fn members_on<Q>(&self, room: &Q, shard: usize) -> u64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rooms.get(room).map_or(0, |r| u64::from(r.per_shard.get(shard)))
    }

    /// Rooms known (with members, or with a removal still owed).
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// True when no room is known.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// A member on `shard` joined `room`. Returns the announcement that must go to the owner hub
    /// before the join when the hub does not count this Link in yet; otherwise the room is
    /// marked dirty.
    pub fn handle_join<Q>(&mut self, room: &Q, shard: usize) -> Option<Announcement<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let key = self.rooms.get_key_value(room).map_or_else(|| room.to_owned(), |(key, _)| key.clone());
        self.join_with_key(key, shard)
    }

    /// [`LinkInterest::handle_join`] of a room whose name the caller already holds as a key (a
    /// shared name: kept as is when the room is new, so the table makes no copy of it).
    pub fn handle_join_key(&mut self, room: K, shard: usize) -> Option<Announcement<K>> {
        let key = self.rooms.get_key_value(&room).map_or(room, |(key, _)| key.clone());
        self.join_with_key(key, shard)
    }

    /// The join, `key` being the table's own key for the room if it has one.
    fn join_with_key(&mut self, key: K, shard: usize) -> Option<Announcement<K>> {
        let shards = self.shards;
        let state = self.rooms.entry(key.clone()).or_default();
        if state.total == 0 {
            // A room without members kept nothing for this one (its removal may still be owed).
            state.payload = V::default();
        }
        state.per_shard.add(shard, shards);
        state.total += 1;
        if state.announced == 0 {
            self.dirty.remove(&key);
            Some(Announcement { room: key, members: u64::from(state.total) })
        } else {
            self.dirty.insert(key);
            None
        }
    }

    /// A member on `shard` left `room`. Returns the removal to send now when it was the room's
    /// last member; otherwise the room is marked dirty. Unknown rooms are ignored.
    pub fn handle_leave<Q>(&mut self, room: &Q, shard: usize) -> Option<Announcement<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (key, _) = self.rooms.get_key_value(room)?;
        let key = key.clone();
        let state = self.rooms.get_mut(room)?;
        state.per_shard.remove(shard);
        state.total = state.total.saturating_sub(1);
        if state.total == 0 {
            state.payload = V::default();
            self.dirty.remove(room);
            Some(Announcement { room: key, members: 0 })
        } else {
            self.dirty.insert(key);
            None
        }
    }

    /// Whether `announcement` was queued to the hub. Sent: the hub counts what it says (and a
    /// room without members is forgotten). Not sent: the room stays owed.
    pub fn handle_sent(&mut self, announcement: &Announcement<K>, sent: bool) {
        let Some(state) = self.rooms.get_mut(&announcement.room) else { return };
        if !sent {
            self.dirty.insert(announcement.room.clone());
            return;
        }
        state.announced = u32::try_from(announcement.members).unwrap_or(u32::MAX);
        if u64::from(state.total) == announcement.members {
            self.dirty.remove(&announcement.room);
        }
        if state.total == 0 && announcement.members == 0 {
            self.rooms.remove(&announcement.room);
            shrink_if_sparse(&mut self.rooms);
        }
        shrink_set_if_sparse(&mut self.dirty);
    }

    /// Hands out every owed announcement, with the rooms' current counts, into `out`; report
    /// each with [`LinkInterest::handle_sent`].
    pub fn poll_announcements(&mut self, out: &mut Vec<Announcement<K>>) {
        for room in self.dirty.drain() {
            let members = self.rooms.get(&room).map_or(0, |r| u64::from(r.total));
            out.push(Announcement { room, members });
        }
    }

    /// `room` moved to another owner hub (a new owner map), which knows nothing of this Link:
    /// returns the announcement it must be sent now (report it with
    /// [`LinkInterest::handle_sent`]), or `None` when the room has no members (it is forgotten:
    /// the old owner drops this Link's interest itself, or is told by the caller).
    pub fn handle_owner_moved<Q>(&mut self, room: &Q) -> Option<Announcement<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (key, state) = self.rooms.get_key_value(room)?;
        if state.total == 0 {
            self.dirty.remove(room);
            self.rooms.remove(room);
            shrink_if_sparse(&mut self.rooms);
            return None;
        }
        let announcement = Announcement { room: key.clone(), members: u64::from(state.total) };
        if let Some(state) = self.rooms.get_mut(room) {
            state.announced = 0;
        }
        self.dirty.remove(room);
        Some(announcement)
    }

    /// A hub (re)connected with no knowledge of this Link: every room it `owns` that has members
    /// is announced again (pushed on `out`; report each with [`LinkInterest::handle_sent`]), every
    /// one without members is forgotten.
    pub fn handle_hub_up(&mut self, owns: impl Fn(&K) -> bool, out: &mut Vec<Announcement<K>>) {
        let dirty = &mut self.dirty;
        self.rooms.retain(|room, state| {
            if !owns(room) {
                return true;
            }
            state.announced = 0;
            if state.total == 0 {
                dirty.remove(room);
                return false;
            }
            out.push(Announcement { room: room.clone(), members: u64::from(state.total) });
            true
        });
        shrink_if_sparse(&mut self.rooms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(room: &str, members: u64) -> Option<Announcement<String>> {
        Some(Announcement { room: room.to_owned(), members })
    }

    fn polled(interest: &mut LinkInterest<String>) -> Vec<Announcement<String>> {
        let mut out = Vec::new();
        interest.poll_announcements(&mut out);
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }

    #[test]
    fn first_member_in_and_last_out_are_announced_at_once() {
        let mut interest: LinkInterest<String> = LinkInterest::new(2);
        let first = interest.handle_join("r", 0);
        assert_eq!(first, announce("r", 1));
        interest.handle_sent(&first.expect("first"), true);
        assert_eq!(interest.handle_join("r", 1), None, "the hub counts the Link in already");
        assert_eq!((interest.members_on("r", 0), interest.members_on("r", 1)), (1, 1));
        assert_eq!(interest.handle_leave("r", 0), None);
        let last = interest.handle_leave("r", 1);
        assert_eq!(last, announce("r", 0));
        interest.handle_sent(&last.expect("last"), true);
        assert!(interest.is_empty(), "a room without members is forgotten once its removal is sent");
        assert!(polled(&mut interest).is_empty(), "nothing owed");
    }

    #[test]
    fn count_changes_are_owed_until_polled_once() {
        let mut interest: LinkInterest<String> = LinkInterest::new(1);
        let first = interest.handle_join("r", 0).expect("first");
        interest.handle_sent(&first, true);
        for _ in 0..5 {
            assert_eq!(interest.handle_join("r", 0), None);
        }
        assert_eq!(interest.handle_leave("r", 0), None);
        let owed = polled(&mut interest);
        assert_eq!(owed, vec![Announcement { room: "r".to_owned(), members: 5 }], "one announcement, latest count");
        interest.handle_sent(&owed[0], true);
        assert!(polled(&mut interest).is_empty());
    }

    #[test]
    fn counts_per_shard_follow_joins_and_leaves_on_any_shards() {
        // A room starts on one shard (held inline), spreads to others and comes back.
        let mut interest: LinkInterest<String> = LinkInterest::new(3);
        let mut expected = [0u64; 3];
        let steps: [(bool, usize); 12] =
            [(true, 2), (true, 2), (false, 2), (true, 0), (true, 1), (false, 2), (false, 0), (true, 1), (false, 1), (false, 1), (true, 0), (false, 0)];
        for (step, &(join, shard)) in steps.iter().enumerate() {
            if join {
                let _ = interest.handle_join("r", shard);
                expected[shard] += 1;
            } else {
                let _ = interest.handle_leave("r", shard);
                expected[shard] -= 1;
            }
            let counts: Vec<u64> = (0..3).map(|s| interest.members_on("r", s)).collect();
            assert_eq!(counts, expected, "after step {step}");
            assert_eq!(interest.members("r"), expected.iter().sum::<u64>(), "after step {step}");
        }
        // A room on one shard keeps no block of counts.
        let mut one: LinkInterest<String> = LinkInterest::new(64);
        let _ = one.handle_join("user:bob", 63);
        let _ = one.handle_join("user:bob", 63);
        assert!(matches!(one.rooms["user:bob"].per_shard, PerShard::One { shard: 63, count: 2 }));
        assert!(std::mem::size_of::<PerShard>() <= 16, "{}", std::mem::size_of::<PerShard>());
    }

    #[test]
    fn an_announcement_not_sent_stays_owed_and_a_join_repeats_it() {
        let mut interest: LinkInterest<String> = LinkInterest::new(1);
        let first = interest.handle_join("r", 0).expect("first");
        interest.handle_sent(&first, false);
        // The hub still does not count the Link in: the next join must announce again.
        let again = interest.handle_join("r", 0);
        assert_eq!(again, announce("r", 2));
        interest.handle_sent(&again.expect("again"), false);
        assert_eq!(polled(&mut interest), vec![Announcement { room: "r".to_owned(), members: 2 }]);
    }

    #[test]
    fn a_removal_not_sent_keeps_the_room_until_it_is() {
        let mut interest: LinkInterest<String> = LinkInterest::new(1);
        let first = interest.handle_join("r", 0).expect("first");
        interest.handle_sent(&first, true);
        let last = interest.handle_leave("r", 0).expect("last");
        interest.handle_sent(&last, false);
        assert_eq!(interest.len(), 1);
        let owed = polled(&mut interest);
        assert_eq!(owed, vec![Announcement { room: "r".to_owned(), members: 0 }]);
        interest.handle_sent(&owed[0], true);
        assert!(interest.is_empty());
    }

    #[test]
    fn a_reconnected_hub_is_told_every_room_it_owns_again() {
        let mut interest: LinkInterest<String> = LinkInterest::new(1);
        for room in ["a", "b", "gone"] {
            let first = interest.handle_join(room, 0).expect("first");
            interest.handle_sent(&first, true);
        }
        let last = interest.handle_leave("gone", 0).expect("last");
        interest.handle_sent(&last, false);
        let mut out = Vec::new();
        interest.handle_hub_up(|room| room != "b", &mut out);
        assert_eq!(out, vec![Announcement { room: "a".to_owned(), members: 1 }], "b has another owner");
        assert_eq!(interest.len(), 2, "the empty room is forgotten: a new connection has no interest");
        interest.handle_sent(&out[0], false);
        // Still not counted in at the hub: the next join announces before joining.
        assert_eq!(interest.handle_join("a", 0), announce("a", 2));
    }

    #[test]
    fn a_rooms_payload_is_reset_whenever_it_has_no_member() {
        let mut interest: LinkInterest<String, u64> = LinkInterest::new(1);
        let first = interest.handle_join("r", 0).expect("first");
        interest.handle_sent(&first, true);
        *interest.payload_mut("r").expect("known") = 42;
        assert_eq!(interest.rooms().map(|(room, members, seq)| (room.as_str(), members, *seq)).collect::<Vec<_>>(), [("r", 1, 42)]);
        // The last member leaves; its removal cannot be sent: the room stays, without payload.
        let last = interest.handle_leave("r", 0).expect("last");
        interest.handle_sent(&last, false);
        assert_eq!(interest.payload("r"), Some(&0));
        // Written meanwhile (a late answer), it is still not what the next member finds.
        *interest.payload_mut("r").expect("kept for its removal") = 7;
        assert_eq!(interest.handle_join("r", 0), None, "the hub still counts the Link in: its removal was not sent");
        assert_eq!(interest.members("r"), 1);
        assert_eq!(interest.payload("r"), Some(&0), "a room's first member starts from the default");
    }

    #[test]
    fn leaving_an_unknown_room_is_ignored_and_keys_may_be_indices() {
        let mut interest: LinkInterest<u32> = LinkInterest::new(4);
        assert_eq!(interest.handle_leave(&7, 0), None);
        assert_eq!(interest.handle_join(&7, 3), Some(Announcement { room: 7, members: 1 }));
        assert_eq!((0..4).map(|shard| interest.members_on(&7, shard)).collect::<Vec<_>>(), [0, 0, 0, 1]);
        assert_eq!(interest.members(&7), 1);
    }

    #[test]
    fn a_room_that_moved_owner_is_announced_to_the_new_one_in_full() {
        let mut interest: LinkInterest<String> = LinkInterest::new(2);
        let first = interest.handle_join("r", 0);
        interest.handle_sent(first.as_ref().expect("first member"), true);
        assert_eq!(interest.handle_join("r", 1), None);
        // The move owes the whole count now, and nothing stays dirty for the old owner.
        assert_eq!(interest.handle_owner_moved("r"), announce("r", 2));
        assert!(polled(&mut interest).is_empty());
        // Not queued: owed, and the next join announces at once (the new owner counts 0).
        interest.handle_sent(&Announcement { room: "r".into(), members: 2 }, false);
        assert_eq!(interest.handle_join("r", 0), announce("r", 3));
        // A room without members (removal owed to the old owner) is forgotten.
        let mut interest: LinkInterest<String> = LinkInterest::new(1);
        let first = interest.handle_join("gone", 0);
        interest.handle_sent(first.as_ref().expect("first member"), true);
        let removal = interest.handle_leave("gone", 0).expect("last member out");
        interest.handle_sent(&removal, false);
        assert_eq!(interest.handle_owner_moved("gone"), None);
        assert!(interest.is_empty());
        assert_eq!(interest.handle_owner_moved("never"), None);
    }
}
