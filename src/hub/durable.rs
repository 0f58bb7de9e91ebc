//! Durable rooms at the hub task: which rooms this hub owns in the Redis store, and the gate
//! every room operation passes when a store is configured (`[store] redis`).
//!
//! With a store, Redis holds each room's seq, epoch, history and publish keys; the hub's
//! [`RoomTable`](linkcast_core::room_table::RoomTable) is a cache of the rooms this hub holds
//! the **lease** of (fencing token `fence`), plus the interest Links announced. A room is in one
//! of three states here ([`Ownership`], absent = not owned):
//! - absent: not owned. The first join, publish or read makes the hub ask the store worker to
//!   acquire it — only if this hub is the room's owner in its current view (the first live hub
//!   on the ring, `HubDirectory::owner_among`); otherwise the operation is refused `503` with a
//!   retry hint (the Link's owner map or the forwarding hub is behind and will catch up);
//! - `Acquiring`: operations wait in a bounded list ([`MAX_DEFERRED`] per room) and are
//!   replayed in order once the store answered (lease taken, state read into the table);
//! - `Owned`: joins and reads are served from the table; **publishes go to the store first**
//!   and are fanned out only when the store answered with their seq (`StoreEvent::Published`),
//!   so no Link ever sees a seq Redis does not hold. A publish the store fenced (another hub
//!   took the lease while this one was paused) is refused 503 and the hub stops owning the
//!   room; so does a batch whose outcome is unknown. The table keeps the room's copy and the
//!   Links' interest: the next operation reloads it (`served` rooms are reloaded, not
//!   replaced), and the table catches the Links up on anything the store kept that they did not
//!   get (late, not lost).
//!
//! When the live set changes ([`StoreEvent::View`]) the hub pushes the new owner map to every
//! Link (`OwnerMap`), steps down from rooms it no longer owns (releases their leases after the
//! publishes already sent, and forgets them), and refuses what waited for them.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::driver::{HubInput, HubTask};
use super::store_tasks::{PublishReply, StoreCommand, StoreEvent};
use crate::store::{Acquired, PublishCmd, PublishOutcome};
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind};
use linkcast_core::hub_directory::{HubDirectory, HubId, OwnerView};
use linkcast_core::placement::LinkId;
use linkcast_core::room_table::{PublishAck, PublishError};

/// Most operations waiting for one room to be acquired.
pub(crate) const MAX_DEFERRED: usize = 4096;

/// Most publish payload bytes sent to the store and not answered yet; beyond, publishes are
/// refused 503 (the store is slower than the publishers).
pub(crate) const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Retry hint given with a 503 for a room that is moving between hubs, milliseconds.
const MOVING_RETRY_MS: u32 = 500;

/// This hub's hold on one room (absent: none).
#[derive(Debug)]
pub(crate) enum Ownership {
    /// The store worker is acquiring it; these wait, in arrival order. `first`: the table's
    /// copy was never served (a placeholder), so the store's state replaces it silently.
    Acquiring { deferred: Vec<Deferred>, first: bool },
    /// This hub holds the lease `fence`; `acked_seq` is the last seq the store acknowledged.
    Owned { fence: u64, acked_seq: u64 },
}

/// An operation waiting for its room.
#[derive(Debug)]
pub(crate) enum Deferred {
    /// From the HTTP API.
    Api(HubInput),
    /// A join or publish from a Link connection.
    Link { link: LinkId, generation: u64, frame: Frame },
}

/// The durable part of the hub task's state.
pub(crate) struct Durable {
    me: HubId,
    directory: HubDirectory,
    /// This hub's view of the live hubs: the newest owner map (version from the store's
    /// counter). Empty until the first change: every configured hub counts as live.
    view: OwnerView,
    /// Where the live view is published for the HTTP handlers (forwarding to owners).
    live_tx: tokio::sync::watch::Sender<Vec<HubId>>,
    rooms: HashMap<String, Ownership>,
    /// Rooms whose table copy has served joins or messages (loaded from the store at least
    /// once): the next load of one is a reload that catches its Links up, never a silent swap.
    served: HashSet<String>,
    commands: mpsc::UnboundedSender<StoreCommand>,
    /// Epoch candidates for rooms the store does not hold (splitmix64 state).
    epochs: u64,
    in_flight_bytes: usize,
    /// Most rooms held or being acquired (`hub.max_rooms`).
    max_rooms: usize,
    /// Room keys expire in the store after this long without use (`hub.room_idle_secs`); owned
    /// rooms are touched every quarter of it.
    touch_every_micros: u64,
    next_touch_micros: u64,
    metrics: DurableMetrics,
}

#[derive(Clone)]
struct DurableMetrics {
    owned: metrics::Gauge,
    fenced: metrics::Counter,
    moves: metrics::Counter,
    resets: metrics::Counter,
    version: metrics::Gauge,
}

impl Durable {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        me: HubId,
        directory: HubDirectory,
        live_tx: tokio::sync::watch::Sender<Vec<HubId>>,
        commands: mpsc::UnboundedSender<StoreCommand>,
        seed: u64,
        room_ttl_micros: u64,
        max_rooms: usize,
    ) -> Self {
        // The recorder must exist before handles are made, or they record nowhere.
        let _ = crate::telemetry::prometheus();
        let hub = me.0.to_string();
        let metrics = DurableMetrics {
            owned: metrics::gauge!("linkcast_hub_rooms_owned", "hub" => hub.clone()),
            fenced: metrics::counter!("linkcast_hub_publishes_fenced_total", "hub" => hub.clone()),
            moves: metrics::counter!("linkcast_hub_rooms_released_total", "hub" => hub.clone()),
            resets: metrics::counter!("linkcast_hub_store_resets_total", "hub" => hub.clone()),
            version: metrics::gauge!("linkcast_hub_owner_map_version", "hub" => hub),
        };
        live_tx.send_replace(Vec::new());
        Durable { me, directory, view: OwnerView::new(), live_tx, rooms: HashMap::new(), served: HashSet::new(), commands, epochs: seed, in_flight_bytes: 0,
            max_rooms,
            touch_every_micros: (room_ttl_micros / 4).max(1_000_000),
            next_touch_micros: 0,
            metrics,
        }
    }

    /// True when this hub owns `room` in its current view.
    fn is_mine(&self, room: &str) -> bool {
        self.view.owner(&self.directory, room) == Some(self.me)
    }

    /// True when `room` is held and can be served from the table now.
    pub(crate) fn is_owned(&self, room: &str) -> bool {
        matches!(self.rooms.get(room), Some(Ownership::Owned { .. }))
    }

    /// The owner map frame for Links.
    pub(crate) fn owner_map(&self) -> Frame {
        FrameBuilder::new("").build(&Body::OwnerMap { version: self.view.version(), hubs: self.live_hubs() })
    }

    /// The live hubs by id: the view's, or every configured hub before the first change.
    fn live_hubs(&self) -> Vec<u32> {
        let live = if self.view.live().is_empty() { self.directory.hubs() } else { self.view.live() };
        live.iter().map(|h| h.0).collect()
    }

    fn next_epoch(&mut self) -> u64 {
        linkcast_core::room_table::next_epoch(&mut self.epochs)
    }

    /// Rooms owned right now (for TTL refreshes), with members or not.
    pub(crate) fn owned_rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.iter().filter(|(_, o)| matches!(o, Ownership::Owned { .. })).map(|(r, _)| r.as_str())
    }
}

impl HubTask {
    /// An HTTP input with a store: publishes go to the store, reads wait for their room.
    pub(super) fn durable_api(&mut self, event: HubInput) {
        let Some(durable) = &self.durable else { return self.handle_owned(event) };
        let room = match &event {
            // The rooms this hub holds, as they are.
            HubInput::Rooms { .. } | HubInput::TopRooms { .. } => return self.handle_owned(event),
            // Not a room's: bans live in the hub task, apart from room ownership.
            HubInput::Moderation(_) => return self.handle_owned(event),
            HubInput::Publish { room, .. } | HubInput::RoomInfo { room, .. } | HubInput::History { room, .. } | HubInput::Presence { room, .. } => room,
        };
        if !durable.is_owned(room) {
            let room = room.clone();
            return self.defer(&room, Deferred::Api(event));
        }
        match event {
            HubInput::Publish { room, sender, flags, data, key, reply } => {
                self.send_publish(&room, sender, flags, data, key, PublishReply::Http(reply));
            }
            other => self.handle_owned(other),
        }
    }

    /// A Link frame (already checked) with a store: joins wait for their room, publishes go to
    /// the store, interest and the rest go to the table at once.
    pub(super) fn durable_link_frame(&mut self, now: u64, link: LinkId, generation: u64, frame: Frame) {
        let Some(durable) = &self.durable else { return self.table.handle_link_frame(now, link, &frame) };
        match frame.kind() {
            Kind::Join | Kind::Publish if !durable.is_owned(frame.room()) => {
                let room = frame.room().to_owned();
                self.defer(&room, Deferred::Link { link, generation, frame });
            }
            Kind::Publish => {
                let ArchivedBody::Publish { request, key, data } = frame.body() else { return };
                let reply = PublishReply::Link { link, generation, request: request.to_native(), room: frame.room().to_owned() };
                let data = frame.as_bytes().slice_ref(data.as_slice());
                let key = key.as_str().to_owned();
                self.send_publish(frame.room(), frame.sender().to_owned(), frame.flags(), data, key, reply);
            }
            _ => self.table.handle_link_frame(now, link, &frame),
        }
    }

    /// Queues `op` until `room` is acquired, starting the acquisition; refuses it when this hub
    /// is not the room's owner in its view, or too much already waits.
    fn defer(&mut self, room: &str, op: Deferred) {
        let Some(durable) = &mut self.durable else { return };
        if !durable.is_mine(room) {
            return self.refuse(op, PublishError::Moving);
        }
        let full = durable.rooms.len() >= durable.max_rooms;
        match durable.rooms.get_mut(room) {
            Some(Ownership::Acquiring { deferred, .. }) if deferred.len() < MAX_DEFERRED => {
                deferred.push(op);
                return;
            }
            // Full, or owned after all (callers check first): never queue behind nothing.
            Some(Ownership::Acquiring { .. } | Ownership::Owned { .. }) => return self.refuse(op, PublishError::Moving),
            None if full => return self.refuse(op, PublishError::TooManyRooms),
            None => {}
        }
        let first = !durable.served.contains(room);
        let candidate_epoch = durable.next_epoch();
        let live = durable.live_hubs();
        durable.rooms.insert(room.to_owned(), Ownership::Acquiring { deferred: vec![op], first });
        if durable.commands.send(StoreCommand::Acquire { room: room.to_owned(), live, candidate_epoch }).is_err() {
            tracing::error!("room store worker is gone");
        }
    }

    /// Sends a publish of an owned room to the store (after the table's own checks).
    fn send_publish(&mut self, room: &str, sender: String, flags: u16, data: Bytes, key: String, reply: PublishReply) {
        let now = crate::clock::now_micros();
        if let Err(error) = self.table.check_publish(now, room, &sender, &data) {
            return self.answer_publish(reply, Err(error));
        }
        let Some(durable) = &mut self.durable else { return };
        let Some(Ownership::Owned { fence, acked_seq }) = durable.rooms.get(room) else {
            return self.answer_publish(reply, Err(PublishError::Moving));
        };
        if durable.in_flight_bytes + data.len() > MAX_IN_FLIGHT_BYTES {
            return self.answer_publish(reply, Err(PublishError::StoreUnavailable));
        }
        let (fence, acked_seq) = (*fence, *acked_seq);
        let Some(cached) = self.table.room(room) else { return };
        let cmd = PublishCmd {
            room: room.to_owned(),
            fence,
            expected_epoch: Some(cached.epoch()),
            acked_seq,
            candidate_epoch: durable.next_epoch(),
            sender,
            key,
            flags,
            ts_micros: cached.next_ts(now),
            data,
        };
        durable.in_flight_bytes += cmd.data.len();
        if let Err(error) = durable.commands.send(StoreCommand::Publish { cmd, reply }) {
            let StoreCommand::Publish { cmd, reply } = error.0 else { return };
            durable.in_flight_bytes -= cmd.data.len();
            self.answer_publish(reply, Err(PublishError::StoreUnavailable));
        }
    }

    /// Answers a publish: HTTP through its oneshot, a Link's with `PublishAck` / `Error` (if the
    /// same connection of that Link is still there).
    fn answer_publish(&mut self, reply: PublishReply, result: Result<PublishAck, PublishError>) {
        match reply {
            PublishReply::Http(reply) => {
                let _ = reply.send(result);
            }
            PublishReply::Link { link, generation, request, room } => {
                if self.links.get(&link).is_none_or(|c| c.generation != generation) {
                    return;
                }
                match result {
                    Ok(ack) => {
                        let frame = FrameBuilder::new(&room).seq(ack.seq).build(&Body::PublishAck { request, epoch: ack.epoch });
                        self.table.send_to(link, frame);
                    }
                    Err(error) => {
                        let (code, reason) = error.status();
                        let retry = if code == 503 { MOVING_RETRY_MS } else { 0 };
                        self.table.refuse_request(link, &room, request, code, reason, retry);
                    }
                }
            }
        }
    }

    /// Refuses a waiting operation with `error`.
    fn refuse(&mut self, op: Deferred, error: PublishError) {
        match op {
            Deferred::Api(HubInput::Publish { reply, .. }) => {
                let _ = reply.send(Err(error));
            }
            Deferred::Api(HubInput::RoomInfo { reply, .. }) => {
                let _ = reply.send(Err(error));
            }
            Deferred::Api(HubInput::History { reply, .. }) => {
                let _ = reply.send(Err(error));
            }
            // Never deferred (not a room's input); dropping it answers "hub shutting down".
            Deferred::Api(HubInput::Moderation(_)) => {}
            Deferred::Api(HubInput::Presence { reply, .. }) => {
                let _ = reply.send(Err(error));
            }
            Deferred::Api(HubInput::Rooms { reply, .. }) => {
                let _ = reply.send(Vec::new());
            }
            Deferred::Api(HubInput::TopRooms { reply, .. }) => {
                let _ = reply.send(Vec::new());
            }
            Deferred::Link { link, generation, frame } => {
                if self.links.get(&link).is_none_or(|c| c.generation != generation) {
                    return;
                }
                let request = match frame.body() {
                    ArchivedBody::Join { request, .. } | ArchivedBody::Publish { request, .. } => request.to_native(),
                    _ => return,
                };
                let (code, reason) = error.status();
                self.table.refuse_request(link, frame.room(), request, code, reason, MOVING_RETRY_MS);
            }
        }
    }

    /// Replays a waiting operation now that its room is settled.
    fn replay(&mut self, op: Deferred) {
        match op {
            Deferred::Api(event) => self.durable_api(event),
            Deferred::Link { link, generation, frame } => {
                if self.links.get(&link).is_some_and(|c| c.generation == generation) {
                    self.durable_link_frame(crate::clock::now_micros(), link, generation, frame);
                }
            }
        }
    }

    /// An answer of the store tasks.
    pub(super) fn handle_store(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Acquired { room, result } => self.acquired(&room, result),
            StoreEvent::Published(results) => {
                for (cmd, reply, outcome) in results {
                    self.published(cmd, reply, outcome);
                }
            }
            StoreEvent::View { version, live } => self.view_changed(version, live),
        }
    }

    fn acquired(&mut self, room: &str, result: Result<Acquired, String>) {
        let now = crate::clock::now_micros();
        let Some(durable) = &mut self.durable else { return };
        let Some(Ownership::Acquiring { deferred, first }) = durable.rooms.remove(room) else {
            // Stepped down meanwhile: give a lease just taken back.
            if let Ok(Acquired::Owned { fence, .. }) = result {
                let _ = durable.commands.send(StoreCommand::Release { rooms: vec![(room.to_owned(), fence)] });
            }
            return;
        };
        let outcome = match result {
            Ok(Acquired::Owned { fence, .. }) if !durable.is_mine(room) => {
                let _ = durable.commands.send(StoreCommand::Release { rooms: vec![(room.to_owned(), fence)] });
                Err(PublishError::Moving)
            }
            Ok(Acquired::Owned { fence, epoch, last_seq, created, history }) => {
                let frames: Vec<Frame> =
                    history.iter().map(|m| Frame::message(room, m.seq, m.ts_micros, &m.sender, m.flags, &m.data)).collect();
                match self.table.load_stored(now, room, epoch, last_seq, frames, first) {
                    Ok(()) => {
                        tracing::debug!(room, fence, epoch, last_seq, created, first, "room acquired");
                        durable.served.insert(room.to_owned());
                        durable.rooms.insert(room.to_owned(), Ownership::Owned { fence, acked_seq: last_seq });
                        Ok(())
                    }
                    Err(error) => {
                        let _ = durable.commands.send(StoreCommand::Release { rooms: vec![(room.to_owned(), fence)] });
                        Err(error)
                    }
                }
            }
            Ok(Acquired::HeldBy { hub }) => {
                tracing::info!(room, holder = hub, "room is still held by another live hub; refusing until it lets go");
                Err(PublishError::Moving)
            }
            Err(error) => {
                tracing::warn!(room, %error, "could not acquire room from the store");
                Err(PublishError::StoreUnavailable)
            }
        };
        durable.metrics.owned.set(durable.owned_rooms().count() as f64);
        match outcome {
            Ok(()) => deferred.into_iter().for_each(|op| self.replay(op)),
            Err(error) => deferred.into_iter().for_each(|op| self.refuse(op, error.clone())),
        }
    }

    fn published(&mut self, cmd: PublishCmd, reply: PublishReply, outcome: Option<PublishOutcome>) {
        let now = crate::clock::now_micros();
        let Some(durable) = &mut self.durable else { return };
        durable.in_flight_bytes -= cmd.data.len().min(durable.in_flight_bytes);
        let owned = match durable.rooms.get_mut(&cmd.room) {
            Some(Ownership::Owned { fence, acked_seq }) if *fence == cmd.fence => Some((fence, acked_seq)),
            _ => None,
        };
        let (seq, epoch, duplicate) = match outcome {
            None => {
                // Unknown outcome: the table's copy is reloaded (and Links caught up on what the
                // store kept) before it serves again.
                if owned.is_some() {
                    durable.rooms.remove(&cmd.room);
                }
                return self.answer_publish(reply, Err(PublishError::StoreUnavailable));
            }
            Some(PublishOutcome::Fenced { holder }) => {
                durable.metrics.fenced.increment(1);
                if owned.is_some() {
                    // Another hub took the lease (this one was paused, or hubs disagreed for a
                    // moment). Stop sequencing; the interest Links announced stays, so if the
                    // room comes back here it is reloaded and they are caught up.
                    tracing::warn!(room = %cmd.room, ?holder, "the store fenced this hub's publish: another hub holds the room; stepping down");
                    durable.rooms.remove(&cmd.room);
                }
                return self.answer_publish(reply, Err(PublishError::Moving));
            }
            Some(PublishOutcome::Duplicate { seq, epoch }) => (seq, epoch, true),
            Some(PublishOutcome::Sequenced { seq, epoch }) => (seq, epoch, false),
            Some(PublishOutcome::Reset { seq, epoch, fence }) => {
                durable.metrics.resets.increment(1);
                tracing::warn!(room = %cmd.room, epoch, "the store lost this room's history (restarted or rolled back): new epoch, members are reset");
                if let Some((held, _)) = owned {
                    *held = fence;
                }
                (seq, epoch, false)
            }
        };
        if !duplicate {
            if let Some(Ownership::Owned { acked_seq, .. }) = durable.rooms.get_mut(&cmd.room) {
                *acked_seq = seq;
                if let Err(error) = self.table.apply_stored(now, &cmd.room, epoch, seq, cmd.ts_micros, &cmd.sender, cmd.flags, &cmd.data) {
                    tracing::error!(room = %cmd.room, %error, "could not apply a stored publish to the table");
                }
            }
            // Not owned anymore: the message is in the store; the room's next owner replays it.
        }
        self.answer_publish(reply, Ok(PublishAck { seq, epoch, duplicate }));
    }

    fn view_changed(&mut self, version: u64, live: Vec<HubId>) {
        let Some(durable) = &mut self.durable else { return };
        if !durable.view.accept(version, live.iter().map(|h| h.0)) {
            return;
        }
        durable.live_tx.send_replace(durable.view.live().to_vec());
        durable.metrics.version.set(version as f64);
        let map = durable.owner_map();
        let lost: Vec<String> = durable.rooms.keys().filter(|room| !durable.is_mine(room)).cloned().collect();
        let mut releases = Vec::new();
        let mut refused = Vec::new();
        for room in lost {
            match durable.rooms.remove(&room) {
                Some(Ownership::Owned { fence, .. }) => releases.push((room.clone(), fence)),
                Some(Ownership::Acquiring { deferred, .. }) => refused.extend(deferred),
                _ => {}
            }
            self.table.evict(&room);
            durable.served.remove(&room);
        }
        durable.metrics.moves.increment(releases.len() as u64);
        durable.metrics.owned.set(durable.owned_rooms().count() as f64);
        if !releases.is_empty() {
            tracing::info!(rooms = releases.len(), version, "stepping down from rooms another live hub owns now");
            let _ = durable.commands.send(StoreCommand::Release { rooms: releases });
        }
        for op in refused {
            self.refuse(op, PublishError::Moving);
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.table.send_to(link, map.clone());
        }
    }

    /// After the table dropped idle rooms: forget owning them too (the lease stays with this
    /// hub and is taken again on the next use), and refresh the store TTL of the rest.
    pub(super) fn durable_timeout(&mut self, now: u64) {
        let Some(durable) = &mut self.durable else { return };
        let table = &self.table;
        durable.rooms.retain(|room, o| !matches!(o, Ownership::Owned { .. }) || table.room(room).is_some());
        durable.served.retain(|room| table.room(room).is_some());
        durable.metrics.owned.set(durable.owned_rooms().count() as f64);
        if now < durable.next_touch_micros {
            return;
        }
        durable.next_touch_micros = now + durable.touch_every_micros;
        let rooms: Vec<String> = durable.owned_rooms().map(str::to_owned).collect();
        for chunk in rooms.chunks(4096) {
            let _ = durable.commands.send(StoreCommand::Touch { rooms: chunk.to_vec() });
        }
    }
}
