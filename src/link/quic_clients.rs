//! QUIC clients (ALPN `linkcast/1`): the same operations as WebSocket, in linkcast frames.
//!
//! One UDP endpoint per Link, driven by the runtime of the shard that owns it; each accepted
//! connection is handed round-robin to a shard ([`ShardMsg::Quic`]) and lives there for its
//! whole life, like a WebSocket connection. The client opens one bidirectional stream whose
//! first frame is `Hello {secret = token}` (empty in dev mode); then `Join`/`Leave`/`Publish`/
//! `Heartbeat` frames. Room messages go out as the hub's own frame bytes (the ring's
//! `RoomMessage::frame`) — not re-encoded. Liveness is QUIC's keep-alive and idle timeout
//! (`quic::server_config`). Refusals are `Error` frames; closes are QUIC application closes with
//! the WebSocket close code and reason (e.g. 1009 "message too big").

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use linkcast_core::frame::{ArchivedBody, Body, FrameBuilder, FrameError, HEADER_LEN, MAX_ROOM_LEN, MAX_SENDER_LEN};
use crate::quic::{self, FrameReader, StreamError, ALPN_CLIENT};

use linkcast_core::protocol::{ClientError, Refusal};
use super::session::{encode, Request, LinkSession, ToClient, Wire};
use linkcast_core::link_session::refuse;
use super::shard::{ConnEvent, Registered, ShardMsg, ShardState};
use super::Shared;
use crate::clock::now_micros;

/// Time a client has to open its stream and say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the client endpoint on `socket` (on the current shard's runtime) and its accept loop.
pub fn start_endpoint(socket: std::net::UdpSocket, shared: Arc<Shared>) -> std::io::Result<quinn::Endpoint> {
    let config = quic::server_config(&[ALPN_CLIENT]).map_err(std::io::Error::other)?;
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime)?;
    let accepting = endpoint.clone();
    tokio::task::spawn_local(async move {
        let next = AtomicUsize::new(0);
        while let Some(incoming) = accepting.accept().await {
            let shards = shared.shards();
            if shards.is_empty() {
                incoming.refuse();
                continue;
            }
            let shard = next.fetch_add(1, Ordering::Relaxed) % shards.len();
            let _ = shards[shard].send(ShardMsg::Quic(Box::new(incoming))).await;
        }
    });
    Ok(endpoint)
}

fn close(conn: &quinn::Connection, error: ClientError) {
    metrics::counter!("linkcast_link_closes_total", "reason" => error.label()).increment(1);
    let (Refusal::Close(code, reason) | Refusal::Error(code, reason)) = error.refusal();
    conn.close(quinn::VarInt::from_u32(u32::from(code)), reason.as_bytes());
}

/// Runs one QUIC client connection on this shard.
pub async fn handle(incoming: quinn::Incoming, shared: Arc<Shared>, state: Rc<RefCell<ShardState>>) {
    let Ok(Ok(conn)) = tokio::time::timeout(HELLO_TIMEOUT, async { incoming.accept()?.await }).await else { return };
    let Ok(Ok((mut send, recv))) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await else { return };
    let link = shared.config.link.clone();
    let max_frame = link.max_message_bytes + HEADER_LEN + MAX_ROOM_LEN + MAX_SENDER_LEN + 256;
    let mut reader = FrameReader::new(recv, max_frame);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await;
    let token = match &hello {
        Ok(Ok(Some(frame))) => match frame.body() {
            ArchivedBody::Hello { secret, .. } => Some(secret.as_str().to_owned()),
            _ => None,
        },
        _ => None,
    };
    let Some(token) = token else {
        let refusal = FrameBuilder::new("").build(&Body::Error { request: 0, code: 400, reason: "expected hello".into(), retry_after_ms: 0 });
        let _ = send.write_all(refusal.as_bytes()).await;
        conn.close(quinn::VarInt::from_u32(400), b"expected hello");
        return;
    };
    let anonymous = format!("anon-{}", shared.anonymous.fetch_add(1, Ordering::Relaxed) + 1);
    let token = Some(token.as_str()).filter(|t| !t.is_empty());
    let claims = match shared.verifier.verify(token, now_micros() / 1_000_000, &anonymous) {
        Ok(claims) => claims,
        Err(error) => {
            metrics::counter!("linkcast_link_auth_failures_total").increment(1);
            let refusal =
                FrameBuilder::new("").build(&Body::Error { request: 0, code: 401, reason: error.reason().into(), retry_after_ms: 0 });
            let _ = send.write_all(refusal.as_bytes()).await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close(quinn::VarInt::from_u32(401), error.reason().as_bytes());
            return;
        }
    };
    if shared.connections.fetch_add(1, Ordering::Relaxed) >= link.max_connections || state.borrow().stopping {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        conn.close(quinn::VarInt::from_u32(503), b"too many connections");
        return;
    }

    let Registered { id, index, mailbox } = state.borrow_mut().register_conn();
    shared.register_user(&claims.sub, id);
    let user = claims.sub.clone();
    let expires = claims.exp;
    shared.stats[index].connections.fetch_add(1, Ordering::Relaxed);
    let gauge = metrics::gauge!("linkcast_link_connections", "shard" => index.to_string());
    gauge.increment(1.0);
    let mut session = LinkSession::new(id, Wire::Quic, claims, super::session::limits(&link), now_micros());
    let batch = link.write_batch_bytes.max(1);
    let stall = Duration::from_secs(link.idle_timeout_secs.max(1));
    let mut tick = tokio::time::interval(Duration::from_secs(link.ping_interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut items: Vec<ToClient> = Vec::new();
    let mut out: Vec<Bytes> = Vec::new();

    let reason: Option<ClientError> = 'run: loop {
        let mut closing = None;
        {
            let mut state = state.borrow_mut();
            while let Some(event) = mailbox.next_event() {
                match event {
                    ConnEvent::Hub { frame, ring_tail } => session.handle_hub_frame(frame, ring_tail, &mut state.rooms, &mut items),
                    ConnEvent::Close(error) => {
                        closing = Some(error);
                        break;
                    }
                }
            }
            if mailbox.take_ring() {
                session.dirty = true;
            }
            if closing.is_none() && session.dirty {
                closing = session.fill(batch, &mut state.rooms, &mut items).err();
            }
        }
        super::session::forward(&mut session, &shared);
        if let Some(error) = closing {
            break 'run Some(error);
        }
        out.extend(items.drain(..).map(|item| encode(Wire::Quic, item)).filter(|b| !b.is_empty()));
        if !out.is_empty() {
            let bytes: usize = out.iter().map(Bytes::len).sum();
            match tokio::time::timeout(stall, quic::write_frames(&mut send, &mut out)).await {
                Ok(Ok(())) => {
                    super::tally::wrote(bytes as u64);
                    super::tally::flush();
                }
                Ok(Err(_)) => break None,
                Err(_) => break Some(ClientError::SlowConsumer),
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = mailbox.wait() => {}
            frame = reader.next() => match frame {
                Ok(Some(frame)) => {
                    let result = match Request::from_quic(&frame) {
                        Ok(request) => session.handle_request(request, now_micros(), &mut state.borrow_mut().rooms, &mut items),
                        Err(error) => refuse(error, Some(frame.room()), None, &mut items),
                    };
                    super::session::forward(&mut session, &shared);
                    if let Err(error) = result {
                        break Some(error);
                    }
                }
                Ok(None) => break None,
                Err(StreamError::Frame(FrameError::TooLong { .. })) => break Some(ClientError::TooBig),
                Err(StreamError::Frame(error)) => {
                    let refusal = FrameBuilder::new("")
                        .build(&Body::Error { request: 0, code: 400, reason: error.reason().into(), retry_after_ms: 0 });
                    let _ = send.write_all(refusal.as_bytes()).await;
                    conn.close(quinn::VarInt::from_u32(1003), error.reason().as_bytes());
                    break None;
                }
                Err(_) => break None,
            },
            _ = tick.tick() => {
                if link.lag_policy == linkcast_core::fanout::LagPolicy::Disconnect && session.lagging(&state.borrow().rooms) {
                    break Some(ClientError::SlowConsumer);
                }
                if expires <= now_micros() / 1_000_000 {
                    break Some(ClientError::TokenExpired);
                }
            }
        }
    };

    session.finish(&mut state.borrow_mut().rooms);
    super::session::forward(&mut session, &shared);
    state.borrow_mut().remove_conn(id);
    shared.users.unregister(&user, id);
    if let Some(error) = reason {
        let _ = send.finish();
        close(&conn, error);
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    shared.stats[index].connections.fetch_sub(1, Ordering::Relaxed);
    gauge.decrement(1.0);
}
