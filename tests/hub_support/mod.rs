//! Shared helpers of the hub tests: start a hub on loopback, fake Links made of `uplink::pair`
//! ends driven by the test, and a small HTTP client (the hub's own forwarding client).
//!
//! Every wait is bounded (`WAIT`), so a broken hub fails a test instead of hanging it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use linkcast::config::Config;
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind};
use linkcast::hub::forward::{self, HttpResponse};
use linkcast::hub::{HubHandle, HubOptions};
use linkcast_core::placement::LinkId;
use linkcast_core::hub_directory::HubId;
use linkcast::uplink::{pair, HubPort};

/// Longest a test waits for any one thing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A free loopback port (bound then released; fine for tests on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `127.0.0.1:0`.
pub fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Starts a hub with `config` on port 0 (no QUIC).
pub async fn start_hub(id: u32, config: Config) -> HubHandle {
    start_hub_at(id, config, any_addr(), None).await
}

/// Starts a hub on the given addresses.
pub async fn start_hub_at(id: u32, config: Config, http: SocketAddr, quic: Option<SocketAddr>) -> HubHandle {
    linkcast::hub::start(HubOptions { id: HubId(id), config: Arc::new(config), http_addr: http, quic_addr: quic })
        .await
        .expect("hub starts")
}

/// One HTTP request to the hub.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    forward::request(addr, method, path, headers, body).await.expect("http request")
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], b"").await
}

/// `POST /v1/rooms/{room}/messages` with an optional API key.
pub async fn publish(addr: SocketAddr, room: &str, key: Option<&str>, body: &[u8]) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    http(addr, "POST", &format!("/v1/rooms/{room}/messages"), &headers, body).await
}

/// Publishes and returns the seq, failing the test on any error.
pub async fn publish_ok(addr: SocketAddr, room: &str, key: Option<&str>, body: &[u8]) -> u64 {
    let res = publish(addr, room, key, body).await;
    assert_eq!(res.status, 200, "publish failed: {}", res.text());
    res.json()["seq"].as_u64().expect("seq in answer")
}

/// Asserts an error answer: status, JSON content type, `error` and `reason` present.
pub fn assert_error(res: &HttpResponse, status: u16, what: &str) {
    assert_eq!(res.status, status, "{what}: body {}", res.text());
    assert!(res.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{what}: content type");
    let body = res.json();
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: error code in {body}");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{what}: reason in {body}");
}

/// The value of `metric{hub="id"}` in a Prometheus rendering (0 if absent).
pub fn metric(text: &str, name: &str, hub: u32) -> f64 {
    let prefix = format!("{name}{{hub=\"{hub}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// A Link played by the test: the Link's end of an in-process pair attached to a hub.
pub struct FakeLink {
    pub id: u32,
    pub port: HubPort,
    nonce: u64,
}

impl FakeLink {
    /// Attaches a fake Link with id `id` to `hub` (port capacity `capacity` frames).
    pub async fn attach(hub: &HubHandle, id: u32, capacity: usize) -> FakeLink {
        let (port, link_port) = pair(LinkId(id), HubId(0), capacity);
        hub.link_ports().send(link_port).await.expect("hub takes ports");
        let mut link = FakeLink { id, port, nonce: 0 };
        link.sync().await;
        link
    }

    /// Sends a frame to the hub.
    pub async fn send(&self, frame: Frame) {
        self.port.to_hub.send(frame).await.expect("hub connected");
    }

    /// Announces `members` local members of `room` (0 = InterestRemove) and waits until the hub
    /// has processed it.
    pub async fn interest(&mut self, room: &str, members: u64) {
        let builder = FrameBuilder::new(room);
        let builder = if members == 0 { builder.interest_remove() } else { builder };
        self.send(builder.build(&Body::Interest { link: self.id, members })).await;
        self.sync().await;
    }

    /// Round-trips a heartbeat; returns every other frame received before its echo.
    pub async fn sync(&mut self) -> Vec<Frame> {
        self.nonce += 1;
        let nonce = self.nonce;
        self.send(FrameBuilder::new("").build(&Body::Heartbeat { nonce })).await;
        let mut others = Vec::new();
        loop {
            let frame = self.recv().await.expect("heartbeat echo before the port closes");
            match frame.body() {
                ArchivedBody::Heartbeat { nonce: n } if n.to_native() == nonce => return others,
                _ => others.push(frame),
            }
        }
    }

    /// The next frame from the hub (`None` if the hub closed the port); fails after `WAIT`.
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.port.from_hub.recv()).await.expect("frame from hub in time")
    }

    /// Receives `n` frames of kind `Message`, skipping heartbeats.
    pub async fn messages(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.recv().await.expect("port open");
            if frame.kind() == Kind::Message {
                out.push(frame);
            }
        }
        out
    }
}

/// A WebSocket client speaking the JSON protocol of docs/protocol.md.
pub struct WsClient {
    stream: tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl WsClient {
    /// Connects to `url` (e.g. `ws://127.0.0.1:7080/ws`).
    pub async fn connect(url: &str) -> WsClient {
        let builder = tokio_websockets::ClientBuilder::new().uri(url).expect("ws url");
        let (stream, _) = tokio::time::timeout(WAIT, builder.connect()).await.expect("connect in time").expect("ws connect");
        WsClient { stream }
    }

    /// Tries to connect; `None` if the Link refuses or is gone.
    pub async fn try_connect(url: &str) -> Option<WsClient> {
        let builder = tokio_websockets::ClientBuilder::new().uri(url).ok()?;
        let (stream, _) = tokio::time::timeout(WAIT, builder.connect()).await.ok()?.ok()?;
        Some(WsClient { stream })
    }

    /// Sends one JSON message.
    pub async fn send(&mut self, value: serde_json::Value) {
        use futures_util::SinkExt;
        self.stream.send(tokio_websockets::Message::text(value.to_string())).await.expect("ws send");
    }

    /// The next JSON text message; `None` when the connection ended. Fails after `WAIT`.
    pub async fn next(&mut self) -> Option<serde_json::Value> {
        self.next_within(WAIT).await.expect("ws message in time")
    }

    /// The next JSON text message within `wait`: `Err(())` on timeout, `Ok(None)` at the end.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<serde_json::Value>, ()> {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(message))) => {
                    if message.is_close() {
                        return Ok(None);
                    }
                    if let Some(text) = message.as_text() {
                        return Ok(Some(serde_json::from_str(text).expect("server sends JSON")));
                    }
                }
            }
        }
    }

    /// Joins `room` (with `since`) and returns every message before `joined`, then `joined`.
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> (Vec<serde_json::Value>, serde_json::Value) {
        let mut op = serde_json::json!({"op": "join", "room": room});
        if let Some(since) = since {
            op["since"] = since.into();
        }
        self.send(op).await;
        let mut before = Vec::new();
        loop {
            let message = self.next().await.expect("open until joined");
            if message["op"] == "joined" {
                return (before, message);
            }
            assert_ne!(message["op"], "error", "join refused: {message}");
            before.push(message);
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        use futures_util::SinkExt;
        let _ = self.stream.close().await;
    }
}
