//! `crossway-proxy filter`'s life: many clients at once and clients coming and going, the
//! counters written as JSON on SIGUSR1 and at exit, and a clean exit on SIGTERM that removes
//! its socket.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::path::Path;
use std::time::{Duration, Instant};

use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime, require};
use serde_json::{Value, json};

fn filter_with_stats(rt: &Runtime, stats: &Path) -> ProxyProcess {
    let stats = stats.display().to_string();
    ProxyProcess::filter(
        rt,
        &["--headless", "--vm-name", "counted", "--stats-file", &stats],
    )
    .unwrap()
}

/// Sends SIGUSR1 and waits for a fresh stats file.
fn dump(filter: &ProxyProcess, path: &Path) -> Value {
    let _ = std::fs::remove_file(path);
    filter.signal(rustix::process::Signal::USR1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no stats file\n{}",
            filter.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A test client drawing `frames` frames then exiting, through the filter.
fn draw(rt: &Runtime, filter: &ProxyProcess, title: &str, buffer: &str, frames: &str) {
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    cmd.args(["--title", title, "--buffer", buffer, "--frames", frames]);
    let (code, out, err) = Process::spawn("test-client", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}\n{}", filter.log_text());
}

#[test]
fn sigusr1_and_exit_write_the_counters() {
    let rt = Runtime::new().unwrap();
    let path = rt.path().join("stats.json");
    let filter = filter_with_stats(&rt, &path);
    draw(&rt, &filter, "one", "shm", "5");
    let snapshot = dump(&filter, &path);
    assert_eq!(snapshot["vm_name"], json!("counted"));
    let clients = snapshot["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{snapshot}");
    assert!(
        clients[0]["label"].as_str().unwrap().starts_with("pid "),
        "{snapshot}"
    );
    assert_eq!(snapshot["clients_live"], json!(0), "{snapshot}");

    let _ = std::fs::remove_file(&path);
    let log = filter.log.clone();
    assert_eq!(filter.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    let at_exit: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(at_exit["clients"].as_array().unwrap().len(), 1);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("relay stats"), "{log}");
}

#[test]
fn counters_see_messages_frames_and_buffers() {
    let rt = Runtime::new().unwrap();
    let path = rt.path().join("stats.json");
    let filter = filter_with_stats(&rt, &path);
    draw(&rt, &filter, "shm", "shm", "30");
    draw(&rt, &filter, "dmabuf", "dmabuf", "30");
    let snapshot = dump(&filter, &path);
    let total = &snapshot["total"];
    let n = |k: &str| total[k].as_u64().unwrap();
    assert!(n("messages_to_host") > 60, "{snapshot}");
    assert!(n("messages_to_guest") > 0, "{snapshot}");
    assert!(n("bytes_to_host") > n("messages_to_host") * 8, "{snapshot}");
    assert!(n("frames") >= 60, "{snapshot}");
    let buffers = n("buffers_dmabuf_zero_copy") + n("buffers_shm_zero_copy") + n("buffers_copy");
    assert!(buffers >= 2, "{snapshot}");
    assert_eq!(n("bytes_copied"), 0, "{snapshot}");
}

#[test]
fn many_clients_at_once_then_clean_exit() {
    let Some(info) = require(
        "many_clients_at_once_then_clean_exit",
        "wayland-info",
        "wayland-utils",
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let path = rt.path().join("stats.json");
    let filter = filter_with_stats(&rt, &path);
    let control = filter.control.clone().unwrap();

    // Windows that stay, and short-lived clients coming and going around them.
    let windows: Vec<Process> = (0..3)
        .map(|i| {
            let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
            cmd.args(["--title", &format!("w{i}"), "--buffer", "shm"]);
            Process::spawn("test-client", &mut cmd).unwrap()
        })
        .collect();
    let infos: Vec<Process> = (0..8)
        .map(|_| Process::spawn("wayland-info", &mut rt.client(&info, &filter.socket)).unwrap())
        .collect();
    for p in infos {
        let (code, out, err) = p.wait(Duration::from_secs(30)).unwrap();
        assert_eq!(code, Some(0), "{err}\n{}", filter.log_text());
        assert!(out.contains("'wl_compositor'"), "{out}");
    }
    for i in 0..3 {
        request(
            &control,
            &json!({"wait_toplevel": {"title": format!("[counted] w{i}"), "timeout_ms": 15000}}),
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", filter.log_text()));
    }
    drop(windows);
    let snapshot = dump(&filter, &path);
    assert_eq!(
        snapshot["clients"].as_array().unwrap().len(),
        11,
        "{snapshot}"
    );

    let socket = filter.socket.clone();
    assert_eq!(filter.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    assert!(!socket.exists(), "the listening socket was left behind");
}
