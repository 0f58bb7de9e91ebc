//! The Link's own WebSocket upgrade and client-frame reader, driven byte by byte from a raw TCP
//! client: RFC 6455 accept key, fragmented messages with control frames between fragments,
//! frames cut across TCP writes, ping/pong, the close handshake, and the close codes for
//! framing violations (1002) and invalid UTF-8 (1007) — while a bystander keeps receiving.

use std::net::SocketAddr;
use std::time::Duration;

use linkcast_core::room_table::TableLimits;
use linkcast_core::ws_read::client_frame;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::http::{raw_upgrade, take_server_frame};
use crate::support::link::{config, start_link};
use crate::support::ws::WsClient;

const MASK: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

/// A raw client after a successful upgrade, with the bytes read past the response head.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let (tcp, buf) = raw_upgrade(addr).await;
        Raw { tcp, buf }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("send");
    }

    /// The next server frame: (opcode, payload). Server frames must be unmasked and final.
    async fn next(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(frame) = take_server_frame(&mut self.buf) {
                return frame;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk)).await.expect("in time").expect("read");
            assert!(n > 0, "closed without a close frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn next_json(&mut self) -> serde_json::Value {
        loop {
            match self.next().await {
                (0x1, payload) => {
                    let value: serde_json::Value = serde_json::from_slice(&payload).expect("JSON text");
                    if !crate::support::ws::is_system_room_message(&value) {
                        return value;
                    }
                }
                (0x9, _) => continue, // the Link's keep-alive
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    async fn expect_close(&mut self, code: u16, reason: &str) {
        loop {
            match self.next().await {
                (0x8, payload) => {
                    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
                    assert_eq!(String::from_utf8_lossy(&payload[2..]), reason);
                    return;
                }
                (0x9, _) => continue,
                // The `joined` of the rooms the Link joins by itself may still be on its way.
                (0x1, payload)
                    if serde_json::from_slice(&payload).is_ok_and(|v: serde_json::Value| crate::support::ws::is_system_room_message(&v)) =>
                {
                    continue
                }
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
    }
}

fn text(json: &serde_json::Value) -> Vec<u8> {
    client_frame(0x1, true, json.to_string().as_bytes(), MASK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_links_own_websocket_reader_follows_rfc_6455() {
    let config = config(2, |c| c.link.max_message_bytes = 4096);
    let (link, hub) = start_link(config, TableLimits::default()).await;
    let addr = link.ws_addr();
    let mut bystander = WsClient::connect_to(addr, None).await;
    bystander.join("r", None).await;

    // A join sent one byte per TCP write: frames cut anywhere are reassembled.
    let mut client = Raw::open(addr).await;
    client.tcp.set_nodelay(true).expect("nodelay");
    for byte in text(&json!({"op":"join","room":"r"})) {
        client.send(&[byte]).await;
        tokio::task::yield_now().await;
    }
    let joined = client.next_json().await;
    let epoch = joined["epoch"].as_str().expect("joined names the room's epoch").to_owned();
    assert_eq!(joined, json!({"op":"joined","room":"r","last_seq":0,"epoch":epoch}));

    // A fragmented message with a ping between its fragments: the pong echoes the ping's payload
    // and comes first; then the reassembled message is answered.
    let body = json!({"op":"ping"}).to_string();
    let (a, b) = body.as_bytes().split_at(4);
    let mut wire = client_frame(0x1, false, a, MASK);
    wire.extend(client_frame(0x9, true, b"are you there", MASK));
    wire.extend(client_frame(0x0, true, b, MASK));
    client.send(&wire).await;
    assert_eq!(client.next().await, (0xa, b"are you there".to_vec()));
    assert_eq!(client.next_json().await, json!({"op":"pong"}));

    // Room messages reach the raw client and the bystander alike.
    let seq = hub.publish("r", r#"{"n":1}"#).await;
    assert_eq!(client.next_json().await["seq"], seq);
    assert_eq!(bystander.next_json().await["seq"], seq);

    // The close handshake: the Link echoes the client's code.
    let mut close = vec![0x03, 0xe8];
    close.extend_from_slice(b"done");
    client.send(&client_frame(0x8, true, &close, MASK)).await;
    client.expect_close(1000, "").await;

    // Framing violations and bad UTF-8 are closed with their codes.
    let mut unmasked = Raw::open(addr).await;
    unmasked.send(&[0x81, 0x02, b'h', b'i']).await;
    unmasked.expect_close(1002, "protocol error").await;
    let mut reserved = Raw::open(addr).await;
    reserved.send(&client_frame(0x1 | 0x40, true, b"{}", MASK)).await;
    reserved.expect_close(1002, "protocol error").await;
    let mut not_utf8 = Raw::open(addr).await;
    not_utf8.send(&client_frame(0x1, true, &[b'"', 0xff, 0xfe, b'"'], MASK)).await;
    not_utf8.expect_close(1007, "invalid UTF-8").await;
    // An oversize frame is refused from its header alone (the payload is never sent).
    let mut oversize = Raw::open(addr).await;
    let header = client_frame(0x1, true, &vec![b'x'; 10_000], MASK);
    oversize.send(&header[..8]).await;
    oversize.expect_close(1009, "message too big").await;

    // Nobody else was harmed.
    let seq = hub.publish("r", r#"{"n":2}"#).await;
    assert_eq!(bystander.next_json().await["seq"], seq);
    link.shutdown().await;
}
