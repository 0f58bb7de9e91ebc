//! No silent loss in real faults, with real processes: a `linkcast hub` and `linkcast link`
//! processes on loopback (one TOML config in a temp dir, random free ports), real WebSocket
//! members, HTTP publishes. Each process is signalled through the pid this test spawned.
//! Every member's traffic goes through the invariant checker of `support::checker` (per room:
//! seqs +1 each time, every jump declared by an exact `gap` or a `reset`).
//!
//! - a Link SIGSTOPped while the hub publishes a burst (its hub queue overflows), then
//!   SIGCONTed: every member gets the same exact `gap`s, then the later messages; the hub's
//!   `linkcast_hub_link_queue_dropped_total` grew by exactly what the gaps declare;
//! - the Link↔hub QUIC path cut (a UDP relay in the test drops everything) for longer than
//!   the idle timeout while publishing, then restored: with a large history every member gets
//!   the outage replayed (every seq once, in order); a WebSocket publish sent during the cut
//!   is answered `error` 503 with `retry_after_ms` and, re-sent with the same `id`, is
//!   `published` and sequenced exactly once; with a tiny history every member gets one exact
//!   `gap` instead;
//! - the same cut with `hub.link_idle_timeout_ms = 2000`: both ends drop the connection after
//!   2 s, not the default 8 s, and reconnect once the path is back;
//! - the hub SIGKILLed and restarted on the same ports: every member still connected to its
//!   Link gets `reset` to the new epoch, then exactly the new epoch's messages.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::checker::{is_epoch, Ev};
use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::{get_json, history, hub_metric, metrics_text, payload, publish_json, try_get};
use crate::support::member::{join_on_every_link, Member};
use crate::support::{eventually, STEP};

/// One hub (id 0) and `links` Links (`--no-quic`: members use WebSocket), up; with `relay`, the
/// Links reach the hub through a UDP relay the test can cut.
async fn start(tag: &str, links: usize, settings: &str, relay: bool) -> Cluster {
    let settings = format!("[auth]\ncluster_secret = \"no-silent-loss\"\n\n{settings}");
    Cluster::start(ClusterSpec { tag, hubs: 1, links, settings: &settings, relay, link_quic: false }).await
}

/// `per_link` members on each Link, joined to `room` from seq 0; returns them once the hub
/// lists every Link in the room.
async fn members(cluster: &Cluster, room: &str, per_link: usize) -> Vec<Member> {
    let members = join_on_every_link(cluster, room, per_link, STEP).await;
    for member in &members {
        let (_, last_seq) = member.wait_joined(room, 1, STEP).await;
        assert_eq!(last_seq, 0, "{}: a fresh room", member.name);
    }
    wait_room(cluster, room, cluster.links.len(), STEP).await;
    members
}

/// Waits until the hub lists `links` Links holding members of `room` (interest: what decides
/// delivery; the member count a Link reports may lag behind its joins).
async fn wait_room(cluster: &Cluster, room: &str, links: usize, within: Duration) -> Value {
    let hub = cluster.hubs[0];
    eventually(within, &format!("the hub lists {links} Links in {room}"), || async {
        let info = try_get(hub, &format!("/v1/rooms/{room}")).await.filter(|res| res.status == 200)?.json();
        (info["links"].as_array().map(Vec::len) == Some(links) && info["members"].as_u64().is_some_and(|m| m > 0)).then_some(info)
    })
    .await
}

async fn hub_counter(cluster: &Cluster, name: &str) -> f64 {
    hub_metric(&metrics_text(cluster.hub_admin[0]).await, name, 0)
}

/// The gaps a member received in `room`.
fn gaps(events: &[Ev], room: &str) -> Vec<(u64, u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Gap { room: r, first, last, resume } if r == room => Some((*first, *last, *resume)),
            _ => None,
        })
        .collect()
}

/// Publishes to `room` every `every` until `running` is cleared; the last seq goes to `last`.
fn steady_publisher(hub: SocketAddr, room: &str, every: Duration, running: Arc<AtomicBool>, last: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let room = room.to_owned();
    tokio::spawn(async move {
        let mut i = 0u64;
        while running.load(Ordering::Relaxed) {
            i += 1;
            let (seq, _) = publish_json(hub, &room, &payload(i, 100)).await;
            last.fetch_max(seq, Ordering::Relaxed);
            tokio::time::sleep(every).await;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// a. Link-wide gap: the Link falls behind its hub
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_stopped_while_its_hub_queue_overflows_gives_every_member_the_same_exact_gaps() {
    const BURST: u64 = 800;
    const SIZE: usize = 8 * 1024;
    // Rings far larger than the burst: no member falls behind its Link, so every gap a member
    // gets is the Link-wide one (a member's own lag would add gaps of its own).
    let settings = "[hub]\nlink_queue_bytes = 32768\nhistory_messages = 50\n\n\
                    [link]\nshards = 2\nring_items = 65536\nring_bytes = 67108864\n";
    let mut cluster = start("nsl-queue", 1, settings, false).await;
    let room = "burst";
    let members = members(&cluster, room, 6).await;
    let dropped_before = hub_counter(&cluster, "linkcast_hub_link_queue_dropped_total").await;

    // Stop the Link; publish ~6.5 MB (well past QUIC's stream window and the 32 KiB queue).
    cluster.processes.stop("link-1");
    let stopped = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (next, hub) = (next.clone(), cluster.hubs[0]);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > BURST {
                        return;
                    }
                    publish_json(hub, room, &payload(i, SIZE)).await;
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let published_in = stopped.elapsed();
    // Continue well inside the 8 s idle timeout: the connection must survive, only lag.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(published_in)).await;
    cluster.processes.cont("link-1");
    assert!(stopped.elapsed() < Duration::from_secs(6), "the Link was stopped for {:?} (publishing took {published_in:?})", stopped.elapsed());
    // The Link catches up: every member has the burst accounted for (received, or declared lost
    // by the gaps the hub sends once the Link's queue drained), so the queue is empty again.
    for member in &members {
        member.wait_pos(room, BURST, Duration::from_secs(20)).await;
    }
    for i in 1..=5 {
        let (seq, _) = publish_json(cluster.hubs[0], room, &payload(BURST + i, 64)).await;
        assert_eq!(seq, BURST + i);
    }
    let last = BURST + 5;
    for member in &members {
        member.wait_pos(room, last, Duration::from_secs(20)).await;
    }
    let dropped = hub_counter(&cluster, "linkcast_hub_link_queue_dropped_total").await - dropped_before;

    // The hub drops while the Link's queue is over the limit and declares each dropped run once
    // the queue drained below half; while stopped, the Link's QUIC stream window still takes
    // some writes, so there may be several runs. Every one reaches every member, identically.
    let link_gaps = gaps(&members[0].events(), room);
    assert!(!link_gaps.is_empty(), "{}: the overflow was declared", members[0].name);
    for member in &members {
        let events = member.events();
        assert_eq!(gaps(&events, room), link_gaps, "{}: a Link-wide gap is the same for every member", member.name);
        let mut expected: Vec<u64> = (1..=last).collect();
        expected.retain(|seq| !link_gaps.iter().any(|(first, last_lost, _)| (first..=last_lost).contains(&seq)));
        assert_eq!(member.seqs(room), expected, "{}: everything but the declared gaps, in order, once", member.name);
        assert!(!events.iter().any(|e| matches!(e, Ev::Reset { .. } | Ev::Close(..) | Ev::End)), "{}: no reset, no close", member.name);
    }
    let declared: u64 = link_gaps.iter().map(|(first, last_lost, _)| last_lost - first + 1).sum();
    assert!(link_gaps.iter().all(|(_, _, resume)| *resume <= BURST + 1), "only the burst was dropped: {link_gaps:?}");
    assert_eq!(dropped, declared as f64, "linkcast_hub_link_queue_dropped_total grew by what the gaps declare: {link_gaps:?}");
    assert!(cluster.processes.running("link-1") && cluster.processes.running("hub-0"));
}

// ---------------------------------------------------------------------------------------------
// b. The Link↔hub connection cut and restored mid-stream
// ---------------------------------------------------------------------------------------------

/// Cuts the relay for `cut` while publishing every 20 ms; returns the last published seq once
/// the Link is back (the hub lists it in the room again) and publishing has gone on for 1 s more.
/// `during_cut` runs right after the cut starts.
async fn cut_while_publishing<F, Fut>(cluster: &Cluster, room: &str, cut: Duration, during_cut: F) -> u64
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let running = Arc::new(AtomicBool::new(true));
    let last = Arc::new(AtomicU64::new(0));
    let relay = cluster.relay();
    let publisher = steady_publisher(cluster.hubs[0], room, Duration::from_millis(20), running.clone(), last.clone());
    let published = |n: u64| {
        let last = last.clone();
        async move { (last.load(Ordering::Relaxed) >= n).then_some(()) }
    };
    eventually(STEP, "20 messages published before the cut", || published(20)).await;
    relay.set_paused(true);
    let cut_at = Instant::now();
    during_cut().await;
    tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
    let before_restore = last.load(Ordering::Relaxed);
    relay.set_paused(false);
    assert!(relay.dropped() > 0, "the relay really cut the path");
    // The hub dropped the Link (idle timeout) and lists it again once it is back.
    wait_room(cluster, room, 1, Duration::from_secs(15)).await;
    let back_at = last.load(Ordering::Relaxed);
    eventually(STEP, "20 messages published after the Link is back", || published(back_at + 20)).await;
    running.store(false, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let last = last.load(Ordering::Relaxed);
    assert!(last > before_restore && before_restore > 0, "published before, during and after the cut");
    last
}

/// `hub.link_idle_timeout_ms` is what both ends of the hub <-> Link connection wait on: cut at
/// 2 s, the hub drops the Link and the Link its hub well before the default's 8 s, and they
/// reconnect once the path is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_hub_link_connection_is_dropped_after_link_idle_timeout_ms_and_comes_back() {
    let cluster = start("nsl-idle-timeout", 1, "[hub]\nlink_idle_timeout_ms = 2000\n", true).await;
    let (hub_admin, link_admin) = (cluster.hub_admin[0], cluster.link_admin[0]);
    let hub_links = move || async move { hub_metric(&metrics_text(hub_admin).await, "linkcast_hub_links", 0) };
    let link_hubs = move || async move { crate::support::http::metric(&metrics_text(link_admin).await, "linkcast_link_hubs_connected", &[]) };
    eventually(STEP, "the hub lists the Link", || async { (hub_links().await == 1.0).then_some(()) }).await;
    let relay = cluster.relay();
    relay.set_paused(true);
    let cut_at = Instant::now();
    eventually(STEP, "the hub drops the silent Link", || async { (hub_links().await == 0.0).then_some(()) }).await;
    eventually(STEP, "the Link drops its silent hub", || async { (link_hubs().await == 0.0).then_some(()) }).await;
    let dropped_after = cut_at.elapsed();
    assert!(relay.dropped() > 0, "the relay really cut the path");
    assert!(
        dropped_after >= Duration::from_millis(1500) && dropped_after < Duration::from_secs(7),
        "both ends gave up after {dropped_after:?}: 2 s configured, 8 s by default"
    );
    relay.set_paused(false);
    eventually(STEP, "the Link reconnects", || async { (hub_links().await == 1.0 && link_hubs().await == 1.0).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_hub_link_connection_replays_the_outage_to_every_member_and_a_publish_in_flight_is_sequenced_once() {
    let settings = "[hub]\nhistory_messages = 100000\nhistory_bytes = 67108864\n\n[link]\nshards = 2\n";
    let cluster = start("nsl-cut-replay", 1, settings, true).await;
    let room = "outage";
    let members = members(&cluster, room, 4).await;
    let publisher_member = Member::connect("ws-publisher", &cluster.url(0)).await;
    publisher_member.join(room, Some(0), None);
    publisher_member.wait_joined(room, 1, STEP).await;
    wait_room(&cluster, room, 1, STEP).await;

    let op = json!({"op": "publish", "room": room, "data": {"marker": "exactly-once"}, "id": "p-1"});
    let mut refused_at = None;
    let last = cut_while_publishing(&cluster, room, Duration::from_secs(10), || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publisher_member.send(op.clone());
        let log = publisher_member
            .wait_until(Duration::from_secs(9), "error 503 for the publish in flight at the cut", |log| {
                log.iter().any(|l| matches!(&l.ev, Ev::Error(v) | Ev::Published(v) if v["id"] == "p-1"))
            })
            .await;
        let answer = log
            .iter()
            .find_map(|l| match &l.ev {
                Ev::Error(v) | Ev::Published(v) if v["id"] == "p-1" => Some(l.ev.clone()),
                _ => None,
            })
            .expect("waited for it");
        let Ev::Error(error) = answer else { panic!("a publish sent while the hub is unreachable cannot be acknowledged: {answer:?}") };
        assert_eq!(error["code"], 503, "hub unavailable: {error}");
        assert_eq!(error["room"], room, "{error}");
        assert!(error["retry_after_ms"].as_u64().is_some(), "a retry hint: {error}");
        refused_at = Some(error["retry_after_ms"].as_u64().unwrap_or(0));
    })
    .await;
    let retry_after = refused_at.expect("the publish was refused during the cut");

    // Retry with the same id until the Link is back and the hub acknowledges it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut wait = Duration::from_millis(retry_after.clamp(10, 2000));
    let ack = loop {
        assert!(Instant::now() < deadline, "the retried publish was never acknowledged");
        tokio::time::sleep(wait).await;
        let mark = publisher_member.log().len();
        publisher_member.send(op.clone());
        let log = publisher_member
            .wait_until(STEP, "an answer to the retried publish", |log| {
                log[mark..].iter().any(|l| matches!(&l.ev, Ev::Error(v) | Ev::Published(v) if v["id"] == "p-1"))
            })
            .await;
        match log[mark..].iter().find(|l| matches!(&l.ev, Ev::Error(v) | Ev::Published(v) if v["id"] == "p-1")).map(|l| &l.ev) {
            Some(Ev::Published(v)) => break v.clone(),
            Some(Ev::Error(v)) => {
                assert_eq!(v["code"], 503, "only 'hub unavailable' while reconnecting: {v}");
                wait = Duration::from_millis(v["retry_after_ms"].as_u64().unwrap_or(100).clamp(10, 2000));
            }
            _ => unreachable!(),
        }
    };
    let ack_seq = ack["seq"].as_u64().unwrap_or_else(|| panic!("published without seq: {ack}"));
    assert!(ack["epoch"].as_str().is_some_and(is_epoch), "published carries the epoch: {ack}");

    // Every member: every seq exactly once, in order — the outage replayed, no gap.
    let last = last.max(ack_seq);
    for member in members.iter().chain([&publisher_member]) {
        member.wait_pos(room, last, Duration::from_secs(20)).await;
        let events = member.events();
        assert_eq!(gaps(&events, room), vec![], "{}: history holds the outage, so no gap", member.name);
        assert!(!events.iter().any(|e| matches!(e, Ev::Reset { .. })), "{}: same epoch, no reset", member.name);
        assert_eq!(member.seqs(room), (1..=last).collect::<Vec<_>>(), "{}: every seq once, in order", member.name);
        let marked: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Msg { seq, data, .. } if data["marker"] == "exactly-once" => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(marked, vec![ack_seq], "{}: the retried publish arrives once, at its acknowledged seq", member.name);
    }
    let held: Vec<u64> = history(cluster.hubs[0], room)
        .await
        .iter()
        .filter(|m| m["data"]["marker"] == "exactly-once")
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(held, vec![ack_seq], "the room's history holds the retried publish exactly once");
    let info = get_json(cluster.hubs[0], &format!("/v1/rooms/{room}")).await;
    assert_eq!(info["epoch"], ack["epoch"], "one epoch throughout: {info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_longer_than_the_history_gives_every_member_the_same_exact_gap() {
    let settings = "[hub]\nhistory_messages = 10\n\n[link]\nshards = 2\n";
    let cluster = start("nsl-cut-gap", 1, settings, true).await;
    let room = "outage-gap";
    let members = members(&cluster, room, 4).await;
    let last = cut_while_publishing(&cluster, room, Duration::from_secs(10), || async {}).await;
    let mut first_gap = None;
    for member in &members {
        member.wait_pos(room, last, Duration::from_secs(20)).await;
        let events = member.events();
        let got = gaps(&events, room);
        assert_eq!(got.len(), 1, "{}: one outage beyond the history, one gap: {got:?}", member.name);
        let first_gap = first_gap.get_or_insert_with(|| got.clone());
        assert_eq!(&got, first_gap, "{}: the rejoin's gap is room-wide: the same for every member", member.name);
        let (first, _, resume) = got[0];
        assert_eq!(member.seqs(room), (1..first).chain(resume..=last).collect::<Vec<_>>(), "{}: all but the gap, in order, once", member.name);
        assert!(!events.iter().any(|e| matches!(e, Ev::Reset { .. } | Ev::Close(..) | Ev::End)), "{}", member.name);
    }
}

// ---------------------------------------------------------------------------------------------
// c. The hub SIGKILLed and restarted
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hub_gives_every_connected_member_a_reset_then_exactly_the_new_epoch() {
    let mut cluster = start("nsl-restart", 2, "[link]\nshards = 2\n", false).await;
    let room = "restart";
    let members = members(&cluster, room, 10).await;
    let old_epoch = members[0].wait_joined(room, 1, STEP).await.0;
    for member in &members {
        assert_eq!(member.wait_joined(room, 1, STEP).await.0, old_epoch, "{}: one room, one epoch", member.name);
    }
    for i in 1..=5 {
        let (seq, epoch) = publish_json(cluster.hubs[0], room, &payload(i, 64)).await;
        assert_eq!((seq, epoch.as_str()), (i, old_epoch.as_str()));
    }
    for member in &members {
        member.wait_pos(room, 5, STEP).await;
    }

    cluster.processes.kill("hub-0");
    cluster.spawn_hub(0);
    cluster.wait_links(0, 2, Duration::from_secs(30)).await;
    wait_room(&cluster, room, 2, Duration::from_secs(15)).await;
    let mut new_epoch = String::new();
    for i in 1..=20 {
        let (seq, epoch) = publish_json(cluster.hubs[0], room, &payload(100 + i, 64)).await;
        assert_eq!(seq, i, "the restarted hub starts the room over");
        new_epoch = epoch;
    }
    assert_ne!(new_epoch, old_epoch, "a restarted hub without a store draws a new epoch");
    // Nothing more may arrive: a sentinel published after the 20 must be the next message.
    let (sentinel, epoch) = publish_json(cluster.hubs[0], room, br#"{"sentinel":true}"#).await;
    assert_eq!((sentinel, epoch.as_str()), (21, new_epoch.as_str()));
    for member in &members {
        // Reset, then the new epoch's 20 messages and the sentinel.
        member.wait_position(room, &new_epoch, 21, Duration::from_secs(10)).await;
    }
    for member in &members {
        let events = member.events();
        let fifth = events.iter().position(|e| e.seq_in(room) == Some(5)).expect("got seq 5 of the old epoch");
        let before: Vec<u64> = events[..fifth].iter().filter_map(|e| e.seq_in(room)).collect();
        assert_eq!(before, vec![1, 2, 3, 4], "{}", member.name);
        let after = &events[fifth + 1..];
        match after.first() {
            Some(Ev::Reset { epoch, last_seq, .. }) => {
                assert_eq!(epoch, &new_epoch, "{}: reset to the room's new epoch", member.name);
                assert!(*last_seq <= 20, "{}: reset last_seq {last_seq}", member.name);
            }
            other => panic!("{}: after the restart the first thing must be a reset, got {:?}", member.name, other.map(Ev::short)),
        }
        let rest: Vec<String> = after[1..].iter().map(Ev::short).collect();
        let expected: Vec<String> = (1..=21).map(|seq| format!("msg {room}#{seq}")).collect();
        assert_eq!(rest, expected, "{}: exactly the new epoch's messages after the reset, then the sentinel", member.name);
        assert!(matches!(after.last(), Some(Ev::Msg { data, .. }) if data["sentinel"] == true), "{}: the sentinel is last", member.name);
    }
    let info = get_json(cluster.hubs[0], &format!("/v1/rooms/{room}")).await;
    assert_eq!(info["epoch"], new_epoch.as_str(), "{info}");
    assert_eq!(info["last_seq"], 21, "{info}");
}
