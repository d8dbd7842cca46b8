//! Headless compositor figures, printed (not asserted: the machines are shared and noisy).
//!
//! 1. Compose + screenshot of a 1280x800 output holding four windows (two wl_shm, two
//!    dmabuf), through the library API: composes every window from scratch and reads the
//!    output back as RGBA.
//! 2. A full-damage 1280x800 wl_shm client animating as fast as frame callbacks allow, against
//!    `crossway-proxy headless` in its own process: frames per second seen by the client, and
//!    the compositor's CPU time per second of wall time (from /proc), also for dmabuf.
//!
//! `cargo bench -p crossway-tests --bench headless` measures; under `cargo test` (no
//! `--bench` argument) it runs a short smoke version of the same steps.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark's setup failing is the report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossway_headless::ToplevelMatch;
use crossway_tests::{Process, Runtime, workspace_binary};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    compose_and_screenshot(if full { 200 } else { 3 });
    full_damage_client("shm", if full { 600 } else { 20 });
    full_damage_client("dmabuf", if full { 600 } else { 20 });
}

fn compose_and_screenshot(iterations: u32) {
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("bench").unwrap();
    let mut clients = vec![];
    for (i, buffer) in ["shm", "dmabuf", "shm", "dmabuf"].iter().enumerate() {
        let mut cmd = rt.client(
            env!("CARGO_BIN_EXE_crossway-test-client"),
            headless.socket_path(),
        );
        cmd.args([
            "--buffer",
            buffer,
            "--width",
            "600",
            "--height",
            "380",
            "--title",
            &format!("w{i}"),
        ]);
        clients.push(Process::spawn("test-client", &mut cmd).unwrap());
    }
    for i in 0..4 {
        headless
            .wait_for_toplevel(
                &ToplevelMatch::title(format!("w{i}")),
                Duration::from_secs(20),
            )
            .unwrap();
    }
    headless.screenshot().unwrap();
    let start = Instant::now();
    for _ in 0..iterations {
        let shot = headless.screenshot().unwrap();
        assert_eq!((shot.width, shot.height), (1280, 800));
    }
    let per = start.elapsed() / iterations;
    println!(
        "headless compose+screenshot 1280x800, 4 windows: {:.2} ms each, {:.0} per second ({iterations} runs)",
        per.as_secs_f64() * 1e3,
        1.0 / per.as_secs_f64()
    );
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

fn full_damage_client(buffer: &str, frames: u32) {
    let rt = Runtime::new().unwrap();
    let socket = rt.path().join("bench-0");
    let mut compositor = Command::new(workspace_binary("crossway-proxy").unwrap())
        .args(["headless", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(compositor.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap(); // WAYLAND_DISPLAY=..., printed once it listens
    let pid = compositor.id();

    let cpu_before = cpu_seconds(pid);
    let wall = Instant::now();
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &socket);
    cmd.args([
        "--buffer", buffer, "--width", "1280", "--height", "800", "--stride", "5120",
    ])
    .args(["--frames", &frames.to_string()]);
    let (code, out, err) = Process::spawn("test-client", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(120))
        .unwrap();
    let wall = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let _ = compositor.kill();
    let _ = compositor.wait();
    assert_eq!(code, Some(0), "{out}{err}");
    let fps = out
        .lines()
        .find_map(|l| l.strip_prefix("frames "))
        .unwrap_or("?");
    println!(
        "headless full-damage 1280x800 {buffer} client: frames {fps}; compositor CPU {:.1}% of one core ({cpu:.2} s in {wall:.2} s)",
        100.0 * cpu / wall
    );
}
