//! Host fds reach the guest as blob items: `crossway-xd-guest keymap` binds wl_seat, gets the
//! keyboard, and the compositor's keymap memfd arrives as a RECEIVE identifier of type blob
//! with its size; the guest creates a HOST3D blob from it, maps it and reads "xkb_keymap".
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use crossway_tests::Runtime;
use loopback_cross_domain_common::{assert_keymap, headless, run_guest};

#[test]
fn loopback_cross_domain_keymap_blob_maps_and_reads_xkb_keymap() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let lines = run_guest(&rt, &host, Some("kbvm"), &["keymap"]).unwrap();
    assert_keymap(&lines);
}
