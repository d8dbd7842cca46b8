//! A client that sends garbage through `crossway-proxy filter` is disconnected, while a
//! well-behaved client on the same filter keeps drawing. The headless compositor (smithay)
//! drops a broken client without a `wl_display.error`, so the error a bad client receives here
//! comes from the relay engine itself.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crossway_headless::control::request;
use crossway_protocols::wire::{self, Arg, ObjectId};
use crossway_tests::{Process, ProxyProcess, Runtime};
use serde_json::json;

/// A bare message header (object, opcode, total size), which may be invalid on purpose.
fn header(object: u32, opcode: u16, size: u16) -> Vec<u8> {
    let mut m = object.to_ne_bytes().to_vec();
    m.extend_from_slice(&((u32::from(size) << 16) | u32::from(opcode)).to_ne_bytes());
    m
}

/// A well-formed request.
fn request_bytes(object: u32, opcode: u16, args: &[Arg<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_unchecked(&mut out, ObjectId::new(object).unwrap(), opcode, args).unwrap();
    out
}

/// The (object, opcode) of each whole event in `bytes`, up to the first invalid one.
fn events(bytes: &[u8]) -> Vec<(u32, u16)> {
    let mut events = Vec::new();
    let mut rest = bytes;
    while let Ok(Some(msg)) = wire::next_message(rest) {
        events.push((msg.header.object.get(), msg.header.opcode));
        rest = &rest[msg.len()..];
    }
    events
}

/// Sends `bytes` on a raw connection and reads until the peer closes (at most 10 s).
/// Returns the events read as (object, opcode).
fn send_raw(socket: &std::path::Path, bytes: &[u8]) -> Vec<(u32, u16)> {
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
    events(&got)
}

fn assert_display_error(events: &[(u32, u16)], what: &str) {
    assert!(
        events.contains(&(1, 0)),
        "{what}: no wl_display.error among {events:?}"
    );
}

#[test]
fn bad_clients_get_a_display_error_and_others_keep_working() {
    let rt = Runtime::new().unwrap();
    let filter = ProxyProcess::filter(&rt, &["--headless", "--vm-name", "bad"]).unwrap();
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
        assert_display_error(&events, what);
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
    let display = headless.socket.display().to_string();
    let filter = ProxyProcess::filter(
        &rt,
        &["--wayland-display", &display, "--no-security-context"],
    )
    .unwrap();

    let mut stream = UnixStream::connect(&filter.socket).unwrap();
    // get_registry(new id 2), sync(new id 3); wait for the callback so every global has
    // passed the relay.
    let id = |n| ObjectId::new(n).unwrap();
    let mut hello = request_bytes(1, 1, &[Arg::NewId(id(2))]);
    hello.extend(request_bytes(1, 0, &[Arg::NewId(id(3))]));
    stream.write_all(&hello).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !events(&seen).iter().any(|&(object, _)| object == 3) {
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
    let interface = std::ffi::CString::new(denied.interface.clone()).unwrap();
    let bind = request_bytes(
        2,
        0,
        &[
            Arg::Uint(denied.name),
            Arg::Str(Some(&interface)),
            Arg::Uint(1),
            Arg::NewId(id(4)),
        ],
    );
    stream.write_all(&bind).unwrap();
    let mut rest = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) => panic!("not disconnected after binding a denied global: {e}"),
        }
    }
    assert_display_error(
        &events(&rest),
        &format!("binding {} by name", denied.interface),
    );
}
