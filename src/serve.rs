//! `linkcast serve` (work in progress: see the hub/serve issue).

/// Command-line flags of `linkcast serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Optional configuration file (TOML); defaults apply without it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Runs `linkcast serve` until interrupted.
pub fn run_cli(_args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("serve is not built yet".into())
}
