//! The guest agent's figures, printed (not asserted: the machines are shared and noisy), all
//! measured in one run against the same headless compositor:
//!
//! - frames per second of a frame-rate-bound `wl_shm` client (crossway-test-client, animated,
//!   full damage, two buffers, driven by frame callbacks) directly on the compositor and
//!   through the whole chain (agent → loopback VM → serve → compositor, separate processes),
//!   as a ratio; at the compositor's 60 Hz and at 1000 Hz, where the chain's own cost shows;
//! - the agent's bytes copied per frame against the damaged bytes per frame, for full damage
//!   and for a small damaged rectangle (the copy must not exceed the damage, rounded to rows,
//!   once each buffer has been copied whole).
//!
//! `cargo bench -p crossway-tests --bench agent` runs CROSSWAY_AGENT_FRAMES frames per run
//! (default 600); without `--bench` a 30-frame smoke version.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark's setup failing is the report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crossway_tests::{Process, ProxyProcess, Runtime, workspace_binary};

const SIZE: (&str, &str) = ("640", "480");

fn fps(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.split(" fps ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fps line in:\n{out}"))
}

fn client_args(frames: u64, damage: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--buffer", "shm", "--width", SIZE.0, "--height", SIZE.1, "--frames",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    a.push(frames.to_string());
    if let Some(d) = damage {
        a.push("--damage".into());
        a.push(d.into());
    }
    a
}

fn direct(rt: &Runtime, display: &Path, client: &Path, frames: u64) -> f64 {
    let mut cmd = rt.client(client, display);
    cmd.args(client_args(frames, None));
    let (code, out, err) = Process::spawn("test-client", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(300))
        .unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    fps(&out)
}

/// Runs the client under the agent through `crossway-proxy vm`; its fps and the agent's
/// counters.
fn chain(
    rt: &Runtime,
    display: &Path,
    client: &Path,
    frames: u64,
    damage: Option<&str>,
    name: &str,
) -> (f64, serde_json::Value) {
    let stats = rt.path().join(format!("{name}.json"));
    let mut cmd = Command::new(workspace_binary("crossway-proxy").unwrap());
    cmd.env("XDG_RUNTIME_DIR", rt.path())
        .args(["vm", "--wayland-display"])
        .arg(display)
        .arg("--")
        .arg(workspace_binary("crossway-agent").unwrap())
        .arg("--socket")
        .arg(rt.path().join(format!("{name}.sock")))
        .arg("--stats-file")
        .arg(&stats)
        .arg("--")
        .arg(client)
        .args(client_args(frames, damage))
        .stdin(Stdio::null());
    let (code, out, err) = Process::spawn("chain", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(300))
        .unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let s = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    (fps(&out), s)
}

/// The embedded compositor (1280x800) at `refresh` Hz, on `host` in `rt`.
fn headless(rt: &Runtime, refresh: &str) -> ProxyProcess {
    let socket = rt.path().join("host").display().to_string();
    let args = [
        "headless",
        "--socket",
        &socket,
        "--size",
        "1280x800",
        "--refresh",
        refresh,
    ];
    ProxyProcess::start(rt, "headless", args).unwrap()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let frames: u64 = if full {
        std::env::var("CROSSWAY_AGENT_FRAMES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600)
    } else {
        30
    };
    let client = PathBuf::from(env!("CARGO_BIN_EXE_crossway-test-client"));
    println!(
        "agent benchmark: {}x{} ARGB shm client, {frames} frames per run",
        SIZE.0, SIZE.1
    );
    for refresh in ["60", "1000"] {
        let rt = Runtime::new().unwrap();
        let host = headless(&rt, refresh);
        // Interleaved, so drift on a shared machine touches both alike.
        let d1 = direct(&rt, &host.socket, &client, frames);
        let (c1, _) = chain(&rt, &host.socket, &client, frames, None, "c1");
        let d2 = direct(&rt, &host.socket, &client, frames);
        let (c2, _) = chain(&rt, &host.socket, &client, frames, None, "c2");
        let (d, c) = ((d1 + d2) / 2.0, (c1 + c2) / 2.0);
        println!(
            "  {refresh:>4} Hz: direct {d:7.1} fps, through the chain {c:7.1} fps, ratio {:.2}",
            c / d
        );
    }
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "1000");
    let (w, h): (u64, u64) = (SIZE.0.parse().unwrap(), SIZE.1.parse().unwrap());
    let full_frame = w * h * 4;
    for (label, damage) in [("full damage", None), ("64x16 damage", Some("32,32,64,16"))] {
        let (_, s) = chain(&rt, &host.socket, &client, frames, damage, "copy");
        let commits = s["frames"].as_u64().unwrap();
        let copied = s["bytes_copied"].as_u64().unwrap();
        let damaged = s["damaged_bytes"].as_u64().unwrap();
        // The first commit of each of the two buffers copies it whole.
        let warm = commits.saturating_sub(2).max(1);
        let warm_copied = copied.saturating_sub(2 * full_frame) / warm;
        let warm_damaged = damaged.saturating_sub(full_frame) / commits.saturating_sub(1).max(1);
        println!(
            "  agent copy, {label}: {commits} commits, {warm_copied} bytes copied per warm frame \
             for {warm_damaged} damaged ({:.2}x); all frames: {copied} copied, {damaged} damaged",
            warm_copied as f64 / warm_damaged.max(1) as f64
        );
    }
}
