//! linkcast-sim: replays rooms of up to millions of members on linkcast's real sans-IO core, in
//! virtual time, with faults, and says whether every member got every message.
//!
//! Operators run it before a live event to size a cluster: how many Links, what a million joins in
//! a minute do, what happens when a Link dies mid-broadcast or one is added. The simulator drives
//! the very code production runs — [`linkcast_core::placement`] for locate, [`linkcast_core::room::Room`]
//! for seq, history, interest and join answers, [`linkcast_core::fanout::ShardRoom`] rings per
//! (shard, room) — and models only what is around it: time, network latency, shard capacity,
//! admission control and client behaviour. A run is a pure function of (seed, input): the same
//! seed gives a byte-identical report.
//!
//! # Layout
//!
//! - [`rng`]: the seeded PRNG (xoshiro256**), the only randomness.
//! - [`config`]: the model's constants and knobs ([`config::SimConfig`]).
//! - [`input`]: the operation list and the JSONL trace parser.
//! - [`scenario`]: generated workloads (`flash-crowd`, `burst`, `link-failure`, `scale-out`).
//! - [`events`]: the event queue ordered by (time, scheduling order).
//! - [`member`], [`link`], [`group`]: compact model state (members; Links and shards; one room on
//!   one shard, in aggregate).
//! - [`world`]: the engine: hub + Links + members driven by the event loop; completeness check.
//! - [`metrics`]: counters, latency histograms, time series.
//! - [`compare`]: placement comparison (hash ring vs rendezvous vs bounded load vs random).
//! - [`report`]: the JSON report and the human summary; [`plots`]: SVGs.
//!
//! Entry point for programs and tests: [`simulate`].
#![warn(missing_docs, unreachable_pub)]

pub mod compare;
pub mod config;
pub mod events;
pub mod group;
pub mod input;
pub mod link;
pub mod member;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod world;

use config::SimConfig;
use input::Workload;
use report::Report;
use world::World;

/// Runs `workload` under `cfg` and returns the deterministic report. `progress` is called now
/// and then with the number of inputs consumed (for a progress bar).
pub fn simulate(
    cfg: SimConfig,
    workload: &Workload,
    scenario: &str,
    params: Option<serde_json::Value>,
    progress: &mut dyn FnMut(usize),
) -> Report {
    let comparison = compare::compare(cfg.cmp_rooms, cfg.cmp_members, cfg.links, cfg.group_size, cfg.load_factor, cfg.seed);
    let mut world = World::new(cfg, workload);
    world.run(&workload.inputs, progress);
    let completeness = world.finish();
    report::build(scenario, params, &world, completeness, comparison)
}
