//! The hub runtime (work in progress: see its issue).

/// Command-line flags of `linkcast hub`.
#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// Cluster configuration file (TOML).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// This node's id in the configuration.
    #[arg(long)]
    pub id: u32,
}

/// Runs `linkcast hub` until interrupted.
pub fn run_cli(_args: HubArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("the hub role is not built yet".into())
}
