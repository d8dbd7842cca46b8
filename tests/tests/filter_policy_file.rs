//! `crossway-proxy filter --policy FILE`: a TOML policy file changes what the guest sees; a
//! bad one stops the filter at start with a message naming it.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::process::{Command, Stdio};
use std::time::Duration;

use crossway_tests::{
    Process, ProxyProcess, Runtime, parse_wayland_info, require, workspace_binary,
};

#[test]
fn policy_file_denies_a_global_and_caps_a_version() {
    let Some(info) = require(
        "policy_file_denies_a_global_and_caps_a_version",
        "wayland-info",
        "wayland-utils",
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let policy = rt.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[globals]\nzxdg_output_manager_v1 = false\nwl_compositor = 4\n",
    )
    .unwrap();
    let policy_arg = policy.display().to_string();
    let filter = ProxyProcess::filter(&rt, &["--headless", "--policy", &policy_arg]).unwrap();
    let (code, out, err) = Process::spawn("wayland-info", &mut rt.client(&info, &filter.socket))
        .unwrap()
        .wait(Duration::from_secs(10))
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("'zxdg_output_manager_v1'"), "{out}");
    assert_eq!(
        parse_wayland_info(&out).get("wl_compositor"),
        Some(&4),
        "{out}"
    );
}

#[test]
fn bad_policy_file_stops_the_filter_at_start() {
    let rt = Runtime::new().unwrap();
    let policy = rt.path().join("policy.toml");
    std::fs::write(&policy, "[globals]\nno_such_interface_v9 = 1\n").unwrap();
    let out = Command::new(workspace_binary("crossway-proxy").unwrap())
        .env("XDG_RUNTIME_DIR", rt.path())
        .env("TMPDIR", rt.path())
        .arg("filter")
        .arg("--listen")
        .arg(rt.path().join("f"))
        .arg("--headless")
        .arg("--policy")
        .arg(&policy)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.toml"), "{err}");
    assert!(!rt.path().join("f").exists(), "socket left behind");
}
