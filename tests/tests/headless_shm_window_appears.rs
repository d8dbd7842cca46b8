//! weston-simple-shm, a real wl_shm client, shows its window on the headless compositor.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_headless::ToplevelMatch;
use crossway_tests::{Process, Runtime, require};

#[test]
fn simple_shm_pattern_is_on_screen() {
    let Some(program) = require(
        "simple_shm_pattern_is_on_screen",
        "weston-simple-shm",
        "weston",
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("shm").unwrap();
    let _client = Process::spawn(
        "weston-simple-shm",
        &mut rt.client(program, headless.socket_path()),
    )
    .unwrap();

    let window = headless
        .wait_for_toplevel(&ToplevelMatch::title("simple-shm"), Duration::from_secs(10))
        .unwrap();
    assert_eq!(window.rect, (0, 0, 250, 250), "{window:?}");
    // Let a few frames through (frame callbacks drive it), then look.
    std::thread::sleep(Duration::from_millis(300));
    let shot = headless.screenshot().unwrap();
    assert_eq!((shot.width, shot.height), (1280, 800));

    // simple-shm clears its buffer to white and paints its pattern 20 pixels in.
    for (x, y) in [(2, 2), (247, 2), (2, 247), (247, 247), (125, 5)] {
        assert_eq!(
            shot.pixel(x, y),
            Some([255, 255, 255, 255]),
            "border at ({x},{y})"
        );
    }
    let mut colours = std::collections::HashSet::new();
    for y in 20..230 {
        for x in 20..230 {
            colours.insert(shot.pixel(x, y));
        }
    }
    assert!(
        colours.len() > 50,
        "pattern has only {} colours",
        colours.len()
    );
    // Nothing is drawn outside the window: the background is the clear colour.
    let background = shot.pixel(600, 600).unwrap();
    assert_eq!(shot.pixel(251, 10), Some(background));
    assert_eq!(shot.pixel(10, 251), Some(background));
    assert!(!colours.contains(&Some(background)));

    // Frame callbacks keep the animation going: commits keep arriving.
    let before = headless.stats().commits;
    std::thread::sleep(Duration::from_millis(300));
    let stats = headless.stats();
    assert!(stats.commits > before + 5, "{before} -> {}", stats.commits);
    assert!(
        stats.shm_commits > 0 && stats.dmabuf_commits == 0,
        "{stats:?}"
    );
    assert!(
        stats.formats.keys().any(|k| k.starts_with("shm:")),
        "{stats:?}"
    );

    // The toplevel capture is the same pixels as that part of the screen.
    let own = headless
        .toplevel_image(&ToplevelMatch::title("simple-shm"))
        .unwrap();
    assert_eq!((own.width, own.height), (250, 250));
    assert_eq!(own.pixel(2, 2), Some([255, 255, 255, 255]));
}
