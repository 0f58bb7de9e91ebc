//! linkcast: a chatroom broadcast engine for live events.
//!
//! A business backend publishes a room message once (HTTP, to the **hub**); the hub gives it the
//! room's next seq, encodes it once as a [`frame::Frame`] and sends it once to every **Link**
//! (gateway) that holds members of the room; each Link fans the same bytes out over its per-core
//! shards to its member connections. See `docs/architecture.md` for a message's path hop by hop.
//!
//! # Layout
//!
//! The sans-IO core (no sockets, no clocks, no tokio — driven the same way by production, tests,
//! benches and `sim/`):
//! - [`frame`]: the wire frame: fixed plain header + rkyv archive in one `Bytes`, validated once.
//! - [`placement`]: room → ordered Links (consistent hash ring, rendezvous, bounded load).
//! - [`room`]: per-room sequencer, bounded history, interest set, join/replay/gap answers.
//! - [`fanout`]: the per-shard ring of recent frames and per-connection cursors.
//! - [`protocol`]: the client ↔ Link WebSocket JSON operations (both directions, both peers) and
//!   the error/close-code table.
//! - [`rooms`]: the hub's room table: every owned room and the frames owed to each Link.
//! - [`shard_rooms`]: one Link shard's rings (room messages, room-wide gap/reset markers), ids
//!   and outstanding requests.
//! - [`link_session`]: one client connection's rooms at a Link: join, replay, live hand-over,
//!   de-duplication, gaps and resets, as a state machine.
//! - [`token_bucket`]: the per-connection publish rate limit.
//! - [`auth`]: JWT HS256 verification of client tokens and room rights.
//!
//! Runtimes and glue (tokio):
//! - [`config`]: the cluster TOML (hubs, Links, secrets, limits) with defaults.
//! - [`uplink`]: the Link–hub interface (frame ports, connector, hub directory).
//! - [`quic`]: QUIC endpoint configs (ALPNs, certificates) and frame streams.
//! - [`telemetry`]: the process-wide Prometheus recorder.
//! - [`hub`], [`link`], [`serve`]: the role runtimes.
//! - [`client`]: the resuming client library; [`bench`]: the `linkcast bench` load generator.
#![warn(missing_docs, unreachable_pub)]

pub mod fanout;
pub mod frame;
pub mod placement;
pub mod protocol;
pub mod room;
pub mod rooms;
pub mod shard_rooms;
pub mod link_session;
pub mod token_bucket;
pub mod auth;
pub mod config;
pub mod uplink;
pub mod quic;
pub mod telemetry;
pub mod hub;
pub mod link;
pub mod serve;
pub mod client;
pub mod bench;
