//! `crossway-proxy headless`: the compositor as a command, for any Wayland client to connect
//! to, with its control socket and an optional screenshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use crate::{DmabufConfig, Headless, HeadlessConfig, Placement, SocketSpec};

/// Options of `headless`.
#[derive(Debug, clap::Args)]
pub struct HeadlessArgs {
    /// Socket name under $XDG_RUNTIME_DIR, or an absolute path.
    #[arg(long, default_value = "crossway-headless-0")]
    pub socket: String,
    /// Output size in pixels.
    #[arg(long, default_value = "1280x800", value_parser = parse_size)]
    pub size: (i32, i32),
    /// Output scale (integer).
    #[arg(long, default_value_t = 1)]
    pub scale: i32,
    /// Refresh rate in Hz; frame callbacks follow it.
    #[arg(long, default_value_t = 60)]
    pub refresh: u32,
    /// How toplevels are placed.
    #[arg(long, value_enum, default_value_t)]
    pub placement: Placement,
    /// dmabuf formats to advertise, most preferred first:
    /// `FOURCC:MODIFIER[:scanout],...` (e.g. `XR24:linear:scanout,AR24:0x100000000000001`).
    /// Default: a table shaped like an Intel GPU's.
    #[arg(long, value_name = "SPEC")]
    pub dmabuf_formats: Option<String>,
    /// Control socket for screenshots and counters from other processes
    /// (default: the Wayland socket's path with ".control" appended).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Write a PNG of the output after --after milliseconds, then exit.
    #[arg(long, value_name = "PATH")]
    pub screenshot: Option<PathBuf>,
    /// Milliseconds to wait before --screenshot.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub after: u64,
}

/// Parses `WIDTHxHEIGHT` (each 1 to 16384), for options that take an output size.
pub fn parse_size(s: &str) -> Result<(i32, i32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT")?;
    let parse = |v: &str| v.parse::<i32>().ok().filter(|v| (1..=16384).contains(v));
    match (parse(w), parse(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!("{s:?} is not a size between 1x1 and 16384x16384")),
    }
}

/// Runs `crossway-proxy headless`.
pub fn run(args: HeadlessArgs) -> Result<()> {
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
    crate::control::serve(headless.clone(), &control)?;
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
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
