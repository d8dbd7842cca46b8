//! Command line of `crossway-proxy`.

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// Host side of Crossway: puts the windows of apps inside a VM on the host's Wayland desktop.
#[derive(Debug, Parser)]
#[command(name = "crossway-proxy", version, about, long_about = None)]
#[command(after_help = "Logging: set RUST_LOG (for example RUST_LOG=crossway_proxy=debug).")]
#[command(arg_required_else_help = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print the vhost-user backend capabilities (JSON, for libvirt) and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// `serve` options given without the subcommand, as libvirt launches backends.
    #[command(flatten)]
    pub vhost_user: crate::serve::ServeArgs,
    /// Log format (accepted before or after the subcommand).
    #[command(flatten)]
    pub log: crossway_logging::LogArgs,
}

impl Cli {
    /// Parses `args` (the program name first) like [`Parser::try_parse_from`], and refuses
    /// the top-level `serve` options next to a subcommand. clap's own
    /// `args_conflicts_with_subcommands` would do that too, but it also refuses the global
    /// `--log-format` written before the subcommand.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = Cli::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        if let Some((sub, _)) = matches.subcommand() {
            let top_level = cmd.get_arguments().find(|a| {
                !a.is_global_set()
                    && matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
            });
            if let Some(arg) = top_level {
                let long = arg.get_long().unwrap_or(arg.get_id().as_str());
                return Err(cmd.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--{long} belongs after the subcommand (`{sub} --{long}`) or without one"
                    ),
                ));
            }
        }
        Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a guest app through the whole chain and write a screenshot and stats.
    Demo(crossway_demo::DemoArgs),
    /// Be the virtio-gpu vhost-user backend of one VM (QEMU, crosvm, libvirt).
    Serve(crate::serve::ServeArgs),
    /// Run the embedded headless compositor, for any Wayland client to connect to.
    Headless(crossway_headless::command::HeadlessArgs),
    /// Relay Wayland clients on a socket to the host compositor through the policy
    /// (for VMMs with a built-in cross-domain host: crosvm --wayland-sock, libkrun).
    Filter(crate::filter::FilterArgs),
    /// Start a loopback VM against `serve` and run a guest program in it
    /// (it finds the device in $CROSSWAY_VIRTGPU).
    Vm(crate::vm::VmArgs),
}
