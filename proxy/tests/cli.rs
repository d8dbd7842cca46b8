//! The `crossway-proxy` binary, run as a process.

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crossway-proxy"))
}

#[test]
fn version_prints_package_version() {
    let out = proxy().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!("crossway-proxy {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_demo_and_logging() {
    let out = proxy().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("demo"), "{text}");
    assert!(text.contains("RUST_LOG"), "{text}");
}

#[test]
fn unknown_subcommand_fails_with_usage() {
    let out = proxy().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

#[test]
fn demo_reports_what_is_built_and_logs_to_stderr() {
    let out = proxy()
        .args(["demo", "--out", "/nonexistent/crossway"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("not built yet"), "{stdout}");
    assert!(stdout.contains("/nonexistent/crossway"), "{stdout}");
    // RUST_LOG reaches tracing, whose output goes to stderr only.
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("protocol tables loaded"), "{stderr}");
    assert!(!stdout.contains("protocol tables loaded"));
}
