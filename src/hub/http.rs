//! The hub's HTTP API (axum), exactly the routes of docs/protocol.md.
//!
//! Handlers are thin: they validate (room name, API key, body size and encoding), forward to the
//! owner hub when this hub does not own the room (forward.rs), and otherwise ask the hub task
//! (driver.rs) through its bounded event channel with a oneshot for the answer — so the room
//! table is never locked by HTTP. Locate reads the [`Locator`](super::locate) under a short
//! lock; it is not on the publish path.
//!
//! Check order for a publish: room name (400), API key (401), body size (413) and encoding
//! (400; with `Content-Type: application/json` the body must also parse as JSON), sender header
//! (400), ownership (forward), then — at the owner only — rate (429) and
//! the table (413/503). Every refusal is an [`ApiError`] (JSON); axum's rejections and unknown
//! routes are converted, so no plain-text error leaks. Each request is counted in
//! `linkcast_hub_http_requests_total{route,status}` (route = the route template).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::oneshot;

use super::driver::{lock, HubInput, MAX_HISTORY_LIMIT};
use linkcast_core::room::JoinAnswer;
use super::error::ApiError;
use super::forward::{self, FORWARDED_HEADER};
use super::moderation;
use super::ApiState;
use linkcast_core::frame::{is_valid_room, Frame, FLAG_JSON, MAX_SENDER_LEN};
use linkcast_core::protocol::{format_epoch, parse_epoch};
use linkcast_core::room_table::PublishError;

/// Header naming the sender of an HTTP publish (default `"server"`).
pub const FROM_HEADER: &str = "x-linkcast-from";

/// Header carrying an HTTP publish's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Longest idempotency key, bytes.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Default `limit` of the history route.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// The embedded demo page (static/index.html; no build step).
const DEMO_PAGE: &str = include_str!("../../static/index.html");

/// The browser/Node client library (clients/js/linkcast.js, a plain ES module; no build step).
const LINKCAST_JS: &str = include_str!("../../clients/js/linkcast.js");

/// The router of every route, with body limit, JSON fallbacks and request metrics.
/// `admin_routes`: also serve `/metrics` and `/healthz` (an unsecured hub without an admin
/// listener).
pub(crate) fn router(shared: Arc<ApiState>, admin_routes: bool) -> Router {
    let body_limit = shared.config.hub.max_payload;
    let request_timeout = Duration::from_secs(shared.config.hub.http_request_timeout_secs.max(1));
    let cors = Arc::new(super::cors::Cors::new(&shared.config.hub.cors_origins));
    let mut router = Router::new().route("/", get(demo_page)).route("/linkcast.js", get(linkcast_js));
    if admin_routes {
        router = router.route("/healthz", get(healthz)).route("/metrics", get(metrics));
    }
    let mut router = router
        .route("/v1/locate", get(locate))
        .route("/v1/rooms/{room}", get(room_info))
        .route("/v1/rooms/{room}/messages", get(history).post(publish))
        // Issue 15, the operator's API on users (moderation.rs).
        .route("/v1/users/{uid}/messages", post(moderation::user_messages))
        .route("/v1/broadcast", post(moderation::broadcast))
        .route("/v1/users/{uid}/disconnect", post(moderation::disconnect))
        .route("/v1/users/{uid}/revoke", post(moderation::revoke))
        .route("/v1/rooms/{room}/members/{uid}/remove", post(moderation::remove))
        .route("/v1/users/{uid}", get(moderation::user))
        // Presence (presence_api.rs): one room's count and users; the cluster-wide room list.
        .route("/v1/rooms/{room}/presence", get(super::presence_api::room_presence))
        .route("/v1/rooms", get(super::presence_api::rooms))
        .route("/v1/links", get(super::links_api::links)) // Links known, announced, draining (links_api.rs)
        // Issue 16: the hottest rooms by publish rate (top_api.rs).
        .route("/v1/top/rooms", get(super::top_api::top_rooms))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |matched, request, next| count_requests(matched, request, next, request_timeout)));
    // CORS (cors.rs) outermost, so preflights and every answer, 404s included, carry it.
    if !cors.is_off() {
        router = router.layer(middleware::from_fn(move |request, next| super::cors::cors(cors.clone(), request, next)));
    }
    router.with_state(shared)
}

/// Counts every request, and answers 408 to one that takes longer than `timeout` (a body
/// trickled byte by byte holds its connection no longer than that).
async fn count_requests(matched: Option<MatchedPath>, request: Request, next: Next, timeout: Duration) -> Response {
    let route = matched.map(|m| m.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("linkcast_hub_http_requests_total", "route" => route, "status" => status).increment(1);
    response
}

async fn demo_page() -> Html<&'static str> {
    Html(DEMO_PAGE)
}

async fn linkcast_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], LINKCAST_JS).into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics() -> Response {
    let text = crate::telemetry::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    // `/v1/rooms/<something the route pattern cannot hold>`, e.g. an empty name or a slash.
    if uri.path().starts_with("/v1/rooms/") {
        return ApiError::BadRoom;
    }
    ApiError::NotFound("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn publish(
    State(shared): State<Arc<ApiState>>,
    room: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let room = room_name(room)?;
    publish_room(&shared, room, &uri, &headers, body).await
}

/// A publish into `room` (already a valid name): the room route's, and the user and broadcast
/// routes' (moderation.rs).
pub(super) async fn publish_room(
    shared: &ApiState,
    room: String,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = std::time::Instant::now();
    let (shared, uri, headers) = (shared, uri, headers);
    let key = shared.api_key(headers)?;
    let body = body.map_err(ApiError::rejected)?;
    if body.len() > shared.config.hub.max_payload {
        return Err(ApiError::TooLarge);
    }
    if std::str::from_utf8(&body).is_err() {
        return Err(ApiError::BadRequest("body is not UTF-8"));
    }
    if declares_json(headers) && !is_json(&body) {
        return Err(ApiError::BadRequest("body is not valid JSON (Content-Type says application/json)"));
    }
    let sender = sender(headers)?;
    let idempotency_key = idempotency_key(headers)?;
    if let Some(answer) = forward_unless_owner(shared, &room, Method::POST, uri, headers, body.clone()).await? {
        return Ok(answer);
    }
    if !shared.rate.allow(&key, crate::clock::now_micros()) {
        return Err(ApiError::RateLimited);
    }
    let flags = if is_json(&body) { FLAG_JSON } else { 0 };
    let (reply, answer) = oneshot::channel();
    let event = HubInput::Publish { room, sender, flags, data: body, key: idempotency_key, reply };
    let ack = ask(shared, event, answer).await??;
    shared.publish_seconds.record(received.elapsed());
    Ok(Json(serde_json::json!({ "seq": ack.seq, "epoch": format_epoch(ack.epoch) })).into_response())
}

async fn room_info(
    State(shared): State<Arc<ApiState>>,
    room: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read_room(&shared, room, &uri, &headers, |room, reply| HubInput::RoomInfo { room, reply }).await
}

/// One room's state read at its owner (room info, presence): the room name (400), read rights,
/// forwarding to the owner hub, then the hub task's answer to the input `ask_for` builds around
/// the reply channel, as JSON (404 when the owner has no such room).
pub(super) async fn read_room<T: serde::Serialize>(
    shared: &ApiState,
    room: Result<Path<String>, PathRejection>,
    uri: &Uri,
    headers: &HeaderMap,
    ask_for: impl FnOnce(String, oneshot::Sender<Result<Option<T>, PublishError>>) -> HubInput,
) -> Result<Response, ApiError> {
    let room = room_name(room)?;
    shared.check_read(headers, &room)?;
    if let Some(answer) = forward_unless_owner(shared, &room, Method::GET, uri, headers, Bytes::new()).await? {
        return Ok(answer);
    }
    let (reply, answer) = oneshot::channel();
    let info = ask(shared, ask_for(room, reply), answer).await??;
    let info = info.ok_or(ApiError::NotFound("unknown room"))?;
    Ok(Json(info).into_response())
}

/// Query of the history route.
#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(shared): State<Arc<ApiState>>,
    room: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = room_name(room)?;
    shared.check_read(&headers, &room)?;
    let Query(query) = query.map_err(ApiError::rejected)?;
    let since = query.since.unwrap_or(0);
    let epoch = match query.epoch.as_deref() {
        None => None,
        Some(text) => Some(parse_epoch(text).ok_or(ApiError::BadRequest("epoch must be 1-16 hex digits"))?),
    };
    let limit = match query.limit {
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1")),
        Some(limit) => limit.min(MAX_HISTORY_LIMIT),
        None => DEFAULT_HISTORY_LIMIT,
    };
    if let Some(answer) = forward_unless_owner(&shared, &room, Method::GET, &uri, &headers, Bytes::new()).await? {
        return Ok(answer);
    }
    let (reply, answer) = oneshot::channel();
    let JoinAnswer { frames, last_seq, epoch, reset, gap } = ask(&shared, HubInput::History { room: room.clone(), since, epoch, limit, reply }, answer)
        .await??
        .ok_or(ApiError::NotFound("unknown room"))?;
    let mut body = serde_json::json!({
        "room": room,
        "epoch": format_epoch(epoch),
        "messages": frames.iter().map(message_json).collect::<Vec<_>>(),
        "last_seq": last_seq,
    });
    if reset {
        body["reset"] = serde_json::Value::Bool(true);
    }
    if let Some(lost) = gap {
        body["gap"] = serde_json::json!({ "first_lost": lost.first_lost, "last_lost": lost.last_lost, "resume_from": lost.resume_from });
    }
    Ok(Json(body).into_response())
}

/// Query of the locate route.
#[derive(Debug, serde::Deserialize)]
struct LocateQuery {
    room: Option<String>,
}

async fn locate(
    State(shared): State<Arc<ApiState>>,
    query: Result<Query<LocateQuery>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(ApiError::rejected)?;
    let room = query.room.ok_or(ApiError::BadRequest("query parameter room is required"))?;
    if !is_valid_room(&room) {
        return Err(ApiError::BadRoom);
    }
    shared.check_read(&headers, &room)?;
    if let Some(answer) = forward_unless_owner(&shared, &room, Method::GET, &uri, &headers, Bytes::new()).await? {
        return Ok(answer);
    }
    let links = lock(&shared.locator).locate(&room);
    if links.is_empty() {
        return Err(ApiError::Unavailable("no Links available"));
    }
    Ok(Json(serde_json::json!({ "room": room, "links": links })).into_response())
}

pub(super) fn room_name(room: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    // A path that does not even decode (bad percent-encoding, not UTF-8) is a bad room name too.
    let Path(room) = room.map_err(|_| ApiError::BadRoom)?;
    if is_valid_room(&room) {
        Ok(room)
    } else {
        Err(ApiError::BadRoom)
    }
}

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// True when the publisher said the body is JSON (`application/json`, any parameters).
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")))
}

fn sender(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(FROM_HEADER) {
        None => Ok("server".to_owned()),
        Some(value) => match value.to_str() {
            Ok(from) if !from.is_empty() && from.len() <= MAX_SENDER_LEN => Ok(from.to_owned()),
            _ => Err(ApiError::BadRequest("X-Linkcast-From must be 1-128 bytes of text")),
        },
    }
}

/// The optional `Idempotency-Key` header: 1-128 bytes of visible ASCII (`""` when absent).
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => Ok(String::new()),
        Some(value) => {
            let bytes = value.as_bytes();
            if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY || !bytes.iter().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::BadRequest("Idempotency-Key must be 1-128 bytes of visible ASCII"));
            }
            Ok(String::from_utf8_lossy(bytes).into_owned())
        }
    }
}

/// Sends `event` to the hub task and waits for its answer.
pub(super) async fn ask<T>(shared: &ApiState, event: HubInput, answer: oneshot::Receiver<T>) -> Result<T, ApiError> {
    shared.events.send(event).await.map_err(|_| ApiError::Unavailable("hub shutting down"))?;
    answer.await.map_err(|_| ApiError::Unavailable("hub shutting down"))
}

/// Passes the request on to `room`'s owner hub when that is another hub, and returns its answer
/// unchanged (`None`: this hub owns the room and answers itself).
pub(super) async fn forward_unless_owner(
    shared: &ApiState,
    room: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Option<Response>, ApiError> {
    match shared.owner_elsewhere(room, headers)? {
        Some(owner) => forward(shared, owner, method, uri, headers, body).await.map(Some),
        None => Ok(None),
    }
}

/// Passes the request on to the owner hub and returns its answer unchanged.
async fn forward(
    shared: &ApiState,
    owner: (SocketAddr, Option<String>),
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (owner, tls_name) = owner;
    let target = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let id = shared.id.0.to_string();
    let mut pass: Vec<(&str, &str)> = vec![(FORWARDED_HEADER, &id)];
    for name in [header::AUTHORIZATION.as_str(), FROM_HEADER, header::CONTENT_TYPE.as_str(), IDEMPOTENCY_KEY_HEADER] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            pass.push((name, value));
        }
    }
    let answer = forward::request(&shared.dialer, owner, tls_name.as_deref(), method, target, &pass, body).await.map_err(|e| {
        tracing::warn!(%owner, "forwarding to the owner hub failed: {e}");
        ApiError::Unavailable("owner hub unreachable")
    })?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.content_type.unwrap_or_else(|| "application/json".to_owned());
    let mut response = (status, [(header::CONTENT_TYPE, content_type)], answer.body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// A history frame in the WebSocket message shape: `{"room","seq","from","ts","data"}`.
fn message_json(frame: &Frame) -> serde_json::Value {
    let data = if frame.flags() & FLAG_JSON != 0 {
        serde_json::from_slice(frame.payload()).unwrap_or(serde_json::Value::Null)
    } else {
        serde_json::Value::String(String::from_utf8_lossy(frame.payload()).into_owned())
    };
    serde_json::json!({
        "room": frame.room(),
        "seq": frame.seq(),
        "from": frame.sender(),
        "ts": frame.ts_micros(),
        "data": data,
    })
}
