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
//!
//! Bounds: at most `max_rooms` rooms (a new one beyond that is refused with 503); each room's
//! history is bounded by [`RoomLimits`]; rooms without interest and idle for `idle_ttl_micros`
//! are dropped by [`RoomTable::handle_timeout`].

use std::collections::{HashMap, VecDeque};

use crate::frame::{is_valid_room, ArchivedBody, Body, Frame, FrameBuilder, Kind};
use crate::placement::LinkId;
use crate::room::{InterestChange, JoinAnswer, Room, RoomError, RoomLimits};

/// Limits of a hub's room table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableLimits {
    /// Most rooms held at once.
    pub max_rooms: usize,
    /// A room with no interest and no publish for this long is dropped (with its history).
    pub idle_ttl_micros: u64,
    /// Per-room limits.
    pub room: RoomLimits,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits { max_rooms: 100_000, idle_ttl_micros: 3_600_000_000, room: RoomLimits::default() }
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
}

impl PublishError {
    /// HTTP-like status and static reason.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            PublishError::BadRoom => (400, "invalid room name"),
            PublishError::Room(e) => e.status(),
            PublishError::TooManyRooms => (503, "too many rooms"),
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
}

/// Every room this hub owns.
#[derive(Debug)]
pub struct RoomTable {
    rooms: HashMap<String, RoomSlot>,
    limits: TableLimits,
    transmit: VecDeque<(LinkId, Frame)>,
    stats: TableStats,
}

#[derive(Debug)]
struct RoomSlot {
    room: Room,
    last_active_micros: u64,
}

impl RoomTable {
    /// An empty table.
    pub fn new(limits: TableLimits) -> Self {
        RoomTable { rooms: HashMap::new(), limits, transmit: VecDeque::new(), stats: TableStats::default() }
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
        self.stats
    }

    /// Sequences a message and queues it once per interested Link. Returns its seq.
    pub fn publish(&mut self, now: u64, room: &str, sender: &str, flags: u16, data: &[u8]) -> Result<u64, PublishError> {
        let slot = slot(&mut self.rooms, &self.limits, room, now)?;
        slot.last_active_micros = now;
        let published = slot.room.publish(now, sender, flags, data)?;
        self.stats.published += 1;
        self.stats.link_sends += published.links.len() as u64;
        for &link in published.links {
            self.transmit.push_back((link, published.frame.clone()));
        }
        Ok(published.seq)
    }

    /// Handles one frame a Link sent. Frames a hub does not take are answered with an error.
    pub fn handle_link_frame(&mut self, now: u64, link: LinkId, frame: &Frame) {
        match (frame.kind(), frame.body()) {
            (Kind::InterestAdd | Kind::InterestRemove, ArchivedBody::Interest { members, .. }) => {
                let members = if frame.kind() == Kind::InterestRemove { 0 } else { members.to_native() };
                self.handle_interest(now, link, frame.room(), members);
            }
            (Kind::Join, ArchivedBody::Join { conn, since }) => {
                let since = since.as_ref().map(|s| s.to_native());
                self.handle_join(now, link, frame.room(), conn.to_native(), since);
            }
            (Kind::Publish, ArchivedBody::Publish { request, data }) => {
                let request = request.to_native();
                match self.publish(now, frame.room(), frame.sender(), frame.flags(), data.as_slice()) {
                    Ok(seq) => {
                        let ack = FrameBuilder::new(frame.room()).seq(seq).build(&Body::PublishAck { request });
                        self.transmit.push_back((link, ack));
                    }
                    Err(e) => self.refuse(link, frame.room(), request, e.status()),
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
        for slot in self.rooms.values_mut() {
            if slot.room.clear_interest_of(link) {
                slot.last_active_micros = now;
            }
        }
        self.transmit.retain(|(to, _)| *to != link);
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
        let slot = match self.slot(room, now) {
            Ok(slot) => slot,
            Err(e) => return self.refuse(link, room, 0, e.status()),
        };
        slot.last_active_micros = now;
        let _: InterestChange = slot.room.handle_interest(link, members);
    }

    fn handle_join(&mut self, now: u64, link: LinkId, room_name: &str, conn: u64, since: Option<u64>) {
        let slot = match self.slot(room_name, now) {
            Ok(slot) => slot,
            Err(e) => return self.refuse(link, room_name, conn, e.status()),
        };
        let answer = slot.room.join(since);
        let last_seq = slot.room.last_seq();
        let replay = |frames: Vec<Frame>, out: &mut VecDeque<(LinkId, Frame)>| {
            let count = frames.len() as u64;
            for frame in frames {
                let replayed = FrameBuilder::new(room_name)
                    .seq(frame.seq())
                    .ts_micros(frame.ts_micros())
                    .sender(frame.sender())
                    .flags(frame.flags())
                    .build(&Body::Replay { conn, data: frame.payload().to_vec() });
                out.push_back((link, replayed));
            }
            count
        };
        match answer {
            JoinAnswer::Replay { frames, .. } => {
                self.stats.replayed += replay(frames, &mut self.transmit);
            }
            JoinAnswer::Gap { first_lost, last_lost, resume_from, frames } => {
                self.stats.gaps += 1;
                let gap = FrameBuilder::new(room_name).build(&Body::Gap { conn, first_lost, last_lost, resume_from });
                self.transmit.push_back((link, gap));
                self.stats.replayed += replay(frames, &mut self.transmit);
            }
            // The client is ahead of the room (it was recreated): `Joined` with a lower
            // last_seq than the client's `since` tells it to reset its position.
            JoinAnswer::Reset { .. } => {}
        }
        let joined = FrameBuilder::new(room_name).seq(last_seq).build(&Body::Joined { conn });
        self.transmit.push_back((link, joined));
    }

    fn refuse(&mut self, link: LinkId, room: &str, request: u64, (code, reason): (u16, &'static str)) {
        let room = if is_valid_room(room) { room } else { "" };
        let error = FrameBuilder::new(room).build(&Body::Error { request, code, reason: reason.to_owned() });
        self.transmit.push_back((link, error));
    }

    fn slot(&mut self, room: &str, now: u64) -> Result<&mut RoomSlot, PublishError> {
        slot(&mut self.rooms, &self.limits, room, now)
    }
}

/// The slot of `room`, created if absent and the table has space (after dropping idle rooms).
fn slot<'a>(
    rooms: &'a mut HashMap<String, RoomSlot>,
    limits: &TableLimits,
    room: &str,
    now: u64,
) -> Result<&'a mut RoomSlot, PublishError> {
    if !is_valid_room(room) {
        return Err(PublishError::BadRoom);
    }
    if !rooms.contains_key(room) {
        if rooms.len() >= limits.max_rooms {
            drop_idle(rooms, limits.idle_ttl_micros, now);
            if rooms.len() >= limits.max_rooms {
                return Err(PublishError::TooManyRooms);
            }
        }
        let fresh = RoomSlot { room: Room::new(room, limits.room), last_active_micros: now };
        rooms.insert(room.to_owned(), fresh);
    }
    rooms.get_mut(room).ok_or(PublishError::BadRoom)
}

fn drop_idle(rooms: &mut HashMap<String, RoomSlot>, ttl: u64, now: u64) {
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
    fn a_message_goes_once_to_each_interested_link() {
        let mut table = RoomTable::new(TableLimits::default());
        table.handle_link_frame(1, LinkId(1), &interest("lobby", 1, 10));
        table.handle_link_frame(1, LinkId(2), &interest("lobby", 2, 1));
        table.handle_link_frame(1, LinkId(3), &interest("other", 3, 1));
        assert_eq!(table.publish(5, "lobby", "alice", 0, b"hi"), Ok(1));
        let sent = drain(&mut table);
        assert_eq!(sent.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![LinkId(1), LinkId(2)]);
        assert_eq!(sent[0].1.as_bytes().as_ptr(), sent[1].1.as_bytes().as_ptr(), "one encoding shared");
        assert_eq!(table.stats().link_sends, 2);
        table.handle_link_frame(2, LinkId(2), &interest("lobby", 2, 0));
        assert_eq!(table.publish(6, "lobby", "alice", 0, b"again"), Ok(2));
        assert_eq!(drain(&mut table).len(), 1);
        assert_eq!(table.room("lobby").map(Room::members), Some(10));
    }

    #[test]
    fn join_replays_then_answers_joined_and_client_publish_is_acked() {
        let mut table = RoomTable::new(TableLimits::default());
        for i in 0..3 {
            assert_eq!(table.publish(i, "lobby", "bob", 0, b"m"), Ok(i + 1));
        }
        let join = FrameBuilder::new("lobby").build(&Body::Join { conn: 77, since: Some(1) });
        table.handle_link_frame(10, LinkId(4), &join);
        let out = drain(&mut table);
        let kinds: Vec<(Kind, u64)> = out.iter().map(|(_, f)| (f.kind(), f.seq())).collect();
        assert_eq!(kinds, vec![(Kind::Replay, 2), (Kind::Replay, 3), (Kind::Joined, 3)]);
        assert!(matches!(out[0].1.body(), ArchivedBody::Replay { conn, .. } if conn.to_native() == 77));
        let publish = FrameBuilder::new("lobby").sender("carol").build(&Body::Publish { request: 5, data: b"x".to_vec() });
        table.handle_link_frame(11, LinkId(4), &publish);
        let out = drain(&mut table);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].1.kind(), out[0].1.seq()), (Kind::PublishAck, 4));
    }

    #[test]
    fn join_outside_the_window_gets_a_gap_first() {
        let limits = TableLimits { room: RoomLimits { history_messages: 2, ..RoomLimits::default() }, ..TableLimits::default() };
        let mut table = RoomTable::new(limits);
        for i in 0..5 {
            let _ = table.publish(i, "r", "u", 0, b"m");
        }
        table.handle_link_frame(1, LinkId(1), &FrameBuilder::new("r").build(&Body::Join { conn: 1, since: Some(0) }));
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
        let mut table = RoomTable::new(limits);
        assert_eq!(table.publish(1, "bad room", "u", 0, b""), Err(PublishError::BadRoom));
        assert_eq!(table.publish(1, "a", "u", 0, b""), Ok(1));
        assert_eq!(table.publish(1, "b", "u", 0, b""), Ok(1));
        assert_eq!(table.publish(2, "c", "u", 0, b""), Err(PublishError::TooManyRooms));
        // After the idle TTL the idle rooms make way.
        assert_eq!(table.publish(2 + limits.idle_ttl_micros, "c", "u", 0, b""), Ok(1));
        let stray = FrameBuilder::new("a").seq(1).build(&Body::Message { data: vec![] });
        table.handle_link_frame(3, LinkId(1), &stray);
        let out = drain(&mut table);
        assert!(matches!(out.last().map(|(_, f)| f.body()), Some(ArchivedBody::Error { code, .. }) if code.to_native() == 400));
    }

    #[test]
    fn link_down_voids_its_interest() {
        let mut table = RoomTable::new(TableLimits::default());
        table.handle_link_frame(1, LinkId(1), &interest("lobby", 1, 3));
        table.handle_link_down(2, LinkId(1));
        let _ = table.publish(3, "lobby", "u", 0, b"m");
        assert!(drain(&mut table).is_empty());
    }
}
