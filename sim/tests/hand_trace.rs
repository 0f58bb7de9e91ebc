//! A trace small enough to work out by hand, and the exact outcome it must have.
//!
//! Model: 2 Links, 1 shard each, group size 1 (every member of "lobby" goes to the room's best
//! Link X), no jitter, hub→Link 1 ms, Link→client 10 ms (also the handshake), 1 µs per delivery,
//! dead-Link detection 100 ms, no backoff, no admission limit, history of 3 messages.
//!
//! ```text
//! t(ms)  what                              outcome
//!   0    alice, bob, carol join            connected at 10 ms on X, since = none: expect from seq 1
//!  20    publish seq 1                     X at 21 ms: 3 deliveries at +1/+2/+3 µs, +10 ms → client
//!  30    publish seq 2                     3 deliveries
//!  40    carol leaves                      carol: 2 delivered, 2 expected
//!  50    X dies                            alice, bob disconnected with last_seq 2
//!  60…100 publish seq 3..7                 no Link interested: 0 hub sends; history keeps 5, 6, 7
//! 120    dave joins                        connects at 130 ms to Y; expects from seq 8
//! 150    alice, bob retry (50 + 100 ms)    connected at 160 ms on Y, join since 2 →
//!                                          Gap { lost 3..=4, resume 5, replay 5, 6, 7 }
//! 200    publish seq 8                     alice, bob, dave get it live
//! ```
//!
//! alice and bob: expected 8 = 6 delivered (1, 2 live; 5, 6, 7 replayed; 8 live) + 2 lost.

use linkcast_core::placement::{HashRing, LinkId, Placement};
use linkcast_sim::config::SimConfig;
use linkcast_sim::input::parse_trace;
use linkcast_sim::world::World;

#[test]
fn hand_computed_outcome() {
    let ring = HashRing::with_links([LinkId(0), LinkId(1)]);
    let x = ring.locate("lobby", 1)[0].0;
    let trace = format!(
        r#"
        {{"t_ms": 0,   "op": "join", "member": "alice", "room": "lobby"}}
        {{"t_ms": 0,   "op": "join", "member": "bob",   "room": "lobby"}}
        {{"t_ms": 0,   "op": "join", "member": "carol", "room": "lobby"}}
        {{"t_ms": 20,  "op": "publish", "room": "lobby", "bytes": 100}}
        {{"t_ms": 30,  "op": "publish", "room": "lobby", "bytes": 100}}
        {{"t_ms": 40,  "op": "leave", "member": "carol"}}
        {{"t_ms": 50,  "op": "link_down", "link": {x}}}
        {{"t_ms": 60,  "op": "publish", "room": "lobby", "bytes": 100}}
        {{"t_ms": 70,  "op": "publish", "room": "lobby", "bytes": 100}}
        {{"t_ms": 80,  "op": "publish", "room": "lobby", "bytes": 100}}
        {{"t_ms": 90,  "op": "publish", "room": "lobby", "bytes": 100}}
        {{"t_ms": 100, "op": "publish", "room": "lobby", "bytes": 100}}
        {{"t_ms": 120, "op": "join", "member": "dave", "room": "lobby"}}
        {{"t_ms": 200, "op": "publish", "room": "lobby", "bytes": 100}}
        "#
    );
    let workload = parse_trace(&trace).expect("valid trace");
    let mut cfg = SimConfig::new(1);
    cfg.links = 2;
    cfg.shards = 1;
    cfg.group_size = 1;
    cfg.shard_capacity = 1_000_000;
    cfg.admission_rate = 0;
    cfg.hub_link_latency_us = 1_000;
    cfg.hub_link_jitter_us = 0;
    cfg.client_latency_us = 10_000;
    cfg.client_jitter_us = 0;
    cfg.detect_us = 100_000;
    cfg.detect_jitter_us = 0;
    cfg.backoff_base_us = 0;
    cfg.room_limits.history_messages = 3;
    cfg.cmp_rooms = 10;
    cfg.cmp_members = 100;

    let mut world = World::new(cfg.clone(), &workload);
    world.run(&workload.inputs, &mut |_| {});
    let c = world.finish();
    let (alice, bob, carol, dave) = (0, 1, 2, 3);
    // (delivered, lost, expected) per member.
    assert_eq!(world.member_outcome(alice), (6, 2, 8));
    assert_eq!(world.member_outcome(bob), (6, 2, 8));
    assert_eq!(world.member_outcome(carol), (2, 0, 2));
    assert_eq!(world.member_outcome(dave), (1, 0, 1));
    assert_eq!(c.violations, 0, "{:?}", world.violations());
    assert!(c.conservation_holds);
    assert_eq!((c.members_complete, c.members_with_counted_gaps), (2, 2));
    assert_eq!(c.expected, 19);
    assert_eq!((c.delivered_live, c.delivered_replay), (3 + 3 + 3, 3 + 3));
    assert_eq!((c.lost_history, c.lost_ring_lag, c.lost_unreachable), (4, 0, 0));
    assert_eq!(world.room_last_seqs(), vec![8]);

    let counters = &world.counters;
    assert_eq!(counters.hub_sends, 3, "seq 1, 2 to X; 3..7 to nobody; 8 to Y");
    assert_eq!(counters.naive_sends, 3 + 3 + 3);
    assert_eq!((counters.disconnects, counters.reconnects), (2, 2));
    assert_eq!(world.storms.len(), 1);
    assert_eq!(world.storms[0].link, x);
    assert_eq!(world.storms[0].end_us, Some(160_000));
    // Live: published at 20 ms, at X 21 ms, 3rd delivery 3 µs later, +10 ms to the client.
    assert_eq!(world.live_latency.max(), 11_003);
    assert_eq!(world.live_latency.count(), 9);
    // Replay: bob is served after alice on Y's one shard; his seq 5 (published at 80 ms) is the
    // 4th replay delivery at 160 ms: 160 + 0.004 + 10 − 80 = 90.004 ms.
    assert_eq!(world.replay_latency.max(), 90_004);
    assert_eq!(world.replay_latency.count(), 6);

    // The same trace through the public entry point is deterministic.
    let a = serde_json::to_string(&linkcast_sim::simulate(cfg.clone(), &workload, "trace", None, &mut |_| {}));
    let b = serde_json::to_string(&linkcast_sim::simulate(cfg, &workload, "trace", None, &mut |_| {}));
    assert_eq!(a.expect("serializable"), b.expect("serializable"));
}
