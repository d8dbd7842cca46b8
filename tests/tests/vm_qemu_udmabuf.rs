//! Zero copies proven with a real udmabuf: QEMU 10 (TCG) boots bookworm's 6.12 kernel, whose
//! udmabuf is built in, and the host side of Crossway runs inside it on the host's own root
//! (9p, read-only): `crossway-proxy headless`, `serve` and `vm` running the guest side,
//! `crossway-agent` with `crossway-test-client --buffer virtgpu` (guest blobs drawn through
//! their mapping, passed as PRIME dmabufs, forwarded by the agent by resource id).
//! Checked there: every guest blob became one udmabuf (469 page ranges each), serve's stats
//! count zero-copy buffers only and 0 bytes copied, the agent's 2 dmabufs forwarded and 0
//! bytes copied, the compositor shows pattern A exactly, then pattern B written through the
//! same guest mapping with still 0 bytes copied; and the CPU time of `serve` per 1920x1080
//! frame on the udmabuf path against `serve --no-udmabuf`.
//!
//! The harness is `tests/vm/run udmabuf` (scenario files `tests/vm/scenarios/udmabuf.*`),
//! which fetches QEMU and the kernel with apt into a cache outside the repository and exits
//! with 77 when it cannot (no network, not Debian amd64).
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

#[test]
#[allow(clippy::print_stdout)] // the figures (CPU per frame on both paths) are the test's output
fn host_side_in_vm_exports_guest_blobs_as_udmabufs_without_copies() {
    let proxy = crossway_tests::workspace_binary("crossway-proxy").unwrap();
    let agent = crossway_tests::workspace_binary("crossway-agent").unwrap();
    let client = std::ffi::OsStr::new(env!("CARGO_BIN_EXE_crossway-test-client"));
    let env = [
        ("CROSSWAY_PROXY", proxy.as_os_str()),
        ("CROSSWAY_AGENT", agent.as_os_str()),
        ("CROSSWAY_TEST_CLIENT", client),
    ];
    if let Some(report) =
        crossway_tests::run_vm_scenario("vm_qemu_udmabuf", "udmabuf", &env).unwrap()
    {
        println!("{report}");
    }
}
