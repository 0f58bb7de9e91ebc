//! `linkcast bench` (work in progress: see the client/bench issue).

/// Command-line flags of `linkcast bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    pub scenario: String,
}

/// Runs a bench scenario.
pub fn run_cli(_args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("bench is not built yet".into())
}
