//! The hub task: the one owner of the [`RoomTable`], a thin driver around it.
//!
//! Everything that reads or changes rooms arrives here on one of two paths, served fairly (the
//! loop takes from both in turn, so neither starves the other):
//! - [`HubInput`] on a bounded channel: HTTP publishes and queries, each with a oneshot for the
//!   answer;
//! - [`LinkEvent`] on the Links' channel: connection up, frame, connection down. Each Link
//!   connection may have at most `links::LINK_INFLIGHT_BYTES` of frames in it (each frame carries
//!   a permit of its connection's byte budget, returned here once handled), so one flooding Link
//!   waits on its own budget and cannot crowd out the others or HTTP.
//!
//! Frames of network Links are re-validated first (`room_table::check_link_frame`): kinds a Link
//! may not send are dropped, warned about and counted (`linkcast_hub_link_frames_dropped_total`);
//! a publish with a bad payload (flagged JSON that does not parse, or not UTF-8) is answered
//! with an `Error` frame and not sequenced. In-process Links (`serve`) are trusted.
//!
//! The loop reads the wall clock once per event, calls the table's
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
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use super::locate::Locator;
use super::presence_api::{PresenceInfo, RoomCount};
use super::queue::LinkQueue;
use linkcast_core::link_queue::Admit;
use super::durable::Durable;
use super::moderation::{HubModeration, ModerationInput};
use super::store_tasks::StoreEvent;
use super::HubMetrics;
use linkcast_core::frame::{Body, Frame, FrameBuilder};
use linkcast_core::placement::LinkId;
use linkcast_core::room::JoinAnswer;
use linkcast_core::room_table::{check_link_frame, LinkFrameCheck, PublishAck, PublishError, RoomTable, TableLimits, TableStats};

/// Capacity of the hub task's HTTP channel (HTTP handlers wait when full).
pub(crate) const EVENT_CAPACITY: usize = 8192;

/// Most frames in one history answer.
pub(crate) const MAX_HISTORY_LIMIT: usize = 1000;

/// Input to the hub task from the HTTP API.
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
    RoomInfo { room: String, reply: oneshot::Sender<Result<Option<RoomInfo>, PublishError>> },
    /// `GET /v1/rooms/{room}/messages`.
    ///
    /// Answered like a join at (`epoch`, `since`) — reset, gap, frames — cut to `limit` frames.
    History { room: String, since: u64, epoch: Option<u64>, limit: usize, reply: oneshot::Sender<Result<Option<JoinAnswer>, PublishError>> },
    /// The operator's API on users (`moderation.rs`).
    Moderation(ModerationInput),
    /// `GET /v1/rooms/{room}/presence` (`presence_api.rs`).
    Presence { room: String, reply: oneshot::Sender<Result<Option<PresenceInfo>, PublishError>> },
    /// This hub's rooms with members, biggest first (`GET /v1/rooms`, `presence_api.rs`).
    Rooms { prefix: String, limit: usize, reply: oneshot::Sender<Vec<RoomCount>> },
    /// This hub's rooms with the highest publish rate: (room, msgs/s, members), biggest first
    /// (`GET /v1/top/rooms`, `top_api.rs`).
    TopRooms { limit: usize, reply: oneshot::Sender<Vec<(String, f64, u64)>> },
}

/// Input to the hub task from Link connections (`links.rs`).
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A Link connection is established; frames for it go to `queue`. `trusted`: in-process.
    /// `announced`: where `locate` finds an unlisted Link (accepted with mutual TLS).
    Up { link: LinkId, generation: u64, queue: LinkQueue, trusted: bool, announced: Option<super::locate::Reach> },
    /// A frame from a Link, holding `frame.len()` of its connection's in-flight budget.
    Frame { link: LinkId, generation: u64, frame: Frame, credit: OwnedSemaphorePermit },
    /// A Link connection ended.
    Down { link: LinkId, generation: u64 },
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

pub(super) struct Connected {
    pub(super) generation: u64,
    pub(super) queue: LinkQueue,
    /// In-process: frames are not re-validated.
    trusted: bool,
}

/// With a Redis store: the durable state and the store tasks' answers (`durable.rs`).
pub(crate) struct StorePath {
    pub(crate) durable: Durable,
    pub(crate) events: mpsc::UnboundedReceiver<StoreEvent>,
}

/// The next input of an optional channel of the loop (the store's answers, the publish proxy's
/// decisions); never resolves when the hub runs without it.
async fn recv_if_any<T>(inputs: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match inputs.as_mut() {
        Some(inputs) => inputs.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the hub task until `shutdown` turns true or every event sender is gone.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    limits: TableLimits,
    mut events: mpsc::Receiver<HubInput>,
    mut link_events: mpsc::UnboundedReceiver<LinkEvent>,
    queued_total: Arc<AtomicUsize>,
    locator: Arc<Mutex<Locator>>,
    metrics: HubMetrics,
    store: Option<StorePath>,
    hooks: (super::hooks::Hooks, Option<mpsc::UnboundedReceiver<super::hooks::Decided>>),
    moderation: HubModeration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (hooks, mut decided) = hooks;
    let (durable, mut store_events) = match store {
        Some(StorePath { durable, events }) => (Some(durable), Some(events)),
        None => (None, None),
    };
    let mut driver = HubTask {
        table: RoomTable::new(limits, epoch_seed()),
        links: HashMap::new(),
        locator,
        metrics,
        seen: TableStats::default(),
        queued_total,
        durable,
        hooks,
        moderation,
    };
    driver.table.track_occupancy(driver.hooks.tracks_occupancy());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            // Both paths are polled in turn (`select!` without `biased` for these two).
            first = async {
                tokio::select! {
                    event = events.recv() => event.map(Input::Api),
                    event = link_events.recv() => event.map(Input::Link),
                }
            } => match first {
                Some(first) => {
                    driver.input(first);
                    // Take what else is waiting, one of each path in turn, before touching the
                    // queues again.
                    for _ in 0..128 {
                        let api = events.try_recv().ok();
                        let link = link_events.try_recv().ok();
                        if api.is_none() && link.is_none() {
                            break;
                        }
                        if let Some(event) = api {
                            driver.handle(event);
                        }
                        if let Some(event) = link {
                            driver.handle_link(event);
                        }
                    }
                    driver.flush();
                }
                None => break,
            },
            Some(event) = recv_if_any(&mut store_events) => {
                driver.handle_store(event);
                driver.flush();
            }
            Some(decided) = recv_if_any(&mut decided) => {
                driver.handle_decided(decided);
                driver.flush();
            }
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(20) {
                    let now = now_micros();
                    driver.table.handle_timeout(now);
                    driver.durable_timeout(now);
                }
                driver.flush();
            }
        }
    }
    for (_, connected) in driver.links.drain() {
        connected.queue.close("hub shutting down");
    }
}

/// One input of either path.
enum Input {
    Api(HubInput),
    Link(LinkEvent),
}

pub(super) struct HubTask {
    pub(super) table: RoomTable,
    pub(super) links: HashMap<LinkId, Connected>,
    locator: Arc<Mutex<Locator>>,
    metrics: HubMetrics,
    /// Table counters already exported.
    seen: TableStats,
    /// Bytes queued towards all Links (the queues' shared counter).
    queued_total: Arc<AtomicUsize>,
    /// With a Redis store: which rooms this hub owns there (`durable.rs`).
    pub(super) durable: Option<Durable>,
    /// The publish proxy and webhooks, if configured (`hooks/`).
    pub(super) hooks: super::hooks::Hooks,
    /// Bans, revocations and user queries (`moderation.rs`).
    pub(super) moderation: HubModeration,
}

impl HubTask {
    fn input(&mut self, input: Input) {
        match input {
            Input::Api(event) => self.handle(event),
            Input::Link(event) => self.handle_link(event),
        }
    }

    fn handle(&mut self, event: HubInput) {
        match self.durable {
            Some(_) => self.durable_api(event),
            None => self.handle_owned(event),
        }
    }

    /// Serves an HTTP input from the table (in memory, or a room owned in the store — whose
    /// publishes `durable.rs` sends to the store instead).
    pub(super) fn handle_owned(&mut self, event: HubInput) {
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
                let _ = reply.send(Ok(info));
            }
            HubInput::History { room, since, epoch, limit, reply } => {
                let _ = reply.send(Ok(self.table.room(&room).map(|r| {
                    let mut answer = r.join(Some(since), epoch);
                    answer.frames.truncate(limit);
                    answer
                })));
            }
            HubInput::Moderation(input) => self.handle_moderation(input),
            HubInput::Presence { room, reply } => {
                let info = self.table.presence(&room).map(|(members, events, users)| PresenceInfo { room, members, events, users });
                let _ = reply.send(Ok(info));
            }
            HubInput::Rooms { prefix, limit, reply } => {
                let rooms = self.table.rooms_by_members(&prefix, limit);
                let _ = reply.send(rooms.into_iter().map(|(room, members, links)| RoomCount { room, members, links: links.iter().map(|l| l.0).collect() }).collect());
            }
            HubInput::TopRooms { limit, reply } => {
                let _ = reply.send(self.table.rooms_by_rate(now, limit));
            }
        }
    }

    fn handle_link(&mut self, event: LinkEvent) {
        let now = now_micros();
        match event {
            LinkEvent::Up { link, generation, mut queue, trusted, announced } => {
                if let Some(old) = self.links.remove(&link) {
                    // A reconnect: the old connection's interest is void; the Link re-announces.
                    self.table.handle_link_down(now, link);
                    old.queue.close("replaced by a newer connection of the same Link");
                }
                if let Some(durable) = &self.durable {
                    // The owner map first: the Link routes every room by it.
                    let _ = queue.offer(durable.owner_map());
                }
                self.links.insert(link, Connected { generation, queue, trusted });
                self.moderation_link_up(link);
                lock(&self.locator).link_up(link, announced);
                tracing::info!(%link, generation, "link connected");
            }
            LinkEvent::Frame { link, generation, frame, credit } => {
                if self.links.get(&link).is_none_or(|c| c.generation != generation) || self.moderation_link_frame(link, &frame) {
                    return;
                }
                if frame.kind() == linkcast_core::frame::Kind::Draining {
                    // Stop offering it at once; it stays connected and its rooms keep flowing.
                    lock(&self.locator).set_draining(link);
                    tracing::info!(%link, "link draining: no longer offered by locate");
                    return;
                }
                let Some(connected) = self.links.get_mut(&link) else { return };
                let check = if connected.trusted { LinkFrameCheck::Accept } else { check_link_frame(&frame) };
                match check {
                    LinkFrameCheck::Accept => self.link_frame_hooked(now, link, generation, frame),
                    LinkFrameCheck::Drop(why) => {
                        self.metrics.link_frames_dropped.increment(1);
                        tracing::warn!(%link, kind = ?frame.kind(), "dropping a frame from a link: {why}");
                    }
                    LinkFrameCheck::Refuse { request, code, reason } => {
                        self.metrics.link_frames_dropped.increment(1);
                        tracing::warn!(%link, room = frame.room(), "refusing a publish from a link: {reason}");
                        self.refuse_link_publish(now, link, frame.room(), request, code, reason);
                    }
                }
                drop(credit);
            }
            LinkEvent::Down { link, generation } => {
                if self.links.get(&link).is_some_and(|c| c.generation == generation) {
                    self.drop_link(now, link, "link connection ended");
                    tracing::info!(%link, generation, "link disconnected");
                }
            }
        }
    }

    /// Moves every frame the table owes into the Links' queues; exports counters.
    fn flush(&mut self) {
        self.emit_occupancy();
        // Member counts due by now (presence.rs: at most one per room per interval).
        self.table.handle_presence_timeout(now_micros());
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
        self.metrics.presence_sends.increment(stats.presence_sends - self.seen.presence_sends);
        self.metrics.member_sends.increment(stats.member_sends - self.seen.member_sends);
        self.seen = stats;
        self.metrics.rooms.set(self.table.len() as f64);
        self.metrics.links.set(self.links.len() as f64);
        self.metrics.queued_bytes.set(self.queued_total.load(Ordering::Acquire) as f64);
    }

    /// Answers a client's publish that came through `link` with an error. Answers are queued
    /// even when the Link lags (up to twice its limit); a Link whose queue cannot take it is
    /// dropped (it reconnects), so no client's publish is left without an answer.
    pub(super) fn refuse_link_publish(&mut self, now: u64, link: LinkId, room: &str, request: u64, code: u16, reason: &str) {
        let body = Body::Error { request, code, reason: reason.to_owned(), retry_after_ms: 0 };
        let answer = FrameBuilder::new(room).build(&body);
        if self.links.get_mut(&link).is_some_and(|connected| connected.queue.offer(answer) == Admit::Overflow) {
            self.drop_link(now, link, "link queue overflow");
        }
    }

    pub(super) fn drop_link(&mut self, now: u64, link: LinkId, reason: &'static str) {
        self.table.handle_link_down(now, link);
        if let Some(connected) = self.links.remove(&link) {
            connected.queue.close(reason);
        }
        lock(&self.locator).link_down(link);
    }
}

/// Fresh randomness for the room table's epochs: std's per-process random hash keys (drawn
/// from the OS), mixed with the time and the pid, so two lifetimes of a hub never share a seed.
pub(crate) fn epoch_seed() -> u64 {
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

