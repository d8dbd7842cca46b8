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
