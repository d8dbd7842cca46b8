//! A client that sends garbage through `crossway-proxy filter` is disconnected, while a
//! well-behaved client on the same filter keeps drawing. The headless compositor (smithay)
//! drops a broken client without a `wl_display.error`, so the error a bad client receives here
//! comes from the relay engine itself.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crossway_proxy::headless::control::request;
use crossway_tests::{Process, ProxyProcess, Runtime};
use serde_json::json;

/// A message header: object, opcode, total size.
fn header(object: u32, opcode: u16, size: u16) -> Vec<u8> {
    let mut m = object.to_ne_bytes().to_vec();
    m.extend_from_slice(&((u32::from(size) << 16) | u32::from(opcode)).to_ne_bytes());
    m
}

/// Sends `bytes` on a raw connection and reads until the peer closes (at most 10 s).
/// Returns the events read as (object, opcode, size, body).
fn send_raw(socket: &std::path::Path, bytes: &[u8]) -> Vec<(u32, u16, u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(bytes).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("the bad client was not disconnected: {e}"),
        }
    }
    let mut events = Vec::new();
    let mut at = 0;
    while at + 8 <= got.len() {
        let object = u32::from_ne_bytes(got[at..at + 4].try_into().unwrap());
        let word = u32::from_ne_bytes(got[at + 4..at + 8].try_into().unwrap());
        let (opcode, size) = ((word & 0xffff) as u16, (word >> 16) as u16);
        if size < 8 || at + size as usize > got.len() {
            break;
        }
        events.push((
            object,
            opcode,
            size,
            got[at + 8..at + size as usize].to_vec(),
        ));
        at += size as usize;
    }
    events
}

fn assert_display_error(events: &[(u32, u16, u16, Vec<u8>)], what: &str) {
    assert!(
        events
            .iter()
            .any(|(object, opcode, _, _)| *object == 1 && *opcode == 0),
        "{what}: no wl_display.error among {events:?}"
    );
}

fn bad_clients_are_cut_off_and_others_keep_working(expect_errors: bool) {
    let rt = Runtime::new().unwrap();
    let listen = rt.path().join("f").display().to_string();
    let filter = ProxyProcess::start(
        &rt,
        "filter",
        [
            "filter",
            "--listen",
            &listen,
            "--headless",
            "--vm-name",
            "bad",
        ],
    )
    .unwrap();
    let control = filter.control.clone().unwrap();

    let mut cmd = rt.client(env!("CARGO_BIN_EXE_crossway-test-client"), &filter.socket);
    cmd.args([
        "--title", "survivor", "--buffer", "shm", "--frames", "100000",
    ]);
    let mut good = Process::spawn("test-client", &mut cmd).unwrap();
    request(
        &control,
        // The relay tags titles with the VM's name.
        &json!({"wait_toplevel": {"title": "[bad] survivor", "timeout_ms": 15000}}),
    )
    .unwrap();
    let commits_before = request(&control, &json!({"stats": null})).unwrap()["commits"]
        .as_u64()
        .unwrap();

    // Each returns only once the filter has closed the connection.
    for (what, bytes) in [
        ("unknown opcode", header(1, 7, 8)),
        ("size shorter than the header", header(1, 1, 4)),
        ("unknown object", header(77, 0, 8)),
    ] {
        let events = send_raw(&filter.socket, &bytes);
        if expect_errors {
            assert_display_error(&events, what);
        }
    }
    // Random bytes.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = send_raw(&filter.socket, &noise);

    // The good client is still there and still drawing.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        good.running(),
        "the good client died\n{}",
        filter.log_text()
    );
    let commits_after = request(&control, &json!({"stats": null})).unwrap()["commits"]
        .as_u64()
        .unwrap();
    assert!(
        commits_after > commits_before,
        "no commits from the good client after the bad ones ({commits_before} → {commits_after})"
    );
    let toplevels = request(&control, &json!({"toplevels": null})).unwrap();
    assert_eq!(toplevels.as_array().unwrap().len(), 1, "{toplevels}");
}

#[test]
fn bad_clients_are_disconnected_and_others_keep_working() {
    bad_clients_are_cut_off_and_others_keep_working(false);
}

#[test]

fn bad_clients_get_a_display_error_from_the_relay() {
    bad_clients_are_cut_off_and_others_keep_working(true);
}

/// Appends a Wayland string argument.
fn push_string(msg: &mut Vec<u8>, s: &str) {
    let len = s.len() as u32 + 1;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(s.as_bytes());
    msg.push(0);
    while !msg.len().is_multiple_of(4) {
        msg.push(0);
    }
}

#[test]
fn binding_a_denied_global_by_name_is_an_error() {
    let rt = Runtime::new().unwrap();
    let host_socket = rt.path().join("host-0");
    let headless = ProxyProcess::start(
        &rt,
        "headless",
        [
            "headless".as_ref(),
            "--socket".as_ref(),
            host_socket.as_os_str(),
        ],
    )
    .unwrap();
    // The host offers the security-context manager to ordinary clients; the policy denies it.
    let host = crossway_proxy::host::HostInfo::probe(&crossway_proxy::host::HostConnector::new(
        headless.socket.clone(),
    ))
    .unwrap();
    let denied = host
        .global(crossway_proxy::host::SECURITY_CONTEXT_MANAGER)
        .unwrap()
        .clone();
    let listen = rt.path().join("f").display().to_string();
    let display = headless.socket.display().to_string();
    let filter = ProxyProcess::start(
        &rt,
        "filter",
        [
            "filter",
            "--listen",
            &listen,
            "--wayland-display",
            &display,
            "--no-security-context",
        ],
    )
    .unwrap();

    let mut stream = UnixStream::connect(&filter.socket).unwrap();
    // get_registry(new id 2), sync(new id 3); wait for the callback so every global has
    // passed the relay.
    let mut hello = header(1, 1, 12);
    hello.extend_from_slice(&2u32.to_ne_bytes());
    hello.extend_from_slice(&header(1, 0, 12));
    hello.extend_from_slice(&3u32.to_ne_bytes());
    stream.write_all(&hello).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains_event(&seen, 3, None) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "filter closed the connection\n{}", filter.log_text());
        seen.extend_from_slice(&buf[..n]);
    }
    let listed = String::from_utf8_lossy(&seen).contains(&denied.interface);
    assert!(
        !listed,
        "{} was advertised through the filter",
        denied.interface
    );

    // wl_registry.bind(name, interface, version, new id 4) of the denied global.
    let mut body = denied.name.to_ne_bytes().to_vec();
    push_string(&mut body, &denied.interface);
    body.extend_from_slice(&1u32.to_ne_bytes());
    body.extend_from_slice(&4u32.to_ne_bytes());
    let mut bind = header(2, 0, 8 + body.len() as u16);
    bind.extend_from_slice(&body);
    stream.write_all(&bind).unwrap();
    let mut rest = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) => panic!("not disconnected after binding a denied global: {e}"),
        }
    }
    assert!(
        contains_event(&rest, 1, Some(0)),
        "no wl_display.error after binding {} by name",
        denied.interface
    );
}

/// Whether the event stream `bytes` holds a message on `object` (with `opcode`, if given).
fn contains_event(bytes: &[u8], object: u32, opcode: Option<u16>) -> bool {
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let id = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        let word = u32::from_ne_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let size = (word >> 16) as usize;
        if size < 8 || at + size > bytes.len() {
            return false;
        }
        if id == object && opcode.is_none_or(|op| op == (word & 0xffff) as u16) {
            return true;
        }
        at += size;
    }
    false
}
