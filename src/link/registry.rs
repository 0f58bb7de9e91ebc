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

use dashmap::DashMap;

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

/// User id → connections, oldest first. Each list is grown exactly (most users have one
/// connection: 24 bytes, where a default-grown list would hold room for four).
#[derive(Debug, Default)]
pub(crate) struct Users {
    map: DashMap<String, Vec<ConnInfo>>,
}

impl Users {
    /// Registers connection `conn` of `user`; returns the oldest connections beyond `max`
    /// (already forgotten here), which the caller closes.
    pub(crate) fn register(&self, user: &str, conn: ConnInfo, max: usize) -> Vec<u64> {
        let mut entry = self.map.entry(user.to_owned()).or_default();
        entry.reserve_exact(1);
        entry.push(conn);
        let excess = entry.len().saturating_sub(max.max(1));
        entry.drain(..excess).map(|c| c.id).collect()
    }

    /// The connections of `user` on this Link, oldest first.
    pub(crate) fn connections(&self, user: &str) -> Vec<ConnInfo> {
        self.map.get(user).map(|e| e.iter().copied().collect()).unwrap_or_default()
    }

    /// Forgets connection `conn` of `user`.
    pub(crate) fn unregister(&self, user: &str, conn: u64) {
        let empty = match self.map.get_mut(user) {
            Some(mut entry) => {
                entry.retain(|c| c.id != conn);
                entry.shrink_to_fit();
                entry.is_empty()
            }
            None => false,
        };
        if empty {
            self.map.remove_if(user, |_, conns| conns.is_empty());
        }
    }

    /// Connections registered for `user`.
    #[cfg(test)]
    fn count(&self, user: &str) -> usize {
        self.map.get(user).map_or(0, |e| e.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_connections_are_evicted_beyond_the_limit() {
        let users = Users::default();
        let conn = |id| ConnInfo { id, quic: false, since_micros: id };
        assert!(users.register("u", conn(1), 2).is_empty());
        assert!(users.register("u", conn(2), 2).is_empty());
        assert_eq!(users.register("u", conn(3), 2), vec![1]);
        assert_eq!(users.count("u"), 2);
        assert_eq!(users.connections("u"), vec![conn(2), conn(3)]);
        users.unregister("u", 2);
        users.unregister("u", 3);
        assert_eq!(users.count("u"), 0);
    }
}
