//! Which hub owns (sequences) which room: the same stable ring in every process.
//!
//! Every hub and every Link builds a [`HubDirectory`] from the configured hubs and asks it for a
//! room's owner; all of them compute the same answer without talking to each other (the ring's
//! hasher is stable across processes and versions, see [`crate::placement::stable_hash`]). A hub
//! that receives a publish for a room it does not own forwards it to the owner; a Link sends a
//! room's joins and publishes to the owner directly.

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

    /// Every hub.
    pub fn hubs(&self) -> &[HubId] {
        &self.hubs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
