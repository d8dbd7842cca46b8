//! `crossway-agent`, the guest side of Crossway: the Wayland display of the apps inside a VM.
//!
//! ```text
//!  guest app ──wayland──▶ crossway-agent ──virtgpu ioctls (cross-domain, capset 5)──▶ host
//! ```
//!
//! The binary's `main` parses [`Cli`], installs logging and calls [`run`]. The relay itself is
//! the work of the guest-agent issue; what exists is [`channel`], one cross-domain Wayland
//! channel over the virtgpu uAPI (real ioctls or the loopback VM).

pub mod channel;

use anyhow::{Result, bail};
use clap::Parser;

/// Guest side of Crossway: the Wayland display of apps inside a VM, forwarded to the host.
#[derive(Debug, Parser)]
#[command(name = "crossway-agent", version, about, long_about = None)]
#[command(after_help = "Logging: set RUST_LOG (for example RUST_LOG=crossway_agent=debug).")]
pub struct Cli {}

/// Runs the agent.
pub fn run(_cli: Cli) -> Result<()> {
    bail!("the guest relay is not built yet; only --help and --version work in this version")
}
