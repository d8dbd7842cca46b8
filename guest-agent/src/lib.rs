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
//! - [`session`]: the wire-level relay of one guest client (it translates fds into resources;
//!   no socket I/O), `server`: the listening socket and one thread per client.

pub mod channel;
pub mod device;
pub mod drm;
pub mod server;
pub mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::{Context as _, Result};
use clap::Parser;

use crate::channel::ChannelConfig;
use crate::device::{AgentDevice, DeviceSpec};
use crate::server::{BoundSocket, Shared};
use crate::session::{AgentStats, SessionConfig, SessionLimits};

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
    /// Log format.
    #[command(flatten)]
    pub log: crossway_logging::LogArgs,
}

/// Runs the agent: listens, serves every client on its own thread, and with an app, exits
/// with the app's status.
pub fn run(cli: Cli) -> Result<()> {
    // Before any thread starts (it edits the environment).
    let adopted = server::socket_from_systemd()?;
    let spec: DeviceSpec = cli
        .device
        .parse()
        .with_context(|| format!("--device {}", cli.device))?;
    let crossway_capset_id = match cli.crossway_capset.as_str() {
        "none" => None,
        n => Some(
            n.parse::<u32>()
                .ok()
                .filter(|id| *id < 64)
                .with_context(|| format!("--crossway-capset {n}: an id below 64, or none"))?,
        ),
    };
    // Fail early and clearly when there is no device at all, rather than at the first client.
    let probe = AgentDevice::open(&spec).context("opening the virtgpu device")?;
    tracing::info!(device = %probe.describe(), "virtgpu device");
    drop(probe);
    let socket = match adopted {
        Some(l) => BoundSocket::adopted(l),
        None => BoundSocket::bind(&server::socket_path(&cli.socket)?)?,
    };
    let display_path = match socket.listener.local_addr()?.as_pathname() {
        Some(p) => p.to_owned(),
        None => PathBuf::from(&cli.socket),
    };
    tracing::info!(socket = %display_path.display(), "listening");
    let stats = Arc::new(AgentStats::default());
    let shared = Arc::new(Shared {
        open: Box::new(move || {
            let dev = AgentDevice::open(&spec)?;
            let guest_dev = dev.render_dev();
            Ok((dev, guest_dev))
        }),
        channel: ChannelConfig {
            crossway_capset_id,
            ..ChannelConfig::default()
        },
        session: SessionConfig {
            limits: SessionLimits::default(),
            guest_dev: None,
        },
        stats: stats.clone(),
        live: AtomicUsize::new(0),
        max_clients: cli.max_clients,
    });
    let exit = install_signals(cli.stats_file.clone(), stats.clone())?;
    let listener = socket.listener.try_clone()?;
    let clients = shared.clone();
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            if let Err(e) = server::accept_loop(&listener, shared) {
                tracing::error!("{e:#}");
            }
        })?;
    let code = if cli.app.is_empty() {
        exit.recv().unwrap_or(0)
    } else {
        let mut child = std::process::Command::new(&cli.app[0])
            .args(&cli.app[1..])
            .env("WAYLAND_DISPLAY", &display_path)
            .env_remove("WAYLAND_SOCKET")
            .spawn()
            .with_context(|| format!("starting {}", cli.app[0]))?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(status);
        });
        loop {
            if let Ok(status) = rx.try_recv() {
                let status = status.context("waiting for the app")?;
                // Let the sessions relay what the app sent last (and count it).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while clients.live.load(std::sync::atomic::Ordering::Relaxed) > 0
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                break exit_code(status);
            }
            if let Ok(code) = exit.recv_timeout(std::time::Duration::from_millis(50)) {
                // Pass the signal on, then wait a little for the app.
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).context("app pid")?,
                    rustix::process::Signal::TERM,
                );
                let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
                break code;
            }
        }
    };
    if let Some(p) = &cli.stats_file {
        server::write_stats(p, &stats).with_context(|| format!("writing {}", p.display()))?;
    }
    drop(socket);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// SIGTERM/SIGINT/SIGHUP end the agent (their exit code arrives on the channel); SIGUSR1
/// rewrites the stats file.
fn install_signals(
    stats_file: Option<PathBuf>,
    stats: Arc<AgentStats>,
) -> Result<std::sync::mpsc::Receiver<i32>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .context("installing signal handlers")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    if let Some(p) = &stats_file
                        && let Err(e) = server::write_stats(p, &stats)
                    {
                        tracing::warn!("writing {}: {e}", p.display());
                    }
                    continue;
                }
                let _ = tx.send(128 + sig);
            }
        })?;
    Ok(rx)
}
