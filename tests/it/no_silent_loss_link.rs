//! No silent loss at the Link, in-process (`serve::start`: a real hub and a real Link on
//! loopback ports, real WebSocket clients, HTTP publishes). Every client's traffic goes through
//! the one invariant checker of `support::checker` (per room: seqs +1 each time, every jump
//! declared by an exact `gap` or a `reset`).
//!
//! - a reader that stops reading past its ring is told its `gap` as soon as it reads again
//!   (no ping tick needed), then gets the live stream; with `lag_policy = "disconnect"` it gets
//!   close 4100 instead; `linkcast_link_lagging_total` counts it;
//! - `join`, `leave`, `join` sent back to back while messages flow: after `left`, the second
//!   join gets exactly its replay, `joined`, then live — 50 times with varied timing;
//! - a join whose epoch is not the room's gets `reset` with the real epoch, then the room from
//!   seq 1 (after a `gap` if history no longer holds it), then `joined`.
//!
//! The whole test binary shares one process-wide metrics recorder, and
//! `linkcast_link_lagging_total` has no labels: the tests of this file run one at a time and
//! apart from the other tests that make clients lag ([`LAGGING_METRIC`]), so its deltas are
//! exact.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkcast::config::Config;
use linkcast::serve::ServeHandle;
use serde_json::json;

use crate::support::checker::{Checker, Ev};
use crate::support::http::{get_json, metric, metrics_text, payload, publish_json};
use crate::support::member::{Member, Watcher};
use crate::support::ws::WsClient;
use crate::support::{LAGGING_METRIC as SERIAL, STEP};

async fn start_serve(toml: &str) -> ServeHandle {
    let config = Config::from_toml(toml).expect("test config parses");
    crate::support::start_serve(config, false).await
}

fn url(serve: &ServeHandle) -> String {
    format!("ws://{}/ws", serve.ws_addr())
}

async fn lagging_total(serve: &ServeHandle) -> f64 {
    metric(&metrics_text(serve.ws_addr()).await, "linkcast_link_lagging_total", &[])
}

/// Publishes `n` messages of `size` bytes with 4 concurrent publishers, never more than
/// `window` ahead of what `pace` (a reading member) has received; returns the last seq.
async fn publish_burst(serve: &ServeHandle, room: &str, n: u64, size: usize, pace: Watcher, window: u64) -> u64 {
    let next = Arc::new(AtomicU64::new(1));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (next, hub, room, pace) = (next.clone(), serve.http_addr(), room.to_owned(), pace.clone());
            tokio::spawn(async move {
                let mut max = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > n {
                        return max;
                    }
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while pace.pos(&room) + window < i {
                        assert!(Instant::now() < deadline, "the pacing reader is stuck at {}", pace.pos(&room));
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                    max = max.max(publish_json(hub, &room, &payload(i, size)).await.0);
                }
            })
        })
        .collect();
    let mut last = 0;
    for task in tasks {
        last = last.max(task.await.expect("publisher"));
    }
    assert_eq!(last, n, "a fresh room's seqs are 1..={n}");
    last
}

// ---------------------------------------------------------------------------------------------
// The checker itself (so a green test means what it says)
// ---------------------------------------------------------------------------------------------

#[test]
fn the_checker_rejects_every_silent_jump_and_accepts_declared_ones() {
    let e1 = "00000000000000aa";
    let e2 = "00000000000000bb";
    let run = |sent: &[serde_json::Value], got: &[serde_json::Value]| -> Result<(), String> {
        let mut checker = Checker::default();
        for op in sent {
            checker.sent(op);
        }
        got.iter().try_for_each(|v| checker.received(v).map(|_| ()))
    };
    let m = |seq: u64| json!({"room": "r", "seq": seq, "from": "s", "ts": 1, "data": null});
    let joined = |epoch: &str, last: u64| json!({"op": "joined", "room": "r", "epoch": epoch, "last_seq": last});
    let gap = |a: u64, b: u64, c: u64| json!({"op": "gap", "room": "r", "first_lost": a, "last_lost": b, "resume_from": c});
    let reset = |epoch: &str, last: u64| json!({"op": "reset", "room": "r", "epoch": epoch, "last_seq": last});
    let join_since = |since: u64| json!({"op": "join", "room": "r", "since": since});
    let live_join = json!({"op": "join", "room": "r"});

    // Accepted: replay, joined, live, an exact gap, a reset to a new epoch, its messages.
    let good = [m(1), m(2), joined(e1, 2), m(3), gap(4, 9, 10), m(10), reset(e2, 0), m(1), gap(2, 2, 3), m(3)];
    assert_eq!(run(&[join_since(0)], &good), Ok(()));
    // A live-only join: the first message follows `joined`'s last_seq.
    assert_eq!(run(std::slice::from_ref(&live_join), &[joined(e1, 41), m(42), m(43)]), Ok(()));
    // Leave, then rejoin: after `left` the stream belongs to the second join.
    let sent = [join_since(3), json!({"op": "leave", "room": "r"}), join_since(1)];
    let got = [m(4), json!({"op": "left", "room": "r"}), m(2), m(3), m(4), joined(e1, 4), m(5)];
    assert_eq!(run(&sent, &got), Ok(()));

    let bad: Vec<(&str, Vec<serde_json::Value>, Vec<serde_json::Value>)> = vec![
        ("silent jump", vec![join_since(0)], vec![m(1), joined(e1, 1), m(3)]),
        ("duplicate", vec![join_since(0)], vec![m(1), joined(e1, 1), m(1)]),
        ("lower seq without reset", vec![join_since(0)], vec![joined(e1, 0), m(1), m(2), m(1)]),
        ("gap not starting at the next seq", vec![join_since(0)], vec![joined(e1, 0), m(1), gap(3, 4, 5)]),
        ("gap resume not right after it", vec![join_since(0)], vec![joined(e1, 0), m(1), gap(2, 4, 6)]),
        ("message after the gap not its resume_from", vec![join_since(0)], vec![joined(e1, 0), gap(1, 4, 5), m(6)]),
        ("reset to the same epoch", vec![join_since(0)], vec![joined(e1, 0), reset(e1, 0)]),
        ("joined before the replay is complete", vec![join_since(2)], vec![m(3), joined(e1, 5)]),
        ("message before joined on a live join", vec![live_join.clone()], vec![m(7), joined(e1, 7)]),
        ("joined in another epoch without reset", vec![json!({"op":"join","room":"r","since":0,"epoch":e1})], vec![joined(e2, 0)]),
        ("message outside the room", vec![], vec![m(1)]),
        ("message after left", vec![join_since(0), json!({"op": "leave", "room": "r"})], vec![joined(e1, 0), json!({"op":"left","room":"r"}), m(1)]),
        ("epoch not 16 hex digits", vec![join_since(0)], vec![joined("12", 0)]),
    ];
    for (what, sent, got) in bad {
        assert!(run(&sent, &got).is_err(), "the checker must reject: {what}");
    }
}

// ---------------------------------------------------------------------------------------------
// d. A stalled reader
// ---------------------------------------------------------------------------------------------

const STALL_MESSAGES: u64 = 2000;
const STALL_SIZE: usize = 4096;
const RING_ITEMS: u64 = 256;

/// No ping tick during the test: the gap (or close) must come because the socket drained, so
/// any wait for it ends long before the first tick would.
const PING_INTERVAL_SECS: u64 = 600;

fn stall_config(policy: &str) -> String {
    format!(
        "[link]\nshards = 1\nring_items = {RING_ITEMS}\nlag_policy = \"{policy}\"\nsocket_send_buffer = 16384\n\
         write_batch_bytes = 65536\nping_interval_secs = {PING_INTERVAL_SECS}\nidle_timeout_secs = {}\n",
        2 * PING_INTERVAL_SECS
    )
}

/// A reader and a stalled client joined to `room`; the burst published; the reader has all
/// of it. Returns the stalled client (not reading) and the reader.
async fn stall(serve: &ServeHandle, room: &str) -> (Member, Member) {
    let stalled = Member::start("stalled", WsClient::connect_small(serve.ws_addr(), 4096).await);
    stalled.join(room, None, None);
    assert_eq!(stalled.wait_joined(room, 1, STEP).await.1, 0, "fresh room");
    let reader = Member::connect("reader", &url(serve)).await;
    reader.join(room, None, None);
    reader.wait_joined(room, 1, STEP).await;
    stalled.stop_reading();
    // Paced by the reader (at most 64 ahead of it, well inside the 256-item ring), so only the
    // stalled client falls behind.
    publish_burst(serve, room, STALL_MESSAGES, STALL_SIZE, reader.watcher(), 64).await;
    reader.wait_pos(room, STALL_MESSAGES, STEP).await;
    assert_eq!(reader.seqs(room), (1..=STALL_MESSAGES).collect::<Vec<_>>(), "a reading member gets everything");
    // One shard, one ring per room: the reader having the whole burst means the stalled
    // client's ring holds it too.
    (stalled, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_gets_its_gap_as_soon_as_it_reads_again_then_the_live_stream() {
    let _serial = SERIAL.lock().await;
    let serve = start_serve(&stall_config("gap")).await;
    let room = "stall-gap";
    let lagging_before = lagging_total(&serve).await;
    let (stalled, reader) = stall(&serve, room).await;
    assert!(stalled.seqs(room).len() < STALL_MESSAGES as usize, "the client really stalled (it has not read)");

    stalled.resume_reading();
    let log = stalled
        .wait_until(STEP, "a gap once reading again (not at a ping tick)", |log| log.iter().any(|l| matches!(l.ev, Ev::Gap { .. })))
        .await;
    let (first, last, resume) = log
        .iter()
        .find_map(|l| match l.ev {
            Ev::Gap { first, last, resume, .. } => Some((first, last, resume)),
            _ => None,
        })
        .expect("found above");
    // What came before the gap is exactly what the socket held: 1..first_lost-1.
    let before: Vec<u64> = log.iter().take_while(|l| !matches!(l.ev, Ev::Gap { .. })).filter_map(|l| l.ev.seq_in(room)).collect();
    assert_eq!(before, (1..first).collect::<Vec<_>>(), "the buffered prefix, in order");
    assert!(
        resume > STALL_MESSAGES - RING_ITEMS,
        "resumes inside the ring's last {RING_ITEMS} items: gap {first}..={last} resume {resume}"
    );
    // Then the rest of the ring, in order, and the live stream.
    stalled.wait_pos(room, STALL_MESSAGES, STEP).await;
    let (seq, _) = publish_json(serve.http_addr(), room, &payload(STALL_MESSAGES + 1, 64)).await;
    assert_eq!(seq, STALL_MESSAGES + 1);
    stalled.wait_pos(room, seq, STEP).await;
    reader.wait_pos(room, seq, STEP).await;
    let events = stalled.events();
    let gaps = events.iter().filter(|e| matches!(e, Ev::Gap { .. })).count();
    assert_eq!(gaps, 1, "one stall, one gap: {:?}", events.iter().filter(|e| matches!(e, Ev::Gap { .. })).map(Ev::short).collect::<Vec<_>>());
    let after: Vec<u64> = events.iter().skip_while(|e| !matches!(e, Ev::Gap { .. })).filter_map(|e| e.seq_in(room)).collect();
    assert_eq!(after, (resume..=seq).collect::<Vec<_>>(), "after the gap: the ring from resume_from, then live");
    assert!(!events.iter().any(|e| matches!(e, Ev::Close(..) | Ev::End)), "gap policy keeps the connection");
    let lagging = lagging_total(&serve).await - lagging_before;
    assert_eq!(lagging, 1.0, "linkcast_link_lagging_total counts the stalled client once");
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_under_the_disconnect_policy_gets_close_4100_as_soon_as_it_reads_again() {
    let _serial = SERIAL.lock().await;
    let serve = start_serve(&stall_config("disconnect")).await;
    let room = "stall-disconnect";
    let lagging_before = lagging_total(&serve).await;
    let (stalled, reader) = stall(&serve, room).await;
    stalled.resume_reading();
    let log = stalled
        .wait_until(STEP, "close 4100 once reading again (not at a ping tick)", |log| {
            log.iter().any(|l| matches!(l.ev, Ev::Close(..) | Ev::End))
        })
        .await;
    let end = log.last().expect("an end");
    assert_eq!(end.ev.short(), Ev::Close(4100, "slow consumer; retry_after_ms=1000".into()).short(), "closed with 4100");
    let seqs: Vec<u64> = log.iter().filter_map(|l| l.ev.seq_in(room)).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "in order up to the close");
    assert!((seqs.len() as u64) < STALL_MESSAGES, "it did fall behind");
    assert!(!log.iter().any(|l| matches!(l.ev, Ev::Gap { .. })), "disconnect policy: no gap, a close");
    let lagging = lagging_total(&serve).await - lagging_before;
    assert_eq!(lagging, 1.0, "linkcast_link_lagging_total counts the stalled client once");
    // Others carry on.
    let (seq, _) = publish_json(serve.http_addr(), room, b"\"after\"").await;
    reader.wait_pos(room, seq, STEP).await;
    serve.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// e. Leave + rejoin race
// ---------------------------------------------------------------------------------------------

/// xorshift64*: varied but reproducible choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_join_back_to_back_while_publishing_gives_the_second_join_exactly_its_replay_then_live() {
    let _serial = SERIAL.lock().await;
    // 100 joins in a few seconds on one connection: above the default join rate limit.
    let serve = start_serve("[link]\nshards = 2\njoin_rate = 0\n[hub]\nhistory_messages = 100000\nhistory_bytes = 67108864\n").await;
    let room = "race";
    let hub = serve.http_addr();
    for i in 1..=30 {
        publish_json(hub, room, &payload(i, 40)).await;
    }
    // A steady publisher for the whole test.
    let last_published = Arc::new(AtomicU64::new(30));
    let running = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (last_published, running) = (last_published.clone(), running.clone());
        tokio::spawn(async move {
            let mut i = 31;
            while running.load(Ordering::Relaxed) {
                let (seq, _) = publish_json(hub, room, &payload(i, 40)).await;
                last_published.fetch_max(seq, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let client = Member::connect("racer", &url(&serve)).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..50u64 {
        let l = last_published.load(Ordering::Relaxed);
        let pick = |rng: &mut Rng| l.saturating_sub(rng.below(40));
        let since1 = if round % 7 == 3 { None } else { Some(pick(&mut rng)) };
        let since2 = match round % 5 {
            0 => l, // nothing to replay
            1 => since1.unwrap_or(l),
            _ => pick(&mut rng),
        };
        let mark = client.log().len();
        let pause = match round % 4 {
            0 => None,
            1 => Some(Duration::ZERO),
            2 => Some(Duration::from_micros(300)),
            _ => Some(Duration::from_millis(rng.below(4) + 1)),
        };
        client.join(room, since1, None);
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        client.send(json!({"op": "leave", "room": room}));
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        client.join(room, Some(since2), None);
        // Wait for: left, then joined, then 3 live messages after it.
        let log = client
            .wait_until(Duration::from_secs(5), &format!("round {round}: left, joined, 3 live"), |log| {
                let rest = &log[mark..];
                let Some(left) = rest.iter().position(|l| matches!(l.ev, Ev::Left { .. })) else { return false };
                let Some(joined) = rest[left..].iter().position(|l| matches!(l.ev, Ev::Joined { .. })) else { return false };
                rest[left + joined..].iter().filter(|l| matches!(l.ev, Ev::Msg { .. })).count() >= 3
            })
            .await;
        let rest: Vec<Ev> = log[mark..].iter().map(|l| l.ev.clone()).collect();
        let left = rest.iter().position(|e| matches!(e, Ev::Left { .. })).expect("waited for it");
        let after = &rest[left + 1..];
        let joined = after.iter().position(|e| matches!(e, Ev::Joined { .. })).expect("waited for it");
        let Ev::Joined { last_seq, .. } = &after[joined] else { unreachable!() };
        let replay: Vec<u64> = after[..joined]
            .iter()
            .map(|e| e.seq_in(room).unwrap_or_else(|| panic!("round {round}: only replayed messages before joined, got {}", e.short())))
            .collect();
        assert_eq!(
            replay,
            (since2 + 1..=*last_seq).collect::<Vec<_>>(),
            "round {round}: join since {since2} replays exactly {}..={last_seq}",
            since2 + 1
        );
        let live: Vec<u64> = after[joined + 1..].iter().filter_map(|e| e.seq_in(room)).collect();
        assert_eq!(live[..3], [last_seq + 1, last_seq + 2, last_seq + 3], "round {round}: live continues after joined");
        assert!(
            after.iter().all(|e| matches!(e, Ev::Msg { .. } | Ev::Joined { .. })),
            "round {round}: nothing but replay, joined and live after left: {:?}",
            after.iter().map(Ev::short).collect::<Vec<_>>()
        );
        // End the round: leave and wait for `left`.
        let mark = client.log().len();
        client.send(json!({"op": "leave", "room": room}));
        client
            .wait_until(Duration::from_secs(5), &format!("round {round}: final left"), |log| {
                log[mark..].iter().any(|l| matches!(l.ev, Ev::Left { .. }))
            })
            .await;
    }
    running.store(false, Ordering::Relaxed);
    publisher.await.expect("publisher");
    client.assert_clean();
    serve.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// f. A stale epoch
// ---------------------------------------------------------------------------------------------

const STALE: &str = "0000000000000001";

/// Joins `room` with `since` in the stale epoch; once `joined` came, publishes a sentinel
/// (nothing else may follow `joined`: the sentinel must be the next message). Returns
/// everything the client received, and the sentinel's seq.
async fn join_stale(serve: &ServeHandle, room: &str, since: u64) -> (Vec<Ev>, u64) {
    let client = Member::connect(format!("stale-{room}-{since}"), &url(serve)).await;
    client.join(room, Some(since), Some(STALE));
    client.wait_joined(room, 1, STEP).await;
    let (sentinel, _) = publish_json(serve.http_addr(), room, br#"{"sentinel":true}"#).await;
    client.wait_pos(room, sentinel, STEP).await;
    (client.events(), sentinel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_with_another_epoch_gets_reset_then_the_room_from_seq_1_then_joined() {
    let _serial = SERIAL.lock().await;
    for (history, toml) in [(1000u64, "[link]\nshards = 2\n"), (4, "[link]\nshards = 2\n[hub]\nhistory_messages = 4\n")] {
        let serve = start_serve(toml).await;
        let room = "epochs";
        let mut epoch = String::new();
        for i in 1..=10 {
            let (seq, e) = publish_json(serve.http_addr(), room, &payload(i, 40)).await;
            assert_eq!(seq, i);
            epoch = e;
        }
        let mut last = 10;
        assert_ne!(epoch, STALE, "the room's epoch is random, not 1");
        // since 5: behind the room's last seq (the case the old `last_seq < since` rule missed:
        // it would replay 6..=10 of another lifetime); since 50: ahead of it.
        for since in [5, 50] {
            let (events, sentinel) = join_stale(&serve, room, since).await;
            // Messages are compared by seq (payloads are checked elsewhere).
            let shape = |e: &Ev| match e {
                Ev::Msg { seq, .. } => format!("msg {seq}"),
                other => other.short(),
            };
            let first_held = last - history.min(last) + 1;
            let mut want = vec![shape(&Ev::Reset { room: room.into(), epoch: epoch.clone(), last_seq: last })];
            if first_held > 1 {
                want.push(shape(&Ev::Gap { room: room.into(), first: 1, last: first_held - 1, resume: first_held }));
            }
            want.extend((first_held..=last).map(|s| format!("msg {s}")));
            want.push(shape(&Ev::Joined { room: room.into(), epoch: epoch.clone(), last_seq: last }));
            want.push(format!("msg {sentinel}"));
            let got: Vec<String> = events.iter().map(shape).collect();
            assert_eq!(got, want, "history {history}, stale join since {since}");
            assert_eq!(sentinel, last + 1);
            last = sentinel;
        }
        let info = get_json(serve.http_addr(), &format!("/v1/rooms/{room}")).await;
        assert_eq!(info["epoch"], epoch.as_str(), "room info carries the epoch: {info}");
        serve.shutdown().await;
    }
}
