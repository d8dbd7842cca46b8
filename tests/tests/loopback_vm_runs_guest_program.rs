//! `crossway-proxy vm -- crossway-virtgpu-probe`: the vm command starts `crossway-proxy serve`
//! as its child, runs the loopback VM and its socket, and the probe, in a third process, opens
//! the device from `CROSSWAY_VIRTGPU` and walks the agent's start-up sequence through it.
//!
//! `vm --headless` makes its `serve` relay to the embedded headless compositor, so the
//! probe's cross-domain CMD_INIT (Wayland channel) connects: `cmd_init ok`.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use crossway_tests::{Process, Runtime, workspace_binary};

#[test]
fn loopback_vm_runs_guest_program_through_serve() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let sock = rt.path().join("virtgpu.sock");
    let vm = Process::spawn(
        "crossway-proxy vm",
        Command::new(workspace_binary("crossway-proxy")?)
            .env("XDG_RUNTIME_DIR", rt.path())
            .args(["vm", "--headless", "--socket"])
            .arg(&sock)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_crossway-virtgpu-probe")),
    )?;
    let (code, out, err) = vm.wait(Duration::from_secs(60))?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "address loopback",
            "params ok",
            "caps 5 wayland",
            // GUEST_BLOBS_IN_SEND | HOST_BLOBS_MAPPABLE (serve offers a host-visible window).
            "caps 48 flags 0x5",
            "context_init ok",
            "rings 2",
            "scattered 1048576 pattern ok",
            "prime ok res 3",
            "cmd_init ok",
            "done",
        ],
        "stderr:\n{err}"
    );
    assert_eq!(code, Some(0), "stderr:\n{err}");
    // Everything the vm command made is gone: its socket and its private directory.
    assert!(!sock.exists(), "loopback socket left behind");
    let left: Vec<_> = std::fs::read_dir(rt.path())?.collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn loopback_vm_exit_status_is_guest_programs() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let vm = Process::spawn(
        "crossway-proxy vm",
        Command::new(workspace_binary("crossway-proxy")?)
            .env("XDG_RUNTIME_DIR", rt.path())
            .args(["vm", "--", "sh", "-c"])
            .arg("case $CROSSWAY_VIRTGPU in loopback:/*) test -S ${CROSSWAY_VIRTGPU#loopback:} && exit 7;; esac; exit 1"),
    )?;
    let (code, _, err) = vm.wait(Duration::from_secs(60))?;
    assert_eq!(code, Some(7), "stderr:\n{err}");
    assert_eq!(std::fs::read_dir(rt.path())?.count(), 0);
    Ok(())
}

#[test]
fn loopback_vm_sigterm_stops_guest_and_cleans_up() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let sock = rt.path().join("virtgpu.sock");
    let mut vm = Process::spawn(
        "crossway-proxy vm",
        Command::new(workspace_binary("crossway-proxy")?)
            .env("XDG_RUNTIME_DIR", rt.path())
            .args(["vm", "--socket"])
            .arg(&sock)
            .args(["--", "sleep", "60"]),
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        anyhow::ensure!(vm.running(), "vm exited early");
        anyhow::ensure!(std::time::Instant::now() < deadline, "vm never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = vm.id().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let (code, _, err) = vm.wait(Duration::from_secs(20))?;
    // sleep died of the forwarded SIGTERM: 128 + 15.
    assert_eq!(code, Some(143), "stderr:\n{err}");
    assert!(!sock.exists());
    assert_eq!(std::fs::read_dir(rt.path())?.count(), 0);
    Ok(())
}
