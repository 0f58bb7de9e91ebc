//! An operator's actions on a user, at the Link (issue 15): what the Link remembers (bans and
//! token revocations), how it refuses a banned or revoked client at connect, and how a hub's
//! `Moderate` / `UserQuery` frame reaches the user's connections.
//!
//! ```text
//!  owner hub of user:{uid} ──Moderate / UserQuery (sender = uid)──▶ coordinator
//!     ├─ BAN / REVOKE: remembered in [`Moderation`] (shared with every shard's admission)
//!     └─ users registry: uid → connection ids ──ShardMsg::Moderate──▶ shard ──▶ mailbox
//!           ──▶ the connection (`connection.rs`): close 4000/4001/4002, `removed`, or its rooms
//! ```
//!
//! - [`Moderation`]: `user → banned until` and `user → tokens issued before this are refused`,
//!   each capped at [`MAX_ENTRIES`] (beyond it, expired bans are dropped, then the entry that
//!   ends first). Checked at the WebSocket upgrade (token in the URL: HTTP 403 with
//!   `{"error":"banned","until":S}` or `{"error":"token revoked"}`), after an `auth` message
//!   (close 4001 / 4002) and at a QUIC `Hello` (application close 4001 / 4002).
//! - `shard::ConnAction`: what one connection is asked to do; the connection applies it itself,
//!   on its shard, since only its session knows its token's `iat` and its rooms.
//! - [`LinkModeration`]: the coordinator's part: turns a hub frame into `ConnAction`s for the
//!   user's connections (found in the Link-wide users registry) and, for a `UserQuery`, gathers
//!   the connections' rooms (each answers within [`QUERY_TIMEOUT`] or is listed without them)
//!   and answers the hub with one `UserInfo` frame.
//!
//! Bans and revocations are the owner hub's to keep; the Link's copy is re-sent by every hub on
//! connect, so a Link that (re)starts learns them before it matters much.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, MODERATE_BAN, MODERATE_DISCONNECT, MODERATE_REMOVE, MODERATE_REVOKE};
use linkcast_core::placement::LinkId;
use linkcast_core::protocol::ClientError;
use linkcast_core::system_rooms::user_key;

use super::registry::Users;
use super::shard::{shard_of, ConnAction, ShardMsg};
use super::shard_inbox::ShardSender;
use crate::clock::now_micros;

/// Most bans (and, apart, most revocations) a Link remembers.
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

/// Time a connection has to tell its rooms for a `UserQuery`.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest close reason a WebSocket close frame carries (125 bytes of payload minus the code).
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// Why a client is refused at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Banned until this time (seconds since the Unix epoch).
    Banned {
        /// End of the ban.
        until: u64,
    },
    /// The token was issued before the user's revocation time (or has no `iat`).
    Revoked,
}

impl Refused {
    /// The close a connection that authenticated after its upgrade gets.
    pub(crate) fn error(self) -> ClientError {
        match self {
            Refused::Banned { .. } => ClientError::Banned,
            Refused::Revoked => ClientError::TokenRevoked,
        }
    }

    /// The JSON body of the upgrade's HTTP 403.
    pub(crate) fn body(self) -> String {
        match self {
            Refused::Banned { until } => serde_json::json!({ "error": "banned", "until": until }).to_string(),
            Refused::Revoked => serde_json::json!({ "error": "token revoked" }).to_string(),
        }
    }
}

/// `user → seconds`, bounded (see the module docs).
#[derive(Debug, Default)]
struct Table(HashMap<String, u64>);

impl Table {
    /// Keeps the later of `secs` and what is there. `expired`: entries at or below it may go.
    fn set(&mut self, user: &str, secs: u64, expired: u64) {
        if let Some(at) = self.0.get_mut(user) {
            *at = (*at).max(secs);
            return;
        }
        if self.0.len() >= MAX_ENTRIES {
            self.0.retain(|_, at| *at > expired);
        }
        if self.0.len() >= MAX_ENTRIES {
            let first = self.0.iter().min_by_key(|(_, at)| **at).map(|(user, _)| user.clone());
            if let Some(first) = first {
                self.0.remove(&first);
            }
        }
        self.0.insert(user.to_owned(), secs);
    }

    fn get(&self, user: &str) -> Option<u64> {
        self.0.get(user).copied()
    }
}

/// The Link's bans and revocations (one per Link, shared by every shard; a cold path: touched
/// at connect and by operators only).
#[derive(Debug, Default)]
pub(crate) struct Moderation {
    bans: Mutex<Table>,
    revoked: Mutex<Table>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Moderation {
    /// Bans `user` until `until` (seconds); a later ban wins.
    pub(crate) fn ban(&self, user: &str, until: u64, now_secs: u64) {
        lock(&self.bans).set(user, until, now_secs);
    }

    /// Refuses `user`'s tokens issued before `before` (seconds); a later time wins.
    pub(crate) fn revoke(&self, user: &str, before: u64) {
        // Revocations do not expire; when full, the oldest goes first.
        lock(&self.revoked).set(user, before, 0);
    }

    /// Whether user `sub` with a token issued at `iat` may connect at `now_secs`.
    pub(crate) fn check(&self, sub: &str, iat: Option<u64>, now_secs: u64) -> Result<(), Refused> {
        let ban = lock(&self.bans).get(sub);
        if let Some(until) = ban.filter(|until| *until > now_secs) {
            return Err(Refused::Banned { until });
        }
        if ban.is_some() {
            // Over: forgotten.
            let mut bans = lock(&self.bans);
            if bans.get(sub).is_some_and(|until| until <= now_secs) {
                bans.0.remove(sub);
            }
        }
        match lock(&self.revoked).get(sub) {
            Some(before) if is_revoked(iat, before) => Err(Refused::Revoked),
            _ => Ok(()),
        }
    }
}

/// A token issued at `iat` is refused by a revocation at `before` (no `iat`: refused).
pub(crate) fn is_revoked(iat: Option<u64>, before: u64) -> bool {
    iat.is_none_or(|iat| iat < before)
}

/// `reason`, or `fallback` when empty, cut to [`MAX_CLOSE_REASON`] bytes at a char boundary.
pub(crate) fn close_reason(reason: &str, fallback: &str) -> Box<str> {
    let text = if reason.is_empty() { fallback } else { reason };
    let mut end = text.len().min(MAX_CLOSE_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

/// The coordinator's handling of `Moderate` and `UserQuery` frames (see the module docs).
#[derive(Debug)]
pub(crate) struct LinkModeration {
    link: LinkId,
    users: Arc<Users>,
    moderation: Arc<Moderation>,
}

impl LinkModeration {
    /// For Link `link`, reaching users through `users`, remembering in `moderation`.
    pub(crate) fn new(link: LinkId, users: Arc<Users>, moderation: Arc<Moderation>) -> Self {
        LinkModeration { link, users, moderation }
    }

    /// Handles a hub's `Moderate` or `UserQuery` frame; `to_hub` takes a `UserInfo` answer.
    pub(crate) async fn handle(&self, frame: &Frame, shards: &[ShardSender], to_hub: Option<mpsc::Sender<Frame>>) {
        let user = frame.sender();
        match frame.body() {
            ArchivedBody::Moderate { action, reason, until_secs, .. } => {
                let action = *action;
                let until = until_secs.to_native();
                let reason = reason.as_str();
                tracing::info!(link = %self.link, user, action, reason, until, room = frame.room(), "moderation");
                let per_conn = |_: u64| match action {
                    MODERATE_DISCONNECT => Some(ConnAction::Close { error: ClientError::Kicked, reason: close_reason(reason, "kicked") }),
                    MODERATE_BAN => Some(ConnAction::Close { error: ClientError::Banned, reason: close_reason(reason, "banned") }),
                    MODERATE_REVOKE => Some(ConnAction::Revoke { before: until }),
                    MODERATE_REMOVE => Some(ConnAction::Remove { room: frame.room().into(), reason: reason.into() }),
                    _ => None,
                };
                match action {
                    MODERATE_BAN => self.moderation.ban(user, until, now_micros() / 1_000_000),
                    MODERATE_REVOKE => self.moderation.revoke(user, until),
                    _ => {}
                }
                for conn in self.users.connections(&user_key(user)) {
                    if let (Some(action), Some(shard)) = (per_conn(conn.id), shards.get(shard_of(conn.id))) {
                        shard.send(ShardMsg::Moderate { id: conn.id, action: Box::new(action) });
                    }
                }
            }
            ArchivedBody::UserQuery { request } => {
                let request = request.to_native();
                let Some(to_hub) = to_hub else { return };
                let conns = self.users.connections(&user_key(user));
                let mut asked = Vec::with_capacity(conns.len());
                for conn in conns {
                    let (reply, rooms) = oneshot::channel();
                    if let Some(shard) = shards.get(shard_of(conn.id)) {
                        shard.send(ShardMsg::Moderate { id: conn.id, action: Box::new(ConnAction::Query(reply)) });
                    }
                    asked.push((conn, rooms));
                }
                let (link, user) = (self.link, user.to_owned());
                // Answered off the coordinator's loop: connections reply from their shards.
                tokio::spawn(async move {
                    let mut list = Vec::with_capacity(asked.len());
                    for (conn, rooms) in asked {
                        // A connection that ended meanwhile drops its reply: not listed.
                        let Ok(Ok(rooms)) = tokio::time::timeout(QUERY_TIMEOUT, rooms).await else { continue };
                        list.push(serde_json::json!({
                            "conn": conn.id,
                            "transport": if conn.quic { "quic" } else { "ws" },
                            "rooms": rooms,
                            "connected_since": conn.since_micros,
                        }));
                    }
                    let json = serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec());
                    let answer = FrameBuilder::new("").sender(&user).build(&Body::UserInfo { request, link: link.0, json });
                    let _ = to_hub.send(answer).await;
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_end_and_revocations_refuse_older_tokens() {
        let moderation = Moderation::default();
        moderation.ban("bob", 100, 50);
        assert_eq!(moderation.check("bob", Some(1), 99), Err(Refused::Banned { until: 100 }));
        assert_eq!(moderation.check("alice", None, 99), Ok(()));
        assert_eq!(moderation.check("bob", Some(1), 100), Ok(()), "over at its end");
        assert!(lock(&moderation.bans).0.is_empty(), "an ended ban is forgotten");
        moderation.revoke("bob", 500);
        assert_eq!(moderation.check("bob", Some(499), 600), Err(Refused::Revoked));
        assert_eq!(moderation.check("bob", None, 600), Err(Refused::Revoked), "no iat: refused");
        assert_eq!(moderation.check("bob", Some(500), 600), Ok(()));
        moderation.revoke("bob", 400);
        assert_eq!(moderation.check("bob", Some(450), 600), Err(Refused::Revoked), "the later time stays");
        assert_eq!(Refused::Banned { until: 7 }.body(), r#"{"error":"banned","until":7}"#);
        assert_eq!(Refused::Revoked.body(), r#"{"error":"token revoked"}"#);
    }

    #[test]
    fn a_full_table_drops_expired_then_the_first_to_end() {
        let mut table = Table::default();
        for n in 0..MAX_ENTRIES as u64 {
            table.0.insert(format!("u{n}"), 1_000 + n);
        }
        table.set("new", 5_000_000, 0);
        assert_eq!(table.0.len(), MAX_ENTRIES);
        assert_eq!(table.get("u0"), None, "the entry that ends first went");
        table.set("newer", 5_000_000, 1_010);
        assert_eq!(table.0.len(), MAX_ENTRIES - 10 + 1, "expired entries went first (ten), then it came in");
    }

    #[test]
    fn close_reasons_fit_a_close_frame_at_a_char_boundary() {
        assert_eq!(&*close_reason("", "kicked"), "kicked");
        assert_eq!(&*close_reason("spam", "kicked"), "spam");
        let long = "é".repeat(100);
        let cut = close_reason(&long, "kicked");
        assert!(cut.len() <= MAX_CLOSE_REASON && cut.len() == 122, "{}", cut.len());
    }
}
