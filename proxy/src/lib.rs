//! `crossway-proxy`, the host side of Crossway: one process per VM.
//!
//! ```text
//!  VMM ──vhost-user──▶ virtio-gpu device (crossway-virtio)
//!                         └─ cross-domain context ──▶ Wayland relay + policy ──▶ host compositor
//!                                                                            (or the embedded
//!                                                                             headless one)
//! ```
//!
//! The binary's `main` parses [`cli::Cli`], installs logging and calls [`run`]; tests call
//! [`run`] the same way. `demo` runs the whole chain (headless compositor, `serve`, the loopback
//! VM with the guest agent and an app) as separate processes: [`demo`].

pub mod cli;
pub mod cross_domain;
pub mod demo;
pub mod fdstream;
pub mod filter;
pub mod headless;
pub mod host;
pub mod serve;
pub mod setup;
pub mod vm;

use anyhow::Result;

pub use cli::{Cli, Command};

/// Runs one command; returns the process's exit code (`vm` passes on its guest program's).
pub fn run(cli: Cli) -> Result<std::process::ExitCode> {
    if cli.print_capabilities {
        serve::print_capabilities()?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    match cli.command {
        Some(Command::Demo(args)) => return demo::run(args),
        Some(Command::Serve(args)) => serve::serve(args),
        Some(Command::Headless(args)) => run_headless(args),
        Some(Command::Filter(args)) => filter::run(args),
        Some(Command::Vm(args)) => return vm::run(args).map(std::process::ExitCode::from),
        None if cli.vhost_user.has_endpoint() => serve::serve(cli.vhost_user),
        None => anyhow::bail!("no command given; see --help"),
    }
    .map(|()| std::process::ExitCode::SUCCESS)
}

fn run_headless(args: cli::HeadlessArgs) -> Result<()> {
    use headless::{DmabufConfig, Headless, HeadlessConfig, SocketSpec};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let socket = if args.socket.starts_with('/') {
        SocketSpec::Path(PathBuf::from(&args.socket))
    } else {
        SocketSpec::Name(args.socket.clone())
    };
    let mut config = HeadlessConfig::new(socket);
    config.size = args.size;
    config.scale = args.scale;
    config.refresh_mhz = i32::try_from(args.refresh.saturating_mul(1000))
        .unwrap_or(i32::MAX)
        .max(1000);
    config.placement = args.placement;
    if let Some(spec) = &args.dmabuf_formats {
        config.dmabuf.preferences = DmabufConfig::parse_preferences(spec)
            .map_err(|e| anyhow::anyhow!("--dmabuf-formats: {e}"))?;
    }
    let headless = Arc::new(Headless::start(config)?);
    let control = args.control.clone().unwrap_or_else(|| {
        let mut path = headless.socket_path().as_os_str().to_owned();
        path.push(".control");
        PathBuf::from(path)
    });
    headless::control::serve(headless.clone(), &control)?;
    write_stdout(&format!(
        "WAYLAND_DISPLAY={}\nCROSSWAY_HEADLESS_CONTROL={}\n",
        headless.socket_path().display(),
        control.display()
    ))?;

    if let Some(path) = &args.screenshot {
        std::thread::sleep(std::time::Duration::from_millis(args.after));
        let image = headless.screenshot()?;
        image.save_png(path)?;
        write_stdout(&format!(
            "screenshot {}x{} written to {}\n",
            image.width,
            image.height,
            path.display()
        ))?;
    } else {
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone())?;
        }
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let stats = headless.stats();
    tracing::info!(
        commits = stats.commits,
        frames = stats.frames,
        clients = stats.clients,
        "headless compositor exiting"
    );
    // The control thread still holds the handle, so remove the sockets here rather than
    // relying on its drop; the compositor thread ends with the process.
    let _ = std::fs::remove_file(&control);
    let _ = std::fs::remove_file(headless.socket_path());
    Ok(())
}

/// A command's real output goes to stdout; logs go to stderr.
pub(crate) fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
