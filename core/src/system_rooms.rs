//! The rooms linkcast keeps for every connection, besides the ones its client joins: the
//! personal room `user:{sub}` (push to one user, all of its sessions; unless
//! `link.personal_room = false`) and the broadcast room `all` (push to everyone, unless
//! `link.broadcast_room = false`). A room the Link leaves out is the client's to join.
//!
//! They are rooms like any other — seq, epoch, history, resume — so a push is never lost across
//! a reconnect; what sets them apart is who may write: only the HTTP API (`POST
//! /v1/users/{uid}/messages`, `POST /v1/broadcast`), never a client ([`is_server_only`]), and
//! who may join: a connection its own personal room and `all`, whatever its token's `rooms`,
//! and nobody another user's personal room ([`may_join`]).
//!
//! ```text
//!  POST /v1/users/bob/messages ─▶ owner hub of "user:bob" ─▶ Links with bob ─▶ each bob session
//!  POST /v1/broadcast          ─▶ owner hub of "all"      ─▶ every Link     ─▶ every session
//! ```

use crate::frame::is_valid_room;

/// The broadcast room every connection is in (unless the Link's `broadcast_room` is off).
pub const BROADCAST_ROOM: &str = "all";

/// Prefix of personal rooms: `user:{sub}`.
pub const PERSONAL_PREFIX: &str = "user:";

/// The personal room of user `sub`, if `user:{sub}` is a valid room name (a user id with only
/// room-name characters, at most 123 bytes). A user without one gets no pushes by user id.
pub fn personal_room(sub: &str) -> Option<String> {
    let room = user_key(sub);
    (!sub.is_empty() && is_valid_room(&room)).then_some(room)
}

/// User `sub`'s key at a Link (its registry and presence): the name its personal room has, or
/// would have were `sub` a valid room name ([`personal_room`]).
pub fn user_key(sub: &str) -> String {
    format!("{PERSONAL_PREFIX}{sub}")
}

/// The user a personal room (or a [`user_key`]) belongs to (`user:bob` → `bob`).
pub fn personal_user(room: &str) -> Option<&str> {
    room.strip_prefix(PERSONAL_PREFIX).filter(|user| !user.is_empty())
}

/// Rooms only the HTTP API publishes into: personal rooms and the broadcast room.
pub fn is_server_only(room: &str) -> bool {
    room == BROADCAST_ROOM || room.starts_with(PERSONAL_PREFIX)
}

/// Whether user `sub` may join `room` given what its token allows (`token_allows`): its own
/// personal room and the broadcast room always; another user's personal room never; any other
/// room as the token says.
pub fn may_join(sub: &str, room: &str, token_allows: bool) -> bool {
    if room == BROADCAST_ROOM {
        return true;
    }
    match personal_user(room) {
        Some(user) => user == sub,
        None if room.starts_with(PERSONAL_PREFIX) => false,
        None => token_allows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_rooms_are_named_and_guarded() {
        assert_eq!(personal_room("bob").as_deref(), Some("user:bob"));
        assert_eq!(personal_room("a@b.c").as_deref(), Some("user:a@b.c"));
        assert_eq!(personal_room(""), None);
        assert_eq!(personal_room("has space"), None);
        assert_eq!(personal_room(&"x".repeat(124)), None, "user:+124 bytes is over the room limit");
        assert_eq!(personal_user("user:bob"), Some("bob"));
        assert_eq!(personal_user("user:"), None);
        assert_eq!(user_key("has space"), "user:has space", "a key even where no room is");
        assert_eq!(personal_user(&user_key("has space")), Some("has space"));
        assert!(is_server_only("all") && is_server_only("user:bob"));
        assert!(!is_server_only("lobby") && !is_server_only("allstars"));
        assert!(may_join("bob", "user:bob", false));
        assert!(may_join("bob", "all", false));
        assert!(!may_join("bob", "user:alice", true), "another user's personal room, even with rooms = *");
        assert!(!may_join("bob", "user:", true));
        assert!(may_join("bob", "lobby", true) && !may_join("bob", "lobby", false));
    }
}
