//! The hub's backend hooks against a real HTTP backend (axum on a free loopback port, in this
//! test) and `serve` (hub + Link in-process) with real WebSocket clients:
//!
//! - the publish proxy allows, denies (the publisher gets 403 and the backend's reason, nothing
//!   is sequenced) and replaces (members get the backend's data); HTTP API publishes are not
//!   proxied; every request carries a valid `X-Linkcast-Signature`;
//! - a backend slower than `publish_timeout_ms`: fail-closed refuses the publish 503 with a
//!   retry hint, fail-open delivers it;
//! - webhooks: `user_connected`, `room_occupied`, `room_vacated`, `user_disconnected` arrive
//!   signed and in order, after the backend answered 500 twice (the same batch retried, each
//!   event delivered once);
//! - with a Redis store (`redis-server` process): the proxy decides before the store sequences,
//!   and webhooks see the interest of that path too;
//! - a secured hub with a hook URL and no `hooks.secret` refuses to start.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use linkcast::config::Config;
use linkcast::serve::ServeHandle;

use crate::support::http::{get_json, metric, metrics_text, publish_ok};
use crate::support::ws::{ws_url, WsClient};
use crate::support::{eventually, STEP};

const SECRET: &str = "hooks-test-secret";

/// What the test backend saw and how it answers.
#[derive(Default)]
struct Seen {
    /// Bodies of signed proxy requests, parsed.
    publishes: Vec<Value>,
    /// Bodies of webhook requests answered 2xx, parsed.
    events: Vec<Value>,
    /// Bodies of webhook requests answered 500 (on purpose).
    failed_events: Vec<Value>,
    /// Requests whose signature did not verify (answered 401).
    bad_signatures: usize,
    /// Webhook requests still to fail with 500.
    fail_next_events: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn seen(shared: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when `headers` carry the HMAC-SHA256 of `body` under [`SECRET`], as documented.
fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("x-linkcast-signature").and_then(|v| v.to_str().ok()) else { return false };
    let Some(hex) = header.strip_prefix("sha256=") else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()) else { return false };
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    hex == expected && headers.get("content-type").is_some_and(|t| t == "application/json")
}

/// The proxy's rule: text with "spam" is denied, "censor" replaced, "slow" answered after 1.5 s
/// (beyond the hub's timeout), anything else allowed.
async fn publish_hook(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    if !signed(&headers, &body) {
        seen(&shared).bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else { return (StatusCode::BAD_REQUEST, "not JSON".into()) };
    seen(&shared).publishes.push(request.clone());
    let mut slow = false;
    let results: Vec<Value> = request["publishes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let text = p["data"]["text"].as_str().unwrap_or_default();
            let id = p["id"].clone();
            if text.contains("spam") {
                json!({"id": id, "action": "deny", "reason": "no spam, please"})
            } else if text.contains("censor") {
                json!({"id": id, "action": "replace", "data": {"text": "***", "by": p["user"]}})
            } else {
                slow |= text.contains("slow");
                json!({"id": id, "action": "allow"})
            }
        })
        .collect();
    if slow {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    (StatusCode::OK, json!({ "results": results }).to_string())
}

async fn events_hook(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut seen = seen(&shared);
    if !signed(&headers, &body) {
        seen.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else { return StatusCode::BAD_REQUEST };
    if seen.fail_next_events > 0 {
        seen.fail_next_events -= 1;
        seen.failed_events.push(request);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    seen.events.push(request);
    StatusCode::OK
}

/// Starts the backend on a free loopback port.
async fn start_backend(shared: Shared) -> SocketAddr {
    let app = axum::Router::new()
        .route("/hooks/publish", post(publish_hook))
        .route("/hooks/events", post(events_hook))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn proxied_config(backend: SocketAddr, fail_open: bool) -> Config {
    let mut config = Config::default();
    config.hooks.publish_url = format!("http://{backend}/hooks/publish");
    config.hooks.publish_timeout_ms = 300;
    config.hooks.publish_fail_open = fail_open;
    config.hooks.secret = SECRET.into();
    config
}

async fn start_serve(config: Config) -> ServeHandle {
    crate::support::start_serve(config, false).await
}

/// Reads `client` until a message matches `wanted` (skipping others, such as the publisher's
/// own copy of a message or its ack).
async fn next_where(client: &mut WsClient, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let within = tokio::time::Instant::now() + STEP;
    loop {
        let value = tokio::time::timeout_at(within, client.next_json()).await.unwrap_or_else(|_| panic!("{what}: not within {STEP:?}"));
        if wanted(&value) {
            return value;
        }
    }
}

fn publish(room: &str, text: &str, id: &str) -> Value {
    json!({"op": "publish", "room": room, "data": {"text": text}, "id": id})
}

/// The next room message (not a control op).
async fn next_message(client: &mut WsClient) -> Value {
    next_where(client, "a room message", |v| v.get("op").is_none() && v.get("seq").is_some()).await
}

/// The next answer to publish `id`: `published` or `error`.
async fn answer_to(client: &mut WsClient, id: &str) -> Value {
    next_where(client, "a publish answer", |v| v["id"] == id && (v["op"] == "published" || v["op"] == "error")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_allows_denies_and_replaces_client_publishes_and_signs_every_request() {
    let shared = Shared::default();
    let backend = start_backend(shared.clone()).await;
    let serve = start_serve(proxied_config(backend, false)).await;
    let url = ws_url(serve.ws_addr(), None);
    let mut member = WsClient::connect(&url).await;
    member.join("proxied", None).await;
    let mut publisher = WsClient::connect(&url).await;

    // allow: sequenced as is.
    publisher.send(publish("proxied", "hello", "p1")).await;
    let ack = answer_to(&mut publisher, "p1").await;
    assert_eq!((&ack["op"], &ack["seq"]), (&json!("published"), &json!(1)), "{ack}");
    let message = next_message(&mut member).await;
    assert_eq!((&message["seq"], &message["data"]), (&json!(1), &json!({"text": "hello"})), "{message}");

    // deny: 403 with the backend's reason, nothing sequenced.
    publisher.send(publish("proxied", "buy spam now", "p2")).await;
    let refused = answer_to(&mut publisher, "p2").await;
    assert_eq!((&refused["op"], &refused["code"], &refused["reason"]), (&json!("error"), &json!(403), &json!("no spam, please")), "{refused}");

    // replace: members get the backend's data, under the next seq.
    publisher.send(publish("proxied", "censor me", "p3")).await;
    let ack = answer_to(&mut publisher, "p3").await;
    assert_eq!((&ack["op"], &ack["seq"]), (&json!("published"), &json!(2)), "{ack}");
    let message = next_message(&mut member).await;
    assert_eq!(message["seq"], 2, "the denied publish took no seq: {message}");
    assert_eq!(message["data"]["text"], "***", "{message}");
    assert_eq!(message["data"]["by"], message["from"], "the backend saw the publisher's user id: {message}");

    // A retried publish (same id) is deduplicated after the proxy, as without one.
    publisher.send(publish("proxied", "hello", "p1")).await;
    let again = answer_to(&mut publisher, "p1").await;
    assert_eq!((&again["op"], &again["seq"]), (&json!("published"), &json!(1)), "{again}");

    // HTTP publishes come from the backend itself: not proxied.
    assert_eq!(publish_ok(serve.http_addr(), "proxied", None, br#"{"text":"via http, spam included"}"#).await, 3);
    let message = next_message(&mut member).await;
    assert_eq!((&message["seq"], &message["data"]["text"]), (&json!(3), &json!("via http, spam included")));

    let history = get_json(serve.http_addr(), "/v1/rooms/proxied/messages?since=0").await;
    let texts: Vec<&Value> = history["messages"].as_array().expect("messages").iter().map(|m| &m["data"]["text"]).collect();
    assert_eq!(texts, vec!["hello", "***", "via http, spam included"], "{history}");

    {
        let seen = seen(&shared);
        assert_eq!(seen.bad_signatures, 0);
        let proxied: Vec<Value> = seen.publishes.iter().flat_map(|r| r["publishes"].as_array().cloned().unwrap_or_default()).collect();
        assert_eq!(proxied.len(), 4, "three publishes and the retry, not the HTTP one: {proxied:?}");
        assert!(proxied.iter().all(|p| p["room"] == "proxied" && p["user"].as_str().is_some_and(|u| !u.is_empty()) && p["id"].is_u64()), "{proxied:?}");
    }
    // The decisions are counted (other tests of this process may add to the same hub label).
    let metrics = metrics_text(serve.http_addr()).await;
    for action in ["allow", "deny", "replace"] {
        let decided = metric(&metrics, "linkcast_hub_hook_publish_decisions_total", &[("action", action)]);
        assert!(decided >= 1.0, "{action}: {decided}");
    }
    assert!(metric(&metrics, "linkcast_hub_hook_publish_requests_total", &[]) >= 4.0);
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_past_the_timeout_refuses_503_when_closed_and_delivers_when_open() {
    let shared = Shared::default();
    let backend = start_backend(shared.clone()).await;
    for fail_open in [false, true] {
        let serve = start_serve(proxied_config(backend, fail_open)).await;
        let url = ws_url(serve.ws_addr(), None);
        let mut member = WsClient::connect(&url).await;
        member.join("slow", None).await;
        let mut publisher = WsClient::connect(&url).await;
        let started = std::time::Instant::now();
        publisher.send(publish("slow", "slow one", "s1")).await;
        let answer = answer_to(&mut publisher, "s1").await;
        assert!(started.elapsed() < Duration::from_millis(1400), "answered at the hub's timeout, not the backend's: {:?}", started.elapsed());
        if fail_open {
            assert_eq!((&answer["op"], &answer["seq"]), (&json!("published"), &json!(1)), "fail-open: {answer}");
            let message = next_message(&mut member).await;
            assert_eq!(message["data"]["text"], "slow one");
        } else {
            assert_eq!((&answer["op"], &answer["code"], &answer["reason"]), (&json!("error"), &json!(503), &json!("publish proxy unavailable")), "{answer}");
            assert!(answer["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "a retry hint: {answer}");
            // The proxy recovers (a new connection) for the next publish.
            publisher.send(publish("slow", "fine again", "s2")).await;
            let ack = answer_to(&mut publisher, "s2").await;
            assert_eq!((&ack["op"], &ack["seq"]), (&json!("published"), &json!(1)), "nothing was sequenced before: {ack}");
            let message = next_message(&mut member).await;
            assert_eq!(message["data"]["text"], "fine again");
        }
        serve.shutdown().await;
    }
    assert_eq!(seen(&shared).bad_signatures, 0);
}

/// A token for `sub` (dev mode takes tokens at their word; built from JSON so it keeps
/// compiling as `Claims` gains optional fields).
fn token(sub: &str) -> String {
    let claims: linkcast_core::auth::Claims =
        serde_json::from_value(json!({"sub": sub, "exp": crate::support::an_hour_from_now(), "rooms": ["*"]})).expect("claims");
    linkcast_core::auth::sign(&claims, "any")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_report_users_and_rooms_in_order_after_retries() {
    let shared = Shared::default();
    seen(&shared).fail_next_events = 2;
    let backend = start_backend(shared.clone()).await;
    let mut config = Config::default();
    config.hooks.events_url = format!("http://{backend}/hooks/events");
    config.hooks.events_flush_ms = 50;
    config.hooks.secret = SECRET.into();
    let serve = start_serve(config).await;

    let mut bob = WsClient::connect(&ws_url(serve.ws_addr(), Some(&token("bob")))).await;
    // Every connection of bob is in user:bob (joined here explicitly; the Link may also do it
    // on its own, then this join changes nothing).
    bob.send(json!({"op": "join", "room": "user:bob"})).await;
    let hooked = |seen: &Seen| -> Vec<(String, String)> {
        seen.events
            .iter()
            .flat_map(|request| request["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["user"] == "bob" || e["room"] == "hooked-lobby")
            .map(|e| (e["type"].as_str().unwrap_or_default().to_owned(), e["room"].as_str().or(e["user"].as_str()).unwrap_or_default().to_owned()))
            .collect()
    };
    eventually(STEP, "user_connected", || {
        let events = hooked(&seen(&shared));
        async move { (!events.is_empty()).then_some(()) }
    })
    .await;
    bob.send(json!({"op": "join", "room": "hooked-lobby"})).await;
    next_where(&mut bob, "joined hooked-lobby", |v| v["op"] == "joined" && v["room"] == "hooked-lobby").await;
    bob.send(json!({"op": "leave", "room": "hooked-lobby"})).await;
    eventually(STEP, "room_vacated", || {
        let done = hooked(&seen(&shared)).len() >= 3;
        async move { done.then_some(()) }
    })
    .await;
    bob.close().await;
    let events = eventually(STEP, "user_disconnected", || {
        let events = hooked(&seen(&shared));
        async move { (events.len() >= 4).then_some(events) }
    })
    .await;
    let pair = |t: &str, who: &str| (t.to_owned(), who.to_owned());
    assert_eq!(
        events,
        vec![
            pair("user_connected", "bob"),
            pair("room_occupied", "hooked-lobby"),
            pair("room_vacated", "hooked-lobby"),
            pair("user_disconnected", "bob")
        ],
        "each once, in order"
    );
    {
        let seen = seen(&shared);
        assert_eq!(seen.bad_signatures, 0);
        assert_eq!(seen.failed_events.len(), 2, "answered 500 twice");
        assert_eq!(seen.failed_events[0], seen.failed_events[1], "the same batch retried");
        assert_eq!(seen.events[0], seen.failed_events[0], "then delivered once");
        let all: Vec<&Value> = seen.events.iter().flat_map(|r| r["events"].as_array().into_iter().flatten()).collect();
        assert!(all.iter().all(|e| e["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000_000)), "ts in micros: {all:?}");
        assert!(all.iter().all(|e| e["type"] != "room_occupied" || !e["room"].as_str().is_some_and(|r| r.starts_with("user:"))), "no room events for user: rooms");
    }
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_redis_store_the_proxy_decides_before_the_store_sequences_and_webhooks_report() {
    let redis = crate::support::redis::RedisServer::start().await;
    let shared = Shared::default();
    let backend = start_backend(shared.clone()).await;
    let mut config = proxied_config(backend, false);
    config.store.redis = redis.url();
    config.hooks.events_url = format!("http://{backend}/hooks/events");
    config.hooks.events_flush_ms = 50;
    let serve = start_serve(config).await;
    let url = ws_url(serve.ws_addr(), None);
    let mut member = WsClient::connect(&url).await;
    member.join("durable-proxied", None).await;
    let mut publisher = WsClient::connect(&url).await;

    publisher.send(publish("durable-proxied", "spam", "d1")).await;
    let refused = answer_to(&mut publisher, "d1").await;
    assert_eq!((&refused["code"], &refused["reason"]), (&json!(403), &json!("no spam, please")), "{refused}");
    publisher.send(publish("durable-proxied", "censor", "d2")).await;
    let ack = answer_to(&mut publisher, "d2").await;
    assert_eq!((&ack["op"], &ack["seq"]), (&json!("published"), &json!(1)), "{ack}");
    let message = next_message(&mut member).await;
    assert_eq!((&message["seq"], &message["data"]["text"]), (&json!(1), &json!("***")), "{message}");
    let history = get_json(serve.http_addr(), "/v1/rooms/durable-proxied/messages?since=0").await;
    let texts: Vec<&Value> = history["messages"].as_array().expect("messages").iter().map(|m| &m["data"]["text"]).collect();
    assert_eq!(texts, vec!["***"], "the store holds the replaced data only: {history}");

    eventually(STEP, "room_occupied from the store's path", || {
        let occupied = seen(&shared)
            .events
            .iter()
            .flat_map(|r| r["events"].as_array().cloned().unwrap_or_default())
            .any(|e| e["type"] == "room_occupied" && e["room"] == "durable-proxied");
        async move { occupied.then_some(()) }
    })
    .await;
    assert_eq!(seen(&shared).bad_signatures, 0);
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_hub_with_a_hook_url_and_no_secret_refuses_to_start() {
    let mut config = Config::default();
    config.auth.jwt_secret = "secured".into();
    config.hooks.events_url = "http://127.0.0.1:9/hooks/events".into();
    let options = linkcast::serve::ServeOptions {
        config: Arc::new(config),
        http_addr: crate::support::any_addr(),
        ws_addr: crate::support::any_addr(),
        quic_addr: None,
        admin_addr: None,
    };
    let error = match linkcast::serve::start(options).await {
        Ok(_) => panic!("a secured hub with a hook URL and no secret started"),
        Err(error) => error,
    };
    assert!(error.to_string().contains("hooks.secret"), "{error}");
}
