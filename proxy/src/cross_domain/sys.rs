//! The few system calls the cross-domain context makes on host fds besides socket I/O and its
//! wake eventfd (both in `crossway_sys`): pipes, and telling memory from pipes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A pipe: (read end non-blocking, write end blocking), both close-on-exec. The write end goes
/// to the host compositor, which may expect a blocking fd.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    set_nonblocking(r.as_fd())?;
    Ok((r, w))
}

/// Sets `O_NONBLOCK` on `fd` (a pipe end we own).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// What a host fd is, as the cross-domain protocol can carry it (reference §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFdClass {
    /// Seekable memory (memfd, dmabuf, file) of this many bytes.
    Memory(u64),
    /// The write end of a pipe.
    WritePipe,
    /// Something the protocol cannot carry.
    Other,
}

/// Classifies a host fd the way rutabaga does: `lseek(SEEK_END)` succeeds ⇒ memory of that size
/// (the position is put back, the compositor shares the file description); else `O_WRONLY` ⇒
/// a write pipe.
pub fn classify(fd: BorrowedFd<'_>) -> HostFdClass {
    use rustix::fs::SeekFrom;
    if let Ok(pos) = rustix::fs::seek(fd, SeekFrom::Current(0))
        && let Ok(end) = rustix::fs::seek(fd, SeekFrom::End(0))
    {
        let _ = rustix::fs::seek(fd, SeekFrom::Start(pos));
        return HostFdClass::Memory(end);
    }
    match rustix::fs::fcntl_getfl(fd) {
        Ok(flags) if flags & rustix::fs::OFlags::ACCMODE == rustix::fs::OFlags::WRONLY => {
            HostFdClass::WritePipe
        }
        _ => HostFdClass::Other,
    }
}

/// Writes without blocking; `Ok(None)` if the pipe is full.
pub fn write_nonblocking(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<Option<usize>> {
    match rustix::io::write(fd, data) {
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads without blocking; `Ok(None)` if nothing is there, `Ok(Some(0))` at end of file.
pub fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match rustix::io::read(fd, buf) {
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
