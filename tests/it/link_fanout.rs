//! Link fan-out over real loopback sockets against a fake hub (the real `RoomTable`):
//! every member gets every message once and in order, across shards; `join since` replays
//! without duplicates or loss against concurrent live traffic; the history window's edge is an
//! explicit gap.

use std::time::Duration;

use futures_util::future::join_all;
use linkcast_core::room::RoomLimits;
use linkcast_core::room_table::TableLimits;
use serde_json::json;

use crate::support::http::get;
use crate::support::link::{config, start_link};
use crate::support::ws::WsClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_a_member_with_the_protocol_shape() {
    let (link, hub) = start_link(config(1, |_| {}), TableLimits::default()).await;
    let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
    let (replayed, last_seq) = ws.join("lobby", None).await;
    assert!(replayed.is_empty());
    assert_eq!(last_seq, 0);
    let seq = hub.publish("lobby", r#"{"text":"hi"}"#).await;
    let got = ws.next_json().await;
    assert_eq!(got["room"], "lobby");
    assert_eq!(got["seq"], seq);
    assert_eq!(got["from"], "server");
    assert_eq!(got["data"], json!({"text": "hi"}));
    assert!(got["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000_000));
    // Text payloads are delivered as JSON strings.
    hub.publish_raw("lobby", "bob", 0, b"plain text").await;
    assert_eq!(ws.next_json().await["data"], "plain text");
    // A client publish comes back as a message and an ack.
    ws.send(json!({"op":"publish","room":"lobby","data":{"n":1},"id":"k1"})).await;
    let (mut ack, mut echo) = (None, None);
    for _ in 0..2 {
        let value = ws.next_json().await;
        if value["op"] == "published" {
            ack = Some(value);
        } else {
            echo = Some(value);
        }
    }
    let (ack, echo) = (ack.expect("ack"), echo.expect("message"));
    let epoch = ack["epoch"].as_str().expect("the ack names the room's epoch").to_owned();
    assert_eq!(ack, json!({"op":"published","room":"lobby","seq":3,"id":"k1","epoch":epoch}));
    assert_eq!(echo["seq"], 3);
    assert_eq!(echo["data"], json!({"n": 1}));
    assert!(echo["from"].as_str().is_some_and(|f| f.starts_with("anon-")));
    ws.send(json!({"op":"ping"})).await;
    assert_eq!(ws.next_json().await, json!({"op":"pong"}));
    ws.send(json!({"op":"leave","room":"lobby"})).await;
    assert_eq!(ws.next_json().await, json!({"op":"left","room":"lobby"}));
    // /healthz and /metrics share the port.
    let health = get(link.ws_addr(), "/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(get(link.ws_addr(), "/metrics").await.status, 200);
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_across_shards_get_every_message_once_in_order() {
    const CLIENTS: usize = 1000;
    const MESSAGES: u64 = 200;
    let (link, hub) = start_link(config(2, |_| {}), TableLimits::default()).await;
    let addr = link.ws_addr();
    let clients = join_all((0..CLIENTS).map(|_| async move {
        let mut ws = WsClient::connect_to(addr, None).await;
        let (_, last_seq) = ws.join("hot", None).await;
        assert_eq!(last_seq, 0);
        ws
    }))
    .await;
    let per_shard = link.shard_connections();
    assert_eq!(per_shard.iter().sum::<usize>(), CLIENTS);
    assert!(per_shard.iter().all(|&n| n > 0), "SO_REUSEPORT spreads connections over shards: {per_shard:?}");
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(MESSAGES as usize);
                while seqs.len() < MESSAGES as usize {
                    let value = ws.next_json().await;
                    assert_eq!(value["data"]["n"], value["seq"], "payload matches its seq");
                    seqs.push(value["seq"].as_u64().expect("seq"));
                }
                // Nothing extra arrives afterwards.
                ws.send(json!({"op":"ping"})).await;
                assert_eq!(ws.next_json().await, json!({"op":"pong"}));
                seqs
            })
        })
        .collect();
    for n in 1..=MESSAGES {
        assert_eq!(hub.publish("hot", &format!(r#"{{"n":{n}}}"#)).await, n);
    }
    let expected: Vec<u64> = (1..=MESSAGES).collect();
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), expected);
    }
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_replays_then_live_without_duplicates_or_loss() {
    let (link, hub) = start_link(config(2, |_| {}), TableLimits::default()).await;
    let addr = link.ws_addr();
    // A member keeps the room's interest up, so live frames flow while others join.
    let mut anchor = WsClient::connect_to(addr, None).await;
    anchor.join("r", None).await;
    for n in 1..=20u64 {
        hub.publish("r", &format!(r#"{{"n":{n}}}"#)).await;
    }
    const TOTAL: u64 = 400;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for n in 21..=TOTAL {
                hub.publish("r", &format!(r#"{{"n":{n}}}"#)).await;
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    // Clients join at different moments with different `since`, while messages keep coming.
    let joiners: Vec<_> = (0..40u64)
        .map(|i| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                let since = (i * 7) % 20;
                let mut ws = WsClient::connect_to(addr, None).await;
                let (replayed, last_seq) = ws.join("r", Some(since)).await;
                let mut seqs: Vec<u64> = replayed.iter().map(|v| v["seq"].as_u64().expect("seq")).collect();
                assert_eq!(seqs.first().copied().unwrap_or(since + 1), since + 1, "replay starts after since");
                assert_eq!(seqs.last().copied().unwrap_or(since), last_seq, "replay ends at last_seq");
                while seqs.last().copied().unwrap_or(since) < TOTAL {
                    seqs.push(ws.next_json().await["seq"].as_u64().expect("seq"));
                }
                (since, seqs)
            })
        })
        .collect();
    publisher.await.expect("publisher");
    for joiner in joiners {
        let (since, seqs) = joiner.await.expect("joiner");
        let expected: Vec<u64> = (since + 1..=TOTAL).collect();
        assert_eq!(seqs, expected, "since={since}: every message once, in order");
    }
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_beyond_history_gets_a_gap_then_the_window() {
    let limits = TableLimits { room: RoomLimits { history_messages: 5, ..RoomLimits::default() }, ..TableLimits::default() };
    let (link, hub) = start_link(config(1, |_| {}), limits).await;
    for n in 1..=20u64 {
        hub.publish("old", &format!("{n}")).await;
    }
    let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
    let (before, last_seq) = ws.join("old", Some(2)).await;
    assert_eq!(last_seq, 20);
    assert_eq!(before[0], json!({"op":"gap","room":"old","first_lost":3,"last_lost":15,"resume_from":16}));
    let seqs: Vec<u64> = before[1..].iter().map(|v| v["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![16, 17, 18, 19, 20]);
    // A `since` ahead of the room (the room forgot messages this member saw): an explicit
    // reset, then the room's current history from its start (a gap for what it no longer holds).
    let mut again = WsClient::connect_to(link.ws_addr(), None).await;
    let (before, last_seq) = again.join("old", Some(99)).await;
    assert_eq!(last_seq, 20);
    assert_eq!((&before[0]["op"], &before[0]["room"], &before[0]["last_seq"]), (&json!("reset"), &json!("old"), &json!(20)), "{before:?}");
    assert!(before[0]["epoch"].as_str().is_some_and(|e| e.len() == 16), "{before:?}");
    assert_eq!(before[1], json!({"op":"gap","room":"old","first_lost":1,"last_lost":15,"resume_from":16}));
    let seqs: Vec<u64> = before[2..].iter().map(|v| v["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, vec![16, 17, 18, 19, 20]);
    hub.publish("old", "21").await;
    assert_eq!(again.next_json().await["seq"], 21);
    assert_eq!(ws.next_json().await["seq"], 21);
    link.shutdown().await;
}

/// Connections are slots of their shard's driver (`ws_driver.rs`), not tasks: one that goes away
/// (abruptly or with a close frame) frees its slot, and connections that reuse those slots are
/// served as the others — no late wake of a gone connection reaches them, nothing is delivered
/// twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_leave_free_their_slots_for_new_ones() {
    const FIRST: usize = 40;
    let (link, hub) = start_link(config(1, |_| {}), TableLimits::default()).await;
    let addr = link.ws_addr();
    let connect = || async move {
        let mut ws = WsClient::connect_to(addr, None).await;
        assert_eq!(ws.join("slots", None).await.1, 0);
        ws
    };
    let mut clients = join_all((0..FIRST).map(|_| connect())).await;
    // Half leave: every other one drops its socket, the rest close properly.
    let leaving: Vec<WsClient> = clients.drain(FIRST / 2..).collect();
    for (n, ws) in leaving.into_iter().enumerate() {
        if n % 2 == 0 {
            drop(ws);
        } else {
            ws.close().await;
        }
    }
    let handle = &link;
    crate::support::eventually(Duration::from_secs(10), "the leavers' connections end", || async move {
        (handle.shard_connections() == vec![FIRST / 2]).then_some(())
    })
    .await;
    // New connections take the freed slots.
    clients.extend(join_all((0..FIRST / 2).map(|_| connect())).await);
    assert_eq!(link.shard_connections(), vec![FIRST]);
    for n in 1..=3 {
        hub.publish("slots", &format!(r#"{{"n":{n}}}"#)).await;
    }
    for ws in &mut clients {
        for n in 1..=3u64 {
            let got = ws.next_json().await;
            assert_eq!((got["room"].as_str(), got["seq"].as_u64(), got["data"]["n"].as_u64()), (Some("slots"), Some(n), Some(n)), "{got}");
        }
        ws.assert_pong_next().await; // nothing more, nothing twice
    }
    link.shutdown().await;
}

