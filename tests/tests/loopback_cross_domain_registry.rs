//! A guest client's first round trip through the cross-domain context: `crossway-xd-guest
//! registry` (get_registry + sync over one channel) through `crossway-proxy vm` and `serve` to
//! the headless compositor in its own process, listing the globals the relay lets through.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use crossway_relay::Policy;
use crossway_tests::Runtime;
use loopback_cross_domain_common::{headless, run_guest};

#[test]
fn loopback_cross_domain_registry_lists_allowed_globals() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let lines = run_guest(&rt, &host, Some("regvm"), &["registry"]).unwrap();
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    let globals: Vec<(&str, u32)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("global "))
        .map(|g| {
            let (name, v) = g.split_once(' ').unwrap();
            (name, v.parse().unwrap())
        })
        .collect();
    for needed in ["wl_compositor", "wl_shm", "xdg_wm_base", "wl_seat"] {
        assert!(
            globals.iter().any(|(n, _)| *n == needed),
            "{needed} missing from {globals:?}"
        );
    }
    // Every global is one the default policy allows, at most at its cap; the headless host's
    // wp_security_context_manager_v1 (denied) is not among them.
    let policy = Policy::default();
    for (name, version) in &globals {
        let cap = policy.cap(name);
        assert!(
            cap.is_some_and(|cap| (1..=cap).contains(version)),
            "{name} v{version} passed, policy cap {cap:?}"
        );
    }
    assert!(
        !globals
            .iter()
            .any(|(n, _)| *n == "wp_security_context_manager_v1"),
        "{globals:?}"
    );
}
