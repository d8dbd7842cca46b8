//! wl-copy and wl-paste move a selection, and a primary selection, between two clients.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use crossway_tests::{Process, Runtime, require};

fn round_trip(primary: bool, text: &str) {
    let test = "clipboard_round_trip";
    let (Some(copy), Some(paste)) = (
        require(test, "wl-copy", "wl-clipboard"),
        require(test, "wl-paste", "wl-clipboard"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let headless = rt.headless("clip").unwrap();

    // wl-copy sets the selection when its surface gets keyboard focus; a wl-paste mapped in the
    // moment before that takes the focus away, wl-copy's set_selection then comes from a client
    // without focus and is ignored (as on any compositor), and wl-copy does not try again. The
    // copier is started afresh when no paste saw its text within two seconds.
    let mut pasted = String::new();
    let mut said = Vec::new();
    for _attempt in 0..3 {
        let mut cmd = rt.client(&copy, headless.socket_path());
        // --foreground: keep serving the selection in this process, so the test can end it.
        cmd.arg("--foreground").stdin(Stdio::piped());
        if primary {
            cmd.arg("--primary");
        }
        let mut copier = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        copier
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();

        for _ in 0..20 {
            let mut cmd = rt.client(&paste, headless.socket_path());
            cmd.arg("--no-newline");
            if primary {
                cmd.arg("--primary");
            }
            let (code, out, _) = Process::spawn("wl-paste", &mut cmd)
                .unwrap()
                .wait(Duration::from_secs(5))
                .unwrap();
            if code == Some(0) && !out.is_empty() {
                pasted = out;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = copier.kill();
        said.extend(copier.wait_with_output().unwrap().stderr);
        if !pasted.is_empty() {
            break;
        }
    }
    assert_eq!(
        pasted,
        text,
        "wl-copy said: {}",
        String::from_utf8_lossy(&said)
    );
}

#[test]
fn selection_round_trips_between_clients() {
    round_trip(false, "crossway selection ✓ 0123456789");
}

#[test]
fn primary_selection_round_trips_between_clients() {
    round_trip(true, "crossway primary");
}
