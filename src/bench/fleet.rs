//! A fleet: a set of subscriber connections run by one process, and what it reports.
//!
//! The parent (`bench` itself, for `--workers 0`) or a worker process (`bench worker`, one per
//! 19k connections) runs [`run_fleet`] with a [`FleetSpec`]: which global subscriber indices it
//! owns, where each connects (round-robin over the target URLs), from which source address, and
//! which room each joins (index mod rooms). The fleet answers on a channel: one [`Ready`] once
//! every subscriber has joined or failed, [`Progress`] four times a second, and one [`Final`] after
//! [`FleetCmd::Stop`]. [`FleetCmd::Drop`] cuts a fraction of the connections abruptly (the
//! `resume` scenario); they come back through the client's [`Session`] with `since`.
//!
//! One subscriber task per connection, three wire dialects ([`Proto`]): linkcast (JSON ops and a
//! `Session` per connection, so duplicates and gaps are counted exactly as the client library
//! would see them), raw (uWebSockets.js: the payload is broadcast verbatim to every socket) and
//! NATS (its text protocol over its WebSocket listener).

mod lean;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_websockets::Message;

use crate::client::ws::{WsTransport, WsUrl};
use crate::client::{sleep_until, Backoff, Received, Session, SessionConfig};
use linkcast_core::protocol::ServerMsg;

use super::nats::{self, NatsOp, NatsParser};
use super::payload::{self, Stamp};
use super::procstat::ProcSample;
use super::stats::{self, RecorderDump, ShardedRecorder};

/// Reconnects one subscriber may make in one run (bounds every loop).
const MAX_RECONNECTS: u32 = 1000;

/// Wire dialect of the server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// linkcast WebSocket JSON (join/publish ops, seq, gaps).
    Linkcast,
    /// A broadcast server that relays each WebSocket message verbatim to every socket
    /// (the uWebSockets.js peer).
    Raw,
    /// NATS text protocol over nats-server's WebSocket listener.
    Nats,
}

/// What one fleet runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FleetSpec {
    /// Wire dialect.
    pub proto: Proto,
    /// WebSocket URLs; subscriber `i` uses `targets[i % len]`.
    pub targets: Vec<String>,
    /// JWT for linkcast (None: dev mode).
    pub token: Option<String>,
    /// Room names; subscriber `i` joins `rooms[i % len]`.
    pub rooms: Vec<String>,
    /// First global subscriber index of this fleet.
    pub first: u64,
    /// Subscribers in this fleet.
    pub count: u64,
    /// Source addresses, round-robin per subscriber (empty: the system's choice).
    pub bind: Vec<IpAddr>,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Bound on one connect + join.
    pub connect_timeout_ms: u64,
    /// Bound on the whole connect phase, seconds.
    pub connect_window_secs: u64,
    /// First reconnect delay after a drop (backoff base).
    pub reconnect_initial_ms: u64,
    /// Seed for backoff jitter and drop selection.
    pub seed: u64,
    /// Lean subscribers (`lean.rs`: linkcast only, no reconnects) instead of the client
    /// library's session over tokio-websockets.
    #[serde(default)]
    pub lean: bool,
    /// Extra attempts a lean subscriber makes to connect and join before it counts as failed.
    #[serde(default)]
    pub connect_retries: u32,
}

/// Sent once every subscriber joined or failed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// Connections that joined.
    pub opened: u64,
    /// Connections that failed (connect, upgrade or join refused, or timed out).
    pub failed: u64,
    /// Joined subscribers per room index.
    pub joined_per_room: Vec<u64>,
    /// Encoded histogram of connect→joined times (µs).
    pub connect_latency: String,
    /// Seconds from the first connect to the last join.
    pub connect_secs: f64,
    /// First failure seen, for the report.
    pub first_error: Option<String>,
    /// This process's RSS before connecting and after.
    pub rss_before: u64,
    /// RSS once all joined.
    pub rss_ready: u64,
    /// CPU seconds of this process once all joined.
    #[serde(default)]
    pub cpu_ready: f64,
    /// Connect/join attempts retried after a failure or a timeout (lean subscribers).
    #[serde(default)]
    pub retries: u64,
}

/// Periodic counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Deliveries so far (unique).
    pub received: u64,
    /// Connections up now.
    pub connected: u64,
}

/// Sent after `Stop`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Final {
    /// Unique deliveries.
    pub received: u64,
    /// Duplicates dropped (linkcast: seq ≤ last; others: not detectable).
    pub duplicates: u64,
    /// Messages reported lost by gaps (server `gap` or holes in seqs).
    pub lost: u64,
    /// Gap events.
    pub gaps: u64,
    /// Connections cut on purpose.
    pub drops: u64,
    /// Reconnects made after drops or failures.
    pub reconnects: u64,
    /// Server errors and unreadable messages.
    pub errors: u64,
    /// Wall clock (µs) of the last delivery.
    pub last_delivery_us: u64,
    /// Latencies.
    pub recorder: RecorderDump,
    /// This process's RSS at the end.
    pub rss_bytes: u64,
    /// This process's CPU seconds at the end.
    pub cpu_secs: f64,
    /// Unique deliveries when the parent's window closed ([`FleetCmd::Window`]); the rest came late.
    #[serde(default)]
    pub received_in_window: u64,
    /// CPU seconds of this process when told to stop (before closing its connections).
    #[serde(default)]
    pub cpu_at_stop: f64,
    /// Messages skipped with no `gap` (a delivery's seq beyond last + 1): silent loss (lean).
    #[serde(default)]
    pub holes: u64,
    /// Owed deliveries (published to the room × joined connections) that never arrived (lean:
    /// counted per connection from its unique deliveries).
    #[serde(default)]
    pub missing: u64,
    /// Connections that ended before Stop (lean; they do not reconnect).
    #[serde(default)]
    pub ended: u64,
    /// Why the first of them ended.
    #[serde(default)]
    pub first_end: Option<String>,
}

/// A fleet's answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FleetMsg {
    /// All subscribers joined or failed.
    Ready(Ready),
    /// Counters.
    Progress(Progress),
    /// Totals after Stop.
    Final(Box<Final>),
}

/// What a fleet is told.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FleetCmd {
    /// Cut `fraction` of the connections (chosen by `generation`), then let them resume.
    Drop {
        /// Share of connections to cut, 0..=1.
        fraction: f64,
        /// Distinguishes successive drops.
        generation: u64,
    },
    /// The parent's delivery window closed: snapshot the counters (what comes after is late)
    /// and keep the messages published per room index for the per-connection accounting.
    Window {
        /// Messages accepted per room index.
        published_per_room: Vec<u64>,
    },
    /// Close everything and send `Final`.
    Stop,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Control {
    drop_generation: u64,
    drop_fraction: f64,
    stop: bool,
}

/// State shared by a fleet's subscriber tasks.
#[derive(Debug)]
struct Ctx {
    spec: FleetSpec,
    urls: Vec<WsUrl>,
    received: AtomicU64,
    duplicates: AtomicU64,
    lost: AtomicU64,
    gaps: AtomicU64,
    drops: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    connected: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    last_delivery_us: AtomicU64,
    joined_per_room: Vec<AtomicU64>,
    connect_latency: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
    recorder: ShardedRecorder,
    connect_slots: Semaphore,
    /// Lean subscribers' per-connection slots (empty for full subscribers).
    track: Vec<lean::Track>,
    holes: AtomicU64,
    retries: AtomicU64,
    ended: AtomicU64,
    first_end: Mutex<Option<String>>,
}

impl Ctx {
    /// A fleet's shared state for `spec` (targets parsed; unusable ones left out).
    fn new(spec: FleetSpec) -> Ctx {
        let urls: Vec<WsUrl> = spec.targets.iter().filter_map(|t| WsUrl::parse(t, spec.token.as_deref()).ok()).collect();
        Ctx {
            urls,
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            joined_per_room: (0..spec.rooms.len()).map(|_| AtomicU64::new(0)).collect(),
            connect_latency: Mutex::new(stats::new_histogram()),
            first_error: Mutex::new(None),
            recorder: ShardedRecorder::new(stats::recorder_shards()),
            connect_slots: Semaphore::new(spec.connect_concurrency.max(1)),
            track: if spec.lean { (0..spec.count).map(|_| lean::Track::default()).collect() } else { Vec::new() },
            holes: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            first_end: Mutex::new(None),
            spec,
        }
    }

    fn deliver(&self, index: u64, sent_us: u64) {
        let now = crate::clock::now_micros();
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_us.fetch_max(now, Ordering::Relaxed);
        self.recorder.record(index as usize, now / 1_000_000, now.saturating_sub(sent_us));
    }

    fn joined(&self, index: u64, started: Instant) {
        self.connect_slots.add_permits(1);
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::Relaxed);
        let room = (index % self.spec.rooms.len().max(1) as u64) as usize;
        if let Some(n) = self.joined_per_room.get(room) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let micros = started.elapsed().as_micros() as u64;
        self.connect_latency.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros.max(1));
    }

    fn failed(&self, why: String) {
        self.connect_slots.add_permits(1);
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(why);
    }

    fn settled(&self) -> u64 {
        self.opened.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// Runs a fleet until `Stop` (or the command channel closes), reporting on `out`.
pub(crate) async fn run_fleet(spec: FleetSpec, mut commands: mpsc::Receiver<FleetCmd>, out: mpsc::Sender<FleetMsg>) {
    let rss_before = ProcSample::own().rss_bytes;
    let ctx = Arc::new(Ctx::new(spec));
    let (control_tx, control_rx) = watch::channel(Control::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    if ctx.urls.is_empty() {
        ctx.failed(format!("no usable target URL in {:?}", ctx.spec.targets));
        ctx.failed.store(ctx.spec.count, Ordering::Relaxed);
    } else {
        for i in 0..ctx.spec.count {
            let index = ctx.spec.first + i;
            if ctx.spec.lean {
                tasks.spawn(lean::subscriber(ctx.clone(), i as usize, index, ctx.spec.connect_retries));
            } else {
                tasks.spawn(subscriber(ctx.clone(), index, control_rx.clone()));
            }
        }
    }
    // Wait until every subscriber settled; bounded by the connect timeout per concurrency wave.
    let waves = (ctx.spec.count / ctx.spec.connect_concurrency.max(1) as u64 + 2) * (u64::from(ctx.spec.connect_retries) + 1);
    let deadline = started + Duration::from_millis(ctx.spec.connect_timeout_ms.saturating_mul(waves)).min(Duration::from_secs(ctx.spec.connect_window_secs));
    while ctx.settled() < ctx.spec.count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unsettled = ctx.spec.count.saturating_sub(ctx.settled());
    let ready = Ready {
        opened: ctx.opened.load(Ordering::Relaxed),
        failed: ctx.failed.load(Ordering::Relaxed) + unsettled,
        joined_per_room: ctx.joined_per_room.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
        connect_latency: stats::encode_histogram(&ctx.connect_latency.lock().unwrap_or_else(|p| p.into_inner())),
        connect_secs: started.elapsed().as_secs_f64(),
        first_error: ctx.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        rss_before,
        rss_ready: ProcSample::own().rss_bytes,
        cpu_ready: ProcSample::own().cpu_secs,
        retries: ctx.retries.load(Ordering::Relaxed),
    };
    if out.send(FleetMsg::Ready(ready)).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut window: Option<(u64, Vec<u64>)> = None;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(FleetCmd::Drop { fraction, generation }) => {
                    control_tx.send_modify(|c| { c.drop_fraction = fraction; c.drop_generation = generation; });
                }
                Some(FleetCmd::Window { published_per_room }) => {
                    window = Some((ctx.received.load(Ordering::Relaxed), published_per_room));
                }
                Some(FleetCmd::Stop) | None => break,
            },
            _ = tick.tick() => {
                let progress = Progress {
                    received: ctx.received.load(Ordering::Relaxed),
                    connected: ctx.connected.load(Ordering::Relaxed),
                };
                if out.send(FleetMsg::Progress(progress)).await.is_err() {
                    break;
                }
            }
        }
    }
    // Lean subscribers do not watch the control: the abort closes their sockets.
    let received = ctx.received.load(Ordering::Relaxed);
    let cpu_at_stop = ProcSample::own().cpu_secs;
    let missing = window.as_ref().map_or(0, |(_, published)| missing_deliveries(&ctx, published));
    if ctx.spec.lean {
        tasks.abort_all();
    }
    control_tx.send_modify(|c| c.stop = true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    let own = ProcSample::own();
    let received_in_window = window.as_ref().map_or(received, |(r, _)| *r);
    let last = Final {
        received,
        duplicates: ctx.duplicates.load(Ordering::Relaxed),
        lost: ctx.lost.load(Ordering::Relaxed),
        gaps: ctx.gaps.load(Ordering::Relaxed),
        drops: ctx.drops.load(Ordering::Relaxed),
        reconnects: ctx.reconnects.load(Ordering::Relaxed),
        errors: ctx.errors.load(Ordering::Relaxed),
        last_delivery_us: ctx.last_delivery_us.load(Ordering::Relaxed),
        recorder: ctx.recorder.merged().dump(),
        rss_bytes: own.rss_bytes,
        cpu_secs: own.cpu_secs,
        received_in_window,
        cpu_at_stop,
        holes: ctx.holes.load(Ordering::Relaxed),
        missing,
        ended: ctx.ended.load(Ordering::Relaxed),
        first_end: ctx.first_end.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    let _ = out.send(FleetMsg::Final(Box::new(last))).await;
}

/// Σ over the lean connections that joined of (messages published to their room − their unique
/// deliveries): what never arrived (0 for full subscribers, whose sessions count losses).
fn missing_deliveries(ctx: &Ctx, published_per_room: &[u64]) -> u64 {
    let rooms = ctx.spec.rooms.len().max(1) as u64;
    ctx.track
        .iter()
        .enumerate()
        .filter(|(_, t)| t.state.load(Ordering::Relaxed) & lean::JOINED != 0)
        .map(|(i, t)| {
            let room = ((ctx.spec.first + i as u64) % rooms) as usize;
            let owed = published_per_room.get(room).copied().unwrap_or(0);
            owed.saturating_sub(u64::from(t.got.load(Ordering::Relaxed)))
        })
        .sum()
}

/// Whether subscriber `index` is among the `fraction` cut by drop `generation`.
fn chosen(index: u64, generation: u64, fraction: f64, seed: u64) -> bool {
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ seed;
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    (x as f64 / u64::MAX as f64) < fraction
}

/// What ended one connection of a subscriber.
enum Next {
    /// Reconnect (after the session's backoff).
    Reconnect,
    /// The run is over.
    Stop,
}

/// One subscriber: connects, reads until the connection ends or the control says stop or cut,
/// and reconnects (up to [`MAX_RECONNECTS`] times) after the backoff of its [`Session`].
async fn subscriber(ctx: Arc<Ctx>, index: u64, control: watch::Receiver<Control>) {
    let spec = &ctx.spec;
    let url = &ctx.urls[(index % ctx.urls.len() as u64) as usize];
    let room = spec.rooms[(index % spec.rooms.len() as u64) as usize].as_str();
    let bind = (!spec.bind.is_empty()).then(|| spec.bind[(index % spec.bind.len() as u64) as usize]);
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let config = SessionConfig {
        backoff: Backoff {
            initial: Duration::from_millis(spec.reconnect_initial_ms.max(1)),
            max: Duration::from_secs(5),
            overload_min: Duration::from_millis(500),
            stable_after: Duration::from_secs(10),
        },
        max_queued_publishes: 0,
    };
    let mut session = Session::new(config, spec.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    session.join(room);
    let seen_generation = control.borrow().drop_generation;
    let mut sub = Subscriber { ctx: &ctx, index, control, seen_generation, joined_once: false };
    for attempt in 0..=MAX_RECONNECTS {
        // Backoff wait (none before the first connect).
        if let Some(at) = session.poll_timeout() {
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::from_std(at)) => {}
                _ = sub.control.wait_for(|c| c.stop) => return,
            }
        }
        if !session.poll_connect(Instant::now().into_std()) {
            return;
        }
        if attempt > 0 {
            ctx.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if !sub.joined_once {
            // A connect slot, given back by `Ctx::joined` / `Ctx::failed` once this one settles.
            if let Ok(permit) = ctx.connect_slots.acquire().await {
                permit.forget();
            }
        }
        let started = Instant::now();
        let conn = match WsTransport::connect(url, bind, timeout, &crate::tls::Trust::LoopbackDev).await {
            Ok(conn) => conn,
            Err(e) => {
                if !sub.joined_once {
                    ctx.failed(e.to_string());
                    return;
                }
                session.handle_disconnected(Instant::now().into_std(), e.to_disconnect());
                continue;
            }
        };
        let mut dialect = match spec.proto {
            Proto::Linkcast => Dialect::Linkcast(&mut session),
            Proto::Raw => Dialect::Raw,
            Proto::Nats => Dialect::Nats { room, parser: NatsParser::default() },
        };
        let outcome = sub.connection(conn, &mut dialect, started, timeout).await;
        while session.poll_event().is_some() {}
        match outcome {
            Ok(Next::Stop) => break,
            Ok(Next::Reconnect) => {}
            Err(why) if !sub.joined_once => {
                ctx.failed(why);
                return;
            }
            Err(_) => {}
        }
        // (raw/nats connections never told the session they were up; a disconnect from
        // "connecting" schedules the backoff all the same.)
        session.handle_disconnected(Instant::now().into_std(), crate::client::Disconnect::io("dropped"));
        while session.poll_event().is_some() {}
    }
    // Duplicates were counted as they came; losses are the session's to tell.
    let stats = session.stats();
    ctx.lost.fetch_add(stats.lost, Ordering::Relaxed);
    ctx.gaps.fetch_add(stats.gaps, Ordering::Relaxed);
}

/// What one subscriber carries from connection to connection.
struct Subscriber<'c> {
    ctx: &'c Ctx,
    /// Global subscriber index (picks target, room, source address, drop selection).
    index: u64,
    control: watch::Receiver<Control>,
    /// The last drop generation this subscriber has looked at.
    seen_generation: u64,
    /// Joined at least once: later failures reconnect instead of counting as a failed connect.
    joined_once: bool,
}

impl Subscriber<'_> {
    /// Runs one connection (opened at `started`) in `dialect` until it ends, the control cuts it,
    /// or it does not come up (joined, subscribed) within `timeout` where the dialect bounds that.
    async fn connection(&mut self, mut conn: WsTransport, dialect: &mut Dialect<'_>, started: Instant, timeout: Duration) -> Result<Next, String> {
        let deadline = dialect.open(&mut conn, self.joined_once, started + timeout).await?;
        let mut up = false;
        if matches!(dialect, Dialect::Raw) {
            up = true;
            self.counts_up(started);
        }
        let result = loop {
            tokio::select! {
                biased;
                changed = self.control.changed() => {
                    if changed.is_err() { break Ok(Next::Stop); }
                    match self.control_says() {
                        Some(Next::Stop) => { conn.close().await; break Ok(Next::Stop); }
                        Some(Next::Reconnect) => break Ok(Next::Reconnect),
                        None => {}
                    }
                }
                msg = conn.recv() => {
                    let msg = match msg { Ok(msg) => msg, Err(e) => break Err(e.to_string()) };
                    match dialect.handle(self.ctx, self.index, &msg, &mut conn, self.joined_once).await {
                        Ok(true) if !up => {
                            up = true;
                            self.counts_up(started);
                        }
                        Ok(_) => {}
                        Err(why) => break Err(why),
                    }
                }
                _ = sleep_until(deadline.map(|(at, _)| at)), if !up => {
                    break Err(deadline.map_or("timed out", |(_, why)| why).to_string());
                }
            }
        };
        if up {
            self.ctx.connected.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    /// The connection is up (joined, subscribed): the first time ever a join, later a reconnect.
    fn counts_up(&mut self, started: Instant) {
        if !self.joined_once {
            self.joined_once = true;
            self.ctx.joined(self.index, started);
        } else {
            self.ctx.connected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the control says: stop (Some(Stop)) or cut this connection (Some(Reconnect)).
    fn control_says(&mut self) -> Option<Next> {
        let c = *self.control.borrow();
        if c.stop {
            return Some(Next::Stop);
        }
        if c.drop_generation != self.seen_generation {
            self.seen_generation = c.drop_generation;
            if chosen(self.index, c.drop_generation, c.drop_fraction, self.ctx.spec.seed) {
                self.ctx.drops.fetch_add(1, Ordering::Relaxed);
                return Some(Next::Reconnect);
            }
        }
        None
    }
}

/// The dialect half of a subscriber connection: what opens the subscription and how a received
/// WebSocket message is read. The loop around it ([`Subscriber::connection`]) is shared.
enum Dialect<'s> {
    /// linkcast JSON: the client library's session applies every server message (duplicates,
    /// gaps, rejoins with `since`), as in an application's client.
    Linkcast(&'s mut Session),
    /// A server that subscribes every socket on open and relays payloads verbatim.
    Raw,
    /// NATS text protocol: CONNECT, SUB and PING on open; subscribed at the PONG.
    Nats {
        /// The subject subscribed to.
        room: &'s str,
        /// This connection's parser (bytes of an operation may span WebSocket messages).
        parser: NatsParser,
    },
}

impl Dialect<'_> {
    /// Sends what opens the subscription. Returns when it must be up at the latest, and the
    /// failure to report otherwise (None: no bound; a linkcast rejoin has none, as it is the
    /// session's to retry).
    async fn open(&mut self, conn: &mut WsTransport, joined_once: bool, deadline: Instant) -> Result<Option<(Instant, &'static str)>, String> {
        match self {
            Dialect::Linkcast(session) => {
                session.handle_connected(Instant::now().into_std());
                while let Some(op) = session.poll_transmit() {
                    conn.feed_text(op.to_json()).await.map_err(|e| e.to_string())?;
                }
                conn.flush().await.map_err(|e| e.to_string())?;
                Ok((!joined_once).then_some((deadline, "join timed out")))
            }
            Dialect::Raw => Ok(None),
            Dialect::Nats { room, .. } => {
                conn.send_text(nats::connect_and_subscribe(room)).await.map_err(|e| e.to_string())?;
                Ok(Some((deadline, "nats subscribe timed out")))
            }
        }
    }

    /// Reads one received message: records deliveries, counts duplicates and errors. Ok(true)
    /// when it says the subscription is up (joined, subscribed); Err ends the connection.
    async fn handle(&mut self, ctx: &Ctx, index: u64, msg: &Message, conn: &mut WsTransport, joined_once: bool) -> Result<bool, String> {
        match self {
            Dialect::Linkcast(session) => {
                let Some(text) = msg.as_text() else { return Ok(false) };
                let mut up = false;
                match ServerMsg::<Stamp>::decode(text) {
                    Ok(decoded) => match session.handle_server_msg(Instant::now().into_std(), decoded) {
                        Received::Deliver { data, .. } => ctx.deliver(index, data.t),
                        Received::Duplicate => {
                            ctx.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Received::Joined => up = true,
                        Received::Refused { code, reason } => {
                            ctx.errors.fetch_add(1, Ordering::Relaxed);
                            if !joined_once {
                                return Err(format!("server error {code}: {reason}"));
                            }
                        }
                        Received::Absorbed => {}
                    },
                    Err(_) => {
                        ctx.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while session.poll_event().is_some() {}
                Ok(up)
            }
            Dialect::Raw => {
                match payload::stamp_of(msg.as_payload()) {
                    Some(t) => ctx.deliver(index, t),
                    None => {
                        ctx.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(false)
            }
            Dialect::Nats { parser, .. } => {
                parser.push(msg.as_payload()).map_err(|e| e.to_string())?;
                let (mut up, mut pong) = (false, false);
                // Bounded: each op consumes bytes from a buffer of at most MAX_PENDING.
                loop {
                    match parser.next_op() {
                        Ok(Some(NatsOp::Msg(p))) => match payload::stamp_of(&p) {
                            Some(t) => ctx.deliver(index, t),
                            None => {
                                ctx.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        Ok(Some(NatsOp::Ping)) => pong = true,
                        Ok(Some(NatsOp::Pong)) => up = true,
                        Ok(Some(NatsOp::Err(e))) => {
                            ctx.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("nats: {e}");
                        }
                        Ok(Some(NatsOp::Info)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            ctx.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("{e}");
                            break;
                        }
                    }
                }
                if pong {
                    conn.send_text("PONG\r\n".into()).await.map_err(|e| e.to_string())?;
                }
                Ok(up)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection futures, measured without polling them: the lean one is what a lean
    /// worker holds per idle connection (plus the task header and the socket's registration);
    /// `cargo test … subscriber_futures -- --nocapture` prints both for docs/benchmarks.md.
    #[tokio::test]
    async fn subscriber_futures_the_lean_one_is_small() {
        let spec = FleetSpec {
            proto: Proto::Linkcast,
            targets: vec!["ws://127.0.0.1:9/ws".into()],
            token: None,
            rooms: vec!["r".into()],
            first: 0,
            count: 1,
            bind: Vec::new(),
            connect_concurrency: 1,
            connect_timeout_ms: 1000,
            connect_window_secs: 600,
            reconnect_initial_ms: 10,
            seed: 1,
            lean: true,
            connect_retries: 0,
        };
        let ctx = Arc::new(Ctx::new(spec));
        let (_tx, rx) = watch::channel(Control::default());
        let full = subscriber(ctx.clone(), 0, rx);
        let lean = lean::subscriber(ctx.clone(), 0, 0, 0);
        let (full, lean) = (std::mem::size_of_val(&full), std::mem::size_of_val(&lean));
        println!("future bytes: full subscriber {full}, lean subscriber {lean}; Track slot {}", std::mem::size_of::<lean::Track>());
        assert!(lean < 1024 && lean < full, "lean {lean} B, full {full} B");
        assert_eq!(std::mem::size_of::<lean::Track>(), 16);
    }

    #[test]
    fn drop_selection_is_about_the_fraction() {
        let n = 10_000u64;
        let picked = (0..n).filter(|&i| chosen(i, 1, 0.25, 7)).count() as f64;
        assert!((picked / n as f64 - 0.25).abs() < 0.03, "{picked}");
        assert_eq!((0..n).filter(|&i| chosen(i, 2, 0.0, 7)).count(), 0);
        assert_eq!((0..n).filter(|&i| chosen(i, 3, 1.0, 7)).count() as u64, n);
    }
}
