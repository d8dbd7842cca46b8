//! Conformance: the loopback VM replays the guest-side call sequence of sommelier and
//! wayland-proxy-virtwl (cross-domain.md §1.1 steps 1-7) against the real
//! `crossway-proxy serve` binary, over a real vhost-user socket, and checks its answers.
//!
//! Steps 6-7 run the cross-domain context: INIT (V0, Wayland channel) is accepted and connects
//! to the embedded headless compositor (`serve --headless`); the POLL fence stays pending until
//! the host writes the channel ring, which it does once `wl_display.get_registry` + `sync`
//! have been answered: a RECEIVE carrying the registry's globals.

use std::process::Command;
use std::time::{Duration, Instant};

use crossway_protocols::virtgpu::*;
use crossway_protocols::wire;
use crossway_tests::{Process, Runtime, workspace_binary};
use crossway_virtio::loopback::{LoopbackConfig, LoopbackVm};

#[test]
fn loopback_sommelier_sequence_against_serve_matches_expected_answers() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let sock = rt.path().join("gpu.sock");
    let _serve = Process::spawn(
        "crossway-proxy serve",
        Command::new(workspace_binary("crossway-proxy")?)
            .args(["serve", "--no-udmabuf", "--headless", "--socket-path"])
            .arg(&sock),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        anyhow::ensure!(Instant::now() < deadline, "serve never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let vm = LoopbackVm::connect(&sock, LoopbackConfig::default())?;
    // 1. open the render node.
    let mut f = vm.open()?;
    // 2. the params sommelier requires, and capset 5 in the mask.
    for p in [
        VIRTGPU_PARAM_3D_FEATURES,
        VIRTGPU_PARAM_CAPSET_QUERY_FIX,
        VIRTGPU_PARAM_RESOURCE_BLOB,
        VIRTGPU_PARAM_HOST_VISIBLE,
        VIRTGPU_PARAM_CONTEXT_INIT,
    ] {
        assert_eq!(f.get_param(p)?, 1, "GETPARAM {p}");
    }
    assert_ne!(
        f.get_param(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS)? & (1 << 5),
        0
    );
    // 3. GET_CAPS(5, size 16): CrossDomainCapabilities with the Wayland channel.
    let mut caps = [0u8; 16];
    assert_eq!(f.get_caps(5, 0, &mut caps)?, 16);
    let word = |i: usize| u32::from_le_bytes([caps[i], caps[i + 1], caps[i + 2], caps[i + 3]]);
    assert_eq!(word(0), 1, "version");
    assert_ne!(word(4) & (1 << 1), 0, "supported_channels has Wayland");
    // 4. CONTEXT_INIT{CAPSET_ID=5, NUM_RINGS=2, POLL_RINGS_MASK=1<<1}.
    f.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS)?;
    // 5. two one-page GUEST MAPPABLE rings, mapped.
    let mut rings = Vec::new();
    for _ in 0..2 {
        let h = f.resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_GUEST,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            size: 4096,
            ..Default::default()
        })?;
        let m = f.map(h.bo_handle)?;
        assert_eq!(m.len(), 4096);
        m.write_at(0, &[0; 8])?;
        rings.push((h, m));
    }
    let (query, channel) = (rings[0].0, rings[1].0);
    // 6. EXECBUFFER (no ring) with CMD_INIT V0 {query, channel, WAYLAND}.
    let mut init = vec![1u8, 0, 20, 0, 0, 0, 0, 0];
    for w in [query.res_handle, channel.res_handle, 1] {
        init.extend_from_slice(&w.to_le_bytes());
    }
    let r = f.execbuffer(&drm_virtgpu_execbuffer {
        flags: 0,
        command: &init,
        bo_handles: &[query.bo_handle, channel.bo_handle],
        ring_idx: 0,
    });
    assert_eq!(r, Ok(()), "CMD_INIT");
    // 7. EXECBUFFER(RING_IDX, ring 1) with CMD_POLL: accepted, its fence held.
    let poll = [3u8, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let submit_poll = |f: &mut crossway_virtio::loopback::LoopbackFile| {
        f.execbuffer(&drm_virtgpu_execbuffer {
            flags: VIRTGPU_EXECBUF_RING_IDX,
            command: &poll,
            bo_handles: &[],
            ring_idx: 1,
        })
    };
    assert_eq!(submit_poll(&mut f), Ok(()), "CMD_POLL");
    assert!(
        !fence_event(&f, Duration::from_millis(200))?,
        "POLL fence signalled with nothing in the channel ring"
    );
    // A SEND of wl_display.get_registry(2) + sync(3), without ring: the host's answer signals
    // the POLL fence with one RECEIVE in the channel ring.
    let mut wayland = Vec::new();
    for (opcode, new_id) in [(1u32, 2u32), (0, 3)] {
        wayland.extend_from_slice(&1u32.to_ne_bytes());
        wayland.extend_from_slice(&((12u32 << 16) | opcode).to_ne_bytes());
        wayland.extend_from_slice(&new_id.to_ne_bytes());
    }
    let mut send = vec![0u8; 352];
    send[0] = 4;
    send[2..4].copy_from_slice(&((352 + wayland.len()) as u16).to_le_bytes());
    send[12..16].copy_from_slice(&(wayland.len() as u32).to_le_bytes());
    send.extend_from_slice(&wayland);
    f.execbuffer(&drm_virtgpu_execbuffer {
        flags: 0,
        command: &send,
        bo_handles: &[],
        ring_idx: 0,
    })?;
    let mut stream = Vec::new();
    let mut page = [0u8; 4096];
    loop {
        anyhow::ensure!(fence_event(&f, Duration::from_secs(10))?, "no RECEIVE");
        rings[1].1.read_at(0, &mut page)?;
        // RECEIVE (5) in the first u32: header bytes 1-7 zero, as wayland-proxy-virtwl reads.
        assert_eq!(&page[..8], &[5, 0, 0, 0, 0, 0, 0, 0]);
        let size = u32::from_le_bytes(page[12..16].try_into()?) as usize;
        assert!(size > 0 && size <= 3744, "data size {size}");
        stream.extend_from_slice(&page[352..352 + size]);
        if has_message(&stream, 3, 0) {
            break;
        }
        assert_eq!(submit_poll(&mut f), Ok(()));
    }
    assert!(has_message(&stream, 2, 0), "no wl_registry.global");
    assert!(
        stream.windows(13).any(|w| w == b"wl_compositor"),
        "wl_compositor not advertised"
    );
    Ok(())
}

/// Whether the Wayland stream holds a message from `object` with `opcode`.
fn has_message(stream: &[u8], object: u32, opcode: u16) -> bool {
    let mut rest = stream;
    while let Ok(Some(m)) = wire::next_message(rest) {
        if m.header.object.get() == object && m.header.opcode == opcode {
            return true;
        }
        rest = &rest[usize::from(m.header.size)..];
    }
    false
}

/// Waits for one fence event on the device file.
fn fence_event(
    f: &crossway_virtio::loopback::LoopbackFile,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let efd = f.event_fd();
    let mut fds = [rustix::event::PollFd::new(
        &efd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    if rustix::event::poll(&mut fds, Some(&ts))? == 0 {
        return Ok(false);
    }
    let mut b = [0u8; 64];
    let n = rustix::io::read(f.event_fd(), &mut b)?;
    let (events, rest) = DrmEvent::decode_all(&b[..n]);
    anyhow::ensure!(
        rest.is_ok() && events.len() == 1,
        "expected one fence event"
    );
    Ok(true)
}
