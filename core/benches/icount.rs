//! Instruction counts of the core's hot paths (gungraun: callgrind under valgrind), the input of
//! `scripts/icount-gate`, which compares them with `core/benches/icount-counts.toml`.
//!
//! The same paths as the criterion benches (`core.rs`, `link.rs`), each run ONCE per bench on a
//! state built by a `setup` function (not counted): a count is exact and repeatable for one
//! binary, so one call is the whole measurement.
//! - `frame`: `encode` (the hub's one encode per publish) and `validate_access` (a Link's ingress
//!   check plus the reads it routes on), 64 B and 1 KiB payloads;
//! - `placement`: locate on a ring of 64 Links (k = 1 and 2), rendezvous over 64 (criterion also
//!   times a 1,024-Link ring; here building one takes minutes under valgrind, and a lookup is
//!   the same binary search one level deeper);
//! - `room`: `publish` with history at its bound (sequencing, history push + evict, encode),
//!   and the hub table's whole publish to 4 interested Links, drained;
//! - `fanout`: one frame pushed to a `FanoutRing` and read by 10,000 cursors, and a shard's
//!   `ShardRoom` push waking 5,000 parked members that each read it and park again;
//! - `wsframe`: building a message's WebSocket frame (once per message per Link).
//!
//! Each bench leaks its state (`mem::forget`) instead of dropping it, so a count is the hot path
//! alone, not the teardown of a 1,024-message history or 10,000 cursors (gungraun counts what
//! happens inside the bench function).
//!
//! Determinism: nothing here reads a clock or randomness, everything runs on one thread, and the
//! one hashed map on these paths (the room table's) is built with the fixed
//! [`StableBuildHasher`] through `RoomTable::with_hasher` (production keeps `RandomState`).
//!
//! Run: `scripts/icount-gate` (needs valgrind and `gungraun-runner` of the exact version pinned in
//! core/Cargo.toml). `cargo bench --bench icount -- --test` runs each bench once natively,
//! without valgrind (gungraun's test mode; the runner must still be installed).

use std::hint::black_box;

use bytes::Bytes;
use gungraun::{library_benchmark, library_benchmark_group, main, Callgrind, LibraryBenchmarkConfig};
use linkcast_core::fanout::{Cursor, FanoutRing, ParkTicket, RingLimits, ShardRoom};
use linkcast_core::frame::{Body, Frame, FrameBuilder, FLAG_JSON};
use linkcast_core::placement::{HashRing, LinkId, Placement, Rendezvous, StableBuildHasher};
use linkcast_core::room::{Room, RoomLimits};
use linkcast_core::room_table::{RoomTable, TableLimits};
use linkcast_core::shard_rooms::{RingItem, RoomMessage};
use linkcast_core::ws_frame;

const ROOM: &str = "lobby";
const TS: u64 = 1_700_000_000_000_000;

fn payload(size: usize) -> Vec<u8> {
    vec![b'x'; size]
}

fn message_bytes(size: usize) -> Bytes {
    Frame::message(ROOM, 42, 1, "alice", FLAG_JSON, &payload(size)).into_bytes()
}

#[library_benchmark]
#[bench::b64(args = (64), setup = payload)]
#[bench::b1024(args = (1024), setup = payload)]
fn frame_encode(data: Vec<u8>) -> Frame {
    Frame::message(black_box(ROOM), 42, TS, "alice", FLAG_JSON, black_box(&data))
}

#[library_benchmark]
#[bench::b64(args = (64), setup = message_bytes)]
#[bench::b1024(args = (1024), setup = message_bytes)]
fn frame_validate_access(bytes: Bytes) -> (usize, u64, usize) {
    let frame = Frame::from_bytes(black_box(bytes)).expect("valid");
    black_box((frame.room().len(), frame.seq(), frame.payload().len()))
}

library_benchmark_group!(name = frame; benchmarks = frame_encode, frame_validate_access);

fn ring(links: u32, k: usize) -> (HashRing, Vec<LinkId>, usize) {
    (HashRing::with_links((0..links).map(LinkId)), Vec::with_capacity(4), k)
}

#[library_benchmark]
#[bench::k1_64(args = (64, 1), setup = ring)]
#[bench::k2_64(args = (64, 2), setup = ring)]
fn placement_ring((ring, mut out, k): (HashRing, Vec<LinkId>, usize)) -> Vec<LinkId> {
    ring.locate_into(black_box("event-room-517"), k, &mut out);
    out
}

fn rendezvous(links: u32) -> (Rendezvous, Vec<LinkId>) {
    (Rendezvous::with_links((0..links).map(LinkId)), Vec::with_capacity(4))
}

#[library_benchmark]
#[bench::k1_64(args = (64), setup = rendezvous)]
fn placement_rendezvous((hrw, mut out): (Rendezvous, Vec<LinkId>)) -> Vec<LinkId> {
    hrw.locate_into(black_box("event-room-517"), 1, &mut out);
    out
}

library_benchmark_group!(name = placement; benchmarks = placement_ring, placement_rendezvous);

/// A room with 4 interested Links and its history at its bound, so a publish also evicts.
fn full_room() -> (Room, Vec<u8>) {
    let mut room = Room::new(ROOM, RoomLimits::default(), 1);
    for link in 0..4 {
        let _ = room.handle_interest(LinkId(link), 100);
    }
    let data = payload(64);
    for i in 0..RoomLimits::default().history_messages as u64 {
        let _ = room.publish(i, "alice", FLAG_JSON, &data).expect("fits");
    }
    (room, data)
}

#[library_benchmark]
#[bench::b64_full_history(setup = full_room)]
fn room_publish((mut room, data): (Room, Vec<u8>)) -> u64 {
    let seq = {
        let published = room.publish(TS, "alice", FLAG_JSON, black_box(&data)).expect("fits");
        black_box(published.links.len());
        published.seq
    };
    std::mem::forget(room);
    seq
}

/// The hub's table holding one room with 4 interested Links (fixed hasher, see the module doc).
fn table() -> (RoomTable<StableBuildHasher>, Vec<u8>) {
    let mut table = RoomTable::with_hasher(TableLimits::default(), 1, StableBuildHasher);
    for link in 0..4u32 {
        let interest = FrameBuilder::new(ROOM).build(&Body::Interest { link, members: 100 });
        table.handle_link_frame(0, LinkId(link), &interest);
    }
    while table.poll_transmit().is_some() {}
    let data = payload(64);
    let _ = table.publish(1, ROOM, "alice", FLAG_JSON, &data, "").expect("fits");
    while table.poll_transmit().is_some() {}
    (table, data)
}

#[library_benchmark]
#[bench::b64_4_links(setup = table)]
fn room_table_publish((mut table, data): (RoomTable<StableBuildHasher>, Vec<u8>)) -> u64 {
    let ack = table.publish(TS, black_box(ROOM), "alice", FLAG_JSON, black_box(&data), "").expect("fits");
    while let Some(sent) = table.poll_transmit() {
        black_box(sent);
    }
    std::mem::forget(table);
    ack.seq
}

library_benchmark_group!(name = room; benchmarks = room_publish, room_table_publish);

type RingState = (FanoutRing<Bytes>, Vec<Cursor>, Vec<Bytes>, Bytes);

fn fanout_ring(readers: usize) -> RingState {
    let ring = FanoutRing::new(RingLimits::default());
    let cursors = vec![ring.cursor(); readers];
    (ring, cursors, Vec::with_capacity(4), Bytes::from(vec![b'x'; 96]))
}

#[library_benchmark]
#[bench::r10k(args = (10_000), setup = fanout_ring)]
fn fanout_push_read((mut ring, mut cursors, mut batch, frame): RingState) {
    ring.push(frame.clone(), frame.len());
    for cursor in cursors.iter_mut() {
        batch.clear();
        let _ = black_box(ring.read(cursor, 256 * 1024, &mut batch));
    }
    std::mem::forget((ring, cursors, batch, frame));
}

/// One shard's room with `members` parked members, and the message the coordinator hands it.
struct ShardState {
    room: ShardRoom<RingItem, u32>,
    members: Vec<(Cursor, ParkTicket)>,
    wake: Vec<u32>,
    batch: Vec<RingItem>,
    message: RoomMessage,
}

fn shard_room(members: usize) -> ShardState {
    let mut room = ShardRoom::new(RingLimits::default());
    let members: Vec<_> = (0..members as u32)
        .map(|conn| {
            let cursor = room.join();
            let mut ticket = ParkTicket::default();
            room.park(conn, &mut ticket);
            (cursor, ticket)
        })
        .collect();
    let frame = Frame::message("hot", 1, 1, "u", FLAG_JSON, &[b'1'; 64]);
    let message = RoomMessage { seq: 1, epoch: 1, ws: ws_frame::message(&frame), frame };
    ShardState { room, wake: Vec::with_capacity(members.len()), members, batch: Vec::with_capacity(8), message }
}

#[library_benchmark]
#[bench::m5k(args = (5_000), setup = shard_room)]
fn fanout_shard_push_wake(mut s: ShardState) {
    let item = RingItem::Message(s.message.clone());
    let size = item.size();
    s.room.push(item, size, &mut s.wake);
    for conn in s.wake.drain(..) {
        let (cursor, ticket) = &mut s.members[conn as usize];
        s.batch.clear();
        let _ = black_box(s.room.read(cursor, 256 * 1024, &mut s.batch));
        s.room.park(conn, ticket);
    }
    std::mem::forget(s);
}

library_benchmark_group!(name = fanout; benchmarks = fanout_push_read, fanout_shard_push_wake);

fn json_frame(size: usize) -> Frame {
    let json = format!(r#"{{"t":"{}"}}"#, "x".repeat(size - 8));
    Frame::message(ROOM, 42, TS, "alice", FLAG_JSON, json.as_bytes())
}

#[library_benchmark]
#[bench::b64(args = (64), setup = json_frame)]
#[bench::b1024(args = (1024), setup = json_frame)]
fn wsframe_message(frame: Frame) -> Bytes {
    let ws = ws_frame::message(black_box(&frame));
    std::mem::forget(frame);
    ws
}

library_benchmark_group!(name = wsframe; benchmarks = wsframe_message);

// Only the instruction count (Ir) is gated: no cache simulation, which would only slow the runs.
main!(
    config = LibraryBenchmarkConfig::default().tool(Callgrind::with_args(["--cache-sim=no"]));
    library_benchmark_groups = frame, placement, room, fanout, wsframe
);
