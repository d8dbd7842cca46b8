//! `crossway-proxy filter` in front of weston 10 (headless backend, pixman): weston-simple-shm
//! draws through it (checked in weston's own screenshot), and wayland-info through it sees
//! only what the policy allows.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossway_tests::{Process, ProxyProcess, Runtime, require, start_weston, wayland_info_globals};

/// A screenshot of weston's output by weston-screenshooter (connected directly), in a fresh
/// directory: (width, height, bytes per pixel, pixels).
fn weston_screenshot(
    rt: &Runtime,
    screenshooter: &Path,
    socket: &Path,
    name: &str,
) -> (u32, u32, usize, Vec<u8>) {
    let dir = rt.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = rt.client(screenshooter, socket);
    cmd.current_dir(&dir);
    let (code, _, err) = Process::spawn("weston-screenshooter", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(10))
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let png: PathBuf = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    let mut decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    buf.truncate(frame.buffer_size());
    // Whatever the channel layout, pixels are compared as groups of `samples` bytes.
    let samples = frame.color_type.samples() * usize::from(frame.bit_depth as u8).div_ceil(8);
    (frame.width, frame.height, samples, buf)
}

/// A filter in front of weston at `socket`.
fn filter_on_weston(rt: &Runtime, socket: &Path) -> ProxyProcess {
    let display = socket.display().to_string();
    ProxyProcess::filter(rt, &["--wayland-display", &display]).unwrap()
}

#[test]
fn simple_shm_draws_on_weston_through_filter() {
    let test = "simple_shm_draws_on_weston_through_filter";
    let (Some(shm), Some(screenshooter)) = (
        require(test, "weston-simple-shm", "weston"),
        require(test, "weston-screenshooter", "weston"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let Some((_weston, socket)) = start_weston(&rt, test, "weston-0").unwrap() else {
        return;
    };
    let filter = filter_on_weston(&rt, &socket);
    let before = weston_screenshot(&rt, &screenshooter, &socket, "before");
    let mut client =
        Process::spawn("weston-simple-shm", &mut rt.client(shm, &filter.socket)).unwrap();
    // simple-shm redraws every frame; give it a few.
    let mut changed = 0;
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let after = weston_screenshot(&rt, &screenshooter, &socket, &format!("after-{i}"));
        assert_eq!((after.0, after.1), (before.0, before.1));
        changed = before
            .3
            .chunks(before.2)
            .zip(after.3.chunks(after.2))
            .filter(|(a, b)| a != b)
            .count();
        if changed > 10_000 {
            break;
        }
    }
    assert!(
        client.running(),
        "weston-simple-shm exited\n{}",
        filter.log_text()
    );
    assert!(
        changed > 10_000,
        "only {changed} pixels changed: no window drawn\n{}",
        filter.log_text()
    );
}

#[test]
fn wayland_info_through_filter_sees_only_allowed_globals() {
    let test = "wayland_info_through_filter_sees_only_allowed_globals";
    let Some(info) = require(test, "wayland-info", "wayland-utils") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let Some((_weston, socket)) = start_weston(&rt, test, "weston-0").unwrap() else {
        return;
    };
    let filter = filter_on_weston(&rt, &socket);
    let direct = wayland_info_globals(&rt, &info, &socket).unwrap();
    let filtered = wayland_info_globals(&rt, &info, &filter.socket).unwrap();
    for (interface, version) in &filtered {
        let offered = direct.get(interface);
        assert!(
            offered.is_some_and(|v| version <= v),
            "{interface} v{version} through the filter, host offers {offered:?}"
        );
    }
    // What a VM must never reach on weston: its shell, debug, screenshot and input-panel
    // interfaces.
    for denied in direct
        .keys()
        .filter(|i| i.starts_with("weston_") || *i == "zwp_input_panel_v1")
    {
        assert!(!filtered.contains_key(denied), "{denied} reached the guest");
    }
    for needed in ["wl_compositor", "wl_shm", "xdg_wm_base"] {
        assert!(
            filtered.contains_key(needed),
            "{needed} missing: {filtered:?}"
        );
    }
    assert!(
        filtered.len() < direct.len(),
        "nothing filtered: {filtered:?}"
    );
}
