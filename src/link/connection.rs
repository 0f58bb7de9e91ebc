//! One client connection's life at the Link, whatever carries it: the WebSocket driver
//! (`ws.rs`) and the QUIC driver (`quic_clients.rs`) both run it.
//!
//! 1. **Admission** ([`ConnContext::admit`], [`Admission::verify`], `admission.rs`): a slot
//!    under `link.max_connections` (none once the shard is stopping), and the client's token
//!    checked. The slot is held by an [`Admitted`] until the session opens, then by the
//!    [`Connection`] itself, which returns it when dropped. A WebSocket client whose URL
//!    has no token (and the Link is not in dev mode) is admitted **pending**: it holds its slot
//!    but has no session until its first message, `{"op":"auth","token"}`, is verified
//!    ([`Pending`]; `ws.rs` runs that step, within [`AUTH_TIMEOUT`]).
//! 2. **Open** ([`Connection::open`]): an id and a [`Mailbox`] on the shard, the user registered
//!    (the user's oldest connections beyond `link.max_conns_per_user` are asked to close through
//!    the coordinator) and checked again against bans and revocations (one that arrived since
//!    admission closes it at once), the shard's counters, and the core [`LinkSession`].
//! 3. **Run**: the driver feeds the session what it hears — client requests
//!    ([`Connection::handle_request`]), hub answers and close requests from the mailbox
//!    ([`Connection::handle_events`]) — and fills from the shard's rings
//!    ([`Connection::fill`]) while its socket has room; every call also moves what the session
//!    owes the coordinator (joins, leaves, publishes) onto the coordinator's channel and its
//!    counters into the metrics. A timer calls [`Connection::check`] (lag policy, token expiry);
//!    the WebSocket driver also arms a timer at the token's expiry ([`Connection::expires`]),
//!    which a `refresh` ([`Connection::handle_request`]) moves. The driver tells the session
//!    when its socket queue is empty ([`Connection::drained`]): replays are paged on that.
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
use linkcast_core::link_session::{refuse, LinkSession, Request, SessionLimits, ToClient, ToCoordinator, Wire};
use linkcast_core::protocol::ClientError;

use super::admission::{Admission, Admitted};
use super::coordinator::{busy_answer, CoordInbox, CoordMsg};
use super::registry::{ConnInfo, Users};
use super::shard::{shard_of, ConnAction, ConnEvent, Mailbox, Registered, ShardState, ShardStats};
use super::tally;
use super::ws_driver::WsDriver;
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
    /// This shard's WebSocket connections, stepped by one task (`ws_driver.rs`).
    pub(crate) ws_driver: WsDriver,
    /// `linkcast_link_connections{shard}`: one handle per shard, not one per connection.
    connections_gauge: metrics::Gauge,
    /// The sessions' limits (from `[link]`), shared by every session of the shard.
    session_limits: Arc<SessionLimits>,
}

impl ConnContext {
    /// The context of the connections on `shard` (inside the shard's runtime: its epoll set
    /// registers there).
    pub(crate) fn new(
        link: LinkConfig,
        admission: Arc<Admission>,
        users: Arc<Users>,
        coordinator: CoordInbox,
        stats: Arc<ShardStats>,
        shard: Rc<RefCell<ShardState>>,
    ) -> std::io::Result<Self> {
        let index = shard.borrow().index();
        let connections_gauge = metrics::gauge!("linkcast_link_connections", "shard" => index.to_string());
        let session_limits = Arc::new(limits(&link));
        let ws_driver = WsDriver::new()?;
        Ok(ConnContext { link, admission, users, coordinator, stats, shard, ws_driver, connections_gauge, session_limits })
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

/// Time a pending connection (no token in its URL) has to send `{"op":"auth","token"}`.
pub(crate) const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who a connection is, once past the upgrade.
#[derive(Debug)]
pub(crate) enum Pending {
    /// Authenticated by its URL's token (or anonymous in dev mode): open the session now.
    Ready(Claims),
    /// No token in the URL: its first message must be `{"op":"auth","token"}` (within
    /// [`AUTH_TIMEOUT`]); anything else closes it with 1008.
    Auth,
}

impl Pending {
    /// The claims of the first message, which must be an `auth` op with a token the Link
    /// accepts; the error to close the connection with otherwise.
    pub(crate) fn authenticate(ctx: &ConnContext, first: &str) -> Result<Claims, ClientError> {
        match linkcast_core::protocol::ClientOp::parse(first) {
            Ok(linkcast_core::protocol::ClientOp::Auth { token }) => {
                let claims = ctx.admission.verify(Some(&token)).map_err(ClientError::AuthFailed)?;
                ctx.admission.check_moderation(&claims.sub, claims.iat).map_err(|refused| refused.error())?;
                Ok(claims)
            }
            _ => Err(ClientError::AuthRequired),
        }
    }
}

/// One open connection: its session and its place on the shard (see the module docs).
#[derive(Debug)]
pub(crate) struct Connection {
    ctx: Rc<ConnContext>,
    session: LinkSession,
    /// An operator's close reason, sent instead of the close code's own (`moderation.rs`).
    close_reason: Option<Box<str>>,
}

impl Connection {
    /// Registers an admitted, authenticated client on the shard and starts its session. The
    /// connection's mailbox comes back beside it: its driver keeps it (and hands it to
    /// [`Connection::handle_events`]), so the connection does not keep a second pointer to it.
    pub(crate) fn open(ctx: Rc<ConnContext>, wire: Wire, claims: Claims, admitted: Admitted) -> (Self, Rc<Mailbox>) {
        let Registered { id, mailbox } = ctx.shard.borrow_mut().register_conn(ctx.link.replay_bytes);
        ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        ctx.connections_gauge.increment(1.0);
        let mut session = LinkSession::new(id, wire, claims, ctx.session_limits.clone(), now_micros());
        // The personal room and `all` (each unless off), live only: the client gets `joined` for
        // each.
        session.join_system_rooms(ctx.link.personal_room, ctx.link.broadcast_room, &mut ctx.shard.borrow_mut().rooms);
        // Registered under its personal room's name (the shard's, if it joined it: the registry
        // keeps no copy).
        let info = ConnInfo { id, quic: wire == Wire::Quic, since_micros: now_micros() };
        for evicted in ctx.users.register(session.user_key(), info, ctx.link.max_conns_per_user) {
            let _ = ctx.coordinator.send(CoordMsg::CloseConn { conn: evicted, reason: ClientError::TooManyConnections });
        }
        // Checked again now that the registry lists it: a ban or revocation that reached the
        // Link after the upgrade's check found no connection of the user to close. The
        // coordinator sets its table before it reads the registry (moderation.rs), so either it
        // closes this connection or this check sees the table.
        if let Err(refused) = ctx.admission.check_moderation(session.sub(), session.iat()) {
            mailbox.post(ConnEvent::Close(refused.error()));
        }
        admitted.into_connection(&ctx.admission); // returned by `drop`
        let mut conn = Connection { ctx, session, close_reason: None };
        conn.forward();
        (conn, mailbox)
    }

    /// The close reason to send instead of `error`'s own: an operator's (kick, ban).
    pub(crate) fn close_reason(&self) -> Option<&str> {
        self.close_reason.as_deref()
    }

    /// The token's expiry, seconds since the Unix epoch (`u64::MAX`: never).
    pub(crate) fn expires(&self) -> u64 {
        self.session.exp()
    }

    /// The driver's socket queue is empty (see [`LinkSession::drained`]).
    pub(crate) fn drained(&mut self) {
        if !self.session.wants_drained() {
            return; // the common case, on the delivery path: nothing replayed, nothing waiting
        }
        self.session.drained(&mut self.ctx.shard.borrow_mut().rooms);
        self.forward();
    }

    /// The connection's id (carries the shard index).
    pub(crate) fn id(&self) -> u64 {
        self.session.id()
    }

    /// Ring frames are pulled into the driver's socket queue only while less than this waits
    /// there (`link.write_batch_bytes`).
    pub(crate) fn write_batch(&self) -> usize {
        self.ctx.link.write_batch_bytes.max(1)
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
    /// `mailbox` is this connection's ([`Connection::open`]).
    pub(crate) fn handle_events(&mut self, mailbox: &Mailbox, items: &mut Vec<ToClient>) -> Result<(), ClientError> {
        let mut result = Ok(());
        {
            let mut shard = self.ctx.shard.borrow_mut();
            if self.session.wire() == Wire::Quic && self.session.wants_drained() {
                // The QUIC driver writes everything before it asks for more: its queue is empty.
                self.session.drained(&mut shard.rooms);
            }
            while let Some(event) = mailbox.next_event() {
                match event {
                    ConnEvent::Hub { frame, ring_tail } => {
                        self.session.handle_hub_frame(frame, ring_tail, &mut shard.rooms, items)
                    }
                    ConnEvent::Dropped { request } => self.session.replay_dropped(request),
                    ConnEvent::Moderate(action) => match *action {
                        ConnAction::Close { error, reason } => {
                            self.close_reason = Some(reason);
                            result = Err(error);
                            break;
                        }
                        ConnAction::Revoke { before } => {
                            if super::moderation::is_revoked(self.session.iat(), before) {
                                result = Err(ClientError::TokenRevoked);
                                break;
                            }
                        }
                        ConnAction::Remove { room, reason } => {
                            self.session.remove(&room, &reason, &mut shard.rooms, items);
                        }
                        ConnAction::Query(reply) => {
                            let _ = reply.send(self.session.rooms().map(str::to_owned).collect());
                        }
                    },
                    ConnEvent::Close(error) => {
                        result = Err(error);
                        break;
                    }
                }
            }
        }
        if mailbox.take_ring() {
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

    /// Handles one client request (answers into `items`). A `refresh` (or a late `auth`) is
    /// verified here: a refused token is an error answer and the current one stays; a token of
    /// a banned user, or one issued before the user's revocation time, closes the connection
    /// (4001 / 4002), as it would be refused at connect.
    pub(crate) fn handle_request(&mut self, request: Request, items: &mut Vec<ToClient>) -> Result<(), ClientError> {
        let result = match request {
            Request::Refresh { token } => match self.ctx.admission.verify(Some(&token)) {
                Ok(claims) => {
                    self.ctx.admission.check_moderation(&claims.sub, claims.iat).map_err(|refused| refused.error())?;
                    self.session.refresh(claims, &mut self.ctx.shard.borrow_mut().rooms, items);
                    Ok(())
                }
                Err(error) => refuse(ClientError::RefreshRefused(error), None, None, items),
            },
            request => self.session.handle_request(request, now_micros(), &mut self.ctx.shard.borrow_mut().rooms, items),
        };
        self.forward();
        result
    }

    /// The timer's checks: a lagging member under `lag_policy = "disconnect"`, an expired token.
    pub(crate) fn check(&self) -> Result<(), ClientError> {
        if self.ctx.link.lag_policy == LagPolicy::Disconnect && self.session.lagging(&self.ctx.shard.borrow().rooms) {
            return Err(ClientError::SlowConsumer);
        }
        if self.expires() <= crate::clock::now_secs() {
            return Err(ClientError::TokenExpired);
        }
        Ok(())
    }

    /// Ends the session: the connection leaves its rooms and is forgotten by the shard and the
    /// user registry. Its counters and admission slot are returned when it is dropped.
    pub(crate) fn finish(&mut self) {
        let id = self.id();
        let user = self.session.user_key();
        self.ctx.shard.borrow_mut().remove_conn(id);
        self.session.finish(&mut self.ctx.shard.borrow_mut().rooms);
        self.forward();
        self.ctx.users.unregister(&user, id);
    }

    /// Sends what the session owes the coordinator and exports its counters. Called after every
    /// call into the session: both wait in the shard's `ShardRooms` (`SessionOut`), not in the
    /// session, and carry no connection of their own.
    fn forward(&mut self) {
        let shard = shard_of(self.session.id());
        loop {
            let Some(action) = self.ctx.shard.borrow_mut().rooms.poll_coordinator() else { break };
            let sent = self.ctx.coordinator.send(match action {
                ToCoordinator::Join { request, room, since, epoch } => {
                    CoordMsg::Join { shard, request, room, since, epoch, user: self.session.user_key() }
                }
                ToCoordinator::Leave { room } => CoordMsg::Leave { shard, room, user: self.session.user_key() },
                ToCoordinator::Publish { frame } => CoordMsg::Publish { frame },
            });
            // The coordinator's inbox is full: the request is answered "link busy" (503) here.
            if let Some((request, answer)) = sent.err().as_ref().and_then(busy_answer) {
                self.ctx.shard.borrow_mut().route(request, answer);
            }
        }
        let stats = self.ctx.shard.borrow_mut().rooms.take_session_stats();
        tally::delivered(stats.delivered.into());
        if stats.joins > 0 {
            metrics::counter!("linkcast_link_joins_total").increment(stats.joins.into());
        }
        if stats.lagging > 0 {
            metrics::counter!("linkcast_link_lagging_total").increment(stats.lagging.into());
        }
        if stats.gaps > 0 {
            super::metrics::gaps(&stats.gaps_by);
        }
        if stats.resets > 0 {
            metrics::counter!("linkcast_link_resets_total").increment(stats.resets.into());
        }
        if stats.replay_pages > 0 {
            metrics::counter!("linkcast_link_replay_pages_total").increment(stats.replay_pages.into());
        }
        if stats.joins_limited > 0 {
            metrics::counter!("linkcast_link_joins_limited_total").increment(stats.joins_limited.into());
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
        self.ctx.connections_gauge.decrement(1.0);
        self.ctx.admission.release(); // its slot ([`Admitted::into_connection`])
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
        join_rate: link.join_rate,
        join_burst: link.join_burst,
        replay_bytes: link.replay_bytes.max(1),
    }
}
