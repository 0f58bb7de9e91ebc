//! The report: what a run found, as JSON (for machines and the determinism test) and as a short
//! human summary (for the operator at the terminal).
//!
//! [`Report`] is a pure function of (config, workload): it holds only virtual-time figures, so the
//! same seed and input serialize to the same bytes. Wall-clock time and peak RSS describe the
//! *machine*, not the model; they live in [`RunInfo`], a separate section of the JSON file
//! (`{"report": …, "run": …}`) that the determinism comparison leaves out.
//!
//! Data comes from `world.rs` (counters, latencies, series, completeness) and `compare.rs`
//! (placement comparison); `plots.rs` draws the `series` section.

use std::fmt::Write as _;

use linkcast_core::quantiles::Quantiles;

use crate::compare::{round3, Balance, PlacementComparison};
use crate::config::{SimConfig, HUB_SEND_COST_NS};
use crate::world::{Completeness, PlacementChange, World};

/// Delivery latency (publish at the hub → frame at the client).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatencySection {
    /// Live deliveries.
    pub live: Quantiles,
    /// Deliveries replayed after a re-join.
    pub replay: Quantiles,
    /// Both.
    pub all: Quantiles,
}

/// Cost of one delivery design at the hub.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HubCost {
    /// Sends.
    pub sends: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// CPU estimate: sends × `HUB_SEND_COST_NS`.
    pub cpu_ms: f64,
    /// Sends per publish.
    pub sends_per_publish: f64,
}

/// Hub load: linkcast (one send per interested Link) vs naive (one per member).
#[derive(Clone, Debug, serde::Serialize)]
pub struct HubSection {
    /// Publishes sequenced.
    pub publishes: u64,
    /// Publishes refused by the room (payload too large).
    pub publishes_rejected: u64,
    /// Per-send CPU cost assumed (ns).
    pub send_cost_ns: u64,
    /// linkcast.
    pub linkcast: HubCost,
    /// Per-user delivery from the app layer.
    pub naive: HubCost,
    /// `naive.sends / linkcast.sends`.
    pub send_reduction: f64,
}

/// One Link.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkSection {
    /// Link id.
    pub id: u32,
    /// Up at the end of the run.
    pub up_at_end: bool,
    /// Most connections at once.
    pub peak_conns: u64,
    /// Connections at the end.
    pub conns_at_end: u64,
    /// Member deliveries committed by its shards.
    pub deliveries: u64,
}

/// Balance over the Links that carried anything.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkBalance {
    /// Links that carried at least one connection.
    pub links_used: u64,
    /// Peak connections per used Link.
    pub peak_conns: Balance,
    /// Deliveries per used Link.
    pub deliveries: Balance,
}

/// Disconnects and the reconnect storm.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReconnectSection {
    /// Members disconnected by a failure.
    pub disconnects: u64,
    /// Of which re-joined.
    pub reconnects: u64,
    /// Attempts refused by admission control.
    pub admission_refusals: u64,
    /// Attempts that found every Link down or full.
    pub no_link_available: u64,
    /// Members out of attempts.
    pub gave_up: u64,
    /// First failure disconnect (virtual ms).
    pub storm_start_ms: Option<f64>,
    /// Last re-join (virtual ms).
    pub storm_end_ms: Option<f64>,
    /// Storm length: first disconnect → last re-join (ms), over all failures.
    pub storm_ms: Option<f64>,
    /// Per Link failure: its storm.
    pub storms: Vec<StormSection>,
}

/// One failure's storm.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StormSection {
    /// The Link that died.
    pub link: u32,
    /// When (virtual ms).
    pub start_ms: f64,
    /// Members it disconnected.
    pub disconnected: u64,
    /// Of which re-joined.
    pub rejoined: u64,
    /// Failure → last re-join of its members (ms).
    pub length_ms: Option<f64>,
}

/// Queues and rings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QueueSection {
    /// Largest backlog (unread frame bytes) of one shard.
    pub peak_shard_backlog_bytes: u64,
    /// Largest bytes held by one (shard, room) ring.
    pub peak_ring_bytes: u64,
    /// Times a shard fell off a ring (each a counted gap for the group's members).
    pub lag_events: u64,
    /// Frames that reached a Link after it died.
    pub frames_to_dead_links: u64,
}

/// Simulator internals.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimSection {
    /// Events scheduled.
    pub events: u64,
    /// Largest event-queue length.
    pub peak_event_queue: u64,
    /// Virtual time of the last event (ms).
    pub virtual_end_ms: f64,
}

/// Time series for the plots.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeriesSection {
    /// `[link][second]` member deliveries.
    pub deliveries_per_link_per_sec: Vec<Vec<u64>>,
    /// Re-joins per second.
    pub reconnects_per_sec: Vec<u64>,
    /// Failure disconnects per second.
    pub disconnects_per_sec: Vec<u64>,
    /// Live latency CDF: `(µs, fraction)`.
    pub live_latency_cdf: Vec<(u64, f64)>,
    /// Replay latency CDF.
    pub replay_latency_cdf: Vec<(u64, f64)>,
}

/// The pass / fail verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    /// No violation and conservation holds.
    pub ok: bool,
    /// Violations counted.
    pub violations: u64,
    /// The first few, verbatim.
    pub violation_samples: Vec<String>,
    /// How to rerun this exact run.
    pub reproduce: String,
}

/// Everything deterministic a run found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Scenario name or `trace`.
    pub scenario: String,
    /// Scenario parameters (absent for traces).
    pub params: Option<serde_json::Value>,
    /// The model.
    pub config: SimConfig,
    /// Pass / fail.
    pub verdict: Verdict,
    /// Per-member completeness and conservation.
    pub completeness: Completeness,
    /// Delivery latency.
    pub latency_us: LatencySection,
    /// Hub load, linkcast vs naive.
    pub hub: HubSection,
    /// Per Link.
    pub links: Vec<LinkSection>,
    /// Balance.
    pub link_balance: LinkBalance,
    /// Reconnects.
    pub reconnect: ReconnectSection,
    /// Queues.
    pub queues: QueueSection,
    /// Placement comparison.
    pub placement: PlacementComparison,
    /// What each Link addition / removal during the run moved.
    pub placement_changes: Vec<PlacementChange>,
    /// Internals.
    pub sim: SimSection,
    /// Series for plots.
    pub series: SeriesSection,
}

/// Facts about the machine run (not deterministic; excluded from comparisons).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunInfo {
    /// Wall-clock time of the simulation (ms).
    pub wall_ms: u64,
    /// Peak resident set (VmHWM from /proc/self/status), KiB; None where unavailable.
    pub peak_rss_kib: Option<u64>,
    /// Whether the seed was given or drawn from the clock.
    pub seed_source: &'static str,
}

/// The JSON file: `{"report": …, "run": …}`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Output<'a> {
    /// Deterministic part.
    pub report: &'a Report,
    /// Machine part.
    pub run: &'a RunInfo,
}

fn cost(sends: u64, bytes: u64, publishes: u64) -> HubCost {
    HubCost {
        sends,
        bytes,
        cpu_ms: round3(sends as f64 * HUB_SEND_COST_NS as f64 / 1e6),
        sends_per_publish: round3(sends as f64 / publishes.max(1) as f64),
    }
}

/// Builds the report of a finished world.
pub fn build(
    scenario: &str,
    params: Option<serde_json::Value>,
    world: &World,
    completeness: Completeness,
    placement: PlacementComparison,
) -> Report {
    let c = &world.counters;
    let cfg = world.config().clone();
    let mut all = world.live_latency.clone();
    all.merge(&world.replay_latency);
    let links: Vec<LinkSection> = world
        .link_stats()
        .into_iter()
        .enumerate()
        .map(|(id, (peak_conns, conns_at_end, deliveries, up_at_end))| LinkSection {
            id: id as u32,
            up_at_end,
            peak_conns,
            conns_at_end,
            deliveries,
        })
        .collect();
    let used: Vec<&LinkSection> = links.iter().filter(|l| l.peak_conns > 0).collect();
    let (violations, samples) = world.violations();
    let (events, peak_queue) = world.event_stats();
    let ms = |us: u64| round3(us as f64 / 1000.0);
    Report {
        scenario: scenario.to_owned(),
        params,
        verdict: Verdict {
            ok: violations == 0 && completeness.conservation_holds,
            violations,
            violation_samples: samples.to_vec(),
            reproduce: format!("--seed {}", cfg.seed),
        },
        completeness,
        latency_us: LatencySection {
            live: world.live_latency.quantiles(),
            replay: world.replay_latency.quantiles(),
            all: all.quantiles(),
        },
        hub: HubSection {
            publishes: c.publishes,
            publishes_rejected: c.publishes_rejected,
            send_cost_ns: HUB_SEND_COST_NS,
            linkcast: cost(c.hub_sends, c.hub_bytes, c.publishes),
            naive: cost(c.naive_sends, c.naive_bytes, c.publishes),
            send_reduction: round3(c.naive_sends as f64 / c.hub_sends.max(1) as f64),
        },
        link_balance: LinkBalance {
            links_used: used.len() as u64,
            peak_conns: Balance::of(&used.iter().map(|l| l.peak_conns).collect::<Vec<_>>()),
            deliveries: Balance::of(&used.iter().map(|l| l.deliveries).collect::<Vec<_>>()),
        },
        links,
        reconnect: ReconnectSection {
            disconnects: c.disconnects,
            reconnects: c.reconnects,
            admission_refusals: c.admission_refusals,
            no_link_available: c.no_link_available,
            gave_up: c.gave_up,
            storm_start_ms: c.storm_start_us.map(ms),
            storm_end_ms: c.storm_end_us.map(ms),
            storm_ms: match (c.storm_start_us, c.storm_end_us) {
                (Some(a), Some(b)) => Some(ms(b.saturating_sub(a))),
                _ => None,
            },
            storms: world
                .storms
                .iter()
                .map(|s| StormSection {
                    link: s.link,
                    start_ms: ms(s.start_us),
                    disconnected: s.disconnected,
                    rejoined: s.rejoined,
                    length_ms: s.end_us.map(|e| ms(e.saturating_sub(s.start_us))),
                })
                .collect(),
        },
        queues: QueueSection {
            peak_shard_backlog_bytes: c.peak_shard_backlog_bytes,
            peak_ring_bytes: c.peak_ring_bytes,
            lag_events: c.lag_events,
            frames_to_dead_links: c.frames_to_dead_links,
        },
        placement,
        placement_changes: world.placement_changes.clone(),
        sim: SimSection { events, peak_event_queue: peak_queue as u64, virtual_end_ms: ms(world.now()) },
        series: SeriesSection {
            deliveries_per_link_per_sec: world.per_link.iter().map(|s| s.per_sec.clone()).collect(),
            reconnects_per_sec: world.reconnect_series.per_sec.clone(),
            disconnects_per_sec: world.disconnect_series.per_sec.clone(),
            live_latency_cdf: world.live_latency.cdf(),
            replay_latency_cdf: world.replay_latency.cdf(),
        },
        config: cfg,
    }
}

/// The human summary printed on stdout.
pub fn summary(r: &Report, run: Option<&RunInfo>) -> String {
    let mut s = String::new();
    let c = &r.completeness;
    let ms = |us: u64| us as f64 / 1000.0;
    let _ = writeln!(s, "linkcast-sim {} — seed {}", r.scenario, r.config.seed);
    let _ = writeln!(
        s,
        "  verdict       {} ({} violations; conservation {})",
        if r.verdict.ok { "OK" } else { "FAILED" },
        r.verdict.violations,
        if c.conservation_holds { "holds" } else { "BROKEN" }
    );
    let _ = writeln!(
        s,
        "  members       {} joined: {} complete, {} with counted gaps, {} never admitted, {} disconnected at end",
        c.members_joined, c.members_complete, c.members_with_counted_gaps, c.members_never_joined, c.members_disconnected_at_end
    );
    let _ = writeln!(
        s,
        "  deliveries    {} expected = {} delivered ({} live + {} replayed) + {} gaps (ring {}, history {}, unreachable {})",
        c.expected,
        c.delivered,
        c.delivered_live,
        c.delivered_replay,
        c.lost_ring_lag + c.lost_history + c.lost_unreachable,
        c.lost_ring_lag,
        c.lost_history,
        c.lost_unreachable
    );
    let l = &r.latency_us;
    let _ = writeln!(
        s,
        "  latency       live p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; replay p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(l.live.p50),
        ms(l.live.p99),
        ms(l.live.max),
        ms(l.replay.p50),
        ms(l.replay.p99),
        ms(l.replay.max)
    );
    let h = &r.hub;
    let _ = writeln!(
        s,
        "  hub           {} publishes; linkcast {:.2} sends/publish ({} sends, {} B, ~{:.1} ms CPU) vs naive {:.0} sends/publish ({} B, ~{:.1} ms CPU): {:.0}x fewer sends",
        h.publishes,
        h.linkcast.sends_per_publish,
        h.linkcast.sends,
        h.linkcast.bytes,
        h.linkcast.cpu_ms,
        h.naive.sends_per_publish,
        h.naive.bytes,
        h.naive.cpu_ms,
        h.send_reduction
    );
    let b = &r.link_balance;
    let _ = writeln!(
        s,
        "  links         {} used; peak conns max/mean {:.3}, deliveries max/mean {:.3}",
        b.links_used, b.peak_conns.max_over_mean, b.deliveries.max_over_mean
    );
    let rc = &r.reconnect;
    let _ = writeln!(
        s,
        "  reconnect     {} disconnected, {} re-joined, {} refusals, {} gave up; storm {}",
        rc.disconnects,
        rc.reconnects,
        rc.admission_refusals,
        rc.gave_up,
        rc.storm_ms.map_or("none".to_string(), |m| format!("{:.1} s", m / 1000.0))
    );
    for st in &rc.storms {
        let _ = writeln!(
            s,
            "    link-{} died at {:.1} s: {} disconnected, {} re-joined within {}",
            st.link,
            st.start_ms / 1000.0,
            st.disconnected,
            st.rejoined,
            st.length_ms.map_or("-".to_string(), |m| format!("{:.1} s", m / 1000.0))
        );
    }
    let q = &r.queues;
    let _ = writeln!(
        s,
        "  queues        peak shard backlog {} B, peak ring {} B, {} lag events",
        q.peak_shard_backlog_bytes, q.peak_ring_bytes, q.lag_events
    );
    for pc in &r.placement_changes {
        let _ = writeln!(
            s,
            "  {:<13} link-{} at {:.1} s: of {} placed rooms, pure ring would move {}, bounded load moved {}",
            pc.event,
            pc.link,
            pc.t_us as f64 / 1e6,
            pc.rooms_placed,
            pc.moved_pure_ring,
            pc.moved_bounded_load
        );
    }
    let _ = writeln!(s, "  placement     {} rooms, {} members, {} Links, k = {}:", r.placement.rooms, r.placement.members, r.placement.links, r.placement.group_size);
    for st in &r.placement.strategies {
        let _ = writeln!(
            s,
            "    {:<13} rooms/Link max/mean {:.2}, members/Link max/mean {:.2}, Links/room {:.2} (max {}), sends/publish {:.2}, moved on add {} rooms, on remove {} rooms",
            st.name,
            st.rooms_per_link.max_over_mean,
            st.members_per_link.max_over_mean,
            st.links_touched_per_room_mean,
            st.links_touched_per_room_max,
            st.hub_sends_per_publish,
            st.rooms_moved_on_add,
            st.rooms_moved_on_remove
        );
    }
    let _ = writeln!(s, "  sim           {} events, virtual end {:.1} s", r.sim.events, r.sim.virtual_end_ms / 1000.0);
    if let Some(run) = run {
        let _ = writeln!(
            s,
            "  run           wall {:.2} s, peak RSS {}",
            run.wall_ms as f64 / 1000.0,
            run.peak_rss_kib.map_or("n/a".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
        );
    }
    for v in &r.verdict.violation_samples {
        let _ = writeln!(s, "  VIOLATION     {v}");
    }
    if !r.verdict.ok {
        let _ = writeln!(s, "  reproduce with {}", r.verdict.reproduce);
    }
    s
}
