//! Glue between a connection driver (`ws.rs`, `quic_clients.rs`) and the sans-IO
//! [`linkcast_core::link_session::LinkSession`]: what the core says goes out here.
//!
//! - [`encode`] turns a [`ToClient`] into bytes for the connection's [`Wire`]: WebSocket text
//!   frames from `wsframe`, or linkcast frames for QUIC. Ring deliveries arrive already encoded
//!   (shared buffers) and pass through untouched.
//! - [`forward`] moves what the session owes the coordinator (joins, leaves, publishes) onto the
//!   coordinator's channel, and its counters into the process metrics.
//!
//! All decisions (join, replay, live hand-over, de-duplication, gaps, resets) are the core's.

use bytes::Bytes;

use crate::config::LinkConfig;
use linkcast_core::frame::{Body, FrameBuilder};
pub use linkcast_core::link_session::{ReqId, Request, LinkSession, SessionLimits, ToClient, ToCoordinator, Wire};

use super::coordinator::CoordMsg;
use linkcast_core::ws_frame;

use super::{tally, Shared};

/// The session limits of `[link]`.
pub fn limits(link: &LinkConfig) -> SessionLimits {
    SessionLimits {
        max_rooms: link.max_rooms_per_conn,
        max_message_bytes: link.max_message_bytes,
        lag_policy: link.lag_policy,
        publish_rate: link.publish_rate,
        publish_burst: link.publish_burst,
    }
}

/// Encodes one outgoing item for `wire`.
pub fn encode(wire: Wire, item: ToClient) -> Bytes {
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
    }
}

/// Sends what `session` owes the coordinator and exports its counters.
pub fn forward(session: &mut LinkSession, shared: &Shared) {
    let shard = super::shard::shard_of(session.id());
    while let Some(action) = session.poll_coordinator() {
        shared.coordinate(match action {
            ToCoordinator::Join { request, room, since, epoch } => CoordMsg::Join { shard, request, room, since, epoch },
            ToCoordinator::Leave { room } => CoordMsg::Leave { shard, room },
            ToCoordinator::Publish { frame } => CoordMsg::Publish { frame },
        });
    }
    let stats = session.take_stats();
    tally::delivered(stats.delivered);
    if stats.joins > 0 {
        metrics::counter!("linkcast_link_joins_total").increment(stats.joins);
    }
    if stats.lagging > 0 {
        metrics::counter!("linkcast_link_lagging_total").increment(stats.lagging);
    }
    if stats.gaps > 0 {
        metrics::counter!("linkcast_link_gaps_total").increment(stats.gaps);
    }
    if stats.resets > 0 {
        metrics::counter!("linkcast_link_resets_total").increment(stats.resets);
    }
}
