//! QUIC clients (ALPN `linkcast/1`): the same operations as WebSocket, in linkcast frames.
//!
//! One UDP endpoint per Link, driven by the runtime of the shard that owns it
//! ([`start_endpoint`]); each accepted connection is handed round-robin to a shard
//! ([`ShardMsg::Quic`]) and lives there for its whole life ([`handle`]), like a WebSocket
//! connection, with the same life ([`Connection`]: admission, session, close). The client opens
//! one bidirectional stream whose first frame is `Hello {secret = token}` (empty in dev mode);
//! then `Join`/`Leave`/`Publish`/`Heartbeat` frames. Room messages go out as the hub's own frame
//! bytes (the ring's `RoomMessage::frame`) — not re-encoded. Liveness is QUIC's keep-alive and
//! idle timeout (`quic::server_config`). Refusals are `Error` frames; closes are QUIC
//! application closes with the WebSocket close code and reason (e.g. 1009 "message too big").
//!
//! Before `Hello` is verified a connection holds a pre-auth slot (`pre_auth.rs`): at most
//! [`MAX_PRE_AUTH`] such connections per Link and [`MAX_PRE_AUTH_PER_IP`] per source address;
//! beyond either the accept loop refuses the connection before any handshake work
//! (`Incoming::refuse`, counted in `linkcast_link_quic_preauth_refused_total`). Handshake,
//! stream and `Hello` share one deadline ([`HELLO_TIMEOUT`]).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use linkcast_core::frame::{ArchivedBody, Body, FrameBuilder, FrameError, HEADER_LEN, MAX_ROOM_LEN, MAX_SENDER_LEN};
use linkcast_core::link_session::{refuse, Request, ToClient, Wire};
use linkcast_core::protocol::{ClientError, Refusal};

use super::connection::{count_close, ConnContext, Connection};
use super::shard::ShardMsg;
use super::shard_inbox::ShardSender;
use super::tally;
use super::wire::encode;
use crate::pre_auth::{PreAuthCaps, PreAuthSlot};
use crate::quic::{self, FrameReader, StreamError, ALPN_CLIENT};
use crate::tls::ServerCert;

/// Time a client has, in all, to finish the handshake, open its stream and say `Hello`.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most QUIC client connections of one Link before their `Hello` is verified.
pub(crate) const MAX_PRE_AUTH: usize = 1024;
/// Most QUIC client connections from one source address before their `Hello` is verified
/// (clients behind one NAT share it; a refused client retries).
pub(crate) const MAX_PRE_AUTH_PER_IP: usize = 64;

/// A connection the accept loop took, with its pre-auth slot, on its way to a shard.
#[derive(Debug)]
pub(crate) struct Accepted {
    incoming: quinn::Incoming,
    pre_auth: PreAuthSlot,
}

/// Starts the client endpoint on `socket` (on the current shard's runtime) and its accept loop,
/// which hands each connection to one of `shards` in turn.
pub(crate) fn start_endpoint(
    socket: std::net::UdpSocket,
    shards: Vec<ShardSender>,
    cert: Arc<ServerCert>,
    max_frame: usize,
) -> std::io::Result<quinn::Endpoint> {
    let config = quic::server_config(cert, &[ALPN_CLIENT], max_frame).map_err(std::io::Error::other)?;
    let caps = PreAuthCaps::new(MAX_PRE_AUTH, MAX_PRE_AUTH_PER_IP);
    let refused = metrics::counter!("linkcast_link_quic_preauth_refused_total");
    let endpoint = quic::endpoint_on(socket, Some(config))?;
    let accepting = endpoint.clone();
    tokio::task::spawn_local(async move {
        let next = AtomicUsize::new(0);
        while let Some(incoming) = accepting.accept().await {
            if shards.is_empty() {
                incoming.refuse();
                continue;
            }
            let Some(pre_auth) = caps.try_admit(incoming.remote_address().ip()) else {
                refused.increment(1);
                incoming.refuse();
                continue;
            };
            let shard = next.fetch_add(1, Ordering::Relaxed) % shards.len();
            // Always queued (bounded by the pre-auth caps above); a shard that is gone drops it.
            shards[shard].send(ShardMsg::Quic(Box::new(Accepted { incoming, pre_auth })));
        }
    });
    Ok(endpoint)
}

fn close(conn: &quinn::Connection, error: ClientError) {
    count_close(error);
    let (Refusal::Close(code, reason) | Refusal::Error(code, reason)) = error.refusal();
    conn.close(quinn::VarInt::from_u32(u32::from(code)), reason.as_bytes());
}

/// When the expiry timer of a token expiring at `exp` (seconds since the Unix epoch) fires: at
/// `exp`, or within the hour (it is armed again then). (A WebSocket connection has no timer of
/// its own: its driver's tick looks at the expiry, `ws.rs` `Served::due`.)
fn expiry_deadline(exp: u64) -> tokio::time::Instant {
    let left = exp.saturating_mul(1_000_000).saturating_sub(crate::clock::now_micros());
    tokio::time::Instant::now() + Duration::from_micros(left.min(3_600_000_000))
}

/// Runs one QUIC client connection on this shard.
pub(crate) async fn handle(accepted: Accepted, ctx: Rc<ConnContext>) {
    let Accepted { incoming, pre_auth } = accepted;
    // One deadline for the handshake, the stream and `Hello`.
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let Ok(Ok(conn)) = tokio::time::timeout_at(deadline, async { incoming.accept()?.await }).await else { return };
    let Ok(Ok((mut send, recv))) = tokio::time::timeout_at(deadline, conn.accept_bi()).await else {
        conn.close(quinn::VarInt::from_u32(408), b"timed out waiting for hello");
        return;
    };
    let link = &ctx.link;
    let max_frame = link.max_message_bytes + HEADER_LEN + MAX_ROOM_LEN + MAX_SENDER_LEN + 256;
    let mut reader = FrameReader::new(recv, max_frame);
    let hello = tokio::time::timeout_at(deadline, reader.next()).await;
    drop(pre_auth);
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
    let claims = match ctx.admission.verify(Some(token.as_str()).filter(|t| !t.is_empty())) {
        Ok(claims) => claims,
        Err(error) => {
            let refusal =
                FrameBuilder::new("").build(&Body::Error { request: 0, code: 401, reason: error.reason().into(), retry_after_ms: 0 });
            let _ = send.write_all(refusal.as_bytes()).await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close(quinn::VarInt::from_u32(401), error.reason().as_bytes());
            return;
        }
    };
    if let Err(refused) = ctx.admission.check_moderation(&claims.sub, claims.iat) {
        // Banned (4001) or token revoked (4002), as on WebSocket.
        close(&conn, refused.error());
        return;
    }
    let Some(admitted) = ctx.admit() else {
        conn.close(quinn::VarInt::from_u32(503), b"too many connections");
        return;
    };

    let (mut client, mailbox) = Connection::open(ctx.clone(), Wire::Quic, claims, admitted);
    let batch = link.write_batch_bytes.max(1);
    let stall = Duration::from_secs(link.idle_timeout_secs.max(1));
    let mut tick = tokio::time::interval(Duration::from_secs(link.ping_interval_secs.max(1)));
    let exp = client.expires();
    let expiry = tokio::time::sleep_until(expiry_deadline(exp));
    tokio::pin!(expiry);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut items: Vec<ToClient> = Vec::new();
    let mut out: Vec<Bytes> = Vec::new();

    let reason: Option<ClientError> = loop {
        let closing = match client.handle_events(&mailbox, &mut items) {
            Ok(()) if client.wants_fill() => client.fill(batch, &mut items).err(),
            Ok(()) => None,
            Err(error) => Some(error),
        };
        if let Some(error) = closing {
            break Some(error);
        }
        out.extend(items.drain(..).map(|item| encode(Wire::Quic, item)).filter(|b| !b.is_empty()));
        if !out.is_empty() {
            let bytes: usize = out.iter().map(Bytes::len).sum();
            match tokio::time::timeout(stall, quic::write_frames(&mut send, &mut out)).await {
                Ok(Ok(())) => {
                    tally::wrote(bytes as u64);
                    tally::flush();
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
                        Ok(request) => client.handle_request(request, &mut items),
                        Err(error) => refuse(error, Some(frame.room()), None, &mut items),
                    };
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
                if let Err(error) = client.check() {
                    break Some(error);
                }
            }
            // The token is enforced at its `exp`, not at the next tick (as on WebSocket).
            _ = &mut expiry, if exp != u64::MAX => {
                if exp <= crate::clock::now_secs() {
                    break Some(ClientError::TokenExpired);
                }
                expiry.as_mut().reset(expiry_deadline(exp));
            }
        }
    };

    client.finish();
    if let Some(error) = reason {
        let _ = send.finish();
        match client.close_reason() {
            Some(text) => {
                count_close(error);
                let (Refusal::Close(code, _) | Refusal::Error(code, _)) = error.refusal();
                conn.close(quinn::VarInt::from_u32(u32::from(code)), text.as_bytes());
            }
            None => close(&conn, error),
        }
    }
}
