//! The hub's outgoing queue towards one Link: byte-bounded, never blocking the hub.
//!
//! The hub task (`driver.rs`) drains `RoomTable::poll_transmit` into one [`LinkQueue`] per
//! connected Link; a writer task per Link (`links.rs`) empties it onto the Link's port or QUIC
//! stream and gives the bytes back. The hub never waits for a Link: `offer` is synchronous.
//! Which frames are queued, dropped (and later reported with a gap) or make the Link hopeless is
//! decided by the sans-IO [`LinkSendPolicy`] from the bytes still queued; this module only owns
//! the channel and the byte counter shared with the writer. Memory per Link is bounded by
//! `2 × limit` plus one frame.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use linkcast_core::frame::Frame;
use linkcast_core::link_queue::{Admit, LinkSendPolicy};

/// What the writer task receives.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame to write.
    Frame(Frame),
    /// Close the connection with this reason (then stop).
    Close(&'static str),
}

/// The hub's end of one Link's outgoing queue.
#[derive(Debug)]
pub(crate) struct LinkQueue {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Bytes offered but not yet written; the writer subtracts what it wrote.
    queued: Arc<AtomicUsize>,
    policy: LinkSendPolicy,
    /// Scratch for [`LinkSendPolicy::catch_up`].
    gaps: Vec<Frame>,
}

/// The writer's end: frames to write and the byte counter to give back.
#[derive(Debug)]
pub(crate) struct QueueReader {
    /// Frames in hub order.
    pub(crate) rx: mpsc::UnboundedReceiver<Outgoing>,
    /// ApiState with [`LinkQueue`]; decrement by a frame's length once it is written.
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
    (LinkQueue { tx, queued: queued.clone(), policy: LinkSendPolicy::new(limit), gaps: Vec::new() }, QueueReader { rx, queued })
}

impl LinkQueue {
    /// Queues `frame` unless the Link is behind (see [`LinkSendPolicy`]).
    pub(crate) fn offer(&mut self, frame: Frame) -> Admit {
        let admit = self.policy.admit(&frame, self.queued.load(Ordering::Acquire));
        if admit == Admit::Queue {
            self.push(frame);
        }
        admit
    }

    /// Once the Link has drained below half the limit, queues a gap for every lost range.
    /// Returns how many gaps were queued.
    pub(crate) fn catch_up(&mut self) -> usize {
        let count = self.policy.catch_up(self.queued.load(Ordering::Acquire), &mut self.gaps);
        let gaps = std::mem::take(&mut self.gaps);
        for gap in gaps {
            self.push(gap);
        }
        count
    }

    /// True while some room has unreported losses.
    pub(crate) fn is_lagging(&self) -> bool {
        self.policy.is_lagging()
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

    #[test]
    fn the_writer_gives_bytes_back_and_a_drained_queue_reports_its_gap() {
        let message = |seq| Frame::message("a", seq, seq, "u", 0, &[0; 100]);
        let (mut queue, mut reader) = link_queue(message(1).len());
        assert_eq!(queue.offer(message(1)), Admit::Queue);
        assert_eq!(queue.offer(message(2)), Admit::Drop);
        assert_eq!(queue.catch_up(), 0, "still full");
        let Ok(Outgoing::Frame(first)) = reader.rx.try_recv() else { panic!("message 1 queued") };
        reader.written(first.len());
        assert_eq!(queue.catch_up(), 1);
        let Ok(Outgoing::Frame(gap)) = reader.rx.try_recv() else { panic!("gap queued") };
        assert_eq!(gap.kind(), linkcast_core::frame::Kind::Gap);
        assert!(!queue.is_lagging());
    }
}
