//! weston 10 (headless, pixman) as the host: weston-simple-shm in the guest draws on weston's
//! output (weston-screenshooter, connected directly), and the guest's wayland-info lists none
//! of weston's private globals (shell, debug, screenshooter, input panel).
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_tests::compositors::{Guest, Host, HostKind, changed_pixels};
use crossway_tests::{Process, Runtime, eventually, require, wayland_info_globals};

#[test]
fn weston10_guest_simple_shm_draws_and_private_globals_are_hidden() {
    let test = "weston10_guest_simple_shm_draws_and_private_globals_are_hidden";
    let (Some(simple_shm), Some(info)) = (
        require(test, "weston-simple-shm", "weston"),
        require(test, "wayland-info", "wayland-utils"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let Some(host) = Host::start(&rt, test, HostKind::Weston10).unwrap() else {
        return;
    };
    let guest = Guest::start(&rt, &host.display, "w10").unwrap();

    let direct = wayland_info_globals(&rt, &info, &host.display).unwrap();
    let through = wayland_info_globals(&rt, &info, &guest.socket).unwrap();
    let denied: Vec<_> = direct
        .keys()
        .filter(|i| i.starts_with("weston_") || *i == "zwp_input_panel_v1")
        .collect();
    assert!(
        !denied.is_empty(),
        "weston offers no private global: {direct:?}"
    );
    for interface in denied {
        assert!(
            !through.contains_key(interface),
            "{interface} reached the guest"
        );
    }
    for needed in ["wl_compositor", "wl_shm", "xdg_wm_base"] {
        assert!(
            through.contains_key(needed),
            "{needed} missing: {through:?}"
        );
    }

    let before = host.screenshot(&rt).unwrap();
    let mut shm = Process::spawn("weston-simple-shm", &mut guest.client(&rt, simple_shm)).unwrap();
    let mut changed = 0;
    eventually(Duration::from_secs(10), || {
        changed = changed_pixels(&before, &host.screenshot(&rt).unwrap());
        changed > 10_000
    });
    assert!(
        shm.running(),
        "weston-simple-shm exited\n{}",
        guest.log_text()
    );
    assert!(
        changed > 10_000,
        "only {changed} pixels changed\n{}\n{}",
        guest.log_text(),
        host.log_text()
    );
}
