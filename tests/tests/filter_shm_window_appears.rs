//! weston-simple-shm and crossway-test-client (shm and dmabuf) draw through
//! `crossway-proxy filter` into a `crossway-proxy headless` process: their windows appear in
//! the compositor's toplevel list and their pixels in its screenshot.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::path::Path;

use crossway_headless::Image;
use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime, require};
use serde_json::{Value, json};

/// A headless compositor process and a filter in front of it.
fn headless_and_filter(rt: &Runtime, extra: &[&str]) -> (ProxyProcess, ProxyProcess) {
    let headless_socket = rt.path().join("host-0");
    let headless = ProxyProcess::start(
        rt,
        "headless",
        [
            "headless".as_ref(),
            "--socket".as_ref(),
            headless_socket.as_os_str(),
            "--size".as_ref(),
            "640x480".as_ref(),
        ],
    )
    .unwrap();
    let mut args = vec![
        "filter".to_owned(),
        "--listen".into(),
        rt.path().join("filter-0").display().to_string(),
        "--wayland-display".into(),
        headless.socket.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let filter = ProxyProcess::start(rt, "filter", &args).unwrap();
    (headless, filter)
}

fn wait_toplevel(control: &Path, title: &str, filter: &ProxyProcess) -> Value {
    request(
        control,
        &json!({"wait_toplevel": {"title": title, "timeout_ms": 15000}}),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nfilter log:\n{}", filter.log_text()))
}

#[test]
fn simple_shm_window_appears_through_filter() {
    let Some(shm) = require(
        "simple_shm_window_appears_through_filter",
        "weston-simple-shm",
        "weston",
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let (headless, filter) = headless_and_filter(&rt, &[]);
    let control = headless.control.clone().unwrap();
    let _client = Process::spawn("weston-simple-shm", &mut rt.client(shm, &filter.socket)).unwrap();
    let found = wait_toplevel(&control, "simple-shm", &filter);
    assert_eq!(found["mapped"], json!(true), "{found}");

    let png = rt.path().join("shot.png");
    request(&control, &json!({"screenshot": png})).unwrap();
    let shot = Image::load_png(&png).unwrap();
    let background = shot.pixel(shot.width - 1, shot.height - 1).unwrap();
    let rect = &found["rect"];
    let (x, y, w, h) = (
        rect[0].as_u64().unwrap() as u32,
        rect[1].as_u64().unwrap() as u32,
        rect[2].as_u64().unwrap() as u32,
        rect[3].as_u64().unwrap() as u32,
    );
    let drawn = (y..y + h)
        .flat_map(|py| (x..x + w).map(move |px| (px, py)))
        .filter(|&(px, py)| shot.pixel(px, py).is_some_and(|p| p != background))
        .count();
    assert!(
        drawn > (w * h / 4) as usize,
        "only {drawn} of {}x{} window pixels differ from the background",
        w,
        h
    );
}

fn test_client_through_filter(buffer: &str) {
    let rt = Runtime::new().unwrap();
    let (headless, filter) = headless_and_filter(&rt, &[]);
    let control = headless.control.clone().unwrap();
    let title = format!("filter-{buffer}");
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    cmd.args(["--title", &title, "--width", "40", "--height", "30"])
        .args(["--buffer", buffer]);
    let _client = Process::spawn("test-client", &mut cmd).unwrap();
    let found = wait_toplevel(&control, &title, &filter);
    assert_eq!(found["rect"][2], json!(40), "{found}");
    assert_eq!(found["rect"][3], json!(30), "{found}");

    let own = rt.path().join("own.png");
    request(
        &control,
        &json!({"toplevel_screenshot": {"title": title, "path": own}}),
    )
    .unwrap();
    let image = Image::load_png(&own).unwrap();
    // The test client's pattern: red, green, blue and white quadrants.
    assert_eq!(image.pixel(15, 10), Some([255, 0, 0, 255]), "top-left red");
    assert_eq!(
        image.pixel(30, 10),
        Some([0, 255, 0, 255]),
        "top-right green"
    );
    assert_eq!(
        image.pixel(10, 25),
        Some([0, 0, 255, 255]),
        "bottom-left blue"
    );
    assert_eq!(
        image.pixel(30, 25),
        Some([255, 255, 255, 255]),
        "bottom-right white"
    );
    let stats = request(&control, &json!({"stats": null})).unwrap();
    let key = if buffer == "shm" {
        "shm_commits"
    } else {
        "dmabuf_commits"
    };
    assert!(stats[key].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn test_client_shm_through_filter() {
    test_client_through_filter("shm");
}

#[test]
fn test_client_dmabuf_through_filter() {
    test_client_through_filter("dmabuf");
}
