//! The operator's API on users (issue 15), hub side: push to a user or to everyone, kick, ban,
//! revoke tokens, remove from a room, and look a user up.
//!
//! ```text
//!  POST /v1/users/{uid}/messages ─┐ publish scope: a room publish into `user:{uid}` / `all`
//!  POST /v1/broadcast ────────────┘ (http.rs `publish_room`, forwarded to the room's owner)
//!  POST /v1/users/{uid}/disconnect|revoke, POST /v1/rooms/{room}/members/{uid}/remove,
//!  GET /v1/users/{uid} ── admin scope ──▶ owner hub of `user:{uid}` (forwarded, forward.rs)
//!      ──HubInput::Moderation──▶ hub task ──Moderate / UserQuery (sender = uid)──▶ every Link
//!                                        ◀──UserInfo {request, link, json}── each Link
//! ```
//!
//! The owner hub of `user:{uid}` keeps the user's ban (`until`, seconds) and revocation
//! (`before`, seconds) in [`HubModeration`], owned by the hub task (driver.rs) like the room
//! table: in memory, and with `[store] redis` also in the hashes `{prefix}:bans` and
//! `{prefix}:revoked` (written on every change, read at start and every
//! [`STORE_REFRESH`] so a hub that takes over the user's personal room has them). Each Link gets
//! every ban still running and every revocation again when it connects (`LinkEvent::Up`), so a
//! Link started after a ban enforces it. Every action is idempotent (a second ban keeps the later
//! end; a second revocation the later time) and logged with `tracing::info!`.
//!
//! An action is followed on each Link's queue by a `UserQuery`: a Link handles its hub's frames
//! in order, so its answer means it applied the action. The HTTP answer waits for every Link's
//! (up to [`QUERY_TIMEOUT`]) and lists the rest in `incomplete_links`. A Link whose queue
//! overflows on one of these frames is dropped (it reconnects and gets bans and revocations
//! again), never skipped silently.
//!
//! A `GET /v1/users/{uid}` asks every connected Link (`UserQuery`) and waits up to
//! [`QUERY_TIMEOUT`] for their `UserInfo` answers; Links that did not answer are listed in
//! `incomplete_links`. At most [`MAX_QUERIES`] queries wait at once (503 beyond).
//!
//! The hub also refuses a client `Publish` frame into `all` or a `user:*` room, whatever Link
//! sent it (403 `room is read-only for clients`): only this API writes there.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::{mpsc, oneshot};

use linkcast_core::frame::{
    is_valid_room, ArchivedBody, Body, Frame, FrameBuilder, Kind, MODERATE_BAN, MODERATE_DISCONNECT, MODERATE_REMOVE, MODERATE_REVOKE,
};
use linkcast_core::link_queue::Admit;
use linkcast_core::placement::LinkId;
use linkcast_core::protocol::{ClientError, Refusal};
use linkcast_core::system_rooms::{is_server_only, personal_room, BROADCAST_ROOM};

use super::driver::{HubInput, HubTask};
use super::error::ApiError;
use super::http::{ask, forward_unless_owner, publish_room};
use super::ApiState;
use crate::clock::now_micros;

/// Time `GET /v1/users/{uid}` waits for the Links' answers.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Most user queries waiting for Links at once.
pub(crate) const MAX_QUERIES: usize = 1024;

/// Most bans (and, apart, revocations) a hub keeps; beyond, ended bans go, then the entry that
/// ends (or began) first.
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

/// How often a hub with a Redis store re-reads bans and revocations.
pub(crate) const STORE_REFRESH: Duration = Duration::from_secs(3);

/// Longest operator reason kept (it becomes a close reason of at most 123 bytes at the Link).
const MAX_REASON: usize = 1024;

/// What an HTTP handler asks the hub task (through `HubInput::Moderation`).
#[derive(Debug)]
pub(crate) enum ModerationInput {
    /// Apply `action` to `user` and tell every connected Link.
    Act {
        /// The user.
        user: String,
        /// A `MODERATE_*` action.
        action: u8,
        /// Operator's reason.
        reason: String,
        /// Ban end / revocation time (seconds), else 0.
        until: u64,
        /// The room of a removal, else empty.
        room: String,
        /// The user's state after the action, and the Links asked to confirm it (a `UserQuery`
        /// sent behind the action: a Link that answers it has applied the action).
        reply: oneshot::Sender<Pending>,
    },
    /// Ask every connected Link for the user's connections.
    Query {
        /// The user.
        user: String,
        /// The user's state, the Links asked and where their answers arrive; `None` when too
        /// many queries wait.
        reply: oneshot::Sender<Option<Pending>>,
    },
    /// Bans and revocations read from the store (merged: the later time wins).
    Stored {
        /// user → banned until.
        bans: Vec<(String, u64)>,
        /// user → tokens issued before this are refused.
        revoked: Vec<(String, u64)>,
    },
}

/// A user's ban and revocation, as the owner hub holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UserState {
    /// Banned until (seconds), while the ban runs.
    pub(crate) banned_until: Option<u64>,
    /// Tokens issued before this (seconds) are refused.
    pub(crate) revoked_before: Option<u64>,
}

/// A user query in progress.
#[derive(Debug)]
pub(crate) struct Pending {
    state: UserState,
    links: Vec<u32>,
    answers: mpsc::Receiver<(u32, Vec<u8>)>,
}

impl Pending {
    /// An action sent to `links` that none will confirm (too many queries waiting): every Link
    /// is listed as not having answered.
    fn unconfirmed(state: UserState, links: Vec<u32>) -> Self {
        let (_, answers) = mpsc::channel(1);
        Pending { state, links, answers }
    }

    /// Waits up to [`QUERY_TIMEOUT`] for every asked Link's answer: the answers (one per Link)
    /// and the Links that did not answer in time.
    async fn gather(mut self) -> (UserState, Vec<(u32, Vec<u8>)>, Vec<u32>) {
        let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
        let mut answered = HashSet::new();
        let mut answers = Vec::with_capacity(self.links.len());
        while answered.len() < self.links.len() {
            let Ok(Some((link, json))) = tokio::time::timeout_at(deadline, self.answers.recv()).await else { break };
            if answered.insert(link) {
                answers.push((link, json));
            }
        }
        let incomplete = self.links.iter().copied().filter(|link| !answered.contains(link)).collect();
        (self.state, answers, incomplete)
    }
}

/// A write for the store task.
#[derive(Debug)]
pub(crate) enum StoreWrite {
    /// `HSET {prefix}:bans user until`.
    Ban(String, u64),
    /// `HSET {prefix}:revoked user before`.
    Revoke(String, u64),
}

/// Most store writes waiting for the store task (beyond, a write is dropped and logged; the hub
/// still holds the entry in memory).
pub(crate) const MAX_STORE_WRITES: usize = 4096;

/// Keeps `{prefix}:bans` / `{prefix}:revoked` in Redis in step with the hub task: writes what
/// it is sent, and every [`STORE_REFRESH`] (and at start) reads both hashes back into the hub
/// task (`ModerationInput::Stored`), forgetting ended bans there.
pub(crate) async fn run_store(
    store: crate::store::RedisStore,
    mut writes: mpsc::Receiver<StoreWrite>,
    events: mpsc::Sender<HubInput>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(STORE_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            write = writes.recv() => {
                let Some(write) = write else { return };
                let (table, user, secs) = match &write {
                    StoreWrite::Ban(user, until) => ("bans", user, *until),
                    StoreWrite::Revoke(user, before) => ("revoked", user, *before),
                };
                if let Err(error) = store.moderation_set(table, user, secs).await {
                    tracing::warn!(%error, user = %user, table, "could not store a moderation entry (kept in memory)");
                }
            }
            _ = tick.tick() => {
                let now_secs = now_micros() / 1_000_000;
                let (bans, revoked) = match (store.moderation_all("bans").await, store.moderation_all("revoked").await) {
                    (Ok(bans), Ok(revoked)) => (bans, revoked),
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::warn!(%error, "could not read bans and revocations from the store");
                        continue;
                    }
                };
                let (running, ended): (Vec<_>, Vec<_>) = bans.into_iter().partition(|(_, until)| *until > now_secs);
                let ended: Vec<String> = ended.into_iter().map(|(user, _)| user).collect();
                if let Err(error) = store.moderation_forget("bans", &ended).await {
                    tracing::warn!(%error, "could not forget ended bans in the store");
                }
                let input = ModerationInput::Stored { bans: running, revoked };
                if events.send(HubInput::Moderation(input)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `user → seconds`, bounded.
#[derive(Debug, Default)]
struct Table(HashMap<String, u64>);

impl Table {
    /// Keeps the later of `secs` and what is there; true if it changed.
    fn set(&mut self, user: &str, secs: u64, expired: u64) -> bool {
        if let Some(at) = self.0.get_mut(user) {
            let changed = secs > *at;
            *at = (*at).max(secs);
            return changed;
        }
        if self.0.len() >= MAX_ENTRIES {
            self.0.retain(|_, at| *at > expired);
        }
        if self.0.len() >= MAX_ENTRIES {
            if let Some(first) = self.0.iter().min_by_key(|(_, at)| **at).map(|(user, _)| user.clone()) {
                self.0.remove(&first);
            }
        }
        self.0.insert(user.to_owned(), secs);
        true
    }
}

/// The hub task's moderation state (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct HubModeration {
    bans: Table,
    revoked: Table,
    /// Query id → where its answers go.
    queries: HashMap<u64, mpsc::Sender<(u32, Vec<u8>)>>,
    next_query: u64,
    /// With a Redis store: the writer task's inbox.
    store: Option<mpsc::Sender<StoreWrite>>,
}

impl HubModeration {
    /// With a store writer (`[store] redis`, [`run_store`]).
    pub(crate) fn with_store(store: Option<mpsc::Sender<StoreWrite>>) -> Self {
        HubModeration { store, ..HubModeration::default() }
    }

    fn state(&self, user: &str, now_secs: u64) -> UserState {
        UserState {
            banned_until: self.bans.0.get(user).copied().filter(|until| *until > now_secs),
            revoked_before: self.revoked.0.get(user).copied(),
        }
    }

    /// Every ban still running and every revocation, as frames for a Link that just connected.
    fn frames_for_new_link(&self, now_secs: u64) -> Vec<Frame> {
        let bans = self.bans.0.iter().filter(|(_, until)| **until > now_secs).map(|(user, until)| moderate(user, MODERATE_BAN, "", *until, ""));
        let revoked = self.revoked.0.iter().map(|(user, before)| moderate(user, MODERATE_REVOKE, "", *before, ""));
        bans.chain(revoked).collect()
    }
}

/// The `Moderate` frame for `action` on `user`.
fn moderate(user: &str, action: u8, reason: &str, until: u64, room: &str) -> Frame {
    let code = match action {
        MODERATE_DISCONNECT => 4000,
        MODERATE_BAN => 4001,
        MODERATE_REVOKE => 4002,
        _ => 0,
    };
    FrameBuilder::new(room).sender(user).build(&Body::Moderate { action, code, reason: reason.to_owned(), until_secs: until })
}

impl HubTask {
    /// Serves a moderation input (from HTTP or the store task).
    pub(super) fn handle_moderation(&mut self, input: ModerationInput) {
        let now_secs = now_micros() / 1_000_000;
        match input {
            ModerationInput::Act { user, action, reason, until, room, reply } => {
                tracing::info!(user = %user, action = action_name(action), reason = %reason, until, room = %room, "operator action");
                match action {
                    MODERATE_BAN if self.moderation.bans.set(&user, until, now_secs) => {
                        if let Some(store) = &self.moderation.store {
                            if store.try_send(StoreWrite::Ban(user.clone(), until)).is_err() {
                                tracing::warn!(user = %user, "store writes backed up: ban kept in memory only");
                            }
                        }
                    }
                    MODERATE_REVOKE if self.moderation.revoked.set(&user, until, 0) => {
                        if let Some(store) = &self.moderation.store {
                            if store.try_send(StoreWrite::Revoke(user.clone(), until)).is_err() {
                                tracing::warn!(user = %user, "store writes backed up: revocation kept in memory only");
                            }
                        }
                    }
                    _ => {}
                }
                // Each Link handles its hub's frames in order: its answer to a query sent behind
                // the action says it applied it (its table set, its connections told). Over
                // [`MAX_QUERIES`] the action still goes out, unconfirmed; a Link dropped for
                // overflow is listed as not having answered.
                let links = self.link_ids();
                self.offer_all(&moderate(&user, action, &reason, until, &room));
                let state = self.moderation.state(&user, now_secs);
                let pending = match self.query_links(&user) {
                    Some(answers) => Pending { state, links, answers },
                    None => Pending::unconfirmed(state, links),
                };
                let _ = reply.send(pending);
            }
            ModerationInput::Query { user, reply } => {
                let state = self.moderation.state(&user, now_secs);
                let links = self.link_ids();
                let pending = self.query_links(&user).map(|answers| Pending { state, links, answers });
                let _ = reply.send(pending);
            }
            ModerationInput::Stored { bans, revoked } => {
                // What this hub did not know yet (it restarted, or took the user over) also goes
                // to the Links connected now; later ones get it on connect.
                let mut learnt = Vec::new();
                for (user, until) in bans {
                    if until > now_secs && self.moderation.bans.set(&user, until, now_secs) {
                        learnt.push(moderate(&user, MODERATE_BAN, "", until, ""));
                    }
                }
                for (user, before) in revoked {
                    if self.moderation.revoked.set(&user, before, 0) {
                        learnt.push(moderate(&user, MODERATE_REVOKE, "", before, ""));
                    }
                }
                for frame in &learnt {
                    self.offer_all(frame);
                }
            }
        }
    }

    /// Sends a `UserQuery` for `user` to every connected Link: where the answers arrive; `None`
    /// when [`MAX_QUERIES`] queries wait already.
    fn query_links(&mut self, user: &str) -> Option<mpsc::Receiver<(u32, Vec<u8>)>> {
        self.moderation.queries.retain(|_, answers| !answers.is_closed());
        if self.moderation.queries.len() >= MAX_QUERIES {
            return None;
        }
        self.moderation.next_query += 1;
        let request = self.moderation.next_query;
        let (tx, answers) = mpsc::channel(self.links.len().max(1));
        self.moderation.queries.insert(request, tx);
        self.offer_all(&FrameBuilder::new("").sender(user).build(&Body::UserQuery { request }));
        Some(answers)
    }

    /// Queues `frame` for every connected Link. A Link whose queue overflows (twice its limit)
    /// is dropped, as for any frame that must not be lost (driver.rs): it reconnects and gets
    /// every running ban and revocation again.
    fn offer_all(&mut self, frame: &Frame) {
        let overflowed: Vec<LinkId> = self
            .links
            .iter_mut()
            .filter_map(|(link, connected)| (connected.queue.offer(frame.clone()) == Admit::Overflow).then_some(*link))
            .collect();
        for link in overflowed {
            tracing::warn!(%link, kind = ?frame.kind(), "link queue overflow: closing the link (it will reconnect)");
            self.drop_link(now_micros(), link, "link queue overflow");
        }
    }

    /// The connected Links, in order.
    fn link_ids(&self) -> Vec<u32> {
        let mut links: Vec<u32> = self.links.keys().map(|link| link.0).collect();
        links.sort_unstable();
        links
    }

    /// A Link connected: it gets every running ban and every revocation.
    pub(super) fn moderation_link_up(&mut self, link: LinkId) {
        let frames = self.moderation.frames_for_new_link(now_micros() / 1_000_000);
        if let Some(connected) = self.links.get_mut(&link) {
            let total = frames.len();
            let refused = frames.into_iter().filter(|frame| connected.queue.offer(frame.clone()) == Admit::Overflow).count();
            if refused > 0 {
                // Only with far more entries than a Link queue holds (its limit twice over).
                tracing::error!(%link, refused, total, "bans and revocations beyond the link queue's limit were not sent to the link");
            }
        }
    }

    /// Takes the Link frames that are this file's: `UserInfo` answers, and client publishes into
    /// server-only rooms (refused 403). True when `frame` was taken.
    pub(super) fn moderation_link_frame(&mut self, link: LinkId, frame: &Frame) -> bool {
        match (frame.kind(), frame.body()) {
            (Kind::UserInfo, ArchivedBody::UserInfo { request, json, .. }) => {
                let request = request.to_native();
                if let Some(answers) = self.moderation.queries.get(&request) {
                    if answers.try_send((link.0, json.as_slice().to_vec())).is_err() && answers.is_closed() {
                        self.moderation.queries.remove(&request);
                    }
                }
                true
            }
            (Kind::Publish, ArchivedBody::Publish { request, .. }) if is_server_only(frame.room()) => {
                let (Refusal::Error(code, reason) | Refusal::Close(code, reason)) = ClientError::ReadOnlyRoom.refusal();
                self.refuse_link_publish(now_micros(), link, frame.room(), request.to_native(), code, reason);
                true
            }
            _ => false,
        }
    }
}

fn action_name(action: u8) -> &'static str {
    match action {
        MODERATE_DISCONNECT => "disconnect",
        MODERATE_BAN => "ban",
        MODERATE_REVOKE => "revoke",
        MODERATE_REMOVE => "remove",
        _ => "unknown",
    }
}

// ---- HTTP handlers ----

fn user_id(uid: Result<Path<String>, PathRejection>) -> Result<(String, String), ApiError> {
    let Path(uid) = uid.map_err(|_| ApiError::BadRequest("invalid user id"))?;
    let room = personal_room(&uid).ok_or(ApiError::BadRequest("invalid user id (user:{uid} must be a valid room name)"))?;
    Ok((uid, room))
}

/// A JSON object body (an empty body is `{}`).
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|_| ApiError::BadRequest("body must be a JSON object with the documented fields"))
}

fn reason_of(reason: Option<String>) -> Result<String, ApiError> {
    let reason = reason.unwrap_or_default();
    if reason.len() > MAX_REASON {
        return Err(ApiError::BadRequest("reason is longer than 1024 bytes"));
    }
    Ok(reason)
}

/// `POST /v1/users/{uid}/messages`: a publish into `user:{uid}`.
pub(super) async fn user_messages(
    State(shared): State<Arc<ApiState>>,
    uid: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (_, room) = user_id(uid)?;
    publish_room(&shared, room, &uri, &headers, body).await
}

/// `POST /v1/broadcast`: a publish into `all`.
pub(super) async fn broadcast(
    State(shared): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    publish_room(&shared, BROADCAST_ROOM.to_owned(), &uri, &headers, body).await
}

/// What an action came to: the user's state after it, and the connected Links that did not
/// confirm it within [`QUERY_TIMEOUT`] (they apply it when its frame reaches them).
struct Acted {
    state: UserState,
    incomplete_links: Vec<u32>,
}

/// Asks the hub task to apply an action, and waits until every connected Link has applied it
/// (or [`QUERY_TIMEOUT`]).
async fn act(shared: &ApiState, user: &str, action: u8, reason: String, until: u64, room: String) -> Result<Acted, ApiError> {
    let (reply, answer) = oneshot::channel();
    let input = ModerationInput::Act { user: user.to_owned(), action, reason, until, room, reply };
    let (state, _, incomplete_links) = ask(shared, HubInput::Moderation(input), answer).await?.gather().await;
    Ok(Acted { state, incomplete_links })
}

/// Where an operator's action on a user is answered: here, with the user id and the parsed
/// body, or by the owner hub of `user:{uid}` (its answer, as it is).
enum Action<B> {
    Here { uid: String, body: B },
    Forwarded(Response),
}

/// What every operator action on a user starts with: the `admin` scope (401/403), the user id
/// (400), the JSON body (400), then forwarding to the owner hub of `user:{uid}` (where the
/// handler runs again and checks the body's fields).
async fn admin_action<B: Default + serde::de::DeserializeOwned>(
    shared: &ApiState,
    uid: Result<Path<String>, PathRejection>,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Action<B>, ApiError> {
    shared.check_admin(headers)?;
    let (uid, room) = user_id(uid)?;
    let body = body.map_err(ApiError::rejected)?;
    let request: B = json_body(&body)?;
    Ok(match forward_unless_owner(shared, &room, Method::POST, uri, headers, body).await? {
        Some(answer) => Action::Forwarded(answer),
        None => Action::Here { uid, body: request },
    })
}

/// Body of `POST /v1/users/{uid}/disconnect`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    reason: Option<String>,
    ban_seconds: Option<u64>,
}

/// `POST /v1/users/{uid}/disconnect {"reason"?, "ban_seconds"?}`.
pub(super) async fn disconnect(
    State(shared): State<Arc<ApiState>>,
    uid: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (uid, request) = match admin_action::<DisconnectBody>(&shared, uid, &uri, &headers, body).await? {
        Action::Forwarded(answer) => return Ok(answer),
        Action::Here { uid, body } => (uid, body),
    };
    let reason = reason_of(request.reason)?;
    let acted = match request.ban_seconds.filter(|s| *s > 0) {
        Some(seconds) => {
            let until = (now_micros() / 1_000_000).saturating_add(seconds);
            act(&shared, &uid, MODERATE_BAN, reason, until, String::new()).await?
        }
        None => act(&shared, &uid, MODERATE_DISCONNECT, reason, 0, String::new()).await?,
    };
    let answer = serde_json::json!({
        "user": uid,
        "disconnected": true,
        "banned_until": acted.state.banned_until,
        "incomplete_links": acted.incomplete_links,
    });
    Ok(Json(answer).into_response())
}

/// Body of `POST /v1/users/{uid}/revoke`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    before: Option<u64>,
}

/// `POST /v1/users/{uid}/revoke {"before": S}`.
pub(super) async fn revoke(
    State(shared): State<Arc<ApiState>>,
    uid: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (uid, request) = match admin_action::<RevokeBody>(&shared, uid, &uri, &headers, body).await? {
        Action::Forwarded(answer) => return Ok(answer),
        Action::Here { uid, body } => (uid, body),
    };
    let before = request.before.ok_or(ApiError::BadRequest("before (seconds since the Unix epoch) is required"))?;
    let acted = act(&shared, &uid, MODERATE_REVOKE, String::new(), before, String::new()).await?;
    let answer = serde_json::json!({
        "user": uid,
        "revoked_before": acted.state.revoked_before,
        "incomplete_links": acted.incomplete_links,
    });
    Ok(Json(answer).into_response())
}

/// Body of `POST /v1/rooms/{room}/members/{uid}/remove`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    reason: Option<String>,
}

/// `POST /v1/rooms/{room}/members/{uid}/remove {"reason"?}`.
pub(super) async fn remove(
    State(shared): State<Arc<ApiState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    shared.check_admin(&headers)?;
    let Path((target, uid)) = path.map_err(|_| ApiError::BadRoom)?;
    if !is_valid_room(&target) {
        return Err(ApiError::BadRoom);
    }
    let (uid, request) = match admin_action::<RemoveBody>(&shared, Ok(Path(uid)), &uri, &headers, body).await? {
        Action::Forwarded(answer) => return Ok(answer),
        Action::Here { uid, body } => (uid, body),
    };
    let reason = reason_of(request.reason)?;
    let acted = act(&shared, &uid, MODERATE_REMOVE, reason, 0, target.clone()).await?;
    let answer = serde_json::json!({ "room": target, "user": uid, "removed": true, "incomplete_links": acted.incomplete_links });
    Ok(Json(answer).into_response())
}

/// `GET /v1/users/{uid}`: the user's connections on every Link, its ban and revocation.
pub(super) async fn user(
    State(shared): State<Arc<ApiState>>,
    uid: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shared.check_admin(&headers)?;
    let (uid, room) = user_id(uid)?;
    if let Some(answer) = forward_unless_owner(&shared, &room, Method::GET, &uri, &headers, Bytes::new()).await? {
        return Ok(answer);
    }
    let (reply, answer) = oneshot::channel();
    let input = ModerationInput::Query { user: uid.clone(), reply };
    let pending =
        ask(&shared, HubInput::Moderation(input), answer).await?.ok_or(ApiError::Unavailable("too many user queries waiting"))?;
    let (state, answers, incomplete) = pending.gather().await;
    let mut connections = Vec::new();
    for (link, json) in answers {
        let Ok(serde_json::Value::Array(entries)) = serde_json::from_slice::<serde_json::Value>(&json) else { continue };
        for mut entry in entries {
            if let Some(object) = entry.as_object_mut() {
                object.insert("link".into(), link.into());
                connections.push(entry);
            }
        }
    }
    Ok(Json(serde_json::json!({
        "user": uid,
        "connections": connections,
        "banned_until": state.banned_until,
        "revoked_before": state.revoked_before,
        "incomplete_links": incomplete,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keep_the_later_time_and_stay_bounded() {
        let mut table = Table::default();
        assert!(table.set("bob", 10, 0));
        assert!(!table.set("bob", 5, 0), "an earlier time changes nothing");
        assert!(table.set("bob", 20, 0));
        assert_eq!(table.0.get("bob"), Some(&20));
    }

    #[test]
    fn a_new_link_gets_running_bans_and_every_revocation() {
        let mut moderation = HubModeration::default();
        moderation.bans.set("over", 5, 0);
        moderation.bans.set("bob", 100, 0);
        moderation.revoked.set("eve", 7, 0);
        let frames = moderation.frames_for_new_link(50);
        let mut seen: Vec<(String, u8, u64)> = frames
            .iter()
            .map(|f| match f.body() {
                ArchivedBody::Moderate { action, until_secs, .. } => (f.sender().to_owned(), *action, until_secs.to_native()),
                _ => panic!("not a moderate frame"),
            })
            .collect();
        seen.sort();
        assert_eq!(seen, vec![("bob".into(), MODERATE_BAN, 100), ("eve".into(), MODERATE_REVOKE, 7)]);
        assert_eq!(moderation.state("bob", 50), UserState { banned_until: Some(100), revoked_before: None });
        assert_eq!(moderation.state("over", 50), UserState::default(), "an ended ban is not reported");
    }
}
