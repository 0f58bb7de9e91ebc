//! [`QuicHubConnector`]: how a standalone Link reaches its hubs over QUIC (ALPN `linkcast-hub/1`).
//!
//! `connect(hub)` dials `config.hubs[hub].quic`, checking the hub's certificate by `[tls]`
//! (`ca_file` or `pin_sha256`; unverified only for a loopback hub) and presenting the client
//! certificate of `tls.client_cert_file` if configured (mutual TLS, `mtls.rs`), opens one
//! bidirectional stream, sends `Hello {link, secret: auth.cluster_secret, ws, quic, admin}`
//! first (the addresses of [`Announce`]), and returns a [`HubPort`] whose channels
//! are pumped to and from the stream by two tasks (frames length-prefixed by their own header,
//! several per write). When either direction fails, both channels close; the Link notices and
//! calls `connect` again (reconnect policy lives in the coordinator, not here). A hub that
//! refuses the Link (401 no or wrong cluster secret, 403 id not in `[[links]]`) is logged as an
//! error naming what to fix; the Link keeps retrying with backoff.
//!
//! Draining: [`QuicHubConnector::start_draining`] makes every connection's writer send one
//! `Draining` frame (now, or right after `Hello` on a connection made later), so every hub stops
//! offering this Link in `locate` while its members keep receiving.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::Config;
use linkcast_core::frame::{Body, FrameBuilder, DEFAULT_MAX_FRAME_LEN};
use linkcast_core::placement::LinkId;
use crate::quic::{self, FrameReader};
use crate::tls::{self, Trust};
use linkcast_core::hub_directory::HubId;
use crate::uplink::{pair, BoxFuture, HubConnector, HubPort, PORT_CAPACITY};

/// The addresses a Link announces in its `Hello` (empty = not announced).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    /// WebSocket URL clients should use (`ws://` or `wss://`).
    pub ws: String,
    /// QUIC `host:port` for native clients.
    pub quic: String,
    /// Admin listener `ip:port`.
    pub admin: String,
}

/// Connects a Link to hubs over QUIC (see the module docs).
pub struct QuicHubConnector {
    link: LinkId,
    config: Arc<Config>,
    /// One client endpoint per address family, made on first use (inside a runtime).
    endpoints: Mutex<Vec<quinn::Endpoint>>,
    announce: Announce,
    /// `Some(drain_ms)` once the Link drains.
    draining: watch::Sender<Option<u32>>,
}

impl std::fmt::Debug for QuicHubConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicHubConnector").field("link", &self.link).finish()
    }
}

impl QuicHubConnector {
    /// A connector for Link `link` of the cluster described by `config`.
    pub fn new(link: LinkId, config: Arc<Config>) -> Self {
        QuicHubConnector { link, config, endpoints: Mutex::new(Vec::new()), announce: Announce::default(), draining: watch::Sender::new(None) }
    }

    /// Announces `announce` in every `Hello`.
    pub fn announcing(mut self, announce: Announce) -> Self {
        self.announce = announce;
        self
    }

    /// Tells every hub, now and on later connections, that this Link drains and closes its
    /// clients in `drain_ms`.
    pub fn start_draining(&self, drain_ms: u32) {
        self.draining.send_replace(Some(drain_ms));
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
        let identity = crate::mtls::ClientIdentity::from_config(&self.config.tls).map_err(std::io::Error::other)?;
        // Every broadcast of every hub arrives on this one socket (udp_socket.rs).
        let socket = crate::udp_socket::bind_busy(bind, "link", "hubs")?;
        let idle_timeout = std::time::Duration::from_millis(self.config.hub.link_idle_timeout_ms);
        let endpoint = quic::hub_client_endpoint(socket, &trust, identity.as_ref(), idle_timeout).map_err(std::io::Error::other)?;
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
        let hello = FrameBuilder::new("").build(&Body::Hello {
            link: self.link.0,
            secret: self.config.auth.cluster_secret.clone(),
            ws: self.announce.ws.clone(),
            quic: self.announce.quic.clone(),
            admin: self.announce.admin.clone(),
        });
        send.write_all(hello.as_bytes()).await.map_err(std::io::Error::other)?;

        let (hub_port, mut link_port) = pair(self.link, hub, PORT_CAPACITY);
        let writer_conn = conn.clone();
        let mut draining = self.draining.subscribe();
        tokio::spawn(async move {
            let mut chunks = Vec::new();
            let mut told = false;
            loop {
                if !told {
                    if let Some(drain_ms) = *draining.borrow_and_update() {
                        told = true;
                        chunks.push(FrameBuilder::new("").build(&Body::Draining { drain_ms }).into_bytes());
                    }
                }
                if chunks.is_empty() {
                    tokio::select! {
                        frame = link_port.from_link.recv() => match frame {
                            Some(frame) => chunks.push(frame.into_bytes()),
                            None => break,
                        },
                        changed = draining.changed(), if !told => {
                            // The connector is gone: nothing more to tell.
                            told = changed.is_err();
                            continue;
                        }
                    }
                }
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
                if matches!(code, 400 | 401 | 403 | 409) {
                    // The hub will refuse every retry alike: say what to fix.
                    tracing::error!(
                        hub = hub.0,
                        code,
                        reason = %String::from_utf8_lossy(&close.reason),
                        "hub refused this Link: check auth.cluster_secret, that [[links]] lists this Link's id or the hub has tls.client_ca_file, the announced addresses, and that no other Link runs with this id"
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
