//! `crossway-virtgpu-probe`: a tiny guest program for `crossway-proxy vm`. It opens the virtgpu
//! device named by `CROSSWAY_VIRTGPU` (only `loopback:PATH` today), walks the start-up sequence
//! a guest agent does (sommelier's, cross-domain.md §1.1) and checks each answer.
//!
//! Output (stdout), one line per step, for tests: `address loopback`, `params ok`,
//! `caps 5 wayland`, `caps 48 flags 0x..`, `context_init ok`, `rings 2`,
//! `scattered 1048576 pattern ok`, `prime ok res N`, `cmd_init ok` (or `cmd_init refused 0x..`
//! when the host has no compositor for the Wayland channel), `done`. Any failure prints
//! `failed: ...` and exits 1.

#![forbid(unsafe_code)]

use std::io::Write as _;

use anyhow::{Context as _, Result, bail, ensure};
use crossway_protocols::capset::{CrosswayCaps, DEFAULT_CROSSWAY_CAPSET_ID};
use crossway_protocols::cross_domain;
use crossway_protocols::virtgpu::*;
use crossway_virtio::loopback::LoopbackClient;

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn guest_blob(dev: &mut impl VirtGpu, size: u64) -> Result<BlobHandles> {
    Ok(dev.resource_create_blob(&drm_virtgpu_resource_create_blob {
        blob_mem: VIRTGPU_BLOB_MEM_GUEST,
        blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
        size,
        ..Default::default()
    })?)
}

fn probe() -> Result<()> {
    let value = std::env::var(CROSSWAY_VIRTGPU_ENV)
        .with_context(|| format!("{CROSSWAY_VIRTGPU_ENV} is not set"))?;
    let path = match VirtGpuAddress::from_env_value(&value)? {
        VirtGpuAddress::Loopback(p) => p,
        VirtGpuAddress::RenderNode(p) => {
            bail!(
                "render node {} not supported by this probe yet",
                p.display()
            )
        }
    };
    say("address loopback")?;
    let mut dev = LoopbackClient::connect(&path)?;

    for p in [
        VIRTGPU_PARAM_3D_FEATURES,
        VIRTGPU_PARAM_CAPSET_QUERY_FIX,
        VIRTGPU_PARAM_RESOURCE_BLOB,
        VIRTGPU_PARAM_HOST_VISIBLE,
        VIRTGPU_PARAM_CONTEXT_INIT,
    ] {
        ensure!(dev.get_param(p)? == 1, "GETPARAM {p} is not 1");
    }
    let ids = dev.get_param(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS)?;
    ensure!(ids & (1 << 5) != 0, "capset 5 missing from {ids:#x}");
    say("params ok")?;

    let mut caps = [0u8; 16];
    ensure!(dev.get_caps(5, 0, &mut caps)? == 16, "capset 5 size");
    let channels = u32::from_le_bytes([caps[4], caps[5], caps[6], caps[7]]);
    ensure!(channels & (1 << 1) != 0, "supported_channels lacks Wayland");
    say("caps 5 wayland")?;

    let id = DEFAULT_CROSSWAY_CAPSET_ID;
    ensure!(ids & (1 << id) != 0, "Crossway capset {id} missing");
    let mut buf = vec![0u8; 64 * 1024];
    let n = dev.get_caps(id, 0, &mut buf)?;
    let crossway = CrosswayCaps::from_bytes(buf.get(..n).context("capset larger than buffer")?)?;
    say(&format!("caps {id} flags {:#x}", crossway.flags))?;

    dev.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS)?;
    say("context_init ok")?;

    let mut rings = Vec::new();
    for _ in 0..2 {
        let h = guest_blob(&mut dev, 4096)?;
        let m = dev.map(h.bo_handle)?;
        ensure!(m.len() == 4096, "ring mapping size");
        m.write_at(0, &[0; 8])?;
        rings.push((h, m));
    }
    say("rings 2")?;

    // 1 MiB of guest RAM: its pages are scattered over both RAM regions by the loopback.
    const BIG: usize = 1 << 20;
    let big = guest_blob(&mut dev, BIG as u64)?;
    let pattern: Vec<u8> = (0..BIG).map(|i| (i * 31 % 251) as u8).collect();
    dev.map(big.bo_handle)?.write_at(0, &pattern)?;
    // A fresh mapping reads guest RAM again, not this process's copy.
    let mut back = vec![0u8; BIG];
    dev.map(big.bo_handle)?.read_at(0, &mut back)?;
    ensure!(back == pattern, "pattern read back differs");
    let info = dev.resource_info(big.bo_handle)?;
    ensure!(info.size as usize == BIG && info.blob_mem == VIRTGPU_BLOB_MEM_GUEST);
    say(&format!("scattered {BIG} pattern ok"))?;

    // PRIME: the same file gets its handle back; another file (connection) a new handle on the
    // same resource, whose mapping shows the pattern.
    let fd = dev.prime_handle_to_fd(big.bo_handle)?;
    ensure!(dev.prime_fd_to_handle(std::os::fd::AsFd::as_fd(&fd))? == big.bo_handle);
    let mut other = LoopbackClient::connect(&path)?;
    let h = other.prime_fd_to_handle(std::os::fd::AsFd::as_fd(&fd))?;
    ensure!(other.resource_info(h)?.res_handle == big.res_handle);
    let mut head = [0u8; 64];
    other.map(h)?.read_at(BIG - 64, &mut head)?;
    ensure!(head[..] == pattern[BIG - 64..], "imported mapping differs");
    say(&format!("prime ok res {}", big.res_handle))?;

    // Cross-domain CMD_INIT {query ring, channel ring, Wayland}.
    let mut init = Vec::new();
    cross_domain::encode::init(
        &mut init,
        rings[0].0.res_handle,
        rings[1].0.res_handle,
        cross_domain::CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND,
    );
    match dev.execbuffer(&drm_virtgpu_execbuffer {
        flags: 0,
        command: &init,
        bo_handles: &[rings[0].0.bo_handle, rings[1].0.bo_handle],
        ring_idx: 0,
    }) {
        Ok(()) => say("cmd_init ok")?,
        Err(VirtGpuError::Device(code)) => say(&format!("cmd_init refused {code:#x}"))?,
        Err(e) => return Err(e.into()),
    }
    say("done")
}

fn main() -> std::process::ExitCode {
    match probe() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = say(&format!("failed: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
