//! Eventfds that wake a poll loop: made, woken and drained one way (rustix). The vhost-user
//! side keeps vmm-sys-util's `EventFd`, the type the vhost and vhost-user-backend APIs take.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::EventfdFlags;

/// A non-blocking, close-on-exec eventfd at zero.
pub fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Adds one to an eventfd. A full counter (2^64 - 2 wakes not drained) already wakes the
/// reader, so a failure is ignored.
pub fn wake(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets an eventfd (a non-blocking one at zero stays so).
pub fn drain(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn eventfd_wake_then_drain_leaves_it_empty() {
        let fd = eventfd().unwrap();
        wake(fd.as_fd());
        wake(fd.as_fd());
        let mut b = [0u8; 8];
        assert_eq!(rustix::io::read(&fd, &mut b).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(b), 2);
        wake(fd.as_fd());
        drain(fd.as_fd());
        assert_eq!(rustix::io::read(&fd, &mut b), Err(rustix::io::Errno::AGAIN));
    }
}
