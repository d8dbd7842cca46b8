//! The host compositor harness itself (`crossway_tests::compositors`), with no Crossway in
//! between: each host starts, our test client connected directly draws its quadrants, and the
//! host's own screenshot tool (control socket, weston-screenshooter, grim) shows them. Weston 14
//! gets a dmabuf (a memfd, imported by llvmpipe), the others shm. Where the host can list its
//! toplevels, the client's title is there unchanged.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_tests::compositors::{Host, HostKind};
use crossway_tests::{Process, Runtime};

const W: u32 = 200;
const H: u32 = 150;

fn client_draws_directly(kind: HostKind, buffer: &str) {
    let test = format!("{}_client_draws_directly", kind.name());
    let rt = Runtime::new().unwrap();
    let Some(host) = Host::start(&rt, &test, kind).unwrap() else {
        return;
    };
    let title = format!("direct-{}", kind.name());
    let mut cmd = host.client(&rt, env!("CARGO_BIN_EXE_crossway-test-client"));
    cmd.args(["--buffer", buffer, "--title", &title]).args([
        "--width",
        &W.to_string(),
        "--height",
        &H.to_string(),
    ]);
    let mut client = Process::spawn("crossway-test-client", &mut cmd).unwrap();
    // Ok(false): this host cannot list toplevels (weston); then only the pixels tell.
    if let Err(err) = host.wait_for_title(&title, Duration::from_secs(10)) {
        panic!("{err:#}\n{}", host.log_text());
    }
    let quadrants = host
        .wait_for_quadrants(&rt, (W, H), Duration::from_secs(15))
        .unwrap();
    assert!(
        client.running(),
        "client exited: {:?}\n{}",
        client.finish(),
        host.log_text()
    );
    assert!(quadrants.drawn(), "{quadrants}\n{}", host.log_text());
}

#[test]
fn headless_client_draws_directly() {
    client_draws_directly(HostKind::Headless, "shm");
}

#[test]
fn weston10_client_draws_directly() {
    client_draws_directly(HostKind::Weston10, "shm");
}

#[test]
fn weston14_dmabuf_client_draws_directly() {
    client_draws_directly(HostKind::Weston14Gl, "dmabuf");
}

#[test]
fn sway_client_draws_directly() {
    client_draws_directly(HostKind::Sway, "shm");
}
