//! The model's knobs and their documented defaults.
//!
//! Every number the simulator assumes about the world lives here, as a named constant with the
//! reason for its value, and is copied into a [`SimConfig`] that the CLI may override. The config
//! is serialized into the report, so a report always says which model produced it.
//! docs/simulator.md lists the same constants for readers of the report.
//!
//! Units: virtual time in microseconds (`_us`), rates per second, sizes in bytes.

use linkcast_core::fanout::{LagPolicy, RingLimits};
use linkcast_core::room::RoomLimits;

/// Deliveries per second one Link shard (one core) sustains: one `Bytes` clone + a vectored
/// socket write per member. 2 M/s ≈ 500 ns per delivery, the order of one `writev` per
/// connection on a modern core. Replace with the criterion figure (`benches/core.rs`) for your
/// hardware via `--shard-capacity`.
pub const DEFAULT_SHARD_CAPACITY: u64 = 2_000_000;
/// Shards (cores) per Link.
pub const DEFAULT_SHARDS: u16 = 4;
/// Most client connections one Link accepts; beyond it clients spill to the next Link.
pub const DEFAULT_LINK_MAX_CONNS: u64 = 250_000;
/// Admission control: new connections (TLS + auth + join) a Link accepts per second.
pub const DEFAULT_ADMISSION_RATE: u64 = 25_000;
/// A client whose admission would wait longer than this is refused and backs off.
pub const DEFAULT_ADMISSION_MAX_WAIT_US: u64 = 1_000_000;
/// Links per room group (the `k` of `BoundedLoad::place`).
pub const DEFAULT_GROUP_SIZE: usize = 2;
/// Hub → Link one-way latency (same data centre) and its uniform jitter.
pub const DEFAULT_HUB_LINK_LATENCY_US: u64 = 500;
/// Jitter added to [`DEFAULT_HUB_LINK_LATENCY_US`].
pub const DEFAULT_HUB_LINK_JITTER_US: u64 = 200;
/// Link → client one-way latency (last mile) and its uniform jitter.
pub const DEFAULT_CLIENT_LATENCY_US: u64 = 20_000;
/// Jitter added to [`DEFAULT_CLIENT_LATENCY_US`].
pub const DEFAULT_CLIENT_JITTER_US: u64 = 30_000;
/// How long a client takes to notice its Link died (heartbeat timeout), plus jitter.
pub const DEFAULT_DETECT_US: u64 = 1_000_000;
/// Jitter added to [`DEFAULT_DETECT_US`].
pub const DEFAULT_DETECT_JITTER_US: u64 = 2_000_000;
/// First reconnect backoff (full jitter: uniform in `0..=base`), doubling per attempt.
pub const DEFAULT_BACKOFF_BASE_US: u64 = 500_000;
/// Backoff ceiling.
pub const DEFAULT_BACKOFF_CAP_US: u64 = 30_000_000;
/// Connect attempts before a client gives up (its missed messages are counted as unreachable).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 40;
/// Hub CPU per send (one QUIC stream write / syscall share, framing, accounting): 2 µs. Used
/// only for the linkcast-vs-naive CPU estimate.
pub const HUB_SEND_COST_NS: u64 = 2_000;
/// Default message payload size.
pub const DEFAULT_PAYLOAD_BYTES: usize = 256;
/// Latency buckets one aggregate delivery job is split into for the histogram.
pub const LATENCY_SPREAD_BUCKETS: u64 = 16;

/// The model parameters of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimConfig {
    /// The run's seed (everything random derives from it).
    pub seed: u64,
    /// Links up at t = 0 (ids `0..links`).
    pub links: u32,
    /// Shards per Link.
    pub shards: u16,
    /// Deliveries per second per shard.
    pub shard_capacity: u64,
    /// Connection cap per Link.
    pub link_max_conns: u64,
    /// Admissions per second per Link.
    pub admission_rate: u64,
    /// Longest admission queueing before a refusal.
    pub admission_max_wait_us: u64,
    /// Links per room group.
    pub group_size: usize,
    /// `c` of bounded-load placement.
    pub load_factor: f64,
    /// Hub → Link latency.
    pub hub_link_latency_us: u64,
    /// Its jitter.
    pub hub_link_jitter_us: u64,
    /// Link → client latency.
    pub client_latency_us: u64,
    /// Its jitter.
    pub client_jitter_us: u64,
    /// Dead-Link detection time.
    pub detect_us: u64,
    /// Its jitter.
    pub detect_jitter_us: u64,
    /// First backoff.
    pub backoff_base_us: u64,
    /// Backoff cap.
    pub backoff_cap_us: u64,
    /// Connect attempts before giving up.
    pub max_attempts: u32,
    /// Per-room history bounds (the real `RoomLimits`).
    pub room_limits: RoomLimits,
    /// Per-(shard, room) ring bounds (the real `RingLimits`).
    pub ring_limits: RingLimits,
    /// What a shard does with members that fell off its ring.
    pub lag_policy: LagPolicy,
    /// Rooms in the placement comparison.
    pub cmp_rooms: u32,
    /// Members spread (Zipf) over those rooms.
    pub cmp_members: u64,
}

impl SimConfig {
    /// The documented defaults with `seed`.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            links: 8,
            shards: DEFAULT_SHARDS,
            shard_capacity: DEFAULT_SHARD_CAPACITY,
            link_max_conns: DEFAULT_LINK_MAX_CONNS,
            admission_rate: DEFAULT_ADMISSION_RATE,
            admission_max_wait_us: DEFAULT_ADMISSION_MAX_WAIT_US,
            group_size: DEFAULT_GROUP_SIZE,
            load_factor: linkcast_core::placement::DEFAULT_LOAD_FACTOR,
            hub_link_latency_us: DEFAULT_HUB_LINK_LATENCY_US,
            hub_link_jitter_us: DEFAULT_HUB_LINK_JITTER_US,
            client_latency_us: DEFAULT_CLIENT_LATENCY_US,
            client_jitter_us: DEFAULT_CLIENT_JITTER_US,
            detect_us: DEFAULT_DETECT_US,
            detect_jitter_us: DEFAULT_DETECT_JITTER_US,
            backoff_base_us: DEFAULT_BACKOFF_BASE_US,
            backoff_cap_us: DEFAULT_BACKOFF_CAP_US,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            room_limits: RoomLimits::default(),
            ring_limits: RingLimits::default(),
            lag_policy: LagPolicy::Gap,
            cmp_rooms: 10_000,
            cmp_members: 1_000_000,
        }
    }
}
