//! `/dev/udmabuf`: one dmabuf from page ranges of the guest's memfds (`UDMABUF_CREATE_LIST`).
//!
//! Kernel rules (drivers/dma-buf/udmabuf.c): every offset and size page-aligned, the memfd
//! sealed with `F_SEAL_SHRINK` and without `F_SEAL_WRITE`, at most `list_limit` items (default
//! 1024) and `size_limit_mb` MiB (default 64). They are checked here first so a refusal names
//! the rule instead of a bare `EINVAL`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use zerocopy::IntoBytes;

/// `UDMABUF_FLAGS_CLOEXEC`.
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
/// `_IOW('u', 0x43, struct udmabuf_create_list)`.
const UDMABUF_CREATE_LIST: libc::c_ulong = 0x4008_7543;
/// Path of the device.
pub const UDMABUF_PATH: &str = "/dev/udmabuf";

/// Why a dmabuf could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UdmabufError {
    /// `/dev/udmabuf` could not be opened.
    #[error("cannot open {UDMABUF_PATH}")]
    Open(#[source] std::io::Error),
    /// An item is not page-aligned.
    #[error("range at offset {offset:#x} of {size:#x} bytes is not page-aligned")]
    Unaligned {
        /// File offset.
        offset: u64,
        /// Length.
        size: u64,
    },
    /// More items than `list_limit`.
    #[error("{count} ranges exceed udmabuf's list_limit of {limit}")]
    TooManyItems {
        /// Items.
        count: usize,
        /// Module limit.
        limit: usize,
    },
    /// More bytes than `size_limit_mb`.
    #[error("{size} bytes exceed udmabuf's size_limit_mb of {limit_mb} MiB")]
    TooLarge {
        /// Bytes.
        size: u64,
        /// Module limit.
        limit_mb: u64,
    },
    /// The memfd lacks `F_SEAL_SHRINK` or has `F_SEAL_WRITE`.
    #[error("guest memory fd is not sealed as udmabuf requires (F_SEAL_SHRINK, no F_SEAL_WRITE)")]
    Unsealed,
    /// The ioctl failed.
    #[error("UDMABUF_CREATE_LIST failed")]
    Ioctl(#[source] std::io::Error),
}

/// One page range of a memfd.
#[derive(Debug, Clone, Copy)]
pub struct UdmabufItem<'a> {
    /// The memfd.
    pub fd: BorrowedFd<'a>,
    /// Offset in it.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// An open `/dev/udmabuf` and the module's limits.
#[derive(Debug)]
pub struct Udmabuf {
    dev: File,
    list_limit: usize,
    size_limit_mb: u64,
}

fn module_param(name: &str, default: u64) -> u64 {
    std::fs::read_to_string(format!("/sys/module/udmabuf/parameters/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

impl Udmabuf {
    /// Opens the device.
    pub fn open() -> Result<Udmabuf, UdmabufError> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(UDMABUF_PATH)
            .map_err(UdmabufError::Open)?;
        Ok(Udmabuf {
            dev,
            list_limit: module_param("list_limit", 1024) as usize,
            size_limit_mb: module_param("size_limit_mb", 64),
        })
    }

    /// Checks the kernel's rules without calling it.
    pub fn check(&self, items: &[UdmabufItem<'_>]) -> Result<(), UdmabufError> {
        check_items(items, self.list_limit, self.size_limit_mb)
    }

    /// One dmabuf over `items`, in order.
    pub fn create_list(&self, items: &[UdmabufItem<'_>]) -> Result<OwnedFd, UdmabufError> {
        self.check(items)?;
        for it in items {
            use crossway_sys::memfd::SealFlags;
            let s = crossway_sys::memfd::seals(it.fd).map_err(|_| UdmabufError::Unsealed)?;
            if !s.contains(SealFlags::SHRINK) || s.contains(SealFlags::WRITE) {
                return Err(UdmabufError::Unsealed);
            }
        }
        // struct udmabuf_create_list { u32 flags; u32 count; struct udmabuf_create_item[]; }
        // with items { u32 memfd; u32 pad; u64 offset; u64 size; }, laid out in u64 words so
        // the buffer is 8-byte aligned.
        let mut words: Vec<u64> = Vec::with_capacity(1 + items.len() * 3);
        words.push(u64::from(UDMABUF_FLAGS_CLOEXEC) | ((items.len() as u64) << 32));
        for it in items {
            words.push(it.fd.as_raw_fd() as u32 as u64);
            words.push(it.offset);
            words.push(it.size);
        }
        let bytes = words.as_mut_bytes();
        // SAFETY: UDMABUF_CREATE_LIST reads a `udmabuf_create_list` header followed by `count`
        // items; `bytes` holds exactly that (count = items.len()), is 8-byte aligned and lives
        // until the call returns. The kernel only reads it. The fds named inside are borrowed
        // for the duration of the call by `items`.
        let rc = unsafe {
            libc::ioctl(
                self.dev.as_raw_fd(),
                UDMABUF_CREATE_LIST,
                bytes.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(UdmabufError::Ioctl(std::io::Error::last_os_error()));
        }
        // SAFETY: on success the ioctl returns a new dmabuf fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(rc) };
        // The entry count is what the kernel's list_limit caps, and what tests look for to see
        // a scattered blob become one dmabuf.
        tracing::debug!(
            entries = items.len(),
            bytes = items.iter().map(|it| it.size).sum::<u64>(),
            "udmabuf created from a scatter list"
        );
        Ok(fd)
    }
}

/// The kernel's rules, as a pure function (tested where there is no /dev/udmabuf).
pub fn check_items(
    items: &[UdmabufItem<'_>],
    list_limit: usize,
    size_limit_mb: u64,
) -> Result<(), UdmabufError> {
    let page = crossway_sys::page_size() as u64;
    if items.len() > list_limit {
        return Err(UdmabufError::TooManyItems {
            count: items.len(),
            limit: list_limit,
        });
    }
    let mut total: u64 = 0;
    for it in items {
        if it.offset % page != 0 || it.size % page != 0 || it.size == 0 {
            return Err(UdmabufError::Unaligned {
                offset: it.offset,
                size: it.size,
            });
        }
        total = total.saturating_add(it.size);
    }
    if total > size_limit_mb.saturating_mul(1 << 20) {
        return Err(UdmabufError::TooLarge {
            size: total,
            limit_mb: size_limit_mb,
        });
    }
    Ok(())
}
