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
    loopback_cross_domain_common::assert_host_blob_window(&lines);
}
