//! Room state at the owner hub: the sequencer, the bounded history and the interest set.
//!
//! A [`Room`] is the room's single source of order. The hub driver feeds it:
//! - [`Room::publish`] with `now` (micros since the epoch, read by the driver, never here): it
//!   assigns the next seq (1, 2, 3, … strictly increasing, no gaps), encodes the message frame
//!   **once**, keeps it in history and returns it with the Links to send it to;
//! - [`Room::handle_interest`] when a Link reports its local member count for the room: the
//!   answer says whether the Link became interested (first member) or not (last member left);
//! - [`Room::join`] when a client (or a Link, for all its members) joins with `since` and the
//!   `epoch` that position belongs to: the answer is the frames to replay, preceded by an
//!   explicit gap (what was lost, where the member continues) and/or a reset (the position
//!   belongs to another epoch of the room: forget it, replay starts at seq 1).
//! - [`Room::duplicate`] / [`Room::remember_key`] around a publish that carries an idempotency
//!   key: a retried publish is answered with the first one's seq instead of being sequenced twice.
//!
//! Every room has an **epoch**: a random 64-bit id the caller draws when the room's history
//! begins (new room, restart without a durable store, idle drop). A position is (epoch, seq); a
//! seq of another epoch is meaningless here, hence the reset.
//!
//! History is bounded by count *and* bytes ([`RoomLimits`]); evicting the oldest frames is what
//! turns a late `join since` into a gap. Interest is a small sorted vector (a room is on a few
//! Links), so iterating it per publish is cache-friendly.
//!
//! Sans-IO: no sockets, no clocks, no tokio.

use std::collections::{HashMap, VecDeque};

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
    /// Most publish idempotency keys remembered.
    #[serde(default = "default_dedupe_keys")]
    pub dedupe_keys: usize,
    /// How long a publish idempotency key is remembered, microseconds.
    #[serde(default = "default_dedupe_micros")]
    pub dedupe_micros: u64,
}

fn default_dedupe_keys() -> usize {
    1024
}

fn default_dedupe_micros() -> u64 {
    300_000_000
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            history_messages: 1024,
            history_bytes: 4 * 1024 * 1024,
            max_payload: 64 * 1024,
            dedupe_keys: default_dedupe_keys(),
            dedupe_micros: default_dedupe_micros(),
        }
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

/// Messages owed to a joining member that history no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostRange {
    /// First seq that will never be delivered.
    pub first_lost: u64,
    /// Last seq that will never be delivered.
    pub last_lost: u64,
    /// The first seq the member gets next.
    pub resume_from: u64,
}

/// The answer to a join: in this order, a reset (if any), a gap (if any), the frames to
/// replay, then `joined` with `last_seq` and `epoch`; live messages follow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct JoinAnswer {
    /// The member's position belonged to another epoch (or was ahead of the room): it must
    /// forget it; what follows starts at seq 1 of `epoch`.
    pub reset: bool,
    /// Part of what is owed is no longer held.
    pub gap: Option<LostRange>,
    /// Frames to replay, oldest first (maybe none).
    pub frames: Vec<Frame>,
    /// The room's last seq at the time of the join.
    pub last_seq: u64,
    /// The room's epoch.
    pub epoch: u64,
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
    epoch: u64,
    last_seq: u64,
    last_ts: u64,
    /// Oldest first; `history[i].seq() == first_seq_in_history + i`.
    history: VecDeque<Frame>,
    history_bytes: usize,
    /// Links holding members, sorted by id; parallel to `members_per_link`.
    links: Vec<LinkId>,
    members_per_link: Vec<u64>,
    /// Publish keys remembered; `None` until the room's first keyed publish and again once
    /// they all expired (most rooms never see one, and the two tables would size every room).
    keys: Option<Box<RememberedKeys>>,
}

/// A publish's idempotency scope within a room: (sender, key).
type PublishKey = (String, String);

/// A room's remembered publish keys.
#[derive(Debug, Clone, Default)]
struct RememberedKeys {
    /// Oldest first: ((sender, key), seq, when).
    order: VecDeque<(PublishKey, u64, u64)>,
    /// (sender, key) → seq of its latest publish.
    index: HashMap<PublishKey, u64>,
}

impl Room {
    /// A new, empty room whose history begins with `epoch` (a random id drawn by the caller).
    /// `name` must already be valid ([`crate::frame::is_valid_room`]).
    pub fn new(name: &str, limits: RoomLimits, epoch: u64) -> Self {
        Room {
            name: name.to_owned(),
            limits,
            epoch,
            last_seq: 0,
            last_ts: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            links: Vec::new(),
            members_per_link: Vec::new(),
            keys: None,
        }
    }

    /// The room's epoch: which lifetime of its history its seqs belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The seq an earlier publish of `sender` with idempotency `key` got, if it is still
    /// remembered (keys are kept for `dedupe_keys` publishes and `dedupe_micros`).
    pub fn duplicate(&mut self, now_micros: u64, sender: &str, key: &str) -> Option<u64> {
        self.forget_keys(now_micros);
        // The lookup key is built only for keyed publishes, never on the plain publish path.
        self.keys.as_ref()?.index.get(&(sender.to_owned(), key.to_owned())).copied()
    }

    /// Remembers that `sender`'s publish with idempotency `key` got `seq`.
    pub fn remember_key(&mut self, now_micros: u64, sender: &str, key: &str, seq: u64) {
        if self.limits.dedupe_keys == 0 || key.is_empty() {
            return;
        }
        let id = (sender.to_owned(), key.to_owned());
        let keys = self.keys.get_or_insert_with(Box::default);
        keys.index.insert(id.clone(), seq);
        keys.order.push_back((id, seq, now_micros));
        self.forget_keys(now_micros);
    }

    /// Publish keys remembered.
    pub fn remembered_keys(&self) -> usize {
        self.keys.as_ref().map_or(0, |keys| keys.index.len())
    }

    fn forget_keys(&mut self, now_micros: u64) {
        let Some(keys) = self.keys.as_deref_mut() else { return };
        while let Some((_, _, at)) = keys.order.front() {
            let expired = now_micros.saturating_sub(*at) >= self.limits.dedupe_micros;
            if !expired && keys.order.len() <= self.limits.dedupe_keys {
                break;
            }
            if let Some((id, seq, _)) = keys.order.pop_front() {
                // A key re-used later points at the newer entry: leave that one.
                if keys.index.get(&id) == Some(&seq) {
                    keys.index.remove(&id);
                }
            }
        }
        if keys.order.is_empty() {
            self.keys = None;
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

    /// Checks a publish without sequencing it (payload size, sender length): what a durable
    /// store is asked to sequence has passed this first.
    pub fn check_publish(&self, sender: &str, data: &[u8]) -> Result<(), RoomError> {
        if data.len() > self.limits.max_payload {
            return Err(RoomError::PayloadTooLarge { len: data.len(), max: self.limits.max_payload });
        }
        if sender.len() > MAX_SENDER_LEN {
            return Err(RoomError::SenderTooLong);
        }
        Ok(())
    }

    /// The time stamp a message published at `now_micros` gets: never before the last one.
    pub fn next_ts(&self, now_micros: u64) -> u64 {
        self.last_ts.max(now_micros)
    }

    /// Keeps a message a durable store sequenced (its seq follows [`Room::last_seq`]; the caller
    /// checked): encoded once, kept in history, returned with the Links to send it to.
    pub fn append_stored(&mut self, seq: u64, ts_micros: u64, sender: &str, flags: u16, data: &[u8]) -> Published<'_> {
        self.last_seq = seq;
        self.last_ts = self.last_ts.max(ts_micros);
        let frame = Frame::message(&self.name, seq, ts_micros, sender, flags, data);
        self.remember(frame.clone());
        Published { seq, frame, links: &self.links }
    }

    /// Replaces the room's history with a durable store's copy: `epoch`, `last_seq` and the
    /// message frames the store holds (oldest first, seqs consecutive, ending at `last_seq`).
    /// Publish keys are dropped (the store dedupes); interest is kept.
    pub fn restore_history(&mut self, epoch: u64, last_seq: u64, frames: Vec<Frame>) {
        self.epoch = epoch;
        self.last_seq = last_seq;
        self.history.clear();
        self.history_bytes = 0;
        self.keys = None;
        for frame in frames {
            self.last_ts = self.last_ts.max(frame.ts_micros());
            self.remember(frame);
        }
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

    /// Answers a join of a member whose position is (`epoch`, `since`). `since = None` = live
    /// only; `epoch = None` = the room's current epoch (clients that do not know it).
    ///
    /// A position of another epoch, or ahead of the room, is reset: the member starts over at
    /// seq 0 of the room's epoch (so it is replayed the epoch's history from its start).
    pub fn join(&self, since: Option<u64>, epoch: Option<u64>) -> JoinAnswer {
        let last_seq = self.last_seq;
        let mut answer = JoinAnswer { reset: false, gap: None, frames: Vec::new(), last_seq, epoch: self.epoch };
        let Some(mut since) = since else { return answer };
        if epoch.is_some_and(|e| e != self.epoch) || since > last_seq {
            answer.reset = true;
            since = 0;
        }
        // Everything in (since, last_seq] must be delivered. The window is [oldest, last_seq].
        let oldest = self.oldest_seq().unwrap_or(last_seq + 1);
        if since + 1 >= oldest {
            let skip = (since + 1 - oldest) as usize;
            answer.frames = self.history.iter().skip(skip).cloned().collect();
        } else {
            answer.gap = Some(LostRange { first_lost: since + 1, last_lost: oldest - 1, resume_from: oldest });
            answer.frames = self.history.iter().cloned().collect();
        }
        answer
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

    const EPOCH: u64 = 0x9f86_d081_884c_7d65;

    fn room(history_messages: usize) -> Room {
        Room::new("lobby", RoomLimits { history_messages, history_bytes: 1 << 20, max_payload: 1024, ..RoomLimits::default() }, EPOCH)
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

    fn replay(frames: &[Frame], last_seq: u64, epoch: u64) -> JoinAnswer {
        JoinAnswer { reset: false, gap: None, frames: frames.to_vec(), last_seq, epoch }
    }

    #[test]
    fn join_replays_inside_the_window_and_reports_gaps_outside() {
        let mut room = room(5);
        for i in 0..12 {
            let _ = room.publish(i, "u", 0, b"m").expect("fits");
        }
        assert_eq!(room.oldest_seq(), Some(8));
        let answer = room.join(Some(9), Some(EPOCH));
        assert_eq!((answer.reset, answer.gap, seqs(&answer.frames), answer.last_seq), (false, None, vec![10, 11, 12], 12));
        assert_eq!(seqs(&room.join(Some(7), None).frames), vec![8, 9, 10, 11, 12]);
        let answer = room.join(Some(3), Some(EPOCH));
        assert_eq!(answer.gap, Some(LostRange { first_lost: 4, last_lost: 7, resume_from: 8 }));
        assert_eq!(seqs(&answer.frames), vec![8, 9, 10, 11, 12]);
        assert_eq!(room.join(Some(12), Some(EPOCH)), replay(&[], 12, EPOCH));
        assert_eq!(room.join(None, None), replay(&[], 12, EPOCH));
    }

    #[test]
    fn a_position_of_another_epoch_is_reset_and_replayed_from_the_start() {
        let mut room = room(20);
        for i in 0..3 {
            let _ = room.publish(i, "u", 0, b"m").expect("fits");
        }
        // The client's seq 2 belonged to an earlier life of the room: even though it is below
        // last_seq, it must not be taken as a position in this one.
        let answer = room.join(Some(2), Some(EPOCH ^ 1));
        assert!(answer.reset);
        assert_eq!((answer.gap, seqs(&answer.frames), answer.epoch), (None, vec![1, 2, 3], EPOCH));
        // A position ahead of the room (a client that does not send its epoch): reset too.
        let answer = room.join(Some(9), None);
        assert!(answer.reset);
        assert_eq!(seqs(&answer.frames), vec![1, 2, 3]);
        // Live-only joins have no position to reset.
        assert_eq!(room.join(None, Some(EPOCH ^ 1)), replay(&[], 3, EPOCH));
    }

    #[test]
    fn empty_history_window_is_a_gap_for_any_missed_message() {
        let mut room = room(0);
        for i in 0..3 {
            let _ = room.publish(i, "u", 0, b"m").expect("fits");
        }
        let answer = room.join(Some(1), Some(EPOCH));
        assert_eq!(answer.gap, Some(LostRange { first_lost: 2, last_lost: 3, resume_from: 4 }));
        assert!(answer.frames.is_empty());
        assert_eq!(room.join(Some(3), Some(EPOCH)), replay(&[], 3, EPOCH));
    }

    #[test]
    fn publish_keys_are_remembered_per_sender_within_count_and_time() {
        let limits = RoomLimits { dedupe_keys: 2, dedupe_micros: 1_000, ..RoomLimits::default() };
        let mut room = Room::new("r", limits, EPOCH);
        assert_eq!(room.duplicate(0, "alice", "k1"), None);
        room.remember_key(0, "alice", "k1", 1);
        assert_eq!(room.duplicate(10, "alice", "k1"), Some(1));
        assert_eq!(room.duplicate(10, "bob", "k1"), None, "keys are per sender");
        room.remember_key(10, "alice", "k2", 2);
        room.remember_key(20, "alice", "k3", 3);
        assert_eq!(room.duplicate(30, "alice", "k1"), None, "count bound: the oldest key is forgotten");
        assert_eq!(room.duplicate(30, "alice", "k3"), Some(3));
        assert_eq!(room.duplicate(1_025, "alice", "k3"), None, "time bound");
        assert_eq!(room.remembered_keys(), 0);
        assert!(room.keys.is_none(), "a room whose keys all expired keeps no tables");
        room.remember_key(2_000, "alice", "k1", 4);
        assert_eq!(room.duplicate(2_010, "alice", "k1"), Some(4), "and remembers the next key");
    }

    #[test]
    fn history_is_bounded_by_bytes() {
        let limits = RoomLimits { history_messages: 1000, history_bytes: 1000, max_payload: 400, ..RoomLimits::default() };
        let mut room = Room::new("r", limits, EPOCH);
        for i in 0..20 {
            let _ = room.publish(i, "u", 0, &[b'x'; 300]).expect("fits");
        }
        let (count, bytes) = room.history_len();
        assert!(bytes <= 1000, "{bytes}");
        assert!(count >= 2);
        let seqs = |since| room.join(Some(since), None).frames.iter().map(Frame::seq).collect::<Vec<_>>();
        assert_eq!(seqs(0).last(), Some(&20));
        assert_eq!(seqs(18), vec![19, 20]);
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
            let answer = room.join(Some(since), Some(EPOCH));
            prop_assert_eq!(answer.reset, since > published);
            let since = if answer.reset { 0 } else { since };
            if let Some(gap) = answer.gap {
                prop_assert_eq!(gap.first_lost, since + 1);
                prop_assert_eq!(gap.resume_from, gap.last_lost + 1);
                seen.extend(gap.first_lost..=gap.last_lost);
                prop_assert_eq!(answer.frames.first().map(Frame::seq).unwrap_or(gap.resume_from), gap.resume_from);
            }
            seen.extend(seqs(&answer.frames));
            let expected: Vec<u64> = (since + 1..=published).collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
