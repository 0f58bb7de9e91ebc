//! The coordinator: the Link's one view of room membership and its only talker to hubs.
//!
//! It runs on its own thread (a current-thread runtime) and owns:
//! - **membership**: room → member count per shard. A shard is sent a room's messages only while
//!   it has members there.
//! - **interest** (DESIGN "Interest"): `InterestAdd` to the room's owner hub
//!   (`HubDirectory::owner`) when the Link gains its first member, `InterestRemove` when it loses
//!   the last, count updates at most once per second in between, and every room re-announced
//!   after a hub (re)connects. `InterestAdd` is always queued before the `Join` that caused it, on
//!   the same ordered hub channel, so the hub knows the Link is interested before it answers the
//!   join — the basis of the no-loss join (`session.rs`).
//! - **hub connections**: one task per hub calls `HubConnector::connect` again whenever the
//!   previous connection ended (with a capped backoff), so the same code runs over `uplink::pair`
//!   in-process and over QUIC.
//! - **routing of hub frames**: `Message` → the WebSocket frame is built *once* here
//!   (`wsframe::message`) and a [`Delivery`] (two shared `Bytes`) goes to every shard with members;
//!   `Replay`/`Gap`/`Joined`/`PublishAck`/`Error` → the one shard whose index is in the id's top
//!   bits (`shard::shard_of`).
//!
//! Frames to a hub are sent with `try_send` (its channel is bounded): a join or publish that
//! finds it full, or the hub disconnected, is answered `503 hub unavailable` instead of waiting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind};
use crate::placement::LinkId;
use crate::uplink::{HubConnector, HubDirectory, HubId};

use super::limits::{ClientError, Refusal};
use super::shard::{shard_of, Delivery, ShardMsg};
use super::wsframe;

/// Shard / connection → coordinator.
#[derive(Debug)]
pub enum CoordMsg {
    /// Connection `conn` on `shard` joins `room`.
    Join {
        /// Shard of the connection.
        shard: usize,
        /// Connection id.
        conn: u64,
        /// Room.
        room: String,
        /// Replay after this seq.
        since: Option<u64>,
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

#[derive(Debug, Default)]
struct RoomInterest {
    per_shard: Vec<u32>,
    total: u64,
}

/// The coordinator's state (see the module docs).
struct Coordinator {
    link: LinkId,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    directory: HubDirectory,
    hubs: HashMap<HubId, (u64, mpsc::Sender<Frame>)>,
    rooms: HashMap<String, RoomInterest>,
    /// Rooms whose member count changed since it was last announced.
    dirty: HashSet<String>,
    /// Where the count of connected hubs is published.
    shared: Arc<super::Shared>,
}

/// Runs the coordinator on the current thread until [`CoordMsg::Shutdown`].
pub fn run(
    link: LinkId,
    hubs: Vec<HubId>,
    connector: Arc<dyn HubConnector>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    mut inbox: mpsc::UnboundedReceiver<CoordMsg>,
    shared: Arc<super::Shared>,
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
            shards,
            directory: HubDirectory::new(hubs),
            hubs: HashMap::new(),
            rooms: HashMap::new(),
            dirty: HashSet::new(),
            shared,
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
                _ = tick.tick() => coordinator.announce_dirty(),
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

    /// Sends the room's current interest to its owner. False if it could not be queued.
    fn announce(&mut self, room: &str) -> bool {
        let members = self.rooms.get(room).map_or(0, |r| r.total);
        let builder = FrameBuilder::new(room);
        let builder = if members == 0 { builder.interest_remove() } else { builder };
        let frame = builder.build(&Body::Interest { link: self.link.0, members });
        let sent = self.send_to_hub(self.owner(room), frame);
        if sent {
            self.dirty.remove(room);
        } else {
            self.dirty.insert(room.to_owned());
        }
        sent
    }

    fn announce_dirty(&mut self) {
        let dirty: Vec<String> = self.dirty.iter().cloned().collect();
        for room in dirty {
            self.announce(&room);
        }
    }

    async fn handle_client(&mut self, msg: CoordMsg) {
        match msg {
            CoordMsg::Join { shard, conn, room, since } => {
                let shard_count = self.shards.len();
                let interest = self.rooms.entry(room.clone()).or_default();
                interest.per_shard.resize(shard_count, 0);
                interest.per_shard[shard] += 1;
                interest.total += 1;
                let first = interest.total == 1;
                let announced = if first { self.announce(&room) } else { !self.dirty.contains(&room) || self.announce(&room) };
                let join = FrameBuilder::new(&room).build(&Body::Join { conn, since });
                if !(announced && self.send_to_hub(self.owner(&room), join)) {
                    self.refuse(conn, &room, ClientError::HubUnavailable).await;
                }
            }
            CoordMsg::Leave { shard, room } => {
                let Some(interest) = self.rooms.get_mut(&room) else { return };
                if let Some(count) = interest.per_shard.get_mut(shard) {
                    *count = count.saturating_sub(1);
                }
                interest.total = interest.total.saturating_sub(1);
                if interest.total == 0 {
                    self.announce(&room);
                    // Keep the entry while a removal is still owed to the hub.
                    if !self.dirty.contains(&room) {
                        self.rooms.remove(&room);
                    }
                } else {
                    self.dirty.insert(room);
                }
            }
            CoordMsg::Publish { frame } => {
                let request = match frame.body() {
                    ArchivedBody::Publish { request, .. } => request.to_native(),
                    _ => return,
                };
                let room = frame.room().to_owned();
                if !self.send_to_hub(self.owner(&room), frame) {
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

    /// Answers connection/request `id` with an error frame, as a hub would.
    async fn refuse(&self, id: u64, room: &str, error: ClientError) {
        let (Refusal::Error(code, reason) | Refusal::Close(code, reason)) = error.refusal();
        let frame = FrameBuilder::new(room).build(&Body::Error { request: id, code, reason: reason.to_owned() });
        if let Some(shard) = self.shards.get(shard_of(id)) {
            let _ = shard.send(ShardMsg::ToConn { id, frame }).await;
        }
    }

    async fn handle_hub_event(&mut self, event: HubEvent) {
        match event {
            HubEvent::Up { hub, generation, to_hub } => {
                tracing::info!(hub = hub.0, "hub connected; announcing interest");
                self.hubs.insert(hub, (generation, to_hub));
                self.shared.hubs_connected.store(self.hubs.len(), std::sync::atomic::Ordering::Relaxed);
                let rooms: Vec<String> =
                    self.rooms.keys().filter(|room| self.owner(room) == hub).cloned().collect();
                for room in rooms {
                    if self.rooms.get(&room).is_some_and(|r| r.total > 0) {
                        self.announce(&room);
                    } else {
                        self.dirty.remove(&room);
                        self.rooms.remove(&room);
                    }
                }
            }
            HubEvent::Down { hub, generation } => {
                if self.hubs.get(&hub).is_some_and(|(g, _)| *g == generation) {
                    self.hubs.remove(&hub);
                    self.shared.hubs_connected.store(self.hubs.len(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            HubEvent::Frame(frame) => self.route(frame).await,
        }
    }

    async fn route(&mut self, frame: Frame) {
        let target = match (frame.kind(), frame.body()) {
            (Kind::Message, _) => {
                let Some(interest) = self.rooms.get(frame.room()) else { return };
                if interest.total == 0 {
                    return;
                }
                // Built once per message per Link; every shard and socket shares these bytes.
                let delivery = Delivery { seq: frame.seq(), ws: wsframe::message(&frame), frame };
                for (shard, &count) in interest.per_shard.iter().enumerate() {
                    if count > 0 {
                        let _ = self.shards[shard].send(ShardMsg::Room(delivery.clone())).await;
                    }
                }
                return;
            }
            (_, ArchivedBody::Replay { conn, .. })
            | (_, ArchivedBody::Gap { conn, .. })
            | (_, ArchivedBody::Joined { conn }) => conn.to_native(),
            (_, ArchivedBody::PublishAck { request }) => request.to_native(),
            (_, ArchivedBody::Error { request, code, reason }) => {
                let request = request.to_native();
                if request == 0 {
                    tracing::warn!(code = code.to_native(), reason = reason.as_str(), "hub refused a frame");
                    return;
                }
                request
            }
            _ => return,
        };
        if let Some(shard) = self.shards.get(shard_of(target)) {
            let _ = shard.send(ShardMsg::ToConn { id: target, frame }).await;
        }
    }
}
