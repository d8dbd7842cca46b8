//! The host compositor dies and comes back: `filter` stays up, the guest clients it relayed
//! end with an error, new clients are refused while no compositor runs and work again once one
//! listens on the same socket (the VM's security context is made again on the new one), and
//! the filter's client threads all end.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::path::Path;
use std::time::Duration;

use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime, eventually};
use serde_json::json;

fn client_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "filter-client")
        .count()
}

fn headless(rt: &Runtime, socket: &Path) -> ProxyProcess {
    ProxyProcess::start(
        rt,
        "headless",
        ["headless".as_ref(), "--socket".as_ref(), socket.as_os_str()],
    )
    .unwrap()
}

fn drawing(rt: &Runtime, socket: &Path, title: &str) -> Process {
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), socket);
    cmd.args(["--title", title, "--frames", "1000000"]);
    Process::spawn(title, &mut cmd).unwrap()
}

#[test]
fn filter_outlives_its_host_compositor_and_serves_the_next_one() {
    let rt = Runtime::new().unwrap();
    let host = rt.path().join("host");
    let first = headless(&rt, &host);
    let filter = ProxyProcess::filter(
        &rt,
        &[
            "--wayland-display",
            host.to_str().unwrap(),
            "--vm-name",
            "r",
        ],
    )
    .unwrap();
    let pid = filter.pid().unwrap();
    let mut before = drawing(&rt, &filter.socket, "before");
    request(
        first.control.as_ref().unwrap(),
        &json!({"wait_toplevel": {"title": "[r] before", "timeout_ms": 20000}}),
    )
    .unwrap();

    // The compositor is killed: the relayed client ends with an error, the filter stays.
    drop(first);
    assert!(
        eventually(Duration::from_secs(15), || !before.running()),
        "the client outlived its compositor"
    );
    let (out, _) = before.finish();
    assert!(out.contains("error"), "no error for the client: {out}");
    assert!(
        eventually(Duration::from_secs(10), || client_threads(pid) == 0),
        "client threads left: {}",
        client_threads(pid)
    );

    // While none runs, a new client is refused (its connection closes).
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    cmd.args(["--exit-after", "100"]);
    let (status, out, _) = Process::spawn("refused", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(20))
        .unwrap();
    assert_ne!(
        status,
        Some(0),
        "a client was served with no compositor: {out}"
    );

    // A compositor on the same socket again: new clients work.
    let second = headless(&rt, &host);
    let after = drawing(&rt, &filter.socket, "after");
    let found = request(
        second.control.as_ref().unwrap(),
        &json!({"wait_toplevel": {"title": "[r] after", "timeout_ms": 20000}}),
    );
    assert!(found.is_ok(), "{found:?}\n{}", filter.log_text());
    let toplevels = request(
        second.control.as_ref().unwrap(),
        &json!({"toplevels": null}),
    )
    .unwrap();
    assert!(toplevels.to_string().contains("r."), "{toplevels}");
    assert!(
        filter.log_text().contains("security context made again"),
        "{}",
        filter.log_text()
    );
    drop(second);
    drop(after);
    assert!(
        eventually(Duration::from_secs(10), || client_threads(pid) == 0),
        "client threads left after the second compositor went: {}",
        client_threads(pid)
    );
}
