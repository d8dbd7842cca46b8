//! `crossway-proxy serve` and the vhost-user backend conventions libvirt relies on
//! (docs/interop/vhost-user.rst): `--socket-path`, `--fd`, `--print-capabilities`, and the GPU
//! options `--render-node` and `--virgl`. The logic lives in `crossway_virtio::backend`; this
//! module only turns arguments into its configuration, with `crate::cross_domain`'s contexts
//! relaying each Wayland channel to the compositor the relay options name (`--headless`,
//! `--wayland-display`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use crossway_protocols::capset::{CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND, CrosswayCaps};
use crossway_virtio::backend::{BoundSocket, Endpoint, ServeConfig, capabilities_json};
use crossway_virtio::blob::ExportMode;
use crossway_virtio::device::{CrosswayCapset, DeviceConfig, Limits};

use crate::cross_domain::CrossDomainFactory;
use crate::setup::RelaySetup;
use crossway_relay::{RelayConfig, VmStats};

/// Options of `serve` (also accepted without the subcommand, as libvirt launches backends).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Listen on this Unix socket and serve one VMM connection.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// Serve an inherited socket: connected (libvirt's socketpair) or listening.
    #[arg(long, value_name = "FDNUM")]
    pub fd: Option<i32>,
    /// Render node libvirt passes; accepted, used by later host-blob allocation (GBM).
    #[arg(long, value_name = "PATH")]
    pub render_node: Option<PathBuf>,
    /// Accepted for libvirt; Crossway never renders virgl (the VIRGL feature bit is always
    /// advertised because the Linux driver gates context init on it).
    #[arg(long)]
    pub virgl: bool,
    /// Id of the Crossway capset (1..64, not 5).
    #[arg(long, default_value_t = crossway_protocols::capset::DEFAULT_CROSSWAY_CAPSET_ID)]
    pub crossway_capset_id: u32,
    /// Per-VM limit: live resources.
    #[arg(long, default_value_t = Limits::default().max_resources)]
    pub max_resources: u32,
    /// Per-VM limit: bytes of all resources together.
    #[arg(long, default_value_t = Limits::default().max_blob_bytes)]
    pub max_blob_bytes: u64,
    /// Per-VM limit: live contexts.
    #[arg(long, default_value_t = Limits::default().max_contexts)]
    pub max_contexts: u32,
    /// Size of the host-visible window offered for HOST3D blobs (0: none).
    #[arg(long, default_value_t = DeviceConfig::default().host_visible_size)]
    pub host_visible_size: u64,
    /// Never use udmabuf: copy guest blobs into host memfds.
    #[arg(long)]
    pub no_udmabuf: bool,
    /// Where Wayland channels go, and the relay's policy.
    #[command(flatten)]
    pub relay: crate::setup::RelayArgs,
}

impl ServeArgs {
    /// Whether any way of reaching a VMM was given.
    pub fn has_endpoint(&self) -> bool {
        self.socket_path.is_some() || self.fd.is_some()
    }
}

/// `--print-capabilities`.
pub fn print_capabilities() -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(capabilities_json().as_bytes())?;
    out.flush()?;
    #[allow(clippy::print_stderr)] // part of the command's output, for people
    {
        eprintln!("{}", crossway_virtio::backend::CAPABILITIES_NOTE);
    }
    Ok(())
}

/// Runs the backend for one VMM.
pub fn serve(args: ServeArgs) -> Result<()> {
    // The socket exists from here on, before the counters' SIGUSR1 handler (below): a
    // supervisor that asks for counters as soon as it sees the socket (the demo does) must not
    // end the process, which is SIGUSR1's default action. Until then the request is dropped.
    signal_hook::flag::register(
        signal_hook::consts::SIGUSR1,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .context("installing the SIGUSR1 handler")?;
    // The VMM's socket before anything else, so that a path that cannot be used is the first
    // and only error line (naming the path), not preceded by the relay's start-up logs.
    let endpoint = match (&args.socket_path, args.fd) {
        (Some(p), None) => Endpoint::Bound(BoundSocket::bind(p).context("--socket-path")?),
        (None, Some(fd)) => {
            if fd < 3 {
                bail!("--fd {fd} is a standard stream, not a vhost-user socket");
            }
            // SAFETY: the launcher (libvirt) passed this fd for us to own; nothing else in
            // this process uses it.
            Endpoint::Fd(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        _ => bail!("serve needs exactly one of --socket-path or --fd"),
    };
    let sockets: Vec<&std::path::Path> = args.socket_path.iter().map(|p| p.as_path()).collect();
    args.relay.restrict_filesystem(&sockets);
    if args.no_udmabuf {
        tracing::info!("--no-udmabuf: guest blobs are copied into host memfds");
    }
    if args.virgl {
        tracing::warn!("--virgl accepted but ignored: Crossway does not render virgl");
    }
    // A policy file that does not parse is the operator's mistake: refuse to start rather than
    // run with another policy than the one asked for.
    if let Some(path) = &args.relay.policy {
        crossway_relay::Policy::load(path)
            .with_context(|| format!("policy file {}", path.display()))?;
    }
    // Without a reachable host compositor serve still runs: query-only contexts work and a
    // Wayland channel's INIT fails with the reason logged.
    let (factory, setup) = match RelaySetup::from_args(&args.relay) {
        Ok(setup) => {
            tracing::info!(host = %setup.connector.socket().display(), "Wayland channels relay to this compositor");
            (
                CrossDomainFactory::from_setup(&setup),
                Some(Arc::new(setup)),
            )
        }
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(error = %reason, "no host compositor: Wayland channels will be refused");
            let stats = Arc::new(VmStats::new(args.relay.vm_name.clone().unwrap_or_default()));
            (
                CrossDomainFactory::without_host(Arc::new(RelayConfig::default()), stats, reason),
                None,
            )
        }
    };
    // The capset tells the guest agent the host's dmabuf preferences before any Wayland
    // traffic (DESIGN.md, "The Crossway capset").
    let host_formats = setup
        .as_ref()
        .and_then(|s| s.host.dmabuf_formats.clone())
        .unwrap_or_default();
    if let Some(setup) = &setup {
        setup.install_stats_dump()?;
        setup.exit_on_signals()?;
    }
    let device = DeviceConfig {
        crossway: Some(CrosswayCapset {
            id: args.crossway_capset_id,
            caps: CrosswayCaps {
                flags: CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND,
                formats: host_formats,
            },
        }),
        limits: Limits {
            max_resources: args.max_resources,
            max_blob_bytes: args.max_blob_bytes,
            max_contexts: args.max_contexts,
        },
        export_mode: if args.no_udmabuf {
            ExportMode::CopyOnly
        } else {
            ExportMode::Auto
        },
        host_visible_size: args.host_visible_size,
        ..DeviceConfig::default()
    };
    crate::sandbox::restrict_syscalls();
    let stats = crossway_virtio::backend::serve(ServeConfig {
        endpoint,
        device,
        factory: Box::new(factory),
    })
    .context("vhost-user backend")?;
    tracing::info!(?stats, "served");
    if let Some(setup) = setup {
        setup.finish()?;
        setup.remove_owned_files();
    }
    Ok(())
}
