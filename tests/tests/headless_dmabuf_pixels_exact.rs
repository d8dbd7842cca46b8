//! Our dmabuf client (memfd planes, LINEAR, a plane offset and a padded stride) shows exactly
//! its pixels, with `create` and with `create_immed`.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_headless::{Image, ToplevelMatch};
use crossway_tests::{Process, Runtime, pixels};

fn assert_exact(image: &Image, w: u32, h: u32) {
    let diff = pixels::compare(image, (w, h), |x, y| {
        pixels::opaque(pixels::test_client_rgb(x, y, w, h))
    });
    assert!(diff.exact(), "{diff}");
}

fn show(immed: bool, title: &str, extra: &[&str]) {
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("dmabuf").unwrap();
    let mut cmd = rt.client(
        env!("CARGO_BIN_EXE_crossway-test-client"),
        headless.socket_path(),
    );
    cmd.args(["--width", "70", "--height", "50", "--title", title])
        .args(extra);
    if immed {
        cmd.arg("--immed");
    }
    let client = Process::spawn("dmabuf-client", &mut cmd).unwrap();
    headless
        .wait_for_toplevel(&ToplevelMatch::title(title), Duration::from_secs(10))
        .unwrap();

    assert_exact(
        &headless
            .toplevel_image(&ToplevelMatch::title(title))
            .unwrap(),
        70,
        50,
    );
    let shot = headless.screenshot().unwrap();
    let mut region = Vec::new();
    for y in 0..50 {
        for x in 0..70 {
            region.extend(shot.pixel(x, y).unwrap());
        }
    }
    assert_exact(&Image::from_rgba(70, 50, region).unwrap(), 70, 50);

    let stats = headless.stats();
    assert_eq!(stats.dmabuf_imports, 1, "{stats:?}");
    assert_eq!(stats.dmabuf_commits, 1, "{stats:?}");
    assert_eq!(
        stats.formats.get("XR24:0x0000000000000000"),
        Some(&1),
        "{stats:?}"
    );

    let (out, _) = client.finish();
    // It read the feedback we advertise and picked LINEAR from it.
    assert!(out.contains("feedback main_device 0xe280"), "{out}");
    assert!(
        out.contains("feedback tranche flags 1 formats XR24:0x100000000000001,XR24:0x0"),
        "{out}"
    );
    assert!(out.contains("modifier 0x0000000000000000"), "{out}");
}

#[test]
fn dmabuf_with_offset_and_padded_stride_is_exact() {
    show(
        false,
        "offset-stride",
        &["--offset", "4096", "--stride", "512"],
    );
}

#[test]
fn dmabuf_create_immed_is_exact() {
    show(true, "immed", &["--offset", "12", "--stride", "300"]);
}
