//! sway 1.7 (headless, run as a plain user) as the host: foot in the guest renders text in a
//! window whose title the host sees tagged, the selection crosses in both directions (wl-copy in
//! the guest, wl-paste on the host, and back), and the guest's wayland-info lacks sway's
//! screen-reading and input-injecting globals.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crossway_tests::compositors::{Guest, Host, HostKind};
use crossway_tests::{Process, Runtime, eventually, paste, require, wayland_info_globals};

fn copy(rt: &Runtime, program: &Path, socket: &Path, text: &str) -> Child {
    let mut child = rt
        .client(program, socket)
        .arg("--foreground")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child
}

#[test]
fn sway_guest_foot_clipboard_and_hidden_globals() {
    let test = "sway_guest_foot_clipboard_and_hidden_globals";
    let (Some(foot), Some(wl_copy), Some(wl_paste), Some(info)) = (
        require(test, "foot", "foot"),
        require(test, "wl-copy", "wl-clipboard"),
        require(test, "wl-paste", "wl-clipboard"),
        require(test, "wayland-info", "wayland-utils"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let Some(host) = Host::start(&rt, test, HostKind::Sway).unwrap() else {
        return;
    };
    let guest = Guest::start(&rt, &host.display, "sw").unwrap();

    // Globals: what reads the screen or injects input stays on the host.
    let direct = wayland_info_globals(&rt, &info, &host.display).unwrap();
    let through = wayland_info_globals(&rt, &info, &guest.socket).unwrap();
    for denied in [
        "zwlr_screencopy_manager_v1",
        "zwlr_virtual_pointer_manager_v1",
        "zwp_virtual_keyboard_manager_v1",
        "zwlr_data_control_manager_v1",
        "zwlr_layer_shell_v1",
    ] {
        assert!(
            direct.contains_key(denied),
            "sway lacks {denied}: {direct:?}"
        );
        assert!(!through.contains_key(denied), "{denied} reached the guest");
    }
    assert!(through.contains_key("wl_seat"), "{through:?}");

    // foot: a tagged title on the host, text on the screen.
    let mut cmd = guest.client(&rt, foot);
    cmd.env("HOME", rt.path()).args([
        "--config=/dev/null",
        "--title=foot-guest",
        "sh",
        "-c",
        "printf 'CROSSWAY GUEST %s\\n' ok; sleep 60",
    ]);
    let mut terminal = Process::spawn("foot", &mut cmd).unwrap();
    if let Err(err) = host.wait_for_title("[sw] foot-guest", Duration::from_secs(20)) {
        panic!("{err:#}\n{}\n{}", guest.log_text(), host.log_text());
    }
    // Inside foot's window (not sway's title bar, whose text sway draws itself).
    let mut colours = 0;
    eventually(Duration::from_secs(5), || {
        colours = host.window_colours(&rt, "[sw] foot-guest").unwrap();
        colours > 4
    });
    assert!(terminal.running(), "foot exited\n{}", guest.log_text());
    assert!(
        colours > 4,
        "only {colours} colours in foot's window: no text"
    );

    // Guest → host: the guest's wl-copy owns the selection (it has focus: a new window gets
    // it), a host client reads it.
    let text = "from the guest ✓ 0123";
    let mut copier = copy(&rt, &wl_copy, &guest.socket, text);
    let pasted = paste(&rt, &wl_paste, &host.display, &[]).unwrap();
    let _ = copier.kill();
    let _ = copier.wait();
    assert_eq!(pasted, text, "guest → host\n{}", guest.log_text());

    // Host → guest.
    let text = "from the host ✓ 4567";
    let mut copier = copy(&rt, &wl_copy, &host.display, text);
    let pasted = paste(&rt, &wl_paste, &guest.socket, &[]).unwrap();
    let _ = copier.kill();
    let _ = copier.wait();
    assert_eq!(pasted, text, "host → guest\n{}", guest.log_text());
}
