//! CPU mappings of blobs for guest programs: a host blob's fd, or a guest blob's scattered
//! pages of guest RAM stitched into one contiguous view (what the guest kernel's `mmap` of a
//! shmem GEM object gives). This module holds the loopback's only `unsafe`.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crossway_protocols::virtgpu::{VirtGpuError, VirtGpuMapping};

/// One piece of a mapping: `len` bytes of `fd` from `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// The file (guest RAM memfd, or a host blob).
    pub fd: BorrowedFd<'a>,
    /// Offset in the file (page aligned).
    pub offset: u64,
    /// Bytes (page multiple).
    pub len: usize,
}

/// A shared mapping, read-write unless a piece's file is read-only (a sealed host item);
/// unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value, not tied to the thread that
// made it; no method hands out a reference into it (`as_ptr` gives a raw pointer, whose
// dereferences are its user's unsafe obligation). It is deliberately not `Sync`: the
// `&mut [u8]` that `read_from` builds over the range must be the only reference to it, which
// holds because a `&Mapping` never reaches a second thread.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `pieces` one after another into a single contiguous range.
    pub fn new(pieces: &[Piece<'_>]) -> Result<Mapping, VirtGpuError> {
        let page = crossway_sys::page_size();
        let mut total = 0usize;
        for p in pieces {
            if p.len == 0 || p.len % page != 0 || p.offset % page as u64 != 0 {
                return Err(VirtGpuError::InvalidArgument(
                    "mapping piece not page aligned",
                ));
            }
            total = total
                .checked_add(p.len)
                .ok_or(VirtGpuError::OutOfMemory("mapping size"))?;
        }
        if total == 0 {
            return Err(VirtGpuError::InvalidArgument("empty mapping"));
        }
        // SAFETY: an anonymous PROT_NONE reservation at an address the kernel picks; nothing
        // else refers to it.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )
        }
        .map_err(|_| VirtGpuError::OutOfMemory("address space"))?;
        let mut mapping = Mapping {
            ptr: base.cast(),
            len: total,
            writable: true,
        };
        let mut at = 0usize;
        for p in pieces {
            let start = mapping.ptr;
            let map = |prot| {
                // SAFETY: `at + p.len <= total` (summed above), so the fixed address lies
                // inside the reservation this function owns; MAP_FIXED replaces only that part
                // of it. The fd is borrowed and open for the call.
                unsafe {
                    rustix::mm::mmap(
                        start.add(at).cast(),
                        p.len,
                        prot,
                        MapFlags::SHARED | MapFlags::FIXED,
                        p.fd,
                        p.offset,
                    )
                }
            };
            let mut r = map(ProtFlags::READ | ProtFlags::WRITE);
            if let Err(Errno::ACCESS | Errno::PERM) = r {
                // A read-only file (the host sealed it): the whole mapping is read-only.
                r = map(ProtFlags::READ);
                mapping.writable = false;
            }
            r.map_err(|e| VirtGpuError::Os(e.raw_os_error()))?;
            at += p.len;
        }
        Ok(mapping)
    }

    /// Start of the mapping, for a VMM that hands guest memory to a library by address (the
    /// reference host gives it to rutabaga as a guest blob's iovec). Not part of
    /// [`VirtGpuMapping`]: the agent copies through [`VirtGpuMapping::read_from`] instead.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), VirtGpuError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(VirtGpuError::InvalidArgument("range outside the mapping")),
        }
    }
}

impl VirtGpuMapping for Mapping {
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
        if !self.writable {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the mapping is read-only",
            ));
        }
        // SAFETY: `offset + len <= self.len` (checked above) and the range is mapped writable
        // (checked above) for the life of `self`, which the borrow keeps alive for this call.
        // The slice is the only reference into the mapping (no method hands one out, and the
        // type is not `Sync`) and is dropped before returning; plain bytes have no invalid
        // values.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) };
        crossway_sys::read_exact_at(file, dst, file_offset)
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtGpuError> {
        self.check(offset, buf.len())?;
        // SAFETY: `offset + buf.len() <= self.len` (checked), the range is mapped readable for
        // the life of `self`, and `buf` is a distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(offset), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), VirtGpuError> {
        self.check(offset, data.len())?;
        if !self.writable {
            return Err(VirtGpuError::InvalidArgument("the mapping is read-only"));
        }
        // SAFETY: as in `read_at`; the range is mapped writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the reservation made in `new`, still mapped, and no
        // reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossway_sys::memfd::Memfd;
    use std::os::fd::AsFd;

    #[test]
    fn mapping_pieces_in_order_see_file_bytes() {
        let m = Memfd::new("t", 4 * 4096).unwrap();
        m.write_at(3 * 4096, b"three").unwrap();
        m.write_at(4096, b"one").unwrap();
        let fd = m.file().as_fd();
        let map = Mapping::new(&[
            Piece {
                fd,
                offset: 3 * 4096,
                len: 4096,
            },
            Piece {
                fd,
                offset: 4096,
                len: 4096,
            },
        ])
        .unwrap();
        let mut b = [0u8; 5];
        map.read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"three");
        map.read_at(4096, &mut b[..3]).unwrap();
        assert_eq!(&b[..3], b"one");
        map.write_at(4096 + 10, b"xy").unwrap();
        let mut f = [0u8; 2];
        m.read_at(4096 + 10, &mut f).unwrap();
        assert_eq!(&f, b"xy");
        assert!(map.read_at(8190, &mut b).is_err());
    }

    #[test]
    fn read_from_a_file_lands_in_the_mapping_and_a_short_file_is_an_error() {
        let blob = Memfd::new("blob", 2 * 4096).unwrap();
        let map = Mapping::new(&[Piece {
            fd: blob.file().as_fd(),
            offset: 0,
            len: 2 * 4096,
        }])
        .unwrap();
        // The client's pool, truncated later under the next copy.
        let pool = tempfile_memfd(b"0123456789");
        map.read_from(pool.as_fd(), 2, 4096 + 5, 6).unwrap();
        let mut b = [0u8; 6];
        blob.read_at(4096 + 5, &mut b).unwrap();
        assert_eq!(&b, b"234567");
        rustix::fs::ftruncate(&pool, 4).unwrap();
        let e = map.read_from(pool.as_fd(), 2, 0, 6).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let e = map.read_from(pool.as_fd(), 0, 2 * 4096 - 1, 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    fn tempfile_memfd(bytes: &[u8]) -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create("pool", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::pwrite(&fd, bytes, 0).unwrap();
        fd
    }

    #[test]
    fn a_write_sealed_file_maps_read_only() {
        let fd = rustix::fs::memfd_create(
            "sealed",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::io::pwrite(&fd, b"xkb_keymap", 0).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::WRITE).unwrap();
        let map = Mapping::new(&[Piece {
            fd: fd.as_fd(),
            offset: 0,
            len: 4096,
        }])
        .unwrap();
        let mut b = [0u8; 10];
        map.read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"xkb_keymap");
        assert!(map.write_at(0, b"x").is_err());
    }
}
