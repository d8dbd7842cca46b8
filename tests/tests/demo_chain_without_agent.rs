//! `crossway-proxy demo --no-agent`: the demo's orchestration with `crossway-xd-guest
//! shm-window` standing in for agent + app (it speaks cross-domain itself). headless, serve
//! and vm run as separate processes; the window's pixels reach the screenshot, stats.json holds
//! serve's counters and the host's view of the window, and nothing is left behind, whether the
//! run ends by itself or by SIGTERM.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crossway_headless::Image;
use crossway_tests::{Process, Runtime, eventually, workspace_binary};

fn demo(rt: &Runtime, out: &Path, extra: &[&str]) -> anyhow::Result<Process> {
    let proxy = workspace_binary("crossway-proxy")?;
    // The demo finds its guest program next to itself.
    let guest = Path::new(env!("CARGO_BIN_EXE_crossway-xd-guest"));
    assert_eq!(guest.parent(), proxy.parent(), "binaries in different dirs");
    Process::spawn(
        "crossway-proxy demo",
        Command::new(proxy)
            .env("XDG_RUNTIME_DIR", rt.path())
            .env("TMPDIR", rt.path())
            .env_remove("WAYLAND_DISPLAY")
            .arg("demo")
            .arg("--no-agent")
            .arg("--out")
            .arg(out)
            .args(extra),
    )
}

/// Processes whose command line mentions `dir` (the demo's children all do).
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if cmdline.contains(&needle) && !zombie {
            found.push(cmdline);
        }
    }
    found
}

/// The demo's `stats.json` in `out`.
fn read_stats(out: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        out.join("stats.json"),
    )?)?)
}

fn only_out_left(rt: &Runtime) -> Vec<String> {
    std::fs::read_dir(rt.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "out")
        .collect()
}

#[test]
fn demo_without_agent_shows_window_and_writes_outputs() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let out = rt.path().join("out");
    let (code, stdout, stderr) =
        demo(&rt, &out, &["--duration", "2"])?.wait(Duration::from_secs(120))?;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(r#"window on the host: title "[demo] xd-guest", app id "demo.xd-guest""#),
        "{stdout}"
    );
    assert!(
        stderr.contains("demo running"),
        "no progress line: {stderr}"
    );

    let stats = read_stats(&out)?;
    assert_eq!(stats["vm_name"], "demo");
    assert!(stats["frames"].as_u64().unwrap() > 10, "{stats}");
    assert!(stats["fps"].as_f64().unwrap() > 1.0, "{stats}");
    let b = &stats["buffers"];
    let buffers = ["dmabuf_zero_copy", "shm_zero_copy", "copy"]
        .iter()
        .map(|k| b[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(buffers, 2, "xd-guest makes two buffers: {stats}");
    assert!(stats["messages"]["to_host"].as_u64().unwrap() > 0);
    assert!(stats["messages"]["to_guest"].as_u64().unwrap() > 0);
    assert_eq!(stats["relay"]["total"]["frames"], stats["frames"]);
    assert!(stats["latency"].is_null());
    assert!(
        stats["latency_error"]
            .as_str()
            .unwrap()
            .contains("no-agent")
    );
    assert_eq!(stats["screenshot"], "screenshot.png");
    let window = &stats["toplevels"][0];
    assert_eq!(window["title"], "[demo] xd-guest");
    assert_eq!(window["app_id"], "demo.xd-guest");
    assert_eq!(window["security_context_app_id"], "demo");

    // The window's quadrants at the place the host put it.
    let image = Image::load_png(&out.join("screenshot.png"))?;
    let rect: Vec<u32> = window["rect"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| u32::try_from(v.as_i64().unwrap()).unwrap())
        .collect();
    let (x, y, w, h) = (rect[0], rect[1], rect[2], rect[3]);
    assert_eq!((w, h), (96, 64));
    let at = |fx: u32, fy: u32| image.pixel(x + w * fx / 4, y + h * fy / 4).unwrap();
    assert_eq!(at(1, 1), [255, 0, 0, 255], "top left red");
    assert_eq!(at(3, 1), [0, 255, 0, 255], "top right green");
    assert_eq!(at(1, 3), [0, 0, 255, 255], "bottom left blue");
    assert_eq!(at(3, 3), [255, 255, 255, 255], "bottom right white");

    for log in ["headless.log", "serve.log", "guest.log"] {
        assert!(out.join("logs").join(log).is_file(), "{log} missing");
    }
    assert_eq!(only_out_left(&rt), Vec::<String>::new());
    assert_eq!(processes_using(rt.path()), Vec::<String>::new());
    Ok(())
}

#[test]
fn demo_sigterm_stops_every_process_and_still_writes_stats() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let out = rt.path().join("out");
    let process = demo(&rt, &out, &["--duration", "600"])?;
    let pid = rustix::process::Pid::from_raw(process.id().unwrap() as i32).unwrap();
    // Wait until the window is up: the first screenshot is taken then.
    assert!(
        eventually(Duration::from_secs(90), || out
            .join("screenshot.png")
            .exists()),
        "no screenshot"
    );
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let (code, stdout, stderr) = process.wait(Duration::from_secs(60))?;
    assert_eq!(code, Some(130), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let stats = read_stats(&out)?;
    assert_eq!(stats["app_end"], "interrupted");
    assert!(stats["frames"].as_u64().unwrap() > 0);
    assert_eq!(only_out_left(&rt), Vec::<String>::new());
    assert_eq!(processes_using(rt.path()), Vec::<String>::new());
    Ok(())
}

#[test]
fn demo_guest_failing_before_its_window_is_an_error_with_its_log() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let out = rt.path().join("out");
    let (code, _, stderr) = demo(&rt, &out, &["--", "sh", "-c", "echo guest-gave-up; exit 3"])?
        .wait(Duration::from_secs(60))?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("before its window appeared"), "{stderr}");
    assert!(
        stderr.contains("guest-gave-up"),
        "log tail missing: {stderr}"
    );
    assert_eq!(only_out_left(&rt), Vec::<String>::new());
    assert_eq!(processes_using(rt.path()), Vec::<String>::new());
    Ok(())
}

#[test]
fn demo_host_mode_shows_the_window_on_wayland_display() -> anyhow::Result<()> {
    use crossway_tests::ProxyProcess;
    let rt = Runtime::new()?;
    let desktop = ProxyProcess::start(&rt, "desktop", ["headless", "--socket", "desktop-0"])?;
    let control = desktop.control.clone().unwrap();
    let out = rt.path().join("out");
    let proxy = workspace_binary("crossway-proxy")?;
    let (code, stdout, stderr) = Process::spawn(
        "crossway-proxy demo --host",
        Command::new(proxy)
            .env("XDG_RUNTIME_DIR", rt.path())
            // A bare name, as a desktop session sets it.
            .env("WAYLAND_DISPLAY", "desktop-0")
            .args(["demo", "--no-agent", "--host", "--duration", "1", "--out"])
            .arg(&out),
    )?
    .wait(Duration::from_secs(120))?;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let stats = read_stats(&out)?;
    assert!(stats["screenshot"].is_null(), "{stats}");
    assert!(stats["frames"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["host"].as_str().unwrap().contains("desktop-0"),
        "{stats}"
    );
    assert!(!out.join("screenshot.png").exists());
    // The desktop's compositor had the guest's client (the probe plus the window's).
    let host =
        crossway_headless::control::request(&control, &serde_json::json!({ "stats": null }))?;
    assert!(host["clients"].as_u64().unwrap() >= 1, "{host}");
    assert!(host["shm_commits"].as_u64().unwrap() > 0, "{host}");
    Ok(())
}
