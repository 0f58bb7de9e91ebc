//! The hub's send policy towards one Link: what to queue, what to drop, when to tell with a gap.
//!
//! The hub never waits for a Link. Its driver offers every frame for a Link to that Link's queue
//! (`hub/queue.rs`, a channel plus a byte counter the writer gives back); this module decides,
//! from the bytes still queued, what happens to each frame:
//! - **Room messages** (`Message` frames) are dropped when the queue holds `limit` bytes. The
//!   policy remembers, per room, the lost range `first_lost..=last_lost`; every later message of
//!   that room is dropped too (extending the range), so the Link never sees a hole *followed by*
//!   newer messages. Once the queue has drained below half of `limit`
//!   ([`LinkSendPolicy::catch_up`]), it emits one `Gap {request: 0, first_lost, last_lost,
//!   resume_from}` per affected room — request 0 meaning "every member of this room on that Link"
//!   — and the room's messages flow again. Members learn exactly what they missed.
//! - **Answers** (replay, joined, acks, errors, heartbeats) are addressed to one connection and
//!   cannot be summarised by a gap, so they are queued even above `limit`, up to `2 × limit`.
//!   Beyond that the Link is hopeless: [`Admit::Overflow`] tells the driver to close it; the Link
//!   reconnects and re-announces its interest (docs/protocol.md, Link ↔ hub).
//!
//! Memory per Link is therefore bounded by `2 × limit` plus one frame.

use std::collections::BTreeMap;

use crate::frame::{Body, Frame, FrameBuilder, Kind};

/// The verdict on one frame offered for a Link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Admit {
    /// Queue it for the writer.
    Queue,
    /// A room message was dropped (a gap will follow).
    Drop,
    /// An answer did not fit even in the slack: close this Link.
    Overflow,
}

/// The send policy of one Link's queue (see the module docs).
#[derive(Debug)]
pub struct LinkSendPolicy {
    /// Soft bound for room messages (`hub.link_queue_bytes`).
    limit: usize,
    /// Rooms with dropped messages not yet reported: room → (first_lost, last_lost).
    lost: BTreeMap<String, (u64, u64)>,
}

impl LinkSendPolicy {
    /// A policy for a queue of `limit` bytes (at least 1).
    pub fn new(limit: usize) -> Self {
        LinkSendPolicy { limit: limit.max(1), lost: BTreeMap::new() }
    }

    /// Judges `frame` with `queued` bytes not yet written.
    pub fn admit(&mut self, frame: &Frame, queued: usize) -> Admit {
        if frame.kind() == Kind::Message {
            if let Some((_, last_lost)) = self.lost.get_mut(frame.room()) {
                *last_lost = frame.seq();
                return Admit::Drop;
            }
            if queued + frame.len() > self.limit {
                self.lost.insert(frame.room().to_owned(), (frame.seq(), frame.seq()));
                return Admit::Drop;
            }
        } else if queued + frame.len() > self.limit.saturating_mul(2) {
            return Admit::Overflow;
        }
        Admit::Queue
    }

    /// Once the queue (`queued` bytes) has drained below half the limit, appends one gap frame
    /// per room with unreported losses to `out` and forgets them. Returns how many were added.
    pub fn catch_up(&mut self, queued: usize, out: &mut Vec<Frame>) -> usize {
        if self.lost.is_empty() || queued > self.limit / 2 {
            return 0;
        }
        let lost = std::mem::take(&mut self.lost);
        let count = lost.len();
        out.extend(lost.into_iter().map(|(room, (first_lost, last_lost))| {
            FrameBuilder::new(&room).build(&Body::Gap { request: 0, first_lost, last_lost, resume_from: last_lost + 1 })
        }));
        count
    }

    /// True while some room has unreported losses.
    pub fn is_lagging(&self) -> bool {
        !self.lost.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ArchivedBody;

    fn message(room: &str, seq: u64) -> Frame {
        Frame::message(room, seq, seq, "u", 0, &[0; 100])
    }

    /// Admits `frame` at `queued` bytes and, when queued, adds its length.
    fn offer(policy: &mut LinkSendPolicy, queued: &mut usize, frame: &Frame) -> Admit {
        let admit = policy.admit(frame, *queued);
        if admit == Admit::Queue {
            *queued += frame.len();
        }
        admit
    }

    #[test]
    fn a_lagging_link_loses_a_contiguous_range_and_is_told_with_a_gap() {
        let one = message("a", 1).len();
        let mut policy = LinkSendPolicy::new(3 * one);
        let mut queued = 0;
        for seq in 1..=3 {
            assert_eq!(offer(&mut policy, &mut queued, &message("a", seq)), Admit::Queue);
        }
        assert_eq!(offer(&mut policy, &mut queued, &message("a", 4)), Admit::Drop);
        let mut gaps = Vec::new();
        assert_eq!(policy.catch_up(queued, &mut gaps), 0, "still full");
        queued = 0; // the writer wrote 1..=3
        // Space is free again, but the room stays dropped until the gap is out.
        assert_eq!(offer(&mut policy, &mut queued, &message("a", 5)), Admit::Drop);
        assert_eq!(offer(&mut policy, &mut queued, &message("b", 1)), Admit::Queue, "other rooms are unaffected");
        assert!(policy.is_lagging());
        assert_eq!(policy.catch_up(queued, &mut gaps), 1);
        assert_eq!(gaps.len(), 1);
        assert!(matches!(gaps[0].body(),
            ArchivedBody::Gap { request, first_lost, last_lost, resume_from }
            if (request.to_native(), first_lost.to_native(), last_lost.to_native(), resume_from.to_native()) == (0, 4, 5, 6)));
        assert_eq!(gaps[0].room(), "a");
        assert_eq!(offer(&mut policy, &mut queued, &message("a", 6)), Admit::Queue);
        assert!(!policy.is_lagging());
    }

    #[test]
    fn answers_get_slack_then_overflow() {
        let ack = FrameBuilder::new("a").seq(1).build(&Body::PublishAck { request: 1, epoch: 1 });
        let mut policy = LinkSendPolicy::new(ack.len() * 2);
        let mut queued = 0;
        for _ in 0..4 {
            assert_eq!(offer(&mut policy, &mut queued, &ack), Admit::Queue);
        }
        assert_eq!(offer(&mut policy, &mut queued, &ack), Admit::Overflow);
    }
}
