//! What a client can do to a Link after (and around) authentication, each as an attack with
//! real sockets, asserting the clear refusal and that a bystander keeps getting its messages:
//! - a non-reading client catching up 4 full rooms: its replays are paged as its socket drains
//!   (the Link holds about `link.replay_bytes` for it, not rooms × history), and once it reads
//!   it gets every message, in order, without a gap;
//! - a catch-up of 4 full rooms by a reading client is not closed as a "publish flood";
//! - a join flood is answered 429 with a retry hint, never closed;
//! - an oversize publish with `link.max_message_bytes` above the frame limit closes that client
//!   with 1009, and the Link keeps its hub;
//! - token expiry closes on time (1008 `token expired`), and `refresh` keeps a viewer;
//! - a token in the first message (`auth`) instead of the URL; a URL-less client that sends
//!   anything else, or nothing, is closed with 1008;
//! - `linkcast link` under SIGTERM closes its clients with 1001.

use std::time::{Duration, Instant};

use linkcast_core::auth::{sign, Claims};
use linkcast_core::room::RoomLimits;
use linkcast_core::room_table::TableLimits;
use serde_json::{json, Value};
use tokio_websockets::Message;

use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::publish_ok;
use crate::support::link::{config, start_link, FakeHub};
use crate::support::ws::{ws_url, Got, WsClient};
use crate::support::{an_hour_from_now as later, eventually, start_serve, STEP};

const SECRET: &str = "session-secret";

fn token_for(sub: &str, rooms: &[&str], exp: u64, secret: &str) -> String {
    sign(&Claims { sub: sub.into(), exp, rooms: rooms.iter().map(|r| r.to_string()).collect(), iat: None }, secret)
}

fn token(sub: &str, rooms: &[&str], exp: u64) -> String {
    token_for(sub, rooms, exp, SECRET)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Publishes one message to `room` and checks `bystander` gets exactly it next.
async fn bystander_receives(hub: &FakeHub, bystander: &mut WsClient, room: &str) {
    let seq = hub.publish(room, r#"{"still":"here"}"#).await;
    let got = bystander.next_json().await;
    assert_eq!((got["room"].as_str(), got["seq"].as_u64()), (Some(room), Some(seq)), "bystander keeps receiving: {got}");
}

/// Reads `room`'s answer to a join from `since: 0` among interleaved messages of other rooms:
/// every seq from 1 to `last`, in order, no gap, then `joined`.
fn check_catch_up(received: &[Value], room: &str, last: u64) {
    let mine: Vec<&Value> = received.iter().filter(|v| v["room"] == room).collect();
    let seqs: Vec<u64> = mine.iter().filter(|v| v.get("op").is_none()).filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{room}: every message once, in order");
    assert!(mine.iter().all(|v| v["op"] != "gap" && v["op"] != "error"), "{room}: no gap, no error");
    assert_eq!(mine.last().map(|v| v["op"].clone()), Some(json!("joined")), "{room}: joined last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_reading_client_catching_up_four_full_rooms_is_paged_and_the_link_stays_bounded() {
    const REPLAY_BYTES: usize = 32 * 1024;
    const MESSAGES: u64 = 300;
    let config = config(1, |c| {
        c.link.replay_bytes = REPLAY_BYTES;
        c.link.write_batch_bytes = 16 * 1024;
        c.link.socket_send_buffer = 8 * 1024;
    });
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    let rooms = ["full-0", "full-1", "full-2", "full-3"];
    for room in rooms {
        for n in 1..=MESSAGES {
            hub.publish(room, &format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(1000))).await;
        }
    }
    let mut bystander = WsClient::connect_to(addr, None).await;
    bystander.join("live", None).await;

    // About 1.2 MB of history asked for at once; the client reads nothing.
    let mut stalled = WsClient::connect_small(addr, 4096).await;
    for room in rooms {
        stalled.send(json!({"op": "join", "room": room, "since": 0})).await;
    }
    let mut most_queued = 0;
    for _ in 0..20 {
        bystander_receives(&hub, &mut bystander, "live").await;
        most_queued = most_queued.max(link.stats().queued_bytes);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The stalled client holds at most its replay cap (plus the frame that crossed it) and a
    // few control messages; without paging it would hold all four histories.
    assert!(most_queued <= REPLAY_BYTES + 4 * 1024, "Link socket queues held {most_queued} bytes");
    assert_eq!(link.stats().connections, 2);

    // It starts reading: everything arrives, paged, in order, with no gap.
    let mut received = Vec::new();
    while received.iter().filter(|v: &&Value| v["op"] == "joined").count() < rooms.len() {
        received.push(stalled.next_json().await);
    }
    for room in rooms {
        check_catch_up(&received, room, MESSAGES);
    }
    bystander_receives(&hub, &mut bystander, "live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_of_four_full_rooms_is_not_a_flood() {
    let config = config(1, |_| {});
    let limits = TableLimits { room: RoomLimits { history_messages: 1100, ..RoomLimits::default() }, ..TableLimits::default() };
    let (link, hub) = start_link(config, limits).await;
    let rooms = ["catch-0", "catch-1", "catch-2", "catch-3"];
    for room in rooms {
        for n in 1..=1100 {
            hub.publish(room, &format!(r#"{{"n":{n}}}"#)).await;
        }
    }
    let mut bystander = WsClient::connect_to(link.ws_addr(), None).await;
    bystander.join("live", None).await;
    // 4,400 replays arrive in one burst: more hub answers than the mailbox's 4,096 events.
    let mut client = WsClient::connect_to(link.ws_addr(), None).await;
    for room in rooms {
        client.send(json!({"op": "join", "room": room, "since": 0})).await;
    }
    let mut received = Vec::new();
    while received.iter().filter(|v: &&Value| v["op"] == "joined").count() < rooms.len() {
        match client.next().await {
            Got::Json(value) => received.push(value),
            other => panic!("the catch-up was cut: {other:?}"),
        }
    }
    for room in rooms {
        check_catch_up(&received, room, 1100);
    }
    client.assert_pong_next().await;
    bystander_receives(&hub, &mut bystander, "live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_flood_is_answered_429_with_a_retry_hint_and_the_connection_stays() {
    let config = config(1, |c| {
        c.link.join_rate = 2;
        c.link.join_burst = 3;
        c.link.max_rooms_per_conn = 64;
    });
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let mut bystander = WsClient::connect_to(link.ws_addr(), None).await;
    bystander.join("live", None).await;
    let mut flooder = WsClient::connect_to(link.ws_addr(), None).await;
    for n in 0..30 {
        flooder.send(json!({"op": "join", "room": format!("flood-{n}"), "since": 0})).await;
    }
    let (mut joined, mut refused, mut hints) = (0, 0, Vec::new());
    while joined + refused < 30 {
        let got = flooder.next_json().await;
        match got["op"].as_str() {
            Some("joined") => joined += 1,
            Some("error") => {
                assert_eq!((got["code"].as_u64(), got["reason"].as_str()), (Some(429), Some("join rate limited")), "{got}");
                hints.push(got["retry_after_ms"].as_u64().unwrap_or_else(|| panic!("429 without retry_after_ms: {got}")));
                refused += 1;
            }
            _ => panic!("unexpected {got}"),
        }
    }
    assert!((3..=4).contains(&joined), "the burst passes (and maybe one refilled token): {joined}");
    assert!(hints.iter().all(|&ms| ms > 0), "retry hints: {hints:?}");
    flooder.assert_pong_next().await;
    bystander_receives(&hub, &mut bystander, "live").await;
    // Retried after its hint, a refused join goes through.
    tokio::time::sleep(Duration::from_millis(hints[0])).await;
    flooder.join("flood-29", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_publish_closes_only_its_client_whatever_max_message_bytes_says() {
    let mut config = linkcast::config::Config::default();
    config.link.shards = 1;
    config.link.max_message_bytes = 4 << 20;
    assert!(config.validate().is_err(), "a config with link.max_message_bytes above the frame limit does not load");
    let serve = start_serve(config, false).await;
    let mut bystander = WsClient::connect_to(serve.ws_addr(), None).await;
    bystander.join("r", None).await;
    let mut big = WsClient::connect_to(serve.ws_addr(), None).await;
    let payload = "x".repeat(2 << 20);
    big.send_message(Message::text(json!({"op": "publish", "room": "r", "data": payload}).to_string())).await.expect("sent");
    assert_eq!(big.next().await, Got::Close(1009, "message too big".into()));
    // The Link kept its hub connection: the bystander gets what is published next.
    let seq = publish_ok(serve.http_addr(), "r", None, br#"{"after":"big"}"#).await;
    let got = bystander.next_json().await;
    assert_eq!(got["seq"].as_u64(), Some(seq), "{got}");
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_on_time_and_a_refresh_keeps_the_viewer() {
    let config = config(1, |c| {
        c.auth.jwt_secret = SECRET.into();
        // Ticks far apart: expiry must not wait for one.
        c.link.ping_interval_secs = 60;
        c.link.idle_timeout_secs = 120;
    });
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    let exp = now_secs() + 3;
    let mut expiring = WsClient::connect_to(addr, Some(&token("eve", &["a"], exp))).await;
    expiring.join("a", None).await;
    let mut viewer = WsClient::connect_to(addr, Some(&token("vic", &["a", "b"], exp))).await;
    viewer.join("a", None).await;
    viewer.join("b", None).await;

    // Refresh: another user's token is refused and changes nothing; the user's own narrower
    // one is taken, and the room it no longer allows is left with an error.
    viewer.send(json!({"op": "refresh", "token": token("mallory", &["*"], later())})).await;
    let got = viewer.next_json().await;
    assert_eq!((got["code"].as_u64(), got["reason"].as_str()), (Some(403), Some("refresh token for another user")), "{got}");
    viewer.send(json!({"op": "refresh", "token": token_for("vic", &["*"], later(), "forged")})).await;
    assert_eq!(viewer.next_json().await["code"], 401);
    let fresh = later();
    viewer.send(json!({"op": "refresh", "token": token("vic", &["a"], fresh)})).await;
    assert_eq!(viewer.next_json().await, json!({"op": "error", "code": 403, "reason": "room not allowed by token", "room": "b"}));
    assert_eq!(viewer.next_json().await, json!({"op": "refreshed", "exp": fresh}));

    let started = Instant::now();
    assert_eq!(expiring.next().await, Got::Close(1008, "token expired".into()));
    assert!(started.elapsed() < Duration::from_secs(30), "closed at expiry, not at a ping tick");
    assert!(now_secs() >= exp, "not before expiry");
    // The refreshed viewer stays past the old expiry.
    bystander_receives(&hub, &mut viewer, "a").await;
    viewer.assert_pong_next().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_first_message_works_and_a_url_without_one_must_auth_first() {
    let config = config(1, |c| {
        c.auth.jwt_secret = "new-secret".into();
        c.auth.jwt_secrets = vec![SECRET.into()];
    });
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    // The token in the first message, signed with the older of two accepted secrets.
    let mut viewer = WsClient::connect_to(addr, None).await;
    viewer.send(json!({"op": "auth", "token": token("vic", &["r"], later())})).await;
    viewer.join("r", None).await;
    bystander_receives(&hub, &mut viewer, "r").await;

    let silent = WsClient::connect_to(addr, None).await;
    let silent = tokio::spawn(async move {
        let mut silent = silent;
        silent.next().await
    });
    let mut eager = WsClient::connect_to(addr, None).await;
    eager.send(json!({"op": "join", "room": "r"})).await;
    assert_eq!(eager.next().await, Got::Close(1008, "authentication required".into()));
    let mut forger = WsClient::connect_to(addr, None).await;
    forger.send(json!({"op": "auth", "token": token_for("vic", &["*"], later(), "forged")})).await;
    assert_eq!(forger.next().await, Got::Close(1008, "bad token signature".into()));
    assert_eq!(silent.await.expect("task"), Got::Close(1008, "authentication timeout".into()));
    bystander_receives(&hub, &mut viewer, "r").await;
    // A pending connection holds its slot only while it waits.
    eventually(STEP, "only the viewer stays connected", || async { (link.stats().connections == 1).then_some(()) }).await;
    assert!(WsClient::try_connect(&ws_url(addr, Some("garbage"))).await.is_err(), "a bad URL token is still 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_the_links_clients_with_1001() {
    // drain_secs = 0: straight to the close (links_dynamic.rs tests the drain window).
    let settings = "[auth]\ncluster_secret = \"sigterm-secret\"\n\n[link]\nshards = 1\ndrain_secs = 0\n";
    let mut cluster =
        Cluster::start(ClusterSpec { tag: "sigterm", hubs: 1, links: 1, settings, relay: false, link_quic: false }).await;
    let mut client = WsClient::connect_to(cluster.links[0], None).await;
    client.join("r", None).await;
    publish_ok(cluster.hubs[0], "r", None, br#"{"before":"term"}"#).await;
    assert_eq!(client.next_json().await["seq"], 1);
    cluster.processes.terminate("link-1");
    // A draining Link's close: 1001 with a retry hint (docs/protocol.md).
    match client.next().await {
        Got::Close(1001, reason) => assert!(reason.starts_with("link draining; retry_after_ms="), "{reason}"),
        other => panic!("expected close 1001, got {other:?}"),
    }
    eventually(STEP, "the Link process exits", || {
        let running = cluster.processes.running("link-1");
        async move { (!running).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_refreshes_its_token_and_outlives_the_old_one() {
    use linkcast::client::{Client, ClientOptions, Event, Target};
    let mut config = linkcast::config::Config::default();
    config.link.shards = 1;
    config.auth.jwt_secret = SECRET.into();
    config.auth.api_keys = vec!["refresh-key".into()];
    let serve = start_serve(config, false).await;
    let exp = now_secs() + 3;
    let mut options = ClientOptions::new(Target::Ws(format!("ws://{}/ws", serve.ws_addr())));
    options.token = Some(token("vic", &["r"], exp));
    let mut client = Client::start(options);
    client.join("r").expect("join");
    use crate::support::client::next;
    loop {
        if let Event::Joined { .. } = next(&mut client).await {
            break;
        }
    }
    let fresh = later();
    client.refresh(&token("vic", &["r"], fresh)).expect("refresh sent");
    loop {
        match next(&mut client).await {
            Event::Refreshed { exp } => {
                assert_eq!(exp, fresh);
                break;
            }
            Event::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Past the first token's expiry, the same connection still delivers.
    eventually(STEP, "the first token expired", || async { (now_secs() > exp).then_some(()) }).await;
    let seq = publish_ok(serve.http_addr(), "r", Some("refresh-key"), br#"{"after":"expiry"}"#).await;
    match next(&mut client).await {
        Event::Message(message) => assert_eq!(message.seq, seq),
        other => panic!("expected the message on the same connection, got {other:?}"),
    }
    assert_eq!(client.close().await.disconnects, 0, "never reconnected");
    serve.shutdown().await;
}

/// Twenty clients join a room with 400 KB of history from `since: 0` at once, through a hub whose
/// queue to the Link is 256 KiB (answers may use twice that): unpaged, those answers (8 MB) would
/// make the hub drop the whole Link. The hub answers each join a page (`hub.join_replay_bytes`)
/// and the Link asks for the next as each client reads: every client gets all 400 messages, in
/// order, no error, no gap, and the Link is never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_full_catch_ups_at_once_are_paged_by_the_hub_and_do_not_drop_the_link() {
    let mut config = linkcast::config::Config::default();
    config.link.shards = 1;
    config.link.join_rate = 0;
    config.hub.link_queue_bytes = 256 * 1024;
    config.hub.history_messages = 400;
    config.hub.join_replay_bytes = 16 * 1024;
    let serve = start_serve(config, false).await;
    let pad = "x".repeat(1000);
    for n in 1..=400u64 {
        publish_ok(serve.http_addr(), "history", None, format!(r#"{{"n":{n},"pad":"{pad}"}}"#).as_bytes()).await;
    }
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(WsClient::connect(&ws_url(serve.ws_addr(), None)).await);
    }
    for client in &mut clients {
        client.send(json!({"op": "join", "room": "history", "since": 0})).await;
    }
    for client in &mut clients {
        let mut received = Vec::new();
        loop {
            let value = client.next_json().await;
            let done = value["op"] == "joined";
            received.push(value);
            if done {
                break;
            }
        }
        check_catch_up(&received, "history", 400);
    }
    // Live messages still flow to all of them (the Link kept its hub).
    let seq = publish_ok(serve.http_addr(), "history", None, br#""live""#).await;
    for client in &mut clients {
        let got = client.next_json().await;
        assert_eq!((got["seq"].as_u64(), got["data"].as_str()), (Some(seq), Some("live")), "{got}");
    }
    let metrics = crate::support::http::metrics_text(serve.ws_addr()).await;
    assert!(crate::support::http::metric(&metrics, "linkcast_link_replay_pages_total", &[]) >= 20.0, "every catch-up was paged");
    serve.shutdown().await;
}

/// The same on QUIC: a native client's connection is closed at its token's `exp`, not at the
/// next keep-alive tick (60 s apart here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_clients_token_expires_on_time() {
    let config = config(1, |c| {
        c.auth.jwt_secret = SECRET.into();
        c.link.ping_interval_secs = 60;
        c.link.idle_timeout_secs = 120;
    });
    let (link, _hub) = start_link(config, TableLimits::default()).await;
    let quic = link.quic_addr().expect("QUIC listener");
    let exp = now_secs() + 2;
    let mut options = linkcast::client::ClientOptions::new(linkcast::client::Target::Quic(quic));
    options.token = Some(token("quinn", &["a"], exp));
    let mut client = linkcast::client::Client::start(options);
    client.join("a").expect("join");
    let started = Instant::now();
    let cause = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), client.next_event()).await.expect("an event").expect("running");
        match event {
            linkcast::client::Event::Reconnecting { cause, .. } | linkcast::client::Event::Closed { cause } => break cause,
            _ => {}
        }
    };
    assert!(cause.reason.contains("expired"), "{cause:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "closed at expiry, not at a keep-alive tick");
    assert!(now_secs() >= exp, "not before expiry");
}
