//! The client library (`linkcast::client`) against a running `serve`: options that locate a room
//! through the hub, a bounded wait for the next event, and the publish-while-dropping scenario
//! both transports (WebSocket, QUIC) must survive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use linkcast::client::http::HttpApi;
use linkcast::client::{Backoff, Client, ClientOptions, Event, SessionConfig, Target, Transport};
use linkcast::serve::ServeHandle;

/// Options for a client that locates `room` through `serve`'s hub, then uses `transport`;
/// reconnect backoff starts at `initial` (at most 4× that).
pub fn options(serve: &ServeHandle, room: &str, transport: Transport, token: Option<String>, initial: Duration) -> ClientOptions {
    let target = Target::Locate { http: format!("http://{}", serve.http_addr()), room: room.into(), transport };
    let mut options = ClientOptions::new(target);
    options.token = token;
    options.session = SessionConfig {
        backoff: Backoff { initial, max: initial * 4, overload_min: initial, stable_after: Duration::from_secs(60) },
        max_queued_publishes: 16,
    };
    options.seed = 11;
    options
}

/// The next event within 5 s (every wait is bounded).
/// Presence events (member counts, join/leave) are skipped: tests/it/presence.rs covers them.
pub async fn next(client: &mut Client) -> Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), client.next_event())
            .await
            .expect("an event within 5 s")
            .expect("client running");
        if !matches!(event, Event::Presence { .. } | Event::Member { .. }) {
            return event;
        }
    }
}

/// Drops the client's connection and waits until its driver says it is reconnecting. The drop is
/// a command to the driver, which may still deliver messages already received (its select polls
/// the socket first): a test publishes only after this returns, so every later message is missed
/// by the dropped connection. Nothing was published meanwhile, so a message here is a failure.
pub async fn drop_and_wait_reconnecting(client: &mut Client) {
    client.drop_connection();
    loop {
        match next(client).await {
            Event::Reconnecting { .. } => return,
            Event::Message(m) => panic!("nothing was published: {m:?}"),
            _ => {}
        }
    }
}

/// What [`resume_through_drops`] saw.
#[derive(Debug)]
pub struct Resumed {
    /// Seqs delivered to the application, in delivery order.
    pub seqs: Vec<u64>,
    /// `Reconnecting` events.
    pub reconnects: u32,
    /// `Joined` events after the first join.
    pub rejoins: u32,
}

/// Publishes `{"n":1..=300}` to `room` through `api` in the background while cutting `client`'s
/// connection three times (after its 60th, 120th and 180th message, each cut waiting until the
/// connection being cut has rejoined, so every cut lands on a joined connection); returns once
/// 300 messages were delivered. The publisher stays at most 50 messages ahead of the client, so
/// the cuts always happen before the last message. Panics on a gap, reset, error or close (none
/// is expected inside the history window), on a payload that disagrees with its seq, on a rejoin
/// that goes back before what was delivered, and on a rejoin answered in another epoch than the
/// first join (the room's history was never lost).
pub async fn resume_through_drops(client: &mut Client, mut api: HttpApi, room: &'static str) -> Resumed {
    let delivered = Arc::new(AtomicU64::new(0));
    let publisher = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            for n in 1..=300u64 {
                while n > delivered.load(Ordering::Relaxed) + 50 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                api.publish(room, Bytes::from(format!(r#"{{"n":{n}}}"#)), None).await.expect("publish accepted");
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut seen = Resumed { seqs: Vec::new(), reconnects: 0, rejoins: 0 };
    let mut drops_done = 0;
    let mut joined = true; // the caller waited for the first join
    let mut epoch = None;
    while seen.seqs.len() < 300 {
        match next(client).await {
            Event::Message(m) => {
                assert_eq!(m.data["n"], m.seq, "payload and seq agree");
                seen.seqs.push(m.seq);
                delivered.store(seen.seqs.len() as u64, Ordering::Relaxed);
                if joined && drops_done < 3 && seen.seqs.len() >= 60 * (drops_done + 1) {
                    client.drop_connection();
                    drops_done += 1;
                    joined = false;
                }
            }
            Event::Reconnecting { .. } => seen.reconnects += 1,
            Event::Joined { last_seq, epoch: e, .. } => {
                assert_eq!(*epoch.get_or_insert(e), e, "every rejoin lands in the room's one epoch");
                assert!(last_seq >= *seen.seqs.last().unwrap_or(&0));
                seen.rejoins += 1;
                joined = true;
            }
            Event::Gap { .. } => panic!("no gap expected inside the history window"),
            event @ Event::Reset { .. } => panic!("no reset expected: {event:?}"),
            event @ (Event::Error { .. } | Event::Closed { .. }) => panic!("{event:?}"),
            _ => {}
        }
    }
    publisher.await.expect("publisher");
    seen
}

/// Reads events until the next room message and asserts it is `seq` with `data`: the sentinel
/// published after everything else, so nothing unexpected was delivered before it. A gap, reset,
/// error or close on the way fails the test.
pub async fn assert_next_message(client: &mut Client, room: &str, seq: u64, data: &serde_json::Value) {
    loop {
        match next(client).await {
            Event::Message(m) => {
                assert_eq!((m.room.as_str(), m.seq, &m.data), (room, seq, data), "the sentinel is the next message");
                return;
            }
            event @ (Event::Gap { .. } | Event::Reset { .. } | Event::Error { .. } | Event::Closed { .. }) => {
                panic!("{event:?} before the sentinel")
            }
            _ => {}
        }
    }
}
