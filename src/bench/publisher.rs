//! The bench publisher: sends stamped payloads at a steady rate, spread over rooms, and counts
//! what each room was sent (the basis of "deliveries expected").
//!
//! Message `k` (0-based) goes to room `k mod rooms` and is due at `start + k / rate`; it is
//! stamped with the wall clock when it is handed to the socket (see `payload.rs`), so a publisher
//! that falls behind schedule does not make latency look better than it is. Paths:
//! - linkcast with `--http`: `POST /v1/rooms/{room}/messages` over `--publish-conns` keep-alive
//!   HTTP connections (the publish API a business backend uses; not rate limited in dev mode);
//! - linkcast with only `--ws`: `publish` ops on one WebSocket (subject to the Link's
//!   per-connection publish rate);
//! - raw (uWebSockets.js): the payload as one text message on one WebSocket;
//! - NATS: `PUB room len` on one WebSocket.
//!
//! Bounded by `messages` and `duration`, whichever comes first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::client::http::HttpApi;
use crate::client::ws::{WsTransport, WsUrl};
use linkcast_core::protocol;

use super::fleet::Proto;
use super::nats;
use super::payload;

/// What to publish, where, how fast.
#[derive(Clone, Debug)]
pub(crate) struct PublishPlan {
    /// Wire dialect.
    pub proto: Proto,
    /// Hub base URL (linkcast): publish over HTTP.
    pub http: Option<String>,
    /// API key for HTTP publishes.
    pub api_key: Option<String>,
    /// WebSocket URL to publish on when there is no `http` (and always for raw/NATS).
    pub ws: Option<String>,
    /// JWT for a linkcast WebSocket publisher.
    pub token: Option<String>,
    /// Room names; message `k` goes to `rooms[k % len]`.
    pub rooms: Vec<String>,
    /// Messages per second (all rooms together).
    pub rate: f64,
    /// Payload size, bytes.
    pub size: usize,
    /// Most messages.
    pub messages: u64,
    /// Longest publishing time.
    pub duration: Duration,
    /// Concurrent HTTP connections.
    pub conns: usize,
}

/// What the publisher did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Published {
    /// Messages accepted (HTTP 200 / written to the socket).
    pub sent: u64,
    /// Publishes refused or failed.
    pub errors: u64,
    /// First failure, for the report.
    pub first_error: Option<String>,
    /// Accepted messages per room index.
    pub per_room: Vec<u64>,
    /// Wall clock (µs) of the first send.
    pub first_send_us: u64,
    /// Wall clock (µs) of the last send.
    pub last_send_us: u64,
}

/// Live counters (for the progress bar and the resume scenario's timing).
#[derive(Debug, Default)]
pub(crate) struct PublishCounters {
    /// Messages sent so far.
    pub sent: AtomicU64,
}

/// Runs the plan to completion.
pub(crate) async fn run(plan: PublishPlan, counters: Arc<PublishCounters>) -> Published {
    let total = plan.messages.min((plan.rate * plan.duration.as_secs_f64()).ceil() as u64).max(1);
    let per_room: Arc<Vec<AtomicU64>> = Arc::new((0..plan.rooms.len()).map(|_| AtomicU64::new(0)).collect());
    let first_send_us = crate::clock::now_micros();
    let start = Instant::now();
    let (errors, first_error) = match (&plan.proto, &plan.http) {
        (Proto::Linkcast, Some(http)) => http_publishers(&plan, http, total, start, &per_room, &counters).await,
        _ => ws_publisher(&plan, total, start, &per_room, &counters).await,
    };
    let per_room: Vec<u64> = per_room.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    Published {
        sent: per_room.iter().sum(),
        errors,
        first_error,
        per_room,
        first_send_us,
        last_send_us: crate::clock::now_micros(),
    }
}

fn due(start: Instant, k: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(k as f64 / rate.max(0.001))
}

async fn http_publishers(
    plan: &PublishPlan,
    http: &str,
    total: u64,
    start: Instant,
    per_room: &Arc<Vec<AtomicU64>>,
    counters: &Arc<PublishCounters>,
) -> (u64, Option<String>) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.conns.max(1) {
        let mut api = match HttpApi::new(http, plan.api_key.clone()) {
            Ok(api) => api,
            Err(e) => return (total, Some(e.to_string())),
        };
        let (next, per_room, counters, plan) = (next.clone(), per_room.clone(), counters.clone(), plan.clone());
        tasks.spawn(async move {
            let mut errors = 0u64;
            let mut first_error = None;
            // Bounded: each iteration claims one of `total` message numbers.
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                tokio::time::sleep_until(due(start, k, plan.rate)).await;
                let room = (k % plan.rooms.len() as u64) as usize;
                let body = Bytes::from(payload::make(crate::clock::now_micros(), plan.size));
                match api.publish(&plan.rooms[room], body, None).await {
                    Ok(_seq) => {
                        per_room[room].fetch_add(1, Ordering::Relaxed);
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (errors, first_error)
        });
    }
    let mut errors = 0;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        if let Ok((e, first)) = done {
            errors += e;
            if first_error.is_none() {
                first_error = first;
            }
        }
    }
    (errors, first_error)
}

async fn ws_publisher(
    plan: &PublishPlan,
    total: u64,
    start: Instant,
    per_room: &Arc<Vec<AtomicU64>>,
    counters: &Arc<PublishCounters>,
) -> (u64, Option<String>) {
    let Some(target) = &plan.ws else {
        return (total, Some("no publish target: give --http (linkcast) or --ws".into()));
    };
    let url = match WsUrl::parse(target, plan.token.as_deref()) {
        Ok(url) => url,
        Err(e) => return (total, Some(e.to_string())),
    };
    let mut conn = match WsTransport::connect(&url, None, Duration::from_secs(10), &crate::tls::Trust::LoopbackDev).await {
        Ok(conn) => conn,
        Err(e) => return (total, Some(e.to_string())),
    };
    if plan.proto == Proto::Nats {
        if let Err(e) = conn.send_text(nats::connect()).await {
            return (total, Some(e.to_string()));
        }
    }
    let mut k = 0u64;
    // Bounded: k grows to `total`.
    while k < total {
        tokio::time::sleep_until(due(start, k, plan.rate)).await;
        // Send everything due now in one flush.
        let now = Instant::now();
        let mut batch = 0;
        while k < total && due(start, k, plan.rate) <= now && batch < 1024 {
            let room = (k % plan.rooms.len() as u64) as usize;
            let data = payload::make(crate::clock::now_micros(), plan.size);
            let text = match plan.proto {
                // No id: nobody reads the acks here, and an id would be an idempotency key the hub
                // remembers — a rerun with the same token would have its publishes deduped.
                Proto::Linkcast => protocol::publish_json(&plan.rooms[room], data.as_bytes(), None),
                Proto::Raw => data,
                Proto::Nats => nats::publish(&plan.rooms[room], &data),
            };
            if let Err(e) = conn.feed_text(text).await {
                return (total - k, Some(e.to_string()));
            }
            per_room[room].fetch_add(1, Ordering::Relaxed);
            counters.sent.fetch_add(1, Ordering::Relaxed);
            k += 1;
            batch += 1;
        }
        if let Err(e) = conn.flush().await {
            return (total - k, Some(e.to_string()));
        }
    }
    // Let the last frames leave before the socket closes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.close().await;
    (0, None)
}
