//! The few system calls the cross-domain context makes on host fds: Wayland socket I/O with
//! `SCM_RIGHTS`, pipes, an eventfd to wake the worker, and telling memory from pipes.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most fds one `sendmsg`/`recvmsg` carries: libwayland's `MAX_FDS_OUT`, which is also the
/// cross-domain identifier limit (a compositor's libwayland drops a connection whose control
/// message was truncated).
pub const MAX_FDS_PER_MSG: usize = 28;

/// `sendmsg` without blocking: `bytes` (not empty) with `fds` attached. Returns the bytes sent,
/// or `None` if the socket is full.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<Option<usize>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many fds for one sendmsg",
            ));
        }
        return match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(Some(n)),
            Err(rustix::io::Errno::AGAIN) => Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// What one `recvmsg` brought.
#[derive(Debug)]
pub enum Received {
    /// Bytes (at least one) and the fds that came with them.
    Data(usize, Vec<OwnedFd>),
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its end.
    Eof,
}

/// `recvmsg` without blocking into `buf`, fds close-on-exec. A truncated control message
/// (more fds than [`MAX_FDS_PER_MSG`]) is an error: fds were lost.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = match rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(r) => r,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return Ok(Received::WouldBlock),
        Err(e) => return Err(e.into()),
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = msg {
            fds.extend(it);
        }
    }
    if r.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control message truncated: the host compositor sent more fds than fit",
        ));
    }
    if r.bytes == 0 && fds.is_empty() {
        return Ok(Received::Eof);
    }
    Ok(Received::Data(r.bytes, fds))
}

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

/// A non-blocking eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?)
}

/// Adds one to an eventfd.
pub fn wake(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets an eventfd.
pub fn drain_eventfd(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
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
