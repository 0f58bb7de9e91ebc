//! The `linkcast` binary: one subcommand per role (see DESIGN.md "Roles").
//!
//! - `serve`: hub + Link in one process on loopback, with the demo page (the default setup);
//! - `hub --config F --id N`: one hub of a cluster;
//! - `link --config F --id N`: one Link of a cluster;
//! - `top [--config F | --hub URL]`: a live view of a running cluster (`src/top/`);
//! - `healthcheck [URL]`: exit 0 if `/healthz` answers (container and Kubernetes probes);
//! - `bench SCENARIO`: the load generator (fanout, rooms, connect, resume); cargo feature `bench`,
//!   on by default.
//!
//! Parsing and logging live here; each role's module owns its flags and its runtime.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// linkcast: publish a room message once; every member gets it, in order, across reconnects.
#[derive(Debug, Parser)]
#[command(name = "linkcast", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a hub and a Link in one process (HTTP :7070, WebSocket :7080, QUIC :7443).
    Serve(linkcast::serve::ServeArgs),
    /// Run one hub of a cluster.
    Hub(linkcast::hub::HubArgs),
    /// Run one Link (gateway) of a cluster.
    Link(linkcast::link::LinkArgs),
    /// Watch a running cluster: connections, deliveries/s, hottest rooms, queues, gaps.
    Top(linkcast::top::TopArgs),
    /// Exit 0 if a node's /healthz (default the admin listener on 127.0.0.1:7090) answers.
    Healthcheck(linkcast::healthcheck::HealthcheckArgs),
    /// Generate bounded load against a server on loopback and report throughput and latency.
    #[cfg(feature = "bench")]
    Bench(Box<linkcast::bench::BenchArgs>),
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => linkcast::serve::run_cli(args),
        Command::Hub(args) => linkcast::hub::run_cli(args),
        Command::Link(args) => linkcast::link::run_cli(args),
        Command::Top(args) => linkcast::top::run_cli(args),
        Command::Healthcheck(args) => linkcast::healthcheck::run_cli(args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => linkcast::bench::run_cli(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linkcast: {error}");
            ExitCode::FAILURE
        }
    }
}
