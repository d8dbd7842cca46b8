//! `crossway-proxy demo`'s command line.

use std::path::PathBuf;

use crossway_headless::command::parse_size;

/// Options of `demo`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    crossway-proxy demo                          our animated test client, 5 seconds\n  \
    crossway-proxy demo --duration 20 -- foot    any Wayland app\n  \
    crossway-proxy demo --host -- weston-simple-shm   on your own desktop ($WAYLAND_DISPLAY)")]
pub struct DemoArgs {
    /// Where to write screenshot.png, stats.json and the processes' logs.
    #[arg(long, value_name = "DIR", default_value = "crossway-demo")]
    pub out: PathBuf,
    /// Seconds to run once the window is up (the app may end it sooner; so does Ctrl-C).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0,
          value_parser = parse_seconds)]
    pub duration: f64,
    /// Show the window on the running desktop ($WAYLAND_DISPLAY) instead of the embedded
    /// headless compositor (no screenshot then: the desktop is yours).
    #[arg(long)]
    pub host: bool,
    /// Output size of the embedded headless compositor.
    #[arg(long, default_value = "1280x800", value_parser = parse_size, conflicts_with = "host")]
    pub size: (i32, i32),
    /// The VM's name: the host sees titles `[NAME] …` and app ids `NAME.…`.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    pub vm_name: String,
    /// `wl_display.sync` round trips timed through the whole chain (0: none).
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub latency_samples: u32,
    /// Seconds the chain has to show a window before the demo gives up.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0,
          value_parser = parse_seconds)]
    pub startup_timeout: f64,
    /// Testing aid: run the command straight under `vm`, without crossway-agent (it must speak
    /// cross-domain itself, as crossway-xd-guest does); with no command,
    /// `crossway-xd-guest shm-window`.
    #[arg(long, hide = true)]
    pub no_agent: bool,
    /// The guest app and its arguments (default: crossway-test-client, animated).
    #[arg(last = true, value_name = "APP ARGS")]
    pub command: Vec<std::ffi::OsString>,
}

/// Parses a number of seconds above 0 and at most a day.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}
