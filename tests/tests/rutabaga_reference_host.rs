//! Guest programs against the reference host: `crossway-rutabaga-host` (rutabaga_gfx's
//! cross-domain context, what crosvm and libkrun run) behind the same loopback socket our
//! `crossway-proxy vm` serves, in front of the embedded headless compositor. The guest
//! programs run unchanged; where the reference host differs from our proxy (no Crossway
//! capset, no filtering or tagging, guest blobs refused in SEND) the tests say so.
//!
//! ```text
//!  crossway-xd-guest / probe / LoopbackClient ─loopback socket─▶ crossway-rutabaga-host
//!                                                  ─wayland─▶ crossway-proxy headless
//! ```
#![allow(clippy::unwrap_used)]

mod loopback_cross_domain_common;

use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use crossway_agent::channel::{Channel, ChannelConfig, ChannelError, ChannelMessage, SendId};
use crossway_loopback::LoopbackClient;
use crossway_protocols::cross_domain::gbm_flags;
use crossway_protocols::virtgpu::*;
use crossway_tests::rutabaga::RutabagaHost;
use crossway_tests::{Process, Runtime, require};
use loopback_cross_domain_common::{
    Host, Server, assert_bad_outcome, assert_host_blob_window, assert_keymap, assert_pasted,
    headless, host_selection, run_guest_ok, window_on,
};

const XDG_GUEST: &str = env!("CARGO_BIN_EXE_crossway-xd-guest");
const PROBE: &str = env!("CARGO_BIN_EXE_crossway-virtgpu-probe");
/// XRGB8888 as DRM names it.
const DRM_XRGB8888: u32 = u32::from_le_bytes(*b"XR24");

/// A headless compositor and the reference host in front of it.
struct Setup {
    rt: Runtime,
    host: Host,
    rutabaga: RutabagaHost,
}

fn setup() -> Setup {
    let rt = Runtime::new().unwrap();
    let host = headless(&rt, "host-0").unwrap();
    let rutabaga = RutabagaHost::start(&rt, &host.display).unwrap();
    Setup { rt, host, rutabaga }
}

impl Setup {
    fn server(&self) -> Server<'_> {
        Server::Reference(&self.rutabaga)
    }

    /// Runs a guest program to its end: (exit code, stdout lines, stderr).
    fn run(&self, program: &str, args: &[&str]) -> (Option<i32>, Vec<String>, String) {
        let mut cmd = self.rutabaga.guest_command(&self.rt, program);
        cmd.args(args);
        let (code, out, err) = Process::spawn(program, &mut cmd)
            .unwrap()
            .wait(Duration::from_secs(90))
            .unwrap();
        (code, out.lines().map(str::to_owned).collect(), err)
    }

    /// Runs `crossway-xd-guest ARGS`, which must exit 0; its stdout lines.
    fn xd_guest(&self, args: &[&str]) -> Vec<String> {
        run_guest_ok(&self.rt, &self.host, self.server(), args).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

#[test]
fn rutabaga_reference_host_registry_lists_host_globals_unfiltered() {
    let s = setup();
    let lines = s.xd_guest(&["registry"]);
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    let globals: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("global "))
        .map(|g| g.split(' ').next().unwrap())
        .collect();
    for needed in ["wl_compositor", "wl_shm", "xdg_wm_base", "wl_seat"] {
        assert!(globals.contains(&needed), "{needed} missing: {globals:?}");
    }
    // Nothing filters: the global our relay's policy denies reaches the guest here.
    assert!(
        globals.contains(&"wp_security_context_manager_v1"),
        "{globals:?}"
    );
}

/// No relay in between: title and app id arrive as the guest set them.
#[test]
fn rutabaga_reference_host_host_blob_window_shows_exact_pixels_untagged() {
    let s = setup();
    let lines = window_on(
        &s.rt,
        &s.host,
        s.server(),
        "host-blob-window",
        "xd-rutabaga",
    );
    // rutabaga's system allocator: LINEAR, rows of at least width * 4 bytes.
    assert_host_blob_window(&lines);
}

#[test]
fn rutabaga_reference_host_keymap_blob_maps_and_reads_xkb_keymap() {
    let s = setup();
    assert_keymap(&s.xd_guest(&["keymap"]));
}

const TEXT: &str = "crossway clipboard through rutabaga";

fn paste(test: &str, extra: &[&str]) {
    let (Some(wl_copy), Some(wl_paste)) = (
        require(test, "wl-copy", "wl-clipboard"),
        require(test, "wl-paste", "wl-clipboard"),
    ) else {
        return;
    };
    let s = setup();
    let _copy = host_selection(&s.rt, &s.host, (&wl_copy, &wl_paste), TEXT);
    let mut args = vec!["clipboard-paste"];
    args.extend_from_slice(extra);
    assert_pasted(&s.xd_guest(&args), TEXT);
}

#[test]
fn rutabaga_reference_host_clipboard_paste_reads_host_selection_through_pipe() {
    paste(
        "rutabaga_reference_host_clipboard_paste_reads_host_selection_through_pipe",
        &[],
    );
}

#[test]
fn rutabaga_reference_host_clipboard_paste_read_first_gets_text_without_other_traffic() {
    paste(
        "rutabaga_reference_host_clipboard_paste_read_first_gets_text_without_other_traffic",
        &["--read-first"],
    );
}

/// Bad SENDs: refused by rutabaga (the SUBMIT_3D fails) or the channel then fails; a fresh
/// channel still sees the globals.
fn bad(scenario: &str) {
    assert_bad_outcome(scenario, &setup().xd_guest(&[scenario]));
}

#[test]
fn rutabaga_reference_host_bad_resource_id_is_refused_host_still_serves() {
    bad("bad-resource");
}

#[test]
fn rutabaga_reference_host_bad_guessed_pipe_id_is_refused_host_still_serves() {
    bad("bad-pipe");
}

#[test]
fn rutabaga_reference_host_bad_message_size_fails_channel_host_still_serves() {
    bad("bad-size");
}

/// Our proxy's shm path (a guest blob as the wl_shm pool fd) is exactly what rutabaga refuses.
#[test]
fn rutabaga_reference_host_shm_window_guest_blob_in_send_is_refused() {
    let s = setup();
    let (code, lines, err) = s.run(XDG_GUEST, &["shm-window", "--frames", "1"]);
    assert_eq!(code, Some(1), "{lines:?}\n{err}");
    assert_eq!(lines[..2], ["configured", "buffer 96x64 guest-blob"]);
    assert!(
        lines[2].starts_with("failed: CMD_SEND failed: device answered 0x1200"),
        "{lines:?}"
    );
}

/// The probe walks the start-up sequence and stops where a rutabaga host differs from ours:
/// it has no Crossway capset.
#[test]
fn rutabaga_reference_host_virtgpu_probe_passes_start_up_lacks_crossway_capset() {
    let s = setup();
    let (code, lines, err) = s.run(PROBE, &[]);
    assert_eq!(code, Some(1), "{lines:?}\n{err}");
    assert_eq!(
        lines,
        [
            "address loopback",
            "params ok",
            "caps 5 wayland",
            "failed: Crossway capset 48 missing"
        ]
    );
}

/// The rest of the probe's sequence, in this process, on the reference host: what the kernel
/// and crosvm answer.
#[test]
fn rutabaga_reference_host_device_answers_like_kernel_and_crosvm() {
    let s = setup();
    let path = s.rutabaga.loopback_socket();
    let mut dev = LoopbackClient::connect(path).unwrap();
    for p in [
        VIRTGPU_PARAM_3D_FEATURES,
        VIRTGPU_PARAM_CAPSET_QUERY_FIX,
        VIRTGPU_PARAM_RESOURCE_BLOB,
        VIRTGPU_PARAM_HOST_VISIBLE,
        VIRTGPU_PARAM_CONTEXT_INIT,
    ] {
        assert_eq!(dev.get_param(p).unwrap(), 1, "param {p}");
    }
    // Cross-domain only.
    assert_eq!(
        dev.get_param(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS).unwrap(),
        1 << 5
    );
    let mut caps = [0u8; 16];
    assert_eq!(dev.get_caps(5, 0, &mut caps).unwrap(), 16);
    let word = |i: usize| u32::from_le_bytes(caps[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(word(0), 1, "capset version");
    assert_eq!(word(1), 1 << 1, "supported_channels: Wayland only");
    assert_eq!(word(2), 0, "no dmabuf allocator without a GPU");
    assert!(dev.get_caps(48, 0, &mut [0u8; 64]).is_err());

    dev.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS).unwrap();
    assert_eq!(
        dev.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS),
        Err(VirtGpuError::Os(17)),
        "a second CONTEXT_INIT is EEXIST"
    );

    // A 1 MiB guest blob: what one mapping writes, another reads (the same memory).
    const BIG: usize = 1 << 20;
    let big = dev
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_GUEST,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
            size: BIG as u64,
            ..Default::default()
        })
        .unwrap();
    let pattern: Vec<u8> = (0..BIG).map(|i| (i * 31 % 251) as u8).collect();
    dev.map(big.bo_handle)
        .unwrap()
        .write_at(0, &pattern)
        .unwrap();
    let mut back = vec![0u8; BIG];
    dev.map(big.bo_handle)
        .unwrap()
        .read_at(0, &mut back)
        .unwrap();
    assert!(back == pattern, "pattern read back differs");
    let info = dev.resource_info(big.bo_handle).unwrap();
    assert_eq!(
        (info.size as usize, info.blob_mem, info.res_handle),
        (BIG, VIRTGPU_BLOB_MEM_GUEST, big.res_handle)
    );

    // PRIME: the same file gets its handle back, another file a handle on the same resource.
    let fd = dev.prime_handle_to_fd(big.bo_handle).unwrap();
    assert_eq!(dev.prime_fd_to_handle(fd.as_fd()).unwrap(), big.bo_handle);
    let mut other = LoopbackClient::connect(path).unwrap();
    let h = other.prime_fd_to_handle(fd.as_fd()).unwrap();
    assert_eq!(other.resource_info(h).unwrap().res_handle, big.res_handle);
    let mut tail = [0u8; 64];
    other.map(h).unwrap().read_at(BIG - 64, &mut tail).unwrap();
    assert_eq!(tail[..], pattern[BIG - 64..]);
    // A foreign fd is no PRIME buffer of this device.
    let foreign = tempfile::tempfile().unwrap();
    assert!(other.prime_fd_to_handle(foreign.as_fd()).is_err());
    drop(other);
    // Blobs and handles go with the file; the second file's close left ours intact.
    let mut again = [0u8; 64];
    dev.map(big.bo_handle)
        .unwrap()
        .read_at(0, &mut again)
        .unwrap();
    assert_eq!(again[..], pattern[..64]);
    dev.gem_close(big.bo_handle).unwrap();
    assert_eq!(
        dev.resource_info(big.bo_handle),
        Err(VirtGpuError::NoSuchHandle(big.bo_handle))
    );
}

/// The agent's channel (`crossway_agent::channel`) opens on the reference host, learns there
/// is no Crossway capset, gets image requirements and a HOST3D blob for them, and survives a
/// refused SEND of a guest blob.
#[test]
fn rutabaga_reference_host_agent_channel_opens_images_and_survives_refused_send() {
    let s = setup();
    let dev = LoopbackClient::connect(s.rutabaga.loopback_socket()).unwrap();
    let mut ch = Channel::open(dev, ChannelConfig::default()).unwrap();
    assert_eq!(ch.caps().version, 1);
    assert!(!ch.caps().supports_dmabuf);
    assert_eq!(ch.caps().crossway, None, "no Crossway capset on rutabaga");

    let req = ch
        .image_requirements(96, 64, DRM_XRGB8888, gbm_flags::SCANOUT | gbm_flags::LINEAR)
        .unwrap();
    assert!(req.strides[0] >= 96 * 4, "{req:?}");
    assert!(req.size >= u64::from(req.strides[0]) * 64, "{req:?}");
    assert_eq!(req.modifier, 0, "LINEAR");
    let blob = ch.blob_for_image(&req).unwrap();
    blob.mapping.write_at(0, b"rutabaga").unwrap();
    let mut b = [0u8; 8];
    blob.mapping.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"rutabaga");

    // wl_display.sync(new_id 2), with a guest blob as its (extra) identifier: refused.
    let sync: [u8; 12] = [1, 0, 0, 0, 0, 0, 12, 0, 2, 0, 0, 0];
    let guest = ch.create_guest_blob(4096).unwrap();
    match ch.send(&sync, &[SendId::Blob(guest.res_id)]) {
        Err(ChannelError::Device { source, .. }) => {
            assert_eq!(source, VirtGpuError::Device(0x1200));
        }
        other => panic!("a guest blob in SEND was not refused: {other:?}"),
    }
    // The channel goes on: the same sync alone comes back as wl_callback.done on object 2.
    ch.send(&sync, &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no reply to wl_display.sync");
        match ch.next_message_timeout(left).unwrap() {
            Some(ChannelMessage::Receive { data, .. }) if data.starts_with(&[2, 0, 0, 0]) => break,
            Some(ChannelMessage::Eof) => panic!("the host closed the channel"),
            _ => {}
        }
    }
}

#[test]
fn rutabaga_reference_host_sigterm_exits_zero_and_removes_socket() {
    let s = setup();
    let socket = s.rutabaga.loopback_socket().to_owned();
    assert!(socket.exists());
    // A connected client does not keep it from stopping.
    let _client = LoopbackClient::connect(&socket).unwrap();
    assert_eq!(
        s.rutabaga.terminate(Duration::from_secs(10)).unwrap(),
        Some(0)
    );
    assert!(!socket.exists());
}
