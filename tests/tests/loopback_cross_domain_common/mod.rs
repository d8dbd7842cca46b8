//! What the `loopback_cross_domain_*` and `rutabaga_reference_host` scenarios share: a host
//! compositor in its own process (`crossway-proxy headless` with its control socket, or weston
//! headless), `crossway-xd-guest SCENARIO` run behind a [`Server`], and what each scenario's
//! output must be, whichever server ran it:
//!
//! ```text
//!  crossway-xd-guest ─loopback socket─▶ vm (LoopbackVm) ─vhost-user─▶ serve ─wayland─▶ host
//!  crossway-xd-guest ─loopback socket─▶ crossway-rutabaga-host ─────────────wayland─▶ host
//! ```

#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossway_tests::pixels::{self, opaque, quadrants_rgb};
use crossway_tests::rutabaga::RutabagaHost;
use crossway_tests::{Process, ProxyProcess, Runtime, eventually, start_weston, workspace_binary};
use serde_json::json;

/// A host compositor process, stopped on drop.
pub struct Host {
    /// Its Wayland socket.
    pub display: PathBuf,
    /// The headless control socket (None for weston).
    pub control: Option<PathBuf>,
    _process: HostProcess,
}

enum HostProcess {
    Headless(ProxyProcess),
    Weston(Process),
}

/// `crossway-proxy headless` on `name` in `rt`, 640x480.
pub fn headless(rt: &Runtime, name: &str) -> Result<Host> {
    let socket = rt.path().join(name).display().to_string();
    let p = ProxyProcess::start(
        rt,
        name,
        ["headless", "--socket", &socket, "--size", "640x480"],
    )?;
    Ok(Host {
        display: p.socket.clone(),
        control: Some(
            p.control
                .clone()
                .context("headless announced no control socket")?,
        ),
        _process: HostProcess::Headless(p),
    })
}

/// weston 10 headless with the pixman renderer and `--debug` (for weston-screenshooter), if
/// installed (else a `SKIP:` line).
pub fn weston(rt: &Runtime, test: &str, name: &str) -> Result<Option<Host>> {
    Ok(
        start_weston(rt, test, name)?.map(|(process, display)| Host {
            display,
            control: None,
            _process: HostProcess::Weston(process),
        }),
    )
}

/// What serves the virtgpu device of a guest program.
#[derive(Debug, Clone, Copy)]
pub enum Server<'a> {
    /// `crossway-proxy vm` started for the program, in front of the host, tagging its windows
    /// with this VM name (or the default name).
    Proxy(Option<&'a str>),
    /// The reference host, already in front of the host.
    Reference(&'a RutabagaHost),
}

impl Server<'_> {
    /// The title the host sees for a guest window titled `title`.
    pub fn title(&self, title: &str) -> String {
        match self {
            Server::Proxy(Some(vm)) => format!("[{vm}] {title}"),
            Server::Proxy(None) | Server::Reference(_) => title.to_owned(),
        }
    }

    /// The app id the host sees for `app_id`.
    pub fn app_id(&self, app_id: &str) -> String {
        match self {
            Server::Proxy(Some(vm)) => format!("{vm}.{app_id}"),
            Server::Proxy(None) | Server::Reference(_) => app_id.to_owned(),
        }
    }

    /// What the server logged (the reference host's log; the proxy's is its output).
    pub fn log_text(&self) -> String {
        match self {
            Server::Proxy(_) => String::new(),
            Server::Reference(r) => r.log_text(),
        }
    }
}

/// `crossway-xd-guest ARGS` behind `server`, against `host`.
pub fn spawn_guest(
    rt: &Runtime,
    host: &Host,
    server: Server<'_>,
    args: &[&str],
) -> Result<Process> {
    let mut cmd = match server {
        Server::Proxy(vm_name) => {
            let mut cmd = Command::new(workspace_binary("crossway-proxy")?);
            cmd.env("XDG_RUNTIME_DIR", rt.path())
                .args(["vm", "--wayland-display"])
                .arg(&host.display);
            if let Some(n) = vm_name {
                cmd.args(["--vm-name", n]);
            }
            cmd.arg("--")
                .arg(env!("CARGO_BIN_EXE_crossway-xd-guest"))
                .stdin(Stdio::null());
            cmd
        }
        Server::Reference(r) => r.guest_command(rt, env!("CARGO_BIN_EXE_crossway-xd-guest")),
    };
    cmd.args(args);
    Process::spawn("crossway-xd-guest", &mut cmd)
}

/// `crossway-proxy vm` running `crossway-xd-guest ARGS` against `host`, tagged `vm_name`.
pub fn guest(rt: &Runtime, host: &Host, vm_name: Option<&str>, args: &[&str]) -> Result<Process> {
    spawn_guest(rt, host, Server::Proxy(vm_name), args)
}

/// Runs a guest scenario behind `server` to its end: its exit code, stdout lines and stderr.
pub fn run_guest_on(
    rt: &Runtime,
    host: &Host,
    server: Server<'_>,
    args: &[&str],
) -> Result<(Option<i32>, Vec<String>, String)> {
    let (code, out, err) = spawn_guest(rt, host, server, args)?.wait(Duration::from_secs(90))?;
    Ok((code, out.lines().map(str::to_owned).collect(), err))
}

/// Runs a guest scenario behind `server` to its end; returns its stdout lines, failing with its
/// output (and the server's log) when it did not exit 0.
pub fn run_guest_ok(
    rt: &Runtime,
    host: &Host,
    server: Server<'_>,
    args: &[&str],
) -> Result<Vec<String>> {
    let (code, lines, err) = run_guest_on(rt, host, server, args)?;
    if code != Some(0) {
        bail!(
            "guest {args:?} exited {code:?}\nstdout:\n{}\nstderr:\n{err}\nserver log:\n{}",
            lines.join("\n"),
            server.log_text()
        );
    }
    Ok(lines)
}

/// Runs a guest scenario to its end behind `crossway-proxy vm`; returns its stdout lines,
/// failing with its output when it did not exit 0.
pub fn run_guest(
    rt: &Runtime,
    host: &Host,
    vm_name: Option<&str>,
    args: &[&str],
) -> Result<Vec<String>> {
    run_guest_ok(rt, host, Server::Proxy(vm_name), args)
}

/// The pattern `crossway-xd-guest` draws, as RGBA.
pub fn expected_pixel(x: u32, y: u32, w: u32, h: u32) -> [u8; 4] {
    opaque(quadrants_rgb(x, y, w, h))
}

/// A file whose creation releases a holding guest.
pub fn release_path(rt: &Runtime, name: &str) -> PathBuf {
    rt.path().join(format!("release-{name}"))
}

/// Creates `path`.
pub fn release(path: &Path) {
    std::fs::write(path, b"").unwrap();
}

const W: u32 = 96;
const H: u32 = 64;

/// `scenario` drawing a W x H window titled `title` (app id `xd-guest.window`, 3 frames) on
/// `host` behind `server`, holding it until [`release`] of the returned path.
fn hold_window(
    rt: &Runtime,
    host: &Host,
    server: Server<'_>,
    scenario: &str,
    title: &str,
) -> (Process, PathBuf) {
    let hold = release_path(rt, scenario);
    let (w, h) = (W.to_string(), H.to_string());
    let guest = spawn_guest(
        rt,
        host,
        server,
        &[
            scenario,
            "--title",
            title,
            "--app-id",
            "xd-guest.window",
            "--width",
            &w,
            "--height",
            &h,
            "--frames",
            "3",
            "--hold-until",
            hold.to_str().unwrap(),
        ],
    )
    .unwrap();
    (guest, hold)
}

/// Releases a holding guest and returns its lines once it exited 0.
fn release_window(guest: Process, hold: &Path) -> Vec<String> {
    release(hold);
    let (code, out, err) = guest.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    out.lines().map(str::to_owned).collect()
}

/// Runs `scenario` holding its window behind VM `vm1` on a headless host, checks title, app id
/// and pixels, releases it and returns the guest's lines.
pub fn window_on_headless(scenario: &str, title: &str) -> Vec<String> {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    window_on(&rt, &host, Server::Proxy(Some("vm1")), scenario, title)
}

/// Runs `scenario` holding its window behind `server` on the headless `host`, checks the title
/// and app id the host sees and every pixel, releases it and returns the guest's lines.
pub fn window_on(
    rt: &Runtime,
    host: &Host,
    server: Server<'_>,
    scenario: &str,
    title: &str,
) -> Vec<String> {
    let control = host.control.clone().unwrap();
    let (guest, hold) = hold_window(rt, host, server, scenario, title);
    let seen = server.title(title);
    let checked = pixels::assert_window_pixels(
        &control,
        &rt.path().join("window.png"),
        &seen,
        (W, H),
        |x, y| expected_pixel(x, y, W, H),
    );
    let found = match checked {
        Ok(f) => f,
        Err(e) => {
            release(&hold);
            let (out, err) = guest.finish();
            let all = crossway_headless::control::request(&control, &json!({"toplevels": null}));
            panic!(
                "{e:#}\ntoplevels: {all:?}\nstdout:\n{out}\nstderr:\n{err}\nserver log:\n{}",
                server.log_text()
            );
        }
    };
    assert_eq!(
        found["app_id"],
        json!(server.app_id("xd-guest.window")),
        "{found}"
    );
    release_window(guest, &hold)
}

/// Runs `scenario` holding its window on weston and finds the guest's exact pattern in
/// weston's own screenshot (weston-screenshooter), then releases it and returns the guest's
/// lines; `None` after a `SKIP:` line when weston is missing.
pub fn window_on_weston(test: &str, scenario: &str) -> Option<Vec<String>> {
    let screenshooter = crossway_tests::require(test, "weston-screenshooter", "weston")?;
    let rt = Runtime::new().unwrap();
    let host = weston(&rt, test, "weston-0").unwrap()?;
    let (guest, hold) = hold_window(
        &rt,
        &host,
        Server::Proxy(Some("vm1")),
        scenario,
        "xd-weston",
    );
    let mut shots = 0;
    let mut at = None;
    eventually(Duration::from_secs(20), || {
        shots += 1;
        let dir = rt.path().join(format!("shot-{shots}"));
        at = find_pattern(&weston_screenshot(&rt, &screenshooter, &host, &dir));
        at.is_some()
    });
    if at.is_none() {
        release(&hold);
        let (out, err) = guest.finish();
        panic!("the guest's pattern never appeared on weston\nstdout:\n{out}\nstderr:\n{err}");
    }
    Some(release_window(guest, &hold))
}

/// weston's output as weston-screenshooter saves it (8-bit RGB) into `dir`: width and RGB rows.
fn weston_screenshot(rt: &Runtime, screenshooter: &Path, host: &Host, dir: &Path) -> RgbImage {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = rt.client(screenshooter, &host.display);
    cmd.current_dir(dir);
    let (code, _, err) = Process::spawn("weston-screenshooter", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(10))
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let png = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (frame.color_type, frame.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight),
        "weston-screenshooter's format changed"
    );
    buf.truncate(frame.buffer_size());
    RgbImage {
        width: frame.width,
        pixels: buf,
    }
}

struct RgbImage {
    width: u32,
    pixels: Vec<u8>,
}

impl RgbImage {
    fn rgb(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width {
            return None;
        }
        let at = (y as usize * self.width as usize + x as usize) * 3;
        self.pixels.get(at..at + 3)?.try_into().ok()
    }
}

/// Where in `shot` the whole W x H pattern lies, pixel for pixel (its red top-left corner).
fn find_pattern(shot: &RgbImage) -> Option<(u32, u32)> {
    let height = (shot.pixels.len() / 3 / shot.width as usize) as u32;
    let rgb = |x, y| {
        let p = expected_pixel(x, y, W, H);
        Some([p[0], p[1], p[2]])
    };
    (0..height)
        .flat_map(|y| (0..shot.width).map(move |x| (x, y)))
        .filter(|&(x, y)| shot.rgb(x, y) == rgb(0, 0))
        .find(|&(ox, oy)| (0..H).all(|y| (0..W).all(|x| shot.rgb(ox + x, oy + y) == rgb(x, y))))
}

// What each guest scenario must print, whichever server ran it.

/// `bad-*`: the outcome line says the device refused the SEND or the channel then failed (an
/// error event, a closed channel), not that it was accepted or left unanswered; a fresh channel
/// then saw globals (the guest itself checks they are the same as before).
pub fn assert_bad_outcome(scenario: &str, lines: &[String]) {
    let [outcome, fresh] = lines else {
        panic!("{scenario}: {lines:?}")
    };
    let outcome = outcome.strip_prefix("bad: ").unwrap();
    assert!(
        (outcome.starts_with("refused: ") || outcome.starts_with("channel: "))
            && !outcome.contains("timed out"),
        "{scenario}: {outcome}"
    );
    let n: usize = fresh
        .strip_prefix("fresh: ")
        .and_then(|f| f.strip_suffix(" globals"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0, "{lines:?}");
}

/// `keymap`: the compositor's keymap arrived as a blob the guest mapped and read.
pub fn assert_keymap(lines: &[String]) {
    let [line] = lines else { panic!("{lines:?}") };
    let words: Vec<&str> = line.split(' ').collect();
    // keymap format 1 (XKB_V1) size N xkb_keymap
    let ["keymap", "format", "1", "size", size, "xkb_keymap"] = words[..] else {
        panic!("{line}")
    };
    assert!(size.parse::<u32>().unwrap() > 1000, "{line}");
}

/// `host-blob-window` (W x H, 3 frames): the host's image requirements (LINEAR rows of at
/// least W * 4 bytes), then the frames, shown and released.
pub fn assert_host_blob_window(lines: &[String]) {
    assert_eq!(
        lines.first().map(String::as_str),
        Some("configured"),
        "{lines:?}"
    );
    let stride: u32 = lines[1]
        .strip_prefix("image stride ")
        .filter(|l| l.contains(" size "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("{lines:?}"))
        .parse()
        .unwrap();
    assert!(stride >= W * 4, "{lines:?}");
    assert_eq!(
        &lines[2..],
        [
            "buffer 96x64 host-blob",
            "frame 1",
            "frame 2",
            "frame 3",
            "shown",
            "released"
        ]
    );
}

/// Has `wl-copy --foreground TEXT` own the selection of `host`, as a host client (`wl-paste`)
/// sees it, within 20 s; returns the copying process. A probing wl-paste can take the keyboard
/// focus wl-copy waits for before it sets its selection, so wl-copy is restarted every 2 s.
pub fn host_selection(
    rt: &Runtime,
    host: &Host,
    (wl_copy, wl_paste): (&Path, &Path),
    text: &str,
) -> Process {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut copy = rt.client(wl_copy, &host.display);
        copy.args(["--foreground", text]);
        let copier = Process::spawn("wl-copy", &mut copy).unwrap();
        let retry = Instant::now() + Duration::from_secs(2);
        while Instant::now() < retry {
            let out = rt
                .client(wl_paste, &host.display)
                .arg("-n")
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == text {
                return copier;
            }
            assert!(Instant::now() < deadline, "wl-copy never set the selection");
            std::thread::sleep(Duration::from_millis(100));
        }
        copier.finish();
    }
}

/// `clipboard-paste`: wl-copy offers text/plain;charset=utf-8, the guest's first choice; the
/// text arrives whole.
pub fn assert_pasted(lines: &[String], text: &str) {
    assert_eq!(
        lines,
        [
            "configured".to_owned(),
            "offer text/plain;charset=utf-8".to_owned(),
            format!("pasted {text}")
        ]
    );
}
