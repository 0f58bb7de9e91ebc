//! The link runtime (work in progress: see its issue).

/// Command-line flags of `linkcast link`.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// Cluster configuration file (TOML).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// This node's id in the configuration.
    #[arg(long)]
    pub id: u32,
}

/// Runs `linkcast link` until interrupted.
pub fn run_cli(_args: LinkArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("the link role is not built yet".into())
}
