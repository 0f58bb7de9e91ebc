//! QUIC plumbing shared by every role: endpoint configs and frame streams.
//!
//! Two ALPNs share one crypto setup:
//! - [`ALPN_CLIENT`] (`linkcast/1`): native clients ↔ a Link (docs/protocol.md);
//! - [`ALPN_HUB`] (`linkcast-hub/1`): a Link ↔ a hub (the interest interface of `uplink.rs`).
//!
//! Servers present a configured certificate or, by default, a self-signed one made at start-up
//! with rcgen. Clients verify against a configured CA, or — loopback/dev default — accept any
//! certificate; the Link–hub link is then authenticated by the cluster secret in `Hello`. That
//! default is said in docs/operations.md; production clusters should configure certificates.
//!
//! On a stream, frames follow each other with no extra framing: a frame's header carries its
//! total length (see `frame.rs`), so [`FrameReader`] splits the byte stream with
//! `frame::decode`, checking the length against the limit before buffering the body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use linkcast_core::frame::{self, Frame, FrameError};

/// ALPN of the client protocol.
pub const ALPN_CLIENT: &[u8] = b"linkcast/1";
/// ALPN of the Link–hub protocol.
pub const ALPN_HUB: &[u8] = b"linkcast-hub/1";

/// Errors setting up QUIC.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// QUIC rejected the TLS configuration.
    #[error("quic tls: {0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Binding the UDP socket failed.
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost` and 127.0.0.1.
pub fn self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), QuicSetupError> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    Ok((certified.cert.der().clone(), key))
}

/// Server config for `alpn` with a self-signed certificate.
pub fn server_config(alpns: &[&[u8]]) -> Result<quinn::ServerConfig, QuicSetupError> {
    let (cert, key) = self_signed()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(60_000).into()));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Client config for `alpn` that accepts any server certificate (see the module docs).
pub fn client_config(alpn: &[u8]) -> Result<quinn::ClientConfig, QuicSetupError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A server endpoint on `addr` speaking `alpns`.
pub fn server_endpoint(addr: SocketAddr, alpns: &[&[u8]]) -> Result<quinn::Endpoint, QuicSetupError> {
    Ok(quinn::Endpoint::server(server_config(alpns)?, addr)?)
}

/// A client endpoint (bound to an ephemeral port on `bind`) speaking `alpn`.
pub fn client_endpoint(bind: SocketAddr, alpn: &[u8]) -> Result<quinn::Endpoint, QuicSetupError> {
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client_config(alpn)?);
    Ok(endpoint)
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Errors reading frames from a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent bytes that are not a valid frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The stream failed.
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
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

    #[tokio::test]
    async fn frames_cross_a_loopback_quic_stream() {
        let server = server_endpoint("127.0.0.1:0".parse().expect("addr"), &[ALPN_HUB]).expect("server");
        let addr = server.local_addr().expect("bound");
        let client = client_endpoint("127.0.0.1:0".parse().expect("addr"), ALPN_HUB).expect("client");
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
