//! The socket side of a Link's WebSocket port: the accept loop of one shard, the HTTP/1.1
//! exchange before the upgrade, and the hand-over of an upgraded connection to `ws.rs`.
//!
//! A request head is read with a size ([`MAX_HEAD`]) and time limit and parsed by the core
//! (`linkcast_core::http_upgrade`, which also builds every answer). Then, in this order:
//! `GET /healthz` and `GET /metrics` are answered directly; anything but `/ws` is 404; a
//! missing upgrade or WebSocket version other than 13 is 400; a refused `Origin` is 403, a full
//! Link 503, a bad/expired token 401 — each with the JSON body `{"error","reason"}` of
//! docs/protocol.md. A URL without a token (outside dev mode) is upgraded **pending**: its first
//! message must carry the token (`connection::Pending`, run by `ws.rs`). Then the Link answers
//! `101 Switching Protocols` itself and drops every byte of the HTTP exchange; only what the
//! client sent behind its head goes on to the connection.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use linkcast_core::http_upgrade::{self, HeadScanner, RequestHead, MAX_HEAD};

use super::admission::Admitted;
use super::connection::{ConnContext, Pending};
use super::ws;

/// Time a client has to send its request head (and to take the `101` answer).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time given to an HTTP answer to leave before the connection is dropped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts TCP connections on this shard's listening socket until aborted.
pub(crate) async fn accept_loop(listener: tokio::net::TcpListener, ctx: Rc<ConnContext>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::task::spawn_local(handle_tcp(tcp, ctx.clone()));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handle_tcp(tcp: TcpStream, ctx: Rc<ConnContext>) {
    // Everything of the HTTP exchange is dropped before the connection runs (an idle
    // connection keeps no request bytes).
    let Some((tcp, early, who, admitted)) = upgrade(tcp, &ctx).await else { return };
    ws::run(tcp, early, who, admitted, ctx).await;
}

/// Reads up to the end of the request head; `None` if the peer closed or sent too much.
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = HeadScanner::default();
    loop {
        if scanner.scan(&buf).is_some() {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes a complete HTTP answer and closes the sending side.
async fn answer(tcp: &mut TcpStream, response: String) {
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

async fn refuse(tcp: &mut TcpStream, status: u16, error: &str, reason: &str) {
    answer(tcp, http_upgrade::error_response(status, error, reason)).await;
}

/// Checks the request head and answers it: an HTTP error, or `101 Switching Protocols` and the
/// socket, the bytes the client sent behind its head, its claims and its admission.
async fn upgrade(mut tcp: TcpStream, ctx: &ConnContext) -> Option<(TcpStream, Vec<u8>, Pending, Admitted)> {
    let link = &ctx.link;
    let _ = tcp.set_nodelay(true);
    if link.socket_send_buffer > 0 {
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(link.socket_send_buffer);
    }
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            refuse(&mut tcp, 431, "bad_request", "request head too large or incomplete").await;
            return None;
        }
        _ => return None,
    };
    let Some(request) = RequestHead::parse(&head) else {
        refuse(&mut tcp, 400, "bad_request", "malformed HTTP request").await;
        return None;
    };
    if request.method != "GET" {
        refuse(&mut tcp, 400, "bad_request", "only GET is served").await;
        return None;
    }
    match request.path.as_str() {
        "/healthz" => {
            answer(&mut tcp, http_upgrade::response(200, "application/json", r#"{"status":"ok"}"#)).await;
            return None;
        }
        "/metrics" => {
            let text = crate::telemetry::prometheus().render();
            answer(&mut tcp, http_upgrade::response(200, "text/plain; version=0.0.4", &text)).await;
            return None;
        }
        "/ws" => {}
        _ => {
            refuse(&mut tcp, 404, "not_found", "no such route").await;
            return None;
        }
    }
    let key = match request.websocket_key() {
        Ok(key) => key,
        Err(reason) => {
            refuse(&mut tcp, 400, "bad_request", reason).await;
            return None;
        }
    };
    if !link.allowed_origins.is_empty() {
        let allowed = request.origin.as_deref().is_some_and(|o| link.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            metrics::counter!("linkcast_link_closes_total", "reason" => "origin not allowed").increment(1);
            refuse(&mut tcp, 403, "forbidden", "origin not allowed").await;
            return None;
        }
    }
    let Some(admitted) = ctx.admit() else {
        refuse(&mut tcp, 503, "unavailable", "too many connections").await;
        return None;
    };
    let claims = match who_is(ctx, request.query_param("token").as_deref()) {
        Ok(who) => who,
        Err(error) => {
            refuse(&mut tcp, 401, "unauthorized", error.reason()).await;
            return None;
        }
    };
    let response = http_upgrade::switching_protocols(key);
    match tokio::time::timeout(HEAD_TIMEOUT, tcp.write_all(response.as_bytes())).await {
        Ok(Ok(())) => {}
        _ => return None,
    }
    let early = head[request.len..].to_vec();
    Some((tcp, early, claims, admitted))
}

/// The client's token from its URL, checked; without one (and not in dev mode) the connection
/// is admitted [`Pending::Auth`]: its first message must carry the token (URLs end up in logs).
fn who_is(ctx: &ConnContext, token: Option<&str>) -> Result<Pending, linkcast_core::auth::AuthError> {
    match token.filter(|t| !t.is_empty()) {
        None if !ctx.admission.is_dev() => Ok(Pending::Auth),
        token => ctx.admission.verify(token).map(Pending::Ready),
    }
}
