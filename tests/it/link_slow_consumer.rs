//! Slow-consumer isolation: one client that never reads, among 500 readers, under a fast
//! publisher. The readers get everything in order; the stalled client is told (gap marker, or
//! close 4100 under `lag_policy = "disconnect"`); the Link's ring and socket-queue bytes stay
//! within their configured limits the whole time.

//!
//! Making a client lag counts in the process-wide `linkcast_link_lagging_total`, so these tests
//! hold [`LAGGING_METRIC`] (tests asserting exact deltas of it run apart from them).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use linkcast::link::LinkStats;
use linkcast_core::fanout::LagPolicy;
use linkcast_core::room_table::TableLimits;

use crate::support::link::{config, start_link, FakeHub};
use crate::support::ws::{Got, WsClient};
use crate::support::LAGGING_METRIC;

const RING_BYTES: usize = 256 * 1024;
const BATCH: usize = 64 * 1024;

/// Readers' progress; the publisher stays at most `WINDOW` messages ahead of the slowest *reader*
/// (a fast publisher, but not one that outruns clients that do read — the stalled one is not
/// counted, so it falls behind by as much as the burst).
const WINDOW: u64 = 100;

async fn publish_paced(hub: &FakeHub, messages: u64, progress: &[AtomicU64]) {
    for n in 1..=messages {
        while progress.iter().map(|p| p.load(Ordering::Relaxed)).min().unwrap_or(n) + WINDOW < n {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        hub.publish("busy", &payload(n)).await;
    }
}

fn payload(n: u64) -> String {
    format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_a_gap_while_500_readers_get_everything_and_memory_stays_bounded() {
    const READERS: usize = 500;
    const MESSAGES: u64 = 1500;
    let _lagging = LAGGING_METRIC.lock().await;
    let config = config(2, |c| {
        c.link.ring_bytes = RING_BYTES;
        c.link.write_batch_bytes = BATCH;
        c.link.socket_send_buffer = 32 * 1024;
        c.link.lag_policy = LagPolicy::Gap;
    });
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    let mut stalled = WsClient::connect_small(addr, 4096).await;
    stalled.join("busy", None).await;
    let readers = join_all((0..READERS).map(|_| async move {
        let mut ws = WsClient::connect_to(addr, None).await;
        ws.join("busy", None).await;
        ws
    }))
    .await;
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect());
    let readers: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut expected = 1;
                while expected <= MESSAGES {
                    let value = ws.next_json().await;
                    assert_eq!(value["seq"], expected, "in order, no loss, no duplicate");
                    progress[i].store(expected, Ordering::Relaxed);
                    expected += 1;
                }
            })
        })
        .collect();

    // Sample the Link's memory accounting while the burst runs.
    let link = Arc::new(link);
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (link, running) = (link.clone(), running.clone());
        tokio::spawn(async move {
            let mut peak = LinkStats::default();
            while running.load(Ordering::Relaxed) {
                let now = link.stats();
                peak.ring_bytes = peak.ring_bytes.max(now.ring_bytes);
                peak.queued_bytes = peak.queued_bytes.max(now.queued_bytes);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            peak
        })
    };
    publish_paced(&hub, MESSAGES, &progress).await;
    for reader in readers {
        reader.await.expect("reader got everything");
    }
    running.store(false, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    let largest = 2 * (payload(MESSAGES).len() + 256);
    assert!(peak.ring_bytes <= 2 * RING_BYTES + 2 * largest, "rings bounded: {peak:?}");
    assert!(peak.queued_bytes <= (READERS + 1) * (BATCH + largest), "socket queues bounded: {peak:?}");
    // Readers are done: what remains queued is the stalled client's, at most about one batch.
    let settled = link.stats();
    assert!(settled.queued_bytes <= BATCH + largest, "stalled client holds one batch: {settled:?}");
    assert!(settled.ring_bytes <= 2 * RING_BYTES + 2 * largest);

    // The stalled client now reads: a prefix in order, an explicit gap, then up to the end.
    let mut last = 0u64;
    let mut gaps = 0;
    while last < MESSAGES {
        let value = stalled.next_json().await;
        if value["op"] == "gap" {
            gaps += 1;
            assert_eq!(value["room"], "busy");
            assert_eq!(value["first_lost"], last + 1);
            let resume = value["resume_from"].as_u64().expect("resume_from");
            assert_eq!(value["last_lost"], resume - 1);
            let next = stalled.next_json().await;
            assert_eq!(next["seq"], resume, "continues where the gap says");
            last = resume;
        } else {
            assert_eq!(value["seq"], last + 1, "no silent loss");
            last += 1;
        }
    }
    assert!(gaps >= 1, "the stalled client was told it lost messages");
    if let Ok(link) = Arc::try_unwrap(link) {
        link.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_disconnect_policy_a_stalled_client_is_closed_with_4100() {
    const MESSAGES: u64 = 1500;
    let _lagging = LAGGING_METRIC.lock().await;
    let config = config(2, |c| {
        c.link.ring_bytes = RING_BYTES;
        c.link.write_batch_bytes = BATCH;
        c.link.socket_send_buffer = 32 * 1024;
        c.link.lag_policy = LagPolicy::Disconnect;
        c.link.ping_interval_secs = 1;
    });
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    let mut stalled = WsClient::connect_small(addr, 4096).await;
    stalled.join("busy", None).await;
    let mut reader = WsClient::connect_to(addr, None).await;
    reader.join("busy", None).await;
    let progress: Arc<Vec<AtomicU64>> = Arc::new(vec![AtomicU64::new(0)]);
    let reading = {
        let progress = progress.clone();
        tokio::spawn(async move {
            for n in 1..=MESSAGES {
                assert_eq!(reader.next_json().await["seq"], n);
                progress[0].store(n, Ordering::Relaxed);
            }
        })
    };
    publish_paced(&hub, MESSAGES, &progress).await;
    reading.await.expect("the reader is unaffected");
    let mut last = 0;
    let end = loop {
        match stalled.next().await {
            Got::Json(value) => {
                assert_eq!(value["seq"], last + 1, "in order up to the close");
                last += 1;
            }
            other => break other,
        }
    };
    assert_eq!(end, Got::Close(4100, "slow consumer; retry_after_ms=1000".into()));
    assert!(last < MESSAGES);
    link.shutdown().await;
}
