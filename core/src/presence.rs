//! Presence at the owner hub: a room's cluster-wide member count told to its Links, throttled,
//! and join/leave events of users while the room is small. No sockets, no clocks.
//!
//! The [`RoomTable`](crate::room_table::RoomTable) holds one [`RoomPresence`] per room (beside the
//! [`Room`](crate::room::Room)) and drives it:
//! - **counts**: the count is [`Room::members`](crate::room::Room::members), the sum of the
//!   per-Link counts the Links already announce with interest (no per-member traffic). After a
//!   change the table schedules the room; [`RoomPresence::poll`] (at the due time) sends one
//!   `Presence {members, events}` frame — encoded once, the same `Frame` queued to every
//!   interested Link — at most once per [`PresenceLimits::interval_micros`], however fast the
//!   count churns, and for a big room less often ([`PresenceLimits::interval_for`]): each count
//!   is one message to every member, so a room's counts cost its members at most
//!   [`PresenceLimits::deliveries_per_sec`] messages a second in all (a 200,000-member room
//!   hears its count every 10 s at the default 20,000, never less often than
//!   [`MAX_INTERVAL_MICROS`]). A Link that gains interest gets one at once
//!   ([`RoomPresence::handle_interest`]), so it learns the count and the events flag.
//! - **join/leave events**, only while the room has at most
//!   [`PresenceLimits::events_max_members`] members: per Link, the set of its users in the room
//!   (from the Link's `Member {joined}` reports and `MemberList` resyncs), and per user the
//!   number of Links holding it. A user going 0 → 1 Links is `Member {joined: true}` (sender =
//!   user) to every interested Link, 1 → 0 is `Member {joined: false}` — exactly once per change.
//!   A `MemberList` replaces one Link's set and raises no event (a resync, not a change). A Link
//!   whose interest ends (last member left, connection lost) takes its users with it: users on no
//!   other Link are announced as left.
//! - **the events threshold**: the moment the count exceeds the threshold the sets are dropped
//!   (memory stays bounded) and `Member` reports are ignored; the next `Presence` says
//!   `events: false`. Back under it, the next `Presence` says `events: true` — only after the
//!   Links were told `false`, because a Link answers the off → on turn with its `MemberList`
//!   (the hub's sets start empty) — so a room that dips under within one interval stays off one
//!   interval more.
//!
//! The rooms every connection is in by itself — `user:*` and the broadcast room `all` — have
//! no pushed presence: a count pushed to every member of `all` at each change would be a
//! broadcast to the whole cluster every interval (a million deliveries a second for a million
//! connections). Their count is still read with `GET /v1/rooms/{room}/presence`.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::frame::{Body, Frame, FrameBuilder};
use crate::placement::LinkId;
use crate::room::InterestChange;
use crate::system_rooms::{BROADCAST_ROOM, PERSONAL_PREFIX};

/// Most users the hub keeps for one Link in one room (a network Link cannot make it hold more);
/// the same bound as a `MemberList` ([`crate::room_table::MAX_MEMBER_LIST`]).
pub const MAX_USERS_PER_LINK: usize = crate::room_table::MAX_MEMBER_LIST;

/// Longest time between two counts of a changing room, however big it is (micros).
pub const MAX_INTERVAL_MICROS: u64 = 60_000_000;

/// Presence settings of a hub (`hub.presence_interval_ms`, `hub.presence_events_max_members`,
/// `hub.presence_deliveries_per_sec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceLimits {
    /// Least time between two `Presence` frames of one room, micros; 0 = presence off (no
    /// counts, no events; the core's default, so tables built without a config send none).
    pub interval_micros: u64,
    /// Join/leave events while the room has at most this many members.
    pub events_max_members: u64,
    /// Most count messages a second one room's counts may cost its members (a count is one
    /// message per member): a room of more than this many members hears its count every
    /// `members / deliveries_per_sec` seconds instead (up to [`MAX_INTERVAL_MICROS`]). 0 = no
    /// stretching (every room at `interval_micros`).
    pub deliveries_per_sec: u64,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        PresenceLimits { interval_micros: 0, events_max_members: 1000, deliveries_per_sec: 0 }
    }
}

impl PresenceLimits {
    /// True when the hub tells Links about counts at all.
    pub fn is_on(&self) -> bool {
        self.interval_micros > 0
    }

    /// Least time between two counts of a room of `members` (micros): `interval_micros`,
    /// stretched so the counts cost the room's members at most `deliveries_per_sec` messages a
    /// second, capped at [`MAX_INTERVAL_MICROS`] (or `interval_micros` if that is longer).
    ///
    /// Why: while a million members join, the count changes all the time, and a count a second
    /// would be a million deliveries a second — more than the broadcasts the room exists for.
    pub fn interval_for(&self, members: u64) -> u64 {
        if self.deliveries_per_sec == 0 {
            return self.interval_micros;
        }
        let stretched = members.saturating_mul(1_000_000) / self.deliveries_per_sec;
        self.interval_micros.max(stretched.min(MAX_INTERVAL_MICROS))
    }
}

/// Whether `room`'s count is pushed to its members: every room but the automatic ones
/// (personal rooms and the broadcast room; see the module docs).
pub fn has_counts(room: &str) -> bool {
    !room.starts_with(PERSONAL_PREFIX) && room != BROADCAST_ROOM
}

/// Whether `room` can have join/leave events: the rooms with counts.
pub fn has_events(room: &str) -> bool {
    has_counts(room)
}

/// One room's presence at its owner hub (see the module docs).
#[derive(Debug)]
pub struct RoomPresence {
    /// Join/leave events are on here: `users` is kept.
    events: bool,
    /// The events flag of the last room-wide `Presence` (`None`: none sent yet; Links start
    /// with events on).
    told_events: Option<bool>,
    /// The count of the last room-wide `Presence`.
    sent_members: Option<u64>,
    /// When it was sent.
    sent_at: Option<u64>,
    /// The table has this room in its schedule.
    pub(crate) scheduled: bool,
    /// Who is in the room, only while `events`; `None` until the first user is reported
    /// (personal and broadcast rooms never have events, and the two tables would size them).
    users: Option<Box<RoomUsers>>,
}

/// A room's users at its owner hub.
#[derive(Debug, Default)]
struct RoomUsers {
    /// Users per Link.
    per_link: HashMap<LinkId, HashSet<String>>,
    /// Per user, the number of Links that hold it.
    links_of: HashMap<String, u32>,
}

impl RoomPresence {
    /// Presence of a new room: events on (if the room can have them) until the count says
    /// otherwise.
    pub fn new(room: &str) -> Self {
        RoomPresence {
            events: has_events(room),
            told_events: None,
            sent_members: None,
            sent_at: None,
            scheduled: false,
            users: None,
        }
    }

    /// True while join/leave events are on.
    pub fn events(&self) -> bool {
        self.events
    }

    /// The room's users, sorted, while events are on (`None` when off).
    pub fn users(&self) -> Option<Vec<String>> {
        if !self.events {
            return None;
        }
        let mut users: Vec<String> = self.users.as_ref().map(|u| u.links_of.keys().cloned().collect()).unwrap_or_default();
        users.sort_unstable();
        Some(users)
    }

    /// When the next room-wide `Presence` may go, if one is owed (`now` or later): one
    /// [`PresenceLimits::interval_for`] the count last sent after it was sent.
    pub fn due(&self, limits: &PresenceLimits, now: u64) -> u64 {
        let interval = limits.interval_for(self.sent_members.unwrap_or(0));
        self.sent_at.map_or(now, |at| now.max(at.saturating_add(interval)))
    }

    /// A Link's interest report was applied to the room (`members`: the room's new total,
    /// `links`: the interested Links after it). A Link that gained interest gets a `Presence`
    /// at once; one that lost it takes its users along. Returns true when the room's count
    /// must be told (schedule a [`RoomPresence::poll`]).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_interest(
        &mut self,
        limits: &PresenceLimits,
        room: &str,
        link: LinkId,
        change: InterestChange,
        members: u64,
        links: &[LinkId],
        now: u64,
        out: &mut VecDeque<(LinkId, Frame)>,
    ) -> bool {
        if !limits.is_on() || !has_counts(room) {
            return false;
        }
        if change == InterestChange::Removed {
            self.handle_link_gone(room, link, links, out);
        }
        if self.events && members > limits.events_max_members {
            // Over the threshold: stop tracking users now (bounded memory); the next
            // `Presence` tells the Links.
            self.events = false;
            self.users = None;
        }
        if change == InterestChange::Added {
            let frame = FrameBuilder::new(room).build(&Body::Presence { members, events: self.events });
            out.push_back((link, frame));
            if links == [link] {
                // The only Link: this was the room-wide count too (no second one right after).
                self.sent_members = Some(members);
                self.told_events = Some(self.events);
                self.sent_at = Some(now);
            }
        }
        self.sent_members != Some(members) || self.told_events != Some(self.events)
    }

    /// Link `link` has no members in the room anymore (interest removed or connection lost):
    /// its users go; those on no other Link are announced as left to `links` (the Links still
    /// interested).
    pub fn handle_link_gone(&mut self, room: &str, link: LinkId, links: &[LinkId], out: &mut VecDeque<(LinkId, Frame)>) {
        let Some(users) = self.users.as_mut().and_then(|u| u.per_link.remove(&link)) else { return };
        for user in users {
            if self.release(&user) {
                push_member(out, room, &user, false, links);
            }
        }
    }

    /// A Link's `Member {joined}` report for `user` (the Link's first connection of the user
    /// entered the room, or its last left). `linked`: the Link holds interest in the room.
    /// Ignored while events are off.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_member(
        &mut self,
        limits: &PresenceLimits,
        room: &str,
        link: LinkId,
        linked: bool,
        user: &str,
        joined: bool,
        links: &[LinkId],
        out: &mut VecDeque<(LinkId, Frame)>,
    ) {
        if !limits.is_on() || !self.events || !linked || user.is_empty() {
            return;
        }
        if joined {
            let users = self.users.get_or_insert_with(Box::default);
            let set = users.per_link.entry(link).or_default();
            if set.len() >= MAX_USERS_PER_LINK || set.contains(user) {
                return;
            }
            set.insert(user.to_owned());
            let count = users.links_of.entry(user.to_owned()).or_insert(0);
            *count += 1;
            if *count == 1 {
                push_member(out, room, user, true, links);
            }
        } else {
            let removed = self.users.as_mut().and_then(|u| u.per_link.get_mut(&link)).is_some_and(|set| set.remove(user));
            if removed && self.release(user) {
                push_member(out, room, user, false, links);
            }
        }
    }

    /// A Link's `MemberList`: replaces its set of users, raising no event. Ignored while events
    /// are off or when the Link holds no interest (`linked` false).
    pub fn handle_member_list<'a>(&mut self, limits: &PresenceLimits, link: LinkId, linked: bool, users: impl Iterator<Item = &'a str>) {
        if !limits.is_on() || !self.events || !linked {
            return;
        }
        let new: HashSet<String> = users.filter(|u| !u.is_empty()).take(MAX_USERS_PER_LINK).map(str::to_owned).collect();
        let old = self.users.as_mut().and_then(|u| u.per_link.remove(&link)).unwrap_or_default();
        for user in old.difference(&new) {
            self.release(user);
        }
        if new.is_empty() {
            return;
        }
        let users = self.users.get_or_insert_with(Box::default);
        for user in new.difference(&old) {
            *users.links_of.entry(user.clone()).or_insert(0) += 1;
        }
        users.per_link.insert(link, new);
    }

    /// Sends the room-wide `Presence` if the count or the events flag differs from what the
    /// Links were last told; `now` is the time it is due (or later). Returns true if another
    /// one is owed later (events turn back on only after the Links were told they were off).
    pub fn poll(&mut self, limits: &PresenceLimits, room: &str, now: u64, members: u64, links: &[LinkId], out: &mut VecDeque<(LinkId, Frame)>) -> bool {
        if !limits.is_on() || !has_counts(room) {
            return false;
        }
        let under = has_events(room) && members <= limits.events_max_members;
        let mut later = false;
        if !self.events && under {
            if self.told_events == Some(false) {
                // Links answer the off → on turn with their lists; the sets start empty.
                self.events = true;
            } else {
                // Some Links may still believe events are on (the flip happened within this
                // interval): tell them off first, on at the next slot.
                later = true;
            }
        }
        if self.sent_members == Some(members) && self.told_events == Some(self.events) {
            return later;
        }
        if links.is_empty() {
            // Nobody to tell: a Link that gains interest is told at once.
            self.sent_members = None;
            self.told_events = None;
            return false;
        }
        let frame = FrameBuilder::new(room).build(&Body::Presence { members, events: self.events });
        push_to(out, links, &frame);
        self.sent_members = Some(members);
        self.told_events = Some(self.events);
        self.sent_at = Some(now);
        later
    }

    /// Drops one Link from `user`'s count; true if no Link holds it anymore.
    fn release(&mut self, user: &str) -> bool {
        let Some(users) = self.users.as_mut() else { return false };
        match users.links_of.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                users.links_of.remove(user);
                true
            }
            None => false,
        }
    }
}

/// Queues `Member {joined}` (sender `user`) once per Link of `links`: one frame, cloned.
fn push_member(out: &mut VecDeque<(LinkId, Frame)>, room: &str, user: &str, joined: bool, links: &[LinkId]) {
    if links.is_empty() {
        return;
    }
    let frame = FrameBuilder::new(room).sender(user).build(&Body::Member { joined });
    push_to(out, links, &frame);
}

fn push_to(out: &mut VecDeque<(LinkId, Frame)>, links: &[LinkId], frame: &Frame) {
    for &link in links {
        out.push_back((link, frame.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ArchivedBody, Kind};

    const ON: PresenceLimits = PresenceLimits { interval_micros: 1_000_000, events_max_members: 3, deliveries_per_sec: 0 };

    #[test]
    fn the_interval_stretches_with_the_room_up_to_a_minute() {
        let limits = PresenceLimits { interval_micros: 1_000_000, events_max_members: 1000, deliveries_per_sec: 20_000 };
        assert_eq!(limits.interval_for(0), 1_000_000);
        assert_eq!(limits.interval_for(20_000), 1_000_000, "up to 20,000 members: the configured interval");
        assert_eq!(limits.interval_for(200_000), 10_000_000);
        assert_eq!(limits.interval_for(1_000_000), 50_000_000);
        assert_eq!(limits.interval_for(10_000_000), MAX_INTERVAL_MICROS, "never less often than a minute");
        let fixed = PresenceLimits { deliveries_per_sec: 0, ..limits };
        assert_eq!(fixed.interval_for(10_000_000), 1_000_000, "0 = no stretching");
        let slow = PresenceLimits { interval_micros: 120_000_000, ..limits };
        assert_eq!(slow.interval_for(10_000_000), 120_000_000, "a configured interval above the cap stays");
    }

    fn presences(out: &mut VecDeque<(LinkId, Frame)>) -> Vec<(u32, u64, bool)> {
        let mut seen = Vec::new();
        for (link, frame) in out.drain(..) {
            if let ArchivedBody::Presence { members, events } = frame.body() {
                seen.push((link.0, members.to_native(), *events));
            }
        }
        seen
    }

    fn members(out: &mut VecDeque<(LinkId, Frame)>) -> Vec<(u32, String, bool)> {
        let mut seen = Vec::new();
        for (link, frame) in out.drain(..) {
            if let ArchivedBody::Member { joined } = frame.body() {
                assert_eq!(frame.kind(), Kind::Member);
                seen.push((link.0, frame.sender().to_owned(), *joined));
            }
        }
        seen
    }

    #[test]
    fn a_new_link_is_told_at_once_and_the_room_at_most_once_per_interval() {
        let mut p = RoomPresence::new("r");
        let mut out = VecDeque::new();
        let l1 = [LinkId(1)];
        assert!(!p.handle_interest(&ON, "r", LinkId(1), InterestChange::Added, 2, &l1, 0, &mut out), "the only Link: that was the room's count");
        assert_eq!(presences(&mut out), vec![(1, 2, true)], "the new Link learns count and flag");
        assert_eq!(p.due(&ON, 10), 1_000_000);
        assert!(!p.poll(&ON, "r", 10, 2, &l1, &mut out));
        assert!(out.is_empty(), "not twice");
        // Churn: many count changes, the next one only after the interval, with the last count.
        for n in [3, 2, 3, 1] {
            // 2 is what the Links were told: nothing owed for it alone.
            assert_eq!(p.handle_interest(&ON, "r", LinkId(1), InterestChange::Updated, n, &l1, 0, &mut out), n != 2);
        }
        assert!(out.is_empty());
        assert_eq!(p.due(&ON, 20), 1_000_000);
        assert!(!p.poll(&ON, "r", 1_000_010, 1, &l1, &mut out));
        assert_eq!(presences(&mut out), vec![(1, 1, true)]);
        // Nothing changed: nothing sent.
        assert!(!p.handle_interest(&ON, "r", LinkId(1), InterestChange::Updated, 1, &l1, 0, &mut out));
        assert!(!p.poll(&ON, "r", 3_000_000, 1, &l1, &mut out));
        assert!(out.is_empty());
        // Presence off: nothing at all.
        let off = PresenceLimits { interval_micros: 0, ..ON };
        let mut q = RoomPresence::new("r");
        assert!(!q.handle_interest(&off, "r", LinkId(1), InterestChange::Added, 2, &l1, 0, &mut out));
        assert!(!q.poll(&off, "r", 0, 2, &l1, &mut out));
        assert!(out.is_empty());
        // Personal rooms have no presence.
        let mut personal = RoomPresence::new("user:bob");
        assert!(!personal.handle_interest(&ON, "user:bob", LinkId(1), InterestChange::Added, 1, &l1, 0, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn events_exactly_once_per_change_across_links() {
        let mut p = RoomPresence::new("r");
        let mut out = VecDeque::new();
        let links = [LinkId(1), LinkId(2)];
        p.handle_member(&ON, "r", LinkId(1), true, "alice", true, &links, &mut out);
        p.handle_member(&ON, "r", LinkId(1), true, "alice", true, &links, &mut out);
        p.handle_member(&ON, "r", LinkId(2), true, "alice", true, &links, &mut out);
        assert_eq!(members(&mut out), vec![(1, "alice".into(), true), (2, "alice".into(), true)], "once, to every Link");
        p.handle_member(&ON, "r", LinkId(1), true, "alice", false, &links, &mut out);
        assert!(out.is_empty(), "still on Link 2");
        p.handle_member(&ON, "r", LinkId(2), true, "alice", false, &links, &mut out);
        p.handle_member(&ON, "r", LinkId(2), true, "alice", false, &links, &mut out);
        assert_eq!(members(&mut out), vec![(1, "alice".into(), false), (2, "alice".into(), false)]);
        // A report from a Link without interest is ignored.
        p.handle_member(&ON, "r", LinkId(3), false, "eve", true, &links, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.users(), Some(vec![]));
    }

    #[test]
    fn a_resync_raises_no_event_and_a_lost_link_takes_its_users() {
        let mut p = RoomPresence::new("r");
        let mut out = VecDeque::new();
        let links = [LinkId(1), LinkId(2)];
        p.handle_member_list(&ON, LinkId(1), true, ["alice", "bob"].into_iter());
        p.handle_member_list(&ON, LinkId(2), true, ["bob"].into_iter());
        assert!(out.is_empty(), "a list is a resync");
        assert_eq!(p.users(), Some(vec!["alice".into(), "bob".into()]));
        // A second list replaces the first: carol in, alice out, silently.
        p.handle_member_list(&ON, LinkId(1), true, ["bob", "carol"].into_iter());
        assert!(out.is_empty());
        assert_eq!(p.users(), Some(vec!["bob".into(), "carol".into()]));
        // Link 1 goes: carol (only there) left, bob (also on Link 2) did not.
        assert!(p.handle_interest(&ON, "r", LinkId(1), InterestChange::Removed, 1, &[LinkId(2)], 0, &mut out));
        assert_eq!(members(&mut out), vec![(2, "carol".into(), false)]);
        assert_eq!(p.users(), Some(vec!["bob".into()]));
        let _ = links;
    }

    #[test]
    fn crossing_the_threshold_both_ways() {
        let mut p = RoomPresence::new("r");
        let mut out = VecDeque::new();
        let l = [LinkId(1)];
        p.handle_member(&ON, "r", LinkId(1), true, "a", true, &l, &mut out);
        let _ = p.handle_interest(&ON, "r", LinkId(1), InterestChange::Added, 1, &l, 0, &mut out);
        assert!(!p.poll(&ON, "r", 0, 1, &l, &mut out));
        out.clear();
        // Up: 4 > 3. The sets go at once, reports are ignored, the next Presence says off.
        assert!(p.handle_interest(&ON, "r", LinkId(1), InterestChange::Updated, 4, &l, 0, &mut out));
        assert!(!p.events());
        assert_eq!(p.users(), None);
        p.handle_member(&ON, "r", LinkId(1), true, "b", true, &l, &mut out);
        assert!(out.is_empty(), "no events above the threshold");
        assert!(!p.poll(&ON, "r", 1_000_000, 4, &l, &mut out));
        assert_eq!(presences(&mut out), vec![(1, 4, false)]);
        // Down: events come back with the next Presence; the Link resyncs with its list.
        assert!(p.handle_interest(&ON, "r", LinkId(1), InterestChange::Updated, 2, &l, 0, &mut out));
        assert!(!p.poll(&ON, "r", 2_000_000, 2, &l, &mut out));
        assert_eq!(presences(&mut out), vec![(1, 2, true)]);
        assert!(p.events());
        p.handle_member_list(&ON, LinkId(1), true, ["a", "b"].into_iter());
        assert!(out.is_empty());
        assert_eq!(p.users(), Some(vec!["a".into(), "b".into()]));
        p.handle_member(&ON, "r", LinkId(1), true, "c", true, &l, &mut out);
        assert_eq!(members(&mut out), vec![(1, "c".into(), true)]);
    }

    #[test]
    fn a_dip_under_the_threshold_within_an_interval_tells_off_before_on() {
        let mut p = RoomPresence::new("r");
        let mut out = VecDeque::new();
        let l = [LinkId(1)];
        let _ = p.handle_interest(&ON, "r", LinkId(1), InterestChange::Added, 1, &l, 0, &mut out);
        assert!(!p.poll(&ON, "r", 0, 1, &l, &mut out));
        out.clear();
        // Up and back down before the next slot: the Link never heard "off".
        let _ = p.handle_interest(&ON, "r", LinkId(1), InterestChange::Updated, 5, &l, 0, &mut out);
        assert!(p.handle_interest(&ON, "r", LinkId(1), InterestChange::Updated, 2, &l, 0, &mut out));
        assert!(p.poll(&ON, "r", 1_000_000, 2, &l, &mut out), "on again only at the next slot");
        assert_eq!(presences(&mut out), vec![(1, 2, false)]);
        assert!(!p.poll(&ON, "r", 2_000_000, 2, &l, &mut out));
        assert_eq!(presences(&mut out), vec![(1, 2, true)]);
    }

    #[test]
    fn the_broadcast_room_gets_neither_counts_nor_events() {
        let mut p = RoomPresence::new("all");
        let mut out = VecDeque::new();
        let l = [LinkId(1)];
        let _ = p.handle_interest(&ON, "all", LinkId(1), InterestChange::Added, 1, &l, 0, &mut out);
        assert_eq!(presences(&mut out), vec![], "a count to every connection of the cluster: not pushed");
        p.handle_member(&ON, "all", LinkId(1), true, "a", true, &l, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.users(), None);
    }
}
