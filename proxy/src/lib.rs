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
//! VM with the guest agent and an app) as separate processes: [`crossway_demo`].

pub mod cli;
pub mod cross_domain;
pub mod filter;
pub mod host;
pub mod sandbox;
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
        Some(Command::Demo(args)) => return crossway_demo::run(args),
        Some(Command::Serve(args)) => serve::serve(args),
        Some(Command::Headless(args)) => crossway_headless::command::run(args),
        Some(Command::Filter(args)) => filter::run(args),
        Some(Command::Vm(args)) => return vm::run(args).map(std::process::ExitCode::from),
        None if cli.vhost_user.has_endpoint() => serve::serve(cli.vhost_user),
        None => anyhow::bail!("no command given; see --help"),
    }
    .map(|()| std::process::ExitCode::SUCCESS)
}

/// A command's real output goes to stdout; logs go to stderr.
pub(crate) fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
