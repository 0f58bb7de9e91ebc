//! The Link-wide registry of users → their open connections (a cold path: touched on connect and
//! disconnect only, so a `DashMap` shared by all shards is fine here).
//!
//! It enforces `link.max_conns_per_user`: registering one connection too many returns the user's
//! *oldest* connection ids; the caller asks them to close with 4003 "too many connections for
//! user" through the coordinator, which routes the request to whatever shard holds them
//! (`connection.rs`).
//!
//! Each entry also says how and since when the connection is open ([`ConnInfo`]), for an
//! operator's `GET /v1/users/{uid}` (`moderation.rs`), and it is how an operator's action finds
//! every connection of a user on this Link.
//!
//! Users are keyed by their personal room's name, `user:{sub}` (`system_rooms::user_key`): the
//! connection registers the shard's own name for it (`LinkSession::user_key`), so the registry
//! keeps no copy of the user id (nor does the coordinator's presence, which keys users the same
//! way).

use std::sync::Arc;

use dashmap::DashMap;
use linkcast_core::sparse_tables::is_sparse;

/// One connection of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnInfo {
    /// Connection id (its top bits name the shard).
    pub(crate) id: u64,
    /// QUIC, else WebSocket.
    pub(crate) quic: bool,
    /// Opened at, microseconds since the Unix epoch.
    pub(crate) since_micros: u64,
}

/// User key (`system_rooms::user_key`) → connections, oldest first (see [`UserConns`]).
#[derive(Debug, Default)]
pub(crate) struct Users {
    map: DashMap<Arc<str>, UserConns>,
}

impl Users {
    /// Registers connection `conn` of the user keyed `user`; returns the oldest connections
    /// beyond `max` (already forgotten here), which the caller closes.
    pub(crate) fn register(&self, user: Arc<str>, conn: ConnInfo, max: usize) -> Vec<u64> {
        let stored = Stored::from(conn);
        let mut entry = self.map.entry(user).or_insert(UserConns::None);
        entry.push(stored);
        entry.evict_beyond(max.max(1))
    }

    /// The connections of the user keyed `user` on this Link, oldest first.
    pub(crate) fn connections(&self, user: &str) -> Vec<ConnInfo> {
        self.map.get(user).map(|e| e.as_slice().iter().map(|&c| c.into()).collect()).unwrap_or_default()
    }

    /// Forgets connection `conn` of the user keyed `user`.
    pub(crate) fn unregister(&self, user: &str, conn: u64) {
        let empty = match self.map.get_mut(user) {
            Some(mut entry) => {
                entry.remove(conn);
                entry.as_slice().is_empty()
            }
            None => false,
        };
        if empty {
            self.map.remove_if(user, |_, conns| conns.as_slice().is_empty());
            // Most users gone (a storm of connections left): the table's memory goes back too.
            if is_sparse(self.map.len(), self.map.capacity()) {
                self.map.shrink_to_fit();
            }
        }
    }

    /// Connections registered for `user`.
    #[cfg(test)]
    fn count(&self, user: &str) -> usize {
        self.map.get(user).map_or(0, |e| e.as_slice().len())
    }
}

/// A [`ConnInfo`] as the registry keeps it: 16 bytes, the transport in the top bit of the time
/// (microseconds since 1970 stay below 2^63 for the next 290,000 years).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    id: u64,
    quic_and_since: u64,
}

const QUIC_BIT: u64 = 1 << 63;

impl From<ConnInfo> for Stored {
    fn from(c: ConnInfo) -> Self {
        Stored { id: c.id, quic_and_since: (c.since_micros & !QUIC_BIT) | if c.quic { QUIC_BIT } else { 0 } }
    }
}

impl From<Stored> for ConnInfo {
    fn from(s: Stored) -> Self {
        ConnInfo { id: s.id, quic: s.quic_and_since & QUIC_BIT != 0, since_micros: s.quic_and_since & !QUIC_BIT }
    }
}

/// One user's connections on this Link, oldest first. Most users have one: it is held in the
/// map's entry itself (a list of one cost every connection a block of its own); a user with
/// more gets a list grown exactly.
#[derive(Debug)]
enum UserConns {
    None,
    One(Stored),
    Many(Vec<Stored>),
}

impl UserConns {
    fn as_slice(&self) -> &[Stored] {
        match self {
            UserConns::None => &[],
            UserConns::One(conn) => std::slice::from_ref(conn),
            UserConns::Many(list) => list,
        }
    }

    fn push(&mut self, conn: Stored) {
        match self {
            UserConns::None => *self = UserConns::One(conn),
            UserConns::One(first) => *self = UserConns::Many(vec![*first, conn]),
            UserConns::Many(list) => {
                list.reserve_exact(1);
                list.push(conn);
            }
        }
    }

    /// Forgets the oldest connections beyond `max` and returns their ids.
    fn evict_beyond(&mut self, max: usize) -> Vec<u64> {
        let UserConns::Many(list) = self else { return Vec::new() };
        let excess = list.len().saturating_sub(max);
        let evicted = list.drain(..excess).map(|c| c.id).collect();
        self.fit();
        evicted
    }

    fn remove(&mut self, conn: u64) {
        match self {
            UserConns::One(only) if only.id == conn => *self = UserConns::None,
            UserConns::Many(list) => {
                list.retain(|c| c.id != conn);
                self.fit();
            }
            _ => {}
        }
    }

    /// Back to the smallest form for what is left.
    fn fit(&mut self) {
        if let UserConns::Many(list) = self {
            match list.len() {
                0 => *self = UserConns::None,
                1 => *self = UserConns::One(list[0]),
                _ => list.shrink_to_fit(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_connections_are_evicted_beyond_the_limit() {
        let users = Users::default();
        let conn = |id| ConnInfo { id, quic: false, since_micros: id };
        assert!(users.register("u".into(), conn(1), 2).is_empty());
        assert!(users.register("u".into(), conn(2), 2).is_empty());
        assert_eq!(users.register("u".into(), conn(3), 2), vec![1]);
        assert_eq!(users.count("u"), 2);
        assert_eq!(users.connections("u"), vec![conn(2), conn(3)]);
        users.unregister("u", 2);
        users.unregister("u", 3);
        assert_eq!(users.count("u"), 0);
        assert!(users.map.is_empty(), "a user without connections is forgotten");
    }

    #[test]
    fn the_table_gives_its_memory_back_once_most_users_left() {
        let users = Users::default();
        let key = |i: u64| -> Arc<str> { format!("user:u{i}").into() };
        for i in 0..20_000 {
            users.register(key(i), ConnInfo { id: i, quic: false, since_micros: i }, 1);
        }
        let peak = users.map.capacity();
        for i in 0..19_990 {
            users.unregister(&key(i), i);
        }
        assert_eq!(users.map.len(), 10);
        assert!(users.map.capacity() < peak / 16, "{} of a peak of {peak}", users.map.capacity());
        assert_eq!(users.connections("user:u19995").len(), 1, "the users left are still found");
    }

    #[test]
    fn a_lone_connection_is_kept_in_the_entry_and_reads_back_whole() {
        let users = Users::default();
        let quic = ConnInfo { id: 9, quic: true, since_micros: 1_764_000_000_000_000 };
        let ws = ConnInfo { id: 10, quic: false, since_micros: 1_764_000_000_000_001 };
        assert!(users.register("bob".into(), quic, 1).is_empty());
        assert!(matches!(users.map.get("bob").as_deref(), Some(UserConns::One(_))));
        assert_eq!(users.connections("bob"), vec![quic]);
        // A second one beyond max = 1 evicts the first; back to one, inline.
        assert_eq!(users.register("bob".into(), ws, 1), vec![9]);
        assert!(matches!(users.map.get("bob").as_deref(), Some(UserConns::One(_))));
        assert_eq!(users.connections("bob"), vec![ws]);
        assert!(users.register("bob".into(), quic, 2).is_empty());
        assert_eq!(users.connections("bob"), vec![ws, quic]);
        users.unregister("bob", 10);
        assert!(matches!(users.map.get("bob").as_deref(), Some(UserConns::One(_))));
        users.unregister("nobody", 1);
        users.unregister("bob", 9);
        assert!(users.map.is_empty());
        assert!(std::mem::size_of::<UserConns>() <= 24, "{}", std::mem::size_of::<UserConns>());
    }
}
