//! `filter`'s per-VM ceilings hold and nothing leaks: with `--max-clients N` a client past N is
//! refused (so the filter has at most N client threads), and once clients are
//! killed mid-stream its threads and fds return to what they were before they came.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime, eventually};
use serde_json::json;

/// Threads named `name` (the filter names one per client `filter-client`).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

fn count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn clients_past_max_clients_are_refused_and_killed_clients_leave_nothing() {
    let rt = Runtime::new().unwrap();
    let filter = ProxyProcess::filter(
        &rt,
        &["--headless", "--vm-name", "lim", "--max-clients", "3"],
    )
    .unwrap();
    let control = filter.control.clone().unwrap();
    let pid = filter.pid().unwrap();
    // One client first, so that lazily started threads (the compositor's) are counted idle.
    let mut warm = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    warm.args(["--title", "warm", "--exit-after", "300"]);
    let (status, out, _) = Process::spawn("warm", &mut warm)
        .unwrap()
        .wait(Duration::from_secs(20))
        .unwrap();
    assert_eq!(status, Some(0), "{out}");
    let (threads0, fds0) = (count(pid, "task"), count(pid, "fd"));
    assert!(
        eventually(Duration::from_secs(10), || {
            count(pid, "task") == threads0 && count(pid, "fd") == fds0
        }),
        "not idle"
    );

    let mut clients: Vec<Process> = (0..3)
        .map(|i| {
            let title = format!("c{i}");
            let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
            cmd.args(["--title", &title, "--frames", "1000000"]);
            let p = Process::spawn(&title, &mut cmd).unwrap();
            request(
                &control,
                &json!({"wait_toplevel": {"title": format!("[lim] {title}"), "timeout_ms": 20000}}),
            )
            .unwrap();
            p
        })
        .collect();
    assert_eq!(threads_named(pid, "filter-client"), 3);

    // The fourth is closed at once, without a thread.
    let mut fourth = UnixStream::connect(&filter.socket).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        fourth.read(&mut buf).unwrap(),
        0,
        "fourth client not refused"
    );
    assert_eq!(threads_named(pid, "filter-client"), 3);

    // Killed mid-stream (SIGKILL while drawing): threads and fds go back to the idle count.
    for c in &mut clients {
        if let Some(p) = c.id() {
            let pid = rustix::process::Pid::from_raw(p as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        }
    }
    drop(clients);
    assert!(
        eventually(Duration::from_secs(15), || {
            count(pid, "task") == threads0 && count(pid, "fd") == fds0
        }),
        "threads {} (idle {threads0}), fds {} (idle {fds0})\n{}",
        count(pid, "task"),
        count(pid, "fd"),
        filter.log_text()
    );
    // And the filter still serves.
    let mut again = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    again.args(["--title", "again", "--exit-after", "300"]);
    let (status, out, _) = Process::spawn("again", &mut again)
        .unwrap()
        .wait(Duration::from_secs(20))
        .unwrap();
    assert_eq!(status, Some(0), "{out}");
}
