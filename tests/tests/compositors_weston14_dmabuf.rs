//! weston 14 with the GL renderer (llvmpipe), the host that accepts dmabufs here: our dmabuf
//! client in the guest gets its buffer created and its quadrants appear in weston's screenshot.
//! The relay's counters say which path the buffer took and how many bytes were copied.
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use crossway_tests::Runtime;
use crossway_tests::compositors::{Guest, Host, HostKind, wait_for_line};

#[test]
fn weston14_guest_dmabuf_client_shows_its_pixels() {
    let test = "weston14_guest_dmabuf_client_shows_its_pixels";
    let rt = Runtime::new().unwrap();
    let Some(host) = Host::start(&rt, test, HostKind::Weston14Gl).unwrap() else {
        return;
    };
    let guest = Guest::start(&rt, &host.display, "gl").unwrap();
    let (w, h) = (200u32, 150u32);
    let mut child = guest
        .client(&rt, env!("CARGO_BIN_EXE_crossway-test-client"))
        .args(["--buffer", "dmabuf", "--title", "dmabuf-guest"])
        .args(["--width", &w.to_string(), "--height", &h.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (shown, lines) = wait_for_line(&mut child, "shown", Duration::from_secs(20)).unwrap();
    assert!(
        shown && lines.iter().any(|l| l == "created"),
        "client said {lines:?}\n{}\n{}",
        guest.log_text(),
        host.log_text()
    );
    let quadrants = host
        .wait_for_quadrants(&rt, (w, h), Duration::from_secs(10))
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(quadrants.drawn(), "{quadrants}\n{}", guest.log_text());
    let stats = guest.relay_stats().unwrap();
    let total = &stats["total"];
    let _ = writeln!(
        std::io::stderr(),
        "weston14 dmabuf: buffers dmabuf zero-copy {} shm zero-copy {} copy {}, bytes copied {}",
        total["buffers_dmabuf_zero_copy"],
        total["buffers_shm_zero_copy"],
        total["buffers_copy"],
        total["bytes_copied"]
    );
    let buffers = [
        "buffers_dmabuf_zero_copy",
        "buffers_shm_zero_copy",
        "buffers_copy",
    ]
    .iter()
    .map(|k| total[k].as_u64().unwrap_or(0))
    .sum::<u64>();
    assert!(buffers > 0, "no buffer counted: {stats}");
}
