//! The device model: resources, blobs, contexts, scanouts, capsets and limits, one command at
//! a time. Transport-free: [`GpuDevice::process`] takes request bytes and returns response
//! bytes; `queue.rs` moves them through virtqueues and holds fenced descriptors.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crossway_protocols::capset::{
    CROSSWAY_CAPSET_VERSION, CROSSWAY_FLAG_GUEST_BLOBS_ZERO_COPY,
    CROSSWAY_FLAG_HOST_BLOBS_MAPPABLE, CrosswayCaps,
};
use crossway_protocols::cross_domain::{
    CAPSET_CROSS_DOMAIN, CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND, CROSS_DOMAIN_VERSION,
    CrossDomainCapabilities,
};
use vm_memory::GuestAddressSpace;
use zerocopy::IntoBytes;

use crate::blob::{BlobExporter, ExportMode, GuestExport, copy_range};
use crate::context::{
    Context, ContextError, ContextFactory, ContextResources, CtxId, ExportedFd, GuestWriter,
    HostBlob, ResourceId, ResourceInfo, ResourceKind,
};
use crate::fence::{FenceSignaler, FenceTable, HeldDescriptor, Timeline};
use crate::memory::{Backing, GuestMem, GuestMemHandle};
use crate::protocol::*;
use crate::stats::DeviceStats;

/// Per-VM limits. Hitting one answers `ERR_OUT_OF_MEMORY` and logs the limit's name once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live resources.
    pub max_resources: u32,
    /// Bytes of all resources together: blob sizes plus 2D resources' host copies.
    pub max_blob_bytes: u64,
    /// Live contexts.
    pub max_contexts: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_resources: 16 * 1024,
            max_blob_bytes: 4 << 30,
            max_contexts: 256,
        }
    }
}

/// The Crossway capset as this device advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrosswayCapset {
    /// Capset id, 1..64 and not 5 (the guest reports capsets as a 64-bit mask).
    pub id: u32,
    /// Flags and the host compositor's preference list. The device adds
    /// `GUEST_BLOBS_ZERO_COPY` and `HOST_BLOBS_MAPPABLE` itself when they hold.
    pub caps: CrosswayCaps,
}

/// Device configuration.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Scanout modes, one per scanout (at most 16).
    pub scanouts: Vec<(u32, u32)>,
    /// Cross-domain capset 5, if offered.
    pub cross_domain: Option<CrossDomainCapabilities>,
    /// Crossway capset, if offered.
    pub crossway: Option<CrosswayCapset>,
    /// Per-VM limits.
    pub limits: Limits,
    /// Guest blob export path.
    pub export_mode: ExportMode,
    /// Size of the host-visible shared-memory region (shmid 1) offered to the frontend;
    /// 0 offers none.
    pub host_visible_size: u64,
}

/// Why a configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Capset id out of range or clashing with cross-domain.
    #[error("crossway capset id {0} must be in 1..64 and not 5")]
    CapsetId(u32),
    /// Scanout count.
    #[error("{0} scanouts configured; 1..=16 are possible")]
    Scanouts(usize),
}

impl Default for DeviceConfig {
    fn default() -> DeviceConfig {
        DeviceConfig {
            scanouts: vec![(1280, 800)],
            cross_domain: Some(default_cross_domain_caps()),
            crossway: Some(CrosswayCapset {
                id: crossway_protocols::capset::DEFAULT_CROSSWAY_CAPSET_ID,
                caps: CrosswayCaps::default(),
            }),
            limits: Limits::default(),
            export_mode: ExportMode::Auto,
            host_visible_size: 4 << 30,
        }
    }
}

/// Capset 5 as Crossway offers it: the Wayland channel, dmabuf export.
pub fn default_cross_domain_caps() -> CrossDomainCapabilities {
    CrossDomainCapabilities {
        version: CROSS_DOMAIN_VERSION.into(),
        supported_channels: (1u32 << CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND).into(),
        supports_dmabuf: 1.into(),
        supports_external_gpu_memory: 0.into(),
    }
}

impl DeviceConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.crossway
            && (c.id == 0 || c.id >= 64 || c.id == CAPSET_CROSS_DOMAIN)
        {
            return Err(ConfigError::CapsetId(c.id));
        }
        if self.scanouts.is_empty() || self.scanouts.len() > VIRTIO_GPU_MAX_SCANOUTS {
            return Err(ConfigError::Scanouts(self.scanouts.len()));
        }
        Ok(())
    }
}

/// The host-visible window: maps host blobs into the guest (vhost-user `SHMEM_MAP`).
pub trait HostVisibleMapper: Send {
    /// Maps `len` bytes of `fd` from `fd_offset` at `shm_offset` of region 1.
    fn map(
        &self,
        shm_offset: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: u64,
        writable: bool,
    ) -> io::Result<()>;
    /// Unmaps it.
    fn unmap(&self, shm_offset: u64, len: u64) -> io::Result<()>;
}

/// A console display (QEMU's vhost-user-gpu display protocol): a courtesy, never the path of
/// window buffers.
pub trait Display: Send {
    /// A scanout shows `width`x`height` (0x0 disables it).
    fn set_scanout(&self, scanout: u32, width: u32, height: u32) -> io::Result<()>;
    /// New x8r8g8b8 pixels for a rectangle of a scanout.
    fn update(&self, scanout: u32, x: u32, y: u32, w: u32, h: u32, pixels: &[u8])
    -> io::Result<()>;
}

struct TwoD {
    format: u32,
    width: u32,
    height: u32,
    host: Vec<u8>,
}

struct Resource {
    kind: ResourceKind,
    size: u64,
    blob_flags: u32,
    blob_id: u64,
    backing: Option<Backing>,
    twod: Option<TwoD>,
    export: Option<GuestExport>,
    host: Option<HostBlob>,
    /// Stride and height from `SET_SCANOUT_BLOB`, for damage-limited copies.
    layout: Option<(u64, u64)>,
    uuid: Option<[u8; 16]>,
    mapped_at: Option<u64>,
    contexts: BTreeSet<CtxId>,
}

impl Resource {
    fn info(&self, id: ResourceId) -> ResourceInfo {
        ResourceInfo {
            id,
            kind: self.kind,
            size: self.size,
            blob_flags: self.blob_flags,
            blob_id: self.blob_id,
            has_backing: self.backing.is_some(),
        }
    }
}

struct ContextEntry {
    capset: u32,
    context: Box<dyn Context>,
    attached: BTreeSet<ResourceId>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Scanout {
    resource: u32,
    /// Visible rectangle, kept for a display that asks (QEMU's GET_DISPLAY_INFO echo).
    #[allow(dead_code)]
    rect: (u32, u32, u32, u32),
}

/// What processing one request produced.
#[derive(Debug)]
pub struct Outcome {
    /// Response bytes.
    pub response: Vec<u8>,
    /// The fence the request carried: timeline, id, and whether it is still pending.
    pub fence: Option<(Timeline, u64, bool)>,
}

type Reply = Result<GpuResponse, u32>;

/// The virtio-gpu device of one VM.
pub struct GpuDevice {
    config: DeviceConfig,
    mem: GuestMemHandle,
    factory: Box<dyn ContextFactory>,
    resources: HashMap<u32, Resource>,
    contexts: HashMap<u32, ContextEntry>,
    scanouts: Vec<Scanout>,
    fences: FenceTable,
    signaler: FenceSignaler,
    exporter: BlobExporter,
    stats: Arc<DeviceStats>,
    bytes_used: u64,
    limits_logged: HashSet<&'static str>,
    mapper: Option<Box<dyn HostVisibleMapper>>,
    display: Option<Box<dyn Display>>,
    uuid_seed: u64,
    warned_no_mapper: bool,
    orphans: Vec<HeldDescriptor>,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("resources", &self.resources.len())
            .field("contexts", &self.contexts.len())
            .field("pending_fences", &self.fences.pending_count())
            .finish_non_exhaustive()
    }
}

fn bpp(format: u32) -> Option<u32> {
    match format {
        VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM
        | VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM
        | VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM
        | VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM
        | VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM
        | VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM
        | VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM
        | VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM => Some(4),
        _ => None,
    }
}

/// `x + w <= limit` without overflow.
fn fits(x: u32, w: u32, limit: u32) -> bool {
    x.checked_add(w).is_some_and(|e| e <= limit)
}

impl GpuDevice {
    /// A device over guest memory `mem`, creating contexts with `factory`.
    pub fn new(
        config: DeviceConfig,
        factory: Box<dyn ContextFactory>,
        mem: GuestMemHandle,
        signaler: FenceSignaler,
    ) -> Result<GpuDevice, ConfigError> {
        config.validate()?;
        let stats = Arc::new(DeviceStats::default());
        let exporter = BlobExporter::new(config.export_mode, stats.clone());
        let uuid_seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        };
        Ok(GpuDevice {
            scanouts: vec![Scanout::default(); config.scanouts.len()],
            config,
            mem,
            factory,
            resources: HashMap::new(),
            contexts: HashMap::new(),
            fences: FenceTable::default(),
            signaler,
            exporter,
            stats,
            bytes_used: 0,
            limits_logged: HashSet::new(),
            mapper: None,
            display: None,
            uuid_seed,
            warned_no_mapper: false,
            orphans: Vec::new(),
        })
    }

    /// Installs (or removes) the host-visible window mapper.
    pub fn set_mapper(&mut self, mapper: Option<Box<dyn HostVisibleMapper>>) {
        self.mapper = mapper;
    }

    /// Installs (or removes) the console display.
    pub fn set_display(&mut self, display: Option<Box<dyn Display>>) {
        self.display = display;
    }

    /// Replaces the guest memory handle (the backend's `update_memory`).
    pub fn set_memory(&mut self, mem: GuestMemHandle) {
        self.mem = mem;
    }

    /// The counters.
    pub fn stats(&self) -> Arc<DeviceStats> {
        self.stats.clone()
    }

    /// The signaler contexts report fences with.
    pub fn signaler(&self) -> &FenceSignaler {
        &self.signaler
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Whether guest blobs can go zero-copy on this host.
    pub fn has_udmabuf(&self) -> bool {
        self.exporter.has_udmabuf()
    }

    /// Virtio device feature bits (virtio-gpu ones only; the backend adds ring features).
    pub fn gpu_features(&self) -> u64 {
        (1 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_EDID)
            | (1 << VIRTIO_GPU_F_RESOURCE_UUID)
            | (1 << VIRTIO_GPU_F_RESOURCE_BLOB)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT)
    }

    /// `(id, max_version, payload)` of each capset, by index.
    fn capsets(&self) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        if let Some(cd) = &self.config.cross_domain {
            out.push((CAPSET_CROSS_DOMAIN, 0, cd.as_bytes().to_vec()));
        }
        if let Some(cw) = &self.config.crossway {
            let mut caps = cw.caps.clone();
            if self.exporter.has_udmabuf() {
                caps.flags |= CROSSWAY_FLAG_GUEST_BLOBS_ZERO_COPY;
            }
            if self.mapper.is_some() && self.config.host_visible_size > 0 {
                caps.flags |= CROSSWAY_FLAG_HOST_BLOBS_MAPPABLE;
            }
            out.push((cw.id, CROSSWAY_CAPSET_VERSION, caps.to_bytes()));
        }
        out
    }

    /// The config space.
    pub fn config_space(&self) -> virtio_gpu_config {
        virtio_gpu_config {
            events_read: 0.into(),
            events_clear: 0.into(),
            num_scanouts: (self.config.scanouts.len() as u32).into(),
            num_capsets: (self.capsets().len() as u32).into(),
        }
    }

    fn limit(&mut self, name: &'static str, value: u64) -> u32 {
        DeviceStats::add(&self.stats.limits_hit, 1);
        if self.limits_logged.insert(name) {
            tracing::warn!(
                limit = name,
                value,
                "per-VM limit reached; refusing (logged once)"
            );
        }
        VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
    }

    /// Checks a new resource of `bytes` against the limits.
    fn admit(&mut self, id: u32, bytes: u64) -> Result<(), u32> {
        if id == 0 || self.resources.contains_key(&id) {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
        }
        if self.resources.len() >= self.config.limits.max_resources as usize {
            let v = u64::from(self.config.limits.max_resources);
            return Err(self.limit("max_resources", v));
        }
        if self
            .bytes_used
            .checked_add(bytes)
            .is_none_or(|t| t > self.config.limits.max_blob_bytes)
        {
            let v = self.config.limits.max_blob_bytes;
            return Err(self.limit("max_blob_bytes", v));
        }
        Ok(())
    }

    /// Processes one request.
    pub fn process(&mut self, bytes: &[u8]) -> Outcome {
        DeviceStats::add(&self.stats.commands, 1);
        let req = match GpuCommand::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "undecodable request");
                DeviceStats::add(&self.stats.errors, 1);
                let hdr = zerocopy::FromBytes::read_from_prefix(bytes)
                    .map(|(h, _)| h)
                    .unwrap_or_default();
                return Outcome {
                    response: GpuResponse::Err(e.response()).encode(&hdr),
                    fence: None,
                };
            }
        };
        let hdr = req.hdr;
        let flags = hdr.flags.get();
        let ctx = hdr.ctx_id.get();
        let ring_fence = flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0;
        let reply = if ring_fence && hdr.ring_idx >= VIRTIO_GPU_MAX_RINGS {
            Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)
        } else {
            self.dispatch(ctx, req.cmd)
        };
        let resp = reply.unwrap_or_else(|code| {
            DeviceStats::add(&self.stats.errors, 1);
            GpuResponse::Err(code)
        });
        tracing::trace!(cmd = hdr.type_.get(), resp = resp.type_(), ctx, "command");
        let fence = (flags & VIRTIO_GPU_FLAG_FENCE != 0).then(|| {
            let id = hdr.fence_id.get();
            if ring_fence && hdr.ring_idx < VIRTIO_GPU_MAX_RINGS {
                let t = Timeline::Ring {
                    ctx,
                    ring: hdr.ring_idx,
                };
                let pending = !matches!(resp, GpuResponse::Err(_))
                    && self.contexts.get_mut(&ctx).is_some_and(|c| {
                        c.context.create_fence(hdr.ring_idx, id)
                            == crate::context::FenceStatus::Pending
                    });
                (t, id, pending)
            } else {
                (Timeline::Global, id, false)
            }
        });
        Outcome {
            response: resp.encode(&hdr),
            fence,
        }
    }

    /// After the response of a request was written into descriptor `desc`: appends to `ready`
    /// the descriptors that may be put in the used ring now (this one unless its fence is
    /// pending, plus earlier ones its fence releases). The caller reuses `ready` across
    /// requests, so an unfenced command allocates nothing here.
    pub fn complete(
        &mut self,
        fence: Option<(Timeline, u64, bool)>,
        desc: HeldDescriptor,
        ready: &mut Vec<HeldDescriptor>,
    ) {
        match fence {
            None => ready.push(desc),
            Some((t, id, true)) => ready.extend(self.fences.hold(t, id, desc)),
            Some((t, id, false)) => {
                ready.extend(self.fences.complete(t, id));
                ready.push(desc);
            }
        }
    }

    /// Fences contexts completed since the last call: the descriptors they release.
    pub fn take_completed(&mut self) -> Vec<HeldDescriptor> {
        let mut out = Vec::new();
        for f in self.signaler.take() {
            out.extend(self.fences.complete(
                Timeline::Ring {
                    ctx: f.ctx,
                    ring: f.ring,
                },
                f.fence_id,
            ));
        }
        out
    }

    /// Descriptors held by fences (for tests and stats).
    pub fn pending_fences(&self) -> usize {
        self.fences.pending_count()
    }

    fn dispatch(&mut self, ctx: u32, cmd: GpuCommand<'_>) -> Reply {
        use GpuCommand as C;
        match cmd {
            C::GetDisplayInfo => Ok(self.display_info()),
            C::GetEdid(e) => {
                let s = e.scanout.get() as usize;
                let &(w, h) = self
                    .config
                    .scanouts
                    .get(s)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID)?;
                Ok(GpuResponse::OkEdid(crate::edid::edid(w, h).to_vec()))
            }
            C::GetCapsetInfo(i) => {
                let caps = self.capsets();
                let (id, v, data) = caps
                    .get(i.capset_index.get() as usize)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)?;
                Ok(GpuResponse::OkCapsetInfo {
                    id: *id,
                    max_version: *v,
                    max_size: data.len() as u32,
                })
            }
            C::GetCapset(g) => {
                let caps = self.capsets();
                let (_, v, data) = caps
                    .into_iter()
                    .find(|(id, _, _)| *id == g.capset_id.get())
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)?;
                if g.capset_version.get() > v {
                    return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
                }
                Ok(GpuResponse::OkCapset(data))
            }
            C::ResourceCreate2d(c) => self.create_2d(c),
            C::ResourceUnref(r) => self.unref(r.resource_id.get()),
            C::SetScanout(s) => self.set_scanout(s),
            C::SetScanoutBlob(s) => self.set_scanout_blob(s),
            C::ResourceFlush(f) => self.flush(f),
            C::TransferToHost2d(t) => self.transfer(t),
            C::ResourceAttachBacking(a, entries) => {
                self.attach_backing(a.resource_id.get(), entries)
            }
            C::ResourceDetachBacking(d) => {
                let r = self
                    .resources
                    .get_mut(&d.resource_id.get())
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
                r.backing = None;
                r.export = None;
                Ok(GpuResponse::OkNoData)
            }
            C::ResourceAssignUuid(a) => {
                let id = a.resource_id.get();
                let seed = self.uuid_seed;
                let r = self
                    .resources
                    .get_mut(&id)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
                let uuid = *r.uuid.get_or_insert_with(|| make_uuid(seed, id));
                Ok(GpuResponse::OkResourceUuid(uuid))
            }
            C::ResourceCreateBlob(b, entries) => self.create_blob(ctx, b, entries),
            C::CtxCreate(c) => self.ctx_create(ctx, c),
            C::CtxDestroy => {
                let entry = self
                    .contexts
                    .remove(&ctx)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)?;
                for id in entry.attached {
                    if let Some(r) = self.resources.get_mut(&id.0) {
                        r.contexts.remove(&CtxId(ctx));
                    }
                }
                // Nothing will signal its fences any more: answer them.
                let released = self.fences.drop_context(ctx);
                self.orphans.extend(released);
                tracing::debug!(ctx, "context destroyed");
                Ok(GpuResponse::OkNoData)
            }
            C::CtxAttachResource(a) => {
                let id = a.resource_id.get();
                let entry = self
                    .contexts
                    .get_mut(&ctx)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)?;
                let r = self
                    .resources
                    .get_mut(&id)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
                if entry.attached.insert(ResourceId(id)) {
                    r.contexts.insert(CtxId(ctx));
                    entry.context.attach_resource(r.info(ResourceId(id)));
                }
                Ok(GpuResponse::OkNoData)
            }
            C::CtxDetachResource(a) => {
                let id = a.resource_id.get();
                let entry = self
                    .contexts
                    .get_mut(&ctx)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)?;
                if !entry.attached.remove(&ResourceId(id)) {
                    return Err(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
                }
                entry.context.detach_resource(ResourceId(id));
                if let Some(r) = self.resources.get_mut(&id) {
                    r.contexts.remove(&CtxId(ctx));
                }
                Ok(GpuResponse::OkNoData)
            }
            C::Submit3d(data) => {
                let entry = self
                    .contexts
                    .get_mut(&ctx)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)?;
                let mut view = View {
                    resources: &mut self.resources,
                    attached: &entry.attached,
                    mem: &self.mem,
                    exporter: &mut self.exporter,
                    stats: &self.stats,
                };
                entry.context.submit(data, &mut view).map_err(|e| {
                    tracing::debug!(ctx, error = &e as &dyn std::error::Error, "submit refused");
                    e.response()
                })?;
                Ok(GpuResponse::OkNoData)
            }
            C::ResourceMapBlob(m) => self.map_blob(m),
            C::ResourceUnmapBlob(u) => {
                let r = self
                    .resources
                    .get_mut(&u.resource_id.get())
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
                let at = r.mapped_at.ok_or(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)?;
                let size = r.size;
                let mapper = self.mapper.as_ref().ok_or(VIRTIO_GPU_RESP_ERR_UNSPEC)?;
                mapper.unmap(at, size).map_err(|e| {
                    tracing::warn!(error = %e, "SHMEM_UNMAP failed");
                    VIRTIO_GPU_RESP_ERR_UNSPEC
                })?;
                r.mapped_at = None;
                Ok(GpuResponse::OkNoData)
            }
            C::UpdateCursor(c) | C::MoveCursor(c) => {
                let id = c.resource_id.get();
                if c.pos.scanout_id.get() as usize >= self.scanouts.len() {
                    return Err(VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
                }
                if id != 0 && !self.resources.contains_key(&id) {
                    return Err(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID);
                }
                Ok(GpuResponse::OkNoData)
            }
            C::Unsupported(t) => {
                tracing::debug!(cmd = t, "virgl command not supported");
                Err(VIRTIO_GPU_RESP_ERR_UNSPEC)
            }
        }
    }

    /// Descriptors released by context destruction, to be put in the used ring.
    pub fn take_orphans(&mut self) -> Vec<HeldDescriptor> {
        std::mem::take(&mut self.orphans)
    }

    fn display_info(&self) -> GpuResponse {
        let mut pmodes = [virtio_gpu_display_one::default(); VIRTIO_GPU_MAX_SCANOUTS];
        for (p, &(w, h)) in pmodes.iter_mut().zip(&self.config.scanouts) {
            p.r.width = w.into();
            p.r.height = h.into();
            p.enabled = 1.into();
        }
        GpuResponse::OkDisplayInfo(Box::new(pmodes))
    }

    fn create_2d(&mut self, c: virtio_gpu_resource_create_2d) -> Reply {
        let id = c.resource_id.get();
        let bpp = bpp(c.format.get()).ok_or(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)?;
        let (w, h) = (c.width.get(), c.height.get());
        if w == 0 || h == 0 {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        // Found by fuzzing: u32::MAX x u32::MAX x 4 overflows u64, and a wrapped size would
        // leave a host copy smaller than the transfers the width and height allow.
        let size = u64::from(w)
            .checked_mul(u64::from(h))
            .and_then(|v| v.checked_mul(u64::from(bpp)))
            .ok_or(VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY)?;
        self.admit(id, size)?;
        let host = usize::try_from(size)
            .ok()
            .and_then(|n| {
                let mut v = Vec::new();
                v.try_reserve_exact(n).ok()?;
                v.resize(n, 0);
                Some(v)
            })
            .ok_or(VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY)?;
        self.bytes_used += size;
        self.resources.insert(
            id,
            Resource {
                kind: ResourceKind::TwoD,
                size,
                blob_flags: 0,
                blob_id: 0,
                backing: None,
                twod: Some(TwoD {
                    format: c.format.get(),
                    width: w,
                    height: h,
                    host,
                }),
                export: None,
                host: None,
                layout: None,
                uuid: None,
                mapped_at: None,
                contexts: BTreeSet::new(),
            },
        );
        tracing::debug!(resource = id, w, h, "2d resource");
        Ok(GpuResponse::OkNoData)
    }

    fn unref(&mut self, id: u32) -> Reply {
        let r = self
            .resources
            .remove(&id)
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
        self.bytes_used = self.bytes_used.saturating_sub(r.size);
        for c in &r.contexts {
            if let Some(entry) = self.contexts.get_mut(&c.0) {
                entry.attached.remove(&ResourceId(id));
                entry.context.detach_resource(ResourceId(id));
            }
        }
        for s in &mut self.scanouts {
            if s.resource == id {
                *s = Scanout::default();
            }
        }
        if let (Some(at), Some(m)) = (r.mapped_at, &self.mapper) {
            let _ = m.unmap(at, r.size);
        }
        Ok(GpuResponse::OkNoData)
    }

    fn set_scanout(&mut self, s: virtio_gpu_set_scanout) -> Reply {
        let sid = s.scanout_id.get();
        let slot = self
            .scanouts
            .get_mut(sid as usize)
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID)?;
        let id = s.resource_id.get();
        if id == 0 {
            *slot = Scanout::default();
            if let Some(d) = &self.display {
                let _ = d.set_scanout(sid, 0, 0);
            }
            return Ok(GpuResponse::OkNoData);
        }
        let r = self
            .resources
            .get(&id)
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
        let (x, y, w, h) = (s.r.x.get(), s.r.y.get(), s.r.width.get(), s.r.height.get());
        if let Some(t) = &r.twod
            && !(fits(x, w, t.width) && fits(y, h, t.height))
        {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        *slot = Scanout {
            resource: id,
            rect: (x, y, w, h),
        };
        if let Some(d) = &self.display
            && let Err(e) = d.set_scanout(sid, w, h)
        {
            tracing::debug!(error = %e, "display set_scanout failed");
        }
        Ok(GpuResponse::OkNoData)
    }

    fn set_scanout_blob(&mut self, s: virtio_gpu_set_scanout_blob) -> Reply {
        let sid = s.scanout_id.get();
        if sid as usize >= self.scanouts.len() {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
        }
        let id = s.resource_id.get();
        if id == 0 {
            self.scanouts[sid as usize] = Scanout::default();
            return Ok(GpuResponse::OkNoData);
        }
        let r = self
            .resources
            .get_mut(&id)
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
        let stride = u64::from(s.strides[0].get());
        let height = u64::from(s.height.get());
        let need = stride
            .checked_mul(height)
            .and_then(|n| n.checked_add(u64::from(s.offsets[0].get())));
        if r.kind == ResourceKind::TwoD || need.is_none_or(|n| n > r.size) {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        r.layout = Some((stride, height));
        self.scanouts[sid as usize] = Scanout {
            resource: id,
            rect: (s.r.x.get(), s.r.y.get(), s.r.width.get(), s.r.height.get()),
        };
        Ok(GpuResponse::OkNoData)
    }

    fn transfer(&mut self, t: virtio_gpu_transfer_to_host_2d) -> Reply {
        let mem = self.mem.memory();
        let r = self
            .resources
            .get_mut(&t.resource_id.get())
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
        let Some(two) = &mut r.twod else {
            // Guest blobs are the guest's own pages: nothing to transfer.
            return Ok(GpuResponse::OkNoData);
        };
        let backing = r.backing.as_ref().ok_or(VIRTIO_GPU_RESP_ERR_UNSPEC)?;
        let (x, y, w, h) = (t.r.x.get(), t.r.y.get(), t.r.width.get(), t.r.height.get());
        if !(fits(x, w, two.width) && fits(y, h, two.height)) {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        let bpp = u64::from(bpp(two.format).unwrap_or(4));
        let stride = u64::from(two.width) * bpp;
        let row = u64::from(w) * bpp;
        let base = t.offset.get();
        for i in 0..u64::from(h) {
            let src = i
                .checked_mul(stride)
                .and_then(|o| o.checked_add(base))
                .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)?;
            // Both in bounds: x+w <= width and y+i < height.
            let dst = ((u64::from(y) + i) * stride + u64::from(x) * bpp) as usize;
            let out = &mut two.host[dst..dst + row as usize];
            backing
                .read_at(&mem, src, out)
                .map_err(|_| VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)?;
        }
        DeviceStats::add(&self.stats.bytes_copied, row * u64::from(h));
        Ok(GpuResponse::OkNoData)
    }

    fn flush(&mut self, f: virtio_gpu_resource_flush) -> Reply {
        let id = f.resource_id.get();
        let mem = self.mem.memory();
        let r = self
            .resources
            .get_mut(&id)
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
        let (x, y, w, h) = (f.r.x.get(), f.r.y.get(), f.r.width.get(), f.r.height.get());
        // Copy path: bring the damaged rows of the guest pages into the host memfd.
        if let (Some(GuestExport::Copy(m)), Some(backing)) = (&r.export, &r.backing) {
            let (off, len) = match r.layout {
                Some((stride, height)) => {
                    let y0 = u64::from(y).min(height);
                    let y1 = (u64::from(y) + u64::from(h)).min(height);
                    (y0 * stride, (y1 - y0) * stride)
                }
                None => (0, r.size),
            };
            let len = len.min(r.size.saturating_sub(off));
            copy_range(&mem, backing, m, off, len, &self.stats)
                .map_err(|_| VIRTIO_GPU_RESP_ERR_UNSPEC)?;
        }
        let Some(display) = &self.display else {
            return Ok(GpuResponse::OkNoData);
        };
        let Some(two) = &r.twod else {
            return Ok(GpuResponse::OkNoData);
        };
        if !(fits(x, w, two.width) && fits(y, h, two.height)) {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        for (sid, s) in self.scanouts.iter().enumerate() {
            if s.resource != id {
                continue;
            }
            let stride = two.width as usize * 4;
            let mut pixels = Vec::with_capacity(w as usize * h as usize * 4);
            for row in y..y + h {
                let at = row as usize * stride + x as usize * 4;
                pixels.extend_from_slice(&two.host[at..at + w as usize * 4]);
            }
            if let Err(e) = display.update(sid as u32, x, y, w, h, &pixels) {
                tracing::debug!(error = %e, "display update failed");
            }
        }
        Ok(GpuResponse::OkNoData)
    }

    fn attach_backing(&mut self, id: u32, entries: &[virtio_gpu_mem_entry]) -> Reply {
        let mem = self.mem.memory();
        let r = self
            .resources
            .get_mut(&id)
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
        if r.kind == ResourceKind::HostBlob {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        let backing = Backing::new(&mem, entries).map_err(|e| {
            tracing::debug!(resource = id, error = %e, "bad backing");
            VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
        })?;
        // The guest re-attaches blob backing after move_notify (Linux >= 6.14 imports);
        // a dmabuf over the old pages is stale.
        r.export = None;
        r.backing = Some(backing);
        Ok(GpuResponse::OkNoData)
    }

    fn create_blob(
        &mut self,
        ctx: u32,
        b: virtio_gpu_resource_create_blob,
        entries: &[virtio_gpu_mem_entry],
    ) -> Reply {
        let id = b.resource_id.get();
        let size = b.size.get();
        if size == 0 {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        self.admit(id, size)?;
        let flags = b.blob_flags.get();
        let (kind, backing, host) = match b.blob_mem.get() {
            VIRTIO_GPU_BLOB_MEM_GUEST => {
                let mem = self.mem.memory();
                let backing = Backing::new(&mem, entries).map_err(|e| {
                    tracing::debug!(resource = id, error = %e, "bad blob backing");
                    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
                })?;
                if backing.len() < size {
                    return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
                }
                (ResourceKind::GuestBlob, Some(backing), None)
            }
            VIRTIO_GPU_BLOB_MEM_HOST3D => {
                if !entries.is_empty() {
                    return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
                }
                let entry = self
                    .contexts
                    .get_mut(&ctx)
                    .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)?;
                let host = entry
                    .context
                    .create_blob(ResourceId(id), b.blob_id.get(), size, flags)
                    .map_err(|e| {
                        tracing::debug!(resource = id, error = %e, "host blob refused");
                        e.response()
                    })?;
                if host.size < size {
                    return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
                }
                (ResourceKind::HostBlob, None, Some(host))
            }
            _ => return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
        };
        self.bytes_used += size;
        self.resources.insert(
            id,
            Resource {
                kind,
                size,
                blob_flags: flags,
                blob_id: b.blob_id.get(),
                backing,
                twod: None,
                export: None,
                host,
                layout: None,
                uuid: None,
                mapped_at: None,
                contexts: BTreeSet::new(),
            },
        );
        tracing::debug!(resource = id, size, ?kind, "blob");
        Ok(GpuResponse::OkNoData)
    }

    fn map_blob(&mut self, m: virtio_gpu_resource_map_blob) -> Reply {
        let id = m.resource_id.get();
        let region = self.config.host_visible_size;
        let r = self
            .resources
            .get_mut(&id)
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)?;
        let host = r
            .host
            .as_ref()
            .ok_or(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)?;
        if r.blob_flags & VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE == 0 || r.mapped_at.is_some() {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        let offset = m.offset.get();
        if offset.checked_add(r.size).is_none_or(|e| e > region) {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        let Some(mapper) = &self.mapper else {
            if !self.warned_no_mapper {
                self.warned_no_mapper = true;
                tracing::warn!(
                    "RESOURCE_MAP_BLOB refused: the VMM offers no shared-memory window \
                     (vhost-user SHMEM); logged once"
                );
            }
            return Err(VIRTIO_GPU_RESP_ERR_UNSPEC);
        };
        // QEMU 11.1 refuses an fd shorter than the range (a 224-byte format table in a
        // 4096-byte blob) and maps every fd read-write: those are mapped through a copy.
        let covering = covering_fd(host.fd.as_fd(), r.size).map_err(|e| {
            tracing::warn!(resource = id, error = %e, "no covering copy of a short host blob");
            VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY
        })?;
        let fd = covering.as_ref().map_or(host.fd.as_fd(), |c| c.as_fd());
        mapper
            .map(offset, fd, 0, r.size, fd_writable(fd))
            .map_err(|e| {
                tracing::warn!(resource = id, error = %e, "SHMEM_MAP failed");
                VIRTIO_GPU_RESP_ERR_UNSPEC
            })?;
        r.mapped_at = Some(offset);
        Ok(GpuResponse::OkMapInfo(host.map_info))
    }

    fn ctx_create(&mut self, ctx: u32, c: virtio_gpu_ctx_create) -> Reply {
        if ctx == 0 || self.contexts.contains_key(&ctx) {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID);
        }
        if self.contexts.len() >= self.config.limits.max_contexts as usize {
            let v = u64::from(self.config.limits.max_contexts);
            return Err(self.limit("max_contexts", v));
        }
        let capset = c.context_init.get() & VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK;
        if capset != 0 && !self.capsets().iter().any(|(id, _, _)| *id == capset) {
            return Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
        }
        let n = (c.nlen.get() as usize).min(c.debug_name.len());
        let name = String::from_utf8_lossy(&c.debug_name[..n]).into_owned();
        let context = self
            .factory
            .create(CtxId(ctx), capset, &name, self.signaler.clone())
            .map_err(|e| {
                tracing::warn!(
                    ctx,
                    capset,
                    error = &e as &dyn std::error::Error,
                    "context creation refused"
                );
                e.response()
            })?;
        self.contexts.insert(
            ctx,
            ContextEntry {
                capset,
                context,
                attached: BTreeSet::new(),
            },
        );
        tracing::debug!(ctx, capset, name = %name, "context created");
        Ok(GpuResponse::OkNoData)
    }

    /// The capset a live context was created with.
    pub fn context_capset(&self, ctx: u32) -> Option<u32> {
        self.contexts.get(&ctx).map(|c| c.capset)
    }
}

/// `None` when `fd` is at least `len` bytes long and writable, else a copy of it that is.
fn covering_fd(
    fd: BorrowedFd<'_>,
    len: u64,
) -> Result<Option<OwnedFd>, crossway_sys::memfd::MemfdError> {
    let have = rustix::fs::fstat(fd).map(|st| u64::try_from(st.st_size).unwrap_or(0));
    match have {
        Ok(have) if have >= len && fd_writable(fd) => Ok(None),
        _ => {
            tracing::debug!(
                len,
                ?have,
                "host blob fd short or read-only: mapped through a copy"
            );
            crossway_sys::memfd::covering_copy(fd, len).map(Some)
        }
    }
}

/// Whether a host blob may be mapped writable: its access mode allows writes and no write
/// seal forbids them (a compositor's keymap is often a read-only or sealed memfd; mapping it
/// RW fails, wayland-proxy-virtwl #37).
fn fd_writable(fd: BorrowedFd<'_>) -> bool {
    use rustix::fs::{OFlags, SealFlags};
    let mode_ok = rustix::fs::fcntl_getfl(fd).is_ok_and(
        |f| matches!(f & OFlags::ACCMODE, m if m == OFlags::RDWR || m == OFlags::WRONLY),
    );
    let sealed = rustix::fs::fcntl_get_seals(fd)
        .is_ok_and(|s| s.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE));
    mode_ok && !sealed
}

fn make_uuid(seed: u64, id: u32) -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(seed);
        h.write_u32(id);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40; // version 4
    out[8] = (out[8] & 0x3f) | 0x80; // RFC 4122 variant
    out
}

/// The resources attached to one context, for the duration of one `SUBMIT_3D`.
struct View<'a> {
    resources: &'a mut HashMap<u32, Resource>,
    attached: &'a BTreeSet<ResourceId>,
    mem: &'a GuestMemHandle,
    exporter: &'a mut BlobExporter,
    stats: &'a DeviceStats,
}

impl View<'_> {
    fn get(&self, id: ResourceId) -> Result<&Resource, ContextError> {
        if !self.attached.contains(&id) {
            return Err(ContextError::UnknownResource(id.0));
        }
        self.resources
            .get(&id.0)
            .ok_or(ContextError::UnknownResource(id.0))
    }

    fn backing(&self, id: ResourceId) -> Result<&Backing, ContextError> {
        self.get(id)?
            .backing
            .as_ref()
            .ok_or(ContextError::InvalidCommand(format!(
                "resource {} has no backing",
                id.0
            )))
    }
}

impl ContextResources for View<'_> {
    fn info(&self, id: ResourceId) -> Option<ResourceInfo> {
        self.get(id).ok().map(|r| r.info(id))
    }

    fn read(&self, id: ResourceId, offset: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        let mem: &GuestMem = &self.mem.memory();
        Ok(self.backing(id)?.read_at(mem, offset, buf)?)
    }

    fn write(&self, id: ResourceId, offset: u64, data: &[u8]) -> Result<(), ContextError> {
        let mem: &GuestMem = &self.mem.memory();
        Ok(self.backing(id)?.write_at(mem, offset, data)?)
    }

    fn guest_writer(&self, id: ResourceId) -> Result<GuestWriter, ContextError> {
        Ok(GuestWriter {
            mem: self.mem.clone(),
            backing: self.backing(id)?.clone(),
        })
    }

    fn export(&mut self, id: ResourceId) -> Result<ExportedFd, ContextError> {
        self.get(id)?;
        let mem = self.mem.memory();
        let r = self
            .resources
            .get_mut(&id.0)
            .ok_or(ContextError::UnknownResource(id.0))?;
        let io = |source: io::Error| ContextError::Host {
            what: "duplicating the exported fd",
            source,
        };
        if let Some(h) = &r.host {
            return Ok(ExportedFd {
                fd: h.fd.try_clone().map_err(io)?,
                zero_copy: true,
                size: r.size,
            });
        }
        if r.kind != ResourceKind::GuestBlob {
            return Err(ContextError::Unsupported("exporting 2D resources"));
        }
        if r.export.is_none() {
            let backing = r
                .backing
                .as_ref()
                .ok_or(ContextError::InvalidCommand("blob has no backing".into()))?;
            let e = self.exporter.export(&mem, backing, r.size)?;
            r.export = Some(e);
        }
        let e = r.export.as_ref().ok_or(ContextError::OutOfMemory)?;
        Ok(ExportedFd {
            fd: e.try_clone_fd().map_err(io)?,
            zero_copy: e.is_zero_copy(),
            size: r.size,
        })
    }

    fn sync(&mut self, id: ResourceId, ranges: &[(u64, u64)]) -> Result<u64, ContextError> {
        let r = self.get(id)?;
        let (Some(GuestExport::Copy(m)), Some(backing)) = (&r.export, &r.backing) else {
            return Ok(0);
        };
        let mem = self.mem.memory();
        let mut total = 0u64;
        for &(off, len) in ranges {
            let end = off.checked_add(len).ok_or(ContextError::InvalidCommand(
                "damage range overflows".into(),
            ))?;
            if end > r.size {
                return Err(ContextError::InvalidCommand("damage beyond blob".into()));
            }
            total += copy_range(&mem, backing, m, off, len, self.stats)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod map_access_tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsFd;

    use super::fd_writable;
    use crossway_sys::memfd::Memfd;

    #[test]
    fn fd_writable_follows_access_mode_and_write_seals() {
        let m = Memfd::new("rw", 4096).unwrap();
        let fd = m.try_clone_fd().unwrap();
        assert!(fd_writable(fd.as_fd()));
        // The same memory opened read-only, as compositors hand out keymaps.
        let ro = std::fs::File::open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .unwrap();
        assert!(!fd_writable(ro.as_fd()));
        rustix::fs::fcntl_add_seals(fd.as_fd(), rustix::fs::SealFlags::WRITE).unwrap();
        assert!(!fd_writable(fd.as_fd()));
    }
}
