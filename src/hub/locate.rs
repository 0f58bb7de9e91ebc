//! Locate: which Links a client should connect to for a room, best first.
//!
//! The answer comes from [`BoundedLoad`]`<`[`HashRing`]`>` (placement.rs) over the Links that
//! are **eligible**: known by address (from `[[links]]` in the config,
//! [`crate::hub::HubHandle::register_link`], or — for a Link not listed, accepted with mutual
//! TLS — the addresses its `Hello` announced), currently connected to this hub, and not
//! draining. A Link that drops out or says it is draining leaves the ring, so clients that
//! re-locate are sent elsewhere; the groups that contained it are re-placed on their next
//! lookup. Announced addresses are forgotten when the Link's connection ends (memory stays
//! bounded by the connected Links), listed and registered ones are kept.
//!
//! Every room-specific HTTP route is answered by the room's owner hub (non-owners forward), so
//! exactly one hub places each room and all clients of a room get the same group.
//!
//! Memory: at most `max_rooms` placed groups; beyond that the oldest placement is released
//! (its next lookup places it again, usually on the same Links).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

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

/// Where clients (and operators) reach a Link, as `locate` and `GET /v1/links` tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reach {
    /// WebSocket URL for browsers.
    pub(crate) ws: String,
    /// QUIC address for native clients (empty: none).
    pub(crate) quic: String,
    /// Admin listener (`/metrics`), if any.
    pub(crate) admin: Option<SocketAddr>,
}

/// One Link as this hub knows it (`GET /v1/links`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LinkView {
    pub(crate) id: u32,
    pub(crate) ws: String,
    pub(crate) quic: String,
    pub(crate) admin: Option<String>,
    pub(crate) connected: bool,
    pub(crate) draining: bool,
    /// In this hub's `[[links]]`.
    pub(crate) listed: bool,
}

/// Eligible Links and the room → group placement over them.
pub(crate) struct Locator {
    entries: BTreeMap<LinkId, Reach>,
    /// Ids of `[[links]]`.
    listed: BTreeSet<LinkId>,
    /// Ids whose entry came from their `Hello` (forgotten when the connection ends).
    announced: BTreeSet<LinkId>,
    connected: BTreeSet<LinkId>,
    draining: BTreeSet<LinkId>,
    draining_gauge: Option<metrics::Gauge>,
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
            entries: entries.iter().map(|e| (LinkId(e.id), reach_of(e, wss))).collect(),
            listed: entries.iter().map(|e| LinkId(e.id)).collect(),
            announced: BTreeSet::new(),
            connected: BTreeSet::new(),
            draining: BTreeSet::new(),
            draining_gauge: None,
            placement: BoundedLoad::new(HashRing::new(DEFAULT_VNODES), load_factor),
            group_size: group_size.max(1),
            placed: VecDeque::new(),
            max_placed: max_placed.max(1),
            wss,
        }
    }

    /// Exports the number of draining Links to `gauge` (`linkcast_hub_links_draining`).
    pub(crate) fn set_draining_gauge(&mut self, gauge: metrics::Gauge) {
        gauge.set(self.draining.len() as f64);
        self.draining_gauge = Some(gauge);
    }

    /// Learns (or updates) a Link's addresses (kept when it disconnects).
    pub(crate) fn register(&mut self, entry: LinkEntry) {
        let link = LinkId(entry.id);
        self.entries.insert(link, reach_of(&entry, self.wss));
        self.announced.remove(&link);
        self.refresh(link);
    }

    /// A Link connected to this hub. `announced`: the addresses of its `Hello`, used when it is
    /// not in `[[links]]` (the operator's file wins for a listed Link) until it disconnects.
    pub(crate) fn link_up(&mut self, link: LinkId, announced: Option<Reach>) {
        self.connected.insert(link);
        // A new connection starts offered; a Link still draining says so again on it.
        self.draining.remove(&link);
        if let Some(reach) = announced {
            if !self.listed.contains(&link) && (self.announced.contains(&link) || !self.entries.contains_key(&link)) {
                self.entries.insert(link, reach);
                self.announced.insert(link);
            }
        }
        self.refresh(link);
        self.export();
    }

    /// A Link's connection to this hub ended.
    pub(crate) fn link_down(&mut self, link: LinkId) {
        self.connected.remove(&link);
        self.draining.remove(&link);
        if self.announced.remove(&link) {
            self.entries.remove(&link);
        }
        self.placement.remove_link(link);
        self.export();
    }

    /// The Link said it is draining: no new rooms are placed on it and it leaves every group
    /// at once (it stays connected; its members keep receiving until it closes them).
    pub(crate) fn set_draining(&mut self, link: LinkId) {
        if self.connected.contains(&link) {
            self.draining.insert(link);
            self.refresh(link);
            self.export();
        }
    }

    /// Every Link this hub knows or has connected, by id.
    pub(crate) fn snapshot(&self) -> Vec<LinkView> {
        let ids: BTreeSet<LinkId> = self.entries.keys().chain(self.connected.iter()).copied().collect();
        ids.into_iter()
            .map(|link| {
                let reach = self.entries.get(&link);
                LinkView {
                    id: link.0,
                    ws: reach.map(|r| r.ws.clone()).unwrap_or_default(),
                    quic: reach.map(|r| r.quic.clone()).unwrap_or_default(),
                    admin: reach.and_then(|r| r.admin).map(|a| a.to_string()),
                    connected: self.connected.contains(&link),
                    draining: self.draining.contains(&link),
                    listed: self.listed.contains(&link),
                }
            })
            .collect()
    }

    /// Puts `link` on the ring iff it is known, connected and not draining.
    fn refresh(&mut self, link: LinkId) {
        if self.entries.contains_key(&link) && self.connected.contains(&link) && !self.draining.contains(&link) {
            self.placement.add_link(link);
        } else {
            self.placement.remove_link(link);
        }
    }

    fn export(&self) {
        if let Some(gauge) = &self.draining_gauge {
            gauge.set(self.draining.len() as f64);
        }
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
            .filter_map(|link| self.entries.get(&link).map(|reach| (link, reach)))
            .map(|(link, reach)| Located { id: link.0, ws: reach.ws.clone(), quic: reach.quic.clone() })
            .collect()
    }
}

/// What `locate` tells of a configured Link: its public addresses, or its listen addresses.
fn reach_of(entry: &LinkEntry, wss: bool) -> Reach {
    Reach { ws: entry.ws_url(wss), quic: entry.quic_addr(), admin: entry.admin }
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
        locator.link_up(LinkId(1), None);
        locator.link_up(LinkId(7), None); // connected but unknown: never located
        assert_eq!(locator.locate("lobby").iter().map(|l| l.id).collect::<Vec<_>>(), vec![1]);
        locator.link_up(LinkId(2), None);
        locator.link_up(LinkId(3), None);
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
        locator.link_up(LinkId(1), None);
        locator.link_up(LinkId(2), None);
        for r in 0..100 {
            assert_eq!(locator.locate(&format!("r{r}")).len(), 1);
        }
        assert!(locator.placement.placed_rooms() <= 10);
    }

    fn reach(id: u32) -> Reach {
        Reach { ws: format!("wss://link-{id}.example:443/ws"), quic: format!("link-{id}.example:7443"), admin: None }
    }

    #[test]
    fn announced_links_are_located_while_connected_and_draining_ones_are_not() {
        let mut locator = Locator::new(&[entry(1)], 1, 1.25, 100, false);
        locator.link_up(LinkId(1), Some(reach(1)));
        locator.link_up(LinkId(4), Some(reach(4)));
        let ids = |l: &mut Locator| (0..50).flat_map(|r| l.locate(&format!("r{r}"))).map(|x| x.id).collect::<BTreeSet<_>>();
        assert_eq!(ids(&mut locator), BTreeSet::from([1, 4]), "the unlisted Link is offered by its announced addresses");
        let four = (0..50).map(|r| format!("r{r}")).find(|r| locator.locate(r)[0].id == 4).expect("a room on 4");
        assert_eq!(locator.locate(&four)[0].ws, "wss://link-4.example:443/ws");
        let listed = locator.snapshot().into_iter().find(|v| v.id == 1).expect("listed");
        assert_eq!(listed.ws, "ws://127.0.0.1:8001/ws", "a listed Link keeps the operator's addresses");
        locator.set_draining(LinkId(4));
        assert_eq!(ids(&mut locator), BTreeSet::from([1]), "a draining Link leaves every group at once");
        let view = locator.snapshot().into_iter().find(|v| v.id == 4).expect("still known");
        assert!(view.connected && view.draining && !view.listed);
        locator.link_down(LinkId(4));
        assert!(locator.snapshot().iter().all(|v| v.id != 4), "announced addresses are forgotten with the connection");
        locator.link_up(LinkId(4), Some(reach(4)));
        assert!(!locator.snapshot().iter().any(|v| v.id == 4 && v.draining), "a new connection starts offered");
    }
}
