//! Durable rooms on Redis and hub fail-over, with real processes: `linkcast hub` and `linkcast
//! link` processes and a `redis-server` of this test's own (free port, persistence off unless a
//! test needs it), real WebSocket members whose traffic passes the invariant checker, and HTTP
//! publishers that retry every publish with its idempotency key until some hub acks it.
//!
//! - the hub SIGKILLed and restarted while a publisher runs: the room's seq and epoch continue,
//!   every acked publish reaches every member once, in order, with no gap and no reset;
//! - the owner hub SIGKILLed for good in a 2-hub + 3-Link cluster with 300 members while
//!   publishes go through both hubs: the other hub takes the room (the time from the kill to the
//!   first publish it acks is printed), every acked publish is delivered exactly once, in order;
//!   refusals were 503 with `Retry-After`;
//! - a dead owner of 400 rooms: the survivor takes them all (batched acquisitions; the time to
//!   the last room's ack is printed), every member gets every message once;
//! - the owner SIGSTOPped past its heartbeat, the other hub takes over, then SIGCONT: a publish
//!   the woken hub had accepted is refused by the store (fencing, counted) and never sequenced;
//!   the room returns to its ring owner and members miss nothing;
//! - Redis restarted empty: members get an explicit `reset` to a new epoch, then exactly the
//!   new epoch's messages;
//! - a 3-node Redis Cluster: publishes, a hub restart and a resume from `since` work for rooms
//!   spread over every node (hash tags right);
//! - the Rust client library publishing through a fail-over with retries and publish ids: every
//!   publish is in the room's history once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use linkcast_core::hub_directory::{HubDirectory, HubId};

use crate::support::checker::Ev;
use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::{history, hub_metric, metrics_text, payload, request};
use crate::support::member::{join_on_every_link, Member};
use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::STEP;

/// Store settings for tests; `extra` goes into `[store]`.
fn settings(redis: &str, extra: &str) -> String {
    format!("[auth]\ncluster_secret = \"durable-rooms\"\n\n[store]\nredis = \"{redis}\"\n{extra}\n\n[link]\nshards = 2\n")
}

/// Heartbeats faster than the defaults, for tests that wait for a hub to be declared dead
/// several times (the fail-over test keeps the defaults: its time is the figure reported).
const FAST: &str = "heartbeat_ms = 200\nhub_ttl_ms = 1500";

/// A room whose ring owner is hub `owner` among `hubs` hubs.
fn room_owned_by(owner: u32, hubs: u32, tag: &str) -> String {
    let directory = HubDirectory::new((0..hubs).map(HubId));
    (0..).map(|i| format!("{tag}-{i}")).find(|room| directory.owner(room) == Some(HubId(owner))).expect("some room")
}

/// One publish some hub acked.
#[derive(Clone, Debug)]
struct Acked {
    /// The payload's tag.
    n: u64,
    seq: u64,
    epoch: String,
    /// The hub that acked it.
    hub: usize,
    at: Instant,
}

/// What publishers saw besides acks.
#[derive(Default)]
struct Refusals {
    /// 503 answers (each with `Retry-After`).
    unavailable: AtomicU64,
    /// Connections refused or cut (a dead hub).
    unreachable: AtomicU64,
}

/// Publishes message `n` (idempotency key `p-n`), trying the hubs round-robin from `first`
/// until one acks it; panics after `within` or on any answer other than 200 / 503.
async fn publish_until_acked(hubs: &[SocketAddr], first: usize, room: &str, n: u64, refusals: &Refusals, within: Duration) -> Acked {
    let key = format!("p-{n}");
    let headers = [("content-type", "application/json"), ("idempotency-key", key.as_str())];
    let body = payload(n, 64);
    let deadline = Instant::now() + within;
    for attempt in 0.. {
        let hub = (first + attempt) % hubs.len();
        let answer = tokio::time::timeout(Duration::from_secs(12), request(hubs[hub], "POST", &format!("/v1/rooms/{room}/messages"), &headers, &body)).await;
        match answer {
            Ok(Ok(res)) if res.status == 200 => {
                let json = res.json();
                let seq = json["seq"].as_u64().unwrap_or_else(|| panic!("ack without seq: {json}"));
                let epoch = json["epoch"].as_str().unwrap_or_else(|| panic!("ack without epoch: {json}")).to_owned();
                return Acked { n, seq, epoch, hub, at: Instant::now() };
            }
            Ok(Ok(res)) if res.status == 503 => {
                assert!(res.header("retry-after").is_some(), "a 503 says when to retry: {}", res.text());
                refusals.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(res)) => panic!("publish {n} to hub {hub}: unexpected {} {}", res.status, res.text()),
            Ok(Err(_)) | Err(_) => {
                refusals.unreachable.fetch_add(1, Ordering::Relaxed);
            }
        }
        assert!(Instant::now() < deadline, "publish {n} not acked by any hub within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the loop returns or panics")
}

/// Publishes 1, 2, 3, … every `every` until `running` is cleared, alternating the first hub tried
/// when `alternate`; returns every ack.
fn steady(hubs: Vec<SocketAddr>, room: String, every: Duration, alternate: bool, running: Arc<AtomicBool>, refusals: Arc<Refusals>) -> tokio::task::JoinHandle<Vec<Acked>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0u64;
        while running.load(Ordering::Relaxed) {
            n += 1;
            let first = if alternate { n as usize % hubs.len() } else { 0 };
            acked.push(publish_until_acked(&hubs, first, &room, n, &refusals, Duration::from_secs(30)).await);
            tokio::time::sleep(every).await;
        }
        acked
    })
}

/// `per_link` members on each Link, joined to `room` from seq 0 and settled.
async fn members(cluster: &Cluster, room: &str, per_link: usize) -> Vec<Member> {
    join_on_every_link(cluster, room, per_link, Duration::from_secs(20)).await
}

/// The acks sorted by seq: one epoch, seqs 1..=N without a hole, every tag once.
fn settled(mut acked: Vec<Acked>) -> (Vec<Acked>, String) {
    acked.sort_by_key(|a| a.seq);
    let epoch = acked.first().map(|a| a.epoch.clone()).expect("something was acked");
    for (i, ack) in acked.iter().enumerate() {
        assert_eq!(ack.epoch, epoch, "one epoch throughout: {ack:?}");
        assert_eq!(ack.seq, i as u64 + 1, "acked seqs are 1..=N with no hole and no repeat: {ack:?}");
    }
    (acked, epoch)
}

/// The payload tags a member received in `room`, in order, and whether anything but messages
/// (a gap or reset) came.
fn tags(member: &Member, room: &str) -> (Vec<u64>, Vec<String>) {
    let mut tags = Vec::new();
    let mut other = Vec::new();
    for event in member.events() {
        match event {
            Ev::Msg { room: r, data, .. } if r == room => tags.push(data["n"].as_u64().unwrap_or(0)),
            Ev::Gap { .. } | Ev::Reset { .. } => other.push(event.short()),
            _ => {}
        }
    }
    (tags, other)
}

/// Every member got exactly the acked publishes of `room`, once each, in seq order, with no gap
/// or reset; the store's history agrees.
async fn assert_delivered(members: &[Member], hub: SocketAddr, room: &str, acked: &[Acked], epoch: &str) {
    let expected: Vec<u64> = acked.iter().map(|a| a.n).collect();
    let last = acked.len() as u64;
    for member in members {
        member.wait_position(room, epoch, last, Duration::from_secs(20)).await;
    }
    for member in members {
        let (got, other) = tags(member, room);
        assert!(other.is_empty(), "{}: no gap or reset in {room}: {other:?}", member.name);
        assert_eq!(got, expected, "{}: every acked publish once, in seq order", member.name);
    }
    let stored: Vec<u64> = history(hub, room).await.iter().map(|m: &Value| m["data"]["n"].as_u64().unwrap_or(0)).collect();
    assert_eq!(stored, expected, "the room's history holds every acked publish once");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_and_restarted_continues_every_room_from_redis_and_members_miss_nothing() {
    let redis = RedisServer::start().await;
    let settings = settings(&redis.url(), FAST);
    let mut cluster = Cluster::start(ClusterSpec { tag: "durable-restart", hubs: 1, links: 2, settings: &settings, relay: false, link_quic: false }).await;
    let room = "restart";
    let members = members(&cluster, room, 5).await;
    let running = Arc::new(AtomicBool::new(true));
    let refusals = Arc::new(Refusals::default());
    let publisher = steady(cluster.hubs.clone(), room.to_owned(), Duration::from_millis(20), false, running.clone(), refusals.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;

    let killed = Instant::now();
    cluster.processes.kill("hub-0");
    cluster.spawn_hub(0);
    cluster.wait_links(0, 2, Duration::from_secs(30)).await;
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    running.store(false, Ordering::Relaxed);
    let (acked, epoch) = settled(publisher.await.expect("publisher"));
    assert!(acked.iter().any(|a| a.at < killed), "acks before the kill");
    assert!(acked.iter().filter(|a| a.at > restarted).count() >= 5, "acks by the restarted hub: the seq continued in the same epoch");
    assert_delivered(&members, cluster.hubs[0], room, &acked, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_hub_killed_for_good_hands_its_rooms_to_the_other_and_300_members_miss_nothing() {
    let redis = RedisServer::start().await;
    let settings = settings(&redis.url(), "");
    let mut cluster = Cluster::start(ClusterSpec { tag: "durable-failover", hubs: 2, links: 3, settings: &settings, relay: false, link_quic: false }).await;
    let room = room_owned_by(0, 2, "failover");
    let members = members(&cluster, &room, 100).await;
    let running = Arc::new(AtomicBool::new(true));
    let refusals = Arc::new(Refusals::default());
    let publisher = steady(cluster.hubs.clone(), room.clone(), Duration::from_millis(20), true, running.clone(), refusals.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;

    let killed = Instant::now();
    cluster.processes.kill("hub-0");
    // Keep publishing until the survivor has acked a while.
    let survivor = cluster.hubs[1];
    let deadline = killed + Duration::from_secs(15);
    loop {
        let owned = hub_metric(&metrics_text(cluster.hub_admin[1]).await, "linkcast_hub_rooms_owned", 1);
        if owned >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "hub 1 did not take the room within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    running.store(false, Ordering::Relaxed);
    let acked = publisher.await.expect("publisher");
    let first_after = acked.iter().filter(|a| a.at > killed && a.hub == 1).map(|a| a.at).min().expect("hub 1 acked after the kill");
    eprintln!(
        "fail-over: owner SIGKILL -> first publish acked by the new owner in {:?} ({} refused 503, {} unreachable)",
        first_after - killed,
        refusals.unavailable.load(Ordering::Relaxed),
        refusals.unreachable.load(Ordering::Relaxed)
    );
    assert!(first_after - killed < Duration::from_secs(15), "fail-over took {:?}", first_after - killed);
    let (acked, epoch) = settled(acked);
    assert_delivered(&members, survivor, &room, &acked, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_that_wakes_up_is_fenced_by_the_store_and_steps_down() {
    let redis = RedisServer::start().await;
    let settings = settings(&redis.url(), FAST);
    let cluster = Cluster::start(ClusterSpec { tag: "durable-fence", hubs: 2, links: 1, settings: &settings, relay: false, link_quic: false }).await;
    let room = room_owned_by(0, 2, "fence");
    let members = members(&cluster, &room, 5).await;
    let refusals = Refusals::default();
    let mut acked = Vec::new();
    for n in 1..=5 {
        acked.push(publish_until_acked(&cluster.hubs, 0, &room, n, &refusals, STEP).await);
    }
    assert!(acked.iter().all(|a| a.hub == 0), "hub 0 owns the room: {acked:?}");

    cluster.processes.stop("hub-0");
    // Hub 1 takes the room once hub 0's heartbeat is gone (a publish forwarded to the paused
    // owner times out meanwhile, and is retried).
    for n in 6..=10 {
        acked.push(publish_until_acked(&cluster.hubs[1..], 0, &room, n, &refusals, Duration::from_secs(30)).await);
    }
    // A publish sent to the paused owner waits in its socket until it wakes.
    let to_paused = {
        let hub = cluster.hubs[0];
        let room = room.clone();
        tokio::spawn(async move {
            let headers = [("content-type", "application/json"), ("idempotency-key", "woken")];
            request(hub, "POST", &format!("/v1/rooms/{room}/messages"), &headers, br#"{"n":999}"#).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.processes.cont("hub-0");
    let answer = tokio::time::timeout(Duration::from_secs(15), to_paused).await.expect("the woken hub answers").expect("task").expect("an answer");
    assert_eq!(answer.status, 503, "the woken owner may not sequence: {}", answer.text());
    let fenced = hub_metric(&metrics_text(cluster.hub_admin[0]).await, "linkcast_hub_publishes_fenced_total", 0);
    assert!(fenced >= 1.0, "the store refused the woken hub's publish (fencing): {fenced}");

    // Service goes on through both hubs; the room settles back at its ring owner.
    for n in 11..=20 {
        acked.push(publish_until_acked(&cluster.hubs, n as usize, &room, n, &refusals, Duration::from_secs(30)).await);
    }
    let (acked, epoch) = settled(acked);
    assert!(!acked.iter().any(|a| a.n == 999), "the fenced publish was never sequenced");
    assert_delivered(&members, cluster.hubs[1], &room, &acked, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_resets_every_member_explicitly_then_serves_the_new_epoch() {
    let mut redis = RedisServer::start().await;
    let settings = settings(&redis.url(), FAST);
    let cluster = Cluster::start(ClusterSpec { tag: "durable-redis-lost", hubs: 1, links: 1, settings: &settings, relay: false, link_quic: false }).await;
    let room = "lost";
    let members = members(&cluster, room, 5).await;
    let refusals = Refusals::default();
    let mut old = Vec::new();
    for n in 1..=5 {
        old.push(publish_until_acked(&cluster.hubs, 0, room, n, &refusals, STEP).await);
    }
    let old_epoch = old[0].epoch.clone();
    for member in &members {
        member.wait_position(room, &old_epoch, 5, STEP).await;
    }

    redis.kill();
    redis.restart().await;
    let mut new = Vec::new();
    for n in 6..=15 {
        new.push(publish_until_acked(&cluster.hubs, 0, room, n, &refusals, Duration::from_secs(30)).await);
    }
    let (new, new_epoch) = settled(new);
    assert_ne!(new_epoch, old_epoch, "Redis lost the room: a new epoch, never a silent jump");
    for member in &members {
        member.wait_position(room, &new_epoch, new.len() as u64, Duration::from_secs(20)).await;
        let events = member.events();
        let fifth = events.iter().position(|e| e.seq_in(room) == Some(5)).expect("got seq 5 of the old epoch");
        match events.get(fifth + 1) {
            Some(Ev::Reset { epoch, .. }) => assert_eq!(epoch, &new_epoch, "{}: reset to the new epoch", member.name),
            other => panic!("{}: after Redis lost the room the next thing must be a reset, got {:?}", member.name, other.map(Ev::short)),
        }
        let after: Vec<u64> = events[fifth + 2..].iter().filter_map(|e| e.seq_in(room)).collect();
        assert_eq!(after, (1..=new.len() as u64).collect::<Vec<_>>(), "{}: exactly the new epoch's messages", member.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_rooms_on_every_node_through_a_hub_restart_and_a_resume() {
    let redis = RedisCluster::start(3).await;
    let urls = redis.urls();
    let extra = format!("{FAST}\ncluster = true\ncluster_nodes = [{}]", urls[1..].iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "));
    let settings = settings(&urls[0], &extra);
    let mut cluster = Cluster::start(ClusterSpec { tag: "durable-redis-cluster", hubs: 1, links: 1, settings: &settings, relay: false, link_quic: false }).await;
    let rooms: Vec<String> = (0..12).map(|i| format!("spread-{i}")).collect();
    let refusals = Refusals::default();
    let mut acked: Vec<Vec<Acked>> = vec![Vec::new(); rooms.len()];
    for (i, room) in rooms.iter().enumerate() {
        for n in 1..=5 {
            acked[i].push(publish_until_acked(&cluster.hubs, 0, room, n, &refusals, STEP).await);
        }
    }
    cluster.processes.kill("hub-0");
    cluster.spawn_hub(0);
    cluster.wait_links(0, 1, Duration::from_secs(30)).await;
    for (i, room) in rooms.iter().enumerate() {
        for n in 6..=10 {
            acked[i].push(publish_until_acked(&cluster.hubs, 0, room, n, &refusals, Duration::from_secs(30)).await);
        }
    }
    for (i, room) in rooms.iter().enumerate() {
        let (acked, epoch) = settled(acked[i].clone());
        assert_eq!(acked.len(), 10, "{room}: the seq continued across the hub restart");
        // A member resuming from seq 3 of the epoch gets exactly 4..=10.
        let member = Member::connect(format!("resumer-{room}"), &cluster.url(0)).await;
        member.join(room, Some(3), Some(&epoch));
        member.wait_position(room, &epoch, 10, STEP).await;
        assert_eq!(member.seqs(room), (4..=10).collect::<Vec<_>>(), "{room}: resumed from the store's history");
        let stored: Vec<u64> = history(cluster.hubs[0], room).await.iter().map(|m| m["data"]["n"].as_u64().unwrap_or(0)).collect();
        assert_eq!(stored, (1..=10).collect::<Vec<_>>(), "{room}: history in the cluster");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_publishing_through_a_fail_over_gets_every_publish_sequenced_once() {
    use linkcast::client::{Client, ClientOptions, Event, Target};
    let redis = RedisServer::start().await;
    let settings = settings(&redis.url(), FAST);
    let mut cluster = Cluster::start(ClusterSpec { tag: "durable-client", hubs: 2, links: 1, settings: &settings, relay: false, link_quic: false }).await;
    let room = room_owned_by(0, 2, "client");
    let mut options = ClientOptions::new(Target::Ws(cluster.url(0)));
    options.seed = 7;
    let mut client = Client::start(options);
    client.join(&room).expect("join");
    let mut events = Vec::new();
    let deadline = Instant::now() + STEP;
    while !events.iter().any(|e| matches!(e, Event::Joined { .. })) {
        assert!(Instant::now() < deadline, "joined in time: {events:?}");
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(100), client.next_event()).await {
            events.push(event);
        }
    }
    const N: u64 = 60;
    let mut ids = Vec::new();
    for n in 1..=N {
        if n == 21 {
            cluster.processes.kill("hub-0");
        }
        ids.push(client.publish(&room, &serde_json::json!({ "n": n })).await.expect("queued"));
        // Read what arrived meanwhile (the client buffers events for us).
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(30), client.next_event()).await {
            events.push(event);
        }
    }
    let answered = |events: &[Event]| events.iter().filter(|e| matches!(e, Event::Published { .. } | Event::Error { .. })).count();
    let deadline = Instant::now() + Duration::from_secs(40);
    while answered(&events) < ids.len() {
        assert!(Instant::now() < deadline, "every publish answered: {} of {}", answered(&events), ids.len());
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), client.next_event()).await {
            events.push(event);
        }
    }
    let errors: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Error { .. })).collect();
    assert!(errors.is_empty(), "the library retried through the fail-over: {errors:?}");
    let mut published: Vec<(u64, u64)> = events.iter().filter_map(|e| match e { Event::Published { id, seq, .. } => Some((*id, *seq)), _ => None }).collect();
    published.sort_by_key(|&(_, seq)| seq);
    let mut published_ids: Vec<u64> = published.iter().map(|&(id, _)| id).collect();
    published_ids.sort_unstable();
    assert_eq!(published_ids, ids, "each publish acknowledged exactly once");
    let stored: Vec<u64> = history(cluster.hubs[1], &room).await.iter().map(|m| m["data"]["n"].as_u64().unwrap_or(0)).collect();
    let mut sorted = stored.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=N).collect::<Vec<_>>(), "every publish is in the room's history exactly once: {stored:?}");
    let seqs: Vec<u64> = published.iter().map(|&(_, seq)| seq).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "acknowledged seqs are 1..=N");
    let _ = client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hub_with_hundreds_of_rooms_hands_them_all_over_and_no_member_misses_a_message() {
    const ROOMS: usize = 400;
    let redis = RedisServer::start().await;
    let settings = settings(&redis.url(), "");
    let mut cluster = Cluster::start(ClusterSpec { tag: "durable-many", hubs: 2, links: 1, settings: &settings, relay: false, link_quic: false }).await;
    let directory = HubDirectory::new([HubId(0), HubId(1)]);
    let rooms: Vec<String> = (0..).map(|i| format!("many-{i}")).filter(|r| directory.owner(r) == Some(HubId(0))).take(ROOMS).collect();
    let mut members = Vec::new();
    for room in &rooms {
        let member = Member::connect(format!("member-{room}"), &cluster.url(0)).await;
        member.join(room, Some(0), None);
        members.push(member);
    }
    let refusals = Arc::new(Refusals::default());
    let mut epochs = Vec::new();
    for (member, room) in members.iter().zip(&rooms) {
        member.wait_joined(room, 1, STEP).await;
        epochs.push(publish_until_acked(&cluster.hubs, 0, room, 1, &refusals, STEP).await.epoch);
    }

    let killed = Instant::now();
    cluster.processes.kill("hub-0");
    let survivor = cluster.hubs[1];
    let mut publishers = Vec::new();
    for room in rooms.clone() {
        let refusals = refusals.clone();
        publishers.push(tokio::spawn(async move { publish_until_acked(&[survivor], 0, &room, 2, &refusals, Duration::from_secs(30)).await }));
    }
    let mut last_ack = killed;
    for (publisher, epoch) in publishers.into_iter().zip(&epochs) {
        let ack = publisher.await.expect("publisher");
        assert_eq!((ack.seq, &ack.epoch), (2, epoch), "the room continued at the new owner");
        last_ack = last_ack.max(ack.at);
    }
    eprintln!("fail-over of {ROOMS} rooms: owner SIGKILL -> every room acked by the new owner in {:?}", last_ack - killed);
    for ((member, room), epoch) in members.iter().zip(&rooms).zip(&epochs) {
        member.wait_position(room, epoch, 2, Duration::from_secs(20)).await;
        let (got, other) = tags(member, room);
        assert!(other.is_empty(), "{room}: no gap or reset: {other:?}");
        assert_eq!(got, vec![1, 2], "{room}: both messages once, in order");
    }
}
