//! `crossway-proxy vm`: a loopback VM next to a `serve` backend, with guest programs run
//! "inside" it in their own processes.
//!
//! ```text
//!  crossway-proxy vm ──spawns──▶ crossway-proxy serve --socket-path DIR/gpu.sock [relay options]
//!                                (or uses --serve-socket)
//!    ├ LoopbackVm ══vhost-user══▶ serve
//!    ├ LoopbackServer at DIR/virtgpu.sock (or --socket)
//!    └ spawns CMD with CROSSWAY_VIRTGPU=loopback:DIR/virtgpu.sock, exits with its status
//! ```
//!
//! On SIGINT/SIGTERM the guest program gets SIGTERM (then SIGKILL after a grace period); the
//! spawned `serve`, the sockets and the private directory are removed on every way out.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossway_protocols::virtgpu::{CROSSWAY_VIRTGPU_ENV, VirtGpuAddress};
use crossway_virtio::loopback::{LoopbackConfig, LoopbackServer, LoopbackVm, ServerConfig};

/// How long `serve` may take to listen.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the guest program has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Options of `vm`.
#[derive(Debug, Clone, clap::Args)]
pub struct VmArgs {
    /// Use the `crossway-proxy serve` already listening on this vhost-user socket instead of
    /// starting one.
    #[arg(long, value_name = "PATH")]
    pub serve_socket: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(4..=65536))]
    pub ram_mib: u64,
    /// Where the loopback device's socket listens (default: in a private temporary directory).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Guest programs' open device files at most (connections to the socket; the agent opens
    /// one per guest client). More are refused, with a warning naming this flag.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub max_connections: usize,
    /// Where the spawned `serve` relays Wayland channels (ignored with --serve-socket).
    #[command(flatten)]
    pub relay: crate::setup::RelayArgs,
    /// The guest program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// A private directory, removed with what is left in it.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = base.join(format!("crossway-vm-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child stopped and reaped on drop: SIGTERM first, so `serve` removes what it made and
/// writes its counters, then SIGKILL after the grace period.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take()
            && let Err(e) = terminate(&mut c)
        {
            tracing::warn!(error = %e, "stopping crossway-proxy serve");
        }
    }
}

/// SIGTERM, then SIGKILL if `child` is still running after [`GRACE`]; returns how it ended.
fn terminate(child: &mut Child) -> std::io::Result<ExitStatus> {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::TERM,
    );
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(pid = child.id(), "child ignored SIGTERM: killing it");
    let _ = child.kill();
    child.wait()
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// `serve` arguments that carry `relay` over.
fn relay_serve_args(relay: &crate::setup::RelayArgs) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    if let Some(d) = &relay.wayland_display {
        out.extend(["--wayland-display".into(), d.into()]);
    }
    if relay.headless {
        out.push("--headless".into());
    }
    if let Some(n) = &relay.vm_name {
        out.extend(["--vm-name".into(), n.into()]);
    }
    if let Some(p) = &relay.policy {
        out.extend([
            "--policy".into(),
            absolute(p).unwrap_or_else(|_| p.clone()).into(),
        ]);
    }
    if relay.no_sandbox {
        out.push("--no-sandbox".into());
    }
    if let Some(p) = &relay.stats_file {
        out.extend([
            "--stats-file".into(),
            absolute(p).unwrap_or_else(|_| p.clone()).into(),
        ]);
    }
    out
}

fn start_serve(
    dir: &Path,
    relay: &crate::setup::RelayArgs,
    stop: &AtomicBool,
) -> Result<(Reaped, PathBuf)> {
    let exe = std::env::current_exe().context("finding crossway-proxy's own binary")?;
    let sock = dir.join("gpu.sock");
    let child = Command::new(exe)
        .arg("serve")
        .arg("--socket-path")
        .arg(&sock)
        .args(relay_serve_args(relay))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting crossway-proxy serve")?;
    let mut serve = Reaped(Some(child));
    let deadline = Instant::now() + SERVE_START_TIMEOUT;
    while !sock.exists() {
        if let Some(c) = serve.0.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("crossway-proxy serve exited before listening ({status})");
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted while waiting for crossway-proxy serve");
        }
        if Instant::now() >= deadline {
            bail!("crossway-proxy serve did not listen within {SERVE_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((serve, sock))
}

/// Runs the guest program to completion (or until a signal) and returns its exit code.
pub fn run(args: VmArgs) -> Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let (program, program_args) = args
        .command
        .split_first()
        .context("no guest program given")?;
    let dir = PrivateDir::new()?;
    if args.serve_socket.is_some() && !relay_serve_args(&args.relay).is_empty() {
        tracing::warn!("relay options are ignored with --serve-socket: that serve has its own");
    }
    // Declared before `vm` and `server` so it is dropped after them: serve outlives its VMM.
    let (_serve, backend) = match &args.serve_socket {
        Some(p) => (Reaped(None), p.clone()),
        None => start_serve(&dir.0, &args.relay, &stop)?,
    };
    let config = LoopbackConfig {
        ram_size: args
            .ram_mib
            .checked_mul(1 << 20)
            .context("--ram-mib too large")?,
        ..LoopbackConfig::default()
    };
    let vm = LoopbackVm::connect(&backend, config)
        .with_context(|| format!("loopback VM against {}", backend.display()))?;
    let socket = absolute(
        &args
            .socket
            .clone()
            .unwrap_or_else(|| dir.0.join("virtgpu.sock")),
    )?;
    let server = LoopbackServer::bind(
        vm.clone(),
        &socket,
        ServerConfig {
            max_connections: args.max_connections,
            ..ServerConfig::default()
        },
    )?;
    let address = VirtGpuAddress::Loopback(socket.clone());
    tracing::info!(
        socket = %socket.display(),
        program = %Path::new(program).display(),
        "loopback VM running a guest program"
    );
    let child = Command::new(program)
        .args(program_args)
        .env(CROSSWAY_VIRTGPU_ENV, address.to_env_value())
        .spawn()
        .with_context(|| format!("starting {}", Path::new(program).display()))?;
    let status = supervise(child, &stop)?;
    drop(server);
    drop(vm);
    Ok(exit_code(status))
}

fn supervise(mut child: Child, stop: &AtomicBool) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if stop.load(Ordering::Relaxed) {
            tracing::info!("signal received: stopping the guest program");
            return Ok(terminate(&mut child)?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shell's convention: the code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
        (None, None) => 1,
    }
}
