//! weston-subsurfaces draws into a main surface and two sub-surfaces (one through EGL, which
//! Mesa turns into wl_shm without a GPU); the toplevel's capture holds all three.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_headless::ToplevelMatch;
use crossway_tests::{Process, Runtime, require};

#[test]
fn subsurfaces_are_composed_into_the_window() {
    let Some(program) = require(
        "subsurfaces_are_composed_into_the_window",
        "weston-subsurfaces",
        "weston",
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("sub").unwrap();
    let mut cmd = rt.client(program, headless.socket_path());
    cmd.env("LIBGL_ALWAYS_SOFTWARE", "1");
    let _client = Process::spawn("weston-subsurfaces", &mut cmd).unwrap();
    let title = ToplevelMatch::title("Wayland Sub-surface Demo");
    headless
        .wait_for_toplevel(&title, Duration::from_secs(15))
        .unwrap();

    // The main surface is green, the cairo sub-surface red (both wl_shm); count them once the
    // sub-surfaces have drawn.
    let (mut red, mut green) = (0, 0);
    for _ in 0..50 {
        let image = headless.toplevel_image(&title).unwrap();
        red = image
            .rgba
            .chunks(4)
            .filter(|p| p[0] > 140 && p[1] < 60 && p[2] < 60)
            .count();
        green = image
            .rgba
            .chunks(4)
            .filter(|p| p[1] > 140 && p[0] < 60 && p[2] < 60)
            .count();
        if red > 2000 && green > 10_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(green > 10_000, "main surface: {green} green pixels");
    assert!(red > 2000, "red sub-surface: {red} red pixels");
}
