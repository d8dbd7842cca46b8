//! A guest client rendering into virtio-gpu guest blobs, through the agent, with no copy in the
//! guest:
//!
//! ```text
//!  crossway-test-client --buffer virtgpu ─wayland (PRIME fd)─▶ crossway-agent ─SEND by resource id─▶
//!      crossway-proxy vm (loopback VM) ─vhost-user─▶ serve ─wayland─▶ headless
//! ```
//!
//! The client opens the device the agent opens (`CROSSWAY_VIRTGPU`, inherited from `vm`), draws
//! through each blob's mapping and passes its PRIME export as a LINEAR dmabuf. The agent
//! imports it on its own device file, names the resource in the SEND and copies nothing
//! (its stats); `serve` takes the buffers on the guest-blob path (udmabuf where
//! `/dev/udmabuf` exists, else the copy path); the host shows the exact pixels, before and
//! after the client writes a new picture through the same mapping.

#![allow(clippy::unwrap_used)]

#[path = "loopback_cross_domain_common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Host, headless};
use crossway_tests::pixels::{self, PixelDiff};
use crossway_tests::{Process, Runtime, workspace_binary};
use serde_json::{Value, json};

const VM: &str = "vm1";

/// Waits until every pixel of the tagged toplevel `title` is the client's picture (B if
/// `turned`); how the last look differed.
fn pixels_wrong(
    rt: &Runtime,
    host: &Host,
    title: &str,
    (w, h): (u32, u32),
    turned: bool,
) -> PixelDiff {
    let control = host.control.clone().unwrap();
    let tagged = format!("[{VM}] {title}");
    pixels::wait_toplevel(&control, &tagged).unwrap_or_else(|e| panic!("{e:#}"));
    pixels::wait_for_pixels(
        &control,
        &rt.path().join("window.png"),
        &tagged,
        (w, h),
        |x, y| {
            let (x, y) = if turned {
                pixels::turned(x, y, w, h)
            } else {
                (x, y)
            };
            pixels::opaque(pixels::test_client_rgb(x, y, w, h))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn stats(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("stats file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn touch(path: &Path) {
    std::fs::write(path, b"").unwrap();
}

/// `crossway-proxy vm --stats-file SERVE_STATS -- crossway-agent --stats-file AGENT_STATS --
/// crossway-test-client --buffer virtgpu ARGS`.
fn chain(rt: &Runtime, host: &Host, client_args: &[&str]) -> (Process, PathBuf, PathBuf) {
    let serve_stats = rt.path().join("serve.json");
    let agent_stats = rt.path().join("agent.json");
    let mut cmd = Command::new(workspace_binary("crossway-proxy").unwrap());
    cmd.env("XDG_RUNTIME_DIR", rt.path())
        .args(["vm", "--vm-name", VM, "--wayland-display"])
        .arg(&host.display)
        .arg("--stats-file")
        .arg(&serve_stats)
        .arg("--")
        .arg(workspace_binary("crossway-agent").unwrap())
        .arg("--socket")
        .arg(rt.path().join("agent.sock"))
        .arg("--stats-file")
        .arg(&agent_stats)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_crossway-test-client"))
        .args(["--buffer", "virtgpu"])
        .args(client_args)
        .stdin(Stdio::null());
    (
        Process::spawn("crossway-proxy vm", &mut cmd).unwrap(),
        serve_stats,
        agent_stats,
    )
}

#[test]
fn virtgpu_blobs_reach_the_host_by_resource_id_with_no_guest_copy() {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let (go_b, done) = (rt.path().join("go-b"), rt.path().join("done"));
    // A padded stride and a plane offset: the layout travels with the resource id as it is.
    let (w, h) = (200u32, 150u32);
    let (vm, serve_stats, agent_stats) = chain(
        &rt,
        &host,
        &[
            "--width",
            "200",
            "--height",
            "150",
            "--offset",
            "256",
            "--stride",
            "896",
            "--frames",
            "3",
            "--still",
            "--title",
            "zero-copy",
            "--change-after",
            go_b.to_str().unwrap(),
            "--hold-until",
            done.to_str().unwrap(),
        ],
    );
    let a = pixels_wrong(&rt, &host, "zero-copy", (w, h), false);
    // Pattern B goes into the buffer on screen through the same mapping, then a commit.
    touch(&go_b);
    let b = pixels_wrong(&rt, &host, "zero-copy", (w, h), true);
    touch(&done);
    let (code, out, err) = vm.wait(Duration::from_secs(60)).unwrap();
    assert!(
        a.exact() && b.exact(),
        "pixels differ: A {a}, B {b}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in ["device loopback ", "blob res ", "changed", "released"] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }

    // The agent named both blobs by resource id and copied nothing.
    let agent = stats(&agent_stats);
    assert_eq!(agent["dmabufs_forwarded"], json!(2), "{agent}");
    assert_eq!(agent["dmabufs_copied"], json!(0), "{agent}");
    assert_eq!(agent["bytes_copied"], json!(0), "{agent}");
    assert!(agent["frames"].as_u64().unwrap() >= 5, "{agent}");

    // serve took both on the guest-blob path: a udmabuf over the guest's pages where the
    // kernel has one, else a host memfd refreshed at each commit. Never a host blob.
    let serve = stats(&serve_stats);
    let t = &serve["total"];
    let zero_copy = t["buffers_dmabuf_zero_copy"].as_u64().unwrap();
    let copied = t["buffers_copy"].as_u64().unwrap();
    assert_eq!(zero_copy + copied, 2, "{serve}");
    assert_eq!(t["buffers_shm_zero_copy"], json!(0), "{serve}");
    if Path::new("/dev/udmabuf").exists() {
        assert_eq!(
            (zero_copy, t["bytes_copied"].as_u64()),
            (2, Some(0)),
            "{serve}"
        );
    } else {
        // Without udmabuf serve copies the damaged rows: each commit is full damage.
        assert_eq!(copied, 2, "{serve}");
        println!(
            "no /dev/udmabuf here: serve copied {} bytes over {} commits (guest copied 0)",
            t["bytes_copied"], t["frames"]
        );
    }
}
