//! Descriptor passing for Crossway's blocking Unix-stream protocols
//! (the loopback VM's socket, the vhost-user relay): whole buffers with `SCM_RIGHTS` fds
//! riding on their first byte, through rustix's safe API; plus taking ownership of fds the
//! vhost crate lends as raw numbers.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most fds one call sends or receives: vhost-user's `VHOST_MEMORY_BASELINE_NREGIONS`, the
/// largest count either protocol uses.
pub const MAX_FDS: usize = 32;

/// Sends all of `bufs`, with `fds` attached to the first `sendmsg` (so to its first byte); what
/// that call leaves unsent follows plainly. Retries `EINTR`.
pub fn send_all_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one sendmsg",
        ));
    }
    let mut sent = loop {
        match rustix::net::sendmsg(sock, bufs, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    while sent < total {
        let (i, skip) = position(bufs, sent);
        match rustix::net::send(sock, &bufs[i][skip..], SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Which buffer byte `at` of the concatenation of `bufs` is in, and where in it.
fn position(bufs: &[IoSlice<'_>], mut at: usize) -> (usize, usize) {
    for (i, b) in bufs.iter().enumerate() {
        if at < b.len() {
            return (i, at);
        }
        at -= b.len();
    }
    (bufs.len(), 0)
}

/// Fills `buf` from the stream, keeping fds that arrive on the way (close-on-exec) in `fds` up
/// to `max_fds` in all; extra ones are closed. Returns `Ok(false)` if the peer closed before
/// the first byte, and `UnexpectedEof` if it closed after. Retries `EINTR`.
pub fn read_exact_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<bool> {
    let mut filled = 0usize;
    while filled < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[filled..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                let room = max_fds.saturating_sub(fds.len());
                fds.extend(received.take(room));
            }
        }
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        filled += n;
    }
    Ok(true)
}

/// Duplicates `raw` (close-on-exec) into an fd this process owns.
pub fn dup_raw(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes an integer argument only; an invalid `raw` makes it
    // fail with EBADF, which is checked.
    let fd = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fcntl, is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn fdpass_fds_ride_with_first_byte_and_excess_is_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p1, p2) = UnixStream::pair().unwrap();
        send_all_with_fds(
            a.as_fd(),
            &[IoSlice::new(b"he"), IoSlice::new(b"llo")],
            &[p1.as_fd(), p2.as_fd()],
        )
        .unwrap();
        let mut buf = [0u8; 5];
        let mut fds = Vec::new();
        assert!(read_exact_with_fds(b.as_fd(), &mut buf, &mut fds, 1).unwrap());
        assert_eq!(&buf, b"hello");
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(!read_exact_with_fds(b.as_fd(), &mut buf, &mut fds, 1).unwrap());
    }

    #[test]
    fn fdpass_close_mid_buffer_is_unexpected_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        send_all_with_fds(a.as_fd(), &[IoSlice::new(b"ab")], &[]).unwrap();
        drop(a);
        let mut buf = [0u8; 4];
        let e = read_exact_with_fds(b.as_fd(), &mut buf, &mut Vec::new(), 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
