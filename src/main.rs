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

/// mimalloc's `mi_option_purge_delay` (the 16th option of `mi_option_e` in `mimalloc.h`, v3; the
/// Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Gives freed memory back to the OS as soon as a page of it is empty, unless the operator set
/// `MIMALLOC_PURGE_DELAY` (which mimalloc then reads itself).
///
/// mimalloc's default delay (1 s) is only acted on when the thread that freed the memory
/// allocates again after it: a Link whose connections sit idle after a join storm never does,
/// and kept ≈ 200 bytes per connection of freed memory, more or less from run to run
/// (docs/benchmarks.md, "Issue 17 — smaller room tables, and freed memory returned"). Fan-out
/// frames come and go inside pages that stay in use, so delivery pays nothing for it (measured
/// there too).
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it at each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// Keeps transparent huge pages out of this process (`prctl(PR_SET_THP_DISABLE)`), unless the
/// operator set `MIMALLOC_ALLOW_THP` (mimalloc then decides). Returns the OS error if the
/// kernel refused.
///
/// mimalloc asks the kernel for huge pages on its arenas (`madvise`), and a 2 MiB page is
/// resident as a whole as soon as one byte of it is touched: a Link's live connections are
/// spread thinly over those pages. Measured: a Link with 18,000 idle connections held 2.6 KB of
/// RSS per connection with them and 2.0 KB without, and its baseline halved (26 → 13 MB); at
/// 1,000,000 connections the load generator's workers held ≈ 120 MB of huge pages each
/// (docs/benchmarks.md, "Issue 17 — no transparent huge pages"). The flag is inherited by the
/// processes this one starts (`bench`'s workers).
fn no_transparent_huge_pages() -> std::io::Result<()> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(());
    }
    // SAFETY: prctl(2) sets one flag of this process; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

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
    purge_freed_memory_at_once();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    if let Err(error) = no_transparent_huge_pages() {
        tracing::warn!(%error, "transparent huge pages stay on for this process: more memory per connection");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // Option 15 must be the purge delay: read before anything sets it, it has that option's
        // documented default (1,000 ms in mimalloc v3), which no other option has.
        assert!(std::env::var_os("MIMALLOC_PURGE_DELAY").is_none(), "run without MIMALLOC_PURGE_DELAY");
        // SAFETY: reads one integer option.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        purge_freed_memory_at_once();
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 0);
    }

    #[test]
    fn transparent_huge_pages_are_off_for_the_process() {
        assert!(std::env::var_os("MIMALLOC_ALLOW_THP").is_none(), "run without MIMALLOC_ALLOW_THP");
        no_transparent_huge_pages().expect("prctl(PR_SET_THP_DISABLE)");
        // SAFETY: reads one flag of this process.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1, "the kernel reports THP disabled for this process");
    }
}
