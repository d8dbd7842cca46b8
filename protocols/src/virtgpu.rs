//! The Linux virtgpu DRM uAPI (`include/uapi/drm/virtgpu_drm.h`) as one Rust trait,
//! [`VirtGpu`], so that the guest agent runs unchanged on a real `/dev/dri/renderD*` (real
//! ioctls) and on Crossway's loopback VM (`crossway_virtio::loopback`, a userspace copy of the
//! guest driver reached over a Unix socket).
//!
//! I/O-free: this module holds the trait, the parameter and result structs (named after the
//! uAPI structs they mirror, with user pointers replaced by slices), the constants and the
//! error. File descriptors appear only as `std::os::fd` types that implementations hand over.
//!
//! Events: [`VirtGpu::event_fd`] becomes readable when a fence on a ring in the context's
//! `POLL_RINGS_MASK` signals, and reading it yields 8-byte `struct drm_event` records
//! ([`DrmEvent`], [`DrmEvent::decode_all`]), exactly one per signalled fence
//! (`virtio_gpu_fence_event_process` queues one event per fence; reference cross-domain.md
//! §1.1).

#![allow(non_camel_case_types)]

use std::os::fd::{BorrowedFd, OwnedFd};

/// `VIRTGPU_PARAM_3D_FEATURES`: the device has `VIRTIO_GPU_F_VIRGL`.
pub const VIRTGPU_PARAM_3D_FEATURES: u64 = 1;
/// `VIRTGPU_PARAM_CAPSET_QUERY_FIX`: GET_CAPS works for every capset (always 1 on Linux).
pub const VIRTGPU_PARAM_CAPSET_QUERY_FIX: u64 = 2;
/// `VIRTGPU_PARAM_RESOURCE_BLOB`: the device has `VIRTIO_GPU_F_RESOURCE_BLOB`.
pub const VIRTGPU_PARAM_RESOURCE_BLOB: u64 = 3;
/// `VIRTGPU_PARAM_HOST_VISIBLE`: the host-visible shared-memory region exists.
pub const VIRTGPU_PARAM_HOST_VISIBLE: u64 = 4;
/// `VIRTGPU_PARAM_CROSS_DEVICE`: the device has `VIRTIO_GPU_F_RESOURCE_UUID`.
pub const VIRTGPU_PARAM_CROSS_DEVICE: u64 = 5;
/// `VIRTGPU_PARAM_CONTEXT_INIT`: the device has `VIRTIO_GPU_F_CONTEXT_INIT`.
pub const VIRTGPU_PARAM_CONTEXT_INIT: u64 = 6;
/// `VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs`: bit `1 << id` for each capset the device offers.
pub const VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS: u64 = 7;
/// `VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME` (6.12+).
pub const VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME: u64 = 8;

/// `VIRTGPU_CONTEXT_PARAM_CAPSET_ID`.
pub const VIRTGPU_CONTEXT_PARAM_CAPSET_ID: u64 = 1;
/// `VIRTGPU_CONTEXT_PARAM_NUM_RINGS` (at most 64).
pub const VIRTGPU_CONTEXT_PARAM_NUM_RINGS: u64 = 2;
/// `VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK`: rings whose fences raise events.
pub const VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK: u64 = 3;
/// `VIRTGPU_CONTEXT_PARAM_DEBUG_NAME` (6.12+; the value is a user pointer on Linux).
pub const VIRTGPU_CONTEXT_PARAM_DEBUG_NAME: u64 = 4;
/// Most rings a context may have (`VIRTIO_GPU_MAX_RINGS`).
pub const VIRTGPU_MAX_RINGS: u64 = 64;

/// `VIRTGPU_BLOB_MEM_GUEST`: pages of guest RAM.
pub const VIRTGPU_BLOB_MEM_GUEST: u32 = 1;
/// `VIRTGPU_BLOB_MEM_HOST3D`: host memory a context allocated (by `blob_id`).
pub const VIRTGPU_BLOB_MEM_HOST3D: u32 = 2;
/// `VIRTGPU_BLOB_MEM_HOST3D_GUEST`.
pub const VIRTGPU_BLOB_MEM_HOST3D_GUEST: u32 = 3;
/// `VIRTGPU_BLOB_FLAG_USE_MAPPABLE`.
pub const VIRTGPU_BLOB_FLAG_USE_MAPPABLE: u32 = 1;
/// `VIRTGPU_BLOB_FLAG_USE_SHAREABLE`.
pub const VIRTGPU_BLOB_FLAG_USE_SHAREABLE: u32 = 2;
/// `VIRTGPU_BLOB_FLAG_USE_CROSS_DEVICE`.
pub const VIRTGPU_BLOB_FLAG_USE_CROSS_DEVICE: u32 = 4;

/// `VIRTGPU_EXECBUF_FENCE_FD_IN`.
pub const VIRTGPU_EXECBUF_FENCE_FD_IN: u32 = 1;
/// `VIRTGPU_EXECBUF_FENCE_FD_OUT`.
pub const VIRTGPU_EXECBUF_FENCE_FD_OUT: u32 = 2;
/// `VIRTGPU_EXECBUF_RING_IDX`: `ring_idx` names the fence's ring.
pub const VIRTGPU_EXECBUF_RING_IDX: u32 = 4;

/// `VIRTGPU_WAIT_NOWAIT`.
pub const VIRTGPU_WAIT_NOWAIT: u32 = 1;

/// `VIRTGPU_EVENT_FENCE_SIGNALED`, the `drm_event.type` of a signalled poll-ring fence.
pub const VIRTGPU_EVENT_FENCE_SIGNALED: u32 = 0x9000_0000;
/// Size of one `struct drm_event` record as virtgpu sends it (no payload).
pub const DRM_EVENT_SIZE: usize = 8;

/// Errors, with the errno the kernel returns for the same case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtGpuError {
    /// `EINVAL`: a parameter the driver rejects (unknown param, bad mask, wrong blob mem...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// `ENOENT`: no such GEM handle in this file.
    #[error("no such handle {0}")]
    NoSuchHandle(u32),
    /// `ENOMEM` / `ENOSPC`: guest RAM, handle or window space exhausted (a configured limit).
    #[error("out of memory: {0}")]
    OutOfMemory(&'static str),
    /// `EBUSY`: `WAIT` with `NOWAIT` while the buffer's last fence is pending.
    #[error("busy")]
    Busy,
    /// `EAGAIN`/`ETIMEDOUT`: a wait gave up.
    #[error("timed out")]
    TimedOut,
    /// The device answered a command with an error (`VIRTIO_GPU_RESP_ERR_*`). Linux reports
    /// most of these asynchronously or as `EINVAL`; the loopback reports the code itself.
    #[error("device answered {0:#x}")]
    Device(u32),
    /// The device or the transport to it is gone.
    #[error("device lost: {0}")]
    DeviceLost(String),
    /// Any other errno from a real ioctl.
    #[error("os error {0}")]
    Os(i32),
}

/// `struct drm_virtgpu_context_set_param`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct drm_virtgpu_context_set_param {
    /// `VIRTGPU_CONTEXT_PARAM_*`.
    pub param: u64,
    /// Its value.
    pub value: u64,
}

/// The `CONTEXT_INIT` every cross-domain guest agent makes (sommelier, wayland-proxy-virtwl,
/// ours; cross-domain.md §1.1 step 4): capset 5, a query ring and a channel ring, and fence
/// events for the channel ring only.
pub const CROSS_DOMAIN_CONTEXT_PARAMS: [drm_virtgpu_context_set_param; 3] = [
    drm_virtgpu_context_set_param {
        param: VIRTGPU_CONTEXT_PARAM_CAPSET_ID,
        value: crate::cross_domain::CAPSET_CROSS_DOMAIN as u64,
    },
    drm_virtgpu_context_set_param {
        param: VIRTGPU_CONTEXT_PARAM_NUM_RINGS,
        value: 2,
    },
    drm_virtgpu_context_set_param {
        param: VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK,
        value: 1 << crate::cross_domain::CROSS_DOMAIN_CHANNEL_RING,
    },
];

/// `struct drm_virtgpu_resource_create_blob`, inputs; the outputs are [`BlobHandles`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct drm_virtgpu_resource_create_blob {
    /// `VIRTGPU_BLOB_MEM_*`.
    pub blob_mem: u32,
    /// `VIRTGPU_BLOB_FLAG_*`.
    pub blob_flags: u32,
    /// Bytes (the driver rounds up to a page).
    pub size: u64,
    /// Context command bytes sent before the blob is created (`cmd`/`cmd_size`).
    pub cmd: Vec<u8>,
    /// The context's blob id (HOST3D); 0 for guest blobs.
    pub blob_id: u64,
}

/// The outputs of `RESOURCE_CREATE_BLOB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHandles {
    /// GEM handle in this file.
    pub bo_handle: u32,
    /// virtio-gpu resource id (what cross-domain identifiers name).
    pub res_handle: u32,
}

/// `struct drm_virtgpu_execbuffer` (without syncobjs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct drm_virtgpu_execbuffer<'a> {
    /// `VIRTGPU_EXECBUF_*`.
    pub flags: u32,
    /// Command bytes (`command`/`size`).
    pub command: &'a [u8],
    /// GEM handles the fence is attached to (`bo_handles`/`num_bo_handles`).
    pub bo_handles: &'a [u32],
    /// Ring of the fence when `flags` has [`VIRTGPU_EXECBUF_RING_IDX`].
    pub ring_idx: u32,
}

/// `struct drm_virtgpu_resource_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct drm_virtgpu_resource_info {
    /// GEM handle.
    pub bo_handle: u32,
    /// Resource id.
    pub res_handle: u32,
    /// Bytes (u32 in the uAPI).
    pub size: u32,
    /// `VIRTGPU_BLOB_MEM_*`, 0 for non-blob resources.
    pub blob_mem: u32,
}

/// One `struct drm_event` as read from the DRM fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrmEvent {
    /// `type`.
    pub type_: u32,
    /// `length`, including these 8 bytes.
    pub length: u32,
}

impl DrmEvent {
    /// The record virtgpu writes for a signalled poll-ring fence.
    pub const FENCE_SIGNALED: DrmEvent = DrmEvent {
        type_: VIRTGPU_EVENT_FENCE_SIGNALED,
        length: DRM_EVENT_SIZE as u32,
    };

    /// Little-endian bytes.
    pub fn to_bytes(self) -> [u8; DRM_EVENT_SIZE] {
        let mut b = [0; DRM_EVENT_SIZE];
        b[..4].copy_from_slice(&self.type_.to_le_bytes());
        b[4..].copy_from_slice(&self.length.to_le_bytes());
        b
    }

    /// The records in `bytes` (what one `read` returned). A record whose `length` is shorter
    /// than its header or runs past the end stops the walk: the rest is returned as `Err`
    /// with its offset.
    pub fn decode_all(bytes: &[u8]) -> (Vec<DrmEvent>, Result<(), usize>) {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let Some(rec) = bytes.get(at..).and_then(|b| b.get(..DRM_EVENT_SIZE)) else {
                return (out, Err(at));
            };
            let word = |i: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&rec[i..i + 4]);
                u32::from_le_bytes(w)
            };
            let ev = DrmEvent {
                type_: word(0),
                length: word(4),
            };
            let len = ev.length as usize;
            match at.checked_add(len) {
                Some(end) if len >= DRM_EVENT_SIZE && end <= bytes.len() => {
                    out.push(ev);
                    at = end;
                }
                _ => return (out, Err(at)),
            }
        }
        (out, Ok(()))
    }
}

/// A CPU mapping of a blob (`VIRTGPU_MAP` + `mmap`). Dropping it unmaps.
pub trait VirtGpuMapping: std::fmt::Debug {
    /// Bytes mapped.
    fn len(&self) -> usize;
    /// Nothing mapped.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `len` bytes of `file` at `file_offset` straight into the mapping at `offset`
    /// (`pread` into the mapped memory, no bounce buffer: vm-memory's `read_volatile_from`).
    /// The range must lie inside the mapping; a file shorter than `file_offset + len` (a
    /// client that truncated its pool) is an error, never a fault.
    fn read_from(
        &self,
        file: BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> std::io::Result<()>;
    /// Copies `buf.len()` bytes at `offset` out of the mapping.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtGpuError>;
    /// Copies `data` into the mapping at `offset`.
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), VirtGpuError>;
}

/// One open virtgpu device file (one DRM fd): at most one context, its GEM handles, its event
/// queue. Method names follow the ioctls (`DRM_IOCTL_VIRTGPU_*`, `DRM_IOCTL_PRIME_*`,
/// `DRM_IOCTL_GEM_CLOSE`).
pub trait VirtGpu {
    /// What [`VirtGpu::map`] returns.
    type Mapping: VirtGpuMapping;

    /// `GETPARAM`.
    fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError>;
    /// `GET_CAPS`: fills `buf` with at most `buf.len()` bytes of the capset; returns how many
    /// the capset has (the kernel copies `min(size, max_size)`).
    fn get_caps(
        &mut self,
        cap_set_id: u32,
        cap_set_ver: u32,
        buf: &mut [u8],
    ) -> Result<usize, VirtGpuError>;
    /// `CONTEXT_INIT`: once per file, before any buffer exists.
    fn context_init(
        &mut self,
        params: &[drm_virtgpu_context_set_param],
    ) -> Result<(), VirtGpuError>;
    /// `RESOURCE_CREATE_BLOB`.
    fn resource_create_blob(
        &mut self,
        req: &drm_virtgpu_resource_create_blob,
    ) -> Result<BlobHandles, VirtGpuError>;
    /// `MAP` + `mmap` of the whole blob.
    fn map(&mut self, bo_handle: u32) -> Result<Self::Mapping, VirtGpuError>;
    /// `EXECBUFFER`: returns once the command is queued; its fence signals later.
    fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError>;
    /// `WAIT`: blocks until the last fence attached to `bo_handle` signalled (or, with
    /// [`VIRTGPU_WAIT_NOWAIT`], returns [`VirtGpuError::Busy`] if it has not).
    fn wait(&mut self, bo_handle: u32, flags: u32) -> Result<(), VirtGpuError>;
    /// `RESOURCE_INFO`.
    fn resource_info(&mut self, bo_handle: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError>;
    /// `PRIME_HANDLE_TO_FD`.
    fn prime_handle_to_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, VirtGpuError>;
    /// `PRIME_FD_TO_HANDLE`.
    fn prime_fd_to_handle(&mut self, fd: BorrowedFd<'_>) -> Result<u32, VirtGpuError>;
    /// `GEM_CLOSE`.
    fn gem_close(&mut self, bo_handle: u32) -> Result<(), VirtGpuError>;
    /// The fd to `poll` for events; reads yield [`DrmEvent`] records.
    fn event_fd(&self) -> BorrowedFd<'_>;
}

/// Environment variable naming the virtgpu device a guest program (the agent) should open.
pub const CROSSWAY_VIRTGPU_ENV: &str = "CROSSWAY_VIRTGPU";
/// Prefix of a loopback address in [`CROSSWAY_VIRTGPU_ENV`].
pub const LOOPBACK_ADDRESS_PREFIX: &str = "loopback:";

/// Where the virtgpu device is: the value of `CROSSWAY_VIRTGPU`.
///
/// - `loopback:/abs/path/to/socket`: the loopback VM's socket (`crossway-proxy vm` sets this);
/// - `/dev/dri/renderD128` (any absolute path without a prefix): a real render node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtGpuAddress {
    /// The Unix socket of a loopback VM (`crossway_loopback::LoopbackClient`).
    Loopback(std::path::PathBuf),
    /// A DRM render node opened with real ioctls.
    RenderNode(std::path::PathBuf),
}

/// Why a `CROSSWAY_VIRTGPU` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtGpuAddressError {
    /// Nothing given.
    #[error("empty device address")]
    Empty,
    /// A path that is not absolute (the agent may run in another working directory).
    #[error("device path {0:?} is not absolute")]
    NotAbsolute(String),
}

impl VirtGpuAddress {
    /// Parses a `CROSSWAY_VIRTGPU` value.
    pub fn from_env_value(value: &str) -> Result<VirtGpuAddress, VirtGpuAddressError> {
        let (path, loopback) = match value.strip_prefix(LOOPBACK_ADDRESS_PREFIX) {
            Some(p) => (p, true),
            None => (value, false),
        };
        if path.is_empty() {
            return Err(VirtGpuAddressError::Empty);
        }
        let path = std::path::PathBuf::from(path);
        if !path.is_absolute() {
            return Err(VirtGpuAddressError::NotAbsolute(value.to_owned()));
        }
        Ok(if loopback {
            VirtGpuAddress::Loopback(path)
        } else {
            VirtGpuAddress::RenderNode(path)
        })
    }

    /// The value to put in `CROSSWAY_VIRTGPU` (inverse of [`VirtGpuAddress::from_env_value`]).
    pub fn to_env_value(&self) -> std::ffi::OsString {
        match self {
            VirtGpuAddress::Loopback(p) => {
                let mut v = std::ffi::OsString::from(LOOPBACK_ADDRESS_PREFIX);
                v.push(p);
                v
            }
            VirtGpuAddress::RenderNode(p) => p.clone().into_os_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_domain_context_params_match_what_guest_agents_send() {
        // cross-domain.md §1.1 step 4: CAPSET_ID(1)=5, NUM_RINGS(2)=2, POLL_RINGS_MASK(3)=1<<1.
        let pairs: Vec<_> = CROSS_DOMAIN_CONTEXT_PARAMS
            .iter()
            .map(|p| (p.param, p.value))
            .collect();
        assert_eq!(pairs, [(1, 5), (2, 2), (3, 2)]);
    }

    #[test]
    fn virtgpu_address_loopback_prefix_parses_socket_path() {
        assert_eq!(
            VirtGpuAddress::from_env_value("loopback:/run/user/1000/crossway/virtgpu.sock"),
            Ok(VirtGpuAddress::Loopback(
                "/run/user/1000/crossway/virtgpu.sock".into()
            ))
        );
    }

    #[test]
    fn virtgpu_address_bare_absolute_path_is_render_node() {
        assert_eq!(
            VirtGpuAddress::from_env_value("/dev/dri/renderD128"),
            Ok(VirtGpuAddress::RenderNode("/dev/dri/renderD128".into()))
        );
    }

    #[test]
    fn virtgpu_address_empty_or_relative_is_rejected() {
        assert_eq!(
            VirtGpuAddress::from_env_value(""),
            Err(VirtGpuAddressError::Empty)
        );
        assert_eq!(
            VirtGpuAddress::from_env_value("loopback:"),
            Err(VirtGpuAddressError::Empty)
        );
        assert!(matches!(
            VirtGpuAddress::from_env_value("loopback:relative.sock"),
            Err(VirtGpuAddressError::NotAbsolute(_))
        ));
        assert!(matches!(
            VirtGpuAddress::from_env_value("renderD128"),
            Err(VirtGpuAddressError::NotAbsolute(_))
        ));
    }

    #[test]
    fn virtgpu_address_to_env_value_roundtrips() {
        for a in [
            VirtGpuAddress::Loopback("/tmp/x/virtgpu.sock".into()),
            VirtGpuAddress::RenderNode("/dev/dri/renderD129".into()),
        ] {
            let v = a.to_env_value();
            assert_eq!(VirtGpuAddress::from_env_value(v.to_str().unwrap()), Ok(a));
        }
    }

    #[test]
    fn drm_event_fence_signaled_encodes_kernel_bytes() {
        assert_eq!(
            DrmEvent::FENCE_SIGNALED.to_bytes(),
            [0, 0, 0, 0x90, 8, 0, 0, 0]
        );
    }

    #[test]
    fn drm_event_decode_all_two_records_roundtrip() {
        let mut b = DrmEvent::FENCE_SIGNALED.to_bytes().to_vec();
        b.extend_from_slice(&DrmEvent::FENCE_SIGNALED.to_bytes());
        assert_eq!(
            DrmEvent::decode_all(&b),
            (vec![DrmEvent::FENCE_SIGNALED; 2], Ok(()))
        );
    }

    #[test]
    fn drm_event_decode_all_short_length_stops() {
        let mut b = DrmEvent::FENCE_SIGNALED.to_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0, 0x90, 4, 0, 0, 0]);
        b.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            DrmEvent::decode_all(&b),
            (vec![DrmEvent::FENCE_SIGNALED], Err(8))
        );
        assert_eq!(DrmEvent::decode_all(&[1, 2, 3]), (vec![], Err(0)));
        let huge = [0, 0, 0, 0x90, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(DrmEvent::decode_all(&huge), (vec![], Err(0)));
    }
}
