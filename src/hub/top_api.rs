//! `GET /v1/top/rooms?limit=N[&local=1]` (admin scope): the hottest rooms of the cluster by
//! publish rate — what `linkcast top` shows and an operator looks at during an event.
//!
//! The rate of each room is tracked at its owner hub, sans-IO, in the room table
//! (`linkcast_core::room_rates`: two fixed 5 s windows per room, no extra lookup per publish).
//! The hub that is asked reads its own top-K from its hub task ([`HubInput::TopRooms`]), asks
//! every other configured hub for theirs with `local=1` (`presence_api::ask_peers`, concurrently,
//! each bounded by `PEER_TIMEOUT`), then merges them like the room list (each room once, its
//! larger rate: a room seen at two hubs while it moves) and cuts to `limit`. Answer:
//! `{"rooms":[{"room","hub","publish_rate","members"}],"hubs_missing":[ids]}`, biggest rate first
//! (msgs/s over the last ~5 s); `hubs_missing` lists the hubs that did not answer in time or with
//! an error, so a partial view is never mistaken for the whole. `limit`: default 10, at most 100.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use super::driver::HubInput;
use super::error::ApiError;
use super::http::ask;
use super::presence_api::{ask_peers, merge_ranked, only_local};
use super::ApiState;

/// Default `limit`.
const DEFAULT_TOP_LIMIT: usize = 10;

/// Largest `limit`.
pub(crate) const MAX_TOP_LIMIT: usize = 100;

/// One room of the answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RoomRate {
    pub(crate) room: String,
    /// The owner hub that measured it.
    pub(crate) hub: u32,
    /// Messages per second over the last ~5 s.
    pub(crate) publish_rate: f64,
    /// Members (connections) on all Links.
    pub(crate) members: u64,
}

/// Query of the route.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TopQuery {
    limit: Option<usize>,
    /// `1`/`true`: this hub's rooms only (what a hub asks its peers).
    local: Option<String>,
}

/// A peer's answer.
#[derive(Debug, serde::Deserialize)]
struct PeerTop {
    rooms: Vec<RoomRate>,
}

/// `GET /v1/top/rooms?limit=[&local=1]`.
pub(crate) async fn top_rooms(
    State(shared): State<Arc<ApiState>>,
    query: Result<Query<TopQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shared.check_admin(&headers)?;
    let Query(query) = query.map_err(ApiError::rejected)?;
    let limit = match query.limit {
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1")),
        Some(limit) => limit.min(MAX_TOP_LIMIT),
        None => DEFAULT_TOP_LIMIT,
    };
    let local = only_local(query.local.as_deref(), &headers);
    let (reply, answer) = oneshot::channel();
    let hub = shared.id.0;
    let own = ask(&shared, HubInput::TopRooms { limit, reply }, answer).await?;
    let mut rooms: Vec<RoomRate> =
        own.into_iter().map(|(room, publish_rate, members)| RoomRate { room, hub, publish_rate, members }).collect();
    let mut missing = Vec::new();
    if !local {
        let (answers, absent) = ask_peers::<PeerTop>(&shared, &format!("/v1/top/rooms?local=1&limit={limit}"), &headers).await;
        rooms.extend(answers.into_iter().flat_map(|(_, peer)| peer.rooms));
        missing = absent;
        rooms = merge(rooms, limit);
    }
    Ok(Json(serde_json::json!({ "rooms": rooms, "hubs_missing": missing })).into_response())
}

/// Rooms from several hubs, highest rate first (then by name), each once, at most `limit`.
fn merge(rooms: Vec<RoomRate>, limit: usize) -> Vec<RoomRate> {
    merge_ranked(rooms, limit, |r| &r.room, |a, b| b.publish_rate.total_cmp(&a.publish_rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(room: &str, hub: u32, publish_rate: f64) -> RoomRate {
        RoomRate { room: room.into(), hub, publish_rate, members: 0 }
    }

    #[test]
    fn merged_rates_are_highest_first_and_each_room_once() {
        let merged = merge(vec![rate("a", 0, 3.0), rate("b", 1, 10.0), rate("a", 1, 5.0), rate("c", 0, 1.0)], 2);
        assert_eq!(merged, vec![rate("b", 1, 10.0), rate("a", 1, 5.0)]);
    }
}
