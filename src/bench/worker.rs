//! Fleets in other processes: the parent side ([`spawn_process`]) and the child side
//! ([`worker_main`], the hidden `linkcast bench worker` subcommand).
//!
//! A process may hold at most 20,000 open files here, so `bench --workers K` runs its
//! subscribers as K children of the same binary (`std::env::current_exe`), each owning a slice of
//! at most [`MAX_PER_WORKER`] connections and binding its own source address (127.0.0.2,
//! 127.0.0.3, …: a fresh ephemeral-port range per address). The conversation is JSON lines:
//! the parent writes the [`FleetSpec`] then [`FleetCmd`]s to the child's stdin; the child writes
//! [`FleetMsg`]s to stdout, each prefixed with [`LINE_PREFIX`] so that log output sharing stdout
//! is ignored. Histograms travel in `stats.rs`'s compact form and are merged by the parent.
//! In-process fleets ([`spawn_local`]) speak the same messages over channels.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::fleet::{run_fleet, FleetCmd, FleetMsg, FleetSpec};

/// Most connections one worker process is given (the open-file limit is 20,000 per process;
/// the rest is headroom for the runtime, stdio and the publisher).
pub(crate) const MAX_PER_WORKER: u64 = 19_000;

/// Marks protocol lines on a worker's stdout.
pub(crate) const LINE_PREFIX: &str = "@fleet ";

/// Lines read from a worker's stdout per run at most (bounds the reader loop).
const MAX_LINES: u64 = 100_000_000;

/// The parent's handle on one fleet.
#[derive(Debug)]
pub(crate) struct FleetHandle {
    /// Commands to the fleet.
    pub commands: mpsc::Sender<FleetCmd>,
    /// The child process, when the fleet runs in one.
    pub child: Option<tokio::process::Child>,
}

/// Runs a fleet as a task of this process; its messages go to `out` tagged with `id`.
pub(crate) fn spawn_local(id: usize, spec: FleetSpec, out: mpsc::Sender<(usize, FleetMsg)>) -> FleetHandle {
    let (commands, command_rx) = mpsc::channel(16);
    let (msg_tx, mut msg_rx) = mpsc::channel(64);
    tokio::spawn(run_fleet(spec, command_rx, msg_tx));
    tokio::spawn(async move {
        while let Some(msg) = msg_rx.recv().await {
            if out.send((id, msg)).await.is_err() {
                break;
            }
        }
    });
    FleetHandle { commands, child: None }
}

/// Why a worker process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Spawning or talking to the child failed.
    #[error("worker process: {0}")]
    Io(#[from] std::io::Error),
    /// The spec could not be serialized.
    #[error("worker spec: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs a fleet in a child process (`current_exe bench worker`).
pub(crate) async fn spawn_process(id: usize, spec: &FleetSpec, out: mpsc::Sender<(usize, FleetMsg)>) -> Result<FleetHandle, WorkerError> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "worker"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut first = serde_json::to_string(spec)?;
    first.push('\n');
    stdin.write_all(first.as_bytes()).await?;
    let (commands, mut command_rx) = mpsc::channel::<FleetCmd>(16);
    tokio::spawn(async move {
        while let Some(command) = command_rx.recv().await {
            let Ok(mut line) = serde_json::to_string(&command) else { continue };
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..MAX_LINES {
            let Ok(Some(line)) = lines.next_line().await else { break };
            let Some(json) = line.strip_prefix(LINE_PREFIX) else { continue };
            match serde_json::from_str::<FleetMsg>(json) {
                Ok(msg) => {
                    if out.send((id, msg)).await.is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("bench: worker {id} sent an unreadable line: {e}"),
            }
        }
    });
    Ok(FleetHandle { commands, child: Some(child) })
}

/// The child side: read the spec and commands from stdin, run the fleet, answer on stdout.
pub(crate) fn worker_main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let first = lines.next_line().await?.ok_or("worker: no spec on stdin")?;
        let spec: FleetSpec = serde_json::from_str(&first)?;
        let (command_tx, command_rx) = mpsc::channel(16);
        let (msg_tx, mut msg_rx) = mpsc::channel(64);
        let fleet = tokio::spawn(run_fleet(spec, command_rx, msg_tx));
        tokio::spawn(async move {
            for _ in 0..MAX_LINES {
                let command = match lines.next_line().await {
                    Ok(Some(line)) => match serde_json::from_str::<FleetCmd>(&line) {
                        Ok(command) => command,
                        Err(_) => continue,
                    },
                    // The parent went away: stop.
                    _ => FleetCmd::Stop,
                };
                let stop = matches!(command, FleetCmd::Stop);
                if command_tx.send(command).await.is_err() || stop {
                    break;
                }
            }
        });
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = msg_rx.recv().await {
            let line = format!("{LINE_PREFIX}{}\n", serde_json::to_string(&msg)?);
            stdout.write_all(line.as_bytes()).await?;
            stdout.flush().await?;
        }
        let _ = fleet.await;
        Ok(())
    })
}
