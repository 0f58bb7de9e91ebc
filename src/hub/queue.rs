//! The hub's outgoing queue towards one Link: byte-bounded, never blocking the hub.
//!
//! The hub task (`driver.rs`) drains `RoomTable::poll_transmit` into one [`LinkQueue`] per
//! connected Link; a writer task per Link (`links.rs`) empties it onto the Link's port or QUIC
//! stream and gives the bytes back. The hub never waits for a Link: `offer` is synchronous.
//!
//! What happens when a Link cannot keep up (the queue holds `limit` bytes):
//! - **Room messages** (`Message` frames) are dropped and counted. The queue remembers, per
//!   room, the lost range `first_lost..=last_lost`; every later message of that room is dropped
//!   too (extending the range), so the Link never sees a hole *followed by* newer messages.
//!   Once the queue has drained below half of `limit` ([`LinkQueue::catch_up`]), it sends one
//!   `Gap {conn: 0, first_lost, last_lost, resume_from}` per affected room — `conn: 0` meaning
//!   "every member of this room on that Link" — and the room's messages flow again. Members
//!   learn exactly what they missed and can fetch it from the history API.
//! - **Answers** (replay, joined, acks, errors, heartbeats) are addressed to one connection and
//!   cannot be summarised by a gap, so they are queued even above `limit`, up to `2 × limit`.
//!   Beyond that the Link is hopeless: [`Offer::Overflow`] tells the driver to close it; the
//!   Link reconnects and re-announces its interest (docs/protocol.md, Link ↔ hub).
//!
//! Memory per Link is therefore bounded by `2 × limit` plus one frame.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::frame::{Body, Frame, FrameBuilder, Kind};

/// What the writer task receives.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame to write.
    Frame(Frame),
    /// Close the connection with this reason (then stop).
    Close(&'static str),
}

/// Result of [`LinkQueue::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Offer {
    /// Queued for the writer.
    Queued,
    /// A room message was dropped (a gap will follow).
    Dropped,
    /// An answer did not fit even in the slack: close this Link.
    Overflow,
}

/// The hub's end of one Link's outgoing queue.
#[derive(Debug)]
pub(crate) struct LinkQueue {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Bytes offered but not yet written; the writer subtracts what it wrote.
    queued: Arc<AtomicUsize>,
    /// Soft bound for room messages (`hub.link_queue_bytes`).
    limit: usize,
    /// Rooms with dropped messages not yet reported: room → (first_lost, last_lost).
    lost: BTreeMap<String, (u64, u64)>,
}

/// The writer's end: frames to write and the byte counter to give back.
#[derive(Debug)]
pub(crate) struct QueueReader {
    /// Frames in hub order.
    pub(crate) rx: mpsc::UnboundedReceiver<Outgoing>,
    /// Shared with [`LinkQueue`]; decrement by a frame's length once it is written.
    pub(crate) queued: Arc<AtomicUsize>,
}

impl QueueReader {
    /// Gives `bytes` of written frames back to the queue's budget.
    pub(crate) fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A queue bounded by `limit` bytes, and the writer's end of it.
pub(crate) fn link_queue(limit: usize) -> (LinkQueue, QueueReader) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (LinkQueue { tx, queued: queued.clone(), limit: limit.max(1), lost: BTreeMap::new() }, QueueReader { rx, queued })
}

impl LinkQueue {
    /// Queues `frame` unless the Link is behind (see the module docs).
    pub(crate) fn offer(&mut self, frame: Frame) -> Offer {
        let queued = self.queued.load(Ordering::Acquire);
        if frame.kind() == Kind::Message {
            if let Some((_, last_lost)) = self.lost.get_mut(frame.room()) {
                *last_lost = frame.seq();
                return Offer::Dropped;
            }
            if queued + frame.len() > self.limit {
                self.lost.insert(frame.room().to_owned(), (frame.seq(), frame.seq()));
                return Offer::Dropped;
            }
        } else if queued + frame.len() > self.limit.saturating_mul(2) {
            return Offer::Overflow;
        }
        self.push(frame);
        Offer::Queued
    }

    /// Once the Link has drained below half the limit, reports every lost range with a gap.
    /// Returns how many gaps were queued.
    pub(crate) fn catch_up(&mut self) -> usize {
        if self.lost.is_empty() || self.queued.load(Ordering::Acquire) > self.limit / 2 {
            return 0;
        }
        let lost = std::mem::take(&mut self.lost);
        let count = lost.len();
        for (room, (first_lost, last_lost)) in lost {
            let resume_from = last_lost + 1;
            let gap = FrameBuilder::new(&room).build(&Body::Gap { request: 0, first_lost, last_lost, resume_from });
            self.push(gap);
        }
        count
    }

    /// True while some room has unreported losses.
    pub(crate) fn is_lagging(&self) -> bool {
        !self.lost.is_empty()
    }

    /// Asks the writer to close the connection with `reason` after what is queued.
    pub(crate) fn close(self, reason: &'static str) {
        let _ = self.tx.send(Outgoing::Close(reason));
    }

    fn push(&mut self, frame: Frame) {
        self.queued.fetch_add(frame.len(), Ordering::AcqRel);
        // A send fails only when the writer ended (the Link is gone); its LinkDown follows.
        let _ = self.tx.send(Outgoing::Frame(frame));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ArchivedBody;

    fn message(room: &str, seq: u64) -> Frame {
        Frame::message(room, seq, seq, "u", 0, &[0; 100])
    }

    fn drain(reader: &mut QueueReader) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Ok(Outgoing::Frame(frame)) = reader.rx.try_recv() {
            reader.written(frame.len());
            out.push(frame);
        }
        out
    }

    #[test]
    fn a_lagging_link_loses_a_contiguous_range_and_is_told_with_a_gap() {
        let one = message("a", 1).len();
        let (mut queue, mut reader) = link_queue(3 * one);
        for seq in 1..=3 {
            assert_eq!(queue.offer(message("a", seq)), Offer::Queued);
        }
        assert_eq!(queue.offer(message("a", 4)), Offer::Dropped);
        assert_eq!(queue.catch_up(), 0, "still full");
        let first = drain(&mut reader);
        assert_eq!(first.iter().map(Frame::seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        // Space is free again, but the room stays dropped until the gap is out.
        assert_eq!(queue.offer(message("a", 5)), Offer::Dropped);
        assert_eq!(queue.offer(message("b", 1)), Offer::Queued, "other rooms are unaffected");
        assert!(queue.is_lagging());
        assert_eq!(queue.catch_up(), 1);
        assert_eq!(queue.offer(message("a", 6)), Offer::Queued);
        let next = drain(&mut reader);
        assert_eq!(next.len(), 3);
        assert!(matches!(next[1].body(),
            ArchivedBody::Gap { request, first_lost, last_lost, resume_from }
            if (request.to_native(), first_lost.to_native(), last_lost.to_native(), resume_from.to_native()) == (0, 4, 5, 6)));
        assert_eq!(next[1].room(), "a");
        assert_eq!(next[2].seq(), 6);
        assert!(!queue.is_lagging());
    }

    #[test]
    fn answers_get_slack_then_overflow() {
        let ack = FrameBuilder::new("a").seq(1).build(&Body::PublishAck { request: 1, epoch: 1 });
        let (mut queue, _reader) = link_queue(ack.len() * 2);
        for _ in 0..4 {
            assert_eq!(queue.offer(ack.clone()), Offer::Queued);
        }
        assert_eq!(queue.offer(ack), Offer::Overflow);
    }
}
