//! A Link shard whose inbox is full (`link.shard_queue_bytes`), in-process (`serve::start`: a
//! real hub and a real Link with 2 shards on loopback, real WebSocket clients, HTTP publishes).
//!
//! With a one-byte bound each shard's inbox takes a ring item only when it is empty, so a flood
//! of room messages into a room with many members per shard (each message costs the shard a
//! write per member) overflows it: the coordinator does not wait, it owes that shard a gap.
//! Every member's stream goes through the invariant checker (`support::checker`: seqs +1 each
//! time, every jump declared by an exact `gap`), so a member that missed frames saw a `gap` with
//! the exact range, then the rest in order; the members reach the last seq; the lost seqs are
//! still in history for a resume; the counters say `shard_queue`; and a member of another room,
//! published to (paced) after the flood, gets every message with no gap.

use std::sync::Arc;

use linkcast::config::Config;

use crate::support::checker::Ev;
use crate::support::http::{metric, metrics_text, payload, publish_json};
use crate::support::member::Member;
use crate::support::STEP;

const MEMBERS: usize = 80;
const MESSAGES: u64 = 1_500;
const PUBLISHERS: u64 = 8;

fn full_total(text: &str) -> f64 {
    (0..2).map(|shard| metric(text, "linkcast_link_shard_queue_full_total", &[("shard", &shard.to_string())])).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shard_inbox_becomes_an_exact_gap_for_its_members_only() {
    let toml = "[link]\nshards = 2\njoin_rate = 0\nshard_queue_bytes = 1\n[hub]\nhistory_messages = 100000\nhistory_bytes = 67108864\n";
    let config = Config::from_toml(toml).expect("test config parses");
    let serve = crate::support::start_serve(config, false).await;
    let url = format!("ws://{}/ws", serve.ws_addr());
    let before = metrics_text(serve.ws_addr()).await;

    let mut members = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        let member = Member::connect(format!("hot-{i}"), &url).await;
        member.join("hot", None, None);
        members.push(member);
    }
    for member in &members {
        member.wait_joined("hot", 1, STEP).await;
    }
    let calm = Member::connect("calm", &url).await;
    calm.join("calm", None, None);
    calm.wait_joined("calm", 1, STEP).await;

    // The flood: concurrent publishers, as fast as the hub takes them.
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (next, hub) = (next.clone(), serve.http_addr());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i > MESSAGES {
                        return;
                    }
                    publish_json(hub, "hot", &payload(i, 2048)).await;
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    // Every member accounts for every seq: received, or declared lost by an exact gap (the
    // checker fails the member on any silent jump).
    for member in &members {
        member.wait_pos("hot", MESSAGES, STEP).await;
    }

    let gaps: Vec<(u64, u64, u64)> = members
        .iter()
        .flat_map(|m| m.events())
        .filter_map(|ev| match ev {
            Ev::Gap { room, first, last, resume } if room == "hot" => Some((first, last, resume)),
            _ => None,
        })
        .collect();
    assert!(!gaps.is_empty(), "a one-byte shard inbox under a flood of {MESSAGES} messages to {MEMBERS} members never overflowed");
    let after = metrics_text(serve.ws_addr()).await;
    let full = full_total(&after) - full_total(&before);
    let shard_queue_gaps = metric(&after, "linkcast_link_gaps_total", &[("reason", "shard_queue")])
        - metric(&before, "linkcast_link_gaps_total", &[("reason", "shard_queue")]);
    assert!(full > 0.0, "linkcast_link_shard_queue_full_total counted nothing");
    assert!(shard_queue_gaps >= gaps.len() as f64, "gaps_total{{reason=shard_queue}} +{shard_queue_gaps}, members saw {}", gaps.len());
    for member in &members {
        // After its gaps a member got the rest in order: the last message it got is the last
        // one it did not lose, and nothing came after its position.
        let seqs = member.seqs("hot");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{}: out of order", member.name);
    }

    // Another room's member, on the same tiny-bound shards right after the flood: nothing is
    // left owed or stuck there. Paced (one message in a shard's inbox at a time), it gets every
    // message and no gap.
    for i in 1..=20 {
        publish_json(serve.http_addr(), "calm", &payload(i, 64)).await;
        calm.wait_pos("calm", i, STEP).await;
    }
    assert_eq!(calm.seqs("calm"), (1..=20).collect::<Vec<u64>>());
    assert!(calm.events().iter().all(|ev| !matches!(ev, Ev::Gap { .. })), "calm: {:?}", calm.events());

    // The lost seqs are still in the hub's history: a client resuming from before the first
    // gap gets them replayed, then joined.
    let (first, last, _) = gaps[0];
    let resumer = Member::connect("resumer", &url).await;
    let epoch = members[0].position("hot").0.expect("the room's epoch is known");
    resumer.join("hot", Some(first - 1), Some(epoch.as_str()));
    resumer.wait_joined("hot", 1, STEP).await;
    let replayed: Vec<u64> = resumer.seqs("hot");
    assert!((first..=last).all(|seq| replayed.contains(&seq)), "a resume from {} replays {first}..={last}: got {replayed:?}", first - 1);


    for member in members {
        member.stop();
    }
    serve.shutdown().await;
}
