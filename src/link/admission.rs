//! Who may open a connection to the Link: one [`Admission`] shared by every shard, holding the
//! Link-wide connection count (against `link.max_connections`) and the token verifier.
//!
//! A driver (`upgrade.rs` for WebSocket, `quic_clients.rs` for QUIC) takes a slot with
//! [`Admission::admit`] (through `ConnContext::admit`, which also refuses while the shard stops)
//! and checks the client's token with [`Admission::verify`] (dev mode: an anonymous user id,
//! `anon-L-N` for the N-th on Link L: unique in the cluster, since it names a personal room). The slot is an [`Admitted`] guard: the connection holds it for its whole life and
//! the count goes down when it is dropped. It also holds the Link's bans and token revocations
//! ([`Moderation`], `moderation.rs`), checked with [`Admission::check_moderation`] once a
//! client's token is known.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use linkcast_core::auth::{AuthError, Claims, Verifier};

use super::moderation::{Moderation, Refused};
use crate::clock::now_micros;

/// Who may open a connection to the Link: shared by every shard (one per Link).
#[derive(Debug)]
pub(crate) struct Admission {
    /// Token verifier (dev mode without `auth.jwt_secret`).
    verifier: Verifier,
    /// Open connections on the Link, against `max_connections`.
    connections: AtomicUsize,
    max_connections: usize,
    /// Counter for anonymous dev-mode user ids.
    anonymous: AtomicU64,
    /// This Link's id, in anonymous user ids (`anon-L-N`): two Links never name two anonymous
    /// users alike, so one's personal room `user:anon-L-N` is never another's.
    link: u32,
    /// Bans and revocations (written by the coordinator from hub `Moderate` frames).
    moderation: Arc<Moderation>,
}

impl Admission {
    /// Admits up to `max_connections` connections whose tokens `verifier` accepts, on Link `link`.
    pub(crate) fn new(verifier: Verifier, max_connections: usize, link: u32) -> Self {
        Admission {
            link,
            verifier,
            connections: AtomicUsize::new(0),
            max_connections,
            anonymous: AtomicU64::new(0),
            moderation: Arc::default(),
        }
    }

    /// The Link's bans and revocations.
    pub(crate) fn moderation(&self) -> &Arc<Moderation> {
        &self.moderation
    }

    /// Whether user `sub` with a token issued at `iat` may connect now (not banned, token not
    /// revoked).
    pub(crate) fn check_moderation(&self, sub: &str, iat: Option<u64>) -> Result<(), Refused> {
        let checked = self.moderation.check(sub, iat, now_micros() / 1_000_000);
        if checked.is_err() {
            metrics::counter!("linkcast_link_moderation_refused_total").increment(1);
        }
        checked
    }

    /// Checks a client's token (`None` or empty: none given) now; in dev mode a client without
    /// one gets an anonymous user id.
    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let anonymous = format!("anon-{}-{}", self.link, self.anonymous.fetch_add(1, Ordering::Relaxed) + 1);
        let result = self.verifier.verify(token, now_micros() / 1_000_000, &anonymous);
        if result.is_err() {
            metrics::counter!("linkcast_link_auth_failures_total").increment(1);
        }
        result
    }

    /// True when no secret is configured (token-less clients are anonymous).
    pub(crate) fn is_dev(&self) -> bool {
        self.verifier.is_dev()
    }

    /// Takes one of the Link's connection slots; `None` when all are taken.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        if self.connections.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(Some(self.clone())))
    }

    /// Returns a connection slot taken by [`Admission::admit`].
    pub(crate) fn release(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One of the Link's connection slots, returned when dropped (or handed to an open connection:
/// [`Admitted::into_connection`]).
#[derive(Debug)]
pub(crate) struct Admitted(Option<Arc<Admission>>);

impl Admitted {
    /// The slot is now held by an open connection, which returns it ([`Admission::release`])
    /// through the admission its context already has: the guard's 8 bytes are not carried by
    /// every connection's record.
    pub(crate) fn into_connection(mut self, admission: &Arc<Admission>) {
        let held = self.0.take();
        debug_assert!(held.is_some_and(|held| Arc::ptr_eq(&held, admission)), "the slot is the context's admission's");
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(admission) = self.0.take() {
            admission.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_returned_on_drop() {
        let admission = Arc::new(Admission::new(Verifier::new(None), 2, 1));
        let first = admission.admit().expect("first slot");
        let second = admission.admit().expect("second slot");
        assert!(admission.admit().is_none(), "the Link is full");
        drop(first);
        let third = admission.admit().expect("a returned slot is free again");
        drop((second, third));
        assert_eq!(admission.connections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_slot_handed_to_a_connection_is_returned_by_it_alone() {
        let admission = Arc::new(Admission::new(Verifier::new(None), 1, 1));
        admission.admit().expect("a slot").into_connection(&admission);
        assert_eq!(admission.connections.load(Ordering::Relaxed), 1, "dropping the handed-over guard keeps the slot taken");
        assert!(admission.admit().is_none(), "the Link is full");
        admission.release(); // the connection ends
        assert!(admission.admit().is_some(), "its slot is free again");
    }

    #[test]
    fn dev_mode_gives_each_anonymous_client_its_own_id() {
        let admission = Admission::new(Verifier::new(None), 1, 3);
        let a = admission.verify(None).expect("dev mode admits anonymous clients");
        let b = admission.verify(Some("")).expect("an empty token is none");
        assert_ne!(a.sub, b.sub);
        assert!(a.sub.starts_with("anon-3-"), "{}: the Link's id keeps anonymous users of two Links apart", a.sub);
    }
}
