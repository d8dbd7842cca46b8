//! weston-simple-shm's request sequence (recorded in tests/fixtures/streams/), sent by
//! `crossway-xd-guest shm-window` over a cross-domain channel with a guest blob as the wl_shm
//! pool: through `crossway-proxy vm --vm-name` and `serve`, the window appears on the host
//! compositor tagged with the VM's name and shows exactly the pixels the guest drew. A second
//! variant runs the same stream against weston headless and finds the same pixels in weston's
//! own screenshot.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use loopback_cross_domain_common::*;

#[test]
fn loopback_cross_domain_shm_window_on_headless_tagged_with_exact_pixels() {
    let lines = window_on_headless("shm-window", "xd-shm");
    let expected = [
        "configured",
        "buffer 96x64 guest-blob",
        "frame 1",
        "frame 2",
        "frame 3",
        "shown",
        "released",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn loopback_cross_domain_shm_window_on_weston_shows_exact_pixels() {
    let test = "loopback_cross_domain_shm_window_on_weston_shows_exact_pixels";
    let Some(lines) = window_on_weston(test, "shm-window") else {
        return;
    };
    // Frame callbacks come only from a compositor that composed the committed buffer.
    assert_eq!(
        lines,
        [
            "configured",
            "buffer 96x64 guest-blob",
            "frame 1",
            "frame 2",
            "frame 3",
            "shown",
            "released"
        ]
    );
}
