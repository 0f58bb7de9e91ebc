//! A bounded throughput run: 2,000 WebSocket subscribers in one room, 64-byte messages, Link
//! with 2 shards on loopback. Asserts every subscriber got every message in order, and prints
//! deliveries/s and the Link's own CPU time per delivery (utime+stime of the Link's threads,
//! read from /proc/self/task/*/stat — the clients' CPU is not counted).
//!
//! `LINKCAST_THROUGHPUT_MESSAGES=N` (default 100) scales the run; docs/link.md has the figure.

use std::time::Instant;

use futures_util::future::join_all;
use linkcast::link::LinkId;
use linkcast_core::room_table::TableLimits;

use crate::support::link::{config, start_link_with_id};
use crate::support::ws::WsClient;

/// CPU seconds (user + system) of this process's threads whose name starts with `prefix`.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // Fields after the parenthesized command: state is field 3; utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split(' ').collect();
        let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += utime + stime;
    }
    total as f64 / ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_subscribers_64_byte_messages() {
    const SUBSCRIBERS: usize = 2000;
    let messages: u64 = std::env::var("LINKCAST_THROUGHPUT_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    // Link 77: its threads (`link-link-77-…`) are told apart from other tests' Links by name.
    let (link, hub) = start_link_with_id(LinkId(77), config(2, |_| {}), TableLimits::default()).await;
    let addr = link.ws_addr();
    let clients = join_all((0..SUBSCRIBERS).map(|_| async move {
        let mut ws = WsClient::connect_to(addr, None).await;
        ws.join("bench", None).await;
        ws
    }))
    .await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut expected = 1u64;
                // Counting by a cheap scan (not a JSON parse) keeps the client side light.
                while expected <= messages {
                    let text = ws.next_text().await;
                    let seq = text
                        .split_once(r#""seq":"#)
                        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|digits| digits.parse::<u64>().ok());
                    assert_eq!(seq, Some(expected), "in order, exactly once");
                    expected += 1;
                }
            })
        })
        .collect();
    let payload = format!(r#"{{"t":"{}"}}"#, "x".repeat(56)); // 64 bytes of JSON
    assert_eq!(payload.len(), 64);
    let cpu_before = thread_cpu_seconds("link-link-77-");
    let started = Instant::now();
    // Paced in bursts so loopback clients on the same 2 cores keep up (no lag/gap).
    for n in 1..=messages {
        hub.publish("bench", &payload).await;
        if n % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for reader in readers {
        reader.await.expect("subscriber got everything");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds("link-link-77-") - cpu_before;
    let deliveries = SUBSCRIBERS as f64 * messages as f64;
    eprintln!(
        "link throughput: {SUBSCRIBERS} subscribers x {messages} msgs = {deliveries} deliveries in {elapsed:.2}s \
         = {:.0} deliveries/s; Link CPU {cpu:.2}s = {:.0} ns/delivery = {:.0} deliveries per Link CPU-second",
        deliveries / elapsed,
        cpu * 1e9 / deliveries,
        if cpu > 0.0 { deliveries / cpu } else { 0.0 },
    );
    link.shutdown().await;
}
