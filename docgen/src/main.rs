//! `crossway-docgen OUTDIR`: the manual pages and shell completions of `crossway-proxy` and
//! `crossway-agent`, generated from the same clap definitions the binaries parse, so they
//! cannot drift from `--help`. A build-time tool (run by `scripts/package`), kept out of the
//! binaries themselves: nothing here runs next to a VM.
//!
//! ```text
//!  OUTDIR/man/man1/crossway-proxy.1, crossway-proxy-serve.1, …, crossway-agent.1 (a MANPATH entry)
//!  OUTDIR/completions/bash/crossway-proxy, zsh/_crossway-proxy, fish/crossway-proxy.fish, …
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;
use clap_complete::Shell;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: crossway-docgen OUTDIR");
    };
    let out = PathBuf::from(out);
    for cmd in [
        crossway_proxy::Cli::command(),
        crossway_agent::Cli::command(),
    ] {
        write_manuals(&cmd, &out.join("man").join("man1"))?;
        write_completions(cmd, &out.join("completions"))?;
    }
    Ok(())
}

/// `NAME.1`, and `NAME-SUB.1` for each visible subcommand (as git's pages are split).
fn write_manuals(cmd: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = cmd.clone();
    cmd.build();
    write_manual(&cmd, dir)?;
    let name = cmd.get_name().to_owned();
    // clap's generated `help` subcommand has nothing a page would add.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        // clap keeps names as `&'static str` (without its "string" feature, which would
        // change clap's build for every crate): a few leaked bytes in a one-shot tool.
        let full: &'static str = Box::leak(format!("{name}-{}", sub.get_name()).into_boxed_str());
        let sub = sub
            .clone()
            .name(full)
            .display_name(full)
            .version(env!("CARGO_PKG_VERSION"));
        write_manual(&sub, dir)?;
    }
    Ok(())
}

fn write_manual(cmd: &clap::Command, dir: &Path) -> Result<()> {
    let path = dir.join(format!("{}.1", cmd.get_name()));
    let mut bytes = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .manual("Crossway")
        .source(format!(
            "Crossway {}",
            cmd.get_version().unwrap_or(env!("CARGO_PKG_VERSION"))
        ))
        .render(&mut bytes)
        .with_context(|| format!("rendering {}", path.display()))?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// bash, zsh and fish completions, in the directory names their packages' search paths use.
fn write_completions(mut cmd: clap::Command, dir: &Path) -> Result<()> {
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let sub = dir.join(shell.to_string());
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        clap_complete::generate_to(shell, &mut cmd, &name, &sub)
            .with_context(|| format!("writing {shell} completions into {}", sub.display()))?;
    }
    Ok(())
}
