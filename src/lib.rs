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
#![warn(missing_docs, unreachable_pub)]

pub mod fanout;
pub mod frame;
pub mod placement;
pub mod room;
