//! The tests' one WebSocket client: tokio-websockets on a real loopback socket, speaking the
//! JSON protocol of docs/protocol.md. Pings are answered by the library itself.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

use super::STEP;

/// A client stream.
pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

/// A WebSocket client.
pub struct WsClient {
    stream: Stream,
    /// Also return messages about the rooms the Link joins by itself (`all`, `user:*`); off by
    /// default, so tests about other rooms read exactly what they read before issue 15.
    system_rooms: bool,
    /// Also return presence messages (`presence`, `member_joined`, `member_left`); other tests
    /// never see them.
    keep_presence: bool,
}

/// Whether `value` is about a room the Link joins every connection to (`all`, `user:{sub}`).
pub fn is_system_room_message(value: &Value) -> bool {
    value["room"].as_str().is_some_and(|room| room == "all" || room.starts_with("user:"))
}

/// `ws://addr/ws`, with `?token=` if given.
pub fn ws_url(addr: SocketAddr, token: Option<&str>) -> String {
    match token {
        Some(token) => format!("ws://{addr}/ws?token={token}"),
        None => format!("ws://{addr}/ws"),
    }
}

impl WsClient {
    /// Connects to `url` (`ws://host:port/ws...`); fails the test if refused.
    pub async fn connect(url: &str) -> WsClient {
        WsClient::try_connect(url).await.unwrap_or_else(|e| panic!("upgrade of {url} refused: {e}"))
    }

    /// Connects, returning the upgrade error if refused (or a timeout after [`STEP`]).
    pub async fn try_connect(url: &str) -> Result<WsClient, tokio_websockets::Error> {
        WsClient::try_connect_with(url, &[]).await
    }

    /// Connects to `ws://addr/ws` with an optional token.
    pub async fn connect_to(addr: SocketAddr, token: Option<&str>) -> WsClient {
        WsClient::connect(&ws_url(addr, token)).await
    }

    /// Connects with extra request headers (e.g. `Origin`).
    pub async fn try_connect_with(url: &str, headers: &[(&'static str, &'static str)]) -> Result<WsClient, tokio_websockets::Error> {
        let uri: http::Uri = url.parse().map_err(|_| tokio_websockets::Error::Io(std::io::ErrorKind::InvalidInput.into()))?;
        let mut builder = ClientBuilder::from_uri(uri);
        for (name, value) in headers {
            builder = builder.add_header(http::HeaderName::from_static(name), http::HeaderValue::from_static(value))?;
        }
        let (stream, _) = tokio::time::timeout(STEP, builder.connect())
            .await
            .map_err(|_| tokio_websockets::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
        Ok(WsClient { stream, system_rooms: false, keep_presence: false })
    }

    /// Connects to `ws://addr/ws` over a socket with a receive buffer of `rcvbuf` bytes (a
    /// reader that stalls fast once it stops reading).
    pub async fn connect_small(addr: SocketAddr, rcvbuf: u32) -> WsClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("rcvbuf");
        let tcp = tokio::time::timeout(STEP, socket.connect(addr)).await.expect("connect in time").expect("connect");
        let uri: http::Uri = ws_url(addr, None).parse().expect("uri");
        let (stream, _) = tokio::time::timeout(STEP, ClientBuilder::from_uri(uri).connect_on(MaybeTlsStream::Plain(tcp)))
            .await
            .expect("upgrade in time")
            .expect("upgrade");
        WsClient { stream, system_rooms: false, keep_presence: false }
    }

    /// This client's reads also return presence messages.
    pub fn keep_presence(mut self) -> WsClient {
        self.keep_presence = true;
        self
    }

    /// The underlying stream (for a reader task of its own).
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// Sends one JSON text message.
    pub async fn send(&mut self, value: Value) {
        self.stream.send(Message::text(value.to_string())).await.expect("ws send");
    }

    /// Sends any message (malformed text, binary); the error if the connection is gone.
    pub async fn send_message(&mut self, message: Message) -> Result<(), tokio_websockets::Error> {
        self.stream.send(message).await
    }

    /// The next JSON message or close within [`STEP`] (fails the test after that).
    pub async fn next(&mut self) -> Got {
        self.next_within(STEP).await.unwrap_or_else(|| panic!("nothing received within {STEP:?}"))
    }

    /// This client also returns messages about the automatic rooms (`all`, `user:*`).
    pub fn with_system_rooms(mut self) -> WsClient {
        self.system_rooms = true;
        self
    }

    /// The next JSON message or close within `wait`; `None` on timeout.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Got> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Got::End),
                Ok(Some(Ok(message))) => message,
            };
            if let Some((code, reason)) = message.as_close() {
                return Some(Got::Close(code.into(), reason.to_owned()));
            }
            if let Some(text) = message.as_text() {
                let value: Value = serde_json::from_str(text).expect("server sends JSON");
                if !self.system_rooms && is_system_room_message(&value) {
                    continue;
                }
                if !self.keep_presence && matches!(value["op"].as_str(), Some("presence" | "member_joined" | "member_left")) {
                    continue;
                }
                return Some(Got::Json(value));
            }
        }
    }

    /// The next message, which must be JSON.
    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Got::Json(value) => value,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    /// The next text message as sent (no JSON parse: cheap for load tests).
    pub async fn next_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(STEP, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("nothing received within {STEP:?}"))
                .expect("connection open")
                .expect("valid frame");
            if let Some(text) = message.as_text() {
                if !self.system_rooms && (text.contains(r#""room":"all""#) || text.contains(r#""room":"user:"#)) {
                    continue;
                }
                if !self.keep_presence && (text.starts_with(r#"{"op":"presence""#) || text.starts_with(r#"{"op":"member_"#)) {
                    continue;
                }
                return text.to_owned();
            }
            assert!(!message.is_close(), "closed: {message:?}");
        }
    }

    /// Joins `room` (from `since` if given) and waits for `joined`: returns what came before it
    /// (replay, gap, reset) and `joined.last_seq`. A refusal fails the test.
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> (Vec<Value>, u64) {
        let mut request = serde_json::json!({"op": "join", "room": room});
        if let Some(since) = since {
            request["since"] = since.into();
        }
        self.send(request).await;
        let mut before = Vec::new();
        loop {
            let value = self.next_json().await;
            if value["op"] == "joined" {
                assert_eq!(value["room"], room, "{value}");
                return (before, value["last_seq"].as_u64().unwrap_or_else(|| panic!("joined without last_seq: {value}")));
            }
            assert_ne!(value["op"], "error", "join of {room} refused: {value}");
            before.push(value);
        }
    }

    /// Sends `ping` and asserts the next message is `pong`: nothing was queued before it.
    pub async fn assert_pong_next(&mut self) {
        self.send(serde_json::json!({"op": "ping"})).await;
        assert_eq!(self.next_json().await, serde_json::json!({"op": "pong"}));
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.stream.close().await;
    }
}
