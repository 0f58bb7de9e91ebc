//! The Link's coordinator → shard queue: a lock-free MPSC (crossbeam-channel) bounded in
//! bytes, the sleep/wake handshake of its receiver, and the gaps owed for what a full shard
//! could not take (DESIGN principle 3: "the router never waits on one full shard").
//!
//! Data flow: the coordinator (and the shard hosting the QUIC endpoint) puts messages in with
//! [`QueueSender::try_send`] (refused once [`queue`]'s byte bound is reached: the message is
//! handed back at once, nobody waits) or [`QueueSender::send_always`] (for control messages
//! bounded elsewhere). The shard takes them with [`QueueReceiver::try_recv`]; when the queue is
//! empty it calls [`QueueReceiver::prepare_sleep`] and, if that says so, sleeps until the
//! queue's [`Wake`] is called. The handshake is a "sleeping" flag with SeqCst fences on both
//! sides (Dekker): the receiver sets the flag then looks at the queue once more; a sender
//! enqueues then reads the flag — so either the receiver sees the message or the sender sees
//! the flag and wakes it. Senders wake only a receiver that said it sleeps (no syscall, no
//! lock per message while the shard is busy).
//!
//! What a full shard could not take is remembered per room in [`OwedItems`] (one per shard, kept
//! by the coordinator): messages and room-wide gaps merge into one [`RingItem::Gap`] with
//! [`GapReason::ShardQueue`], a reset replaces what was owed before it; the next item for that
//! room on that shard goes only after what is owed ([`OwedItems::take`]), so its members see a
//! `gap` in order, then the rest — never a silent jump.
//!
//! Sans-IO: no runtime, no clock; the [`Wake`] is the driver's (a tokio `Notify` in the Link, a
//! thread unpark in the benchmark).

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub use crossbeam_channel::TryRecvError;

use crate::room::LostRange;
use crate::shard_rooms::{GapReason, RingItem};

/// Most messages a shard applies from its queue before it serves the members they woke (so a
/// burst leaves each member socket as one write, and a long queue cannot starve the sockets).
pub const MAX_BURST: usize = 256;

/// How a sleeping receiver is woken.
pub trait Wake: Send + Sync {
    /// The receiver said it sleeps and a message arrived (or a sender went away).
    fn wake(&self);
}

#[derive(Debug)]
struct Shared<W> {
    /// Bytes of the messages in the queue (as their senders costed them).
    bytes: AtomicUsize,
    /// The bound of `bytes` for [`QueueSender::try_send`].
    cap: usize,
    /// The receiver found the queue empty and sleeps until woken.
    sleeping: AtomicBool,
    waker: W,
}

/// The sending end (cloneable).
#[derive(Debug)]
pub struct QueueSender<T, W: Wake> {
    /// `None` only while dropping (the channel's sender goes before the last wake).
    tx: Option<crossbeam_channel::Sender<(T, usize)>>,
    shared: Arc<Shared<W>>,
}

/// The receiving end (one shard).
#[derive(Debug)]
pub struct QueueReceiver<T, W: Wake> {
    rx: crossbeam_channel::Receiver<(T, usize)>,
    shared: Arc<Shared<W>>,
}

/// Why a message was handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// The queue holds its byte bound: the receiver is behind.
    Full(T),
    /// The receiver is gone.
    Gone(T),
}

/// A queue holding at most about `cap` bytes for [`QueueSender::try_send`], whose sleeping
/// receiver is woken by `waker`.
pub fn queue<T, W: Wake>(cap: usize, waker: W) -> (QueueSender<T, W>, QueueReceiver<T, W>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared { bytes: AtomicUsize::new(0), cap, sleeping: AtomicBool::new(false), waker });
    (QueueSender { tx: Some(tx), shared: shared.clone() }, QueueReceiver { rx, shared })
}

impl<T, W: Wake> Clone for QueueSender<T, W> {
    fn clone(&self) -> Self {
        QueueSender { tx: self.tx.clone(), shared: self.shared.clone() }
    }
}

impl<T, W: Wake> QueueSender<T, W> {
    /// Queues `msg` (costing `cost` bytes) if it fits under the bound — or the queue is empty, so
    /// one message larger than the bound still passes. Never blocks.
    pub fn try_send(&self, msg: T, cost: usize) -> Result<(), SendError<T>> {
        let before = self.shared.bytes.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before + cost > self.shared.cap {
            self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
            return Err(SendError::Full(msg));
        }
        self.enqueue(msg, cost)
    }

    /// Queues `msg` whatever the bound (control messages bounded by their own rules). Never
    /// blocks; fails only when the receiver is gone.
    pub fn send_always(&self, msg: T, cost: usize) -> Result<(), SendError<T>> {
        self.shared.bytes.fetch_add(cost, Ordering::AcqRel);
        self.enqueue(msg, cost)
    }

    /// True when `cost` more bytes would pass [`QueueSender::try_send`] now.
    pub fn has_room(&self, cost: usize) -> bool {
        let bytes = self.shared.bytes.load(Ordering::Acquire);
        bytes == 0 || bytes + cost <= self.shared.cap
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }

    fn enqueue(&self, msg: T, cost: usize) -> Result<(), SendError<T>> {
        let Some(tx) = &self.tx else { return Err(SendError::Gone(msg)) };
        if let Err(crossbeam_channel::SendError((msg, _))) = tx.send((msg, cost)) {
            self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
            return Err(SendError::Gone(msg));
        }
        self.wake_sleeper();
        Ok(())
    }

    /// The sender's half of the handshake (see the module docs).
    fn wake_sleeper(&self) {
        fence(Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::Relaxed) && self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.shared.waker.wake();
        }
    }
}

impl<T, W: Wake> Drop for QueueSender<T, W> {
    /// A receiver sleeping on an empty queue learns that a sender went away (the last one
    /// gone: [`TryRecvError::Disconnected`]).
    fn drop(&mut self) {
        // The channel's sender first: a receiver woken by this sees the disconnection.
        drop(self.tx.take());
        self.wake_sleeper();
    }
}

impl<T, W: Wake> QueueReceiver<T, W> {
    /// The next message, if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let (msg, cost) = self.rx.try_recv()?;
        self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
        Ok(msg)
    }

    /// Call when [`QueueReceiver::try_recv`] found the queue empty, before sleeping:
    /// `Err(TryRecvError::Empty)` means sleep now (the [`Wake`] will be called when a message
    /// comes; a wake may also be spurious: try again); anything else is what arrived meanwhile.
    pub fn prepare_sleep(&self) -> Result<T, TryRecvError> {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let got = self.try_recv();
        if !matches!(got, Err(TryRecvError::Empty)) {
            self.shared.sleeping.store(false, Ordering::Relaxed);
        }
        got
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

/// What one room on one shard is owed (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Owed {
    /// A reset the shard missed: (epoch, last seq).
    reset: Option<(u64, u64)>,
    /// Seqs the shard missed after it: (epoch, what was lost).
    gap: Option<(u64, LostRange)>,
}

/// The ring items one shard is owed, per room: what its full queue could not take (see the
/// module docs). Kept by the coordinator, one per shard.
#[derive(Debug, Default)]
pub struct OwedItems {
    rooms: HashMap<String, Owed>,
}

impl OwedItems {
    /// Nothing owed.
    pub fn new() -> Self {
        OwedItems::default()
    }

    /// True when nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// True when `room` is owed something: its next item must wait behind it.
    pub fn owes(&self, room: &str) -> bool {
        !self.rooms.is_empty() && self.rooms.contains_key(room)
    }

    /// Rooms owed something.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// The shard did not get `item` of `room`: remember what its members must be told instead.
    /// A presence notice is not owed (the next one supersedes it).
    pub fn missed(&mut self, room: &str, item: &RingItem) {
        let (epoch, lost) = match item {
            RingItem::Message(message) => {
                (message.epoch, LostRange { first_lost: message.seq, last_lost: message.seq, resume_from: message.seq + 1 })
            }
            RingItem::Gap { epoch, lost, .. } => (*epoch, *lost),
            RingItem::Reset { epoch, last_seq } => {
                let owed = self.entry(room);
                owed.reset = Some((*epoch, *last_seq));
                owed.gap = None;
                return;
            }
            RingItem::Notice { .. } => return,
        };
        let owed = self.entry(room);
        owed.gap = Some(match owed.gap {
            Some((_, held)) => (
                epoch,
                LostRange {
                    first_lost: held.first_lost.min(lost.first_lost),
                    last_lost: held.last_lost.max(lost.last_lost),
                    resume_from: held.resume_from.max(lost.resume_from),
                },
            ),
            None => (epoch, lost),
        });
    }

    fn entry(&mut self, room: &str) -> &mut Owed {
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.to_owned(), Owed::default());
        }
        self.rooms.get_mut(room).expect("inserted above")
    }

    /// Takes what `room` is owed, in ring order (a reset, then a gap), to be sent before the
    /// room's next item. Items that cannot be sent now go back with [`OwedItems::missed`].
    pub fn take(&mut self, room: &str) -> Vec<RingItem> {
        let Some(owed) = self.rooms.remove(room) else { return Vec::new() };
        let reset = owed.reset.map(|(epoch, last_seq)| RingItem::Reset { epoch, last_seq });
        let gap = owed.gap.map(|(epoch, lost)| RingItem::Gap { epoch, lost, reason: GapReason::ShardQueue });
        reset.into_iter().chain(gap).collect()
    }

    /// Forgets `room` (the shard has no member there any more).
    pub fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::shard_rooms::RoomMessage;
    use bytes::Bytes;

    #[derive(Debug, Default)]
    struct Count(AtomicUsize);

    impl Wake for Arc<Count> {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn message(seq: u64) -> RingItem {
        let frame = Frame::message("r", seq, 1, "u", 0, b"x");
        RingItem::Message(RoomMessage { seq, epoch: 7, ws: Bytes::from_static(b"ws"), frame })
    }

    #[test]
    fn the_byte_bound_hands_messages_back_and_frees_as_they_are_taken() {
        let wakes = Arc::new(Count::default());
        let (tx, rx) = queue::<u32, _>(100, wakes.clone());
        assert_eq!(tx.try_send(1, 150), Ok(()), "an empty queue takes one message above the bound");
        assert_eq!(tx.try_send(2, 10), Err(SendError::Full(2)));
        assert_eq!(tx.send_always(3, 10), Ok(()), "control passes");
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.queued_bytes(), 10);
        assert!(tx.has_room(90) && !tx.has_room(91));
        assert_eq!(tx.try_send(4, 90), Ok(()));
        assert_eq!((rx.try_recv(), rx.try_recv(), rx.try_recv()), (Ok(3), Ok(4), Err(TryRecvError::Empty)));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "nobody slept: nobody woken");
    }

    #[test]
    fn a_sleeping_receiver_is_woken_once_and_a_late_message_is_not_missed() {
        let wakes = Arc::new(Count::default());
        let (tx, rx) = queue::<u32, _>(100, wakes.clone());
        assert_eq!(rx.prepare_sleep(), Err(TryRecvError::Empty));
        tx.try_send(1, 1).expect("fits");
        tx.try_send(2, 1).expect("fits");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake for the sleeper");
        assert_eq!(rx.try_recv(), Ok(1));
        // A message that arrives between the empty look and the sleep is found by prepare_sleep.
        tx.try_send(3, 1).expect("fits");
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.prepare_sleep(), Ok(3));
        drop(tx);
        assert_eq!(rx.prepare_sleep(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn across_threads_every_message_arrives_and_sleepers_wake() {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(&self) {
                self.0.unpark();
            }
        }
        let (tx, rx) = queue::<u64, _>(1 << 10, Unpark(std::thread::current()));
        let sender = std::thread::spawn(move || {
            let mut sent = 0u64;
            while sent < 100_000 {
                if tx.try_send(sent, 8).is_ok() {
                    sent += 1;
                }
            }
        });
        let mut next = 0u64;
        loop {
            match rx.try_recv().or_else(|_| rx.prepare_sleep()) {
                Ok(n) => {
                    assert_eq!(n, next);
                    next += 1;
                }
                Err(TryRecvError::Empty) => std::thread::park(),
                Err(TryRecvError::Disconnected) => break,
            }
        }
        sender.join().expect("sender");
        assert_eq!(next, 100_000);
    }

    #[test]
    fn missed_items_become_one_gap_per_room_after_the_last_reset() {
        let mut owed = OwedItems::new();
        assert!(!owed.owes("r"));
        for seq in 5..=9 {
            owed.missed("r", &message(seq));
        }
        let hub_gap = RingItem::Gap { epoch: 7, lost: LostRange { first_lost: 10, last_lost: 12, resume_from: 13 }, reason: GapReason::HubQueue };
        owed.missed("r", &hub_gap);
        assert!(owed.owes("r") && !owed.owes("s"));
        let items = owed.take("r");
        assert!(matches!(
            items.as_slice(),
            [RingItem::Gap { epoch: 7, lost: LostRange { first_lost: 5, last_lost: 12, resume_from: 13 }, reason: GapReason::ShardQueue }]
        ));
        assert!(owed.is_empty());
        owed.missed("r", &message(3));
        owed.missed("r", &RingItem::Reset { epoch: 8, last_seq: 40 });
        owed.missed("r", &message(41));
        let items = owed.take("r");
        assert!(matches!(items.as_slice(), [RingItem::Reset { epoch: 8, last_seq: 40 }, RingItem::Gap { lost: LostRange { first_lost: 41, .. }, .. }]));
    }
}
