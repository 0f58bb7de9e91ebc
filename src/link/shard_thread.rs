//! One shard's thread: a single-threaded tokio runtime that owns the shard's state
//! (`shard.rs`), its listening socket and its connections, and applies the coordinator's
//! messages.
//!
//! [`run`] starts the WebSocket accept loop (`upgrade.rs`) and, on the shard that owns it, the
//! QUIC client endpoint (`quic_clients.rs`), then loops over the shard's inbox
//! (`shard_inbox.rs`: a crossbeam queue bounded in bytes; an empty one parks this runtime on a
//! `Notify` its senders ring only while it sleeps): room messages
//! and markers are pushed onto the rings, hub answers and close requests routed to their
//! connection, QUIC clients handed over started here. Messages already queued are applied (up to
//! [`MAX_BURST`]) before any woken member is served, so a burst leaves each socket as one write.
//! With `link.coalesce_us` > 0 the shard then lingers: once a burst woke members it keeps
//! applying messages for up to that long before serving them, so the frames of a hot room
//! (thousands of comments a second) leave each socket in one send instead of one each; a drain or
//! shutdown ends the linger at once, and control messages are applied as they come (the
//! connections' driver runs while the shard waits). After those writes each room message of the burst is timed once (publish → written,
//! `linkcast_link_delivery_seconds`, `metrics.rs`).
//! On [`ShardMsg::Shutdown`] new connections are refused, every connection is asked to close with
//! 1001, and the thread waits briefly for their close frames to leave. [`ShardMsg::Drain`] (a
//! draining Link) closes every connection with 1001 and a jittered retry hint, and runs on.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use linkcast_core::protocol::ClientError;

use super::admission::Admission;
use super::connection::ConnContext;
use super::metrics::DeliveryClock;
use super::coordinator::CoordInbox;
use super::registry::Users;
use super::shard::{ShardMsg, ShardState, ShardStats, Woken};
use super::shard_inbox::{ShardInbox, ShardSender};
use super::{quic_clients, tally, upgrade, ws_driver};
use super::upgrade::PortSetup;
use crate::config::LinkConfig;
use crate::tls::ServerCert;

/// Most coordinator messages applied before the woken members are written to.
const MAX_BURST: usize = linkcast_core::shard_queue::MAX_BURST;

/// What applying a coordinator message lets the shard loop do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// Go on (and linger if configured).
    Go,
    /// Write now: connections are closing (drain), holding frames helps nobody.
    Stop,
    /// Shut down.
    Break,
}

impl Linger {
    /// The stronger of two outcomes.
    fn and(self, other: Linger) -> Linger {
        match (self, other) {
            (Linger::Break, _) | (_, Linger::Break) => Linger::Break,
            (Linger::Stop, _) | (_, Linger::Stop) => Linger::Stop,
            _ => Linger::Go,
        }
    }
}

/// What a shard's thread is started with (everything `Send`; the thread builds its
/// single-threaded state from it).
#[derive(Debug)]
pub(crate) struct ShardSetup {
    /// The shard's index.
    pub(crate) index: usize,
    /// The `[link]` configuration.
    pub(crate) link: LinkConfig,
    /// The Link's admission (shared by all shards).
    pub(crate) admission: Arc<Admission>,
    /// User → connections (shared by all shards).
    pub(crate) users: Arc<Users>,
    /// The coordinator's inbox.
    pub(crate) coordinator: CoordInbox,
    /// This shard's counters.
    pub(crate) stats: Arc<ShardStats>,
    /// The shard's WebSocket listening socket (SO_REUSEPORT, one per shard).
    pub(crate) listener: std::net::TcpListener,
    /// TLS and handshake bounds of the WebSocket port.
    pub(crate) port: PortSetup,
    /// The coordinator → shard inbox (`shard_inbox.rs`: bounded in bytes, wakes this runtime).
    pub(crate) inbox: ShardInbox,
    /// On the shard that hosts the QUIC client endpoint: its socket, every shard's inbox to
    /// hand connections to, and the certificate to present.
    pub(crate) quic: Option<(std::net::UdpSocket, Vec<ShardSender>, Arc<ServerCert>)>,
}

/// Runs the shard on the current thread until shutdown (see the module docs).
pub(crate) fn run(setup: ShardSetup) -> std::io::Result<()> {
    let ShardSetup { index, link, admission, users, coordinator, stats, listener, port, mut inbox, quic } = setup;
    let max_client_frame = link.max_message_bytes + 4096;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let state = Rc::new(RefCell::new(ShardState::new(index, link.ring_limits(), stats.clone())));
        let ctx = Rc::new(ConnContext::new(link, admission, users, coordinator, stats, state.clone())?);
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let accept = tokio::task::spawn_local(upgrade::accept_loop(listener, ctx.clone(), port));
        let ws_driver = tokio::task::spawn_local(ws_driver::run(ctx.clone()));
        let quic_endpoint = match quic {
            Some((socket, shards, cert)) => Some(quic_clients::start_endpoint(socket, shards, cert, max_client_frame)?),
            None => None,
        };
        let mut woken = Vec::new();
        let mut clock = DeliveryClock::new();
        let linger = std::time::Duration::from_micros(u64::from(ctx.link.coalesce_us));
        // Applies one coordinator message; `Break` on shutdown.
        let apply = |msg: ShardMsg, woken: &mut Vec<Woken>, clock: &mut DeliveryClock| {
            match msg {
                ShardMsg::Room(message) => {
                    clock.pushed(message.frame.ts_micros());
                    state.borrow_mut().push_message(message, woken);
                }
                ShardMsg::Marker { room, item } => state.borrow_mut().push(&room, item, woken),
                ShardMsg::ToConn { id, frame } => state.borrow_mut().route(id, frame),
                ShardMsg::ReplayDropped { id } => state.borrow_mut().replay_dropped(id),
                ShardMsg::Close { id, reason } => state.borrow_mut().close(id, reason),
                ShardMsg::Moderate { id, action } => state.borrow_mut().moderate(id, action),
                ShardMsg::Quic(incoming) => {
                    tokio::task::spawn_local(quic_clients::handle(*incoming, ctx.clone()));
                }
                ShardMsg::Drain { retry_after_ms } => {
                    state.borrow_mut().close_all_draining(retry_after_ms);
                    return Linger::Stop;
                }
                ShardMsg::Shutdown => return Linger::Break,
            }
            Linger::Go
        };
        'run: while let Some(first) = inbox.recv().await {
            // Take what is already queued (up to a bound) before waking anyone, so a burst of
            // room messages reaches each member socket as one write.
            let mut next = Some(first);
            let mut taken = 0;
            let mut flow = Linger::Go;
            while let Some(msg) = next.take() {
                flow = flow.and(apply(msg, &mut woken, &mut clock));
                if flow == Linger::Break {
                    break 'run;
                }
                taken += 1;
                if taken < MAX_BURST {
                    next = inbox.try_recv().ok();
                }
            }
            // The linger (`link.coalesce_us`): members woken by room messages wait up to that
            // long for more, so a hot room's frames leave each socket together. Control
            // messages that arrive meanwhile are applied at once (the connections' driver runs while
            // the shard waits); a drain or shutdown ends the wait.
            if !linger.is_zero() && !woken.is_empty() && flow == Linger::Go {
                let deadline = tokio::time::Instant::now() + linger;
                while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, inbox.recv()).await {
                    match apply(msg, &mut woken, &mut clock) {
                        Linger::Go => {}
                        Linger::Stop => break,
                        Linger::Break => break 'run,
                    }
                }
            }
            for conn in woken.drain(..) {
                conn.wake();
            }
            clock.written(crate::clock::now_micros);
            state.borrow_mut().sync_stats();
            tally::flush();
        }
        accept.abort();
        if let Some(endpoint) = &quic_endpoint {
            endpoint.set_server_config(None);
        }
        {
            let mut state = state.borrow_mut();
            state.stopping = true;
            state.close_all(ClientError::ShuttingDown);
        }
        // Give connections a moment to send their close frames.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while state.borrow().conn_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Some(endpoint) = quic_endpoint {
            endpoint.close(quinn::VarInt::from_u32(1001), b"server shutting down");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        ws_driver.abort();
        // Connections still open after the grace period are dropped with the shard (their
        // sockets closed): the slab is the only thing that still holds them.
        ctx.ws_driver.clear();
        Ok::<(), std::io::Error>(())
    })
}
