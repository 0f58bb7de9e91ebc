//! The durable room store: a room's seq, epoch, bounded history, dedupe keys and owner lease in
//! Redis (or a Redis Cluster), so a restarted hub continues its rooms and a live hub takes over
//! a dead hub's rooms without ever letting two hubs sequence the same room.
//!
//! Owns: the key layout, the three Lua scripts (`acquire.lua`, `publish.lua`, `release.lua`,
//! each atomic on one room's keys), the connection (a [`ConnectionManager`] that reconnects, or a
//! cluster connection) and the hub heartbeats. It does not decide *when* to acquire, publish or
//! give up a room: the hub does, and keeps the room's live state (interest, fan-out) in memory.
//!
//! Data flow: the hub [`RedisStore::acquire`]s a room when it becomes its owner (getting a fence,
//! the epoch, the last seq and the history), sequences publishes through
//! [`RedisStore::publish_batch`] (one pipeline of `EVALSHA publish` per batch; a seq is
//! acknowledged to a publisher only after Redis answered it), [`RedisStore::touch`]es rooms that
//! have members but no traffic, and [`RedisStore::release`]s rooms it gives away. Every hub
//! [`RedisStore::heartbeat`]s; [`RedisStore::live_hubs`] tells which hubs' rooms may be taken.
//!
//! Keys (prefix `lc`; the room is the Redis Cluster hash tag, so one room's keys share a slot and
//! a script may touch them all; room names never contain braces):
//! - `lc:{room}:m` hash `epoch` (decimal u64, opaque to Lua), `seq`, `fence`, `bytes`;
//! - `lc:{room}:l` the lease `"<fence>:<hub>:<incarnation>"`;
//! - `lc:{room}:h` history list, oldest first, entries `<seq>\n<blob>` ([`entry`]);
//! - `lc:{room}:k` hash `sender \0 key -> seq` and `lc:{room}:z` zset of the same members by ts:
//!   the publish idempotency keys, bounded by count and age;
//! - `lc:hub:<id>` a hub's heartbeat (its incarnation, `PX hub_ttl_ms`); `lc:view` a counter.
//!
//! Every room key gets `PEXPIRE room_ttl_ms` on each publish, acquire and touch.
//!
//! Fencing: a publish runs only if the lease still names the caller's fence, hub and incarnation;
//! otherwise it answers [`PublishOutcome::Fenced`] and the hub must stop owning the room. Lost
//! state (Redis restarted empty, an epoch other than the caller's, acknowledged seqs rolled back
//! by an `appendfsync everysec` crash) starts a new epoch inside the same script, so a seq is
//! never given twice under one epoch: [`PublishOutcome::Reset`].
//!
//! Errors: an `Err` from a batch means "outcome unknown" (the connection broke mid-pipeline);
//! the caller retries. A retried publish that had in fact been applied is sequenced again unless
//! it carries an idempotency key (then it comes back [`PublishOutcome::Duplicate`]).
//!
//! The module is `#[doc(hidden)] pub` (not `pub(crate)`) only so that `tests/it/store_redis.rs`
//! can drive this very API against real Redis processes; it is not part of the public interface.

pub mod entry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisResult, Script, Value};

use crate::config::{redact_url, StoreConfig};
pub use entry::{decode_entry, encode_blob, EntryError, StoredMessage};

/// How long connecting to one Redis node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one command (or pipeline) may wait for its answer; above any `WAIT` timeout we allow.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `[store]` cannot be used (bad URL, ...).
    #[error("store configuration: {0}")]
    Config(String),
    /// No answer from Redis (refused, timed out, connection dropped); the connection manager
    /// reconnects in the background, so the caller may retry.
    #[error("Redis is unreachable: {0}")]
    Unreachable(#[source] RedisError),
    /// Redis may evict keys: history, leases and dedupe keys would vanish without a word.
    #[error(
        "Redis maxmemory-policy is `{0}`: it may silently evict room history, leases and dedupe keys; \
         set `maxmemory-policy noeviction` (redis.conf, or CONFIG SET maxmemory-policy noeviction) so a full Redis refuses writes instead"
    )]
    EvictionPolicy(String),
    /// A store script answered an error (e.g. `OOM` when Redis is full under noeviction).
    #[error("store script failed in Redis: {0}")]
    Script(#[source] RedisError),
    /// Another Redis command failed.
    #[error("Redis command failed: {0}")]
    Redis(#[source] RedisError),
    /// Redis answered something the scripts never return (another program wrote our keys?).
    #[error("unexpected reply from Redis: {0}")]
    BadReply(String),
    /// A message that cannot be stored (its sender is too long).
    #[error("message cannot be stored: {0}")]
    Entry(#[from] EntryError),
    /// A history entry in Redis does not decode.
    #[error("room {room}: corrupt history entry in Redis: {error}")]
    CorruptEntry {
        /// The room.
        room: String,
        /// What is wrong with it.
        error: EntryError,
    },
}

impl StoreError {
    /// True when the error says Redis could not be reached (worth retrying after a pause).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable(_))
    }

    fn from_redis(error: RedisError, in_script: bool) -> StoreError {
        if error.is_io_error() || error.is_connection_refusal() || error.is_timeout() || error.is_connection_dropped() {
            StoreError::Unreachable(error)
        } else if in_script {
            StoreError::Script(error)
        } else {
            StoreError::Redis(error)
        }
    }
}

/// The per-room bounds the scripts enforce (from `[hub]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most history entries kept per room (at least the newest is always kept).
    pub history_messages: usize,
    /// Most history bytes kept per room, counted as stored (`<seq>\n` + blob).
    pub history_bytes: usize,
    /// Most idempotency keys remembered per room (0 = none).
    pub dedupe_keys: usize,
    /// How long an idempotency key is remembered, microseconds.
    pub dedupe_micros: u64,
    /// Room keys expire this long after their last publish, acquire or touch.
    pub room_ttl_ms: u64,
}

/// The answer to [`RedisStore::acquire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The caller owns the room under `fence`.
    Owned {
        /// The lease's fence; every publish presents it.
        fence: u64,
        /// The room's epoch (`candidate_epoch` if it was just created).
        epoch: u64,
        /// The last seq given in this epoch.
        last_seq: u64,
        /// The room did not exist in the store (new, expired or lost): a new epoch.
        created: bool,
        /// The stored history, oldest first.
        history: Vec<StoredMessage>,
    },
    /// Another hub the caller sees alive holds the lease.
    HeldBy {
        /// That hub.
        hub: u32,
    },
}

/// One publish to sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishCmd {
    /// The room.
    pub room: String,
    /// The fence of the caller's lease.
    pub fence: u64,
    /// The epoch the caller believes the room has; `None` = whatever it is.
    pub expected_epoch: Option<u64>,
    /// The highest seq the caller has acknowledged in that epoch: Redis below it = rolled back.
    pub acked_seq: u64,
    /// The epoch to start if the room's state was lost.
    pub candidate_epoch: u64,
    /// The publishing user.
    pub sender: String,
    /// Idempotency key; `""` = none.
    pub key: String,
    /// Frame flags, stored with the message.
    pub flags: u16,
    /// The hub's timestamp, microseconds since the Unix epoch (also the dedupe clock).
    pub ts_micros: u64,
    /// The payload.
    pub data: Bytes,
}

/// What became of one [`PublishCmd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored with this seq.
    Sequenced {
        /// Its seq.
        seq: u64,
        /// The room's epoch.
        epoch: u64,
    },
    /// The idempotency key was seen: the first publish's seq, nothing stored.
    Duplicate {
        /// The first publish's seq.
        seq: u64,
        /// The room's epoch.
        epoch: u64,
    },
    /// The room's state was lost: a new epoch started, this publish is its `seq` (1).
    Reset {
        /// Its seq in the new epoch.
        seq: u64,
        /// The new epoch.
        epoch: u64,
        /// The caller's fence from now on (new if the lease had to be taken again).
        fence: u64,
    },
    /// The caller no longer holds the lease; nothing stored.
    Fenced {
        /// The hub that holds it, if any.
        holder: Option<u32>,
    },
}

/// The connection: one node (reconnecting) or a cluster. Both are cheap clones of a shared,
/// multiplexed connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query_cmd<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    async fn query_pipe(&self, pipe: &Pipeline) -> RedisResult<Vec<RedisResult<Value>>> {
        match self.clone() {
            Conn::Single(mut c) => pipe.query_async(&mut c).await,
            Conn::Cluster(mut c) => pipe.query_async(&mut c).await,
        }
    }

    async fn load(&self, script: &Script) -> RedisResult<String> {
        match self.clone() {
            Conn::Single(mut c) => script.load_async(&mut c).await,
            Conn::Cluster(mut c) => script.load_async(&mut c).await,
        }
    }
}

/// The scripts, compiled into the binary.
struct Scripts {
    acquire: Script,
    publish: Script,
    release: Script,
}

/// The store of one hub process: its identity (hub id, incarnation), the limits and the
/// connection. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    scripts: Arc<Scripts>,
    /// Key prefix (`[store] prefix`).
    prefix: Arc<str>,
    /// This hub's id: written into leases and its heartbeat key.
    hub: u32,
    /// This process's incarnation: a restarted hub has a new, *larger* one (e.g. its start time
    /// in microseconds), so it can tell its own old lease (take it) from its current one (keep
    /// the fence), and a zombie of the previous incarnation cannot take the lease back.
    incarnation: u64,
    limits: StoreLimits,
    /// `WAIT` after each publish batch: (replicas, timeout ms); `None` = no WAIT.
    wait: Option<(u32, u64)>,
    heartbeat_ttl_ms: u64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("prefix", &self.prefix)
            .field("hub", &self.hub)
            .field("incarnation", &self.incarnation)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A room's five keys, in the order the scripts take them: m, l, h, k, z.
fn room_keys(prefix: &str, room: &str) -> [String; 5] {
    ["m", "l", "h", "k", "z"].map(|kind| format!("{prefix}:{{{room}}}:{kind}"))
}

/// `EVALSHA` of `script` (built by hand rather than through `ScriptInvocation` so that it can
/// join a pipeline and be re-sent after `NOSCRIPT`).
fn evalsha(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

fn is_noscript(result: &RedisResult<Value>) -> bool {
    matches!(result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// A reply item as text (scripts return numbers as decimal strings; Lua integers as Int).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number<T: std::str::FromStr>(value: &Value, what: &str) -> Result<T, StoreError> {
    text(value).and_then(|t| t.parse().ok()).ok_or_else(|| StoreError::BadReply(format!("{what} is {value:?}")))
}

/// One `acquire.lua` reply: `{1, fence, epoch, seq, created, entry...}` or `{0, holder}`.
fn parse_acquired(room: &str, value: Value) -> Result<Acquired, StoreError> {
    let reply = array(value, "acquire")?;
    let status: u64 = number(reply.first().unwrap_or(&Value::Nil), "acquire status")?;
    if status == 0 {
        return Ok(Acquired::HeldBy { hub: number(reply.get(1).unwrap_or(&Value::Nil), "acquire holder")? });
    }
    if reply.len() < 5 {
        return Err(StoreError::BadReply(format!("acquire answered {} items", reply.len())));
    }
    let fence = number(&reply[1], "fence")?;
    let epoch = number(&reply[2], "epoch")?;
    let last_seq = number(&reply[3], "seq")?;
    let created = number::<u8>(&reply[4], "created")? == 1;
    let mut history = Vec::with_capacity(reply.len() - 5);
    for item in reply.into_iter().skip(5) {
        let Value::BulkString(bytes) = item else {
            return Err(StoreError::BadReply(format!("history entry is {item:?}")));
        };
        history.push(decode_entry(Bytes::from(bytes)).map_err(|error| StoreError::CorruptEntry { room: room.to_owned(), error })?);
    }
    Ok(Acquired::Owned { fence, epoch, last_seq, created, history })
}

fn array(value: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(StoreError::BadReply(format!("{what}: expected an array, got {other:?}"))),
    }
}

impl RedisStore {
    /// Connects (cluster or not), loads the scripts, refuses a Redis that may evict keys and
    /// logs what its persistence settings promise.
    pub async fn connect(config: &StoreConfig, hub: u32, incarnation: u64, limits: StoreLimits) -> Result<RedisStore, StoreError> {
        if !config.is_redis() {
            return Err(StoreError::Config("store.redis is empty (rooms live in hub memory then)".into()));
        }
        if config.cluster && config.wait_replicas > 0 {
            return Err(StoreError::Config("store.wait_replicas is not supported with store.cluster".into()));
        }
        let unreachable = |e: RedisError| StoreError::from_redis(e, false);
        let conn = if config.cluster {
            let seeds: Vec<&str> = config.seed_urls().collect();
            let client = ClusterClient::builder(seeds)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()
                .map_err(|e| StoreError::Config(format!("store.redis / store.cluster_nodes: {e}")))?;
            Conn::Cluster(client.get_async_connection().await.map_err(unreachable)?)
        } else {
            let client = redis::Client::open(config.redis.as_str())
                .map_err(|e| StoreError::Config(format!("store.redis {}: {e}", redact_url(&config.redis))))?;
            // A reconnect gives up after 3 quick tries (~1.5 s at most); the next command that
            // finds the connection broken starts another, so an outage is retried for as long as
            // the hub keeps calling, and a hub started without Redis is told within seconds.
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(3)
                .set_max_delay(Duration::from_millis(800));
            Conn::Single(ConnectionManager::new_with_config(client, manager_config).await.map_err(unreachable)?)
        };
        let store = RedisStore {
            conn,
            scripts: Arc::new(Scripts {
                acquire: Script::new(include_str!("acquire.lua")),
                publish: Script::new(include_str!("publish.lua")),
                release: Script::new(include_str!("release.lua")),
            }),
            prefix: config.prefix.as_str().into(),
            hub,
            incarnation,
            limits,
            wait: (config.wait_replicas > 0).then_some((config.wait_replicas, config.wait_timeout_ms)),
            heartbeat_ttl_ms: config.hub_ttl_ms,
        };
        store.check_server().await?;
        store.load_scripts().await?;
        tracing::info!(
            redis = %redact_url(&config.redis),
            cluster = config.cluster,
            hub,
            incarnation,
            "room store: Redis"
        );
        Ok(store)
    }

    /// Refuses an evicting Redis (in cluster mode, any evicting master); logs the durability its
    /// persistence settings give. `CONFIG` may be renamed or forbidden (managed Redis): then
    /// only a warning.
    async fn check_server(&self) -> Result<(), StoreError> {
        let policies = match self.config_get("maxmemory-policy").await {
            Ok(policies) => policies,
            Err(e) if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(StoreError::Unreachable(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "room store: cannot read Redis CONFIG; make sure maxmemory-policy is noeviction, or rooms may lose history silently");
                return Ok(());
            }
        };
        if let Some(policy) = policies.iter().find(|p| p.as_str() != "noeviction") {
            return Err(StoreError::EvictionPolicy(policy.clone()));
        }
        let appendonly = self.config_get("appendonly").await.unwrap_or_default();
        let fsync = self.config_get("appendfsync").await.unwrap_or_default();
        let all = |values: &[String], wanted: &str| !values.is_empty() && values.iter().all(|v| v == wanted);
        let promise = if all(&appendonly, "yes") && all(&fsync, "always") {
            "an acknowledged publish survives a Redis crash"
        } else if all(&appendonly, "yes") {
            "a Redis crash may lose up to ~1 s of acknowledged publishes (appendfsync everysec); the hubs notice the rollback and start a new epoch (clients get a reset)"
        } else {
            "a Redis restart loses the rooms of a node without appendonly (new epochs, clients get a reset) unless a replica took over; consider appendonly yes or wait_replicas"
        };
        let (appendonly, fsync) = (appendonly.join(","), fsync.join(","));
        if self.wait.is_some() {
            tracing::info!(appendonly, appendfsync = fsync, "room store durability: {promise}; each publish batch also waits for replicas");
        } else {
            tracing::info!(appendonly, appendfsync = fsync, "room store durability: {promise}");
        }
        Ok(())
    }

    /// `CONFIG GET parameter` (one parameter per call: Redis before 7 takes only one), from the
    /// node, or from every master of a cluster.
    async fn config_get(&self, parameter: &str) -> RedisResult<Vec<String>> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(parameter);
        let answers: Vec<Value> = match self.conn.clone() {
            Conn::Single(mut c) => vec![cmd.query_async(&mut c).await?],
            Conn::Cluster(mut c) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                match c.route_command(cmd, RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None))).await? {
                    // One answer per master, keyed by its address.
                    Value::Map(per_node) => per_node.into_iter().map(|(_, answer)| answer).collect(),
                    other => vec![other],
                }
            }
        };
        let mut values = Vec::with_capacity(answers.len());
        for answer in answers {
            let answer = answer.extract_error()?;
            let settings: HashMap<String, String> = redis::from_redis_value(answer)?;
            values.push(settings.get(parameter).cloned().unwrap_or_default());
        }
        Ok(values)
    }

    /// `SCRIPT LOAD`s the three scripts (in cluster mode on every master).
    async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in [&self.scripts.acquire, &self.scripts.publish, &self.scripts.release] {
            self.conn.load(script).await.map_err(|e| StoreError::from_redis(e, true))?;
        }
        Ok(())
    }

    /// The lease value this process writes for `fence`.
    fn lease(&self, fence: u64) -> String {
        format!("{fence}:{}:{}", self.hub, self.incarnation)
    }

    /// Runs `cmds` (each tagged with the key whose slot it needs) and answers each one's result,
    /// in order. One node: one pipeline, followed by `trailer` (whose result comes back
    /// separately). Cluster: one pipeline per slot key, concurrently (a pipeline must not cross
    /// slots); `trailer` is not sent (config refuses WAIT with a cluster).
    async fn run(&self, cmds: Vec<(&str, Cmd)>, trailer: Option<Cmd>) -> RedisResult<(Vec<RedisResult<Value>>, Option<RedisResult<Value>>)> {
        if cmds.is_empty() {
            return Ok((Vec::new(), None));
        }
        match &self.conn {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                let count = cmds.len();
                for (_, cmd) in cmds {
                    pipe.add_command(cmd);
                }
                if let Some(cmd) = &trailer {
                    pipe.add_command(cmd.clone());
                }
                let mut results = self.conn.query_pipe(&pipe).await?;
                let trailer_result = if results.len() > count { results.pop() } else { None };
                if results.len() != count {
                    return Err(RedisError::from((redis::ErrorKind::Client, "pipeline answered the wrong number of replies")));
                }
                Ok((results, trailer_result))
            }
            Conn::Cluster(_) => {
                let mut groups: Vec<(&str, Vec<usize>, Pipeline)> = Vec::new();
                let mut by_key: HashMap<&str, usize> = HashMap::new();
                for (index, (key, cmd)) in cmds.into_iter().enumerate() {
                    let group = *by_key.entry(key).or_insert_with(|| {
                        let mut pipe = redis::pipe();
                        pipe.ignore_errors();
                        groups.push((key, Vec::new(), pipe));
                        groups.len() - 1
                    });
                    groups[group].1.push(index);
                    groups[group].2.add_command(cmd);
                }
                let count = groups.iter().map(|g| g.1.len()).sum();
                let answers = futures_util::future::join_all(groups.iter().map(|(_, _, pipe)| self.conn.query_pipe(pipe))).await;
                let mut results: Vec<Option<RedisResult<Value>>> = (0..count).map(|_| None).collect();
                for ((_, indices, _), answer) in groups.iter().zip(answers) {
                    let answer = answer?;
                    if answer.len() != indices.len() {
                        return Err(RedisError::from((redis::ErrorKind::Client, "pipeline answered the wrong number of replies")));
                    }
                    for (&index, result) in indices.iter().zip(answer) {
                        results[index] = Some(result);
                    }
                }
                let results = results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(RedisError::from((redis::ErrorKind::Client, "no reply")))))
                    .collect();
                Ok((results, None))
            }
        }
    }

    /// [`Self::run`] for `count` script calls, call `i` built by `build(i)`: calls answered
    /// `NOSCRIPT` (Redis restarted, or `SCRIPT FLUSH`) are built and sent again once, after
    /// loading the scripts. Only those: `NOSCRIPT` means that call did not run, so nothing is
    /// applied twice (a pipeline is not atomic; its other calls ran and keep their answers).
    /// Building again on that rare path spares the common one a copy of every payload.
    async fn run_scripts<'a>(
        &self,
        count: usize,
        build: impl Fn(usize) -> (&'a str, Cmd),
        trailer: Option<Cmd>,
    ) -> Result<(Vec<Value>, Option<RedisResult<Value>>), StoreError> {
        let (mut results, mut trailer_result) =
            self.run((0..count).map(&build).collect(), trailer.clone()).await.map_err(|e| StoreError::from_redis(e, true))?;
        let missing: Vec<usize> = (0..results.len()).filter(|&i| is_noscript(&results[i])).collect();
        if !missing.is_empty() {
            tracing::info!(calls = missing.len(), "room store: Redis lost the scripts (NOSCRIPT); loading them again");
            self.load_scripts().await?;
            let again = missing.iter().map(|&i| build(i)).collect();
            let (answers, trailer_again) = self.run(again, trailer).await.map_err(|e| StoreError::from_redis(e, true))?;
            for (&index, answer) in missing.iter().zip(answers) {
                results[index] = answer;
            }
            if trailer_again.is_some() {
                trailer_result = trailer_again;
            }
        }
        let values = results.into_iter().map(|r| r.map_err(|e| StoreError::from_redis(e, true))).collect::<Result<Vec<_>, _>>()?;
        Ok((values, trailer_result))
    }

    /// Takes (or keeps) `room`'s lease unless a hub in `live_hubs` other than this one holds it
    /// (or a newer incarnation of this hub: then `HeldBy` names this hub), creating the room
    /// with `candidate_epoch` if the store has no state for it.
    pub async fn acquire(&self, room: &str, live_hubs: &[u32], candidate_epoch: u64) -> Result<Acquired, StoreError> {
        let mut answers = self.acquire_batch(&[(room.to_owned(), candidate_epoch)], live_hubs).await?;
        answers.pop().ok_or_else(|| StoreError::BadReply("acquire answered nothing".to_owned()))?
    }

    /// [`RedisStore::acquire`] for several rooms (room, candidate epoch) in one pipeline: a hub
    /// taking over a dead hub's rooms pays one round trip per batch, not per room. Answers in
    /// order; the outer `Err` is the pipeline's (outcome unknown), an inner one a room's reply.
    pub async fn acquire_batch(&self, rooms: &[(String, u64)], live_hubs: &[u32]) -> Result<Vec<Result<Acquired, StoreError>>, StoreError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let live = live_hubs.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let keys: Vec<[String; 5]> = rooms.iter().map(|(room, _)| room_keys(&self.prefix, room)).collect();
        let build = |i: usize| {
            let (room, candidate_epoch) = &rooms[i];
            let mut cmd = evalsha(&self.scripts.acquire, &keys[i]);
            cmd.arg(self.hub).arg(self.incarnation).arg(*candidate_epoch).arg(self.limits.room_ttl_ms).arg(&live);
            (room.as_str(), cmd)
        };
        let (values, _) = self.run_scripts(rooms.len(), build, None).await?;
        Ok(rooms.iter().zip(values).map(|((room, _), value)| parse_acquired(room, value)).collect())
    }

    /// Sequences a batch: one pipeline of `EVALSHA publish` (plus `WAIT` when configured).
    /// Outcomes come back in batch order. A `WAIT` that counts fewer replicas than asked is
    /// counted (`linkcast_store_wait_short_total`) and logged; the outcomes stand (Redis applied
    /// them; only their replication is late).
    pub async fn publish_batch(&self, batch: &[PublishCmd]) -> Result<Vec<PublishOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let blobs = batch
            .iter()
            .map(|publish| encode_blob(publish.ts_micros, publish.flags, &publish.sender, &publish.data))
            .collect::<Result<Vec<_>, _>>()?;
        let limits = &self.limits;
        let build = |i: usize| {
            let publish = &batch[i];
            let mut cmd = evalsha(&self.scripts.publish, &room_keys(&self.prefix, &publish.room));
            cmd.arg(self.hub)
                .arg(self.incarnation)
                .arg(publish.fence)
                .arg(publish.expected_epoch.map(|e| e.to_string()).unwrap_or_default())
                .arg(publish.acked_seq)
                .arg(publish.candidate_epoch)
                .arg(&publish.sender)
                .arg(&publish.key)
                .arg(publish.ts_micros)
                .arg(&blobs[i])
                .arg(limits.history_messages.max(1))
                .arg(limits.history_bytes)
                .arg(limits.dedupe_keys)
                .arg(limits.dedupe_micros)
                .arg(limits.room_ttl_ms);
            (publish.room.as_str(), cmd)
        };
        let trailer = self.wait.map(|(replicas, timeout_ms)| {
            let mut wait = redis::cmd("WAIT");
            wait.arg(replicas).arg(timeout_ms);
            wait
        });
        let (values, wait_result) = self.run_scripts(batch.len(), build, trailer).await?;
        if let (Some((wanted, timeout_ms)), Some(result)) = (self.wait, wait_result) {
            match result {
                Ok(value) => {
                    let acked: u64 = number(&value, "WAIT")?;
                    if acked < u64::from(wanted) {
                        metrics::counter!("linkcast_store_wait_short_total").increment(1);
                        tracing::warn!(acked, wanted, timeout_ms, "room store: fewer replicas than wait_replicas acknowledged a publish batch in time");
                    }
                }
                Err(e) => return Err(StoreError::from_redis(e, false)),
            }
        }
        values.into_iter().map(parse_publish).collect()
    }

    /// Gives up leases `(room, fence)`, each only if it is still this process's.
    pub async fn release(&self, rooms: &[(String, u64)]) -> Result<(), StoreError> {
        let build = |i: usize| {
            let (room, fence) = &rooms[i];
            let [_, lease_key, ..] = room_keys(&self.prefix, room);
            let mut cmd = evalsha(&self.scripts.release, &[lease_key]);
            cmd.arg(self.lease(*fence));
            (room.as_str(), cmd)
        };
        self.run_scripts(rooms.len(), build, None).await.map(drop)
    }

    /// Pushes back the expiry of rooms that have members but no publishes.
    pub async fn touch(&self, rooms: &[String]) -> Result<(), StoreError> {
        let mut cmds = Vec::with_capacity(rooms.len() * 5);
        for room in rooms {
            for key in room_keys(&self.prefix, room) {
                let mut cmd = redis::cmd("PEXPIRE");
                cmd.arg(key).arg(self.limits.room_ttl_ms);
                cmds.push((room.as_str(), cmd));
            }
        }
        let (results, _) = self.run(cmds, None).await.map_err(|e| StoreError::from_redis(e, false))?;
        results.into_iter().try_for_each(|r| r.map(drop)).map_err(|e| StoreError::from_redis(e, false))
    }

    /// `SET <prefix>:hub:<hub> <incarnation> PX hub_ttl_ms`: this hub is alive.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}:hub:{}", self.prefix, self.hub)).arg(self.incarnation).arg("PX").arg(self.heartbeat_ttl_ms);
        self.conn.query_cmd::<()>(&cmd).await.map_err(|e| StoreError::from_redis(e, false))
    }

    /// Which of `hubs` have a live heartbeat, sorted.
    pub async fn live_hubs(&self, hubs: &[u32]) -> Result<Vec<u32>, StoreError> {
        let keys: Vec<String> = hubs.iter().map(|hub| format!("{}:hub:{hub}", self.prefix)).collect();
        let cmds = keys
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(key);
                (key.as_str(), cmd)
            })
            .collect();
        let (results, _) = self.run(cmds, None).await.map_err(|e| StoreError::from_redis(e, false))?;
        let mut live = Vec::new();
        for (&hub, result) in hubs.iter().zip(results) {
            if !matches!(result.map_err(|e| StoreError::from_redis(e, false))?, Value::Nil) {
                live.push(hub);
            }
        }
        live.sort_unstable();
        live.dedup();
        Ok(live)
    }

    /// `HSET <prefix>:<table> <user> <secs>`: an operator's ban (`table` = `bans`, until) or
    /// token revocation (`revoked`, before), kept by the owner hub of `user:{user}`
    /// (`hub/moderation.rs`).
    pub async fn moderation_set(&self, table: &str, user: &str, secs: u64) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("{}:{table}", self.prefix)).arg(user).arg(secs);
        self.conn.query_cmd::<()>(&cmd).await.map_err(|e| StoreError::from_redis(e, false))
    }

    /// `HGETALL <prefix>:<table>` (entries that are not numbers are skipped).
    pub async fn moderation_all(&self, table: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(format!("{}:{table}", self.prefix));
        let all: std::collections::HashMap<String, String> =
            self.conn.query_cmd(&cmd).await.map_err(|e| StoreError::from_redis(e, false))?;
        Ok(all.into_iter().filter_map(|(user, secs)| secs.parse().ok().map(|secs| (user, secs))).collect())
    }

    /// `HDEL <prefix>:<table> <users...>`: forgets ended bans.
    pub async fn moderation_forget(&self, table: &str, users: &[String]) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(format!("{}:{table}", self.prefix)).arg(users);
        self.conn.query_cmd::<()>(&cmd).await.map_err(|e| StoreError::from_redis(e, false))
    }

    /// `INCR <prefix>:view`: the next version of the owner map.
    pub async fn next_view_version(&self) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(format!("{}:view", self.prefix));
        self.conn.query_cmd(&cmd).await.map_err(|e| StoreError::from_redis(e, false))
    }
}

/// One `publish.lua` answer.
fn parse_publish(value: Value) -> Result<PublishOutcome, StoreError> {
    let reply = array(value, "publish")?;
    let item = |i: usize| reply.get(i).unwrap_or(&Value::Nil);
    let tag = text(item(0)).unwrap_or_default();
    match tag.as_str() {
        "OK" => Ok(PublishOutcome::Sequenced { seq: number(item(1), "seq")?, epoch: number(item(2), "epoch")? }),
        "DUP" => Ok(PublishOutcome::Duplicate { seq: number(item(1), "seq")?, epoch: number(item(2), "epoch")? }),
        "RESET" => Ok(PublishOutcome::Reset { seq: number(item(1), "seq")?, epoch: number(item(2), "epoch")?, fence: number(item(3), "fence")? }),
        "FENCED" => {
            let holder: i64 = number(item(1), "holder")?;
            Ok(PublishOutcome::Fenced { holder: u32::try_from(holder).ok() })
        }
        _ => Err(StoreError::BadReply(format!("publish answered {reply:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keys_share_the_room_hash_tag() {
        let keys = room_keys("lc", "lobby:1");
        assert_eq!(keys, ["lc:{lobby:1}:m", "lc:{lobby:1}:l", "lc:{lobby:1}:h", "lc:{lobby:1}:k", "lc:{lobby:1}:z"]);
    }

    #[test]
    fn publish_replies_parse() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = Value::Array(vec![bulk("OK"), bulk("7"), bulk("18446744073709551615")]);
        assert_eq!(parse_publish(ok).ok(), Some(PublishOutcome::Sequenced { seq: 7, epoch: u64::MAX }));
        let fenced = Value::Array(vec![bulk("FENCED"), bulk("-1")]);
        assert_eq!(parse_publish(fenced).ok(), Some(PublishOutcome::Fenced { holder: None }));
        let reset = Value::Array(vec![bulk("RESET"), bulk("1"), bulk("9"), bulk("3")]);
        assert_eq!(parse_publish(reset).ok(), Some(PublishOutcome::Reset { seq: 1, epoch: 9, fence: 3 }));
        assert!(matches!(parse_publish(Value::Array(vec![bulk("OK")])), Err(StoreError::BadReply(_))));
        assert!(matches!(parse_publish(Value::Int(1)), Err(StoreError::BadReply(_))));
    }
}
