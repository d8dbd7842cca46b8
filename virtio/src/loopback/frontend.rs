//! The VMM half: a vhost-user frontend (the vhost crate's `Frontend`) that negotiates with a
//! virtio-gpu backend the way QEMU and crosvm do, shares guest RAM (one sealed memfd, split
//! into regions with a hole between them so scatter lists cross regions), lays the control and
//! cursor queues out in that RAM, and serves the backend's `SHMEM_MAP`/`SHMEM_UNMAP` requests
//! for the host-visible window (shmid 1).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::FromBytes;

use crate::loopback::vring::{Vring, VringLayout};
use crate::memory::GuestMem;
use crate::protocol::*;
use crossway_sys::memfd::Memfd;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`.
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Page size of the loopback guest.
pub const PAGE: u64 = 4096;
/// Bytes at the start of region 0 kept for the two virtqueues.
pub const RING_AREA: u64 = 64 * 1024;
/// Guest-physical hole between regions.
const REGION_GAP: u64 = 1 << 20;

/// Why the frontend could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Connecting or a vhost-user request failed.
    #[error("vhost-user {step}: {source}")]
    VhostUser {
        /// The request.
        step: &'static str,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks a feature the driver needs.
    #[error("backend lacks {0}")]
    Missing(&'static str),
    /// Guest RAM could not be made.
    #[error("guest RAM: {0}")]
    Ram(String),
    /// An eventfd.
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
}

fn vu(step: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::VhostUser { step, source }
}

/// One region of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Offset in the RAM memfd.
    pub file_offset: u64,
}

/// A backend mapping in the host-visible window.
#[derive(Debug)]
pub struct WindowEntry {
    /// The blob's fd (a dup of what `SHMEM_MAP` carried).
    pub fd: OwnedFd,
    /// Offset in that fd.
    pub fd_offset: u64,
    /// Bytes.
    pub len: u64,
}

/// The host-visible window: what the backend mapped where (keyed by window offset).
#[derive(Debug, Default)]
pub struct Window {
    /// Entries by `shm_offset`.
    pub entries: Mutex<BTreeMap<u64, WindowEntry>>,
    /// `SHMEM_MAP` requests served.
    pub maps: std::sync::atomic::AtomicU64,
}

impl VhostUserFrontendReqHandler for Window {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> std::io::Result<u64> {
        if req.shmid != VIRTIO_GPU_SHM_ID_HOST_VISIBLE {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // The fd is only lent for the duration of this call: keep a duplicate.
        let owned = crossway_sys::fdpass::dup_raw(fd.as_raw_fd())?;
        let (shm_offset, fd_offset, len, flags) =
            (req.shm_offset, req.fd_offset, req.len, req.flags);
        // As QEMU 11.1 does ("backing store size … is too small for 'size' option"): an fd
        // shorter than the range would fault past its last page in the guest.
        let have = rustix::fs::fstat(&owned).map_or(0, |st| u64::try_from(st.st_size).unwrap_or(0));
        // QEMU 11.1 also maps every fd read-write whatever the flags: a read-only or
        // write-sealed fd fails there with EPERM ("unable to map backing store").
        let rw = rustix::fs::fcntl_getfl(&owned)
            .is_ok_and(|f| f & rustix::fs::OFlags::ACCMODE == rustix::fs::OFlags::RDWR)
            && rustix::fs::fcntl_get_seals(&owned)
                .map_or(true, |s| !s.intersects(rustix::fs::SealFlags::WRITE));
        if !rw {
            tracing::warn!("SHMEM_MAP refused: the fd cannot be mapped read-write");
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        if fd_offset.checked_add(len).is_none_or(|end| end > have) {
            tracing::warn!(
                have,
                fd_offset,
                len,
                "SHMEM_MAP refused: the fd is shorter than the range"
            );
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        tracing::debug!(
            shm_offset,
            len,
            writable = flags & VhostUserMMapFlags::WRITABLE.bits() != 0,
            "SHMEM_MAP"
        );
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                shm_offset,
                WindowEntry {
                    fd: owned,
                    fd_offset,
                    len,
                },
            );
        self.maps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> std::io::Result<u64> {
        let shm_offset = req.shm_offset;
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&shm_offset);
        Ok(0)
    }
}

/// What was negotiated and set up.
pub struct Vmm {
    /// The frontend connection (kept open: dropping it ends the backend's service).
    pub frontend: Frontend,
    /// Guest RAM as this process maps it.
    pub mem: GuestMem,
    /// The RAM memfd.
    pub ram: Memfd,
    /// Regions, by guest address.
    pub regions: Vec<Region>,
    /// Control queue.
    pub ctrl: Vring,
    /// Cursor queue.
    pub cursor: Vring,
    /// Kick eventfds (ctrl, cursor).
    pub kick: [EventFd; 2],
    /// Call eventfds (ctrl, cursor).
    pub call: [EventFd; 2],
    /// Device features acked.
    pub features: u64,
    /// `virtio_gpu_config` as read at start.
    pub config: virtio_gpu_config,
    /// Size of the host-visible window (0: none offered).
    pub window_size: u64,
    /// The window's mappings.
    pub window: Arc<Window>,
    /// The thread serving backend requests (ends when the backend hangs up).
    pub backend_req_thread: Option<std::thread::JoinHandle<()>>,
}

/// Guest RAM layout and queue size.
#[derive(Debug, Clone, Copy)]
pub struct RamConfig {
    /// Total bytes.
    pub size: u64,
    /// Regions to split it into (1..=8).
    pub regions: u32,
    /// Queue size (power of two, at most 1024).
    pub queue_size: u16,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("regions", &self.regions)
            .field("features", &self.features)
            .field("window_size", &self.window_size)
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// Connects to a backend listening at `path`.
    pub fn connect(path: &Path, ram: RamConfig) -> Result<Vmm, FrontendError> {
        let frontend = Frontend::connect(path, 2).map_err(vu("connect"))?;
        Vmm::start(frontend, ram)
    }

    /// Runs over an already connected stream.
    pub fn from_stream(stream: UnixStream, ram: RamConfig) -> Result<Vmm, FrontendError> {
        Vmm::start(Frontend::from_stream(stream, 2), ram)
    }

    fn start(mut frontend: Frontend, ram: RamConfig) -> Result<Vmm, FrontendError> {
        // QEMU's order (vhost_dev_init, vhost_user_backend_init, vhost_dev_start).
        let offered = frontend.get_features().map_err(vu("GET_FEATURES"))?;
        frontend.set_owner().map_err(vu("SET_OWNER"))?;
        let want = (1u64 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_RESOURCE_BLOB)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT)
            | (1 << VIRTIO_GPU_F_RESOURCE_UUID)
            | (1 << VIRTIO_GPU_F_EDID)
            | VIRTIO_F_VERSION_1;
        if offered & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(FrontendError::Missing("VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        for (bit, name) in [
            (VIRTIO_GPU_F_CONTEXT_INIT, "VIRTIO_GPU_F_CONTEXT_INIT"),
            (VIRTIO_GPU_F_RESOURCE_BLOB, "VIRTIO_GPU_F_RESOURCE_BLOB"),
        ] {
            if offered & (1 << bit) == 0 {
                return Err(FrontendError::Missing(name));
            }
        }
        // No EVENT_IDX and no indirect descriptors: the loopback's rings do without.
        let features = (offered & want) | VHOST_USER_F_PROTOCOL_FEATURES;
        frontend
            .set_features(features)
            .map_err(vu("SET_FEATURES"))?;
        let proto = frontend
            .get_protocol_features()
            .map_err(vu("GET_PROTOCOL_FEATURES"))?;
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::SHMEM;
        let proto = proto & wanted;
        if !proto.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(FrontendError::Missing("VHOST_USER_PROTOCOL_F_CONFIG"));
        }
        frontend
            .set_protocol_features(proto)
            .map_err(vu("SET_PROTOCOL_FEATURES"))?;
        let queues = frontend.get_queue_num().map_err(vu("GET_QUEUE_NUM"))?;
        if queues < 2 {
            return Err(FrontendError::Missing("two queues"));
        }
        let size = size_of::<virtio_gpu_config>() as u32;
        let (_, cfg) = frontend
            .get_config(
                0,
                size,
                VhostUserConfigFlags::empty(),
                &vec![0; size as usize],
            )
            .map_err(vu("GET_CONFIG"))?;
        let (config, _) = virtio_gpu_config::read_from_prefix(&cfg[..])
            .map_err(|_| FrontendError::Missing("a config space"))?;

        let window = Arc::new(Window::default());
        let mut window_size = 0;
        let mut backend_req_thread = None;
        let shmem = proto.contains(
            VhostUserProtocolFeatures::SHMEM
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD,
        );
        if shmem {
            let sc = frontend
                .get_shmem_config()
                .map_err(vu("GET_SHMEM_CONFIG"))?;
            window_size = sc
                .memory_sizes
                .get(usize::from(VIRTIO_GPU_SHM_ID_HOST_VISIBLE))
                .copied()
                .unwrap_or(0);
            if window_size > 0 {
                let mut handler = FrontendReqHandler::new(window.clone()).map_err(|e| {
                    FrontendError::VhostUser {
                        step: "backend channel",
                        source: vhost::Error::VhostUserProtocol(e),
                    }
                })?;
                frontend
                    .set_backend_request_fd(&handler.get_tx_raw_fd())
                    .map_err(vu("SET_BACKEND_REQ_FD"))?;
                backend_req_thread = Some(
                    std::thread::Builder::new()
                        .name("loopback-shmem".into())
                        .spawn(move || {
                            while handler.handle_request().is_ok() {}
                            tracing::debug!("backend request channel closed");
                        })
                        .map_err(FrontendError::EventFd)?,
                );
            }
        }

        let (mem, memfd, regions) = make_ram(ram)?;
        let infos = regions
            .iter()
            .map(|r| {
                let region = mem
                    .find_region(GuestAddress(r.gpa))
                    .ok_or_else(|| FrontendError::Ram("region vanished".into()))?;
                VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(|e| FrontendError::Ram(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        frontend
            .set_mem_table(&infos)
            .map_err(vu("SET_MEM_TABLE"))?;

        let qs = ram.queue_size;
        let (ctrl_layout, used) = VringLayout::at(regions[0].gpa, qs);
        let (cursor_layout, used2) =
            VringLayout::at((regions[0].gpa + used).next_multiple_of(PAGE), qs);
        if used.next_multiple_of(PAGE) + used2 > RING_AREA {
            return Err(FrontendError::Ram(
                "queue size too large for the ring area".into(),
            ));
        }
        let ctrl = Vring::new(&mem, ctrl_layout).map_err(|e| FrontendError::Ram(e.to_string()))?;
        let cursor =
            Vring::new(&mem, cursor_layout).map_err(|e| FrontendError::Ram(e.to_string()))?;
        let ev = || EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        let kick = [
            ev().map_err(FrontendError::EventFd)?,
            ev().map_err(FrontendError::EventFd)?,
        ];
        let call = [
            ev().map_err(FrontendError::EventFd)?,
            ev().map_err(FrontendError::EventFd)?,
        ];
        for (q, layout) in [ctrl_layout, cursor_layout].into_iter().enumerate() {
            let hva = |gpa: u64| -> Result<u64, FrontendError> {
                mem.get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|e| FrontendError::Ram(e.to_string()))
            };
            frontend.set_vring_num(q, qs).map_err(vu("SET_VRING_NUM"))?;
            frontend
                .set_vring_addr(
                    q,
                    &VringConfigData {
                        queue_max_size: qs,
                        queue_size: qs,
                        flags: 0,
                        desc_table_addr: hva(layout.desc)?,
                        used_ring_addr: hva(layout.used)?,
                        avail_ring_addr: hva(layout.avail)?,
                        log_addr: None,
                    },
                )
                .map_err(vu("SET_VRING_ADDR"))?;
            frontend
                .set_vring_base(q, 0)
                .map_err(vu("SET_VRING_BASE"))?;
            frontend
                .set_vring_call(q, &call[q])
                .map_err(vu("SET_VRING_CALL"))?;
            frontend
                .set_vring_kick(q, &kick[q])
                .map_err(vu("SET_VRING_KICK"))?;
            frontend
                .set_vring_enable(q, true)
                .map_err(vu("SET_VRING_ENABLE"))?;
        }
        tracing::info!(
            features = format_args!("{features:#x}"),
            protocol = format_args!("{:#x}", proto.bits()),
            capsets = config.num_capsets.get(),
            window = window_size,
            regions = regions.len(),
            "loopback VM started"
        );
        Ok(Vmm {
            frontend,
            mem,
            ram: memfd,
            regions,
            ctrl,
            cursor,
            kick,
            call,
            features,
            config,
            window_size,
            window,
            backend_req_thread,
        })
    }

    /// Whether a device feature was acked.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// The region and file offset of `gpa` (page granular).
    pub fn file_offset(&self, gpa: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| gpa >= r.gpa && gpa - r.gpa < r.len)
            .map(|r| r.file_offset + (gpa - r.gpa))
    }

    /// The RAM memfd.
    pub fn ram_fd(&self) -> BorrowedFd<'_> {
        self.ram.file().as_fd()
    }
}

fn make_ram(cfg: RamConfig) -> Result<(GuestMem, Memfd, Vec<Region>), FrontendError> {
    if !(1..=8).contains(&cfg.regions) {
        return Err(FrontendError::Ram(format!("{} regions", cfg.regions)));
    }
    let per = (cfg.size / u64::from(cfg.regions)) / PAGE * PAGE;
    if per <= RING_AREA {
        return Err(FrontendError::Ram(format!(
            "{} bytes of RAM is too little",
            cfg.size
        )));
    }
    let total = per * u64::from(cfg.regions);
    let memfd = Memfd::new("crossway-loopback-ram", total)
        .map_err(|e| FrontendError::Ram(e.to_string()))?;
    let mut regions = Vec::new();
    let mut ranges = Vec::new();
    for i in 0..u64::from(cfg.regions) {
        let r = Region {
            gpa: i * (per + REGION_GAP),
            len: per,
            file_offset: i * per,
        };
        let file = memfd
            .file()
            .try_clone()
            .map_err(|e| FrontendError::Ram(e.to_string()))?;
        ranges.push((
            GuestAddress(r.gpa),
            usize::try_from(per).map_err(|e| FrontendError::Ram(e.to_string()))?,
            Some(FileOffset::new(file, r.file_offset)),
        ));
        regions.push(r);
    }
    let mem = vm_memory::GuestMemoryMmap::from_ranges_with_files(ranges)
        .map_err(|e| FrontendError::Ram(e.to_string()))?;
    debug_assert_eq!(mem.num_regions(), regions.len());
    let _ = mem.iter().map(|r| r.len()).sum::<u64>();
    Ok((mem, memfd, regions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(len: u64) -> VhostUserMMap {
        VhostUserMMap {
            shmid: VIRTIO_GPU_SHM_ID_HOST_VISIBLE,
            len,
            ..Default::default()
        }
    }

    #[test]
    fn window_shmem_map_of_fd_shorter_than_range_is_refused() {
        let w = Window::default();
        let short = Memfd::new("format-table", 224).unwrap();
        let err = w.shmem_map(&req(4096), short.file()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(w.maps.load(std::sync::atomic::Ordering::Relaxed), 0);
        let page = Memfd::new("page", 4096).unwrap();
        w.shmem_map(&req(4096), page.file()).unwrap();
        assert_eq!(w.maps.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn window_shmem_map_of_write_sealed_fd_is_refused() {
        let w = Window::default();
        let page = Memfd::new("sealed", 4096).unwrap();
        rustix::fs::fcntl_add_seals(page.file(), rustix::fs::SealFlags::WRITE).unwrap();
        let err = w.shmem_map(&req(4096), page.file()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }
}
