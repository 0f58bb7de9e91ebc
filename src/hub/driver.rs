//! The hub task: the one owner of the [`RoomTable`], a thin driver around it.
//!
//! Everything that reads or changes rooms arrives here as a [`HubInput`] on one bounded channel:
//! HTTP publishes and queries (each with a oneshot for the answer) and Link traffic (connection
//! up, frame, connection down). The loop reads the wall clock once per event, calls the table's
//! `handle_*`/`publish` with that `now`, then drains `poll_transmit` into the per-Link
//! [`LinkQueue`]s, which never block (`linkcast_core::link_queue` says what a lagging Link gets). A timer calls
//! `handle_timeout` and lets lagging Links catch up. No lock is taken on this path; decisions
//! about rooms stay in the core's `room_table.rs`, where the simulator sees them.
//!
//! Link connections carry a generation number: a Link that reconnects replaces its old
//! connection (whose interest is dropped first), and late events of the old one are ignored.

use crate::clock::now_micros;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::locate::Locator;
use super::queue::LinkQueue;
use linkcast_core::link_queue::Admit;
use super::HubMetrics;
use linkcast_core::frame::Frame;
use linkcast_core::placement::LinkId;
use linkcast_core::room::JoinAnswer;
use linkcast_core::room_table::{PublishAck, PublishError, RoomTable, TableLimits, TableStats};

/// Capacity of the hub task's event channel (HTTP handlers and Link readers wait when full).
pub(crate) const EVENT_CAPACITY: usize = 8192;

/// Most frames in one history answer.
pub(crate) const MAX_HISTORY_LIMIT: usize = 1000;

/// Input to the hub task.
#[derive(Debug)]
pub(crate) enum HubInput {
    /// An authenticated HTTP publish for a room this hub owns.
    Publish {
        room: String,
        sender: String,
        flags: u16,
        data: Bytes,
        /// Idempotency key (`""`: none).
        key: String,
        reply: oneshot::Sender<Result<PublishAck, PublishError>>,
    },
    /// `GET /v1/rooms/{room}`.
    RoomInfo { room: String, reply: oneshot::Sender<Option<RoomInfo>> },
    /// `GET /v1/rooms/{room}/messages`.
    ///
    /// Answered like a join at (`epoch`, `since`) — reset, gap, frames — cut to `limit` frames.
    History { room: String, since: u64, epoch: Option<u64>, limit: usize, reply: oneshot::Sender<Option<JoinAnswer>> },
    /// A Link connection is established; frames for it go to `queue`.
    LinkUp { link: LinkId, generation: u64, queue: LinkQueue },
    /// A frame from a Link.
    LinkFrame { link: LinkId, generation: u64, frame: Frame },
    /// A Link connection ended.
    LinkDown { link: LinkId, generation: u64 },
}

/// A room's public state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct RoomInfo {
    pub(crate) room: String,
    /// The room's epoch, as 16 hex digits.
    pub(crate) epoch: String,
    pub(crate) members: u64,
    pub(crate) links: Vec<u32>,
    pub(crate) last_seq: u64,
}

struct Connected {
    generation: u64,
    queue: LinkQueue,
}

/// Runs the hub task until `shutdown` turns true or every event sender is gone.
pub(crate) async fn run(
    limits: TableLimits,
    mut events: mpsc::Receiver<HubInput>,
    locator: Arc<Mutex<Locator>>,
    metrics: HubMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut driver = HubTask { table: RoomTable::new(limits, epoch_seed()), links: HashMap::new(), locator, metrics, seen: TableStats::default() };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            event = events.recv() => match event {
                Some(event) => {
                    driver.handle(event);
                    // Take what else is waiting before touching the queues again.
                    for _ in 0..256 {
                        match events.try_recv() {
                            Ok(event) => driver.handle(event),
                            Err(_) => break,
                        }
                    }
                    driver.flush();
                }
                None => break,
            },
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(20) {
                    driver.table.handle_timeout(now_micros());
                }
                driver.flush();
            }
        }
    }
    for (_, connected) in driver.links.drain() {
        connected.queue.close("hub shutting down");
    }
}

struct HubTask {
    table: RoomTable,
    links: HashMap<LinkId, Connected>,
    locator: Arc<Mutex<Locator>>,
    metrics: HubMetrics,
    /// Table counters already exported.
    seen: TableStats,
}

impl HubTask {
    fn handle(&mut self, event: HubInput) {
        let now = now_micros();
        match event {
            HubInput::Publish { room, sender, flags, data, key, reply } => {
                let _ = reply.send(self.table.publish(now, &room, &sender, flags, &data, &key));
            }
            HubInput::RoomInfo { room, reply } => {
                let info = self.table.room(&room).map(|r| RoomInfo {
                    room: r.name().to_owned(),
                    epoch: linkcast_core::protocol::format_epoch(r.epoch()),
                    members: r.members(),
                    links: r.links().iter().map(|l| l.0).collect(),
                    last_seq: r.last_seq(),
                });
                let _ = reply.send(info);
            }
            HubInput::History { room, since, epoch, limit, reply } => {
                let _ = reply.send(self.table.room(&room).map(|r| {
                    let mut answer = r.join(Some(since), epoch);
                    answer.frames.truncate(limit);
                    answer
                }));
            }
            HubInput::LinkUp { link, generation, queue } => {
                if let Some(old) = self.links.remove(&link) {
                    // A reconnect: the old connection's interest is void; the Link re-announces.
                    self.table.handle_link_down(now, link);
                    old.queue.close("replaced by a newer connection of the same Link");
                }
                self.links.insert(link, Connected { generation, queue });
                lock(&self.locator).link_up(link);
                tracing::info!(%link, generation, "link connected");
            }
            HubInput::LinkFrame { link, generation, frame } => {
                if self.links.get(&link).is_some_and(|c| c.generation == generation) {
                    self.table.handle_link_frame(now, link, &frame);
                }
            }
            HubInput::LinkDown { link, generation } => {
                if self.links.get(&link).is_some_and(|c| c.generation == generation) {
                    self.drop_link(now, link, "link connection ended");
                    tracing::info!(%link, generation, "link disconnected");
                }
            }
        }
    }

    /// Moves every frame the table owes into the Links' queues; exports counters.
    fn flush(&mut self) {
        let mut overflowed = Vec::new();
        while let Some((link, frame)) = self.table.poll_transmit() {
            let Some(connected) = self.links.get_mut(&link) else { continue };
            match connected.queue.offer(frame) {
                Admit::Queue => {}
                Admit::Drop => self.metrics.queue_dropped.increment(1),
                Admit::Overflow => overflowed.push(link),
            }
        }
        for link in overflowed {
            tracing::warn!(%link, "link queue overflow: closing the link (it will reconnect)");
            self.drop_link(now_micros(), link, "link queue overflow");
        }
        for connected in self.links.values_mut() {
            if connected.queue.is_lagging() {
                connected.queue.catch_up();
            }
        }
        let stats = self.table.stats();
        self.metrics.published.increment(stats.published - self.seen.published);
        self.metrics.link_sends.increment(stats.link_sends - self.seen.link_sends);
        self.seen = stats;
        self.metrics.rooms.set(self.table.len() as f64);
        self.metrics.links.set(self.links.len() as f64);
    }

    fn drop_link(&mut self, now: u64, link: LinkId, reason: &'static str) {
        self.table.handle_link_down(now, link);
        if let Some(connected) = self.links.remove(&link) {
            connected.queue.close(reason);
        }
        lock(&self.locator).link_down(link);
    }
}

/// Fresh randomness for the room table's epochs: std's per-process random hash keys (drawn
/// from the OS), mixed with the time and the pid, so two lifetimes of a hub never share a seed.
fn epoch_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_micros());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Locks the locator; a poisoned lock is still consistent (each method finishes its update
/// before anything can panic), so it is used as is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

