//! A virtio_gpu DRM render node driven with the real virtgpu ioctls ([`RenderNode`], which
//! implements [`VirtGpu`]); the agent's only module with `unsafe` (ioctls and `mmap`).
//!
//! The uAPI structs below keep the names and layouts of the kernel's
//! `include/uapi/drm/virtgpu_drm.h` and `include/uapi/drm/drm.h` (sizes asserted at compile
//! time); ioctl numbers are computed from them as the `DRM_IOWR`/`DRM_IOW` macros do.
//!
//! ```text
//!  RenderNode ─ioctl(GETPARAM, GET_CAPS, CONTEXT_INIT, RESOURCE_CREATE_BLOB, MAP, EXECBUFFER,
//!               WAIT, RESOURCE_INFO, PRIME_*, GEM_CLOSE)─▶ /dev/dri/renderD128 (virtio_gpu)
//!  DrmMapping ─mmap(fd, offset from MAP)─▶ the blob's pages
//!  event_fd()  = the device fd: reads yield `struct drm_event` records (fence signalled)
//! ```

#![allow(non_camel_case_types)]

use std::ffi::c_void;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crossway_protocols::virtgpu::{
    BlobHandles, VIRTGPU_EXECBUF_FENCE_FD_IN, VIRTGPU_EXECBUF_FENCE_FD_OUT,
    VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS, VirtGpu, VirtGpuError, VirtGpuMapping,
    drm_virtgpu_context_set_param, drm_virtgpu_execbuffer, drm_virtgpu_resource_create_blob,
    drm_virtgpu_resource_info,
};
use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, opcode};

/// The kernel's name of the virtio-gpu DRM driver (`DRM_IOCTL_VERSION`, sysfs driver link).
pub const VIRTIO_GPU_DRIVER: &str = "virtio_gpu";

const DRM_IOCTL_BASE: u8 = b'd';
const DRM_COMMAND_BASE: u8 = 0x40;

// Driver ioctl numbers (`DRM_VIRTGPU_*`), relative to DRM_COMMAND_BASE.
const DRM_VIRTGPU_MAP: u8 = 0x01;
const DRM_VIRTGPU_EXECBUFFER: u8 = 0x02;
const DRM_VIRTGPU_GETPARAM: u8 = 0x03;
const DRM_VIRTGPU_RESOURCE_INFO: u8 = 0x05;
const DRM_VIRTGPU_WAIT: u8 = 0x08;
const DRM_VIRTGPU_GET_CAPS: u8 = 0x09;
const DRM_VIRTGPU_RESOURCE_CREATE_BLOB: u8 = 0x0a;
const DRM_VIRTGPU_CONTEXT_INIT: u8 = 0x0b;

// Core ioctl numbers (drm.h).
const DRM_NR_VERSION: u8 = 0x00;
const DRM_NR_GEM_CLOSE: u8 = 0x09;
const DRM_NR_PRIME_HANDLE_TO_FD: u8 = 0x2d;
const DRM_NR_PRIME_FD_TO_HANDLE: u8 = 0x2e;
const DRM_NR_MODE_CREATE_DUMB: u8 = 0xb2;
const DRM_NR_MODE_MAP_DUMB: u8 = 0xb3;

/// `DRM_CLOEXEC` (= `O_CLOEXEC`) for PRIME exports.
const DRM_CLOEXEC: u32 = 0o2_000_000;
/// `DRM_RDWR` (= `O_RDWR`) for PRIME exports: the agent maps what it exports.
const DRM_RDWR: u32 = 0o2;

/// `struct drm_version`.
#[repr(C)]
#[derive(Debug)]
struct drm_version {
    version_major: i32,
    version_minor: i32,
    version_patchlevel: i32,
    name_len: usize,
    name: u64,
    date_len: usize,
    date: u64,
    desc_len: usize,
    desc: u64,
}

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_gem_close {
    handle: u32,
    pad: u32,
}

/// `struct drm_prime_handle`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_prime_handle {
    handle: u32,
    flags: u32,
    fd: i32,
}

/// `struct drm_mode_create_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_mode_create_dumb {
    height: u32,
    width: u32,
    bpp: u32,
    flags: u32,
    handle: u32,
    pitch: u32,
    size: u64,
}

/// `struct drm_mode_map_dumb`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_mode_map_dumb {
    handle: u32,
    pad: u32,
    offset: u64,
}

/// `struct drm_virtgpu_map`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_map {
    offset: u64,
    handle: u32,
    pad: u32,
}

/// `struct drm_virtgpu_execbuffer` (6.3+ layout with syncobjs; older kernels take the
/// 40-byte prefix, which the DRM core copies by the size encoded in the ioctl number).
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_execbuffer_raw {
    flags: u32,
    size: u32,
    command: u64,
    bo_handles: u64,
    num_bo_handles: u32,
    fence_fd: i32,
    ring_idx: u32,
    syncobj_stride: u32,
    num_in_syncobjs: u32,
    num_out_syncobjs: u32,
    in_syncobjs: u64,
    out_syncobjs: u64,
}

/// `struct drm_virtgpu_getparam` (`value` is a pointer to a u64).
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_getparam {
    param: u64,
    value: u64,
}

/// `struct drm_virtgpu_resource_info`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_resource_info_raw {
    bo_handle: u32,
    res_handle: u32,
    size: u32,
    blob_mem: u32,
}

/// `struct drm_virtgpu_3d_wait`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_3d_wait {
    handle: u32,
    flags: u32,
}

/// `struct drm_virtgpu_get_caps`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_get_caps {
    cap_set_id: u32,
    cap_set_ver: u32,
    addr: u64,
    size: u32,
    pad: u32,
}

/// `struct drm_virtgpu_resource_create_blob`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_resource_create_blob_raw {
    blob_mem: u32,
    blob_flags: u32,
    bo_handle: u32,
    res_handle: u32,
    size: u64,
    pad: u32,
    cmd_size: u32,
    cmd: u64,
    blob_id: u64,
}

/// `struct drm_virtgpu_context_set_param`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct drm_virtgpu_context_set_param_raw {
    param: u64,
    value: u64,
}

/// `struct drm_virtgpu_context_init`.
#[repr(C)]
#[derive(Debug, Default)]
struct drm_virtgpu_context_init {
    num_params: u32,
    pad: u32,
    ctx_set_params: u64,
}

// The kernel's sizes (x86_64 and every other 64-bit Linux ABI).
const _: () = {
    assert!(size_of::<drm_version>() == 64);
    assert!(size_of::<drm_gem_close>() == 8);
    assert!(size_of::<drm_prime_handle>() == 12);
    assert!(size_of::<drm_mode_create_dumb>() == 32);
    assert!(size_of::<drm_mode_map_dumb>() == 16);
    assert!(size_of::<drm_virtgpu_map>() == 16);
    assert!(size_of::<drm_virtgpu_execbuffer_raw>() == 64);
    assert!(size_of::<drm_virtgpu_getparam>() == 16);
    assert!(size_of::<drm_virtgpu_resource_info_raw>() == 16);
    assert!(size_of::<drm_virtgpu_3d_wait>() == 8);
    assert!(size_of::<drm_virtgpu_get_caps>() == 24);
    assert!(size_of::<drm_virtgpu_resource_create_blob_raw>() == 48);
    assert!(size_of::<drm_virtgpu_context_set_param_raw>() == 16);
    assert!(size_of::<drm_virtgpu_context_init>() == 16);
};

/// A uAPI struct and the one ioctl that takes it.
///
/// # Safety
/// `OPCODE` must be an ioctl that reads and writes at most `size_of::<Self>()` bytes at its
/// argument, laid out as `Self`.
unsafe trait DrmIoctl: Sized {
    /// The ioctl number.
    const OPCODE: Opcode;
}

macro_rules! drm_ioctl {
    ($ty:ty, iowr, $nr:expr) => {
        // SAFETY: `$ty` is the `#[repr(C)]` copy of the struct the kernel's header names for
        // this number; `DRM_IOWR` encodes that struct's size, which `opcode` computes the same
        // way from `size_of::<$ty>()`.
        unsafe impl DrmIoctl for $ty {
            const OPCODE: Opcode = opcode::read_write::<$ty>(DRM_IOCTL_BASE, $nr);
        }
    };
    ($ty:ty, iow, $nr:expr) => {
        // SAFETY: as above, for a `DRM_IOW` ioctl (the kernel only reads the struct).
        unsafe impl DrmIoctl for $ty {
            const OPCODE: Opcode = opcode::write::<$ty>(DRM_IOCTL_BASE, $nr);
        }
    };
}

drm_ioctl!(drm_version, iowr, DRM_NR_VERSION);
drm_ioctl!(drm_gem_close, iow, DRM_NR_GEM_CLOSE);
drm_ioctl!(drm_prime_handle, iowr, DRM_NR_PRIME_HANDLE_TO_FD);
drm_ioctl!(drm_mode_create_dumb, iowr, DRM_NR_MODE_CREATE_DUMB);
drm_ioctl!(drm_mode_map_dumb, iowr, DRM_NR_MODE_MAP_DUMB);
drm_ioctl!(drm_virtgpu_map, iowr, DRM_COMMAND_BASE + DRM_VIRTGPU_MAP);
drm_ioctl!(
    drm_virtgpu_execbuffer_raw,
    iowr,
    DRM_COMMAND_BASE + DRM_VIRTGPU_EXECBUFFER
);
drm_ioctl!(
    drm_virtgpu_getparam,
    iowr,
    DRM_COMMAND_BASE + DRM_VIRTGPU_GETPARAM
);
drm_ioctl!(
    drm_virtgpu_resource_info_raw,
    iowr,
    DRM_COMMAND_BASE + DRM_VIRTGPU_RESOURCE_INFO
);
drm_ioctl!(
    drm_virtgpu_3d_wait,
    iowr,
    DRM_COMMAND_BASE + DRM_VIRTGPU_WAIT
);
drm_ioctl!(
    drm_virtgpu_get_caps,
    iowr,
    DRM_COMMAND_BASE + DRM_VIRTGPU_GET_CAPS
);
drm_ioctl!(
    drm_virtgpu_resource_create_blob_raw,
    iowr,
    DRM_COMMAND_BASE + DRM_VIRTGPU_RESOURCE_CREATE_BLOB
);
drm_ioctl!(
    drm_virtgpu_context_init,
    iowr,
    DRM_COMMAND_BASE + DRM_VIRTGPU_CONTEXT_INIT
);

/// `PRIME_FD_TO_HANDLE` takes the same struct as `PRIME_HANDLE_TO_FD` under another number.
#[repr(transparent)]
#[derive(Debug, Default)]
struct PrimeFdToHandle(drm_prime_handle);
drm_ioctl!(PrimeFdToHandle, iowr, DRM_NR_PRIME_FD_TO_HANDLE);

/// One call: the argument and its ioctl, for `rustix::ioctl::ioctl`.
struct Call<'a, T: DrmIoctl>(&'a mut T);

// SAFETY: the opcode is `T`'s own (the `DrmIoctl` contract), the pointer is to a live,
// exclusively borrowed `T`, and the kernel's writes into it are what `IS_MUTATING` declares.
unsafe impl<T: DrmIoctl> Ioctl for Call<'_, T> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        T::OPCODE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::from_mut(self.0).cast()
    }

    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Makes the ioctl `T` on `fd`, restarting it when a signal interrupted it (as libdrm's
/// `drmIoctl` does).
///
/// # Safety
/// Every user pointer inside `arg` (a `u64` field holding an address) must point to memory
/// valid for the kernel's reads and writes of the length given beside it, for the call.
unsafe fn drm_ioctl<T: DrmIoctl>(fd: BorrowedFd<'_>, arg: &mut T) -> Result<(), Errno> {
    loop {
        // SAFETY: `Call` pairs `arg` with its own opcode; the pointers inside `arg` are valid
        // (this function's contract).
        match unsafe { rustix::ioctl::ioctl(fd, Call(arg)) } {
            Err(Errno::INTR) => continue,
            r => return r,
        }
    }
}

/// The address of `p` as the uAPI's `__u64` user pointer.
fn user_ptr<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// Maps an errno from ioctl `op` to the trait's error, as the kernel means it: `ENOENT` is a
/// GEM handle lookup failing (`handle`, when the call names one), `EINVAL` a parameter the
/// driver rejects (also what it answers for features the device lacks), `EBUSY` a `WAIT`
/// that found the fence pending.
pub fn errno_to_error(op: &'static str, handle: Option<u32>, e: Errno) -> VirtGpuError {
    match e {
        Errno::INVAL => VirtGpuError::InvalidArgument(op),
        Errno::NOENT => match handle {
            Some(h) => VirtGpuError::NoSuchHandle(h),
            None => VirtGpuError::Os(e.raw_os_error()),
        },
        Errno::NOMEM | Errno::NOSPC => VirtGpuError::OutOfMemory(op),
        Errno::BUSY => VirtGpuError::Busy,
        Errno::AGAIN | Errno::TIMEDOUT => VirtGpuError::TimedOut,
        Errno::NODEV | Errno::IO => {
            VirtGpuError::DeviceLost(format!("{op}: {}", std::io::Error::from(e)))
        }
        _ => VirtGpuError::Os(e.raw_os_error()),
    }
}

/// Why a render node could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DrmError {
    /// `open` failed.
    #[error("opening {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// `DRM_IOCTL_VERSION` failed: not a DRM device.
    #[error("{0} is not a DRM device (DRM_IOCTL_VERSION)")]
    NotDrm(PathBuf, #[source] std::io::Error),
    /// A DRM device of another driver.
    #[error("{path} is driven by {driver}, not virtio_gpu")]
    NotVirtioGpu {
        /// The node.
        path: PathBuf,
        /// Its driver's name.
        driver: String,
    },
}

/// The name of the DRM driver behind `fd` (`DRM_IOCTL_VERSION`), for example `virtio_gpu`.
pub fn driver_name(fd: BorrowedFd<'_>) -> Result<String, Errno> {
    let mut name = [0u8; 64];
    let mut v = drm_version {
        version_major: 0,
        version_minor: 0,
        version_patchlevel: 0,
        name_len: name.len(),
        name: user_ptr(name.as_mut_ptr()),
        date_len: 0,
        date: 0,
        desc_len: 0,
        desc: 0,
    };
    // SAFETY: `name` is a live buffer of `name_len` bytes for the call; the date and
    // description buffers are empty (length 0, null), which the kernel skips.
    unsafe { drm_ioctl(fd, &mut v) }?;
    // The kernel reports the full length and copies at most the buffer's.
    let n = v.name_len.min(name.len());
    Ok(String::from_utf8_lossy(&name[..n]).into_owned())
}

fn open_rw(path: &Path) -> Result<OwnedFd, std::io::Error> {
    rustix::fs::open(
        path,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(Into::into)
}

/// `VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs` as the trait means it (bit `1 << id` per capset),
/// from what the kernel reported and a test of whether capset `id` exists.
///
/// Linux up to at least 6.12 builds the mask with a 32-bit shift (`1 << id` in
/// `virtio_gpu_get_capsets`), so on x86 a capset id of 32..64 shows up as bit `id - 32`
/// (measured: capsets 5 and 48 read as `0x10020`, `tests/vm/run agent-device`). GET_CAPS
/// itself looks capsets up by id and is right, so each low bit is checked against both ids
/// it may stand for. A mask with high bits set came from a fixed kernel and is kept.
pub fn repair_capset_mask(reported: u64, mut exists: impl FnMut(u32) -> bool) -> u64 {
    if reported >> 32 != 0 {
        return reported;
    }
    let mut mask = reported;
    for bit in (0..32).filter(|b| reported & (1 << b) != 0) {
        if exists(bit + 32) {
            mask |= 1 << (bit + 32);
            if !exists(bit) {
                mask &= !(1 << bit);
            }
        }
    }
    mask
}

/// One open virtio_gpu render node: one DRM file, so at most one context, its GEM handles and
/// its event queue (the fd itself).
#[derive(Debug)]
pub struct RenderNode {
    fd: OwnedFd,
    path: PathBuf,
    rdev: u64,
    capset_mask: Option<u64>,
}

impl RenderNode {
    /// Opens `path` read-write and checks that its driver is virtio_gpu.
    pub fn open(path: &Path) -> Result<RenderNode, DrmError> {
        let fd = open_rw(path).map_err(|e| DrmError::Open(path.to_owned(), e))?;
        let driver =
            driver_name(fd.as_fd()).map_err(|e| DrmError::NotDrm(path.to_owned(), e.into()))?;
        if driver != VIRTIO_GPU_DRIVER {
            return Err(DrmError::NotVirtioGpu {
                path: path.to_owned(),
                driver,
            });
        }
        let rdev = rustix::fs::fstat(&fd)
            .map_err(|e| DrmError::Open(path.to_owned(), e.into()))?
            .st_rdev;
        Ok(RenderNode {
            fd,
            path: path.to_owned(),
            rdev,
            capset_mask: None,
        })
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `st_rdev` of the node (the `dev_t` dmabuf feedback names).
    pub fn rdev(&self) -> u64 {
        self.rdev
    }

    fn get_param_raw(&self, param: u64) -> Result<u64, VirtGpuError> {
        let mut value = 0u64;
        let mut p = drm_virtgpu_getparam {
            param,
            value: user_ptr(&raw mut value),
        };
        // SAFETY: `value` points to a live u64, the one the kernel writes.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut p) }
            .map_err(|e| errno_to_error("GETPARAM", None, e))?;
        Ok(value)
    }

    /// One `GET_CAPS` into `dst` (the kernel writes at most `dst.len()` bytes).
    fn get_caps_raw(
        &self,
        cap_set_id: u32,
        cap_set_ver: u32,
        dst: &mut [u8],
    ) -> Result<(), VirtGpuError> {
        if dst.is_empty() {
            // The kernel refuses size 0 with EINVAL too; say why.
            return Err(VirtGpuError::InvalidArgument("GET_CAPS of 0 bytes"));
        }
        let mut c = drm_virtgpu_get_caps {
            cap_set_id,
            cap_set_ver,
            addr: user_ptr(dst.as_mut_ptr()),
            size: u32::try_from(dst.len())
                .map_err(|_| VirtGpuError::InvalidArgument("GET_CAPS buffer over 4 GiB"))?,
            pad: 0,
        };
        // SAFETY: `addr` points to `dst`, `size` (= dst.len()) bytes, live for the call.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut c) }
            .map_err(|e| errno_to_error("GET_CAPS", None, e))
    }

    /// `MAP` + `mmap` of `size` bytes.
    fn map_bytes(&self, bo_handle: u32, size: u64) -> Result<DrmMapping, VirtGpuError> {
        let mut m = drm_virtgpu_map {
            handle: bo_handle,
            ..Default::default()
        };
        // SAFETY: drm_virtgpu_map holds no user pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut m) }
            .map_err(|e| errno_to_error("MAP", Some(bo_handle), e))?;
        let len = usize::try_from(size).map_err(|_| VirtGpuError::OutOfMemory("MAP size"))?;
        DrmMapping::new(self.fd.as_fd(), m.offset, len)
    }
}

impl VirtGpu for RenderNode {
    type Mapping = DrmMapping;

    fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError> {
        if param == VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS {
            if let Some(mask) = self.capset_mask {
                return Ok(mask);
            }
            let reported = self.get_param_raw(param)?;
            let mask = repair_capset_mask(reported, |id| {
                self.get_caps_raw(id, 0, &mut [0u8; 1]).is_ok()
            });
            if mask != reported {
                tracing::info!(
                    reported = format_args!("{reported:#x}"),
                    repaired = format_args!("{mask:#x}"),
                    "the kernel reports capset ids of 32 and above modulo 32; mask repaired \
                     with GET_CAPS"
                );
            }
            self.capset_mask = Some(mask);
            return Ok(mask);
        }
        self.get_param_raw(param)
    }

    fn get_caps(
        &mut self,
        cap_set_id: u32,
        cap_set_ver: u32,
        buf: &mut [u8],
    ) -> Result<usize, VirtGpuError> {
        // The kernel copies min(size, the capset's max_size) bytes and says nothing of the
        // size, so read twice into buffers filled differently: the bytes it wrote agree, the
        // ones it left do not. The second read is served from the kernel's capset cache.
        buf.fill(0);
        self.get_caps_raw(cap_set_id, cap_set_ver, buf)?;
        let mut other = vec![0xffu8; buf.len()];
        self.get_caps_raw(cap_set_id, cap_set_ver, &mut other)?;
        Ok(buf
            .iter()
            .zip(&other)
            .position(|(a, b)| a != b)
            .unwrap_or(buf.len()))
    }

    fn context_init(
        &mut self,
        params: &[drm_virtgpu_context_set_param],
    ) -> Result<(), VirtGpuError> {
        let raw: Vec<drm_virtgpu_context_set_param_raw> = params
            .iter()
            .map(|p| drm_virtgpu_context_set_param_raw {
                param: p.param,
                value: p.value,
            })
            .collect();
        let mut c = drm_virtgpu_context_init {
            num_params: u32::try_from(raw.len())
                .map_err(|_| VirtGpuError::InvalidArgument("CONTEXT_INIT params"))?,
            pad: 0,
            ctx_set_params: user_ptr(raw.as_ptr()),
        };
        // SAFETY: `ctx_set_params` points to `num_params` live structs in `raw`.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut c) }
            .map_err(|e| errno_to_error("CONTEXT_INIT", None, e))
    }

    fn resource_create_blob(
        &mut self,
        req: &drm_virtgpu_resource_create_blob,
    ) -> Result<BlobHandles, VirtGpuError> {
        let mut b = drm_virtgpu_resource_create_blob_raw {
            blob_mem: req.blob_mem,
            blob_flags: req.blob_flags,
            size: req.size,
            cmd_size: u32::try_from(req.cmd.len())
                .map_err(|_| VirtGpuError::InvalidArgument("RESOURCE_CREATE_BLOB cmd"))?,
            cmd: if req.cmd.is_empty() {
                0
            } else {
                user_ptr(req.cmd.as_ptr())
            },
            blob_id: req.blob_id,
            ..Default::default()
        };
        // SAFETY: `cmd` points to `cmd_size` live bytes of `req.cmd` (or is null with 0).
        unsafe { drm_ioctl(self.fd.as_fd(), &mut b) }
            .map_err(|e| errno_to_error("RESOURCE_CREATE_BLOB", None, e))?;
        Ok(BlobHandles {
            bo_handle: b.bo_handle,
            res_handle: b.res_handle,
        })
    }

    fn map(&mut self, bo_handle: u32) -> Result<DrmMapping, VirtGpuError> {
        // The GEM object's size, already page-rounded by the driver (u32 in the uAPI: blobs
        // over 4 GiB cannot be mapped through this call).
        let info = self.resource_info(bo_handle)?;
        self.map_bytes(bo_handle, u64::from(info.size))
    }

    fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError> {
        if eb.flags & (VIRTGPU_EXECBUF_FENCE_FD_IN | VIRTGPU_EXECBUF_FENCE_FD_OUT) != 0 {
            // The trait has no way to pass or return a sync file.
            return Err(VirtGpuError::InvalidArgument("EXECBUFFER fence fds"));
        }
        let mut e = drm_virtgpu_execbuffer_raw {
            flags: eb.flags,
            size: u32::try_from(eb.command.len())
                .map_err(|_| VirtGpuError::InvalidArgument("EXECBUFFER size"))?,
            command: user_ptr(eb.command.as_ptr()),
            bo_handles: if eb.bo_handles.is_empty() {
                0
            } else {
                user_ptr(eb.bo_handles.as_ptr())
            },
            num_bo_handles: u32::try_from(eb.bo_handles.len())
                .map_err(|_| VirtGpuError::InvalidArgument("EXECBUFFER bo handles"))?,
            fence_fd: -1,
            ring_idx: eb.ring_idx,
            ..Default::default()
        };
        // SAFETY: `command` points to `size` live bytes and `bo_handles` to `num_bo_handles`
        // live u32s, both borrowed from `eb` for the call; no syncobj arrays.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut e) }
            .map_err(|e| errno_to_error("EXECBUFFER", None, e))
    }

    fn wait(&mut self, bo_handle: u32, flags: u32) -> Result<(), VirtGpuError> {
        let mut w = drm_virtgpu_3d_wait {
            handle: bo_handle,
            flags,
        };
        // SAFETY: no user pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut w) }
            .map_err(|e| errno_to_error("WAIT", Some(bo_handle), e))
    }

    fn resource_info(&mut self, bo_handle: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError> {
        let mut i = drm_virtgpu_resource_info_raw {
            bo_handle,
            ..Default::default()
        };
        // SAFETY: no user pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut i) }
            .map_err(|e| errno_to_error("RESOURCE_INFO", Some(bo_handle), e))?;
        Ok(drm_virtgpu_resource_info {
            bo_handle: i.bo_handle,
            res_handle: i.res_handle,
            size: i.size,
            blob_mem: i.blob_mem,
        })
    }

    fn prime_handle_to_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, VirtGpuError> {
        let mut p = drm_prime_handle {
            handle: bo_handle,
            flags: DRM_CLOEXEC | DRM_RDWR,
            fd: -1,
        };
        // SAFETY: no user pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut p) }
            .map_err(|e| errno_to_error("PRIME_HANDLE_TO_FD", Some(bo_handle), e))?;
        if p.fd < 0 {
            return Err(VirtGpuError::Os(Errno::BADF.raw_os_error()));
        }
        // SAFETY: on success the kernel installed `fd` in this process's table for us alone;
        // nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(p.fd) })
    }

    fn prime_fd_to_handle(&mut self, fd: BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
        let mut p = PrimeFdToHandle(drm_prime_handle {
            handle: 0,
            flags: 0,
            fd: fd.as_raw_fd(),
        });
        // SAFETY: no user pointers; `fd` is borrowed open for the call.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut p) }
            .map_err(|e| errno_to_error("PRIME_FD_TO_HANDLE", None, e))?;
        Ok(p.0.handle)
    }

    fn gem_close(&mut self, bo_handle: u32) -> Result<(), VirtGpuError> {
        let mut c = drm_gem_close {
            handle: bo_handle,
            pad: 0,
        };
        // SAFETY: no user pointers.
        unsafe { drm_ioctl(self.fd.as_fd(), &mut c) }.map_err(|e| match e {
            // drm_gem_handle_delete answers EINVAL for a handle the file does not have.
            Errno::INVAL => VirtGpuError::NoSuchHandle(bo_handle),
            e => errno_to_error("GEM_CLOSE", Some(bo_handle), e),
        })
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A shared read-write `mmap` of a GEM object through its DRM fd; unmapped on drop.
#[derive(Debug)]
pub struct DrmMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is shared memory owned by this value, not tied to the thread that made
// it; no method hands out a pointer or reference into it. It is deliberately not `Sync`: the
// `&mut [u8]` that `read_from` builds over the range must be the only reference to it, which
// holds because a `&DrmMapping` never reaches a second thread.
unsafe impl Send for DrmMapping {}

impl DrmMapping {
    fn new(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<DrmMapping, VirtGpuError> {
        if len == 0 {
            return Err(VirtGpuError::InvalidArgument("MAP of an empty object"));
        }
        // SAFETY: a fresh shared mapping at an address the kernel picks, of the fake offset the
        // driver gave for this object; nothing else refers to that range yet.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(|e| errno_to_error("mmap", None, e))?;
        Ok(DrmMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), VirtGpuError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(VirtGpuError::InvalidArgument("range outside the mapping")),
        }
    }
}

impl VirtGpuMapping for DrmMapping {
    fn len(&self) -> usize {
        self.len
    }

    fn read_from(
        &self,
        file: BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> std::io::Result<()> {
        self.check(offset, len)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `offset + len <= self.len` (checked above) and the range is mapped readable
        // and writable for the life of `self`, which the borrow keeps alive for this call. The
        // slice is the only reference into the mapping (no method hands one out, and the type
        // is not `Sync`, so no other thread runs a method on it meanwhile) and is dropped
        // before returning. The host may read the same memory; plain bytes have no invalid
        // values.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) };
        crossway_sys::read_exact_at(file, dst, file_offset)
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtGpuError> {
        self.check(offset, buf.len())?;
        // SAFETY: `offset + buf.len() <= self.len` (checked above); the range is mapped
        // readable for the life of `self`, and `buf` is a distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(offset), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), VirtGpuError> {
        self.check(offset, data.len())?;
        // SAFETY: as in `read_at`; the range is mapped writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len());
        }
        Ok(())
    }
}

impl Drop for DrmMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned in `new`, still mapped, and no
        // reference into the range outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// A dumb buffer on a DRM primary node (`/dev/dri/card0`), exported as a dmabuf: a real GEM
/// object of the virtio_gpu device that needs neither blobs nor context init, so that probes
/// can exercise PRIME import, `RESOURCE_INFO`, `MAP`, `WAIT` and `GEM_CLOSE` on VMMs that
/// forward neither (QEMU 10's vhost-user-gpu). Not used by the agent itself.
#[derive(Debug)]
pub struct DumbBuffer {
    /// The dmabuf (`PRIME_HANDLE_TO_FD` on the primary node).
    pub dmabuf: OwnedFd,
    /// The primary node's mapping of the buffer.
    pub mapping: DrmMapping,
    /// Bytes per row.
    pub pitch: u32,
    /// Bytes.
    pub size: u64,
    _card: OwnedFd,
}

impl DumbBuffer {
    /// Creates a `width`x`height` 32-bpp dumb buffer on the primary node `card`, maps it and
    /// exports it.
    pub fn create(card: &Path, width: u32, height: u32) -> Result<DumbBuffer, VirtGpuError> {
        let fd = open_rw(card).map_err(|e| VirtGpuError::DeviceLost(format!("{e}")))?;
        let mut c = drm_mode_create_dumb {
            height,
            width,
            bpp: 32,
            ..Default::default()
        };
        // SAFETY: no user pointers.
        unsafe { drm_ioctl(fd.as_fd(), &mut c) }
            .map_err(|e| errno_to_error("MODE_CREATE_DUMB", None, e))?;
        let mut m = drm_mode_map_dumb {
            handle: c.handle,
            ..Default::default()
        };
        // SAFETY: no user pointers.
        unsafe { drm_ioctl(fd.as_fd(), &mut m) }
            .map_err(|e| errno_to_error("MODE_MAP_DUMB", Some(c.handle), e))?;
        let len = usize::try_from(c.size).map_err(|_| VirtGpuError::OutOfMemory("dumb size"))?;
        let mapping = DrmMapping::new(fd.as_fd(), m.offset, len)?;
        let mut p = drm_prime_handle {
            handle: c.handle,
            flags: DRM_CLOEXEC | DRM_RDWR,
            fd: -1,
        };
        // SAFETY: no user pointers.
        unsafe { drm_ioctl(fd.as_fd(), &mut p) }
            .map_err(|e| errno_to_error("PRIME_HANDLE_TO_FD", Some(c.handle), e))?;
        if p.fd < 0 {
            return Err(VirtGpuError::Os(Errno::BADF.raw_os_error()));
        }
        // SAFETY: on success the kernel installed `fd` for this process; nothing else owns it.
        let dmabuf = unsafe { OwnedFd::from_raw_fd(p.fd) };
        Ok(DumbBuffer {
            dmabuf,
            mapping,
            pitch: c.pitch,
            size: c.size,
            _card: fd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_kernel_header_values() {
        // DRM_IOWR('d', 0x40 + nr, struct): direction 3 << 30, size << 16, 'd' << 8, nr.
        assert_eq!(
            <drm_virtgpu_getparam as DrmIoctl>::OPCODE as u64,
            0xc010_6443
        );
        assert_eq!(
            <drm_virtgpu_execbuffer_raw as DrmIoctl>::OPCODE as u64,
            0xc040_6442
        );
        assert_eq!(
            <drm_virtgpu_resource_create_blob_raw as DrmIoctl>::OPCODE as u64,
            0xc030_644a
        );
        assert_eq!(
            <drm_virtgpu_context_init as DrmIoctl>::OPCODE as u64,
            0xc010_644b
        );
        assert_eq!(
            <drm_virtgpu_get_caps as DrmIoctl>::OPCODE as u64,
            0xc018_6449
        );
        assert_eq!(<drm_virtgpu_map as DrmIoctl>::OPCODE as u64, 0xc010_6441);
        assert_eq!(
            <drm_virtgpu_3d_wait as DrmIoctl>::OPCODE as u64,
            0xc008_6448
        );
        assert_eq!(
            <drm_virtgpu_resource_info_raw as DrmIoctl>::OPCODE as u64,
            0xc010_6445
        );
        assert_eq!(<drm_gem_close as DrmIoctl>::OPCODE as u64, 0x4008_6409);
        assert_eq!(<drm_prime_handle as DrmIoctl>::OPCODE as u64, 0xc00c_642d);
        assert_eq!(<PrimeFdToHandle as DrmIoctl>::OPCODE as u64, 0xc00c_642e);
        assert_eq!(<drm_version as DrmIoctl>::OPCODE as u64, 0xc040_6400);
        assert_eq!(
            <drm_mode_create_dumb as DrmIoctl>::OPCODE as u64,
            0xc020_64b2
        );
        assert_eq!(<drm_mode_map_dumb as DrmIoctl>::OPCODE as u64, 0xc010_64b3);
    }

    #[test]
    fn repair_capset_mask_moves_high_ids_back() {
        // Capsets 5 and 48 as Linux 6.12 reports them: bits 5 and 16.
        assert_eq!(
            repair_capset_mask(0x10020, |id| id == 5 || id == 48),
            (1 << 48) | (1 << 5)
        );
        // Both 16 and 48 exist: both bits.
        assert_eq!(
            repair_capset_mask(1 << 16, |id| id == 16 || id == 48),
            (1 << 48) | (1 << 16)
        );
        // Low ids only: unchanged.
        assert_eq!(repair_capset_mask(0x22, |id| id == 1 || id == 5), 0x22);
    }

    #[test]
    fn repair_capset_mask_fixed_kernel_is_kept() {
        let mask = (1u64 << 48) | (1 << 5);
        assert_eq!(
            repair_capset_mask(mask, |_| panic!("probed a fixed kernel's mask")),
            mask
        );
    }

    #[test]
    fn errno_to_error_maps_kernel_meanings() {
        assert_eq!(
            errno_to_error("GETPARAM", None, Errno::INVAL),
            VirtGpuError::InvalidArgument("GETPARAM")
        );
        assert_eq!(
            errno_to_error("WAIT", Some(7), Errno::NOENT),
            VirtGpuError::NoSuchHandle(7)
        );
        assert_eq!(
            errno_to_error("X", None, Errno::NOENT),
            VirtGpuError::Os(Errno::NOENT.raw_os_error())
        );
        assert_eq!(
            errno_to_error("RESOURCE_CREATE_BLOB", None, Errno::NOMEM),
            VirtGpuError::OutOfMemory("RESOURCE_CREATE_BLOB")
        );
        assert_eq!(
            errno_to_error("X", None, Errno::NOSPC),
            VirtGpuError::OutOfMemory("X")
        );
        assert_eq!(
            errno_to_error("WAIT", Some(1), Errno::BUSY),
            VirtGpuError::Busy
        );
        assert_eq!(
            errno_to_error("X", None, Errno::TIMEDOUT),
            VirtGpuError::TimedOut
        );
        assert!(matches!(
            errno_to_error("X", None, Errno::NODEV),
            VirtGpuError::DeviceLost(_)
        ));
        assert_eq!(
            errno_to_error("X", None, Errno::PERM),
            VirtGpuError::Os(Errno::PERM.raw_os_error())
        );
    }

    #[test]
    fn render_node_open_regular_file_is_not_drm() {
        let f = std::env::temp_dir().join(format!("crossway-drm-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        let r = RenderNode::open(&f);
        let _ = std::fs::remove_file(&f);
        assert!(matches!(r, Err(DrmError::NotDrm(..))), "{r:?}");
    }

    #[test]
    fn render_node_open_missing_path_fails_open() {
        let r = RenderNode::open(Path::new("/nonexistent/renderD128"));
        assert!(matches!(r, Err(DrmError::Open(..))), "{r:?}");
    }
}
