//! `linkcast-sim`: the command line around [`linkcast_sim::simulate`].
//!
//! Parses the scenario and model options (clap), builds the workload (a generated scenario or a
//! JSONL trace), runs it with a progress bar on stderr (indicatif; hidden when stderr is not a
//! terminal or with `--quiet`), then prints the human summary, writes the JSON report and the SVG
//! plots if asked, and exits 1 — after printing "reproduce with --seed N" — if any invariant was
//! violated. Wall time and peak RSS are measured here, outside the deterministic report.
//!
//! ```text
//! linkcast-sim flash-crowd --members 1000000 --messages 1000 --link-failures 2 --links 8 \
//!     --seed 42 --json out.json --plots out/
//! linkcast-sim trace my-event.jsonl --seed 7
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use linkcast_core::fanout::RingLimits;
use linkcast_core::room::RoomLimits;
use linkcast_sim::config::SimConfig;
use linkcast_sim::input::{parse_trace, Workload};
use linkcast_sim::report::{self, Output, RunInfo};
use linkcast_sim::scenario::{self, Params, Scenario};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "linkcast-sim", version, about = "Replay million-member rooms on linkcast's sans-IO core")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Subcommand)]
enum Command {
    /// N members join in a window, then M messages of chat, with optional Link failures.
    FlashCrowd(ScenarioArgs),
    /// Message storms: queues, ring lag, counted gaps.
    Burst(ScenarioArgs),
    /// A Link dies mid-broadcast and comes back empty.
    LinkFailure(ScenarioArgs),
    /// Many rooms; a Link joins mid-way.
    ScaleOut(ScenarioArgs),
    /// Replays a JSONL trace (see docs/simulator.md).
    Trace {
        /// The trace file.
        file: PathBuf,
    },
}

#[derive(Args, Default)]
struct ScenarioArgs {
    /// Members.
    #[arg(long)]
    members: Option<u32>,
    /// Rooms the members are spread over.
    #[arg(long)]
    rooms: Option<u32>,
    /// Messages of steady chat.
    #[arg(long)]
    messages: Option<u32>,
    /// Link failures during the broadcast (flash-crowd, link-failure).
    #[arg(long)]
    link_failures: Option<u32>,
    /// Join window in milliseconds.
    #[arg(long)]
    join_window_ms: Option<u64>,
    /// Steady chat rate, messages per second.
    #[arg(long)]
    msg_rate: Option<f64>,
    /// Payload bytes per message.
    #[arg(long)]
    payload: Option<u32>,
    /// Messages in the storm (burst).
    #[arg(long)]
    storm: Option<u32>,
    /// Payload bytes of storm messages (burst).
    #[arg(long)]
    storm_payload: Option<u32>,
}

#[derive(Args)]
struct ModelArgs {
    /// Seed; default: drawn from the clock and printed.
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Write the JSON report here (`-` = stdout; the summary then goes to stderr).
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write SVG plots into this directory.
    #[arg(long, global = true)]
    plots: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    /// Links up at start.
    #[arg(long, global = true, default_value_t = 8)]
    links: u32,
    /// Shards per Link.
    #[arg(long, global = true, default_value_t = linkcast_sim::config::DEFAULT_SHARDS)]
    shards: u16,
    /// Deliveries per second per shard.
    #[arg(long, global = true, default_value_t = linkcast_sim::config::DEFAULT_SHARD_CAPACITY)]
    shard_capacity: u64,
    /// Connection cap per Link.
    #[arg(long, global = true, default_value_t = linkcast_sim::config::DEFAULT_LINK_MAX_CONNS)]
    link_max_conns: u64,
    /// Admissions per second per Link (0 = unlimited).
    #[arg(long, global = true, default_value_t = linkcast_sim::config::DEFAULT_ADMISSION_RATE)]
    admission_rate: u64,
    /// Links per room group.
    #[arg(long, global = true, default_value_t = linkcast_sim::config::DEFAULT_GROUP_SIZE)]
    group_size: usize,
    /// Room history: most messages kept for replay.
    #[arg(long, global = true, default_value_t = RoomLimits::default().history_messages)]
    history: usize,
    /// Ring limit per (shard, room): most frames.
    #[arg(long, global = true, default_value_t = RingLimits::default().max_items)]
    ring_items: usize,
    /// Ring limit per (shard, room): most bytes.
    #[arg(long, global = true, default_value_t = RingLimits::default().max_bytes)]
    ring_bytes: usize,
    /// Rooms in the placement comparison.
    #[arg(long, global = true, default_value_t = 10_000)]
    cmp_rooms: u32,
    /// Members in the placement comparison.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    cmp_members: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (seed, seed_source) = match cli.model.seed {
        Some(seed) => (seed, "given"),
        None => {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            (nanos ^ (u64::from(std::process::id()) << 32), "clock")
        }
    };
    eprintln!("linkcast-sim: seed {seed} ({seed_source})");
    let m = &cli.model;
    let mut cfg = SimConfig::new(seed);
    cfg.links = m.links;
    cfg.shards = m.shards;
    cfg.shard_capacity = m.shard_capacity;
    cfg.link_max_conns = m.link_max_conns;
    cfg.admission_rate = m.admission_rate;
    cfg.group_size = m.group_size.max(1);
    cfg.room_limits.history_messages = m.history;
    cfg.ring_limits = RingLimits { max_bytes: m.ring_bytes, max_items: m.ring_items };
    cfg.cmp_rooms = m.cmp_rooms;
    cfg.cmp_members = m.cmp_members;

    let (name, workload, params): (String, Workload, Option<serde_json::Value>) = match &cli.command {
        Command::Trace { file } => {
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("linkcast-sim: cannot read {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            match parse_trace(&text) {
                Ok(w) => ("trace".to_string(), w, None),
                Err(e) => {
                    eprintln!("linkcast-sim: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            }
        }
        Command::FlashCrowd(a) => scenario_workload(Scenario::FlashCrowd, "flash-crowd", a, &cfg),
        Command::Burst(a) => scenario_workload(Scenario::Burst, "burst", a, &cfg),
        Command::LinkFailure(a) => scenario_workload(Scenario::LinkFailure, "link-failure", a, &cfg),
        Command::ScaleOut(a) => scenario_workload(Scenario::ScaleOut, "scale-out", a, &cfg),
    };

    let bar = ProgressBar::new(workload.inputs.len() as u64);
    if m.quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} inputs {msg}") {
        bar.set_style(style);
    }
    let started = Instant::now();
    let report = linkcast_sim::simulate(cfg, &workload, &name, params, &mut |done| bar.set_position(done as u64));
    let wall_ms = started.elapsed().as_millis() as u64;
    bar.finish_and_clear();
    let run = RunInfo { wall_ms, peak_rss_kib: peak_rss_kib(), seed_source };

    let summary = report::summary(&report, Some(&run));
    let json_to_stdout = m.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if json_to_stdout {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if let Some(path) = &m.json {
        let output = Output { report: &report, run: &run };
        let text = match serde_json::to_string_pretty(&output) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("linkcast-sim: cannot serialize the report: {e}");
                return ExitCode::from(2);
            }
        };
        let written = if json_to_stdout {
            writeln!(std::io::stdout(), "{text}")
        } else {
            std::fs::write(path, text + "\n")
        };
        if let Err(e) = written {
            eprintln!("linkcast-sim: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(dir) = &m.plots {
        if let Err(e) = linkcast_sim::plots::write_all(&report, dir) {
            eprintln!("linkcast-sim: {e}");
            return ExitCode::from(2);
        }
    }
    if report.verdict.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("linkcast-sim: invariant violated — reproduce with --seed {seed}");
        ExitCode::from(1)
    }
}

fn scenario_workload(
    scenario: Scenario,
    name: &str,
    a: &ScenarioArgs,
    cfg: &SimConfig,
) -> (String, Workload, Option<serde_json::Value>) {
    let d = Params::defaults(scenario);
    let params = Params {
        members: a.members.unwrap_or(d.members),
        rooms: a.rooms.unwrap_or(d.rooms),
        messages: a.messages.unwrap_or(d.messages),
        join_window_ms: a.join_window_ms.unwrap_or(d.join_window_ms),
        msg_rate: a.msg_rate.unwrap_or(d.msg_rate),
        payload: a.payload.unwrap_or(d.payload),
        link_failures: a.link_failures.unwrap_or(d.link_failures),
        links: cfg.links,
        group_size: cfg.group_size,
        storm: a.storm.unwrap_or(d.storm),
        storm_payload: a.storm_payload.unwrap_or(d.storm_payload),
    };
    let workload = scenario::generate(scenario, &params, cfg.seed);
    (name.to_string(), workload, serde_json::to_value(&params).ok())
}

/// Peak resident set size (VmHWM) in KiB, from /proc/self/status (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
