//! The vhost-user backend: [`VhostGpu`] implements vhost-user-backend's `VhostUserBackend`
//! over a [`GpuDevice`], and [`serve`] runs it for one VMM connection.
//!
//! Queues: 0 control, 1 cursor. A third event source (id 3) is the fence eventfd through which
//! contexts report completed fences from other threads.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vhost::vhost_user::{Backend, GpuBackend, Listener, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::{
    VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

use crate::context::ContextFactory;
use crate::device::{ConfigError, DeviceConfig, Display, GpuDevice, HostVisibleMapper};
use crate::fence::FenceSignaler;
use crate::memory::GuestMemHandle;
use crate::protocol::VIRTIO_GPU_SHM_ID_HOST_VISIBLE;
use crate::protocol::{VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_F_RESOURCE_BLOB};
use crate::queue::process_queue;
use crate::stats::StatsSnapshot;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Queue size the backend accepts.
const QUEUE_SIZE: usize = 1024;
/// Event id of the fence eventfd (ids 0..=2 are the two queues and the exit event).
const FENCE_EVENT: u16 = 3;

/// Why the backend stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Bad device configuration.
    #[error("device configuration")]
    Config(#[from] ConfigError),
    /// An eventfd could not be made.
    #[error("eventfd")]
    EventFd(#[source] io::Error),
    /// The daemon failed.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// The socket could not be set up.
    #[error("socket")]
    Socket(#[source] io::Error),
    /// The listening socket could not be made at this path.
    #[error("cannot listen on {}", .path.display())]
    Listen {
        /// The path asked for.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// State shared by the daemon's threads.
struct Shared {
    device: Mutex<GpuDevice>,
    mem: Mutex<Option<GuestMemHandle>>,
    event_idx: AtomicBool,
    shmem_asked: AtomicBool,
    /// Whether the warning that the driver lacks cross-domain's features was logged.
    warned_features: AtomicBool,
    backend_req: Mutex<Option<Backend>>,
    exit: (EventConsumer, EventNotifier),
}

/// The vhost-user backend (cheap to clone; clones share the device).
#[derive(Clone)]
pub struct VhostGpu {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VhostGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostGpu").finish_non_exhaustive()
    }
}

/// `SHMEM_MAP`/`SHMEM_UNMAP` over the backend request channel.
struct ShmemMapper(Backend);

impl HostVisibleMapper for ShmemMapper {
    fn map(
        &self,
        shm_offset: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: u64,
        writable: bool,
    ) -> io::Result<()> {
        let msg = VhostUserMMap {
            shmid: VIRTIO_GPU_SHM_ID_HOST_VISIBLE,
            fd_offset,
            shm_offset,
            len,
            flags: if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                0
            },
            ..Default::default()
        };
        let raw = fd.as_raw_fd();
        self.0.shmem_map(&msg, &raw).map(|_| ())
    }

    fn unmap(&self, shm_offset: u64, len: u64) -> io::Result<()> {
        let msg = VhostUserMMap {
            shmid: VIRTIO_GPU_SHM_ID_HOST_VISIBLE,
            shm_offset,
            len,
            ..Default::default()
        };
        self.0.shmem_unmap(&msg).map(|_| ())
    }
}

/// QEMU's display socket (`VHOST_USER_GPU_SET_SOCKET`).
struct QemuDisplay(GpuBackend);

impl Display for QemuDisplay {
    fn set_scanout(&self, scanout: u32, width: u32, height: u32) -> io::Result<()> {
        self.0
            .set_scanout(&vhost::vhost_user::gpu_message::VhostUserGpuScanout {
                scanout_id: scanout,
                width,
                height,
            })
    }

    fn update(
        &self,
        scanout: u32,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        pixels: &[u8],
    ) -> io::Result<()> {
        self.0.update_scanout(
            &vhost::vhost_user::gpu_message::VhostUserGpuUpdate {
                scanout_id: scanout,
                x,
                y,
                width: w,
                height: h,
            },
            pixels,
        )
    }
}

impl VhostGpu {
    /// A backend around a new device.
    pub fn new(
        config: DeviceConfig,
        factory: Box<dyn ContextFactory>,
    ) -> Result<VhostGpu, BackendError> {
        let fence_fd =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(BackendError::EventFd)?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let device = GpuDevice::new(config, factory, mem, FenceSignaler::new(Some(fence_fd)))?;
        let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
            .map_err(BackendError::EventFd)?;
        tracing::info!(
            udmabuf = device.has_udmabuf(),
            features = format_args!("{:#x}", device.gpu_features()),
            "virtio-gpu device ready"
        );
        Ok(VhostGpu {
            shared: Arc::new(Shared {
                device: Mutex::new(device),
                mem: Mutex::new(None),
                event_idx: AtomicBool::new(false),
                shmem_asked: AtomicBool::new(false),
                warned_features: AtomicBool::new(false),
                backend_req: Mutex::new(None),
                exit,
            }),
        })
    }

    fn device(&self) -> MutexGuard<'_, GpuDevice> {
        // A panic while holding the lock is a bug already reported; keep serving.
        self.shared
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The device's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.device().stats().snapshot()
    }

    /// The fence eventfd, for the daemon's epoll loop.
    fn fence_fd(&self) -> Option<i32> {
        self.device().signaler().eventfd().map(|e| e.as_raw_fd())
    }

    fn maybe_install_mapper(&self) {
        if !self.shared.shmem_asked.load(Ordering::Acquire) {
            return;
        }
        let req = self
            .shared
            .backend_req
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(b) = req {
            tracing::info!("host-visible window available: HOST3D blobs can be mapped");
            self.device().set_mapper(Some(Box::new(ShmemMapper(b))));
        }
    }

    fn process_vring(&self, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = self
            .shared
            .mem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return Ok(());
        };
        let mem = mem.memory();
        let event_idx = self.shared.event_idx.load(Ordering::Relaxed);
        let to_io = |e: virtio_queue::Error| io::Error::other(e.to_string());
        loop {
            if event_idx {
                vring.disable_notification().map_err(to_io)?;
            }
            let used = {
                let mut dev = self.device();
                let mut state = vring.get_mut();
                process_queue(&mut dev, state.get_queue_mut(), &mem)
                    .map_err(|e| io::Error::other(e.to_string()))?
            };
            if used && vring.needs_notification().map_err(to_io)? {
                vring.signal_used_queue()?;
            }
            if !event_idx || !vring.enable_notification().map_err(to_io)? {
                break;
            }
        }
        Ok(())
    }
}

impl VhostUserBackend for VhostGpu {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.device().gpu_features()
            | (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_F_RING_RESET)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn acked_features(&self, features: u64) {
        tracing::info!(features = format_args!("{features:#x}"), "features acked");
        let missing = missing_cross_domain_features(features);
        // A driver's acknowledgement has VERSION_1 (QEMU may also set features before one).
        if features & (1 << VIRTIO_F_VERSION_1) != 0
            && !missing.is_empty()
            && !self.shared.warned_features.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                missing = missing.join(", "),
                "the guest driver never negotiated what cross-domain needs, so no window can \
                 reach the host: the VMM withholds it (QEMU's vhost-user-gpu-pci does up to \
                 11.1). Use QEMU's generic device instead (-device vhost-user-test-device-pci,\
                 virtio-id=16,num_vqs=2,config_size=16,chardev=…, see \
                 packaging/qemu/crossway-qemu-args) or crosvm --vhost-user gpu; logged once"
            );
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::SHMEM
    }

    fn set_event_idx(&self, enabled: bool) {
        self.shared.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.device().config_space();
        let bytes = cfg.as_bytes();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        let mut out = bytes[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // events_clear: no events are ever raised.
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.device().set_memory(mem.clone());
        *self
            .shared
            .mem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        *self
            .shared
            .backend_req
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(backend);
        self.maybe_install_mapper();
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        let size = self.device().config().host_visible_size;
        if size == 0 {
            return Ok(VhostUserShMemConfig::new(0, &[]));
        }
        self.shared.shmem_asked.store(true, Ordering::Release);
        self.maybe_install_mapper();
        let mut sizes = [0u64; 2];
        sizes[usize::from(VIRTIO_GPU_SHM_ID_HOST_VISIBLE)] = size;
        Ok(VhostUserShMemConfig::new(2, &sizes))
    }

    fn set_gpu_socket(&self, gpu: GpuBackend) -> io::Result<()> {
        tracing::info!("QEMU display socket attached (console only)");
        self.device().set_display(Some(Box::new(QemuDisplay(gpu))));
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let c = self.shared.exit.0.try_clone().ok()?;
        let n = self.shared.exit.1.try_clone().ok()?;
        Some((c, n))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other("unexpected event set"));
        }
        match device_event {
            0 | 1 => {
                let vring = vrings
                    .get(usize::from(device_event))
                    .ok_or_else(|| io::Error::other("no such queue"))?;
                self.process_vring(vring)
            }
            FENCE_EVENT => {
                // Completed fences release control-queue descriptors.
                let Some(vring) = vrings.first() else {
                    return Ok(());
                };
                self.process_vring(vring)
            }
            other => Err(io::Error::other(format!("unknown event {other}"))),
        }
    }
}

/// Where the VMM's vhost-user connection comes from.
#[derive(Debug)]
pub enum Endpoint {
    /// Listen on this path and serve the first connection.
    SocketPath(PathBuf),
    /// A socket already listening on a path ([`BoundSocket::bind`]), removed when served.
    Bound(BoundSocket),
    /// An inherited socket: listening (accept one connection) or already connected (libvirt's
    /// `--fd`).
    Fd(OwnedFd),
}

impl BoundSocket {
    /// Listens on `path` now (replacing a stale socket file there), so that a path that
    /// cannot be used fails before anything else starts, with an error naming it.
    pub fn bind(path: &Path) -> Result<BoundSocket, BackendError> {
        let listener = Listener::new(path, true).map_err(|e| BackendError::Listen {
            path: path.to_owned(),
            source: match e {
                vhost::vhost_user::Error::SocketError(e) => e,
                other => io::Error::other(other.to_string()),
            },
        })?;
        Ok(BoundSocket {
            listener,
            path: path.to_owned(),
        })
    }
}

/// A vhost-user socket listening on a path; the file is removed on drop.
pub struct BoundSocket {
    listener: Listener,
    path: PathBuf,
}

impl BoundSocket {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for BoundSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What `crossway-proxy serve` runs.
pub struct ServeConfig {
    /// The connection.
    pub endpoint: Endpoint,
    /// The device.
    pub device: DeviceConfig,
    /// The context types.
    pub factory: Box<dyn ContextFactory>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("endpoint", &self.endpoint)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::net::sockopt::socket_acceptconn(fd)?)
}

/// Serves one VMM connection until it closes. Returns the device's counters at the end.
pub fn serve(config: ServeConfig) -> Result<StatsSnapshot, BackendError> {
    // The socket first: a path that cannot be listened on is the error, before the device
    // logs that it is ready.
    let endpoint = match config.endpoint {
        Endpoint::SocketPath(path) => Endpoint::Bound(BoundSocket::bind(&path)?),
        other => other,
    };
    let backend = VhostGpu::new(config.device, config.factory)?;
    let mut daemon = VhostUserDaemon::new(
        "crossway-gpu".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| BackendError::Daemon(e.to_string()))?;
    if let Some(fd) = backend.fence_fd() {
        let handlers = daemon.get_epoll_handlers();
        let h = handlers
            .first()
            .ok_or_else(|| BackendError::Daemon("no epoll handler".into()))?;
        h.register_listener(fd, EventSet::IN, u64::from(FENCE_EVENT))
            .map_err(BackendError::Socket)?;
    }
    let result = match endpoint {
        // Bound above; kept as a second way in rather than a panic.
        Endpoint::SocketPath(path) => {
            let mut bound = BoundSocket::bind(&path)?;
            tracing::info!(path = %bound.path.display(), "listening for the VMM");
            run_one(&mut daemon, &mut bound.listener)
        }
        Endpoint::Bound(mut bound) => {
            tracing::info!(path = %bound.path.display(), "listening for the VMM");
            run_one(&mut daemon, &mut bound.listener)
        }
        Endpoint::Fd(fd) => {
            if is_listening(fd.as_fd()).map_err(BackendError::Socket)? {
                tracing::info!("serving an inherited listening socket");
                let mut listener = Listener::from(UnixListener::from(fd));
                run_one(&mut daemon, &mut listener)
            } else {
                tracing::info!("serving an inherited connected socket");
                let stream = UnixStream::from(fd);
                let (mut listener, relay) =
                    crate::inherited_fd::start(stream).map_err(BackendError::Socket)?;
                let r = run_one(&mut daemon, &mut listener);
                relay.stop();
                r
            }
        }
    };
    let _ = backend.shared.exit.1.notify();
    let stats = backend.stats();
    // Only a served connection ends with "disconnected": a failure is the caller's error line.
    result?;
    tracing::info!(?stats, "VMM disconnected");
    Ok(stats)
}

fn run_one(
    daemon: &mut VhostUserDaemon<VhostGpu>,
    listener: &mut Listener,
) -> Result<(), BackendError> {
    daemon
        .start(listener)
        .map_err(|e| BackendError::Daemon(e.to_string()))?;
    match daemon.wait() {
        Ok(()) => Ok(()),
        Err(e) => {
            let s = e.to_string();
            // A VMM that quits mid-message is a normal end of service.
            if s.contains("Disconnected")
                || s.contains("PartialMessage")
                || s.contains("disconnect")
            {
                Ok(())
            } else {
                Err(BackendError::Daemon(s))
            }
        }
    }
}

/// The feature names cross-domain needs that `features` (as acked) lacks.
pub fn missing_cross_domain_features(features: u64) -> Vec<&'static str> {
    [
        (VIRTIO_GPU_F_CONTEXT_INIT, "VIRTIO_GPU_F_CONTEXT_INIT"),
        (VIRTIO_GPU_F_RESOURCE_BLOB, "VIRTIO_GPU_F_RESOURCE_BLOB"),
    ]
    .into_iter()
    .filter(|(bit, _)| features & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

/// What `--print-capabilities` adds on stderr (stdout is libvirt's JSON): the VMM device that
/// carries cross-domain.
pub const CAPABILITIES_NOTE: &str = "crossway-proxy: cross-domain needs the guest driver to \
negotiate VIRTIO_GPU_F_CONTEXT_INIT and VIRTIO_GPU_F_RESOURCE_BLOB, which QEMU's \
vhost-user-gpu-pci withholds up to 11.1 (libvirt's <video><driver name='vhostuser'/> uses it): \
with QEMU >= 11.1 use -device vhost-user-test-device-pci,virtio-id=16,num_vqs=2,config_size=16,\
chardev=… (packaging/qemu/crossway-qemu-args), or crosvm --vhost-user gpu";

/// What `--print-capabilities` reports (QEMU's docs/interop/vhost-user.json, GPU type).
#[derive(Debug, serde::Serialize)]
struct Capabilities {
    /// The backend type.
    #[serde(rename = "type")]
    kind: &'static str,
    /// Optional features the backend supports.
    features: &'static [&'static str],
}

/// `--print-capabilities`: the JSON libvirt reads (docs/interop/vhost-user.json, GPU type),
/// pretty-printed and ending in a newline.
pub fn capabilities_json() -> String {
    let caps = Capabilities {
        kind: "gpu",
        features: &["render-node"],
    };
    // Serializing two string fields cannot fail.
    let mut json = serde_json::to_string_pretty(&caps).unwrap_or_default();
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_json_is_what_libvirt_reads() {
        assert_eq!(
            capabilities_json(),
            "{\n  \"type\": \"gpu\",\n  \"features\": [\n    \"render-node\"\n  ]\n}\n"
        );
    }

    #[test]
    fn missing_cross_domain_features_names_each_absent_bit() {
        let both = (1 << VIRTIO_GPU_F_CONTEXT_INIT) | (1 << VIRTIO_GPU_F_RESOURCE_BLOB);
        assert!(missing_cross_domain_features(both).is_empty());
        // What QEMU 11.1's vhost-user-gpu-pci leaves the driver (virgl, edid).
        assert_eq!(
            missing_cross_domain_features(0b11),
            ["VIRTIO_GPU_F_CONTEXT_INIT", "VIRTIO_GPU_F_RESOURCE_BLOB"]
        );
        assert_eq!(
            missing_cross_domain_features(1 << VIRTIO_GPU_F_RESOURCE_BLOB),
            ["VIRTIO_GPU_F_CONTEXT_INIT"]
        );
    }
}
