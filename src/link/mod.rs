//! The Link runtime: the gateway where client connections live (DESIGN "link" role).
//!
//! ```text
//!   hubs ──HubPort──▶ coordinator ──ShardMsg (crossbeam, byte-bounded, Bytes clones)──▶ shard 0..N ──▶ sockets
//!      ◀─interest, joins, publishes──┘   ▲ CoordMsg (join/leave/publish)      │
//!                                        └────────────────────────────────────┘
//! ```
//!
//! - [`start`] binds one WebSocket listening socket per shard on the same port (SO_REUSEPORT,
//!   so the kernel spreads accepts) and the optional QUIC client socket, then spawns the shard
//!   threads (`shard_thread.rs`, each a current-thread runtime over its `shard.rs` state: its
//!   connections and rings) and the coordinator thread (`coordinator.rs`: routing between hubs
//!   and shards, with the core's `LinkInterest` for membership and announcements). Each shard's
//!   inbox (`shard_inbox.rs`) is a lock-free queue bounded by `link.shard_queue_bytes`; the
//!   coordinator never waits on it: what a full shard cannot take becomes a `gap` for that
//!   shard's members only.
//! - A client connection is pinned to the shard that accepted it. Its life (admission, the core
//!   `LinkSession`, close) is `connection.rs`, whatever carries it: WebSocket (`upgrade.rs` for
//!   the HTTP exchange, `ws.rs` for the connection) or QUIC (`quic_clients.rs`); `wire.rs`
//!   encodes what the session sends for either.
//! - A room message is turned into its WebSocket frame once per Link (`ws_frame`); each shard
//!   pushes it once on its ring for the room; members drain it from their cursors (`fanout`),
//!   so a slow member costs a cursor, never a copy.
//! - `QuicHubConnector` (`hub_connector.rs`) reaches remote hubs for `linkcast link`; `serve`
//!   and tests pass their own [`HubConnector`] (e.g. over `uplink::pair`).
//!
//! Each piece gets what it needs, no more: the shard threads a `ShardSetup` (the Link-wide
//! `Admission` (`admission.rs`) and user registry, the coordinator's inbox, their own counters),
//! the coordinator the shards' inboxes and the hubs-connected counter, and [`LinkHandle`] the
//! counters and inboxes it reads or signals.
//!
//! Module dependency order (each file uses only files listed before it; no cycle):
//! `tally`, `registry`, `admission`, `socket`, `conn_io`, `wire`, `hub_connector` (leaves) →
//! `shard` → `shard_inbox` → `moderation` → `coordinator` → `connection` → `ws` → `upgrade`, `quic_clients` → `shard_thread` →
//! this file. (Pre-auth caps are the crate's `pre_auth.rs`, shared with the hub.)

mod admission;
mod conn_io;
mod connection;
mod coordinator;
mod hub_connector;
mod metrics;
mod moderation;
mod presence;
mod quic_clients;
mod registry;
mod shard;
mod shard_inbox;
mod shard_thread;
mod socket;
mod socket_poll;
mod tally;
mod tls_session;
mod upgrade;
mod wire;
mod ws;
mod ws_driver;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use linkcast_core::auth::Verifier;
use linkcast_core::hub_directory::HubId;

use crate::admin::AdminServer;
use crate::config::Config;
use crate::tls::{self, ServerCert};
use crate::uplink::HubConnector;
use admission::Admission;
use coordinator::{CoordInbox, CoordMsg};
pub use hub_connector::{Announce, QuicHubConnector};
use registry::Users;
use shard::{ShardMsg, ShardStats};
use shard_inbox::ShardSender;
use shard_thread::ShardSetup;
use upgrade::PortSetup;

pub use linkcast_core::placement::LinkId;

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
    /// Admin listener (`/metrics`, `/healthz`); `None` = none.
    pub admin_addr: Option<SocketAddr>,
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

/// A running Link. Dropping it without [`LinkHandle::shutdown`] stops it without waiting.
#[derive(Debug)]
pub struct LinkHandle {
    ws_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    /// Each shard's counters.
    stats: Vec<Arc<ShardStats>>,
    /// Hubs connected right now (kept by the coordinator).
    hubs_connected: Arc<AtomicUsize>,
    /// The shards' inboxes (to stop them).
    shards: Vec<ShardSender>,
    /// The coordinator's inbox (to stop it).
    coordinator: CoordInbox,
    threads: Vec<JoinHandle<()>>,
    /// The admin listener, if any (stops when dropped).
    admin: Option<AdminServer>,
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

    /// The bound admin listener address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::addr)
    }

    /// Hubs this Link is connected to right now (a join or publish for a room whose owner hub
    /// is not connected is answered `503 hub unavailable`).
    pub fn connected_hubs(&self) -> usize {
        self.hubs_connected.load(Ordering::Relaxed)
    }

    /// Open client connections per shard (how the kernel spread them).
    pub fn shard_connections(&self) -> Vec<usize> {
        self.stats.iter().map(|s| s.connections.load(Ordering::Relaxed)).collect()
    }

    /// Memory-relevant counters summed over shards.
    pub fn stats(&self) -> LinkStats {
        let mut total = LinkStats::default();
        for s in &self.stats {
            total.connections += s.connections.load(Ordering::Relaxed);
            total.ring_bytes += s.ring_bytes.load(Ordering::Relaxed);
            total.ring_items += s.ring_items.load(Ordering::Relaxed);
            total.queued_bytes += s.queued_bytes.load(Ordering::Relaxed);
        }
        total
    }

    /// Closes every client connection with 1001 and `link draining; retry_after_ms=N` (N at
    /// least `retry_after_ms`, jittered per connection), then waits until they are gone or
    /// `within` passed. The Link keeps running (call [`LinkHandle::shutdown`] next).
    pub async fn drain_clients(&self, retry_after_ms: u32, within: std::time::Duration) {
        for shard in &self.shards {
            shard.send(ShardMsg::Drain { retry_after_ms });
        }
        let deadline = tokio::time::Instant::now() + within;
        while self.stats().connections > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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
        for shard in &self.shards {
            // Control messages always pass the shard's byte bound (`shard_inbox.rs`).
            shard.send(ShardMsg::Shutdown);
        }
        let _ = self.coordinator.send(CoordMsg::Shutdown);
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.signal_stop();
        }
    }
}

/// `link.keepalive = "tcp"`: the kernel fires the keep-alive timers of sockets that went silent
/// together (a join storm, a reconnect storm) in one softirq run, and on loopback every probe
/// and its answer pass the CPU's input backlog (`net.core.netdev_max_backlog`, 1000 by default):
/// beyond it they are dropped, and `TCP_USER_TIMEOUT` then ends healthy connections (measured on
/// loopback: 12,590 of 40,000 within 15 s at the default; none of 20,000 at 100,000). Warns when
/// the backlog is smaller than the connections this Link may hold.
fn warn_if_probes_may_drop(max_connections: usize) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog") else { return };
    if let Ok(backlog) = text.trim().parse::<usize>() {
        if backlog < max_connections {
            tracing::warn!(
                backlog,
                max_connections,
                "link.keepalive = \"tcp\": net.core.netdev_max_backlog is below link.max_connections; keep-alive probes of sockets that went silent together can be dropped and healthy connections ended (raise it, see docs/operations.md)"
            );
        }
    }
}

/// Binds the listening sockets and starts the shard and coordinator threads. Works inside or
/// outside a tokio runtime (it uses only its own threads).
pub fn start(options: LinkOptions, connector: Arc<dyn HubConnector>) -> std::io::Result<LinkHandle> {
    let config = options.config.clone();
    let shard_count = config.link.shard_count().clamp(1, 255);
    let auth = &config.auth;
    let verifier = Verifier::with_secrets(std::iter::once(auth.jwt_secret.as_str()).chain(auth.jwt_secrets.iter().map(String::as_str)))
        .issuer(Some(auth.jwt_issuer.as_str()))
        .audience(Some(auth.jwt_audience.as_str()));
    if verifier.is_dev() {
        tracing::warn!(
            "!!! Link {} runs in DEV MODE: no auth.jwt_secret configured, anonymous clients may join and publish in every room !!!",
            options.id
        );
    }
    if config.link.keepalive == crate::config::KeepAlive::Tcp {
        warn_if_probes_may_drop(config.link.max_connections);
    }
    let cert = ServerCert::shared(&config.tls).map_err(std::io::Error::other)?;
    let wss = match cert.is_configured() {
        true => Some(Arc::new(tls::server_config(cert.clone(), &[b"http/1.1"]).map_err(std::io::Error::other)?)),
        false => None,
    };
    if wss.is_none() && !options.ws_addr.ip().is_loopback() {
        tracing::warn!(ws = %options.ws_addr, "no [tls] certificate: client tokens cross the network in clear text on ws://");
    }
    let listeners = bind_reuseport(options.ws_addr, shard_count)?;
    let ws_addr = listeners[0].local_addr()?;
    let quic_socket = match options.quic_addr {
        Some(addr) => Some(crate::udp_socket::bind_busy(addr, "link", "clients")?),
        None => None,
    };
    let quic_addr = match &quic_socket {
        Some(socket) => Some(socket.local_addr()?),
        None => None,
    };

    let own_addrs: Vec<SocketAddr> = [Some(ws_addr), quic_addr].into_iter().flatten().collect();
    let secured = config.is_secured(&own_addrs);
    let admin = options.admin_addr.map(|addr| AdminServer::start(addr, &config.auth)).transpose()?;
    let port = PortSetup {
        tls: wss,
        handshakes: crate::pre_auth::PreAuthCaps::shared_under_pressure(config.link.max_handshakes, config.link.max_handshakes_per_ip),
        admin_routes: !secured && admin.is_none(),
    };
    let admission = Arc::new(Admission::new(verifier, config.link.max_connections, options.id.0));
    let users = Arc::new(Users::default());
    let stats: Vec<Arc<ShardStats>> = (0..shard_count).map(|_| Arc::new(ShardStats::default())).collect();
    let hubs_connected = Arc::new(AtomicUsize::new(0));
    metrics::register(&stats, &hubs_connected, &cert);
    let (coord_tx, coord_rx) = coordinator::inbox();
    let mut senders = Vec::with_capacity(shard_count);
    let mut receivers = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (tx, rx) = shard_inbox::channel(config.link.shard_queue_bytes);
        senders.push(tx);
        receivers.push(rx);
    }

    let mut threads = Vec::with_capacity(shard_count + 1);
    let mut quic = quic_socket.map(|socket| (socket, senders.clone(), cert.clone()));
    for (index, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let setup = ShardSetup {
            index,
            link: config.link.clone(),
            admission: admission.clone(),
            users: users.clone(),
            coordinator: coord_tx.clone(),
            stats: stats[index].clone(),
            listener,
            port: port.clone(),
            inbox,
            quic: if index == 0 { quic.take() } else { None },
        };
        let thread = std::thread::Builder::new().name(format!("link-{}-shard-{index}", options.id)).spawn(move || {
            if let Err(error) = shard_thread::run(setup) {
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
    let coordinator_shards = senders.clone();
    let coordinator_hubs = hubs_connected.clone();
    let moderation = moderation::LinkModeration::new(link, users.clone(), admission.moderation().clone());
    let thread = std::thread::Builder::new().name(format!("link-{}-coordinator", options.id)).spawn(move || {
        if let Err(error) = coordinator::run(link, hubs, connector, coordinator_shards, coord_rx, coordinator_hubs, moderation) {
            tracing::error!(%error, "coordinator stopped with an error");
        }
    })?;
    threads.push(thread);
    tracing::info!(link = %options.id, %ws_addr, ?quic_addr, shards = shard_count, "link started");
    Ok(LinkHandle { ws_addr, quic_addr, stats, hubs_connected, shards: senders, coordinator: coord_tx, threads, admin })
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

/// Command-line flags of `linkcast link`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("identity").required(true).args(["id", "id_from_hostname"])))]
pub struct LinkArgs {
    /// Cluster configuration file (TOML).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// This node's id (its `[[links]]` entry, if listed).
    #[arg(long)]
    pub id: Option<u32>,
    /// Take the id from the host name's trailing `-N` (a StatefulSet ordinal: `link-3` → 3).
    #[arg(long, conflicts_with = "id")]
    pub id_from_hostname: bool,
    /// WebSocket URL announced to the hubs for `locate` (`ws://` or `wss://`; default: the
    /// entry's `public_ws`, else `ws(s)://{--ws}/ws`).
    #[arg(long)]
    pub public_ws: Option<String>,
    /// QUIC `host:port` announced to the hubs for native clients (default: the entry's
    /// `public_quic`, else the QUIC listen address).
    #[arg(long)]
    pub public_quic: Option<String>,
    /// Admin listener (`/metrics`, `/healthz`), also announced to the hubs (default: the
    /// entry's `admin`).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
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

/// Runs `linkcast link` until Ctrl-C or SIGTERM (systemd, Kubernetes): loads the config, checks
/// it may start (a secured Link needs the cluster secret and a way to verify non-loopback hubs),
/// connects to the hubs over QUIC, serves clients, and `GET /metrics` / `GET /healthz` on its
/// admin listener (or, unsecured without one, on the WebSocket port).
pub fn run_cli(args: LinkArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(&args.config)?;
    if let Some(shards) = args.shards {
        config.link.shards = shards;
    }
    let id = match (args.id, args.id_from_hostname) {
        (Some(id), _) => id,
        (None, _) => {
            let host = hostname()?;
            id_from_hostname(&host).ok_or_else(|| format!("--id-from-hostname: host name {host:?} does not end in -N"))?
        }
    };
    let entry = config.link_entry(id).cloned();
    let ws_addr = args.ws.or(entry.as_ref().map(|e| e.ws)).ok_or_else(|| format!("link {id} is not in [[links]]: give --ws (and --quic or --no-quic)"))?;
    if entry.is_none() && args.quic.is_none() && !args.no_quic {
        return Err(format!("link {id} is not in [[links]]: give --quic ADDR or --no-quic").into());
    }
    let quic_addr = if args.no_quic { None } else { args.quic.or(entry.as_ref().map(|e| e.quic)) };
    if config.hubs.is_empty() {
        return Err("the config lists no hubs for this Link to connect to".into());
    }
    let own_addrs: Vec<SocketAddr> = [Some(ws_addr), quic_addr].into_iter().flatten().collect();
    config.check_cluster_node(&own_addrs, true)?;
    let admin_addr = args.admin.or(entry.as_ref().and_then(|e| e.admin));
    let announce = announce(&args, entry.as_ref(), config.tls.serves_tls(), ws_addr, quic_addr, admin_addr)?;
    crate::telemetry::prometheus();
    let drain = std::time::Duration::from_secs(config.link.drain_secs);
    let config = Arc::new(config);
    let id = LinkId(id);
    let connector = Arc::new(QuicHubConnector::new(id, config.clone()).announcing(announce));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let handle = start(LinkOptions { id, config, ws_addr, quic_addr, admin_addr }, connector.clone())?;
        tracing::info!(ws = %handle.ws_addr(), quic = ?handle.quic_addr(), "link {id} serving; Ctrl-C or SIGTERM drains and stops");
        crate::hub::shutdown_signal().await;
        // Drain (docs/operations.md "Adding and draining Links"): the hubs stop offering this
        // Link at once; its clients keep their messages for `link.drain_secs`, then are closed
        // with 1001 and a retry hint, and re-locate onto other Links.
        let drain_ms = u32::try_from(drain.as_millis()).unwrap_or(u32::MAX);
        tracing::info!(drain_ms, "draining: hubs stop offering this Link; clients are closed after the drain time");
        connector.start_draining(drain_ms);
        tokio::time::sleep(drain).await;
        handle.drain_clients(DRAIN_RETRY_AFTER_MS, std::time::Duration::from_secs(3)).await;
        tracing::info!("clients closed; stopping");
        handle.shutdown().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// Least retry hint given to the clients of a draining Link, milliseconds (each gets up to
/// twice this, jittered).
const DRAIN_RETRY_AFTER_MS: u32 = 500;

/// The addresses this Link announces to the hubs, checked as the hubs' frame codec will check
/// them (a Link that would be refused does not start).
fn announce(
    args: &LinkArgs,
    entry: Option<&crate::config::LinkEntry>,
    wss: bool,
    ws_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
) -> Result<Announce, Box<dyn std::error::Error>> {
    use linkcast_core::frame::{is_valid_admin_addr, is_valid_public_quic, is_valid_public_ws};
    let ws = match (&args.public_ws, entry) {
        (Some(url), _) => url.clone(),
        (None, Some(entry)) => entry.ws_url(wss),
        (None, None) if ws_addr.ip().is_unspecified() || ws_addr.port() == 0 => {
            return Err(format!("--ws {ws_addr} is not an address clients can dial: give --public-ws URL").into())
        }
        (None, None) => format!("{}://{ws_addr}/ws", if wss { "wss" } else { "ws" }),
    };
    let quic = match (&args.public_quic, entry) {
        (Some(addr), _) => addr.clone(),
        _ if quic_addr.is_none() => String::new(),
        (None, Some(entry)) => entry.quic_addr(),
        (None, None) => quic_addr.map(|a| a.to_string()).unwrap_or_default(),
    };
    let admin = admin_addr.map(|a| a.to_string()).unwrap_or_default();
    if !is_valid_public_ws(&ws) {
        return Err(format!("announced WebSocket URL {ws:?} is not ws://HOST:PORT[/PATH] or wss://…").into());
    }
    if !is_valid_public_quic(&quic) {
        return Err(format!("announced QUIC address {quic:?} is not HOST:PORT").into());
    }
    if !is_valid_admin_addr(&admin) {
        return Err(format!("announced admin address {admin:?} is not IP:PORT").into());
    }
    Ok(Announce { ws, quic, admin })
}

/// This host's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
fn hostname() -> Result<String, Box<dyn std::error::Error>> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_default();
    let name = name.trim();
    if name.is_empty() {
        return Err("--id-from-hostname: cannot read this host's name".into());
    }
    Ok(name.to_owned())
}

/// The id in a host name's trailing `-N` (`link-3` → 3, `chat-links-12.svc` → none: the name
/// must end in the digits).
fn id_from_hostname(host: &str) -> Option<u32> {
    let (_, digits) = host.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod cli_tests {
    use super::id_from_hostname;

    #[test]
    fn the_id_is_the_host_names_ordinal() {
        assert_eq!(id_from_hostname("link-3"), Some(3));
        assert_eq!(id_from_hostname("chat-links-12"), Some(12));
        assert_eq!(id_from_hostname("link-0"), Some(0));
        for bad in ["link", "link-", "link-3a", "link-+3", "link-99999999999", "links-3.example"] {
            assert_eq!(id_from_hostname(bad), None, "{bad}");
        }
    }
}
