//! The Link-wide registry of users → their open connections (a cold path: touched on connect and
//! disconnect only, so a `DashMap` shared by all shards is fine here).
//!
//! It enforces `link.max_conns_per_user`: registering one connection too many asks the user's
//! *oldest* connection to close with 1008 "too many connections for user" (through that
//! connection's inbox, on whatever shard it lives).

use std::collections::VecDeque;

use dashmap::DashMap;
use tokio::sync::mpsc;

use super::limits::ClientError;
use super::shard::ConnEvent;

/// User id → connections, oldest first.
#[derive(Debug, Default)]
pub struct Users {
    map: DashMap<String, VecDeque<(u64, mpsc::UnboundedSender<ConnEvent>)>>,
}

impl Users {
    /// Registers connection `conn` of `user`; closes the oldest ones beyond `max`.
    pub fn register(&self, user: &str, conn: u64, inbox: mpsc::UnboundedSender<ConnEvent>, max: usize) {
        let mut entry = self.map.entry(user.to_owned()).or_default();
        entry.push_back((conn, inbox));
        while entry.len() > max.max(1) {
            if let Some((_, oldest)) = entry.pop_front() {
                let _ = oldest.send(ConnEvent::Close(ClientError::TooManyConnections));
            }
        }
    }

    /// Forgets connection `conn` of `user`.
    pub fn unregister(&self, user: &str, conn: u64) {
        let empty = match self.map.get_mut(user) {
            Some(mut entry) => {
                entry.retain(|(c, _)| *c != conn);
                entry.is_empty()
            }
            None => false,
        };
        if empty {
            self.map.remove_if(user, |_, conns| conns.is_empty());
        }
    }

    /// Connections registered for `user`.
    pub fn count(&self, user: &str) -> usize {
        self.map.get(user).map_or(0, |e| e.len())
    }
}
