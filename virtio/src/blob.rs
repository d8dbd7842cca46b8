//! Guest blobs become host fds: one udmabuf dmabuf over the guest's own pages (zero copies),
//! or, where udmabuf is missing or refuses, a host memfd that guest bytes are copied into.
//!
//! The choice is made per blob (an unaligned or oversized blob may take the copy path on a
//! host that has udmabuf), logged once per VM, and counted in [`DeviceStats`].

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::memory::{Backing, GuestMem, MemoryError};
use crate::stats::DeviceStats;
use crate::udmabuf::{Udmabuf, UdmabufError, UdmabufItem};
use crossway_sys::memfd::{Memfd, MemfdError};

/// Which export path to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportMode {
    /// udmabuf where it works, else copy.
    #[default]
    Auto,
    /// Always copy (tests, benchmarks, hosts where udmabuf misbehaves).
    CopyOnly,
}

/// Why a guest blob could not be exported at all.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Guest memory could not be read.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// The host memfd could not be made or written.
    #[error("host memfd")]
    Memfd(#[from] MemfdError),
    /// The blob has no backing pages.
    #[error("blob has no backing")]
    NoBacking,
}

/// An exported guest blob.
#[derive(Debug)]
pub enum GuestExport {
    /// A dmabuf over the guest pages.
    Dmabuf(OwnedFd),
    /// A host copy.
    Copy(Memfd),
}

impl GuestExport {
    /// A new fd for the same memory.
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        match self {
            GuestExport::Dmabuf(fd) => fd.try_clone(),
            GuestExport::Copy(m) => m.try_clone_fd(),
        }
    }

    /// Whether this is the zero-copy path.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self, GuestExport::Dmabuf(_))
    }
}

/// Exports guest blobs for one VM.
#[derive(Debug)]
pub struct BlobExporter {
    udmabuf: Option<Udmabuf>,
    stats: Arc<DeviceStats>,
    logged_choice: bool,
    logged_fallback: bool,
}

impl BlobExporter {
    /// Opens `/dev/udmabuf` unless `mode` is [`ExportMode::CopyOnly`].
    pub fn new(mode: ExportMode, stats: Arc<DeviceStats>) -> BlobExporter {
        let udmabuf = match mode {
            ExportMode::CopyOnly => None,
            ExportMode::Auto => match Udmabuf::open() {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "udmabuf unavailable: guest blobs will be copied into host memfds"
                    );
                    None
                }
            },
        };
        BlobExporter {
            logged_choice: udmabuf.is_none(),
            udmabuf,
            stats,
            logged_fallback: false,
        }
    }

    /// Whether the zero-copy path is available at all.
    pub fn has_udmabuf(&self) -> bool {
        self.udmabuf.is_some()
    }

    /// Exports the first `size` bytes of `backing`.
    pub fn export(
        &mut self,
        mem: &GuestMem,
        backing: &Backing,
        size: u64,
    ) -> Result<GuestExport, BlobError> {
        if backing.is_empty() {
            return Err(BlobError::NoBacking);
        }
        if let Some(u) = &self.udmabuf {
            match dmabuf(u, mem, backing, size) {
                Ok(fd) => {
                    if !self.logged_choice {
                        self.logged_choice = true;
                        tracing::info!("guest blobs are exported as udmabuf dmabufs (zero copy)");
                    }
                    DeviceStats::add(&self.stats.blobs_zero_copy, 1);
                    return Ok(GuestExport::Dmabuf(fd));
                }
                Err(e) => {
                    if !self.logged_fallback {
                        self.logged_fallback = true;
                        tracing::warn!(
                            error = %e,
                            "udmabuf refused a guest blob: copying it (logged once per VM)"
                        );
                    }
                }
            }
        }
        let m = Memfd::new("crossway-guest-blob-copy", size)?;
        copy_range(mem, backing, &m, 0, size, &self.stats)?;
        DeviceStats::add(&self.stats.blobs_copied, 1);
        Ok(GuestExport::Copy(m))
    }
}

fn dmabuf(u: &Udmabuf, mem: &GuestMem, backing: &Backing, size: u64) -> Result<OwnedFd, DmabufErr> {
    let ranges = backing.fd_ranges(mem, size).map_err(DmabufErr::Memory)?;
    let items: Vec<UdmabufItem<'_>> = ranges
        .iter()
        .map(|r| UdmabufItem {
            fd: r.fd,
            offset: r.offset,
            size: r.len,
        })
        .collect();
    u.create_list(&items).map_err(DmabufErr::Udmabuf)
}

#[derive(Debug, thiserror::Error)]
enum DmabufErr {
    #[error(transparent)]
    Memory(MemoryError),
    #[error(transparent)]
    Udmabuf(UdmabufError),
}

/// Copies `[offset, offset+len)` of the blob from guest pages into `m`, in 64 KiB chunks.
pub fn copy_range(
    mem: &GuestMem,
    backing: &Backing,
    m: &Memfd,
    offset: u64,
    len: u64,
    stats: &DeviceStats,
) -> Result<u64, BlobError> {
    const CHUNK: u64 = 64 * 1024;
    let end = offset.checked_add(len).ok_or(MemoryError::BeyondBacking {
        offset,
        len,
        total: backing.len(),
    })?;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let mut at = offset;
    while at < end {
        let n = CHUNK.min(end - at) as usize;
        backing.read_at(mem, at, &mut buf[..n])?;
        m.write_at(at, &buf[..n])?;
        at += n as u64;
    }
    DeviceStats::add(&stats.bytes_copied, len);
    Ok(len)
}
