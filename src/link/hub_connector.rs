//! [`QuicHubConnector`]: how a standalone Link reaches its hubs over QUIC (ALPN `linkcast-hub/1`).
//!
//! `connect(hub)` dials `config.hubs[hub].quic`, checking the hub's certificate by `[tls]`
//! (`ca_file` or `pin_sha256`; unverified only for a loopback hub), opens one bidirectional stream, sends
//! `Hello {link, secret: auth.cluster_secret}` first, and returns a [`HubPort`] whose channels
//! are pumped to and from the stream by two tasks (frames length-prefixed by their own header,
//! several per write). When either direction fails, both channels close; the Link notices and
//! calls `connect` again (reconnect policy lives in the coordinator, not here). A hub that
//! refuses the Link (401 no or wrong cluster secret, 403 id not in `[[links]]`) is logged as an
//! error naming what to fix; the Link keeps retrying with backoff.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use linkcast_core::frame::{Body, FrameBuilder, DEFAULT_MAX_FRAME_LEN};
use linkcast_core::placement::LinkId;
use crate::quic::{self, FrameReader, ALPN_HUB};
use crate::tls::{self, Trust};
use linkcast_core::hub_directory::HubId;
use crate::uplink::{pair, BoxFuture, HubConnector, HubPort, PORT_CAPACITY};

/// Connects a Link to hubs over QUIC (see the module docs).
pub struct QuicHubConnector {
    link: LinkId,
    config: Arc<Config>,
    /// One client endpoint per address family, made on first use (inside a runtime).
    endpoints: Mutex<Vec<quinn::Endpoint>>,
}

impl std::fmt::Debug for QuicHubConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicHubConnector").field("link", &self.link).finish()
    }
}

impl QuicHubConnector {
    /// A connector for Link `link` of the cluster described by `config`.
    pub fn new(link: LinkId, config: Arc<Config>) -> Self {
        QuicHubConnector { link, config, endpoints: Mutex::new(Vec::new()) }
    }

    fn endpoint(&self, target: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let mut endpoints = self.endpoints.lock().map_err(|_| std::io::Error::other("endpoint lock poisoned"))?;
        let want_v6 = target.is_ipv6();
        if let Some(endpoint) = endpoints.iter().find(|e| e.local_addr().is_ok_and(|a| a.is_ipv6() == want_v6)) {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if want_v6 { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .map_err(std::io::Error::other)?;
        let trust = Trust::from_config(&self.config.tls).map_err(std::io::Error::other)?;
        let endpoint = quic::client_endpoint(bind, &trust, ALPN_HUB).map_err(std::io::Error::other)?;
        endpoints.push(endpoint.clone());
        Ok(endpoint)
    }

    async fn dial(&self, hub: HubId) -> std::io::Result<HubPort> {
        let entry = self
            .config
            .hub_entry(hub.0)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("hub {} not in config", hub.0)))?;
        // A hub reached unverified is refused unless it is on loopback (tls.rs).
        Trust::from_config(&self.config.tls)
            .and_then(|trust| trust.check_target(entry.quic))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        let endpoint = self.endpoint(entry.quic)?;
        let name = tls::server_name(entry.tls_name.as_deref(), entry.quic);
        let conn = endpoint
            .connect(entry.quic, &name.to_str())
            .map_err(std::io::Error::other)?
            .await
            .map_err(std::io::Error::other)?;
        let (mut send, recv) = conn.open_bi().await.map_err(std::io::Error::other)?;
        let hello = FrameBuilder::new("")
            .build(&Body::Hello { link: self.link.0, secret: self.config.auth.cluster_secret.clone() });
        send.write_all(hello.as_bytes()).await.map_err(std::io::Error::other)?;

        let (hub_port, mut link_port) = pair(self.link, hub, PORT_CAPACITY);
        let writer_conn = conn.clone();
        tokio::spawn(async move {
            let mut chunks = Vec::new();
            while let Some(frame) = link_port.from_link.recv().await {
                chunks.push(frame.into_bytes());
                while chunks.len() < 64 {
                    match link_port.from_link.try_recv() {
                        Ok(frame) => chunks.push(frame.into_bytes()),
                        Err(_) => break,
                    }
                }
                if quic::write_frames(&mut send, &mut chunks).await.is_err() {
                    break;
                }
            }
            writer_conn.close(0u32.into(), b"link closed");
        });
        let to_link = link_port.to_link;
        tokio::spawn(async move {
            let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
            loop {
                match reader.next().await {
                    Ok(Some(frame)) => {
                        if to_link.send(frame).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "hub stream failed");
                        break;
                    }
                }
            }
            if let Some(quinn::ConnectionError::ApplicationClosed(close)) = conn.close_reason() {
                let code = u64::from(close.error_code);
                if matches!(code, 401 | 403) {
                    // The hub will refuse every retry alike: say what to fix.
                    tracing::error!(
                        hub = hub.0,
                        code,
                        reason = %String::from_utf8_lossy(&close.reason),
                        "hub refused this Link: check auth.cluster_secret and that [[links]] lists this Link's id"
                    );
                }
            }
            conn.close(0u32.into(), b"hub stream ended");
        });
        Ok(hub_port)
    }
}

impl HubConnector for QuicHubConnector {
    fn connect(&self, hub: HubId) -> BoxFuture<'_, std::io::Result<HubPort>> {
        Box::pin(self.dial(hub))
    }
}
