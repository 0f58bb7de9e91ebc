//! A shard's one driver of its WebSocket connections: each connection is a slot in a slab,
//! stepped by one task per shard, instead of a task of its own.
//!
//! Why (issue 17): an idle connection's task — tokio's task cell around its future, 768 bytes,
//! plus a boxed keep-alive timer — was the largest thing a connection cost the Link in user
//! space. A slot is the connection's loop state ([`Served`], `ws.rs`, 56 bytes) and a 32-byte
//! waker.
//!
//! Data flow:
//! - `ws.rs` opens a connection and [`WsDriver::insert`]s it: the slot gets a [`Waker`] of its
//!   own (`SlotWake`: the slot's index and the shard's ready list, no task behind it), which the
//!   connection's mailbox wakes, and its socket joins the shard's epoll set (`socket_poll.rs`)
//!   under the slot's index: an event there marks the socket ready and wakes the slot the same
//!   way (no tokio registration per socket);
//! - a wake puts the slot's index on the shard's ready list — once until the slot is stepped —
//!   and wakes the driver's task ([`run`]), which steps each ready slot ([`Served::step`]: the
//!   mailbox, the rings, the socket queue, then the client's input), [`STEPS_PER_YIELD`] at a
//!   time before it lets the shard's other tasks (the shard loop, accepts) run;
//! - every [`TICK`] the driver looks at every slot's next due time, kept in the slot itself
//!   (a slot with nothing due is one comparison in the slab, its connection not touched), and
//!   runs the due ones' timers ([`Served::tick`]: keep-alive ping, idle, stall and lag checks,
//!   the token's expiry);
//! - a step that ends its connection frees the slot (its waker is disarmed, the index reused)
//!   and [`Served::finish`] hands the connection to a short-lived task that writes the close.
//!
//! The hot path does not come through here: the shard loop writes ring frames to a connection's
//! socket itself (`DirectDelivery`); a slot is woken only when that socket was full, for client
//! input, a hub answer or a timer. The ready list is a mutex touched by this shard's thread
//! alone (a `Waker` must be `Send`, so its wake cannot use a `RefCell`); no other shard shares it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};
use std::time::Duration;

use tokio::sync::Notify;

use super::connection::ConnContext;
use super::socket_poll::{Readiness, SocketPoll};
use super::ws::{Served, Stamp, Stepped};

/// How often every connection's timers are looked at: the token's expiry closes within this of
/// its time; keep-alive pings go out at `ping_interval_secs` to within this.
pub(crate) const TICK: Duration = Duration::from_millis(500);

/// Slots stepped before the driver yields to the shard's other tasks.
const STEPS_PER_YIELD: usize = 256;

/// The indices of the slots to step, and the driver's wake-up.
#[derive(Debug, Default)]
struct ReadyList {
    slots: Mutex<Vec<u32>>,
    notify: Notify,
}

impl ReadyList {
    /// Moves the ready indices into `into` (empty).
    fn take(&self, into: &mut Vec<u32>) {
        std::mem::swap(into, &mut self.slots.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A slot's waker: puts the slot on the ready list once until it is stepped.
#[derive(Debug)]
struct SlotWake {
    slot: u32,
    /// On the ready list already (or disarmed: the connection left its slot).
    queued: AtomicBool,
    ready: Arc<ReadyList>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.slots.lock().unwrap_or_else(PoisonError::into_inner).push(self.slot);
            self.ready.notify.notify_one();
        }
    }
}

/// One connection in the slab.
#[derive(Debug)]
struct Slot {
    served: Served,
    wake: Arc<SlotWake>,
}

/// A shard's WebSocket connections (see the module docs). Lives in the shard's
/// [`ConnContext`]; [`run`] is its task.
#[derive(Debug)]
pub(crate) struct WsDriver {
    slots: RefCell<Vec<Option<Slot>>>,
    /// Indices of empty slots.
    free: RefCell<Vec<u32>>,
    ready: Arc<ReadyList>,
    /// The slots' sockets, watched under their slot's index.
    sockets: SocketPoll,
}

impl WsDriver {
    /// An empty driver; its epoll set is registered with the current (the shard's) runtime.
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(WsDriver { slots: RefCell::default(), free: RefCell::default(), ready: Arc::default(), sockets: SocketPoll::new()? })
    }

    /// Takes a new connection: a slot, its waker given to the connection's mailbox, its socket
    /// watched, and a first step (what the client sent with its upgrade may already wait).
    /// A socket the epoll set refuses (the kernel's `max_user_watches`) is handed back.
    pub(crate) fn insert(&self, served: Served) -> Result<(), (Served, std::io::Error)> {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(index) => index,
            None => {
                slots.push(None);
                (slots.len() - 1) as u32
            }
        };
        if let Err(error) = self.sockets.add(served.socket().raw_fd(), index) {
            self.free.borrow_mut().push(index);
            return Err((served, error));
        }
        let wake = Arc::new(SlotWake { slot: index, queued: AtomicBool::new(false), ready: self.ready.clone() });
        served.mailbox().set_waker(Waker::from(wake.clone()));
        wake.wake_by_ref();
        slots[index as usize] = Some(Slot { served, wake });
        Ok(())
    }

    /// Events of the epoll set: each marks its socket ready and wakes its slot.
    fn dispatch(&self, events: &[Readiness]) {
        let slots = self.slots.borrow();
        for event in events {
            let Some(slot) = slots.get(event.token as usize).and_then(Option::as_ref) else { continue };
            slot.served.socket().mark_ready(event.readable, event.writable);
            slot.wake.wake_by_ref();
        }
    }

    /// Drops every connection still in the slab (the shard is stopping).
    pub(crate) fn clear(&self) {
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        self.free.borrow_mut().clear();
        drop(slots);
    }

    /// Steps slot `index` (if it still holds a connection); frees it when its connection ended.
    fn step(&self, index: u32, ctx: &Rc<ConnContext>) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(index as usize).and_then(Option::as_mut) else { return };
        // Wakes from here on queue the slot again.
        slot.wake.queued.store(false, Ordering::Release);
        match slot.served.step(ctx) {
            Stepped::Idle => {}
            Stepped::More => slot.wake.wake_by_ref(),
            Stepped::Ended => {
                let Some(Slot { served, wake }) = slots[index as usize].take() else { return };
                drop(slots);
                // Its close waits on the socket through tokio; a later event here would wake
                // whoever takes the slot next.
                self.sockets.remove(served.socket().raw_fd());
                // Disarmed: a late wake of this waker (the mailbox holds it until it is replaced
                // below) must not step whoever gets the slot next.
                wake.queued.store(true, Ordering::Release);
                served.mailbox().set_waker(Waker::noop().clone());
                self.free.borrow_mut().push(index);
                served.finish(ctx);
            }
        }
    }

    /// Every slot's timers; slots that must be stepped (a ping queued, the connection ended)
    /// are woken.
    fn tick(&self, ctx: &ConnContext) {
        let now = Stamp::now();
        let now_secs = crate::clock::now_secs();
        for slot in self.slots.borrow_mut().iter_mut().flatten() {
            if slot.served.tick(now, now_secs, ctx) {
                slot.wake.wake_by_ref();
            }
        }
    }
}

/// The driver's task (one per shard, for the shard's life): steps the slots that were woken, and
/// every [`TICK`] runs every slot's timers.
pub(crate) async fn run(ctx: Rc<ConnContext>) {
    let driver = &ctx.ws_driver;
    let mut ready = Vec::new();
    let mut events = Vec::new();
    let mut next_tick = tokio::time::Instant::now() + TICK;
    loop {
        tokio::select! {
            _ = driver.ready.notify.notified() => {}
            _ = tokio::time::sleep_until(next_tick) => {}
            taken = driver.sockets.take(&mut events) => match taken {
                Ok(()) => driver.dispatch(&events),
                Err(error) => {
                    // Not expected (the set is the shard's own); the slots' timers still run.
                    tracing::error!(%error, "the shard's socket events cannot be read");
                    tokio::time::sleep(TICK).await;
                }
            },
        }
        if tokio::time::Instant::now() >= next_tick {
            driver.tick(&ctx);
            next_tick = tokio::time::Instant::now() + TICK;
        }
        loop {
            driver.ready.take(&mut ready);
            if ready.is_empty() {
                break;
            }
            for (n, index) in ready.drain(..).enumerate() {
                driver.step(index, &ctx);
                if n % STEPS_PER_YIELD == STEPS_PER_YIELD - 1 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_wake(slot: u32, ready: &Arc<ReadyList>) -> Arc<SlotWake> {
        Arc::new(SlotWake { slot, queued: AtomicBool::new(false), ready: ready.clone() })
    }

    #[test]
    fn a_slot_is_listed_once_until_stepped_and_never_once_disarmed() {
        let ready = Arc::new(ReadyList::default());
        let (a, b) = (slot_wake(3, &ready), slot_wake(7, &ready));
        let waker = Waker::from(a.clone());
        waker.wake_by_ref();
        waker.wake_by_ref();
        Waker::from(b.clone()).wake();
        Waker::from(a.clone()).wake();
        let mut taken = Vec::new();
        ready.take(&mut taken);
        assert_eq!(taken, [3, 7], "each slot once, in wake order");
        // Stepping re-arms: the next wake lists it again.
        a.queued.store(false, Ordering::Release);
        waker.wake_by_ref();
        taken.clear();
        ready.take(&mut taken);
        assert_eq!(taken, [3]);
        // Disarmed (its connection left the slot): late wakes list nothing.
        a.queued.store(true, Ordering::Release);
        waker.wake_by_ref();
        taken.clear();
        ready.take(&mut taken);
        assert!(taken.is_empty());
    }

    #[tokio::test]
    async fn a_wake_rouses_the_driver_even_before_it_waits() {
        let ready = Arc::new(ReadyList::default());
        Waker::from(slot_wake(0, &ready)).wake();
        // The permit is kept: the driver's wait returns at once.
        tokio::time::timeout(Duration::from_secs(5), ready.notify.notified()).await.expect("woken");
    }
}
