//! A real Linux guest driver against our device: QEMU 10 (TCG) boots bookworm's 6.12 kernel with
//! a `vhost-user-gpu-pci` device served by `crossway-proxy serve`; the guest's virtio_gpu driver
//! probes it, counts its capsets and runs fbcon on its framebuffer; and the agent's virtgpu
//! device code makes real ioctls on the guest's render node.
//!
//! The harness is `tests/vm/run`, which fetches QEMU and the kernel with apt into a cache
//! outside the repository and exits with 77 when it cannot (no network, not Debian amd64).
#![allow(clippy::unwrap_used)] // a failed unwrap is the test failure

/// Runs `tests/vm/run SCENARIO` with our binaries; its report is the test's output.
#[allow(clippy::print_stdout)] // the harness's report is the test's output
fn run_scenario(scenario: &str, test: &str) {
    let proxy = crossway_tests::workspace_binary("crossway-proxy").unwrap();
    // The binaries scenarios ship into the guest (`scenario_binaries`) are this package's.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_crossway-virtgpu-probe"))
        .parent()
        .unwrap();
    let env = [
        ("CROSSWAY_PROXY", proxy.as_os_str()),
        ("CROSSWAY_BIN_DIR", bin_dir.as_os_str()),
    ];
    if let Some(report) = crossway_tests::run_vm_scenario(test, scenario, &env).unwrap() {
        println!("{report}");
    }
}

#[test]
fn linux_guest_probes_device_counts_capsets_and_runs_console() {
    run_scenario("device-probe", "vm_qemu_guest_driver");
}

/// The agent's device code on a real kernel: `crossway-virtgpu-probe` inside the guest opens
/// `/dev/dri/renderD128` through `crossway_agent::device::AgentDevice` (found by
/// `find_virtio_render_node`) and makes the real virtgpu ioctls; what QEMU 10 does not forward
/// (CONTEXT_INIT, RESOURCE_CREATE_BLOB) must fail with EINVAL, everything else must work
/// (tests/vm/scenarios/agent-device.sh lists each check).
#[test]
fn linux_guest_agent_device_real_ioctls_on_render_node() {
    run_scenario("agent-device", "vm_qemu_guest_driver agent-device");
}
