//! `crossway-sys`: the small operating-system helpers both programs share, each a safe wrapper
//! over one kernel interface, so that no other crate repeats them (crosvm's `base`,
//! rutabaga's `rutabaga_os`).
//!
//! ```text
//!  crossway-virtio, crossway-loopback, crossway-proxy, crossway-agent
//!        └──▶ fdpass (SCM_RIGHTS on Unix streams) · memfd (sealed memfds)
//!             · eventfd (wake a poll loop) · page_size
//! ```
//!
//! [`fdpass`] passes descriptors, blocking (whole buffers) or not (one `sendmsg`, and the
//! queue the relays send from), and refuses truncated control messages; [`memfd`] makes
//! sealed memfds and reads their seals; [`eventfd`] makes, wakes and drains eventfds.
//! Everything goes through rustix; the one `unsafe` block left borrows a raw fd number the
//! vhost crate lends ([`fdpass::dup_raw`]).

pub mod eventfd;
pub mod fdpass;
pub mod memfd;

/// Reads exactly `buf.len()` bytes of `fd` at `offset` (`pread`, retried on `EINTR` and short
/// reads). A file that ends first is `UnexpectedEof`, which is how a copy out of a file the
/// peer truncated fails: an error, never the `SIGBUS` a mapping of it would raise.
pub fn read_exact_at(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        match rustix::io::pread(fd, &mut buf[done..], at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The size of a memory page (from the auxiliary vector, no system call).
pub fn page_size() -> usize {
    rustix::param::page_size()
}
