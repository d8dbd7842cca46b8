//! A guest window's title and app id reach the host compositor after the VM's tag without the
//! characters that could make it read as another window: control characters, line breaks and
//! bidi controls are dropped from the title, and the app id keeps only reverse-DNS characters.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime};
use serde_json::json;

#[test]
fn title_and_app_id_lose_controls_bidi_and_line_breaks_after_the_tag() {
    let rt = Runtime::new().unwrap();
    let filter = ProxyProcess::filter(&rt, &["--headless", "--vm-name", "work"]).unwrap();
    let control = filter.control.clone().unwrap();
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    cmd.args([
        "--buffer",
        "shm",
        "--title",
        "Mail\n\u{202E}knab\u{202C}\u{2066}\u{1b}[2J\u{2069}\u{200F} Login\r",
        "--app-id",
        "org.bank/../Login app\n\u{202E}",
    ]);
    let _client = Process::spawn("client", &mut cmd).unwrap();
    let found = request(
        &control,
        &json!({"wait_toplevel": {"title": "[work] Mailknab[2J Login", "timeout_ms": 20000}}),
    );
    let toplevels = request(&control, &json!({"toplevels": null})).unwrap();
    assert!(
        found.is_ok(),
        "{found:?}\n{toplevels}\n{}",
        filter.log_text()
    );
    let app_ids: Vec<_> = toplevels
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["app_id"].as_str())
        .collect();
    assert_eq!(app_ids, ["work.org.bank..Loginapp"], "{toplevels}");
}
