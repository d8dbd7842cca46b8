//! Descriptor passing (`SCM_RIGHTS` on Unix streams), the one implementation in Crossway,
//! through rustix's safe API:
//! - blocking, for the loopback VM's socket and the vhost-user relay: whole buffers with fds
//!   riding on their first byte ([`send_all_with_fds`], [`read_exact_with_fds`]);
//! - non-blocking, for Wayland sockets with libwayland's limits: one `sendmsg`/`recvmsg`
//!   ([`send_with_fds`], [`recv_with_fds`]) and the queue the relays send from ([`FdQueue`]),
//!   which makes sure each fd reaches the peer no later than the first byte of its message;
//! - taking ownership of fds the vhost crate lends as raw numbers ([`dup_raw`]).
//!
//! Every receive checks `MSG_CTRUNC`: a control message cut short means fds were lost, so the
//! stream cannot be trusted any more; the call fails with `InvalidData` and closes the fds that
//! did arrive.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most fds one blocking call sends or receives: vhost-user's
/// `VHOST_MEMORY_BASELINE_NREGIONS`, the largest count the loopback and vhost-user protocols
/// use.
pub const MAX_FDS: usize = 32;

/// Most fds one non-blocking `sendmsg`/`recvmsg` carries: libwayland's `MAX_FDS_OUT`, which is
/// also the cross-domain identifier limit (a compositor's libwayland drops a connection whose
/// control message was truncated).
pub const MAX_FDS_PER_MSG: usize = 28;

/// Room for a control message, aligned for `cmsghdr` (whose alignment is `size_t`'s).
#[repr(C, align(8))]
struct CmsgSpace([MaybeUninit<u8>; rustix::cmsg_space!(ScmRights(MAX_FDS))]);

/// The error a truncated control message becomes.
fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "control message truncated: the peer sent more fds than fit in one message",
    )
}

/// One `recvmsg` into `buf` with room for `max_fds` fds, close-on-exec. `Ok(None)` on `EINTR`
/// or `EAGAIN`; a truncated control message is an error (the fds that came are closed).
fn recv_once(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    flags: RecvFlags,
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    // `cmsg_space!` adds slack for aligning an unaligned buffer; this one is aligned, so
    // without cutting the slack off the kernel would fit up to two fds more than `max_fds`
    // and the limit would not be exact.
    let mut space = CmsgSpace([MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))]);
    let room = rustix::cmsg_space!(ScmRights(max_fds.min(MAX_FDS))) - align_of::<usize>();
    let mut control = RecvAncillaryBuffer::new(&mut space.0[..room]);
    let r = match rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        flags | RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(r) => r,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = msg {
            fds.extend(it);
        }
    }
    if r.flags.contains(ReturnFlags::CTRUNC) {
        drop(fds);
        return Err(truncated());
    }
    Ok(Some((r.bytes, fds)))
}

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
/// the first byte, and `UnexpectedEof` if it closed after. Retries `EINTR`; more than
/// [`MAX_FDS`] fds in one control message is `InvalidData`.
pub fn read_exact_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<bool> {
    let mut filled = 0usize;
    while filled < buf.len() {
        // A blocking socket returns `None` only for EINTR: read again.
        let Some((n, received)) = recv_once(sock, &mut buf[filled..], MAX_FDS, RecvFlags::empty())?
        else {
            continue;
        };
        let room = max_fds.saturating_sub(fds.len());
        fds.extend(received.into_iter().take(room));
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

/// `sendmsg` without blocking: `bytes` (not empty) with `fds` (at most [`MAX_FDS_PER_MSG`])
/// attached. Returns the bytes sent, or `None` if the socket is full. Retries `EINTR`.
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
/// (more fds than [`MAX_FDS_PER_MSG`]) is an `InvalidData` error: fds were lost, and the ones
/// that arrived are closed.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    Ok(
        match recv_once(sock, buf, MAX_FDS_PER_MSG, RecvFlags::DONTWAIT)? {
            None => Received::WouldBlock,
            Some((0, fds)) if fds.is_empty() => Received::Eof,
            Some((n, fds)) => Received::Data(n, fds),
        },
    )
}

/// Bytes and fds a socket did not take yet, each fd tagged with the stream offset of its
/// message. Used for the host side of a cross-domain channel and both sides of `filter`.
#[derive(Debug, Default)]
pub struct FdQueue {
    bytes: VecDeque<u8>,
    /// Fds with the absolute stream offset of their message.
    fds: VecDeque<(u64, OwnedFd)>,
    /// Absolute offset of `bytes[0]`.
    base: u64,
}

impl FdQueue {
    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.fds.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends what one relay call produced: `bytes`, and `fds` tagged with offsets into them.
    pub fn push(&mut self, bytes: &[u8], fds: Vec<(usize, OwnedFd)>) {
        let at = self.base + self.bytes.len() as u64;
        let mut fds = fds;
        fds.sort_by_key(|(o, _)| *o);
        self.fds
            .extend(fds.into_iter().map(|(o, fd)| (at + o as u64, fd)));
        self.bytes.extend(bytes);
    }

    /// Sends what the socket takes. `Ok(true)` when everything went.
    pub fn flush(&mut self, sock: BorrowedFd<'_>) -> io::Result<bool> {
        loop {
            if self.bytes.is_empty() {
                if !self.fds.is_empty() {
                    // Fds past the last byte belong to no message: nothing can use them.
                    tracing::warn!(fds = self.fds.len(), "fds without a message dropped");
                    self.fds.clear();
                }
                return Ok(true);
            }
            let base = self.base;
            let chunk = self.bytes.make_contiguous();
            // Every fd whose message starts before `end` goes with this write or earlier; at
            // most MAX_FDS_PER_MSG per write, so when more are due, cut the bytes where the
            // next fd is due (after one byte at least: fds sent without data are lost).
            let mut end = chunk.len();
            if let Some(&(next, _)) = self.fds.get(MAX_FDS_PER_MSG)
                && next < base + end as u64
            {
                end = usize::try_from(next.saturating_sub(base))
                    .unwrap_or(end)
                    .max(1);
            }
            let borrowed: Vec<BorrowedFd<'_>> = self
                .fds
                .iter()
                .take(MAX_FDS_PER_MSG)
                .take_while(|(o, _)| *o < base + end as u64)
                .map(|(_, fd)| fd.as_fd())
                .collect();
            let nfds = borrowed.len();
            let Some(n) = send_with_fds(sock, &chunk[..end], &borrowed)? else {
                return Ok(false);
            };
            drop(borrowed);
            self.bytes.drain(..n);
            self.base += n as u64;
            // The fds went with the first byte.
            self.fds.drain(..nfds);
        }
    }
}

/// Duplicates `raw` (close-on-exec) into an fd this process owns.
pub fn dup_raw(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::BADF.raw_os_error(),
        ));
    }
    // SAFETY: `raw` is not -1 (checked above) and the borrow lives only for the fcntl below,
    // which reads no memory of ours and neither keeps nor closes the fd; a number the caller
    // does not hold open makes it fail with EBADF, which is returned.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn eventfd() -> OwnedFd {
        rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn fd_queue_flush_sends_each_fd_no_later_than_its_message() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // 30 fds two bytes apart: the first 28 fit one sendmsg, which must end before the
        // 29th's message.
        let offsets: Vec<usize> = (0..30).map(|i| i * 2).collect();
        let fds = offsets.iter().map(|&o| (o, eventfd())).collect();
        let mut q = FdQueue::default();
        q.push(&[9u8; 64], fds);
        assert!(q.flush(ours.as_fd()).unwrap());
        assert!(q.is_empty());
        let (mut bytes, mut fds) = (0, 0);
        let mut buf = [0u8; 64];
        while bytes < 64 {
            let Received::Data(n, got) = recv_with_fds(theirs.as_fd(), &mut buf).unwrap() else {
                panic!("stream ended early");
            };
            assert!(got.len() <= MAX_FDS_PER_MSG);
            (bytes, fds) = (bytes + n, fds + got.len());
            let due = offsets.iter().filter(|&&o| o < bytes).count();
            assert!(fds >= due, "{due} fds due by byte {bytes}, {fds} arrived");
        }
        assert_eq!((bytes, fds), (64, 30));
    }

    /// Sends one byte with `n` fds in a single control message (more than libwayland's 28).
    fn send_many(sock: BorrowedFd<'_>, n: usize) {
        let owned: Vec<OwnedFd> = (0..n).map(|_| eventfd()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = owned.iter().map(|f| f.as_fd()).collect();
        send_all_with_fds(sock, &[IoSlice::new(b"x")], &borrowed).unwrap();
    }

    #[test]
    fn recv_with_fds_truncated_control_message_is_invalid_data() {
        let (a, b) = UnixStream::pair().unwrap();
        send_many(a.as_fd(), MAX_FDS_PER_MSG + 2);
        let e = recv_with_fds(b.as_fd(), &mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn recv_with_fds_at_the_limit_keeps_every_fd() {
        let (a, b) = UnixStream::pair().unwrap();
        send_many(a.as_fd(), MAX_FDS_PER_MSG);
        let Received::Data(1, fds) = recv_with_fds(b.as_fd(), &mut [0u8; 8]).unwrap() else {
            panic!("expected one byte");
        };
        assert_eq!(fds.len(), MAX_FDS_PER_MSG);
    }

    #[test]
    fn read_exact_with_fds_truncated_control_message_is_invalid_data() {
        let (a, b) = UnixStream::pair().unwrap();
        let owned: Vec<OwnedFd> = (0..MAX_FDS + 1).map(|_| eventfd()).collect();
        let borrowed: Vec<BorrowedFd<'_>> = owned.iter().map(|f| f.as_fd()).collect();
        // More than one blocking call may send: build the control message by hand.
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        rustix::net::sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty()).unwrap();
        let e = read_exact_with_fds(b.as_fd(), &mut [0u8; 1], &mut Vec::new(), 64).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn dup_raw_of_a_closed_fd_is_an_error() {
        assert!(dup_raw(-1).is_err());
    }

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
