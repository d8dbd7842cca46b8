//! `serve` and `filter` run sandboxed by default: a forbidden system call ends the process with
//! a message that names it (never silently), a path outside what they may open is refused, and
//! the stats say what is in force. `--no-sandbox` turns it off. The self-test hook
//! (`CROSSWAY_SANDBOX_SELF_TEST`, hidden) makes the process try both once setup is done.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use crossway_tests::{ProxyProcess, Runtime, workspace_binary};

/// Exit status after a forbidden call (128 + SIGSYS).
const FORBIDDEN_EXIT: i32 = 159;

/// Runs `crossway-proxy ARGS` with the self-test `steps`; returns its exit code and stderr.
fn self_test(rt: &Runtime, args: &[&str], steps: &str) -> (Option<i32>, String) {
    let mut child = Command::new(workspace_binary("crossway-proxy").unwrap())
        .args(args)
        .env("XDG_RUNTIME_DIR", rt.path())
        .env("TMPDIR", rt.path())
        .env_remove("WAYLAND_DISPLAY")
        .env("RUST_LOG", "crossway_proxy=info")
        .env("NO_COLOR", "1")
        .env("CROSSWAY_SANDBOX_SELF_TEST", steps)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let ok = crossway_tests::eventually(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !ok {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    (status.code(), reader.join().unwrap())
}

/// A file the sandboxed process must not read: outside the runtime, temporary and system
/// directories it is given.
fn forbidden_file() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::io::Write::write_all(&mut f, b"secret").unwrap();
    f
}

/// A `SKIP:` line straight to stderr (the harness captures print macros; scripts/test counts
/// skips from the log).
fn skip(why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: sandbox_refuses_syscall_and_path: {why}"
    );
}

fn sandbox_line(log: &str) -> Option<&str> {
    log.lines().find(|l| l.contains("sandbox entered"))
}

fn check_refusals(args: &[&str]) {
    let rt = Runtime::new().unwrap();
    let secret = forbidden_file();
    let steps = format!("path:{},syscall", secret.path().display());
    let (code, log) = self_test(&rt, args, &steps);
    let Some(entered) = sandbox_line(&log) else {
        panic!("no sandbox line\n{log}");
    };
    if entered.contains("landlock=not enforced") {
        skip("this kernel has no landlock; the path refusal is not checked");
    } else {
        assert!(
            log.contains("opening a forbidden path refused"),
            "path not refused\n{log}"
        );
    }
    if entered.contains("seccomp=enforced") {
        assert!(
            log.contains("forbidden system call")
                && log.contains("(execve)")
                && code == Some(FORBIDDEN_EXIT),
            "execve not refused with a message (exit {code:?})\n{log}"
        );
    } else {
        skip(&format!("seccomp is not enforced here: {entered}"));
    }
}

#[test]
fn filter_refuses_a_forbidden_path_and_syscall() {
    let rt = Runtime::new().unwrap();
    let listen = rt.path().join("f");
    check_refusals(&["filter", "--listen", listen.to_str().unwrap(), "--headless"]);
}

#[test]
fn serve_refuses_a_forbidden_path_and_syscall() {
    let rt = Runtime::new().unwrap();
    let sock = rt.path().join("gpu.sock");
    check_refusals(&[
        "serve",
        "--socket-path",
        sock.to_str().unwrap(),
        "--headless",
    ]);
}

/// The `sandbox` object of the stats `filter ARGS --stats-file` writes at exit.
fn stats_sandbox(args: &[&str]) -> serde_json::Value {
    let rt = Runtime::new().unwrap();
    let stats = rt.path().join("stats.json");
    let mut all = vec!["--headless", "--stats-file", stats.to_str().unwrap()];
    all.extend(args);
    let filter = ProxyProcess::filter(&rt, &all).unwrap();
    filter.terminate(Duration::from_secs(10)).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    json["sandbox"].clone()
}

#[test]
fn stats_say_the_sandbox_state() {
    let s = stats_sandbox(&[]);
    assert_eq!(s["enabled"], true, "{s}");
    for layer in ["landlock", "seccomp"] {
        let state = s[layer].as_str().unwrap();
        assert!(state != "off" && state != "pending", "{layer}: {s}");
    }
}

#[test]
fn no_sandbox_is_off_in_the_stats() {
    let s = stats_sandbox(&["--no-sandbox"]);
    assert_eq!(s["enabled"], false, "{s}");
    assert_eq!(s["landlock"], "off", "{s}");
    assert_eq!(s["seccomp"], "off", "{s}");
}
