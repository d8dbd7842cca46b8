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
fn demo_help_names_its_options() {
    let out = proxy().args(["demo", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for option in ["--out", "--duration", "--host", "--latency-samples"] {
        assert!(text.contains(option), "{option} missing:\n{text}");
    }
}

#[test]
fn logs_go_to_stderr_only() {
    let out = proxy()
        .args([
            "headless",
            "--socket",
            "crossway-cli-log-test",
            "--screenshot",
        ])
        .arg(std::env::temp_dir().join(format!("crossway-cli-{}.png", std::process::id())))
        .args(["--after", "10"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // RUST_LOG reaches tracing, whose output goes to stderr only.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("DEBUG"), "{stderr}");
    assert!(stdout.contains("WAYLAND_DISPLAY="), "{stdout}");
    assert!(
        !stdout.contains("DEBUG") && !stdout.contains("INFO"),
        "{stdout}"
    );
}
