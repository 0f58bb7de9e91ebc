//! Bad input of every kind gets the error docs/protocol.md promises, and harms nobody else:
//! a bystander in the room keeps receiving every message throughout.

use linkcast_core::auth::{sign, Claims};
use linkcast_core::room_table::TableLimits;
use serde_json::json;
use tokio_websockets::Message;

use crate::support::an_hour_from_now as later;
use crate::support::http::{http, UPGRADE};
use crate::support::link::{config, start_link, FakeHub};
use crate::support::ws::{ws_url, Got, WsClient};

const SECRET: &str = "test-secret";

fn token(sub: &str, rooms: &[&str], exp: u64) -> String {
    sign(&Claims { sub: sub.into(), exp, rooms: rooms.iter().map(|r| r.to_string()).collect(), iat: None }, SECRET)
}

/// Publishes one message and checks the bystander gets it (and in order).
async fn bystander_still_receives(hub: &FakeHub, bystander: &mut WsClient, expected_seq: &mut u64) {
    *expected_seq += 1;
    let seq = hub.publish("r", r#"{"still":"here"}"#).await;
    assert_eq!(seq, *expected_seq);
    let got = bystander.next_json().await;
    assert_eq!(got["seq"], seq, "bystander keeps receiving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_gets_its_error_and_harms_no_one() {
    let config = config(2, |c| {
        c.auth.jwt_secret = SECRET.into();
        c.link.max_message_bytes = 1024;
        c.link.max_conns_per_user = 2;
        c.link.max_rooms_per_conn = 2;
        c.link.publish_rate = 5;
        c.link.publish_burst = 5;
    });
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    let mut bystander = WsClient::connect_to(addr, Some(&token("bystander", &["*"], later()))).await;
    bystander.join("r", None).await;
    let mut seq = 0;
    bystander_still_receives(&hub, &mut bystander, &mut seq).await;

    // Tokens: malformed, bad signature, expired → 401 with a JSON reason, before upgrade. (No
    // token in the URL is admitted pending its first message: security_session tests that.)
    for (target, reason) in [
        ("/ws?token=garbage".to_string(), "malformed token"),
        (format!("/ws?token={}", sign(&Claims { sub: "x".into(), exp: later(), rooms: vec![], iat: None }, "other")), "bad token signature"),
        (format!("/ws?token={}", token("x", &["*"], 1)), "token expired"),
    ] {
        let res = http(addr, "GET", &target, UPGRADE, b"").await;
        assert_eq!(res.status, 401, "{target}");
        let body: serde_json::Value = serde_json::from_slice(&res.body).expect("JSON body");
        assert_eq!(body["reason"], reason);
        assert!(body["error"].is_string());
    }
    assert!(WsClient::try_connect(&ws_url(addr, Some("garbage"))).await.is_err());
    bystander_still_receives(&hub, &mut bystander, &mut seq).await;

    // Request errors keep the connection open.
    let mut client = WsClient::connect_to(addr, Some(&token("carol", &["r", "s", "t"], later()))).await;
    client.send_message(Message::text("{not json")).await.expect("send");
    assert_eq!(client.next_json().await, json!({"op":"error","code":400,"reason":"malformed JSON"}));
    client.send(json!({"op":"dance","room":"r"})).await;
    assert_eq!(client.next_json().await, json!({"op":"error","code":400,"reason":"unknown op","room":"r"}));
    client.send(json!({"op":"join","room":"bad room!"})).await;
    assert_eq!(client.next_json().await, json!({"op":"error","code":400,"reason":"invalid room name"}));
    client.send(json!({"op":"join","room":"secret"})).await;
    assert_eq!(client.next_json().await, json!({"op":"error","code":403,"reason":"room not allowed by token","room":"secret"}));
    client.send(json!({"op":"publish","room":"secret","data":1,"id":9})).await;
    assert_eq!(
        client.next_json().await,
        json!({"op":"error","code":403,"reason":"room not allowed by token","room":"secret","id":9})
    );
    client.send(json!({"op":"leave","room":"r"})).await;
    assert_eq!(client.next_json().await, json!({"op":"error","code":409,"reason":"not joined","room":"r"}));
    client.join("r", None).await;
    client.send(json!({"op":"join","room":"r"})).await;
    assert_eq!(client.next_json().await, json!({"op":"error","code":409,"reason":"already joined","room":"r"}));
    client.join("s", None).await;
    client.send(json!({"op":"join","room":"t"})).await;
    assert_eq!(client.next_json().await, json!({"op":"error","code":429,"reason":"too many rooms","room":"t"}));
    client.send(json!({"op":"ping"})).await;
    assert_eq!(client.next_json().await, json!({"op":"pong"}));
    bystander_still_receives(&hub, &mut bystander, &mut seq).await;
    assert_eq!(client.next_json().await["seq"], seq, "the offender itself still receives too");

    // Oversize → 1009; binary → 1003.
    let mut big = WsClient::connect_to(addr, Some(&token("big", &["*"], later()))).await;
    big.send(json!({"op":"publish","room":"r","data":"x".repeat(1500)})).await;
    assert_eq!(big.next().await, Got::Close(1009, "message too big".into()));
    let mut binary = WsClient::connect_to(addr, Some(&token("bin", &["*"], later()))).await;
    binary.send_message(Message::binary(vec![0xde, 0xad, 0xbe, 0xef])).await.expect("send");
    assert_eq!(binary.next().await, Got::Close(1003, "binary frames not supported".into()));
    bystander_still_receives(&hub, &mut bystander, &mut seq).await;

    // Too many connections for one user: the oldest is closed with a reason.
    let dup = token("dup", &["*"], later());
    let mut first = WsClient::connect_to(addr, Some(&dup)).await;
    let mut second = WsClient::connect_to(addr, Some(&dup)).await;
    let mut third = WsClient::connect_to(addr, Some(&dup)).await;
    assert_eq!(first.next().await, Got::Close(4003, "too many connections for user".into()));
    for ws in [&mut second, &mut third] {
        ws.send(json!({"op":"ping"})).await;
        assert_eq!(ws.next_json().await, json!({"op":"pong"}));
    }
    bystander_still_receives(&hub, &mut bystander, &mut seq).await;

    // Publish flood: accepted up to the burst, then 429s, then closed with 1008.
    let mut flooder = WsClient::connect_to(addr, Some(&token("flood", &["*"], later()))).await;
    for i in 0..40 {
        // The link may close mid-flood; later sends may fail.
        let _ = flooder.send_message(Message::text(json!({"op":"publish","room":"flood","data":i}).to_string())).await;
    }
    let (mut published, mut limited) = (0, 0);
    let close = loop {
        match flooder.next().await {
            Got::Json(v) if v["op"] == "published" => published += 1,
            Got::Json(v) if v["op"] == "error" => {
                assert_eq!((v["code"].as_u64(), v["reason"].as_str()), (Some(429), Some("rate limited")));
                limited += 1;
            }
            Got::Json(v) => panic!("unexpected {v}"),
            other => break other,
        }
    };
    assert_eq!(close, Got::Close(1008, "publish flood".into()));
    // Acks of accepted publishes may be cut off by the close; never more than the burst.
    assert!(published <= 6, "at most the burst is accepted: {published}");
    assert!(limited >= 1, "429 before the close");
    bystander_still_receives(&hub, &mut bystander, &mut seq).await;
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_connection_limits_are_checked_before_the_upgrade() {
    let config = config(1, |c| {
        c.link.allowed_origins = vec!["https://chat.example".into()];
        c.link.max_connections = 2;
    });
    let (link, _hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    let evil = [UPGRADE, &[("origin", "https://evil.example")]].concat();
    let res = http(addr, "GET", "/ws", &evil, b"").await;
    assert_eq!(res.status, 403);
    assert!(res.text().contains("origin not allowed"), "{}", res.text());
    assert_eq!(http(addr, "GET", "/nope", &[], b"").await.status, 404);
    // Dev mode: no token needed. Two connections fit, the third is refused with 503.
    let mut held = Vec::new();
    for _ in 0..2 {
        let ws = WsClient::try_connect_with(&ws_url(addr, None), &[("origin", "https://chat.example")]).await;
        held.push(ws.expect("allowed origin upgrades"));
    }
    let allowed = [UPGRADE, &[("origin", "https://chat.example")]].concat();
    let res = http(addr, "GET", "/ws", &allowed, b"").await;
    assert_eq!(res.status, 503, "{}", res.text());
    for ws in &mut held {
        ws.assert_pong_next().await;
    }
    // Shutdown closes clients with 1001.
    let mut ws = held.pop().expect("client");
    link.shutdown().await;
    assert_eq!(ws.next().await, Got::Close(1001, "server shutting down".into()));
}
