//! A Link node in the model: its liveness, connection count, admission control and shards.
//!
//! Owns no member state (members point at their Link, see `member.rs`) and no ring (rings are
//! per (shard, room) in `group.rs`). Its member count per room and what it tells the hub about
//! it is the real core [`LinkInterest`], keyed by room index, as in a real Link's coordinator.
//! A shard here is just a delivery worker: a run queue of groups with frames to deliver, the
//! job it is doing, and how long it is busy. Data flows in from the hub as `FrameArrive` events
//! and out as `JobDone` events, both driven by `world.rs`.

use std::collections::VecDeque;

use linkcast_core::interest::LinkInterest;

/// One delivery job: a frame delivered to all active members of one group.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Group slot.
    pub group: u32,
    /// The slot's generation when the job started (a freed group's job is discarded).
    pub gen: u32,
    /// The frame's seq.
    pub seq: u64,
    /// Its wire bytes (leave the backlog when the job ends).
    pub bytes: u64,
    /// When the shard started the job.
    pub start_us: u64,
    /// Deliveries planned at start (for the latency spread).
    pub planned: u64,
}

/// A per-core delivery worker.
#[derive(Clone, Debug, Default)]
pub struct Shard {
    /// Groups with unread frames, served round-robin one frame at a time.
    pub run_queue: VecDeque<(u32, u32)>,
    /// The job in progress.
    pub job: Option<Job>,
    /// The worker is busy until then (live jobs and replays both advance it).
    pub busy_until_us: u64,
    /// Bytes of frames pushed to this shard's rings and not yet delivered or dropped.
    pub backlog_bytes: u64,
}

/// One Link.
#[derive(Debug)]
pub struct Link {
    /// Accepting connections and receiving frames.
    pub up: bool,
    /// Incarnation: bumped at every down/up, so events of a previous life are dropped.
    pub epoch: u32,
    /// Connections, counting ones admitted and still handshaking.
    pub conns: u64,
    /// Highest `conns`.
    pub peak_conns: u64,
    /// Next free admission slot (token bucket of rate `admission_rate`).
    pub next_admit_us: u64,
    /// Arrival time of the last frame from the hub: the hub→Link stream is FIFO.
    pub last_arrival_us: u64,
    /// Member deliveries committed by this Link's shards.
    pub deliveries: u64,
    /// The shards.
    pub shards: Vec<Shard>,
    /// Members per room (by room index) and the announcements owed to the hub.
    pub interest: LinkInterest<u32>,
}

impl Link {
    /// A Link with `shards` idle shards, down until brought up.
    pub fn new(shards: u16) -> Self {
        Link {
            up: false,
            epoch: 0,
            conns: 0,
            peak_conns: 0,
            next_admit_us: 0,
            last_arrival_us: 0,
            deliveries: 0,
            shards: vec![Shard::default(); usize::from(shards.max(1))],
            interest: LinkInterest::new(usize::from(shards.max(1))),
        }
    }

    /// Forgets everything a crash loses: connections, queues, admission state.
    pub fn crash(&mut self) {
        self.up = false;
        self.epoch += 1;
        self.conns = 0;
        self.next_admit_us = 0;
        self.last_arrival_us = 0;
        for shard in &mut self.shards {
            *shard = Shard::default();
        }
        self.interest = LinkInterest::new(self.shards.len());
    }
}
