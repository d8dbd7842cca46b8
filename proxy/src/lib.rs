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
//! [`run`] the same way. Most commands are filled in by later issues: today only the wire
//! contracts in `crossway-protocols` exist, and `demo` says what is still missing.

pub mod cli;
pub mod serve;

use anyhow::Result;
use crossway_protocols::tables::ProtocolTable;

pub use cli::{Cli, Command};

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    if cli.print_capabilities {
        return serve::print_capabilities();
    }
    match cli.command {
        Some(Command::Demo(args)) => demo(args),
        Some(Command::Serve(args)) => serve::serve(args),
        None if cli.vhost_user.has_endpoint() => serve::serve(cli.vhost_user),
        None => anyhow::bail!("no command given; see --help"),
    }
}

fn demo(args: cli::DemoArgs) -> Result<()> {
    let table = ProtocolTable::builtin();
    tracing::info!(
        interfaces = table.len(),
        globals = table.globals().len(),
        "protocol tables loaded"
    );
    let report = format!(
        "crossway-proxy demo: the end-to-end demo is not built yet.\n\
         Built so far: the wire contracts (Wayland codec over {} interfaces, object maps,\n\
         cross-domain commands, dmabuf format tables, the Crossway capset).\n\
         Still to come: the headless compositor, the virtio-gpu device, the loopback VM,\n\
         the relay and the guest agent. Nothing was written to {}.\n",
        table.len(),
        args.out.display()
    );
    write_stdout(&report)
}

/// A command's real output goes to stdout; logs go to stderr.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
