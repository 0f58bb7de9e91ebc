//! Configuration: one TOML file describes a whole cluster (hubs, Links, secrets, certificates,
//! limits).
//!
//! Every process of a cluster reads the same file; `linkcast hub --id N` and
//! `linkcast link --id N` pick their own entry from `[[hubs]]` / `[[links]]`. Secrets may come
//! from the environment instead of the file (`LINKCAST_JWT_SECRET`, `LINKCAST_API_KEYS`
//! comma-separated, `LINKCAST_CLUSTER_SECRET`, and the store's `LINKCAST_REDIS_URL`), which wins
//! over the file. clap flags in `main.rs`
//! override single values after loading. Every limit has a default here, so an empty file (or
//! none, for `serve`) is a valid configuration. docs/operations.md lists every key.

use std::net::SocketAddr;
use std::path::Path;

use linkcast_core::fanout::{LagPolicy, RingLimits};
use linkcast_core::room::RoomLimits;
use linkcast_core::room_table::TableLimits;

/// The whole cluster's configuration.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Secrets and keys.
    pub auth: AuthConfig,
    /// Certificates: what servers present and what clients and Links trust.
    pub tls: TlsConfig,
    /// The operators' listener (`/metrics`, `/healthz`) of `serve`.
    pub admin: AdminConfig,
    /// The hubs of the cluster.
    pub hubs: Vec<HubEntry>,
    /// The Links of the cluster.
    pub links: Vec<LinkEntry>,
    /// Hub behaviour and limits.
    pub hub: HubConfig,
    /// Link behaviour and limits.
    pub link: LinkConfig,
    /// Where rooms' seq, epoch, history and leases live: Redis, or (default) hub memory.
    pub store: StoreConfig,
    /// The hub's backend hooks: publish proxy and webhooks (off by default).
    pub hooks: HooksConfig,
}

/// Secrets. Empty `jwt_secret` = dev mode (anonymous clients allowed). `Debug` prints no secret.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for client tokens (env `LINKCAST_JWT_SECRET`).
    pub jwt_secret: String,
    /// API keys accepted as `Authorization: Bearer` on the HTTP API, with the scopes
    /// `publish` and `read` (env `LINKCAST_API_KEYS`, comma-separated). Empty in dev mode = no
    /// key needed.
    pub api_keys: Vec<String>,
    /// API keys with explicit scopes (`[[auth.keys]]`).
    pub keys: Vec<ApiKey>,
    /// Shared secret a Link presents to hubs in its `Hello` (env `LINKCAST_CLUSTER_SECRET`).
    pub cluster_secret: String,
    /// More HS256 secrets accepted besides `jwt_secret` (rotation: any one verifies a token).
    pub jwt_secrets: Vec<String>,
    /// Required `iss` claim of client tokens; empty = not checked.
    pub jwt_issuer: String,
    /// Required `aud` claim of client tokens (a string or an array holding it); empty = not checked.
    pub jwt_audience: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &redacted(&self.jwt_secret))
            .field("api_keys", &format_args!("[{} keys]", self.api_keys.len()))
            .field("keys", &self.keys)
            .field("cluster_secret", &redacted(&self.cluster_secret))
            .finish()
    }
}

/// How a secret is shown in logs and `Debug`: whether it is set, never its value.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        "<empty>"
    } else {
        "<redacted>"
    }
}

impl AuthConfig {
    /// True when no JWT secret is configured.
    pub fn is_dev(&self) -> bool {
        self.jwt_secret.is_empty() && self.jwt_secrets.iter().all(String::is_empty)
    }

    /// True when any client or API credential is configured (JWT secret or API keys).
    pub fn has_credentials(&self) -> bool {
        !self.jwt_secret.is_empty() || !self.api_keys.is_empty() || !self.keys.is_empty()
    }

    /// Every API key with its scopes: `[[auth.keys]]`, then the plain `api_keys` (publish + read).
    pub fn scoped_keys(&self) -> impl Iterator<Item = (&str, &[Scope])> {
        const PLAIN: &[Scope] = &[Scope::Publish, Scope::Read];
        self.keys
            .iter()
            .map(|k| (k.key.as_str(), k.scopes.as_slice()))
            .chain(self.api_keys.iter().map(|k| (k.as_str(), PLAIN)))
    }
}

/// One API key and what it may do (`[[auth.keys]]`).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The secret sent as `Authorization: Bearer <key>`.
    pub key: String,
    /// What the key allows.
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("key", &redacted(&self.key)).field("scopes", &self.scopes).finish()
    }
}

/// What an API key allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publish into rooms (`POST /v1/rooms/{room}/messages`).
    Publish,
    /// Read room info, history and locate any room.
    Read,
    /// The operators' API and the admin listener.
    Admin,
}

/// Certificates (`[tls]`). With `cert_file` and `key_file`, the hub's HTTP port serves
/// `https://`, the Link's WebSocket port `wss://`, and every QUIC endpoint presents that
/// certificate (reloaded on SIGHUP). Without them, QUIC endpoints make a self-signed one.
/// Whoever dials (a Link dialling hubs, a hub forwarding to another hub) verifies the server
/// against `ca_file` or `pin_sha256`; with neither, only a loopback server is accepted
/// unverified (dev), anything else refuses to start.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain the servers present.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// PEM CA certificates that dialled servers must chain to.
    pub ca_file: Option<std::path::PathBuf>,
    /// SHA-256 fingerprints (hex) of accepted server certificates, instead of a CA.
    pub pin_sha256: Vec<String>,
    /// PEM CA certificates a Link's client certificate must chain to (mutual TLS): a hub with
    /// it requires and verifies one on its Link QUIC port, and then also accepts Link ids not in
    /// `[[links]]` (docs/operations.md "Adding and draining Links").
    pub client_ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain a Link presents to hubs (mutual TLS); goes with `client_key_file`.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<std::path::PathBuf>,
}

impl TlsConfig {
    /// True when servers have a configured certificate (https, wss).
    pub fn serves_tls(&self) -> bool {
        self.cert_file.is_some()
    }

    /// True when dialled servers can be verified (a CA or a pin is configured).
    pub fn can_verify(&self) -> bool {
        self.ca_file.is_some() || !self.pin_sha256.is_empty()
    }
}

/// The operators' listener of `serve` (`[admin]`); cluster nodes name theirs in their
/// `[[hubs]]` / `[[links]]` entry (`admin = "addr"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the `/metrics` + `/healthz` listener; none = no admin listener.
    pub addr: Option<SocketAddr>,
}

/// One hub.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubEntry {
    /// Cluster-wide hub id.
    pub id: u32,
    /// HTTP API listen address.
    pub http: SocketAddr,
    /// QUIC listen address for Links.
    pub quic: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`); none = not served.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Name the hub's certificate is checked against when dialled (default: its IP address).
    #[serde(default)]
    pub tls_name: Option<String>,
}

/// One Link.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEntry {
    /// Cluster-wide Link id.
    pub id: u32,
    /// WebSocket listen address.
    pub ws: SocketAddr,
    /// QUIC listen address for native clients.
    pub quic: SocketAddr,
    /// WebSocket URL advertised by `locate` (default `ws://{ws}/ws`).
    #[serde(default)]
    pub public_ws: Option<String>,
    /// QUIC address advertised by `locate` (default `{quic}`).
    #[serde(default)]
    pub public_quic: Option<String>,
    /// Admin listener (`/metrics`, `/healthz`); none = not served.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
}

impl LinkEntry {
    /// The WebSocket URL clients are told to use (`wss://` when the Link serves TLS).
    pub fn ws_url(&self, tls: bool) -> String {
        let scheme = if tls { "wss" } else { "ws" };
        self.public_ws.clone().unwrap_or_else(|| format!("{scheme}://{}/ws", self.ws))
    }

    /// The QUIC address clients are told to use.
    pub fn quic_addr(&self) -> String {
        self.public_quic.clone().unwrap_or_else(|| self.quic.to_string())
    }
}

/// Hub behaviour and limits.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Messages kept per room for replay.
    pub history_messages: usize,
    /// Bytes kept per room for replay.
    pub history_bytes: usize,
    /// Largest message payload, bytes (HTTP 413 / close 1009 above).
    pub max_payload: usize,
    /// Most rooms per hub.
    pub max_rooms: usize,
    /// Idle rooms (no members, no publish) are dropped after this many seconds.
    pub room_idle_secs: u64,
    /// Bytes queued towards one Link before it is considered lagging.
    pub link_queue_bytes: usize,
    /// Links returned by `locate` per room (the room's Link group).
    pub group_size: usize,
    /// Bounded-load factor `c` of placement.
    pub load_factor: f64,
    /// HTTP publishes per second per API key (token bucket); 0 = unlimited.
    pub publish_rate: u32,
    /// Publish idempotency keys remembered per room (`Idempotency-Key`, WebSocket `id`).
    pub dedupe_keys: usize,
    /// Seconds a publish idempotency key is remembered.
    pub dedupe_secs: u64,
    /// Most replayed payload bytes the hub sends in one answer to a connection's join; the Link
    /// asks for the rest as the client reads (paged replays).
    pub join_replay_bytes: usize,
    /// Most open HTTP connections on the API port (beyond: closed at accept).
    pub max_http_connections: usize,
    /// Seconds a client has to send a request head (and TLS handshake) on the API port.
    pub http_header_timeout_secs: u64,
    /// Seconds a request may take, body included, before it is answered 408.
    pub http_request_timeout_secs: u64,
    /// A write to a Link that makes no progress for this many milliseconds disconnects it.
    pub link_write_timeout_ms: u64,
    /// The hub <-> Link QUIC connection is declared dead after this many milliseconds without a
    /// packet (keep-alives every quarter of it): how fast a dead Link is noticed, and how long a
    /// starved node may stay silent before its connection is dropped and rejoined.
    pub link_idle_timeout_ms: u64,
    /// Presence: least milliseconds between two member counts of one room told to its Links
    /// (and so to every member); 0 = presence off (no counts, no join/leave events).
    pub presence_interval_ms: u64,
    /// Presence: join/leave events (and `GET .../presence` user lists) while a room has at most
    /// this many members; above, counts only.
    pub presence_events_max_members: u64,
    /// Presence: most count messages a second one room's counts may cost its members (each
    /// count goes to every member): a bigger room hears its count every `members / this`
    /// seconds instead (never less often than every 60 s); 0 = every room every
    /// `presence_interval_ms`.
    pub presence_deliveries_per_sec: u64,
    /// Origins whose pages may call the HTTP API from a browser (CORS, src/hub/cors.rs): `[]`
    /// (default) = no CORS headers, `["*"]` = any origin, else exact `scheme://host[:port]`s.
    pub cors_origins: Vec<String>,
}

impl Default for HubConfig {
    fn default() -> Self {
        let room = RoomLimits::default();
        HubConfig {
            history_messages: room.history_messages,
            history_bytes: room.history_bytes,
            max_payload: room.max_payload,
            max_rooms: TableLimits::default().max_rooms,
            room_idle_secs: 3600,
            link_queue_bytes: 64 * 1024 * 1024,
            group_size: 2,
            load_factor: linkcast_core::placement::DEFAULT_LOAD_FACTOR,
            publish_rate: 0,
            dedupe_keys: room.dedupe_keys,
            dedupe_secs: room.dedupe_micros / 1_000_000,
            join_replay_bytes: TableLimits::default().join_replay_bytes,
            max_http_connections: 4096,
            http_header_timeout_secs: 5,
            http_request_timeout_secs: 30,
            link_write_timeout_ms: 10_000,
            link_idle_timeout_ms: 8_000,
            presence_interval_ms: 1000,
            presence_events_max_members: 1000,
            presence_deliveries_per_sec: 20_000,
            cors_origins: Vec::new(),
        }
    }
}

/// `[store]`: where a room's seq, epoch, history, dedupe keys and owner lease live
/// (src/store/). Empty `redis` (the default) = in the owning hub's memory, lost with it.
/// `Debug` names no password.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://...`; empty = in memory (env
    /// `LINKCAST_REDIS_URL` wins over the file).
    pub redis: String,
    /// `redis` and `cluster_nodes` are seed nodes of a Redis Cluster (room keys carry the room
    /// as hash tag, so each room's keys share one slot).
    pub cluster: bool,
    /// More seed URLs for cluster mode.
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key (several clusters may share one Redis).
    pub prefix: String,
    /// Above 0: every publish batch is followed by `WAIT wait_replicas wait_timeout_ms` (not
    /// with `cluster`, where a batch spans masters).
    pub wait_replicas: u32,
    /// How long a `WAIT` may block, milliseconds.
    pub wait_timeout_ms: u64,
    /// Period of a hub's heartbeat key, milliseconds.
    pub heartbeat_ms: u64,
    /// A hub whose heartbeat is older than this is dead and its rooms may be taken over.
    pub hub_ttl_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis: String::new(),
            cluster: false,
            cluster_nodes: Vec::new(),
            prefix: "lc".into(),
            wait_replicas: 0,
            wait_timeout_ms: 100,
            heartbeat_ms: 250,
            hub_ttl_ms: 2000,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.cluster_nodes.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("StoreConfig")
            .field("redis", &redact_url(&self.redis))
            .field("cluster", &self.cluster)
            .field("cluster_nodes", &nodes)
            .field("prefix", &self.prefix)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("hub_ttl_ms", &self.hub_ttl_ms)
            .finish()
    }
}

/// A Redis URL without its credentials (`redis://<redacted>@host:port/db`), for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}<redacted>{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

impl StoreConfig {
    /// True when rooms live in Redis.
    pub fn is_redis(&self) -> bool {
        !self.redis.is_empty()
    }

    /// Every seed URL: `redis`, then `cluster_nodes`.
    pub fn seed_urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.redis.as_str()).chain(self.cluster_nodes.iter().map(String::as_str)).filter(|u| !u.is_empty())
    }

    /// Checks the section on its own (called by [`Config::validate`]).
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("store.{what}")));
        if !self.is_redis() {
            if self.cluster || !self.cluster_nodes.is_empty() {
                return invalid("cluster and store.cluster_nodes need store.redis (the first seed node)");
            }
            return Ok(());
        }
        if let Some(url) = self.seed_urls().find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://"))) {
            return Err(ConfigError::Invalid(format!("store: {} is not a redis:// or rediss:// URL", redact_url(url))));
        }
        if !self.cluster_nodes.is_empty() && !self.cluster {
            return invalid("cluster_nodes is set but store.cluster is false");
        }
        if self.wait_replicas > 0 && self.cluster {
            return invalid("wait_replicas is not supported with store.cluster = true (a publish batch spans several masters; WAIT counts one)");
        }
        if self.wait_replicas > 0 && self.wait_timeout_ms == 0 {
            return invalid("wait_timeout_ms must be positive with wait_replicas (WAIT with 0 blocks forever)");
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) || self.prefix.contains(char::is_whitespace) {
            return invalid("prefix must be non-empty, without braces (they make Redis Cluster hash tags) or whitespace");
        }
        if self.heartbeat_ms == 0 || self.hub_ttl_ms < 2 * self.heartbeat_ms {
            return invalid("heartbeat_ms must be positive and hub_ttl_ms at least twice heartbeat_ms (one late heartbeat must not declare a hub dead)");
        }
        Ok(())
    }
}

impl HubConfig {
    /// The room table limits these settings describe.
    pub fn table_limits(&self) -> TableLimits {
        TableLimits {
            max_rooms: self.max_rooms,
            idle_ttl_micros: self.room_idle_secs.saturating_mul(1_000_000),
            room: RoomLimits {
                history_messages: self.history_messages,
                history_bytes: self.history_bytes,
                max_payload: self.max_payload,
                dedupe_keys: self.dedupe_keys,
                dedupe_micros: self.dedupe_secs.saturating_mul(1_000_000),
            },
            join_replay_bytes: self.join_replay_bytes.max(1),
            presence: linkcast_core::presence::PresenceLimits {
                interval_micros: self.presence_interval_ms.saturating_mul(1000),
                events_max_members: self.presence_events_max_members,
                deliveries_per_sec: self.presence_deliveries_per_sec,
            },
        }
    }
}

/// Link behaviour and limits.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// Shards (threads with their own runtime); 0 = one per core.
    pub shards: usize,
    /// Most bytes per room ring per shard.
    pub ring_bytes: usize,
    /// Most frames per room ring per shard.
    pub ring_items: usize,
    /// What to do with a client that fell off the ring.
    pub lag_policy: LagPolicy,
    /// Most bytes written to one socket in one vectored write.
    pub write_batch_bytes: usize,
    /// Most connections per Link process (bounded by the open-file limit).
    pub max_connections: usize,
    /// Most concurrent connections of one user (the oldest is closed beyond it).
    pub max_conns_per_user: usize,
    /// Most rooms one connection may be in.
    pub max_rooms_per_conn: usize,
    /// Largest client message, bytes (close 1009 above).
    pub max_message_bytes: usize,
    /// Client publishes per second per connection (token bucket rate).
    pub publish_rate: u32,
    /// Token bucket burst for client publishes.
    pub publish_burst: u32,
    /// Seconds between WebSocket pings (with `keepalive = "tcp"`: of silence on the wire before
    /// the kernel's first keep-alive probe).
    pub ping_interval_secs: u64,
    /// A connection silent for this long is closed (with `keepalive = "tcp"`: a peer that
    /// stopped answering the kernel for this long).
    pub idle_timeout_secs: u64,
    /// How the Link finds out that a WebSocket client is gone.
    pub keepalive: KeepAlive,
    /// Browser origins allowed to connect; empty = any.
    pub allowed_origins: Vec<String>,
    /// Kernel send buffer (SO_SNDBUF) of each client socket, bytes; 0 = the OS default
    /// (autotuned, up to `net.ipv4.tcp_wmem` max per socket).
    pub socket_send_buffer: usize,
    /// Most WebSocket connections in their handshake (TLS + upgrade) at once.
    pub max_handshakes: usize,
    /// Most WebSocket connections in their handshake from one source address.
    pub max_handshakes_per_ip: usize,
    /// Joins per second per connection (token bucket rate; 0 = unlimited); beyond: error 429.
    pub join_rate: u32,
    /// Token bucket burst for joins.
    pub join_burst: u32,
    /// Replayed bytes held for one connection at a time; a longer catch-up is paged as it drains.
    pub replay_bytes: usize,
    /// Join every connection to the broadcast room `all` (issue 15).
    pub broadcast_room: bool,
    /// Join every connection to its personal room `user:{sub}` (pushes to a user by id). Off,
    /// a connection costs the Link (and the room's owner hub) one room less; a client may
    /// still join its own personal room itself.
    pub personal_room: bool,
    /// Seconds between SIGTERM (the Link tells its hubs it is draining, so `locate` stops
    /// offering it) and closing every client with 1001 and a retry hint.
    pub drain_secs: u64,
    /// Byte bound of each shard's inbox (coordinator → shard): room frames a full shard cannot
    /// take become a `gap` for that shard's members (`linkcast_link_shard_queue_full_total`).
    pub shard_queue_bytes: usize,
    /// Linger of each shard, microseconds (0 = off, at most [`MAX_COALESCE_US`]): after the
    /// first room message of a burst, wait up to this long for more before writing, so several
    /// frames leave each member socket in one send (hot rooms with many messages per second).
    pub coalesce_us: u32,
}

/// How a Link finds out that a WebSocket client is gone (`link.keepalive`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepAlive {
    /// A WebSocket ping every `ping_interval_secs`; a client silent for `idle_timeout_secs` is
    /// closed (1001 `idle timeout`). Crosses HTTP proxies and load balancers with idle timers of
    /// their own, and tells a live but frozen client from a working one. Each ping is a send, a
    /// client wake-up and a pong read: connections / `ping_interval_secs` of them a second.
    #[default]
    Ping,
    /// The kernel's TCP keep-alive instead: probes after `ping_interval_secs` of silence on the
    /// wire, and `TCP_USER_TIMEOUT` = `idle_timeout_secs`, so a peer that answers neither probes
    /// nor data for that long ends its socket with an error — without waking the Link or the
    /// client (a probe is answered by the client's kernel). No WebSocket pings and no silence
    /// check; the stall check (a socket queue that does not move) and token expiry stay. For
    /// clients that reach the Link directly: a proxy in between does not see TCP probes.
    Tcp,
}

/// Largest `link.coalesce_us` (20 ms): a linger is a latency every message pays.
pub const MAX_COALESCE_US: u32 = 20_000;

impl Default for LinkConfig {
    fn default() -> Self {
        let ring = RingLimits::default();
        LinkConfig {
            shards: 0,
            ring_bytes: ring.max_bytes,
            ring_items: ring.max_items,
            lag_policy: LagPolicy::default(),
            write_batch_bytes: 256 * 1024,
            max_connections: 19_000,
            max_conns_per_user: 8,
            max_rooms_per_conn: 64,
            max_message_bytes: 64 * 1024,
            publish_rate: 20,
            publish_burst: 40,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            keepalive: KeepAlive::Ping,
            allowed_origins: Vec::new(),
            socket_send_buffer: 0,
            max_handshakes: 4096,
            max_handshakes_per_ip: 1024,
            join_rate: 10,
            join_burst: 10,
            replay_bytes: 1024 * 1024,
            broadcast_room: true,
            personal_room: true,
            drain_secs: 5,
            shard_queue_bytes: 64 * 1024 * 1024,
            coalesce_us: 0,
        }
    }
}

impl LinkConfig {
    /// Ring limits from these settings.
    pub fn ring_limits(&self) -> RingLimits {
        RingLimits { max_bytes: self.ring_bytes, max_items: self.ring_items }
    }

    /// Shards to run: the configured number, or one per core.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }
}

/// `[hooks]`: the hub's calls to the business backend (src/hub/hooks/). Both are off by
/// default (empty URL). `Debug` prints no secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Publish proxy: client publishes are POSTed here before they are sequenced; `""` = off.
    pub publish_url: String,
    /// Most publishes in one proxy request.
    pub publish_batch_max: usize,
    /// A proxy request not answered in this many milliseconds has failed.
    pub publish_timeout_ms: u64,
    /// When the backend fails: `true` sequences the publishes anyway, `false` (default) refuses
    /// them 503 with a retry hint.
    pub publish_fail_open: bool,
    /// Most client publishes waiting for (or at) the proxy; beyond, refused 503 at once.
    pub publish_queue_max: usize,
    /// Webhooks: room occupied/vacated and user connected/disconnected are POSTed here; `""` =
    /// off.
    pub events_url: String,
    /// Most events in one webhook request.
    pub events_batch_max: usize,
    /// Events wait at most this many milliseconds to be batched.
    pub events_flush_ms: u64,
    /// Attempts per webhook batch (backoff 100 ms doubling, capped at 5 s); then dropped.
    pub events_retry_max: u32,
    /// Most events waiting; beyond, the oldest are dropped (and counted).
    pub events_queue_max: usize,
    /// HMAC-SHA256 key of `X-Linkcast-Signature` (env `LINKCAST_HOOKS_SECRET`); required on a
    /// secured node with a hook URL.
    pub secret: String,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            publish_url: String::new(),
            publish_batch_max: 64,
            publish_timeout_ms: 500,
            publish_fail_open: false,
            publish_queue_max: 4096,
            events_url: String::new(),
            events_batch_max: 100,
            events_flush_ms: 200,
            events_retry_max: 5,
            events_queue_max: 10_000,
            secret: String::new(),
        }
    }
}

impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HooksConfig")
            .field("publish_url", &self.publish_url)
            .field("publish_batch_max", &self.publish_batch_max)
            .field("publish_timeout_ms", &self.publish_timeout_ms)
            .field("publish_fail_open", &self.publish_fail_open)
            .field("publish_queue_max", &self.publish_queue_max)
            .field("events_url", &self.events_url)
            .field("events_batch_max", &self.events_batch_max)
            .field("events_flush_ms", &self.events_flush_ms)
            .field("events_retry_max", &self.events_retry_max)
            .field("events_queue_max", &self.events_queue_max)
            .field("secret", &if self.secret.is_empty() { "" } else { "<redacted>" })
            .finish()
    }
}

impl HooksConfig {
    /// True when any hook is configured.
    pub fn is_on(&self) -> bool {
        !self.publish_url.is_empty() || !self.events_url.is_empty()
    }

    /// Checks that a hub secured as `secured` (`Config::is_secured`) may run these hooks: a
    /// secured hub signs every hook request, so it needs `secret`.
    pub fn check_node(&self, secured: bool) -> Result<(), ConfigError> {
        if self.is_on() && secured && self.secret.is_empty() {
            return Err(ConfigError::Invalid(
                "hooks: this hub is secured and a hook URL is set: hooks.secret (or LINKCAST_HOOKS_SECRET) is required to sign the requests".into(),
            ));
        }
        Ok(())
    }

    /// Checks the section on its own (called by [`Config::validate`]).
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [("publish_url", &self.publish_url), ("events_url", &self.events_url)] {
            if !url.is_empty() && split_hook_url(url).is_none() {
                return Err(ConfigError::Invalid(format!("hooks.{key}: {url:?} is not an http://HOST:PORT/PATH or https://HOST:PORT/PATH URL")));
            }
        }
        let positive = [
            ("publish_batch_max", self.publish_batch_max as u64),
            ("publish_timeout_ms", self.publish_timeout_ms),
            ("publish_queue_max", self.publish_queue_max as u64),
            ("events_batch_max", self.events_batch_max as u64),
            ("events_flush_ms", self.events_flush_ms),
            ("events_retry_max", u64::from(self.events_retry_max)),
            ("events_queue_max", self.events_queue_max as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Invalid(format!("hooks.{key} must be positive")));
        }
        Ok(())
    }
}

/// A hook URL split into its base (`http://host:port`, what the HTTP client dials) and its path
/// (with the query, `/` if none); `None` unless `http://` or `https://` with a `host:port`.
pub fn split_hook_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let at = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    let (host, port) = authority.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() || authority.contains('@') {
        return None;
    }
    let base = &url[..url.len() - rest.len() + at];
    Some((base, if path.is_empty() { "/" } else { path }))
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// The values contradict each other.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`, applies environment overrides and checks the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut config = Config::from_toml(&text)?;
        config.apply_env(|key| std::env::var(key).ok());
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Applies secret overrides (and the store's `LINKCAST_REDIS_URL`, which may carry a
    /// password) from an environment lookup.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(secret) = env("LINKCAST_JWT_SECRET") {
            self.auth.jwt_secret = secret;
        }
        if let Some(keys) = env("LINKCAST_API_KEYS") {
            self.auth.api_keys = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
        }
        if let Some(secret) = env("LINKCAST_CLUSTER_SECRET") {
            self.auth.cluster_secret = secret;
        }
        if let Some(url) = env("LINKCAST_REDIS_URL") {
            self.store.redis = url;
        }
        if let Some(secret) = env("LINKCAST_HOOKS_SECRET") {
            self.hooks.secret = secret;
        }
    }

    /// Checks ids are unique and limits are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut hub_ids: Vec<u32> = self.hubs.iter().map(|h| h.id).collect();
        hub_ids.sort_unstable();
        hub_ids.dedup();
        if hub_ids.len() != self.hubs.len() {
            return Err(ConfigError::Invalid("duplicate hub id".into()));
        }
        let mut link_ids: Vec<u32> = self.links.iter().map(|l| l.id).collect();
        link_ids.sort_unstable();
        link_ids.dedup();
        if link_ids.len() != self.links.len() {
            return Err(ConfigError::Invalid("duplicate link id".into()));
        }
        if self.hub.max_payload == 0 || self.link.max_message_bytes == 0 {
            return Err(ConfigError::Invalid("message size limits must be positive".into()));
        }
        if self.hub.max_payload + 4096 > linkcast_core::frame::DEFAULT_MAX_FRAME_LEN {
            return Err(ConfigError::Invalid("hub.max_payload must be below 1 MiB".into()));
        }
        if self.link.max_message_bytes + 4096 > linkcast_core::frame::DEFAULT_MAX_FRAME_LEN {
            return Err(ConfigError::Invalid("link.max_message_bytes must be below 1 MiB (a publish must fit a Link↔hub frame)".into()));
        }
        if self.link.shard_queue_bytes == 0 {
            return Err(ConfigError::Invalid("link.shard_queue_bytes must be positive".into()));
        }
        if !(1_000..=600_000).contains(&self.hub.link_idle_timeout_ms) {
            return Err(ConfigError::Invalid("hub.link_idle_timeout_ms must be from 1000 to 600000".into()));
        }
        if self.link.idle_timeout_secs <= self.link.ping_interval_secs {
            // A silence check at every ping would close a client before its pong could come.
            return Err(ConfigError::Invalid("link.idle_timeout_secs must be longer than link.ping_interval_secs".into()));
        }
        if self.link.coalesce_us > MAX_COALESCE_US {
            return Err(ConfigError::Invalid(format!("link.coalesce_us must be at most {MAX_COALESCE_US} (20 ms)")));
        }
        if self.hub.group_size == 0 || self.link.ring_items == 0 || self.link.ring_bytes == 0 {
            return Err(ConfigError::Invalid("group_size, ring_items and ring_bytes must be positive".into()));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid("tls.cert_file and tls.key_file go together".into()));
        }
        if self.tls.client_cert_file.is_some() != self.tls.client_key_file.is_some() {
            return Err(ConfigError::Invalid("tls.client_cert_file and tls.client_key_file go together".into()));
        }
        if self.auth.keys.iter().any(|k| k.key.is_empty() || k.scopes.is_empty()) {
            return Err(ConfigError::Invalid("every [[auth.keys]] entry needs a key and at least one scope".into()));
        }
        crate::tls::Trust::from_config(&self.tls).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.store.validate()?;
        self.hooks.validate()?;
        Ok(())
    }

    /// True when a node listening on `addrs` must be locked down (DESIGN principle 8): any
    /// client or API credential is configured, or any of its addresses is not loopback.
    pub fn is_secured(&self, addrs: &[SocketAddr]) -> bool {
        self.auth.has_credentials() || addrs.iter().any(|a| !a.ip().is_loopback())
    }

    /// Checks that a cluster node (a hub with a Link listener, or a Link dialling hubs) listening
    /// on `addrs` may start: a secured node needs `auth.cluster_secret`, and a Link that dials a
    /// non-loopback hub needs `tls.ca_file` or `tls.pin_sha256` to verify it.
    pub fn check_cluster_node(&self, addrs: &[SocketAddr], dials_hubs: bool) -> Result<(), ConfigError> {
        if self.auth.cluster_secret.is_empty() && self.is_secured(addrs) {
            return Err(ConfigError::Invalid(
                "this node is secured (credentials configured or a non-loopback address) and needs auth.cluster_secret (or LINKCAST_CLUSTER_SECRET)".into(),
            ));
        }
        if dials_hubs && !self.tls.can_verify() {
            if let Some(hub) = self.hubs.iter().find(|h| !h.quic.ip().is_loopback()) {
                return Err(ConfigError::Invalid(format!(
                    "hub {} at {} is not on loopback: set tls.ca_file or tls.pin_sha256 so its certificate is verified",
                    hub.id, hub.quic
                )));
            }
        }
        Ok(())
    }

    /// The hub entry with `id`.
    pub fn hub_entry(&self, id: u32) -> Option<&HubEntry> {
        self.hubs.iter().find(|h| h.id == id)
    }

    /// The Link entry with `id`.
    pub fn link_entry(&self, id: u32) -> Option<&LinkEntry> {
        self.links.iter().find(|l| l.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let config = Config::from_toml("").expect("valid");
        assert_eq!(config, Config::default());
        assert!(config.validate().is_ok());
        assert!(config.auth.is_dev());
    }

    #[test]
    fn cluster_file_parses_and_env_overrides_secrets() {
        let text = r#"
            [auth]
            jwt_secret = "from-file"
            [[hubs]]
            id = 0
            http = "127.0.0.1:7070"
            quic = "127.0.0.1:7071"
            [[links]]
            id = 1
            ws = "127.0.0.1:7080"
            quic = "127.0.0.1:7443"
            [link]
            shards = 2
            lag_policy = "disconnect"
        "#;
        let mut config = Config::from_toml(text).expect("valid");
        config.apply_env(|key| match key {
            "LINKCAST_JWT_SECRET" => Some("from-env".into()),
            "LINKCAST_API_KEYS" => Some("k1, k2,".into()),
            _ => None,
        });
        assert_eq!(config.auth.jwt_secret, "from-env");
        assert_eq!(config.auth.api_keys, vec!["k1".to_string(), "k2".to_string()]);
        assert_eq!(config.link.lag_policy, LagPolicy::Disconnect);
        assert_eq!(config.link_entry(1).map(|l| l.ws_url(false)), Some("ws://127.0.0.1:7080/ws".into()));
        assert_eq!(config.link_entry(1).map(|l| l.ws_url(true)), Some("wss://127.0.0.1:7080/ws".into()));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn the_broadcast_room_is_on_by_default_and_can_be_turned_off() {
        assert!(Config::default().link.broadcast_room);
        let config = Config::from_toml("[link]\nbroadcast_room = false").expect("valid");
        assert!(!config.link.broadcast_room);
    }

    #[test]
    fn the_personal_room_is_on_by_default_and_can_be_turned_off() {
        assert!(Config::default().link.personal_room);
        let config = Config::from_toml("[link]\npersonal_room = false").expect("valid");
        assert!(!config.link.personal_room);
        assert!(config.link.broadcast_room, "the other automatic room is left as it was");
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(matches!(Config::from_toml("[hub]\nnope = 1"), Err(ConfigError::Parse(_))));
        let dup = r#"
            [[hubs]]
            id = 0
            http = "127.0.0.1:1"
            quic = "127.0.0.1:2"
            [[hubs]]
            id = 0
            http = "127.0.0.1:3"
            quic = "127.0.0.1:4"
        "#;
        assert!(matches!(Config::from_toml(dup).map(|c| c.validate()), Ok(Err(ConfigError::Invalid(_)))));
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn secured_nodes_need_a_cluster_secret() {
        let mut config = Config::default();
        let loopback = [addr("127.0.0.1:7070")];
        assert!(config.check_cluster_node(&loopback, false).is_ok(), "dev on loopback may run without one");
        assert!(config.check_cluster_node(&[addr("10.0.0.1:7070")], false).is_err(), "a public address needs one");
        config.auth.jwt_secret = "jwt".into();
        assert!(config.check_cluster_node(&loopback, false).is_err(), "credentials make the node secured");
        config.auth.cluster_secret = "cluster".into();
        assert!(config.check_cluster_node(&loopback, false).is_ok());
    }

    #[test]
    fn links_verify_remote_hubs() {
        let text = r#"
            [auth]
            cluster_secret = "c"
            [[hubs]]
            id = 0
            http = "10.0.0.1:7070"
            quic = "10.0.0.1:7071"
        "#;
        let mut config = Config::from_toml(text).expect("valid");
        let own = [addr("127.0.0.1:7080")];
        let error = config.check_cluster_node(&own, true).expect_err("unverifiable hub");
        assert!(error.to_string().contains("tls.ca_file"), "{error}");
        config.tls.pin_sha256 = vec!["00".repeat(32)];
        assert!(config.check_cluster_node(&own, true).is_ok());
    }

    #[test]
    fn scoped_keys_parse_and_plain_keys_mean_publish_and_read() {
        let text = r#"
            [auth]
            api_keys = ["plain"]
            [[auth.keys]]
            key = "ops"
            scopes = ["admin"]
        "#;
        let config = Config::from_toml(text).expect("valid");
        assert!(config.validate().is_ok());
        let keys: Vec<_> = config.auth.scoped_keys().collect();
        assert_eq!(keys, vec![("ops", &[Scope::Admin][..]), ("plain", &[Scope::Publish, Scope::Read][..])]);
        assert!(Config::from_toml("[[auth.keys]]\nkey = \"k\"\nscopes = [\"root\"]").is_err(), "unknown scope");
    }

    #[test]
    fn debug_output_names_no_secret() {
        let mut config = Config::default();
        config.auth.jwt_secret = "jwt-secret-value".into();
        config.auth.cluster_secret = "cluster-secret-value".into();
        config.auth.api_keys = vec!["api-key-value".into()];
        config.auth.keys = vec![ApiKey { key: "scoped-key-value".into(), scopes: vec![Scope::Read] }];
        let printed = format!("{config:?}");
        for secret in ["jwt-secret-value", "cluster-secret-value", "api-key-value", "scoped-key-value"] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn half_configured_tls_is_refused() {
        let mut config = Config::default();
        config.tls.cert_file = Some("c.pem".into());
        assert!(config.validate().is_err());
        config.tls.key_file = Some("k.pem".into());
        assert!(config.validate().is_ok());
        config.tls.client_cert_file = Some("link.pem".into());
        assert!(config.validate().is_err(), "a client certificate without its key");
        config.tls.client_key_file = Some("link.key".into());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn mutual_tls_and_drain_keys_parse() {
        let config = Config::from_toml("").expect("valid");
        assert_eq!(config.link.drain_secs, 5);
        assert_eq!((config.tls.client_ca_file.as_ref(), config.tls.client_cert_file.as_ref()), (None, None));
        let text = r#"
            [tls]
            client_ca_file = "links-ca.pem"
            client_cert_file = "link.pem"
            client_key_file = "link.key"
            [link]
            drain_secs = 30
        "#;
        let config = Config::from_toml(text).expect("valid");
        assert!(config.validate().is_ok(), "client_ca_file is a real key now");
        assert_eq!(config.tls.client_ca_file, Some("links-ca.pem".into()));
        assert_eq!((config.tls.client_cert_file, config.tls.client_key_file), (Some("link.pem".into()), Some("link.key".into())));
        assert_eq!(config.link.drain_secs, 30);
    }

    #[test]
    fn coalesce_us_defaults_off_and_is_bounded() {
        let config = Config::from_toml("").expect("valid");
        assert_eq!(config.link.coalesce_us, 0);
        let config = Config::from_toml("[link]\ncoalesce_us = 20000").expect("valid");
        assert!(config.validate().is_ok(), "20 ms is the bound, allowed");
        let config = Config::from_toml("[link]\ncoalesce_us = 20001").expect("parses");
        assert!(config.validate().is_err(), "above 20 ms is refused");
    }

    #[test]
    fn keepalive_defaults_to_pings_and_tcp_is_accepted() {
        assert_eq!(Config::from_toml("").expect("valid").link.keepalive, KeepAlive::Ping);
        let config = Config::from_toml("[link]\nkeepalive = \"tcp\"").expect("valid");
        assert_eq!(config.link.keepalive, KeepAlive::Tcp);
        assert!(config.validate().is_ok());
        assert!(Config::from_toml("[link]\nkeepalive = \"udp\"").is_err(), "an unknown mode is refused");
        let config = Config::from_toml("[link]\nping_interval_secs = 60\nidle_timeout_secs = 60").expect("parses");
        assert!(config.validate().is_err(), "an idle timeout no longer than the ping interval is refused");
    }

    #[test]
    fn the_hub_link_idle_timeout_defaults_to_8_s_and_is_bounded() {
        assert_eq!(Config::from_toml("").expect("valid").hub.link_idle_timeout_ms, 8_000);
        let config = Config::from_toml("[hub]\nlink_idle_timeout_ms = 30000").expect("parses");
        assert!(config.validate().is_ok());
        for refused in [0, 999, 600_001] {
            let config = Config::from_toml(&format!("[hub]\nlink_idle_timeout_ms = {refused}")).expect("parses");
            let error = config.validate().expect_err("out of range").to_string();
            assert!(error.contains("hub.link_idle_timeout_ms"), "{refused}: {error}");
        }
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    fn store(text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn store_defaults_to_memory() {
        let config = store("").expect("valid");
        assert!(!config.store.is_redis());
        assert_eq!(config.store.prefix, "lc");
        assert_eq!((config.store.heartbeat_ms, config.store.hub_ttl_ms, config.store.wait_timeout_ms), (250, 2000, 100));
    }

    #[test]
    fn store_section_parses_and_env_sets_the_url() {
        let config = store(
            r#"
            [store]
            redis = "redis://127.0.0.1:6379/0"
            prefix = "chat"
            wait_replicas = 1
            wait_timeout_ms = 50
            heartbeat_ms = 200
            hub_ttl_ms = 1000
        "#,
        )
        .expect("valid");
        assert_eq!(config.store.redis, "redis://127.0.0.1:6379/0");
        assert_eq!((config.store.prefix.as_str(), config.store.wait_replicas), ("chat", 1));
        let mut config = Config::from_toml("").expect("valid");
        config.apply_env(|key| (key == "LINKCAST_REDIS_URL").then(|| "rediss://u:hunter2@redis.example:6380".to_owned()));
        assert!(config.store.is_redis());
        assert!(config.validate().is_ok());
        assert!(!format!("{config:?}").contains("hunter2"), "Debug names no Redis password");
    }

    #[test]
    fn cluster_seeds_parse() {
        let config = store(
            r#"
            [store]
            redis = "redis://10.0.0.1:7000"
            cluster = true
            cluster_nodes = ["redis://10.0.0.2:7000", "redis://10.0.0.3:7000"]
        "#,
        )
        .expect("valid");
        assert_eq!(config.store.seed_urls().count(), 3);
    }

    #[test]
    fn store_mistakes_are_reported() {
        assert!(matches!(store("[store]\nredis_url = \"redis://x\""), Err(ConfigError::Parse(_))), "unknown key");
        let invalid = |text: &str| matches!(store(text), Err(ConfigError::Invalid(_)));
        assert!(invalid("[store]\nredis = \"http://127.0.0.1:6379\""), "not a redis URL");
        assert!(invalid("[store]\ncluster = true"), "cluster without seeds");
        assert!(invalid("[store]\nredis = \"redis://a:1\"\ncluster_nodes = [\"redis://b:1\"]"), "seeds without cluster");
        assert!(invalid("[store]\nredis = \"redis://a:1\"\ncluster = true\nwait_replicas = 1"), "WAIT with a cluster");
        assert!(invalid("[store]\nredis = \"redis://a:1\"\nwait_replicas = 1\nwait_timeout_ms = 0"), "WAIT forever");
        assert!(invalid("[store]\nredis = \"redis://a:1\"\nprefix = \"{x}\""), "braces in the prefix");
        assert!(invalid("[store]\nredis = \"redis://a:1\"\nprefix = \"\""), "empty prefix");
        assert!(invalid("[store]\nredis = \"redis://a:1\"\nheartbeat_ms = 500\nhub_ttl_ms = 600"), "ttl under two heartbeats");
        assert!(invalid("[store]\nredis = \"redis://a:1\"\nheartbeat_ms = 0"), "no heartbeat");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://user:pw@host:1/0"), "redis://<redacted>@host:1/0");
        assert_eq!(redact_url("redis://host:1"), "redis://host:1");
        assert_eq!(redact_url(""), "");
    }
}

#[cfg(test)]
mod hooks_tests {
    use super::*;

    #[test]
    fn hooks_default_off_and_parse() {
        let config = Config::from_toml("").expect("valid");
        assert!(!config.hooks.is_on());
        assert_eq!((config.hooks.publish_batch_max, config.hooks.publish_timeout_ms, config.hooks.publish_fail_open), (64, 500, false));
        assert_eq!((config.hooks.events_batch_max, config.hooks.events_flush_ms, config.hooks.events_retry_max, config.hooks.events_queue_max), (100, 200, 5, 10_000));
        let text = r#"
            [hooks]
            publish_url = "http://127.0.0.1:9000/hooks/publish?v=1"
            publish_batch_max = 8
            publish_timeout_ms = 250
            publish_fail_open = true
            events_url = "https://backend.example:8443/events"
            events_flush_ms = 50
            secret = "from-file"
        "#;
        let mut config = Config::from_toml(text).expect("valid");
        assert!(config.validate().is_ok());
        assert!(config.hooks.is_on() && config.hooks.publish_fail_open);
        assert_eq!((config.hooks.publish_batch_max, config.hooks.publish_timeout_ms, config.hooks.events_flush_ms), (8, 250, 50));
        assert_eq!(split_hook_url(&config.hooks.publish_url), Some(("http://127.0.0.1:9000", "/hooks/publish?v=1")));
        assert_eq!(split_hook_url(&config.hooks.events_url), Some(("https://backend.example:8443", "/events")));
        assert_eq!(split_hook_url("http://h:1"), Some(("http://h:1", "/")));
        config.apply_env(|key| (key == "LINKCAST_HOOKS_SECRET").then(|| "from-env".to_string()));
        assert_eq!(config.hooks.secret, "from-env");
        assert!(!format!("{:?}", config.hooks).contains("from-env"), "Debug names no secret");
    }

    #[test]
    fn hook_mistakes_are_reported() {
        for bad in [
            "[hooks]\npublish_url = \"ftp://h:1/x\"",
            "[hooks]\nevents_url = \"http://no-port/x\"",
            "[hooks]\nevents_url = \"http://user:pw@h:1/x\"",
            "[hooks]\npublish_batch_max = 0",
            "[hooks]\nevents_retry_max = 0",
        ] {
            let config = Config::from_toml(bad).expect("parses");
            assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))), "{bad}");
        }
        assert!(matches!(Config::from_toml("[hooks]\nnope = 1"), Err(ConfigError::Parse(_))));
        // A secured hub with a hook URL needs the secret; a dev hub may run unsigned.
        let hooks = HooksConfig { events_url: "http://127.0.0.1:1/e".into(), ..HooksConfig::default() };
        assert!(hooks.check_node(true).is_err());
        assert!(hooks.check_node(false).is_ok());
        assert!(HooksConfig { secret: "s".into(), ..hooks }.check_node(true).is_ok());
        assert!(HooksConfig::default().check_node(true).is_ok(), "no hooks, no secret needed");
    }
}

#[cfg(test)]
mod presence_tests {
    use super::*;

    #[test]
    fn presence_defaults_and_keys() {
        let config = Config::from_toml("").expect("valid");
        assert_eq!((config.hub.presence_interval_ms, config.hub.presence_events_max_members), (1000, 1000));
        let limits = config.hub.table_limits().presence;
        assert_eq!((limits.interval_micros, limits.events_max_members, limits.deliveries_per_sec), (1_000_000, 1000, 20_000));
        let config = Config::from_toml("[hub]\npresence_interval_ms = 0\npresence_events_max_members = 20\npresence_deliveries_per_sec = 0\n").expect("valid");
        assert!(!config.hub.table_limits().presence.is_on(), "0 = presence off");
        assert_eq!(config.hub.table_limits().presence.events_max_members, 20);
        assert_eq!(config.hub.table_limits().presence.deliveries_per_sec, 0);
    }
}

#[cfg(test)]
mod cors_tests {
    use super::*;

    #[test]
    fn cors_origins_default_to_none_and_are_read() {
        assert!(Config::from_toml("").expect("valid").hub.cors_origins.is_empty(), "no CORS unless asked");
        let config = Config::from_toml("[hub]\ncors_origins = [\"https://app.example\", \"*\"]\n").expect("valid");
        assert_eq!(config.hub.cors_origins, vec!["https://app.example".to_owned(), "*".to_owned()]);
    }
}
