//! Unix stream sockets that carry fds (`SCM_RIGHTS`), without blocking: one `sendmsg` and
//! `recvmsg` with libwayland's limits, and the queue the relay's transports send from, which
//! makes sure each fd reaches the peer no later than the first byte of its message.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

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
            "control message truncated: the peer sent more fds than fit in one message",
        ));
    }
    if r.bytes == 0 && fds.is_empty() {
        return Ok(Received::Eof);
    }
    Ok(Received::Data(r.bytes, fds))
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
    pub fn flush(&mut self, sock: &UnixStream) -> io::Result<bool> {
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
            let Some(n) = send_with_fds(sock.as_fd(), &chunk[..end], &borrowed)? else {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        assert!(q.flush(&ours).unwrap());
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
}
