//! Presence in a real cluster: 2 hubs and 3 Links as processes of the binary, WebSocket clients.
//!
//! - member counts converge to the true count within 5 s after 1,000 joins and 300 leaves
//!   spread over the Links, and each member is told at most about once per
//!   `hub.presence_interval_ms` however fast the room churns;
//! - `GET /v1/rooms` (admin key) lists the rooms of both hubs biggest first; 401 / 403 without;
//! - join/leave events: exactly once per change of a user's cluster-wide presence while the room
//!   is under `hub.presence_events_max_members` (20 here), none above it (`"events":false`), and
//!   back on (`"events":true`) when it is under again, with the users resynced; `GET
//!   /v1/rooms/{room}/presence` lists the users below the threshold and `null` above.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use linkcast_core::auth::Claims;
use linkcast_core::hub_directory::{HubDirectory, HubId};

use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::{get, get_as};
use crate::support::ws::{ws_url, Got, WsClient};
use crate::support::{eventually, STEP};

const KEY: &str = "presence-plain-key";
const ADMIN: &str = "presence-admin-key";

/// 2 hubs, 3 Links, presence every second, events up to 20 members.
async fn start_cluster(tag: &'static str) -> Cluster {
    let settings = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\ncluster_secret = \"presence-secret\"\n\n[[auth.keys]]\nkey = \"{ADMIN}\"\nscopes = [\"admin\", \"read\"]\n\n\
         [hub]\npresence_interval_ms = 1000\npresence_events_max_members = 20\n\n[link]\nshards = 1\n"
    );
    Cluster::start(ClusterSpec { tag, hubs: 2, links: 3, settings: &settings, relay: false, link_quic: false }).await
}

/// A room owned by hub `owner`.
fn room_owned_by(owner: u32, tag: &str) -> String {
    let directory = HubDirectory::new([HubId(0), HubId(1)]);
    (0..).map(|i| format!("{tag}-{i}")).find(|room| directory.owner(room) == Some(HubId(owner))).expect("some room")
}

/// A token for user `sub` (the cluster runs without a JWT secret: a dev-mode Link takes the
/// token's claims as they are, which is how a test gets users with chosen ids).
fn token(sub: &str) -> String {
    let claims: Claims = serde_json::from_value(json!({"sub": sub, "exp": 4_000_000_000u64, "rooms": ["*"]})).expect("claims");
    linkcast_core::auth::sign(&claims, "unchecked-in-dev-mode")
}

/// Connects user `sub` to Link `link` (0-based) and joins `room` (with presence events if
/// `presence`); returns the client after `joined`.
async fn member(cluster: &Cluster, link: usize, sub: &str, room: &str, presence: bool) -> WsClient {
    let mut client = WsClient::connect(&ws_url(cluster.links[link], Some(&token(sub)))).await.keep_presence();
    client.send(json!({"op": "join", "room": room, "presence": presence})).await;
    loop {
        let value = client.next_json().await;
        assert_ne!(value["op"], "error", "join refused: {value}");
        if value["op"] == "joined" {
            return client;
        }
    }
}

/// What a watcher got, with arrival times.
type Seen = Vec<(Instant, Value)>;

/// Reads `client` in the background until `stop`; returns everything it got.
fn watch(mut client: WsClient, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(WsClient, Seen)> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match client.next_within(Duration::from_millis(100)).await {
                Some(Got::Json(value)) => seen.push((Instant::now(), value)),
                Some(other) => panic!("watcher connection ended: {other:?}"),
                None => {}
            }
        }
        (client, seen)
    })
}

fn presences(seen: &Seen, room: &str) -> Vec<(Instant, Value)> {
    seen.iter().filter(|(_, v)| v["op"] == "presence" && v["room"] == room).cloned().collect()
}

/// The join/leave events of `room` about users other than `except`, in order.
fn events(seen: &Seen, room: &str, except: &str) -> Vec<String> {
    seen.iter()
        .filter(|(_, v)| v["room"] == room && (v["op"] == "member_joined" || v["op"] == "member_left") && v["user"] != except)
        .map(|(_, v)| format!("{} {}", v["op"].as_str().unwrap_or(""), v["user"].as_str().unwrap_or("")))
        .collect()
}

/// Reads `client` for `wait` and returns what came.
async fn drain(client: &mut WsClient, wait: Duration) -> Seen {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match client.next_within(left).await {
            Some(Got::Json(value)) => seen.push((Instant::now(), value)),
            Some(other) => panic!("connection ended: {other:?}"),
            None => break,
        }
    }
    seen
}

/// Reads `client` until a message matches `want` (within [`STEP`]); returns everything read.
async fn read_until(client: &mut WsClient, what: &str, want: impl Fn(&Value) -> bool) -> Seen {
    let deadline = Instant::now() + STEP;
    let mut seen = Vec::new();
    loop {
        let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| panic!("{what}: not within {STEP:?}; got {seen:?}"));
        match client.next_within(left).await {
            Some(Got::Json(value)) => {
                let done = want(&value);
                seen.push((Instant::now(), value));
                if done {
                    return seen;
                }
            }
            Some(other) => panic!("{what}: connection ended: {other:?}"),
            None => panic!("{what}: not within {STEP:?}; got {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_converge_after_a_thousand_joins_and_three_hundred_leaves_and_rooms_list_across_hubs() {
    let cluster = start_cluster("presence-counts").await;
    let big = room_owned_by(0, "crowd");
    let small = room_owned_by(1, "corner");

    // One watcher per Link, in both rooms; its stream is read throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for link in 0..3 {
        let mut client = member(&cluster, link, &format!("watcher-{link}"), &big, false).await;
        client.send(json!({"op": "join", "room": small})).await;
        watchers.push(watch(client, stop.clone()));
    }
    let churn_start = Instant::now();
    // 997 more members, spread over the Links, joined 100 at a time.
    let mut members: Vec<WsClient> = Vec::new();
    for batch in 0..10 {
        let mut joins = tokio::task::JoinSet::new();
        for i in (batch * 100)..((batch + 1) * 100).min(997) {
            let (url, room) = (format!("ws://{}/ws", cluster.links[i % 3]), big.clone());
            joins.spawn(async move {
                let mut client = WsClient::connect(&url).await;
                client.send(json!({"op": "join", "room": room})).await;
                loop {
                    let value = client.next_json().await;
                    assert_ne!(value["op"], "error", "{value}");
                    if value["op"] == "joined" {
                        return client;
                    }
                }
            });
        }
        while let Some(client) = joins.join_next().await {
            members.push(client.expect("join task"));
        }
    }
    assert_eq!(members.len() + 3, 1000);
    // 300 leaves, on every Link: 150 `leave` ops, 150 closed connections.
    for (i, mut client) in members.drain(..300).enumerate() {
        if i % 2 == 0 {
            client.send(json!({"op": "leave", "room": big})).await;
            read_until(&mut client, "left", |v| v["op"] == "left").await;
        } else {
            client.close().await;
        }
    }
    let last_leave = Instant::now();

    // The owner's count (asked through the other hub) and every watcher's converge within 5 s.
    let converged = eventually(Duration::from_secs(5), "GET presence says 700", || async {
        let answer = get_as(cluster.hubs[1], &format!("/v1/rooms/{big}/presence"), KEY).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let body = answer.json();
        (body["members"] == 700).then_some(body)
    })
    .await;
    assert_eq!(converged["events"], false, "700 > 20: counts only");
    assert_eq!(converged["users"], Value::Null);
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(last_leave.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let churn = churn_start.elapsed();
    let mut kept = Vec::new();
    for watcher in watchers {
        let (client, seen) = watcher.await.expect("watcher");
        kept.push(client);
        let counts = presences(&seen, &big);
        let last = counts.last().map(|(at, v)| (*at, v.clone())).expect("some presence");
        assert_eq!(last.1["members"], 700, "the last count a member got is the true one: {:?}", last.1);
        assert!(last.0 <= last_leave + Duration::from_secs(5), "converged within 5 s of the last leave");
        assert!(counts.iter().all(|(_, v)| v["events"] == Value::Null || v["events"] == false), "{counts:?}");
        // At most about one per second, however fast the room churned (+2: the one at the
        // join and a boundary).
        let allowed = churn.as_secs() as usize + 2;
        assert!(counts.len() <= allowed, "{} presence messages in {churn:?} (allowed {allowed})", counts.len());
        assert!(counts.len() >= 2, "the count was told during the churn: {counts:?}");
    }

    // The admin's room list: both hubs' rooms, biggest first, from either hub.
    for via in [0, 1] {
        let answer = get_as(cluster.hubs[via], "/v1/rooms?limit=10", ADMIN).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let body = answer.json();
        let rooms: Vec<(String, u64)> = body["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| (r["room"].as_str().unwrap_or("").to_owned(), r["members"].as_u64().unwrap_or(0)))
            .collect();
        // The broadcast room (every open connection is in it) is listed too; personal rooms
        // only with a `user:` prefix.
        let all = rooms.iter().find(|(room, _)| room == "all").map(|(_, members)| *members);
        assert!(all.is_some_and(|n| n >= 700), "the broadcast room counts every connection: {rooms:?}");
        let rooms: Vec<(String, u64)> = rooms.into_iter().filter(|(room, _)| room != "all").collect();
        assert_eq!(rooms, vec![(big.clone(), 700), (small.clone(), 3)], "via hub {via}");
        assert_eq!(body["incomplete_hubs"], json!([]));
        assert_eq!(body["rooms"][0]["links"].as_array().map(Vec::len), Some(3));
    }
    let prefixed = get_as(cluster.hubs[0], "/v1/rooms?prefix=corner&limit=5", ADMIN).await.json();
    assert_eq!(prefixed["rooms"].as_array().map(Vec::len), Some(1), "{prefixed}");
    let limited = get_as(cluster.hubs[1], "/v1/rooms?prefix=c&limit=1", ADMIN).await.json();
    assert_eq!(limited["rooms"][0]["room"], big.as_str());
    assert_eq!(limited["rooms"].as_array().map(Vec::len), Some(1));
    assert_eq!(get(cluster.hubs[0], "/v1/rooms").await.status, 401);
    assert_eq!(get_as(cluster.hubs[0], "/v1/rooms", KEY).await.status, 403, "a publishing key may not list rooms");
    drop(members);
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_events_once_per_change_below_the_threshold_and_none_above() {
    let cluster = start_cluster("presence-events").await;
    let room = room_owned_by(1, "stage");
    let presence_of = |room: String| {
        let hub = cluster.hubs[0];
        async move {
            let answer = get_as(hub, &format!("/v1/rooms/{room}/presence"), KEY).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            answer.json()
        }
    };
    // The watcher on Link 1 asked for events; a member without the flag gets none.
    let mut watcher = member(&cluster, 0, "watcher", &room, true).await;
    let mut plain = member(&cluster, 1, "plain", &room, false).await;
    let mut seen = Vec::new();

    // alice: first connection (Link 2) → joined; a second one (Link 3) → nothing; the first
    // leaves → nothing; the last leaves → left.
    let alice_a = member(&cluster, 1, "alice", &room, false).await;
    seen.extend(read_until(&mut watcher, "member_joined alice", |v| v["op"] == "member_joined" && v["user"] == "alice").await);
    let mut alice_b = member(&cluster, 2, "alice", &room, false).await;
    eventually(STEP, "alice and the others listed", || async {
        let body = presence_of(room.clone()).await;
        (body["users"] == json!(["alice", "plain", "watcher"])).then_some(())
    })
    .await;
    alice_a.close().await;
    seen.extend(drain(&mut watcher, Duration::from_millis(1500)).await);
    alice_b.send(json!({"op": "leave", "room": room})).await;
    seen.extend(read_until(&mut watcher, "member_left alice", |v| v["op"] == "member_left" && v["user"] == "alice").await);
    seen.extend(drain(&mut watcher, Duration::from_millis(1500)).await);
    assert_eq!(
        events(&seen, &room, "watcher").iter().filter(|e| e.ends_with(" alice")).cloned().collect::<Vec<_>>(),
        vec!["member_joined alice", "member_left alice"],
        "exactly once per change"
    );
    assert_eq!(presence_of(room.clone()).await["users"], json!(["plain", "watcher"]));

    // Over the threshold (20): 22 more users. The count says events off; no events after it.
    let mut crowd = Vec::new();
    for i in 0..22 {
        crowd.push(member(&cluster, i % 3, &format!("fan-{i:02}"), &room, false).await);
    }
    let mut over = read_until(&mut watcher, "presence with events off", |v| v["op"] == "presence" && v["events"] == false).await;
    let off = over.last().map(|(_, v)| v.clone()).expect("presence");
    assert!(off["members"].as_u64().is_some_and(|n| n > 20), "{off}");
    assert_eq!(presence_of(room.clone()).await["users"], Value::Null, "no user list above the threshold");
    over.clear();
    let late = member(&cluster, 2, "late", &room, false).await;
    crowd.truncate(20); // two fans leave
    over.extend(drain(&mut watcher, Duration::from_millis(2500)).await);
    assert_eq!(events(&over, &room, "watcher"), Vec::<String>::new(), "no join/leave events above the threshold");
    assert!(presences(&over, &room).iter().all(|(_, v)| v["events"] == false), "{over:?}");

    // Back under: the next count says events on (once), the Links resync their users, and
    // events flow again.
    drop(crowd);
    drop(late);
    let back = read_until(&mut watcher, "presence with events on", |v| v["op"] == "presence" && v["events"] == true).await;
    assert_eq!(events(&back, &room, "watcher"), Vec::<String>::new(), "leaving while off raised nothing");
    eventually(STEP, "the users resynced", || async {
        let body = presence_of(room.clone()).await;
        (body["events"] == true && body["users"] == json!(["plain", "watcher"])).then_some(())
    })
    .await;
    let mut seen = Vec::new();
    let bob = member(&cluster, 2, "bob", &room, false).await;
    seen.extend(read_until(&mut watcher, "member_joined bob", |v| v["op"] == "member_joined" && v["user"] == "bob").await);
    bob.close().await;
    seen.extend(read_until(&mut watcher, "member_left bob", |v| v["op"] == "member_left" && v["user"] == "bob").await);
    seen.extend(drain(&mut watcher, Duration::from_millis(1500)).await);
    assert_eq!(events(&seen, &room, "watcher"), vec!["member_joined bob", "member_left bob"]);
    let later: Vec<Value> = presences(&seen, &room).into_iter().map(|(_, v)| v).collect();
    assert!(later.iter().all(|v| v["events"] == Value::Null), "\"events\":true only once: {later:?}");

    // The member without the flag got counts, never events.
    let plain_seen = drain(&mut plain, Duration::from_millis(500)).await;
    assert!(!presences(&plain_seen, &room).is_empty(), "counts reach every member");
    assert!(events(&plain_seen, &room, "").is_empty(), "events only with \"presence\": true");
}
