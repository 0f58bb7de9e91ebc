//! QUIC plumbing shared by every role: endpoint configs and frame streams.
//!
//! Two ALPNs share one crypto setup:
//! - [`ALPN_CLIENT`] (`linkcast/1`): native clients ↔ a Link (docs/protocol.md);
//! - [`ALPN_HUB`] (`linkcast-hub/1`): a Link ↔ a hub (the interest interface of `uplink.rs`).
//!
//! Certificates and trust are `tls.rs`: servers present the `[tls]` certificate (or a self-signed
//! one), clients verify against `[tls] ca_file` / `pin_sha256`, and only a loopback server may go
//! unverified. The Link–hub link is in addition authenticated by the cluster secret in `Hello`.
//!
//! Limits before anyone is authenticated: a server endpoint queues at most [`MAX_INCOMING`]
//! handshakes, and a peer may open one bidirectional stream with a receive window of two frames
//! ([`server_transport`]); the accept loops (hub `links.rs`, Link `quic_clients.rs`) bound
//! handshakes in progress and time them out.
//!
//! On a stream, frames follow each other with no extra framing: a frame's header carries its
//! total length (see `frame.rs`), so [`FrameReader`] splits the byte stream with
//! `frame::decode`, checking the length against the limit before buffering the body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use linkcast_core::frame::{self, Frame, FrameError};

use crate::tls::{self, ServerCert, TlsError, Trust};

/// ALPN of the client protocol.
pub const ALPN_CLIENT: &[u8] = b"linkcast/1";
/// ALPN of the Link–hub protocol.
pub const ALPN_HUB: &[u8] = b"linkcast-hub/1";

/// Errors setting up QUIC.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    /// Certificates or trust could not be set up.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// QUIC rejected the TLS configuration.
    #[error("quic tls: {0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Binding the UDP socket failed.
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
}

/// Most connections waiting in a server endpoint's accept queue (handshakes not yet taken).
const MAX_INCOMING: usize = 1024;

/// A server's transport limits for peers sending frames of at most `max_frame` bytes: the peer
/// may open one bidirectional stream and no unidirectional one, and may have at most two
/// frames' worth of bytes in flight per stream (four per connection), so a connection that
/// never gets its stream accepted holds a few MiB, not quinn's default hundreds.
pub fn server_transport(max_frame: usize) -> quinn::TransportConfig {
    let window = u32::try_from(max_frame.saturating_mul(2)).unwrap_or(u32::MAX);
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport.stream_receive_window(quinn::VarInt::from_u32(window));
    transport.receive_window(quinn::VarInt::from_u32(window.saturating_mul(2)));
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(60_000).into()));
    transport
}

/// Server config for `alpns` presenting `cert`, with [`server_transport`] limits for frames of
/// at most `max_frame` bytes.
pub fn server_config(cert: Arc<ServerCert>, alpns: &[&[u8]], max_frame: usize) -> Result<quinn::ServerConfig, QuicSetupError> {
    server_config_from_tls(tls::server_config(cert, alpns)?, max_frame)
}

/// [`server_config`] over a rustls config of the caller's (the hub's Link port with mutual TLS:
/// `mtls.rs`).
pub fn server_config_from_tls(tls: rustls::ServerConfig, max_frame: usize) -> Result<quinn::ServerConfig, QuicSetupError> {
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(server_transport(max_frame)));
    config.max_incoming(MAX_INCOMING);
    Ok(config)
}

/// Sets the hub <-> Link connection's liveness on `transport` (both ends set it: QUIC keeps the
/// smaller of the two idle timeouts): dead after `idle_timeout` without a packet, a keep-alive
/// every quarter of it, so three in a row may be lost first.
pub(crate) fn cluster_keep_alive(transport: &mut quinn::TransportConfig, idle_timeout: std::time::Duration) {
    transport.keep_alive_interval(Some(idle_timeout / 4));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
}

/// Client config for `alpn` checking the server by `trust`. The server may open no stream.
pub fn client_config(trust: &Trust, alpn: &[u8]) -> Result<quinn::ClientConfig, QuicSetupError> {
    client_config_as(trust, alpn, None)
}

/// [`client_config`] presenting `identity` as client certificate when given.
pub fn client_config_as(trust: &Trust, alpn: &[u8], identity: Option<&crate::mtls::ClientIdentity>) -> Result<quinn::ClientConfig, QuicSetupError> {
    let mut transport = client_transport();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    client_config_with(trust, alpn, identity, transport)
}

/// A client's transport: the server may open no stream.
fn client_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport
}

fn client_config_with(
    trust: &Trust,
    alpn: &[u8],
    identity: Option<&crate::mtls::ClientIdentity>,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, QuicSetupError> {
    let tls = trust.client_config_as(&[alpn], identity)?;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A server endpoint on `addr` speaking `alpns` with a fresh self-signed certificate (tests).
pub fn server_endpoint(addr: SocketAddr, alpns: &[&[u8]]) -> Result<quinn::Endpoint, QuicSetupError> {
    let cert = Arc::new(ServerCert::self_signed()?);
    Ok(quinn::Endpoint::server(server_config(cert, alpns, frame::DEFAULT_MAX_FRAME_LEN)?, addr)?)
}

/// A client endpoint (bound to an ephemeral port on `bind`) speaking `alpn`, checking servers
/// by `trust` (dial with [`crate::tls::server_name`] and check the target with
/// [`Trust::check_target`] first).
pub fn client_endpoint(bind: SocketAddr, trust: &Trust, alpn: &[u8]) -> Result<quinn::Endpoint, QuicSetupError> {
    client_endpoint_as(bind, trust, alpn, None)
}

/// [`client_endpoint`] presenting `identity` as client certificate when given.
pub fn client_endpoint_as(
    bind: SocketAddr,
    trust: &Trust,
    alpn: &[u8],
    identity: Option<&crate::mtls::ClientIdentity>,
) -> Result<quinn::Endpoint, QuicSetupError> {
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client_config_as(trust, alpn, identity)?);
    Ok(endpoint)
}

/// A quinn endpoint on `socket` (from `udp_socket::bind_busy`), serving `server` if given, on
/// the current tokio runtime.
pub(crate) fn endpoint_on(socket: std::net::UdpSocket, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

/// A Link's endpoint towards its hubs on `socket` (bound with a large receive buffer by
/// `udp_socket.rs`), its connections kept alive by [`cluster_keep_alive`] with `idle_timeout`.
pub(crate) fn hub_client_endpoint(
    socket: std::net::UdpSocket,
    trust: &Trust,
    identity: Option<&crate::mtls::ClientIdentity>,
    idle_timeout: std::time::Duration,
) -> Result<quinn::Endpoint, QuicSetupError> {
    let mut endpoint = endpoint_on(socket, None)?;
    let mut transport = client_transport();
    cluster_keep_alive(&mut transport, idle_timeout);
    endpoint.set_default_client_config(client_config_with(trust, ALPN_HUB, identity, transport)?);
    Ok(endpoint)
}

/// Errors reading frames from a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent bytes that are not a valid frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The stream failed; a lost connection says why ("timed out", "closed by peer: …").
    #[error("stream: {0}{because}", because = lost_because(.0))]
    Read(#[from] quinn::ReadError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Why a stream's connection was lost, for [`StreamError`]'s message (quinn's `ReadError` says
/// only "connection lost").
fn lost_because(error: &quinn::ReadError) -> String {
    match error {
        quinn::ReadError::ConnectionLost(cause) => format!(" ({cause})"),
        _ => String::new(),
    }
}

/// Splits a QUIC receive stream into validated frames.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    max_len: usize,
}

impl FrameReader {
    /// Reads frames of at most `max_len` bytes from `recv`.
    pub fn new(recv: quinn::RecvStream, max_len: usize) -> Self {
        FrameReader { recv, buf: BytesMut::with_capacity(64 * 1024), max_len }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = frame::decode(&mut self.buf, self.max_len)? {
                return Ok(Some(frame));
            }
            // quinn hands out its own buffers; one copy into ours keeps frames contiguous.
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(StreamError::Truncated),
            }
        }
    }
}

/// Writes frames to a QUIC send stream, several per call where possible.
pub async fn write_frames(send: &mut quinn::SendStream, frames: &mut Vec<bytes::Bytes>) -> Result<(), quinn::WriteError> {
    if frames.is_empty() {
        return Ok(());
    }
    send.write_all_chunks(frames).await?;
    frames.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_says_why() {
        let lost = StreamError::Read(quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut));
        assert_eq!(lost.to_string(), "stream: connection lost (timed out)");
        assert_eq!(StreamError::Read(quinn::ReadError::ClosedStream).to_string(), "stream: closed stream");
    }

    #[tokio::test]
    async fn frames_cross_a_loopback_quic_stream() {
        let server = server_endpoint("127.0.0.1:0".parse().expect("addr"), &[ALPN_HUB]).expect("server");
        let addr = server.local_addr().expect("bound");
        let client = client_endpoint("127.0.0.1:0".parse().expect("addr"), &Trust::LoopbackDev, ALPN_HUB).expect("client");
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.expect("incoming").await.expect("handshake");
            let (_send, recv) = conn.accept_bi().await.expect("stream");
            let mut reader = FrameReader::new(recv, frame::DEFAULT_MAX_FRAME_LEN);
            let mut got = Vec::new();
            while let Some(frame) = reader.next().await.expect("valid frames") {
                got.push(frame);
            }
            got
        });
        let conn = client.connect(addr, "localhost").expect("connect").await.expect("handshake");
        let (mut send, _recv) = conn.open_bi().await.expect("stream");
        let sent: Vec<Frame> = (1..=50).map(|seq| Frame::message("lobby", seq, seq, "u", 0, &[7; 300])).collect();
        let mut chunks: Vec<bytes::Bytes> = sent.iter().map(|f| f.as_bytes().clone()).collect();
        write_frames(&mut send, &mut chunks).await.expect("written");
        send.finish().expect("finish");
        let got = accept.await.expect("task");
        assert_eq!(got, sent);
        conn.close(0u32.into(), b"done");
    }
}
