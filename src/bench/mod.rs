//! `linkcast bench`: a bounded load generator for loopback, with honest percentiles.
//!
//! Scenarios (each bounded in messages, seconds and connections):
//! - `fanout`: N subscribers in one room, one publisher at rate R with payloads of S bytes;
//! - `rooms`: M rooms × N members, publishes spread round-robin over the rooms;
//! - `connect`: a connection/join storm; how fast N clients get in and what they cost the server
//!   (RSS per idle connection), then one broadcast that every one of them must receive;
//! - `resume`: like fanout, but a share of the subscribers is cut mid-stream and resumes with
//!   `since`; lost and duplicated messages are counted;
//! - `presence`: one room of N members churning (leave + join); hub → Link presence frames and
//!   client deliveries per second, to compare presence on and off (`presence.rs`);
//! - `compare A.json B.json …`: the side-by-side table (ratios to the first), for
//!   scripts/compare-peers.
//!
//! Flow of a run ([`run_load`]): resolve the targets (`--ws` URLs, or `locate` through `--http`)
//! → start fleets of subscribers (in this process, or `--workers K` child processes, see
//! `worker.rs`) → wait until all joined (sample server RSS) → publish (`publisher.rs`), sampling
//! server CPU around it → wait until every owed delivery arrived or `--drain` passed → stop the
//! fleets, merge their counts and histograms → [`report::Report`] (text, `--json`, `--plot`).
//!
//! Modules: `fleet` (subscribers), `publisher`, `worker` (processes), `stats` (histograms),
//! `procstat` (/proc), `payload` (the stamped message), `nats` (NATS lines), [`report`],
//! [`plot`]. Public: what the `linkcast` binary and the tests call ([`run_cli`], [`run_load`] and
//! their flags, the report and its plot); the rest is private.
//!
//! Why a cargo feature (`bench`, on by default) and not a crate of its own under tools/: the
//! bench drives the client library ([`crate::client`]), so a bench crate would depend on
//! `linkcast`, and the `linkcast` binary, which keeps the `bench` subcommand, could not depend on
//! that crate without a package cycle. Behind the feature, its dependencies (hdrhistogram,
//! indicatif, plotters) stay out of the library for client-library users who build with
//! `default-features = false`.
#![cfg(feature = "bench")]

mod fleet;
mod nats;
mod payload;
pub mod plot;
pub mod presence;
mod procstat;
mod publisher;
pub mod report;
mod stats;
mod worker;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::fleet::{FleetCmd, FleetMsg, FleetSpec};
use self::procstat::ProcSample;
use self::publisher::{PublishCounters, PublishPlan};
use self::report::Report;
use self::stats::Recorder;
use self::worker::{FleetHandle, MAX_PER_WORKER};

pub use self::fleet::Proto;

/// Command-line flags of `linkcast bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// N subscribers in one room, one publisher at --rate with --size bytes.
    Fanout(LoadArgs),
    /// --rooms rooms × --subscribers members each; publishes spread over the rooms.
    Rooms(LoadArgs),
    /// Connection/join storm of --subscribers clients, then --messages broadcasts (default 1).
    Connect(LoadArgs),
    /// Fanout with --drop-fraction of subscribers cut mid-stream and resuming with `since`.
    Resume(LoadArgs),
    /// The cost of member counts: hub → Link and client deliveries per second while one big room
    /// churns (run with presence on and off: `hub.presence_interval_ms = 0`).
    Presence(presence::PresenceArgs),
    /// Prints the side-by-side table of several --json results (ratios to the first).
    Compare {
        /// Report files; the first is the reference.
        files: Vec<PathBuf>,
        /// Markdown table.
        #[arg(long)]
        markdown: bool,
    },
    /// Runs a fleet of subscribers for a parent bench (spec and commands on stdin).
    #[command(hide = true)]
    Worker,
}

/// Flags shared by the load scenarios.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// Hub base URL: subscribers locate their Link through it and (linkcast) the publisher
    /// publishes over HTTP.
    #[arg(long)]
    pub http: Option<String>,
    /// WebSocket URL(s) subscribers connect to (round-robin); also the publish socket when there
    /// is no --http.
    #[arg(long)]
    pub ws: Vec<String>,
    /// Wire dialect of the server under test.
    #[arg(long, value_enum, default_value = "linkcast")]
    pub proto: Proto,
    /// JWT for the WebSocket connections (dev mode needs none).
    #[arg(long)]
    pub token: Option<String>,
    /// API key for HTTP publishes.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Subscribers (per room for `rooms`).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub subscribers: u64,
    /// Rooms (`rooms` scenario; others use 1).
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Room name prefix (a random suffix keeps runs apart).
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Messages per second (all rooms together).
    #[arg(long, short = 'r', default_value_t = 100.0)]
    pub rate: f64,
    /// Payload bytes.
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
    /// Most messages to publish (connect: default 1).
    #[arg(long, short = 'm')]
    pub messages: Option<u64>,
    /// Most seconds of publishing.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Concurrent HTTP publish connections.
    #[arg(long, default_value_t = 4)]
    pub publish_conns: usize,
    /// Worker processes for the subscribers (0: this process). Each holds ≤ 19,000.
    #[arg(long, default_value_t = 0)]
    pub workers: u64,
    /// Source addresses to connect from; with --workers, worker k uses the k-th (default
    /// 127.0.0.2, 127.0.0.3, …).
    #[arg(long)]
    pub bind: Vec<IpAddr>,
    /// Connects in flight at once per fleet (default: --connect-budget shared by the fleets).
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Connects in flight at once over all fleets together, when --connect-concurrency is not
    /// given: each fleet gets budget / fleets (8 to 256). A budget that does not grow with the
    /// number of workers keeps the time a connect waits in the servers' queues bounded.
    #[arg(long, default_value_t = 2048)]
    pub connect_budget: usize,
    /// Extra attempts a (lean) subscriber makes to connect and join before it counts as failed.
    #[arg(long, default_value_t = 2)]
    pub connect_retries: u32,
    /// Subscriber implementation: `lean` (a few hundred bytes per connection, linkcast only, no
    /// reconnects), `full` (the client library's session over tokio-websockets), `auto`: lean
    /// for linkcast fanout/rooms/connect, full otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub client: ClientKind,
    /// Bound on one connect + join, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Most seconds the connect phase may take as a whole (every subscriber connected, joined or
    /// given up): past it the stragglers count as failed. 1 M connections on 2 cores join at
    /// ~1,400/s, so `scripts/bench-1m` raises it with N.
    #[arg(long, default_value_t = 600)]
    pub connect_window_secs: u64,
    /// Idle seconds between "all joined" and the first publish (RSS of idle connections).
    #[arg(long, default_value_t = 0.5)]
    pub hold: f64,
    /// The delivery window: most seconds to wait for owed deliveries after the last publish.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// After the window, most seconds more to wait for what is still owed: deliveries that
    /// arrive then are counted as late, what never arrives as lost.
    #[arg(long, default_value_t = 30.0)]
    pub late_drain: f64,
    /// resume: share of subscribers cut at each drop.
    #[arg(long, default_value_t = 0.5)]
    pub drop_fraction: f64,
    /// resume: number of drops, spread over the publishing time.
    #[arg(long, default_value_t = 2)]
    pub drops: u64,
    /// resume: first reconnect delay after a cut, milliseconds.
    #[arg(long, default_value_t = 50)]
    pub reconnect_ms: u64,
    /// Server process(es) to sample for CPU and RSS (repeatable).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Label of this run in reports and comparisons.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (throughput and latency over time) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print nothing but errors (tests).
    #[arg(long)]
    pub quiet: bool,
}

/// Which subscriber implementation a fleet runs (`--client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// Lean for linkcast fanout/rooms/connect, full otherwise.
    Auto,
    /// The lean subscriber (`fleet/lean.rs`).
    Lean,
    /// The client library's session over tokio-websockets.
    Full,
}

/// Why a bench run could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag combination that cannot work.
    #[error("{0}")]
    Usage(String),
    /// Locating the room's Links failed.
    #[error("locate: {0}")]
    Locate(#[from] crate::client::http::HttpError),
    /// A worker process failed.
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
    /// The fleets went away before reporting.
    #[error("fleets stopped reporting ({0})")]
    Fleets(&'static str),
}

/// Runs `linkcast bench`.
pub fn run_cli(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (name, load) = match args.scenario {
        Scenario::Worker => return worker::worker_main(),
        Scenario::Compare { files, markdown } => {
            let reports = files.iter().map(|f| Report::read_json(f)).collect::<Result<Vec<_>, _>>()?;
            print!("{}", report::compare_table(&reports, markdown));
            return Ok(());
        }
        Scenario::Fanout(a) => ("fanout", a),
        Scenario::Rooms(a) => ("rooms", a),
        Scenario::Connect(a) => ("connect", a),
        Scenario::Resume(a) => ("resume", a),
        Scenario::Presence(a) => return presence::run_cli(a),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run_load(name, load.clone()))?;
    if !load.quiet {
        print!("{}", report.to_text());
    }
    if let Some(path) = &load.json {
        report.write_json(path)?;
    }
    if let Some(path) = &load.plot {
        plot::write_svg(&report, path)?;
    }
    Ok(())
}

/// Runs one load scenario (`fanout`, `rooms`, `connect`, `resume`) and returns its report.
/// Public so tests can run small bounded scenarios against an in-process server.
pub async fn run_load(scenario: &str, args: LoadArgs) -> Result<Report, BenchError> {
    let rooms_n = if scenario == "rooms" { args.rooms.max(1) } else { 1 };
    let per_room = args.subscribers;
    let total_subs = rooms_n * per_room;
    let run_id = crate::clock::now_micros() % 1_000_000_000;
    let rooms: Vec<String> = (0..rooms_n).map(|i| format!("{}-{run_id}-{i}", args.room_prefix)).collect();
    let messages = args.messages.unwrap_or(if scenario == "connect" { 1 } else { 10_000 });

    // Targets.
    let targets = if !args.ws.is_empty() {
        args.ws.clone()
    } else if let (Proto::Linkcast, Some(http)) = (args.proto, &args.http) {
        let mut api = crate::client::http::HttpApi::new(http, args.api_key.clone())?;
        let links = api.locate(&rooms[0]).await?;
        links.into_iter().map(|l| l.ws).collect()
    } else {
        return Err(BenchError::Usage("give --ws URL (or --http URL for linkcast)".into()));
    };
    if targets.is_empty() {
        return Err(BenchError::Usage("no WebSocket target".into()));
    }
    let workers = args.workers;
    if workers == 0 && total_subs > MAX_PER_WORKER {
        return Err(BenchError::Usage(format!("{total_subs} subscribers need --workers (≤ {MAX_PER_WORKER} per process)")));
    }
    if workers > 0 && total_subs.div_ceil(workers) > MAX_PER_WORKER {
        return Err(BenchError::Usage(format!("{total_subs} subscribers over {workers} workers exceeds {MAX_PER_WORKER} each")));
    }

    let progress = progress_bar(args.quiet);
    progress.set_message(format!("connecting {total_subs} subscribers"));
    let server_before = ProcSample::of(&args.server_pid);
    let own_before = ProcSample::own();

    // Fleets.
    let (msg_tx, mut msg_rx) = mpsc::channel::<(usize, FleetMsg)>(1024);
    let mut fleets: Vec<FleetHandle> = Vec::new();
    let fleet_count = workers.max(1);
    let chunk = total_subs.div_ceil(fleet_count);
    let lean = match args.client {
        ClientKind::Lean => true,
        ClientKind::Full => false,
        ClientKind::Auto => args.proto == Proto::Linkcast && matches!(scenario, "fanout" | "rooms" | "connect"),
    };
    if lean && (args.proto != Proto::Linkcast || scenario == "resume") {
        return Err(BenchError::Usage("--client lean speaks linkcast only and does not resume".into()));
    }
    let connect_concurrency =
        args.connect_concurrency.unwrap_or_else(|| (args.connect_budget / fleet_count as usize).clamp(8, 256));
    for k in 0..fleet_count {
        let first = k * chunk;
        let count = chunk.min(total_subs.saturating_sub(first));
        let bind = if workers > 0 {
            let ip = args.bind.get(k as usize).copied().unwrap_or(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (k % 250) as u8)));
            vec![ip]
        } else {
            args.bind.clone()
        };
        let spec = FleetSpec {
            proto: args.proto,
            targets: targets.clone(),
            token: args.token.clone(),
            rooms: rooms.clone(),
            first,
            count,
            bind,
            connect_concurrency,
            connect_timeout_ms: args.connect_timeout_ms,
            connect_window_secs: args.connect_window_secs,
            reconnect_initial_ms: args.reconnect_ms,
            seed: run_id ^ k,
            lean,
            connect_retries: if lean { args.connect_retries } else { 0 },
        };
        let handle = if workers > 0 {
            worker::spawn_process(k as usize, &spec, msg_tx.clone()).await?
        } else {
            worker::spawn_local(k as usize, spec, msg_tx.clone())
        };
        fleets.push(handle);
    }
    drop(msg_tx);

    // Ready.
    let mut readies: Vec<Option<fleet::Ready>> = vec![None; fleets.len()];
    let mut latest: Vec<fleet::Progress> = vec![fleet::Progress::default(); fleets.len()];
    let mut finals: Vec<Option<Box<fleet::Final>>> = vec![None; fleets.len()];
    while readies.iter().any(Option::is_none) {
        let (id, msg) = msg_rx.recv().await.ok_or(BenchError::Fleets("before ready"))?;
        absorb(id, msg, &mut readies, &mut latest, &mut finals);
    }
    let readies: Vec<fleet::Ready> = readies.into_iter().flatten().collect();
    let opened: u64 = readies.iter().map(|r| r.opened).sum();
    let failed: u64 = readies.iter().map(|r| r.failed).sum();
    let mut joined_per_room = vec![0u64; rooms.len()];
    let mut connect_latency = stats::new_histogram();
    for r in &readies {
        for (i, n) in r.joined_per_room.iter().enumerate() {
            if let Some(slot) = joined_per_room.get_mut(i) {
                *slot += n;
            }
        }
        let _ = stats::decode_histogram_into(&r.connect_latency, &mut connect_latency);
    }
    let connect_secs = readies.iter().map(|r| r.connect_secs).fold(0.0, f64::max);
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    let server_connected = ProcSample::of(&args.server_pid);

    // Publish.
    let plan = PublishPlan {
        proto: args.proto,
        http: args.http.clone(),
        api_key: args.api_key.clone(),
        ws: args.ws.first().cloned().or_else(|| targets.first().cloned()),
        token: args.token.clone(),
        rooms: rooms.clone(),
        rate: args.rate,
        size: args.size,
        messages,
        duration: Duration::from_secs_f64(args.duration.max(0.001)),
        conns: args.publish_conns,
    };
    let counters = Arc::new(PublishCounters::default());
    let cpu_start = ProcSample::of(&args.server_pid);
    let publish_started = Instant::now();
    let mut publisher = tokio::spawn(publisher::run(plan, counters.clone()));
    let planned = messages.min((args.rate * args.duration).ceil() as u64).max(1);
    let drop_times: Vec<Duration> = if scenario == "resume" {
        let span = planned as f64 / args.rate.max(0.001);
        (1..=args.drops).map(|i| Duration::from_secs_f64(span * i as f64 / (args.drops + 1) as f64)).collect()
    } else {
        Vec::new()
    };
    let mut next_drop = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let published = loop {
        tokio::select! {
            done = &mut publisher => break done.unwrap_or_default(),
            msg = msg_rx.recv() => match msg {
                Some((id, msg)) => absorb(id, msg, &mut [], &mut latest, &mut finals),
                None => return Err(BenchError::Fleets("while publishing")),
            },
            _ = tick.tick() => {
                if let Some(at) = drop_times.get(next_drop) {
                    if publish_started.elapsed() >= *at {
                        next_drop += 1;
                        for f in &fleets {
                            let _ = f.commands.send(FleetCmd::Drop { fraction: args.drop_fraction, generation: next_drop as u64 }).await;
                        }
                    }
                }
                let received: u64 = latest.iter().map(|p| p.received).sum();
                progress.set_message(format!("published {} · delivered {received}", counters.sent.load(Ordering::Relaxed)));
            }
        }
    };

    // Drain.
    let expected: u64 = published.per_room.iter().zip(&joined_per_room).map(|(sent, members)| sent * members).sum();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain.max(0.0));
    loop {
        let received: u64 = latest.iter().map(|p| p.received).sum();
        progress.set_message(format!("draining: delivered {received} / {expected}"));
        if received >= expected || Instant::now() >= drain_deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), msg_rx.recv()).await {
            Ok(Some((id, msg))) => absorb(id, msg, &mut [], &mut latest, &mut finals),
            Ok(None) => return Err(BenchError::Fleets("while draining")),
            Err(_) => {}
        }
    }
    // The window closed: what arrives from now on is late. Wait (bounded) for the rest, so that
    // late and never-arrived are told apart.
    let window_closed_us = crate::clock::now_micros();
    for f in &fleets {
        let _ = f.commands.send(FleetCmd::Window { published_per_room: published.per_room.clone() }).await;
    }
    let late_deadline = Instant::now() + Duration::from_secs_f64(args.late_drain.max(0.0));
    loop {
        let received: u64 = latest.iter().map(|p| p.received).sum();
        if received >= expected || Instant::now() >= late_deadline {
            break;
        }
        progress.set_message(format!("late drain: delivered {received} / {expected}"));
        match tokio::time::timeout(Duration::from_millis(300), msg_rx.recv()).await {
            Ok(Some((id, msg))) => absorb(id, msg, &mut [], &mut latest, &mut finals),
            Ok(None) => return Err(BenchError::Fleets("while draining late deliveries")),
            Err(_) => {}
        }
    }
    // One more beat for stragglers beyond `expected` (duplicates) to show up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cpu_end = ProcSample::of(&args.server_pid);

    // Stop and collect.
    for f in &fleets {
        let _ = f.commands.send(FleetCmd::Stop).await;
    }
    // Each fleet closes its connections before it reports: 18,000 closes on a machine busy with
    // a million sockets took more than 30 s (a 1 M run lost its whole report to that).
    let members: u64 = joined_per_room.iter().sum();
    let collect_deadline = Instant::now() + Duration::from_secs(30 + members / 10_000);
    while finals.iter().any(Option::is_none) && Instant::now() < collect_deadline {
        match tokio::time::timeout(Duration::from_millis(500), msg_rx.recv()).await {
            Ok(Some((id, msg))) => absorb(id, msg, &mut [], &mut latest, &mut finals),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    for f in &mut fleets {
        if let Some(child) = &mut f.child {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
    progress.finish_and_clear();
    let finals: Vec<Box<fleet::Final>> = finals.into_iter().flatten().collect();
    if finals.len() < fleets.len() {
        return Err(BenchError::Fleets("at the end"));
    }

    // Merge.
    let mut recorder = Recorder::default();
    for f in &finals {
        let _ = recorder.merge_dump(&f.recorder);
    }
    let received: u64 = finals.iter().map(|f| f.received).sum();
    let seen_duplicates: u64 = finals.iter().map(|f| f.duplicates).sum();
    let extra = if args.proto == Proto::Linkcast { 0 } else { received.saturating_sub(expected) };
    let last_delivery_us = finals.iter().map(|f| f.last_delivery_us).max().unwrap_or(0);
    let window_secs = (last_delivery_us.max(published.last_send_us).saturating_sub(published.first_send_us)) as f64 / 1e6;
    let server_cpu = cpu_end.cpu_secs - cpu_start.cpu_secs;
    let unique = received - extra;
    let in_window: u64 = finals.iter().map(|f| f.received_in_window).sum::<u64>().min(unique);
    let client_cpu_window: f64 = if workers > 0 {
        finals.iter().zip(&readies).map(|(f, r)| (f.cpu_at_stop - r.cpu_ready).max(0.0)).sum()
    } else {
        // In-process fleets share this process's clock with the publisher: not separable.
        0.0
    };
    let (client_rss_per_conn, client_cpu, processes) = if workers > 0 {
        let rss: u64 = readies.iter().map(|r| r.rss_ready.saturating_sub(r.rss_before)).sum();
        (per(rss as f64, opened), finals.iter().map(|f| f.cpu_secs).sum(), workers)
    } else {
        let rss = readies.first().map(|r| r.rss_ready.saturating_sub(r.rss_before)).unwrap_or(0);
        (per(rss as f64, opened), ProcSample::own().cpu_secs - own_before.cpu_secs, 1)
    };
    Ok(Report {
        label: args.label.clone(),
        scenario: scenario.into(),
        proto: format!("{:?}", args.proto).to_lowercase(),
        targets,
        rooms: rooms_n,
        size: args.size,
        rate: args.rate,
        connections: report::ConnectionStats {
            attempted: total_subs,
            opened,
            failed,
            first_error: readies.iter().find_map(|r| r.first_error.clone()),
            connect_secs,
            joins_per_sec: opened as f64 / connect_secs.max(1e-6),
            connect_latency_us: stats::quantiles(&connect_latency),
            drops: finals.iter().map(|f| f.drops).sum(),
            reconnects: finals.iter().map(|f| f.reconnects).sum(),
            retries: readies.iter().map(|r| r.retries).sum(),
            connect_concurrency,
            ended: finals.iter().map(|f| f.ended).sum(),
            first_end: finals.iter().find_map(|f| f.first_end.clone()),
        },
        deliveries: report::DeliveryStats {
            messages_sent: published.sent,
            publish_errors: published.errors,
            first_publish_error: published.first_error.clone(),
            expected,
            received: unique,
            lost: expected.saturating_sub(unique),
            late: unique - in_window,
            holes: finals.iter().map(|f| f.holes).sum(),
            missing: finals.iter().map(|f| f.missing).sum(),
            window_closed_after_secs: window_closed_us.saturating_sub(published.first_send_us) as f64 / 1e6,
            duplicated: seen_duplicates + extra,
            reported_lost: finals.iter().map(|f| f.lost).sum(),
            gaps: finals.iter().map(|f| f.gaps).sum(),
            errors: finals.iter().map(|f| f.errors).sum(),
            window_secs,
            deliveries_per_sec: unique as f64 / window_secs.max(1e-6),
            messages_per_sec: published.sent as f64
                / ((published.last_send_us.saturating_sub(published.first_send_us)) as f64 / 1e6).max(1e-6),
        },
        latency_us: stats::quantiles(recorder.latency()),
        server: report::ServerStats {
            pids: args.server_pid.clone(),
            cpu_secs: server_cpu,
            deliveries_per_cpu_sec: if server_cpu > 0.0 { unique as f64 / server_cpu } else { 0.0 },
            rss_before: server_before.rss_bytes,
            rss_connected: server_connected.rss_bytes,
            rss_end: cpu_end.rss_bytes,
            rss_per_conn_bytes: per(server_connected.rss_bytes.saturating_sub(server_before.rss_bytes) as f64, opened),
        },
        client: report::ClientStats {
            processes,
            rss_per_conn_bytes: client_rss_per_conn,
            cpu_secs: client_cpu,
            cpu_secs_delivering: client_cpu_window,
            lean,
            rss_before: readies.iter().map(|r| r.rss_before).sum(),
            rss_ready: readies.iter().map(|r| r.rss_ready).sum(),
        },
        series: recorder.series(published.first_send_us / 1_000_000),
    })
}

fn per(total: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        total / n as f64
    }
}

/// Files a fleet message under its fleet.
fn absorb(
    id: usize,
    msg: FleetMsg,
    readies: &mut [Option<fleet::Ready>],
    latest: &mut [fleet::Progress],
    finals: &mut [Option<Box<fleet::Final>>],
) {
    match msg {
        FleetMsg::Ready(r) => {
            if let Some(slot) = readies.get_mut(id) {
                *slot = Some(r);
            }
        }
        FleetMsg::Progress(p) => {
            if let Some(slot) = latest.get_mut(id) {
                *slot = p;
            }
        }
        FleetMsg::Final(f) => {
            if let Some(slot) = latest.get_mut(id) {
                slot.received = f.received;
            }
            if let Some(slot) = finals.get_mut(id) {
                *slot = Some(f);
            }
        }
    }
}

/// A spinner with a message on a terminal; hidden otherwise (and with --quiet).
fn progress_bar(quiet: bool) -> ProgressBar {
    let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(None, target);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
