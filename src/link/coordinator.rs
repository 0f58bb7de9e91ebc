//! The coordinator: the Link's one view of room membership and its only talker to hubs.
//!
//! It runs on its own thread (a current-thread runtime) and only routes: connections' joins,
//! leaves and publishes to the rooms' owner hubs, and hub frames to the shards. It owns:
//! - **membership and interest**: a core [`LinkInterest`] (room → member count per shard, and
//!   the announcements owed to the rooms' owner hubs; each room's entry also holds the Link's
//!   position in it, below). A shard is sent a room's
//!   messages only while it has members there. An announcement the core says is due now (first
//!   member in, last out) is queued before the `Join` that caused it, on the same ordered hub
//!   channel, so the hub knows the Link is interested before it answers the join — the basis of
//!   the no-loss join (`link_session.rs`); the other count changes leave once a second, and
//!   every room is re-announced after its hub (re)connects.
//! - **the Link's position in each room**: the room's epoch and the last seq it pushed into the
//!   shards' rings. Every `Message` is pushed once (a seq at or below it is a duplicate); a hub's
//!   room-wide `Gap {request: 0}` (its queue to this Link overflowed) becomes a gap marker in
//!   every ring, in order.
//! - **who owns a room**: a core [`OwnerView`], the newest owner map (`OwnerMap {version,
//!   hubs}`) any hub sent; a room belongs to the first live hub in its ring order
//!   (`HubDirectory::owner_among`). Before the first map every configured hub counts as live.
//!   The Link never decides liveness itself: a hub connection that ends changes no owner. A
//!   newer map that moves a room with members: `InterestRemove` to the old owner (best effort),
//!   the room's interest to the new owner, and one rejoin there (as after a reconnect, below);
//!   requests in flight at the old owner stay there (answered by it, or failed when its
//!   connection ends). Live `Message`s, room-wide `Gap`s and `Reset`s are taken only from the
//!   room's current owner. Gauge `linkcast_link_owner_map_version`, counter
//!   `linkcast_link_owner_moves_total`.
//! - **requests in flight**: every join and publish sent to a hub until its answer. When a hub
//!   connection ends, each is answered `503 hub connection lost` with a retry hint; after the
//!   reconnect, every room the hub owns is rejoined **once** (`Join {since: pushed, epoch}` with
//!   a request id of the coordinator's own), and its answer — replay, gap or reset — goes into
//!   the rings as room-wide items, so members see the outage replayed, a `gap`, or a `reset`.
//!   Live messages of a room whose rejoin is not answered yet are dropped: the replay covers them.
//!   For the same reason a connection's `Joined` never moves the position of a room the Link
//!   already holds (only the room's first one sets it): what it skips is owed to the members
//!   there, by the rejoin's replay or by the hub's room-wide `Gap`.
//!   The rooms with the most members are announced and rejoined first (a Link owes a rejoin
//!   per member's personal room too: thousands, in a queue that takes a few thousand frames);
//!   a room's rejoin waits until its interest announcement is queued; what the hub's queue
//!   cannot take stays owed, without being encoded meanwhile, and is retried as soon as that
//!   queue is half empty (checked every 10 ms; a hub whose queue stays full holds back no
//!   other). Gauge
//!   `linkcast_link_rooms_rejoining`, counter `linkcast_link_rejoins_total`.
//!   A hub's room-wide `Reset {request: 0}` (the store lost the room's history while the Link is
//!   attached) sets the new epoch and position and puts a reset marker in every ring.
//! - **operators' actions**: a hub's `Moderate` / `UserQuery` frame (a kick, ban, revocation,
//!   removal, or a question about a user's connections) is handed to `moderation.rs`.
//! - **hub connections**: one task per hub calls `HubConnector::connect` again whenever the
//!   previous connection ended (with a capped backoff), so the same code runs over `uplink::pair`
//!   in-process and over QUIC.
//! - **presence** (`presence.rs`): users per room, reported to the owner hub on a user's first
//!   connection in / last out while the room's events are on, and the hub's `Presence` /
//!   `Member` frames turned into ring items (encoded once) for the room's members.
//! - **routing of hub frames**: `Message` → the WebSocket frame is built *once* here
//!   (`ws_frame::message`) and a [`RoomMessage`] (two shared `Bytes`) goes to every shard with
//!   members — a copy of its own to each shard after the first, so shards on different cores
//!   never share the reference count each delivery touches; answers to a connection's request →
//!   the one shard whose index is in the id's top bits
//!   (`shard::shard_of`), with the ring tail recorded by the shard.
//!
//! Frames to a hub are sent with `try_send` (its channel is bounded): a join or publish that
//! finds it full, or the hub disconnected, is answered `503 hub unavailable` instead of waiting.
//!
//! **To the shards** the coordinator never waits either (`shard_inbox.rs`: lock-free inboxes
//! bounded by `link.shard_queue_bytes`). A ring item (room message, gap, reset, presence notice)
//! that a full shard cannot take is counted (`linkcast_link_shard_queue_full_total{shard}`) and
//! owed to that shard only (the core's `OwedItems`): the room's missed seqs merge into one
//! `Gap` (reason `shard_queue`), a missed reset replaces what was owed before it, and a missed
//! presence notice is not owed (the next one supersedes it). What is owed goes before the room's
//! next item on that shard, and is retried every [`OWED_RETRY`] while anything is owed, so the
//! members get their `gap` once the shard has room even if the room falls silent; they resume
//! from history. Other shards, and other rooms' members, are not touched. A replay that does not
//! fit is dropped and its connection told (`ShardMsg::ReplayDropped`: the session asks again,
//! as for its own mailbox's cap); other answers, closes, operators' actions and shutdown always
//! pass (bounded by requests in flight and connections).
//!
//! **The inbox** ([`CoordInbox`], one per Link, cloned into every shard) never blocks a shard
//! and is bounded: at most [`MAX_INBOX_JOINS`] joins and [`MAX_INBOX_PUBLISH_BYTES`] of publish
//! frames wait in it. A join or publish beyond that is handed back to the connection
//! ([`CoordInbox::send`] fails), which answers its client `503 link busy` with a retry hint
//! ([`busy_answer`]; counted in `linkcast_link_coordinator_busy_total`). The leave the session
//! then owes for a refused join is swallowed by the inbox, so the coordinator sees every leave
//! paired with a join. Leaves and close requests always pass (they follow joins and
//! connections, which are bounded). The loop serves the inbox and the hubs' frames in turn
//! (no priority), so a join/leave flood cannot hold back every member's room messages.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, FLAG_PAGED};
use linkcast_core::hub_directory::{HubDirectory, HubId, OwnerView};
use linkcast_core::interest::{Announcement, LinkInterest};
use linkcast_core::placement::LinkId;
use linkcast_core::protocol::{ClientError, Refusal};
use linkcast_core::room::LostRange;
use linkcast_core::shard_queue::OwedItems;
use linkcast_core::shard_rooms::{make_id, GapReason, COORDINATOR_SHARD};
use linkcast_core::sparse_tables::shrink_if_sparse;
use linkcast_core::ws_frame;

use super::moderation::LinkModeration;
use super::presence::LinkPresence;
use super::shard::{shard_of, RingItem, RoomMessage, ShardMsg};
use super::shard_inbox::{SendError, ShardSender};
use crate::uplink::HubConnector;

/// Shard / connection → coordinator.
#[derive(Debug)]
pub(crate) enum CoordMsg {
    /// A connection on `shard` joins `room` with join request `request`.
    Join {
        /// Shard of the connection.
        shard: usize,
        /// The join's request id (issued by the shard).
        request: u64,
        /// Room (the shard's name for it, shared: the interest table keeps it).
        room: Arc<str>,
        /// Replay after this seq.
        since: Option<u64>,
        /// The epoch `since` belongs to.
        epoch: Option<u64>,
        /// The connection's user, keyed by its personal room's name (`system_rooms::user_key`;
        /// presence: `presence.rs`).
        user: Arc<str>,
    },
    /// A member on `shard` left `room` (or its connection ended).
    Leave {
        /// Shard of the connection.
        shard: usize,
        /// Room.
        room: Arc<str>,
        /// The connection's user (as in `Join`).
        user: Arc<str>,
    },
    /// A client publish (a `Publish` frame with the shard-issued request id).
    Publish {
        /// The frame for the owner hub.
        frame: Frame,
    },
    /// Close connection `conn` (on whatever shard holds it) with `reason`.
    CloseConn {
        /// Connection id (its top bits name the shard).
        conn: u64,
        /// Why.
        reason: ClientError,
    },
    /// Stop.
    Shutdown,
}

/// How often ring items owed to full shards are retried while any are owed.
const OWED_RETRY: Duration = Duration::from_millis(1);

/// How often announcements and rejoins a hub's full queue refused are retried while any are
/// owed (only once the queue is half empty: each retry walks every owed room).
const HUB_RETRY: Duration = Duration::from_millis(10);

/// Most joins waiting in the coordinator's inbox.
pub(crate) const MAX_INBOX_JOINS: usize = 16_384;
/// Most bytes of publish frames waiting in the coordinator's inbox.
pub(crate) const MAX_INBOX_PUBLISH_BYTES: usize = 16 * 1024 * 1024;

/// The shards' end of the coordinator's inbox: never blocks, bounded (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct CoordInbox {
    tx: mpsc::UnboundedSender<CoordMsg>,
    load: Arc<InboxLoad>,
}

/// The coordinator's end of its inbox.
#[derive(Debug)]
pub(crate) struct CoordReceiver {
    rx: mpsc::UnboundedReceiver<CoordMsg>,
    load: Arc<InboxLoad>,
}

/// What waits in the inbox, and the leaves owed by refused joins.
#[derive(Debug, Default)]
struct InboxLoad {
    joins: AtomicUsize,
    publish_bytes: AtomicUsize,
    /// (shard, room) → leaves to swallow (their joins were refused as busy).
    swallow: Mutex<HashMap<(usize, Arc<str>), usize>>,
}

/// A new inbox.
pub(crate) fn inbox() -> (CoordInbox, CoordReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let load = Arc::new(InboxLoad::default());
    (CoordInbox { tx, load: load.clone() }, CoordReceiver { rx, load })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CoordInbox {
    /// Queues `msg` for the coordinator. A join or publish that does not fit is handed back:
    /// answer its client with [`busy_answer`]. Fails for other messages only when the
    /// coordinator is gone.
    pub(crate) fn send(&self, msg: CoordMsg) -> Result<(), CoordMsg> {
        let load = &self.load;
        match &msg {
            CoordMsg::Join { shard, room, .. } => {
                if load.joins.fetch_add(1, Ordering::AcqRel) >= MAX_INBOX_JOINS {
                    load.joins.fetch_sub(1, Ordering::AcqRel);
                    *lock(&load.swallow).entry((*shard, room.clone())).or_insert(0) += 1;
                    metrics::counter!("linkcast_link_coordinator_busy_total").increment(1);
                    return Err(msg);
                }
            }
            CoordMsg::Publish { frame } => {
                let len = frame.len();
                if load.publish_bytes.fetch_add(len, Ordering::AcqRel) + len > MAX_INBOX_PUBLISH_BYTES {
                    load.publish_bytes.fetch_sub(len, Ordering::AcqRel);
                    metrics::counter!("linkcast_link_coordinator_busy_total").increment(1);
                    return Err(msg);
                }
            }
            CoordMsg::Leave { shard, room, .. } => {
                let mut swallow = lock(&load.swallow);
                if let Some(owed) = swallow.get_mut(&(*shard, room.clone())) {
                    *owed -= 1;
                    if *owed == 0 {
                        swallow.remove(&(*shard, room.clone()));
                    }
                    return Ok(());
                }
            }
            CoordMsg::CloseConn { .. } | CoordMsg::Shutdown => {}
        }
        self.tx.send(msg).map_err(|e| {
            let msg = e.0;
            load.taken(&msg);
            msg
        })
    }
}

impl InboxLoad {
    /// `msg` left the inbox: its place is free again.
    fn taken(&self, msg: &CoordMsg) {
        match msg {
            CoordMsg::Join { .. } => {
                self.joins.fetch_sub(1, Ordering::AcqRel);
            }
            CoordMsg::Publish { frame } => {
                self.publish_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
            }
            _ => {}
        }
    }
}

impl CoordReceiver {
    async fn recv(&mut self) -> Option<CoordMsg> {
        let msg = self.rx.recv().await?;
        self.load.taken(&msg);
        Some(msg)
    }
}

/// The answer to a join or publish the inbox handed back ([`CoordInbox::send`]): the request
/// id and an `Error` frame (503 "link busy", retry hint) for the connection's session, as the
/// coordinator would have sent it. `None` for other messages.
pub(crate) fn busy_answer(msg: &CoordMsg) -> Option<(u64, Frame)> {
    let (request, room) = match msg {
        CoordMsg::Join { request, room, .. } => (*request, room.as_ref()),
        CoordMsg::Publish { frame } => match frame.body() {
            ArchivedBody::Publish { request, .. } => (request.to_native(), frame.room()),
            _ => return None,
        },
        _ => return None,
    };
    let body = Body::Error { request, code: 503, reason: "link busy".to_owned(), retry_after_ms: 1000 };
    Some((request, FrameBuilder::new(room).build(&body)))
}

/// Events of the hub connection tasks.
#[derive(Debug)]
enum HubEvent {
    Up { hub: HubId, generation: u64, to_hub: mpsc::Sender<Frame> },
    Frame { hub: HubId, frame: Frame },
    Down { hub: HubId, generation: u64 },
}

/// The Link's position in one room it has members in: the payload of the room's entry in the
/// [`LinkInterest`] (reset whenever the room has no member).
#[derive(Debug, Default)]
struct RoomPosition {
    /// The room's epoch as far as this Link knows (from a `Joined` or `Reset`), if
    /// `has_epoch` (two fields, not an `Option`: 8 bytes less in every room's entry).
    epoch_value: u64,
    has_epoch: bool,
    /// Last seq pushed into the rings (of `epoch`).
    pushed: u64,
    /// The coordinator's own rejoin in flight: live messages are dropped until it is answered.
    /// (Its request ids are never 0: 8 bytes, not 16, in every room's entry.)
    rejoin: Option<NonZeroU64>,
    /// A rejoin is owed as soon as the owner hub is connected.
    rejoin_owed: bool,
}

impl RoomPosition {
    /// The room's epoch as far as this Link knows.
    fn epoch(&self) -> Option<u64> {
        self.has_epoch.then_some(self.epoch_value)
    }

    /// The room's epoch is `epoch` from now on.
    fn set_epoch(&mut self, epoch: u64) {
        self.epoch_value = epoch;
        self.has_epoch = true;
    }

    /// True while the room's live messages must wait for a rejoin's answer.
    fn rejoining(&self) -> bool {
        self.rejoin.is_some() || self.rejoin_owed
    }
}

/// A request sent to a hub and not answered yet.
#[derive(Debug)]
struct InFlight {
    hub: HubId,
    room: String,
}

/// Takes request `request` out of `in_flight` (answered, or never to be): the table gives its
/// memory back once most of a join storm's requests have landed (`sparse_tables`).
fn landed(in_flight: &mut HashMap<u64, InFlight>, request: u64) -> Option<InFlight> {
    let flight = in_flight.remove(&request);
    shrink_if_sparse(in_flight);
    flight
}

/// The coordinator's state (see the module docs).
struct Coordinator {
    link: LinkId,
    shards: Vec<ShardSender>,
    /// Per shard: the ring items its full inbox could not take, owed before the room's next.
    owed: Vec<OwedItems>,
    /// Per shard: `linkcast_link_shard_queue_full_total{shard}`.
    queue_full: Vec<metrics::Counter>,
    directory: HubDirectory,
    /// The newest owner map from any hub: which hubs own rooms.
    view: OwnerView,
    hubs: HashMap<HubId, (u64, mpsc::Sender<Frame>)>,
    /// Member counts per room and shard, the announcements owed to hubs, and where the Link
    /// stands in each room that has members: one entry per room (every connection brings one,
    /// its personal room).
    interest: LinkInterest<Arc<str>, RoomPosition>,
    /// Joins and publishes (of connections, and the coordinator's rejoins) awaiting an answer.
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
    /// Where the count of connected hubs is published (read by `LinkHandle::connected_hubs`).
    hubs_connected: Arc<AtomicUsize>,
    /// Operators' actions on users (`moderation.rs`).
    moderation: LinkModeration,
    /// Users per room, and the hubs' counts and events for members (`presence.rs`).
    presence: LinkPresence,
    /// Since when some room has owed or awaited a rejoin (logged once they all are answered).
    rejoining_since: Option<std::time::Instant>,
    /// Some room may owe or await a rejoin: set wherever a room's `rejoin` or `rejoin_owed` is
    /// set, cleared by [`Coordinator::count_rejoining`] once a pass over the rooms found none.
    /// The once-a-second passes over every room (`rejoin_owed`, `count_rejoining`) run only
    /// while it is set: a Link holds a personal room per user (18,000 here), and those passes
    /// were the coordinator's largest item in a 1 M broadcast's profile (docs/benchmarks.md).
    rejoins_possible: bool,
    /// `linkcast_link_rooms_rejoining`: rooms whose rejoin is owed or awaited, summed over the
    /// Links of the process (each adds the change of its own count), and this Link's count.
    rooms_rejoining: (metrics::Gauge, usize),
    /// `linkcast_link_rejoins_total`: rejoins sent to hubs.
    rejoins_sent: metrics::Counter,
    /// Connected hubs whose full queue refused an announcement or a rejoin: retried every
    /// [`HUB_RETRY`] once one of them has room, instead of at the next second's tick.
    owed_hubs: Vec<HubId>,
}

/// Runs the coordinator on the current thread until [`CoordMsg::Shutdown`].
pub(crate) fn run(
    link: LinkId,
    hubs: Vec<HubId>,
    connector: Arc<dyn HubConnector>,
    shards: Vec<ShardSender>,
    mut inbox: CoordReceiver,
    hubs_connected: Arc<AtomicUsize>,
    moderation: LinkModeration,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (events_tx, mut events) = mpsc::channel::<HubEvent>(crate::uplink::PORT_CAPACITY);
        let mut tasks = Vec::new();
        for &hub in &hubs {
            tasks.push(tokio::spawn(hub_session(hub, connector.clone(), events_tx.clone())));
        }
        drop(events_tx);
        let queue_full: Vec<metrics::Counter> =
            (0..shards.len()).map(|shard| metrics::counter!("linkcast_link_shard_queue_full_total", "shard" => shard.to_string())).collect();
        for counter in &queue_full {
            counter.increment(0);
        }
        let mut coordinator = Coordinator {
            link,
            interest: LinkInterest::new(shards.len()),
            owed: (0..shards.len()).map(|_| OwedItems::new()).collect(),
            queue_full,
            shards,
            directory: HubDirectory::new(hubs),
            view: OwnerView::new(),
            hubs: HashMap::new(),
            in_flight: HashMap::new(),
            next_id: 1,
            hubs_connected,
            moderation,
            presence: LinkPresence::default(),
            rejoining_since: None,
            rejoins_possible: false,
            rooms_rejoining: (metrics::gauge!("linkcast_link_rooms_rejoining"), 0),
            rejoins_sent: metrics::counter!("linkcast_link_rejoins_total"),
            owed_hubs: Vec::new(),
        };
        coordinator.rooms_rejoining.0.increment(0.0);
        coordinator.rejoins_sent.increment(0);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut owed_retry = tokio::time::interval(OWED_RETRY);
        owed_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hub_retry = tokio::time::interval(HUB_RETRY);
        hub_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // No priority: the inbox and the hubs' frames are served in turn.
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(CoordMsg::Shutdown) | None => break,
                    Some(msg) => coordinator.handle_client(msg).await,
                },
                Some(event) = events.recv() => coordinator.handle_hub_event(event).await,
                _ = owed_retry.tick(), if coordinator.owes_shards() => coordinator.pay_owed(),
                _ = hub_retry.tick(), if !coordinator.owed_hubs.is_empty() => coordinator.retry_hubs(),
                _ = tick.tick() => {
                    coordinator.announce_owed();
                    coordinator.rejoin_owed();
                    coordinator.member_lists_owed();
                    coordinator.count_rejoining();
                }
            }
        }
        // A Link that stops takes its rooms out of the process's sum.
        let (gauge, shown) = &coordinator.rooms_rejoining;
        gauge.decrement(*shown as f64);
        for task in tasks {
            task.abort();
        }
    });
    Ok(())
}

/// Keeps one hub connected: connect, forward its frames, reconnect when it ends.
async fn hub_session(hub: HubId, connector: Arc<dyn HubConnector>, events: mpsc::Sender<HubEvent>) {
    let mut backoff = Duration::from_millis(50);
    let mut generation = 0u64;
    loop {
        match connector.connect(hub).await {
            Ok(mut port) => {
                generation += 1;
                backoff = Duration::from_millis(50);
                if events.send(HubEvent::Up { hub, generation, to_hub: port.to_hub.clone() }).await.is_err() {
                    return;
                }
                drop(port.to_hub);
                while let Some(frame) = port.from_hub.recv().await {
                    if events.send(HubEvent::Frame { hub, frame }).await.is_err() {
                        return;
                    }
                }
                tracing::warn!(hub = hub.0, "hub connection ended; reconnecting");
                if events.send(HubEvent::Down { hub, generation }).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(hub = hub.0, %error, "cannot reach hub; retrying in {backoff:?}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

impl Coordinator {
    /// The room's owner hub under the current owner map.
    fn owner(&self, room: &str) -> HubId {
        owner_in(&self.view, &self.directory, room)
    }

    /// Queues `frame` to `hub`; false when the hub is down or its queue is full.
    fn send_to_hub(&self, hub: HubId, frame: Frame) -> bool {
        match self.hubs.get(&hub) {
            Some((_, tx)) => tx.try_send(frame).is_ok(),
            None => false,
        }
    }

    /// True when `hub` is connected and its queue has room for one more frame (checked before a
    /// frame is built for it: after a reconnect, thousands of announcements and rejoins wait
    /// for a queue that takes a few thousand, and the rest stay owed without being encoded).
    fn hub_has_room(&self, hub: HubId) -> bool {
        self.hubs.get(&hub).is_some_and(|(_, tx)| tx.capacity() > 0)
    }

    /// Sends `frame` (a join or publish with request id `request`) to the owner of `room` and
    /// remembers it until answered. False if it could not be queued.
    fn send_request(&mut self, request: u64, room: &str, frame: Frame) -> bool {
        let hub = self.owner(room);
        if !self.send_to_hub(hub, frame) {
            return false;
        }
        self.in_flight.insert(request, InFlight { hub, room: room.to_owned() });
        true
    }

    /// Sends `announcement` to the room's owner and tells the interest whether it was queued.
    /// A hub that did not count this Link in is also sent the room's users (`MemberList`).
    fn announce(&mut self, announcement: Announcement<Arc<str>>) -> bool {
        let members = announcement.members;
        let fresh = members > 0 && !self.interest.is_announced(&*announcement.room);
        let owner = self.owner(&announcement.room);
        if !self.hub_has_room(owner) {
            self.owe_hub(owner);
            self.interest.handle_sent(&announcement, false);
            return false;
        }
        let builder = FrameBuilder::new(&announcement.room);
        let builder = if members == 0 { builder.interest_remove() } else { builder };
        let frame = builder.build(&Body::Interest { link: self.link.0, members });
        let sent = self.send_to_hub(owner, frame);
        self.interest.handle_sent(&announcement, sent);
        if sent && fresh {
            if let Some(list) = self.presence.member_list(&announcement.room) {
                if !self.send_to_hub(owner, list) {
                    self.presence.owe_list(&announcement.room);
                }
            }
        }
        sent
    }

    /// Sends a presence report (`Member`, `MemberList`) to the room's owner; one that cannot be
    /// queued makes the room's list owed.
    fn report_presence(&mut self, room: &str, frame: Frame) {
        if !self.send_to_hub(self.owner(room), frame) {
            self.presence.owe_list(room);
        }
    }

    /// Sends the lists owed (reports that could not be queued), once a second.
    fn member_lists_owed(&mut self) {
        for room in self.presence.take_owed() {
            if self.interest.members(room.as_str()) > 0 {
                if let Some(list) = self.presence.member_list(&room) {
                    self.report_presence(&room, list);
                }
            }
        }
    }

    /// Sends the count changes owed to hubs (once a second), the rooms with the most members
    /// first.
    fn announce_owed(&mut self) {
        let mut owed = Vec::new();
        self.interest.poll_announcements(&mut owed);
        owed.sort_unstable_by_key(|a| std::cmp::Reverse(a.members));
        for announcement in owed {
            self.announce(announcement);
        }
    }

    /// Rejoins `room` once for all its members: `Join {since: pushed, epoch}` under a request
    /// id of the coordinator's own. Stays owed when the hub cannot take it now, or does not
    /// count this Link in the room yet (its announcement is still owed: a rejoin answered
    /// before it would be followed by no live message until it arrives).
    fn rejoin(&mut self, room: &str) {
        let Some(state) = self.interest.payload(room) else { return };
        if self.interest.members(room) == 0 || state.rejoin.is_some() {
            return;
        }
        let (since, epoch) = (state.epoch().map(|_| state.pushed), state.epoch());
        let mut sent = None;
        let owner = self.owner(room);
        if self.interest.is_announced(room) && self.hub_has_room(owner) {
            let request = make_id(COORDINATOR_SHARD, self.next_id);
            self.next_id += 1;
            let frame = FrameBuilder::new(room).build(&Body::Join { request, since, epoch });
            if self.send_request(request, room, frame) {
                self.rejoins_sent.increment(1);
                sent = NonZeroU64::new(request);
            }
        }
        if sent.is_none() {
            // Its queue is full, or the room's announcement is still owed (for the same reason).
            self.owe_hub(owner);
        }
        if let Some(state) = self.interest.payload_mut(room) {
            state.rejoin = sent;
            state.rejoin_owed = sent.is_none();
            self.rejoins_possible = true;
        }
    }

    /// Retries the rejoins still owed to connected hubs, the rooms with the most members first.
    fn rejoin_owed(&mut self) {
        if !self.rejoins_possible {
            return;
        }
        let mut owed: Vec<(u64, Arc<str>)> = self
            .interest
            .rooms()
            .filter(|(room, _, state)| state.rejoin_owed && self.hubs.contains_key(&self.owner(room)))
            .map(|(room, members, _)| (members, room.clone()))
            .collect();
        owed.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
        for (_, room) in owed {
            self.rejoin(&room);
        }
    }

    /// Remembers that `hub`, if connected, is owed frames its full queue refused.
    fn owe_hub(&mut self, hub: HubId) {
        if self.hubs.contains_key(&hub) && !self.owed_hubs.contains(&hub) {
            self.owed_hubs.push(hub);
        }
    }

    /// Sends what hubs' full queues refused (announcements, then rejoins) once one of those
    /// queues is at least half empty (or its hub gone): after a reconnect a Link owes
    /// thousands, and waiting for the second's tick made each second move one queue's worth.
    /// A hub whose queue stays full holds back no other: what is owed to it fails again at once
    /// and it is owed again.
    fn retry_hubs(&mut self) {
        let hubs = &self.hubs;
        let ready = self.owed_hubs.iter().any(|hub| hubs.get(hub).is_none_or(|(_, tx)| tx.capacity() * 2 >= tx.max_capacity()));
        if !ready {
            return;
        }
        self.owed_hubs.clear();
        self.announce_owed();
        self.rejoin_owed();
    }

    /// Counts the rooms whose rejoin is owed or awaited (`linkcast_link_rooms_rejoining`, once a
    /// second), and logs, to the second, how long since a hub came up once none is left (each
    /// was rejoined, or lost its last member): while a room rejoins, its live messages wait for
    /// the rejoin's replay.
    fn count_rejoining(&mut self) {
        let rejoining =
            if self.rejoins_possible { self.interest.rooms().filter(|(_, _, state)| state.rejoining()).count() } else { 0 };
        self.rejoins_possible = rejoining > 0;
        let (gauge, shown) = &mut self.rooms_rejoining;
        gauge.increment(rejoining as f64 - *shown as f64);
        *shown = rejoining;
        if rejoining > 0 {
            self.rejoining_since.get_or_insert_with(std::time::Instant::now);
        } else if let Some(since) = self.rejoining_since.take() {
            tracing::info!(seconds = since.elapsed().as_secs(), "no room waits for a rejoin any more");
        }
    }

    async fn handle_client(&mut self, msg: CoordMsg) {
        match msg {
            CoordMsg::Join { shard, request, room, since, epoch, user } => {
                let announced = match self.interest.handle_join_key(room.clone(), shard) {
                    Some(announcement) => self.announce(announcement),
                    None => true,
                };
                // A connection's session continues a cut replay: the hub may page its answer.
                let join = FrameBuilder::new(&room).flags(FLAG_PAGED).build(&Body::Join { request, since, epoch });
                if !(announced && self.send_request(request, &room, join)) {
                    self.refuse(request, &room, ClientError::HubUnavailable).await;
                }
                // Counted as a member either way: the session sends the leave that pairs it.
                if let Some(report) = self.presence.handle_join(&room, &user) {
                    self.report_presence(&room, report);
                }
            }
            CoordMsg::Leave { shard, room, user } => {
                if let Some(report) = self.presence.handle_leave(&room, &user) {
                    self.report_presence(&room, report);
                }
                if let Some(removal) = self.interest.handle_leave(&*room, shard) {
                    self.announce(removal);
                }
                if self.interest.members(&*room) == 0 {
                    // Its position went with its last member (`LinkInterest` resets it).
                    self.presence.forget(&room);
                }
            }
            CoordMsg::Publish { frame } => {
                let request = match frame.body() {
                    ArchivedBody::Publish { request, .. } => request.to_native(),
                    _ => return,
                };
                let room = frame.room().to_owned();
                if !self.send_request(request, &room, frame) {
                    self.refuse(request, &room, ClientError::HubUnavailable).await;
                }
            }
            CoordMsg::CloseConn { conn, reason } => {
                if let Some(shard) = self.shards.get(shard_of(conn)) {
                    shard.send(ShardMsg::Close { id: conn, reason });
                }
            }
            CoordMsg::Shutdown => {}
        }
    }

    /// Answers connection/request `id` with an error frame, as a hub would, with the error's
    /// retry hint.
    async fn refuse(&self, id: u64, room: &str, error: ClientError) {
        let (Refusal::Error(code, reason) | Refusal::Close(code, reason)) = error.refusal();
        let retry_after_ms = error.retry_after_ms().unwrap_or(0);
        let frame = FrameBuilder::new(room).build(&Body::Error { request: id, code, reason: reason.to_owned(), retry_after_ms });
        if let Some(shard) = self.shards.get(shard_of(id)) {
            shard.send(ShardMsg::ToConn { id, frame });
        }
    }

    async fn handle_hub_event(&mut self, event: HubEvent) {
        match event {
            HubEvent::Up { hub, generation, to_hub } => {
                self.hubs.insert(hub, (generation, to_hub));
                self.hubs_connected.store(self.hubs.len(), Ordering::Relaxed);
                let mut owed = Vec::new();
                let (view, directory) = (&self.view, &self.directory);
                self.interest.handle_hub_up(|room| owner_in(view, directory, room) == hub, &mut owed);
                // The rooms with the most members first: after a reconnect a Link may owe a
                // hub thousands of rejoins (one per personal room), and its busiest rooms'
                // live messages wait for theirs.
                owed.sort_unstable_by_key(|a| std::cmp::Reverse(a.members));
                tracing::info!(hub = hub.0, rooms = owed.len(), "hub connected; announcing interest and rejoining rooms");
                if !owed.is_empty() {
                    self.rejoining_since.get_or_insert_with(std::time::Instant::now);
                }
                for announcement in owed {
                    let room = announcement.room.clone();
                    self.announce(announcement);
                    if self.interest.payload(&*room).is_some_and(|r| r.rejoin_owed) {
                        self.rejoin(&room);
                    }
                }
            }
            HubEvent::Down { hub, generation } => {
                if self.hubs.get(&hub).is_some_and(|(g, _)| *g == generation) {
                    self.hubs.remove(&hub);
                    self.hubs_connected.store(self.hubs.len(), Ordering::Relaxed);
                    self.hub_lost(hub).await;
                }
            }
            HubEvent::Frame { hub, frame } => self.route(hub, frame).await,
        }
    }

    /// The connection to `hub` ended: what was in flight there will never be answered. Every
    /// request is failed with a retry hint; every room the hub owns owes a rejoin.
    async fn hub_lost(&mut self, hub: HubId) {
        let lost: Vec<u64> = self.in_flight.iter().filter(|(_, f)| f.hub == hub).map(|(id, _)| *id).collect();
        for request in lost {
            let Some(flight) = landed(&mut self.in_flight, request) else { continue };
            if shard_of(request) == COORDINATOR_SHARD {
                if let Some(state) = self.interest.payload_mut(flight.room.as_str()) {
                    state.rejoin = None;
                }
            } else {
                self.refuse(request, &flight.room, ClientError::HubLost).await;
            }
        }
        let (view, directory) = (&self.view, &self.directory);
        for (room, members, state) in self.interest.rooms_mut() {
            // A room whose epoch the Link never learnt has no joined member to catch up.
            if members > 0 && state.epoch().is_some() && owner_in(view, directory, room) == hub {
                state.rejoin = None;
                state.rejoin_owed = true;
                self.rejoins_possible = true;
            }
        }
    }

    /// Sends a room-wide ring item to every shard with members of `room`.
    async fn push_rings(&mut self, room: &str, item: RingItem) {
        for shard in 0..self.shards.len() {
            if self.has_members(shard, room) {
                self.push_ring(shard, room, ShardMsg::Marker { room: room.to_owned(), item: item.clone() });
            }
        }
    }

    /// Queues a ring item ([`ShardMsg::Room`] or [`ShardMsg::Marker`] of `room`) to `shard`
    /// without waiting: behind what the shard is owed for the room, or, if its inbox is full,
    /// owed itself (a shard-local `gap`, sent once the shard has room: [`Coordinator::pay_owed`]).
    fn push_ring(&mut self, shard: usize, room: &str, msg: ShardMsg) {
        if self.owed[shard].owes(room) && !self.pay_room(shard, room) {
            return self.missed(shard, room, msg);
        }
        if let Err(SendError::Full(msg)) = self.shards[shard].try_send(msg) {
            self.missed(shard, room, msg);
        }
    }

    /// `shard`'s inbox could not take `msg` (a ring item of `room`): counted, and owed.
    fn missed(&mut self, shard: usize, room: &str, msg: ShardMsg) {
        self.queue_full[shard].increment(1);
        let item = match msg {
            ShardMsg::Room(message) => RingItem::Message(message),
            ShardMsg::Marker { item, .. } => item,
            _ => return,
        };
        self.owed[shard].missed(room, &item);
    }

    /// Sends what `shard` owes `room`'s members, in order; true when nothing stays owed.
    fn pay_room(&mut self, shard: usize, room: &str) -> bool {
        let mut items = self.owed[shard].take(room).into_iter();
        while let Some(item) = items.next() {
            if let Err(SendError::Full(ShardMsg::Marker { item, .. })) = self.shards[shard].try_send(ShardMsg::Marker { room: room.to_owned(), item }) {
                self.owed[shard].missed(room, &item);
                for rest in items {
                    self.owed[shard].missed(room, &rest);
                }
                return false;
            }
        }
        true
    }

    /// True while `shard` has members in `room` (it is sent the room's ring items only then).
    fn has_members(&self, shard: usize, room: &str) -> bool {
        self.interest.members_on(room, shard) > 0
    }

    /// True when some shard is owed ring items.
    fn owes_shards(&self) -> bool {
        self.owed.iter().any(|owed| !owed.is_empty())
    }

    /// Pays what the shards are owed, as far as their inboxes take it (every [`OWED_RETRY`]
    /// while anything is owed, so a room with no further message still gets its `gap`).
    fn pay_owed(&mut self) {
        for shard in 0..self.shards.len() {
            if self.owed[shard].is_empty() || !self.shards[shard].has_room() {
                continue;
            }
            let rooms: Vec<String> = self.owed[shard].rooms().map(str::to_owned).collect();
            for room in rooms {
                if !self.has_members(shard, &room) {
                    self.owed[shard].forget(&room);
                } else if !self.pay_room(shard, &room) {
                    break;
                }
            }
        }
    }

    /// Queues a hub answer for connection or request `id` on its shard. A replay the shard's
    /// full inbox cannot take is dropped and the connection told so (it asks for it again:
    /// nothing lost); other answers always pass (a few per request in flight).
    fn answer_conn(&mut self, id: u64, frame: Frame) {
        let Some(shard) = self.shards.get(shard_of(id)) else { return };
        if !matches!(frame.body(), ArchivedBody::Replay { .. }) {
            shard.send(ShardMsg::ToConn { id, frame });
            return;
        }
        if let Err(SendError::Full(ShardMsg::ToConn { frame, .. })) = shard.try_send(ShardMsg::ToConn { id, frame }) {
            metrics::counter!("linkcast_link_replay_dropped_bytes_total").increment(frame.len() as u64);
            shard.send(ShardMsg::ReplayDropped { id });
        }
    }

    /// Pushes a room message (live, or replayed by a rejoin) into the rings, once.
    async fn push_message(&mut self, frame: Frame) {
        if self.interest.members(frame.room()) == 0 {
            return;
        }
        let Some(state) = self.interest.payload_mut(frame.room()) else { return };
        if frame.seq() <= state.pushed {
            return;
        }
        state.pushed = frame.seq();
        // Built once per message per Link; the first shard with members takes these bytes, every
        // other one a copy of its own (`RoomMessage::copy_for_shard`: shards on different cores
        // must not share the reference count every delivery touches); all the sockets of a
        // shard share its copy.
        let message = RoomMessage { seq: frame.seq(), epoch: state.epoch().unwrap_or(0), ws: ws_frame::message(&frame), frame };
        let mut first = true;
        for shard in 0..self.shards.len() {
            if self.has_members(shard, message.frame.room()) {
                let for_shard = if first { message.clone() } else { message.copy_for_shard() };
                first = false;
                self.push_ring(shard, message.frame.room(), ShardMsg::Room(for_shard));
            }
        }
    }

    /// A room-wide gap: every member of the room on this Link lost `lost`.
    async fn push_gap(&mut self, room: &str, lost: LostRange, reason: GapReason) {
        if self.interest.members(room) == 0 {
            return;
        }
        let Some(state) = self.interest.payload_mut(room) else { return };
        if lost.last_lost <= state.pushed {
            return;
        }
        state.pushed = lost.last_lost;
        let item = RingItem::Gap { epoch: state.epoch().unwrap_or(0), lost, reason };
        self.push_rings(room, item).await;
    }

    /// Routes a frame from `hub`: room-wide ones (live messages, room-wide gaps and resets) only
    /// from the room's owner, the owner map from any hub, answers by request id.
    async fn route(&mut self, hub: HubId, frame: Frame) {
        let room_wide = match frame.body() {
            ArchivedBody::Message { .. } | ArchivedBody::Presence { .. } | ArchivedBody::Member { .. } => true,
            ArchivedBody::Gap { request, .. } | ArchivedBody::Reset { request, .. } => request.to_native() == 0,
            _ => false,
        };
        if room_wide && hub != self.owner(frame.room()) {
            // A hub that no longer owns the room (its Link interest is being removed); the new
            // owner's rejoin answer covers whatever this would have said.
            return;
        }
        let request = match frame.body() {
            ArchivedBody::Moderate { .. } | ArchivedBody::UserQuery { .. } => {
                let to_hub = self.hubs.get(&hub).map(|(_, tx)| tx.clone());
                self.moderation.handle(&frame, &self.shards, to_hub).await;
                return;
            }
            ArchivedBody::OwnerMap { version, hubs } => {
                let hubs: Vec<u32> = hubs.iter().map(|h| h.to_native()).collect();
                self.handle_owner_map(version.to_native(), hubs).await;
                return;
            }
            ArchivedBody::Message { .. } => {
                if self.interest.payload(frame.room()).is_some_and(|s| !s.rejoining()) {
                    self.push_message(frame).await;
                }
                return;
            }
            ArchivedBody::Presence { members, events } => {
                let (members, events) = (members.to_native(), *events);
                let room = frame.room().to_owned();
                if self.interest.members(room.as_str()) > 0 {
                    let (item, list) = self.presence.handle_presence(frame, members, events);
                    self.push_rings(&room, item).await;
                    if let Some(list) = list {
                        self.report_presence(&room, list);
                    }
                }
                return;
            }
            ArchivedBody::Member { joined } => {
                let (room, joined) = (frame.room().to_owned(), *joined);
                if self.interest.members(room.as_str()) > 0 {
                    let item = LinkPresence::member_notice(frame, joined);
                    self.push_rings(&room, item).await;
                }
                return;
            }
            ArchivedBody::Reset { request, epoch } if request.to_native() == 0 => {
                // While a rejoin is in flight its answer (sent after this by the same hub) covers
                // the reset.
                let room = frame.room().to_owned();
                if self.interest.payload(room.as_str()).is_some_and(|s| !s.rejoining()) {
                    self.room_reset(&room, epoch.to_native(), frame.seq()).await;
                }
                return;
            }
            ArchivedBody::Gap { request, first_lost, last_lost, resume_from } if request.to_native() == 0 => {
                // The hub's queue to this Link overflowed: every member missed these.
                let lost = LostRange {
                    first_lost: first_lost.to_native(),
                    last_lost: last_lost.to_native(),
                    resume_from: resume_from.to_native(),
                };
                let room = frame.room().to_owned();
                if self.interest.payload(room.as_str()).is_some_and(|s| !s.rejoining()) {
                    self.push_gap(&room, lost, GapReason::HubQueue).await;
                }
                return;
            }
            ArchivedBody::Replay { request, .. }
            | ArchivedBody::Gap { request, .. }
            | ArchivedBody::Reset { request, .. }
            | ArchivedBody::Joined { request, .. }
            | ArchivedBody::PublishAck { request, .. } => request.to_native(),
            ArchivedBody::Error { request, code, reason, .. } => {
                let request = request.to_native();
                if request == 0 {
                    tracing::warn!(code = code.to_native(), reason = reason.as_str(), "hub refused a frame");
                    return;
                }
                request
            }
            _ => return,
        };
        if shard_of(request) == COORDINATOR_SHARD {
            return self.rejoin_answer(request, frame).await;
        }
        match frame.body() {
            ArchivedBody::Joined { epoch, .. } => {
                landed(&mut self.in_flight, request);
                let epoch = epoch.to_native();
                let room = frame.room().to_owned();
                let mut stale = false;
                if let Some(state) = self.interest.payload_mut(room.as_str()) {
                    // Only the room's first `Joined` sets the Link's position (no member here
                    // needs what came before it). Later, every seq up to a `Joined` reached this
                    // Link before it — or was dropped, and is still owed to the members already
                    // here: by the rejoin's replay while the room rejoins (live messages are
                    // dropped then), by the hub's room-wide `Gap` when its queue to this Link
                    // overflowed (answers pass that queue, messages do not). Moving `pushed` to
                    // this seq made the rejoin ask from it and the gap look old: the members
                    // got neither the messages nor a `gap`.
                    match state.epoch() {
                        None => {
                            state.set_epoch(epoch);
                            state.pushed = frame.seq();
                        }
                        Some(known) if known != epoch => stale = !state.rejoining(),
                        Some(_) => {}
                    }
                }
                if stale {
                    // The room's history changed under this Link without a reconnect: catch the
                    // room up (the hub answers with a reset) rather than trust either epoch.
                    tracing::warn!(room = %room, "room epoch changed under the Link; rejoining");
                    self.rejoin(&room);
                }
            }
            ArchivedBody::PublishAck { .. } | ArchivedBody::Error { .. } => {
                landed(&mut self.in_flight, request);
            }
            _ => {}
        }
        // A joining connection learns the room's count (before `Joined`, which ends the
        // request's routing; the session shows it after `joined`).
        let count = match frame.body() {
            ArchivedBody::Joined { .. } => self.presence.last_count(frame.room()),
            _ => None,
        };
        if let Some(count) = count {
            self.answer_conn(request, count);
        }
        self.answer_conn(request, frame);
    }

    /// A hub's owner map: if it is newer than the view, every room with members whose owner
    /// changed moves to its new owner (see the module docs).
    async fn handle_owner_map(&mut self, version: u64, hubs: Vec<u32>) {
        let before: Vec<(Arc<str>, HubId)> =
            self.interest.rooms().filter(|(_, members, _)| *members > 0).map(|(room, _, _)| (room.clone(), self.owner(room))).collect();
        if !self.view.accept(version, hubs) {
            tracing::debug!(version, held = self.view.version(), "owner map not newer than the one held; ignored");
            return;
        }
        metrics::gauge!("linkcast_link_owner_map_version").set(version as f64);
        tracing::info!(version, live = ?self.view.live(), "new owner map");
        for (room, old) in before {
            let new = self.owner(&room);
            if new != old {
                self.move_room(&room, old, new);
            }
        }
    }

    /// `room` (with members) moved from hub `old` to hub `new`: drop the interest at `old`, tell
    /// `new`, rejoin there. Connections' requests in flight at `old` stay in flight.
    fn move_room(&mut self, room: &str, old: HubId, new: HubId) {
        metrics::counter!("linkcast_link_owner_moves_total").increment(1);
        tracing::info!(room = %room, from = old.0, to = new.0, "room moved to another owner hub; rejoining there");
        // Best effort: if the old owner is gone or its queue is full, its interest dies with it.
        let removal = FrameBuilder::new(room).interest_remove().build(&Body::Interest { link: self.link.0, members: 0 });
        let _ = self.send_to_hub(old, removal);
        if let Some(announcement) = self.interest.handle_owner_moved(room) {
            // Not queued: owed, re-sent by the next tick or when `new` connects.
            self.announce(announcement);
        }
        let Some(state) = self.interest.payload_mut(room) else { return };
        if let Some(abandoned) = state.rejoin.take() {
            // Its answer (if the old owner still sends one) no longer matches and is ignored.
            landed(&mut self.in_flight, abandoned.get());
        }
        // A room whose epoch the Link never learnt has no joined member to catch up: its
        // members' joins are in flight at `old`, which answers them.
        if state.epoch().is_some() {
            state.rejoin_owed = true;
            self.rejoins_possible = true;
            self.rejoin(room);
        }
    }

    /// The room's owner lost its history while this Link is attached (room-wide `Reset`): the
    /// room is now at `epoch`, whose last seq is `last_seq`; every member is told.
    async fn room_reset(&mut self, room: &str, epoch: u64, last_seq: u64) {
        if self.interest.members(room) == 0 {
            return;
        }
        let Some(state) = self.interest.payload_mut(room) else { return };
        if state.epoch() == Some(epoch) {
            return;
        }
        tracing::warn!(room = %room, "room history was lost at its hub (new epoch): resetting members");
        state.set_epoch(epoch);
        state.pushed = last_seq;
        self.push_rings(room, RingItem::Reset { epoch, last_seq }).await;
    }

    /// The hub's answer to the coordinator's rejoin `request` of a room: into the rings.
    async fn rejoin_answer(&mut self, request: u64, frame: Frame) {
        let room = frame.room().to_owned();
        if self.interest.payload(room.as_str()).and_then(|s| s.rejoin).map(NonZeroU64::get) != Some(request) {
            // The room is gone, or this rejoin was abandoned at a disconnect.
            landed(&mut self.in_flight, request);
            return;
        }
        match frame.body() {
            ArchivedBody::Reset { epoch, .. } => {
                let epoch = epoch.to_native();
                tracing::info!(room = %room, "room history was lost at its hub (new epoch): resetting members");
                let Some(state) = self.interest.payload_mut(room.as_str()) else { return };
                state.set_epoch(epoch);
                state.pushed = 0;
                self.push_rings(&room, RingItem::Reset { epoch, last_seq: frame.seq() }).await;
            }
            ArchivedBody::Gap { first_lost, last_lost, resume_from, .. } => {
                let lost = LostRange {
                    first_lost: first_lost.to_native(),
                    last_lost: last_lost.to_native(),
                    resume_from: resume_from.to_native(),
                };
                self.push_gap(&room, lost, GapReason::Outage).await;
            }
            ArchivedBody::Replay { .. } => self.push_message(frame).await,
            ArchivedBody::Joined { epoch, .. } => {
                landed(&mut self.in_flight, request);
                let last_seq = frame.seq();
                let Some(state) = self.interest.payload_mut(room.as_str()) else { return };
                state.set_epoch(epoch.to_native());
                state.rejoin = None;
                let pushed = state.pushed;
                if pushed < last_seq {
                    // The replay should have covered it; if not, never skip silently.
                    let lost = LostRange { first_lost: pushed + 1, last_lost: last_seq, resume_from: last_seq + 1 };
                    self.push_gap(&room, lost, GapReason::Outage).await;
                }
            }
            ArchivedBody::Error { code, reason, .. } => {
                landed(&mut self.in_flight, request);
                tracing::warn!(room = %room, code = code.to_native(), reason = reason.as_str(), "room rejoin refused; retrying");
                if let Some(state) = self.interest.payload_mut(room.as_str()) {
                    state.rejoin = None;
                    state.rejoin_owed = true;
                    self.rejoins_possible = true;
                }
            }
            _ => {}
        }
    }
}

/// The owner of `room` under `view` (hub 0 when no hub is configured).
fn owner_in(view: &OwnerView, directory: &HubDirectory, room: &str) -> HubId {
    view.owner(directory, room).unwrap_or(HubId(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(shard: usize, request: u64, room: &str) -> CoordMsg {
        CoordMsg::Join { shard, request, room: room.into(), since: None, epoch: None, user: "u".into() }
    }

    #[test]
    fn a_room_position_is_four_words_and_knows_its_epoch() {
        // Every room of the Link has one (a user's personal room among them).
        assert!(std::mem::size_of::<RoomPosition>() <= 32, "{}", std::mem::size_of::<RoomPosition>());
        let mut position = RoomPosition::default();
        assert_eq!(position.epoch(), None);
        position.set_epoch(0);
        assert_eq!(position.epoch(), Some(0), "epoch 0 is an epoch, not none");
        position.set_epoch(7);
        assert_eq!(position.epoch(), Some(7));
    }

    #[test]
    fn a_full_inbox_hands_joins_back_and_swallows_their_leaves() {
        let (tx, mut rx) = inbox();
        for request in 0..MAX_INBOX_JOINS as u64 {
            assert!(tx.send(join(1, request, "r")).is_ok());
        }
        let refused = tx.send(join(1, 99_999, "r")).expect_err("inbox full");
        let (request, answer) = busy_answer(&refused).expect("a join gets an answer");
        assert_eq!(request, 99_999);
        assert!(matches!(answer.body(), ArchivedBody::Error { code, .. } if code.to_native() == 503));
        // The refused join's leave never reaches the coordinator; other leaves do.
        assert!(tx.send(CoordMsg::Leave { shard: 1, room: "r".into(), user: "u".into() }).is_ok());
        assert!(tx.send(CoordMsg::Leave { shard: 1, room: "r".into(), user: "u".into() }).is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut leaves = 0;
        runtime.block_on(async {
            for _ in 0..MAX_INBOX_JOINS + 1 {
                if let Some(CoordMsg::Leave { .. }) = rx.recv().await {
                    leaves += 1;
                }
            }
        });
        assert_eq!(leaves, 1);
        assert!(tx.send(join(1, 7, "r")).is_ok(), "taken joins free their place");
    }

    #[test]
    fn publishes_are_bounded_in_bytes() {
        let (tx, _rx) = inbox();
        let frame = FrameBuilder::new("r").build(&Body::Publish { request: 5, key: String::new(), data: vec![0; 64 * 1024] });
        let fits = MAX_INBOX_PUBLISH_BYTES / frame.len();
        for _ in 0..fits {
            assert!(tx.send(CoordMsg::Publish { frame: frame.clone() }).is_ok());
        }
        let refused = tx.send(CoordMsg::Publish { frame }).expect_err("inbox full");
        assert_eq!(busy_answer(&refused).map(|(request, _)| request), Some(5));
    }
}
