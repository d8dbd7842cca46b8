//! Reading client buffers (dmabuf planes) without trusting their size to stay put: the
//! compositor's `unsafe`, but for the one `dispatch_clients` call in `lib.rs`.
//!
//! A client owns the file behind each plane and may shrink it at any time. A shared mapping of
//! a shrunk file raises `SIGBUS` on the next read, which would kill the compositor and every
//! other client with it. So a file that can change size (a memfd, a regular file) is read with
//! `pread`, which reports a short read instead; only a dmabuf, whose size the kernel fixes
//! when it is created (udmabuf additionally requires its memfd sealed against shrinking), is
//! mapped.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// Why a plane could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The rows asked for do not fit the bytes the plane had when it was imported.
    #[error("rows outside the plane's {0} bytes")]
    Bounds(usize),
    /// The client shrank the file since the import.
    #[error("the buffer's file shrank: {got} bytes at offset {at}, {want} needed")]
    Shrunk {
        /// Offset of the read.
        at: usize,
        /// Bytes the layout needs there.
        want: usize,
        /// Bytes the file still had.
        got: usize,
    },
    /// Reading failed.
    #[error("reading the buffer failed")]
    Io(#[from] std::io::Error),
}

/// The bytes of one plane: read through its fd, or through a mapping for dmabufs.
#[derive(Debug)]
pub enum PlaneReader {
    /// A file the client can resize: read with `pread`.
    File {
        /// The client's fd (a dup; the offset is never used).
        fd: OwnedFd,
        /// Bytes the layout covers, measured at import.
        len: usize,
    },
    /// A dmabuf (fixed size): mapped read-only.
    Mapped(ReadMapping),
}

impl PlaneReader {
    /// A reader for the first `len` bytes of `fd`, which the caller has checked the file
    /// holds. Refuses fds that are neither regular files nor dmabufs.
    pub fn new(fd: impl AsFd, len: usize) -> std::io::Result<PlaneReader> {
        use rustix::fs::FileType;
        let fd = fd.as_fd();
        let stat = rustix::fs::fstat(fd)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
            return Ok(PlaneReader::File {
                fd: fd.try_clone_to_owned()?,
                len,
            });
        }
        if !is_dmabuf(fd) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "plane fd is neither a memory file nor a dmabuf",
            ));
        }
        ReadMapping::new(fd, len).map(PlaneReader::Mapped)
    }

    /// Copies `height` rows of `row_len` bytes, starting at `offset` and `stride` apart, into
    /// `out` (packed).
    pub fn copy_rows(
        &self,
        offset: usize,
        stride: usize,
        row_len: usize,
        height: usize,
        out: &mut [u8],
    ) -> Result<(), ReadError> {
        let len = match self {
            PlaneReader::File { len, .. } => *len,
            PlaneReader::Mapped(m) => m.len,
        };
        let span = rows_span(offset, stride, row_len, height)
            .filter(|&end| end <= len)
            .ok_or(ReadError::Bounds(len))?;
        let packed = row_len.checked_mul(height).ok_or(ReadError::Bounds(len))?;
        if out.len() < packed {
            return Err(ReadError::Bounds(len));
        }
        match self {
            PlaneReader::Mapped(m) => {
                m.copy_rows(offset, stride, row_len, height, out);
                Ok(())
            }
            PlaneReader::File { fd, .. } if stride == row_len => {
                read_exact_at(fd, &mut out[..packed], offset)
            }
            PlaneReader::File { fd, .. } => {
                // One read of the whole span, then the rows packed: one syscall per frame.
                let mut scratch = vec![0u8; span - offset];
                read_exact_at(fd, &mut scratch, offset)?;
                for (row, dst) in out[..packed].chunks_exact_mut(row_len).enumerate() {
                    let at = row * stride;
                    dst.copy_from_slice(&scratch[at..at + row_len]);
                }
                Ok(())
            }
        }
    }
}

/// The end of the last row, if it does not overflow.
fn rows_span(offset: usize, stride: usize, row_len: usize, height: usize) -> Option<usize> {
    stride
        .checked_mul(height.checked_sub(1)?)?
        .checked_add(offset)?
        .checked_add(row_len)
}

fn read_exact_at(fd: &OwnedFd, buf: &mut [u8], offset: usize) -> Result<(), ReadError> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done;
        match rustix::io::pread(fd, &mut buf[done..], at as u64) {
            Ok(0) => {
                return Err(ReadError::Shrunk {
                    at: offset,
                    want: buf.len(),
                    got: done,
                });
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(ReadError::Io(e.into())),
        }
    }
    Ok(())
}

/// Whether `fd` is a dmabuf (an anonymous inode named `dmabuf`, as `/proc/self/fd` shows it).
pub fn is_dmabuf(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| {
            let p = p.to_string_lossy();
            p.starts_with("/dmabuf:") || p == "anon_inode:dmabuf"
        })
        .unwrap_or(false)
}

/// A shared, read-only mapping of the first `len` bytes of a dmabuf.
///
/// The client that owns the buffer may keep writing to it (that is how a dmabuf shows new
/// frames), so the bytes are read through [`ReadMapping::copy_rows`] with plain copies and
/// never turned into references that assume they do not change.
#[derive(Debug)]
pub struct ReadMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value, read-only, and never handed out as a reference;
// moving it to another thread moves only the pointer and length.
unsafe impl Send for ReadMapping {}

impl ReadMapping {
    /// Maps `len` bytes of `fd` from offset 0. Only for files whose size cannot shrink
    /// (dmabufs): [`PlaneReader::new`] decides.
    fn new(fd: impl AsFd, len: usize) -> std::io::Result<ReadMapping> {
        if len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty mapping",
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) cannot alias Rust memory;
        // the fd is valid for the call; the result is checked before use.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(ReadMapping { ptr, len })
    }

    /// Copies rows as [`PlaneReader::copy_rows`], whose bounds checks have passed.
    fn copy_rows(
        &self,
        offset: usize,
        stride: usize,
        row_len: usize,
        height: usize,
        out: &mut [u8],
    ) {
        for row in 0..height {
            let src = offset + row * stride;
            // SAFETY: `PlaneReader::copy_rows` checked that the last (largest) row ends within
            // `self.len` and that `out` holds `height` packed rows; the mapping is live for
            // `&self` and a dmabuf cannot shrink under it; `out` is a distinct Rust buffer. A
            // client writing concurrently can change the bytes read, not their bounds.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.ptr.as_ptr().add(src),
                    out.as_mut_ptr().add(row * row_len),
                    row_len,
                );
            }
        }
    }
}

impl Drop for ReadMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nothing borrows the mapping.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(bytes: &[u8]) -> std::fs::File {
        let fd = rustix::fs::memfd_create("plane", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let file = std::fs::File::from(fd);
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, 0).unwrap();
        file
    }

    #[test]
    fn plane_reader_memfd_reads_rows_through_pread() {
        let bytes: Vec<u8> = (0..64).collect();
        let file = memfd(&bytes);
        let reader = PlaneReader::new(&file, 64).unwrap();
        assert!(matches!(reader, PlaneReader::File { .. }));
        let mut out = [0u8; 8];
        reader.copy_rows(4, 16, 4, 2, &mut out).unwrap();
        assert_eq!(out, [4, 5, 6, 7, 20, 21, 22, 23]);
    }

    #[test]
    fn plane_reader_truncated_memfd_is_an_error_not_sigbus() {
        let file = memfd(&[7u8; 4096]);
        let reader = PlaneReader::new(&file, 4096).unwrap();
        file.set_len(0).unwrap();
        let mut out = vec![0u8; 4096];
        let err = reader.copy_rows(0, 64, 64, 64, &mut out).unwrap_err();
        assert!(matches!(err, ReadError::Shrunk { got: 0, .. }), "{err}");
        let err = reader.copy_rows(0, 128, 64, 32, &mut out).unwrap_err();
        assert!(matches!(err, ReadError::Shrunk { .. }), "{err}");
    }

    #[test]
    fn plane_reader_rows_past_len_are_refused() {
        let file = memfd(&[0u8; 64]);
        let reader = PlaneReader::new(&file, 64).unwrap();
        let mut out = [0u8; 128];
        assert!(matches!(
            reader.copy_rows(0, 64, 64, 2, &mut out),
            Err(ReadError::Bounds(64))
        ));
    }

    #[test]
    fn plane_reader_pipe_is_refused() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(PlaneReader::new(&r, 16).is_err());
    }
}
