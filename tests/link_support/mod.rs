//! Shared helpers of the `link_*` integration tests: a faithful fake hub and WebSocket clients.
//!
//! [`FakeHub`] is a real hub minus the network: a `rooms::RoomTable` (the hub's own decision
//! logic) driven by a task that takes the Link's frames from `uplink::pair` ends handed out by
//! its [`HubConnector`], publishes on request, and sends `poll_transmit` output back to the Link.
//! Clients are tokio-websockets clients on real loopback sockets.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use linkcast::config::Config;
use linkcast_core::frame::{Frame, FLAG_JSON};
use linkcast::link::{self, LinkHandle, LinkId, LinkOptions};
use linkcast_core::placement;
use linkcast_core::room_table::{RoomTable, TableLimits};
use linkcast_core::hub_directory::HubId;
use linkcast::uplink::{pair, BoxFuture, HubConnector, HubPort, LinkPort, PORT_CAPACITY};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// How long any single expected event may take before a test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// A test WebSocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Cmd {
    Attach(LinkPort),
    Publish { room: String, sender: String, flags: u16, data: Vec<u8>, reply: oneshot::Sender<u64> },
}

/// A hub made of the real `RoomTable`, reachable through its connector.
#[derive(Clone)]
pub struct FakeHub {
    cmd: mpsc::UnboundedSender<Cmd>,
}

struct Connector {
    link: LinkId,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl HubConnector for Connector {
    fn connect(&self, hub: HubId) -> BoxFuture<'_, std::io::Result<HubPort>> {
        let (hub_port, link_port) = pair(self.link, hub, PORT_CAPACITY);
        let sent = self.cmd.send(Cmd::Attach(link_port));
        Box::pin(async move {
            sent.map_err(|_| std::io::Error::other("fake hub stopped"))?;
            Ok(hub_port)
        })
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl FakeHub {
    /// Starts the hub task on the current runtime.
    pub fn start(limits: TableLimits) -> FakeHub {
        let (cmd, mut commands) = mpsc::unbounded_channel::<Cmd>();
        tokio::spawn(async move {
            let mut table = RoomTable::new(limits, 0x5eed);
            let (frames_tx, mut frames) = mpsc::channel::<(placement::LinkId, Option<Frame>)>(PORT_CAPACITY);
            let mut links: HashMap<placement::LinkId, mpsc::Sender<Frame>> = HashMap::new();
            loop {
                tokio::select! {
                    cmd = commands.recv() => match cmd {
                        Some(Cmd::Attach(port)) => {
                            let LinkPort { link, to_link, mut from_link } = port;
                            links.insert(link, to_link);
                            let frames_tx = frames_tx.clone();
                            tokio::spawn(async move {
                                while let Some(frame) = from_link.recv().await {
                                    if frames_tx.send((link, Some(frame))).await.is_err() {
                                        return;
                                    }
                                }
                                let _ = frames_tx.send((link, None)).await;
                            });
                        }
                        Some(Cmd::Publish { room, sender, flags, data, reply }) => {
                            let seq = table.publish(now_micros(), &room, &sender, flags, &data, "").expect("publish accepted").seq;
                            let _ = reply.send(seq);
                        }
                        None => break,
                    },
                    Some((link, frame)) = frames.recv() => match frame {
                        Some(frame) => table.handle_link_frame(now_micros(), link, &frame),
                        None => {
                            table.handle_link_down(now_micros(), link);
                            links.remove(&link);
                        }
                    },
                }
                while let Some((link, frame)) = table.poll_transmit() {
                    if let Some(tx) = links.get(&link) {
                        let _ = tx.send(frame).await;
                    }
                }
            }
        });
        FakeHub { cmd }
    }

    /// The connector a Link uses to reach this hub.
    pub fn connector(&self, link: LinkId) -> Arc<dyn HubConnector> {
        Arc::new(Connector { link, cmd: self.cmd.clone() })
    }

    /// Publishes a JSON payload as the HTTP API would; returns its seq.
    pub async fn publish(&self, room: &str, data: &str) -> u64 {
        self.publish_raw(room, "server", FLAG_JSON, data.as_bytes()).await
    }

    /// Publishes with explicit flags and sender.
    pub async fn publish_raw(&self, room: &str, sender: &str, flags: u16, data: &[u8]) -> u64 {
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Publish { room: room.into(), sender: sender.into(), flags, data: data.to_vec(), reply };
        assert!(self.cmd.send(cmd).is_ok(), "fake hub running");
        answer.await.expect("fake hub answers")
    }
}

/// A config with `shards` shards and the given tweaks.
pub fn config(shards: usize, tweak: impl FnOnce(&mut Config)) -> Arc<Config> {
    let mut config = Config::default();
    config.link.shards = shards;
    tweak(&mut config);
    Arc::new(config)
}

/// Starts a Link on loopback (random ports, QUIC too) against a fresh fake hub, and waits until
/// the Link is connected to it (before that, joins are answered 503 "hub unavailable").
pub async fn start_link(config: Arc<Config>, limits: TableLimits) -> (LinkHandle, FakeHub) {
    let hub = FakeHub::start(limits);
    let options = LinkOptions {
        id: LinkId(1),
        config,
        ws_addr: "127.0.0.1:0".parse().expect("addr"),
        quic_addr: Some("127.0.0.1:0".parse().expect("addr")),
    };
    let handle = link::start(options, hub.connector(LinkId(1))).expect("link starts");
    let deadline = tokio::time::Instant::now() + STEP;
    while handle.connected_hubs() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "link connects to the fake hub");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (handle, hub)
}

/// Connects a WebSocket client to `/ws` with an optional token.
pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Ws {
    try_connect(addr, token).await.expect("upgrade accepted")
}

/// Connects, returning the upgrade error if refused.
pub async fn try_connect(addr: SocketAddr, token: Option<&str>) -> Result<Ws, tokio_websockets::Error> {
    let uri = match token {
        Some(token) => format!("ws://{addr}/ws?token={token}"),
        None => format!("ws://{addr}/ws"),
    };
    let uri: http::Uri = uri.parse().expect("uri");
    let (ws, _) = tokio::time::timeout(STEP, ClientBuilder::from_uri(uri).connect())
        .await
        .map_err(|_| tokio_websockets::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(ws)
}

/// Connects over a socket with a tiny receive buffer (a client that will stall quickly).
pub async fn connect_small_buffer(addr: SocketAddr) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("connect");
    let uri: http::Uri = format!("ws://{addr}/ws").parse().expect("uri");
    let (ws, _) = ClientBuilder::from_uri(uri).connect_on(MaybeTlsStream::Plain(stream)).await.expect("upgrade");
    ws
}

/// Sends one JSON text message.
pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.expect("send");
}

/// What a client read.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// A JSON text message.
    Json(Value),
    /// A close frame with code and reason.
    Close(u16, String),
    /// The stream ended without a close frame (or failed).
    End,
}

/// Reads the next JSON message or close (pings are answered by the client itself).
pub async fn next(ws: &mut Ws) -> Got {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("nothing received within {STEP:?}"),
            Ok(None) | Ok(Some(Err(_))) => return Got::End,
            Ok(Some(Ok(message))) => message,
        };
        if let Some((code, reason)) = message.as_close() {
            return Got::Close(code.into(), reason.to_owned());
        }
        if let Some(text) = message.as_text() {
            return Got::Json(serde_json::from_str(text).expect("server sends JSON"));
        }
    }
}

/// Reads the next message, which must be JSON.
pub async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Got::Json(value) => value,
        other => panic!("expected JSON, got {other:?}"),
    }
}

/// Joins `room` and waits for `joined`, returning its `last_seq`; messages before it are
/// returned too (replay).
pub async fn join(ws: &mut Ws, room: &str, since: Option<u64>) -> (Vec<Value>, u64) {
    let mut request = serde_json::json!({"op": "join", "room": room});
    if let Some(since) = since {
        request["since"] = since.into();
    }
    send(ws, request).await;
    let mut before = Vec::new();
    loop {
        let value = next_json(ws).await;
        if value["op"] == "joined" {
            assert_eq!(value["room"], room);
            return (before, value["last_seq"].as_u64().expect("last_seq"));
        }
        before.push(value);
    }
}

/// A plain HTTP GET on the Link port; returns status and body.
pub async fn http_get(addr: SocketAddr, target: &str, extra_headers: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut response)).await.expect("answer in time").expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The headers of a WebSocket upgrade request (for [`http_get`]).
pub fn upgrade_headers(extra: &str) -> String {
    format!("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}")
}
