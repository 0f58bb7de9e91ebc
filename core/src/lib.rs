//! linkcast-core: the sans-IO heart of linkcast — no sockets, no clocks, no tokio.
//!
//! Everything that decides *what* happens to a room message lives here; the runtime crate
//! (`linkcast`: hub, Link, serve, client library) only moves bytes between sockets and these
//! state machines and reads the clock. Tests, criterion benches (`core/benches/`) and the
//! simulator (`sim/`) drive the very code production runs, the way quinn drives quinn-proto.
//! Time enters every function as an argument (`now_micros`), never from a clock.
//!
//! A room message's path through the core:
//! 1. hub: [`room_table::RoomTable`] gives it the room's next seq in its [`room::Room`], keeps it in
//!    the bounded history and encodes it once as a [`frame::Frame`] (the wire frame); the room's
//!    interest set says which Links get it.
//! 2. Link: [`ws_frame`] builds the WebSocket frame of that message once; each shard's
//!    [`shard_rooms::ShardRooms`] pushes it on the room's [`fanout`] ring; each member's
//!    [`link_session::LinkSession`] reads it from its cursor, in order, with replay, de-duplication
//!    and gap / reset markers ([`protocol`] is the JSON both ends speak).
//!
//! Modules, one concept each:
//! - [`frame`]: the Link ↔ hub wire frame: plain header + rkyv archive in one `Bytes`, validated once.
//! - [`placement`]: room → ordered Links (consistent hash ring, rendezvous, bounded load).
//! - [`hub_directory`]: room → owner hub, the same stable ring in every process (the first live
//!   hub on it under an owner map).
//! - [`room`]: one room at its owner hub: sequencer, epoch, bounded history, interest set,
//!   join answers (replay / gap / reset), publish de-duplication.
//! - [`room_table`]: the hub's table of owned rooms and the frames owed to each Link.
//! - [`room_rates`]: each owned room's publish rate (two fixed windows) and the top-K by it.
//! - [`presence`]: a room's cluster-wide member count told to its Links (throttled) and its
//!   users' join/leave events while it is small, at the owner hub.
//! - [`link_queue`]: the hub's per-Link send queue accounting (byte limit, what a drop loses).

//! - [`fanout`]: a shard's ring of recent frames per room and per-connection cursors.
//! - [`shard_rooms`]: one Link shard's rings, with room-wide gap / reset markers in order.
//! - [`shard_queue`]: the coordinator → shard queue (bounded in bytes, sleep/wake handshake)
//!   and the gaps owed to a shard whose queue was full.
//! - [`link_session`]: one client connection's rooms at a Link, as a state machine.
//! - [`interest`]: a Link's member counts per room and what it owes the owner hubs about them.
//! - [`http_upgrade`]: the HTTP/1.1 request head and answers of a Link's WebSocket upgrade.
//! - [`protocol`]: the client ↔ Link JSON operations (both directions) and the error table.
//! - [`ws_frame`] / [`ws_read`]: server → client WebSocket frames built once; client frames
//!   decoded in place.
//! - [`system_rooms`]: the personal room `user:{sub}` and the broadcast room `all` every
//!   connection is in, and who may join and publish there.
//! - [`auth`]: JWT HS256 client tokens, room rights, constant-time secret comparison.
//! - [`token_bucket`]: rate limits (per connection at the Link, per API key at the hub).
//! - [`sparse_tables`]: a table that grew with connections gives its memory back once most left.
//! - [`quantiles`]: the latency summary (p50 … p99.9, max) that `linkcast bench` and the
//!   simulator both report.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

pub mod auth;
pub mod fanout;
pub mod frame;
pub mod http_upgrade;
pub mod hub_directory;
pub mod interest;
pub mod link_queue;
pub mod link_session;
pub mod placement;
pub mod presence;
pub mod protocol;
pub mod quantiles;
pub mod room;
pub mod room_rates;
pub mod room_table;
pub mod shard_queue;
pub mod shard_rooms;
pub mod sparse_tables;
pub mod system_rooms;
pub mod token_bucket;
pub mod ws_frame;
pub mod ws_read;
