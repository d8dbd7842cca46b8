//! Read-only mappings of client buffers (dmabuf planes). The only `unsafe` of the compositor.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// A shared, read-only mapping of the first `len` bytes of a file.
///
/// The client that owns the file may keep writing to it (that is how a dmabuf shows new
/// frames), so the bytes are read through [`ReadMapping::copy_rows`] with volatile-free plain
/// copies and never turned into references that assume they do not change.
#[derive(Debug)]
pub struct ReadMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value, read-only, and never handed out as a reference;
// moving it to another thread moves only the pointer and length.
unsafe impl Send for ReadMapping {}

impl ReadMapping {
    /// Maps `len` bytes of `fd` from offset 0.
    pub fn new(fd: impl AsFd, len: usize) -> std::io::Result<ReadMapping> {
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

    /// Copies `height` rows of `row_len` bytes, starting at `offset` and `stride` apart, into
    /// `out` (packed). Returns `None` if any row is outside the mapping.
    pub fn copy_rows(
        &self,
        offset: usize,
        stride: usize,
        row_len: usize,
        height: usize,
        out: &mut [u8],
    ) -> Option<()> {
        let last_start = stride
            .checked_mul(height.checked_sub(1)?)?
            .checked_add(offset)?;
        if last_start.checked_add(row_len)? > self.len || out.len() < row_len.checked_mul(height)? {
            return None;
        }
        for row in 0..height {
            let src = offset + row * stride;
            // SAFETY: `src + row_len <= self.len` was checked above for the last (largest)
            // row; the mapping is live for `&self`; `out` is a distinct Rust buffer. A client
            // writing concurrently can change the bytes read, not their bounds.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.ptr.as_ptr().add(src),
                    out.as_mut_ptr().add(row * row_len),
                    row_len,
                );
            }
        }
        Some(())
    }
}

impl Drop for ReadMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nothing borrows the mapping.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
