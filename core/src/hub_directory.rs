//! Which hub owns (sequences) which room: the same stable ring in every process. No sockets, no
//! clocks.
//!
//! Every hub and every Link builds a [`HubDirectory`] from the configured hubs and asks it for a
//! room's owner; all of them compute the same answer without talking to each other (the ring's
//! hasher is stable across processes and versions, see [`crate::placement::stable_hash`]). A hub
//! that receives a publish for a room it does not own forwards it to the owner; a Link sends a
//! room's joins and publishes to the owner directly.
//!
//! With a store, hubs know which of them are alive and a room belongs to the **first live hub
//! in its ring order** ([`HubDirectory::owner_among`]). The hubs push that set to their Links as
//! a versioned owner map (frame `OwnerMap`); a Link keeps the newest one in an [`OwnerView`]
//! and never decides liveness itself (a hub connection that drops changes nothing). Without a
//! map, every configured hub counts as live: the plain [`HubDirectory::owner`].

use std::ops::ControlFlow;

use crate::placement::{HashRing, LinkId, Placement};

/// A hub's cluster-wide id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HubId(pub u32);

/// Which hub owns which room: the same stable ring every process computes.
#[derive(Clone)]
pub struct HubDirectory {
    /// The Links' ring type, reused: hub `n` stands on it as node `n` (a node number, not a Link).
    ring: HashRing,
    hubs: Vec<HubId>,
}

impl HubDirectory {
    /// A directory of `hubs`.
    pub fn new(hubs: impl IntoIterator<Item = HubId>) -> Self {
        let hubs: Vec<HubId> = hubs.into_iter().collect();
        HubDirectory { ring: HashRing::with_links(hubs.iter().map(|h| LinkId(h.0))), hubs }
    }

    /// The hub that owns (sequences) `room`; `None` without hubs.
    pub fn owner(&self, room: &str) -> Option<HubId> {
        let mut out = Vec::with_capacity(1);
        self.ring.locate_into(room, 1, &mut out);
        out.first().map(|l| HubId(l.0))
    }

    /// The owner of `room` when only the hubs in `live` are alive: the first hub in the room's
    /// ring order that is in `live`. An empty `live` means "no map": the plain
    /// [`HubDirectory::owner`]. `None` when no hub of the ring is in `live`.
    ///
    /// Removing a hub from `live` moves only the rooms it owned, each to the next live hub on
    /// its ring, so they spread over the rest.
    pub fn owner_among(&self, room: &str, live: &[HubId]) -> Option<HubId> {
        if live.is_empty() {
            return self.owner(room);
        }
        let mut found = None;
        self.ring.for_each_candidate(room, &mut |node| {
            let hub = HubId(node.0);
            if live.contains(&hub) {
                found = Some(hub);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        found
    }

    /// Every hub.
    pub fn hubs(&self) -> &[HubId] {
        &self.hubs
    }
}

/// A Link's view of which hubs are alive: the newest owner map it was sent (by any hub).
///
/// Before the first map the view is empty and every configured hub counts as live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerView {
    /// Version of the map held (0: none yet; maps start at 1).
    version: u64,
    /// The live hubs of that map, sorted.
    live: Vec<HubId>,
}

impl OwnerView {
    /// No map yet: every hub counts as live.
    pub fn new() -> Self {
        OwnerView::default()
    }

    /// The version of the map held (0: none).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The live hubs of the map held (empty: no map, all count as live).
    pub fn live(&self) -> &[HubId] {
        &self.live
    }

    /// Takes map `version` listing `hubs` if it is newer than the one held; returns whether it
    /// was taken. An older or equal version, or a map that lists no hub, changes nothing.
    pub fn accept(&mut self, version: u64, hubs: impl IntoIterator<Item = u32>) -> bool {
        if version <= self.version {
            return false;
        }
        let mut live: Vec<HubId> = hubs.into_iter().map(HubId).collect();
        if live.is_empty() {
            return false;
        }
        live.sort_unstable();
        live.dedup();
        self.version = version;
        self.live = live;
        true
    }

    /// The owner of `room` under this view. A map naming none of `directory`'s hubs (a Link
    /// configured with other hubs) falls back to the plain owner; `None` only without hubs.
    pub fn owner(&self, directory: &HubDirectory, room: &str) -> Option<HubId> {
        directory.owner_among(room, &self.live).or_else(|| directory.owner(room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms() -> impl Iterator<Item = String> {
        (0..3000).map(|r| format!("room-{r}"))
    }

    #[test]
    fn every_room_has_one_owner_among_the_hubs() {
        let directory = HubDirectory::new([HubId(0), HubId(1)]);
        let mut owners = [0usize; 2];
        for r in 0..1000 {
            let owner = directory.owner(&format!("room-{r}")).expect("hubs exist");
            owners[owner.0 as usize] += 1;
            assert_eq!(directory.owner(&format!("room-{r}")), Some(owner));
        }
        assert!(owners.iter().all(|&n| n > 300), "{owners:?}");
        assert_eq!(HubDirectory::new([]).owner("x"), None);
    }

    #[test]
    fn owner_among_all_live_hubs_is_the_owner() {
        let hubs: Vec<HubId> = (0..5).map(HubId).collect();
        let directory = HubDirectory::new(hubs.clone());
        for room in rooms() {
            assert_eq!(directory.owner_among(&room, &hubs), directory.owner(&room), "{room}");
            assert_eq!(directory.owner_among(&room, &[]), directory.owner(&room), "empty live: no map");
        }
    }

    #[test]
    fn removing_the_owner_moves_only_its_rooms_spread_over_the_live_hubs() {
        let hubs: Vec<HubId> = (0..5).map(HubId).collect();
        let directory = HubDirectory::new(hubs.clone());
        let dead = HubId(2);
        let live: Vec<HubId> = hubs.iter().copied().filter(|&h| h != dead).collect();
        let mut moved_to = [0usize; 5];
        for room in rooms() {
            let owner = directory.owner(&room).expect("hubs exist");
            let now = directory.owner_among(&room, &live).expect("live hubs exist");
            assert!(live.contains(&now), "{room} went to a dead hub");
            if owner == dead {
                moved_to[now.0 as usize] += 1;
            } else {
                assert_eq!(now, owner, "{room} moved although its owner is alive");
            }
            // Deterministic: the same answer every time, and from a new directory.
            assert_eq!(directory.owner_among(&room, &live), Some(now));
            assert_eq!(HubDirectory::new(hubs.clone()).owner_among(&room, &live), Some(now));
        }
        assert_eq!(moved_to[dead.0 as usize], 0);
        let moved: usize = moved_to.iter().sum();
        assert!(moved > 300, "hub 2 owned {moved} of 3000 rooms");
        // Spread over the rest: every live hub takes a fair share of the dead hub's rooms.
        assert!(live.iter().all(|h| moved_to[h.0 as usize] > moved / 10), "{moved_to:?}");
    }

    #[test]
    fn owner_among_hubs_off_the_ring_is_none() {
        let directory = HubDirectory::new([HubId(0), HubId(1)]);
        assert_eq!(directory.owner_among("r", &[HubId(9)]), None);
        let mut view = OwnerView::new();
        assert!(view.accept(1, [9]));
        assert_eq!(view.owner(&directory, "r"), directory.owner("r"), "falls back to the plain owner");
    }

    #[test]
    fn the_view_takes_only_newer_maps() {
        let directory = HubDirectory::new([HubId(0), HubId(1)]);
        let mut view = OwnerView::new();
        assert_eq!(view.version(), 0);
        for room in rooms().take(100) {
            assert_eq!(view.owner(&directory, &room), directory.owner(&room), "no map: every hub is live");
        }
        assert!(view.accept(3, [1, 1]));
        assert_eq!(view.live(), &[HubId(1)]);
        for room in rooms().take(100) {
            assert_eq!(view.owner(&directory, &room), Some(HubId(1)));
        }
        assert!(!view.accept(2, [0, 1]), "older");
        assert!(!view.accept(3, [0]), "same version");
        assert!(!view.accept(4, []), "a map without hubs");
        assert_eq!((view.version(), view.live()), (3, &[HubId(1)][..]));
        assert!(view.accept(4, [1, 0]));
        assert_eq!(view.live(), &[HubId(0), HubId(1)], "sorted");
    }
}
