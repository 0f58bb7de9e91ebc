//! The client library against a real in-process `serve`: a dropped connection resumes with
//! `since` and the application sees every message once, in order; a client away for longer than
//! the room's history window is told so with a gap, then continues.

mod client_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use linkcast::client::http::HttpApi;
use client_support::{next, options, resume_through_drops, Resumed};
use linkcast::client::{Client, Event, Transport};
use linkcast::config::Config;
use linkcast::serve::{ServeHandle, ServeOptions};

fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start_serve(history: usize) -> ServeHandle {
    let mut config = Config::default();
    config.hub.history_messages = history;
    let options = ServeOptions { config: Arc::new(config), http_addr: any(), ws_addr: any(), quic_addr: None };
    linkcast::serve::start(options).await.expect("serve starts")
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
    client.drop_connection();
    // The drop is a command to the driver, which may still deliver messages already received
    // (its select polls the socket first): publish only once it is done.
    loop {
        match next(&mut client).await {
            Event::Reconnecting { .. } => break,
            Event::Message(m) => panic!("nothing was published: {m:?}"),
            _ => {}
        }
    }
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
