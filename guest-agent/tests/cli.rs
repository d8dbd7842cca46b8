//! The `crossway-agent` binary, run as a process.

#![allow(clippy::unwrap_used)]

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
fn without_a_device_it_fails_clearly_before_listening() {
    let dir = std::env::temp_dir().join(format!("crossway-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("wayland-test");
    let out = agent()
        .args(["--device", "/nonexistent/renderD128", "--socket"])
        .arg(&socket)
        .env_remove("CROSSWAY_VIRTGPU")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("virtgpu device"), "{err}");
    assert!(err.contains("/nonexistent/renderD128"), "{err}");
    assert!(!socket.exists(), "no socket is left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_relative_loopback_path_is_refused() {
    let out = agent()
        .args(["--device", "loopback:relative.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--device loopback:relative.sock"), "{err}");
}
