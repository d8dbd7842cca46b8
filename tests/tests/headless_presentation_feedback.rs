//! Frame callbacks pace an animating client at the output's refresh, and wp_presentation
//! reports each of its frames as presented.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_tests::{Process, Runtime};

#[test]
fn every_frame_is_presented_at_refresh_rate() {
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("present").unwrap();
    let mut cmd = rt.client(
        env!("CARGO_BIN_EXE_crossway-test-client"),
        headless.socket_path(),
    );
    cmd.args(["--buffer", "shm", "--frames", "30", "--presentation"]);
    let (code, out, err) = Process::spawn("test-client", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    // 30 animated frames plus the first one, each presented, none discarded.
    assert!(out.contains("presented 31 discarded 0"), "{out}");
    // Paced by frame callbacks at 60 Hz: not faster than the display (allow timer slack).
    let fps: f64 = out
        .lines()
        .find_map(|l| {
            l.rsplit_once("fps ")
                .map(|(_, f)| f.trim().parse().unwrap())
        })
        .unwrap();
    assert!(
        fps < 70.0,
        "frame callbacks do not pace the client: {fps} fps"
    );
    let stats = headless.stats();
    assert!(stats.shm_commits >= 31, "{stats:?}");
}
