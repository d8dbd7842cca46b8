//! wl-paste's request sequence from a guest: a host client (wl-copy) owns the selection on the
//! host compositor; `crossway-xd-guest clipboard-paste` gets keyboard focus with a 1x1 window,
//! receives the offer and asks for text through a read pipe (identifier type 3, guessed id);
//! the text arrives in READ messages ending with a hang-up, whether or not the guest sends
//! anything else meanwhile.
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use crossway_tests::{Runtime, require};
use loopback_cross_domain_common::{assert_pasted, headless, host_selection, run_guest};

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
    let _copy = host_selection(&rt, &host, (&wl_copy, &wl_paste), TEXT);
    let mut args = vec!["clipboard-paste"];
    args.extend_from_slice(extra);
    let lines = run_guest(&rt, &host, Some("clipvm"), &args).unwrap();
    assert_pasted(&lines, TEXT);
}
