//! The room store (`linkcast::store`) against real `redis-server` processes: sequencing across
//! a hub restart, dedupe across a fail-over, history bounds, fencing of a dead owner, Redis
//! restarted empty, rolled-back acknowledgements, the eviction-policy check, releases,
//! heartbeats, NOSCRIPT recovery, WAIT, and 50 rooms on a 3-master Redis Cluster.
//!
//! Each test starts its own Redis (support/redis.rs) on a free loopback port and kills it by the
//! pid it spawned; the tests run in parallel.

use std::time::Duration;

use bytes::Bytes;
use linkcast::config::StoreConfig;
use linkcast::store::{Acquired, PublishCmd, PublishOutcome, RedisStore, StoreError, StoreLimits};

use crate::support::eventually;
use crate::support::redis::{RedisCluster, RedisServer};

const LIMITS: StoreLimits =
    StoreLimits { history_messages: 100, history_bytes: 1 << 20, dedupe_keys: 100, dedupe_micros: 60_000_000, room_ttl_ms: 60_000 };

/// A wall-clock-like timestamp (fixed: the store takes time as an argument).
const T0: u64 = 1_700_000_000_000_000;

fn config(url: &str) -> StoreConfig {
    StoreConfig { redis: url.to_owned(), ..StoreConfig::default() }
}

async fn connect(url: &str, hub: u32, incarnation: u64) -> RedisStore {
    RedisStore::connect(&config(url), hub, incarnation, LIMITS).await.expect("store connects")
}

fn publish(room: &str, fence: u64, data: &str) -> PublishCmd {
    PublishCmd {
        room: room.to_owned(),
        fence,
        expected_epoch: None,
        acked_seq: 0,
        candidate_epoch: 999,
        sender: "alice".into(),
        key: String::new(),
        flags: 0,
        ts_micros: T0,
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

fn keyed(room: &str, fence: u64, key: &str, ts_micros: u64) -> PublishCmd {
    PublishCmd { key: key.into(), ts_micros, ..publish(room, fence, key) }
}

/// Acquires, expecting ownership: (fence, epoch, last_seq, created, history payloads).
async fn owned(store: &RedisStore, room: &str, live: &[u32], candidate: u64) -> (u64, u64, u64, bool, Vec<String>) {
    match store.acquire(room, live, candidate).await.expect("acquire") {
        Acquired::Owned { fence, epoch, last_seq, created, history } => {
            let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
            let expected: Vec<u64> = (last_seq + 1 - history.len() as u64..=last_seq).collect();
            assert_eq!(seqs, expected, "history is the newest seqs, oldest first");
            (fence, epoch, last_seq, created, history.iter().map(|m| String::from_utf8_lossy(&m.data).into_owned()).collect())
        }
        other => panic!("expected to own {room}, got {other:?}"),
    }
}

async fn one(store: &RedisStore, cmd: PublishCmd) -> PublishOutcome {
    let outcomes = store.publish_batch(&[cmd]).await.expect("publish");
    assert_eq!(outcomes.len(), 1);
    outcomes[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequencing_continues_across_a_hub_restart() {
    let redis = RedisServer::start().await;
    let first = connect(&redis.url(), 0, 1).await;
    // An epoch above 2^53 survives: the scripts keep it as a string, never a Lua double.
    const EPOCH: u64 = u64::MAX - 76;
    let (fence, epoch, last_seq, created, history) = owned(&first, "lobby", &[0], EPOCH).await;
    assert_eq!((epoch, last_seq, created, history.len()), (EPOCH, 0, true, 0));

    let batch: Vec<PublishCmd> = (1..=5).map(|i| publish("lobby", fence, &format!("m{i}"))).collect();
    let outcomes = first.publish_batch(&batch).await.expect("publish");
    let expected: Vec<PublishOutcome> = (1..=5).map(|seq| PublishOutcome::Sequenced { seq, epoch: EPOCH }).collect();
    assert_eq!(outcomes, expected);

    // The hub restarts: same id, new incarnation. It takes its own old lease (new fence) and
    // continues the epoch and seq, with the history.
    let second = connect(&redis.url(), 0, 2).await;
    let (fence2, epoch2, last_seq2, created2, history2) = owned(&second, "lobby", &[0], 88).await;
    assert!(fence2 > fence, "a new incarnation gets a new fence");
    assert_eq!((epoch2, last_seq2, created2), (EPOCH, 5, false));
    assert_eq!(history2, ["m1", "m2", "m3", "m4", "m5"]);
    let history = match second.acquire("lobby", &[0], 88).await.expect("acquire") {
        Acquired::Owned { fence: again, history, .. } => {
            assert_eq!(again, fence2, "acquiring again keeps the fence");
            history
        }
        other => panic!("{other:?}"),
    };
    assert_eq!((history[0].sender.as_str(), history[0].ts_micros, history[0].flags), ("alice", T0, 0));

    let outcomes = second.publish_batch(&(6..=8).map(|i| publish("lobby", fence2, &format!("m{i}"))).collect::<Vec<_>>()).await.expect("publish");
    assert_eq!(outcomes.last(), Some(&PublishOutcome::Sequenced { seq: 8, epoch: EPOCH }));
    let matching = PublishCmd { expected_epoch: Some(EPOCH), acked_seq: 8, ..publish("lobby", fence2, "m9") };
    assert_eq!(one(&second, matching).await, PublishOutcome::Sequenced { seq: 9, epoch: EPOCH });
    // The old incarnation (a zombie) is fenced off by its own successor and cannot take the
    // lease back.
    assert_eq!(one(&first, publish("lobby", fence, "zombie")).await, PublishOutcome::Fenced { holder: Some(0) });
    assert_eq!(first.acquire("lobby", &[0], 1).await.expect("acquire"), Acquired::HeldBy { hub: 0 });
    // Incarnations compare as u64s, not as text ("9" > "10") or Lua doubles (u64::MAX - 1 ==
    // u64::MAX).
    for (older, newer) in [(9, 10), (u64::MAX - 1, u64::MAX)] {
        let older = connect(&redis.url(), 0, older).await;
        let newer = connect(&redis.url(), 0, newer).await;
        owned(&older, "incarnations", &[0], 1).await;
        owned(&newer, "incarnations", &[0], 1).await;
        assert_eq!(older.acquire("incarnations", &[0], 1).await.expect("acquire"), Acquired::HeldBy { hub: 0 });
    }

}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_answer_the_first_seq_even_after_a_fail_over() {
    let redis = RedisServer::start().await;
    let hub0 = connect(&redis.url(), 0, 1).await;
    let (fence, epoch, ..) = owned(&hub0, "r", &[0], 5).await;
    assert_eq!(one(&hub0, keyed("r", fence, "k1", T0)).await, PublishOutcome::Sequenced { seq: 1, epoch });
    assert_eq!(one(&hub0, keyed("r", fence, "k2", T0)).await, PublishOutcome::Sequenced { seq: 2, epoch });
    // A batch holding the same key twice: the second is the duplicate of the first.
    let outcomes = hub0.publish_batch(&[keyed("r", fence, "k3", T0), keyed("r", fence, "k3", T0), publish("r", fence, "plain")]).await.expect("publish");
    assert_eq!(
        outcomes,
        [PublishOutcome::Sequenced { seq: 3, epoch }, PublishOutcome::Duplicate { seq: 3, epoch }, PublishOutcome::Sequenced { seq: 4, epoch }]
    );
    // The same key from another sender is another key.
    let other = PublishCmd { sender: "bob".into(), ..keyed("r", fence, "k1", T0) };
    assert_eq!(one(&hub0, other).await, PublishOutcome::Sequenced { seq: 5, epoch });

    // Hub 0 dies (not in the live list); hub 1 takes the room over and sees hub 0's keys.
    let hub1 = connect(&redis.url(), 1, 1).await;
    let (fence1, epoch1, last, created, _) = owned(&hub1, "r", &[1], 6).await;
    assert_eq!((epoch1, last, created), (epoch, 5, false));
    assert_eq!(one(&hub1, keyed("r", fence1, "k1", T0 + 1)).await, PublishOutcome::Duplicate { seq: 1, epoch });
    // Past the dedupe window the key is new again.
    assert_eq!(one(&hub1, keyed("r", fence1, "k1", T0 + LIMITS.dedupe_micros + 1)).await, PublishOutcome::Sequenced { seq: 6, epoch });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_keys_are_bounded_by_count() {
    let redis = RedisServer::start().await;
    let limits = StoreLimits { dedupe_keys: 3, ..LIMITS };
    let store = RedisStore::connect(&config(&redis.url()), 0, 1, limits).await.expect("connect");
    let (fence, epoch, ..) = owned(&store, "r", &[0], 1).await;
    let batch: Vec<PublishCmd> = (0..5).map(|i| keyed("r", fence, &format!("k{i}"), T0 + i)).collect();
    store.publish_batch(&batch).await.expect("publish");
    assert_eq!(redis.cli(&["HLEN", "lc:{r}:k"]), "3");
    assert_eq!(redis.cli(&["ZCARD", "lc:{r}:z"]), "3");
    // The oldest keys went first: k0 is new again, k4 still a duplicate.
    assert_eq!(one(&store, keyed("r", fence, "k4", T0 + 10)).await, PublishOutcome::Duplicate { seq: 5, epoch });
    assert_eq!(one(&store, keyed("r", fence, "k0", T0 + 10)).await, PublishOutcome::Sequenced { seq: 6, epoch });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_by_count_and_bytes() {
    let redis = RedisServer::start().await;
    let by_count = StoreLimits { history_messages: 4, ..LIMITS };
    let store = RedisStore::connect(&config(&redis.url()), 0, 1, by_count).await.expect("connect");
    let (fence, ..) = owned(&store, "count", &[0], 1).await;
    store.publish_batch(&(1..=10).map(|i| publish("count", fence, &format!("m{i}"))).collect::<Vec<_>>()).await.expect("publish");
    let (_, _, last, _, history) = owned(&store, "count", &[0], 1).await;
    assert_eq!((last, history), (10, vec!["m7".to_owned(), "m8".into(), "m9".into(), "m10".into()]));

    // Entries of this test are `<seq>\n` + 11 header bytes + "alice" + a 100-byte payload.
    let by_bytes = StoreLimits { history_bytes: 400, ..LIMITS };
    let store = RedisStore::connect(&config(&redis.url()), 0, 2, by_bytes).await.expect("connect");
    let (fence, ..) = owned(&store, "bytes", &[0], 1).await;
    let payload = "x".repeat(100);
    store.publish_batch(&(1..=10).map(|_| publish("bytes", fence, &payload)).collect::<Vec<_>>()).await.expect("publish");
    let (_, _, last, _, history) = owned(&store, "bytes", &[0], 1).await;
    assert_eq!((last, history.len()), (10, 3), "3 entries of ~118 bytes fit 400");
    let stored: usize = redis.cli(&["HGET", "lc:{bytes}:m", "bytes"]).parse().expect("bytes");
    assert!(stored <= 400, "bytes counter {stored}");

    // One message larger than the limit is still kept (the newest always is).
    let big = "y".repeat(1000);
    assert_eq!(one(&store, publish("bytes", fence, &big)).await, PublishOutcome::Sequenced { seq: 11, epoch: 1 });
    let (.., history) = owned(&store, "bytes", &[0], 1).await;
    assert_eq!(history, [big]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_keeps_its_room_and_a_dead_one_is_fenced() {
    let redis = RedisServer::start().await;
    let hub0 = connect(&redis.url(), 0, 1).await;
    let hub1 = connect(&redis.url(), 1, 1).await;
    let (fence0, ..) = owned(&hub0, "r", &[0, 1], 3).await;
    assert_eq!(one(&hub0, publish("r", fence0, "a")).await, PublishOutcome::Sequenced { seq: 1, epoch: 3 });

    assert_eq!(hub1.acquire("r", &[0, 1], 4).await.expect("acquire"), Acquired::HeldBy { hub: 0 });
    // Hub 0 looks dead to hub 1: it takes the room over, with the history and a higher fence.
    let (fence1, epoch, last, created, history) = owned(&hub1, "r", &[1], 4).await;
    assert!(fence1 > fence0);
    assert_eq!((epoch, last, created, history), (3, 1, false, vec!["a".to_owned()]));
    // Hub 0 was only slow: its next publish is refused and names the new owner.
    assert_eq!(one(&hub0, publish("r", fence0, "late")).await, PublishOutcome::Fenced { holder: Some(1) });
    assert_eq!(hub0.acquire("r", &[0, 1], 5).await.expect("acquire"), Acquired::HeldBy { hub: 1 });
    assert_eq!(one(&hub1, publish("r", fence1, "b")).await, PublishOutcome::Sequenced { seq: 2, epoch: 3 });
    // A lease that vanished while the room's state is still there is not re-taken by a publish.
    redis.cli(&["DEL", "lc:{r}:l"]);
    assert_eq!(one(&hub1, publish("r", fence1, "c")).await, PublishOutcome::Fenced { holder: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_resets_the_room() {
    let mut redis = RedisServer::start().await;
    let store = connect(&redis.url(), 0, 1).await;
    let (fence, epoch, ..) = owned(&store, "r", &[0], 10).await;
    store.publish_batch(&(1..=3).map(|i| publish("r", fence, &format!("m{i}"))).collect::<Vec<_>>()).await.expect("publish");

    redis.restart().await; // no persistence: everything is gone, scripts too
    let cmd = PublishCmd { expected_epoch: Some(epoch), acked_seq: 3, candidate_epoch: 11, ..publish("r", fence, "after") };
    // The connection manager reconnects in the background; the caller retries until it does.
    let outcome = eventually(Duration::from_secs(10), "store reconnects", || async {
        match store.publish_batch(std::slice::from_ref(&cmd)).await {
            Ok(outcomes) => Some(outcomes[0]),
            Err(e) if e.is_unreachable() => None,
            Err(e) => panic!("unexpected store error: {e}"),
        }
    })
    .await;
    let PublishOutcome::Reset { seq, epoch: new_epoch, fence: new_fence } = outcome else {
        panic!("expected a reset, got {outcome:?}");
    };
    assert_eq!((seq, new_epoch), (1, 11));
    let next = PublishCmd { expected_epoch: Some(11), acked_seq: 1, ..publish("r", new_fence, "next") };
    assert_eq!(one(&store, next).await, PublishOutcome::Sequenced { seq: 2, epoch: 11 });
    let (.., history) = owned(&store, "r", &[0], 12).await;
    assert_eq!(history, ["after", "next"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reconnects_after_an_outage_longer_than_its_retries() {
    let mut redis = RedisServer::start().await;
    let store = connect(&redis.url(), 0, 1).await;
    store.heartbeat().await.expect("heartbeat");
    redis.kill();
    // Down for longer than one reconnect's tries (~1.5 s): every call fails, clearly.
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_millis(2000) {
        let error = store.heartbeat().await.expect_err("Redis is down");
        assert!(error.is_unreachable(), "{error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redis.restart().await;
    eventually(Duration::from_secs(10), "store reconnects", || async { store.heartbeat().await.ok() }).await;
    assert_eq!(store.live_hubs(&[0]).await.expect("live"), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_or_foreign_epochs_reset_the_room() {
    let redis = RedisServer::start().await;
    let store = connect(&redis.url(), 0, 1).await;
    let (fence, epoch, ..) = owned(&store, "r", &[0], 20).await;
    store.publish_batch(&(1..=3).map(|i| publish("r", fence, &format!("m{i}"))).collect::<Vec<_>>()).await.expect("publish");

    // The hub acknowledged seq 5 but Redis only has 3 (an fsync-everysec crash lost two).
    let rolled_back = PublishCmd { expected_epoch: Some(epoch), acked_seq: 5, candidate_epoch: 21, ..publish("r", fence, "x") };
    assert_eq!(one(&store, rolled_back).await, PublishOutcome::Reset { seq: 1, epoch: 21, fence });
    let (.., history) = owned(&store, "r", &[0], 0).await;
    assert_eq!(history, ["x"], "the old epoch's history is gone");

    // The hub believes in another epoch than Redis has.
    let foreign = PublishCmd { expected_epoch: Some(20), acked_seq: 0, candidate_epoch: 22, ..publish("r", fence, "y") };
    assert_eq!(one(&store, foreign).await, PublishOutcome::Reset { seq: 1, epoch: 22, fence });
    let matching = PublishCmd { expected_epoch: Some(22), acked_seq: 1, candidate_epoch: 23, ..publish("r", fence, "z") };
    assert_eq!(one(&store, matching).await, PublishOutcome::Sequenced { seq: 2, epoch: 22 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_refused() {
    let redis = RedisServer::start().await;
    redis.config_set("maxmemory-policy", "allkeys-lru");
    match RedisStore::connect(&config(&redis.url()), 0, 1, LIMITS).await {
        Err(e @ StoreError::EvictionPolicy(_)) => {
            let message = e.to_string();
            assert!(message.contains("allkeys-lru") && message.contains("noeviction"), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an evicting Redis was accepted"),
    }
    redis.config_set("maxmemory-policy", "noeviction");
    RedisStore::connect(&config(&redis.url()), 0, 1, LIMITS).await.expect("noeviction is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_deletes_only_its_own_lease() {
    let redis = RedisServer::start().await;
    let hub0 = connect(&redis.url(), 0, 1).await;
    let hub1 = connect(&redis.url(), 1, 1).await;
    let (fence, ..) = owned(&hub0, "r", &[0, 1], 1).await;
    owned(&hub0, "s", &[0, 1], 1).await;
    // Wrong fence, and another hub's release: the lease stays.
    hub0.release(&[("r".into(), fence + 1)]).await.expect("release");
    hub1.release(&[("r".into(), fence)]).await.expect("release");
    assert_eq!(hub1.acquire("r", &[0, 1], 1).await.expect("acquire"), Acquired::HeldBy { hub: 0 });
    hub0.release(&[("r".into(), fence), ("unknown".into(), 1)]).await.expect("release");
    let (fence1, _, _, created, _) = owned(&hub1, "r", &[0, 1], 1).await;
    assert!(fence1 > fence && !created, "released room is taken over with its state");
    assert_eq!(hub1.acquire("s", &[0, 1], 1).await.expect("acquire"), Acquired::HeldBy { hub: 0 }, "s was not released");
    assert_eq!(hub0.release(&[]).await.ok(), Some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_pushes_back_room_expiry() {
    let redis = RedisServer::start().await;
    let short = StoreLimits { room_ttl_ms: 5_000, ..LIMITS };
    let store = RedisStore::connect(&config(&redis.url()), 0, 1, short).await.expect("connect");
    let (fence, ..) = owned(&store, "r", &[0], 1).await;
    one(&store, keyed("r", fence, "k", T0)).await;
    for kind in ["m", "l", "h", "k", "z"] {
        let ttl: i64 = redis.cli(&["PTTL", &format!("lc:{{r}}:{kind}")]).parse().expect("pttl");
        assert!(ttl > 0 && ttl <= 5_000, "{kind}: {ttl}");
        redis.cli(&["PEXPIRE", &format!("lc:{{r}}:{kind}"), "1000"]);
    }
    store.touch(&["r".to_owned()]).await.expect("touch");
    for kind in ["m", "l", "h", "k", "z"] {
        let ttl: i64 = redis.cli(&["PTTL", &format!("lc:{{r}}:{kind}")]).parse().expect("pttl");
        assert!(ttl > 1_000, "{kind}: touched back to ~5 s, got {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_say_which_hubs_live_and_expire() {
    let redis = RedisServer::start().await;
    let fast = StoreConfig { heartbeat_ms: 50, hub_ttl_ms: 300, ..config(&redis.url()) };
    let hub0 = RedisStore::connect(&fast, 0, 1, LIMITS).await.expect("connect");
    let hub2 = RedisStore::connect(&fast, 2, 1, LIMITS).await.expect("connect");
    assert_eq!(hub0.live_hubs(&[0, 1, 2]).await.expect("live"), Vec::<u32>::new());
    hub2.heartbeat().await.expect("heartbeat");
    hub0.heartbeat().await.expect("heartbeat");
    assert_eq!(hub0.live_hubs(&[2, 1, 0]).await.expect("live"), [0, 2]);
    assert_eq!(redis.cli(&["GET", "lc:hub:2"]), "1", "the value is the incarnation");
    assert_eq!(hub0.live_hubs(&[]).await.expect("live"), Vec::<u32>::new());
    // No more heartbeats: both expire after hub_ttl_ms.
    eventually(Duration::from_secs(5), "heartbeats expire", || async { hub0.live_hubs(&[0, 1, 2]).await.expect("live").is_empty().then_some(()) })
        .await;

    let first = hub0.next_view_version().await.expect("view");
    assert_eq!(hub2.next_view_version().await.expect("view"), first + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_scripts_are_loaded_again() {
    let redis = RedisServer::start().await;
    let store = connect(&redis.url(), 0, 1).await;
    let (fence, ..) = owned(&store, "r", &[0], 1).await;
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let outcomes = store.publish_batch(&(1..=3).map(|i| publish("r", fence, &format!("m{i}"))).collect::<Vec<_>>()).await.expect("publish");
    assert_eq!(outcomes.last(), Some(&PublishOutcome::Sequenced { seq: 3, epoch: 1 }), "each applied once");
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let (_, _, last, _, history) = owned(&store, "r", &[0], 1).await;
    assert_eq!((last, history.len()), (3, 3));
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    store.release(&[("r".into(), fence)]).await.expect("release");
    assert_eq!(redis.cli(&["EXISTS", "lc:{r}:l"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_wait_still_returns_the_outcomes() {
    let redis = RedisServer::start().await;
    // No replica exists: WAIT 1 answers 0 after 10 ms; the publishes stand.
    let waiting = StoreConfig { wait_replicas: 1, wait_timeout_ms: 10, ..config(&redis.url()) };
    let store = RedisStore::connect(&waiting, 0, 1, LIMITS).await.expect("connect");
    let (fence, ..) = owned(&store, "r", &[0], 1).await;
    let outcomes = store.publish_batch(&[publish("r", fence, "a"), publish("r", fence, "b")]).await.expect("publish");
    assert_eq!(outcomes, [PublishOutcome::Sequenced { seq: 1, epoch: 1 }, PublishOutcome::Sequenced { seq: 2, epoch: 1 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_fifty_rooms() {
    let cluster = RedisCluster::start(3).await;
    let urls = cluster.urls();
    let cluster_config = StoreConfig { redis: urls[0].clone(), cluster: true, cluster_nodes: urls[1..].to_vec(), ..StoreConfig::default() };
    // Every master is checked for an eviction policy, not just one.
    cluster.nodes[2].config_set("maxmemory-policy", "volatile-lru");
    assert!(matches!(RedisStore::connect(&cluster_config, 0, 1, LIMITS).await, Err(StoreError::EvictionPolicy(p)) if p == "volatile-lru"));
    cluster.nodes[2].config_set("maxmemory-policy", "noeviction");
    let store = RedisStore::connect(&cluster_config, 0, 1, LIMITS).await.expect("cluster connects");
    let rooms: Vec<String> = (0..50).map(|i| format!("room-{i}")).collect();
    let mut fences = Vec::new();
    for room in &rooms {
        let (fence, epoch, _, created, _) = owned(&store, room, &[0], 7).await;
        assert_eq!((epoch, created), (7, true));
        fences.push(fence);
    }
    for round in 1..=2u64 {
        let batch: Vec<PublishCmd> = rooms.iter().zip(&fences).map(|(room, &fence)| publish(room, fence, &format!("{room}/{round}"))).collect();
        let outcomes = store.publish_batch(&batch).await.expect("publish on the cluster");
        assert!(outcomes.iter().all(|o| *o == PublishOutcome::Sequenced { seq: round, epoch: 7 }), "{outcomes:?}");
    }
    // Rooms are spread over the masters (the hash tag is the room, not the prefix).
    for node in &cluster.nodes {
        let keys: usize = node.cli(&["DBSIZE"]).parse().expect("dbsize");
        assert!(keys > 0, "node {} holds no room", node.port());
    }
    // A restarted hub reads every room back.
    let again = RedisStore::connect(&cluster_config, 0, 2, LIMITS).await.expect("cluster connects");
    for room in &rooms {
        let (_, _, last, created, history) = owned(&again, room, &[0], 8).await;
        assert_eq!((last, created, history), (2, false, vec![format!("{room}/1"), format!("{room}/2")]));
    }
    store.touch(&rooms).await.expect("touch");
    again.release(&rooms.iter().map(|r| (r.clone(), 0)).collect::<Vec<_>>()).await.expect("release");
    again.heartbeat().await.expect("heartbeat");
    assert_eq!(store.live_hubs(&[0, 1, 2, 3]).await.expect("live"), [0]);
    let view = store.next_view_version().await.expect("view");
    assert_eq!(again.next_view_version().await.expect("view"), view + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_always_redis_keeps_rooms_across_a_crash() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let store = connect(&redis.url(), 0, 1).await;
    let (fence, epoch, ..) = owned(&store, "r", &[0], 30).await;
    store.publish_batch(&(1..=3).map(|i| publish("r", fence, &format!("m{i}"))).collect::<Vec<_>>()).await.expect("publish");

    redis.kill(); // SIGKILL: no shutdown save, only the AOF
    redis.restart().await;
    let restarted = connect(&redis.url(), 0, 2).await;
    let (_, epoch2, last, created, history) = owned(&restarted, "r", &[0], 31).await;
    assert_eq!((epoch2, last, created), (epoch, 3, false), "acknowledged publishes survived");
    assert_eq!(history, ["m1", "m2", "m3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
    let started = std::time::Instant::now();
    let error = RedisStore::connect(&config(&format!("redis://127.0.0.1:{port}")), 0, 1, LIMITS).await.expect_err("nothing listens");
    assert!(error.is_unreachable(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_acquires_many_rooms_in_one_batch() {
    let redis = RedisServer::start().await;
    let hub0 = connect(&redis.url(), 0, 1).await;
    let hub1 = connect(&redis.url(), 1, 1).await;
    let rooms: Vec<(String, u64)> = (0..200).map(|i| (format!("room-{i}"), 1000 + i)).collect();
    let mut fences = Vec::new();
    for answer in hub0.acquire_batch(&rooms, &[0, 1]).await.expect("batch") {
        match answer.expect("acquired") {
            Acquired::Owned { fence, created: true, last_seq: 0, .. } => fences.push(fence),
            other => panic!("a fresh room is created and owned: {other:?}"),
        }
    }
    let publishes: Vec<PublishCmd> = rooms.iter().zip(&fences).map(|((room, _), &fence)| publish(room, fence, "m1")).collect();
    for outcome in hub0.publish_batch(&publishes).await.expect("publish") {
        assert!(matches!(outcome, PublishOutcome::Sequenced { seq: 1, .. }), "{outcome:?}");
    }
    // While hub 0 is live, hub 1 gets every room answered HeldBy in one batch …
    for answer in hub1.acquire_batch(&rooms, &[0, 1]).await.expect("batch") {
        assert_eq!(answer.expect("answer"), Acquired::HeldBy { hub: 0 });
    }
    // … and once hub 0 is dead it takes them all, with their history and a higher fence.
    let taken = hub1.acquire_batch(&rooms, &[1]).await.expect("batch");
    assert_eq!(taken.len(), rooms.len());
    for ((answer, (room, epoch)), fence0) in taken.into_iter().zip(&rooms).zip(&fences) {
        match answer.expect("acquired") {
            Acquired::Owned { fence, epoch: e, last_seq: 1, created: false, history } => {
                assert!(fence > *fence0, "{room}: a new fence");
                assert_eq!(e, *epoch, "{room}: the same epoch");
                assert_eq!(history.len(), 1, "{room}: its history");
            }
            other => panic!("{room}: taken over: {other:?}"),
        }
    }
    assert!(hub1.acquire_batch(&[], &[1]).await.expect("empty batch").is_empty());
}
