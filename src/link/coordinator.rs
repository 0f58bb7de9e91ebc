//! The coordinator: the Link's one view of room membership and its only talker to hubs.
//!
//! It runs on its own thread (a current-thread runtime) and only routes: connections' joins,
//! leaves and publishes to the rooms' owner hubs, and hub frames to the shards. It owns:
//! - **membership and interest**: a core [`LinkInterest`] (room → member count per shard, and
//!   the announcements owed to owner hubs, `HubDirectory::owner`). A shard is sent a room's
//!   messages only while it has members there. An announcement the core says is due now (first
//!   member in, last out) is queued before the `Join` that caused it, on the same ordered hub
//!   channel, so the hub knows the Link is interested before it answers the join — the basis of
//!   the no-loss join (`link_session.rs`); the other count changes leave once a second, and
//!   every room is re-announced after its hub (re)connects.
//! - **the Link's position in each room**: the room's epoch and the last seq it pushed into the
//!   shards' rings. Every `Message` is pushed once (a seq at or below it is a duplicate); a hub's
//!   room-wide `Gap {request: 0}` (its queue to this Link overflowed) becomes a gap marker in
//!   every ring, in order.
//! - **requests in flight**: every join and publish sent to a hub until its answer. When a hub
//!   connection ends, each is answered `503 hub connection lost` with a retry hint; after the
//!   reconnect, every room the hub owns is rejoined **once** (`Join {since: pushed, epoch}` with
//!   a request id of the coordinator's own), and its answer — replay, gap or reset — goes into
//!   the rings as room-wide items, so members see the outage replayed, a `gap`, or a `reset`.
//!   Live messages of a room whose rejoin is not answered yet are dropped: the replay covers them.
//! - **hub connections**: one task per hub calls `HubConnector::connect` again whenever the
//!   previous connection ended (with a capped backoff), so the same code runs over `uplink::pair`
//!   in-process and over QUIC.
//! - **routing of hub frames**: `Message` → the WebSocket frame is built *once* here
//!   (`ws_frame::message`) and a [`RoomMessage`] (two shared `Bytes`) goes to every shard with
//!   members; answers to a connection's request → the one shard whose index is in the id's top bits
//!   (`shard::shard_of`), with the ring tail recorded by the shard.
//!
//! Frames to a hub are sent with `try_send` (its channel is bounded): a join or publish that
//! finds it full, or the hub disconnected, is answered `503 hub unavailable` instead of waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder};
use linkcast_core::hub_directory::{HubDirectory, HubId};
use linkcast_core::interest::{Announcement, LinkInterest};
use linkcast_core::placement::LinkId;
use linkcast_core::protocol::{ClientError, Refusal};
use linkcast_core::room::LostRange;
use linkcast_core::shard_rooms::{make_id, COORDINATOR_SHARD};
use linkcast_core::ws_frame;

use super::shard::{shard_of, RingItem, RoomMessage, ShardMsg};
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
        /// Room.
        room: String,
        /// Replay after this seq.
        since: Option<u64>,
        /// The epoch `since` belongs to.
        epoch: Option<u64>,
    },
    /// A member on `shard` left `room` (or its connection ended).
    Leave {
        /// Shard of the connection.
        shard: usize,
        /// Room.
        room: String,
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

/// Events of the hub connection tasks.
#[derive(Debug)]
enum HubEvent {
    Up { hub: HubId, generation: u64, to_hub: mpsc::Sender<Frame> },
    Frame(Frame),
    Down { hub: HubId, generation: u64 },
}

/// The Link's position in one room it has members in (membership itself is in [`LinkInterest`]).
#[derive(Debug, Default)]
struct RoomPosition {
    /// The room's epoch as far as this Link knows (from a `Joined` or `Reset`).
    epoch: Option<u64>,
    /// Last seq pushed into the rings (of `epoch`).
    pushed: u64,
    /// The coordinator's own rejoin in flight: live messages are dropped until it is answered.
    rejoin: Option<u64>,
    /// A rejoin is owed as soon as the owner hub is connected.
    rejoin_owed: bool,
}

impl RoomPosition {
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

/// The coordinator's state (see the module docs).
struct Coordinator {
    link: LinkId,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    directory: HubDirectory,
    hubs: HashMap<HubId, (u64, mpsc::Sender<Frame>)>,
    /// Member counts per room and shard, and the announcements owed to hubs.
    interest: LinkInterest<String>,
    /// Where the Link stands in each room that has members.
    rooms: HashMap<String, RoomPosition>,
    /// Joins and publishes (of connections, and the coordinator's rejoins) awaiting an answer.
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
    /// Where the count of connected hubs is published (read by `LinkHandle::connected_hubs`).
    hubs_connected: Arc<AtomicUsize>,
}

/// Runs the coordinator on the current thread until [`CoordMsg::Shutdown`].
pub(crate) fn run(
    link: LinkId,
    hubs: Vec<HubId>,
    connector: Arc<dyn HubConnector>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    mut inbox: mpsc::UnboundedReceiver<CoordMsg>,
    hubs_connected: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (events_tx, mut events) = mpsc::channel::<HubEvent>(crate::uplink::PORT_CAPACITY);
        let mut tasks = Vec::new();
        for &hub in &hubs {
            tasks.push(tokio::spawn(hub_session(hub, connector.clone(), events_tx.clone())));
        }
        drop(events_tx);
        let mut coordinator = Coordinator {
            link,
            interest: LinkInterest::new(shards.len()),
            shards,
            directory: HubDirectory::new(hubs),
            hubs: HashMap::new(),
            rooms: HashMap::new(),
            in_flight: HashMap::new(),
            next_id: 1,
            hubs_connected,
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                msg = inbox.recv() => match msg {
                    Some(CoordMsg::Shutdown) | None => break,
                    Some(msg) => coordinator.handle_client(msg).await,
                },
                Some(event) = events.recv() => coordinator.handle_hub_event(event).await,
                _ = tick.tick() => {
                    coordinator.announce_owed();
                    coordinator.rejoin_owed();
                }
            }
        }
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
                    if events.send(HubEvent::Frame(frame)).await.is_err() {
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
    fn owner(&self, room: &str) -> HubId {
        self.directory.owner(room).unwrap_or(HubId(0))
    }

    /// Queues `frame` to `hub`; false when the hub is down or its queue is full.
    fn send_to_hub(&self, hub: HubId, frame: Frame) -> bool {
        match self.hubs.get(&hub) {
            Some((_, tx)) => tx.try_send(frame).is_ok(),
            None => false,
        }
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
    fn announce(&mut self, announcement: Announcement<String>) -> bool {
        let members = announcement.members;
        let builder = FrameBuilder::new(&announcement.room);
        let builder = if members == 0 { builder.interest_remove() } else { builder };
        let frame = builder.build(&Body::Interest { link: self.link.0, members });
        let sent = self.send_to_hub(self.owner(&announcement.room), frame);
        self.interest.handle_sent(&announcement, sent);
        sent
    }

    /// Sends the count changes owed to hubs (once a second).
    fn announce_owed(&mut self) {
        let mut owed = Vec::new();
        self.interest.poll_announcements(&mut owed);
        for announcement in owed {
            self.announce(announcement);
        }
    }

    /// Rejoins `room` once for all its members: `Join {since: pushed, epoch}` under a request
    /// id of the coordinator's own. Stays owed when the hub cannot take it now.
    fn rejoin(&mut self, room: &str) {
        let Some(state) = self.rooms.get(room) else { return };
        if self.interest.members(room) == 0 || state.rejoin.is_some() {
            return;
        }
        let (since, epoch) = (state.epoch.map(|_| state.pushed), state.epoch);
        let request = make_id(COORDINATOR_SHARD, self.next_id);
        self.next_id += 1;
        let frame = FrameBuilder::new(room).build(&Body::Join { request, since, epoch });
        let sent = self.send_request(request, room, frame);
        if let Some(state) = self.rooms.get_mut(room) {
            if sent {
                state.rejoin = Some(request);
                state.rejoin_owed = false;
            } else {
                state.rejoin_owed = true;
            }
        }
    }

    /// Retries the rejoins still owed to connected hubs.
    fn rejoin_owed(&mut self) {
        let owed: Vec<String> = self
            .rooms
            .iter()
            .filter(|(room, state)| state.rejoin_owed && self.hubs.contains_key(&self.owner(room)))
            .map(|(room, _)| room.clone())
            .collect();
        for room in owed {
            self.rejoin(&room);
        }
    }

    async fn handle_client(&mut self, msg: CoordMsg) {
        match msg {
            CoordMsg::Join { shard, request, room, since, epoch } => {
                self.rooms.entry(room.clone()).or_default();
                let announced = match self.interest.handle_join(room.as_str(), shard) {
                    Some(announcement) => self.announce(announcement),
                    None => true,
                };
                let join = FrameBuilder::new(&room).build(&Body::Join { request, since, epoch });
                if !(announced && self.send_request(request, &room, join)) {
                    self.refuse(request, &room, ClientError::HubUnavailable).await;
                }
            }
            CoordMsg::Leave { shard, room } => {
                if let Some(removal) = self.interest.handle_leave(room.as_str(), shard) {
                    self.announce(removal);
                }
                if self.interest.members(room.as_str()) == 0 {
                    self.rooms.remove(&room);
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
                    let _ = shard.send(ShardMsg::Close { id: conn, reason }).await;
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
            let _ = shard.send(ShardMsg::ToConn { id, frame }).await;
        }
    }

    async fn handle_hub_event(&mut self, event: HubEvent) {
        match event {
            HubEvent::Up { hub, generation, to_hub } => {
                tracing::info!(hub = hub.0, "hub connected; announcing interest and rejoining rooms");
                self.hubs.insert(hub, (generation, to_hub));
                self.hubs_connected.store(self.hubs.len(), Ordering::Relaxed);
                let mut owed = Vec::new();
                let directory = &self.directory;
                self.interest.handle_hub_up(|room| directory.owner(room).unwrap_or(HubId(0)) == hub, &mut owed);
                for announcement in owed {
                    let room = announcement.room.clone();
                    self.announce(announcement);
                    if self.rooms.get(&room).is_some_and(|r| r.rejoin_owed) {
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
            HubEvent::Frame(frame) => self.route(frame).await,
        }
    }

    /// The connection to `hub` ended: what was in flight there will never be answered. Every
    /// request is failed with a retry hint; every room the hub owns owes a rejoin.
    async fn hub_lost(&mut self, hub: HubId) {
        let lost: Vec<u64> = self.in_flight.iter().filter(|(_, f)| f.hub == hub).map(|(id, _)| *id).collect();
        for request in lost {
            let Some(flight) = self.in_flight.remove(&request) else { continue };
            if shard_of(request) == COORDINATOR_SHARD {
                if let Some(state) = self.rooms.get_mut(&flight.room) {
                    state.rejoin = None;
                }
            } else {
                self.refuse(request, &flight.room, ClientError::HubLost).await;
            }
        }
        for (room, state) in self.rooms.iter_mut() {
            // A room whose epoch the Link never learnt has no joined member to catch up.
            let members = self.interest.members(room.as_str());
            if members > 0 && state.epoch.is_some() && self.directory.owner(room).unwrap_or(HubId(0)) == hub {
                state.rejoin = None;
                state.rejoin_owed = true;
            }
        }
    }

    /// Sends a room-wide ring item to every shard with members of `room`.
    async fn to_rings(&self, room: &str, item: RingItem) {
        for (shard, &count) in self.interest.per_shard(room).iter().enumerate() {
            if count > 0 {
                let _ = self.shards[shard].send(ShardMsg::Marker { room: room.to_owned(), item: item.clone() }).await;
            }
        }
    }

    /// Pushes a room message (live, or replayed by a rejoin) into the rings, once.
    async fn push_message(&mut self, frame: Frame) {
        let Some(state) = self.rooms.get_mut(frame.room()) else { return };
        if self.interest.members(frame.room()) == 0 || frame.seq() <= state.pushed {
            return;
        }
        state.pushed = frame.seq();
        let per_shard = self.interest.per_shard(frame.room());
        // Built once per message per Link; every shard and socket shares these bytes.
        let message = RoomMessage { seq: frame.seq(), epoch: state.epoch.unwrap_or(0), ws: ws_frame::message(&frame), frame };
        for (shard, &count) in per_shard.iter().enumerate() {
            if count > 0 {
                let _ = self.shards[shard].send(ShardMsg::Room(message.clone())).await;
            }
        }
    }

    /// A room-wide gap: every member of the room on this Link lost `lost`.
    async fn push_gap(&mut self, room: &str, lost: LostRange) {
        let Some(state) = self.rooms.get_mut(room) else { return };
        if self.interest.members(room) == 0 || lost.last_lost <= state.pushed {
            return;
        }
        state.pushed = lost.last_lost;
        let item = RingItem::Gap { epoch: state.epoch.unwrap_or(0), lost };
        self.to_rings(room, item).await;
    }

    async fn route(&mut self, frame: Frame) {
        let request = match frame.body() {
            ArchivedBody::Message { .. } => {
                if self.rooms.get(frame.room()).is_some_and(|s| !s.rejoining()) {
                    self.push_message(frame).await;
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
                if self.rooms.get(&room).is_some_and(|s| !s.rejoining()) {
                    self.push_gap(&room, lost).await;
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
                self.in_flight.remove(&request);
                let epoch = epoch.to_native();
                let room = frame.room().to_owned();
                let mut stale = false;
                if let Some(state) = self.rooms.get_mut(&room) {
                    match state.epoch {
                        None => state.epoch = Some(epoch),
                        Some(known) if known != epoch => stale = !state.rejoining(),
                        Some(_) => {}
                    }
                    if state.epoch == Some(epoch) {
                        state.pushed = state.pushed.max(frame.seq());
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
                self.in_flight.remove(&request);
            }
            _ => {}
        }
        if let Some(shard) = self.shards.get(shard_of(request)) {
            let _ = shard.send(ShardMsg::ToConn { id: request, frame }).await;
        }
    }

    /// The hub's answer to the coordinator's rejoin `request` of a room: into the rings.
    async fn rejoin_answer(&mut self, request: u64, frame: Frame) {
        let room = frame.room().to_owned();
        if self.rooms.get(&room).and_then(|s| s.rejoin) != Some(request) {
            // The room is gone, or this rejoin was abandoned at a disconnect.
            self.in_flight.remove(&request);
            return;
        }
        match frame.body() {
            ArchivedBody::Reset { epoch, .. } => {
                let epoch = epoch.to_native();
                tracing::info!(room = %room, "room history was lost at its hub (new epoch): resetting members");
                let Some(state) = self.rooms.get_mut(&room) else { return };
                state.epoch = Some(epoch);
                state.pushed = 0;
                self.to_rings(&room, RingItem::Reset { epoch, last_seq: frame.seq() }).await;
            }
            ArchivedBody::Gap { first_lost, last_lost, resume_from, .. } => {
                let lost = LostRange {
                    first_lost: first_lost.to_native(),
                    last_lost: last_lost.to_native(),
                    resume_from: resume_from.to_native(),
                };
                self.push_gap(&room, lost).await;
            }
            ArchivedBody::Replay { .. } => self.push_message(frame).await,
            ArchivedBody::Joined { epoch, .. } => {
                self.in_flight.remove(&request);
                let last_seq = frame.seq();
                let Some(state) = self.rooms.get_mut(&room) else { return };
                state.epoch = Some(epoch.to_native());
                state.rejoin = None;
                let pushed = state.pushed;
                if pushed < last_seq {
                    // The replay should have covered it; if not, never skip silently.
                    let lost = LostRange { first_lost: pushed + 1, last_lost: last_seq, resume_from: last_seq + 1 };
                    self.push_gap(&room, lost).await;
                }
            }
            ArchivedBody::Error { code, reason, .. } => {
                self.in_flight.remove(&request);
                tracing::warn!(room = %room, code = code.to_native(), reason = reason.as_str(), "room rejoin refused; retrying");
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.rejoin = None;
                    state.rejoin_owed = true;
                }
            }
            _ => {}
        }
    }
}
