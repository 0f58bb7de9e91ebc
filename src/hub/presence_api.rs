//! The presence routes of the hub's HTTP API: one room's presence, and the cluster-wide room
//! list an operator looks at first.
//!
//! - `GET /v1/rooms/{room}/presence` (read scope, as `GET /v1/rooms/{room}`; forwarded to the
//!   room's owner hub like the other room routes): `{"room","members","events","users"}` from the
//!   owner's table (`linkcast_core::presence`): `users` is the sorted list of distinct users while
//!   join/leave events are on (at most `hub.presence_events_max_members` members), else `null`.
//! - `GET /v1/rooms?prefix=P&limit=N` (admin scope: `ApiState::check_admin`): rooms with members,
//!   biggest first, `{"rooms":[{"room","members","links"}],"incomplete_hubs":[ids]}`. The hub
//!   that is asked answers its own rooms (from its hub task) and asks every other configured hub
//!   for theirs with `local=1` — concurrently, each bounded by [`PEER_TIMEOUT`] — then merges
//!   (a room seen at two hubs while it moves counts once, with the larger count) and cuts to
//!   `limit`. A hub that does not answer in time, or answers with an error, is listed in
//!   `incomplete_hubs`. With `local=1` a hub answers only its own rooms (what peers ask).
//!
//! Handlers only validate and ask: the hub task (driver.rs) reads its room table.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use super::driver::HubInput;
use super::error::ApiError;
use super::forward::FORWARDED_HEADER;
use super::http::{ask, read_room};
use super::ApiState;
use linkcast_core::frame::MAX_ROOM_LEN;

/// How long the room list waits for each other hub.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// Default `limit` of the room list.
const DEFAULT_ROOMS_LIMIT: usize = 100;

/// Largest `limit` of the room list.
const MAX_ROOMS_LIMIT: usize = 1000;

/// One room's presence at its owner hub.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct PresenceInfo {
    pub(crate) room: String,
    /// Members (connections) on all Links.
    pub(crate) members: u64,
    /// Join/leave events are on (the room is small enough).
    pub(crate) events: bool,
    /// Distinct users, sorted, while events are on.
    pub(crate) users: Option<Vec<String>>,
}

/// One line of the room list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RoomCount {
    pub(crate) room: String,
    pub(crate) members: u64,
    /// Links holding members.
    pub(crate) links: Vec<u32>,
}

/// Query of the room list.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RoomsQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    /// `1`/`true`: this hub's rooms only (what a hub asks its peers).
    local: Option<String>,
}

/// A peer's answer to the room list.
#[derive(Debug, serde::Deserialize)]
struct PeerRooms {
    rooms: Vec<RoomCount>,
}

/// `GET /v1/rooms/{room}/presence`.
pub(crate) async fn room_presence(
    State(shared): State<Arc<ApiState>>,
    room: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read_room(&shared, room, &uri, &headers, |room, reply| HubInput::Presence { room, reply }).await
}

/// `GET /v1/rooms?prefix=&limit=[&local=1]`.
pub(crate) async fn rooms(
    State(shared): State<Arc<ApiState>>,
    query: Result<Query<RoomsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shared.check_admin(&headers)?;
    let Query(query) = query.map_err(ApiError::rejected)?;
    let prefix = query.prefix.unwrap_or_default();
    if prefix.len() > MAX_ROOM_LEN || !prefix.bytes().all(is_room_byte) {
        return Err(ApiError::BadRequest("prefix must be the start of a valid room name"));
    }
    let limit = match query.limit {
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1")),
        Some(limit) => limit.min(MAX_ROOMS_LIMIT),
        None => DEFAULT_ROOMS_LIMIT,
    };
    let local = only_local(query.local.as_deref(), &headers);
    let (reply, answer) = oneshot::channel();
    let mut rooms = ask(&shared, HubInput::Rooms { prefix: prefix.clone(), limit, reply }, answer).await?;
    let mut incomplete: Vec<u32> = Vec::new();
    if !local {
        let target = format!("/v1/rooms?local=1&limit={limit}&prefix={}", encode(&prefix));
        let (answers, missing) = ask_peers::<PeerRooms>(&shared, &target, &headers).await;
        rooms.extend(answers.into_iter().flat_map(|(_, peer)| peer.rooms));
        incomplete = missing;
        rooms = merge(rooms, limit);
    }
    Ok(Json(serde_json::json!({ "rooms": rooms, "incomplete_hubs": incomplete })).into_response())
}

/// True when a merged admin route must answer with this hub's own view only: `local=1` (or
/// `true`) was asked, or the request was forwarded by a peer hub (which merges itself).
pub(crate) fn only_local(local: Option<&str>, headers: &HeaderMap) -> bool {
    matches!(local, Some("1" | "true")) || headers.contains_key(FORWARDED_HEADER)
}

/// Asks every other configured hub for `target` (a `local=1` query of a merged admin route),
/// concurrently, each bounded by [`PEER_TIMEOUT`], passing the caller's `Authorization` on.
/// Returns the answers that came back 200 with the JSON `T`, by hub id, and the ids of the hubs
/// that did not (timeout, error status, malformed answer), sorted. Used by `GET /v1/rooms` and
/// `GET /v1/top/rooms` (top_api.rs).
pub(crate) async fn ask_peers<T: serde::de::DeserializeOwned + Send + 'static>(
    shared: &ApiState,
    target: &str,
    headers: &HeaderMap,
) -> (Vec<(u32, T)>, Vec<u32>) {
    let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut asks = tokio::task::JoinSet::new();
    for hub in shared.config.hubs.iter().filter(|h| h.id != shared.id.0) {
        let (id, addr, tls_name) = (hub.id, hub.http, hub.tls_name.clone());
        let (dialer, target, auth, me) = (shared.dialer.clone(), target.to_owned(), auth.clone(), shared.id.0.to_string());
        asks.spawn(async move {
            let mut pass: Vec<(&str, &str)> = vec![(FORWARDED_HEADER, me.as_str())];
            if let Some(auth) = auth.as_deref() {
                pass.push((axum::http::header::AUTHORIZATION.as_str(), auth));
            }
            let request = super::forward::request(&dialer, addr, tls_name.as_deref(), Method::GET, &target, &pass, Bytes::new());
            let answer = match tokio::time::timeout(PEER_TIMEOUT, request).await {
                Ok(Ok(answer)) if answer.status == 200 => serde_json::from_slice::<T>(&answer.body).ok(),
                _ => None,
            };
            (id, answer)
        });
    }
    let (mut answers, mut missing) = (Vec::new(), Vec::new());
    while let Some(done) = asks.join_next().await {
        match done {
            Ok((id, Some(answer))) => answers.push((id, answer)),
            Ok((id, None)) => missing.push(id),
            Err(_) => {}
        }
    }
    missing.sort_unstable();
    (answers, missing)
}

/// Rooms from several hubs, biggest first (then by name), each once (the larger count), at
/// most `limit`.
fn merge(rooms: Vec<RoomCount>, limit: usize) -> Vec<RoomCount> {
    merge_ranked(rooms, limit, |r| &r.room, |a, b| b.members.cmp(&a.members))
}

/// Rows of rooms from several hubs, best first by `better` (then by name), each room once (its
/// best row: a room seen at two hubs while it moves), at most `limit`.
pub(crate) fn merge_ranked<T>(
    mut rows: Vec<T>,
    limit: usize,
    room: impl Fn(&T) -> &str,
    better: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    rows.sort_unstable_by(|a, b| room(a).cmp(room(b)).then_with(|| better(a, b)));
    rows.dedup_by(|later, first| room(later) == room(first));
    rows.sort_unstable_by(|a, b| better(a, b).then_with(|| room(a).cmp(room(b))));
    rows.truncate(limit);
    rows
}

fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'#')
}

/// Percent-encodes the room characters that mean something in a query string.
fn encode(prefix: &str) -> String {
    prefix.replace(':', "%3A").replace('@', "%40").replace('#', "%23")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(room: &str, members: u64) -> RoomCount {
        RoomCount { room: room.into(), members, links: vec![] }
    }

    #[test]
    fn merged_rooms_are_biggest_first_and_each_once() {
        let merged = merge(vec![count("a", 3), count("b", 10), count("a", 5), count("c", 1)], 2);
        assert_eq!(merged, vec![count("b", 10), count("a", 5)]);
        assert_eq!(encode("x:y@z#1"), "x%3Ay%40z%231");
    }
}
