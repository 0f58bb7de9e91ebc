//! `serve` end to end, in-process on loopback ports: a hub and a real Link joined by in-process
//! channels, real WebSocket clients and HTTP publishes.
//!
//! - 200 clients in one room, 500 publishes: each client gets seq 1..=500 in order, once;
//! - `join since=N` replays N+1.. then continues live — also while publishes are in flight —
//!   with no gap and no duplicate;
//! - `since` older than the history window: an explicit gap first, then the window, then live.

use std::time::Duration;

use linkcast::config::Config;
use linkcast::serve::ServeHandle;

use crate::support::http::{get, publish_ok};
use crate::support::ws::WsClient;

async fn start_serve(config: Config) -> ServeHandle {
    crate::support::start_serve(config, true).await
}

/// The ws URL `locate` gives for `room`.
async fn located_ws(serve: &ServeHandle, room: &str) -> String {
    let answer = get(serve.http_addr(), &format!("/v1/locate?room={room}")).await.json();
    answer["links"][0]["ws"].as_str().expect("a located Link").to_owned()
}

fn seq(message: &serde_json::Value) -> u64 {
    message["seq"].as_u64().unwrap_or_else(|| panic!("not a room message: {message}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_get_five_hundred_messages_in_order_exactly_once() {
    let serve = start_serve(Config::default()).await;
    let url = located_ws(&serve, "fanout").await;
    assert_eq!(url, format!("ws://{}/ws", serve.ws_addr()));

    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut client = WsClient::connect(&url).await;
        let (before, last_seq) = client.join("fanout", None).await;
        assert!(before.is_empty());
        assert_eq!(last_seq, 0);
        clients.push(client);
    }
    let receivers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(500);
                while seqs.len() < 500 {
                    let message = client.next_json().await;
                    assert_eq!(message["room"], "fanout", "{message}");
                    assert_eq!(message["from"], "server");
                    seqs.push(seq(&message));
                }
                // Nothing more (no duplicate): the sentinel published after the 500 comes next.
                let sentinel = client.next_json().await;
                assert_eq!((seq(&sentinel), &sentinel["data"]), (501, &serde_json::json!("sentinel")), "extra message");
                seqs
            })
        })
        .collect();
    for i in 1..=500u64 {
        let body = format!("{{\"i\":{i}}}");
        assert_eq!(publish_ok(serve.http_addr(), "fanout", None, body.as_bytes()).await, i);
    }
    assert_eq!(publish_ok(serve.http_addr(), "fanout", None, b"\"sentinel\"").await, 501);
    let expected: Vec<u64> = (1..=500).collect();
    for receiver in receivers {
        let seqs = tokio::time::timeout(Duration::from_secs(60), receiver).await.expect("in time").expect("client task");
        assert_eq!(seqs, expected);
    }
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_replays_then_continues_live_without_gap_or_duplicate() {
    let serve = start_serve(Config::default()).await;
    let http = serve.http_addr();
    let url = located_ws(&serve, "replay").await;
    for i in 1..=50u64 {
        assert_eq!(publish_ok(http, "replay", None, format!("m{i}").as_bytes()).await, i);
    }
    let mut client = WsClient::connect(&url).await;
    let (replayed, last_seq) = client.join("replay", Some(20)).await;
    assert_eq!(replayed.iter().map(seq).collect::<Vec<_>>(), (21..=50).collect::<Vec<_>>());
    assert_eq!(replayed[0]["data"], "m21");
    assert_eq!(last_seq, 50);
    for i in 51..=60u64 {
        publish_ok(http, "replay", None, b"live").await;
        assert_eq!(seq(&client.next_json().await), i);
    }

    // Joins racing with publishes: whatever the interleaving, each client sees since+1..=end.
    // (Metrics are process-wide and every serve is hub 0, so the per-Link send count is
    // checked in `hub_http` and `cluster` instead.)
    let publisher = tokio::spawn(async move {
        for _ in 61..=300u64 {
            publish_ok(http, "replay", None, b"racing").await;
        }
    });
    let mut racers = Vec::new();
    for since in [30u64, 45, 55, 60] {
        let url = url.clone();
        racers.push(tokio::spawn(async move {
            let mut client = WsClient::connect(&url).await;
            let (replayed, last_seq) = client.join("replay", Some(since)).await;
            let mut seqs: Vec<u64> = replayed.iter().map(seq).collect();
            assert!(last_seq >= since);
            while seqs.last().copied().unwrap_or(since) < 300 {
                let message = client.next_json().await;
                assert!(message.get("op").is_none(), "no gap or error expected: {message}");
                seqs.push(seq(&message));
            }
            (since, seqs)
        }));
    }
    publisher.await.expect("publisher");
    for racer in racers {
        let (since, seqs) = tokio::time::timeout(Duration::from_secs(30), racer).await.expect("in time").expect("racer");
        assert_eq!(seqs, (since + 1..=300).collect::<Vec<_>>(), "since={since}");
    }
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_window_gets_an_explicit_gap_then_live() {
    let mut config = Config::default();
    config.hub.history_messages = 20;
    let serve = start_serve(config).await;
    let http = serve.http_addr();
    let url = located_ws(&serve, "window").await;
    for _ in 1..=50u64 {
        publish_ok(http, "window", None, b"old").await;
    }
    let mut client = WsClient::connect(&url).await;
    let (before, last_seq) = client.join("window", Some(5)).await;
    let gap = &before[0];
    assert_eq!(gap["op"], "gap", "{gap}");
    assert_eq!((gap["first_lost"].as_u64(), gap["last_lost"].as_u64(), gap["resume_from"].as_u64()), (Some(6), Some(30), Some(31)));
    assert_eq!(before[1..].iter().map(seq).collect::<Vec<_>>(), (31..=50).collect::<Vec<_>>());
    assert_eq!(last_seq, 50);
    publish_ok(http, "window", None, b"new").await;
    assert_eq!(seq(&client.next_json().await), 51);

    // The HTTP history route tells the same story.
    let history = get(http, "/v1/rooms/window/messages?since=5").await.json();
    assert_eq!(history["gap"], serde_json::json!({"first_lost": 6, "last_lost": 31, "resume_from": 32}));
    serve.shutdown().await;
}
