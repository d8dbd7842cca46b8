//! What the `loopback_cross_domain_*` scenarios share: a host compositor in its own process
//! (`crossway-proxy headless` with its control socket, or weston headless) and
//! `crossway-proxy vm --wayland-display HOST [--vm-name NAME] -- crossway-xd-guest SCENARIO`.
//!
//! ```text
//!  crossway-xd-guest ─loopback socket─▶ vm (LoopbackVm) ─vhost-user─▶ serve ─wayland─▶ host
//! ```

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossway_proxy::headless::Image;
use crossway_proxy::headless::control::request;
use crossway_tests::{Process, Runtime, workspace_binary};
use serde_json::json;

/// A host compositor process, killed on drop.
pub struct Host {
    child: Child,
    /// Its Wayland socket.
    pub display: PathBuf,
    /// The headless control socket (None for weston).
    pub control: Option<PathBuf>,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `crossway-proxy headless` on `name` in `rt`, 640x480.
pub fn headless(rt: &Runtime, name: &str) -> Result<Host> {
    let socket = rt.path().join(name);
    let mut child = Command::new(workspace_binary("crossway-proxy")?)
        .env("XDG_RUNTIME_DIR", rt.path())
        .args(["headless", "--socket"])
        .arg(&socket)
        .args(["--size", "640x480"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let display = lines
        .next()
        .context("headless printed nothing")??
        .strip_prefix("WAYLAND_DISPLAY=")
        .context("no WAYLAND_DISPLAY line")?
        .into();
    let control = lines
        .next()
        .context("headless printed no control line")??
        .strip_prefix("CROSSWAY_HEADLESS_CONTROL=")
        .context("no control line")?
        .into();
    Ok(Host {
        child,
        display,
        control: Some(control),
    })
}

/// weston 10 headless with the pixman renderer, if installed (else a `SKIP:` line).
pub fn weston(rt: &Runtime, test: &str, name: &str) -> Result<Option<Host>> {
    let Some(weston) = crossway_tests::require(test, "weston", "weston") else {
        return Ok(None);
    };
    let child = Command::new(weston)
        .env("XDG_RUNTIME_DIR", rt.path())
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .args([
            "--backend=headless-backend.so",
            "--use-pixman",
            "--width=640",
            "--height=480",
            "--no-config",
            "--idle-time=0",
        ])
        .arg(format!("--socket={name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let display = rt.path().join(name);
    let mut host = Host {
        child,
        display,
        control: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !host.display.exists() {
        if let Some(status) = host.child.try_wait()? {
            bail!("weston exited before listening ({status})");
        }
        if Instant::now() > deadline {
            bail!("weston never listened");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(host))
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

/// Runs `scenario` holding its window, checks title, app id and pixels on the headless host,
/// releases it and returns the guest's lines.
pub fn window_on_headless(scenario: &str, title: &str) -> Vec<String> {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let control = host.control.clone().unwrap();
    let hold = release_path(&rt, scenario);
    let (w, h) = (W.to_string(), H.to_string());
    let guest = guest(
        &rt,
        &host,
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut wrong;
    loop {
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
        if wrong == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(wrong, 0, "pixels differ from the guest's pattern");
    release(&hold);
    let (code, out, err) = guest.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    out.lines().map(str::to_owned).collect()
}
