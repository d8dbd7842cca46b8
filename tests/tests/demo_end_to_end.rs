//! `crossway-proxy demo`, the README's main command, end to end: headless compositor, `serve`,
//! the loopback VM, `crossway-agent` inside it and a guest app, each its own process. With
//! defaults (our animated test client) and with `-- weston-simple-shm`, the window's pixels
//! reach the host's screenshot, stats.json holds the relay's counters, the sync latency
//! through the chain and the window as the host sees it, and the demo exits 0 leaving nothing
//! behind.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crossway_headless::Image;
use crossway_tests::{Process, Runtime, require, workspace_binary};

/// Runs the demo with `args`; returns stdout, stats.json and the screenshot.
fn run_demo(rt: &Runtime, args: &[&str]) -> anyhow::Result<(String, serde_json::Value, Image)> {
    let proxy = workspace_binary("crossway-proxy")?;
    let agent = workspace_binary("crossway-agent")?;
    // The demo finds its binaries next to itself.
    let client = Path::new(env!("CARGO_BIN_EXE_crossway-test-client"));
    assert_eq!(agent.parent(), proxy.parent());
    assert_eq!(client.parent(), proxy.parent());
    let out = rt.path().join("out");
    let (code, stdout, stderr) = Process::spawn(
        "crossway-proxy demo",
        Command::new(proxy)
            .env("XDG_RUNTIME_DIR", rt.path())
            .env("TMPDIR", rt.path())
            .env_remove("WAYLAND_DISPLAY")
            .arg("demo")
            .arg("--out")
            .arg(&out)
            .args(args),
    )?
    .wait(Duration::from_secs(180))?;
    let logs = ["guest.log", "serve.log", "headless.log"]
        .map(|l| std::fs::read_to_string(out.join("logs").join(l)).unwrap_or_default())
        .join("\n");
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nlogs:\n{logs}"
    );
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("stats.json"))?)?;
    let image = Image::load_png(&out.join("screenshot.png"))?;
    // Only the output folder is left: sockets and the private directory are gone.
    let left: Vec<_> = std::fs::read_dir(rt.path())?
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "out")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok((stdout, stats, image))
}

fn check_common(stats: &serde_json::Value) {
    assert_eq!(stats["vm_name"], "demo");
    assert!(stats["frames"].as_u64().unwrap() > 5, "{stats}");
    assert!(stats["fps"].as_f64().unwrap() > 1.0, "{stats}");
    let b = &stats["buffers"];
    let all: u64 = ["dmabuf_zero_copy", "shm_zero_copy", "copy"]
        .iter()
        .map(|k| b[k].as_u64().unwrap())
        .sum();
    assert!(all >= 1, "{stats}");
    // Every buffer was on some path, and the ratio says which share avoided copies.
    let ratio = stats["zero_copy"]["ratio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ratio), "{stats}");
    if b["copy"].as_u64().unwrap() > 0 {
        assert!(stats["bytes_copied"].as_u64().unwrap() > 0, "{stats}");
    }
    assert!(stats["messages"]["to_host"].as_u64().unwrap() > 0);
    assert!(stats["messages"]["to_guest"].as_u64().unwrap() > 0);
    let l = &stats["latency"];
    assert_eq!(l["samples"], 200, "{stats}");
    let p = |k: &str| l[k].as_f64().unwrap();
    assert!(p("p50_us") > 0.0 && p("p50_us") <= p("p90_us") && p("p90_us") <= p("p99_us"));
    assert_eq!(stats["screenshot"], "screenshot.png");
    assert_eq!(
        stats["app_end"],
        "stopped by the demo at the end of the run"
    );
}

/// The rectangle (x, y, w, h) of the host's toplevel titled `title`, whose app id must start
/// with `demo.`.
fn window(stats: &serde_json::Value, title: &str) -> (u32, u32, u32, u32) {
    let t = stats["toplevels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["title"] == title)
        .unwrap_or_else(|| panic!("no toplevel {title:?}: {stats}"));
    assert!(
        t["app_id"].as_str().unwrap().starts_with("demo."),
        "{stats}"
    );
    let r: Vec<u32> = t["rect"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| u32::try_from(v.as_i64().unwrap()).unwrap())
        .collect();
    (r[0], r[1], r[2], r[3])
}

#[test]
fn demo_default_test_client_end_to_end() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let (stdout, stats, image) = run_demo(&rt, &["--duration", "3"])?;
    check_common(&stats);
    assert!(stdout.contains("zero-copy ratio"), "{stdout}");
    assert!(stdout.contains("p50"), "{stdout}");
    // The default app draws into virtio-gpu guest blobs: the agent forwards both by resource
    // id and copies nothing; the proxy shows them on the guest-blob path.
    let agent = &stats["agent"];
    assert_eq!(agent["dmabufs_forwarded"], 2, "{stats}");
    assert_eq!(agent["dmabufs_copied"], 0, "{stats}");
    assert_eq!(agent["bytes_copied"], 0, "{stats}");
    assert!(stdout.contains("forwarded by resource id"), "{stdout}");
    let (x, y, w, h) = window(&stats, "[demo] crossway demo");
    assert_eq!((w, h), (480, 320));
    assert_eq!(
        stats["toplevels"][0]["app_id"], "demo.crossway.test-client",
        "{stats}"
    );
    // The pattern scrolls sideways: the top half holds red and green, the bottom half blue and
    // white, whatever the frame.
    let row = |fy: u32| -> HashSet<[u8; 4]> {
        (0..w)
            .map(|dx| image.pixel(x + dx, y + h * fy / 4).unwrap())
            .collect()
    };
    assert_eq!(
        row(1),
        HashSet::from([[255, 0, 0, 255], [0, 255, 0, 255]]),
        "top half"
    );
    assert_eq!(
        row(3),
        HashSet::from([[0, 0, 255, 255], [255, 255, 255, 255]]),
        "bottom half"
    );
    Ok(())
}

#[test]
fn demo_weston_simple_shm_end_to_end() -> anyhow::Result<()> {
    let Some(program) = require(
        "demo_weston_simple_shm_end_to_end",
        "weston-simple-shm",
        "weston",
    ) else {
        return Ok(());
    };
    let rt = Runtime::new()?;
    let program = program.to_string_lossy().into_owned();
    let (_, stats, image) = run_demo(&rt, &["--duration", "2", "--", &program])?;
    check_common(&stats);
    let (x, y, w, h) = window(&stats, "[demo] simple-shm");
    assert_eq!((w, h), (250, 250));
    // simple-shm clears to white and paints a many-coloured pattern 20 pixels in.
    assert_eq!(image.pixel(x + 2, y + 2), Some([255, 255, 255, 255]));
    let mut colours = HashSet::new();
    for dy in 20..230 {
        for dx in 20..230 {
            colours.insert(image.pixel(x + dx, y + dy));
        }
    }
    assert!(colours.len() > 50, "only {} colours", colours.len());
    Ok(())
}
