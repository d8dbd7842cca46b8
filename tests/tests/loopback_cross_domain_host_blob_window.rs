//! sommelier's buffer path: `crossway-xd-guest host-blob-window` asks the host for image
//! requirements (GET_IMAGE_REQUIREMENTS on the query ring), creates the HOST3D blob, maps it
//! through the loopback VM's host-visible window, draws at the host's stride and uses it as a
//! wl_shm pool: the window appears tagged, with exactly the guest's pixels.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

#[test]
fn loopback_cross_domain_host_blob_window_on_headless_tagged_with_exact_pixels() {
    let lines =
        loopback_cross_domain_common::window_on_headless("host-blob-window", "xd-host-blob");
    assert!(
        lines[1].starts_with("image stride ") && lines[1].contains(" size "),
        "{lines:?}"
    );
    let stride: u32 = lines[1].split(' ').nth(2).unwrap().parse().unwrap();
    assert!(stride >= 96 * 4, "{lines:?}");
    assert_eq!(lines[0], "configured");
    assert_eq!(
        &lines[2..],
        [
            "buffer 96x64 host-blob",
            "frame 1",
            "frame 2",
            "frame 3",
            "shown",
            "released"
        ]
    );
}
