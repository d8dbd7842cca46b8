//! Bad dmabuf parameters get the answer linux-dmabuf prescribes, and the compositor goes on
//! serving other clients.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::time::Duration;

use crossway_headless::ToplevelMatch;
use crossway_tests::{Process, Runtime};

/// zwp_linux_buffer_params_v1 error codes.
const INVALID_FORMAT: u32 = 4;
const OUT_OF_BOUNDS: u32 = 6;

fn run_bad(rt: &Runtime, socket: &std::path::Path, bad: &str) -> String {
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), socket);
    cmd.args(["--bad", bad, "--exit-after", "200"]);
    let (_, out, err) = Process::spawn(bad, &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(10))
        .unwrap();
    format!("{out}{err}")
}

#[test]
fn bad_params_get_protocol_answers_and_others_keep_working() {
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("bad").unwrap();
    let socket = headless.socket_path().to_owned();

    let out = run_bad(&rt, &socket, "small-stride");
    assert!(
        out.contains("\nfailed\n"),
        "stride below a row must fail: {out}"
    );

    let out = run_bad(&rt, &socket, "overlap");
    assert!(
        out.contains("\nfailed\n"),
        "overlapping planes must fail: {out}"
    );

    let out = run_bad(&rt, &socket, "offset-past-end");
    assert!(
        out.contains(&format!("code {OUT_OF_BOUNDS}:")),
        "offset past the end: {out}"
    );

    let out = run_bad(&rt, &socket, "unknown-format");
    assert!(
        out.contains(&format!("code {INVALID_FORMAT}:")),
        "unknown format: {out}"
    );

    let out = run_bad(&rt, &socket, "unadvertised-modifier");
    assert!(
        out.contains(&format!("code {INVALID_FORMAT}:")),
        "unadvertised modifier: {out}"
    );

    let stats = headless.stats();
    assert!(stats.dmabuf_refused >= 3, "{stats:?}");
    assert_eq!(stats.dmabuf_imports, 0, "{stats:?}");

    // A well-behaved client still gets its window.
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &socket);
    cmd.args(["--title", "after-bad"]);
    let _good = Process::spawn("good", &mut cmd).unwrap();
    headless
        .wait_for_toplevel(&ToplevelMatch::title("after-bad"), Duration::from_secs(10))
        .unwrap();
}
