//! The hub's outgoing queue towards one Link: byte-bounded, never blocking the hub.
//!
//! The hub task (`driver.rs`) drains `RoomTable::poll_transmit` into one [`LinkQueue`] per
//! connected Link; a writer task per Link (`links.rs`) empties it onto the Link's port or QUIC
//! stream and gives the bytes back. The hub never waits for a Link: `offer` is synchronous.
//! Which frames are queued, dropped (and later reported with a gap) or make the Link hopeless is
//! decided by the sans-IO [`LinkSendPolicy`] from the bytes still queued; this module only owns
//! the channel, the close signal and the byte counters shared with the writer. Memory per Link is
//! bounded by `2 × limit` plus one frame, and freed as soon as the hub gives up on the Link
//! ([`LinkQueue::close`] is a separate signal, not queued behind the backlog; dropping the
//! [`QueueReader`] frees the backlog).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use linkcast_core::frame::Frame;
use linkcast_core::link_queue::{Admit, LinkSendPolicy};

/// The hub's end of one Link's outgoing queue.
#[derive(Debug)]
pub(crate) struct LinkQueue {
    tx: mpsc::UnboundedSender<Frame>,
    /// Tells the writer to stop now (dropping what is queued) and close with a reason.
    close: oneshot::Sender<&'static str>,
    /// Bytes offered but not yet written; the writer subtracts what it wrote.
    queued: Arc<AtomicUsize>,
    /// Bytes queued towards every Link of the hub (the `linkcast_hub_link_queued_bytes` gauge).
    total: Arc<AtomicUsize>,
    policy: LinkSendPolicy,
    /// Scratch for [`LinkSendPolicy::catch_up`].
    gaps: Vec<Frame>,
}

/// The writer's end: frames to write, the close signal and the byte counters to give back.
/// Dropping it frees every frame still queued and gives their bytes back.
#[derive(Debug)]
pub(crate) struct QueueReader {
    /// Frames in hub order.
    pub(crate) rx: mpsc::UnboundedReceiver<Frame>,
    /// Resolves when the hub gives up on the Link (with the close reason) or is gone.
    pub(crate) closed: oneshot::Receiver<&'static str>,
    /// Shared with [`LinkQueue`]; decrement by a frame's length once it is written or dropped.
    queued: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl QueueReader {
    /// Gives `bytes` of frames taken from `rx` (written, or abandoned) back to the budget.
    pub(crate) fn released(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.total.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        self.rx.close();
        let mut bytes = 0;
        while let Ok(frame) = self.rx.try_recv() {
            bytes += frame.len();
        }
        self.released(bytes);
    }
}

/// A queue bounded by `limit` bytes, and the writer's end of it. `total` counts the bytes
/// queued towards all Links of the hub.
pub(crate) fn link_queue(limit: usize, total: Arc<AtomicUsize>) -> (LinkQueue, QueueReader) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (close, closed) = oneshot::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let queue = LinkQueue { tx, close, queued: queued.clone(), total: total.clone(), policy: LinkSendPolicy::new(limit), gaps: Vec::new() };
    (queue, QueueReader { rx, closed, queued, total })
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

    /// Tells the writer to close the connection with `reason` now: what is still queued is
    /// dropped, not written first (a stalled Link must not keep the hub's memory).
    pub(crate) fn close(self, reason: &'static str) {
        let _ = self.close.send(reason);
    }

    fn push(&mut self, frame: Frame) {
        let len = frame.len();
        self.queued.fetch_add(len, Ordering::AcqRel);
        self.total.fetch_add(len, Ordering::AcqRel);
        // A send fails only when the writer ended (the Link is gone); its LinkDown follows.
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.total.fetch_sub(len, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_gives_bytes_back_and_a_drained_queue_reports_its_gap() {
        let message = |seq| Frame::message("a", seq, seq, "u", 0, &[0; 100]);
        let total = Arc::new(AtomicUsize::new(0));
        let (mut queue, mut reader) = link_queue(message(1).len(), total.clone());
        assert_eq!(queue.offer(message(1)), Admit::Queue);
        assert_eq!(queue.offer(message(2)), Admit::Drop);
        assert_eq!(queue.catch_up(), 0, "still full");
        let Ok(first) = reader.rx.try_recv() else { panic!("message 1 queued") };
        reader.released(first.len());
        assert_eq!(queue.catch_up(), 1);
        let Ok(gap) = reader.rx.try_recv() else { panic!("gap queued") };
        assert_eq!(gap.kind(), linkcast_core::frame::Kind::Gap);
        assert!(!queue.is_lagging());
        reader.released(gap.len());
        assert_eq!(queue.offer(message(3)), Admit::Queue);
        assert_eq!(total.load(Ordering::Acquire), message(3).len());
        drop(reader);
        assert_eq!(total.load(Ordering::Acquire), 0, "a dropped reader gives back what it never wrote");
    }
}
