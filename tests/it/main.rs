//! The integration tests of `linkcast`: one test binary (`it`), one module per subject, one
//! shared [`support`] module — rather than one binary per file, each linking the whole crate
//! again (matklad, "Delete Cargo Integration Tests").
//!
//! Every test starts real nodes on 127.0.0.1 (in this process, or as processes of the
//! `linkcast` binary) and talks to them with real clients. Run one module with
//! `cargo test --test it hub_http::`, one test by (part of) its name.
//!
//! - hub alone (fake in-process Links): [`hub_http`], two hubs forwarding: [`hub_forward`];
//! - Link alone (fake in-process hub): [`link_fanout`], [`link_bad_input`], [`link_ws_framing`],
//!   [`link_quic`], [`link_slow_consumer`], [`link_throughput`]; Link with two scripted fake
//!   hubs (owner map, room-wide reset): [`link_owner_map`];
//! - `serve` (hub + Link in-process): [`serve_e2e`], [`no_silent_loss_link`], a full shard
//!   inbox [`shard_queue`], the client library
//!   [`client_resume`], [`client_quic`], the load generator [`bench_scenarios`], the demo page in
//!   Chromium [`browser`];
//! - processes of the binary: [`cluster`] (2 hubs, 3 Links), [`no_silent_loss`] (faults),
//!   [`presence`] (member counts, join/leave events, the admin's room list);
//! - the dashboard and alert rules (`deploy/`) against what `serve` and a cluster export, and
//!   promtool's checks of the rules: [`observability`];
//! - attacks on the edge (TLS, reads, admin, handshakes, slowloris): [`security_edge`].
//! - what a client can do to a Link around authentication (paged replays, join floods, token
//!   expiry and refresh, the token in the first message, SIGTERM): [`security_session`].
//! - the Redis room store against real `redis-server` processes and a Redis Cluster:
//!   [`store_redis`].
//! - the hub's backend hooks (publish proxy, webhooks) against a real axum backend: [`hooks`].
//! - the deploy files (systemd units, Dockerfile, Kubernetes) against the binary and its config:
//!   [`deploy_files`].
//! - `linkcast top` and `GET /v1/top/rooms` against a cluster of processes: [`top`].
//! - the operator's API on users (push to a user / everyone, kick, ban, revoke, remove, user
//!   lookup) in a cluster of processes, and the client library's stop on a ban: [`operator_users`].
//! - Links that come and go (a Link joining at run time with mutual TLS, drain on SIGTERM, the
//!   refusals): [`links_dynamic`].

mod support;

#[cfg(feature = "bench")]
mod bench_scenarios;
mod browser;
mod client_quic;
mod client_resume;
mod cluster;
mod deploy_files;
mod hooks;
mod hub_forward;
mod hub_http;
mod js_client;
mod link_bad_input;
mod link_coalesce;
mod link_fanout;
#[cfg(target_os = "linux")]
mod link_keepalive;
mod links_dynamic;
mod link_owner_map;
mod link_quic;
mod link_slow_consumer;
mod link_throughput;
mod link_ws_framing;
mod no_silent_loss;
mod no_silent_loss_link;
mod observability;
mod operator_users;
mod presence;
mod security_edge;
mod shard_queue;
mod security_cluster;
mod security_session;
mod store_redis;
mod durable_rooms;
mod serve_e2e;
mod top;
