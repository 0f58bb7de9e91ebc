//! Room state at the owner hub: the sequencer, the bounded history and the interest set.
//!
//! A [`Room`] is the room's single source of order. The hub driver feeds it:
//! - [`Room::publish`] with `now` (micros since the epoch, read by the driver, never here): it
//!   assigns the next seq (1, 2, 3, … strictly increasing, no gaps), encodes the message frame
//!   **once**, keeps it in history and returns it with the Links to send it to;
//! - [`Room::handle_interest`] when a Link reports its local member count for the room: the
//!   answer says whether the Link became interested (first member) or not (last member left);
//! - [`Room::join`] when a client joins with `since`: the answer is either the frames to replay
//!   or an explicit gap (what was lost and from which seq the client continues).
//!
//! History is bounded by count *and* bytes ([`RoomLimits`]); evicting the oldest frames is what
//! turns a late `join since` into a gap. Interest is a small sorted vector (a room is on a few
//! Links), so iterating it per publish is cache-friendly.
//!
//! Sans-IO: no sockets, no clocks, no tokio.

use std::collections::VecDeque;

use crate::frame::{Frame, MAX_SENDER_LEN};
use crate::placement::LinkId;

/// Bounds of one room's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomLimits {
    /// Most messages kept for replay.
    pub history_messages: usize,
    /// Most frame bytes kept for replay.
    pub history_bytes: usize,
    /// Largest accepted payload.
    pub max_payload: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits { history_messages: 1024, history_bytes: 4 * 1024 * 1024, max_payload: 64 * 1024 }
    }
}

/// Why a room refused a publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The payload is larger than [`RoomLimits::max_payload`].
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Payload size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The sender id is longer than a frame can carry.
    #[error("sender id too long")]
    SenderTooLong,
}

impl RoomError {
    /// HTTP-like status and static reason for the peer (principle 7).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            RoomError::PayloadTooLarge { .. } => (413, "payload too large"),
            RoomError::SenderTooLong => (400, "sender id too long"),
        }
    }
}

/// The result of a publish: what to send, and to whom.
#[derive(Debug)]
#[must_use]
pub struct Published<'a> {
    /// The seq given to the message.
    pub seq: u64,
    /// The message frame, encoded once; send clones of it.
    pub frame: Frame,
    /// Every Link that holds members of the room right now.
    pub links: &'a [LinkId],
}

/// The answer to a join with `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum JoinAnswer {
    /// Send these frames (every message after `since`, in order; maybe none), then live ones.
    Replay {
        /// Frames to replay, oldest first.
        frames: Vec<Frame>,
        /// The room's last seq at the time of the join.
        last_seq: u64,
    },
    /// `since` is older than the history window: `first_lost..=last_lost` are gone for good.
    /// The client continues at `resume_from`; `frames` are the ones still in the window.
    Gap {
        /// First seq that will never be delivered.
        first_lost: u64,
        /// Last seq that will never be delivered.
        last_lost: u64,
        /// The first seq the client gets next.
        resume_from: u64,
        /// Frames from `resume_from` on, oldest first.
        frames: Vec<Frame>,
    },
    /// `since` is ahead of the room (the room was recreated, e.g. after a hub restart): the
    /// client must forget its position and continue at `last_seq + 1`.
    Reset {
        /// The room's last seq.
        last_seq: u64,
    },
}

/// What an interest report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterestChange {
    /// The Link had no members and now has some: it starts receiving the room's frames.
    Added,
    /// The Link's last member left: it stops receiving them.
    Removed,
    /// Only the member count changed.
    Updated,
}

/// One room at its owner hub.
#[derive(Debug, Clone)]
pub struct Room {
    name: String,
    limits: RoomLimits,
    last_seq: u64,
    last_ts: u64,
    /// Oldest first; `history[i].seq() == first_seq_in_history + i`.
    history: VecDeque<Frame>,
    history_bytes: usize,
    /// Links holding members, sorted by id; parallel to `members_per_link`.
    links: Vec<LinkId>,
    members_per_link: Vec<u64>,
}

impl Room {
    /// A new, empty room. `name` must already be valid ([`crate::frame::is_valid_room`]).
    pub fn new(name: &str, limits: RoomLimits) -> Self {
        Room {
            name: name.to_owned(),
            limits,
            last_seq: 0,
            last_ts: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            links: Vec::new(),
            members_per_link: Vec::new(),
        }
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Last seq given out (0 before the first publish).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Links currently interested, sorted by id.
    pub fn links(&self) -> &[LinkId] {
        &self.links
    }

    /// Members over all Links.
    pub fn members(&self) -> u64 {
        self.members_per_link.iter().sum()
    }

    /// Members on one Link.
    pub fn members_on(&self, link: LinkId) -> u64 {
        self.links.binary_search(&link).map(|at| self.members_per_link[at]).unwrap_or(0)
    }

    /// Messages and bytes held in history.
    pub fn history_len(&self) -> (usize, usize) {
        (self.history.len(), self.history_bytes)
    }

    /// Seq of the oldest message still in history, if any.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.history.front().map(Frame::seq)
    }

    /// Sequences one message: the next seq, a frame encoded once, kept in history.
    ///
    /// `now_micros` stamps the frame; it is clamped to be non-decreasing within the room so a
    /// clock step backwards never reorders time stamps against seqs.
    pub fn publish(
        &mut self,
        now_micros: u64,
        sender: &str,
        flags: u16,
        data: &[u8],
    ) -> Result<Published<'_>, RoomError> {
        if data.len() > self.limits.max_payload {
            return Err(RoomError::PayloadTooLarge { len: data.len(), max: self.limits.max_payload });
        }
        if sender.len() > MAX_SENDER_LEN {
            return Err(RoomError::SenderTooLong);
        }
        self.last_seq += 1;
        self.last_ts = self.last_ts.max(now_micros);
        let frame = Frame::message(&self.name, self.last_seq, self.last_ts, sender, flags, data);
        self.remember(frame.clone());
        Ok(Published { seq: self.last_seq, frame, links: &self.links })
    }

    /// Records a Link's local member count for this room (0 = no members).
    pub fn handle_interest(&mut self, link: LinkId, members: u64) -> InterestChange {
        match (self.links.binary_search(&link), members) {
            (Ok(at), 0) => {
                self.links.remove(at);
                self.members_per_link.remove(at);
                InterestChange::Removed
            }
            (Ok(at), n) => {
                self.members_per_link[at] = n;
                InterestChange::Updated
            }
            (Err(_), 0) => InterestChange::Updated,
            (Err(at), n) => {
                self.links.insert(at, link);
                self.members_per_link.insert(at, n);
                InterestChange::Added
            }
        }
    }

    /// Answers a join: replay after `since`, or an explicit gap, or a reset. `None` = live only.
    pub fn join(&self, since: Option<u64>) -> JoinAnswer {
        let last_seq = self.last_seq;
        let Some(since) = since else {
            return JoinAnswer::Replay { frames: Vec::new(), last_seq };
        };
        if since > last_seq {
            return JoinAnswer::Reset { last_seq };
        }
        // Everything in (since, last_seq] must be delivered. The window is [oldest, last_seq].
        let oldest = self.oldest_seq().unwrap_or(last_seq + 1);
        if since + 1 >= oldest {
            let skip = (since + 1 - oldest) as usize;
            return JoinAnswer::Replay { frames: self.history.iter().skip(skip).cloned().collect(), last_seq };
        }
        JoinAnswer::Gap {
            first_lost: since + 1,
            last_lost: oldest - 1,
            resume_from: oldest,
            frames: self.history.iter().cloned().collect(),
        }
    }

    /// Up to `limit` history frames with seq > `since`, oldest first (the HTTP history route).
    pub fn history_after(&self, since: u64, limit: usize) -> impl Iterator<Item = &Frame> + '_ {
        let skip = match self.oldest_seq() {
            Some(oldest) if since >= oldest => (since - oldest + 1) as usize,
            _ => 0,
        };
        self.history.iter().skip(skip).take(limit)
    }

    /// Drops one Link's interest (the hub lost that Link); true if it was interested.
    pub fn clear_interest_of(&mut self, link: LinkId) -> bool {
        self.handle_interest(link, 0) == InterestChange::Removed
    }

    fn remember(&mut self, frame: Frame) {
        self.history_bytes += frame.len();
        self.history.push_back(frame);
        while self.history.len() > self.limits.history_messages
            || (self.history_bytes > self.limits.history_bytes && self.history.len() > 1)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.len();
            }
        }
        if self.limits.history_messages == 0 {
            self.history.clear();
            self.history_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn room(history_messages: usize) -> Room {
        Room::new("lobby", RoomLimits { history_messages, history_bytes: 1 << 20, max_payload: 1024 })
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(Frame::seq).collect()
    }

    #[test]
    fn publish_sequences_from_one_and_targets_interested_links() {
        let mut room = room(10);
        assert_eq!(room.handle_interest(LinkId(2), 5), InterestChange::Added);
        assert_eq!(room.handle_interest(LinkId(1), 1), InterestChange::Added);
        assert_eq!(room.handle_interest(LinkId(1), 3), InterestChange::Updated);
        assert_eq!(room.members(), 8);
        let published = room.publish(100, "alice", 0, b"hi").expect("fits");
        assert_eq!(published.seq, 1);
        assert_eq!(published.links, &[LinkId(1), LinkId(2)]);
        assert_eq!(published.frame.room(), "lobby");
        assert_eq!(published.frame.sender(), "alice");
        assert_eq!(published.frame.payload(), b"hi");
        assert_eq!(room.publish(50, "bob", 0, b"x").map(|p| (p.seq, p.frame.ts_micros())), Ok((2, 100)));
        assert_eq!(room.handle_interest(LinkId(2), 0), InterestChange::Removed);
        assert_eq!(room.publish(200, "bob", 0, b"y").map(|p| p.links.to_vec()), Ok(vec![LinkId(1)]));
    }

    #[test]
    fn publish_rejects_oversize_payload_without_using_a_seq() {
        let mut room = room(10);
        assert_eq!(
            room.publish(1, "a", 0, &[0; 1025]).map(|p| p.seq),
            Err(RoomError::PayloadTooLarge { len: 1025, max: 1024 })
        );
        assert_eq!(room.publish(1, "a", 0, b"ok").map(|p| p.seq), Ok(1));
    }

    #[test]
    fn join_replays_inside_the_window_and_reports_gaps_outside() {
        let mut room = room(5);
        for i in 0..12 {
            let _ = room.publish(i, "u", 0, b"m").expect("fits");
        }
        assert_eq!(room.oldest_seq(), Some(8));
        match room.join(Some(9)) {
            JoinAnswer::Replay { frames, last_seq } => {
                assert_eq!(seqs(&frames), vec![10, 11, 12]);
                assert_eq!(last_seq, 12);
            }
            other => panic!("expected replay, got {other:?}"),
        }
        match room.join(Some(7)) {
            JoinAnswer::Replay { frames, .. } => assert_eq!(seqs(&frames), vec![8, 9, 10, 11, 12]),
            other => panic!("expected replay, got {other:?}"),
        }
        match room.join(Some(3)) {
            JoinAnswer::Gap { first_lost, last_lost, resume_from, frames } => {
                assert_eq!((first_lost, last_lost, resume_from), (4, 7, 8));
                assert_eq!(seqs(&frames), vec![8, 9, 10, 11, 12]);
            }
            other => panic!("expected gap, got {other:?}"),
        }
        assert_eq!(room.join(Some(12)), JoinAnswer::Replay { frames: vec![], last_seq: 12 });
        assert_eq!(room.join(None), JoinAnswer::Replay { frames: vec![], last_seq: 12 });
        assert_eq!(room.join(Some(13)), JoinAnswer::Reset { last_seq: 12 });
    }

    #[test]
    fn empty_history_window_is_a_gap_for_any_missed_message() {
        let mut room = room(0);
        for i in 0..3 {
            let _ = room.publish(i, "u", 0, b"m").expect("fits");
        }
        assert_eq!(
            room.join(Some(1)),
            JoinAnswer::Gap { first_lost: 2, last_lost: 3, resume_from: 4, frames: vec![] }
        );
        assert_eq!(room.join(Some(3)), JoinAnswer::Replay { frames: vec![], last_seq: 3 });
    }

    #[test]
    fn history_is_bounded_by_bytes() {
        let mut room = Room::new("r", RoomLimits { history_messages: 1000, history_bytes: 1000, max_payload: 400 });
        for i in 0..20 {
            let _ = room.publish(i, "u", 0, &[b'x'; 300]).expect("fits");
        }
        let (count, bytes) = room.history_len();
        assert!(bytes <= 1000, "{bytes}");
        assert!(count >= 2);
        assert_eq!(room.history_after(0, 100).last().map(Frame::seq), Some(20));
        assert_eq!(room.history_after(18, 100).map(Frame::seq).collect::<Vec<_>>(), vec![19, 20]);
        assert_eq!(room.history_after(18, 1).map(Frame::seq).collect::<Vec<_>>(), vec![19]);
    }

    proptest! {
        /// Whatever `since` a client brings, replay + gap + live covers every seq after it
        /// exactly once, in order.
        #[test]
        fn join_covers_every_seq_once(history in 0usize..20, published in 0u64..60, since in 0u64..70) {
            let mut room = room(history);
            for i in 0..published {
                let _ = room.publish(i, "u", 0, b"m").expect("fits");
            }
            let mut seen = Vec::new();
            match room.join(Some(since)) {
                JoinAnswer::Replay { frames, last_seq } => {
                    prop_assert!(since <= last_seq);
                    seen.extend(seqs(&frames));
                }
                JoinAnswer::Gap { first_lost, last_lost, resume_from, frames } => {
                    prop_assert_eq!(first_lost, since + 1);
                    prop_assert_eq!(resume_from, last_lost + 1);
                    seen.extend(first_lost..=last_lost);
                    prop_assert_eq!(frames.first().map(Frame::seq).unwrap_or(resume_from), resume_from);
                    seen.extend(seqs(&frames));
                }
                JoinAnswer::Reset { last_seq } => {
                    prop_assert!(since > last_seq);
                    return Ok(());
                }
            }
            let expected: Vec<u64> = (since + 1..=published).collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
