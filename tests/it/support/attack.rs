//! Attackers and stand-ins at the QUIC ports: a Link played by the test over real QUIC
//! ([`QuicLink`], from a chosen 127.0.0.x source address), silent half-open handshakes
//! ([`silent_handshakes`]) and the close a refused connection gets ([`close_of`]).

use std::net::SocketAddr;

use linkcast::quic::{client_endpoint, write_frames, FrameReader, ALPN_HUB};
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, DEFAULT_MAX_FRAME_LEN};

use super::STEP;

/// `127.0.0.<last>:0`: a source address of its own on loopback (Linux routes all of 127/8).
pub fn loopback(last: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, last], 0))
}

/// A Link played by the test over QUIC: its connection, stream and frame reader.
pub struct QuicLink {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub reader: FrameReader,
    nonce: u64,
}

impl QuicLink {
    /// Connects to the hub at `hub` from `source`, opens the stream and sends
    /// `Hello {link, secret}` (the hub may still refuse it: see [`close_of`]).
    pub async fn hello(hub: SocketAddr, source: SocketAddr, link: u32, secret: &str) -> QuicLink {
        let endpoint = client_endpoint(source, &linkcast::tls::Trust::LoopbackDev, ALPN_HUB).expect("client endpoint");
        let conn = tokio::time::timeout(STEP, endpoint.connect(hub, "localhost").expect("connect"))
            .await
            .expect("handshake in time")
            .expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("stream");
        let hello = FrameBuilder::new("").build(&Body::Hello { link, secret: secret.into(), ws: String::new(), quic: String::new(), admin: String::new() });
        write_frames(&mut send, &mut vec![hello.into_bytes()]).await.expect("write hello");
        QuicLink { endpoint, conn, send, reader: FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN), nonce: 0 }
    }

    /// Writes `frames` to the hub.
    pub async fn send(&mut self, frames: Vec<Frame>) {
        write_frames(&mut self.send, &mut frames.into_iter().map(Frame::into_bytes).collect()).await.expect("write");
    }

    /// The next frame from the hub; fails after [`STEP`] or if the stream ends.
    /// Presence frames (member counts, join/leave events) are skipped.
    pub async fn recv(&mut self) -> Frame {
        loop {
            let frame = tokio::time::timeout(STEP, self.reader.next()).await.expect("frame in time").expect("valid stream").expect("stream open");
            if !matches!(frame.kind(), linkcast_core::frame::Kind::Presence | linkcast_core::frame::Kind::Member) {
                return frame;
            }
        }
    }

    /// Round-trips a heartbeat; returns every other frame received before its echo. Proves the
    /// hub took this Link's earlier frames.
    pub async fn sync(&mut self) -> Vec<Frame> {
        self.nonce += 1;
        let nonce = self.nonce;
        self.send(vec![FrameBuilder::new("").build(&Body::Heartbeat { nonce })]).await;
        let mut others = Vec::new();
        loop {
            let frame = self.recv().await;
            match frame.body() {
                ArchivedBody::Heartbeat { nonce: n } if n.to_native() == nonce => return others,
                _ => others.push(frame),
            }
        }
    }
}

/// The application close (code, reason) `conn` gets within [`STEP`]; panics on another end.
pub async fn close_of(conn: &quinn::Connection) -> (u64, String) {
    match tokio::time::timeout(STEP, conn.closed()).await.expect("closed in time") {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (u64::from(close.error_code), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// Starts `n` QUIC handshakes to `target` from one endpoint on `source` that never open a
/// stream. Returns the connections that completed the handshake and how many were refused
/// before it (the endpoint is returned too: dropping it would end the connections).
pub async fn silent_handshakes(target: SocketAddr, source: SocketAddr, alpn: &[u8], n: usize) -> (quinn::Endpoint, Vec<quinn::Connection>, usize) {
    let endpoint = client_endpoint(source, &linkcast::tls::Trust::LoopbackDev, alpn).expect("attacker endpoint");
    let attempts: Vec<_> = (0..n).map(|_| endpoint.connect(target, "localhost").expect("connect")).collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match tokio::time::timeout(STEP, attempt).await.expect("handshake answered in time") {
            Ok(conn) => open.push(conn),
            Err(quinn::ConnectionError::ConnectionClosed(_)) => refused += 1,
            Err(other) => panic!("expected a completed or refused handshake, got {other:?}"),
        }
    }
    (endpoint, open, refused)
}
