//! The driver half: a userspace copy of what the Linux `virtio_gpu` driver
//! (`drivers/gpu/drm/virtio`) does for each virtgpu ioctl, over the frontend's queues.
//!
//! Kernel behaviour copied on purpose, because guest agents depend on it:
//! - fence ids come from one counter shared by every file and context
//!   (`virtio_gpu_fence_alloc`), and a fence completing releases every earlier fence on the same
//!   (context, ring) timeline, in id order (`virtio_gpu_fence_event_process`);
//! - a signalled fence on a ring in the file's `POLL_RINGS_MASK` queues exactly one
//!   `drm_event{VIRTGPU_EVENT_FENCE_SIGNALED, 8}` (cross-domain.md §1.1);
//! - guest blobs are created with `hdr.ctx_id = 0` and `blob_id = 0`; HOST3D blobs carry the
//!   file's context (vhost-user-gpu.md §3.3);
//! - opening a GEM handle in a file that has a context sends `CTX_ATTACH_RESOURCE`
//!   (`virtio_gpu_gem_object_open`), closing it `CTX_DETACH_RESOURCE`; a file without a context
//!   gets a default one (`context_init = 0`) at that point, as kernels before the 2025 fix do,
//!   so a later `CONTEXT_INIT` fails with `EEXIST` — agents must init first;
//! - mappable HOST3D blobs are mapped into the host-visible window at creation
//!   (`virtio_gpu_vram_create` + `virtio_gpu_cmd_map`).
//!
//! Deliberate differences: commands whose answer the kernel never looks at (CTX_CREATE,
//! CREATE_BLOB, ATTACH) are waited for, so a refusal is reported as
//! [`VirtGpuError::Device`]; `EXECBUFFER` reports a device error on its `SUBMIT_3D` the same
//! way (a ring fence may stay pending, so the driver queues a cheap `GET_CAPSET_INFO` behind it
//! as a barrier: the backend answers in queue order). Fence fds (`FENCE_FD_IN/OUT`) and
//! syncobjs are not offered. `PRIME_HANDLE_TO_FD` yields a loopback token (a small memfd naming
//! the resource), not a dmabuf; `PRIME_FD_TO_HANDLE` accepts only such tokens.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossway_protocols::virtgpu::*;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::{FromBytes, IntoBytes};

use crate::loopback::frontend::{FrontendError, PAGE, RING_AREA, RamConfig, Vmm};
use crate::loopback::uapi::{PrimeTokens, capset_mask, context_params, copy_capset};
use crate::loopback::vring::Buffer;
use crate::protocol::*;
use crossway_loopback::mmap::{Mapping, Piece};

/// Limits and sizes of a loopback VM.
#[derive(Debug, Clone, Copy)]
pub struct LoopbackConfig {
    /// Guest RAM bytes.
    pub ram_size: u64,
    /// Guest RAM regions.
    pub regions: u32,
    /// Virtqueue size.
    pub queue_size: u16,
    /// Live blobs at most.
    pub max_blobs: u32,
    /// Largest request (bytes) a command may take (SUBMIT_3D payload, CREATE_BLOB entries).
    pub max_request: usize,
    /// How long to wait for the device before declaring it lost.
    pub timeout: Duration,
}

impl Default for LoopbackConfig {
    fn default() -> Self {
        LoopbackConfig {
            ram_size: 64 << 20,
            regions: 2,
            queue_size: 256,
            max_blobs: 4096,
            max_request: 256 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where events of one file go: the write end of its event pipe.
#[derive(Debug)]
struct EventSink {
    fd: OwnedFd,
    dropped: AtomicU64,
}

impl EventSink {
    fn push(&self) {
        let rec = DrmEvent::FENCE_SIGNALED.to_bytes();
        if rustix::io::write(&self.fd, &rec) != Ok(rec.len())
            && self.dropped.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::warn!("event pipe full or closed: fence event dropped (logged once)");
        }
    }
}

type Timeline = (u32, Option<u8>);

struct Inflight {
    token: u64,
    pages: Vec<u64>,
    resp: u64,
    fence: Option<(Timeline, u64)>,
    keep_response: bool,
}

struct Res {
    blob_mem: u32,
    /// Created with `VIRTGPU_BLOB_FLAG_USE_MAPPABLE`.
    mappable: bool,
    size: u64,
    pages: Vec<u64>,
    window: Option<u64>,
    handles: u32,
}

struct State {
    vmm: Vmm,
    free_pages: Vec<u64>,
    inflight: HashMap<u16, Inflight>,
    responses: HashMap<u64, Vec<u8>>,
    timelines: HashMap<Timeline, BTreeMap<u64, Option<Arc<EventSink>>>>,
    pending: HashSet<u64>,
    next_token: u64,
    next_fence: u64,
    next_res: u32,
    next_ctx: u32,
    resources: HashMap<u32, Res>,
    window_free: Vec<(u64, u64)>,
    lost: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
    config: LoopbackConfig,
    capsets: Mutex<Vec<(u32, u32, u32)>>,
    prime: PrimeTokens,
}

/// A running loopback VM: the frontend, guest RAM and the completion thread. Cheap to clone.
#[derive(Clone)]
pub struct LoopbackVm {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LoopbackVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackVm").finish_non_exhaustive()
    }
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn hdr(type_: u32, ctx: u32) -> virtio_gpu_ctrl_hdr {
    virtio_gpu_ctrl_hdr {
        type_: type_.into(),
        ctx_id: ctx.into(),
        ..Default::default()
    }
}

fn cmd<T: IntoBytes + zerocopy::Immutable>(h: virtio_gpu_ctrl_hdr, body: &T) -> Vec<u8> {
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

fn resp_type(b: &[u8]) -> u32 {
    virtio_gpu_ctrl_hdr::read_from_prefix(b)
        .map(|(h, _)| h.type_.get())
        .unwrap_or(VIRTIO_GPU_RESP_ERR_UNSPEC)
}

fn check_ok(b: &[u8], ok: u32) -> Result<(), VirtGpuError> {
    match resp_type(b) {
        t if t == ok => Ok(()),
        t => Err(VirtGpuError::Device(t)),
    }
}

impl LoopbackVm {
    /// Starts the VMM half against a backend listening at `path`.
    pub fn connect(path: &Path, config: LoopbackConfig) -> Result<LoopbackVm, FrontendError> {
        let ram = RamConfig {
            size: config.ram_size,
            regions: config.regions,
            queue_size: config.queue_size,
        };
        LoopbackVm::start(Vmm::connect(path, ram)?, config)
    }

    /// The whole chain in one process, for tests and benches: serves `device` with `factory`
    /// (the real vhost-user backend, [`crate::backend::serve`]) on a thread listening at
    /// `path`, waits up to 10 s for the socket, and connects a loopback VM with the default
    /// configuration. The backend thread ends when the VM disconnects.
    pub fn with_backend_thread(
        path: &Path,
        device: crate::device::DeviceConfig,
        factory: Box<dyn crate::context::ContextFactory>,
    ) -> Result<LoopbackVm, FrontendError> {
        let _ = std::fs::remove_file(path);
        let endpoint = crate::backend::Endpoint::SocketPath(path.to_path_buf());
        std::thread::spawn(move || {
            let config = crate::backend::ServeConfig {
                endpoint,
                device,
                factory,
            };
            if let Err(e) = crate::backend::serve(config) {
                tracing::warn!(error = %e, "in-process backend stopped");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Past the deadline, connecting reports the missing socket.
        LoopbackVm::connect(path, LoopbackConfig::default())
    }

    fn start(vmm: Vmm, config: LoopbackConfig) -> Result<LoopbackVm, FrontendError> {
        // Pages for blobs and requests, handed out so that consecutive allocations alternate
        // between regions (pop from the end): a blob's pages are scattered like shmem pages.
        let mut per_region: Vec<Vec<u64>> = vmm
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let skip = if i == 0 { RING_AREA } else { 0 };
                (r.gpa + skip..r.gpa + r.len)
                    .step_by(PAGE as usize)
                    .collect()
            })
            .collect();
        let mut order = Vec::new();
        loop {
            let mut any = false;
            for pages in &mut per_region {
                if !pages.is_empty() {
                    order.push(pages.remove(0));
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        order.reverse();
        let window_free = if vmm.window_size > 0 {
            vec![(0, vmm.window_size)]
        } else {
            Vec::new()
        };
        // Tells this VM's PRIME tokens from those of another VM in the same process (the
        // counter) or of a VM in another process (the pid).
        static VMS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let cookie = std::process::id().rotate_left(16) ^ VMS.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                vmm,
                free_pages: order,
                inflight: HashMap::new(),
                responses: HashMap::new(),
                timelines: HashMap::new(),
                pending: HashSet::new(),
                next_token: 1,
                next_fence: 1,
                next_res: 1,
                next_ctx: 1,
                resources: HashMap::new(),
                window_free,
                lost: None,
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            config,
            capsets: Mutex::new(Vec::new()),
            prime: PrimeTokens {
                magic: PRIME_MAGIC,
                cookie,
            },
        });
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("loopback-used".into())
            .spawn(move || {
                let weak = Arc::downgrade(&s2);
                drop(s2);
                completion_loop(weak)
            })
            .map_err(FrontendError::EventFd)?;
        let vm = LoopbackVm { shared };
        // What the driver's probe does (virtio_gpu_init): read every capset's info.
        let n = lock(&vm.shared).vmm.config.num_capsets.get();
        let mut caps = Vec::new();
        for i in 0..n {
            let r = vm
                .request(
                    &cmd(
                        hdr(VIRTIO_GPU_CMD_GET_CAPSET_INFO, 0),
                        &virtio_gpu_get_capset_info {
                            capset_index: i.into(),
                            padding: 0.into(),
                        },
                    ),
                    None,
                )
                .map_err(|e| FrontendError::Ram(e.to_string()))?;
            if let Ok((info, _)) = virtio_gpu_resp_capset_info::read_from_prefix(&r[..])
                && info.hdr.type_.get() == VIRTIO_GPU_RESP_OK_CAPSET_INFO
            {
                caps.push((
                    info.capset_id.get(),
                    info.capset_max_version.get(),
                    info.capset_max_size.get(),
                ));
            }
        }
        tracing::info!(?caps, "capsets");
        *vm.shared
            .capsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = caps;
        Ok(vm)
    }

    /// Opens a device file (one `open("/dev/dri/renderD128")`).
    pub fn open(&self) -> Result<LoopbackFile, VirtGpuError> {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| VirtGpuError::Os(e.raw_os_error()))?;
        rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| VirtGpuError::Os(e.raw_os_error()))?;
        let ctx_id = {
            let mut st = lock(&self.shared);
            let c = st.next_ctx;
            st.next_ctx = c
                .checked_add(1)
                .ok_or(VirtGpuError::OutOfMemory("contexts"))?;
            c
        };
        Ok(LoopbackFile {
            vm: self.clone(),
            ctx_id,
            context: None,
            handles: HashMap::new(),
            next_handle: 1,
            events_r: r,
            events_w: Arc::new(EventSink {
                fd: w,
                dropped: AtomicU64::new(0),
            }),
        })
    }

    /// `SHMEM_MAP` requests the backend made so far.
    pub fn window_maps(&self) -> u64 {
        lock(&self.shared).vmm.window.maps.load(Ordering::Relaxed)
    }

    /// Queues `req`; with `fence`, the answer may come later. Waits for and returns the answer
    /// unless `fence` is given.
    fn request(
        &self,
        req: &[u8],
        fence: Option<(Timeline, u64, Option<Arc<EventSink>>)>,
    ) -> Result<Vec<u8>, VirtGpuError> {
        let wait = fence.is_none();
        let token = self.queue(req, fence, wait)?;
        if wait {
            self.wait_response(token)
        } else {
            Ok(Vec::new())
        }
    }

    fn queue(
        &self,
        req: &[u8],
        fence: Option<(Timeline, u64, Option<Arc<EventSink>>)>,
        keep_response: bool,
    ) -> Result<u64, VirtGpuError> {
        if req.len() > self.shared.config.max_request {
            return Err(VirtGpuError::InvalidArgument(
                "request larger than max_request",
            ));
        }
        let npages = req.len().div_ceil(PAGE as usize) + 1;
        let deadline = Instant::now() + self.shared.config.timeout;
        let mut st = lock(&self.shared);
        loop {
            if let Some(l) = &st.lost {
                return Err(VirtGpuError::DeviceLost(l.clone()));
            }
            if st.vmm.ctrl.free() >= npages && st.free_pages.len() >= npages {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VirtGpuError::OutOfMemory("virtqueue or guest pages"));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let at = st.free_pages.len() - npages;
        let pages = st.free_pages.split_off(at);
        let mut chain = Vec::with_capacity(npages);
        for (chunk, &p) in req.chunks(PAGE as usize).zip(&pages) {
            st.vmm
                .mem
                .write_slice(chunk, GuestAddress(p))
                .map_err(|e| VirtGpuError::DeviceLost(e.to_string()))?;
            chain.push(Buffer {
                addr: p,
                len: chunk.len() as u32,
                write: false,
            });
        }
        let resp = pages[npages - 1];
        chain.push(Buffer {
            addr: resp,
            len: PAGE as u32,
            write: true,
        });
        let head = {
            let State { vmm, .. } = &mut *st;
            vmm.ctrl
                .add(&vmm.mem, &chain)
                .map_err(|e| VirtGpuError::DeviceLost(e.to_string()))?
        };
        let token = st.next_token;
        st.next_token += 1;
        let fence_key = fence.map(|(t, id, sink)| {
            st.timelines.entry(t).or_default().insert(id, sink);
            st.pending.insert(id);
            (t, id)
        });
        st.inflight.insert(
            head,
            Inflight {
                token,
                pages,
                resp,
                fence: fence_key,
                keep_response,
            },
        );
        st.vmm.kick[0]
            .write(1)
            .map_err(|e| VirtGpuError::DeviceLost(e.to_string()))?;
        Ok(token)
    }

    fn wait_response(&self, token: u64) -> Result<Vec<u8>, VirtGpuError> {
        let deadline = Instant::now() + self.shared.config.timeout;
        let mut st = lock(&self.shared);
        loop {
            if let Some(r) = st.responses.remove(&token) {
                return Ok(r);
            }
            if let Some(l) = &st.lost {
                return Err(VirtGpuError::DeviceLost(l.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.lost = Some("device did not answer in time".into());
                return Err(VirtGpuError::TimedOut);
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn fence_pending(&self, id: u64) -> bool {
        lock(&self.shared).pending.contains(&id)
    }

    fn alloc_fence(&self) -> u64 {
        let mut st = lock(&self.shared);
        let f = st.next_fence;
        st.next_fence += 1;
        f
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The thread holds only a weak reference: it ends when every `LoopbackVm` clone is gone.
fn completion_loop(weak: std::sync::Weak<Shared>) {
    let call = {
        use std::os::fd::AsRawFd;
        let Some(shared) = weak.upgrade() else { return };
        let st = lock(&shared);
        match crossway_sys::fdpass::dup_raw(st.vmm.call[0].as_raw_fd()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "duplicating the call eventfd");
                return;
            }
        }
    };
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &call,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&call, &mut b);
        let Some(s) = weak.upgrade() else { return };
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        drain_used(&s);
    }
}

fn drain_used(s: &Shared) {
    let mut st = lock(s);
    let mut any = false;
    loop {
        let used = {
            let State { vmm, .. } = &mut *st;
            vmm.ctrl.pop_used(&vmm.mem)
        };
        let (head, len) = match used {
            Ok(Some(u)) => u,
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "control queue broken");
                st.lost = Some(e.to_string());
                break;
            }
        };
        any = true;
        let Some(inf) = st.inflight.remove(&head) else {
            continue;
        };
        let n = (len as usize).min(PAGE as usize);
        let mut buf = vec![0u8; n];
        let _ = st.vmm.mem.read_slice(&mut buf, GuestAddress(inf.resp));
        if inf.keep_response {
            st.responses.insert(inf.token, buf);
        }
        st.free_pages.extend(inf.pages);
        if let Some((t, id)) = inf.fence {
            signal(&mut st, t, id);
        }
    }
    drop(st);
    if any {
        s.cv.notify_all();
    }
}

/// `virtio_gpu_fence_event_process`: fence `id` on timeline `t` is done, and with it every
/// earlier fence on `t`, each raising its own event, in id order.
fn signal(st: &mut State, t: Timeline, id: u64) {
    let Some(tl) = st.timelines.get_mut(&t) else {
        return;
    };
    let later = tl.split_off(&(id + 1));
    let done = std::mem::replace(tl, later);
    for (fid, sink) in done {
        st.pending.remove(&fid);
        if let Some(sink) = sink {
            sink.push();
        }
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
    last_fence: Option<u64>,
}

/// One open device file: its context, GEM handles and event pipe.
#[derive(Debug)]
pub struct LoopbackFile {
    vm: LoopbackVm,
    ctx_id: u32,
    context: Option<CtxState>,
    handles: HashMap<u32, Bo>,
    next_handle: u32,
    events_r: OwnedFd,
    events_w: Arc<EventSink>,
}

const PRIME_MAGIC: [u8; 8] = *b"CWLBPRIM";

impl LoopbackFile {
    /// The context id this file uses on the device.
    pub fn ctx_id(&self) -> u32 {
        self.ctx_id
    }

    fn has_feature(&self, bit: u32) -> bool {
        lock(&self.vm.shared).vmm.has_feature(bit)
    }

    fn create_context(&mut self, capset: u32, state: CtxState) -> Result<(), VirtGpuError> {
        let name = b"crossway-loopback";
        let mut c = virtio_gpu_ctx_create {
            nlen: (name.len() as u32).into(),
            context_init: capset.into(),
            ..Default::default()
        };
        c.debug_name[..name.len()].copy_from_slice(name);
        let r = self
            .vm
            .request(&cmd(hdr(VIRTIO_GPU_CMD_CTX_CREATE, self.ctx_id), &c), None)?;
        check_ok(&r, VIRTIO_GPU_RESP_OK_NODATA)?;
        self.context = Some(state);
        Ok(())
    }

    /// `virtio_gpu_create_context` with `context_init = 0`, as the kernel does lazily.
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

    fn res_cmd(&self, type_: u32, ctx: u32, res: u32) -> Result<Vec<u8>, VirtGpuError> {
        self.vm.request(
            &cmd(
                hdr(type_, ctx),
                &virtio_gpu_resource_unref {
                    resource_id: res.into(),
                    padding: 0.into(),
                },
            ),
            None,
        )
    }

    /// `virtio_gpu_gem_object_open`: a new handle for `res` in this file.
    fn open_handle(&mut self, res: u32) -> Result<u32, VirtGpuError> {
        self.ensure_context()?;
        let r = self.res_cmd(VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, self.ctx_id, res)?;
        check_ok(&r, VIRTIO_GPU_RESP_OK_NODATA)?;
        let h = self.next_handle;
        self.next_handle = h
            .checked_add(1)
            .ok_or(VirtGpuError::OutOfMemory("handles"))?;
        self.handles.insert(
            h,
            Bo {
                res,
                last_fence: None,
            },
        );
        if let Some(r) = lock(&self.vm.shared).resources.get_mut(&res) {
            r.handles += 1;
        }
        Ok(h)
    }

    fn bo(&self, handle: u32) -> Result<Bo, VirtGpuError> {
        self.handles
            .get(&handle)
            .copied()
            .ok_or(VirtGpuError::NoSuchHandle(handle))
    }

    /// The guest-physical pages of a guest blob (for tests that look behind the mapping).
    pub fn guest_pages(&self, handle: u32) -> Result<Vec<u64>, VirtGpuError> {
        let bo = self.bo(handle)?;
        Ok(lock(&self.vm.shared)
            .resources
            .get(&bo.res)
            .map(|r| r.pages.clone())
            .unwrap_or_default())
    }

    fn release_resource(&mut self, res: u32) -> Result<(), VirtGpuError> {
        let (window, size) = {
            let st = lock(&self.vm.shared);
            match st.resources.get(&res) {
                Some(r) if r.handles == 0 => (r.window, r.size),
                _ => return Ok(()),
            }
        };
        if window.is_some() {
            let r = self.res_cmd(VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB, 0, res)?;
            check_ok(&r, VIRTIO_GPU_RESP_OK_NODATA)?;
        }
        let r = self.res_cmd(VIRTIO_GPU_CMD_RESOURCE_UNREF, 0, res)?;
        let mut st = lock(&self.vm.shared);
        if let Some(rr) = st.resources.remove(&res) {
            // Pages go back only after the device answered (virtio_gpu_cleanup_object runs
            // from the response callback).
            st.free_pages.extend(rr.pages);
            if let Some(w) = window {
                st.window_free.push((w, size));
            }
        }
        drop(st);
        check_ok(&r, VIRTIO_GPU_RESP_OK_NODATA)
    }
}

impl Drop for LoopbackFile {
    fn drop(&mut self) {
        let handles: Vec<u32> = self.handles.keys().copied().collect();
        for h in handles {
            let _ = self.gem_close(h);
        }
        if self.context.is_some() {
            let _ = self.vm.request(
                hdr(VIRTIO_GPU_CMD_CTX_DESTROY, self.ctx_id).as_bytes(),
                None,
            );
        }
    }
}

impl VirtGpu for LoopbackFile {
    type Mapping = Mapping;

    fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError> {
        let b = |bit| u64::from(self.has_feature(bit));
        Ok(match param {
            VIRTGPU_PARAM_3D_FEATURES => b(VIRTIO_GPU_F_VIRGL),
            VIRTGPU_PARAM_CAPSET_QUERY_FIX => 1,
            VIRTGPU_PARAM_RESOURCE_BLOB => b(VIRTIO_GPU_F_RESOURCE_BLOB),
            VIRTGPU_PARAM_HOST_VISIBLE => u64::from(lock(&self.vm.shared).vmm.window_size > 0),
            VIRTGPU_PARAM_CROSS_DEVICE => b(VIRTIO_GPU_F_RESOURCE_UUID),
            VIRTGPU_PARAM_CONTEXT_INIT | VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME => {
                b(VIRTIO_GPU_F_CONTEXT_INIT)
            }
            VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS => capset_mask(
                self.vm
                    .shared
                    .capsets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .map(|c| c.0)
                    .collect::<Vec<_>>(),
            ),
            _ => return Err(VirtGpuError::InvalidArgument("unknown param")),
        })
    }

    fn get_caps(
        &mut self,
        cap_set_id: u32,
        cap_set_ver: u32,
        buf: &mut [u8],
    ) -> Result<usize, VirtGpuError> {
        let found = self
            .vm
            .shared
            .capsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|c| c.0 == cap_set_id && c.1 >= cap_set_ver)
            .copied();
        let (_, _, max_size) = found.ok_or(VirtGpuError::InvalidArgument("no such capset"))?;
        let r = self.vm.request(
            &cmd(
                hdr(VIRTIO_GPU_CMD_GET_CAPSET, 0),
                &virtio_gpu_get_capset {
                    capset_id: cap_set_id.into(),
                    capset_version: cap_set_ver.into(),
                },
            ),
            None,
        )?;
        check_ok(&r, VIRTIO_GPU_RESP_OK_CAPSET)?;
        let data = r.get(size_of::<virtio_gpu_ctrl_hdr>()..).unwrap_or(&[]);
        Ok(copy_capset(data, max_size, buf))
    }

    fn context_init(
        &mut self,
        params: &[drm_virtgpu_context_set_param],
    ) -> Result<(), VirtGpuError> {
        if !self.has_feature(VIRTIO_GPU_F_CONTEXT_INIT) || !self.has_feature(VIRTIO_GPU_F_VIRGL) {
            return Err(VirtGpuError::InvalidArgument("no context init"));
        }
        if self.context.is_some() {
            return Err(VirtGpuError::Os(libc::EEXIST));
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
        if !self.has_feature(VIRTIO_GPU_F_RESOURCE_BLOB) {
            return Err(VirtGpuError::InvalidArgument("no blob resources"));
        }
        if req.blob_flags
            & !(VIRTGPU_BLOB_FLAG_USE_MAPPABLE
                | VIRTGPU_BLOB_FLAG_USE_SHAREABLE
                | VIRTGPU_BLOB_FLAG_USE_CROSS_DEVICE)
            != 0
        {
            return Err(VirtGpuError::InvalidArgument("blob flags"));
        }
        if req.blob_flags & VIRTGPU_BLOB_FLAG_USE_CROSS_DEVICE != 0
            && !self.has_feature(VIRTIO_GPU_F_RESOURCE_UUID)
        {
            return Err(VirtGpuError::InvalidArgument("cross-device without uuids"));
        }
        let guest = match req.blob_mem {
            VIRTGPU_BLOB_MEM_GUEST => {
                if req.blob_id != 0 {
                    return Err(VirtGpuError::InvalidArgument("guest blob with a blob id"));
                }
                true
            }
            VIRTGPU_BLOB_MEM_HOST3D => {
                if !self.has_feature(VIRTIO_GPU_F_VIRGL) {
                    return Err(VirtGpuError::InvalidArgument("host3d without virgl"));
                }
                false
            }
            _ => return Err(VirtGpuError::InvalidArgument("blob_mem")),
        };
        let size = req.size.checked_next_multiple_of(PAGE).unwrap_or(0);
        if size == 0 {
            return Err(VirtGpuError::InvalidArgument("size"));
        }
        self.ensure_context()?;
        if !req.cmd.is_empty() {
            let mut c = cmd(
                hdr(VIRTIO_GPU_CMD_SUBMIT_3D, self.ctx_id),
                &virtio_gpu_cmd_submit {
                    size: (req.cmd.len() as u32).into(),
                    padding: 0.into(),
                },
            );
            c.extend_from_slice(&req.cmd);
            check_ok(&self.vm.request(&c, None)?, VIRTIO_GPU_RESP_OK_NODATA)?;
        }
        let npages = usize::try_from(size / PAGE).map_err(|_| VirtGpuError::OutOfMemory("size"))?;
        let (res, pages) = {
            let mut st = lock(&self.vm.shared);
            if st.resources.len() >= self.vm.shared.config.max_blobs as usize {
                return Err(VirtGpuError::OutOfMemory("max_blobs"));
            }
            let pages = if guest {
                if st.free_pages.len() < npages {
                    return Err(VirtGpuError::OutOfMemory("guest RAM"));
                }
                let at = st.free_pages.len() - npages;
                st.free_pages.split_off(at)
            } else {
                Vec::new()
            };
            let res = st.next_res;
            st.next_res = res.checked_add(1).ok_or(VirtGpuError::OutOfMemory("ids"))?;
            st.resources.insert(
                res,
                Res {
                    blob_mem: req.blob_mem,
                    mappable: req.blob_flags & VIRTGPU_BLOB_FLAG_USE_MAPPABLE != 0,
                    size,
                    pages: pages.clone(),
                    window: None,
                    handles: 0,
                },
            );
            (res, pages)
        };
        // Entries as the kernel builds them from the sg table: adjacent pages coalesced.
        let mut entries: Vec<(u64, u32)> = Vec::new();
        for &p in &pages {
            match entries.last_mut() {
                Some((a, l)) if *a + u64::from(*l) == p && *l < u32::MAX - PAGE as u32 => {
                    *l += PAGE as u32;
                }
                _ => entries.push((p, PAGE as u32)),
            }
        }
        // Quirk: guest blobs go out with ctx_id 0 (vhost-user-gpu.md §3.3).
        let ctx = if guest { 0 } else { self.ctx_id };
        let mut c = cmd(
            hdr(VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB, ctx),
            &virtio_gpu_resource_create_blob {
                resource_id: res.into(),
                blob_mem: req.blob_mem.into(),
                blob_flags: req.blob_flags.into(),
                nr_entries: (entries.len() as u32).into(),
                blob_id: req.blob_id.into(),
                size: size.into(),
            },
        );
        for (addr, len) in &entries {
            c.extend_from_slice(
                virtio_gpu_mem_entry {
                    addr: (*addr).into(),
                    length: (*len).into(),
                    padding: 0.into(),
                }
                .as_bytes(),
            );
        }
        let created = self
            .vm
            .request(&c, None)
            .and_then(|r| check_ok(&r, VIRTIO_GPU_RESP_OK_NODATA));
        if let Err(e) = created {
            let mut st = lock(&self.vm.shared);
            st.resources.remove(&res);
            st.free_pages.extend(pages);
            return Err(e);
        }
        if !guest && req.blob_flags & VIRTGPU_BLOB_FLAG_USE_MAPPABLE != 0 {
            self.map_host_blob(res, size)?;
        }
        let bo_handle = self.open_handle(res)?;
        Ok(BlobHandles {
            bo_handle,
            res_handle: res,
        })
    }

    fn map(&mut self, bo_handle: u32) -> Result<Mapping, VirtGpuError> {
        self.with_pieces(bo_handle, |fd, pieces| {
            let pieces: Vec<Piece<'_>> = pieces
                .iter()
                .map(|&(offset, len)| Piece { fd, offset, len })
                .collect();
            Mapping::new(&pieces)
        })?
    }

    fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError> {
        if eb.flags & !VIRTGPU_EXECBUF_RING_IDX != 0 {
            return Err(VirtGpuError::InvalidArgument(
                "fence fds are not offered by the loopback",
            ));
        }
        self.ensure_context()?;
        let ring = if eb.flags & VIRTGPU_EXECBUF_RING_IDX != 0 {
            let ctx = self.context.unwrap_or(CtxState {
                num_rings: 0,
                poll_mask: 0,
            });
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
        let fence_id = self.vm.alloc_fence();
        let mut flags = VIRTIO_GPU_FLAG_FENCE;
        let mut h = hdr(VIRTIO_GPU_CMD_SUBMIT_3D, self.ctx_id);
        if let Some(r) = ring {
            flags |= VIRTIO_GPU_FLAG_INFO_RING_IDX;
            h.ring_idx = r;
        }
        h.flags = flags.into();
        h.fence_id = fence_id.into();
        let mut c = cmd(
            h,
            &virtio_gpu_cmd_submit {
                size: (eb.command.len() as u32).into(),
                padding: 0.into(),
            },
        );
        c.extend_from_slice(eb.command);
        let sink = match (ring, self.context) {
            (Some(r), Some(ctx)) if ctx.poll_mask & (1u64 << r) != 0 => Some(self.events_w.clone()),
            _ => None,
        };
        let token = self
            .vm
            .queue(&c, Some(((self.ctx_id, ring), fence_id, sink)), true)?;
        for &bh in eb.bo_handles {
            if let Some(bo) = self.handles.get_mut(&bh) {
                bo.last_fence = Some(fence_id);
            }
        }
        // Barrier: the backend answers in queue order, so once this answer is back the
        // SUBMIT_3D has been processed; an error answer came back with it, a held fence did not.
        self.vm.request(
            &cmd(
                hdr(VIRTIO_GPU_CMD_GET_CAPSET_INFO, 0),
                &virtio_gpu_get_capset_info::default(),
            ),
            None,
        )?;
        let mut st = lock(&self.vm.shared);
        match st.responses.remove(&token) {
            Some(r) => check_ok(&r, VIRTIO_GPU_RESP_OK_NODATA),
            None => {
                if let Some(inf) = st.inflight.values_mut().find(|i| i.token == token) {
                    inf.keep_response = false;
                }
                Ok(())
            }
        }
    }

    fn wait(&mut self, bo_handle: u32, flags: u32) -> Result<(), VirtGpuError> {
        let bo = self.bo(bo_handle)?;
        let Some(f) = bo.last_fence else {
            return Ok(());
        };
        if flags & VIRTGPU_WAIT_NOWAIT != 0 {
            return if self.vm.fence_pending(f) {
                Err(VirtGpuError::Busy)
            } else {
                Ok(())
            };
        }
        let deadline = Instant::now() + self.vm.shared.config.timeout;
        let mut st = lock(&self.vm.shared);
        while st.pending.contains(&f) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VirtGpuError::Busy);
            }
            st = self
                .vm
                .shared
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    fn resource_info(&mut self, bo_handle: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError> {
        let bo = self.bo(bo_handle)?;
        let st = lock(&self.vm.shared);
        let r = st
            .resources
            .get(&bo.res)
            .ok_or(VirtGpuError::NoSuchHandle(bo_handle))?;
        Ok(drm_virtgpu_resource_info {
            bo_handle,
            res_handle: bo.res,
            // The uAPI field is 32 bits; the kernel truncates the same way.
            size: r.size as u32,
            blob_mem: r.blob_mem,
        })
    }

    fn prime_handle_to_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, VirtGpuError> {
        let bo = self.bo(bo_handle)?;
        self.vm
            .shared
            .prime
            .export("crossway-loopback-prime", bo.res)
    }

    fn prime_fd_to_handle(&mut self, fd: BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
        let res = self.vm.shared.prime.import(fd)?;
        if let Some((&h, _)) = self.handles.iter().find(|(_, bo)| bo.res == res) {
            return Ok(h);
        }
        if !lock(&self.vm.shared).resources.contains_key(&res) {
            return Err(VirtGpuError::InvalidArgument("resource is gone"));
        }
        self.open_handle(res)
    }

    fn gem_close(&mut self, bo_handle: u32) -> Result<(), VirtGpuError> {
        let bo = self
            .handles
            .remove(&bo_handle)
            .ok_or(VirtGpuError::NoSuchHandle(bo_handle))?;
        if self.context.is_some() {
            let _ = self.res_cmd(VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE, self.ctx_id, bo.res)?;
        }
        if let Some(r) = lock(&self.vm.shared).resources.get_mut(&bo.res) {
            r.handles = r.handles.saturating_sub(1);
        }
        self.release_resource(bo.res)
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.events_r.as_fd()
    }
}

impl LoopbackFile {
    fn map_host_blob(&mut self, res: u32, size: u64) -> Result<(), VirtGpuError> {
        let offset = {
            let mut st = lock(&self.vm.shared);
            let i = st
                .window_free
                .iter()
                .position(|&(_, l)| l >= size)
                .ok_or(VirtGpuError::OutOfMemory("host-visible window"))?;
            let (o, l) = st.window_free[i];
            if l == size {
                st.window_free.remove(i);
            } else {
                st.window_free[i] = (o + size, l - size);
            }
            o
        };
        let r = self.vm.request(
            &cmd(
                hdr(VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB, 0),
                &virtio_gpu_resource_map_blob {
                    resource_id: res.into(),
                    padding: 0.into(),
                    offset: offset.into(),
                },
            ),
            None,
        )?;
        let mut st = lock(&self.vm.shared);
        if resp_type(&r) != VIRTIO_GPU_RESP_OK_MAP_INFO {
            st.window_free.push((offset, size));
            return Err(VirtGpuError::Device(resp_type(&r)));
        }
        if let Some(rr) = st.resources.get_mut(&res) {
            rr.window = Some(offset);
        }
        drop(st);
        // Without REPLY_ACK on the backend channel the backend does not wait for its
        // SHMEM_MAP to be handled, so the MAP_BLOB answer can overtake it: wait here, as the
        // guest cannot touch the blob before the VMM mapped it.
        let deadline = Instant::now() + self.vm.shared.config.timeout;
        loop {
            let mapped = {
                let st = lock(&self.vm.shared);
                st.vmm
                    .window
                    .entries
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains_key(&offset)
            };
            if mapped {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VirtGpuError::DeviceLost(
                    "backend never sent SHMEM_MAP".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl LoopbackFile {
    /// What `MAP` + `mmap` of `bo_handle` covers: the file behind the blob (guest-RAM memfd or
    /// host blob fd, duplicated) and the `(offset, len)` pieces of it to map one after another.
    /// This is what the socket server hands a guest program in another process.
    pub fn map_pieces(&self, bo_handle: u32) -> Result<(OwnedFd, Vec<(u64, usize)>), VirtGpuError> {
        self.with_pieces(bo_handle, |fd, pieces| {
            fd.try_clone_to_owned()
                .map(|fd| (fd, pieces.to_vec()))
                .map_err(|e| VirtGpuError::Os(e.raw_os_error().unwrap_or(0)))
        })?
    }

    fn with_pieces<R>(
        &self,
        bo_handle: u32,
        f: impl FnOnce(BorrowedFd<'_>, &[(u64, usize)]) -> R,
    ) -> Result<R, VirtGpuError> {
        let bo = self.bo(bo_handle)?;
        let st = lock(&self.vm.shared);
        let r = st
            .resources
            .get(&bo.res)
            .ok_or(VirtGpuError::NoSuchHandle(bo_handle))?;
        if r.blob_mem == VIRTGPU_BLOB_MEM_GUEST {
            let fd = st.vmm.ram_fd();
            let mut pieces: Vec<(u64, usize)> = Vec::new();
            for &p in &r.pages {
                let off = st
                    .vmm
                    .file_offset(p)
                    .ok_or(VirtGpuError::DeviceLost("page outside RAM".into()))?;
                match pieces.last_mut() {
                    Some(l) if l.0 + l.1 as u64 == off => l.1 += PAGE as usize,
                    _ => pieces.push((off, PAGE as usize)),
                }
            }
            return Ok(f(fd, &pieces));
        }
        // Linux's virtio_gpu_vram_mmap refuses a host blob created without USE_MAPPABLE with
        // EINVAL (a guest blob is shmem and maps regardless), so the loopback does too: a test
        // must not pass on a mapping a real guest cannot make.
        if !r.mappable {
            return Err(VirtGpuError::InvalidArgument(
                "host blob created without VIRTGPU_BLOB_FLAG_USE_MAPPABLE",
            ));
        }
        let w = r.window.ok_or(VirtGpuError::InvalidArgument(
            "blob is not mapped in the window",
        ))?;
        let len = usize::try_from(r.size).map_err(|_| VirtGpuError::OutOfMemory("size"))?;
        let entries = st
            .vmm
            .window
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = entries.get(&w).ok_or(VirtGpuError::DeviceLost(
            "backend never sent SHMEM_MAP".into(),
        ))?;
        Ok(f(e.fd.as_fd(), &[(e.fd_offset, len)]))
    }
}
