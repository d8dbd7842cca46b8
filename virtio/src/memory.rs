//! Guest memory: scatter lists checked against the regions the frontend shared, and resolved
//! to (memfd, file offset, length) for udmabuf.
//!
//! Guest RAM is the VMM's memfds, mapped by vhost-user-backend (`SET_MEM_TABLE`); each region
//! keeps the fd and the file offset it starts at, which is what `UDMABUF_CREATE_LIST` needs.

use std::os::fd::{AsFd, BorrowedFd};

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::protocol::virtio_gpu_mem_entry;

/// Guest memory as vhost-user-backend maps it.
pub type GuestMem = GuestMemoryMmap<()>;
/// The swappable handle the backend updates on `SET_MEM_TABLE`.
pub type GuestMemHandle = GuestMemoryAtomic<GuestMem>;

/// Why a guest range is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// Address plus length overflows.
    #[error("guest range {addr:#x}+{len:#x} overflows")]
    Overflow {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Part of the range is not guest RAM.
    #[error("guest range {addr:#x}+{len:#x} is outside guest memory")]
    OutOfBounds {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// An access beyond the backing's length.
    #[error("access at {offset:#x}+{len:#x} is beyond backing of {total:#x} bytes")]
    BeyondBacking {
        /// Offset into the backing.
        offset: u64,
        /// Length.
        len: u64,
        /// Backing bytes.
        total: u64,
    },
    /// A region has no file behind it (cannot be shared with udmabuf).
    #[error("guest memory at {0:#x} is not file-backed")]
    NotFileBacked(u64),
}

/// One piece of guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRange {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u64,
}

/// A file range that holds part of a guest range.
#[derive(Debug, Clone, Copy)]
pub struct FdRange<'m> {
    /// The region's memfd.
    pub fd: BorrowedFd<'m>,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// Checks that `[addr, addr+len)` lies in guest RAM (it may span adjacent regions).
pub fn check_range(mem: &GuestMem, addr: u64, len: u64) -> Result<(), MemoryError> {
    let end = addr
        .checked_add(len)
        .ok_or(MemoryError::Overflow { addr, len })?;
    let mut at = addr;
    while at < end {
        let r = mem
            .find_region(GuestAddress(at))
            .ok_or(MemoryError::OutOfBounds { addr, len })?;
        let region_end = r.start_addr().0.saturating_add(r.len());
        at = region_end.min(end);
    }
    Ok(())
}

/// A resource's scatter list, checked at attach time and re-checked on every access (the
/// frontend may replace the memory map).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backing {
    ranges: Vec<GuestRange>,
    total: u64,
}

impl Backing {
    /// Validates mem entries against guest memory.
    pub fn new(mem: &GuestMem, entries: &[virtio_gpu_mem_entry]) -> Result<Backing, MemoryError> {
        let mut ranges = Vec::with_capacity(entries.len());
        let mut total: u64 = 0;
        for e in entries {
            let addr = e.addr.get();
            let len = u64::from(e.length.get());
            check_range(mem, addr, len)?;
            total = total
                .checked_add(len)
                .ok_or(MemoryError::Overflow { addr, len })?;
            ranges.push(GuestRange { addr, len });
        }
        Ok(Backing { ranges, total })
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The ranges.
    pub fn ranges(&self) -> &[GuestRange] {
        &self.ranges
    }

    /// Calls `f(guest_addr, buf_offset, len)` for each piece of `[offset, offset+len)`.
    fn walk(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.total).ok_or(
            MemoryError::BeyondBacking {
                offset,
                len,
                total: self.total,
            },
        )?;
        let mut pos = 0u64; // start of the current range in backing space
        let mut done = 0usize;
        for r in &self.ranges {
            let r_end = pos + r.len; // total fits u64, checked in new()
            if r_end > offset && pos < end {
                let from = offset.max(pos);
                let to = end.min(r_end);
                let n = (to - from) as usize;
                f(r.addr + (from - pos), done, n)?;
                done += n;
            }
            if r_end >= end {
                break;
            }
            pos = r_end;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at backing offset `offset`.
    pub fn read_at(&self, mem: &GuestMem, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.walk(offset, buf.len() as u64, |gpa, at, n| {
            mem.read_slice(&mut buf[at..at + n], GuestAddress(gpa))
                .map_err(|_| MemoryError::OutOfBounds {
                    addr: gpa,
                    len: n as u64,
                })
        })
    }

    /// Writes `data` at backing offset `offset`.
    pub fn write_at(&self, mem: &GuestMem, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.walk(offset, data.len() as u64, |gpa, at, n| {
            mem.write_slice(&data[at..at + n], GuestAddress(gpa))
                .map_err(|_| MemoryError::OutOfBounds {
                    addr: gpa,
                    len: n as u64,
                })
        })
    }

    /// The first `len` bytes as file ranges of the frontend's memfds, split at region
    /// boundaries and with adjacent ranges of one file merged (udmabuf allows 1024 items).
    pub fn fd_ranges<'m>(
        &self,
        mem: &'m GuestMem,
        len: u64,
    ) -> Result<Vec<FdRange<'m>>, MemoryError> {
        let mut out: Vec<FdRange<'m>> = Vec::new();
        let mut remaining = len.min(self.total);
        for r in &self.ranges {
            if remaining == 0 {
                break;
            }
            let mut at = r.addr;
            let mut left = r.len.min(remaining);
            remaining -= left;
            while left > 0 {
                let region = mem
                    .find_region(GuestAddress(at))
                    .ok_or(MemoryError::OutOfBounds {
                        addr: at,
                        len: left,
                    })?;
                let off = at - region.start_addr().0;
                let n = left.min(region.len() - off);
                let fo = region.file_offset().ok_or(MemoryError::NotFileBacked(at))?;
                let file_off = fo
                    .start()
                    .checked_add(off)
                    .ok_or(MemoryError::Overflow { addr: at, len: n })?;
                let fd = fo.file().as_fd();
                match out.last_mut() {
                    Some(last)
                        if last.fd.as_fd_raw() == fd.as_fd_raw()
                            && last.offset + last.len == file_off =>
                    {
                        last.len += n;
                    }
                    _ => out.push(FdRange {
                        fd,
                        offset: file_off,
                        len: n,
                    }),
                }
                at += n;
                left -= n;
            }
        }
        Ok(out)
    }
}

trait RawOf {
    fn as_fd_raw(&self) -> i32;
}

impl RawOf for BorrowedFd<'_> {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crossway_sys::memfd::Memfd;
    use vm_memory::FileOffset;

    /// Guest memory of `size` bytes at 0 backed by a sealed memfd, as QEMU shares it.
    pub(crate) fn memfd_guest(size: usize) -> GuestMem {
        let m = Memfd::new("guest-ram", size as u64).unwrap();
        let file = m.file().try_clone().unwrap();
        GuestMem::from_ranges_with_files([(GuestAddress(0), size, Some(FileOffset::new(file, 0)))])
            .unwrap()
    }

    fn entry(addr: u64, length: u32) -> virtio_gpu_mem_entry {
        virtio_gpu_mem_entry {
            addr: addr.into(),
            length: length.into(),
            padding: 0.into(),
        }
    }

    #[test]
    fn backing_outside_memory_is_rejected() {
        let mem = memfd_guest(1 << 20);
        assert!(matches!(
            Backing::new(&mem, &[entry((1 << 20) - 10, 20)]),
            Err(MemoryError::OutOfBounds { .. })
        ));
        assert!(matches!(
            Backing::new(&mem, &[entry(u64::MAX - 2, 20)]),
            Err(MemoryError::Overflow { .. })
        ));
    }

    #[test]
    fn backing_scattered_read_write_round_trips() {
        let mem = memfd_guest(1 << 20);
        let b = Backing::new(
            &mem,
            &[entry(0x3000, 4096), entry(0x1000, 4096), entry(0x8000, 8)],
        )
        .unwrap();
        assert_eq!(b.len(), 8200);
        let data: Vec<u8> = (0..8200u32).map(|i| i as u8).collect();
        b.write_at(&mem, 0, &data).unwrap();
        let mut back = vec![0; 8200];
        b.read_at(&mem, 0, &mut back).unwrap();
        assert_eq!(back, data);
        let mut mid = [0u8; 10];
        b.read_at(&mem, 4090, &mut mid).unwrap();
        assert_eq!(&mid[..], &data[4090..4100]);
        let mut x = 0u8;
        mem.read_obj::<u8>(GuestAddress(0x1000))
            .map(|v| x = v)
            .unwrap();
        assert_eq!(x, data[4096]);
        assert!(b.read_at(&mem, 8195, &mut mid).is_err());
    }

    #[test]
    fn backing_fd_ranges_merge_adjacent_pages() {
        let mem = memfd_guest(1 << 20);
        let b = Backing::new(
            &mem,
            &[
                entry(0x1000, 4096),
                entry(0x2000, 4096),
                entry(0x5000, 4096),
            ],
        )
        .unwrap();
        let r = b.fd_ranges(&mem, b.len()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].offset, r[0].len), (0x1000, 0x2000));
        assert_eq!((r[1].offset, r[1].len), (0x5000, 0x1000));
    }

    #[test]
    fn backing_fd_ranges_anonymous_memory_is_not_file_backed() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let b = Backing::new(&mem, &[entry(0, 4096)]).unwrap();
        assert!(matches!(
            b.fd_ranges(&mem, 4096),
            Err(MemoryError::NotFileBacked(0))
        ));
    }
}
