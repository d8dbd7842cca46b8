//! The `crossway-agent` binary, run as a process.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crossway-agent"))
}

#[test]
fn version_prints_package_version() {
    let out = agent().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!("crossway-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_mentions_logging() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("RUST_LOG"));
}

#[test]
fn running_before_the_relay_exists_fails_clearly() {
    let out = agent().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("not built yet")
    );
}
