//! A client that passes a memfd as a linux-dmabuf plane, shows it, then truncates it to 0
//! bytes and attaches and commits it again (the crash of issue 18) loses its own connection
//! with a protocol error; the compositor and every other client go on. Three places read such
//! a buffer: the headless compositor reached directly (it reads memfds with `pread`), the
//! filter in front of it (it refuses a plane memfd that is not sealed against shrinking), and
//! one standalone compositor shared by two filters (one VM's client cannot take down the
//! other VM's windows).
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::path::Path;
use std::time::Duration;

use crossway_headless::ToplevelMatch;
use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime};
use serde_json::json;

/// wl_surface.error.invalid_size, which the headless compositor raises for an unreadable
/// buffer.
const INVALID_SIZE: u32 = 2;
/// zwp_linux_buffer_params_v1.error.out_of_bounds, the relay's answer to a shrinkable plane.
const OUT_OF_BOUNDS: u32 = 6;

/// The client: 64x64 XR24, stride 256, offset 0 (16384 bytes), create_immed, shown,
/// truncated, attached and committed again. Returns its output.
fn truncating_client(rt: &Runtime, socket: &Path) -> String {
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), socket);
    cmd.args([
        "--bad", "truncate", "--immed", "--width", "64", "--height", "64", "--stride", "256",
    ]);
    let (_, out, err) = Process::spawn("truncate", &mut cmd)
        .unwrap()
        .wait(Duration::from_secs(20))
        .unwrap();
    format!("{out}{err}")
}

/// A client drawing until killed, with `title`.
fn drawing_client(rt: &Runtime, socket: &Path, title: &str) -> Process {
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), socket);
    cmd.args(["--title", title, "--frames", "1000000"]);
    Process::spawn(title, &mut cmd).unwrap()
}

fn commits(control: &Path) -> u64 {
    request(control, &json!({"stats": null})).unwrap()["commits"]
        .as_u64()
        .unwrap()
}

fn wait_title(control: &Path, title: &str) {
    request(
        control,
        &json!({"wait_toplevel": {"title": title, "timeout_ms": 20000}}),
    )
    .unwrap();
}

/// Whether the compositor behind `control` still takes commits from the drawing clients.
fn still_drawing(control: &Path) -> bool {
    let before = commits(control);
    crossway_tests::eventually(Duration::from_secs(10), || commits(control) > before)
}

#[test]
fn headless_direct_truncated_plane_is_a_surface_error() {
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("trunc").unwrap();
    let socket = headless.socket_path().to_owned();
    let mut good = drawing_client(&rt, &socket, "bystander");
    headless
        .wait_for_toplevel(&ToplevelMatch::title("bystander"), Duration::from_secs(20))
        .unwrap();

    // The compositor runs in this test's process: a SIGBUS would end the test here.
    let out = truncating_client(&rt, &socket);
    assert!(out.contains("\nshown\n"), "shown before truncation: {out}");
    assert!(out.contains("\ntruncated\n"), "{out}");
    assert!(
        out.contains("wl_surface@") && out.contains(&format!("code {INVALID_SIZE}:")),
        "the truncating client gets wl_surface.invalid_size: {out}"
    );
    assert!(!out.contains("survived"), "{out}");

    assert!(good.running(), "the other client was disconnected");
    let frames = headless.stats().commits;
    assert!(
        crossway_tests::eventually(Duration::from_secs(10), || headless.stats().commits
            > frames),
        "the other client no longer draws"
    );
    assert!(headless.stats().dmabuf_refused >= 1);
}

#[test]
fn filter_headless_refuses_a_plane_that_can_shrink() {
    let rt = Runtime::new().unwrap();
    let filter = ProxyProcess::filter(&rt, &["--headless", "--vm-name", "t"]).unwrap();
    let control = filter.control.clone().unwrap();
    let mut good = drawing_client(&rt, &filter.socket, "bystander");
    wait_title(&control, "[t] bystander");

    let out = truncating_client(&rt, &filter.socket);
    assert!(
        out.contains(&format!("code {OUT_OF_BOUNDS}:")) && out.contains("F_SEAL_SHRINK"),
        "an unsealed memfd plane is refused at params.add: {out}"
    );
    assert!(!out.contains("survived"), "{out}");

    assert!(good.running(), "the other client was disconnected");
    assert!(
        still_drawing(&control),
        "the other client no longer draws\n{}",
        filter.log_text()
    );
}

#[test]
fn two_filters_share_a_headless_and_one_vm_cannot_take_down_the_other() {
    let rt = Runtime::new().unwrap();
    let host = rt.path().join("host");
    let headless = ProxyProcess::start(
        &rt,
        "headless",
        ["headless".as_ref(), "--socket".as_ref(), host.as_os_str()],
    )
    .unwrap();
    let control = headless.control.clone().unwrap();
    let filter = |vm: &str| {
        let listen = rt.path().join(vm);
        ProxyProcess::start(
            &rt,
            vm,
            [
                "filter".as_ref(),
                "--listen".as_ref(),
                listen.as_os_str(),
                "--wayland-display".as_ref(),
                headless.socket.as_os_str(),
                "--vm-name".as_ref(),
                vm.as_ref(),
            ],
        )
        .unwrap()
    };
    let (a, b) = (filter("a"), filter("b"));
    let mut good = drawing_client(&rt, &b.socket, "bystander");
    wait_title(&control, "[b] bystander");

    // VM a's client is refused by its filter.
    let out = truncating_client(&rt, &a.socket);
    assert!(
        out.contains(&format!("code {OUT_OF_BOUNDS}:")) && out.contains("F_SEAL_SHRINK"),
        "{out}"
    );
    // A client reaching the shared compositor past the filters gets its surface error.
    let out = truncating_client(&rt, &headless.socket);
    assert!(
        out.contains("\ntruncated\n") && out.contains(&format!("code {INVALID_SIZE}:")),
        "{out}"
    );

    assert!(good.running(), "VM b's client was disconnected");
    assert!(
        still_drawing(&control),
        "VM b's client no longer draws\n{}",
        headless.log_text()
    );
    // VM a's filter still serves new clients.
    let _again = drawing_client(&rt, &a.socket, "after");
    wait_title(&control, "[a] after");
}
