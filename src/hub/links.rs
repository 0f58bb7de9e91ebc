//! Link connections at the hub: in-process ports and the QUIC listener.
//!
//! A Link reaches the hub in one of two ways:
//! - **in-process** (`serve`, tests): a [`LinkPort`] sent to `HubHandle::link_ports()`; its id
//!   is trusted (same process, no `Hello` needed — one is ignored if sent);
//! - **QUIC** (a cluster): a connection with ALPN `linkcast-hub/1` opening one bidirectional
//!   stream whose first frame must be `Hello {link, secret}` with `auth.cluster_secret`. A wrong
//!   first frame or secret closes the connection with an application code and reason
//!   ([`HelloError::close`]); nothing reaches the room table before that check.
//!
//! Either way a connection becomes two tasks: a reader turning frames into
//! `HubInput::LinkFrame`s for the hub task (awaiting when the event channel is full, which slows
//! only this Link), and a writer emptying the Link's byte-bounded queue (queue.rs) onto the
//! port or stream. When the reader ends, the hub task gets `HubInput::LinkDown` and drops the
//! Link's interest. The hub's QUIC transport sends keep-alives every 2 s and gives up on a
//! silent Link after 8 s, so a killed Link leaves `locate` answers quickly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::driver::HubInput;
use super::queue::{link_queue, Outgoing, QueueReader};
use linkcast_core::frame::{ArchivedBody, Kind, DEFAULT_MAX_FRAME_LEN};
use linkcast_core::placement::LinkId;
use crate::quic::{self, FrameReader, StreamError, ALPN_HUB};
use crate::tls::ServerCert;
use crate::uplink::LinkPort;

/// Most Link connections being set up or served at once over QUIC.
const MAX_QUIC_LINKS: usize = 1024;
/// Time a connecting Link has to finish the handshake and send `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes the writer hands to one vectored QUIC write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// What every Link connection needs from the hub.
#[derive(Clone)]
pub(crate) struct LinkContext {
    pub(crate) events: mpsc::Sender<HubInput>,
    pub(crate) generations: Arc<AtomicU64>,
    pub(crate) queue_bytes: usize,
    pub(crate) cluster_secret: Arc<str>,
}

impl LinkContext {
    /// Registers a new connection of `link` with the hub task; returns its generation and
    /// the writer's end of its queue, or `None` if the hub is gone.
    async fn link_up(&self, link: LinkId) -> Option<(u64, QueueReader)> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let (queue, reader) = link_queue(self.queue_bytes);
        self.events.send(HubInput::LinkUp { link, generation, queue }).await.ok()?;
        Some((generation, reader))
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
    /// The secret did not match `auth.cluster_secret`.
    #[error("bad cluster secret")]
    BadSecret,
}

impl HelloError {
    /// Application close code and reason for the peer.
    pub(crate) fn close(&self) -> (u32, &'static str) {
        match self {
            HelloError::Timeout => (408, "timed out waiting for hello"),
            HelloError::Connection(_) | HelloError::Stream(_) => (400, "bad hello stream"),
            HelloError::NotHello => (400, "first frame must be hello"),
            HelloError::BadSecret => (401, "bad cluster secret"),
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
    let Some((generation, mut queue)) = ctx.link_up(link).await else { return };
    tokio::spawn(async move {
        while let Some(outgoing) = queue.rx.recv().await {
            let Outgoing::Frame(frame) = outgoing else { break };
            let len = frame.len();
            if to_link.send(frame).await.is_err() {
                break;
            }
            queue.written(len);
        }
        // Dropping `to_link` tells the Link this connection is over; it reconnects.
    });
    while let Some(frame) = from_link.recv().await {
        if ctx.events.send(HubInput::LinkFrame { link, generation, frame }).await.is_err() {
            return;
        }
    }
    let _ = ctx.events.send(HubInput::LinkDown { link, generation }).await;
}

/// The hub's QUIC endpoint for Links on `addr`, with fast dead-Link detection.
pub(crate) fn quic_endpoint(addr: SocketAddr, cert: Arc<ServerCert>) -> std::io::Result<quinn::Endpoint> {
    let mut config = quic::server_config(cert, &[ALPN_HUB], DEFAULT_MAX_FRAME_LEN).map_err(std::io::Error::other)?;
    let mut transport = quic::server_transport(DEFAULT_MAX_FRAME_LEN);
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(8_000).into()));
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr)
}

/// Accepts Link connections on `endpoint` until shutdown.
pub(crate) async fn accept_quic(ctx: LinkContext, endpoint: quinn::Endpoint, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_QUIC_LINKS));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    serve_quic(ctx, incoming).await;
                    drop(permit);
                });
            }
        }
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"hub shutting down");
}

async fn serve_quic(ctx: LinkContext, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return tracing::debug!(%remote, "link handshake failed: {e}"),
        Err(_) => return tracing::debug!(%remote, "link handshake timed out"),
    };
    let (link, send, reader) = match hello(&ctx, &connection).await {
        Ok(ok) => ok,
        Err(e) => {
            let (code, reason) = e.close();
            tracing::warn!(%remote, "refusing link connection: {e}");
            connection.close(quinn::VarInt::from_u32(code), reason.as_bytes());
            return;
        }
    };
    let Some((generation, queue)) = ctx.link_up(link).await else { return };
    tracing::debug!(%remote, %link, "link hello accepted");
    tokio::spawn(write_quic(send, queue, connection.clone()));
    read_quic(&ctx, link, generation, reader).await;
    let _ = ctx.events.send(HubInput::LinkDown { link, generation }).await;
}

async fn hello(
    ctx: &LinkContext,
    connection: &quinn::Connection,
) -> Result<(LinkId, quinn::SendStream, FrameReader), HelloError> {
    let (send, recv) = tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await.map_err(|_| HelloError::Timeout)??;
    let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    let first = tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await.map_err(|_| HelloError::Timeout)??;
    let Some(first) = first else { return Err(HelloError::NotHello) };
    match (first.kind(), first.body()) {
        (Kind::Hello, ArchivedBody::Hello { link, secret }) => {
            if !linkcast_core::auth::constant_time_eq(secret.as_bytes(), ctx.cluster_secret.as_bytes()) {
                return Err(HelloError::BadSecret);
            }
            Ok((LinkId(link.to_native()), send, reader))
        }
        _ => Err(HelloError::NotHello),
    }
}

async fn read_quic(ctx: &LinkContext, link: LinkId, generation: u64, mut reader: FrameReader) {
    loop {
        match reader.next().await {
            Ok(Some(frame)) => {
                if ctx.events.send(HubInput::LinkFrame { link, generation, frame }).await.is_err() {
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

async fn write_quic(mut send: quinn::SendStream, mut queue: QueueReader, connection: quinn::Connection) {
    let mut chunks = Vec::new();
    let mut close = None;
    'outer: while let Some(first) = queue.rx.recv().await {
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(outgoing) = next.take() {
            match outgoing {
                Outgoing::Frame(frame) => {
                    bytes += frame.len();
                    chunks.push(frame.into_bytes());
                }
                Outgoing::Close(reason) => {
                    close = Some(reason);
                    break;
                }
            }
            if bytes < WRITE_BATCH_BYTES {
                next = queue.rx.try_recv().ok();
            }
        }
        if quic::write_frames(&mut send, &mut chunks).await.is_err() {
            break 'outer;
        }
        queue.written(bytes);
        if close.is_some() {
            break;
        }
    }
    let reason = close.unwrap_or("hub closed the link");
    connection.close(quinn::VarInt::from_u32(0), reason.as_bytes());
}
