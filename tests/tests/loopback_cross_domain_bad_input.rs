//! Bad guest input through the cross-domain context: a SEND naming a resource that does not
//! exist, a read pipe with a wrong guessed id, a Wayland message lying about its size. Each is
//! refused (the SUBMIT_3D fails, the host answers with an error, or it closes that channel),
//! and a fresh channel on the same VM still gets the host's globals.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use crossway_tests::Runtime;
use loopback_cross_domain_common::{assert_bad_outcome, headless, run_guest};

/// Runs `scenario` and checks its outcome ([`assert_bad_outcome`]).
fn bad(scenario: &str) {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let lines = run_guest(&rt, &host, Some("badvm"), &[scenario]).unwrap();
    assert_bad_outcome(scenario, &lines);
}

#[test]
fn loopback_cross_domain_bad_resource_id_is_refused_vm_still_serves() {
    bad("bad-resource");
}

#[test]
fn loopback_cross_domain_bad_guessed_pipe_id_is_refused_vm_still_serves() {
    bad("bad-pipe");
}

#[test]
fn loopback_cross_domain_bad_message_size_is_refused_vm_still_serves() {
    bad("bad-size");
}
