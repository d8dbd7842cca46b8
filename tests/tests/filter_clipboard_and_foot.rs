//! Through `crossway-proxy filter`: wl-copy/wl-paste move a selection (pipes pass the relay
//! in both directions) and foot renders text (its keymap memfd comes from the host).
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime, paste, require};
use serde_json::json;

fn filter_on_headless(rt: &Runtime) -> ProxyProcess {
    ProxyProcess::filter(rt, &["--headless", "--vm-name", "clip"]).unwrap()
}

#[test]
fn selection_round_trips_through_filter() {
    let test = "selection_round_trips_through_filter";
    let (Some(copy), Some(wl_paste)) = (
        require(test, "wl-copy", "wl-clipboard"),
        require(test, "wl-paste", "wl-clipboard"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let filter = filter_on_headless(&rt);
    let text = "through the filter ✓ 0123456789";
    let mut copier = rt
        .client(&copy, &filter.socket)
        .arg("--foreground")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    copier
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let pasted = paste(&rt, &wl_paste, &filter.socket, &[]).unwrap();
    let _ = copier.kill();
    let _ = copier.wait();
    assert_eq!(pasted, text, "filter log:\n{}", filter.log_text());
}

#[test]
fn foot_renders_through_filter() {
    let Some(foot) = require("foot_renders_through_filter", "foot", "foot") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let filter = filter_on_headless(&rt);
    let control = filter.control.clone().unwrap();
    let mut cmd = rt.client(foot, &filter.socket);
    cmd.env("HOME", rt.path()).args([
        "--config=/dev/null",
        "--title=foot-filtered",
        "sh",
        "-c",
        "printf 'CROSSWAY FILTER %s\\n' ok; sleep 30",
    ]);
    let mut terminal = Process::spawn("foot", &mut cmd).unwrap();
    let mut colours = 0;
    let png = rt.path().join("foot.png");
    for _ in 0..100 {
        let shot = request(
            &control,
            &json!({"toplevel_screenshot": {"title": "[clip] foot-filtered", "path": png}}),
        )
        .ok()
        .and_then(|_| crossway_headless::Image::load_png(&png).ok());
        if let Some(image) = shot {
            let distinct: std::collections::HashSet<_> = image.rgba.chunks(4).collect();
            colours = distinct.len();
            if colours > 4 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !terminal.running() {
        let (out, err) = terminal.finish();
        panic!(
            "foot exited\n{out}\n{err}\nfilter log:\n{}",
            filter.log_text()
        );
    }
    assert!(
        colours > 4,
        "foot's window has only {colours} colours: no text drawn\n{}",
        filter.log_text()
    );
}
