//! `linkcast top` and the hottest-rooms endpoint against a real cluster: 2 hubs and 2 Links as
//! processes of the binary (every node with its own admin listener, so each Link's `/metrics`
//! is its own), WebSocket members on both Links, publishes into three rooms at different rates.
//!
//! - `linkcast top --config F --once --json` (the binary, run as a child process) exits 0 and
//!   prints one JSON document: the hottest room first and the three rooms in rate order, each
//!   with its owner hub and member count; each Link's connection count is what the test
//!   connected to it; each Link's deliveries/s is above 0 (a rate from two scrapes); both hubs
//!   are up and see both Links; no hub is missing from the room list;
//! - `GET /v1/top/rooms`: 401 without a key, 403 with a publishing key, 200 with the admin key
//!   from either hub (merged across hubs, rate order, `limit` honoured, 400 for `limit=0`);
//!   `local=1` answers only the asked hub's own rooms.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use linkcast_core::hub_directory::{HubDirectory, HubId};

use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::{get, get_as, publish, try_get_as};
use crate::support::ws::{ws_url, WsClient};

const KEY: &str = "top-publish-key";
const ADMIN: &str = "top-admin-key";

/// The three rooms, hottest first, and how many messages each gets per publishing round.
const ROOMS: [(&str, usize); 3] = [("top-hot", 6), ("top-warm", 3), ("top-cool", 1)];

/// Members per Link (Link ids 1 and 2).
const MEMBERS: [usize; 2] = [3, 2];

/// 2 hubs and 2 Links, each with an admin listener (which needs the admin key); waits until
/// both hubs see both Links and each Link has both hubs up (`Cluster::start` does both).
async fn start(tag: &str) -> Cluster {
    let settings = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\ncluster_secret = \"top-secret\"\n\n[[auth.keys]]\nkey = \"{ADMIN}\"\nscopes = [\"admin\", \"read\"]\n\n\
         [link]\nshards = 1\n"
    );
    Cluster::start_with_admin_key(ClusterSpec { tag, hubs: 2, links: 2, settings: &settings, relay: false, link_quic: false }, Some(ADMIN)).await
}

/// Connects `MEMBERS[i]` members to Link `i + 1`, each in every room of [`ROOMS`].
async fn connect_members(nodes: &Cluster) -> Vec<WsClient> {
    let mut members = Vec::new();
    for (link, &n) in nodes.links.iter().zip(&MEMBERS) {
        for _ in 0..n {
            let mut client = WsClient::connect(&ws_url(*link, None)).await;
            for (room, _) in ROOMS {
                client.join(room, None).await;
            }
            members.push(client);
        }
    }
    members
}

/// Publishes rounds of [`ROOMS`] (6 : 3 : 1 messages) through both hubs until `stop`.
fn publish_until(hubs: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (room, per_round) in ROOMS {
                for _ in 0..per_round {
                    let hub = hubs[(sent % 2) as usize];
                    let res = publish(hub, room, Some(KEY), b"{\"n\":1}").await;
                    assert_eq!(res.status, 200, "publish to {room}: {}", res.text());
                    sent += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    })
}

/// The owner hub of `room`.
fn owner(room: &str) -> u64 {
    let directory = HubDirectory::new([HubId(0), HubId(1)]);
    u64::from(directory.owner(room).expect("an owner").0)
}

fn room_names(body: &Value) -> Vec<String> {
    body["rooms"].as_array().expect("rooms").iter().map(|r| r["room"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_json_shows_hottest_rooms_links_and_deliveries() {
    let nodes = start("top-once").await;
    let members = connect_members(&nodes).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_until(nodes.hubs.clone(), stop.clone());
    // Let every room's rate window fill a little before top looks.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let config = nodes.config.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_linkcast"))
            .args(["top", "--config", &config, "--api-key", ADMIN, "--once", "--json", "--interval-ms", "1000"])
            .env("RUST_LOG", "warn")
            .output()
    })
    .await
    .expect("join")
    .expect("run linkcast top");
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.expect("publisher");
    assert!(sent > 0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "linkcast top failed: {}\nstdout: {stdout}\nstderr: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let view: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("top --json is not one JSON document ({e}): {stdout}"));

    // The hottest rooms, in rate order, each at its owner with every member counted.
    let rooms: Vec<String> = room_names(&view).into_iter().filter(|r| r.starts_with("top-")).collect();
    assert_eq!(rooms, ROOMS.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(), "rate order: {view}");
    assert_eq!(view["rooms"][0]["room"], "top-hot", "the hottest room first: {view}");
    for room in view["rooms"].as_array().expect("rooms") {
        let name = room["room"].as_str().unwrap_or("");
        assert_eq!(room["hub"].as_u64(), Some(owner(name)), "{room}");
        assert_eq!(room["members"].as_u64(), Some(5), "{room}");
        assert!(room["publish_rate"].as_f64().is_some_and(|r| r > 0.0), "{room}");
    }
    assert_eq!(view["hubs_missing"], serde_json::json!([]));
    assert_eq!(view["rooms_error"], Value::Null);

    // Per Link: what was connected, and messages flowing.
    let links = view["links"].as_array().expect("links");
    assert_eq!(links.len(), 2, "{view}");
    for (i, link) in links.iter().enumerate() {
        assert_eq!(link["id"].as_u64(), Some(i as u64 + 1), "{link}");
        assert_eq!(link["up"], true, "{link}");
        assert_eq!(link["connections"].as_f64(), Some(MEMBERS[i] as f64), "{link}");
        assert!(link["deliveries_per_sec"].as_f64().is_some_and(|d| d > 0.0), "deliveries/s above 0: {link}");
    }
    // Both hubs up, each seeing both Links, publishing.
    let hubs = view["hubs"].as_array().expect("hubs");
    assert_eq!(hubs.len(), 2, "{view}");
    for (i, hub) in hubs.iter().enumerate() {
        assert_eq!(hub["id"].as_u64(), Some(i as u64));
        assert_eq!(hub["up"], true, "{hub}");
        assert_eq!(hub["links"].as_f64(), Some(2.0), "{hub}");
        assert!(hub["published_per_sec"].as_f64().is_some_and(|p| p > 0.0), "{hub}");
    }
    drop(members);
    drop(nodes.processes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_rooms_endpoint_needs_the_admin_key_and_merges_hubs() {
    assert!((0..2).all(|hub| ROOMS.iter().any(|(r, _)| owner(r) == hub)), "the rooms are spread over both hubs, so the answer is a merge");
    let nodes = start("top-api").await;
    for (room, per_round) in ROOMS {
        for _ in 0..per_round * 4 {
            let res = publish(nodes.hubs[0], room, Some(KEY), b"x").await;
            assert_eq!(res.status, 200, "{}", res.text());
        }
    }
    assert_eq!(get(nodes.hubs[0], "/v1/top/rooms").await.status, 401);
    assert_eq!(get_as(nodes.hubs[0], "/v1/top/rooms", KEY).await.status, 403, "a publishing key may not list rooms");
    assert_eq!(get_as(nodes.hubs[0], "/v1/top/rooms", "wrong-key").await.status, 401);
    assert_eq!(get_as(nodes.hubs[1], "/v1/top/rooms?limit=0", ADMIN).await.status, 400);
    for via in 0..2 {
        let res = get_as(nodes.hubs[via], "/v1/top/rooms", ADMIN).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let body = res.json();
        assert_eq!(room_names(&body), ROOMS.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>(), "via hub {via}: {body}");
        assert_eq!(body["hubs_missing"], serde_json::json!([]));
        let rates: Vec<f64> = body["rooms"].as_array().expect("rooms").iter().filter_map(|r| r["publish_rate"].as_f64()).collect();
        assert!(rates.windows(2).all(|w| w[0] > w[1]), "strictly by rate: {rates:?}");
        let one = get_as(nodes.hubs[via], "/v1/top/rooms?limit=1", ADMIN).await.json();
        assert_eq!(room_names(&one), vec!["top-hot".to_owned()]);
    }
    // `local=1`: one hub's own rooms only.
    for hub in 0..2u64 {
        let body = get_as(nodes.hubs[hub as usize], "/v1/top/rooms?local=1", ADMIN).await.json();
        let expected: Vec<String> = ROOMS.iter().filter(|(r, _)| owner(r) == hub).map(|(r, _)| r.to_string()).collect();
        assert_eq!(room_names(&body), expected, "hub {hub}: {body}");
    }
    // The admin listener still answers (the nodes were healthy throughout).
    assert_eq!(try_get_as(nodes.hub_admin[0], "/healthz", ADMIN).await.map(|r| r.status), Some(200));
    drop(nodes.processes);
}
