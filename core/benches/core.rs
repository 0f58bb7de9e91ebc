//! Criterion benches of the sans-IO core's hot paths.
//!
//! - `frame/encode`: the hub's one encode per publish (64 B and 1 KiB payloads);
//! - `frame/validate_access`: a Link's ingress check plus the reads it routes on;
//! - `placement/*`: locate on rings of 64 and 1,024 Links (k = 1 and k = 2), rendezvous;
//! - `room/publish`: sequencing + history push + encode, with history at its bound;
//!   `room/table_publish_64B_4_links`: the hub table's whole publish (lookup, rate count,
//!   sequencing, one frame per interested Link, drained);
//! - `fanout/push_read_10k`: one frame pushed to a ring and read by 10,000 cursors.
//!
//! Targets (reported in docs/benchmarks.md, never asserted): validate+access ≤ 100 ns,
//! placement ≤ 200 ns. `scripts/bench-gate` compares these against a base ref.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use linkcast_core::fanout::{FanoutRing, ReadOutcome, RingLimits};
use linkcast_core::frame::{Body, Frame, FrameBuilder, FLAG_JSON};
use linkcast_core::placement::{HashRing, LinkId, Placement, Rendezvous};
use linkcast_core::room::{Room, RoomLimits};
use linkcast_core::room_table::{RoomTable, TableLimits};

fn frame_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for size in [64usize, 1024] {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, payload| {
            b.iter(|| Frame::message(black_box("lobby"), 42, 1_700_000_000_000_000, "alice", FLAG_JSON, payload))
        });
        let bytes = Frame::message("lobby", 42, 1, "alice", FLAG_JSON, &payload).into_bytes();
        group.bench_with_input(BenchmarkId::new("validate_access", size), &bytes, |b, bytes| {
            b.iter(|| {
                let frame = Frame::from_bytes(black_box(bytes.clone())).expect("valid");
                black_box((frame.room().len(), frame.seq(), frame.payload().len()))
            })
        });
    }
    group.finish();
}

fn placement_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    let rooms: Vec<String> = (0..1024).map(|i| format!("event-room-{i}")).collect();
    for links in [64u32, 1024] {
        let ring = HashRing::with_links((0..links).map(LinkId));
        let mut out = Vec::with_capacity(4);
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("ring_k1", links), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                ring.locate_into(black_box(&rooms[i]), 1, &mut out);
                black_box(out[0])
            })
        });
        group.bench_function(BenchmarkId::new("ring_k2", links), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                ring.locate_into(black_box(&rooms[i]), 2, &mut out);
                black_box(out[1])
            })
        });
    }
    let hrw = Rendezvous::with_links((0..64).map(LinkId));
    let mut out = Vec::with_capacity(4);
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("rendezvous_k1", 64), |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            hrw.locate_into(black_box(&rooms[i]), 1, &mut out);
            black_box(out[0])
        })
    });
    group.finish();
}

fn room_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("room");
    let mut room = Room::new("lobby", RoomLimits::default(), 1);
    for link in 0..4 {
        let _ = room.handle_interest(LinkId(link), 100);
    }
    let payload = vec![b'x'; 64];
    // Fill history to its bound so every publish also evicts.
    for i in 0..RoomLimits::default().history_messages as u64 {
        let _ = room.publish(i, "alice", FLAG_JSON, &payload).expect("fits");
    }
    let mut now = 1u64 << 40;
    group.bench_function("publish_64B_full_history", |b| {
        b.iter(|| {
            now += 1;
            let published = room.publish(now, "alice", FLAG_JSON, black_box(&payload)).expect("fits");
            black_box((published.seq, published.links.len()))
        })
    });
    // The hub's whole publish (issue 16: the table now also counts the room's publish rate):
    // slot lookup, seq, history, encode, one frame queued per interested Link, drained.
    let mut table = RoomTable::new(TableLimits::default(), 1);
    for link in 0..4u32 {
        let interest = FrameBuilder::new("lobby").build(&Body::Interest { link, members: 100 });
        table.handle_link_frame(0, LinkId(link), &interest);
    }
    group.bench_function("table_publish_64B_4_links", |b| {
        b.iter(|| {
            now += 1;
            let ack = table.publish(now, black_box("lobby"), "alice", FLAG_JSON, black_box(&payload), "").expect("fits");
            while let Some(sent) = table.poll_transmit() {
                black_box(sent);
            }
            black_box(ack.seq)
        })
    });
    group.finish();
}

fn fanout_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    let readers = 10_000usize;
    group.throughput(Throughput::Elements(readers as u64));
    let frame = Bytes::from(vec![b'x'; 96]);
    group.bench_function("push_read_10k", |b| {
        b.iter_batched_ref(
            || {
                let ring: FanoutRing<Bytes> = FanoutRing::new(RingLimits::default());
                let cursors = vec![ring.cursor(); readers];
                (ring, cursors, Vec::with_capacity(4))
            },
            |(ring, cursors, batch)| {
                ring.push(frame.clone(), frame.len());
                for cursor in cursors.iter_mut() {
                    batch.clear();
                    let outcome = ring.read(cursor, 256 * 1024, batch);
                    debug_assert!(matches!(outcome, ReadOutcome::Read { count: 1, .. }));
                    black_box(&batch);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, frame_benches, placement_benches, room_benches, fanout_benches);
criterion_main!(benches);
