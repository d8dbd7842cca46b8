//! Every client relayed by `crossway-proxy filter --vm-name work` reaches the host through a
//! `wp_security_context_v1` whose app id is the VM's name: the compositor knows it as
//! sandboxed, whatever the client claims. Without a name the app id is "crossway-vm";
//! `--no-security-context` connects directly.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use crossway_headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime};
use serde_json::{Value, json};

/// The headless compositor's record of the toplevel `title` that the test client draws
/// through `crossway-proxy filter FILTER_ARGS --headless`.
fn toplevel_seen(filter_args: &[&str], title: &str) -> Value {
    let rt = Runtime::new().unwrap();
    let mut args = filter_args.to_vec();
    args.push("--headless");
    let filter = ProxyProcess::filter(&rt, &args).unwrap();
    let control = filter
        .control
        .clone()
        .unwrap_or_else(|| panic!("filter --headless printed no control socket"));
    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    cmd.args(["--title", "sandboxed", "--buffer", "shm"]);
    let _client = Process::spawn("test-client", &mut cmd).unwrap();
    request(
        &control,
        &json!({"wait_toplevel": {"title": title, "timeout_ms": 15000}}),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", filter.log_text()))
}

fn app_id_seen(filter_args: &[&str], title: &str) -> Value {
    toplevel_seen(filter_args, title)["security_context_app_id"].clone()
}

#[test]
fn filter_clients_carry_the_vm_name_as_security_context() {
    let found = toplevel_seen(&["--vm-name", "work"], "[work] sandboxed");
    assert_eq!(found["security_context_app_id"], json!("work"), "{found}");
    // The relay tags the app id too (the title is matched above).
    assert_eq!(
        found["app_id"],
        json!("work.crossway.test-client"),
        "{found}"
    );
}

#[test]
fn filter_without_vm_name_uses_the_default_app_id() {
    assert_eq!(app_id_seen(&[], "sandboxed"), json!("crossway-vm"));
}

#[test]
fn no_security_context_connects_directly() {
    assert_eq!(
        app_id_seen(
            &["--vm-name", "work", "--no-security-context"],
            "[work] sandboxed"
        ),
        Value::Null
    );
}
