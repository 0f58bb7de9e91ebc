//! No silent loss in real faults, with real processes: a `linkcast hub` and `linkcast link`
//! processes on loopback (one TOML config in a temp dir, random free ports), real WebSocket
//! members, HTTP publishes. Each process is signalled through the pid this test spawned.
//! Every member's traffic goes through the invariant checker of `fault_support` (per room:
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
//! - the hub SIGKILLed and restarted on the same ports: every member still connected to its
//!   Link gets `reset` to the new epoch, then exactly the new epoch's messages.

mod fault_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fault_support::*;
use serde_json::{json, Value};

/// A hub and Links as child processes.
struct Cluster {
    processes: Processes,
    config: String,
    /// The hub's HTTP address.
    hub: SocketAddr,
    /// Where the hub really listens for Links (the config may list a relay instead).
    hub_quic: SocketAddr,
    /// Each Link's WebSocket address.
    links: Vec<SocketAddr>,
}

impl Cluster {
    /// Writes the config and starts one hub and `links` Links.
    async fn start(tag: &str, links: usize, settings: &str) -> Cluster {
        let hub_quic = local(free_udp_port());
        Cluster::start_with_hub_quic(tag, links, settings, hub_quic, hub_quic).await
    }

    /// Like [`Cluster::start`] with the Links dialing `dialed` (a relay) and the hub listening
    /// on `hub_quic`.
    async fn start_with_hub_quic(tag: &str, links: usize, settings: &str, dialed: SocketAddr, hub_quic: SocketAddr) -> Cluster {
        let processes = Processes::new(tag);
        let hub = local(free_tcp_port());
        let mut toml = format!("[auth]\ncluster_secret = \"no-silent-loss\"\n\n{settings}\n\n");
        toml.push_str(&format!("[[hubs]]\nid = 0\nhttp = \"{hub}\"\nquic = \"{dialed}\"\n\n"));
        let link_addrs: Vec<SocketAddr> = (0..links).map(|_| local(free_tcp_port())).collect();
        for (i, ws) in link_addrs.iter().enumerate() {
            toml.push_str(&format!("[[links]]\nid = {}\nws = \"{ws}\"\nquic = \"127.0.0.1:{}\"\n\n", i + 1, free_udp_port()));
        }
        let config = processes.write_config(&toml);
        let mut cluster = Cluster { processes, config, hub, hub_quic, links: link_addrs };
        cluster.spawn_hub();
        for id in 1..=links {
            let config = cluster.config.clone();
            cluster.processes.spawn(&format!("link-{id}"), &["link", "--config", &config, "--id", &id.to_string(), "--no-quic"]);
        }
        cluster.wait_links(links, Duration::from_secs(20)).await;
        cluster
    }

    fn spawn_hub(&mut self) {
        let (config, quic) = (self.config.clone(), self.hub_quic.to_string());
        self.processes.spawn("hub-0", &["hub", "--config", &config, "--id", "0", "--quic", &quic]);
    }

    /// Waits until the hub sees `n` Links connected.
    async fn wait_links(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some((200, text)) = try_http(self.hub, "GET", "/metrics").await {
                if metric(&text, "linkcast_hub_links", &[("hub", "0")]) == n as f64 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the hub does not see {n} Links within {within:?}; hub log:\n{}",
                self.processes.log_tail("hub-0", 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, link: usize) -> String {
        format!("ws://{}/ws", self.links[link])
    }

    /// `members` members on each Link, joined to `room` from seq 0; returns them once the hub
    /// counts them all.
    async fn members(&self, room: &str, per_link: usize) -> Vec<Member> {
        let mut members = Vec::new();
        for link in 0..self.links.len() {
            for i in 0..per_link {
                let member = Member::connect(format!("link{}-member{i}", link + 1), &self.url(link)).await;
                member.join(room, Some(0), None);
                members.push(member);
            }
        }
        for member in &members {
            let (_, last_seq) = member.wait_joined(room, 1, STEP).await;
            assert_eq!(last_seq, 0, "{}: a fresh room", member.name);
        }
        self.wait_room(room, self.links.len(), STEP).await;
        members
    }

    /// Waits until the hub lists `links` Links holding members of `room` (interest: what
    /// decides delivery; the member count a Link reports may lag behind its joins).
    async fn wait_room(&self, room: &str, links: usize, within: Duration) -> Value {
        let hub = self.hub;
        let deadline = Instant::now() + within;
        loop {
            let answer = try_http(hub, "GET", &format!("/v1/rooms/{room}")).await;
            if let Some((200, body)) = &answer {
                if let Ok(info) = serde_json::from_str::<Value>(body) {
                    if info["links"].as_array().map(Vec::len) == Some(links) && info["members"].as_u64().is_some_and(|m| m > 0) {
                        return info;
                    }
                }
            }
            assert!(Instant::now() < deadline, "the hub does not list {links} Links in {room} within {within:?}; last answer {answer:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn hub_metric(&self, name: &str) -> f64 {
        metric(&metrics_text(self.hub).await, name, &[("hub", "0")])
    }
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
            let (seq, _) = publish(hub, &room, &payload(i, 100), None).await;
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
    let mut cluster = Cluster::start("nsl-queue", 1, settings).await;
    let room = "burst";
    let members = cluster.members(room, 6).await;
    let dropped_before = cluster.hub_metric("linkcast_hub_link_queue_dropped_total").await;

    // Stop the Link; publish ~6.5 MB (well past QUIC's stream window and the 32 KiB queue).
    cluster.processes.stop("link-1");
    let stopped = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (next, hub) = (next.clone(), cluster.hub);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > BURST {
                        return;
                    }
                    publish(hub, room, &payload(i, SIZE), None).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..=5 {
        let (seq, _) = publish(cluster.hub, room, &payload(BURST + i, 64), None).await;
        assert_eq!(seq, BURST + i);
    }
    let last = BURST + 5;
    for member in &members {
        member.wait_pos(room, last, Duration::from_secs(20)).await;
    }
    let dropped = cluster.hub_metric("linkcast_hub_link_queue_dropped_total").await - dropped_before;

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
async fn cut_while_publishing<F, Fut>(cluster: &Cluster, relay: &Relay, room: &str, cut: Duration, during_cut: F) -> u64
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let running = Arc::new(AtomicBool::new(true));
    let last = Arc::new(AtomicU64::new(0));
    let publisher = steady_publisher(cluster.hub, room, Duration::from_millis(20), running.clone(), last.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.set_paused(true);
    let cut_at = Instant::now();
    during_cut().await;
    tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
    let before_restore = last.load(Ordering::Relaxed);
    relay.set_paused(false);
    assert!(relay.dropped() > 0, "the relay really cut the path");
    // The hub dropped the Link (idle timeout) and lists it again once it is back.
    cluster.wait_room(room, 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let last = last.load(Ordering::Relaxed);
    assert!(last > before_restore && before_restore > 0, "published before, during and after the cut");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_hub_link_connection_replays_the_outage_to_every_member_and_a_publish_in_flight_is_sequenced_once() {
    let (relay_addr, hub_quic) = (local(free_udp_port()), local(free_udp_port()));
    let relay = Relay::start(relay_addr, hub_quic).await;
    let settings = "[hub]\nhistory_messages = 100000\nhistory_bytes = 67108864\n\n[link]\nshards = 2\n";
    let cluster = Cluster::start_with_hub_quic("nsl-cut-replay", 1, settings, relay_addr, hub_quic).await;
    let room = "outage";
    let members = cluster.members(room, 4).await;
    let publisher_member = Member::connect("ws-publisher", &cluster.url(0)).await;
    publisher_member.join(room, Some(0), None);
    publisher_member.wait_joined(room, 1, STEP).await;
    cluster.wait_room(room, 1, STEP).await;

    let op = json!({"op": "publish", "room": room, "data": {"marker": "exactly-once"}, "id": "p-1"});
    let mut refused_at = None;
    let last = cut_while_publishing(&cluster, &relay, room, Duration::from_secs(10), || async {
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
    let held: Vec<u64> = history(cluster.hub, room)
        .await
        .iter()
        .filter(|m| m["data"]["marker"] == "exactly-once")
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(held, vec![ack_seq], "the room's history holds the retried publish exactly once");
    let info = get_json(cluster.hub, &format!("/v1/rooms/{room}")).await;
    assert_eq!(info["epoch"], ack["epoch"], "one epoch throughout: {info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_longer_than_the_history_gives_every_member_the_same_exact_gap() {
    let relay_addr = local(free_udp_port());
    let hub_quic = local(free_udp_port());
    let relay = Relay::start(relay_addr, hub_quic).await;
    let settings = "[hub]\nhistory_messages = 10\n\n[link]\nshards = 2\n";
    let cluster = Cluster::start_with_hub_quic("nsl-cut-gap", 1, settings, relay_addr, hub_quic).await;
    let room = "outage-gap";
    let members = cluster.members(room, 4).await;
    let last = cut_while_publishing(&cluster, &relay, room, Duration::from_secs(10), || async {}).await;
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
    let mut cluster = Cluster::start("nsl-restart", 2, "[link]\nshards = 2\n").await;
    let room = "restart";
    let members = cluster.members(room, 10).await;
    let old_epoch = members[0].wait_joined(room, 1, STEP).await.0;
    for member in &members {
        assert_eq!(member.wait_joined(room, 1, STEP).await.0, old_epoch, "{}: one room, one epoch", member.name);
    }
    for i in 1..=5 {
        let (seq, epoch) = publish(cluster.hub, room, &payload(i, 64), None).await;
        assert_eq!((seq, epoch.as_str()), (i, old_epoch.as_str()));
    }
    for member in &members {
        member.wait_pos(room, 5, STEP).await;
    }

    cluster.processes.kill("hub-0");
    cluster.spawn_hub();
    cluster.wait_links(2, Duration::from_secs(30)).await;
    cluster.wait_room(room, 2, Duration::from_secs(15)).await;
    let mut new_epoch = String::new();
    for i in 1..=20 {
        let (seq, epoch) = publish(cluster.hub, room, &payload(100 + i, 64), None).await;
        assert_eq!(seq, i, "the restarted hub starts the room over");
        new_epoch = epoch;
    }
    assert_ne!(new_epoch, old_epoch, "a restarted hub without a store draws a new epoch");
    for member in &members {
        // Reset, then the new epoch's 20 messages.
        member.wait_position(room, &new_epoch, 20, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more may arrive
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
        let expected: Vec<String> = (1..=20).map(|seq| format!("msg {room}#{seq}")).collect();
        assert_eq!(rest, expected, "{}: exactly the new epoch's messages after the reset", member.name);
    }
    let info = get_json(cluster.hub, &format!("/v1/rooms/{room}")).await;
    assert_eq!(info["epoch"], new_epoch.as_str(), "{info}");
    assert_eq!(info["last_seq"], 20, "{info}");
}
