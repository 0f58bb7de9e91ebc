//! linkcast: a chatroom broadcast engine for live events — the runtimes around the sans-IO core.
//!
//! A business backend publishes a room message once (HTTP, to the **hub**); the hub gives it the
//! room's next seq, encodes it once as a frame and sends it once to every **Link** (gateway) that
//! holds members of the room; each Link fans the same bytes out over its per-core shards to its
//! member connections. See `docs/architecture.md` for a message's path hop by hop.
//!
//! Everything that decides what happens to a message is in the `linkcast-core` crate (no sockets,
//! no clocks, no tokio). This crate moves bytes between sockets and those state machines:
//! - [`hub`], [`link`], [`serve`]: the role runtimes (`serve` = a hub and Links in one process).
//! - [`client`]: the resuming client library (WebSocket and QUIC).
//! - [`healthcheck`]: `linkcast healthcheck`, the probe of the container image and Kubernetes.
//! - [`top`]: `linkcast top`, the terminal view of a running cluster (scrapes `/metrics`).
//! - [`config`]: the cluster TOML (hubs, Links, secrets, limits) with defaults.
//! - [`bench`](mod@bench) (feature `bench`, on by default): the `linkcast bench` load generator.
//!
//! - [`uplink`]: the Link ↔ hub seam (frame ports, [`uplink::HubConnector`]): `serve` joins a hub and
//!   a Link through it in-process, and tests drive a real Link with a fake hub (or a hub with a fake
//!   Link) through it.
//! - [`quic`]: QUIC endpoint configs (ALPNs, limits) and the length-prefixed frame streams —
//!   what a native QUIC peer needs besides `linkcast_core::frame`.
//! - [`tls`]: certificates servers present (reloaded on SIGHUP) and how dialers verify them.
//! - `store` (doc-hidden; `pub` only for the integration tests): rooms' seq, epoch, history and
//!   owner leases in Redis / Redis Cluster, for hubs that restart or take over a dead hub's rooms.
//!
//! Private glue: `admin` (the `/metrics` + `/healthz` listener), `telemetry` (the process-wide Prometheus recorder), `cert_expiry` (the served certificate's expiry as a metric), `clock` (the one place the
//! wall clock is read) and `udp_socket` (the busy QUIC endpoints' sockets: receive buffer and
//! the kernel's drop count).
#![warn(missing_docs, unreachable_pub)]

mod admin;
pub mod bench;
pub mod client;
mod clock;
pub mod config;
pub mod healthcheck;
pub mod hub;
pub mod link;
mod pre_auth;
pub mod quic;
pub mod serve;
#[doc(hidden)]
pub mod store;
mod telemetry;
mod cert_expiry;
pub mod mtls;
pub mod tls;
pub mod top;
mod udp_socket;
pub mod uplink;
