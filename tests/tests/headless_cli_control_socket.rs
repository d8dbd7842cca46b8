//! `crossway-proxy headless` as its own process: clients connect to its socket, and another
//! process asks it over the control socket for toplevels, a screenshot and counters.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crossway_headless::Image;
use crossway_headless::control::request;
use crossway_tests::{Process, Runtime, workspace_binary};
use serde_json::json;

#[test]
fn control_socket_serves_toplevels_screenshots_and_stats() {
    let rt = Runtime::new().unwrap();
    let socket = rt.path().join("cli-0");
    let mut proxy = Command::new(workspace_binary("crossway-proxy").unwrap())
        .args(["headless", "--socket"])
        .arg(&socket)
        .args(["--size", "320x240"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It prints where it listens, then serves until killed.
    let mut lines = BufReader::new(proxy.stdout.take().unwrap()).lines();
    let display = lines.next().unwrap().unwrap();
    assert_eq!(display, format!("WAYLAND_DISPLAY={}", socket.display()));
    let control: PathBuf = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("CROSSWAY_HEADLESS_CONTROL=")
        .unwrap()
        .into();

    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &socket);
    cmd.args(["--title", "via-control", "--width", "40", "--height", "30"]);
    let _client = Process::spawn("dmabuf-client", &mut cmd).unwrap();

    let found = request(
        &control,
        &json!({"wait_toplevel": {"title": "via-control", "timeout_ms": 10000}}),
    )
    .unwrap();
    assert_eq!(found["rect"], json!([0, 0, 40, 30]), "{found}");
    assert_eq!(found["app_id"], json!("crossway.test-client"));

    let png = rt.path().join("shot.png");
    let size = request(&control, &json!({"screenshot": png})).unwrap();
    assert_eq!(size, json!({"width": 320, "height": 240}));
    let shot = Image::load_png(&png).unwrap();
    assert_eq!(
        shot.pixel(15, 10),
        Some([255, 0, 0, 255]),
        "top-left quadrant is red"
    );
    assert_eq!(
        shot.pixel(30, 25),
        Some([255, 255, 255, 255]),
        "bottom-right quadrant is white"
    );
    assert_ne!(
        shot.pixel(41, 0),
        Some([0, 255, 0, 255]),
        "nothing right of the window"
    );

    let own = rt.path().join("own.png");
    request(
        &control,
        &json!({"toplevel_screenshot": {"title": "via-control", "path": own}}),
    )
    .unwrap();
    assert_eq!(
        (
            Image::load_png(&own).unwrap().width,
            Image::load_png(&own).unwrap().height
        ),
        (40, 30)
    );

    let stats = request(&control, &json!({"stats": null})).unwrap();
    assert_eq!(stats["dmabuf_imports"], json!(1), "{stats}");
    assert_eq!(stats["clients"], json!(1), "{stats}");

    // Bad requests get an error, and the connection's server keeps going.
    let err = request(&control, &json!({"frobnicate": 1})).unwrap_err();
    assert!(format!("{err:#}").contains("bad request"), "{err:#}");
    let err = request(
        &control,
        &json!({"toplevel_screenshot": {"title": "nope", "path": own}}),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("no toplevel"), "{err:#}");
    assert!(
        request(&control, &json!({"toplevels": null}))
            .unwrap()
            .is_array()
    );

    let _ = proxy.kill();
    let _ = proxy.wait();
}

#[test]
fn screenshot_after_delay_writes_png_and_exits() {
    let rt = Runtime::new().unwrap();
    let png = rt.path().join("empty.png");
    let out = Command::new(workspace_binary("crossway-proxy").unwrap())
        .args([
            "headless",
            "--socket",
            "shot-0",
            "--size",
            "64x32",
            "--after",
            "100",
            "--screenshot",
        ])
        .arg(&png)
        .env("XDG_RUNTIME_DIR", rt.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shot = Image::load_png(&png).unwrap();
    assert_eq!((shot.width, shot.height), (64, 32));
    // No client: every pixel is the background.
    let first = shot.pixel(0, 0);
    assert!((0..64).all(|x| (0..32).all(|y| shot.pixel(x, y) == first)));
    assert!(String::from_utf8_lossy(&out.stdout).contains("screenshot 64x32 written"));
    // The socket is cleaned up on exit.
    assert!(!rt.path().join("shot-0").exists());
}
