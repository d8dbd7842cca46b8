//! A guest with more clients than the loopback VM once allowed (16 open device files): the
//! demo's VM takes 20 apps at once, as a real VM would, and every window reaches the host.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crossway_tests::{Process, Runtime, workspace_binary};

const CLIENTS: usize = 20;

#[test]
fn demo_vm_takes_twenty_guest_clients() {
    let rt = Runtime::new().unwrap();
    let proxy = workspace_binary("crossway-proxy").unwrap();
    workspace_binary("crossway-agent").unwrap();
    let client = env!("CARGO_BIN_EXE_crossway-test-client");
    // One shell in the guest starts them all; the demo stops it (and them) at the end.
    let script = format!(
        "for i in $(seq 1 {CLIENTS}); do '{client}' --title c$i --frames 1000000 & done; wait"
    );
    let out = rt.path().join("out");
    let (code, stdout, stderr) = Process::spawn(
        "crossway-proxy demo",
        Command::new(proxy)
            .env("XDG_RUNTIME_DIR", rt.path())
            .env("TMPDIR", rt.path())
            .env_remove("WAYLAND_DISPLAY")
            .args([
                "demo",
                "--duration",
                "10",
                "--latency-samples",
                "20",
                "--out",
            ])
            .arg(&out)
            .args(["--", "sh", "-c", &script]),
    )
    .unwrap()
    .wait(Duration::from_secs(240))
    .unwrap();
    let guest_log = std::fs::read_to_string(out.join("logs/guest.log")).unwrap_or_default();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}\n{guest_log}");
    assert!(
        !guest_log.contains("limit reached"),
        "a limit refused a client:\n{guest_log}"
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    let titles: BTreeSet<String> = stats["toplevels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect();
    let expected: BTreeSet<String> = (1..=CLIENTS).map(|i| format!("[demo] c{i}")).collect();
    assert_eq!(titles, expected, "{stats}\n{guest_log}");
}
