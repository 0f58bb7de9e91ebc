//! Hot room on every core (criterion): does one room's fan-out scale with Link shards?
//!
//! One room, `MEMBERS` members all on one Link, split evenly over 1 or 2 shards; each shard is
//! an OS thread of its own running the code a production shard runs, minus the sockets:
//! - its inbox is the Link's coordinator → shard queue (`shard_queue::queue`: crossbeam,
//!   bounded in bytes, the same sleep/wake handshake, here waking the thread with `unpark`
//!   where the Link rings a tokio `Notify`);
//! - it takes a burst (up to `shard_queue::MAX_BURST` messages), pushes each once on the room's
//!   ring (`ShardRooms::push_message`, which returns the parked members), then serves every
//!   woken member: its real `LinkSession::fill` (cursor read, epoch/seq checks) into an in-memory
//!   sink that queues the shared `Bytes` as `conn_io`'s `OutQueue` does, then "writes" them all.
//!
//! The bench's thread plays the coordinator: it builds each message's WebSocket frame once and
//! queues it to the first shard and a copy of its own to every other one
//! (`RoomMessage::copy_for_shard`, as the coordinator does; `try_send`, never waiting), then
//! sleeps until every shard has
//! delivered the iteration's messages. Throughput is deliveries (message × member) per second;
//! `shard_scaling/1_shard` and `shard_scaling/2_shards` run side by side in one run. On this
//! 2-core machine the coordinator thread shares the cores with the 2 shards.
//!
//! Run: `cargo bench -p linkcast-core --bench shard_scaling`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use linkcast_core::auth::Claims;
use linkcast_core::fanout::{LagPolicy, RingLimits};
use linkcast_core::frame::{Body, Frame, FrameBuilder, FLAG_JSON};
use linkcast_core::link_session::{LinkSession, Request, SessionLimits, ToClient, ToCoordinator, Wire};
use linkcast_core::shard_queue::{self, QueueSender, TryRecvError, Wake, MAX_BURST};
use linkcast_core::shard_rooms::{RoomMessage, ShardRooms};
use linkcast_core::ws_frame;

/// Members of the room on the Link (split over the shards).
const MEMBERS: usize = 10_000;
/// Messages per iteration.
const PER_ITER: u64 = 16;
const ROOM: &str = "hot";
const EPOCH: u64 = 0x5eed;
/// `link.write_batch_bytes`' default: what one fill may hand a socket queue.
const WRITE_BATCH: usize = 256 * 1024;

/// Wakes a parked shard thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(&self) {
        self.0.unpark();
    }
}

/// What the bench's coordinator sends a shard.
enum ToShard {
    /// A room message.
    Room(RoomMessage),
    /// Say how many deliveries so far, once what came before is delivered.
    Ack(crossbeam_channel::Sender<u64>),
}

/// One member: its session and its socket queue (what `conn_io::OutQueue` holds).
struct Conn {
    session: LinkSession,
    out: VecDeque<Bytes>,
}

/// CPU time this thread has run, ns (`/proc/thread-self/schedstat`; 0 where there is none).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A shard's thread: joins its members, then serves its inbox until the bench drops it;
/// returns the CPU time it spent serving (ns).
fn shard_thread(index: usize, members: usize, started: crossbeam_channel::Sender<QueueSender<ToShard, Unpark>>) -> u64 {
    let (tx, rx) = shard_queue::queue::<ToShard, _>(64 << 20, Unpark(std::thread::current()));
    let mut rooms = ShardRooms::new(index, RingLimits::default());
    let limits = std::sync::Arc::new(SessionLimits {
        max_rooms: 4,
        max_message_bytes: 64 * 1024,
        lag_policy: LagPolicy::Gap,
        publish_rate: 0,
        publish_burst: 10,
        join_rate: 0,
        join_burst: 10,
        replay_bytes: 1 << 20,
    });
    let claims = Claims { sub: "u".into(), exp: u64::MAX, rooms: vec!["*".into()], iat: None };
    let mut conns: HashMap<u64, Conn> = HashMap::with_capacity(members);
    let mut items = Vec::new();
    for _ in 0..members {
        let id = rooms.new_id();
        let mut session = LinkSession::new(id, Wire::Ws, claims.clone(), limits.clone(), 0);
        let join = Request::Join { room: ROOM.into(), since: None, epoch: None, presence: false };
        session.handle_request(join, 0, &mut rooms, &mut items).expect("join accepted");
        let Some(ToCoordinator::Join { request, .. }) = rooms.poll_coordinator() else { panic!("a join for the coordinator") };
        let joined = FrameBuilder::new(ROOM).seq(0).build(&Body::Joined { request, epoch: EPOCH });
        let tail = rooms.tail(ROOM);
        session.handle_hub_frame(joined, tail, &mut rooms, &mut items);
        // Reads until idle: parked on the ring, as a caught-up member is.
        session.fill(WRITE_BATCH, &mut rooms, &mut items).expect("fill");
        items.clear();
        conns.insert(id, Conn { session, out: VecDeque::with_capacity(8) });
    }
    started.send(tx).expect("bench alive");
    drop(started);
    let mut woken = Vec::with_capacity(members);
    let mut delivered = 0u64;
    let mut acks = Vec::new();
    let cpu_start = thread_cpu_ns();
    loop {
        // The shard loop's shape: wait for one, take what is queued (up to a bound), then serve
        // the members woken.
        let first = match rx.try_recv().or_else(|_| rx.prepare_sleep()) {
            Ok(msg) => msg,
            Err(TryRecvError::Empty) => {
                std::thread::park();
                continue;
            }
            Err(TryRecvError::Disconnected) => return thread_cpu_ns() - cpu_start,
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(msg) = next.take() {
            match msg {
                ToShard::Room(message) => rooms.push_message(message, &mut woken),
                ToShard::Ack(ack) => acks.push(ack),
            }
            taken += 1;
            if taken < MAX_BURST {
                next = rx.try_recv().ok();
            }
        }
        for id in woken.drain(..) {
            let Some(conn) = conns.get_mut(&id) else { continue };
            conn.session.fill(WRITE_BATCH, &mut rooms, &mut items).expect("no lag in this bench");
            // As the Link's driver does after every call into a session.
            let _ = rooms.take_session_stats();
            for item in items.drain(..) {
                if let ToClient::Encoded(bytes) = item {
                    conn.out.push_back(bytes);
                    delivered += 1;
                }
            }
            // The socket took everything.
            conn.out.clear();
        }
        for ack in acks.drain(..) {
            let _ = ack.send(delivered);
        }
    }
}

/// `shards` shard threads with `MEMBERS` members in all, and their inboxes.
struct Link {
    inboxes: Vec<QueueSender<ToShard, Unpark>>,
    threads: Vec<JoinHandle<u64>>,
    seq: u64,
    delivered: Arc<AtomicU64>,
    /// CPU time of the bench's thread (the coordinator) in rounds, ns.
    coordinator_ns: u64,
}

impl Link {
    fn start(shards: usize) -> Link {
        let (started_tx, started) = crossbeam_channel::unbounded();
        let threads = (0..shards)
            .map(|index| {
                let started = started_tx.clone();
                std::thread::Builder::new()
                    .name(format!("bench-shard-{index}"))
                    .spawn(move || shard_thread(index, MEMBERS / shards, started))
                    .expect("spawn")
            })
            .collect();
        drop(started_tx);
        let inboxes: Vec<_> = started.iter().collect();
        assert_eq!(inboxes.len(), shards);
        Link { inboxes, threads, seq: 0, delivered: Arc::new(AtomicU64::new(0)), coordinator_ns: 0 }
    }

    /// Publishes `PER_ITER` messages to the room and waits until every member has them.
    fn round(&mut self) {
        let cpu_start = thread_cpu_ns();
        for _ in 0..PER_ITER {
            self.seq += 1;
            let frame = Frame::message(ROOM, self.seq, self.seq, "u", FLAG_JSON, &[b'1'; 100]);
            // Built once per message per Link, as the coordinator does; each shard after the
            // first gets a copy of its own, as the coordinator does (`copy_for_shard`).
            let message = RoomMessage { seq: self.seq, epoch: EPOCH, ws: ws_frame::message(&frame), frame };
            let cost = message.ws.len() + message.frame.len() + 64;
            for (i, inbox) in self.inboxes.iter().enumerate() {
                let for_shard = if i == 0 { message.clone() } else { message.copy_for_shard() };
                assert!(inbox.try_send(ToShard::Room(for_shard), cost).is_ok(), "the bench never fills 64 MiB");
            }
        }
        let (ack, acked) = crossbeam_channel::bounded(self.inboxes.len());
        for inbox in &self.inboxes {
            assert!(inbox.send_always(ToShard::Ack(ack.clone()), 64).is_ok());
        }
        let total: u64 = (0..self.inboxes.len()).map(|_| acked.recv().expect("shard alive")).sum();
        let before = self.delivered.swap(total, Ordering::Relaxed);
        assert_eq!(total - before, PER_ITER * MEMBERS as u64, "every member got every message");
        self.coordinator_ns += thread_cpu_ns() - cpu_start;
    }
}

impl Drop for Link {
    /// Says what the shards' and the coordinator's CPU cost per delivery was: equal costs for 1
    /// and 2 shards mean nothing is shared between shards, so deliveries/s scale with free cores.
    fn drop(&mut self) {
        let shards = self.inboxes.len();
        self.inboxes.clear();
        let shard_ns: u64 = self.threads.drain(..).map(|thread| thread.join().unwrap_or(0)).sum();
        let delivered = self.delivered.load(Ordering::Relaxed).max(1);
        eprintln!(
            "shard_scaling/{shards} shard(s): {delivered} deliveries, shard CPU {:.1} ns/delivery ({:.2} s), coordinator CPU {:.1} ns/delivery",
            shard_ns as f64 / delivered as f64,
            shard_ns as f64 / 1e9,
            self.coordinator_ns as f64 / delivered as f64,
        );
    }
}

fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_scaling");
    group.throughput(Throughput::Elements(PER_ITER * MEMBERS as u64));
    group.sample_size(20);
    for shards in [1usize, 2] {
        let mut link = Link::start(shards);
        let name = if shards == 1 { "1_shard".to_owned() } else { format!("{shards}_shards") };
        group.bench_function(name, |b| b.iter(|| link.round()));
    }
    group.finish();
}

criterion_group!(benches, scaling);
criterion_main!(benches);
