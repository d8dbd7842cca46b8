//! What `serve` and `filter` share before relaying: the host compositor to connect to (a
//! running one, or the embedded headless compositor), the relay configuration and the VM's
//! counters.
//!
//! Skeleton: the socket-front issue adds the host probe (dmabuf formats, security context),
//! the policy file and stats on SIGUSR1.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::headless::{Headless, HeadlessConfig, SocketSpec};
use crate::host::HostConnector;
use crate::relay::{RelayConfig, VmStats};

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
    /// The VM's name: windows are tagged with it.
    #[arg(long, value_name = "NAME")]
    pub vm_name: Option<String>,
    /// A TOML policy file overriding the default globals and tagging.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Write the VM's counters as JSON to this file on SIGUSR1 and at exit.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
}

/// A ready relay environment.
#[derive(Debug)]
pub struct RelaySetup {
    /// Shared relay configuration.
    pub config: Arc<RelayConfig>,
    /// New host connections.
    pub connector: HostConnector,
    /// The VM's counters.
    pub stats: Arc<VmStats>,
    /// The embedded compositor, when `--headless` (kept alive here).
    pub headless: Option<Arc<Headless>>,
}

impl RelaySetup {
    /// Builds the environment `args` describe.
    pub fn from_args(args: &RelayArgs) -> Result<RelaySetup> {
        let (connector, headless) = if args.headless {
            let dir = std::env::temp_dir().join(format!("crossway-proxy-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let h = Arc::new(Headless::start(HeadlessConfig::new(SocketSpec::Path(
                dir.join("headless-0"),
            )))?);
            (HostConnector::new(h.socket_path().to_path_buf()), Some(h))
        } else {
            (
                HostConnector::from_display(args.wayland_display.as_deref())?,
                None,
            )
        };
        let mut config = RelayConfig::default();
        config.policy.tagging.vm_name = args.vm_name.clone();
        Ok(RelaySetup {
            config: Arc::new(config),
            connector,
            stats: Arc::new(VmStats::new(args.vm_name.clone().unwrap_or_default())),
            headless,
        })
    }
}
