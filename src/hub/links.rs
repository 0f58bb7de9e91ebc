//! Link connections at the hub: in-process ports and the QUIC listener.
//!
//! A Link reaches the hub in one of two ways:
//! - **in-process** (`serve`, tests): a [`LinkPort`] sent to `HubHandle::link_ports()`; its id
//!   is trusted (same process, no `Hello` needed — one is ignored if sent), and so are its frames;
//! - **QUIC** (a cluster): a connection with ALPN `linkcast-hub/1` opening one bidirectional
//!   stream whose first frame must be `Hello {link, secret, ws, quic, admin}` with
//!   `auth.cluster_secret`. The hub refuses every `Hello` while its own secret is empty (close
//!   401), a wrong secret (401), an announced address that does not parse (400, checked by the
//!   frame codec), and a Link id not in `[[links]]` (403) when that list is not empty — unless
//!   the hub has `tls.client_ca_file`: then the handshake itself required a client certificate
//!   chained to that CA (`mtls.rs`), and an unlisted id is accepted if it announces its `ws`
//!   address (400 otherwise), which `locate` then offers while it is connected
//!   ([`HelloError::close`]). Nothing reaches the room table before these checks.
//! - **One id, one Link.** A connection that passed them and names an id already connected
//!   *with the same announced addresses* replaces the older connection (the same Link
//!   reconnecting after a network cut, or restarted, before the hub noticed the old one died);
//!   with *other* addresses it is refused (409 "link id in use", counted in
//!   `linkcast_hub_link_id_conflicts_total`): two Links configured with one id must not take
//!   each other's rooms over. Its frames are re-validated by the hub task.
//!
//! **Before `Hello`** a connection holds two permits: one of [`MAX_PRE_AUTH`] overall and one
//! of [`MAX_PRE_AUTH_PER_IP`] for its source address; without both it is refused at once
//! (`Incoming::refuse`, counted in `linkcast_hub_link_preauth_refused_total`). Handshake,
//! stream and `Hello` share one deadline ([`HELLO_TIMEOUT`]). After `Hello` the pre-auth permits
//! are returned and the connection holds one of [`MAX_QUIC_LINKS`].
//!
//! Either way a connection becomes two tasks: a reader turning frames into
//! `LinkEvent::Frame`s for the hub task, and a writer emptying the Link's byte-bounded queue
//! (queue.rs) onto the port or stream. Link events travel on their own channel, apart from HTTP
//! requests, and each connection may have at most [`LINK_INFLIGHT_BYTES`] of frames waiting
//! there (a byte semaphore whose permits the hub task returns as it handles each frame): a
//! flooding Link waits on its own budget and slows only itself. A write that makes no progress
//! for `hub.link_write_timeout_ms` ends the connection; when the hub gives up on a Link, its
//! writer stops at once and drops what was queued (the close is not queued behind it). When the
//! reader ends, the hub task gets `LinkEvent::Down` and drops the Link's interest. The hub's QUIC
//! transport gives up on a silent Link after `hub.link_idle_timeout_ms` (8 s; keep-alives every
//! quarter of it), so a killed Link leaves `locate` answers quickly. Every Link's packets arrive
//! on one UDP socket with a large receive buffer (`udp_socket.rs`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::driver::{lock, LinkEvent};
use super::locate::Reach;
use crate::pre_auth::{PreAuthCaps, PreAuthSlot};
use super::queue::{link_queue, QueueReader};
use linkcast_core::frame::{ArchivedBody, Frame, FrameError, Kind, DEFAULT_MAX_FRAME_LEN};
use linkcast_core::placement::LinkId;
use crate::quic::{self, FrameReader, StreamError, ALPN_HUB};
use crate::tls::ServerCert;
use crate::uplink::LinkPort;

/// Most authenticated Link connections served at once over QUIC.
pub(crate) const MAX_QUIC_LINKS: usize = 1024;
/// Most QUIC connections between accept and an accepted `Hello`, from all sources.
pub(crate) const MAX_PRE_AUTH: usize = 256;
/// Most QUIC connections between accept and an accepted `Hello`, from one source address.
pub(crate) const MAX_PRE_AUTH_PER_IP: usize = 8;
/// Time a connecting Link has, in all, to finish the handshake, open its stream and send `Hello`.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Most frame bytes of one Link connection waiting for the hub task (at least one whole frame).
pub(crate) const LINK_INFLIGHT_BYTES: usize = 4 * DEFAULT_MAX_FRAME_LEN;
/// Most bytes the writer hands to one vectored QUIC write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// A Link's live QUIC connection: its generation and its announced `(ws, quic)` addresses.
pub(crate) type LiveLink = (u64, String, String);

/// What every Link connection needs from the hub.
#[derive(Clone)]
pub(crate) struct LinkContext {
    /// The hub task's Link inbox (each connection's frames bounded by its own byte budget).
    pub(crate) events: mpsc::UnboundedSender<LinkEvent>,
    pub(crate) generations: Arc<AtomicU64>,
    pub(crate) queue_bytes: usize,
    /// Bytes queued towards all Links (shared with every queue; read by the hub task).
    pub(crate) queued_total: Arc<AtomicUsize>,
    pub(crate) cluster_secret: Arc<str>,
    /// Link ids allowed over QUIC (`[[links]]`); `None` when the config lists none.
    pub(crate) allowed: Option<Arc<HashSet<u32>>>,
    /// The Link port requires client certificates (`tls.client_ca_file`): unlisted ids that
    /// announce their addresses are accepted.
    pub(crate) mutual_tls: bool,
    /// Each Link id's live QUIC connection: its generation and announced `(ws, quic)`.
    pub(crate) live: Arc<Mutex<HashMap<u32, LiveLink>>>,
    /// A write to a Link that makes no progress for this long ends the connection.
    pub(crate) write_timeout: Duration,
    pub(crate) metrics: LinkPortMetrics,
}

/// Counters of the Link port (label `hub`).
#[derive(Clone)]
pub(crate) struct LinkPortMetrics {
    /// QUIC connections refused before the handshake (pre-auth caps).
    pub(crate) preauth_refused: metrics::Counter,
    /// QUIC connections closed at `Hello` (timeout, bad secret, unlisted id, …).
    pub(crate) hello_refused: metrics::Counter,
    /// Links closed because a write made no progress in time.
    pub(crate) write_timeouts: metrics::Counter,
    /// Handshakes that failed (with mutual TLS: no or untrusted client certificate).
    pub(crate) tls_refused: metrics::Counter,
    /// Connections refused because their id was live with other addresses.
    pub(crate) id_conflicts: metrics::Counter,
}

impl LinkPortMetrics {
    pub(crate) fn new(hub: &str) -> Self {
        LinkPortMetrics {
            preauth_refused: metrics::counter!("linkcast_hub_link_preauth_refused_total", "hub" => hub.to_owned()),
            hello_refused: metrics::counter!("linkcast_hub_link_hello_refused_total", "hub" => hub.to_owned()),
            write_timeouts: metrics::counter!("linkcast_hub_link_write_timeouts_total", "hub" => hub.to_owned()),
            tls_refused: metrics::counter!("linkcast_hub_link_tls_refused_total", "hub" => hub.to_owned()),
            id_conflicts: metrics::counter!("linkcast_hub_link_id_conflicts_total", "hub" => hub.to_owned()),
        }
    }
}

impl LinkContext {
    /// Registers a new connection of `link` with the hub task; returns its generation, the
    /// writer's end of its queue and the connection's in-flight budget, or `None` if the hub is
    /// gone. `trusted`: an in-process port, whose frames are not re-validated.
    /// `announced`: the addresses `locate` offers for an unlisted Link.
    fn link_up(&self, link: LinkId, trusted: bool, announced: Option<Reach>) -> Option<(u64, QueueReader, Arc<Semaphore>)> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let (queue, reader) = link_queue(self.queue_bytes, self.queued_total.clone());
        self.events.send(LinkEvent::Up { link, generation, queue, trusted, announced }).ok()?;
        Some((generation, reader, Arc::new(Semaphore::new(LINK_INFLIGHT_BYTES))))
    }

    /// Hands `frame` to the hub task once this connection's in-flight budget has room for it.
    /// False when the hub is gone.
    async fn forward(&self, link: LinkId, generation: u64, budget: &Arc<Semaphore>, frame: Frame) -> bool {
        let bytes = frame.len().clamp(1, LINK_INFLIGHT_BYTES) as u32;
        let Ok(credit) = budget.clone().acquire_many_owned(bytes).await else { return false };
        self.events.send(LinkEvent::Frame { link, generation, frame, credit }).is_ok()
    }
}

/// Why a Link's QUIC connection was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    /// Handshake, stream or `Hello` did not arrive in time.
    #[error("timed out waiting for hello")]
    Timeout,
    /// The connection failed before `Hello`.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream failed or carried a bad frame.
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    /// The first frame was not `Hello`.
    #[error("first frame must be hello")]
    NotHello,
    /// This hub has no cluster secret: it accepts no Link over the network.
    #[error("cluster secret not configured")]
    NoSecret,
    /// The secret did not match `auth.cluster_secret`.
    #[error("bad cluster secret")]
    BadSecret,
    /// The Link id is not in `[[links]]`.
    #[error("link id {0} not listed")]
    NotListed(u32),
    /// An unlisted Link (accepted with mutual TLS) announced no `ws` address to offer.
    #[error("unlisted link {0} announced no ws address")]
    NoAddress(u32),
}

impl HelloError {
    /// Application close code and reason for the peer.
    pub(crate) fn close(&self) -> (u32, &'static str) {
        match self {
            HelloError::Timeout => (408, "timed out waiting for hello"),
            HelloError::Stream(StreamError::Frame(FrameError::BadAddress)) => (400, "invalid announced address"),
            HelloError::Connection(_) | HelloError::Stream(_) => (400, "bad hello stream"),
            HelloError::NotHello => (400, "first frame must be hello"),
            HelloError::NoSecret => (401, "cluster secret not configured"),
            HelloError::BadSecret => (401, "bad cluster secret"),
            HelloError::NotListed(_) => (403, "link id not listed"),
            HelloError::NoAddress(_) => (400, "unlisted link must announce its ws address"),
        }
    }
}

/// Attaches in-process Links sent on `ports` until shutdown.
pub(crate) async fn attach_ports(ctx: LinkContext, mut ports: mpsc::Receiver<LinkPort>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            port = ports.recv() => match port {
                Some(port) => {
                    let ctx = ctx.clone();
                    tokio::spawn(serve_port(ctx, port));
                }
                None => break,
            },
        }
    }
}

async fn serve_port(ctx: LinkContext, port: LinkPort) {
    let LinkPort { link, to_link, mut from_link } = port;
    let Some((generation, mut queue, budget)) = ctx.link_up(link, true, None) else { return };
    tokio::spawn(async move {
        loop {
            let outgoing = tokio::select! {
                biased;
                _ = &mut queue.closed => break,
                outgoing = queue.rx.recv() => outgoing,
            };
            let Some(frame) = outgoing else { break };
            let len = frame.len();
            let sent = tokio::select! {
                biased;
                _ = &mut queue.closed => false,
                sent = to_link.send(frame) => sent.is_ok(),
            };
            queue.released(len);
            if !sent {
                break;
            }
        }
        // Dropping `to_link` tells the Link this connection is over; it reconnects. Dropping
        // `queue` frees what was still queued.
    });
    while let Some(frame) = from_link.recv().await {
        if !ctx.forward(link, generation, &budget, frame).await {
            return;
        }
    }
    let _ = ctx.events.send(LinkEvent::Down { link, generation });
}

/// The hub's QUIC endpoint for Links on `addr`, declaring a Link dead after `idle_timeout`
/// without a packet (`hub.link_idle_timeout_ms`, [`quic::cluster_keep_alive`]); with
/// `client_ca`, every Link must present a client certificate chained to it (`mtls.rs`).
pub(crate) fn quic_endpoint(
    addr: SocketAddr,
    cert: Arc<ServerCert>,
    client_ca: Option<&std::path::Path>,
    idle_timeout: Duration,
) -> std::io::Result<quinn::Endpoint> {
    let mut config = match client_ca {
        None => quic::server_config(cert, &[ALPN_HUB], DEFAULT_MAX_FRAME_LEN),
        Some(ca) => crate::mtls::link_port_tls(cert, ca, &[ALPN_HUB])
            .map_err(quic::QuicSetupError::from)
            .and_then(|tls| quic::server_config_from_tls(tls, DEFAULT_MAX_FRAME_LEN)),
    }
    .map_err(std::io::Error::other)?;
    let mut transport = quic::server_transport(DEFAULT_MAX_FRAME_LEN);
    quic::cluster_keep_alive(&mut transport, idle_timeout);
    config.transport_config(Arc::new(transport));
    // Every Link's joins arrive on this one socket: a join storm that starves the hub for a
    // second must not overflow it (udp_socket.rs).
    quic::endpoint_on(crate::udp_socket::bind_busy(addr, "hub", "links")?, Some(config))
}

/// Accepts Link connections on `endpoint` until shutdown.
pub(crate) async fn accept_quic(ctx: LinkContext, endpoint: quinn::Endpoint, mut shutdown: watch::Receiver<bool>) {
    let links = Arc::new(Semaphore::new(MAX_QUIC_LINKS));
    let pre_auth = PreAuthCaps::new(MAX_PRE_AUTH, MAX_PRE_AUTH_PER_IP);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let ip = incoming.remote_address().ip();
                let Some(slot) = pre_auth.try_admit(ip) else {
                    ctx.metrics.preauth_refused.increment(1);
                    tracing::debug!(%ip, "refusing a link connection: too many before hello");
                    incoming.refuse();
                    continue;
                };
                let ctx = ctx.clone();
                let links = links.clone();
                tokio::spawn(serve_quic(ctx, incoming, slot, links));
            }
        }
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"hub shutting down");
}

async fn serve_quic(ctx: LinkContext, incoming: quinn::Incoming, slot: PreAuthSlot, links: Arc<Semaphore>) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => return tracing::debug!(%remote, "link handshake failed: {e}"),
    };
    // One deadline for the handshake, the stream and `Hello`.
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let connection = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            ctx.metrics.tls_refused.increment(1);
            if ctx.mutual_tls {
                return tracing::warn!(%remote, "link handshake failed (a client certificate of tls.client_ca_file is required): {e}");
            }
            return tracing::debug!(%remote, "link handshake failed: {e}");
        }
        Err(_) => {
            ctx.metrics.hello_refused.increment(1);
            return tracing::debug!(%remote, "link handshake timed out");
        }
    };
    let hello = match tokio::time::timeout_at(deadline, hello(&ctx, &connection)).await {
        Ok(result) => result,
        Err(_) => Err(HelloError::Timeout),
    };
    let (link, announced, send, reader) = match hello {
        Ok(ok) => ok,
        Err(e) => {
            let (code, reason) = e.close();
            ctx.metrics.hello_refused.increment(1);
            tracing::warn!(%remote, "refusing link connection: {e}");
            connection.close(quinn::VarInt::from_u32(code), reason.as_bytes());
            return;
        }
    };
    drop(slot);
    let Ok(_served) = links.try_acquire_owned() else {
        connection.close(quinn::VarInt::from_u32(503), b"too many links");
        return;
    };
    let (ws, quic) = (announced.ws.clone(), announced.quic.clone());
    let offered = announced.offered.then_some(Reach { ws: announced.ws, quic: announced.quic, admin: announced.admin });
    let up = {
        let mut live = lock(&ctx.live);
        match live.get(&link.0) {
            Some((_, live_ws, live_quic)) if (live_ws, live_quic) != (&ws, &quic) => None,
            _ => {
                let up = ctx.link_up(link, false, offered);
                if let Some((generation, ..)) = &up {
                    live.insert(link.0, (*generation, ws.clone(), quic.clone()));
                }
                Some(up)
            }
        }
    };
    let Some(up) = up else {
        ctx.metrics.id_conflicts.increment(1);
        tracing::warn!(%remote, %link, %ws, "refusing a link connection: its id is connected from another Link (other announced addresses)");
        connection.close(quinn::VarInt::from_u32(409), b"link id in use by another link");
        return;
    };
    let Some((generation, queue, budget)) = up else { return };
    tracing::debug!(%remote, %link, "link hello accepted");
    tokio::spawn(write_quic(send, queue, connection.clone(), ctx.clone()));
    read_quic(&ctx, link, generation, &budget, reader).await;
    {
        let mut live = lock(&ctx.live);
        if live.get(&link.0).is_some_and(|(g, ..)| *g == generation) {
            live.remove(&link.0);
        }
    }
    let _ = ctx.events.send(LinkEvent::Down { link, generation });
}

/// What a Link's `Hello` announced.
struct Announced {
    ws: String,
    quic: String,
    admin: Option<SocketAddr>,
    /// `locate` offers these addresses (an unlisted Link accepted with mutual TLS).
    offered: bool,
}

async fn hello(
    ctx: &LinkContext,
    connection: &quinn::Connection,
) -> Result<(LinkId, Announced, quinn::SendStream, FrameReader), HelloError> {
    if ctx.cluster_secret.is_empty() {
        return Err(HelloError::NoSecret);
    }
    let (send, recv) = connection.accept_bi().await?;
    let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    let Some(first) = reader.next().await? else { return Err(HelloError::NotHello) };
    match (first.kind(), first.body()) {
        (Kind::Hello, ArchivedBody::Hello { link, secret, ws, quic, admin }) => {
            if !linkcast_core::auth::constant_time_eq(secret.as_bytes(), ctx.cluster_secret.as_bytes()) {
                return Err(HelloError::BadSecret);
            }
            let link = link.to_native();
            let listed = ctx.allowed.as_ref().is_some_and(|allowed| allowed.contains(&link));
            // The codec checked the addresses (`is_valid_public_ws` …): they are offered as is.
            let announced = Announced {
                ws: ws.as_str().to_owned(),
                quic: quic.as_str().to_owned(),
                admin: admin.parse().ok(),
                offered: !listed && ctx.mutual_tls,
            };
            if !listed {
                if ctx.mutual_tls {
                    if announced.ws.is_empty() {
                        return Err(HelloError::NoAddress(link));
                    }
                } else if ctx.allowed.is_some() {
                    return Err(HelloError::NotListed(link));
                }
            }
            Ok((LinkId(link), announced, send, reader))
        }
        _ => Err(HelloError::NotHello),
    }
}

async fn read_quic(ctx: &LinkContext, link: LinkId, generation: u64, budget: &Arc<Semaphore>, mut reader: FrameReader) {
    loop {
        match reader.next().await {
            Ok(Some(frame)) => {
                if !ctx.forward(link, generation, budget, frame).await {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::info!(%link, "link stream ended: {e}");
                return;
            }
        }
    }
}

/// Empties the Link's queue onto its stream. Stops at once when the hub closes the queue (what
/// is queued is dropped, not written first) or when one write makes no progress for the write
/// timeout.
async fn write_quic(mut send: quinn::SendStream, mut queue: QueueReader, connection: quinn::Connection, ctx: LinkContext) {
    let mut chunks = Vec::new();
    let reason: &'static str = 'outer: loop {
        let first = tokio::select! {
            biased;
            reason = &mut queue.closed => break 'outer reason.unwrap_or("hub closed the link"),
            first = queue.rx.recv() => first,
        };
        let Some(first) = first else { break 'outer "hub closed the link" };
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            bytes += frame.len();
            chunks.push(frame.into_bytes());
            if bytes < WRITE_BATCH_BYTES {
                next = queue.rx.try_recv().ok();
            }
        }
        let written = tokio::select! {
            biased;
            reason = &mut queue.closed => {
                queue.released(bytes);
                break 'outer reason.unwrap_or("hub closed the link");
            }
            written = tokio::time::timeout(ctx.write_timeout, quic::write_frames(&mut send, &mut chunks)) => written,
        };
        queue.released(bytes);
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break 'outer "link stream failed",
            Err(_) => {
                ctx.metrics.write_timeouts.increment(1);
                tracing::warn!("link write made no progress in time: closing the link (it will reconnect)");
                break 'outer "link write timed out";
            }
        }
    };
    // Frees the queue now, before the connection's close is even sent.
    drop(queue);
    drop(chunks);
    connection.close(quinn::VarInt::from_u32(0), reason.as_bytes());
}
