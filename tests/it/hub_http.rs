//! The hub alone on loopback, with fake in-process Links driven by the test: HTTP publish →
//! frames once per interested Link; history, room info and locate; bad input on every route
//! answered with a status and a JSON reason while the hub keeps serving; a Link that cannot
//! keep up gets an explicit gap; Links over QUIC must say `Hello` with the cluster secret.
//!
//! Metrics are process-wide, so every test uses its own hub id (the `hub` label), 11 to 18.

use std::time::Duration;

use linkcast::config::{Config, LinkEntry};
use linkcast::quic::{self, FrameReader, ALPN_HUB};
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind, DEFAULT_MAX_FRAME_LEN, FLAG_JSON};

use crate::support::http::{assert_error, get, get_as, http, hub_metric, publish, publish_ok};
use crate::support::hub::{start_hub, start_hub_at, FakeLink};
use crate::support::{any_addr, eventually, STEP};

fn secured(keys: &[&str]) -> Config {
    let mut config = Config::default();
    config.auth.jwt_secret = "jwt".into();
    config.auth.api_keys = keys.iter().map(|k| k.to_string()).collect();
    config
}

#[tokio::test]
async fn publish_reaches_each_interested_link_exactly_once() {
    let hub = start_hub(11, Config::default()).await;
    let addr = hub.http_addr();
    let mut a = FakeLink::attach(&hub, 1, 1024).await;
    let mut b = FakeLink::attach(&hub, 2, 1024).await;
    let mut c = FakeLink::attach(&hub, 3, 1024).await;
    a.interest("lobby", 10).await;
    b.interest("lobby", 1).await;
    c.interest("other", 5).await;

    for i in 1..=20u64 {
        let body = if i % 2 == 0 { format!("{{\"n\":{i}}}") } else { format!("plain {i}") };
        assert_eq!(publish_ok(addr, "lobby", None, body.as_bytes()).await, i);
    }
    let named = http(addr, "POST", "/v1/rooms/lobby/messages", &[("x-linkcast-from", "backend-7")], b"\"hi\"").await;
    assert_eq!(named.status, 200, "{}", named.text());

    for link in [&mut a, &mut b] {
        let got = link.messages(21).await;
        assert_eq!(got.iter().map(Frame::seq).collect::<Vec<_>>(), (1..=21).collect::<Vec<_>>());
        assert!(got.iter().all(|f| f.room() == "lobby"));
        assert_eq!(got[0].payload(), b"plain 1");
        assert_eq!(got[0].flags() & FLAG_JSON, 0, "text is not flagged JSON");
        assert_eq!(got[1].payload(), b"{\"n\":2}");
        assert_eq!(got[1].flags() & FLAG_JSON, FLAG_JSON);
        assert_eq!(got[0].sender(), "server");
        assert_eq!(got[20].sender(), "backend-7");
        // Nothing else (no duplicate) is waiting.
        assert!(link.sync().await.is_empty(), "no extra frames");
    }
    assert!(c.sync().await.is_empty(), "a Link without members of the room gets nothing");

    let metrics = get(hub.admin_addr().expect("admin listener"), "/metrics").await.text();
    assert_eq!(hub_metric(&metrics, "linkcast_hub_published_total", 11), 21.0);
    assert_eq!(hub_metric(&metrics, "linkcast_hub_link_sends_total", 11), 42.0, "one send per interested Link");
    assert_eq!(hub_metric(&metrics, "linkcast_hub_links", 11), 3.0);
    assert!(metrics.contains("linkcast_hub_http_requests_total{route=\"/v1/rooms/{room}/messages\",status=\"200\"}"));

    // A Link that leaves the room stops getting it.
    b.interest("lobby", 0).await;
    publish_ok(addr, "lobby", None, b"after").await;
    assert_eq!(a.messages(1).await[0].seq(), 22);
    assert!(b.sync().await.is_empty());
    hub.shutdown().await;
}

#[tokio::test]
async fn bad_input_on_every_route_gets_a_status_and_a_json_reason() {
    let mut config = secured(&["k1", "k2"]);
    config.hub.max_payload = 1024;
    let hub = start_hub(12, config).await;
    let addr = hub.http_addr();
    assert_eq!(publish_ok(addr, "ok", Some("k1"), b"first").await, 1);

    // Authentication.
    assert_error(&publish(addr, "ok", None, b"x").await, 401, "no key");
    assert_error(&publish(addr, "ok", Some("nope"), b"x").await, 401, "bad key");
    let basic = http(addr, "POST", "/v1/rooms/ok/messages", &[("authorization", "Basic azE6")], b"x").await;
    assert_error(&basic, 401, "wrong scheme");

    // Room names.
    let long = "r".repeat(129);
    for bad in ["bad%20room", "semi;colon", "%FF%FE", long.as_str()] {
        assert_error(&publish(addr, bad, Some("k1"), b"x").await, 400, bad);
        assert_error(&get(addr, &format!("/v1/rooms/{bad}")).await, 400, bad);
        assert_error(&get(addr, &format!("/v1/rooms/{bad}/messages")).await, 400, bad);
        assert_error(&get(addr, &format!("/v1/locate?room={bad}")).await, 400, bad);
    }
    assert_error(&publish(addr, "", Some("k1"), b"x").await, 400, "empty room");
    assert_error(&get(addr, "/v1/rooms/a/b/messages").await, 400, "slash in room");

    // Bodies.
    assert_error(&publish(addr, "ok", Some("k1"), &[b'x'; 1025]).await, 413, "over max_payload");
    assert_error(&publish(addr, "ok", Some("k1"), &vec![b'x'; 4 * 1024 * 1024]).await, 413, "huge body");
    assert_error(&publish(addr, "ok", Some("k1"), &[0xff, 0xfe, 0x00]).await, 400, "not UTF-8");
    let bad_json = http(
        addr,
        "POST",
        "/v1/rooms/ok/messages",
        &[("authorization", "Bearer k1"), ("content-type", "application/json")],
        b"{\"unterminated\": ",
    )
    .await;
    assert_error(&bad_json, 400, "declared JSON that is not JSON");
    let long_from = "f".repeat(200);
    let bad_from = http(
        addr,
        "POST",
        "/v1/rooms/ok/messages",
        &[("authorization", "Bearer k1"), ("x-linkcast-from", &long_from)],
        b"x",
    )
    .await;
    assert_error(&bad_from, 400, "sender too long");

    // Queries.
    assert_error(&get_as(addr, "/v1/rooms/never-used", "k1").await, 404, "unknown room");
    assert_error(&get_as(addr, "/v1/rooms/never-used/messages", "k1").await, 404, "unknown room history");
    assert_error(&get_as(addr, "/v1/rooms/ok/messages?since=abc", "k1").await, 400, "since not a number");
    assert_error(&get_as(addr, "/v1/rooms/ok/messages?since=-1", "k1").await, 400, "since negative");
    assert_error(&get_as(addr, "/v1/rooms/ok/messages?limit=0", "k1").await, 400, "limit 0");
    assert_error(&get(addr, "/v1/locate").await, 400, "locate without room");
    assert_error(&get_as(addr, "/v1/locate?room=ok", "k1").await, 503, "locate without Links");

    // Routes and methods.
    assert_error(&get(addr, "/nope").await, 404, "unknown route");
    assert_error(&http(addr, "DELETE", "/v1/rooms/ok", &[], b"").await, 405, "method");
    assert_error(&http(addr, "PUT", "/v1/rooms/ok/messages", &[], b"x").await, 405, "method");

    // The hub kept serving, and nothing refused used a seq.
    assert_eq!(publish_ok(addr, "ok", Some("k2"), b"second").await, 2);
    let history = get_as(addr, "/v1/rooms/ok/messages", "k1").await.json();
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(get(hub.admin_addr().expect("admin listener"), "/healthz").await.json()["status"], "ok");
    hub.shutdown().await;
}

#[tokio::test]
async fn publishes_above_the_rate_are_refused_with_429_per_key() {
    let mut config = secured(&["fast", "other"]);
    config.hub.publish_rate = 5;
    let hub = start_hub(13, config).await;
    let addr = hub.http_addr();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(publish(addr, "r", Some("fast"), b"x").await.status);
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((5..=7).contains(&ok), "burst of ~5 allowed: {statuses:?}");
    let refused = publish(addr, "r", Some("fast"), b"x").await;
    assert_error(&refused, 429, "rate");
    assert_eq!(publish(addr, "r", Some("other"), b"x").await.status, 200, "another key has its own bucket");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(publish(addr, "r", Some("fast"), b"x").await.status, 200, "the bucket refills");
    hub.shutdown().await;
}

#[tokio::test]
async fn history_room_info_and_join_replay() {
    let mut config = Config::default();
    config.hub.history_messages = 10;
    let hub = start_hub(14, config).await;
    let addr = hub.http_addr();
    let mut link = FakeLink::attach(&hub, 4, 1024).await;
    link.interest("talk", 3).await;
    for i in 1..=30u64 {
        assert_eq!(publish_ok(addr, "talk", None, format!("{{\"i\":{i}}}").as_bytes()).await, i);
    }
    let info = get(addr, "/v1/rooms/talk").await.json();
    let epoch = info["epoch"].as_str().expect("epoch string").to_string();
    assert!(epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()), "epoch is 16 hex digits: {epoch}");
    assert_eq!(info, serde_json::json!({"room": "talk", "members": 3, "links": [4], "last_seq": 30, "epoch": epoch}));

    let all = get(addr, "/v1/rooms/talk/messages").await.json();
    assert_eq!(all["last_seq"], 30);
    assert_eq!(all["epoch"], serde_json::json!(epoch));
    assert_eq!(all["gap"], serde_json::json!({"first_lost": 1, "last_lost": 20, "resume_from": 21}));
    let seqs: Vec<u64> = all["messages"].as_array().expect("array").iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (21..=30).collect::<Vec<_>>());
    assert_eq!(all["messages"][0]["data"], serde_json::json!({"i": 21}));
    assert_eq!(all["messages"][0]["from"], "server");
    assert!(all["messages"][0]["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000_000));

    let page = get(addr, "/v1/rooms/talk/messages?since=25&limit=2").await.json();
    assert!(page.get("gap").is_none());
    let seqs: Vec<u64> = page["messages"].as_array().expect("array").iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![26, 27]);
    let none = get(addr, "/v1/rooms/talk/messages?since=30").await.json();
    assert_eq!(none["messages"], serde_json::json!([]));
    // A position of another epoch (the room was re-created under the reader): reset, then the
    // history of the current epoch from its start.
    let stale = get(addr, "/v1/rooms/talk/messages?since=25&epoch=0000000000000001").await.json();
    assert_eq!((&stale["reset"], &stale["epoch"]), (&serde_json::json!(true), &serde_json::json!(epoch)));
    assert_eq!(stale["messages"][0]["seq"], 21, "{stale}");
    // A position past the room's last seq (the room forgot messages the reader saw): reset too.
    let ahead = get(addr, "/v1/rooms/talk/messages?since=99").await.json();
    assert_eq!(ahead["reset"], serde_json::json!(true), "{ahead}");

    // A connection's join with since, relayed by the Link: replay, then joined.
    link.messages(30).await;
    link.send(FrameBuilder::new("talk").build(&Body::Join { request: 9, since: Some(27), epoch: None })).await;
    let answer = link.sync().await;
    let kinds: Vec<(Kind, u64)> = answer.iter().map(|f| (f.kind(), f.seq())).collect();
    assert_eq!(kinds, vec![(Kind::Replay, 28), (Kind::Replay, 29), (Kind::Replay, 30), (Kind::Joined, 30)]);
    assert!(matches!(answer[0].body(), ArchivedBody::Replay { request, .. } if request.to_native() == 9));
    hub.shutdown().await;
}

#[tokio::test]
async fn locate_answers_connected_known_links_best_first() {
    let mut config = Config::default();
    config.hub.group_size = 2;
    let hub = start_hub(15, config).await;
    let addr = hub.http_addr();
    for id in 1..=3u32 {
        hub.register_link(LinkEntry {
            id,
            ws: format!("127.0.0.1:{}", 18000 + id).parse().expect("addr"),
            quic: format!("127.0.0.1:{}", 19000 + id).parse().expect("addr"),
            public_ws: (id == 3).then(|| "wss://chat.example/ws".to_string()),
            public_quic: None,
            admin: None,
        });
    }
    assert_error(&get(addr, "/v1/locate?room=lobby").await, 503, "registered but not connected");
    let mut attached = Vec::new();
    for id in 1..=3 {
        attached.push(FakeLink::attach(&hub, id, 64).await);
    }
    let answer = get(addr, "/v1/locate?room=lobby").await.json();
    assert_eq!(answer["room"], "lobby");
    let links = answer["links"].as_array().expect("links").clone();
    assert_eq!(links.len(), 2);
    for link in &links {
        let id = link["id"].as_u64().expect("id");
        let ws = link["ws"].as_str().expect("ws");
        if id == 3 {
            assert_eq!(ws, "wss://chat.example/ws");
        } else {
            assert_eq!(ws, format!("ws://127.0.0.1:{}/ws", 18000 + id));
        }
        assert_eq!(link["quic"], format!("127.0.0.1:{}", 19000 + id));
    }
    assert_eq!(get(addr, "/v1/locate?room=lobby").await.json(), answer, "stable answer");

    // Many rooms spread over all three Links.
    let mut firsts = std::collections::BTreeSet::new();
    for r in 0..60 {
        let answer = get(addr, &format!("/v1/locate?room=room-{r}")).await.json();
        firsts.insert(answer["links"][0]["id"].as_u64().expect("id"));
    }
    assert_eq!(firsts.len(), 3, "{firsts:?}");

    // A Link that disconnects is no longer located.
    let gone = links[0]["id"].as_u64().expect("id") as u32;
    attached.retain(|link| link.id != gone);
    eventually(STEP, &format!("link {gone} no longer located after disconnecting"), || async {
        let answer = get(addr, "/v1/locate?room=lobby").await.json();
        answer["links"].as_array().is_some_and(|l| l.iter().all(|x| x["id"].as_u64() != Some(u64::from(gone)))).then_some(())
    })
    .await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_link_that_cannot_keep_up_gets_a_gap_and_others_are_unaffected() {
    let mut config = Config::default();
    config.hub.link_queue_bytes = 16 * 1024;
    let hub = start_hub(16, config).await;
    let addr = hub.http_addr();
    // The slow Link's port holds only 4 frames and the test does not read it for a while.
    let mut slow = FakeLink::attach(&hub, 1, 4).await;
    let mut fast = FakeLink::attach(&hub, 2, 4096).await;
    slow.interest("busy", 1).await;
    fast.interest("busy", 1).await;
    let payload = vec![b'x'; 1000];
    let fast_reader = tokio::spawn(async move {
        let got = fast.messages(200).await;
        (fast, got)
    });
    for i in 1..=200u64 {
        assert_eq!(publish_ok(addr, "busy", None, &payload).await, i);
    }
    let (_fast, fast_got) = fast_reader.await.expect("reader");
    assert_eq!(fast_got.iter().map(Frame::seq).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());

    // Now drain the slow Link: messages, then one gap covering exactly what it missed.
    let mut covered = Vec::new();
    let mut gaps = 0;
    while covered.len() < 200 {
        let frame = slow.recv().await.expect("port open");
        match frame.body() {
            ArchivedBody::Message { .. } => covered.push(frame.seq()),
            ArchivedBody::Gap { request: conn, first_lost, last_lost, resume_from } => {
                gaps += 1;
                assert_eq!(conn.to_native(), 0, "room-wide gap");
                assert_eq!(frame.room(), "busy");
                let (first, last) = (first_lost.to_native(), last_lost.to_native());
                assert_eq!(resume_from.to_native(), last + 1);
                covered.extend(first..=last);
            }
            _ => {}
        }
    }
    assert!(gaps >= 1, "the slow Link was told");
    assert_eq!(covered, (1..=200).collect::<Vec<_>>(), "every seq once: delivered or in a gap, in order");
    // Once caught up it gets live messages again.
    assert_eq!(publish_ok(addr, "busy", None, b"live").await, 201);
    assert_eq!(slow.messages(1).await[0].seq(), 201);
    let metrics = get(hub.admin_addr().expect("admin listener"), "/metrics").await.text();
    assert!(hub_metric(&metrics, "linkcast_hub_link_queue_dropped_total", 16) > 0.0);
    hub.shutdown().await;
}

#[tokio::test]
async fn quic_links_must_say_hello_with_the_cluster_secret() {
    let mut config = Config::default();
    config.auth.cluster_secret = "s3cret".into();
    let hub = start_hub_at(17, config, any_addr(), Some(any_addr())).await;
    let quic_addr = hub.quic_addr().expect("quic bound");
    let client = quic::client_endpoint(any_addr(), &linkcast::tls::Trust::LoopbackDev, ALPN_HUB).expect("client endpoint");

    // Wrong secret: closed with a reason, never attached.
    let conn = client.connect(quic_addr, "localhost").expect("connect").await.expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    let hello = FrameBuilder::new("").build(&Body::Hello { link: 5, secret: "wrong".into(), ws: String::new(), quic: String::new(), admin: String::new() });
    quic::write_frames(&mut send, &mut vec![hello.into_bytes()]).await.expect("write");
    let closed = tokio::time::timeout(STEP, conn.closed()).await.expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(u64::from(close.error_code), 401);
            assert_eq!(&close.reason[..], b"bad cluster secret");
        }
        other => panic!("expected an application close, got {other:?}"),
    }

    // Right secret: interest and messages flow over the stream.
    let conn = client.connect(quic_addr, "localhost").expect("connect").await.expect("handshake");
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    let frames = vec![
        FrameBuilder::new("").build(&Body::Hello { link: 5, secret: "s3cret".into(), ws: String::new(), quic: String::new(), admin: String::new() }),
        FrameBuilder::new("q").build(&Body::Interest { link: 5, members: 2 }),
        FrameBuilder::new("").build(&Body::Heartbeat { nonce: 1 }),
    ];
    quic::write_frames(&mut send, &mut frames.into_iter().map(Frame::into_bytes).collect()).await.expect("write");
    // The hub tells a Link that gains interest the room's count first (presence.rs).
    let count = tokio::time::timeout(STEP, reader.next()).await.expect("in time").expect("frame").expect("open");
    assert_eq!(count.kind(), Kind::Presence);
    let echo = tokio::time::timeout(STEP, reader.next()).await.expect("in time").expect("frame").expect("open");
    assert_eq!(echo.kind(), Kind::Heartbeat);
    assert_eq!(publish_ok(hub.http_addr(), "q", None, b"over quic").await, 1);
    let message = tokio::time::timeout(STEP, reader.next()).await.expect("in time").expect("frame").expect("open");
    assert_eq!((message.kind(), message.seq(), message.payload()), (Kind::Message, 1, &b"over quic"[..]));
    let info = get(hub.http_addr(), "/v1/rooms/q").await.json();
    assert_eq!(info["links"], serde_json::json!([5]));

    // The Link goes away: its interest is dropped.
    conn.close(0u32.into(), b"bye");
    eventually(STEP, "interest of a disconnected Link is dropped", || async {
        (get(hub.http_addr(), "/v1/rooms/q").await.json()["links"] == serde_json::json!([])).then_some(())
    })
    .await;
    hub.shutdown().await;
}

#[tokio::test]
async fn demo_page_health_and_metrics_are_served() {
    let hub = start_hub(18, Config::default()).await;
    let addr = hub.http_addr();
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")));
    let html = page.text();
    assert!(html.contains("from \"/linkcast.js\""), "the page speaks the protocol through linkcast.js");
    let js = get(addr, "/linkcast.js").await;
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    let js = js.text();
    assert!(js.contains("/v1/locate") && js.contains("op: \"publish\"") && js.contains("since"));
    // With an admin listener, health and metrics are served there, not on the API port.
    let admin = hub.admin_addr().expect("admin listener");
    let health = get(admin, "/healthz").await;
    assert_eq!((health.status, health.json()), (200, serde_json::json!({"status": "ok"})));
    assert_error(&get(addr, "/healthz").await, 404, "no health on the API port");
    assert_error(&get(addr, "/metrics").await, 404, "no metrics on the API port");
    let metrics = get(admin, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("linkcast_hub_http_requests_total{route=\"/\",status=\"200\"}"));
    hub.shutdown().await;
}
