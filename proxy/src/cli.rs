//! Command line of `crossway-proxy`.

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
    Demo(crossway_demo::DemoArgs),
    /// Be the virtio-gpu vhost-user backend of one VM (QEMU, crosvm, libvirt).
    Serve(crate::serve::ServeArgs),
    /// Run the embedded headless compositor, for any Wayland client to connect to.
    Headless(crossway_headless::command::HeadlessArgs),
    /// Relay Wayland clients on a socket to the host compositor through the policy
    /// (for VMMs with a built-in cross-domain host: crosvm --wayland-sock, libkrun).
    Filter(crate::filter::FilterArgs),
    /// Start a loopback VM against `serve` and run a guest program in it
    /// (it finds the device in $CROSSWAY_VIRTGPU).
    Vm(crate::vm::VmArgs),
}
