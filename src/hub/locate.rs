//! Locate: which Links a client should connect to for a room, best first.
//!
//! The answer comes from [`BoundedLoad`]`<`[`HashRing`]`>` (placement.rs) over the Links that
//! are **eligible**: known by address (from `[[links]]` in the config or
//! [`crate::hub::HubHandle::register_link`]) *and* currently connected to this hub. A Link that
//! drops out leaves the ring, so clients that re-locate after losing it are sent elsewhere; the
//! groups that contained it are re-placed on their next lookup.
//!
//! Every room-specific HTTP route is answered by the room's owner hub (non-owners forward), so
//! exactly one hub places each room and all clients of a room get the same group.
//!
//! Memory: at most `max_rooms` placed groups; beyond that the oldest placement is released
//! (its next lookup places it again, usually on the same Links).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::LinkEntry;
use linkcast_core::placement::{BoundedLoad, HashRing, LinkId, Placement, DEFAULT_VNODES};

/// One Link in a locate answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Located {
    /// The Link's id.
    pub id: u32,
    /// WebSocket URL for browsers.
    pub ws: String,
    /// QUIC address for native clients.
    pub quic: String,
}

/// Eligible Links and the room → group placement over them.
pub(crate) struct Locator {
    entries: BTreeMap<LinkId, LinkEntry>,
    connected: BTreeSet<LinkId>,
    placement: BoundedLoad<HashRing>,
    group_size: usize,
    /// Placed rooms, oldest first, to bound the placement's memory.
    placed: VecDeque<String>,
    max_placed: usize,
    /// The Links serve `wss://` (the cluster's `[tls]` has a certificate).
    wss: bool,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator")
            .field("known", &self.entries.len())
            .field("connected", &self.connected)
            .field("placed", &self.placed.len())
            .finish()
    }
}

impl Locator {
    /// A locator knowing `entries`, none of them connected yet.
    pub(crate) fn new(entries: &[LinkEntry], group_size: usize, load_factor: f64, max_placed: usize, wss: bool) -> Self {
        Locator {
            entries: entries.iter().map(|e| (LinkId(e.id), e.clone())).collect(),
            connected: BTreeSet::new(),
            placement: BoundedLoad::new(HashRing::new(DEFAULT_VNODES), load_factor),
            group_size: group_size.max(1),
            placed: VecDeque::new(),
            max_placed: max_placed.max(1),
            wss,
        }
    }

    /// Learns (or updates) a Link's addresses.
    pub(crate) fn register(&mut self, entry: LinkEntry) {
        let link = LinkId(entry.id);
        self.entries.insert(link, entry);
        if self.connected.contains(&link) {
            self.placement.add_link(link);
        }
    }

    /// A Link connected to this hub.
    pub(crate) fn link_up(&mut self, link: LinkId) {
        self.connected.insert(link);
        if self.entries.contains_key(&link) {
            self.placement.add_link(link);
        }
    }

    /// A Link's connection to this hub ended.
    pub(crate) fn link_down(&mut self, link: LinkId) {
        self.connected.remove(&link);
        self.placement.remove_link(link);
    }

    /// True while `link` is connected.
    pub(crate) fn is_connected(&self, link: LinkId) -> bool {
        self.connected.contains(&link)
    }

    /// Number of eligible Links.
    pub(crate) fn eligible(&self) -> usize {
        self.placement.inner().len()
    }

    /// The room's group, best first; empty without eligible Links.
    pub(crate) fn locate(&mut self, room: &str) -> Vec<Located> {
        let eligible = self.eligible();
        if eligible == 0 {
            return Vec::new();
        }
        if self.placement.group(room).is_none() {
            self.placed.push_back(room.to_owned());
            while self.placed.len() > self.max_placed {
                if let Some(old) = self.placed.pop_front() {
                    self.placement.release(&old);
                }
            }
        }
        let group = self.placement.place(room, self.group_size.min(eligible), 1).to_vec();
        group
            .into_iter()
            .filter_map(|link| self.entries.get(&link))
            .map(|entry| Located { id: entry.id, ws: entry.ws_url(self.wss), quic: entry.quic_addr() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32) -> LinkEntry {
        LinkEntry {
            id,
            ws: format!("127.0.0.1:{}", 8000 + id).parse().expect("addr"),
            quic: format!("127.0.0.1:{}", 9000 + id).parse().expect("addr"),
            public_ws: None,
            public_quic: None,
            admin: None,
        }
    }

    #[test]
    fn only_connected_known_links_are_located_and_a_lost_link_is_replaced() {
        let mut locator = Locator::new(&[entry(1), entry(2), entry(3)], 2, 1.25, 100, false);
        assert!(locator.locate("lobby").is_empty());
        locator.link_up(LinkId(1));
        locator.link_up(LinkId(7)); // connected but unknown: never located
        assert_eq!(locator.locate("lobby").iter().map(|l| l.id).collect::<Vec<_>>(), vec![1]);
        locator.link_up(LinkId(2));
        locator.link_up(LinkId(3));
        let group = locator.locate("room-x");
        assert_eq!(group.len(), 2);
        assert_eq!(locator.locate("room-x"), group, "sticky");
        assert_eq!(group[0].ws, format!("ws://127.0.0.1:{}/ws", 8000 + group[0].id));
        locator.link_down(LinkId(group[0].id));
        let again = locator.locate("room-x");
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|l| l.id != group[0].id));
    }

    #[test]
    fn placements_are_bounded() {
        let mut locator = Locator::new(&[entry(1), entry(2)], 1, 1.25, 10, false);
        locator.link_up(LinkId(1));
        locator.link_up(LinkId(2));
        for r in 0..100 {
            assert_eq!(locator.locate(&format!("r{r}")).len(), 1);
        }
        assert!(locator.placement.placed_rooms() <= 10);
    }
}
