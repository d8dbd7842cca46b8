//! Sealed memfds, made one way for both programs: [`Memfd`] (the host's shadow of a guest
//! blob, HOST3D blob storage, the loopback VM's guest memory) and [`sealed_memfd`] (the
//! agent's read-only keymaps and format tables), through rustix's safe API.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use rustix::fs::MemfdFlags;
pub use rustix::fs::SealFlags;

/// A close-on-exec memfd that allows sealing, named `name` (NULs replaced).
fn create(name: &str) -> std::io::Result<File> {
    let name = name.replace('\0', "_");
    let fd = rustix::fs::memfd_create(
        name.as_str(),
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    Ok(File::from(fd))
}

/// Why a memfd could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    /// `memfd_create` failed.
    #[error("memfd_create failed")]
    Create(#[source] std::io::Error),
    /// `ftruncate` failed.
    #[error("sizing a memfd to {0} bytes failed")]
    Size(u64, #[source] std::io::Error),
    /// `F_ADD_SEALS` failed.
    #[error("sealing a memfd failed")]
    Seal(#[source] std::io::Error),
    /// A write into it failed.
    #[error("writing into a memfd failed")]
    Write(#[source] std::io::Error),
}

/// A sized, sealed (shrink and grow) memfd.
#[derive(Debug)]
pub struct Memfd {
    file: File,
    size: u64,
}

impl Memfd {
    /// Creates a memfd of `size` bytes named `name` (visible in /proc/PID/fd), sealed against
    /// shrinking and growing.
    pub fn new(name: &str, size: u64) -> Result<Memfd, MemfdError> {
        let file = create(name).map_err(MemfdError::Create)?;
        file.set_len(size).map_err(|e| MemfdError::Size(size, e))?;
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW)
            .map_err(|e| MemfdError::Seal(e.into()))?;
        Ok(Memfd { file, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `data` at `offset`; the range must lie inside the memfd.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), MemfdError> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(MemfdError::Write(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )));
        }
        self.file
            .write_all_at(data, offset)
            .map_err(MemfdError::Write)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A new fd for the same memory (for the compositor, or SHMEM_MAP).
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }
}

/// The bytes of `src` in a new writable memfd of `len` bytes (the rest zeros): what a VMM can
/// map for a host blob whose fd is shorter than the page-rounded range the guest maps, or that
/// it cannot map read-write. QEMU 11.1 refuses `SHMEM_MAP` of an fd shorter than `fd_offset +
/// len` ("backing store size 0xe0 is too small") and maps every fd read-write whatever the
/// request's flags (a write-sealed memfd fails with EPERM), where the kernel would have shown
/// zeros past a short fd's end. Such fds are the compositor's read-only tables (format tables,
/// keymaps), so the copy is small and taken once per mapping; the guest's writes land in its
/// own copy, never in the compositor's table.
pub fn covering_copy(src: BorrowedFd<'_>, len: u64) -> Result<OwnedFd, MemfdError> {
    let have = rustix::fs::fstat(src)
        .map_err(|e| MemfdError::Write(e.into()))?
        .st_size;
    let have = u64::try_from(have).unwrap_or(0).min(len);
    let m = Memfd::new("crossway-covering", len)?;
    let file = File::from(src.try_clone_to_owned().map_err(MemfdError::Write)?);
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < have {
        let n = usize::try_from(have - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        file.read_exact_at(&mut buf[..n], at)
            .map_err(MemfdError::Write)?;
        m.write_at(at, &buf[..n])?;
        at += n as u64;
    }
    Ok(m.file.into())
}

/// A memfd holding `bytes`, sealed against writes and resizing and then against new seals
/// (clients map it read-only or private, as keymaps and format tables require).
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let file = create(name)?;
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(file.into())
}

/// The seals set on `fd` (`F_GET_SEALS`), or an error if it is not a sealable memfd.
pub fn seals(fd: impl AsFd) -> std::io::Result<SealFlags> {
    Ok(rustix::fs::fcntl_get_seals(fd)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn memfd_new_is_sized_and_sealed() {
        let m = Memfd::new("t", 8192).unwrap();
        assert_eq!(m.file().metadata().unwrap().len(), 8192);
        let s = seals(m.file()).unwrap();
        assert!(s.contains(SealFlags::SHRINK | SealFlags::GROW));
        assert!(!s.contains(SealFlags::WRITE));
    }

    #[test]
    fn sealed_memfd_refuses_writes_and_resizing() {
        let f = File::from(sealed_memfd("t", b"keymap").unwrap());
        assert!(f.write_all_at(b"x", 0).is_err());
        assert!(f.set_len(1).is_err());
        let mut b = [0; 6];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"keymap");
        assert!(seals(&f).unwrap().contains(SealFlags::SEAL));
    }

    #[test]
    fn covering_copy_of_short_fd_is_page_long_zero_filled_and_writable() {
        let short = Memfd::new("format-table", 224).unwrap();
        short.write_at(0, &[7; 224]).unwrap();
        let fd = covering_copy(short.file().as_fd(), 4096).unwrap();
        let f = File::from(fd);
        assert_eq!(f.metadata().unwrap().len(), 4096);
        let mut got = vec![0u8; 4096];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got[..224].iter().all(|&b| b == 7));
        assert!(got[224..].iter().all(|&b| b == 0));
        assert!(!seals(&f).unwrap().contains(SealFlags::WRITE));
        f.write_all_at(b"guest", 0).unwrap();
        let mut orig = [0u8; 5];
        short.read_at(0, &mut orig).unwrap();
        assert_eq!(orig, [7; 5]);
    }

    #[test]
    fn memfd_write_past_end_is_error() {
        let m = Memfd::new("t", 16).unwrap();
        assert!(m.write_at(10, &[0; 7]).is_err());
        assert!(m.write_at(u64::MAX, &[0; 1]).is_err());
        m.write_at(8, &[1; 8]).unwrap();
    }
}
