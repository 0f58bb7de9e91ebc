//! What every integration test shares: starting nodes on loopback, the test clients, waiting.
//!
//! - [`http`]: one small HTTP/1.1 client (the hub's API, a Link's `/healthz` and upgrade
//!   refusals, chromedriver), the hub API's requests and answers, Prometheus parsing;
//! - [`ws`]: one WebSocket client speaking docs/protocol.md's JSON;
//! - [`checker`] and [`member`]: the no-silent-loss invariant, and a WebSocket member whose
//!   every received message goes through it;
//! - [`hub`], [`link`], [`client`]: in-process nodes and stand-ins (a hub with fake Links, a
//!   Link with a fake hub, the client library against `serve`);
//! - [`cluster`]: `linkcast` processes from one TOML config (ports chosen here, the whole start
//!   retried if one was taken meanwhile), a UDP relay to cut a path, each process signalled
//!   only through the pid this test spawned.
//! - [`redis`]: `redis-server` processes (one node, or a Redis Cluster) on free loopback ports,
//!   killed and restarted through the pid this test spawned.
//!
//! Every wait is bounded: a broken node fails a test, never hangs it. Waiting for a condition is
//! [`eventually`] (or a client's own bounded `wait_*`), never a fixed sleep; "nothing else
//! arrives" is checked with a sentinel published afterwards that must be the next message.
#![allow(dead_code, unreachable_pub)]

pub mod attack;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod http;
pub mod hub;
pub mod link;
pub mod member;
pub mod pki;
pub mod redis;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkcast::config::Config;
use linkcast::serve::{ServeHandle, ServeOptions};

/// Longest any single expected step (a connect, an answer, the next message) may take.
pub const STEP: Duration = Duration::from_secs(20);

/// `127.0.0.1:0`: a listener on any free port, its real address read back from the handle.
pub fn any_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts `serve` (a hub and a Link in this process) on port 0, with a QUIC listener for native
/// clients if `quic`.
pub async fn start_serve(config: Config, quic: bool) -> ServeHandle {
    let options =
        ServeOptions { config: Arc::new(config), http_addr: any_addr(), ws_addr: any_addr(), quic_addr: quic.then(any_addr), admin_addr: None };
    let serve = linkcast::serve::start(options).await.expect("serve starts");
    assert_eq!(serve.quic_addr().is_some(), quic, "serve has a QUIC listener iff asked");
    serve
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds since the Unix epoch plus one hour: a token expiry in the future.
pub fn an_hour_from_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600
}

/// Serializes the tests that assert exact deltas of `linkcast_link_lagging_total` with the tests
/// that make clients lag: the counter has no labels and the whole test binary is one process.
pub static LAGGING_METRIC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
