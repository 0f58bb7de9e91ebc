//! The client library against a real in-process `serve`: a dropped connection resumes with
//! `since` (and the room's epoch) and the application sees every message once, in order; a
//! client away for longer than the room's history window is told so with a gap, then continues.
//! Against a scripted Link (faults a real one only shows under outages): 503 refusals with a
//! retry hint are retried (a publish with the same id), and a `reset` restarts the room's
//! position at the new epoch.

use std::time::Duration;

use bytes::Bytes;
use linkcast::client::http::HttpApi;
use linkcast::client::{Client, Event, Transport};
use linkcast::config::Config;
use linkcast::serve::ServeHandle;

use crate::support::any_addr as any;
use crate::support::client::{drop_and_wait_reconnecting, next, options, resume_through_drops, Resumed};

async fn start_serve(history: usize) -> ServeHandle {
    let mut config = Config::default();
    config.hub.history_messages = history;
    crate::support::start_serve(config, false).await
}

async fn wait_joined(client: &mut Client) -> u64 {
    for _ in 0..100 {
        if let Event::Joined { last_seq, .. } = next(client).await {
            return last_seq;
        }
    }
    panic!("no Joined event");
}

async fn publish(api: &mut HttpApi, room: &str, n: u64) {
    let body = Bytes::from(format!(r#"{{"n":{n}}}"#));
    api.publish(room, body, None).await.expect("publish accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_resumes_without_loss_or_duplicates() {
    let serve = start_serve(1000).await;
    let room = "resume-room";
    let api = HttpApi::new(&format!("http://{}", serve.http_addr()), None).expect("api");
    let mut client = Client::start(options(&serve, room, Transport::Ws, None, Duration::from_millis(20)));
    client.join(room).expect("join");
    assert_eq!(wait_joined(&mut client).await, 0);

    // 300 messages published while the client is cut three times.
    let Resumed { seqs, reconnects, .. } = resume_through_drops(&mut client, api, room).await;
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "every message once, in order");
    assert_eq!(reconnects, 3);
    let stats = client.close().await;
    assert_eq!(stats.lost, 0);
    assert!(stats.connects >= 4, "{stats:?}");
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_away_past_the_history_window_gets_a_gap() {
    let serve = start_serve(20).await;
    let room = "gap-room";
    let mut api = HttpApi::new(&format!("http://{}", serve.http_addr()), None).expect("api");
    // A long backoff keeps the client away while 100 messages go by.
    let mut client = Client::start(options(&serve, room, Transport::Ws, None, Duration::from_millis(1500)));
    client.join(room).expect("join");
    wait_joined(&mut client).await;
    publish(&mut api, room, 1).await;
    match next(&mut client).await {
        Event::Message(m) => assert_eq!(m.seq, 1),
        other => panic!("expected message 1, got {other:?}"),
    }
    drop_and_wait_reconnecting(&mut client).await;
    for n in 2..=101 {
        publish(&mut api, room, n).await;
    }
    // Back after ≥ 0.75 s: messages 2..=81 are outside the 20-message window.
    let mut gap = None;
    let mut seqs = Vec::new();
    while seqs.last() != Some(&101) {
        match next(&mut client).await {
            Event::Gap { first_lost, last_lost, resume_from, .. } => gap = Some((first_lost, last_lost, resume_from)),
            Event::Message(m) => {
                assert!(gap.is_some(), "the gap comes before the replay");
                seqs.push(m.seq);
            }
            _ => {}
        }
    }
    assert_eq!(gap, Some((2, 81, 82)));
    assert_eq!(seqs, (82..=101).collect::<Vec<_>>());
    let stats = client.close().await;
    assert_eq!(stats.lost, 80);
    assert_eq!(stats.duplicates, 0);
    serve.shutdown().await;
}

/// One accepted connection of the scripted Link below.
struct FakeConn(tokio_websockets::WebSocketStream<tokio::net::TcpStream>);

impl FakeConn {
    async fn accept(listener: &tokio::net::TcpListener) -> FakeConn {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("client connects").expect("accept");
        let (_, ws) = tokio_websockets::ServerBuilder::new().accept(tcp).await.expect("upgrade");
        FakeConn(ws)
    }

    /// The client's next op, as JSON (pings skipped), within 5 s.
    async fn recv(&mut self) -> serde_json::Value {
        use futures_util::StreamExt;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.0.next()).await.expect("an op in time");
            let msg = msg.expect("connection open").expect("frame");
            let Some(text) = msg.as_text() else { continue };
            let op: serde_json::Value = serde_json::from_str(text).expect("client sends JSON");
            if op["op"] != "ping" {
                return op;
            }
        }
    }

    async fn send(&mut self, value: serde_json::Value) {
        use futures_util::SinkExt;
        self.0.send(tokio_websockets::Message::text(value.to_string())).await.expect("send");
    }
}

/// The client library against a scripted Link (the protocol's new surface, end to end through
/// the real driver and its timers): a publish refused with 503 + `retry_after_ms` is resent
/// after the hint with the same id and acked once; after a reconnect the join carries `since`
/// and `epoch`, a join refused with 503 is retried with the same position, and a `reset` to a
/// new epoch delivers the new epoch's seq 1 instead of dropping it as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_a_lost_hub_and_resets_reach_the_application_as_documented() {
    use serde_json::json;
    const OLD: &str = "00000000000000e1";
    const NEW: &str = "9f86d081884c7d65";
    let listener = tokio::net::TcpListener::bind(any()).await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let mut options = linkcast::client::ClientOptions::new(linkcast::client::Target::Ws(url));
    options.session.backoff.initial = Duration::from_millis(20);
    options.session.backoff.max = Duration::from_millis(80);
    let mut client = Client::start(options);
    client.join("r").expect("join");

    let mut link = FakeConn::accept(&listener).await;
    assert_eq!(link.recv().await, json!({"op": "join", "room": "r"}), "a first join is live only");
    link.send(json!({"op": "joined", "room": "r", "epoch": OLD, "last_seq": 2})).await;
    link.send(json!({"room": "r", "seq": 3, "from": "u", "ts": 1, "data": {"n": 3}})).await;
    link.send(json!({"room": "r", "seq": 4, "from": "u", "ts": 2, "data": {"n": 4}})).await;
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        match next(&mut client).await {
            Event::Joined { epoch, last_seq, .. } => assert_eq!((epoch, last_seq), (0xe1, 2)),
            Event::Message(m) => seqs.push(m.seq),
            _ => {}
        }
    }
    assert_eq!(seqs, vec![3, 4]);

    // A publish in flight when the Link lost its hub: resent after the hint, same id.
    let id = client.publish("r", &json!({"text": "once"})).await.expect("queued");
    let first = link.recv().await;
    assert_eq!((first["op"].as_str(), first["id"].as_u64(), &first["data"]), (Some("publish"), Some(id), &json!({"text": "once"})));
    let refused_at = tokio::time::Instant::now();
    link.send(json!({"op": "error", "code": 503, "reason": "hub connection lost", "room": "r", "id": id, "retry_after_ms": 150})).await;
    let again = link.recv().await;
    assert!(refused_at.elapsed() >= Duration::from_millis(140), "resent after the hint, not before");
    assert_eq!(again, first, "the very same publish: same id, same data");
    link.send(json!({"op": "published", "room": "r", "seq": 5, "epoch": OLD, "id": id})).await;
    loop {
        match next(&mut client).await {
            Event::Published { seq, epoch, id: got, .. } => {
                assert_eq!((seq, epoch, got), (5, 0xe1, id));
                break;
            }
            event @ Event::Error { .. } => panic!("a retried refusal is not the application's business: {event:?}"),
            _ => {}
        }
    }

    // The Link goes away; the client comes back with its position, (epoch, last seq).
    drop(link);
    let mut link = FakeConn::accept(&listener).await;
    let join = json!({"op": "join", "room": "r", "since": 4, "epoch": OLD});
    assert_eq!(link.recv().await, join);
    link.send(json!({"op": "error", "code": 503, "reason": "hub unavailable", "room": "r", "retry_after_ms": 50})).await;
    assert_eq!(link.recv().await, join, "a refused join is retried with the same position");
    // The room's hub restarted without a store: a reset, then the new epoch from its start.
    link.send(json!({"op": "reset", "room": "r", "epoch": NEW, "last_seq": 1})).await;
    link.send(json!({"room": "r", "seq": 1, "from": "u", "ts": 3, "data": {"n": "new 1"}})).await;
    link.send(json!({"op": "joined", "room": "r", "epoch": NEW, "last_seq": 1})).await;
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(Event::Joined { .. })) {
        match next(&mut client).await {
            event @ (Event::Reset { .. } | Event::Message(_) | Event::Joined { .. }) => seen.push(event),
            event @ (Event::Error { .. } | Event::Gap { .. }) => panic!("{event:?}"),
            _ => {}
        }
    }
    assert!(matches!(&seen[0], Event::Reset { epoch: 0x9f86_d081_884c_7d65, last_seq: 1, .. }), "{seen:?}");
    assert!(matches!(&seen[1], Event::Message(m) if m.seq == 1 && m.data["n"] == "new 1"), "seq 1 of the new epoch is delivered: {seen:?}");
    assert!(matches!(&seen[2], Event::Joined { epoch: 0x9f86_d081_884c_7d65, last_seq: 1, .. }), "{seen:?}");

    // The next rejoin carries the new position.
    drop(link);
    let mut link = FakeConn::accept(&listener).await;
    assert_eq!(link.recv().await, json!({"op": "join", "room": "r", "since": 1, "epoch": NEW}));
    drop(link);
    let stats = client.close().await;
    assert_eq!((stats.resets, stats.duplicates, stats.retries), (1, 0, 2), "{stats:?}");
}
