//! Configuration: one TOML file describes a whole cluster (hubs, Links, secrets, limits).
//!
//! Every process of a cluster reads the same file; `linkcast hub --id N` and
//! `linkcast link --id N` pick their own entry from `[[hubs]]` / `[[links]]`. Secrets may come
//! from the environment instead of the file (`LINKCAST_JWT_SECRET`, `LINKCAST_API_KEYS`
//! comma-separated, `LINKCAST_CLUSTER_SECRET`), which wins over the file. clap flags in `main.rs`
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
    /// The hubs of the cluster.
    pub hubs: Vec<HubEntry>,
    /// The Links of the cluster.
    pub links: Vec<LinkEntry>,
    /// Hub behaviour and limits.
    pub hub: HubConfig,
    /// Link behaviour and limits.
    pub link: LinkConfig,
}

/// Secrets. Empty `jwt_secret` = dev mode (anonymous clients allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for client tokens (env `LINKCAST_JWT_SECRET`).
    pub jwt_secret: String,
    /// API keys accepted as `Authorization: Bearer` on the HTTP publish API
    /// (env `LINKCAST_API_KEYS`, comma-separated). Empty in dev mode = no key needed.
    pub api_keys: Vec<String>,
    /// Shared secret a Link presents to hubs in its `Hello` (env `LINKCAST_CLUSTER_SECRET`).
    pub cluster_secret: String,
    /// More HS256 secrets accepted besides `jwt_secret` (rotation: any one verifies a token).
    pub jwt_secrets: Vec<String>,
    /// Required `iss` claim of client tokens; empty = not checked.
    pub jwt_issuer: String,
    /// Required `aud` claim of client tokens (a string or an array holding it); empty = not checked.
    pub jwt_audience: String,
}

impl AuthConfig {
    /// True when no JWT secret is configured.
    pub fn is_dev(&self) -> bool {
        self.jwt_secret.is_empty() && self.jwt_secrets.iter().all(String::is_empty)
    }
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
}

impl LinkEntry {
    /// The WebSocket URL clients are told to use.
    pub fn ws_url(&self) -> String {
        self.public_ws.clone().unwrap_or_else(|| format!("ws://{}/ws", self.ws))
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
        }
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
    /// Seconds between WebSocket pings.
    pub ping_interval_secs: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout_secs: u64,
    /// Browser origins allowed to connect; empty = any.
    pub allowed_origins: Vec<String>,
    /// Kernel send buffer (SO_SNDBUF) of each client socket, bytes; 0 = the OS default
    /// (autotuned, up to `net.ipv4.tcp_wmem` max per socket).
    pub socket_send_buffer: usize,
    /// Joins per second per connection (token bucket rate; 0 = unlimited); beyond: error 429.
    pub join_rate: u32,
    /// Token bucket burst for joins.
    pub join_burst: u32,
    /// Replayed bytes held for one connection at a time; a longer catch-up is paged as it drains.
    pub replay_bytes: usize,
}

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
            allowed_origins: Vec::new(),
            socket_send_buffer: 0,
            join_rate: 10,
            join_burst: 10,
            replay_bytes: 1024 * 1024,
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

    /// Applies secret overrides from an environment lookup.
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
        if self.hub.group_size == 0 || self.link.ring_items == 0 || self.link.ring_bytes == 0 {
            return Err(ConfigError::Invalid("group_size, ring_items and ring_bytes must be positive".into()));
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
        assert_eq!(config.link_entry(1).map(LinkEntry::ws_url), Some("ws://127.0.0.1:7080/ws".into()));
        assert!(config.validate().is_ok());
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
