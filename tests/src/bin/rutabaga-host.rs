//! `crossway-rutabaga-host --socket PATH --wayland-display PATH|NAME`: the reference host for
//! interop tests. It serves the virtgpu API that guest programs reach with
//! `CROSSWAY_VIRTGPU=loopback:PATH` (the loopback socket protocol,
//! `crossway_loopback::wire`, served by the same `LoopbackServer`), but the device
//! behind it is `rutabaga_gfx`'s cross-domain context (crates.io, default features, no GPU) —
//! the implementation crosvm and libkrun ship — instead of our device and proxy:
//!
//! ```text
//!  guest program ──LoopbackClient──▶ socket ──▶ LoopbackServer<RutabagaDevice>
//!                                                 │ one RutabagaFile per connection (a DRM fd)
//!                                                 ▼
//!                             device thread: rutabaga_gfx::Rutabaga (cross-domain only)
//!                                                 │ one context per file, its worker thread
//!                                                 ▼
//!                             host compositor (--wayland-display), unfiltered
//! ```
//!
//! This process plays the guest kernel and the VMM (crosvm's `virtio_gpu.rs`) at once:
//! - guest blobs are memory this process owns (one memfd each, mapped here and attached to
//!   rutabaga as one iovec); `MAP` hands the guest program the memfd;
//! - HOST3D blobs are `resource_create_blob` with the blob id; a mappable one is exported right
//!   away as crosvm does at `RESOURCE_MAP_BLOB` (which the kernel sends at creation), so a
//!   HOST3D blob without `USE_SHAREABLE` loses its handle to the mapping, as in crosvm;
//! - fences go through `create_fence` with the ring; rutabaga's fence callback (its worker
//!   thread for the channel ring, at once for the query ring) releases every earlier fence on
//!   the timeline and queues one `drm_event` per released fence of a poll ring on the file's
//!   event pipe, as the kernel does;
//! - PRIME export yields a token memfd naming the resource, as the loopback driver does.
//!
//! Rutabaga is not thread-safe (`Rutabaga` is `!Send`), so one thread owns it and connection
//! threads hand it closures. It prints `CROSSWAY_VIRTGPU=loopback:PATH` on stdout once the
//! socket listens, and removes the socket on SIGTERM or SIGINT.
//!
//! Known differences from our proxy (what a guest must cope with on a rutabaga host): no
//! Crossway capset (48); a SEND naming a guest blob is refused (rutabaga only forwards blobs
//! that have a host handle); nothing filters the Wayland stream (no policy, no title tags);
//! host fds that are neither memory, write pipes, eventfds nor sockets end the channel; a
//! read-only host blob (a sealed keymap) is mapped through a private copy here, because guest
//! programs map blobs read-write.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use crossway_loopback::mmap::{Mapping, Piece};
use crossway_protocols::virtgpu::*;
use crossway_virtio::loopback::server::map_served;
use crossway_virtio::loopback::uapi::{PrimeTokens, capset_mask, context_params, copy_capset};
use crossway_virtio::loopback::{LoopbackServer, ServedDevice, ServedFile, ServerConfig};
use crossway_virtio::protocol::VIRTIO_GPU_RESP_ERR_UNSPEC;
use rutabaga_gfx::{
    RUTABAGA_BLOB_FLAG_USE_MAPPABLE, RUTABAGA_BLOB_MEM_GUEST, RUTABAGA_CAPSET_CROSS_DOMAIN,
    RUTABAGA_FLAG_FENCE, RUTABAGA_FLAG_INFO_RING_IDX, RUTABAGA_MAP_ACCESS_MASK,
    RUTABAGA_MAP_ACCESS_WRITE, ResourceCreateBlob, Rutabaga, RutabagaBuilder, RutabagaFence,
    RutabagaHandler, RutabagaIovec, RutabagaPath,
};

/// rutabaga's cross-domain channel type for Wayland (`CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND`).
const CHANNEL_TYPE_WAYLAND: u32 = 1;
const PAGE: u64 = 4096;
/// First bytes of a PRIME token of this host.
const PRIME_MAGIC: [u8; 8] = *b"CWRTPRIM";
const CONTEXT_NAME: &str = "crossway-rutabaga-host";

/// Serves the virtgpu loopback socket on top of rutabaga_gfx's cross-domain context.
#[derive(Debug, Parser)]
#[command(name = "crossway-rutabaga-host")]
struct Cli {
    /// Where to listen (what guest programs get as `CROSSWAY_VIRTGPU=loopback:PATH`).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The host compositor: a socket path, or a name in `$XDG_RUNTIME_DIR`.
    #[arg(long, value_name = "PATH|NAME")]
    wayland_display: String,
    /// Open device files (connections) at most.
    #[arg(long, default_value_t = crossway_virtio::loopback::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Live blobs at most, over all connections.
    #[arg(long, default_value_t = 4096)]
    max_blobs: usize,
    /// Largest blob, in MiB (foot reserves 512 MiB pools; crosvm maps far more).
    #[arg(long, default_value_t = 1024)]
    max_blob_mib: u64,
    /// How long `WAIT` blocks before answering busy, in milliseconds.
    #[arg(long, default_value_t = 20_000)]
    wait_timeout_ms: u64,
}

/// Limits of one reference host.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_blobs: usize,
    max_blob_bytes: u64,
    wait_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn os(e: impl Into<std::io::Error>) -> VirtGpuError {
    const EIO: i32 = 5;
    VirtGpuError::Os(e.into().raw_os_error().unwrap_or(EIO))
}

/// What a refused command looks like to the guest: crosvm answers `ERR_UNSPEC`, and the loopback
/// driver reports a device refusal as [`VirtGpuError::Device`].
fn refused(what: &str, e: impl std::fmt::Display) -> VirtGpuError {
    tracing::warn!(error = %e, "rutabaga refused {what}");
    VirtGpuError::Device(VIRTIO_GPU_RESP_ERR_UNSPEC)
}

// ---------------------------------------------------------------------------------------------
// Fences and events

/// A (context, ring) timeline; `None` for a fence submitted without a ring.
type Timeline = (u32, Option<u8>);

/// One file's event pipe (write end); the guest program polls the read end.
#[derive(Debug)]
struct EventSink {
    fd: OwnedFd,
    dropped: AtomicBool,
}

impl EventSink {
    fn push(&self) {
        let rec = DrmEvent::FENCE_SIGNALED.to_bytes();
        if rustix::io::write(&self.fd, &rec) != Ok(rec.len())
            && !self.dropped.swap(true, Ordering::Relaxed)
        {
            tracing::warn!("event pipe full or closed: fence event dropped (logged once)");
        }
    }
}

/// The pending fences of one timeline by id, each with the sink that gets its event (poll
/// rings only).
type Pending = BTreeMap<u64, Option<Arc<EventSink>>>;

/// Pending fences per timeline.
#[derive(Debug, Default)]
struct Fences {
    pending: Mutex<HashMap<Timeline, Pending>>,
    cv: Condvar,
}

impl Fences {
    fn add(&self, tl: Timeline, id: u64, sink: Option<Arc<EventSink>>) {
        lock(&self.pending).entry(tl).or_default().insert(id, sink);
    }

    fn cancel(&self, tl: Timeline, id: u64) {
        if let Some(m) = lock(&self.pending).get_mut(&tl) {
            m.remove(&id);
        }
        self.cv.notify_all();
    }

    /// rutabaga's fence callback: releases `fence` and every earlier one on its timeline, in
    /// order (`virtio_gpu_fence_event_process`), one event per released poll-ring fence.
    fn signal(&self, fence: RutabagaFence) {
        let ring = (fence.flags & RUTABAGA_FLAG_INFO_RING_IDX != 0).then_some(fence.ring_idx);
        let tl = (fence.ctx_id, ring);
        let released = {
            let mut pending = lock(&self.pending);
            let Some(m) = pending.get_mut(&tl) else {
                return;
            };
            let later = m.split_off(&fence.fence_id.saturating_add(1));
            std::mem::replace(m, later)
        };
        tracing::trace!(ctx = tl.0, ring = ?tl.1, fence = fence.fence_id, n = released.len(), "fence signalled");
        for sink in released.into_values().flatten() {
            sink.push();
        }
        self.cv.notify_all();
    }

    fn is_pending(&self, tl: Timeline, id: u64) -> bool {
        lock(&self.pending)
            .get(&tl)
            .is_some_and(|m| m.contains_key(&id))
    }

    /// Waits until fence `id` is released; false on timeout.
    fn wait(&self, tl: Timeline, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pending = lock(&self.pending);
        while pending.get(&tl).is_some_and(|m| m.contains_key(&id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            pending = self
                .cv
                .wait_timeout(pending, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    fn forget_context(&self, ctx: u32) {
        lock(&self.pending).retain(|tl, _| tl.0 != ctx);
        self.cv.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// The device thread

/// One resource as the VMM side keeps it.
struct Res {
    blob_mem: u32,
    size: u64,
    /// A guest blob's memory: the memfd guest programs map, and this process's mapping of it,
    /// whose address rutabaga holds as the blob's iovec. Dropped only after `unref_resource`.
    guest: Option<(OwnedFd, Mapping)>,
    /// A mappable HOST3D blob's memory, as exported at creation.
    host_fd: Option<OwnedFd>,
    /// GEM handles on it, over all files.
    handles: u32,
}

/// What the device thread owns.
struct Dev {
    rutabaga: Rutabaga,
    resources: HashMap<u32, Res>,
    next_res: u32,
    limits: Limits,
}

type Job = Box<dyn FnOnce(&mut Dev) + Send>;

fn memfd(name: &str, size: u64) -> Result<OwnedFd, VirtGpuError> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).map_err(os)?;
    rustix::fs::ftruncate(&fd, size).map_err(os)?;
    Ok(fd)
}

fn map_fd(fd: &OwnedFd, size: u64) -> Result<Mapping, VirtGpuError> {
    let len = usize::try_from(size).map_err(|_| VirtGpuError::OutOfMemory("size"))?;
    Mapping::new(&[Piece {
        fd: fd.as_fd(),
        offset: 0,
        len,
    }])
}

impl Dev {
    fn create_blob(
        &mut self,
        ctx_id: u32,
        blob_mem: u32,
        blob_flags: u32,
        blob_id: u64,
        size: u64,
    ) -> Result<u32, VirtGpuError> {
        if self.resources.len() >= self.limits.max_blobs {
            tracing::warn!(max_blobs = self.limits.max_blobs, "limit reached");
            return Err(VirtGpuError::OutOfMemory("max_blobs"));
        }
        let res = self.next_res;
        self.next_res = res.checked_add(1).ok_or(VirtGpuError::OutOfMemory("ids"))?;
        let create = ResourceCreateBlob {
            blob_mem,
            blob_flags,
            blob_id,
            size,
        };
        let mut entry = Res {
            blob_mem,
            size,
            guest: None,
            host_fd: None,
            handles: 0,
        };
        if blob_mem == RUTABAGA_BLOB_MEM_GUEST {
            let fd = memfd("crossway-rutabaga-guest-blob", size)?;
            let map = map_fd(&fd, size)?;
            let iovecs = vec![RutabagaIovec {
                base: map.as_ptr().cast(),
                len: map.len(),
            }];
            // Quirk kept from the kernel: guest blobs are created with ctx_id 0.
            self.rutabaga
                .resource_create_blob(0, res, create, Some(iovecs), None)
                .map_err(|e| refused("a guest blob", e))?;
            entry.guest = Some((fd, map));
        } else {
            self.rutabaga
                .resource_create_blob(ctx_id, res, create, None, None)
                .map_err(|e| refused("a host blob", e))?;
            if blob_flags & RUTABAGA_BLOB_FLAG_USE_MAPPABLE != 0 {
                match self.export_for_map(res, size) {
                    Ok(fd) => entry.host_fd = Some(fd),
                    Err(e) => {
                        let _ = self.rutabaga.unref_resource(res);
                        return Err(e);
                    }
                }
            }
        }
        self.resources.insert(res, entry);
        Ok(res)
    }

    /// What crosvm does at `RESOURCE_MAP_BLOB`: export the blob's handle (rutabaga takes it
    /// from a blob that is not shareable) and map that fd.
    fn export_for_map(&mut self, res: u32, size: u64) -> Result<OwnedFd, VirtGpuError> {
        let map_info = self
            .rutabaga
            .map_info(res)
            .map_err(|e| refused("map info", e))?;
        let handle = self
            .rutabaga
            .export_blob(res)
            .map_err(|e| refused("exporting a blob", e))?;
        let fd = handle
            .as_mesa_handle()
            .ok_or_else(|| refused("exporting a blob", "not a plain handle"))?
            .os_handle
            .as_fd()
            .try_clone_to_owned()
            .map_err(os)?;
        if map_info & RUTABAGA_MAP_ACCESS_MASK & RUTABAGA_MAP_ACCESS_WRITE == 0 {
            // Sealed (a keymap): guest programs get a read-only mapping, as crosvm gives.
            tracing::debug!(res, size, "read-only host blob");
        }
        Ok(fd)
    }

    fn attach(&mut self, ctx_id: u32, res: u32) -> Result<(), VirtGpuError> {
        let r = self
            .resources
            .get_mut(&res)
            .ok_or(VirtGpuError::InvalidArgument("resource is gone"))?;
        self.rutabaga
            .context_attach_resource(ctx_id, res)
            .map_err(|e| refused("attaching a resource", e))?;
        r.handles += 1;
        Ok(())
    }

    /// A GEM handle closed: detach from its context; the last handle releases the resource.
    fn detach(&mut self, ctx_id: Option<u32>, res: u32) {
        if let Some(ctx) = ctx_id {
            let _ = self.rutabaga.context_detach_resource(ctx, res);
        }
        let Some(r) = self.resources.get_mut(&res) else {
            return;
        };
        r.handles = r.handles.saturating_sub(1);
        if r.handles == 0 {
            // rutabaga forgets the iovec before the mapping behind it goes.
            let _ = self.rutabaga.unref_resource(res);
            self.resources.remove(&res);
        }
    }

    fn map_pieces(&self, res: u32) -> Result<(OwnedFd, Vec<(u64, usize)>), VirtGpuError> {
        let r = self
            .resources
            .get(&res)
            .ok_or(VirtGpuError::InvalidArgument("resource is gone"))?;
        let fd = match (&r.guest, &r.host_fd) {
            (Some((fd, _)), _) | (None, Some(fd)) => fd,
            (None, None) => return Err(VirtGpuError::InvalidArgument("blob is not mappable")),
        };
        let len = usize::try_from(r.size).map_err(|_| VirtGpuError::OutOfMemory("size"))?;
        Ok((fd.try_clone().map_err(os)?, vec![(0, len)]))
    }

    fn submit(
        &mut self,
        ctx_id: u32,
        mut command: Vec<u8>,
        fence: Option<(u64, Option<u8>)>,
    ) -> Result<(), VirtGpuError> {
        self.rutabaga
            .submit_command(ctx_id, &mut command, &[])
            .map_err(|e| refused("a command buffer", e))?;
        if let Some((fence_id, ring)) = fence {
            let mut flags = RUTABAGA_FLAG_FENCE;
            if ring.is_some() {
                flags |= RUTABAGA_FLAG_INFO_RING_IDX;
            }
            self.rutabaga
                .create_fence(RutabagaFence {
                    flags,
                    fence_id,
                    ctx_id,
                    ring_idx: ring.unwrap_or(0),
                })
                .map_err(|e| refused("a fence", e))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The served device and its files

struct DevShared {
    jobs: mpsc::Sender<Job>,
    fences: Arc<Fences>,
    /// (id, version, size) of each capset, from rutabaga's capset info.
    capsets: Vec<(u32, u32, u32)>,
    next_ctx: AtomicU32,
    next_fence: AtomicU64,
    prime: PrimeTokens,
    limits: Limits,
}

/// rutabaga behind a thread of its own; cheap to clone.
#[derive(Clone)]
struct RutabagaDevice {
    shared: Arc<DevShared>,
}

impl std::fmt::Debug for RutabagaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RutabagaDevice")
            .field("capsets", &self.shared.capsets)
            .finish_non_exhaustive()
    }
}

impl RutabagaDevice {
    /// Starts the device thread with a cross-domain-only rutabaga whose Wayland channel
    /// connects to `wayland`.
    fn start(wayland: PathBuf, limits: Limits) -> Result<RutabagaDevice> {
        let fences = Arc::new(Fences::default());
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread_fences = fences.clone();
        std::thread::Builder::new()
            .name("rutabaga".into())
            .spawn(move || {
                let handler = RutabagaHandler::new(move |f: RutabagaFence| thread_fences.signal(f));
                let built = RutabagaBuilder::new(1 << RUTABAGA_CAPSET_CROSS_DOMAIN, handler)
                    .set_rutabaga_paths(Some(vec![RutabagaPath {
                        path: wayland,
                        path_type: CHANNEL_TYPE_WAYLAND,
                    }]))
                    .build();
                let rutabaga = match built {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("building rutabaga: {e}")));
                        return;
                    }
                };
                let capsets: Vec<(u32, u32, u32)> = (0..rutabaga.get_num_capsets())
                    .filter_map(|i| rutabaga.get_capset_info(i).ok())
                    .collect();
                let _ = ready_tx.send(Ok(capsets));
                let mut dev = Dev {
                    rutabaga,
                    resources: HashMap::new(),
                    next_res: 1,
                    limits,
                };
                while let Ok(job) = jobs_rx.recv() {
                    job(&mut dev);
                }
            })
            .context("starting the rutabaga thread")?;
        let capsets = ready_rx
            .recv()
            .context("the rutabaga thread ended")?
            .map_err(anyhow::Error::msg)?;
        tracing::info!(?capsets, "rutabaga ready");
        let cookie = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        Ok(RutabagaDevice {
            shared: Arc::new(DevShared {
                jobs: jobs_tx,
                fences,
                capsets,
                next_ctx: AtomicU32::new(1),
                next_fence: AtomicU64::new(1),
                prime: PrimeTokens {
                    magic: PRIME_MAGIC,
                    cookie,
                },
                limits,
            }),
        })
    }

    /// Runs `f` on the device thread and returns its result.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Dev) -> Result<R, VirtGpuError> + Send + 'static,
    ) -> Result<R, VirtGpuError> {
        let lost = || VirtGpuError::DeviceLost("the rutabaga thread ended".into());
        let (tx, rx) = mpsc::sync_channel(1);
        self.shared
            .jobs
            .send(Box::new(move |d: &mut Dev| {
                let _ = tx.send(f(d));
            }))
            .map_err(|_| lost())?;
        rx.recv().map_err(|_| lost())?
    }
}

impl ServedDevice for RutabagaDevice {
    type File = RutabagaFile;

    fn open(&self) -> Result<RutabagaFile, VirtGpuError> {
        let ctx_id = self.shared.next_ctx.fetch_add(1, Ordering::Relaxed);
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(os)?;
        // A program that never reads its events must not block rutabaga's worker.
        rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::NONBLOCK).map_err(os)?;
        Ok(RutabagaFile {
            dev: self.clone(),
            ctx_id,
            context: None,
            handles: HashMap::new(),
            next_handle: 1,
            events_r: r,
            events_w: Arc::new(EventSink {
                fd: w,
                dropped: AtomicBool::new(false),
            }),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct CtxState {
    num_rings: u32,
    poll_mask: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bo {
    res: u32,
    size: u64,
    blob_mem: u32,
    last_fence: Option<(Timeline, u64)>,
}

/// One open device file: its context, GEM handles and event pipe.
#[derive(Debug)]
struct RutabagaFile {
    dev: RutabagaDevice,
    ctx_id: u32,
    context: Option<CtxState>,
    handles: HashMap<u32, Bo>,
    next_handle: u32,
    events_r: OwnedFd,
    events_w: Arc<EventSink>,
}

impl RutabagaFile {
    fn create_context(&mut self, capset: u32, state: CtxState) -> Result<(), VirtGpuError> {
        let ctx = self.ctx_id;
        self.dev.call(move |d| {
            d.rutabaga
                .create_context(ctx, capset, Some(CONTEXT_NAME))
                .map_err(|e| refused("a context", e))
        })?;
        self.context = Some(state);
        Ok(())
    }

    /// The kernel creates a default context (`context_init = 0`) at the first ioctl that needs
    /// one; rutabaga makes that a cross-domain context too (its default component).
    fn ensure_context(&mut self) -> Result<(), VirtGpuError> {
        if self.context.is_none() {
            self.create_context(
                0,
                CtxState {
                    num_rings: 0,
                    poll_mask: 0,
                },
            )?;
        }
        Ok(())
    }

    /// `virtio_gpu_gem_object_open`: a new handle on `res`, attached to this file's context.
    fn open_handle(&mut self, res: u32, size: u64, blob_mem: u32) -> Result<u32, VirtGpuError> {
        self.ensure_context()?;
        let ctx = self.ctx_id;
        self.dev.call(move |d| d.attach(ctx, res))?;
        let h = self.next_handle;
        self.next_handle = h
            .checked_add(1)
            .ok_or(VirtGpuError::OutOfMemory("handles"))?;
        self.handles.insert(
            h,
            Bo {
                res,
                size,
                blob_mem,
                last_fence: None,
            },
        );
        Ok(h)
    }

    fn bo(&self, handle: u32) -> Result<Bo, VirtGpuError> {
        self.handles
            .get(&handle)
            .copied()
            .ok_or(VirtGpuError::NoSuchHandle(handle))
    }
}

impl Drop for RutabagaFile {
    fn drop(&mut self) {
        let handles: Vec<u32> = self.handles.keys().copied().collect();
        for h in handles {
            let _ = self.gem_close(h);
        }
        if self.context.is_some() {
            let ctx = self.ctx_id;
            // Destroying the context stops and joins its worker thread.
            let _ = self.dev.call(move |d| {
                d.rutabaga
                    .destroy_context(ctx)
                    .map_err(|e| refused("destroying a context", e))
            });
        }
        self.dev.shared.fences.forget_context(self.ctx_id);
    }
}

impl ServedFile for RutabagaFile {
    fn map_pieces(&self, bo_handle: u32) -> Result<(OwnedFd, Vec<(u64, usize)>), VirtGpuError> {
        let res = self.bo(bo_handle)?.res;
        self.dev.call(move |d| d.map_pieces(res))
    }

    fn ctx_id(&self) -> u32 {
        self.ctx_id
    }
}

impl VirtGpu for RutabagaFile {
    type Mapping = Mapping;

    fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError> {
        // What the kernel answers on crosvm's device with cross-domain only: the 3D feature
        // (the kernel refuses HOST3D blobs without it), context init, blobs and the
        // host-visible window.
        Ok(match param {
            VIRTGPU_PARAM_3D_FEATURES
            | VIRTGPU_PARAM_CAPSET_QUERY_FIX
            | VIRTGPU_PARAM_RESOURCE_BLOB
            | VIRTGPU_PARAM_HOST_VISIBLE
            | VIRTGPU_PARAM_CONTEXT_INIT
            | VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME => 1,
            VIRTGPU_PARAM_CROSS_DEVICE => 0,
            VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS => {
                capset_mask(self.dev.shared.capsets.iter().map(|c| c.0))
            }
            _ => return Err(VirtGpuError::InvalidArgument("unknown param")),
        })
    }

    fn get_caps(
        &mut self,
        cap_set_id: u32,
        cap_set_ver: u32,
        buf: &mut [u8],
    ) -> Result<usize, VirtGpuError> {
        // The kernel checks the id against the device's capset list; rutabaga itself would
        // answer any unknown id with its default component's capset.
        let (_, _, max_size) = self
            .dev
            .shared
            .capsets
            .iter()
            .find(|c| c.0 == cap_set_id && c.1 >= cap_set_ver)
            .copied()
            .ok_or(VirtGpuError::InvalidArgument("no such capset"))?;
        let data = self
            .dev
            .call(move |d| Ok(d.rutabaga.get_capset(cap_set_id, cap_set_ver)))?
            .map_err(|e| refused("a capset", e))?;
        Ok(copy_capset(&data, max_size, buf))
    }

    fn context_init(
        &mut self,
        params: &[drm_virtgpu_context_set_param],
    ) -> Result<(), VirtGpuError> {
        if self.context.is_some() {
            return Err(VirtGpuError::Os(rustix::io::Errno::EXIST.raw_os_error()));
        }
        let supported = self.get_param(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS)?;
        let c = context_params(params, supported)?;
        self.create_context(
            c.capset_id,
            CtxState {
                num_rings: c.num_rings,
                poll_mask: c.poll_rings_mask,
            },
        )
    }

    fn resource_create_blob(
        &mut self,
        req: &drm_virtgpu_resource_create_blob,
    ) -> Result<BlobHandles, VirtGpuError> {
        // verify_blob()
        if req.blob_flags & !(VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE) != 0
        {
            return Err(VirtGpuError::InvalidArgument("blob flags"));
        }
        match req.blob_mem {
            VIRTGPU_BLOB_MEM_GUEST if req.blob_id != 0 => {
                return Err(VirtGpuError::InvalidArgument("guest blob with a blob id"));
            }
            VIRTGPU_BLOB_MEM_GUEST | VIRTGPU_BLOB_MEM_HOST3D => {}
            _ => return Err(VirtGpuError::InvalidArgument("blob_mem")),
        }
        let size = req.size.checked_next_multiple_of(PAGE).unwrap_or(0);
        if size == 0 {
            return Err(VirtGpuError::InvalidArgument("size"));
        }
        if size > self.dev.shared.limits.max_blob_bytes {
            tracing::warn!(
                size,
                max_blob_bytes = self.dev.shared.limits.max_blob_bytes,
                "limit reached: blob refused"
            );
            return Err(VirtGpuError::OutOfMemory("max_blob_bytes"));
        }
        self.ensure_context()?;
        let ctx = self.ctx_id;
        if !req.cmd.is_empty() {
            let cmd = req.cmd.clone();
            self.dev.call(move |d| d.submit(ctx, cmd, None))?;
        }
        let (blob_mem, blob_flags, blob_id) = (req.blob_mem, req.blob_flags, req.blob_id);
        let res = self
            .dev
            .call(move |d| d.create_blob(ctx, blob_mem, blob_flags, blob_id, size))?;
        match self.open_handle(res, size, blob_mem) {
            Ok(bo_handle) => Ok(BlobHandles {
                bo_handle,
                res_handle: res,
            }),
            Err(e) => {
                // Nobody holds it: release it.
                let _ = self.dev.call(move |d| {
                    if let Some(r) = d.resources.get_mut(&res) {
                        r.handles = 1;
                    }
                    d.detach(None, res);
                    Ok(())
                });
                Err(e)
            }
        }
    }

    fn map(&mut self, bo_handle: u32) -> Result<Mapping, VirtGpuError> {
        map_served(self, bo_handle)
    }

    fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError> {
        if eb.flags & !VIRTGPU_EXECBUF_RING_IDX != 0 {
            return Err(VirtGpuError::InvalidArgument(
                "fence fds are not offered by the reference host",
            ));
        }
        self.ensure_context()?;
        let ctx = self.context.unwrap_or(CtxState {
            num_rings: 0,
            poll_mask: 0,
        });
        let ring = if eb.flags & VIRTGPU_EXECBUF_RING_IDX != 0 {
            if eb.ring_idx >= ctx.num_rings {
                return Err(VirtGpuError::InvalidArgument("ring_idx"));
            }
            Some(eb.ring_idx as u8)
        } else {
            None
        };
        for &h in eb.bo_handles {
            self.bo(h)?;
        }
        let fence_id = self.dev.shared.next_fence.fetch_add(1, Ordering::Relaxed);
        let tl = (self.ctx_id, ring);
        let sink = ring
            .filter(|r| ctx.poll_mask & (1u64 << r) != 0)
            .map(|_| self.events_w.clone());
        // Registered before rutabaga sees the fence: the query ring's signals at once.
        self.dev.shared.fences.add(tl, fence_id, sink);
        let ctx_id = self.ctx_id;
        let command = eb.command.to_vec();
        if let Err(e) = self
            .dev
            .call(move |d| d.submit(ctx_id, command, Some((fence_id, ring))))
        {
            self.dev.shared.fences.cancel(tl, fence_id);
            return Err(e);
        }
        for &bh in eb.bo_handles {
            if let Some(bo) = self.handles.get_mut(&bh) {
                bo.last_fence = Some((tl, fence_id));
            }
        }
        Ok(())
    }

    fn wait(&mut self, bo_handle: u32, flags: u32) -> Result<(), VirtGpuError> {
        let Some((tl, f)) = self.bo(bo_handle)?.last_fence else {
            return Ok(());
        };
        let fences = &self.dev.shared.fences;
        if flags & VIRTGPU_WAIT_NOWAIT != 0 {
            return if fences.is_pending(tl, f) {
                Err(VirtGpuError::Busy)
            } else {
                Ok(())
            };
        }
        if fences.wait(tl, f, self.dev.shared.limits.wait_timeout) {
            Ok(())
        } else {
            Err(VirtGpuError::Busy)
        }
    }

    fn resource_info(&mut self, bo_handle: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError> {
        let bo = self.bo(bo_handle)?;
        Ok(drm_virtgpu_resource_info {
            bo_handle,
            res_handle: bo.res,
            // The uAPI field is 32 bits; the kernel truncates the same way.
            size: bo.size as u32,
            blob_mem: bo.blob_mem,
        })
    }

    fn prime_handle_to_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, VirtGpuError> {
        let bo = self.bo(bo_handle)?;
        self.dev
            .shared
            .prime
            .export("crossway-rutabaga-prime", bo.res)
    }

    fn prime_fd_to_handle(&mut self, fd: std::os::fd::BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
        let res = self.dev.shared.prime.import(fd)?;
        if let Some((&h, _)) = self.handles.iter().find(|(_, bo)| bo.res == res) {
            return Ok(h);
        }
        let (size, blob_mem) = self.dev.call(move |d| {
            d.resources
                .get(&res)
                .map(|r| (r.size, r.blob_mem))
                .ok_or(VirtGpuError::InvalidArgument("resource is gone"))
        })?;
        self.open_handle(res, size, blob_mem)
    }

    fn gem_close(&mut self, bo_handle: u32) -> Result<(), VirtGpuError> {
        let bo = self
            .handles
            .remove(&bo_handle)
            .ok_or(VirtGpuError::NoSuchHandle(bo_handle))?;
        let ctx = self.context.map(|_| self.ctx_id);
        self.dev.call(move |d| {
            d.detach(ctx, bo.res);
            Ok(())
        })
    }

    fn event_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.events_r.as_fd()
    }
}

// ---------------------------------------------------------------------------------------------

/// `--wayland-display`: a path as given, or a name in `$XDG_RUNTIME_DIR` (as libwayland
/// resolves `WAYLAND_DISPLAY`).
fn wayland_path(display: &str) -> Result<PathBuf> {
    if display.contains('/') {
        return Ok(PathBuf::from(display));
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .context("--wayland-display is a name but XDG_RUNTIME_DIR is not set")?;
    Ok(Path::new(&dir).join(display))
}

fn run(cli: Cli) -> Result<()> {
    let wayland = wayland_path(&cli.wayland_display)?;
    if !wayland.exists() {
        bail!("no Wayland socket at {}", wayland.display());
    }
    let limits = Limits {
        max_blobs: cli.max_blobs,
        max_blob_bytes: cli.max_blob_mib.saturating_mul(1 << 20),
        wait_timeout: Duration::from_millis(cli.wait_timeout_ms),
    };
    let device = RutabagaDevice::start(wayland.clone(), limits)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let server = LoopbackServer::bind(
        device,
        &cli.socket,
        ServerConfig {
            max_connections: cli.max_connections,
            ..ServerConfig::default()
        },
    )?;
    tracing::info!(
        socket = %cli.socket.display(),
        wayland = %wayland.display(),
        "reference host listening"
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{CROSSWAY_VIRTGPU_ENV}={LOOPBACK_ADDRESS_PREFIX}{}",
            server.path().display()
        )?;
        out.flush()?;
    }
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(
        connections = server.active_connections(),
        "stopping: signal"
    );
    drop(server);
    Ok(())
}

fn main() -> std::process::ExitCode {
    // The format from $CROSSWAY_LOG_FORMAT, colour only on a terminal, like the real binaries.
    crossway_logging::init(&crossway_logging::LogArgs::from_env());
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sink() -> (OwnedFd, Arc<EventSink>) {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).unwrap();
        let s = Arc::new(EventSink {
            fd: w,
            dropped: AtomicBool::new(false),
        });
        (r, s)
    }

    fn events(r: &OwnedFd) -> usize {
        let mut buf = [0u8; 256];
        let n = rustix::io::read(r, &mut buf).unwrap_or(0);
        let (evs, rest) = DrmEvent::decode_all(&buf[..n]);
        assert_eq!(rest, Ok(()));
        evs.len()
    }

    fn fence(ctx_id: u32, ring: Option<u8>, fence_id: u64) -> RutabagaFence {
        RutabagaFence {
            flags: RUTABAGA_FLAG_FENCE | ring.map_or(0, |_| RUTABAGA_FLAG_INFO_RING_IDX),
            fence_id,
            ctx_id,
            ring_idx: ring.unwrap_or(0),
        }
    }

    #[test]
    fn fences_signal_releases_earlier_on_timeline_with_one_event_each() {
        let f = Fences::default();
        let (r, s) = sink();
        f.add((1, Some(1)), 3, Some(s.clone()));
        f.add((1, Some(1)), 5, Some(s.clone()));
        f.add((1, Some(1)), 9, Some(s));
        f.add((1, Some(0)), 4, None);
        f.signal(fence(1, Some(1), 5));
        assert_eq!(events(&r), 2);
        assert!(!f.is_pending((1, Some(1)), 3));
        assert!(f.is_pending((1, Some(1)), 9));
        assert!(f.is_pending((1, Some(0)), 4), "other ring untouched");
        f.signal(fence(1, None, 100));
        assert!(
            f.is_pending((1, Some(0)), 4),
            "ringless fence is its own timeline"
        );
        f.signal(fence(1, Some(0), 4));
        assert!(!f.is_pending((1, Some(0)), 4));
        assert_eq!(events(&r), 0, "query ring has no events");
    }

    #[test]
    fn fences_wait_times_out_then_cancel_and_forget_release() {
        let f = Fences::default();
        f.add((2, Some(1)), 1, None);
        assert!(!f.wait((2, Some(1)), 1, Duration::from_millis(20)));
        f.cancel((2, Some(1)), 1);
        assert!(f.wait((2, Some(1)), 1, Duration::from_millis(20)));
        f.add((3, None), 7, None);
        f.forget_context(3);
        assert!(!f.is_pending((3, None), 7));
    }

    #[test]
    fn wayland_path_name_is_in_runtime_dir_path_is_kept() {
        assert_eq!(
            wayland_path("/run/x/wayland-1").unwrap(),
            PathBuf::from("/run/x/wayland-1")
        );
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
            assert_eq!(
                wayland_path("wayland-9").unwrap(),
                Path::new(&dir).join("wayland-9")
            );
        }
    }
}
