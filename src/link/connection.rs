//! One client connection's life at the Link, whatever carries it: the WebSocket driver
//! (`ws.rs`) and the QUIC driver (`quic_clients.rs`) both run it.
//!
//! 1. **Admission** ([`ConnContext::admit`], [`Admission::verify`], `admission.rs`): a slot
//!    under `link.max_connections` (none once the shard is stopping), and the client's token
//!    checked. The slot is held by an [`Admitted`] until the end.
//! 2. **Open** ([`Connection::open`]): an id and a [`Mailbox`] on the shard, the user registered
//!    (the user's oldest connections beyond `link.max_conns_per_user` are asked to close through
//!    the coordinator), the shard's counters, and the core [`LinkSession`].
//! 3. **Run**: the driver feeds the session what it hears — client requests
//!    ([`Connection::handle_request`]), hub answers and close requests from the mailbox
//!    ([`Connection::handle_events`]) — and fills from the shard's rings
//!    ([`Connection::fill`]) while its socket has room; every call also moves what the session
//!    owes the coordinator (joins, leaves, publishes) onto the coordinator's channel and its
//!    counters into the metrics. A timer calls [`Connection::check`] (lag policy, token expiry).
//! 4. **Close** ([`Connection::finish`], then drop): the session leaves its rooms, the shard and
//!    the user registry forget the connection, the counters and the admission slot are returned.
//!
//! What goes out to the client is the driver's business (encoded by `wire.rs`); every decision
//! about rooms is the core session's.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use linkcast_core::auth::Claims;
use linkcast_core::fanout::LagPolicy;
use linkcast_core::link_session::{LinkSession, Request, SessionLimits, ToClient, ToCoordinator, Wire};
use linkcast_core::protocol::ClientError;

use super::admission::{Admission, Admitted};
use super::coordinator::{busy_answer, CoordInbox, CoordMsg};
use super::registry::Users;
use super::shard::{shard_of, ConnEvent, Mailbox, Registered, ShardState, ShardStats};
use super::tally;
use crate::clock::now_micros;
use crate::config::LinkConfig;

/// What the connections of one shard share (built by the shard's thread, `shard_thread.rs`).
#[derive(Debug)]
pub(crate) struct ConnContext {
    /// The `[link]` configuration (limits, timers).
    pub(crate) link: LinkConfig,
    /// The Link's admission (shared by all shards).
    pub(crate) admission: Arc<Admission>,
    /// User → connections (shared by all shards; touched on open and close only).
    users: Arc<Users>,
    /// The coordinator's inbox.
    coordinator: CoordInbox,
    /// This shard's counters.
    pub(crate) stats: Arc<ShardStats>,
    /// This shard's connections and rings.
    pub(crate) shard: Rc<RefCell<ShardState>>,
}

impl ConnContext {
    /// The context of the connections on `shard`.
    pub(crate) fn new(
        link: LinkConfig,
        admission: Arc<Admission>,
        users: Arc<Users>,
        coordinator: CoordInbox,
        stats: Arc<ShardStats>,
        shard: Rc<RefCell<ShardState>>,
    ) -> Self {
        ConnContext { link, admission, users, coordinator, stats, shard }
    }

    /// Takes a connection slot; `None` when the Link is full or this shard is stopping.
    pub(crate) fn admit(&self) -> Option<Admitted> {
        let admitted = self.admission.admit()?;
        if self.shard.borrow().stopping {
            return None;
        }
        Some(admitted)
    }
}

/// One open connection: its session and its place on the shard (see the module docs).
#[derive(Debug)]
pub(crate) struct Connection {
    ctx: Rc<ConnContext>,
    session: LinkSession,
    mailbox: Rc<Mailbox>,
    /// The token's expiry, seconds since the Unix epoch.
    expires: u64,
    gauge: metrics::Gauge,
    _admitted: Admitted,
}

impl Connection {
    /// Registers an admitted, authenticated client on the shard and starts its session.
    pub(crate) fn open(ctx: Rc<ConnContext>, wire: Wire, claims: Claims, admitted: Admitted) -> Self {
        let Registered { id, index, mailbox } = ctx.shard.borrow_mut().register_conn();
        for evicted in ctx.users.register(&claims.sub, id, ctx.link.max_conns_per_user) {
            let _ = ctx.coordinator.send(CoordMsg::CloseConn { conn: evicted, reason: ClientError::TooManyConnections });
        }
        ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        let gauge = metrics::gauge!("linkcast_link_connections", "shard" => index.to_string());
        gauge.increment(1.0);
        let expires = claims.exp;
        let session = LinkSession::new(id, wire, claims, limits(&ctx.link), now_micros());
        Connection { ctx, session, mailbox, expires, gauge, _admitted: admitted }
    }

    /// The connection's id (carries the shard index).
    pub(crate) fn id(&self) -> u64 {
        self.session.id()
    }

    /// The connection's mailbox on the shard.
    pub(crate) fn mailbox(&self) -> &Rc<Mailbox> {
        &self.mailbox
    }

    /// Whether the rings may hold items for this connection (then [`Connection::fill`]).
    pub(crate) fn wants_fill(&self) -> bool {
        self.session.dirty
    }

    /// A ring this connection is parked on got items.
    pub(crate) fn mark_ring(&mut self) {
        self.session.dirty = true;
    }

    /// Whether the shard's state can be borrowed now (false while the shard loop holds it).
    pub(crate) fn shard_free(&self) -> bool {
        self.ctx.shard.try_borrow_mut().is_ok()
    }

    /// Hands the mailbox's hub answers to the session (output into `items`); a close request
    /// ends the connection with its reason. Also takes the mailbox's "a ring has items" flag.
    pub(crate) fn handle_events(&mut self, items: &mut Vec<ToClient>) -> Result<(), ClientError> {
        let mut result = Ok(());
        {
            let mut shard = self.ctx.shard.borrow_mut();
            while let Some(event) = self.mailbox.next_event() {
                match event {
                    ConnEvent::Hub { frame, ring_tail } => {
                        self.session.handle_hub_frame(frame, ring_tail, &mut shard.rooms, items)
                    }
                    ConnEvent::Close(error) => {
                        result = Err(error);
                        break;
                    }
                }
            }
        }
        if self.mailbox.take_ring() {
            self.session.dirty = true;
        }
        self.forward();
        result
    }

    /// Reads up to `budget` bytes of ring items from the session's cursors into `items`.
    pub(crate) fn fill(&mut self, budget: usize, items: &mut Vec<ToClient>) -> Result<(), ClientError> {
        let result = self.session.fill(budget, &mut self.ctx.shard.borrow_mut().rooms, items);
        self.forward();
        result
    }

    /// Handles one client request (answers into `items`).
    pub(crate) fn handle_request(&mut self, request: Request, items: &mut Vec<ToClient>) -> Result<(), ClientError> {
        let result = self.session.handle_request(request, now_micros(), &mut self.ctx.shard.borrow_mut().rooms, items);
        self.forward();
        result
    }

    /// The timer's checks: a lagging member under `lag_policy = "disconnect"`, an expired token.
    pub(crate) fn check(&self) -> Result<(), ClientError> {
        if self.ctx.link.lag_policy == LagPolicy::Disconnect && self.session.lagging(&self.ctx.shard.borrow().rooms) {
            return Err(ClientError::SlowConsumer);
        }
        if self.expires <= now_micros() / 1_000_000 {
            return Err(ClientError::TokenExpired);
        }
        Ok(())
    }

    /// Ends the session: the connection leaves its rooms and is forgotten by the shard and the
    /// user registry. Its counters and admission slot are returned when it is dropped.
    pub(crate) fn finish(&mut self) {
        let id = self.id();
        self.ctx.shard.borrow_mut().remove_conn(id);
        self.session.finish(&mut self.ctx.shard.borrow_mut().rooms);
        self.forward();
        self.ctx.users.unregister(&self.session.claims().sub, id);
    }

    /// Sends what the session owes the coordinator and exports its counters.
    fn forward(&mut self) {
        let shard = shard_of(self.session.id());
        while let Some(action) = self.session.poll_coordinator() {
            let sent = self.ctx.coordinator.send(match action {
                ToCoordinator::Join { request, room, since, epoch } => CoordMsg::Join { shard, request, room, since, epoch },
                ToCoordinator::Leave { room } => CoordMsg::Leave { shard, room },
                ToCoordinator::Publish { frame } => CoordMsg::Publish { frame },
            });
            // The coordinator's inbox is full: the request is answered "link busy" (503) here.
            if let Some((request, answer)) = sent.err().as_ref().and_then(busy_answer) {
                self.ctx.shard.borrow_mut().route(request, answer);
            }
        }
        let stats = self.session.take_stats();
        tally::delivered(stats.delivered);
        if stats.joins > 0 {
            metrics::counter!("linkcast_link_joins_total").increment(stats.joins);
        }
        if stats.lagging > 0 {
            metrics::counter!("linkcast_link_lagging_total").increment(stats.lagging);
        }
        if stats.gaps > 0 {
            metrics::counter!("linkcast_link_gaps_total").increment(stats.gaps);
        }
        if stats.resets > 0 {
            metrics::counter!("linkcast_link_resets_total").increment(stats.resets);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }
}

/// Counts a connection closed by the Link for `error`.
pub(crate) fn count_close(error: ClientError) {
    metrics::counter!("linkcast_link_closes_total", "reason" => error.label()).increment(1);
}

/// The session limits of `[link]`.
fn limits(link: &LinkConfig) -> SessionLimits {
    SessionLimits {
        max_rooms: link.max_rooms_per_conn,
        max_message_bytes: link.max_message_bytes,
        lag_policy: link.lag_policy,
        publish_rate: link.publish_rate,
        publish_burst: link.publish_burst,
    }
}
