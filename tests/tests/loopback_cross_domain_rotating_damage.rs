//! The copy path with buffers in rotation: `crossway-xd-guest rotating-window` draws into
//! three buffers of one guest blob in turn and damages only the ball it moved, as a client
//! using buffer age does. Through `crossway-proxy serve --no-udmabuf` (guest blobs copied into
//! host memfds at each commit) to the headless host, the last frame (the ball erased) must show
//! exactly pattern A: a host memfd refreshed with only the last commit's damage would still
//! hold the ball that buffer showed three frames earlier.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use crossway_tests::{Process, Runtime, eventually, pixels, workspace_binary};
use loopback_cross_domain_common::*;

#[test]
fn loopback_cross_domain_rotating_partial_damage_copy_path_shows_exact_pixels() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let control = host.control.clone().unwrap();
    let sock = rt.path().join("gpu.sock");
    let stats = rt.path().join("stats.json");
    let _serve = Process::spawn(
        "crossway-proxy serve",
        Command::new(workspace_binary("crossway-proxy").unwrap())
            .env("XDG_RUNTIME_DIR", rt.path())
            .args(["serve", "--no-udmabuf", "--socket-path"])
            .arg(&sock)
            .arg("--wayland-display")
            .arg(&host.display)
            .arg("--stats-file")
            .arg(&stats),
    )
    .unwrap();
    eventually(Duration::from_secs(20), || sock.exists());
    let hold = release_path(&rt, "rotating");
    let (w, h) = (96u32, 64u32);
    let guest = Process::spawn(
        "crossway-xd-guest",
        Command::new(workspace_binary("crossway-proxy").unwrap())
            .env("XDG_RUNTIME_DIR", rt.path())
            .args(["vm", "--serve-socket"])
            .arg(&sock)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_crossway-xd-guest"))
            .args(["rotating-window", "--title", "rotating", "--frames", "8"])
            .args(["--width", &w.to_string(), "--height", &h.to_string()])
            .arg("--hold-until")
            .arg(&hold)
            .stdin(Stdio::null()),
    )
    .unwrap();
    let checked = pixels::assert_window_pixels(
        &control,
        &rt.path().join("window.png"),
        "rotating",
        (w, h),
        |x, y| expected_pixel(x, y, w, h),
    );
    release(&hold);
    let (code, out, err) = guest.wait(Duration::from_secs(30)).unwrap();
    if let Err(e) = checked {
        panic!("{e:#}\nstdout:\n{out}\nstderr:\n{err}");
    }
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let mut want = vec!["configured".to_owned(), format!("buffer {w}x{h} rotating")];
    want.extend((1..=8).map(|n| format!("frame {n}")));
    want.extend(["shown".to_owned(), "released".to_owned()]);
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}
