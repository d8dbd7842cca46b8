//! Guest apps through the whole chain, each piece its own process over real sockets:
//!
//! ```text
//!  app ─wayland─▶ crossway-agent ─loopback virtgpu─▶ crossway-proxy vm ─vhost-user─▶ serve ─wayland─▶ headless
//! ```
//!
//! and the same scenarios (`reference_*`) against the reference host, rutabaga_gfx's
//! cross-domain as crosvm and libkrun ship it, which has no Crossway capset, takes no guest
//! blobs and tags nothing:
//!
//! ```text
//!  app ─wayland─▶ crossway-agent ─loopback virtgpu─▶ crossway-rutabaga-host ─wayland─▶ headless
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

use common::{Host, headless};
use crossway_tests::rutabaga::RutabagaHost;
use crossway_tests::{Process, Runtime, parse_wayland_info, pixels, require, workspace_binary};
use serde_json::{Value, json};

const VM: &str = "vm1";

/// Which host side serves the agent's virtgpu device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// `crossway-proxy vm` (the loopback VM and `serve`), tagging VM `vm1`.
    Proxy,
    /// `crossway-rutabaga-host`.
    Reference,
}

/// The agent and what serves it; stopped on [`Chain::stop`] or drop.
struct Chain {
    process: Option<Process>,
    socket: PathBuf,
    stats: PathBuf,
    backend: Backend,
    _reference: Option<RutabagaHost>,
}

impl Chain {
    /// Starts `crossway-agent --socket SOCKET --stats-file STATS [-- APP]` as the guest
    /// program of `backend` in front of `host`.
    fn start(rt: &Runtime, host: &Host, backend: Backend, name: &str, app: &[&str]) -> Chain {
        let socket = rt.path().join(format!("{name}.sock"));
        let stats = rt.path().join(format!("{name}.json"));
        let agent = workspace_binary("crossway-agent").unwrap();
        let (mut cmd, reference) = match backend {
            Backend::Proxy => {
                let mut cmd = Command::new(workspace_binary("crossway-proxy").unwrap());
                cmd.env("XDG_RUNTIME_DIR", rt.path())
                    .args(["vm", "--vm-name", VM, "--wayland-display"])
                    .arg(&host.display)
                    .arg("--")
                    .arg(agent)
                    .stdin(Stdio::null());
                (cmd, None)
            }
            Backend::Reference => {
                let r = RutabagaHost::start(rt, &host.display).unwrap();
                let cmd = r.guest_command(rt, agent);
                (cmd, Some(r))
            }
        };
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--stats-file")
            .arg(&stats);
        if !app.is_empty() {
            cmd.arg("--").args(app);
        }
        Chain {
            process: Some(Process::spawn("agent chain", &mut cmd).unwrap()),
            socket,
            stats,
            backend,
            _reference: reference,
        }
    }

    /// A chain with no app: guest clients connect to its socket.
    fn listening(rt: &Runtime, host: &Host, backend: Backend, name: &str) -> Chain {
        let c = Chain::start(rt, host, backend, name, &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&c.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent never listened on {}",
                c.socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// The title the host sees for a guest window titled `title`.
    fn title(&self, title: &str) -> String {
        match self.backend {
            Backend::Proxy => format!("[{VM}] {title}"),
            Backend::Reference => title.to_owned(),
        }
    }

    /// The app id the host sees for `app_id`.
    fn app_id(&self, app_id: &str) -> String {
        match self.backend {
            Backend::Proxy => format!("{VM}.{app_id}"),
            Backend::Reference => app_id.to_owned(),
        }
    }

    /// Waits for an agent run with an app to end; its exit code and output.
    fn wait(mut self) -> (Option<i32>, String, String) {
        self.process
            .take()
            .unwrap()
            .wait(Duration::from_secs(90))
            .unwrap()
    }

    /// Stops the chain the way a user does (SIGTERM to its first process, which stops the
    /// agent), returns its output.
    fn stop(mut self) -> (String, String) {
        let p = self.process.take().unwrap();
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
}

fn stats(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn test_client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crossway-test-client"))
}

/// Waits for the host toplevel `title` (as the host sees it) and checks every pixel of its
/// screenshot against the test client's picture; what the host reports of the window.
fn check_window(rt: &Runtime, host: &Host, title: &str, (w, h): (u32, u32)) -> Value {
    let control = host.control.clone().unwrap();
    pixels::assert_window_pixels(
        &control,
        &rt.path().join("window.png"),
        title,
        (w, h),
        |x, y| pixels::opaque(pixels::test_client_rgb(x, y, w, h)),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `scenario` against our proxy (`proxy_NAME`) and the reference host (`reference_NAME`).
macro_rules! both_hosts {
    ($scenario:ident, $proxy:ident, $reference:ident) => {
        #[test]
        fn $proxy() {
            $scenario(Backend::Proxy);
        }

        #[test]
        fn $reference() {
            $scenario(Backend::Reference);
        }
    };
}

fn shm_window(backend: Backend) {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let chain = Chain::listening(&rt, &host, backend, "agent-0");
    let mut client = rt.client(test_client(), &chain.socket);
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
    let found = check_window(&rt, &host, &chain.title("shm-window"), (96, 64));
    assert_eq!(
        found["app_id"],
        json!(chain.app_id("crossway.test-client")),
        "{found}"
    );
    client.finish();
    chain.stop();
}

both_hosts!(
    shm_window,
    proxy_shm_window_pixels_reach_the_host_tagged,
    reference_shm_window_pixels_reach_the_host
);

/// libwayland-cursor's pattern: a pool made too small, grown with `wl_shm_pool.resize`, then
/// a buffer in the grown part. The agent puts a new blob and host pool behind the client's pool
/// (a guest blob with our proxy, a HOST3D image on the reference host) and the pixels arrive.
fn grown_pool_window(backend: Backend) {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let client = test_client();
    let app = [
        client.to_str().unwrap(),
        "--buffer",
        "shm",
        "--grow-pool",
        "--width",
        "96",
        "--height",
        "64",
        "--title",
        "grown-pool",
        "--exit-after",
        "4000",
    ];
    let chain = Chain::start(&rt, &host, backend, "agent-0", &app);
    let title = chain.title("grown-pool");
    let stats_path = chain.stats.clone();
    check_window(&rt, &host, &title, (96, 64));
    let (code, out, err) = chain.wait();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let s = stats(&stats_path);
    assert_eq!(s["pools_regrown"], json!(1), "{s}");
    assert_eq!(s["clients_refused"], json!(0), "{s}");
}

both_hosts!(
    grown_pool_window,
    proxy_pool_grown_past_its_blob_shows_through_a_new_host_pool,
    reference_pool_grown_past_its_blob_shows_through_a_new_host_pool
);

fn damage_limited_copy(backend: Backend) {
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
    let chain = Chain::start(&rt, &host, backend, "agent-0", &app);
    let stats_path = chain.stats.clone();
    let (code, out, err) = chain.wait();
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
}

both_hosts!(
    damage_limited_copy,
    proxy_shm_copies_only_the_damaged_rows_once_warm,
    reference_shm_copies_only_the_damaged_rows_once_warm
);

fn dmabuf_client(backend: Backend) {
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
    let chain = Chain::start(&rt, &host, backend, "agent-0", &app);
    let stats_path = chain.stats.clone();
    let (code, out, err) = chain.wait();
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
    // A memfd is no virtio-gpu resource: copied into a blob (on the reference host one the
    // host laid out, with its own stride).
    assert_eq!(s["dmabufs_copied"].as_u64().unwrap(), 2, "{s}");
    assert_eq!(s["dmabufs_forwarded"].as_u64().unwrap(), 0, "{s}");
}

both_hosts!(
    dmabuf_client,
    proxy_dmabuf_client_picks_linear_from_the_agents_feedback,
    reference_dmabuf_client_picks_linear_from_the_agents_feedback
);

fn wayland_info(backend: Backend) {
    let Some(info) = require("wayland_info", "wayland-info", "wayland-utils") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let chain = Chain::listening(&rt, &host, backend, "agent-0");
    let (code, out, err) = Process::spawn("wayland-info", &mut rt.client(&info, &chain.socket))
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
    // Feedback came through: the host's format table became a guest memfd.
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
    chain.stop();
}

both_hosts!(
    wayland_info,
    proxy_wayland_info_sees_the_hosts_globals_and_only_linear_modifiers,
    reference_wayland_info_sees_the_hosts_globals_and_only_linear_modifiers
);

fn weston_simple_shm(backend: Backend) {
    let Some(simple) = require("weston_simple_shm", "weston-simple-shm", "weston") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let chain = Chain::listening(&rt, &host, backend, "agent-0");
    let mut app =
        Process::spawn("weston-simple-shm", &mut rt.client(&simple, &chain.socket)).unwrap();
    let control = host.control.clone().unwrap();
    let found = pixels::wait_toplevel(&control, &chain.title("simple-shm")).unwrap();
    let app_id = found["app_id"].as_str().unwrap();
    assert!(
        app_id.starts_with(&chain.app_id("")) && app_id.ends_with("simple-shm"),
        "{found}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        app.running(),
        "weston-simple-shm exited: {:?}",
        app.finish()
    );
    app.finish();
    let stats_path = chain.stats.clone();
    chain.stop();
    let s = stats(&stats_path);
    assert!(s["frames"].as_u64().unwrap() > 5, "{s}");
    assert!(s["shm_pools"].as_u64().unwrap() >= 1, "{s}");
}

both_hosts!(
    weston_simple_shm,
    proxy_weston_simple_shm_runs_and_its_window_is_tagged,
    reference_weston_simple_shm_runs
);

/// Runs `wl-copy --foreground TEXT` on one display and returns what `wl-paste` reads on the
/// other. A probing wl-paste can take the keyboard focus wl-copy waits for before it sets
/// its selection, so wl-copy is started again every 2 s, for at most 20 s.
fn copy_and_paste(
    rt: &Runtime,
    (copy, from): (&Path, &Path),
    (wl_paste, to): (&Path, &Path),
    text: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = rt.client(copy, from);
        c.args(["--foreground", text]);
        let copier = Process::spawn("wl-copy", &mut c).unwrap();
        let retry = Instant::now() + Duration::from_secs(2);
        while Instant::now() < retry {
            let mut p = rt.client(wl_paste, to);
            p.arg("--no-newline");
            let (_, out, _) = Process::spawn("wl-paste", &mut p)
                .unwrap()
                .wait(Duration::from_secs(5))
                .unwrap();
            if out == text || Instant::now() > deadline {
                copier.finish();
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        copier.finish();
    }
}

fn clipboard(backend: Backend) {
    let (Some(copy), Some(wl_paste)) = (
        require("clipboard", "wl-copy", "wl-clipboard"),
        require("clipboard", "wl-paste", "wl-clipboard"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let chain = Chain::listening(&rt, &host, backend, "agent-0");
    // Guest copies, host pastes; then host copies, guest pastes.
    let pasted = copy_and_paste(
        &rt,
        (&copy, &chain.socket),
        (&wl_paste, &host.display),
        "from the guest",
    );
    assert_eq!(pasted, "from the guest");
    let pasted = copy_and_paste(
        &rt,
        (&copy, &host.display),
        (&wl_paste, &chain.socket),
        "from the host",
    );
    assert_eq!(pasted, "from the host");
    let stats_path = chain.stats.clone();
    chain.stop();
    // Both texts went through cross-domain pipes.
    let piped = stats(&stats_path)["pipe_bytes"].as_u64().unwrap();
    assert!(
        piped >= ("from the guest".len() + "from the host".len()) as u64,
        "{piped}"
    );
}

both_hosts!(
    clipboard,
    proxy_clipboard_both_directions,
    reference_clipboard_both_directions
);

fn foot(backend: Backend) {
    let Some(foot) = require("foot", "foot", "foot") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let chain = Chain::listening(&rt, &host, backend, "agent-0");
    let mut c = rt.client(&foot, &chain.socket);
    c.env("HOME", rt.path())
        .args(["--title", "guest-foot", "sh", "-c", "echo hello; sleep 30"]);
    let term = Process::spawn("foot", &mut c).unwrap();
    let found = pixels::wait_toplevel(&host.control.clone().unwrap(), &chain.title("guest-foot"));
    let (out, err) = term.finish();
    let found = found.unwrap_or_else(|e| panic!("{e:#}\nfoot:\n{out}\n{err}"));
    assert_eq!(found["app_id"], json!(chain.app_id("foot")), "{found}");
    let stats_path = chain.stats.clone();
    chain.stop();
    // foot reserves a large sparse pool: a HOST3D blob, drawn through.
    let s = stats(&stats_path);
    assert!(s["frames"].as_u64().unwrap() >= 1, "{s}");
}

both_hosts!(
    foot,
    proxy_foot_window_appears_on_the_host,
    reference_foot_window_appears_on_the_host
);

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
    let chain = Chain::listening(&rt, &host, Backend::Proxy, "agent-0");
    let socket = chain.socket.clone();
    let mut good = rt.client(test_client(), &socket);
    good.args([
        "--buffer", "shm", "--width", "96", "--height", "64", "--title", "good",
    ]);
    let good = Process::spawn("test-client", &mut good).unwrap();
    check_window(&rt, &host, &chain.title("good"), (96, 64));

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
    check_window(&rt, &host, &chain.title("good"), (96, 64));
    let mut again = rt.client(test_client(), &socket);
    again.args([
        "--buffer", "shm", "--width", "96", "--height", "64", "--title", "again",
    ]);
    let again = Process::spawn("test-client", &mut again).unwrap();
    check_window(&rt, &host, &chain.title("again"), (96, 64));
    again.finish();
    good.finish();
    let (_, log) = chain.stop();
    assert!(
        log.contains("ended"),
        "the agent reports how bad clients ended:\n{log}"
    );
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    let test = "systemd_socket_activation_serves_the_passed_socket";
    let (Some(activate), Some(info)) = (
        require(test, "systemd-socket-activate", "systemd"),
        require(test, "wayland-info", "wayland-utils"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let socket = rt.path().join("activated.sock");
    // systemd-socket-activate listens, and at the first connection runs the agent with the
    // socket as fd 3 (LISTEN_FDS=1, LISTEN_PID = the agent).
    let mut cmd = Command::new(workspace_binary("crossway-proxy").unwrap());
    cmd.env("XDG_RUNTIME_DIR", rt.path())
        .args(["vm", "--vm-name", VM, "--wayland-display"])
        .arg(&host.display)
        .arg("--")
        .arg(activate)
        .arg("-l")
        .arg(&socket)
        .args(["-E", "CROSSWAY_VIRTGPU", "-E", "XDG_RUNTIME_DIR"])
        .arg(workspace_binary("crossway-agent").unwrap())
        .stdin(Stdio::null());
    let vm = Process::spawn("vm + socket activation", &mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = Process::spawn("wayland-info", &mut rt.client(&info, &socket))
        .unwrap()
        .wait(Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        parse_wayland_info(&out).contains_key("wl_compositor"),
        "{out}"
    );
    // The agent served the passed socket and bound none of its own.
    assert!(!rt.path().join("wayland-0").exists());
    let chain = Chain {
        process: Some(vm),
        socket,
        stats: PathBuf::new(),
        backend: Backend::Proxy,
        _reference: None,
    };
    chain.stop();
}
