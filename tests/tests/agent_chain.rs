//! Guest apps through the whole chain, each piece its own process over real sockets:
//!
//! ```text
//!  app ─wayland─▶ crossway-agent ─loopback virtgpu─▶ crossway-proxy vm ─vhost-user─▶ serve ─wayland─▶ headless
//! ```
//!
//! Checked on the host side: the window's pixels (headless screenshots), its tagged title and
//! app id, the clipboard both ways, what `wayland-info` sees; on the agent side its own
//! counters (`--stats-file`): the damage-limited copy of `wl_shm` buffers.

#![allow(clippy::unwrap_used)]

#[path = "loopback_cross_domain_common/mod.rs"]
mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Host, eventually, headless};
use crossway_proxy::headless::Image;
use crossway_proxy::headless::control::request;
use crossway_tests::{Process, Runtime, parse_wayland_info, paste, require, workspace_binary};
use serde_json::{Value, json};

const VM: &str = "vm1";

/// `crossway-proxy vm` (tagging `vm1`) running `crossway-agent --socket SOCKET --stats-file
/// STATS [-- APP]` against `host`.
fn chain(rt: &Runtime, host: &Host, name: &str, app: &[&str]) -> (Process, PathBuf, PathBuf) {
    let socket = rt.path().join(format!("{name}.sock"));
    let stats = rt.path().join(format!("{name}.json"));
    let mut cmd = Command::new(workspace_binary("crossway-proxy").unwrap());
    cmd.env("XDG_RUNTIME_DIR", rt.path())
        .args(["vm", "--vm-name", VM, "--wayland-display"])
        .arg(&host.display)
        .arg("--")
        .arg(workspace_binary("crossway-agent").unwrap())
        .arg("--socket")
        .arg(&socket)
        .arg("--stats-file")
        .arg(&stats);
    if !app.is_empty() {
        cmd.arg("--").args(app);
    }
    cmd.stdin(Stdio::null());
    (
        Process::spawn("crossway-proxy vm", &mut cmd).unwrap(),
        socket,
        stats,
    )
}

/// A chain with no app: guest clients connect to the returned socket.
fn agent(rt: &Runtime, host: &Host, name: &str) -> (Process, PathBuf, PathBuf) {
    let (p, socket, stats) = chain(rt, host, name, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the agent never listened on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, socket, stats)
}

/// Stops a chain the way a user does (SIGTERM to `vm`, which stops the agent), returns its
/// output.
fn stop(p: Process) -> (String, String) {
    if let Some(pid) = p.id() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
    }
    match p.wait(Duration::from_secs(20)) {
        Ok((_, out, err)) => (out, err),
        Err(e) => (String::new(), format!("{e:#}")),
    }
}

fn stats(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn test_client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crossway-test-client"))
}

/// crossway-test-client's pattern at (x, y) of a w x h window, RGBA.
fn client_pixel(x: u32, y: u32, w: u32, h: u32) -> [u8; 4] {
    let [r, g, b] = if x < 8 && y < 8 {
        if (x + y).is_multiple_of(2) {
            [255, 255, 0]
        } else {
            [0, 0, 0]
        }
    } else {
        match (x < w / 2, y < h / 2) {
            (true, true) => [255, 0, 0],
            (false, true) => [0, 255, 0],
            (true, false) => [0, 0, 255],
            (false, false) => [255, 255, 255],
        }
    };
    [r, g, b, 255]
}

/// Waits for the tagged toplevel `title` and checks every pixel of its screenshot against the
/// test client's pattern.
fn check_window(rt: &Runtime, host: &Host, title: &str, (w, h): (u32, u32)) -> Value {
    let control = host.control.clone().unwrap();
    let tagged = format!("[{VM}] {title}");
    let found = request(
        &control,
        &json!({"wait_toplevel": {"title": tagged, "timeout_ms": 30000}}),
    )
    .unwrap_or_else(|e| panic!("no toplevel {tagged:?}: {e:#}"));
    let png = rt.path().join("window.png");
    let mut wrong = usize::MAX;
    eventually(|| {
        request(
            &control,
            &json!({"toplevel_screenshot": {"title": tagged, "path": png}}),
        )
        .unwrap();
        let shot = Image::load_png(&png).unwrap();
        assert_eq!((shot.width, shot.height), (w, h));
        wrong = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| shot.pixel(x, y) != Some(client_pixel(x, y, w, h)))
            .count();
        wrong == 0
    });
    assert_eq!(wrong, 0, "{wrong} pixels differ from the client's pattern");
    found
}

#[test]
fn shm_window_pixels_reach_the_host_tagged() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (vm, socket, _) = agent(&rt, &host, "agent-0");
    let mut client = rt.client(test_client(), &socket);
    client.args([
        "--buffer",
        "shm",
        "--width",
        "96",
        "--height",
        "64",
        "--title",
        "shm-window",
    ]);
    let client = Process::spawn("test-client", &mut client).unwrap();
    let found = check_window(&rt, &host, "shm-window", (96, 64));
    assert_eq!(
        found["app_id"],
        json!("vm1.crossway.test-client"),
        "{found}"
    );
    client.finish();
    stop(vm);
}

#[test]
fn shm_copies_only_the_damaged_rows_once_warm() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (w, h, frames) = (256u64, 192u64, 40u64);
    let (dw, dh) = (32u64, 8u64);
    let client = test_client();
    let app = [
        client.to_str().unwrap(),
        "--buffer",
        "shm",
        "--width",
        "256",
        "--height",
        "192",
        "--frames",
        "40",
        "--damage",
        "16,16,32,8",
    ];
    let (vm, _, stats_path) = chain(&rt, &host, "agent-0", &app);
    let (code, out, err) = vm.wait(Duration::from_secs(90)).unwrap();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let s = stats(&stats_path);
    let damaged = s["damaged_bytes"].as_u64().unwrap();
    let copied = s["bytes_copied"].as_u64().unwrap();
    let full = w * h * 4;
    let rect = dw * dh * 4;
    // The first commit damages the whole buffer, each later one the rectangle. (The client
    // may exit before its very last commit leaves it; count what the agent saw.)
    let commits = s["frames"].as_u64().unwrap();
    assert!(commits >= frames, "{s}");
    assert_eq!(damaged, full + (commits - 1) * rect, "{s}");
    // Each of the two buffers is copied whole once; after that only the rectangle, which is
    // what each buffer missed since its last copy.
    assert_eq!(copied, 2 * full + (commits - 2) * rect, "{s}");
    println!(
        "agent shm copy: {commits} commits of a {dw}x{dh} damage on {w}x{h}: {} bytes copied per warm frame, {rect} damaged",
        (copied - 2 * full) / (commits - 2)
    );
}

#[test]
fn dmabuf_client_picks_linear_from_the_agents_feedback() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let client = test_client();
    let app = [
        client.to_str().unwrap(),
        "--buffer",
        "dmabuf",
        "--frames",
        "10",
    ];
    let (vm, _, stats_path) = chain(&rt, &host, "agent-0", &app);
    let (code, out, err) = vm.wait(Duration::from_secs(90)).unwrap();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let tranches: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("feedback tranche"))
        .collect();
    assert!(!tranches.is_empty(), "no feedback:\n{out}");
    for t in &tranches {
        let formats = t.split("formats ").nth(1).unwrap();
        assert!(
            formats.split(',').all(|f| f.ends_with(":0x0")),
            "only LINEAR reaches the guest: {t}"
        );
    }
    // The headless host's scanout tranche comes first and keeps its flag.
    assert!(tranches[0].contains("flags 1"), "{tranches:?}");
    assert!(out.contains("modifier 0x0000000000000000"), "{out}");
    assert!(out.contains("frames 10"), "{out}");
    let s = stats(&stats_path);
    // A memfd is no virtio-gpu resource: copied into a blob.
    assert_eq!(s["dmabufs_copied"].as_u64().unwrap(), 2, "{s}");
    assert_eq!(s["dmabufs_forwarded"].as_u64().unwrap(), 0, "{s}");
}

#[test]
fn wayland_info_sees_the_hosts_globals_and_only_linear_modifiers() {
    let Some(info) = require(
        "wayland_info_sees_the_hosts_globals_and_only_linear_modifiers",
        "wayland-info",
        "wayland-utils",
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (vm, socket, _) = agent(&rt, &host, "agent-0");
    let (code, out, err) = Process::spawn("wayland-info", &mut rt.client(&info, &socket))
        .unwrap()
        .wait(Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let globals = parse_wayland_info(&out);
    for g in [
        "wl_compositor",
        "wl_shm",
        "xdg_wm_base",
        "wl_seat",
        "wl_output",
        "zwp_linux_dmabuf_v1",
        "wl_data_device_manager",
    ] {
        assert!(globals.contains_key(g), "{g} missing: {globals:?}");
    }
    // Feedback came through: the keymap-like format table became a guest memfd.
    assert!(out.contains("main device:"), "{out}");
    let modifiers: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("0x") && l.contains(" = ") && l.contains(';'))
        .collect();
    assert!(!modifiers.is_empty(), "{out}");
    assert!(
        modifiers.iter().all(|l| l.trim_end().ends_with("= LINEAR")),
        "{modifiers:?}"
    );
    stop(vm);
}

#[test]
fn weston_simple_shm_runs_and_its_window_is_tagged() {
    let Some(simple) = require(
        "weston_simple_shm_runs_and_its_window_is_tagged",
        "weston-simple-shm",
        "weston",
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (vm, socket, stats_path) = agent(&rt, &host, "agent-0");
    let mut app = Process::spawn("weston-simple-shm", &mut rt.client(&simple, &socket)).unwrap();
    let control = host.control.clone().unwrap();
    let found = request(
        &control,
        &json!({"wait_toplevel": {"title": "[vm1] simple-shm", "timeout_ms": 30000}}),
    )
    .unwrap();
    let app_id = found["app_id"].as_str().unwrap();
    assert!(
        app_id.starts_with("vm1.") && app_id.ends_with("simple-shm"),
        "{found}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        app.running(),
        "weston-simple-shm exited: {:?}",
        app.finish()
    );
    app.finish();
    stop(vm);
    let s = stats(&stats_path);
    assert!(s["frames"].as_u64().unwrap() > 5, "{s}");
    assert!(s["shm_pools"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn clipboard_both_directions() {
    let (Some(copy), Some(wl_paste)) = (
        require("clipboard_both_directions", "wl-copy", "wl-clipboard"),
        require("clipboard_both_directions", "wl-paste", "wl-clipboard"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (vm, socket, stats_path) = agent(&rt, &host, "agent-0");
    // Guest copies, host pastes.
    let mut c = rt.client(&copy, &socket);
    c.args(["--foreground", "from the guest"]);
    let guest_copy = Process::spawn("wl-copy (guest)", &mut c).unwrap();
    assert_eq!(
        paste(&rt, &wl_paste, &host.display, &[]).unwrap(),
        "from the guest"
    );
    guest_copy.finish();
    // Host copies, guest pastes.
    let mut c = rt.client(&copy, &host.display);
    c.args(["--foreground", "from the host"]);
    let host_copy = Process::spawn("wl-copy (host)", &mut c).unwrap();
    assert_eq!(
        paste(&rt, &wl_paste, &socket, &[]).unwrap(),
        "from the host"
    );
    host_copy.finish();
    stop(vm);
    // Both texts went through cross-domain pipes.
    let piped = stats(&stats_path)["pipe_bytes"].as_u64().unwrap();
    assert!(
        piped >= ("from the guest".len() + "from the host".len()) as u64,
        "{piped}"
    );
}

#[test]
fn foot_window_appears_on_the_host() {
    let Some(foot) = require("foot_window_appears_on_the_host", "foot", "foot") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (vm, socket, stats_path) = agent(&rt, &host, "agent-0");
    let mut c = rt.client(&foot, &socket);
    c.env("HOME", rt.path())
        .args(["--title", "guest-foot", "sh", "-c", "echo hello; sleep 30"]);
    let term = Process::spawn("foot", &mut c).unwrap();
    let found = request(
        &host.control.clone().unwrap(),
        &json!({"wait_toplevel": {"title": "[vm1] guest-foot", "timeout_ms": 30000}}),
    );
    let (out, err) = term.finish();
    let found = found.unwrap_or_else(|e| panic!("{e:#}\nfoot:\n{out}\n{err}"));
    assert_eq!(found["app_id"], json!("vm1.foot"), "{found}");
    stop(vm);
    // foot reserves a large sparse pool: a HOST3D blob, drawn through.
    let s = stats(&stats_path);
    assert!(s["frames"].as_u64().unwrap() >= 1, "{s}");
}

/// Sends `bytes` as a raw client of `socket`; returns what came back until EOF.
fn raw_client(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

fn msg(object: u32, opcode: u16, args: &[u8]) -> Vec<u8> {
    let size = (8 + args.len()) as u32;
    let mut m = object.to_ne_bytes().to_vec();
    m.extend_from_slice(&((size << 16) | u32::from(opcode)).to_ne_bytes());
    m.extend_from_slice(args);
    m
}

/// The text of the first `wl_display.error` in `events`.
fn display_error(events: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 8 <= events.len() {
        let object = u32::from_ne_bytes(events[at..at + 4].try_into().unwrap());
        let word = u32::from_ne_bytes(events[at + 4..at + 8].try_into().unwrap());
        let (size, opcode) = ((word >> 16) as usize, word & 0xffff);
        if size < 8 || at + size > events.len() {
            return None;
        }
        if object == 1 && opcode == 0 && size >= 20 {
            let len = u32::from_ne_bytes(events[at + 16..at + 20].try_into().unwrap()) as usize;
            let text = &events[at + 20..(at + 20 + len).min(at + size)];
            return Some(String::from_utf8_lossy(text).trim_end_matches('\0').into());
        }
        at += size;
    }
    None
}

#[test]
fn a_broken_client_gets_an_error_and_the_others_keep_going() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (vm, socket, _) = agent(&rt, &host, "agent-0");
    let mut good = rt.client(test_client(), &socket);
    good.args([
        "--buffer", "shm", "--width", "96", "--height", "64", "--title", "good",
    ]);
    let good = Process::spawn("test-client", &mut good).unwrap();
    check_window(&rt, &host, "good", (96, 64));

    // A request on an object that does not exist: the agent's own check.
    let back = raw_client(&socket, &msg(7, 0, &[]));
    let e = display_error(&back).expect("a wl_display.error");
    assert!(e.contains("7"), "{e}");

    // A bind of a global the host never announced: the proxy refuses and closes the channel;
    // the agent passes the host's error on and ends that client only.
    let mut bad = msg(1, 1, &2u32.to_ne_bytes()); // get_registry(new id 2)
    let mut bind = 999u32.to_ne_bytes().to_vec();
    let name = b"wl_seat\0";
    bind.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    bind.extend_from_slice(name);
    bind.extend_from_slice(&[0; 8][..(4 - name.len() % 4) % 4]);
    bind.extend_from_slice(&1u32.to_ne_bytes());
    bind.extend_from_slice(&3u32.to_ne_bytes());
    bad.extend(msg(2, 0, &bind));
    let back = raw_client(&socket, &bad);
    assert!(display_error(&back).is_some(), "no error for a bad bind");

    // The good client still draws, and a new one is served.
    check_window(&rt, &host, "good", (96, 64));
    let mut again = rt.client(test_client(), &socket);
    again.args([
        "--buffer", "shm", "--width", "96", "--height", "64", "--title", "again",
    ]);
    let again = Process::spawn("test-client", &mut again).unwrap();
    check_window(&rt, &host, "again", (96, 64));
    again.finish();
    good.finish();
    let (_, log) = stop(vm);
    assert!(
        log.contains("ended"),
        "the agent reports how bad clients ended:\n{log}"
    );
}
