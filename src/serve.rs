//! `linkcast serve`: the embedded default — one hub and one Link in one process.
//!
//! ```text
//!   browser ──HTTP :7070──▶ hub (publish, locate, demo page)
//!      └──────WS :7080────▶ Link (shards = cores) ◀──in-process uplink::pair──▶ hub
//!   native client ──QUIC :7443──▶ Link
//! ```
//!
//! The hub and the Link talk through in-process channels instead of QUIC:
//! [`InProcessConnector`] implements the Link's [`HubConnector`] by making a
//! [`crate::uplink::pair`] and handing the hub's end to [`HubHandle::link_ports`]. The hub is
//! told the Link's addresses with [`HubHandle::register_link`] (the Link binds after the hub),
//! so `GET /v1/locate` answers with them.
//!
//! Without `auth.jwt_secret` (the default) this runs in **dev mode**: anonymous WebSocket
//! clients, and HTTP publishes without an API key unless `auth.api_keys` is set. That is said
//! loudly at start-up. [`start`] is what tests use (ports 0); [`run_cli`] wraps it for the
//! command line and runs until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::{Config, LinkEntry};
use crate::hub::{HubHandle, HubOptions};
use crate::link::{LinkHandle, LinkOptions};
use linkcast_core::placement::LinkId;
use linkcast_core::hub_directory::HubId;
use crate::uplink::{pair, BoxFuture, HubConnector, HubPort, LinkPort, PORT_CAPACITY};

/// The hub id of `serve`'s hub (the Link's default hub list when the config has no hubs).
pub const SERVE_HUB: HubId = HubId(0);
/// The Link id of `serve`'s Link.
pub const SERVE_LINK: LinkId = LinkId(1);

/// Longest [`start`] waits for the Link to attach to the hub.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Command-line flags of `linkcast serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Optional configuration file (TOML); defaults apply without it. `[[hubs]]`/`[[links]]`
    /// entries are ignored: serve is one hub and one Link.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// HTTP API and demo page address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub http: SocketAddr,
    /// WebSocket address of the Link.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub ws: SocketAddr,
    /// QUIC address of the Link for native clients.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub quic: SocketAddr,
    /// Link shards (threads); default: `link.shards` from the config (0 = one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Admin listener (`/metrics`, `/healthz`); default: `[admin] addr` from the config.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

/// What `serve` needs to start.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Configuration (limits, secrets); `hubs` and `links` lists are ignored.
    pub config: Arc<Config>,
    /// HTTP address (port 0 = any).
    pub http_addr: SocketAddr,
    /// WebSocket address (port 0 = any).
    pub ws_addr: SocketAddr,
    /// QUIC address for native clients; `None` = no QUIC.
    pub quic_addr: Option<SocketAddr>,
    /// Admin listener (`/metrics`, `/healthz`); `None` = `[admin] addr` of the config.
    pub admin_addr: Option<SocketAddr>,
}

/// A running `serve`: a hub and a Link.
#[derive(Debug)]
pub struct ServeHandle {
    hub: HubHandle,
    link: LinkHandle,
}

impl ServeHandle {
    /// The HTTP address (API and demo page).
    pub fn http_addr(&self) -> SocketAddr {
        self.hub.http_addr()
    }

    /// The Link's WebSocket address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.link.ws_addr()
    }

    /// The Link's QUIC address, if any.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.link.quic_addr()
    }

    /// The admin listener (`/metrics`, `/healthz`), if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.hub.admin_addr()
    }

    /// Stops the Link (clients get 1001), then the hub.
    pub async fn shutdown(self) {
        self.link.shutdown().await;
        self.hub.shutdown().await;
    }
}

/// Connects a Link to an in-process hub: each `connect` is a fresh [`pair`] whose hub end goes
/// to the hub's `link_ports()`.
#[derive(Debug, Clone)]
pub struct InProcessConnector {
    link: LinkId,
    ports: mpsc::Sender<LinkPort>,
}

impl InProcessConnector {
    /// A connector for Link `link` attaching to the hub that owns `ports`.
    pub fn new(link: LinkId, ports: mpsc::Sender<LinkPort>) -> Self {
        InProcessConnector { link, ports }
    }
}

impl HubConnector for InProcessConnector {
    fn connect(&self, hub: HubId) -> BoxFuture<'_, std::io::Result<HubPort>> {
        Box::pin(async move {
            let (hub_port, link_port) = pair(self.link, hub, PORT_CAPACITY);
            self.ports
                .send(link_port)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::NotConnected, "hub stopped"))?;
            Ok(hub_port)
        })
    }
}

/// Starts a hub and a Link on the current tokio runtime; returns once the Link is attached
/// (so `locate` answers), or after a bounded wait.
pub async fn start(options: ServeOptions) -> std::io::Result<ServeHandle> {
    let ServeOptions { config, http_addr, ws_addr, quic_addr, admin_addr } = options;
    let admin_addr = admin_addr.or(config.admin.addr);
    // One hub owning every room, one Link: the cluster lists do not apply.
    let mut own = (*config).clone();
    own.hubs.clear();
    own.links.clear();
    let config = Arc::new(own);
    let hub = crate::hub::start(HubOptions { id: SERVE_HUB, config: config.clone(), http_addr, quic_addr: None, admin_addr }).await?;
    let connector = Arc::new(InProcessConnector::new(SERVE_LINK, hub.link_ports()));
    let link = match crate::link::start(LinkOptions { id: SERVE_LINK, config, ws_addr, quic_addr, admin_addr: None }, connector) {
        Ok(link) => link,
        Err(e) => {
            hub.shutdown().await;
            return Err(e);
        }
    };
    let ws = link.ws_addr();
    hub.register_link(LinkEntry {
        id: SERVE_LINK.0,
        ws,
        quic: link.quic_addr().unwrap_or(ws),
        public_ws: None,
        public_quic: link.quic_addr().is_none().then(String::new),
        admin: None,
    });
    // Return a ready system: the Link's first connection to the hub takes a few ms.
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while !hub.is_link_connected(SERVE_LINK) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    if !hub.is_link_connected(SERVE_LINK) {
        tracing::warn!("the Link has not connected to the hub yet; locate answers 503 until it does");
    }
    Ok(ServeHandle { hub, link })
}

/// Runs `linkcast serve` until Ctrl-C / SIGTERM.
pub fn run_cli(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            let mut config = Config::default();
            config.apply_env(|key| std::env::var(key).ok());
            config.validate()?;
            config
        }
    };
    if let Some(shards) = args.shards {
        config.link.shards = shards;
    }
    let dev = config.auth.is_dev();
    let secured = config.is_secured(&[args.http, args.ws, args.quic]);
    let open_publish = config.auth.api_keys.is_empty() && dev;
    let options =
        ServeOptions { config: Arc::new(config), http_addr: args.http, ws_addr: args.ws, quic_addr: Some(args.quic), admin_addr: args.admin };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let serve = start(options).await?;
        let http = serve.http_addr();
        if dev {
            tracing::warn!("DEV MODE: no auth.jwt_secret (or LINKCAST_JWT_SECRET) configured — anyone can connect as an anonymous user");
        }
        if open_publish {
            tracing::warn!("DEV MODE: no API keys configured — anyone can publish over HTTP");
        }
        println!("linkcast serve is up in {} ms{}", started.elapsed().as_millis(), if dev { " (DEV MODE)" } else { "" });
        let (web, ws) = if serve.hub.is_https() { ("https", "wss") } else { ("http", "ws") };
        println!("  demo chat     {web}://{http}/");
        println!("  HTTP API      {web}://{http}/v1/...   (publish: POST /v1/rooms/ROOM/messages)");
        match serve.hub.admin_addr() {
            Some(admin) => println!("  metrics       http://{admin}/metrics  (admin listener)"),
            None if secured => println!("  metrics       not served (secured: set [admin] addr or --admin)"),
            None => println!("  metrics       {web}://{http}/metrics"),
        }
        println!("  WebSocket     {ws}://{}/ws", serve.ws_addr());
        if let Some(quic) = serve.quic_addr() {
            println!("  QUIC          {quic}  (ALPN linkcast/1)");
        }
        println!("Ctrl-C to stop.");
        crate::hub::shutdown_signal().await;
        tracing::info!("shutting down");
        serve.shutdown().await;
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}
