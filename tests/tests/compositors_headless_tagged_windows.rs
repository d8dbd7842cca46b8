//! Guest apps through the whole chain (agent → loopback VM → serve, see
//! `crossway_tests::compositors::Guest`) on the embedded headless compositor, in its own
//! process: our shm client shows its exact quadrants, weston-simple-shm draws, and the host
//! sees every toplevel's title tagged with the VM's name. A second VM's agent runs its app
//! itself (`crossway-agent ... -- APP`), tagged with that VM's name.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_tests::compositors::{Guest, GuestOptions, Host, HostKind, Route};
use crossway_tests::{Process, Runtime, require};

#[test]
fn headless_guest_windows_are_tagged_and_drawn() {
    let test = "headless_guest_windows_are_tagged_and_drawn";
    let Some(simple_shm) = require(test, "weston-simple-shm", "weston") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = Host::start(&rt, test, HostKind::Headless).unwrap().unwrap();
    let guest = Guest::start(&rt, &host.display, "alpha").unwrap();
    let (w, h) = (160u32, 120u32);
    let mut cmd = guest.client(&rt, env!("CARGO_BIN_EXE_crossway-test-client"));
    cmd.args(["--buffer", "shm", "--title", "quadrants"]).args([
        "--width",
        &w.to_string(),
        "--height",
        &h.to_string(),
    ]);
    let mut client = Process::spawn("crossway-test-client", &mut cmd).unwrap();
    let mut shm = Process::spawn("weston-simple-shm", &mut guest.client(&rt, simple_shm)).unwrap();

    let beta = Guest::start_with(
        &rt,
        &host.display,
        "beta",
        Route::Chain,
        &GuestOptions {
            app: vec![
                env!("CARGO_BIN_EXE_crossway-test-client").into(),
                "--title".into(),
                "agent-app".into(),
            ],
            ..GuestOptions::default()
        },
    )
    .unwrap();

    for title in [
        "[alpha] quadrants",
        "[alpha] simple-shm",
        "[beta] agent-app",
    ] {
        if let Err(err) = host.wait_for_title(title, Duration::from_secs(20)) {
            panic!("{err:#}\n{}\n{}", guest.log_text(), beta.log_text());
        }
    }
    // The host never sees an untagged guest title.
    let titles = host.toplevel_titles().unwrap().unwrap();
    assert!(
        titles
            .iter()
            .all(|t| t.starts_with("[alpha] ") || t.starts_with("[beta] ")),
        "{titles:?}"
    );
    drop(beta);
    let quadrants = host
        .wait_for_quadrants(&rt, (w, h), Duration::from_secs(10))
        .unwrap();
    assert!(client.running() && shm.running(), "{}", guest.log_text());
    assert!(quadrants.drawn(), "{quadrants}\n{}", guest.log_text());
    let stats = guest.relay_stats().unwrap();
    assert!(
        stats["total"]["frames"].as_u64().unwrap() > 0,
        "no frames counted: {stats}"
    );
}
