//! Command line of `crossway-proxy`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Host side of Crossway: puts the windows of apps inside a VM on the host's Wayland desktop.
#[derive(Debug, Parser)]
#[command(name = "crossway-proxy", version, about, long_about = None)]
#[command(after_help = "Logging: set RUST_LOG (for example RUST_LOG=crossway_proxy=debug).")]
#[command(args_conflicts_with_subcommands = true, arg_required_else_help = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print the vhost-user backend capabilities (JSON, for libvirt) and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// `serve` options given without the subcommand, as libvirt launches backends.
    #[command(flatten)]
    pub vhost_user: crate::serve::ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a guest app through the whole chain and write a screenshot and stats.
    Demo(DemoArgs),
    /// Be the virtio-gpu vhost-user backend of one VM (QEMU, crosvm, libvirt).
    Serve(crate::serve::ServeArgs),
}

/// Options of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to write the screenshot and stats.json.
    #[arg(long, default_value = "crossway-demo")]
    pub out: PathBuf,
}
