//! The reference host for interop scenarios: `crossway-rutabaga-host` (rutabaga_gfx's
//! cross-domain context, as crosvm and libkrun ship it) serving the loopback virtgpu socket, in
//! front of a host compositor. Guest programs run against it unchanged, with
//! `CROSSWAY_VIRTGPU=loopback:` [`RutabagaHost::loopback_socket`]:
//!
//! ```text
//!  guest program ──loopback socket──▶ crossway-rutabaga-host ──wayland──▶ host compositor
//! ```
//!
//! Unlike `crossway-proxy vm`, nothing filters or tags the Wayland stream, there is no
//! Crossway capset, and a SEND may name only blobs the host made (HOST3D), not guest blobs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossway_protocols::virtgpu::{CROSSWAY_VIRTGPU_ENV, LOOPBACK_ADDRESS_PREFIX};

use crate::{Runtime, package_binary, stdout_lines, stop_child, terminate_child};

/// The binary's name (a `[[bin]]` of this package).
pub const BINARY: &str = "crossway-rutabaga-host";

/// A running `crossway-rutabaga-host`, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct RutabagaHost {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

/// The path of `crossway-rutabaga-host` for the current profile, built once per test process
/// (a no-op when cargo already built this package's binaries for its tests).
pub fn binary() -> Result<PathBuf> {
    package_binary("crossway-tests", BINARY)
}

impl RutabagaHost {
    /// Starts the reference host in `rt` in front of the compositor at `wayland_display` (its
    /// socket path) and waits up to 20 s until its loopback socket listens. Its stderr goes
    /// to `rutabaga-host-N.log` in `rt` (`RUST_LOG` is passed on, default `info`).
    pub fn start(rt: &Runtime, wayland_display: &Path) -> Result<RutabagaHost> {
        Self::start_with(rt, wayland_display, &[])
    }

    /// As [`RutabagaHost::start`], with more options for the binary (`--max-connections N`,
    /// `--max-blobs N`, `--max-blob-mib N`, `--wait-timeout-ms N`).
    pub fn start_with(rt: &Runtime, wayland_display: &Path, args: &[&str]) -> Result<RutabagaHost> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let socket = rt.path().join(format!("rutabaga-{n}.sock"));
        let log = rt.path().join(format!("rutabaga-host-{n}.log"));
        let mut child = Command::new(binary()?)
            .arg("--socket")
            .arg(&socket)
            .arg("--wayland-display")
            .arg(wayland_display)
            .args(args)
            .env("XDG_RUNTIME_DIR", rt.path())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {BINARY}"))?;
        let rx = stdout_lines(&mut child)?;
        let host = RutabagaHost {
            child: Some(child),
            socket,
            log,
        };
        let want = format!("{CROSSWAY_VIRTGPU_ENV}={}", host.virtgpu_address());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == want => return Ok(host),
                Ok(_) => {}
                Err(_) => bail!("{BINARY} did not announce {want}\n{}", host.log_text()),
            }
        }
    }

    /// The loopback socket guest programs connect to.
    pub fn loopback_socket(&self) -> &Path {
        &self.socket
    }

    /// The value of `CROSSWAY_VIRTGPU` for guest programs: `loopback:SOCKET`.
    pub fn virtgpu_address(&self) -> String {
        format!("{LOOPBACK_ADDRESS_PREFIX}{}", self.socket.display())
    }

    /// A command running `program` as a guest program of this host: `CROSSWAY_VIRTGPU` set,
    /// `XDG_RUNTIME_DIR` the runtime's, no Wayland or X display of the test's own.
    pub fn guest_command(&self, rt: &Runtime, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(CROSSWAY_VIRTGPU_ENV, self.virtgpu_address())
            .env("XDG_RUNTIME_DIR", rt.path())
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits up to `timeout`; returns its exit code (it removes its socket).
    pub fn terminate(mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self.child.take().context("not running")?;
        terminate_child(child, timeout).with_context(|| format!("{BINARY}\n{}", self.log_text()))
    }
}

impl Drop for RutabagaHost {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(2));
        }
    }
}
