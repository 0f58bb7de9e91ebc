//! The hub's room table: every room this hub owns, and the frames it owes each Link.
//!
//! This is the hub's whole decision logic, sans-IO, so the runtime (`hub/`), the tests and the
//! simulator run the same code. Inputs, each with `now` in micros from the driver:
//! - [`RoomTable::publish`]: an HTTP publish (already authenticated by the driver);
//! - [`RoomTable::handle_link_frame`]: a frame from a Link (interest, join, client publish, …);
//! - [`RoomTable::handle_link_down`]: a Link's connection ended, so its interest is void.
//!
//! Output: [`RoomTable::poll_transmit`] yields `(LinkId, Frame)` pairs in order. A room message
//! is queued once per interested Link (the same `Frame`, cloned = a refcount bump). Answers to a
//! Link's request (replay, gap, joined, ack, error) go to that Link only. Because one Link's
//! frames are yielded in the order they were produced, a Link sees the replay for a join before
//! any live message sequenced after it.
//! When tracked ([`RoomTable::track_occupancy`], the hub's webhooks), [`RoomTable::poll_occupancy`]
//! yields each room whose member count went 0 → some or some → 0 ([`Occupancy`]), seen where
//! interest changes: a Link's interest frame or its connection ending.
//!
//! Epochs: the table draws each new room's epoch from a seeded generator (the driver seeds it
//! from the OS at start-up; tests and the simulator pass fixed seeds), so a room created again
//! after a restart or an idle drop gets a different epoch and members' old positions are reset
//! rather than silently mistaken for positions in the new history.
//!
//! Bounds: at most `max_rooms` rooms (a new one beyond that is refused with 503); each room's
//! history is bounded by [`RoomLimits`]; rooms without interest and idle for `idle_ttl_micros`
//! are dropped by [`RoomTable::handle_timeout`]. A full table looks for idle rooms to make way
//! at most once per [`FULL_SWEEP_INTERVAL_MICROS`]: between two such sweeps a new room is
//! refused in O(1), so joins to random room names cost the hub task no scan of the table each.
//! (Links reach the table only after the hub's `Hello` check; network Links' frames pass
//! [`check_link_frame`] first.)

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::frame::{is_valid_room, ArchivedBody, Body, Frame, FrameBuilder, Kind, FLAG_JSON, FLAG_PAGED, FLAG_PARTIAL, MAX_SENDER_LEN};
use crate::placement::LinkId;
use crate::presence::{PresenceLimits, RoomPresence};
use crate::room_rates::{top_k, PublishRate};
use crate::room::{InterestChange, Room, RoomError, RoomLimits};

/// Limits of a hub's room table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableLimits {
    /// Most rooms held at once.
    pub max_rooms: usize,
    /// A room with no interest and no publish for this long is dropped (with its history).
    pub idle_ttl_micros: u64,
    /// Per-room limits.
    pub room: RoomLimits,
    /// Most replayed payload bytes in one answer to a paged join ([`FLAG_PAGED`]); the rest is
    /// asked for again ([`FLAG_PARTIAL`]). At least one message is always replayed.
    pub join_replay_bytes: usize,
    /// Member counts and join/leave events told to Links (`presence.rs`); off by default here,
    /// on in the hub's config.
    #[serde(default)]
    pub presence: PresenceLimits,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_rooms: 100_000,
            idle_ttl_micros: 3_600_000_000,
            room: RoomLimits::default(),
            join_replay_bytes: 1 << 20,
            presence: PresenceLimits::default(),
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Room name not valid.
    #[error("invalid room name")]
    BadRoom,
    /// The room refused it (size, sender).
    #[error(transparent)]
    Room(#[from] RoomError),
    /// The table is full.
    #[error("too many rooms")]
    TooManyRooms,
    /// The room is moving between hubs (or this hub is not its owner now): retry shortly.
    #[error("room is moving to another hub")]
    Moving,
    /// The durable store did not answer: nothing was sequenced, or the store holds it under
    /// the same idempotency key — retry with the key.
    #[error("room store unavailable")]
    StoreUnavailable,
}

impl PublishError {
    /// HTTP-like status and static reason.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            PublishError::BadRoom => (400, "invalid room name"),
            PublishError::Room(e) => e.status(),
            PublishError::TooManyRooms => (503, "too many rooms"),
            PublishError::Moving => (503, "room is moving to another hub"),
            PublishError::StoreUnavailable => (503, "room store unavailable"),
        }
    }
}

/// Counters the driver exports as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Messages sequenced.
    pub published: u64,
    /// Message frames queued to Links (one per interested Link per message).
    pub link_sends: u64,
    /// Frames replayed for joins.
    pub replayed: u64,
    /// Gap answers given.
    pub gaps: u64,
    /// Frames from Links refused.
    pub refused: u64,
    /// Scans of a full table for idle rooms (at most one per [`FULL_SWEEP_INTERVAL_MICROS`]).
    pub full_sweeps: u64,
    /// `Presence` frames (member counts) queued to Links.
    pub presence_sends: u64,
    /// `Member` frames (join/leave events) queued to Links.
    pub member_sends: u64,
}

/// Least time between two scans of a full table for idle rooms, in micros.
pub const FULL_SWEEP_INTERVAL_MICROS: u64 = 1_000_000;

/// What a publish got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishAck {
    /// Its seq.
    pub seq: u64,
    /// The room's epoch the seq belongs to.
    pub epoch: u64,
    /// The idempotency key was seen before: `seq` is the first publish's, nothing was sent.
    pub duplicate: bool,
}

/// Every room this hub owns.
///
/// `S` hashes room names. Production keeps the default, `RandomState`: room names come from
/// clients, so the map's hashing must not be predictable (HashDoS). The instruction-count gate
/// (`core/benches/icount.rs`) passes a fixed hasher through [`RoomTable::with_hasher`] so its
/// counts do not move with the process's random keys.
#[derive(Debug)]
pub struct RoomTable<S = RandomState> {
    /// Boxed: a hash table keeps up to half its slots empty, and a slot of 440 bytes made each
    /// room (every user's personal room among them) cost ≈ 900 bytes of table; a slot is 32.
    rooms: HashMap<String, Box<RoomSlot>, S>,
    limits: TableLimits,
    transmit: VecDeque<(LinkId, Frame)>,
    stats: TableStats,
    /// State of the epoch generator (splitmix64).
    epochs: u64,
    /// Scans of the table when full.
    sweeps: Sweeps,
    /// Occupancy changes not polled yet; `None` = not tracked ([`RoomTable::track_occupancy`]).
    occupancy: Option<VecDeque<Occupancy>>,
    /// Rooms whose count must be told, by due time (each room at most once: its
    /// `RoomPresence::scheduled`); entries of rooms dropped meanwhile are skipped.
    presence_due: BinaryHeap<Reverse<(u64, String)>>,
}

/// A room's member count at this hub (the sum over its Links' interest) went from 0 to some
/// (`occupied`), or from some to 0: what the hub's webhooks report ([`RoomTable::poll_occupancy`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupancy {
    /// The room.
    pub room: String,
    /// True: 0 → some members; false: some → 0.
    pub occupied: bool,
    /// When the change was handled (the `now` of the input), micros.
    pub ts_micros: u64,
}

/// When a full table was last scanned for idle rooms, and how often it was.
#[derive(Debug, Default)]
struct Sweeps {
    /// `None`: never.
    last: Option<u64>,
    count: u64,
}

#[derive(Debug)]
struct RoomSlot {
    room: Room,
    last_active_micros: u64,
    presence: RoomPresence,
    /// Messages sequenced lately (`room_rates.rs`): what the hottest-rooms view ranks by.
    rate: PublishRate,
}

impl RoomTable {
    /// An empty table. `seed` drives the epochs of new rooms: pass fresh randomness in
    /// production (two hub lifetimes must not share it), a constant in tests.
    pub fn new(limits: TableLimits, seed: u64) -> Self {
        RoomTable::with_hasher(limits, seed, RandomState::new())
    }
}

impl<S: BuildHasher> RoomTable<S> {
    /// An empty table whose room names are hashed by `hasher` (see [`RoomTable`]: only the
    /// benches pass a fixed one).
    pub fn with_hasher(limits: TableLimits, seed: u64, hasher: S) -> Self {
        RoomTable {
            rooms: HashMap::with_hasher(hasher),
            limits,
            transmit: VecDeque::new(),
            stats: TableStats::default(),
            epochs: seed,
            sweeps: Sweeps::default(),
            occupancy: None,
            presence_due: BinaryHeap::new(),
        }
    }

    /// Starts (or stops) recording [`Occupancy`] changes for [`RoomTable::poll_occupancy`]. Off
    /// by default: nothing is kept for a driver that does not poll. The one place they are seen
    /// is interest handling (a Link's `InterestAdd` / `InterestRemove`, a Link gone).
    pub fn track_occupancy(&mut self, on: bool) {
        self.occupancy = on.then(VecDeque::new);
    }

    /// Next occupancy change, oldest first (only while tracked). At most one per room per
    /// interest input, so the driver polls them at the pace it feeds interest in.
    pub fn poll_occupancy(&mut self) -> Option<Occupancy> {
        self.occupancy.as_mut()?.pop_front()
    }

    /// A room, if held.
    pub fn room(&self, name: &str) -> Option<&Room> {
        self.rooms.get(name).map(|slot| &slot.room)
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// True without rooms.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> TableStats {
        TableStats { full_sweeps: self.sweeps.count, ..self.stats }
    }

    /// Sequences a message and queues it once per interested Link. A non-empty `key` is the
    /// publish's idempotency key: a repeat by the same sender is answered with the first seq.
    pub fn publish(
        &mut self,
        now: u64,
        room: &str,
        sender: &str,
        flags: u16,
        data: &[u8],
        key: &str,
    ) -> Result<PublishAck, PublishError> {
        let slot = slot(&mut self.rooms, &self.limits, &mut self.epochs, &mut self.sweeps, room, now)?;
        slot.last_active_micros = now;
        let epoch = slot.room.epoch();
        if !key.is_empty() {
            if let Some(seq) = slot.room.duplicate(now, sender, key) {
                return Ok(PublishAck { seq, epoch, duplicate: true });
            }
        }
        let published = slot.room.publish(now, sender, flags, data)?;
        slot.rate.record(now);
        let seq = published.seq;
        self.stats.published += 1;
        self.stats.link_sends += published.links.len() as u64;
        for &link in published.links {
            self.transmit.push_back((link, published.frame.clone()));
        }
        if !key.is_empty() {
            slot.room.remember_key(now, sender, key, seq);
        }
        Ok(PublishAck { seq, epoch, duplicate: false })
    }

    /// Checks a publish a durable store will be asked to sequence (room name, payload, sender,
    /// table space), as [`RoomTable::publish`] would; the room's slot is made if absent.
    pub fn check_publish(&mut self, now: u64, room: &str, sender: &str, data: &[u8]) -> Result<(), PublishError> {
        let slot = self.slot(room, now)?;
        slot.room.check_publish(sender, data)?;
        Ok(())
    }

    /// Installs a room's state read from a durable store: `epoch`, `last_seq` and the message
    /// frames it holds (oldest first, consecutive, ending at `last_seq`).
    ///
    /// `first`: the table's copy was never served (a placeholder made by interest), so it is
    /// replaced silently. Otherwise the Links holding members are caught up, never silently:
    /// a different epoch is a room-wide `Reset {request: 0}` followed by the new history; the
    /// same epoch gets the messages beyond the cached last seq (late, not lost), after a
    /// room-wide `Gap {request: 0}` for any the store no longer holds.
    pub fn load_stored(&mut self, now: u64, room: &str, epoch: u64, last_seq: u64, frames: Vec<Frame>, first: bool) -> Result<(), PublishError> {
        let slot = slot(&mut self.rooms, &self.limits, &mut self.epochs, &mut self.sweeps, room, now)?;
        slot.last_active_micros = now;
        if !first {
            let cached = slot.room.last_seq();
            let from = if slot.room.epoch() != epoch {
                let reset = FrameBuilder::new(room).seq(0).build(&Body::Reset { request: 0, epoch });
                push_to_links(&mut self.transmit, slot.room.links(), &reset);
                0
            } else {
                cached
            };
            if last_seq > from {
                let oldest = frames.first().map_or(last_seq + 1, Frame::seq);
                if oldest > from + 1 {
                    self.stats.gaps += 1;
                    let body = Body::Gap { request: 0, first_lost: from + 1, last_lost: oldest - 1, resume_from: oldest };
                    push_to_links(&mut self.transmit, slot.room.links(), &FrameBuilder::new(room).build(&body));
                }
                for frame in frames.iter().filter(|f| f.seq() > from) {
                    self.stats.link_sends += slot.room.links().len() as u64;
                    push_to_links(&mut self.transmit, slot.room.links(), frame);
                }
            }
        }
        slot.room.restore_history(epoch, last_seq, frames);
        Ok(())
    }

    /// Applies a message a durable store sequenced as `seq` of `epoch` and queues it once per
    /// interested Link. A new epoch (the store lost the room and started over) is announced to
    /// the Links first (room-wide `Reset`); a seq already held is ignored; a seq beyond the next
    /// is preceded by a room-wide `Gap` (never a silent jump).
    #[allow(clippy::too_many_arguments)]
    pub fn apply_stored(&mut self, now: u64, room: &str, epoch: u64, seq: u64, ts_micros: u64, sender: &str, flags: u16, data: &[u8]) -> Result<(), PublishError> {
        let slot = slot(&mut self.rooms, &self.limits, &mut self.epochs, &mut self.sweeps, room, now)?;
        slot.last_active_micros = now;
        if slot.room.epoch() != epoch {
            let reset = FrameBuilder::new(room).seq(0).build(&Body::Reset { request: 0, epoch });
            push_to_links(&mut self.transmit, slot.room.links(), &reset);
            slot.room.restore_history(epoch, 0, Vec::new());
        }
        let last = slot.room.last_seq();
        if seq <= last {
            return Ok(());
        }
        if seq > last + 1 {
            self.stats.gaps += 1;
            let body = Body::Gap { request: 0, first_lost: last + 1, last_lost: seq - 1, resume_from: seq };
            push_to_links(&mut self.transmit, slot.room.links(), &FrameBuilder::new(room).build(&body));
        }
        let published = slot.room.append_stored(seq, ts_micros, sender, flags, data);
        slot.rate.record(now);
        self.stats.published += 1;
        self.stats.link_sends += published.links.len() as u64;
        push_to_links(&mut self.transmit, published.links, &published.frame);
        Ok(())
    }

    /// Forgets a room (this hub no longer owns it); true if it was held. Frames already queued
    /// for Links still go out.
    pub fn evict(&mut self, room: &str) -> bool {
        self.rooms.remove(room).is_some()
    }

    /// Queues `frame` for one Link, in order with everything else the table sends it.
    pub fn send_to(&mut self, link: LinkId, frame: Frame) {
        self.transmit.push_back((link, frame));
    }

    /// Queues an `Error {request, code, reason}` for one Link.
    pub fn refuse_request(&mut self, link: LinkId, room: &str, request: u64, code: u16, reason: &'static str, retry_after_ms: u32) {
        let room = if is_valid_room(room) { room } else { "" };
        let error = FrameBuilder::new(room).build(&Body::Error { request, code, reason: reason.to_owned(), retry_after_ms });
        self.transmit.push_back((link, error));
    }

    /// Handles one frame a Link sent. Frames a hub does not take are answered with an error.
    pub fn handle_link_frame(&mut self, now: u64, link: LinkId, frame: &Frame) {
        match (frame.kind(), frame.body()) {
            (Kind::InterestAdd | Kind::InterestRemove, ArchivedBody::Interest { members, .. }) => {
                let members = if frame.kind() == Kind::InterestRemove { 0 } else { members.to_native() };
                self.handle_interest(now, link, frame.room(), members);
            }
            (Kind::Join, ArchivedBody::Join { request, since, epoch }) => {
                let since = since.as_ref().map(|s| s.to_native());
                let epoch = epoch.as_ref().map(|e| e.to_native());
                let paged = frame.flags() & FLAG_PAGED != 0;
                self.handle_join(now, link, frame.room(), request.to_native(), since, epoch, paged);
            }
            (Kind::Publish, ArchivedBody::Publish { request, key, data }) => {
                let request = request.to_native();
                match self.publish(now, frame.room(), frame.sender(), frame.flags(), data.as_slice(), key.as_str()) {
                    Ok(ack) => {
                        let body = Body::PublishAck { request, epoch: ack.epoch };
                        let ack = FrameBuilder::new(frame.room()).seq(ack.seq).build(&body);
                        self.transmit.push_back((link, ack));
                    }
                    Err(e) => self.refuse(link, frame.room(), request, e.status()),
                }
            }
            (Kind::Member, ArchivedBody::Member { joined }) => self.handle_member(link, frame.room(), frame.sender(), *joined),
            (Kind::MemberList, ArchivedBody::MemberList { users }) => {
                let limits = self.limits.presence;
                if let Some(slot) = self.rooms.get_mut(frame.room()) {
                    let linked = slot.room.members_on(link) > 0;
                    slot.presence.handle_member_list(&limits, link, linked, users.iter().map(|u| u.as_str()));
                }
            }
            (Kind::Heartbeat, ArchivedBody::Heartbeat { nonce }) => {
                let pong = FrameBuilder::new("").build(&Body::Heartbeat { nonce: nonce.to_native() });
                self.transmit.push_back((link, pong));
            }
            // Hello is the driver's business; leave needs no hub action (interest covers it).
            (Kind::Hello | Kind::Leave, _) => {}
            _ => {
                self.stats.refused += 1;
                self.refuse(link, "", 0, (400, "frame kind not accepted by hub"));
            }
        }
    }

    /// A Link's connection ended: it holds no members anymore as far as this hub knows.
    pub fn handle_link_down(&mut self, now: u64, link: LinkId) {
        self.transmit.retain(|(to, _)| *to != link);
        let before = self.transmit.len();
        let limits = self.limits.presence;
        let mut changed = Vec::new();
        for (name, slot) in self.rooms.iter_mut() {
            let members_before = slot.room.members();
            if slot.room.clear_interest_of(link) {
                slot.last_active_micros = now;
                let members = slot.room.members();
                note_occupancy(&mut self.occupancy, name, members_before, members, now);
                let links = slot.room.links();
                if slot.presence.handle_interest(&limits, name, link, InterestChange::Removed, members, links, now, &mut self.transmit) {
                    changed.push(name.clone());
                }
            }
        }
        self.count_presence(before);
        for room in changed {
            self.schedule_presence(&room, now);
        }
    }

    /// Sends the room-wide `Presence` frames that are due (call often: after each batch of
    /// events and on the driver's timer; it looks only at rooms due by `now`).
    pub fn handle_presence_timeout(&mut self, now: u64) {
        let limits = self.limits.presence;
        let before = self.transmit.len();
        while let Some(Reverse((due, _))) = self.presence_due.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, room))) = self.presence_due.pop() else { break };
            let Some(slot) = self.rooms.get_mut(&room) else { continue };
            slot.presence.scheduled = false;
            let members = slot.room.members();
            if slot.presence.poll(&limits, &room, now, members, slot.room.links(), &mut self.transmit) {
                slot.presence.scheduled = true;
                let at = slot.presence.due(&limits, now);
                self.presence_due.push(Reverse((at, room)));
            }
        }
        self.count_presence(before);
    }

    /// A room's presence: (members, events on, users while events are on).
    pub fn presence(&self, room: &str) -> Option<(u64, bool, Option<Vec<String>>)> {
        self.rooms.get(room).map(|slot| (slot.room.members(), slot.presence.events(), slot.presence.users()))
    }

    /// Rooms whose name starts with `prefix`, biggest first (then by name), at most `limit`:
    /// (room, members, Links). Rooms without members are left out, and so are personal rooms
    /// (`user:*`, one per connected user) unless `prefix` asks for them.
    pub fn rooms_by_members(&self, prefix: &str, limit: usize) -> Vec<(String, u64, Vec<LinkId>)> {
        let personal = prefix.starts_with(crate::system_rooms::PERSONAL_PREFIX);
        let mut rooms: Vec<(&str, u64)> = self
            .rooms
            .iter()
            .filter(|(name, slot)| name.starts_with(prefix) && !slot.room.links().is_empty())
            .filter(|(name, _)| personal || crate::system_rooms::personal_user(name).is_none())
            .map(|(name, slot)| (name.as_str(), slot.room.members()))
            .collect();
        let limit = limit.min(rooms.len());
        if limit < rooms.len() && limit > 0 {
            rooms.select_nth_unstable_by(limit - 1, |a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        }
        rooms.truncate(limit);
        rooms.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        rooms.into_iter().filter_map(|(name, members)| self.rooms.get(name).map(|s| (name.to_owned(), members, s.room.links().to_vec()))).collect()
    }

    /// The `limit` rooms with the highest publish rate at `now` (messages per second over the
    /// last `room_rates::WINDOW_MICROS`), biggest first (then by name): (room, rate, members).
    /// Rooms that published nothing lately are left out. One walk over the table.
    pub fn rooms_by_rate(&self, now: u64, limit: usize) -> Vec<(String, f64, u64)> {
        top_k(self.rooms.iter().map(|(name, slot)| (name.as_str(), slot.rate.per_sec(now), slot.room.members())), limit)
    }

    /// Counts the presence frames queued since the queue held `before` frames.
    fn count_presence(&mut self, before: usize) {
        for (_, frame) in self.transmit.range(before..) {
            match frame.kind() {
                Kind::Presence => self.stats.presence_sends += 1,
                Kind::Member => self.stats.member_sends += 1,
                _ => {}
            }
        }
    }

    fn schedule_presence(&mut self, room: &str, now: u64) {
        let limits = self.limits.presence;
        let Some(slot) = self.rooms.get_mut(room) else { return };
        if slot.presence.scheduled || !limits.is_on() {
            return;
        }
        slot.presence.scheduled = true;
        self.presence_due.push(Reverse((slot.presence.due(&limits, now), room.to_owned())));
    }

    fn handle_member(&mut self, link: LinkId, room: &str, user: &str, joined: bool) {
        let limits = self.limits.presence;
        let Some(slot) = self.rooms.get_mut(room) else { return };
        let before = self.transmit.len();
        let linked = slot.room.members_on(link) > 0;
        slot.presence.handle_member(&limits, room, link, linked, user, joined, slot.room.links(), &mut self.transmit);
        self.count_presence(before);
    }

    /// Drops idle rooms (no interest, no publish for `idle_ttl_micros`).
    pub fn handle_timeout(&mut self, now: u64) {
        drop_idle(&mut self.rooms, self.limits.idle_ttl_micros, now);
    }

    /// Next frame to send, and to which Link.
    pub fn poll_transmit(&mut self) -> Option<(LinkId, Frame)> {
        self.transmit.pop_front()
    }

    /// Frames waiting in `poll_transmit`.
    pub fn pending_transmit(&self) -> usize {
        self.transmit.len()
    }

    fn handle_interest(&mut self, now: u64, link: LinkId, room: &str, members: u64) {
        if members == 0 && !self.rooms.contains_key(room) {
            return; // nothing to remove; an `InterestRemove` never creates a room
        }
        let slot = match slot(&mut self.rooms, &self.limits, &mut self.epochs, &mut self.sweeps, room, now) {
            Ok(slot) => slot,
            Err(e) => return self.refuse(link, room, 0, e.status()),
        };
        slot.last_active_micros = now;
        let members_before = slot.room.members();
        let change = slot.room.handle_interest(link, members);
        let limits = self.limits.presence;
        let before = self.transmit.len();
        let total = slot.room.members();
        note_occupancy(&mut self.occupancy, room, members_before, total, now);
        let owed = slot.presence.handle_interest(&limits, room, link, change, total, slot.room.links(), now, &mut self.transmit);
        self.count_presence(before);
        if owed {
            self.schedule_presence(room, now);
        }
    }

    /// Answers a join: reset / gap / replay / joined. A `paged` join's replay stops once it holds
    /// `join_replay_bytes` of payload, and its `Joined` then says so ([`FLAG_PARTIAL`]): a
    /// thousand joins from `since: 0` cost the hub's queue to the Link a page each, not a
    /// history each.
    #[allow(clippy::too_many_arguments)]
    fn handle_join(&mut self, now: u64, link: LinkId, room_name: &str, request: u64, since: Option<u64>, epoch: Option<u64>, paged: bool) {
        let cap = self.limits.join_replay_bytes;
        let slot = match self.slot(room_name, now) {
            Ok(slot) => slot,
            Err(e) => return self.refuse(link, room_name, request, e.status()),
        };
        let answer = slot.room.join(since, epoch);
        let out = &mut self.transmit;
        if answer.reset {
            let reset = FrameBuilder::new(room_name).seq(answer.last_seq).build(&Body::Reset { request, epoch: answer.epoch });
            out.push_back((link, reset));
        }
        if let Some(lost) = answer.gap {
            self.stats.gaps += 1;
            let body = Body::Gap { request, first_lost: lost.first_lost, last_lost: lost.last_lost, resume_from: lost.resume_from };
            out.push_back((link, FrameBuilder::new(room_name).build(&body)));
        }
        let mut replayed_bytes = 0usize;
        let mut partial = false;
        for frame in answer.frames {
            if paged && replayed_bytes > 0 && replayed_bytes + frame.payload().len() > cap {
                partial = true;
                break;
            }
            replayed_bytes += frame.payload().len();
            self.stats.replayed += 1;
            let replayed = FrameBuilder::new(room_name)
                .seq(frame.seq())
                .ts_micros(frame.ts_micros())
                .sender(frame.sender())
                .flags(frame.flags())
                .build(&Body::Replay { request, data: frame.payload().to_vec() });
            out.push_back((link, replayed));
        }
        let flags = if partial { FLAG_PARTIAL } else { 0 };
        let joined = FrameBuilder::new(room_name).seq(answer.last_seq).flags(flags).build(&Body::Joined { request, epoch: answer.epoch });
        out.push_back((link, joined));
    }

    fn refuse(&mut self, link: LinkId, room: &str, request: u64, (code, reason): (u16, &'static str)) {
        let room = if is_valid_room(room) { room } else { "" };
        let error = FrameBuilder::new(room).build(&Body::Error { request, code, reason: reason.to_owned(), retry_after_ms: 0 });
        self.transmit.push_back((link, error));
    }

    fn slot(&mut self, room: &str, now: u64) -> Result<&mut RoomSlot, PublishError> {
        slot(&mut self.rooms, &self.limits, &mut self.epochs, &mut self.sweeps, room, now)
    }
}

/// Records an [`Occupancy`] change of `room` (member count `before` → `after`), if tracked.
fn note_occupancy(occupancy: &mut Option<VecDeque<Occupancy>>, room: &str, before: u64, after: u64, now: u64) {
    if let Some(changes) = occupancy {
        if (before == 0) != (after == 0) {
            changes.push_back(Occupancy { room: room.to_owned(), occupied: after > 0, ts_micros: now });
        }
    }
}

/// Queues one frame (a clone: a refcount bump) for each of `links`.
fn push_to_links(out: &mut VecDeque<(LinkId, Frame)>, links: &[LinkId], frame: &Frame) {
    for &link in links {
        out.push_back((link, frame.clone()));
    }
}

/// What the hub does with a frame from a Link it does not trust (one that attached over the
/// network), before the table sees it ([`check_link_frame`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFrameCheck {
    /// Hand it to [`RoomTable::handle_link_frame`].
    Accept,
    /// A kind a Link never sends (hub → Link kinds, a second `Hello`): drop it, warn, count it.
    Drop(&'static str),
    /// A publish the hub will not sequence: answer `Error {request, code, reason}` to the Link.
    Refuse {
        /// The publish's request id.
        request: u64,
        /// HTTP-like status.
        code: u16,
        /// Why.
        reason: &'static str,
    },
}

/// Re-validates a frame a network Link sent, as an HTTP publish is validated: only the kinds a
/// Link sends (interest, join, leave, publish, heartbeat); a publish's sender within
/// [`MAX_SENDER_LEN`] bytes, only known flags, a [`FLAG_JSON`] payload that parses as JSON and
/// any other payload UTF-8. (The frame decoder already checked lengths, room and sender UTF-8.)
/// Trusted in-process Links skip this: their Link validated the client's request already.
/// Presence reports (`Member`, a bounded `MemberList`) and `UserInfo` answers (JSON) pass too.
pub fn check_link_frame(frame: &Frame) -> LinkFrameCheck {
    match (frame.kind(), frame.body()) {
        (Kind::InterestAdd | Kind::InterestRemove | Kind::Join | Kind::Leave | Kind::Heartbeat, _) => LinkFrameCheck::Accept,
        (Kind::Publish, ArchivedBody::Publish { request, data, .. }) => {
            let refuse = |reason| LinkFrameCheck::Refuse { request: request.to_native(), code: 400, reason };
            let data = data.as_slice();
            if frame.sender().len() > MAX_SENDER_LEN {
                refuse("invalid sender")
            } else if frame.flags() & !FLAG_JSON != 0 {
                refuse("unknown publish flags")
            } else if frame.flags() & FLAG_JSON != 0 {
                if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
                    LinkFrameCheck::Accept
                } else {
                    refuse("payload flagged JSON is not valid JSON")
                }
            } else if std::str::from_utf8(data).is_err() {
                refuse("payload is not UTF-8")
            } else {
                LinkFrameCheck::Accept
            }
        }
        (Kind::Member, _) => LinkFrameCheck::Accept,
        (Kind::MemberList, ArchivedBody::MemberList { users }) => {
            if users.len() > MAX_MEMBER_LIST || users.iter().any(|u| u.is_empty() || u.len() > MAX_SENDER_LEN) {
                LinkFrameCheck::Drop("member list too long or with a bad user id")
            } else {
                LinkFrameCheck::Accept
            }
        }
        (Kind::UserInfo, ArchivedBody::UserInfo { json, .. }) => match serde_json::from_slice::<serde::de::IgnoredAny>(json.as_slice()) {
            Ok(_) => LinkFrameCheck::Accept,
            Err(_) => LinkFrameCheck::Drop("user info is not JSON"),
        },
        (Kind::Hello, _) => LinkFrameCheck::Drop("hello after the first frame"),
        _ => LinkFrameCheck::Drop("frame kind a Link may not send"),
    }
}

/// Most users in one `MemberList` frame a hub accepts (a room has join/leave events only up to
/// `hub.presence_events_max_members` members; this bounds a Link's list with margin).
pub const MAX_MEMBER_LIST: usize = 65_536;

/// The next epoch of a splitmix64 generator whose state is `state`: well mixed, never 0 (0 reads
/// as "no epoch" in logs and tools). The table draws new rooms' epochs with it; a hub with a
/// durable store draws the candidate epochs it offers the store with it too.
pub fn next_epoch(state: &mut u64) -> u64 {
    loop {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z != 0 {
            return z;
        }
    }
}

/// The slot of `room`, created if absent and the table has space. A full table is scanned for
/// idle rooms at most once per [`FULL_SWEEP_INTERVAL_MICROS`]; in between, refused at once.
fn slot<'a, S: BuildHasher>(
    rooms: &'a mut HashMap<String, Box<RoomSlot>, S>,
    limits: &TableLimits,
    epochs: &mut u64,
    sweeps: &mut Sweeps,
    room: &str,
    now: u64,
) -> Result<&'a mut RoomSlot, PublishError> {
    if !is_valid_room(room) {
        return Err(PublishError::BadRoom);
    }
    if !rooms.contains_key(room) {
        if rooms.len() >= limits.max_rooms {
            let due = sweeps.last.is_none_or(|last| now.saturating_sub(last) >= FULL_SWEEP_INTERVAL_MICROS);
            if !due {
                return Err(PublishError::TooManyRooms);
            }
            sweeps.last = Some(now);
            sweeps.count += 1;
            drop_idle(rooms, limits.idle_ttl_micros, now);
            if rooms.len() >= limits.max_rooms {
                return Err(PublishError::TooManyRooms);
            }
        }
        let fresh = RoomSlot { room: Room::new(room, limits.room, next_epoch(epochs)), last_active_micros: now, presence: RoomPresence::new(room), rate: PublishRate::default() };
        rooms.insert(room.to_owned(), Box::new(fresh));
    }
    rooms.get_mut(room).map(|slot| &mut **slot).ok_or(PublishError::BadRoom)
}

fn drop_idle<S>(rooms: &mut HashMap<String, Box<RoomSlot>, S>, ttl: u64, now: u64) {
    rooms.retain(|_, slot| !slot.room.links().is_empty() || now.saturating_sub(slot.last_active_micros) < ttl);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(room: &str, link: u32, members: u64) -> Frame {
        let builder = FrameBuilder::new(room);
        let builder = if members == 0 { builder.interest_remove() } else { builder };
        builder.build(&Body::Interest { link, members })
    }

    fn drain(table: &mut RoomTable) -> Vec<(LinkId, Frame)> {
        std::iter::from_fn(|| table.poll_transmit()).collect()
    }

    #[test]
    fn rooms_by_rate_ranks_rooms_by_what_they_published_lately() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("hot", 1, 4));
        let start = 10 * crate::room_rates::WINDOW_MICROS;
        for i in 0..40 {
            assert!(table.publish(start + i * 1000, "hot", "a", 0, b"x", "").is_ok());
        }
        for i in 0..5 {
            assert!(table.publish(start + i * 1000, "warm", "a", 0, b"x", "").is_ok());
        }
        // A duplicate (same idempotency key) and a refused publish are not counted.
        assert!(table.publish(start, "cold", "a", 0, b"x", "k").is_ok());
        assert!(table.publish(start, "cold", "a", 0, b"x", "k").is_ok_and(|ack| ack.duplicate));
        let top = table.rooms_by_rate(start + 50_000, 2);
        assert_eq!(top.iter().map(|(r, _, m)| (r.as_str(), *m)).collect::<Vec<_>>(), vec![("hot", 4), ("warm", 0)]);
        assert!(top[0].1 > top[1].1 && top[1].1 > 0.0);
        let all = table.rooms_by_rate(start + 50_000, 10);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].1 / all[2].1, 40.0, "cold counted once");
        assert!(table.rooms_by_rate(start + 3 * crate::room_rates::WINDOW_MICROS, 10).is_empty(), "silent rooms read 0");
    }

    #[test]
    fn a_message_goes_once_to_each_interested_link() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("lobby", 1, 10));
        table.handle_link_frame(1, LinkId(2), &interest("lobby", 2, 1));
        table.handle_link_frame(1, LinkId(3), &interest("other", 3, 1));
        assert_eq!(table.publish(5, "lobby", "alice", 0, b"hi", "").map(|a| a.seq), Ok(1));
        let sent = drain(&mut table);
        assert_eq!(sent.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![LinkId(1), LinkId(2)]);
        assert_eq!(sent[0].1.as_bytes().as_ptr(), sent[1].1.as_bytes().as_ptr(), "one encoding shared");
        assert_eq!(table.stats().link_sends, 2);
        table.handle_link_frame(2, LinkId(2), &interest("lobby", 2, 0));
        assert_eq!(table.publish(6, "lobby", "alice", 0, b"again", "").map(|a| a.seq), Ok(2));
        assert_eq!(drain(&mut table).len(), 1);
        assert_eq!(table.room("lobby").map(Room::members), Some(10));
    }

    #[test]
    fn join_replays_then_answers_joined_and_client_publish_is_acked() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        for i in 0..3 {
            assert_eq!(table.publish(i, "lobby", "bob", 0, b"m", "").map(|a| a.seq), Ok(i + 1));
        }
        let join = FrameBuilder::new("lobby").build(&Body::Join { request: 77, since: Some(1), epoch: None });
        table.handle_link_frame(10, LinkId(4), &join);
        let out = drain(&mut table);
        let kinds: Vec<(Kind, u64)> = out.iter().map(|(_, f)| (f.kind(), f.seq())).collect();
        assert_eq!(kinds, vec![(Kind::Replay, 2), (Kind::Replay, 3), (Kind::Joined, 3)]);
        assert!(matches!(out[0].1.body(), ArchivedBody::Replay { request, .. } if request.to_native() == 77));
        let publish = FrameBuilder::new("lobby").sender("carol").build(&Body::Publish { request: 5, key: String::new(), data: b"x".to_vec() });
        table.handle_link_frame(11, LinkId(4), &publish);
        let out = drain(&mut table);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].1.kind(), out[0].1.seq()), (Kind::PublishAck, 4));
    }

    #[test]
    fn a_paged_join_gets_a_page_and_a_partial_joined() {
        let limits = TableLimits { join_replay_bytes: 250, ..TableLimits::default() };
        let mut table = RoomTable::new(limits, 7);
        for i in 0..10 {
            assert_eq!(table.publish(i, "big", "bob", 0, &[b'x'; 100], "").map(|a| a.seq), Ok(i + 1));
        }
        let paged = FrameBuilder::new("big").flags(FLAG_PAGED).build(&Body::Join { request: 1, since: Some(0), epoch: None });
        table.handle_link_frame(20, LinkId(4), &paged);
        let out = drain(&mut table);
        let kinds: Vec<(Kind, u64)> = out.iter().map(|(_, f)| (f.kind(), f.seq())).collect();
        assert_eq!(kinds, vec![(Kind::Replay, 1), (Kind::Replay, 2), (Kind::Joined, 10)], "a page of 250 bytes");
        assert_eq!(out[2].1.flags() & FLAG_PARTIAL, FLAG_PARTIAL);
        // The continuation gets the next page; the last page's Joined is not partial.
        let next = FrameBuilder::new("big").flags(FLAG_PAGED).build(&Body::Join { request: 2, since: Some(8), epoch: None });
        table.handle_link_frame(21, LinkId(4), &next);
        let out = drain(&mut table);
        let kinds: Vec<(Kind, u64)> = out.iter().map(|(_, f)| (f.kind(), f.seq())).collect();
        assert_eq!(kinds, vec![(Kind::Replay, 9), (Kind::Replay, 10), (Kind::Joined, 10)]);
        assert_eq!(out[2].1.flags() & FLAG_PARTIAL, 0);
        // A join without the flag (a Link's own rejoin) gets the whole replay.
        let whole = FrameBuilder::new("big").build(&Body::Join { request: 3, since: Some(0), epoch: None });
        table.handle_link_frame(22, LinkId(4), &whole);
        assert_eq!(drain(&mut table).len(), 11);
        // A message bigger than the cap still goes, alone: every page makes progress.
        let tiny = TableLimits { join_replay_bytes: 1, ..TableLimits::default() };
        let mut table = RoomTable::new(tiny, 7);
        assert!(table.publish(0, "one", "bob", 0, &[b'x'; 100], "").is_ok());
        let join = FrameBuilder::new("one").flags(FLAG_PAGED).build(&Body::Join { request: 4, since: Some(0), epoch: None });
        table.handle_link_frame(23, LinkId(4), &join);
        let kinds: Vec<Kind> = drain(&mut table).iter().map(|(_, f)| f.kind()).collect();
        assert_eq!(kinds, vec![Kind::Replay, Kind::Joined]);
    }

    #[test]
    fn join_outside_the_window_gets_a_gap_first() {
        let limits = TableLimits { room: RoomLimits { history_messages: 2, ..RoomLimits::default() }, ..TableLimits::default() };
        let mut table = RoomTable::new(limits, 7);
        for i in 0..5 {
            let _ = table.publish(i, "r", "u", 0, b"m", "").map(|a| a.seq);
        }
        table.handle_link_frame(1, LinkId(1), &FrameBuilder::new("r").build(&Body::Join { request: 1, since: Some(0), epoch: None }));
        let out = drain(&mut table);
        assert_eq!(out[0].1.kind(), Kind::Gap);
        assert!(matches!(out[0].1.body(),
            ArchivedBody::Gap { first_lost, last_lost, resume_from, .. }
            if (first_lost.to_native(), last_lost.to_native(), resume_from.to_native()) == (1, 3, 4)));
        assert_eq!(out.iter().skip(1).map(|(_, f)| f.seq()).collect::<Vec<_>>(), vec![4, 5, 5]);
    }

    #[test]
    fn bad_input_is_refused_and_the_table_is_bounded() {
        let limits = TableLimits { max_rooms: 2, ..TableLimits::default() };
        let mut table = RoomTable::new(limits, 7);
        assert_eq!(table.publish(1, "bad room", "u", 0, b"", "").map(|a| a.seq), Err(PublishError::BadRoom));
        assert_eq!(table.publish(1, "a", "u", 0, b"", "").map(|a| a.seq), Ok(1));
        assert_eq!(table.publish(1, "b", "u", 0, b"", "").map(|a| a.seq), Ok(1));
        assert_eq!(table.publish(2, "c", "u", 0, b"", "").map(|a| a.seq), Err(PublishError::TooManyRooms));
        // After the idle TTL the idle rooms make way.
        assert_eq!(table.publish(2 + limits.idle_ttl_micros, "c", "u", 0, b"", "").map(|a| a.seq), Ok(1));
        let stray = FrameBuilder::new("a").seq(1).build(&Body::Message { data: vec![] });
        table.handle_link_frame(3, LinkId(1), &stray);
        let out = drain(&mut table);
        assert!(matches!(out.last().map(|(_, f)| f.body()), Some(ArchivedBody::Error { code, .. }) if code.to_native() == 400));
    }

    #[test]
    fn rooms_get_distinct_epochs_and_a_stale_epoch_is_reset() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        let first = table.publish(1, "a", "u", 0, b"m", "").expect("ok").epoch;
        let other = table.publish(1, "b", "u", 0, b"m", "").expect("ok").epoch;
        assert_ne!(first, other);
        let mut restarted = RoomTable::new(TableLimits::default(), 8);
        let again = restarted.publish(1, "a", "u", 0, b"m", "").expect("ok").epoch;
        assert_ne!(first, again, "another hub lifetime, another epoch");
        // A Link that still holds a position of the old life of "a" is told to reset, then
        // gets the new life's history from its start.
        let join = FrameBuilder::new("a").build(&Body::Join { request: 3, since: Some(1), epoch: Some(first) });
        restarted.handle_link_frame(2, LinkId(1), &join);
        let out = drain(&mut restarted);
        let kinds: Vec<(Kind, u64)> = out.iter().map(|(_, f)| (f.kind(), f.seq())).collect();
        assert_eq!(kinds, vec![(Kind::Reset, 1), (Kind::Replay, 1), (Kind::Joined, 1)]);
        assert!(matches!(out[0].1.body(),
            ArchivedBody::Reset { request, epoch } if request.to_native() == 3 && epoch.to_native() == again));
        assert!(matches!(out[2].1.body(),
            ArchivedBody::Joined { request, epoch } if request.to_native() == 3 && epoch.to_native() == again));
    }

    #[test]
    fn a_retried_publish_is_sequenced_once() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("r", 1, 1));
        let first = table.publish(2, "r", "alice", 0, b"m", "k").expect("ok");
        assert!(!first.duplicate);
        let retry = table.publish(3, "r", "alice", 0, b"m", "k").expect("ok");
        assert_eq!((retry.seq, retry.epoch, retry.duplicate), (first.seq, first.epoch, true));
        assert_eq!(drain(&mut table).len(), 1, "the retry is not sent again");
        assert_eq!(table.publish(4, "r", "bob", 0, b"m", "k").map(|a| (a.seq, a.duplicate)), Ok((2, false)));
        assert_eq!(drain(&mut table).len(), 1, "another sender's key is another publish");
        // Over the Link: the ack of a retried client publish carries the first seq.
        let publish = FrameBuilder::new("r").sender("alice").build(&Body::Publish { request: 9, key: "k".into(), data: b"m".to_vec() });
        table.handle_link_frame(5, LinkId(1), &publish);
        let out = drain(&mut table);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].1.body(), ArchivedBody::PublishAck { request, epoch }
            if request.to_native() == 9 && epoch.to_native() == first.epoch));
        assert_eq!(out[0].1.seq(), first.seq);
    }

    #[test]
    fn a_full_table_refuses_new_rooms_in_constant_time_and_sweeps_at_most_once_a_second() {
        let limits = TableLimits { max_rooms: 3, idle_ttl_micros: 10, ..TableLimits::default() };
        let mut table = RoomTable::new(limits, 7);
        // A Link holds interest in every room: nothing is idle.
        for room in ["a", "b", "c"] {
            table.handle_link_frame(1, LinkId(1), &interest(room, 1, 1));
        }
        // An attacker joins thousands of random rooms at the same instant: one sweep, then
        // each attempt is refused without scanning the table.
        for i in 0..10_000u32 {
            let join = FrameBuilder::new(&format!("random-{i}")).build(&Body::Join { request: u64::from(i) + 1, since: None, epoch: None });
            table.handle_link_frame(100, LinkId(2), &join);
        }
        assert_eq!(table.stats().full_sweeps, 1);
        assert_eq!(table.len(), 3);
        // Removing interest in rooms that do not exist creates none.
        table.handle_link_frame(100, LinkId(2), &interest("never-joined", 2, 0));
        assert!(table.room("never-joined").is_none());
        let refused = drain(&mut table);
        assert_eq!(refused.len(), 10_000);
        assert!(refused.iter().all(|(link, f)| *link == LinkId(2)
            && matches!(f.body(), ArchivedBody::Error { code, .. } if code.to_native() == 503)));
        // Real rooms keep working.
        assert_eq!(table.publish(101, "a", "u", 0, b"m", "").map(|a| a.seq), Ok(1));
        // Once the interest is gone and the TTL passed, the next sweep (a second later) makes way.
        table.handle_link_frame(200, LinkId(1), &interest("b", 1, 0));
        assert_eq!(table.publish(300, "d", "u", 0, b"", "").map(|a| a.seq), Err(PublishError::TooManyRooms), "no sweep yet");
        assert_eq!(table.stats().full_sweeps, 1);
        assert_eq!(table.publish(100 + FULL_SWEEP_INTERVAL_MICROS, "d", "u", 0, b"", "").map(|a| a.seq), Ok(1));
        assert_eq!(table.stats().full_sweeps, 2);
        assert!(table.room("b").is_none(), "the idle room made way");
    }

    #[test]
    fn frames_from_network_links_are_revalidated() {
        let publish = |flags, data: &[u8]| {
            FrameBuilder::new("r").sender("alice").flags(flags).build(&Body::Publish { request: 9, key: String::new(), data: data.to_vec() })
        };
        assert_eq!(check_link_frame(&publish(FLAG_JSON, br#"{"a":1}"#)), LinkFrameCheck::Accept);
        assert_eq!(check_link_frame(&publish(0, b"plain text")), LinkFrameCheck::Accept);
        assert_eq!(
            check_link_frame(&publish(FLAG_JSON, b"1}, \"injected\": {")),
            LinkFrameCheck::Refuse { request: 9, code: 400, reason: "payload flagged JSON is not valid JSON" }
        );
        assert_eq!(
            check_link_frame(&publish(0, &[0xff, 0xfe])),
            LinkFrameCheck::Refuse { request: 9, code: 400, reason: "payload is not UTF-8" }
        );
        assert!(matches!(check_link_frame(&publish(0x80, b"x")), LinkFrameCheck::Refuse { .. }));
        assert_eq!(check_link_frame(&interest("r", 1, 1)), LinkFrameCheck::Accept);
        let message = Frame::message("r", 1, 1, "u", 0, b"m");
        assert!(matches!(check_link_frame(&message), LinkFrameCheck::Drop(_)));
        let hello = FrameBuilder::new("").build(&Body::Hello { link: 1, secret: "s".into(), ws: String::new(), quic: String::new(), admin: String::new() });
        assert!(matches!(check_link_frame(&hello), LinkFrameCheck::Drop(_)));
        // The owner map goes hub → Link only: a Link that sends one is dropped, and the table
        // refuses it too.
        let map = FrameBuilder::new("").build(&Body::OwnerMap { version: 9, hubs: vec![0] });
        assert_eq!(check_link_frame(&map), LinkFrameCheck::Drop("frame kind a Link may not send"));
        let mut table = RoomTable::new(TableLimits::default(), 1);
        table.handle_link_frame(0, LinkId(1), &map);
        let answers = drain(&mut table);
        assert!(matches!(answers.as_slice(), [(LinkId(1), f)] if f.kind() == Kind::Error), "{answers:?}");
    }

    #[test]
    fn occupancy_changes_are_recorded_once_per_edge_when_tracked() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("untracked", 1, 1));
        assert_eq!(table.poll_occupancy(), None, "off by default");
        table.track_occupancy(true);
        let occupied = |room: &str, occupied, ts_micros| Some(Occupancy { room: room.into(), occupied, ts_micros });
        table.handle_link_frame(2, LinkId(1), &interest("lobby", 1, 2));
        table.handle_link_frame(3, LinkId(2), &interest("lobby", 2, 5));
        table.handle_link_frame(4, LinkId(1), &interest("lobby", 1, 1));
        assert_eq!(table.poll_occupancy(), occupied("lobby", true, 2));
        assert_eq!(table.poll_occupancy(), None, "more members or fewer but not 0: no change");
        table.handle_link_frame(5, LinkId(1), &interest("lobby", 1, 0));
        assert_eq!(table.poll_occupancy(), None, "Link 2 still has members");
        table.handle_link_frame(6, LinkId(1), &interest("other", 1, 1));
        table.handle_link_down(7, LinkId(2));
        table.handle_link_down(8, LinkId(1));
        let mut rest: Vec<Occupancy> = std::iter::from_fn(|| table.poll_occupancy()).collect();
        rest[1..].sort_by(|a, b| a.room.cmp(&b.room));
        assert_eq!(rest, vec![
            Occupancy { room: "other".into(), occupied: true, ts_micros: 6 },
            Occupancy { room: "lobby".into(), occupied: false, ts_micros: 7 },
            Occupancy { room: "other".into(), occupied: false, ts_micros: 8 },
            Occupancy { room: "untracked".into(), occupied: false, ts_micros: 8 },
        ]);
        // Removing interest a room never had changes nothing.
        table.handle_link_frame(9, LinkId(3), &interest("lobby", 3, 0));
        assert_eq!(table.poll_occupancy(), None);
    }

    #[test]
    fn link_down_voids_its_interest() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("lobby", 1, 3));
        table.handle_link_down(2, LinkId(1));
        let _ = table.publish(3, "lobby", "u", 0, b"m", "").map(|a| a.seq);
        assert!(drain(&mut table).is_empty());
    }

    fn stored(room: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Frame> {
        seqs.map(|seq| Frame::message(room, seq, seq * 10, "u", 0, format!("m{seq}").as_bytes())).collect()
    }

    fn kinds(sent: &[(LinkId, Frame)]) -> Vec<(Kind, u64)> {
        sent.iter().map(|(_, f)| (f.kind(), f.seq())).collect()
    }

    #[test]
    fn a_first_load_replaces_the_placeholder_silently_and_joins_replay_from_the_store() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("lobby", 1, 2));
        table.load_stored(2, "lobby", 0xabc, 5, stored("lobby", 3..=5), true).expect("loaded");
        assert!(drain(&mut table).is_empty(), "nothing was served under the placeholder epoch");
        let room = table.room("lobby").expect("room");
        assert_eq!((room.epoch(), room.last_seq(), room.oldest_seq()), (0xabc, 5, Some(3)));
        assert_eq!(room.links(), &[LinkId(1)], "interest kept");
        let join = FrameBuilder::new("lobby").build(&Body::Join { request: 9, since: Some(3), epoch: Some(0xabc) });
        table.handle_link_frame(3, LinkId(1), &join);
        assert_eq!(kinds(&drain(&mut table)), vec![(Kind::Replay, 4), (Kind::Replay, 5), (Kind::Joined, 5)]);
    }

    #[test]
    fn stored_publishes_fan_out_in_order_and_never_jump_silently() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("lobby", 1, 1));
        table.load_stored(1, "lobby", 0xabc, 2, stored("lobby", 1..=2), true).expect("loaded");
        table.apply_stored(2, "lobby", 0xabc, 3, 30, "u", 0, b"m3").expect("applied");
        table.apply_stored(2, "lobby", 0xabc, 3, 30, "u", 0, b"m3").expect("a seq already held is ignored");
        table.apply_stored(2, "lobby", 0xabc, 6, 60, "u", 0, b"m6").expect("applied");
        let sent = drain(&mut table);
        assert_eq!(kinds(&sent), vec![(Kind::Message, 3), (Kind::Gap, 0), (Kind::Message, 6)]);
        assert!(matches!(sent[1].1.body(), ArchivedBody::Gap { request, first_lost, last_lost, .. }
            if request.to_native() == 0 && first_lost.to_native() == 4 && last_lost.to_native() == 5));
        // A new epoch from the store (it lost the room): a room-wide reset, then seq 1.
        table.apply_stored(3, "lobby", 0xdef, 1, 70, "u", 0, b"n1").expect("applied");
        let sent = drain(&mut table);
        assert_eq!(kinds(&sent), vec![(Kind::Reset, 0), (Kind::Message, 1)]);
        assert!(matches!(sent[0].1.body(), ArchivedBody::Reset { request, epoch } if request.to_native() == 0 && epoch.to_native() == 0xdef));
        assert_eq!(table.room("lobby").map(|r| (r.epoch(), r.last_seq())), Some((0xdef, 1)));
    }

    #[test]
    fn a_reload_catches_links_up_on_what_the_store_kept() {
        let mut table = RoomTable::new(TableLimits::default(), 7);
        table.handle_link_frame(1, LinkId(1), &interest("lobby", 1, 1));
        table.load_stored(1, "lobby", 0xabc, 2, stored("lobby", 1..=2), true).expect("loaded");
        // The store sequenced 3 and 4 but their answers were lost: sent late, not lost.
        table.load_stored(2, "lobby", 0xabc, 4, stored("lobby", 1..=4), false).expect("reloaded");
        assert_eq!(kinds(&drain(&mut table)), vec![(Kind::Message, 3), (Kind::Message, 4)]);
        // History trimmed past what the Links had: a gap first.
        table.load_stored(3, "lobby", 0xabc, 9, stored("lobby", 7..=9), false).expect("reloaded");
        assert_eq!(kinds(&drain(&mut table)), vec![(Kind::Gap, 0), (Kind::Message, 7), (Kind::Message, 8), (Kind::Message, 9)]);
        // Another epoch: reset, then all of it.
        table.load_stored(4, "lobby", 0xdef, 2, stored("lobby", 1..=2), false).expect("reloaded");
        assert_eq!(kinds(&drain(&mut table)), vec![(Kind::Reset, 0), (Kind::Message, 1), (Kind::Message, 2)]);
        assert!(table.evict("lobby"));
        assert!(table.room("lobby").is_none());
    }

    #[test]
    fn presence_counts_are_throttled_per_room_and_events_follow_links() {
        use crate::presence::PresenceLimits;
        let presence = PresenceLimits { interval_micros: 1_000, events_max_members: 10, deliveries_per_sec: 0 };
        let mut table = RoomTable::new(TableLimits { presence, ..TableLimits::default() }, 7);
        let count = |out: &[(LinkId, Frame)], kind| out.iter().filter(|(_, f)| f.kind() == kind).count();
        // Each Link is told the count when it gains interest.
        table.handle_link_frame(0, LinkId(1), &interest("r", 1, 1));
        table.handle_link_frame(0, LinkId(2), &interest("r", 2, 1));
        assert_eq!(count(&drain(&mut table), Kind::Presence), 2);
        // The second Link changed the count; the room-wide one waits for the interval (the first
        // Link's own count at time 0 counted as the room's).
        table.handle_presence_timeout(0);
        assert!(drain(&mut table).is_empty());
        // Churn within the interval: one room-wide Presence per Link with the last count.
        for (at, n) in [(10, 5), (20, 3), (30, 7)] {
            table.handle_link_frame(at, LinkId(1), &interest("r", 1, n));
            table.handle_presence_timeout(at);
        }
        assert!(drain(&mut table).is_empty(), "not before the interval");
        table.handle_presence_timeout(1_000);
        let out = drain(&mut table);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, f)| matches!(f.body(), ArchivedBody::Presence { members, events } if members.to_native() == 8 && *events)));
        assert_eq!(out[0].1.as_bytes().as_ptr(), out[1].1.as_bytes().as_ptr(), "one encoding shared");
        // Member reports become events for both Links; a Link going down takes its users.
        let member = |user: &str, joined| FrameBuilder::new("r").sender(user).build(&Body::Member { joined });
        table.handle_link_frame(1_001, LinkId(1), &member("alice", true));
        assert_eq!(count(&drain(&mut table), Kind::Member), 2);
        let list = FrameBuilder::new("r").build(&Body::MemberList { users: vec!["bob".into()] });
        table.handle_link_frame(1_002, LinkId(2), &list);
        assert!(drain(&mut table).is_empty(), "a list raises no event");
        assert_eq!(table.presence("r").map(|p| p.2), Some(Some(vec!["alice".to_owned(), "bob".to_owned()])));
        table.handle_link_down(1_003, LinkId(1));
        let out = drain(&mut table);
        assert!(matches!(out.as_slice(), [(LinkId(2), f)] if f.kind() == Kind::Member && f.sender() == "alice"));
        table.handle_presence_timeout(2_000);
        assert!(matches!(drain(&mut table).as_slice(), [(LinkId(2), f)] if matches!(f.body(), ArchivedBody::Presence { members, .. } if members.to_native() == 1)));
        assert_eq!((table.stats().presence_sends, table.stats().member_sends), (5, 3), "2 at interest, 2 + 1 room-wide; 2 + 1 events");
        // The room list: biggest first.
        table.handle_link_frame(2_001, LinkId(2), &interest("big", 2, 50));
        table.handle_link_frame(2_001, LinkId(2), &interest("user:bob", 2, 1));
        let listed: Vec<(String, u64)> = table.rooms_by_members("", 10).into_iter().map(|(r, m, _)| (r, m)).collect();
        assert_eq!(listed, vec![("big".to_owned(), 50), ("r".to_owned(), 1)], "personal rooms only when asked for");
        assert_eq!(table.rooms_by_members("user:", 10).len(), 1);
        assert_eq!(table.rooms_by_members("b", 10).len(), 1);
        assert_eq!(table.rooms_by_members("", 1)[0].0, "big");
        assert!(drain(&mut table).iter().all(|(_, f)| f.room() != "user:bob"), "no presence in personal rooms");
    }

    #[test]
    fn a_big_rooms_count_is_told_less_often_so_its_members_get_a_bounded_count_rate() {
        use crate::presence::PresenceLimits;
        // 1 s apart at most 10,000 count messages a second: 40,000 members hear it every 4 s.
        let presence = PresenceLimits { interval_micros: 1_000_000, events_max_members: 10, deliveries_per_sec: 10_000 };
        let mut table = RoomTable::new(TableLimits { presence, ..TableLimits::default() }, 7);
        let counts = |out: &[(LinkId, Frame)]| -> Vec<u64> {
            out.iter()
                .filter_map(|(_, f)| match f.body() {
                    ArchivedBody::Presence { members, .. } => Some(members.to_native()),
                    _ => None,
                })
                .collect()
        };
        table.handle_link_frame(0, LinkId(1), &interest("hot", 1, 40_000));
        assert_eq!(counts(&drain(&mut table)), vec![40_000], "a Link gaining interest is told at once");
        // The count keeps changing (members join every 100 ms): nothing for 4 s, then the last count.
        let mut sent = Vec::new();
        for step in 1..=45u64 {
            let now = step * 100_000;
            table.handle_link_frame(now, LinkId(1), &interest("hot", 1, 40_000 + step));
            table.handle_presence_timeout(now);
            sent.extend(counts(&drain(&mut table)).into_iter().map(|m| (now, m)));
        }
        assert_eq!(sent, vec![(4_000_000, 40_040)], "one count in 4.5 s, at 4 s");
        // A small room in the same table keeps the 1 s interval.
        table.handle_link_frame(5_000_000, LinkId(1), &interest("small", 1, 5));
        assert_eq!(counts(&drain(&mut table)), vec![5]);
        table.handle_link_frame(5_100_000, LinkId(1), &interest("small", 1, 6));
        table.handle_presence_timeout(6_000_000);
        assert_eq!(counts(&drain(&mut table)), vec![6]);
    }
}
