//! WebSocket clients: the HTTP checks before the upgrade, then one task per connection.
//!
//! Before the upgrade (plain HTTP/1.1, read here with a size and time limit), in this order:
//! `GET /healthz` and `GET /metrics` are answered directly; anything but `/ws` is 404; a
//! refused `Origin` is 403, a full Link 503, a missing/bad/expired token 401 — each with the
//! JSON body `{"error","reason"}` of docs/protocol.md. Only then is the request handed (bytes
//! replayed through [`ConnIo`]) to tokio-websockets for the upgrade.
//!
//! After the upgrade, one task per connection loops over four sources: the shard's inbox (hub
//! answers, close requests), the ring wake-up, the socket (flush queued frames, read client
//! messages) and a timer (ping, idle and stall checks). Ring frames are pulled by the
//! [`Session`] only while less than `write_batch_bytes` wait in the socket queue, so a client
//! that does not read costs one batch here plus its ring cursor, never a private copy of the room.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::Sink;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::{CloseCode, Limits, Message, WebSocketStream};

use super::conn_io::ConnIo;
use super::limits::{ClientError, Refusal};
use super::session::{parse_ws, Session, Wire};
use super::shard::{ConnEvent, Registered, ShardState};
use super::{now_micros, Shared};

/// Longest HTTP request head accepted before the upgrade.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time given to a close frame to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts TCP connections on this shard's listening socket until aborted.
pub async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, state: Rc<RefCell<ShardState>>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::task::spawn_local(handle_tcp(tcp, shared.clone(), state.clone()));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What the Link needs from the request head.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    query: String,
    origin: Option<String>,
    upgrade: bool,
}

fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let target = request.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    Some(Head {
        method: request.method?.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        origin: header("origin").map(str::to_owned),
        upgrade: header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
    })
}

/// The value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads up to the end of the request head; `None` if the peer closed or sent too much.
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
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

async fn respond(tcp: &mut TcpStream, status: u16, content_type: &str, body: &str) {
    let text = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

async fn refuse_http(tcp: &mut TcpStream, status: u16, error: &str, reason: &str) {
    let body = serde_json::json!({"error": error, "reason": reason}).to_string();
    respond(tcp, status, "application/json", &body).await;
}

/// Decrements the Link's connection count when dropped.
struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_tcp(mut tcp: TcpStream, shared: Arc<Shared>, state: Rc<RefCell<ShardState>>) {
    let _ = tcp.set_nodelay(true);
    if shared.config.link.socket_send_buffer > 0 {
        let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(shared.config.link.socket_send_buffer);
    }
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return refuse_http(&mut tcp, 431, "bad_request", "request head too large or incomplete").await,
        _ => return,
    };
    let Some(request) = parse_head(&head) else {
        return refuse_http(&mut tcp, 400, "bad_request", "malformed HTTP request").await;
    };
    if request.method != "GET" {
        return refuse_http(&mut tcp, 400, "bad_request", "only GET is served").await;
    }
    match request.path.as_str() {
        "/healthz" => return respond(&mut tcp, 200, "application/json", r#"{"status":"ok"}"#).await,
        "/metrics" => {
            let text = crate::telemetry::prometheus().render();
            return respond(&mut tcp, 200, "text/plain; version=0.0.4", &text).await;
        }
        "/ws" => {}
        _ => return refuse_http(&mut tcp, 404, "not_found", "no such route").await,
    }
    if !request.upgrade {
        return refuse_http(&mut tcp, 400, "bad_request", "expected a WebSocket upgrade").await;
    }
    let link = &shared.config.link;
    if !link.allowed_origins.is_empty() {
        let allowed = request.origin.as_deref().is_some_and(|o| link.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            metrics::counter!("linkcast_link_closes_total", "reason" => "origin not allowed").increment(1);
            return refuse_http(&mut tcp, 403, "forbidden", "origin not allowed").await;
        }
    }
    if shared.connections.fetch_add(1, Ordering::Relaxed) >= link.max_connections || state.borrow().stopping {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        return refuse_http(&mut tcp, 503, "unavailable", "too many connections").await;
    }
    let admitted = Admitted(shared.clone());
    let token = query_param(&request.query, "token");
    let anonymous = format!("anon-{}", shared.anonymous.fetch_add(1, Ordering::Relaxed) + 1);
    let now_secs = now_micros() / 1_000_000;
    let claims = match shared.verifier.verify(token.as_deref(), now_secs, &anonymous) {
        Ok(claims) => claims,
        Err(error) => {
            metrics::counter!("linkcast_link_auth_failures_total").increment(1);
            return refuse_http(&mut tcp, 401, "unauthorized", error.reason()).await;
        }
    };
    let limits = Limits::default().max_payload_len(Some(link.max_message_bytes.saturating_mul(2)));
    let io = ConnIo::new(tcp, head);
    let ws = match tokio::time::timeout(HEAD_TIMEOUT, tokio_websockets::ServerBuilder::new().limits(limits).accept(io)).await {
        Ok(Ok((_, ws))) => ws,
        _ => return,
    };
    run_connection(ws, claims, shared, state).await;
    drop(admitted);
}

/// What woke the connection task.
enum Event {
    Inbox(Option<ConnEvent>),
    Ring,
    Message(Message),
    ReadError(tokio_websockets::Error),
    Drained,
    Gone,
    Tick,
}

async fn run_connection(
    mut ws: WebSocketStream<ConnIo>,
    claims: crate::auth::Claims,
    shared: Arc<Shared>,
    state: Rc<RefCell<ShardState>>,
) {
    let Registered { id, index, inbox_tx, mut inbox, notify } = state.borrow_mut().register_conn();
    let link = shared.config.link.clone();
    shared.users.register(&claims.sub, id, inbox_tx, link.max_conns_per_user);
    let user = claims.sub.clone();
    let expires = claims.exp;
    let stats = &shared.stats[index];
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let gauge = metrics::gauge!("linkcast_link_connections", "shard" => index.to_string());
    gauge.increment(1.0);
    let bytes_out = metrics::counter!("linkcast_link_bytes_out_total");
    let mut session = Session::new(id, Wire::Ws, claims, shared.clone(), state.clone(), now_micros());

    let batch = link.write_batch_bytes.max(1);
    // Above this, client input is not read until the socket drains (replies need room too).
    let input_cap = batch * 2 + 64 * 1024;
    let idle = Duration::from_secs(link.idle_timeout_secs.max(1));
    let mut ping = tokio::time::interval(Duration::from_secs(link.ping_interval_secs.max(1)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut last_progress = Instant::now();
    let mut out: Vec<Bytes> = Vec::new();
    let mut reported_queue = 0usize;

    let reason: Option<ClientError> = loop {
        if session.dirty && ws.get_ref().queued() < batch {
            let budget = batch - ws.get_ref().queued();
            if let Err(error) = session.fill(budget, &mut out) {
                break Some(error);
            }
            for frame in out.drain(..) {
                ws.get_mut().push(frame);
            }
        }
        let queued = ws.get_ref().queued();
        if queued != reported_queue {
            stats.queued_bytes.fetch_add(queued, Ordering::Relaxed);
            stats.queued_bytes.fetch_sub(reported_queue, Ordering::Relaxed);
            reported_queue = queued;
        }
        let read_allowed = queued < input_cap;
        let event = tokio::select! {
            biased;
            event = inbox.recv() => Event::Inbox(event),
            _ = notify.notified() => Event::Ring,
            event = poll_fn(|cx| {
                let before = ws.get_ref().queued();
                if let Poll::Ready(Err(_)) = Pin::new(&mut ws).poll_flush(cx) {
                    return Poll::Ready(Event::Gone);
                }
                let after = ws.get_ref().queued();
                if after != reported_queue {
                    stats.queued_bytes.fetch_add(after, Ordering::Relaxed);
                    stats.queued_bytes.fetch_sub(reported_queue, Ordering::Relaxed);
                    reported_queue = after;
                }
                if after < before {
                    last_progress = Instant::now();
                    if before >= batch / 2 && after < batch / 2 {
                        return Poll::Ready(Event::Drained);
                    }
                }
                if read_allowed {
                    match Pin::new(&mut ws).poll_next(cx) {
                        Poll::Ready(Some(Ok(message))) => return Poll::Ready(Event::Message(message)),
                        Poll::Ready(Some(Err(error))) => return Poll::Ready(Event::ReadError(error)),
                        Poll::Ready(None) => return Poll::Ready(Event::Gone),
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            }) => event,
            _ = ping.tick() => Event::Tick,
        };
        bytes_out.increment(ws.get_mut().take_written());
        match event {
            Event::Inbox(Some(ConnEvent::Hub(frame))) => {
                session.handle_hub(frame, &mut out);
                for frame in out.drain(..) {
                    ws.get_mut().push(frame);
                }
            }
            Event::Inbox(Some(ConnEvent::Close(error))) => break Some(error),
            Event::Inbox(None) => break Some(ClientError::ShuttingDown),
            Event::Ring | Event::Drained => session.dirty = true,
            Event::Message(message) => {
                last_heard = Instant::now();
                if message.is_close() {
                    break None;
                }
                if message.is_binary() {
                    break Some(ClientError::Binary);
                }
                let Some(text) = message.as_text() else { continue };
                if text.len() > link.max_message_bytes {
                    break Some(ClientError::TooBig);
                }
                let result = match parse_ws(text) {
                    Ok(request) => session.handle_request(request, now_micros(), &mut out),
                    Err((error, room, id)) => {
                        let id = super::session::ReqId::Json(id);
                        session.refuse(error, room.as_deref(), Some(&id), &mut out)
                    }
                };
                for frame in out.drain(..) {
                    ws.get_mut().push(frame);
                }
                if let Err(error) = result {
                    break Some(error);
                }
            }
            Event::ReadError(tokio_websockets::Error::PayloadTooLong { .. }) => {
                // tokio-websockets has queued its own 1009 close; let it leave.
                count_close(ClientError::TooBig);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures_util::SinkExt::flush(&mut ws)).await;
                break None;
            }
            Event::ReadError(_) | Event::Gone => break None,
            Event::Tick => {
                let now = Instant::now();
                if now.duration_since(last_heard) > idle {
                    break Some(ClientError::Idle);
                }
                if ws.get_ref().queued() > 0 && now.duration_since(last_progress) > idle {
                    break Some(ClientError::Idle);
                }
                if link.lag_policy == crate::fanout::LagPolicy::Disconnect && session.lagging() {
                    break Some(ClientError::SlowConsumer);
                }
                if expires <= now_micros() / 1_000_000 {
                    break Some(ClientError::TokenExpired);
                }
                let _ = Pin::new(&mut ws).start_send(Message::ping(Bytes::from_static(b"lc")));
            }
        }
    };

    session.finish();
    state.borrow_mut().remove_conn(id);
    shared.users.unregister(&user, id);
    if let Some(error) = reason {
        count_close(error);
        if let Refusal::Close(code, text) = error.refusal() {
            if error == ClientError::SlowConsumer {
                ws.get_mut().discard_unsent();
            }
            if let Ok(code) = CloseCode::try_from(code) {
                let _ = Pin::new(&mut ws).start_send(Message::close(Some(code), text));
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures_util::SinkExt::flush(&mut ws)).await;
            // Wait briefly for the client's close reply so it reads our reason before the FIN.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
            })
            .await;
        }
    }
    bytes_out.increment(ws.get_mut().take_written());
    stats.queued_bytes.fetch_sub(reported_queue, Ordering::Relaxed);
    stats.connections.fetch_sub(1, Ordering::Relaxed);
    gauge.decrement(1.0);
}

fn count_close(error: ClientError) {
    metrics::counter!("linkcast_link_closes_total", "reason" => error.label()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_and_queries_parse() {
        let head = b"GET /ws?token=a.b%2Ec&x=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nOrigin: https://a\r\n\r\n";
        let parsed = parse_head(head).expect("valid");
        assert_eq!(parsed.path, "/ws");
        assert!(parsed.upgrade);
        assert_eq!(parsed.origin.as_deref(), Some("https://a"));
        assert_eq!(query_param(&parsed.query, "token").as_deref(), Some("a.b.c"));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(percent_decode("%zz%"), "%zz%");
        assert!(parse_head(b"garbage\r\n\r\n").is_none());
    }
}
