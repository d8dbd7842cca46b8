//! File descriptors lent by the vhost crate as raw numbers, made owned. (Descriptor passing
//! over the loopback's socket uses rustix's safe `SCM_RIGHTS` API in `wire.rs`.)

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Duplicates `raw` (close-on-exec) into an fd this process owns.
pub fn dup_raw(raw: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes an integer argument only; an invalid `raw` makes it
    // fail with EBADF, which is checked.
    let fd = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fcntl, is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
