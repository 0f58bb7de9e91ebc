//! The world: hub, Links, shards and members, driven by one discrete-event loop over virtual time.
//!
//! This is the simulator's engine. It owns every piece of model state and drives the real
//! linkcast core with it:
//!
//! - **hub**: one real [`Room`] per room (seq, bounded history, interest set, join answers) and
//!   the real [`BoundedLoad`]`<`[`HashRing`]`>` placement that answers locate;
//! - **Links**: liveness, connection cap, admission control and shards (`link.rs`);
//! - **groups**: one real `ShardRoom` ring per (Link, shard, room) (`group.rs`);
//! - **members**: compact per-member records (`member.rs`).
//!
//! Data flow of a message: `Op::Publish` → `Room::publish` (seq, frame, interested Links) → one
//! `FrameArrive` per Link (hub→Link latency, FIFO per Link) → pushed into the ring of every group
//! of the room on that Link → the shard worker reads it and delivers it to all the group's active
//! members as one job lasting `members / shard_capacity` → `JobDone` commits the deliveries and
//! records their latencies in aggregate.
//!
//! Data flow of a member: `Op::Join` → locate (group of the room, then the rest of the ring) →
//! first Link that is up and below its connection cap → admission slot (refused and backed off if
//! the wait is too long) → `Connected` → the Link's core `LinkInterest` counts the member and
//! its announcements reach `Room::handle_interest` (per-Link member count) at once, then
//! `Room::join(since)` → replay / gap accounted → joins a group. `Op::LinkDown` disconnects every
//! member of the Link at once; each notices after a jittered timeout, backs off, locates again
//! (the dead Link is out of the placement) and re-joins with `since = last_seq`.
//!
//! The loop is single-threaded; events are ordered by `(time, scheduling order)` and every random
//! draw comes from the seeded [`SimRng`], so a run is a pure function of (config, workload).
//! [`World::finish`] checks completeness and conservation for every member.

use linkcast_core::interest::Announcement;
use linkcast_core::placement::{BoundedLoad, HashRing, LinkId, Placement};
use linkcast_core::room::Room;

use crate::config::{SimConfig, LATENCY_SPREAD_BUCKETS};
use crate::events::{SimEvent, EventQueue};
use crate::group::{Next, Pushed, ShardGroup};
use crate::input::{Input, Op, Workload};
use crate::link::{Job, Link};
use crate::member::{Member, MemberState, NO_ROOM};
use crate::metrics::{Counters, Latency, Series};
use crate::rng::SimRng;

/// "No group on this shard" in [`LinkRoom::groups`].
const NO_GROUP: u32 = u32::MAX;
/// Violations kept verbatim in the report (all are counted).
const MAX_VIOLATION_SAMPLES: usize = 20;

/// A room's presence on one Link (its member count is in the Link's `interest`).
#[derive(Clone, Debug)]
struct LinkRoom {
    link: u32,
    /// Group slot per shard, or [`NO_GROUP`].
    groups: Vec<u32>,
}

/// Hub-side state of one room around the real core `Room`.
#[derive(Debug)]
struct RoomState {
    room: Room,
    /// Publish time of each seq (`pub_times[seq - 1]`), for live-delivery latency.
    pub_times: Vec<u64>,
    /// Members in the room in any state.
    present: u64,
    /// Links holding members, sorted by id.
    links: Vec<LinkRoom>,
    /// Locate answer cache: valid while `cand_version` equals the world's placement version.
    cand_version: u64,
    candidates: Vec<u32>,
    group_len: usize,
}

struct GroupSlot {
    gen: u32,
    group: Option<ShardGroup>,
    link: u32,
    shard: u32,
}

/// One Link failure and the reconnect storm it caused.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Storm {
    /// The Link that died.
    pub link: u32,
    /// When (virtual µs).
    pub start_us: u64,
    /// Members it disconnected.
    pub disconnected: u64,
    /// Of which re-joined.
    pub rejoined: u64,
    /// Last re-join of one of them (virtual µs).
    pub end_us: Option<u64>,
}

/// What one Link addition or removal did to the rooms already placed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlacementChange {
    /// `link_up` or `link_down`.
    pub event: &'static str,
    /// The Link.
    pub link: u32,
    /// Virtual time (µs).
    pub t_us: u64,
    /// Rooms placed (with a remembered group) just before.
    pub rooms_placed: u64,
    /// Of which the pure ring (`HashRing::locate`, k Links) would now place differently.
    pub moved_pure_ring: u64,
    /// Of which the hub's bounded-load locate now answers differently (sticky: only rooms whose
    /// group contained a removed Link).
    pub moved_bounded_load: u64,
}

/// Per-member outcome totals computed by [`World::finish`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Completeness {
    /// Members that ever joined.
    pub members_seen: u64,
    /// Members that joined at least once successfully.
    pub members_joined: u64,
    /// Members that got every seq they expected exactly once.
    pub members_complete: u64,
    /// Members with at least one counted, explained gap (ring lag, history window, unreachable).
    pub members_with_counted_gaps: u64,
    /// Members never admitted anywhere (expected nothing).
    pub members_never_joined: u64,
    /// Members disconnected at the end of the run (gave up or still backing off).
    pub members_disconnected_at_end: u64,
    /// Member-seqs expected (each member: every seq after its first join until it left / the end).
    pub expected: u64,
    /// Member-seqs delivered (live + replay), summed member side.
    pub delivered: u64,
    /// Of which live (event side).
    pub delivered_live: u64,
    /// Of which replayed after a re-join (event side).
    pub delivered_replay: u64,
    /// Member-seqs lost to ring lag (counted gap markers).
    pub lost_ring_lag: u64,
    /// Member-seqs lost because `since` had left the history window.
    pub lost_history: u64,
    /// Member-seqs missed by members still disconnected at the end.
    pub lost_unreachable: u64,
    /// Invariant violations (must be 0).
    pub violations: u64,
    /// `delivered + counted gaps == expected` and event-side totals equal member-side totals.
    pub conservation_holds: bool,
}

/// The simulated cluster.
pub struct World {
    cfg: SimConfig,
    now: u64,
    queue: EventQueue,
    net_rng: SimRng,
    backoff_rng: SimRng,
    placement: BoundedLoad<HashRing>,
    placement_version: u64,
    links: Vec<Link>,
    rooms: Vec<RoomState>,
    members: Vec<Member>,
    groups: Vec<GroupSlot>,
    free_groups: Vec<u32>,
    payload: Vec<u8>,
    /// Announcements on their way from a Link's interest to the hub's rooms (reused).
    announcements: Vec<Announcement<u32>>,
    /// Counters (public to the report).
    pub counters: Counters,
    /// Latency of live deliveries.
    pub live_latency: Latency,
    /// Latency of replayed deliveries (publish → delivery after re-join).
    pub replay_latency: Latency,
    /// Deliveries per Link per virtual second.
    pub per_link: Vec<Series>,
    /// Re-joins per virtual second.
    pub reconnect_series: Series,
    /// Failure disconnects per virtual second.
    pub disconnect_series: Series,
    /// One entry per Link failure.
    pub storms: Vec<Storm>,
    /// One entry per Link added or removed.
    pub placement_changes: Vec<PlacementChange>,
    violations: u64,
    violation_samples: Vec<String>,
    inputs_done: usize,
}

impl World {
    /// A cluster with `cfg.links` Links up, and the rooms and members of `workload`.
    pub fn new(cfg: SimConfig, workload: &Workload) -> Self {
        let root = SimRng::new(cfg.seed);
        let links_needed = (workload.max_link_id().map_or(0, |l| l + 1)).max(cfg.links) as usize;
        let mut links: Vec<Link> = (0..links_needed).map(|_| Link::new(cfg.shards)).collect();
        let mut placement = BoundedLoad::new(HashRing::new(linkcast_core::placement::DEFAULT_VNODES), cfg.load_factor);
        for (id, link) in links.iter_mut().enumerate().take(cfg.links as usize) {
            link.up = true;
            placement.add_link(LinkId(id as u32));
        }
        let rooms = workload
            .rooms
            .iter()
            .enumerate()
            .map(|(index, name)| RoomState {
                // One epoch per room for the whole run: the simulated hub never loses a room.
                room: Room::new(name, cfg.room_limits, index as u64 + 1),
                pub_times: Vec::new(),
                present: 0,
                links: Vec::new(),
                cand_version: u64::MAX,
                candidates: Vec::new(),
                group_len: 0,
            })
            .collect();
        World {
            now: 0,
            queue: EventQueue::new(),
            net_rng: root.fork(1),
            backoff_rng: root.fork(2),
            placement,
            placement_version: 0,
            per_link: vec![Series::default(); links_needed],
            links,
            rooms,
            members: vec![Member::default(); workload.members as usize],
            groups: Vec::new(),
            free_groups: Vec::new(),
            payload: vec![0; 1024],
            announcements: Vec::new(),
            counters: Counters::default(),
            live_latency: Latency::default(),
            replay_latency: Latency::default(),
            reconnect_series: Series::default(),
            disconnect_series: Series::default(),
            storms: Vec::new(),
            placement_changes: Vec::new(),
            violations: 0,
            violation_samples: Vec::new(),
            inputs_done: 0,
            cfg,
        }
    }

    /// Runs `inputs` to completion (until no input and no event is left). `progress` is called
    /// now and then with the number of inputs consumed.
    pub fn run(&mut self, inputs: &[Input], progress: &mut dyn FnMut(usize)) {
        let mut steps: u64 = 0;
        loop {
            let next_input = inputs.get(self.inputs_done).map(|i| i.t_us);
            let next_event = self.queue.peek_time();
            let take_input = match (next_input, next_event) {
                (Some(ti), Some(te)) => ti <= te,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_input {
                let input = inputs[self.inputs_done];
                self.inputs_done += 1;
                self.advance(input.t_us);
                self.handle_input(input.op);
            } else if let Some((t, event)) = self.queue.pop() {
                self.advance(t);
                self.handle_event(event);
            }
            steps += 1;
            if steps.is_multiple_of(65_536) {
                progress(self.inputs_done);
            }
        }
        progress(self.inputs_done);
    }

    /// Virtual time now (µs).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The config in use.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Events scheduled and the largest queue length.
    pub fn event_stats(&self) -> (u64, usize) {
        (self.queue.scheduled(), self.queue.peak())
    }

    /// Per Link: (peak connections, connections at the end, deliveries, up at the end).
    pub fn link_stats(&self) -> Vec<(u64, u64, u64, bool)> {
        self.links.iter().map(|l| (l.peak_conns, l.conns, l.deliveries, l.up)).collect()
    }

    /// Violations counted and the first few, verbatim.
    pub fn violations(&self) -> (u64, &[String]) {
        (self.violations, &self.violation_samples)
    }

    /// Last seq of each room.
    pub fn room_last_seqs(&self) -> Vec<u64> {
        self.rooms.iter().map(|r| r.room.last_seq()).collect()
    }

    /// Per-member (delivered, lost, expected) after [`World::finish`], for tests.
    pub fn member_outcome(&self, member: u32) -> (u32, u32, u32) {
        let m = &self.members[member as usize];
        (m.delivered, m.lost, m.expected)
    }

    fn advance(&mut self, t: u64) {
        debug_assert!(t >= self.now, "time never goes back");
        self.now = self.now.max(t);
    }

    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.violation_samples.len() < MAX_VIOLATION_SAMPLES {
            self.violation_samples.push(format!("t={}us: {what}", self.now));
        }
    }

    fn handle_input(&mut self, op: Op) {
        match op {
            Op::Join { member, room } => self.join(member, room),
            Op::Leave { member } => self.leave(member),
            Op::Publish { room, bytes } => self.publish(room, bytes as usize),
            Op::LinkDown { link } => self.link_down(link),
            Op::LinkUp { link } => self.link_up(link),
        }
    }

    fn handle_event(&mut self, event: SimEvent) {
        match event {
            SimEvent::FrameArrive { link, link_epoch, room, bytes, seq } => {
                self.frame_arrive(link, link_epoch, room, u64::from(bytes), seq)
            }
            SimEvent::JobDone { link, link_epoch, shard } => self.job_done(link, link_epoch, shard),
            SimEvent::Connected { member, member_epoch, link, link_epoch } => {
                self.connected(member, member_epoch, link, link_epoch)
            }
            SimEvent::Attempt { member, member_epoch } => {
                if self.members[member as usize].epoch == member_epoch {
                    self.attempt(member);
                }
            }
        }
    }

    // ---- hub: publish ---------------------------------------------------------------------

    fn publish(&mut self, room: u32, bytes: usize) {
        if self.payload.len() < bytes {
            self.payload.resize(bytes, 0);
        }
        let now = self.now;
        let state = &mut self.rooms[room as usize];
        let connected = state.room.members();
        let (seq, frame_len, links) = match state.room.publish(now, "sim", 0, &self.payload[..bytes]) {
            Ok(published) => (published.seq, published.frame.len() as u64, published.links.to_vec()),
            Err(_) => {
                self.counters.publishes_rejected += 1;
                return;
            }
        };
        state.pub_times.push(now);
        let recorded = state.pub_times.len() as u64;
        if recorded != seq {
            self.violation(format!("room {room}: seq {seq} does not follow {}", recorded - 1));
        }
        self.counters.publishes += 1;
        self.counters.naive_sends += connected;
        self.counters.naive_bytes += connected * frame_len;
        for LinkId(link) in links {
            self.counters.hub_sends += 1;
            self.counters.hub_bytes += frame_len;
            let latency = self.net_rng.jittered(self.cfg.hub_link_latency_us, self.cfg.hub_link_jitter_us);
            let l = &mut self.links[link as usize];
            // One ordered stream per hub→Link: a frame never overtakes the previous one.
            let arrival = (now + latency).max(l.last_arrival_us);
            l.last_arrival_us = arrival;
            let event = SimEvent::FrameArrive { link, link_epoch: l.epoch, room, bytes: frame_len as u32, seq };
            self.queue.schedule(arrival, event);
        }
    }

    // ---- Link: frames in, shard workers -------------------------------------------------------

    fn frame_arrive(&mut self, link: u32, link_epoch: u32, room: u32, bytes: u64, seq: u64) {
        if self.links[link as usize].epoch != link_epoch {
            self.counters.frames_to_dead_links += 1;
            return;
        }
        let Some(at) = self.link_room_index(room, link) else {
            // The Link's last member of the room left while the frame was in flight.
            return;
        };
        let shard_groups = self.rooms[room as usize].links[at].groups.clone();
        for (shard, slot) in shard_groups.into_iter().enumerate() {
            if slot == NO_GROUP {
                continue;
            }
            let gen = self.groups[slot as usize].gen;
            let Some(group) = self.groups[slot as usize].group.as_mut() else { continue };
            match group.push(seq, bytes) {
                Ok(Pushed::Skipped) => continue,
                Ok(pushed) => {
                    let ring_bytes = group.ring_bytes() as u64;
                    if pushed == Pushed::Woke {
                        group.scheduled = true;
                    }
                    self.counters.peak_ring_bytes = self.counters.peak_ring_bytes.max(ring_bytes);
                    let s = &mut self.links[link as usize].shards[shard];
                    s.backlog_bytes += bytes;
                    self.counters.peak_shard_backlog_bytes = self.counters.peak_shard_backlog_bytes.max(s.backlog_bytes);
                    if pushed == Pushed::Woke {
                        s.run_queue.push_back((slot, gen));
                        self.kick(link, shard as u32);
                    }
                }
                Err(expected) => {
                    self.violation(format!("link {link} shard {shard}: got seq {seq}, expected {expected}"));
                }
            }
        }
    }

    /// Starts the shard's next job if it is idle.
    fn kick(&mut self, link: u32, shard: u32) {
        let capacity = self.cfg.shard_capacity.max(1);
        loop {
            let s = &mut self.links[link as usize].shards[shard as usize];
            if s.job.is_some() {
                return;
            }
            let Some((slot, gen)) = s.run_queue.pop_front() else { return };
            let entry = &mut self.groups[slot as usize];
            if entry.gen != gen {
                continue;
            }
            let Some(group) = entry.group.as_mut() else { continue };
            loop {
                let expected = group.expected_next();
                match group.poll_next() {
                    Next::Idle => {
                        group.scheduled = false;
                        break;
                    }
                    Next::Lost { member_seqs, bytes, .. } => {
                        self.counters.lag_events += 1;
                        self.counters.ring_lost += member_seqs;
                        let s = &mut self.links[link as usize].shards[shard as usize];
                        s.backlog_bytes = s.backlog_bytes.saturating_sub(bytes);
                    }
                    Next::Frame { seq, bytes } => {
                        let n = group.activate(seq);
                        let now = self.now;
                        let s = &mut self.links[link as usize].shards[shard as usize];
                        let start = now.max(s.busy_until_us);
                        let end = start + (n * 1_000_000).div_ceil(capacity);
                        s.busy_until_us = end;
                        s.job = Some(Job { group: slot, gen, seq, bytes, start_us: start, planned: n });
                        let link_epoch = self.links[link as usize].epoch;
                        self.queue.schedule(end, SimEvent::JobDone { link, link_epoch, shard });
                        if seq != expected {
                            self.violation(format!("link {link} shard {shard}: ring gave seq {seq}, expected {expected}"));
                        }
                        return;
                    }
                }
            }
        }
    }

    fn job_done(&mut self, link: u32, link_epoch: u32, shard: u32) {
        if self.links[link as usize].epoch != link_epoch {
            return;
        }
        let Some(job) = self.links[link as usize].shards[shard as usize].job.take() else { return };
        {
            let s = &mut self.links[link as usize].shards[shard as usize];
            s.backlog_bytes = s.backlog_bytes.saturating_sub(job.bytes);
        }
        let entry = &mut self.groups[job.group as usize];
        if entry.gen == job.gen {
            if let Some(group) = entry.group.as_mut() {
                let n = group.commit(job.seq);
                let room = group.room;
                // Back on the run queue; if nothing is pending the next read parks it.
                self.links[link as usize].shards[shard as usize].run_queue.push_back((job.group, job.gen));
                self.counters.live_deliveries += n;
                self.links[link as usize].deliveries += n;
                self.per_link[link as usize].add(self.now, n);
                let t_pub = self.rooms[room as usize].pub_times[(job.seq - 1) as usize];
                self.record_spread(job.start_us, t_pub, n, job.planned);
            }
        }
        self.kick(link, shard);
    }

    /// Records `n` deliveries of one job in [`LATENCY_SPREAD_BUCKETS`] buckets: delivery `i`
    /// happens at `start + (i + 1) / capacity`, plus a Link→client latency per bucket.
    fn record_spread(&mut self, start: u64, t_pub: u64, n: u64, planned: u64) {
        if n == 0 {
            return;
        }
        let capacity = self.cfg.shard_capacity.max(1);
        let buckets = LATENCY_SPREAD_BUCKETS.min(n);
        let planned = planned.max(n);
        for b in 0..buckets {
            let lo = b * n / buckets;
            let hi = (b + 1) * n / buckets;
            if hi == lo {
                continue;
            }
            let mid = (lo + hi) / 2;
            let at = start + ((mid + 1) * 1_000_000) / capacity;
            let client = self.net_rng.jittered(self.cfg.client_latency_us, self.cfg.client_jitter_us);
            self.live_latency.record_n(at.saturating_sub(t_pub) + client, hi - lo);
            if b + 1 == buckets {
                let last = start + (planned * 1_000_000).div_ceil(capacity);
                self.live_latency.note_max(last.saturating_sub(t_pub) + client);
            }
        }
    }

    // ---- members: join, connect, leave ------------------------------------------------------

    fn join(&mut self, member: u32, room: u32) {
        if self.members[member as usize].room != NO_ROOM {
            self.leave(member);
        }
        let m = &mut self.members[member as usize];
        m.room = room;
        m.epoch += 1;
        m.attempts = 0;
        m.has_position = false;
        m.storm = 0;
        m.state = MemberState::Backoff;
        self.rooms[room as usize].present += 1;
        self.attempt(member);
    }

    /// Locate + admission: picks a Link and reserves a connection slot, or backs off.
    fn attempt(&mut self, member: u32) {
        let room = self.members[member as usize].room;
        if room == NO_ROOM {
            return;
        }
        self.refresh_candidates(room);
        let state = &self.rooms[room as usize];
        let group_len = state.group_len.max(1);
        let preferred = (linkcast_core::placement::stable_hash(&member.to_le_bytes()) % group_len as u64) as usize;
        let order = (0..state.group_len)
            .map(|i| state.candidates[(preferred + i) % state.group_len])
            .chain(state.candidates[state.group_len..].iter().copied());
        // The client walks the locate answer best first: a Link that is down or full is skipped;
        // one whose admission queue is longer than the client will wait refuses it (503), and the
        // client tries the next. Refused everywhere (or nowhere to go): back off and retry.
        let now = self.now;
        let max_wait = self.cfg.admission_max_wait_us;
        let max_conns = self.cfg.link_max_conns;
        let mut chosen = None;
        let mut refusals = 0;
        for link in order {
            let l = &self.links[link as usize];
            if !l.up || l.conns >= max_conns {
                continue;
            }
            let slot = now.max(l.next_admit_us);
            if slot - now > max_wait {
                refusals += 1;
                continue;
            }
            chosen = Some((link, slot));
            break;
        }
        self.counters.admission_refusals += refusals;
        let Some((link, slot)) = chosen else {
            if refusals == 0 {
                self.counters.no_link_available += 1;
            }
            self.back_off(member);
            return;
        };
        let l = &mut self.links[link as usize];
        if let Some(spacing) = 1_000_000u64.checked_div(self.cfg.admission_rate) {
            l.next_admit_us = slot + spacing;
        }
        l.conns += 1;
        l.peak_conns = l.peak_conns.max(l.conns);
        let link_epoch = l.epoch;
        let handshake = self.net_rng.jittered(self.cfg.client_latency_us, self.cfg.client_jitter_us);
        let m = &mut self.members[member as usize];
        m.state = MemberState::Connecting;
        m.link = link;
        m.epoch += 1;
        let member_epoch = m.epoch;
        self.queue.schedule(slot + handshake, SimEvent::Connected { member, member_epoch, link, link_epoch });
    }

    fn back_off(&mut self, member: u32) {
        let m = &mut self.members[member as usize];
        m.attempts += 1;
        m.epoch += 1;
        if m.attempts >= self.cfg.max_attempts {
            m.state = MemberState::GaveUp;
            self.counters.gave_up += 1;
            return;
        }
        m.state = MemberState::Backoff;
        let ceiling = self.cfg.backoff_base_us.saturating_mul(1 << m.attempts.min(20)).min(self.cfg.backoff_cap_us);
        let member_epoch = m.epoch;
        let delay = self.backoff_rng.jittered(0, ceiling);
        self.queue.schedule(self.now + delay.max(1), SimEvent::Attempt { member, member_epoch });
    }

    fn refresh_candidates(&mut self, room: u32) {
        let version = self.placement_version;
        let state = &mut self.rooms[room as usize];
        if state.cand_version == version {
            return;
        }
        let name = state.room.name().to_owned();
        let group: Vec<u32> = self.placement.place(&name, self.cfg.group_size, 1).iter().map(|l| l.0).collect();
        let mut candidates = group.clone();
        self.placement.inner().for_each_candidate(&name, &mut |LinkId(link)| {
            if !group.contains(&link) {
                candidates.push(link);
            }
            std::ops::ControlFlow::Continue(())
        });
        state.group_len = group.len();
        state.candidates = candidates;
        state.cand_version = version;
    }

    fn connected(&mut self, member: u32, member_epoch: u32, link: u32, link_epoch: u32) {
        if self.members[member as usize].epoch != member_epoch {
            return;
        }
        if self.links[link as usize].epoch != link_epoch {
            // Unreachable in practice (link_down moves connecting members to backoff).
            self.back_off(member);
            return;
        }
        let now = self.now;
        let room = self.members[member as usize].room;
        let shard = (linkcast_core::placement::stable_hash(&member.to_le_bytes()).rotate_left(32)
            % self.links[link as usize].shards.len() as u64) as u32;
        // The Link tells the hub its new member count for the room (interest).
        let at = match self.link_room_index(room, link) {
            Some(at) => at,
            None => {
                let links = &mut self.rooms[room as usize].links;
                let at = links.partition_point(|lr| lr.link < link);
                let shards = self.links[link as usize].shards.len();
                links.insert(at, LinkRoom { link, groups: vec![NO_GROUP; shards] });
                at
            }
        };
        let due = self.links[link as usize].interest.handle_join(&room, shard as usize);
        self.announce(link, due);
        let state = &mut self.rooms[room as usize];
        let mut slot = state.links[at].groups[shard as usize];
        if slot == NO_GROUP {
            let group = ShardGroup::new(room, self.cfg.ring_limits, state.room.last_seq());
            slot = self.alloc_group(group, link, shard);
            self.rooms[room as usize].links[at].groups[shard as usize] = slot;
        }
        // The hub answers the join: replay after `since`, a gap, or (never here) a reset.
        let m = self.members[member as usize];
        let since = m.has_position.then_some(m.last_seq);
        let answer = self.rooms[room as usize].room.join(since, None);
        let room_last = self.rooms[room as usize].room.last_seq();
        if answer.reset {
            self.counters.resets += 1;
            self.violation(format!("member {member}: reset at {} with since {since:?}", answer.last_seq));
        }
        let frames = answer.frames;
        let last_seq = answer.last_seq;
        let (replay, lost) = match answer.gap {
            None => {
                let from = since.map_or(last_seq + 1, |s| s + 1);
                let ok = last_seq == room_last
                    && frames.len() as u64 == (last_seq + 1).saturating_sub(from)
                    && frames.iter().enumerate().all(|(i, f)| f.seq() == from + i as u64);
                if !ok {
                    self.violation(format!("member {member}: replay after {since:?} does not cover up to {last_seq}"));
                }
                (frames, 0)
            }
            Some(gap) => {
                let (first_lost, last_lost, resume_from) = (gap.first_lost, gap.last_lost, gap.resume_from);
                let ok = Some(first_lost - 1) == since
                    && resume_from == last_lost + 1
                    && frames.iter().enumerate().all(|(i, f)| f.seq() == resume_from + i as u64)
                    && resume_from + frames.len() as u64 == room_last + 1;
                if !ok {
                    self.violation(format!("member {member}: gap {first_lost}..={last_lost} inconsistent"));
                }
                (frames, last_lost + 1 - first_lost)
            }
        };
        // Replays are delivered by the member's shard, after whatever it is already doing.
        let capacity = self.cfg.shard_capacity.max(1);
        let client = self.net_rng.jittered(self.cfg.client_latency_us, self.cfg.client_jitter_us);
        let s = &mut self.links[link as usize].shards[shard as usize];
        let start = now.max(s.busy_until_us);
        s.busy_until_us = start + (replay.len() as u64 * 1_000_000).div_ceil(capacity);
        for (i, frame) in replay.iter().enumerate() {
            let at = start + ((i as u64 + 1) * 1_000_000) / capacity + client;
            self.replay_latency.record_n(at.saturating_sub(frame.ts_micros()), 1);
        }
        self.counters.replay_deliveries += replay.len() as u64;
        self.counters.history_lost += lost;
        let m = &mut self.members[member as usize];
        m.delivered += replay.len() as u32;
        m.lost += lost as u32;
        m.ever_joined = true;
        if !m.has_position {
            m.has_position = true;
            m.join_from = room_last + 1;
        }
        m.last_seq = room_last;
        m.live_from = room_last + 1;
        m.state = MemberState::Connected;
        m.group = slot;
        m.attempts = 0;
        m.epoch += 1;
        let live_from = m.live_from;
        let storm = std::mem::replace(&mut m.storm, 0);
        if let Some(group) = self.groups[slot as usize].group.as_mut() {
            group.join(live_from);
        }
        if storm > 0 {
            let s = &mut self.storms[usize::from(storm - 1)];
            s.rejoined += 1;
            s.end_us = Some(now);
            self.counters.reconnects += 1;
            self.counters.storm_end_us = Some(now);
            self.reconnect_series.add(now, 1);
        }
    }

    /// Ends a connected member's session: accounts it, leaves its group and updates interest.
    fn close_session(&mut self, member: u32) {
        let m = self.members[member as usize];
        debug_assert_eq!(m.state, MemberState::Connected);
        let (link, slot, room) = (m.link, m.group, m.room);
        let entry = &mut self.groups[slot as usize];
        let shard = entry.shard;
        let Some(group) = entry.group.as_mut() else {
            self.violation(format!("member {member}: its group {slot} is gone"));
            return;
        };
        let outcome = group.leave(m.live_from, m.last_seq);
        let empty = group.members() == 0;
        let m = &mut self.members[member as usize];
        m.delivered += outcome.delivered as u32;
        m.lost += outcome.lost as u32;
        m.last_seq = outcome.last_seq;
        if empty {
            self.free_group(slot);
        }
        let link_state = &mut self.links[link as usize];
        link_state.conns = link_state.conns.saturating_sub(1);
        if let Some(at) = self.link_room_index(room, link) {
            if empty {
                self.rooms[room as usize].links[at].groups[shard as usize] = NO_GROUP;
            }
            let due = self.links[link as usize].interest.handle_leave(&room, shard as usize);
            self.announce(link, due);
            if self.links[link as usize].interest.members(&room) == 0 {
                self.rooms[room as usize].links.remove(at);
            }
        }
    }

    fn leave(&mut self, member: u32) {
        let m = self.members[member as usize];
        if m.room == NO_ROOM {
            return;
        }
        match m.state {
            MemberState::Connected => self.close_session(member),
            MemberState::Connecting => {
                let l = &mut self.links[m.link as usize];
                l.conns = l.conns.saturating_sub(1);
            }
            MemberState::Absent | MemberState::Backoff | MemberState::GaveUp => {}
        }
        let m = &mut self.members[member as usize];
        if m.has_position {
            m.expected += (m.last_seq + 1).saturating_sub(m.join_from) as u32;
        }
        let room = m.room;
        m.room = NO_ROOM;
        m.state = MemberState::Absent;
        m.epoch += 1;
        m.has_position = false;
        m.storm = 0;
        let state = &mut self.rooms[room as usize];
        state.present -= 1;
        if state.present == 0 {
            let name = state.room.name().to_owned();
            state.cand_version = u64::MAX;
            let _ = self.placement.release(&name);
        }
    }

    // ---- Links: failure and arrival -----------------------------------------------------------

    fn link_down(&mut self, link: u32) {
        if !self.links.get(link as usize).is_some_and(|l| l.up) {
            return;
        }
        let now = self.now;
        let before = self.placed_groups();
        let _ = self.placement.remove_link(LinkId(link));
        self.placement_version += 1;
        self.note_placement_change("link_down", link, before);
        self.storms.push(Storm { link, start_us: now, disconnected: 0, rejoined: 0, end_us: None });
        let storm = self.storms.len().min(usize::from(u16::MAX)) as u16;
        // Every member on the Link loses its connection now; frames queued for it are lost.
        for member in 0..self.members.len() as u32 {
            let m = self.members[member as usize];
            if m.room == NO_ROOM || m.link != link {
                continue;
            }
            let was_connected = match m.state {
                MemberState::Connected => {
                    self.close_session(member);
                    true
                }
                // Admitted but not yet joined: its handshake fails; it already counts as
                // disconnected if it was reconnecting.
                MemberState::Connecting => false,
                _ => continue,
            };
            let detect = self.backoff_rng.jittered(self.cfg.detect_us, self.cfg.detect_jitter_us);
            let backoff = self.backoff_rng.jittered(0, self.cfg.backoff_base_us);
            let m = &mut self.members[member as usize];
            m.state = MemberState::Backoff;
            m.epoch += 1;
            m.attempts = 0;
            if was_connected && m.has_position {
                m.storm = storm;
            }
            let member_epoch = m.epoch;
            if was_connected {
                self.storms[usize::from(storm - 1)].disconnected += 1;
                self.counters.disconnects += 1;
                self.disconnect_series.add(now, 1);
                self.counters.storm_start_us.get_or_insert(now);
            }
            self.queue.schedule(now + detect + backoff, SimEvent::Attempt { member, member_epoch });
        }
        // Every group of the Link emptied above, so the hub's interest in it is already gone;
        // check that the core agrees.
        let mut leaked = Vec::new();
        for (index, state) in self.rooms.iter_mut().enumerate() {
            if state.room.clear_interest_of(LinkId(link)) {
                leaked.push(index);
            }
            state.links.retain(|lr| lr.link != link);
        }
        for room in leaked {
            self.violation(format!("room {room} still had interest in dead link {link}"));
        }
        if !self.links[link as usize].interest.is_empty() {
            self.violation(format!("dead link {link} still counts members"));
        }
        self.links[link as usize].crash();
    }

    fn link_up(&mut self, link: u32) {
        let shards = self.cfg.shards;
        if self.links.len() <= link as usize {
            self.links.resize_with(link as usize + 1, || Link::new(shards));
            self.per_link.resize_with(link as usize + 1, Series::default);
        }
        if self.links[link as usize].up {
            return;
        }
        let l = &mut self.links[link as usize];
        l.up = true;
        l.epoch += 1;
        let before = self.placed_groups();
        let _ = self.placement.add_link(LinkId(link));
        self.placement_version += 1;
        self.note_placement_change("link_up", link, before);
    }

    /// For every placed room: (room, pure-ring group, bounded-load group).
    fn placed_groups(&self) -> Vec<(u32, Vec<LinkId>, Vec<LinkId>)> {
        let k = self.cfg.group_size;
        self.rooms
            .iter()
            .enumerate()
            .filter_map(|(index, state)| {
                let name = state.room.name();
                let group = self.placement.group(name)?.to_vec();
                Some((index as u32, self.placement.inner().locate(name, k), group))
            })
            .collect()
    }

    fn note_placement_change(&mut self, event: &'static str, link: u32, before: Vec<(u32, Vec<LinkId>, Vec<LinkId>)>) {
        let k = self.cfg.group_size;
        let mut change = PlacementChange {
            event,
            link,
            t_us: self.now,
            rooms_placed: before.len() as u64,
            moved_pure_ring: 0,
            moved_bounded_load: 0,
        };
        for (room, ring, group) in before {
            let name = self.rooms[room as usize].room.name();
            change.moved_pure_ring += u64::from(self.placement.inner().locate(name, k) != ring);
            change.moved_bounded_load += u64::from(self.placement.group(name) != Some(group.as_slice()));
        }
        self.placement_changes.push(change);
    }

    // ---- helpers ----------------------------------------------------------------------------

    /// The Link tells the hub its member count for rooms: the announcement `due` now, then every
    /// count change it owes (a simulated Link sends them at once, and the hub always takes them).
    fn announce(&mut self, link: u32, due: Option<Announcement<u32>>) {
        let mut owed = std::mem::take(&mut self.announcements);
        owed.extend(due);
        let interest = &mut self.links[link as usize].interest;
        interest.poll_announcements(&mut owed);
        for announcement in owed.drain(..) {
            let _ = self.rooms[announcement.room as usize].room.handle_interest(LinkId(link), announcement.members);
            interest.handle_sent(&announcement, true);
        }
        self.announcements = owed;
    }

    fn link_room_index(&self, room: u32, link: u32) -> Option<usize> {
        self.rooms[room as usize].links.binary_search_by_key(&link, |lr| lr.link).ok()
    }

    fn alloc_group(&mut self, group: ShardGroup, link: u32, shard: u32) -> u32 {
        if let Some(slot) = self.free_groups.pop() {
            let entry = &mut self.groups[slot as usize];
            entry.group = Some(group);
            entry.link = link;
            entry.shard = shard;
            slot
        } else {
            self.groups.push(GroupSlot { gen: 0, group: Some(group), link, shard });
            (self.groups.len() - 1) as u32
        }
    }

    fn free_group(&mut self, slot: u32) {
        let entry = &mut self.groups[slot as usize];
        let unread = entry.group.take().map_or(0, |g| g.unread_bytes());
        entry.gen = entry.gen.wrapping_add(1);
        let s = &mut self.links[entry.link as usize].shards[entry.shard as usize];
        s.backlog_bytes = s.backlog_bytes.saturating_sub(unread);
        self.free_groups.push(slot);
    }

    /// End of run: closes the books of every member and checks completeness and conservation.
    pub fn finish(&mut self) -> Completeness {
        let mut c = Completeness::default();
        let mut member_lost = 0u64;
        for member in 0..self.members.len() as u32 {
            let m = self.members[member as usize];
            if m.epoch == 0 {
                continue;
            }
            c.members_seen += 1;
            let mut delivered = u64::from(m.delivered);
            let mut lost = u64::from(m.lost);
            let mut expected = u64::from(m.expected);
            let mut unreachable = 0;
            let in_room = m.room != NO_ROOM;
            if in_room && m.state != MemberState::Connected {
                c.members_disconnected_at_end += 1;
            }
            if in_room && m.has_position {
                let room_last = self.rooms[m.room as usize].room.last_seq();
                if m.state == MemberState::Connected {
                    let mut last = m.last_seq;
                    match self.groups[m.group as usize].group.as_ref() {
                        Some(group) => {
                            let outcome = group.peek_session(m.live_from, m.last_seq);
                            delivered += outcome.delivered;
                            lost += outcome.lost;
                            last = outcome.last_seq;
                        }
                        None => self.violation(format!("member {member}: connected to a freed group")),
                    }
                    if last != room_last {
                        self.violation(format!("member {member}: connected but at seq {last} of {room_last}"));
                    }
                } else {
                    unreachable = room_last - m.last_seq;
                }
                expected += (room_last + 1).saturating_sub(m.join_from);
            }
            let m = &mut self.members[member as usize];
            m.delivered = delivered as u32;
            m.lost = (lost + unreachable) as u32;
            m.expected = expected as u32;
            if !m.ever_joined {
                c.members_never_joined += 1;
            } else {
                c.members_joined += 1;
            }
            if delivered + lost + unreachable != expected {
                self.violation(format!(
                    "member {member}: delivered {delivered} + lost {lost} + unreachable {unreachable} != expected {expected}"
                ));
            } else if m.ever_joined && lost + unreachable == 0 {
                c.members_complete += 1;
            } else if m.ever_joined {
                c.members_with_counted_gaps += 1;
            }
            c.expected += expected;
            c.delivered += delivered;
            member_lost += lost;
            c.lost_unreachable += unreachable;
        }
        c.delivered_live = self.counters.live_deliveries;
        c.delivered_replay = self.counters.replay_deliveries;
        c.lost_ring_lag = self.counters.ring_lost;
        c.lost_history = self.counters.history_lost;
        let event_delivered = c.delivered_live + c.delivered_replay;
        if event_delivered != c.delivered {
            self.violation(format!("event-side deliveries {event_delivered} != member-side {}", c.delivered));
        }
        if c.lost_ring_lag + c.lost_history != member_lost {
            self.violation(format!(
                "event-side losses {} != member-side {member_lost}",
                c.lost_ring_lag + c.lost_history
            ));
        }
        let mut mismatched = Vec::new();
        for (room, state) in self.rooms.iter().enumerate() {
            let hub = state.room.members();
            let links: u64 = state.links.iter().map(|lr| self.links[lr.link as usize].interest.members(&(room as u32))).sum();
            if hub != links {
                mismatched.push(format!("room {room}: hub counts {hub} members, Links {links}"));
            }
        }
        for what in mismatched {
            self.violation(what);
        }
        c.violations = self.violations;
        c.conservation_holds =
            self.violations == 0 && c.delivered + member_lost + c.lost_unreachable == c.expected;
        c
    }
}
