//! `crossway-virtgpu-probe [--device SPEC]`: a tiny guest program that opens a virtgpu device
//! through `crossway_agent::device::AgentDevice`, as the agent does (`auto`: the device named by
//! `CROSSWAY_VIRTGPU`, else the first virtio_gpu render node), walks the start-up sequence a
//! guest agent does (sommelier's, cross-domain.md §1.1) and checks each answer.
//!
//! On the loopback (`crossway-proxy vm -- crossway-virtgpu-probe`) every step must work; output
//! (stdout), one line per step: `address loopback`, `params ok`, `caps 5 wayland`,
//! `caps 48 flags 0x..`, `context_init ok`, `rings 2`, `scattered 1048576 pattern ok`,
//! `prime ok res N`, `cmd_init ok` (or `cmd_init refused 0x..` when the host has no compositor
//! for the Wayland channel), `done`.
//!
//! On a real render node (the QEMU tier) the probe reports what the VMM allows instead of
//! failing: each parameter's value, the capsets, the steps the VMM does not forward as
//! `NAME unsupported by this VMM: ERRNO`, then real GEM objects without blobs: a handle that
//! does not exist, and a dumb buffer of the primary node imported with PRIME (resource info,
//! MAP with a pattern seen through the primary node's mapping, WAIT, PRIME export, GEM_CLOSE).
//! Any failure prints `failed: ...` and exits 1.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use crossway_agent::device::{AgentDevice, DeviceSpec, find_virtio_render_node};
use crossway_agent::drm::DumbBuffer;
use crossway_protocols::capset::{CrosswayCaps, DEFAULT_CROSSWAY_CAPSET_ID};
use crossway_protocols::cross_domain;
use crossway_protocols::virtgpu::*;

/// Probes a virtgpu device the way the guest agent opens it.
#[derive(Debug, Parser)]
#[command(name = "crossway-virtgpu-probe")]
struct Cli {
    /// `auto`, a render node such as /dev/dri/renderD128, or `loopback:PATH`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The primary node whose dumb buffer is imported on a render node.
    #[arg(long, default_value = "/dev/dri/card0")]
    card: PathBuf,
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The errno the kernel returned for `e` (the agent's mapping read backwards).
fn errno(e: &VirtGpuError) -> String {
    match e {
        VirtGpuError::InvalidArgument(_) => "EINVAL".into(),
        VirtGpuError::NoSuchHandle(_) => "ENOENT".into(),
        VirtGpuError::OutOfMemory(_) => "ENOMEM".into(),
        VirtGpuError::Busy => "EBUSY".into(),
        VirtGpuError::TimedOut => "ETIMEDOUT".into(),
        VirtGpuError::Device(code) => format!("device error {code:#x}"),
        VirtGpuError::DeviceLost(why) => format!("device lost ({why})"),
        VirtGpuError::Os(n) => format!("errno {n}"),
    }
}

fn guest_blob(dev: &mut impl VirtGpu, size: u64) -> Result<BlobHandles, VirtGpuError> {
    dev.resource_create_blob(&drm_virtgpu_resource_create_blob {
        blob_mem: VIRTGPU_BLOB_MEM_GUEST,
        blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
        size,
        ..Default::default()
    })
}

/// The cross-domain CMD_INIT {query ring, channel ring, Wayland} on `rings`.
fn cmd_init(dev: &mut impl VirtGpu, rings: [&BlobHandles; 2]) -> Result<(), VirtGpuError> {
    let mut init = Vec::new();
    cross_domain::encode::init(
        &mut init,
        rings[0].res_handle,
        rings[1].res_handle,
        cross_domain::CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND,
    );
    dev.execbuffer(&drm_virtgpu_execbuffer {
        flags: 0,
        command: &init,
        bo_handles: &[rings[0].bo_handle, rings[1].bo_handle],
        ring_idx: 0,
    })
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + seed) * 31 % 251) as u8).collect()
}

fn cross_domain_caps(dev: &mut AgentDevice) -> Result<()> {
    let mut caps = [0u8; 16];
    let n = dev.get_caps(cross_domain::CAPSET_CROSS_DOMAIN, 0, &mut caps)?;
    ensure!(n == 16, "capset 5 size {n}");
    let channels = u32::from_le_bytes([caps[4], caps[5], caps[6], caps[7]]);
    ensure!(channels & (1 << 1) != 0, "supported_channels lacks Wayland");
    say("caps 5 wayland")
}

fn crossway_caps(dev: &mut AgentDevice) -> Result<CrosswayCaps> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = dev.get_caps(DEFAULT_CROSSWAY_CAPSET_ID, 0, &mut buf)?;
    Ok(CrosswayCaps::from_bytes(
        buf.get(..n).context("capset larger than buffer")?,
    )?)
}

/// The loopback: every step of the agent's start-up must work.
fn probe_loopback(spec: &DeviceSpec, mut dev: AgentDevice) -> Result<()> {
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

    cross_domain_caps(&mut dev)?;
    let id = DEFAULT_CROSSWAY_CAPSET_ID;
    ensure!(ids & (1 << id) != 0, "Crossway capset {id} missing");
    let crossway = crossway_caps(&mut dev)?;
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
    let pattern = pattern(BIG, 0);
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
    ensure!(dev.prime_fd_to_handle(fd.as_fd())? == big.bo_handle);
    let mut other = AgentDevice::open(spec)?;
    let h = other.prime_fd_to_handle(fd.as_fd())?;
    ensure!(other.resource_info(h)?.res_handle == big.res_handle);
    let mut head = [0u8; 64];
    other.map(h)?.read_at(BIG - 64, &mut head)?;
    ensure!(head[..] == pattern[BIG - 64..], "imported mapping differs");
    say(&format!("prime ok res {}", big.res_handle))?;

    match cmd_init(&mut dev, [&rings[0].0, &rings[1].0]) {
        Ok(()) => say("cmd_init ok")?,
        Err(VirtGpuError::Device(code)) => say(&format!("cmd_init refused {code:#x}"))?,
        Err(e) => return Err(e.into()),
    }
    say("done")
}

/// A real render node: what the kernel and the VMM allow, each step reported.
fn probe_render_node(
    path: &std::path::Path,
    mut dev: AgentDevice,
    card: &std::path::Path,
) -> Result<()> {
    let rdev = dev.render_dev().context("a render node has a dev_t")?;
    say(&format!(
        "driver {} rdev {}:{}",
        crossway_agent::drm::VIRTIO_GPU_DRIVER,
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev)
    ))?;
    match find_virtio_render_node() {
        Some(p) => say(&format!("find_virtio_render_node {}", p.display()))?,
        None => say("find_virtio_render_node none")?,
    }

    let mut params = std::collections::HashMap::new();
    for (p, name) in [
        (VIRTGPU_PARAM_3D_FEATURES, "3D_FEATURES"),
        (VIRTGPU_PARAM_CAPSET_QUERY_FIX, "CAPSET_QUERY_FIX"),
        (VIRTGPU_PARAM_RESOURCE_BLOB, "RESOURCE_BLOB"),
        (VIRTGPU_PARAM_HOST_VISIBLE, "HOST_VISIBLE"),
        (VIRTGPU_PARAM_CROSS_DEVICE, "CROSS_DEVICE"),
        (VIRTGPU_PARAM_CONTEXT_INIT, "CONTEXT_INIT"),
        (VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS, "SUPPORTED_CAPSET_IDS"),
        (VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME, "EXPLICIT_DEBUG_NAME"),
    ] {
        match dev.get_param(p) {
            Ok(v) => {
                params.insert(p, v);
                say(&format!("param {name} {v:#x}"))?;
            }
            Err(e) => say(&format!(
                "param {name} unsupported by this kernel: {}",
                errno(&e)
            ))?,
        }
    }
    let ids = params
        .get(&VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS)
        .copied()
        .unwrap_or(0);
    ensure!(ids & (1 << 5) != 0, "capset 5 missing from {ids:#x}");
    cross_domain_caps(&mut dev)?;
    let id = DEFAULT_CROSSWAY_CAPSET_ID;
    if ids & (1 << id) != 0 {
        let c = crossway_caps(&mut dev)?;
        say(&format!(
            "caps {id} flags {:#x} formats {}",
            c.flags,
            c.formats.len()
        ))?;
    } else {
        say(&format!("caps {id} not offered"))?;
    }

    let context = dev.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS);
    match &context {
        Ok(()) => say("context_init ok")?,
        Err(e) => say(&format!(
            "context_init unsupported by this VMM: {}",
            errno(e)
        ))?,
    }
    let mut rings = Vec::new();
    match guest_blob(&mut dev, 4096) {
        Ok(h) => {
            let m = dev.map(h.bo_handle)?;
            ensure!(m.len() == 4096, "blob mapping size");
            m.write_at(0, &[0; 8])?;
            say("guest blob ok")?;
            rings.push(h);
            rings.push(guest_blob(&mut dev, 4096)?);
        }
        Err(e) => say(&format!(
            "guest blob unsupported by this VMM: {}",
            errno(&e)
        ))?,
    }
    if context.is_ok() && rings.len() == 2 {
        // A VMM that forwards both (crosvm, QEMU 11.2+): the cross-domain CMD_INIT.
        cmd_init(&mut dev, [&rings[0], &rings[1]])?;
        say("cmd_init queued")?;
    } else {
        // Without CONTEXT_INIT the file's context would be a virgl one, which the device
        // refuses asynchronously (a driver error in dmesg): nothing to prove with it.
        say("execbuffer skipped: needs CONTEXT_INIT and blobs")?;
    }

    // Every handle call reaches the driver: a handle this file never had is refused by the
    // GEM lookup, not by the ioctl dispatch.
    const BOGUS: u32 = 0xdead;
    let answer = |call: &str, r: Result<(), VirtGpuError>| {
        format!(
            "{call} {}",
            r.err().map_or("accepted".into(), |e| errno(&e))
        )
    };
    let refused = [
        answer("RESOURCE_INFO", dev.resource_info(BOGUS).map(drop)),
        answer("MAP", dev.map(BOGUS).map(drop)),
        answer("WAIT", dev.wait(BOGUS, 0)),
        answer(
            "PRIME_HANDLE_TO_FD",
            dev.prime_handle_to_fd(BOGUS).map(drop),
        ),
        answer("GEM_CLOSE", dev.gem_close(BOGUS)),
    ];
    say(&format!("bogus handle: {}", refused.join(", ")))?;

    // A real GEM object without blobs: a dumb buffer of the primary node, imported here.
    let dumb = DumbBuffer::create(card, 64, 64)
        .with_context(|| format!("dumb buffer on {}", card.display()))?;
    let h = dev.prime_fd_to_handle(dumb.dmabuf.as_fd())?;
    let info = dev.resource_info(h)?;
    ensure!(
        u64::from(info.size) == dumb.size,
        "RESOURCE_INFO size {} for a dumb buffer of {}",
        info.size,
        dumb.size
    );
    ensure!(info.res_handle != 0, "resource id 0");
    say(&format!(
        "dumb 64x64 imported: pitch {} size {} blob_mem {}",
        dumb.pitch, info.size, info.blob_mem
    ))?;
    let m = dev.map(h)?;
    ensure!(m.len() as u64 == dumb.size, "MAP length {}", m.len());
    let data = pattern(m.len(), 7);
    m.write_at(0, &data)?;
    let mut back = vec![0u8; data.len()];
    dumb.mapping.read_at(0, &mut back)?;
    ensure!(back == data, "the primary node's mapping shows other bytes");
    say("map ok: same pages as the primary node's mapping")?;
    dev.wait(h, 0)?;
    say("wait ok")?;
    let fd = dev.prime_handle_to_fd(h)?;
    ensure!(dev.prime_fd_to_handle(fd.as_fd())? == h, "PRIME round trip");
    let mut other = AgentDevice::open(&DeviceSpec::RenderNode(path.to_owned()))?;
    let oh = other.prime_fd_to_handle(fd.as_fd())?;
    ensure!(other.resource_info(oh)?.res_handle == info.res_handle);
    say("prime ok: same resource in another file")?;
    drop(m);
    dev.gem_close(h)?;
    match dev.resource_info(h) {
        Err(VirtGpuError::NoSuchHandle(_)) => say("gem_close ok")?,
        r => anyhow::bail!("RESOURCE_INFO after GEM_CLOSE: {r:?}"),
    }
    say("done")
}

fn probe(cli: &Cli) -> Result<()> {
    let spec: DeviceSpec = cli.device.parse()?;
    let spec = spec.resolve()?;
    let dev = AgentDevice::open(&spec)?;
    match &spec {
        DeviceSpec::Loopback(_) => {
            say("address loopback")?;
            probe_loopback(&spec, dev)
        }
        DeviceSpec::RenderNode(path) => {
            say(&format!("address {}", dev.describe()))?;
            probe_render_node(path, dev, &cli.card)
        }
        DeviceSpec::Auto => anyhow::bail!("auto did not resolve"),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match probe(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = say(&format!("failed: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
