//! Crossway as users run it, in a real VM: QEMU 11.1 (TCG) gives a real Linux guest Crossway's
//! device through its generic vhost-user device, with the arguments README.md shows
//! (`packaging/qemu/crossway-qemu-args`), served by `crossway-proxy serve` relaying to a
//! headless compositor on this host. In the guest, `crossway-agent` on the real render node runs
//! test clients (shm, guest blobs, HOST3D pools), two at once, a restart, wayland-info, the
//! hostile cross-domain programs, weston-simple-shm and a 1 MB paste of the host's clipboard; `crossway-xd-guest host-blob-window`
//! draws into host memory mapped into the guest. The host judges pixels, titles and the
//! counters of serve and the agents (tests/vm/scenarios/real-guest.sh lists each check).
//!
//! One boot per guest kernel: bookworm's 6.12 and the newest Debian kernel (their virtio_gpu
//! drivers differ). The harness fetches QEMU 11.1 and the kernels with apt into a cache outside
//! the repository and exits with 77 when it cannot (no network, not Debian amd64).
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

#[test]
#[allow(clippy::print_stdout)] // the harness's report is the test's output
fn real_guest_qemu11_scenarios_on_both_kernels() {
    let proxy = crossway_tests::workspace_binary("crossway-proxy").unwrap();
    let agent = crossway_tests::workspace_binary("crossway-agent").unwrap();
    // The scenario runs the agent, the test client and xd-guest from one folder.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_crossway-xd-guest"))
        .parent()
        .unwrap();
    assert_eq!(agent.parent(), Some(bin_dir), "{}", agent.display());
    assert!(bin_dir.join("crossway-test-client").exists());
    let mut failed = Vec::new();
    for kernel in ["6.12", "newest"] {
        let env = [
            ("CROSSWAY_PROXY", proxy.as_os_str()),
            ("CROSSWAY_BIN_DIR", bin_dir.as_os_str()),
            ("CROSSWAY_VM_KERNEL", std::ffi::OsStr::new(kernel)),
        ];
        let test = format!("vm_qemu_real_guest ({kernel} kernel)");
        match crossway_tests::run_vm_scenario(&test, "real-guest", &env) {
            Ok(Some(report)) => println!("{report}"),
            Ok(None) => {}
            Err(e) => failed.push(format!("{kernel}: {e:#}")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
