//! Presence at a Link: which users are in which room here, what the owner hubs are told about
//! them, and how the hubs' counts and events reach the members. Owned by the coordinator
//! (`coordinator.rs`), which calls it on joins and leaves of connections and on the hubs'
//! `Presence` / `Member` frames; it only decides and builds frames, the coordinator sends them.
//!
//! - **Users per room**: user → number of local connections in the room, for every room with
//!   join/leave events possible (not `all`, not `user:*`: `linkcast_core::presence::has_events`).
//!   A user's first connection here entering the room (0 → 1) or its last leaving (1 → 0) is a
//!   `Member {joined}` frame (sender = user) for the owner hub — only while the room's events
//!   flag is on (the last `Presence` said so; on until told otherwise). Counting goes on while
//!   the flag is off, so the Link can answer the flag's return with its `MemberList` (the hub
//!   rebuilt nothing meanwhile). The list is also sent after the Link (re)announces its
//!   interest to a hub (reconnect, owner move) and when a `Member` could not be queued.
//! - **Bound**: at most [`MAX_USERS_PER_ROOM`] distinct users per room are counted (the hub's
//!   `MemberList` bound); past it the room stops being tracked here — no more `Member` or
//!   `MemberList` for it from this Link — until it has no member on the Link. The hub turns a
//!   room's events off far below that (`hub.presence_events_max_members`, default 1,000), so
//!   this only matters for a threshold configured above 65,536. Other memory is one entry per
//!   (room, user) that has connections here, which the connections already pay for.
//! - **Delivery**: a hub `Presence {members, events}` becomes `{"op":"presence","room",
//!   "members"}` (with `"events":false` while off, and `"events":true` once when it turns back
//!   on) and a hub `Member {joined}` becomes `member_joined` / `member_left`: each WebSocket frame
//!   is built **once** per Link here and pushed as a [`RingItem::Notice`] onto the room's ring in
//!   every shard with members, in order with the room's messages. QUIC clients get the hub's
//!   frame as is (kinds `Presence` / `Member`, docs/protocol.md); only WebSocket members that
//!   joined with `"presence": true` get join/leave events. A connection that joins is sent the
//!   room's last count right after its `joined` (routed to it like a join answer).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use linkcast_core::frame::{Body, Frame, FrameBuilder};
use linkcast_core::presence::has_events;
use linkcast_core::protocol::{encode_member, encode_presence};
use linkcast_core::room_table::MAX_MEMBER_LIST;
use linkcast_core::shard_rooms::RingItem;
use linkcast_core::sparse_tables::{shrink_if_sparse, shrink_set_if_sparse};
use linkcast_core::system_rooms::personal_user;
use linkcast_core::ws_frame;

/// Most distinct users counted in one room at this Link (see the module docs).
pub(crate) const MAX_USERS_PER_ROOM: usize = MAX_MEMBER_LIST;

/// One room's users at this Link.
#[derive(Debug)]
struct RoomUsers {
    /// User → local connections in the room. Users are keyed by their personal room's name
    /// (`system_rooms::user_key`), the shard's, shared: a room of a Link's 20,000 users keeps no copy
    /// of their ids.
    users: HashMap<Arc<str>, u32>,
    /// The room's join/leave events flag, as the owner hub last said (on until told).
    events: bool,
    /// More than [`MAX_USERS_PER_ROOM`] users: not tracked until the room empties here.
    overflowed: bool,
}

impl Default for RoomUsers {
    fn default() -> Self {
        RoomUsers { users: HashMap::new(), events: true, overflowed: false }
    }
}

/// The Link's presence state (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LinkPresence {
    rooms: HashMap<String, RoomUsers>,
    /// Rooms whose `Member` report could not be queued: their list is owed.
    resync: HashSet<String>,
    /// The last `Presence` of each room with members here: a joining connection is told it
    /// after its `joined` (the ring only carries changes after the join).
    counts: HashMap<String, Frame>,
}

impl LinkPresence {
    /// A connection of `user` joined `room`: the `Member {joined: true}` for the owner hub when
    /// it is the user's first connection in the room here and events are on.
    pub(crate) fn handle_join(&mut self, room: &str, user: &Arc<str>) -> Option<Frame> {
        if !has_events(room) || personal_user(user).is_none() {
            return None;
        }
        let state = self.rooms.entry(room.to_owned()).or_default();
        if state.overflowed {
            return None;
        }
        if let Some(count) = state.users.get_mut(&**user) {
            *count += 1;
            return None;
        }
        if state.users.len() >= MAX_USERS_PER_ROOM {
            tracing::warn!(room, "more than {MAX_USERS_PER_ROOM} users in a room: no join/leave reports for it from this Link");
            state.overflowed = true;
            state.users = HashMap::new();
            return None;
        }
        state.users.insert(user.clone(), 1);
        state.events.then(|| member(room, user, true))
    }

    /// A connection of `user` left `room`: the `Member {joined: false}` when it was the user's
    /// last one here and events are on.
    pub(crate) fn handle_leave(&mut self, room: &str, user: &str) -> Option<Frame> {
        let state = self.rooms.get_mut(room)?;
        let count = state.users.get_mut(user)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        state.users.remove(user);
        shrink_if_sparse(&mut state.users);
        state.events.then(|| member(room, user, false))
    }

    /// `room` has no member on this Link anymore: forget it (a new member starts with events
    /// on, as the hub's next `Presence` will confirm or not).
    pub(crate) fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
        self.resync.remove(room);
        self.counts.remove(room);
        shrink_if_sparse(&mut self.rooms);
        shrink_set_if_sparse(&mut self.resync);
        shrink_if_sparse(&mut self.counts);
    }

    /// The last `Presence` the owner hub sent for `room`, if any.
    pub(crate) fn last_count(&self, room: &str) -> Option<Frame> {
        self.counts.get(room).cloned()
    }

    /// A `Member` report for `room` could not be queued: its list is owed.
    pub(crate) fn owe_list(&mut self, room: &str) {
        if self.rooms.contains_key(room) {
            self.resync.insert(room.to_owned());
        }
    }

    /// The rooms whose list is owed (emptied).
    pub(crate) fn take_owed(&mut self) -> Vec<String> {
        self.resync.drain().collect()
    }

    /// The room's `MemberList` for its owner hub: every user with a connection here, while
    /// events are on (`None` when off, untracked or empty).
    pub(crate) fn member_list(&self, room: &str) -> Option<Frame> {
        let state = self.rooms.get(room).filter(|s| s.events && !s.overflowed && !s.users.is_empty())?;
        let users: Vec<String> = state.users.keys().filter_map(|user| personal_user(user)).map(str::to_owned).collect();
        Some(FrameBuilder::new(room).build(&Body::MemberList { users }))
    }

    /// The owner hub's `Presence {members, events}` for `room`: the ring item for its members
    /// (encoded once), and the `MemberList` to send back when events just turned on again.
    pub(crate) fn handle_presence(&mut self, frame: Frame, members: u64, events: bool) -> (RingItem, Option<Frame>) {
        let room = frame.room();
        let mut turned_on = false;
        if let Some(state) = self.rooms.get_mut(room) {
            turned_on = events && !state.events;
            state.events = events;
        }
        let shown = match (events, turned_on) {
            (false, _) => Some(false),
            (true, true) => Some(true),
            (true, false) => None,
        };
        let mut json = Vec::with_capacity(64 + room.len());
        encode_presence(&mut json, room, members, shown);
        let list = if turned_on { self.member_list(room) } else { None };
        self.counts.insert(room.to_owned(), frame.clone());
        (RingItem::Notice { ws: ws_frame::text(&json), frame, events_only: false }, list)
    }

    /// The owner hub's `Member {joined}` (sender = user): the ring item for members with
    /// presence, encoded once.
    pub(crate) fn member_notice(frame: Frame, joined: bool) -> RingItem {
        let mut json = Vec::with_capacity(64 + frame.room().len() + frame.sender().len());
        encode_member(&mut json, frame.room(), frame.sender(), joined);
        RingItem::Notice { ws: ws_frame::text(&json), frame, events_only: true }
    }
}

/// A `Member {joined}` report for the owner hub (`user`: the user's key).
fn member(room: &str, user: &str, joined: bool) -> Frame {
    FrameBuilder::new(room).sender(personal_user(user).unwrap_or_default()).build(&Body::Member { joined })
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkcast_core::frame::ArchivedBody;

    fn key(user: &str) -> Arc<str> {
        linkcast_core::system_rooms::user_key(user).into()
    }

    fn reported(frame: Option<Frame>) -> Option<(String, bool)> {
        frame.map(|f| match f.body() {
            ArchivedBody::Member { joined } => (f.sender().to_owned(), *joined),
            _ => panic!("not a member frame"),
        })
    }

    #[test]
    fn first_in_and_last_out_are_reported_while_events_are_on() {
        let mut p = LinkPresence::default();
        assert_eq!(reported(p.handle_join("r", &key("bob"))), Some(("bob".into(), true)));
        assert_eq!(reported(p.handle_join("r", &key("bob"))), None, "a second connection");
        assert_eq!(reported(p.handle_leave("r", &key("bob"))), None);
        assert_eq!(reported(p.handle_leave("r", &key("bob"))), Some(("bob".into(), false)));
        assert_eq!(reported(p.handle_join("all", &key("bob"))), None, "never for the broadcast room");
        assert_eq!(reported(p.handle_join("user:bob", &key("bob"))), None, "never for personal rooms");
        assert_eq!(reported(p.handle_join("r", &key(""))), None, "no user, no report");
        // Events off: counted, not reported; back on: the list answers.
        assert!(p.handle_join("r", &key("carol")).is_some());
        let off = FrameBuilder::new("r").build(&Body::Presence { members: 5000, events: false });
        let (item, list) = p.handle_presence(off, 5000, false);
        assert!(list.is_none());
        assert!(matches!(item, RingItem::Notice { ref ws, events_only: false, .. } if ws.ends_with(br#""members":5000,"events":false}"#)));
        assert!(p.handle_join("r", &key("dave")).is_none());
        let on = FrameBuilder::new("r").build(&Body::Presence { members: 2, events: true });
        let (item, list) = p.handle_presence(on.clone(), 2, true);
        assert!(matches!(item, RingItem::Notice { ref ws, .. } if ws.ends_with(br#""members":2,"events":true}"#)));
        let list = list.expect("a list when events come back");
        let ArchivedBody::MemberList { users } = list.body() else { panic!("not a list") };
        let mut users: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        users.sort_unstable();
        assert_eq!(users, vec!["carol", "dave"]);
        // Still on: the count only, no list.
        let (item, list) = p.handle_presence(on, 2, true);
        assert!(list.is_none());
        assert!(matches!(item, RingItem::Notice { ref ws, .. } if ws.ends_with(br#""members":2}"#)));
    }

    #[test]
    fn member_notices_are_for_members_with_presence_only() {
        let frame = FrameBuilder::new("r").sender("bob").build(&Body::Member { joined: true });
        let item = LinkPresence::member_notice(frame, true);
        assert!(matches!(item, RingItem::Notice { ref ws, events_only: true, .. }
            if ws.ends_with(br#"{"op":"member_joined","room":"r","user":"bob"}"#)));
    }
}
