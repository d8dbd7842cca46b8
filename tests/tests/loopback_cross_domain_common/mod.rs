//! What the `loopback_cross_domain_*` scenarios share: a host compositor in its own process
//! (`crossway-proxy headless` with its control socket, or weston headless) and
//! `crossway-proxy vm --wayland-display HOST [--vm-name NAME] -- crossway-xd-guest SCENARIO`.
//!
//! ```text
//!  crossway-xd-guest ─loopback socket─▶ vm (LoopbackVm) ─vhost-user─▶ serve ─wayland─▶ host
//! ```

#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossway_proxy::headless::Image;
use crossway_proxy::headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime, start_weston, workspace_binary};
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

/// `crossway-proxy vm` running `crossway-xd-guest ARGS` against `host`, tagged `vm_name`.
pub fn guest(rt: &Runtime, host: &Host, vm_name: Option<&str>, args: &[&str]) -> Result<Process> {
    let mut cmd = Command::new(workspace_binary("crossway-proxy")?);
    cmd.env("XDG_RUNTIME_DIR", rt.path())
        .args(["vm", "--wayland-display"])
        .arg(&host.display);
    if let Some(n) = vm_name {
        cmd.args(["--vm-name", n]);
    }
    cmd.arg("--")
        .arg(env!("CARGO_BIN_EXE_crossway-xd-guest"))
        .args(args)
        .stdin(Stdio::null());
    Process::spawn("crossway-proxy vm", &mut cmd)
}

/// Runs a guest scenario to its end; returns its stdout lines, failing with its output when it
/// did not exit 0.
pub fn run_guest(
    rt: &Runtime,
    host: &Host,
    vm_name: Option<&str>,
    args: &[&str],
) -> Result<Vec<String>> {
    let (code, out, err) = guest(rt, host, vm_name, args)?.wait(Duration::from_secs(90))?;
    if code != Some(0) {
        bail!("guest {args:?} exited {code:?}\nstdout:\n{out}\nstderr:\n{err}");
    }
    Ok(out.lines().map(str::to_owned).collect())
}

/// The pattern `crossway-xd-guest` draws, as RGBA: quadrants red, green, blue, white.
pub fn expected_pixel(x: u32, y: u32, w: u32, h: u32) -> [u8; 4] {
    match (x < w / 2, y < h / 2) {
        (true, true) => [255, 0, 0, 255],
        (false, true) => [0, 255, 0, 255],
        (true, false) => [0, 0, 255, 255],
        (false, false) => [255, 255, 255, 255],
    }
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
/// `host` as VM `vm1`, holding it until [`release`] of the returned path.
fn hold_window(rt: &Runtime, host: &Host, scenario: &str, title: &str) -> (Process, PathBuf) {
    let hold = release_path(rt, scenario);
    let (w, h) = (W.to_string(), H.to_string());
    let guest = guest(
        rt,
        host,
        Some("vm1"),
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

/// Calls `look` every 50 ms until it is true or 20 s have passed; true if it ever was.
pub fn eventually(mut look: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if look() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `scenario` holding its window, checks title, app id and pixels on the headless host,
/// releases it and returns the guest's lines.
pub fn window_on_headless(scenario: &str, title: &str) -> Vec<String> {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let control = host.control.clone().unwrap();
    let (guest, hold) = hold_window(&rt, &host, scenario, title);
    let tagged = format!("[vm1] {title}");
    let found = request(
        &control,
        &json!({"wait_toplevel": {"title": tagged, "timeout_ms": 30000}}),
    );
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            release(&hold);
            let (out, err) = guest.finish();
            let all = request(&control, &json!({"toplevels": null}));
            panic!(
                "no toplevel {tagged:?}: {e:#}\ntoplevels: {all:?}\nstdout:\n{out}\nstderr:\n{err}"
            );
        }
    };
    assert_eq!(found["app_id"], json!("vm1.xd-guest.window"), "{found}");
    // The first frames may still be on their way: look until the pixels are all there.
    let png = rt.path().join("window.png");
    let mut wrong = 0;
    eventually(|| {
        request(
            &control,
            &json!({"toplevel_screenshot": {"title": tagged, "path": png}}),
        )
        .unwrap();
        let shot = Image::load_png(&png).unwrap();
        assert_eq!((shot.width, shot.height), (W, H));
        wrong = (0..H)
            .flat_map(|y| (0..W).map(move |x| (x, y)))
            .filter(|&(x, y)| shot.pixel(x, y) != Some(expected_pixel(x, y, W, H)))
            .count();
        wrong == 0
    });
    assert_eq!(wrong, 0, "pixels differ from the guest's pattern");
    release_window(guest, &hold)
}

/// Runs `scenario` holding its window on weston and finds the guest's exact pattern in
/// weston's own screenshot (weston-screenshooter), then releases it and returns the guest's
/// lines; `None` after a `SKIP:` line when weston is missing.
pub fn window_on_weston(test: &str, scenario: &str) -> Option<Vec<String>> {
    let screenshooter = crossway_tests::require(test, "weston-screenshooter", "weston")?;
    let rt = Runtime::new().unwrap();
    let host = weston(&rt, test, "weston-0").unwrap()?;
    let (guest, hold) = hold_window(&rt, &host, scenario, "xd-weston");
    let mut shots = 0;
    let mut at = None;
    eventually(|| {
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
