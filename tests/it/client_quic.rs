//! The client library's QUIC path against a real in-process `serve` (hub + Link on random
//! 127.0.0.1 ports, QUIC listener on): the client locates the room through the hub's HTTP API,
//! then connects to the Link over QUIC (ALPN `linkcast/1`, token in `Hello`).
//!
//! - a QUIC client and a WebSocket client in the same room get the same messages — same seq,
//!   sender, time stamp and payload — in order, once; a QUIC publish is acked with its seq and
//!   seen by both;
//! - a QUIC client whose connection is cut mid-stream (three times, while publishes go on)
//!   resumes with `since` and delivers every message once, in order;
//! - a QUIC client away past the room's history window is told so with a gap, then continues;
//! - a leave over QUIC completes (`Event::Left`) and stops the room's messages;
//! - a QUIC client whose token the Link refuses is closed for good, not retried forever.
//!
//! Every wait is bounded (`next` gives up after 5 s).

use std::time::Duration;

use bytes::Bytes;
use linkcast::client::http::HttpApi;
use linkcast::client::{Client, Event, Message, Transport};
use linkcast::config::Config;
use linkcast::serve::ServeHandle;
use linkcast_core::auth::{sign, Claims};
use serde_json::json;

use crate::support::an_hour_from_now;
use crate::support::client::{assert_next_message, drop_and_wait_reconnecting, next, options, resume_through_drops, Resumed};

const JWT_SECRET: &str = "client-quic-secret";
const API_KEY: &str = "client-quic-key";

async fn start_serve(config: Config) -> ServeHandle {
    crate::support::start_serve(config, true).await
}

/// A serve with tokens and API keys required (not dev mode).
fn secured(history: usize) -> Config {
    let mut config = Config::default();
    config.hub.history_messages = history;
    config.auth.jwt_secret = JWT_SECRET.into();
    config.auth.api_keys = vec![API_KEY.into()];
    config
}

fn token(sub: &str, secret: &str) -> String {
    sign(&Claims { sub: sub.into(), exp: an_hour_from_now(), rooms: vec!["*".into()], iat: None }, secret)
}

fn api(serve: &ServeHandle) -> HttpApi {
    HttpApi::new(&format!("http://{}", serve.http_addr()), Some(API_KEY.into())).expect("api")
}

async fn wait_joined(client: &mut Client) -> u64 {
    for _ in 0..100 {
        match next(client).await {
            Event::Joined { last_seq, .. } => return last_seq,
            Event::Reconnecting { cause, .. } => panic!("connection failed before the join: {cause:?}"),
            Event::Closed { cause } => panic!("closed before the join: {cause:?}"),
            _ => {}
        }
    }
    panic!("no Joined event");
}

/// Messages until `count` have arrived; any gap, error or close fails the test.
async fn collect(client: &mut Client, count: usize) -> Vec<Message> {
    let mut messages = Vec::with_capacity(count);
    while messages.len() < count {
        match next(client).await {
            Event::Message(m) => messages.push(m),
            event @ (Event::Gap { .. } | Event::Error { .. } | Event::Closed { .. } | Event::Reconnecting { .. }) => {
                panic!("unexpected {event:?} after {} messages", messages.len())
            }
            _ => {}
        }
    }
    messages
}

/// The n-th payload of the shared-room test: JSON objects, numbers, JSON strings and plain text.
fn payload(n: u64) -> (Bytes, serde_json::Value) {
    match n % 4 {
        0 => (
            Bytes::from(format!(r#"{{"n":{n},"text":"héllo ✓","list":[1,2,{{"x":null}}]}}"#)),
            json!({"n": n, "text": "héllo ✓", "list": [1, 2, {"x": null}]}),
        ),
        1 => (Bytes::from(n.to_string()), json!(n)),
        2 => (Bytes::from(format!(r#""quoted {n}""#)), json!(format!("quoted {n}"))),
        _ => (Bytes::from(format!("plain text {n} — not JSON")), json!(format!("plain text {n} — not JSON"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_websocket_clients_get_the_same_messages_and_quic_publishes_are_acked() {
    let serve = start_serve(secured(1000)).await;
    let room = "shared-room";
    let mut api = api(&serve);
    let mut quic = Client::start(options(&serve, room, Transport::Quic, Some(token("quic-user", JWT_SECRET)), Duration::from_millis(50)));
    let mut ws = Client::start(options(&serve, room, Transport::Ws, Some(token("ws-user", JWT_SECRET)), Duration::from_millis(50)));
    quic.join(room).expect("join");
    ws.join(room).expect("join");
    assert_eq!(wait_joined(&mut quic).await, 0);
    assert_eq!(wait_joined(&mut ws).await, 0);

    // Both clients read concurrently while 200 messages are published over HTTP.
    let quic_reader = tokio::spawn(async move {
        let got = collect(&mut quic, 200).await;
        (quic, got)
    });
    let ws_reader = tokio::spawn(async move {
        let got = collect(&mut ws, 200).await;
        (ws, got)
    });
    for n in 1..=200u64 {
        let seq = api.publish(room, payload(n).0, Some("backend")).await.expect("publish accepted");
        assert_eq!(seq, n);
    }
    let (mut quic, quic_got) = tokio::time::timeout(Duration::from_secs(30), quic_reader).await.expect("in time").expect("quic reader");
    let (mut ws, ws_got) = tokio::time::timeout(Duration::from_secs(30), ws_reader).await.expect("in time").expect("ws reader");
    assert_eq!(quic_got.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>(), "QUIC: in order, once");
    for (n, m) in (1..=200u64).zip(&quic_got) {
        assert_eq!((m.room.as_str(), m.from.as_str()), (room, "backend"));
        assert_eq!(m.data, payload(n).1, "payload of seq {n}");
        assert!(m.ts > 0);
    }
    assert_eq!(quic_got, ws_got, "the QUIC and WebSocket clients see the very same messages");
    assert!(quic_got.windows(2).all(|w| w[0].ts <= w[1].ts), "ts non-decreasing");
    // Nothing more (no duplicate): the sentinel published after the 200 is the next message.
    let sentinel = json!("sentinel");
    assert_eq!(api.publish(room, Bytes::from_static(br#""sentinel""#), Some("backend")).await.expect("publish accepted"), 201);
    assert_next_message(&mut quic, room, 201, &sentinel).await;
    assert_next_message(&mut ws, room, 201, &sentinel).await;

    // A QUIC publish: acked with the seq it got, delivered to both members with the QUIC
    // user's id as sender.
    let data = json!({"via": "quic", "text": "ünïcode"});
    let id = quic.publish(room, &data).await.expect("publish queued");
    let mut acked = None;
    let mut echoed = None;
    let mut quic_epoch = 0;
    while acked.is_none() || echoed.is_none() {
        match next(&mut quic).await {
            Event::Published { room: r, seq, id: got, epoch } => {
                assert_eq!((r.as_str(), got), (room, id));
                acked = Some(seq);
                quic_epoch = epoch;
            }
            Event::Message(m) => echoed = Some(m),
            event @ (Event::Error { .. } | Event::Closed { .. } | Event::Reconnecting { .. }) => panic!("{event:?}"),
            _ => {}
        }
    }
    assert_eq!(acked, Some(202));
    let echoed = echoed.expect("echo");
    assert_eq!((echoed.seq, echoed.from.as_str(), &echoed.data), (202, "quic-user", &data));
    let seen_by_ws = collect(&mut ws, 1).await;
    assert_eq!(seen_by_ws[0], echoed);

    // A WebSocket publish reaches the QUIC member the same way.
    let id = ws.publish(room, &json!([1, "two"])).await.expect("publish queued");
    let mut ws_acked = false;
    while !ws_acked {
        match next(&mut ws).await {
            Event::Published { seq, id: got, epoch, .. } => {
                assert_eq!((seq, got), (203, id));
                assert_eq!(epoch, quic_epoch, "both acks name the room's one epoch");
                ws_acked = true;
            }
            Event::Message(m) => assert_eq!(m.seq, 203),
            event @ (Event::Error { .. } | Event::Closed { .. } | Event::Reconnecting { .. }) => panic!("{event:?}"),
            _ => {}
        }
    }
    let m = &collect(&mut quic, 1).await[0];
    assert_eq!((m.seq, m.from.as_str(), &m.data), (203, "ws-user", &json!([1, "two"])));

    let stats = quic.close().await;
    assert_eq!((stats.duplicates, stats.lost, stats.connects), (0, 0, 1), "{stats:?}");
    ws.close().await;
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_quic_client_resumes_without_loss_or_duplicates() {
    let serve = start_serve(secured(1000)).await;
    let room = "quic-resume";
    let (api, mut sentinel_api) = (api(&serve), api(&serve));
    let mut client = Client::start(options(&serve, room, Transport::Quic, Some(token("q", JWT_SECRET)), Duration::from_millis(20)));
    client.join(room).expect("join");
    assert_eq!(wait_joined(&mut client).await, 0);

    // 300 messages published while the QUIC connection is cut three times.
    let Resumed { seqs, reconnects, rejoins } = resume_through_drops(&mut client, api, room).await;
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "every message once, in order");
    assert_eq!((reconnects, rejoins), (3, 3));
    // Nothing more (no duplicate): the sentinel published after the 300 is the next message.
    assert_eq!(sentinel_api.publish(room, Bytes::from_static(br#""sentinel""#), None).await.expect("publish accepted"), 301);
    assert_next_message(&mut client, room, 301, &json!("sentinel")).await;
    let stats = client.close().await;
    assert_eq!(stats.lost, 0, "{stats:?}");
    assert_eq!(stats.connects, 4, "{stats:?}");
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_away_past_the_history_window_gets_a_gap() {
    let serve = start_serve(secured(20)).await;
    let room = "quic-gap";
    let mut api = api(&serve);
    // A long backoff keeps the client away while 100 messages go by.
    let mut client = Client::start(options(&serve, room, Transport::Quic, Some(token("q", JWT_SECRET)), Duration::from_millis(1500)));
    client.join(room).expect("join");
    wait_joined(&mut client).await;
    api.publish(room, Bytes::from_static(br#"{"n":1}"#), None).await.expect("publish");
    match next(&mut client).await {
        Event::Message(m) => assert_eq!((m.seq, &m.data), (1, &json!({"n": 1}))),
        other => panic!("expected message 1, got {other:?}"),
    }
    drop_and_wait_reconnecting(&mut client).await;
    for n in 2..=101u64 {
        api.publish(room, Bytes::from(format!(r#"{{"n":{n}}}"#)), None).await.expect("publish");
    }
    // Back after ≥ 0.75 s: messages 2..=81 are outside the 20-message window.
    let mut gap = None;
    let mut seqs = Vec::new();
    while seqs.last() != Some(&101) {
        match next(&mut client).await {
            Event::Gap { room: r, first_lost, last_lost, resume_from } => {
                assert_eq!(r, room);
                gap = Some((first_lost, last_lost, resume_from));
            }
            Event::Message(m) => {
                assert!(gap.is_some(), "the gap comes before the replay");
                assert_eq!(m.data["n"], m.seq);
                seqs.push(m.seq);
            }
            _ => {}
        }
    }
    assert_eq!(gap, Some((2, 81, 82)));
    assert_eq!(seqs, (82..=101).collect::<Vec<_>>());
    // Live messages continue after the replay.
    api.publish(room, Bytes::from_static(br#"{"n":102}"#), None).await.expect("publish");
    assert_eq!(collect(&mut client, 1).await[0].seq, 102);
    let stats = client.close().await;
    assert_eq!((stats.lost, stats.gaps, stats.duplicates), (80, 1, 0), "{stats:?}");
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_leave_completes_and_stops_the_rooms_messages() {
    let serve = start_serve(secured(1000)).await;
    let mut api = api(&serve);
    let mut client = Client::start(options(&serve, "stay", Transport::Quic, Some(token("q", JWT_SECRET)), Duration::from_millis(50)));
    client.join("stay").expect("join");
    client.join("go").expect("join");
    wait_joined(&mut client).await;
    wait_joined(&mut client).await;
    api.publish("go", Bytes::from_static(b"before"), None).await.expect("publish");
    assert_eq!(collect(&mut client, 1).await[0].data, json!("before"));
    client.leave("go").expect("leave");
    loop {
        match next(&mut client).await {
            Event::Left { room } => {
                assert_eq!(room, "go");
                break;
            }
            Event::Message(m) => panic!("unexpected {m:?}"),
            _ => {}
        }
    }
    api.publish("go", Bytes::from_static(b"after"), None).await.expect("publish");
    api.publish("stay", Bytes::from_static(b"still here"), None).await.expect("publish");
    let m = &collect(&mut client, 1).await[0];
    assert_eq!((m.room.as_str(), &m.data), ("stay", &json!("still here")), "nothing more from the room left");
    // Nor later: a sentinel published after both is the next message.
    assert_eq!(api.publish("stay", Bytes::from_static(br#""sentinel""#), None).await.expect("publish"), 2);
    assert_next_message(&mut client, "stay", 2, &json!("sentinel")).await;
    client.close().await;
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_with_a_refused_token_is_closed_not_retried() {
    let serve = start_serve(secured(1000)).await;
    let bad = token("mallory", "not-the-secret");
    let mut client = Client::start(options(&serve, "lobby", Transport::Quic, Some(bad), Duration::from_millis(20)));
    // The secured hub refuses the token already at locate, so the client may have stopped
    // before this join is queued (`Stopped`); either way the cause below is what counts.
    let _ = client.join("lobby");
    let cause = loop {
        match next(&mut client).await {
            Event::Closed { cause } => break cause,
            Event::Reconnecting { cause, .. } => panic!("a refused token must not be retried: {cause:?}"),
            Event::Joined { .. } | Event::Message(_) => panic!("joined with a bad token"),
            _ => {}
        }
    };
    assert_eq!(cause.http_status, Some(401), "{cause:?}");
    assert!(cause.reason.contains("signature"), "{cause:?}");
    assert!(tokio::time::timeout(Duration::from_secs(5), client.next_event()).await.expect("driver ends").is_none());
    serve.shutdown().await;
}
