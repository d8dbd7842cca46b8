//! wl-paste's request sequence from a guest: a host client (wl-copy) owns the selection on the
//! host compositor; `crossway-xd-guest clipboard-paste` gets keyboard focus with a 1x1 window,
//! receives the offer and asks for text through a read pipe (identifier type 3, guessed id);
//! the text arrives in READ messages ending with a hang-up, whether or not the guest sends
//! anything else meanwhile.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use std::time::{Duration, Instant};

use crossway_tests::{Process, Runtime, require};
use loopback_cross_domain_common::{headless, run_guest};

const TEXT: &str = "crossway clipboard from the host";

#[test]
fn loopback_cross_domain_clipboard_paste_reads_host_selection_through_pipe() {
    paste(
        "loopback_cross_domain_clipboard_paste_reads_host_selection_through_pipe",
        &[],
    );
}

/// Waiting on the pipe before anything else is sent: only the pipe's data can wake the host.
#[test]
fn loopback_cross_domain_clipboard_paste_read_first_gets_text_without_other_traffic() {
    paste(
        "loopback_cross_domain_clipboard_paste_read_first_gets_text_without_other_traffic",
        &["--read-first"],
    );
}

fn paste(test: &str, extra: &[&str]) {
    let (Some(wl_copy), Some(wl_paste)) = (
        require(test, "wl-copy", "wl-clipboard"),
        require(test, "wl-paste", "wl-clipboard"),
    ) else {
        return;
    };
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let mut copy = rt.client(&wl_copy, &host.display);
    copy.args(["--foreground", TEXT]);
    let _copy = Process::spawn("wl-copy", &mut copy).unwrap();
    // Wait until the selection is set on the host, as a host client sees it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out: std::process::Output = rt
            .client(&wl_paste, &host.display)
            .arg("-n")
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == TEXT {
            break;
        }
        assert!(Instant::now() < deadline, "wl-copy never set the selection");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut args = vec!["clipboard-paste"];
    args.extend_from_slice(extra);
    let lines = run_guest(&rt, &host, Some("clipvm"), &args).unwrap();
    // wl-copy offers text/plain;charset=utf-8, the guest's first choice; the text arrives whole.
    assert_eq!(
        lines,
        [
            "configured".to_owned(),
            "offer text/plain;charset=utf-8".to_owned(),
            format!("pasted {TEXT}")
        ]
    );
}
