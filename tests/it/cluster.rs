//! A real cluster on loopback: 2 hubs and 3 Links as separate processes of the `linkcast`
//! binary, one shared TOML config (written to a temp dir), Links ↔ hubs over QUIC.
//!
//! - rooms owned by either hub; publishes sent to the non-owner hub are forwarded and
//!   sequenced once;
//! - a client on a Link outside the room's placement still gets every message (interest, not
//!   placement, decides delivery);
//! - hub→Link sends per publish = number of Links with members (read from `/metrics`);
//! - a Link process killed mid-stream: its clients re-locate, reconnect to another Link and
//!   resume with `since`; nothing lost, nothing duplicated.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use linkcast_core::hub_directory::{HubDirectory, HubId};

use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::{get, get_as, hub_metric, publish_ok, try_get_as};
use crate::support::ws::{Got, WsClient};
use crate::support::{eventually, STEP};

const KEY: &str = "cluster-test-key";

/// 2 hubs and 3 Links (Links ↔ hubs over QUIC), up: both hubs see all three Links.
async fn start_cluster() -> Cluster {
    let settings = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\ncluster_secret = \"cluster-test-secret\"\n\n[hub]\ngroup_size = 2\n\n[link]\nshards = 1\n"
    );
    Cluster::start(ClusterSpec { tag: "cluster", hubs: 2, links: 3, settings: &settings, relay: false, link_quic: true }).await
}

/// Published-message and hub→Link-send counters of hub `id`.
async fn counters(cluster: &Cluster, id: usize) -> (f64, f64) {
    let text = get(cluster.hub_admin[id], "/metrics").await.text();
    (hub_metric(&text, "linkcast_hub_published_total", id as u32), hub_metric(&text, "linkcast_hub_link_sends_total", id as u32))
}

/// A room owned by hub `owner`.
fn room_owned_by(owner: u32, tag: &str) -> String {
    let directory = HubDirectory::new([HubId(0), HubId(1)]);
    (0..).map(|i| format!("{tag}-{i}")).find(|room| directory.owner(room) == Some(HubId(owner))).expect("some room")
}

/// Link ids located for `room` (asking hub `via`).
async fn located(cluster: &Cluster, via: usize, room: &str) -> Vec<usize> {
    let answer = get_as(cluster.hubs[via], &format!("/v1/locate?room={room}"), KEY).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()["links"].as_array().expect("links").iter().filter_map(|l| l["id"].as_u64()).map(|id| id as usize).collect()
}

/// A client that receives `room` until seq `total`, reconnecting through locate (trying the
/// located Links in order, alternating hubs) and rejoining with `since` after any drop.
async fn resuming_client(hubs: Vec<SocketAddr>, room: String, mut client: WsClient, total: u64) -> (Vec<u64>, usize) {
    let mut seqs = Vec::new();
    let mut reconnects = 0;
    let mut last = 0u64;
    loop {
        match client.next_within(Duration::from_secs(20)).await.expect("traffic in time") {
            Got::Json(message) => {
                assert!(message.get("op").is_none() || message["op"] == "joined", "unexpected {message}");
                if let Some(seq) = message["seq"].as_u64() {
                    seqs.push(seq);
                    last = seq;
                    if last >= total {
                        return (seqs, reconnects);
                    }
                }
            }
            Got::Close(..) | Got::End => {
                reconnects += 1;
                let deadline = Instant::now() + Duration::from_secs(30);
                client = 'reconnect: loop {
                    assert!(Instant::now() < deadline, "could not reconnect");
                    let hub = hubs[reconnects % hubs.len()];
                    if let Some(answer) = try_get_as(hub, &format!("/v1/locate?room={room}"), KEY).await {
                        for link in answer.json()["links"].as_array().cloned().unwrap_or_default() {
                            if let Ok(mut fresh) = WsClient::try_connect(link["ws"].as_str().unwrap_or("")).await {
                                fresh.send(serde_json::json!({"op": "join", "room": room, "since": last})).await;
                                break 'reconnect fresh;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
            }
        }
    }
}

async fn joined_client(url: &str, room: &str) -> WsClient {
    let mut client = WsClient::connect(url).await;
    let (before, last_seq) = client.join(room, Some(0)).await;
    assert!(before.is_empty() && last_seq == 0, "fresh room");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_three_links_deliver_by_interest_and_survive_a_link_crash() {
    let mut cluster = start_cluster().await;
    let expected = |n: u64| (1..=n).collect::<Vec<u64>>();

    // Room A (hub 0): members on one Link of its group and on the Link outside it.
    // Room B (hub 1): members on all three Links.
    for (owner, tag, spread) in [(0usize, "alpha", 2usize), (1, "beta", 3)] {
        let room = room_owned_by(owner as u32, tag);
        let other = 1 - owner;
        let group = located(&cluster, other, &room).await; // forwarded to the owner
        assert_eq!(group, located(&cluster, owner, &room).await, "one placement per room");
        assert_eq!(group.len(), 2);
        let outside = (1..=3).find(|id| !group.contains(id)).expect("third Link");
        let on: Vec<usize> = if spread == 2 { vec![group[0], outside, outside] } else { vec![1, 2, 3, group[0]] };
        let mut clients = Vec::new();
        for &link in &on {
            clients.push(joined_client(&cluster.url(link - 1), &room).await);
        }
        // Interest reaches the owner asynchronously; wait until it lists every Link with members.
        eventually(STEP, &format!("the owner of {room} lists {spread} Links with members"), || async {
            let info = get_as(cluster.hubs[other], &format!("/v1/rooms/{room}"), KEY).await.json();
            (info["links"].as_array().map(Vec::len) == Some(spread)).then_some(())
        })
        .await;
        let (published_before, sends_before) = counters(&cluster, owner).await;
        let (other_published_before, _) = counters(&cluster, other).await;
        for i in 1..=100u64 {
            // Alternate hubs: half the publishes are forwarded by the non-owner.
            let via = cluster.hubs[(i as usize) % 2];
            assert_eq!(publish_ok(via, &room, Some(KEY), format!("{{\"i\":{i}}}").as_bytes()).await, i);
        }
        for (n, mut client) in clients.into_iter().enumerate() {
            let mut seqs = Vec::new();
            while seqs.len() < 100 {
                let message = client.next_json().await;
                seqs.push(message["seq"].as_u64().unwrap_or_else(|| panic!("room message expected: {message}")));
            }
            assert_eq!(seqs, expected(100), "room {room}, client {n} on Link {}", on[n]);
            client.close().await;
        }
        let (published_after, sends_after) = counters(&cluster, owner).await;
        assert_eq!(published_after - published_before, 100.0, "sequenced once, by the owner");
        assert_eq!(counters(&cluster, other).await.0, other_published_before, "the non-owner sequences nothing");
        assert_eq!(sends_after - sends_before, 100.0 * spread as f64, "hub→Link sends per publish = Links with members");
    }

    // A Link dies mid-stream: its clients resume elsewhere with `since`.
    let room = room_owned_by(1, "crash");
    let victim = located(&cluster, 0, &room).await[0];
    let survivor = (1..=3).find(|&id| id != victim).expect("another Link");
    let mut tasks = Vec::new();
    for link in [victim, victim, victim, survivor] {
        let client = joined_client(&cluster.url(link - 1), &room).await;
        tasks.push(tokio::spawn(resuming_client(cluster.hubs.clone(), room.clone(), client, 300)));
    }
    // Interest reaches the owner asynchronously: wait until it lists both Links.
    let mut both = vec![victim as u64, survivor as u64];
    both.sort_unstable();
    eventually(STEP, &format!("the owner of {room} lists Links {both:?}"), || async {
        let info = get_as(cluster.hubs[0], &format!("/v1/rooms/{room}"), KEY).await.json();
        let mut links: Vec<u64> = info["links"].as_array().map(|l| l.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default();
        links.sort_unstable();
        (links == both).then_some(())
    })
    .await;
    for i in 1..=300u64 {
        assert_eq!(publish_ok(cluster.hubs[(i as usize) % 2], &room, Some(KEY), b"\"tick\"").await, i);
        if i == 100 {
            cluster.processes.kill(&format!("link-{victim}"));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut reconnected = 0;
    for task in tasks {
        let (seqs, reconnects) = tokio::time::timeout(Duration::from_secs(60), task).await.expect("in time").expect("client");
        assert_eq!(seqs, expected(300), "nothing lost, nothing duplicated");
        reconnected += reconnects;
    }
    assert!(reconnected >= 3, "the victim's three clients reconnected ({reconnected})");
}
