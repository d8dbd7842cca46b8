//! `crossway-logging`: how every Crossway binary writes its logs to stderr.
//!
//! ```text
//!  main.rs ── LogArgs (--log-format, $CROSSWAY_LOG_FORMAT) ──▶ init ──▶ tracing-subscriber ──▶ stderr
//! ```
//!
//! Colour escapes are written only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>): logs that go to a file or a journal stay plain text. `json` writes
//! one JSON object per line, for supervisors that parse their children's logs.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The environment variable that sets `--log-format` (a supervisor can set it once for all
/// the processes it starts).
pub const LOG_FORMAT_ENV: &str = "CROSSWAY_LOG_FORMAT";

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`, `spans`).
    Json,
}

/// The logging options every binary accepts before or after its subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// How log lines on stderr look (levels: RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t, env = LOG_FORMAT_ENV, global = true)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// The options for a program without a `--log-format` flag: the format from
    /// [`LOG_FORMAT_ENV`] (text when unset or unknown).
    pub fn from_env() -> LogArgs {
        let log_format = match std::env::var(LOG_FORMAT_ENV).as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };
        LogArgs { log_format }
    }
}

/// Whether colour escapes may be written: stderr is a terminal and `NO_COLOR` is unset or
/// empty.
pub fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: level filter from `RUST_LOG` (default `info`), events to
/// stderr in `args.log_format`.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder
            .with_ansi(colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .flatten_event(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_wanted_file_is_plain() {
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn colour_wanted_terminal_is_coloured() {
        assert!(colour_wanted(true, None));
    }

    #[test]
    fn colour_wanted_no_color_set_is_plain() {
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
    }

    #[test]
    fn colour_wanted_no_color_empty_is_ignored() {
        assert!(colour_wanted(true, Some(OsStr::new(""))));
    }
}
