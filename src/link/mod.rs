//! The Link runtime: the gateway where client connections live (DESIGN "link" role).
//!
//! ```text
//!   hubs ──HubPort──▶ coordinator ──ShardMsg (bounded, Bytes clones)──▶ shard 0..N ──▶ sockets
//!      ◀─interest, joins, publishes──┘   ▲ CoordMsg (join/leave/publish)      │
//!                                        └────────────────────────────────────┘
//! ```
//!
//! - [`start`] binds one WebSocket listening socket per shard on the same port (SO_REUSEPORT,
//!   so the kernel spreads accepts) and the optional QUIC client socket, then spawns the shard
//!   threads (`shard.rs`, each a current-thread runtime) and the coordinator thread
//!   (`coordinator.rs`: membership, interest, hub connections, routing of hub frames).
//! - A client connection is pinned to the shard that accepted it (`ws.rs`, `quic_clients.rs`);
//!   its room state and join/replay/live logic is a [`session`] over the shard's rings.
//! - A room message is turned into its WebSocket frame once per Link (`wsframe.rs`); each shard
//!   pushes it once on its ring for the room; members drain it from their cursors
//!   (`fanout.rs`), so a slow member costs a cursor, never a copy.
//! - [`QuicHubConnector`] reaches remote hubs; `serve` and tests pass their own
//!   [`HubConnector`] (e.g. over `uplink::pair`).
//!
//! Files: `shard.rs` (shard thread and state), `coordinator.rs`, `session.rs` (glue between a
//! connection and its sans-IO `link_session::Session`), `ws.rs` (HTTP checks, upgrade, WebSocket
//! driver), `conn_io.rs` (socket output queue, non-blocking vectored writes), `wsframe.rs`
//! (pre-built server frames and JSON), `wsread.rs` (client frames decoded in place),
//! `quic_clients.rs`, `hub_connector.rs`, `registry.rs` (user → connections). The session's
//! state machine, client errors and the publish rate limit are core modules
//! (`link_session.rs`, `protocol.rs`, `token_bucket.rs`, `shard_rooms.rs`).

pub mod conn_io;
pub mod coordinator;
pub mod hub_connector;
pub mod quic_clients;
pub mod registry;
pub mod session;
pub mod shard;
pub mod tally;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use linkcast_core::auth::Verifier;
use crate::config::Config;
use linkcast_core::hub_directory::HubId;
use crate::uplink::HubConnector;

pub use linkcast_core::placement::LinkId;
pub use hub_connector::QuicHubConnector;

use coordinator::CoordMsg;
use registry::Users;
use shard::ShardMsg;

/// Capacity, in messages, of each coordinator → shard channel.
const SHARD_QUEUE: usize = 16 * 1024;

/// What a Link needs to start.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// This Link's cluster-wide id.
    pub id: LinkId,
    /// The cluster configuration (limits in `config.link`, hubs in `config.hubs`).
    pub config: Arc<Config>,
    /// WebSocket listen address (port 0 = any free port).
    pub ws_addr: SocketAddr,
    /// QUIC client listen address; `None` = no QUIC client listener.
    pub quic_addr: Option<SocketAddr>,
}

/// Counters of one shard, readable from any thread (tests and `/metrics` use them).
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Open client connections.
    pub connections: AtomicUsize,
    /// Bytes held in this shard's rooms' rings.
    pub ring_bytes: AtomicUsize,
    /// Frames held in this shard's rooms' rings.
    pub ring_items: AtomicUsize,
    /// Bytes queued in connections' socket queues, not yet written.
    pub queued_bytes: AtomicUsize,
}

/// A snapshot of a Link's memory-relevant counters (summed over shards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Open client connections.
    pub connections: usize,
    /// Bytes held in rings.
    pub ring_bytes: usize,
    /// Frames held in rings.
    pub ring_items: usize,
    /// Bytes waiting in socket queues.
    pub queued_bytes: usize,
}

/// State every shard and the coordinator share (read-mostly; atomics and a cold `DashMap`).
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// Token verifier (dev mode without `auth.jwt_secret`).
    pub verifier: Verifier,
    /// Open connections on this Link (for `max_connections`).
    pub connections: AtomicUsize,
    /// Counter for anonymous dev-mode user ids.
    pub anonymous: AtomicU64,
    /// User → connections.
    pub users: Users,
    /// Per-shard counters.
    pub stats: Vec<ShardStats>,
    /// Hubs currently connected (maintained by the coordinator).
    pub hubs_connected: AtomicUsize,
    coordinator: mpsc::UnboundedSender<CoordMsg>,
    shards: OnceLock<Vec<mpsc::Sender<ShardMsg>>>,
}

impl Shared {
    /// Sends a message to the coordinator (ignored once it stopped).
    pub fn coordinate(&self, msg: CoordMsg) {
        let _ = self.coordinator.send(msg);
    }

    /// Registers connection `conn` of `user` and closes the user's oldest connections beyond
    /// `link.max_conns_per_user` (wherever they live).
    pub fn register_user(&self, user: &str, conn: u64) {
        for evicted in self.users.register(user, conn, self.config.link.max_conns_per_user) {
            self.coordinate(CoordMsg::CloseConn { conn: evicted, reason: linkcast_core::protocol::ClientError::TooManyConnections });
        }
    }

    /// The shards' inboxes.
    pub fn shards(&self) -> &[mpsc::Sender<ShardMsg>] {
        self.shards.get().map_or(&[], Vec::as_slice)
    }
}

/// A running Link. Dropping it without [`LinkHandle::shutdown`] stops it without waiting.
#[derive(Debug)]
pub struct LinkHandle {
    ws_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl LinkHandle {
    /// The bound WebSocket address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The bound QUIC client address, if any.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// Hubs this Link is connected to right now (a join or publish for a room whose owner hub
    /// is not connected is answered `503 hub unavailable`).
    pub fn connected_hubs(&self) -> usize {
        self.shared.hubs_connected.load(Ordering::Relaxed)
    }

    /// Open client connections per shard (how the kernel spread them).
    pub fn shard_connections(&self) -> Vec<usize> {
        self.shared.stats.iter().map(|s| s.connections.load(Ordering::Relaxed)).collect()
    }

    /// Memory-relevant counters summed over shards.
    pub fn stats(&self) -> LinkStats {
        let mut total = LinkStats::default();
        for s in &self.shared.stats {
            total.connections += s.connections.load(Ordering::Relaxed);
            total.ring_bytes += s.ring_bytes.load(Ordering::Relaxed);
            total.ring_items += s.ring_items.load(Ordering::Relaxed);
            total.queued_bytes += s.queued_bytes.load(Ordering::Relaxed);
        }
        total
    }

    /// Closes client connections with 1001 "server shutting down", stops the shards and the
    /// coordinator, and joins their threads (on a blocking thread, not the caller's runtime).
    pub async fn shutdown(mut self) {
        self.signal_stop();
        let threads = std::mem::take(&mut self.threads);
        let join = move || {
            for thread in threads {
                let _ = thread.join();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {
                let _ = tokio::task::spawn_blocking(join).await;
            }
            Err(_) => join(),
        }
    }

    fn signal_stop(&self) {
        for shard in self.shared.shards() {
            // A full queue is drained by the shard soon; `try_send` keeps this non-blocking,
            // and a blocking retry on a helper thread covers the rare full case.
            if let Err(mpsc::error::TrySendError::Full(msg)) = shard.try_send(ShardMsg::Shutdown) {
                let shard = shard.clone();
                std::thread::spawn(move || {
                    let _ = shard.blocking_send(msg);
                });
            }
        }
        self.shared.coordinate(CoordMsg::Shutdown);
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.signal_stop();
        }
    }
}

/// Binds the listening sockets and starts the shard and coordinator threads. Works inside or
/// outside a tokio runtime (it uses only its own threads).
pub fn start(options: LinkOptions, connector: Arc<dyn HubConnector>) -> std::io::Result<LinkHandle> {
    let config = options.config.clone();
    let shard_count = config.link.shard_count().clamp(1, 255);
    let verifier = Verifier::new(Some(config.auth.jwt_secret.as_str()));
    if verifier.is_dev() {
        tracing::warn!(
            "!!! Link {} runs in DEV MODE: no auth.jwt_secret configured, anonymous clients may join and publish in every room !!!",
            options.id
        );
    }
    let listeners = bind_reuseport(options.ws_addr, shard_count)?;
    let ws_addr = listeners[0].local_addr()?;
    let quic_socket = match options.quic_addr {
        Some(addr) => Some(std::net::UdpSocket::bind(addr)?),
        None => None,
    };
    let quic_addr = match &quic_socket {
        Some(socket) => Some(socket.local_addr()?),
        None => None,
    };

    let (coord_tx, coord_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        config: config.clone(),
        verifier,
        connections: AtomicUsize::new(0),
        anonymous: AtomicU64::new(0),
        users: Users::default(),
        stats: (0..shard_count).map(|_| ShardStats::default()).collect(),
        hubs_connected: AtomicUsize::new(0),
        coordinator: coord_tx,
        shards: OnceLock::new(),
    });
    let mut senders = Vec::with_capacity(shard_count);
    let mut receivers = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (tx, rx) = mpsc::channel(SHARD_QUEUE);
        senders.push(tx);
        receivers.push(rx);
    }
    let _ = shared.shards.set(senders.clone());

    let mut threads = Vec::with_capacity(shard_count + 1);
    let mut quic_socket = quic_socket;
    for (index, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let shared = shared.clone();
        let quic = if index == 0 { quic_socket.take() } else { None };
        let thread = std::thread::Builder::new().name(format!("link-{}-shard-{index}", options.id)).spawn(move || {
            if let Err(error) = shard::run(index, shared, listener, inbox, quic) {
                tracing::error!(%error, shard = index, "shard stopped with an error");
            }
        })?;
        threads.push(thread);
    }
    let hubs: Vec<HubId> = if config.hubs.is_empty() {
        vec![HubId(0)]
    } else {
        config.hubs.iter().map(|h| HubId(h.id)).collect()
    };
    let link = options.id;
    let coordinator_shared = shared.clone();
    let thread = std::thread::Builder::new().name(format!("link-{}-coordinator", options.id)).spawn(move || {
        if let Err(error) = coordinator::run(link, hubs, connector, senders, coord_rx, coordinator_shared) {
            tracing::error!(%error, "coordinator stopped with an error");
        }
    })?;
    threads.push(thread);
    tracing::info!(link = %options.id, %ws_addr, ?quic_addr, shards = shard_count, "link started");
    Ok(LinkHandle { ws_addr, quic_addr, shared, threads })
}

/// `count` listening sockets on the same address with SO_REUSEPORT; the first binds `addr`
/// (port 0 allowed), the others its actual port.
fn bind_reuseport(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    let mut bind_to = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(bind_to), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bind_to.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        if listeners.is_empty() {
            bind_to = listener.local_addr()?;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Microseconds since the Unix epoch (wall clock; for token expiry and rate limits).

/// Command-line flags of `linkcast link`.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// Cluster configuration file (TOML).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// This node's id in the configuration.
    #[arg(long)]
    pub id: u32,
    /// Override `link.shards` (0 = one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Override the WebSocket listen address of this Link's entry.
    #[arg(long)]
    pub ws: Option<SocketAddr>,
    /// Override the QUIC client listen address of this Link's entry.
    #[arg(long)]
    pub quic: Option<SocketAddr>,
    /// Do not listen for QUIC clients.
    #[arg(long)]
    pub no_quic: bool,
}

/// Runs `linkcast link` until Ctrl-C: loads the config, connects to the hubs over QUIC, serves
/// clients, `GET /metrics` and `GET /healthz` on the WebSocket port.
pub fn run_cli(args: LinkArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(&args.config)?;
    if let Some(shards) = args.shards {
        config.link.shards = shards;
    }
    let entry = config.link_entry(args.id).cloned();
    let ws_addr = args
        .ws
        .or(entry.as_ref().map(|e| e.ws))
        .ok_or_else(|| format!("link {} is not in the config and --ws was not given", args.id))?;
    let quic_addr = if args.no_quic { None } else { args.quic.or(entry.as_ref().map(|e| e.quic)) };
    if config.hubs.is_empty() {
        return Err("the config lists no hubs for this Link to connect to".into());
    }
    crate::telemetry::prometheus();
    let config = Arc::new(config);
    let id = LinkId(args.id);
    let connector = Arc::new(QuicHubConnector::new(id, config.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let handle = start(LinkOptions { id, config, ws_addr, quic_addr }, connector)?;
        tracing::info!(ws = %handle.ws_addr(), quic = ?handle.quic_addr(), "link {id} serving; Ctrl-C stops");
        tokio::signal::ctrl_c().await?;
        tracing::info!("stopping");
        handle.shutdown().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
