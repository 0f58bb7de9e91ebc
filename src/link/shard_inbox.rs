//! A shard's inbox: the coordinator → shard hop (and the QUIC endpoint's hand-overs), a
//! lock-free crossbeam queue bounded in bytes (`link.shard_queue_bytes`; the core's
//! `shard_queue.rs`), woken into a current-thread tokio runtime.
//!
//! - Senders never wait. [`ShardSender::try_send`] is for ring items ([`ShardMsg::Room`],
//!   [`ShardMsg::Marker`]) and replays: refused when the shard's queue holds its bound (the
//!   coordinator then owes the shard a gap, or tells the connection its replay was dropped: see
//!   `coordinator.rs`). [`ShardSender::send`] is for control messages, always queued: answers
//!   other than replays (a few per request in flight), closes and operators' actions (at most
//!   one per connection per event), QUIC hand-overs (bounded by the endpoint's pre-auth caps),
//!   `Drain` and `Shutdown` (once). They count in the queue's bytes, so ring items wait for them.
//! - **Waking the shard**: the shard's thread runs a current-thread tokio runtime, which cannot
//!   block on a crossbeam receive. [`ShardInbox::recv`] takes what is queued; on an empty queue
//!   it raises the queue's "sleeping" flag, looks once more, and awaits an `Arc<tokio::sync::Notify>`.
//!   A sender that enqueued reads the flag (SeqCst fences on both sides, so one of the two sees
//!   the other) and calls `notify_one` only if the shard sleeps — one wake per sleep, none while
//!   the shard is busy. `notify_one` stores a permit when nobody waits yet, so a wake between the
//!   last look and the `.await` is not lost; a stale permit costs one extra empty look.
//! - Each message is costed in bytes as it is queued (the shared buffers it pins plus a fixed
//!   overhead) and the same cost is released when the shard takes it.

use std::sync::Arc;

use tokio::sync::Notify;

use linkcast_core::shard_queue::{self, QueueReceiver, QueueSender, Wake};
pub(crate) use linkcast_core::shard_queue::{SendError, TryRecvError};

use super::shard::ShardMsg;

/// Bytes charged for a message besides the buffers it pins (the queue slot, a room name).
const MESSAGE_OVERHEAD: usize = 64;

/// Wakes the shard's runtime.
#[derive(Debug)]
pub(crate) struct NotifyWake(Arc<Notify>);

impl Wake for NotifyWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// The sending end of one shard's inbox (cloned into the coordinator, the QUIC endpoint and
/// the [`super::LinkHandle`]).
#[derive(Debug, Clone)]
pub(crate) struct ShardSender {
    queue: QueueSender<ShardMsg, NotifyWake>,
}

/// The shard's end of its inbox.
#[derive(Debug)]
pub(crate) struct ShardInbox {
    queue: QueueReceiver<ShardMsg, NotifyWake>,
    notify: Arc<Notify>,
}

/// A shard inbox taking ring items up to about `bytes`.
pub(crate) fn channel(bytes: usize) -> (ShardSender, ShardInbox) {
    let notify = Arc::new(Notify::new());
    let (tx, rx) = shard_queue::queue(bytes, NotifyWake(notify.clone()));
    (ShardSender { queue: tx }, ShardInbox { queue: rx, notify })
}

/// What `msg` pins while queued.
fn cost(msg: &ShardMsg) -> usize {
    MESSAGE_OVERHEAD
        + match msg {
            ShardMsg::Room(message) => message.ws.len() + message.frame.len(),
            ShardMsg::Marker { room, item } => room.len() + item.size(),
            ShardMsg::ToConn { frame, .. } => frame.len(),
            _ => 0,
        }
}

impl ShardSender {
    /// Queues a ring item or a replay if the shard's bound allows; hands it back otherwise.
    pub(crate) fn try_send(&self, msg: ShardMsg) -> Result<(), SendError<ShardMsg>> {
        let cost = cost(&msg);
        self.queue.try_send(msg, cost)
    }

    /// Queues a control message whatever the bound (see the module docs). False when the shard
    /// is gone.
    pub(crate) fn send(&self, msg: ShardMsg) -> bool {
        let cost = cost(&msg);
        self.queue.send_always(msg, cost).is_ok()
    }

    /// True when the shard's queue is below its bound (ring items would be taken now).
    pub(crate) fn has_room(&self) -> bool {
        self.queue.has_room(MESSAGE_OVERHEAD)
    }
}

impl ShardInbox {
    /// The next message, waiting for one (see the module docs); `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<ShardMsg> {
        loop {
            match self.queue.try_recv() {
                Ok(msg) => return Some(msg),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            match self.queue.prepare_sleep() {
                Ok(msg) => return Some(msg),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.notify.notified().await,
            }
        }
    }

    /// The next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<ShardMsg, TryRecvError> {
        self.queue.try_recv()
    }
}
