//! weston-simple-shm's request sequence (recorded in tests/fixtures/streams/), sent by
//! `crossway-xd-guest shm-window` over a cross-domain channel with a guest blob as the wl_shm
//! pool: through `crossway-proxy vm --vm-name` and `serve`, the window appears on the host
//! compositor tagged with the VM's name and shows exactly the pixels the guest drew. A second
//! variant runs the same stream against weston headless.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use crossway_tests::Runtime;
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
fn loopback_cross_domain_shm_window_on_weston_draws_frames() {
    let test = "loopback_cross_domain_shm_window_on_weston_draws_frames";
    let rt = Runtime::new().unwrap();
    let Some(host) = weston(&rt, test, "weston-0").unwrap() else {
        return;
    };
    let lines = run_guest(&rt, &host, Some("vm1"), &["shm-window", "--frames", "3"]).unwrap();
    // Frame callbacks come only from a compositor that composed the committed buffer.
    assert_eq!(
        lines,
        [
            "configured",
            "buffer 96x64 guest-blob",
            "frame 1",
            "frame 2",
            "frame 3",
            "shown"
        ]
    );
}
