//! Determinism and conservation at small scale: the same seed gives a byte-identical report, and
//! every member's deliveries plus counted gaps equal what it expected.

use linkcast_sim::config::SimConfig;
use linkcast_sim::report::Report;
use linkcast_sim::scenario::{generate, Params, Scenario};

fn flash_crowd(seed: u64) -> Report {
    let mut cfg = SimConfig::new(seed);
    cfg.cmp_rooms = 300;
    cfg.cmp_members = 20_000;
    let params = Params { members: 2_000, messages: 50, link_failures: 2, ..Params::defaults(Scenario::FlashCrowd) };
    let workload = generate(Scenario::FlashCrowd, &params, seed);
    linkcast_sim::simulate(cfg, &workload, "flash-crowd", serde_json::to_value(&params).ok(), &mut |_| {})
}

#[test]
fn same_seed_gives_a_byte_identical_report() {
    let a = serde_json::to_string(&flash_crowd(42)).expect("serializable");
    let b = serde_json::to_string(&flash_crowd(42)).expect("serializable");
    assert_eq!(a, b, "reproduce with --seed 42");
    let c = serde_json::to_string(&flash_crowd(43)).expect("serializable");
    assert_ne!(a, c, "a different seed must change something (join times, jitter)");
}

#[test]
fn conservation_holds_through_two_link_failures() {
    for seed in [1, 2, 3] {
        let r = flash_crowd(seed);
        let c = &r.completeness;
        assert!(r.verdict.ok, "seed {seed}: {:?} — reproduce with --seed {seed}", r.verdict.violation_samples);
        assert_eq!(c.violations, 0);
        assert!(c.conservation_holds);
        // Every member joined before the first publish and nobody leaves: each expects all 50.
        assert_eq!(c.members_joined, 2_000);
        assert_eq!(c.expected, 2_000 * 50, "seed {seed}");
        assert_eq!(c.delivered + c.lost_ring_lag + c.lost_history + c.lost_unreachable, c.expected);
        assert_eq!(c.delivered, c.delivered_live + c.delivered_replay);
        // Two Links died with members on them: replays happened and were counted once.
        assert!(r.reconnect.disconnects > 0 && c.delivered_replay > 0, "seed {seed}");
        assert_eq!(r.reconnect.reconnects, r.reconnect.disconnects, "seed {seed}: everyone came back");
        assert_eq!(r.reconnect.storms.len(), 2);
        assert_eq!(r.hub.publishes, 50);
    }
}
