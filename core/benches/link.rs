//! Link hot paths (criterion): what one room message costs inside a Link.
//!
//! - `link_fanout/10k_sinks_2_shards`: one message dispatched to 2 shards (the coordinator →
//!   shard queue hop), pushed once on each shard's ring, and drained by 5,000 cursors per shard
//!   into in-memory sinks (each sink queues the shared `Bytes`, as the Link's `OutQueue` does) — the
//!   per-member cost is a cursor read and a refcount bump. Both "shards" run on this one thread,
//!   over a copy of the loop: it stays as the single-threaded per-member cost (and the series
//!   `scripts/bench-gate` has compared since issue 9); scaling with shards, on the real shard
//!   code, one thread per shard, is `shard_scaling.rs`.
//! - `link_wsframe/*`: building the WebSocket frame (header + JSON) of a message, which happens
//!   once per message per Link.
//!
//! Run: `cargo bench --bench link`.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use linkcast_core::fanout::{Cursor, ParkTicket, ReadOutcome, RingLimits, ShardRoom};
use linkcast_core::frame::{Frame, FLAG_JSON};
use linkcast_core::shard_rooms::{RingItem, RoomMessage};
use linkcast_core::ws_frame;

const SHARDS: usize = 2;
const PER_SHARD: usize = 5_000;

/// A connection's output queue, as in `conn_io::ConnIo` (minus the socket).
struct Sink {
    cursor: Cursor,
    ticket: ParkTicket,
    out: VecDeque<Bytes>,
    bytes: usize,
}

struct Shard {
    room: ShardRoom<RingItem, u32>,
    sinks: Vec<Sink>,
    inbox: crossbeam_channel::Receiver<RoomMessage>,
    wake: Vec<u32>,
    batch: Vec<RingItem>,
}

impl Shard {
    fn new(inbox: crossbeam_channel::Receiver<RoomMessage>) -> Self {
        let mut room = ShardRoom::new(RingLimits::default());
        let mut sinks = Vec::with_capacity(PER_SHARD);
        for i in 0..PER_SHARD {
            let cursor = room.join();
            let mut ticket = ParkTicket::default();
            room.park(i as u32, &mut ticket);
            sinks.push(Sink { cursor, ticket, out: VecDeque::with_capacity(4), bytes: 0 });
        }
        Shard { room, sinks, inbox, wake: Vec::with_capacity(PER_SHARD), batch: Vec::with_capacity(8) }
    }

    /// Applies queued messages: push once, then every woken member drains into its sink.
    fn run(&mut self) -> usize {
        let mut delivered = 0;
        while let Ok(message) = self.inbox.try_recv() {
            let item = RingItem::Message(message);
            let size = item.size();
            self.room.push(item, size, &mut self.wake);
        }
        for conn in self.wake.drain(..) {
            let sink = &mut self.sinks[conn as usize];
            self.batch.clear();
            if let ReadOutcome::Read { .. } = self.room.read(&mut sink.cursor, 256 * 1024, &mut self.batch) {
                for item in self.batch.drain(..) {
                    if let RingItem::Message(message) = item {
                        sink.bytes += message.ws.len();
                        sink.out.push_back(message.ws);
                        delivered += 1;
                    }
                }
            }
            // The socket "wrote" everything; the member parks again.
            sink.out.clear();
            self.room.park(conn, &mut sink.ticket);
        }
        delivered
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("link_fanout");
    group.throughput(Throughput::Elements((SHARDS * PER_SHARD) as u64));
    let (senders, mut shards): (Vec<_>, Vec<_>) = (0..SHARDS)
        .map(|_| {
            let (tx, rx) = crossbeam_channel::bounded(1024);
            (tx, Shard::new(rx))
        })
        .unzip();
    let mut seq = 0u64;
    group.bench_function("10k_sinks_2_shards", |b| {
        b.iter(|| {
            seq += 1;
            let frame = Frame::message("hot", seq, seq, "u", FLAG_JSON, &[b'1'; 64]);
            let message = RoomMessage { seq, epoch: 1, ws: ws_frame::message(&frame), frame };
            for tx in &senders {
                let _ = tx.try_send(message.clone());
            }
            let delivered: usize = shards.iter_mut().map(Shard::run).sum();
            assert_eq!(delivered, SHARDS * PER_SHARD);
        })
    });
    group.finish();
}

fn wsframe_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("link_wsframe");
    for size in [64usize, 1024] {
        let json = format!(r#"{{"t":"{}"}}"#, "x".repeat(size - 8));
        let frame = Frame::message("lobby", 42, 1_700_000_000_000_000, "alice", FLAG_JSON, json.as_bytes());
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("message_{size}B"), |b| {
            b.iter_batched(|| frame.clone(), |frame| ws_frame::message(&frame), BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, wsframe_build);
criterion_main!(benches);
