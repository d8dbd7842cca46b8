//! Command line of `crossway-proxy`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Host side of Crossway: puts the windows of apps inside a VM on the host's Wayland desktop.
#[derive(Debug, Parser)]
#[command(name = "crossway-proxy", version, about, long_about = None)]
#[command(after_help = "Logging: set RUST_LOG (for example RUST_LOG=crossway_proxy=debug).")]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a guest app through the whole chain and write a screenshot and stats.
    Demo(DemoArgs),
}

/// Options of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to write the screenshot and stats.json.
    #[arg(long, default_value = "crossway-demo")]
    pub out: PathBuf,
}
