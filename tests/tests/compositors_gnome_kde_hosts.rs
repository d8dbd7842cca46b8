//! GNOME's and KDE's compositors as the host: mutter 43 (`--headless --virtual-monitor`) and
//! kwin 5.27 (`--virtual`) from bookworm, each on its own session bus, with the scenarios the
//! other hosts run. Neither lets a test read pixels or list windows headless (mutter's
//! screenshots are gnome-shell's D-Bus service; kwin's answer only authorised clients), so the
//! scenarios check what the Wayland protocol shows a client: its toplevel configured, its
//! buffer attached and frame callbacks coming back (the test client's `configured`, `shown`
//! and `frames N` lines), no protocol error, and the relay's counters for each VM. Window tags
//! (`[VM] title`) are set by the same relay code the headless and sway scenarios check on
//! screen; here they are not observable from outside the compositor.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crossway_tests::compositors::{Guest, Host, HostKind, wait_for_line};
use crossway_tests::{Process, Runtime, eventually, require, wayland_info_globals};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Our test client in `guest`, animating `frames` frames with `buffer` (shm or dmabuf).
fn test_client(rt: &Runtime, guest: &Guest, buffer: &str, title: &str, frames: u32) -> Child {
    guest
        .client(rt, env!("CARGO_BIN_EXE_crossway-test-client"))
        .args(["--buffer", buffer, "--title", title])
        .args(["--frames", &frames.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The client's whole run: configured, shown, all its frame callbacks back, exit 0, and no
/// protocol error on the way.
fn check_client_run(mut child: Child, frames: u32, guest: &Guest, host: &Host) {
    let (done, lines) = wait_for_line(
        &mut child,
        &format!("frames {frames} "),
        Duration::from_secs(90),
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let context = format!(
        "client said {lines:?}\n{err}\n--- guest ---\n{}\n--- host ---\n{}",
        guest.log_text(),
        host.log_text()
    );
    assert!(done, "{context}");
    assert!(
        lines.iter().any(|l| l.starts_with("configured ")),
        "{context}"
    );
    assert!(lines.iter().any(|l| l == "shown"), "{context}");
    assert!(
        !lines.iter().any(|l| l.starts_with("protocol error")),
        "{context}"
    );
    assert!(status.success(), "{status}\n{context}");
}

fn start(rt: &Runtime, test: &str, kind: HostKind) -> Option<Host> {
    Host::start(rt, test, kind).unwrap()
}

/// shm windows from two VMs at once: each configured, shown and animated, each VM's relay
/// counting only its own client.
fn shm_windows_two_vms(kind: HostKind) {
    let test = format!("{}_shm_windows_two_vms", kind.name());
    let rt = Runtime::new().unwrap();
    let Some(host) = start(&rt, &test, kind) else {
        return;
    };
    let guests: Vec<Guest> = ["one", "two"]
        .iter()
        .map(|vm| Guest::start(&rt, &host.display, vm).unwrap())
        .collect();
    let frames = 30;
    let clients: Vec<Child> = guests
        .iter()
        .map(|g| test_client(&rt, g, "shm", &format!("shm-{}", g.vm_name), frames))
        .collect();
    for (child, guest) in clients.into_iter().zip(&guests) {
        check_client_run(child, frames, guest, &host);
    }
    for guest in &guests {
        let stats = guest.relay_stats().unwrap();
        assert_eq!(stats["vm_name"], guest.vm_name.as_str(), "{stats}");
        assert!(
            stats["total"]["frames"].as_u64().unwrap() >= u64::from(frames),
            "{stats}"
        );
    }
}

/// A dmabuf window where the host offers `zwp_linux_dmabuf_v1`; a SKIP naming the reason
/// where it does not (neither does without a render node).
fn dmabuf_window(kind: HostKind) {
    let test = format!("{}_dmabuf_window", kind.name());
    let Some(info) = require(&test, "wayland-info", "wayland-utils") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let Some(host) = start(&rt, &test, kind) else {
        return;
    };
    let direct = wayland_info_globals(&rt, &info, &host.display).unwrap();
    let guest = Guest::start(&rt, &host.display, "dm").unwrap();
    let through = wayland_info_globals(&rt, &info, &guest.socket).unwrap();
    // What the guest is offered follows what the host has.
    assert_eq!(
        direct.contains_key("zwp_linux_dmabuf_v1"),
        through.contains_key("zwp_linux_dmabuf_v1"),
        "{direct:?}\n{through:?}"
    );
    if !direct.contains_key("zwp_linux_dmabuf_v1") {
        say(&format!(
            "SKIP: {test}: {} offers no zwp_linux_dmabuf_v1 here (software rendering, no render node)",
            kind.name()
        ));
        return;
    }
    let frames = 30;
    let child = test_client(&rt, &guest, "dmabuf", "dmabuf-guest", frames);
    check_client_run(child, frames, &guest, &host);
}

/// foot in the guest: its window keeps drawing (the relay counts its frames) and foot stays
/// up without a protocol error.
fn foot_terminal(kind: HostKind) {
    let test = format!("{}_foot_terminal", kind.name());
    let Some(foot) = require(&test, "foot", "foot") else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let Some(host) = start(&rt, &test, kind) else {
        return;
    };
    let guest = Guest::start(&rt, &host.display, "ft").unwrap();
    let mut cmd = guest.client(&rt, foot);
    cmd.env("HOME", rt.path()).args([
        "--config=/dev/null",
        "--title=foot-guest",
        "sh",
        "-c",
        "printf 'CROSSWAY GUEST %s\\n' ok; sleep 60",
    ]);
    let mut terminal = Process::spawn("foot", &mut cmd).unwrap();
    let mut frames = 0;
    eventually(Duration::from_secs(30), || {
        frames = guest.relay_stats().unwrap()["total"]["frames"]
            .as_u64()
            .unwrap_or(0);
        frames > 0
    });
    let running = terminal.running();
    let (out, err) = terminal.finish();
    let context = format!("{out}\n{err}\n{}\n{}", guest.log_text(), host.log_text());
    assert!(running, "foot exited\n{context}");
    assert!(frames > 0, "foot drew no frame\n{context}");
    assert!(!err.contains("protocol error"), "{context}");
}

/// The selection from the guest to a host client. Without an input device neither compositor
/// gives a window keyboard focus, and a client without focus may not set the selection
/// (wl_data_device.set_selection needs a serial from an input event): a SKIP says so when the
/// compositor refuses it, which the test finds out by trying directly on the host first.
fn clipboard(kind: HostKind) {
    let test = format!("{}_clipboard", kind.name());
    let (Some(wl_copy), Some(wl_paste)) = (
        require(&test, "wl-copy", "wl-clipboard"),
        require(&test, "wl-paste", "wl-clipboard"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let Some(host) = start(&rt, &test, kind) else {
        return;
    };
    let paste = |socket: &Path| {
        rt.client(&wl_paste, socket)
            .arg("--no-newline")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let copy = |socket: &Path, text: &str| {
        let mut child = rt
            .client(&wl_copy, socket)
            .arg("--foreground")
            .arg(text)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut got = None;
        eventually(Duration::from_secs(5), || {
            got = paste(&host.display);
            got.as_deref() == Some(text)
        });
        let _ = child.kill();
        let _ = child.wait();
        got
    };
    let direct = "host to host";
    if copy(&host.display, direct).as_deref() != Some(direct) {
        say(&format!(
            "SKIP: {test}: wl-copy straight on {} sets no selection a host wl-paste reads (no wlr data-control, and no keyboard focus without an input device), so no clipboard path can be checked",
            kind.name()
        ));
        return;
    }
    let guest = Guest::start(&rt, &host.display, "cb").unwrap();
    let text = "from the guest 0123";
    let got = copy(&guest.socket, text);
    assert_eq!(got.as_deref(), Some(text), "{}", guest.log_text());
}

#[test]
fn mutter_shm_windows_two_vms() {
    shm_windows_two_vms(HostKind::Mutter);
}

#[test]
fn mutter_dmabuf_window() {
    dmabuf_window(HostKind::Mutter);
}

#[test]
fn mutter_foot_terminal() {
    foot_terminal(HostKind::Mutter);
}

#[test]
fn mutter_clipboard() {
    clipboard(HostKind::Mutter);
}

#[test]
fn kwin_shm_windows_two_vms() {
    shm_windows_two_vms(HostKind::Kwin);
}

#[test]
fn kwin_dmabuf_window() {
    dmabuf_window(HostKind::Kwin);
}

#[test]
fn kwin_foot_terminal() {
    foot_terminal(HostKind::Kwin);
}

#[test]
fn kwin_clipboard() {
    clipboard(HostKind::Kwin);
}
