//! `crossway-agent`, the guest side of Crossway: the Wayland display of the apps inside a VM.
//!
//! ```text
//!  guest app ──wayland──▶ crossway-agent ──virtgpu ioctls (cross-domain, capset 5)──▶ host
//! ```
//!
//! The binary's `main` parses [`Cli`], installs logging and calls [`run`].
//! - [`channel`]: one cross-domain Wayland channel over the virtgpu uAPI.
//! - `device`: the virtgpu device a channel opens (a render node with real ioctls, or the
//!   loopback VM's socket).
//! - `damage`: what of a `wl_shm` buffer changed since it was last copied into its blob.
//! - `relay`: the wire-level relay of one guest client (I/O-free), `server`: the listening
//!   socket and one thread per client.

pub mod channel;
pub mod damage;
pub mod device;
pub mod drm;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;

/// Guest side of Crossway: the Wayland display of apps inside a VM, forwarded to the host.
#[derive(Debug, Parser)]
#[command(name = "crossway-agent", version, about, long_about = None)]
#[command(after_help = "Logging: set RUST_LOG (for example RUST_LOG=crossway_agent=debug).")]
pub struct Cli {
    /// The Wayland socket guest apps connect to: a path, or a name in $XDG_RUNTIME_DIR.
    /// Ignored when systemd passes a listening socket (LISTEN_FDS).
    #[arg(long, value_name = "PATH|NAME", default_value = "wayland-0")]
    pub socket: String,
    /// The virtgpu device: `auto` (the CROSSWAY_VIRTGPU variable if set, else the first
    /// virtio_gpu render node), a render node path such as /dev/dri/renderD128, or
    /// `loopback:PATH` (the loopback VM's socket).
    #[arg(long, value_name = "SPEC", default_value = "auto")]
    pub device: String,
    /// Id of the Crossway capset to read (see ARCHITECTURE.md); `none` treats the host as plain
    /// cross-domain (crosvm, libkrun).
    #[arg(long, value_name = "ID|none", default_value = "48")]
    pub crossway_capset: String,
    /// Writes the agent's counters as JSON to PATH on SIGUSR1 and at exit.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
    /// Most guest clients at once; more are refused.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_clients: usize,
    /// Runs APP with WAYLAND_DISPLAY set to the agent's socket and exits with its status.
    #[arg(last = true, value_name = "APP ARGS")]
    pub app: Vec<String>,
}

/// Runs the agent.
pub fn run(_cli: Cli) -> Result<()> {
    bail!("the guest relay is not built yet; only --help and --version work in this version")
}
