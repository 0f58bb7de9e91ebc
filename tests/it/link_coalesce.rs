//! `link.coalesce_us`: a Link whose shards linger to merge frames still delivers every message
//! once and in order — live bursts, lone messages, replies to requests made while it lingers —
//! and shuts down with messages in flight.

use futures_util::future::join_all;
use linkcast_core::room_table::TableLimits;
use serde_json::json;

use crate::support::link::{config, start_link};
use crate::support::ws::WsClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_link_delivers_every_message_once_in_order() {
    const CLIENTS: usize = 40;
    const MESSAGES: u64 = 300;
    for shards in [1, 2] {
        let (link, hub) = start_link(config(shards, |c| c.link.coalesce_us = 5_000), TableLimits::default()).await;
        let addr = link.ws_addr();
        let clients = join_all((0..CLIENTS).map(|_| async move {
            let mut ws = WsClient::connect_to(addr, None).await;
            ws.join("danmaku", None).await;
            ws
        }))
        .await;
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    // Room messages in the order received; the pong of a ping sent after the
                    // 100th message (while the shard may be lingering) may come between them.
                    let mut seqs = Vec::with_capacity(MESSAGES as usize);
                    let mut pong = false;
                    while seqs.len() < MESSAGES as usize || !pong {
                        let value = ws.next_json().await;
                        if value == json!({"op":"pong"}) {
                            assert!(seqs.len() >= 100 && !pong, "one pong, after the ping");
                            pong = true;
                            continue;
                        }
                        assert_eq!(value["data"]["n"], value["seq"], "payload matches its seq");
                        seqs.push(value["seq"].as_u64().expect("seq"));
                        if seqs.len() == 100 {
                            ws.send(json!({"op":"ping"})).await;
                        }
                    }
                    seqs
                })
            })
            .collect();
        // Bursts (published back to back) and lone messages (one at a time, awaited).
        for n in 1..=MESSAGES {
            assert_eq!(hub.publish("danmaku", &format!(r#"{{"n":{n}}}"#)).await, n);
            if n % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let expected: Vec<u64> = (1..=MESSAGES).collect();
        for reader in readers {
            assert_eq!(reader.await.expect("reader"), expected, "{shards} shard(s): every message once, in order");
        }
        // Shutdown while messages are in flight: it completes.
        for n in MESSAGES + 1..=MESSAGES + 20 {
            hub.publish("danmaku", &format!(r#"{{"n":{n}}}"#)).await;
        }
        link.shutdown().await;
    }
}
