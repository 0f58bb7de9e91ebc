//! Every generated scenario at small scale (CI-sized), each asserting what it exists to show.

use linkcast_sim::config::SimConfig;
use linkcast_sim::report::Report;
use linkcast_sim::scenario::{generate, Params, Scenario};

fn run(scenario: Scenario, params: Params, tweak: impl FnOnce(&mut SimConfig)) -> Report {
    let seed = 7;
    let mut cfg = SimConfig::new(seed);
    cfg.cmp_rooms = 300;
    cfg.cmp_members = 20_000;
    tweak(&mut cfg);
    let workload = generate(scenario, &params, seed);
    let report = linkcast_sim::simulate(cfg, &workload, "test", None, &mut |_| {});
    assert!(report.verdict.ok, "{scenario:?}: {:?} — reproduce with --seed {seed}", report.verdict.violation_samples);
    assert!(report.completeness.conservation_holds);
    report
}

#[test]
fn flash_crowd_small() {
    let p = Params { members: 2_000, messages: 50, link_failures: 2, ..Params::defaults(Scenario::FlashCrowd) };
    let r = run(Scenario::FlashCrowd, p, |_| {});
    assert_eq!(r.completeness.members_complete, 2_000);
    assert!(r.hub.linkcast.sends_per_publish <= 8.0);
    assert!(r.hub.send_reduction > 100.0, "one send per Link, not per member");
    assert!(r.latency_us.live.p50 >= 20_000, "at least the client latency");
}

#[test]
fn burst_overflows_rings_and_counts_the_gaps() {
    let p = Params { members: 2_000, messages: 20, storm: 3_000, ..Params::defaults(Scenario::Burst) };
    // A slow shard (100k deliveries/s): 250 members per shard take 2.5 ms per frame, so a storm
    // of 3,000 frames in one second cannot be delivered before the ring (≈ 950 frames) wraps.
    let r = run(Scenario::Burst, p, |cfg| cfg.shard_capacity = 100_000);
    let c = &r.completeness;
    assert!(r.queues.lag_events > 0);
    assert!(c.lost_ring_lag > 0);
    assert_eq!(c.members_with_counted_gaps, 2_000, "every member fell off with its shard");
    assert_eq!(c.expected, 2_000 * 3_020);
    assert!(r.queues.peak_ring_bytes <= r.config.ring_limits.max_bytes as u64 + 2_000);
}

#[test]
fn link_failure_reconnects_everyone_without_loss() {
    let p = Params { members: 3_000, messages: 60, ..Params::defaults(Scenario::LinkFailure) };
    let r = run(Scenario::LinkFailure, p, |_| {});
    assert_eq!(r.reconnect.storms.len(), 1);
    let storm = &r.reconnect.storms[0];
    assert!(storm.disconnected > 0);
    assert_eq!(storm.rejoined, storm.disconnected);
    assert_eq!(r.completeness.members_complete, 3_000);
    assert!(r.completeness.delivered_replay > 0);
    assert!(r.links.iter().filter(|l| l.up_at_end).count() == 8, "the Link came back");
}

#[test]
fn scale_out_adds_a_link_and_bounded_load_moves_nothing() {
    let p = Params { members: 5_000, rooms: 200, messages: 300, ..Params::defaults(Scenario::ScaleOut) };
    let r = run(Scenario::ScaleOut, p, |_| {});
    assert_eq!(r.links.len(), 9, "link-8 joined");
    let bounded = r.placement.strategies.iter().find(|s| s.name == "bounded_load").expect("present");
    let ring = r.placement.strategies.iter().find(|s| s.name == "hash_ring").expect("present");
    assert_eq!(bounded.rooms_moved_on_add, 0);
    assert!(ring.rooms_moved_on_add > 0 && ring.rooms_moved_on_add < r.placement.rooms as u64 / 2);
    let change = &r.placement_changes[0];
    assert_eq!((change.event, change.link), ("link_up", 8));
    assert!(change.rooms_placed > 0);
    assert_eq!(change.moved_bounded_load, 0, "placed rooms stay where they are");
    assert!(change.moved_pure_ring > 0, "a pure ring would have moved some");
    assert!(r.links[8].peak_conns > 0, "rooms created after the join use the new Link");
    assert!(r.completeness.members_complete > 0);
    assert_eq!(r.completeness.members_complete + r.completeness.members_with_counted_gaps, r.completeness.members_joined);
}
