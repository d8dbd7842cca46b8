//! What `serve` and `filter` share before relaying: the host compositor to connect to (a
//! running one, or the embedded headless compositor) and what it offers, the relay
//! configuration (policy, tagging, the host's dmabuf formats) and the VM's counters, with
//! their dump on `SIGUSR1` and at exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::host::{HostConnector, HostInfo, ProbeLimits, SecurityContextSpec};
use crossway_headless::{Headless, HeadlessConfig, SocketSpec};
use crossway_relay::{RelayConfig, VmStats};

/// The security-context app id of a VM started without `--vm-name`.
pub const DEFAULT_APP_ID: &str = "crossway-vm";

/// Relay options common to `serve` and `filter`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RelayArgs {
    /// Host compositor: a socket name under $XDG_RUNTIME_DIR or an absolute path
    /// (default: $WAYLAND_DISPLAY).
    #[arg(long, value_name = "DISPLAY")]
    pub wayland_display: Option<String>,
    /// Relay to the embedded headless compositor instead of a running one.
    #[arg(long, conflicts_with = "wayland_display")]
    pub headless: bool,
    /// The VM's name: windows are tagged with it, and it is the app id of the security
    /// context the host sees.
    #[arg(long, value_name = "NAME")]
    pub vm_name: Option<String>,
    /// A TOML policy file overriding the default globals and tagging.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Write the VM's counters as JSON to this file on SIGUSR1 and at exit.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
    /// Connect to the host directly even where it offers wp_security_context_manager_v1.
    #[arg(long)]
    pub no_security_context: bool,
    /// Run without the sandbox (landlock, seccomp, resource limits); for debugging only.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Milliseconds the host compositor has to answer the start-up probe.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub host_timeout: u64,
}

/// A ready relay environment.
#[derive(Debug)]
pub struct RelaySetup {
    /// Shared relay configuration.
    pub config: Arc<RelayConfig>,
    /// New host connections (through the VM's security context where there is one).
    pub connector: HostConnector,
    /// What the host compositor offered at start.
    pub host: HostInfo,
    /// The VM's counters.
    pub stats: Arc<VmStats>,
    /// The embedded compositor, when `--headless` (kept alive here).
    pub headless: Option<Arc<Headless>>,
    /// The embedded compositor's control socket, when `--headless`.
    pub headless_control: Option<PathBuf>,
    /// Where the counters go on `SIGUSR1` and at exit.
    pub stats_file: Option<PathBuf>,
    /// The directory made for `--headless`, removed on drop.
    private_dir: Option<PathBuf>,
}

impl RelayArgs {
    /// Enters the filesystem half of the sandbox (see [`crate::sandbox`]) for a command that
    /// also writes in the directories of `sockets`; call before any thread starts.
    pub fn restrict_filesystem(&self, sockets: &[&Path]) {
        let mut access = crate::sandbox::FsAccess::base();
        for file in sockets.iter().copied().chain(self.stats_file.as_deref()) {
            access.parent_of(file);
        }
        access.read_only.extend(self.policy.iter().cloned());
        crate::sandbox::restrict_filesystem(!self.no_sandbox, &access);
    }
}

impl RelaySetup {
    /// Builds the environment `args` describe.
    pub fn from_args(args: &RelayArgs) -> Result<RelaySetup> {
        let mut private_dir = None;
        let (connector, headless, headless_control) = if args.headless {
            let dir = std::env::temp_dir().join(format!("crossway-proxy-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            private_dir = Some(dir.clone());
            let h = Arc::new(Headless::start(HeadlessConfig::new(SocketSpec::Path(
                dir.join("headless-0"),
            )))?);
            let control = dir.join("headless-0.control");
            crossway_headless::control::serve(h.clone(), &control)?;
            (
                HostConnector::new(h.socket_path().to_path_buf()),
                Some(h),
                Some(control),
            )
        } else {
            (
                HostConnector::from_display(args.wayland_display.as_deref())?,
                None,
                None,
            )
        };
        let limits = ProbeLimits {
            timeout: std::time::Duration::from_millis(args.host_timeout.max(1)),
            ..ProbeLimits::default()
        };
        let host = HostInfo::probe_with(&connector, limits)
            .with_context(|| format!("probing {}", connector.host_socket().display()))?;
        let connector = if host.security_context && !args.no_security_context {
            let spec = SecurityContextSpec {
                app_id: args
                    .vm_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_APP_ID.into()),
                instance_id: format!("{}", std::process::id()),
            };
            connector
                .with_security_context(&spec, limits)
                .context("creating the VM's security context on the host")?
        } else {
            if !host.security_context {
                info!("host offers no security context; relayed clients connect directly");
            }
            connector
        };

        let mut config = RelayConfig::default();
        if let Some(path) = &args.policy {
            config.policy = crossway_relay::Policy::load(path)
                .with_context(|| format!("policy file {}", path.display()))?;
        }
        config.policy.tagging.vm_name = args.vm_name.clone();
        config.host_formats = host.dmabuf_formats.clone().map(Arc::new);
        Ok(RelaySetup {
            config: Arc::new(config),
            connector,
            host,
            stats: Arc::new(VmStats::new(args.vm_name.clone().unwrap_or_default())),
            headless,
            headless_control,
            stats_file: args.stats_file.clone(),
            private_dir,
        })
    }

    /// Writes the counters to `--stats-file` on every `SIGUSR1`, from a thread of its own,
    /// for as long as the process runs. Does nothing without `--stats-file`.
    pub fn install_stats_dump(&self) -> Result<()> {
        let Some(path) = self.stats_file.clone() else {
            return Ok(());
        };
        let stats = self.stats.clone();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
            .context("installing the SIGUSR1 handler")?;
        std::thread::Builder::new()
            .name("stats-dump".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if let Err(err) = write_stats(&stats, &path) {
                        warn!("{err:#}");
                    }
                }
            })?;
        Ok(())
    }

    /// At exit: logs the counters and writes them to `--stats-file`.
    pub fn finish(&self) -> Result<()> {
        let snapshot = self.stats.snapshot();
        let t = &snapshot.total;
        info!(
            vm = %snapshot.vm_name,
            clients = snapshot.clients.len(),
            messages_to_host = t.messages_to_host,
            messages_to_guest = t.messages_to_guest,
            bytes_to_host = t.bytes_to_host,
            bytes_to_guest = t.bytes_to_guest,
            frames = t.frames,
            buffers_dmabuf_zero_copy = t.buffers_dmabuf_zero_copy,
            buffers_shm_zero_copy = t.buffers_shm_zero_copy,
            buffers_copy = t.buffers_copy,
            bytes_copied = t.bytes_copied,
            refused = t.refused,
            "relay stats"
        );
        match &self.stats_file {
            Some(path) => write_stats(&self.stats, path),
            None => Ok(()),
        }
    }

    /// On SIGTERM or SIGINT, from a thread of its own: logs and writes the counters, removes
    /// every file this setup made (security-context listener, headless sockets, private
    /// directory) and exits with status 0. For commands whose main loop cannot be interrupted
    /// (`serve` blocks in the vhost-user backend).
    pub fn exit_on_signals(self: &Arc<RelaySetup>) -> Result<()> {
        let setup = self.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .context("installing the SIGTERM handler")?;
        std::thread::Builder::new()
            .name("exit-on-signal".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    info!(signal, "stopping");
                    if let Err(err) = setup.finish() {
                        warn!("{err:#}");
                    }
                    setup.remove_owned_files();
                    std::process::exit(0);
                }
            })?;
        Ok(())
    }

    /// Removes every file this setup made, now (the signal thread keeps the setup alive, so
    /// its destructor may never run).
    pub fn remove_owned_files(&self) {
        self.connector.remove_owned_files();
        if let Some(control) = &self.headless_control {
            let _ = std::fs::remove_file(control);
        }
        if let Some(h) = &self.headless {
            let _ = std::fs::remove_file(h.socket_path());
        }
        if let Some(dir) = &self.private_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for RelaySetup {
    fn drop(&mut self) {
        self.remove_owned_files();
    }
}

/// Writes a snapshot of `stats` to `path` as JSON, replacing it atomically (a reader never
/// sees half a file).
pub fn write_stats(stats: &VmStats, path: &Path) -> Result<()> {
    let mut value = serde_json::to_value(stats.snapshot())?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "sandbox".into(),
            serde_json::to_value(crate::sandbox::state())?,
        );
    }
    let json = serde_json::to_vec_pretty(&value)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
