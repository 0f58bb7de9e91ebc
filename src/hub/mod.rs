//! The hub runtime: room owner, sequencer and HTTP API (DESIGN.md, "hub").
//!
//! A hub is a few tasks on the caller's tokio runtime around the sans-IO [`RoomTable`]:
//! - the **hub task** (`driver.rs`) owns the table; every publish and query reaches it on the
//!   bounded HTTP channel, every Link frame on the Links' channel (each Link connection bounded by
//!   its own in-flight byte budget), both served in turn; it drains what the table owes each Link
//!   into per-Link byte-bounded queues (`queue.rs`) that never block it;
//! - **Link connections** (`links.rs`): in-process ports from [`HubHandle::link_ports`] and, if
//!   a QUIC address is given, the Link listener (ALPN `linkcast-hub/1`, `Hello` with the
//!   cluster secret first); a reader and a writer task per Link;
//! - the **HTTP API** (`http.rs`, axum, served by `server.rs`: hyper with a connection cap,
//!   head and request timeouts, and `https://` with the `[tls]` certificate): publish, room info,
//!   history, locate (`locate.rs`) and the demo page, with JSON errors (`error.rs`), per-key
//!   publish rate limits (`rate.rs`) and forwarding to the room's owner hub (`forward.rs`);
//!   presence and the cluster-wide room list in `presence_api.rs`; the hottest rooms by publish
//!   rate in `top_api.rs`.
//!   Reads need a `read`-scoped API key or a client token allowing the room once the hub is
//!   secured; `/metrics` and `/healthz` are then on the admin listener (`admin.rs`) only.
//! - the **backend hooks** (`hooks/`, optional): the publish proxy the hub task hands client
//!   publishes to (and takes decisions back from), and the webhook task fed by the table's
//!   occupancy changes — neither ever makes the hub task wait on the backend.
//!
//! In a cluster every hub reads the same config; [`HubDirectory`] over `[[hubs]]` names each
//! room's one owner. With no `[[hubs]]` (as in `serve`) this hub owns every room.
//!
//! [`start`] binds everything and returns a [`HubHandle`]; [`HubHandle::shutdown`] stops the
//! tasks (the shutdown signal is passed to each as an argument, STYLE.md §8). [`run_cli`] is
//! `linkcast hub --config F --id N`.
//!
//! [`RoomTable`]: linkcast_core::room_table::RoomTable

mod cors;
mod driver;
mod durable;
mod error;
mod forward;
mod hooks;
mod http;
mod links;
mod links_api;
mod locate;
mod moderation;
mod presence_api;
mod queue;
mod rate;
mod server;
mod store_tasks;
mod top_api;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use error::ApiError;
pub use http::{DEFAULT_HISTORY_LIMIT, FROM_HEADER, IDEMPOTENCY_KEY_HEADER};
pub use locate::Located;

use crate::admin::AdminServer;
use crate::config::{Config, LinkEntry, Scope};
use crate::tls::{self, ServerCert};
use linkcast_core::auth::Verifier;
use linkcast_core::hub_directory::{HubDirectory, HubId};
use crate::uplink::LinkPort;
use driver::{lock, HubInput, EVENT_CAPACITY};
use links::LinkContext;
use locate::Locator;
use rate::RateLimiter;

/// What a hub needs to start.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// This hub's id (its entry in `[[hubs]]`, if the config lists hubs).
    pub id: HubId,
    /// The cluster configuration.
    pub config: Arc<Config>,
    /// HTTP API listen address (port 0 = any).
    pub http_addr: SocketAddr,
    /// QUIC listen address for Links; `None` = in-process Links only.
    pub quic_addr: Option<SocketAddr>,
    /// Admin listener (`/metrics`, `/healthz`); `None` = none.
    pub admin_addr: Option<SocketAddr>,
}

/// A running hub. Dropping it without [`HubHandle::shutdown`] also stops the hub's tasks
/// (their shutdown signal is this handle's sender), without waiting for them.
#[derive(Debug)]
pub struct HubHandle {
    http_addr: SocketAddr,
    quic_addr: Option<SocketAddr>,
    ports: mpsc::Sender<LinkPort>,
    locator: Arc<Mutex<Locator>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin: Option<AdminServer>,
    https: bool,
}

impl HubHandle {
    /// The bound admin listener address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::addr)
    }

    /// True when the API port serves `https://`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound QUIC address for Links, if any.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// Where in-process Links attach: send the hub's end of a [`crate::uplink::pair`].
    pub fn link_ports(&self) -> mpsc::Sender<LinkPort> {
        self.ports.clone()
    }

    /// Tells `locate` where a Link can be reached (for Links not listed in the config, such
    /// as the one `serve` binds after the hub). A Link is located once it is also connected.
    pub fn register_link(&self, entry: LinkEntry) {
        lock(&self.locator).register(entry);
    }

    /// True while Link `link` is connected to this hub (in-process or over QUIC).
    pub fn is_link_connected(&self, link: linkcast_core::placement::LinkId) -> bool {
        lock(&self.locator).is_connected(link)
    }

    /// Stops accepting, closes Link connections and waits (bounded) for the tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// What the HTTP handlers share: the hub task's inbox, the locator, rate limits, ownership.
pub(crate) struct ApiState {
    id: HubId,
    config: Arc<Config>,
    events: mpsc::Sender<HubInput>,
    locator: Arc<Mutex<Locator>>,
    rate: RateLimiter,
    /// `None` when the config lists no hubs: this hub owns every room.
    directory: Option<HubDirectory>,
    /// Live hubs as the hub task last saw them (with a Redis store; empty = all configured).
    live: watch::Receiver<Vec<HubId>>,
    /// Client tokens, for reads by a client allowed the room (`None` in dev mode).
    tokens: Option<Verifier>,
    /// How requests are forwarded to owner hubs (TLS when this cluster serves https).
    dialer: forward::Dialer,
    /// Reads need credentials (principle 8): any credential is configured or the node listens
    /// beyond loopback.
    secured: bool,
    /// `linkcast_hub_publish_seconds{hub}`: HTTP publish received → acknowledged (owner only).
    publish_seconds: metrics::Histogram,
}

/// The token of an `Authorization: Bearer <token>` header (scheme matched in any case).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl ApiState {
    /// The API key of a publish (`""` in dev mode without keys), or why it is refused.
    fn api_key(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let auth = &self.config.auth;
        if auth.scoped_keys().next().is_none() {
            return if auth.is_dev() { Ok(String::new()) } else { Err(ApiError::Unauthorized("no API keys are configured")) };
        }
        let Some(bearer) = bearer(headers) else { return Err(ApiError::Unauthorized("API key required (Authorization: Bearer)")) };
        match self.key_scopes(bearer) {
            Some(scopes) if scopes.contains(&Scope::Publish) => Ok(bearer.to_owned()),
            Some(_) => Err(ApiError::Forbidden("this API key may not publish")),
            None => Err(ApiError::Unauthorized("bad API key")),
        }
    }

    /// Checks an operator's request (moderation, admin views): an API key with the `admin` scope;
    /// open only in dev mode without any API key (as publishing is).
    fn check_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let auth = &self.config.auth;
        if auth.scoped_keys().next().is_none() {
            return if auth.is_dev() { Ok(()) } else { Err(ApiError::Unauthorized("no API keys are configured")) };
        }
        let Some(bearer) = bearer(headers) else { return Err(ApiError::Unauthorized("API key required (Authorization: Bearer)")) };
        match self.key_scopes(bearer) {
            Some(scopes) if scopes.contains(&Scope::Admin) => Ok(()),
            Some(_) => Err(ApiError::Forbidden("this API key has no admin scope")),
            None => Err(ApiError::Unauthorized("bad API key")),
        }
    }

    fn key_scopes(&self, bearer: &str) -> Option<&[Scope]> {
        self.config
            .auth
            .scoped_keys()
            .find(|(key, _)| linkcast_core::auth::constant_time_eq(key.as_bytes(), bearer.as_bytes()))
            .map(|(_, scopes)| scopes)
    }

    /// Checks a read of `room` (info, history, locate): open on an unsecured node; otherwise an
    /// API key with the `read` scope, or a client token (JWT) whose `rooms` allow `room`.
    fn check_read(&self, headers: &HeaderMap, room: &str) -> Result<(), ApiError> {
        if !self.secured {
            return Ok(());
        }
        let Some(bearer) = bearer(headers) else {
            return Err(ApiError::Unauthorized("credentials required (Authorization: Bearer API key or client token)"));
        };
        if let Some(scopes) = self.key_scopes(bearer) {
            return match scopes.contains(&Scope::Read) {
                true => Ok(()),
                false => Err(ApiError::Forbidden("this API key may not read rooms")),
            };
        }
        let Some(tokens) = &self.tokens else { return Err(ApiError::Unauthorized("bad API key")) };
        match tokens.verify(Some(bearer), crate::clock::now_micros() / 1_000_000, "") {
            Ok(claims) if claims.allows(room) => Ok(()),
            Ok(_) => Err(ApiError::Forbidden("the token does not allow this room")),
            Err(error) => Err(ApiError::Unauthorized(error.reason())),
        }
    }

    /// The owner's HTTP address when another hub owns `room`; 503 if this request was
    /// already forwarded (hubs disagree about ownership).
    fn owner_elsewhere(&self, room: &str, headers: &HeaderMap) -> Result<Option<(SocketAddr, Option<String>)>, ApiError> {
        let Some(owner) = self.directory.as_ref().and_then(|d| d.owner_among(room, &self.live.borrow())) else { return Ok(None) };
        if owner == self.id {
            return Ok(None);
        }
        if headers.contains_key(forward::FORWARDED_HEADER) {
            return Err(ApiError::Unavailable("room owner mismatch: hubs have different [[hubs]] lists"));
        }
        match self.config.hub_entry(owner.0) {
            Some(entry) => Ok(Some((entry.http, entry.tls_name.clone()))),
            None => Err(ApiError::Unavailable("owner hub unknown")),
        }
    }
}

/// Metric handles of one hub (label `hub` = its id).
#[derive(Clone)]
pub(crate) struct HubMetrics {
    published: metrics::Counter,
    link_sends: metrics::Counter,
    /// `Presence` frames (member counts) queued to Links.
    presence_sends: metrics::Counter,
    /// `Member` frames (join/leave events) queued to Links.
    member_sends: metrics::Counter,
    queue_dropped: metrics::Counter,
    rooms: metrics::Gauge,
    links: metrics::Gauge,
    /// Frames of network Links dropped or refused by re-validation.
    link_frames_dropped: metrics::Counter,
    /// Bytes queued towards all Links, including queues being freed.
    queued_bytes: metrics::Gauge,
}

impl HubMetrics {
    fn new(id: HubId) -> Self {
        // The recorder must exist before handles are made, or they record nowhere.
        let _ = crate::telemetry::prometheus();
        let hub = id.0.to_string();
        HubMetrics {
            published: metrics::counter!("linkcast_hub_published_total", "hub" => hub.clone()),
            link_sends: metrics::counter!("linkcast_hub_link_sends_total", "hub" => hub.clone()),
            presence_sends: metrics::counter!("linkcast_hub_presence_sends_total", "hub" => hub.clone()),
            member_sends: metrics::counter!("linkcast_hub_member_event_sends_total", "hub" => hub.clone()),
            queue_dropped: metrics::counter!("linkcast_hub_link_queue_dropped_total", "hub" => hub.clone()),
            rooms: metrics::gauge!("linkcast_hub_rooms", "hub" => hub.clone()),
            links: metrics::gauge!("linkcast_hub_links", "hub" => hub.clone()),
            link_frames_dropped: metrics::counter!("linkcast_hub_link_frames_dropped_total", "hub" => hub.clone()),
            queued_bytes: metrics::gauge!("linkcast_hub_link_queued_bytes", "hub" => hub),
        }
    }
}

/// Starts a hub on the current tokio runtime: binds HTTP (and QUIC), spawns its tasks.
///
/// A hub with a Link listener (`quic_addr`) is a cluster node: it refuses to start when it is
/// secured and has no cluster secret (`Config::check_cluster_node`).
pub async fn start(options: HubOptions) -> std::io::Result<HubHandle> {
    let HubOptions { id, config, http_addr, quic_addr, admin_addr } = options;
    let own_addrs: Vec<SocketAddr> = [Some(http_addr), quic_addr].into_iter().flatten().collect();
    if quic_addr.is_some() {
        config.check_cluster_node(&own_addrs, false).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    let secured = config.is_secured(&own_addrs);
    let cert = ServerCert::shared(&config.tls).map_err(std::io::Error::other)?;
    let https = match cert.is_configured() {
        true => Some(Arc::new(tls::server_config(cert.clone(), &[b"http/1.1"]).map_err(std::io::Error::other)?)),
        false => None,
    };
    if https.is_none() && !http_addr.ip().is_loopback() {
        tracing::warn!(%http_addr, "no [tls] certificate: API keys and tokens cross the network in clear text on http://");
    }
    let listener = tokio::net::TcpListener::bind(http_addr).await?;
    let http_addr = listener.local_addr()?;
    let endpoint = quic_addr.map(|addr| links::quic_endpoint(addr, cert.clone(), config.tls.client_ca_file.as_deref(), Duration::from_millis(config.hub.link_idle_timeout_ms))).transpose()?;
    let quic_addr = endpoint.as_ref().map(quinn::Endpoint::local_addr).transpose()?;
    let admin = admin_addr.map(|addr| AdminServer::start(addr, &config.auth)).transpose()?;
    let dialer = match &https {
        None => forward::Dialer::Plain,
        Some(_) => {
            let trust = tls::Trust::from_config(&config.tls).map_err(std::io::Error::other)?;
            if let Some(hub) = config.hubs.iter().find(|h| trust.check_target(h.http).is_err()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("hub {} at {} is not on loopback: set tls.ca_file or tls.pin_sha256 to verify it", hub.id, hub.http),
                ));
            }
            let client = trust.client_config(&[b"http/1.1"]).map_err(std::io::Error::other)?;
            forward::Dialer::Tls(tokio_rustls::TlsConnector::from(Arc::new(client)))
        }
    };

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (events, events_rx) = mpsc::channel(EVENT_CAPACITY);
    let hub = &config.hub;
    let locator = Arc::new(Mutex::new(Locator::new(&config.links, hub.group_size, hub.load_factor, hub.max_rooms, config.tls.serves_tls())));
    let _ = crate::telemetry::prometheus(); // the recorder first, or the gauge records nowhere
    driver::lock(&locator).set_draining_gauge(metrics::gauge!("linkcast_hub_links_draining", "hub" => id.0.to_string()));
    let directory = (!config.hubs.is_empty()).then(|| HubDirectory::new(config.hubs.iter().map(|h| HubId(h.id))));
    let (live_tx, live) = watch::channel(Vec::new());
    let (moderation_writes, moderation_rx) = match config.store.redis.is_empty() {
        true => (None, None),
        false => {
            let (tx, rx) = mpsc::channel(moderation::MAX_STORE_WRITES);
            (Some(tx), Some((rx, events.clone())))
        }
    };
    let store = match config.store.redis.is_empty() {
        true => None,
        false => Some(start_store(id, &config, live_tx, &shutdown_rx, moderation_rx).await?),
    };
    let _ = crate::telemetry::prometheus(); // before any metric handle is made
    let shared = Arc::new(ApiState {
        id,
        config: config.clone(),
        events: events.clone(),
        locator: locator.clone(),
        rate: RateLimiter::new(hub.publish_rate),
        directory,
        live,
        tokens: (!config.auth.is_dev()).then(|| Verifier::new(Some(config.auth.jwt_secret.as_str()))),
        dialer,
        secured,
        publish_seconds: metrics::histogram!("linkcast_hub_publish_seconds", "hub" => id.0.to_string()),
    });
    // Link events: unbounded as a channel, bounded per connection by its in-flight byte budget
    // (`links::LINK_INFLIGHT_BYTES`) and in connections by the Link port's caps.
    let (link_events, link_events_rx) = mpsc::unbounded_channel();
    let queued_total = Arc::new(AtomicUsize::new(0));
    let metrics = HubMetrics::new(id);
    metrics::gauge!("linkcast_hub_link_queue_limit_bytes", "hub" => id.0.to_string()).set(hub.link_queue_bytes as f64);
    crate::cert_expiry::export("hub", &cert);
    let ctx = LinkContext {
        events: link_events,
        generations: Arc::new(AtomicU64::new(0)),
        queue_bytes: hub.link_queue_bytes,
        queued_total: queued_total.clone(),
        cluster_secret: Arc::from(config.auth.cluster_secret.as_str()),
        allowed: (!config.links.is_empty()).then(|| Arc::new(config.links.iter().map(|l| l.id).collect())),
        mutual_tls: config.tls.client_ca_file.is_some(),
        live: Arc::default(),
        write_timeout: Duration::from_millis(hub.link_write_timeout_ms.max(1)),
        metrics: links::LinkPortMetrics::new(&id.0.to_string()),
    };

    let (store, mut tasks) = match store {
        Some((path, tasks)) => (Some(path), tasks),
        None => (None, Vec::new()),
    };
    let hooks = hooks::start(id, &config, secured, &shutdown_rx)?;
    tasks.extend(hooks.tasks.into_iter().map(tokio::spawn));
    tasks.push(tokio::spawn(driver::run(
        config.hub.table_limits(),
        events_rx,
        link_events_rx,
        queued_total,
        locator.clone(),
        metrics,
        store,
        (hooks.hooks, hooks.decided),
        moderation::HubModeration::with_store(moderation_writes),
        shutdown_rx.clone(),
    )));
    let (ports, ports_rx) = mpsc::channel(64);
    tasks.push(tokio::spawn(links::attach_ports(ctx.clone(), ports_rx, shutdown_rx.clone())));
    if let Some(endpoint) = endpoint {
        tasks.push(tokio::spawn(links::accept_quic(ctx, endpoint, shutdown_rx.clone())));
    }
    let app = http::router(shared, !secured && admin.is_none());
    let limits = server::Limits {
        max_connections: hub.max_http_connections,
        header_timeout: Duration::from_secs(hub.http_header_timeout_secs.max(1)),
    };
    let is_https = https.is_some();
    tasks.push(tokio::spawn(server::serve(listener, app, https, limits, shutdown_rx)));
    tracing::info!(hub = id.0, %http_addr, quic = ?quic_addr, https = is_https, "hub started");
    Ok(HubHandle { http_addr, quic_addr, ports, locator, shutdown, tasks, admin, https: is_https })
}

/// Connects the Redis room store (`[store] redis`), reads the live hubs once, and spawns the
/// store worker and the membership task (`store_tasks.rs`): what the hub task needs to run
/// durable rooms.
async fn start_store(
    id: HubId,
    config: &Config,
    live_tx: watch::Sender<Vec<HubId>>,
    shutdown: &watch::Receiver<bool>,
    moderation: Option<(mpsc::Receiver<moderation::StoreWrite>, mpsc::Sender<HubInput>)>,
) -> std::io::Result<(driver::StorePath, Vec<JoinHandle<()>>)> {
    use crate::store::{RedisStore, StoreLimits};
    let hub = &config.hub;
    // Start time: a restarted hub's incarnation is newer than its predecessor's (the store lets a
    // newer incarnation take its own old leases, never an older one).
    let incarnation = crate::clock::now_micros();
    let limits = StoreLimits {
        history_messages: hub.history_messages,
        history_bytes: hub.history_bytes,
        dedupe_keys: hub.dedupe_keys,
        dedupe_micros: hub.dedupe_secs.saturating_mul(1_000_000),
        room_ttl_ms: hub.room_idle_secs.saturating_mul(1_000),
    };
    let store = RedisStore::connect(&config.store, id.0, incarnation, limits)
        .await
        .map_err(|e| std::io::Error::other(format!("room store: {e}")))?;
    let hubs: Vec<u32> = match config.hubs.is_empty() {
        true => vec![id.0],
        false => config.hubs.iter().map(|h| h.id).collect(),
    };
    let io = |e: crate::store::StoreError| std::io::Error::other(format!("room store: {e}"));
    store.heartbeat().await.map_err(io)?;
    // Every configured hub counts as live until the membership task's grace period is over.
    let live: Vec<HubId> = hubs.iter().map(|&h| HubId(h)).collect();
    tracing::info!(hub = id.0, "room store connected: rooms are durable");
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (events, events_rx) = mpsc::unbounded_channel();
    let directory = HubDirectory::new(hubs.iter().map(|&h| HubId(h)));
    let durable = durable::Durable::new(id, directory, live_tx, commands, driver::epoch_seed(), hub.room_idle_secs.saturating_mul(1_000_000), hub.max_rooms);
    let period = Duration::from_millis(config.store.heartbeat_ms.max(10));
    let grace = Duration::from_millis(config.store.hub_ttl_ms);
    let mut tasks = Vec::new();
    if let Some((writes, hub_events)) = moderation {
        // Bans and revocations: `{prefix}:bans` / `{prefix}:revoked` (moderation.rs).
        tasks.push(tokio::spawn(moderation::run_store(store.clone(), writes, hub_events, shutdown.clone())));
    }
    tasks.extend([
        tokio::spawn(store_tasks::run_worker(store.clone(), commands_rx, events.clone(), shutdown.clone())),
        tokio::spawn(store_tasks::run_membership(store, hubs, id.0, period, grace, live, events, shutdown.clone())),
    ]);
    Ok((driver::StorePath { durable, events: events_rx }, tasks))
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM: what `hub` and `serve` run until.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Command-line flags of `linkcast hub`.
#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// Cluster configuration file (TOML); this hub's addresses come from its `[[hubs]]` entry.
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// This node's id in the configuration.
    #[arg(long)]
    pub id: u32,
    /// Override the HTTP listen address (other hubs still forward to the config's address).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Override the QUIC listen address for Links (Links still dial the config's address).
    #[arg(long)]
    pub quic: Option<SocketAddr>,
}

/// Runs `linkcast hub` until Ctrl-C.
pub fn run_cli(args: HubArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(&args.config)?;
    let entry = config.hub_entry(args.id).ok_or_else(|| format!("no [[hubs]] entry with id {} in the config", args.id))?;
    let options = HubOptions {
        id: HubId(args.id),
        http_addr: args.http.unwrap_or(entry.http),
        quic_addr: Some(args.quic.unwrap_or(entry.quic)),
        admin_addr: entry.admin,
        config: Arc::new(config),
    };
    if options.config.auth.cluster_secret.is_empty() {
        tracing::warn!("auth.cluster_secret is empty: this hub refuses every Link over QUIC (close 401)");
    }
    if options.config.auth.api_keys.is_empty() && options.config.auth.is_dev() {
        tracing::warn!("DEV MODE: no API keys and no JWT secret configured; anyone can publish");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let hub = start(options).await?;
        println!("linkcast hub {} — HTTP http://{}  QUIC (Links) {}", args.id, hub.http_addr(),
            hub.quic_addr().map(|a| a.to_string()).unwrap_or_default());
        shutdown_signal().await;
        tracing::info!("shutting down");
        hub.shutdown().await;
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}
