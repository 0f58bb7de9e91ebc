//! Shared by the client library's end-to-end tests (`client_resume.rs`, `client_quic.rs`):
//! client options against a running `serve`, and a bounded wait for the next event.

#![allow(dead_code)]

use std::time::Duration;

use linkcast::client::{Backoff, Client, ClientOptions, Event, SessionConfig, Target, Transport};
use linkcast::serve::ServeHandle;

/// Options for a client that locates `room` through `serve`'s hub, then uses `transport`;
/// reconnect backoff starts at `initial` (at most 4× that).
pub fn options(serve: &ServeHandle, room: &str, transport: Transport, token: Option<String>, initial: Duration) -> ClientOptions {
    let target = Target::Locate { http: format!("http://{}", serve.http_addr()), room: room.into(), transport };
    let mut options = ClientOptions::new(target);
    options.token = token;
    options.session = SessionConfig {
        backoff: Backoff { initial, max: initial * 4, overload_min: initial, stable_after: Duration::from_secs(60) },
        max_queued_publishes: 16,
    };
    options.seed = 11;
    options
}

/// Next event within 5 s (every wait in these tests is bounded).
pub async fn next(client: &mut Client) -> Event {
    tokio::time::timeout(Duration::from_secs(5), client.next_event())
        .await
        .expect("an event within 5 s")
        .expect("client running")
}
