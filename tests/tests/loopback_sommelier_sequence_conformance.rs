//! Conformance: the loopback VM replays the guest-side call sequence of sommelier and
//! wayland-proxy-virtwl (cross-domain.md §1.1 steps 1-7) against the real
//! `crossway-proxy serve` binary, over a real vhost-user socket, and checks its answers.
//!
//! Steps 6-7 (cross-domain INIT and POLL in SUBMIT_3D) are refused today: `serve` runs
//! `NullContextFactory` until the cross-domain context exists. Issue 6 turns these two
//! assertions into successes (INIT accepted, the POLL fence held until the host writes the
//! channel ring).

use std::process::Command;
use std::time::{Duration, Instant};

use crossway_protocols::virtgpu::*;
use crossway_tests::{Process, Runtime, workspace_binary};
use crossway_virtio::loopback::{LoopbackConfig, LoopbackVm};

#[test]
fn loopback_sommelier_sequence_against_serve_matches_expected_answers() -> anyhow::Result<()> {
    let rt = Runtime::new()?;
    let sock = rt.path().join("gpu.sock");
    let _serve = Process::spawn(
        "crossway-proxy serve",
        Command::new(workspace_binary("crossway-proxy")?)
            .args(["serve", "--no-udmabuf", "--socket-path"])
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
    // Today: NullContext refuses SUBMIT_3D with VIRTIO_GPU_RESP_ERR_UNSPEC (issue 6: Ok).
    assert_eq!(r, Err(VirtGpuError::Device(0x1200)));
    // 7. EXECBUFFER(RING_IDX, ring 1) with CMD_POLL.
    let poll = [3u8, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let r = f.execbuffer(&drm_virtgpu_execbuffer {
        flags: VIRTGPU_EXECBUF_RING_IDX,
        command: &poll,
        bo_handles: &[],
        ring_idx: 1,
    });
    // Today: refused the same way (issue 6: Ok, with the fence held until a ring write).
    assert_eq!(r, Err(VirtGpuError::Device(0x1200)));
    Ok(())
}
