//! The socket side of a Link's WebSocket port: the accept loop of one shard, the HTTP/1.1
//! exchange before the upgrade, and the hand-over of an upgraded connection to `ws.rs`.
//!
//! Bounds before authentication: an accepted socket takes a handshake slot (`pre_auth.rs`: in
//! all and, under pressure, per source address) and a connection slot (`Admission`) before anything is read —
//! a full Link answers 503 at once — and has [`HANDSHAKE_TIMEOUT`] from its connect to finish
//! TLS (on a `wss://` port) and send its request head.
//!
//! A request head is read with a size ([`MAX_HEAD`]) limit and parsed by the core
//! (`linkcast_core::http_upgrade`, which also builds every answer). Then, in this order:
//! `GET /healthz` and `GET /metrics` are answered directly on an unsecured node (a secured one
//! serves them on its admin listener only); anything but `/ws` is 404; a missing upgrade or
//! WebSocket version other than 13 is 400; a refused `Origin` is 403, a bad/expired token 401 —
//! each with the JSON body `{"error","reason"}` of docs/protocol.md; a banned user or a revoked
//! token is 403 `{"error":"banned","until":S}` / `{"error":"token revoked"}` (`moderation.rs`). A URL without a token
//! (outside dev mode) is upgraded **pending**: its first message must carry the token
//! (`connection::Pending`, run by `ws.rs`). Then the Link answers `101 Switching Protocols`
//! itself and drops every byte of the HTTP exchange; only what the client sent behind its head
//! goes on to the connection.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use linkcast_core::http_upgrade::{self, HeadScanner, RequestHead, MAX_HEAD};

use super::admission::Admitted;
use super::connection::{ConnContext, Pending};
use super::socket::ClientSocket;
use super::tls_session::TlsStream;
use super::ws;
use crate::config::KeepAlive;
use crate::pre_auth::{PreAuthCaps, PreAuthSlot};

/// Time a client has, from its TCP connect, to finish TLS (wss) and send its request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time given to an HTTP answer to leave before the connection is dropped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the WebSocket port serves besides `/ws`, and how.
#[derive(Clone, Debug)]
pub(crate) struct PortSetup {
    /// `wss://`: the TLS config of the Link's certificate; `None` = plain `ws://`.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Handshakes in progress on the Link (shared by the shards; per-address share under
    /// pressure).
    pub(crate) handshakes: PreAuthCaps,
    /// Serve `/metrics` and `/healthz` here (an unsecured node without an admin listener).
    pub(crate) admin_routes: bool,
}

/// Accepts TCP connections on this shard's listening socket until aborted.
pub(crate) async fn accept_loop(listener: tokio::net::TcpListener, ctx: Rc<ConnContext>, port: PortSetup) {
    let tls = port.tls.clone();
    let port = Rc::new(port);
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // Counted before anything is read: a socket that never finishes its upgrade
                // holds a handshake slot and a connection slot, both bounded.
                let handshake = match port.handshakes.admit(peer.ip()) {
                    Ok(handshake) => handshake,
                    Err(refused) => {
                        metrics::counter!("linkcast_link_upgrades_refused_total", "reason" => refused.label()).increment(1);
                        drop(tcp);
                        continue;
                    }
                };
                let Some(admitted) = ctx.admit() else {
                    metrics::counter!("linkcast_link_upgrades_refused_total", "reason" => "connections").increment(1);
                    if tls.is_none() {
                        tokio::task::spawn_local(async move {
                            let mut tcp = tcp;
                            refuse(&mut tcp, 503, "unavailable", "too many connections").await;
                            drop(handshake);
                        });
                    }
                    continue;
                };
                tokio::task::spawn_local(handle_tcp(tcp, handshake, admitted, tls.clone(), port.clone(), ctx.clone()));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handle_tcp(
    tcp: TcpStream,
    handshake: PreAuthSlot,
    admitted: Admitted,
    tls: Option<Arc<rustls::ServerConfig>>,
    port: Rc<PortSetup>,
    ctx: Rc<ConnContext>,
) {
    let link = &ctx.link;
    let _ = tcp.set_nodelay(true);
    if link.socket_send_buffer > 0 {
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(link.socket_send_buffer);
    }
    if link.keepalive == KeepAlive::Tcp {
        if let Err(error) = kernel_keepalive(&tcp, link.ping_interval_secs, link.idle_timeout_secs) {
            // The connection could not be watched the way the config says: refuse it rather
            // than keep a socket nothing would ever find dead.
            tracing::warn!(%error, "cannot set TCP keep-alive on a client socket; closing it");
            return;
        }
    }
    let upgraded = handshake_tcp(tcp, tls, &port, &ctx).await;
    drop(handshake);
    // The connection's life is a slot in the shard's WebSocket driver (`ws::run` puts it
    // there): this task, sized by the handshake's state (a TLS stream, timers, the request
    // head), ends here.
    if let Some((socket, early, claims)) = upgraded {
        ws::run(socket, early, claims, admitted, ctx);
    }
}

/// `link.keepalive = "tcp"`: the kernel probes a socket silent for `ping_secs` (every
/// `(idle_secs - ping_secs) / 4` s after that, 4 probes) and `TCP_USER_TIMEOUT` ends it once
/// anything it sent — data or probe — went unacknowledged for `idle_secs`: a dead client ends
/// its socket with an error within about `idle_secs`, and no process wakes up meanwhile.
fn kernel_keepalive(tcp: &TcpStream, ping_secs: u64, idle_secs: u64) -> std::io::Result<()> {
    let ping = ping_secs.max(1);
    let probes = 4;
    let between = (idle_secs.saturating_sub(ping) / u64::from(probes)).max(1);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(ping))
        .with_interval(Duration::from_secs(between))
        .with_retries(probes);
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(&keepalive)?;
    // Linux's (elsewhere the probes alone find a dead peer; data waits on the kernel's retries).
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(Duration::from_secs(idle_secs.max(1))))?;
    Ok(())
}

/// The HTTP part of a WebSocket connection (and its TLS handshake on a `wss://` port): the
/// upgraded socket, the bytes the client sent behind its request head and who it is; `None`
/// when the exchange was answered with an error or failed. Everything of the exchange is
/// dropped before the connection runs (an idle connection keeps no request bytes).
async fn handshake_tcp(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    port: &PortSetup,
    ctx: &ConnContext,
) -> Option<(ClientSocket, Vec<u8>, Pending)> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    match tls {
        None => {
            let mut tcp = tcp;
            let (early, claims) = upgrade(&mut tcp, deadline, port, ctx).await?;
            Some((ClientSocket::plain(tcp).ok()?, early, claims))
        }
        Some(config) => {
            let Ok(Ok(mut stream)) = tokio::time::timeout_at(deadline, TlsStream::handshake(tcp, config)).await else {
                metrics::counter!("linkcast_link_upgrades_refused_total", "reason" => "tls handshake").increment(1);
                return None;
            };
            let (early, claims) = upgrade(&mut stream, deadline, port, ctx).await?;
            let (tcp, session) = stream.into_parts();
            Some((ClientSocket::tls(tcp, session).ok()?, early, claims))
        }
    }
}

/// Reads up to the end of the request head; `None` if the peer closed or sent too much.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = HeadScanner::default();
    loop {
        if scanner.scan(&buf).is_some() {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes a complete HTTP answer and closes the sending side.
async fn answer<S: AsyncWrite + Unpin>(tcp: &mut S, response: String) {
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

async fn refuse<S: AsyncWrite + Unpin>(tcp: &mut S, status: u16, error: &str, reason: &str) {
    answer(tcp, http_upgrade::error_response(status, error, reason)).await;
}

/// Checks the request head and answers it: an HTTP error (`None`), or `101 Switching
/// Protocols` and the bytes the client sent behind its head with who it is (or `Pending::Auth`).
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    deadline: tokio::time::Instant,
    port: &PortSetup,
    ctx: &ConnContext,
) -> Option<(Vec<u8>, Pending)> {
    let link = &ctx.link;
    let head = match tokio::time::timeout_at(deadline, read_head(tcp)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            refuse(tcp, 431, "bad_request", "request head too large or incomplete").await;
            return None;
        }
        _ => {
            metrics::counter!("linkcast_link_upgrades_refused_total", "reason" => "head timeout").increment(1);
            return None;
        }
    };
    let Some(request) = RequestHead::parse(&head) else {
        refuse(tcp, 400, "bad_request", "malformed HTTP request").await;
        return None;
    };
    if request.method != "GET" {
        refuse(tcp, 400, "bad_request", "only GET is served").await;
        return None;
    }
    match request.path.as_str() {
        "/healthz" if port.admin_routes => {
            answer(tcp, http_upgrade::response(200, "application/json", r#"{"status":"ok"}"#)).await;
            return None;
        }
        "/metrics" if port.admin_routes => {
            let text = crate::telemetry::render();
            answer(tcp, http_upgrade::response(200, "text/plain; version=0.0.4", &text)).await;
            return None;
        }
        "/ws" => {}
        _ => {
            refuse(tcp, 404, "not_found", "no such route").await;
            return None;
        }
    }
    let key = match request.websocket_key() {
        Ok(key) => key,
        Err(reason) => {
            refuse(tcp, 400, "bad_request", reason).await;
            return None;
        }
    };
    if !link.allowed_origins.is_empty() {
        let allowed = request.origin.as_deref().is_some_and(|o| link.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            metrics::counter!("linkcast_link_closes_total", "reason" => "origin not allowed").increment(1);
            refuse(tcp, 403, "forbidden", "origin not allowed").await;
            return None;
        }
    }
    let claims = match who_is(ctx, request.query_param("token").as_deref()) {
        Ok(who) => who,
        Err(error) => {
            refuse(tcp, 401, "unauthorized", error.reason()).await;
            return None;
        }
    };
    if let Pending::Ready(claims) = &claims {
        // A banned user, or a token issued before the user's revocation (`moderation.rs`).
        if let Err(refused) = ctx.admission.check_moderation(&claims.sub, claims.iat) {
            answer(tcp, http_upgrade::response(403, "application/json", &refused.body())).await;
            return None;
        }
    }
    let response = http_upgrade::switching_protocols(key);
    match tokio::time::timeout_at(deadline, async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.flush().await
    })
    .await
    {
        Ok(Ok(())) => {}
        _ => return None,
    }
    let early = head[request.len..].to_vec();
    Some((early, claims))
}

/// The client's token from its URL, checked; without one (and not in dev mode) the connection
/// is admitted [`Pending::Auth`]: its first message must carry the token (URLs end up in logs).
fn who_is(ctx: &ConnContext, token: Option<&str>) -> Result<Pending, linkcast_core::auth::AuthError> {
    match token.filter(|t| !t.is_empty()) {
        None if !ctx.admission.is_dev() => Ok(Pending::Auth),
        token => ctx.admission.verify(token).map(Pending::Ready),
    }
}
