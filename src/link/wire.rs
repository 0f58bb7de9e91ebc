//! What the Link sends a client, in the client's encoding: [`encode`] turns a core
//! [`ToClient`] action into bytes for the connection's [`Wire`] — WebSocket text frames from
//! `ws_frame`, or linkcast frames for QUIC. Ring deliveries arrive already encoded (buffers
//! shared by every member) and pass through untouched. Called by the connection drivers
//! (`ws.rs`, `quic_clients.rs`); no state, no I/O.

use bytes::Bytes;

use linkcast_core::frame::{Body, FrameBuilder};
use linkcast_core::link_session::{ReqId, ToClient, Wire};
use linkcast_core::protocol::ServerMsg;
use linkcast_core::ws_frame;

/// Encodes one outgoing item for `wire`.
pub(crate) fn encode(wire: Wire, item: ToClient) -> Bytes {
    match (wire, item) {
        (_, ToClient::Encoded(bytes)) => bytes,
        (Wire::Ws, ToClient::Replay(frame)) => ws_frame::message(&frame),
        (Wire::Quic, ToClient::Replay(frame)) => frame.into_bytes(),
        (Wire::Ws, ToClient::Joined { room, epoch, last_seq }) => ws_frame::joined(&room, epoch, last_seq),
        (Wire::Quic, ToClient::Joined { room, epoch, last_seq }) => {
            FrameBuilder::new(&room).seq(last_seq).build(&Body::Joined { request: 0, epoch }).into_bytes()
        }
        (Wire::Ws, ToClient::Reset { room, epoch, last_seq }) => ws_frame::reset(&room, epoch, last_seq),
        (Wire::Quic, ToClient::Reset { room, epoch, last_seq }) => {
            FrameBuilder::new(&room).seq(last_seq).build(&Body::Reset { request: 0, epoch }).into_bytes()
        }
        (Wire::Ws, ToClient::Gap { room, lost }) => ws_frame::gap(&room, lost.first_lost, lost.last_lost, lost.resume_from),
        (Wire::Quic, ToClient::Gap { room, lost }) => FrameBuilder::new(&room)
            .build(&Body::Gap { request: 0, first_lost: lost.first_lost, last_lost: lost.last_lost, resume_from: lost.resume_from })
            .into_bytes(),
        (Wire::Ws, ToClient::Left { room }) => ws_frame::left(&room),
        // QUIC has no leave acknowledgement.
        (Wire::Quic, ToClient::Left { .. }) => Bytes::new(),
        (Wire::Ws, ToClient::Published { room, seq, epoch, id }) => {
            let json = match &id {
                ReqId::Json(id) => id.as_ref(),
                ReqId::Quic(_) => None,
            };
            ws_frame::published(&room, seq, epoch, json)
        }
        (Wire::Quic, ToClient::Published { room, seq, epoch, id }) => {
            let request = match id {
                ReqId::Quic(request) => request,
                ReqId::Json(_) => 0,
            };
            FrameBuilder::new(&room).seq(seq).build(&Body::PublishAck { request, epoch }).into_bytes()
        }
        (Wire::Ws, ToClient::Error { code, reason, room, id, retry_after_ms }) => {
            let json = match &id {
                Some(ReqId::Json(id)) => id.as_ref(),
                _ => None,
            };
            ws_frame::error(code, &reason, room.as_deref(), json, retry_after_ms)
        }
        (Wire::Quic, ToClient::Error { code, reason, room, id, retry_after_ms }) => {
            let request = match id {
                Some(ReqId::Quic(request)) => request,
                _ => 0,
            };
            let room = room.as_deref().unwrap_or("");
            let body = Body::Error { request, code, reason, retry_after_ms: retry_after_ms.unwrap_or(0) };
            FrameBuilder::new(room).build(&body).into_bytes()
        }
        (Wire::Ws, ToClient::Pong { .. }) => ws_frame::pong(),
        (Wire::Quic, ToClient::Pong { nonce }) => FrameBuilder::new("").build(&Body::Heartbeat { nonce }).into_bytes(),
        (Wire::Ws, ToClient::Refreshed { exp }) => ws_frame::text(ServerMsg::Refreshed::<()> { exp }.to_json().as_bytes()),
        // QUIC clients have no refresh (their token is the `Hello`'s).
        (Wire::Quic, ToClient::Refreshed { .. }) => Bytes::new(),
        (Wire::Ws, ToClient::Removed { room, reason }) => {
            ws_frame::text(ServerMsg::Removed::<()> { room: room.as_str().into(), reason: reason.as_str().into() }.to_json().as_bytes())
        }
        // QUIC: the hub's own `Moderate` frame shape (action remove, header room).
        (Wire::Quic, ToClient::Removed { room, reason }) => FrameBuilder::new(&room)
            .build(&Body::Moderate { action: linkcast_core::frame::MODERATE_REMOVE, code: 0, reason, until_secs: 0 })
            .into_bytes(),
    }
}
