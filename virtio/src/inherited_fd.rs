//! Serving an already-connected vhost-user socket (libvirt's `--fd`).
//!
//! vhost-user-backend 0.24 can only accept from a listener (`start_daemon` and the request
//! handler are private). Rather than fork the crate, the backend listens on a private
//! abstract-namespace socket and a byte pump copies bytes, with their `SCM_RIGHTS` fds, between it
//! and the inherited connection, preserving each chunk's fds (vhost-user attaches fds to the
//! header of a message, and a Unix stream read never merges past a chunk that carries fds).
//! Fds the VMM passes (memory regions, kick/call eventfds, the backend request socket, the GPU
//! socket) are themselves passed through, so only the main channel is relayed.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::thread::JoinHandle;

use vhost::vhost_user::Listener;

use crossway_sys::fdpass::{MAX_FDS, read_exact_with_fds, send_all_with_fds};

/// The running relay.
#[derive(Debug)]
pub struct Relay {
    outer: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Shuts both sockets and joins the relay threads.
    pub fn stop(self) {
        let _ = self.outer.shutdown(std::net::Shutdown::Both);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts relaying `outer` (the VMM's connected socket); returns the listener the daemon should
/// accept from.
pub fn start(outer: UnixStream) -> io::Result<(Listener, Relay)> {
    let name = format!(
        "crossway-proxy-fd-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = UnixListener::bind_addr(&addr)?;
    let inner = UnixStream::connect_addr(&addr)?;
    let (o1, o2) = (outer.try_clone()?, outer.try_clone()?);
    let (i1, i2) = (inner.try_clone()?, inner);
    let a = std::thread::Builder::new()
        .name("vu-relay-in".into())
        .spawn(move || pump(&o1, &i1))?;
    let b = std::thread::Builder::new()
        .name("vu-relay-out".into())
        .spawn(move || pump(&i2, &o2))?;
    Ok((
        Listener::from(listener),
        Relay {
            outer,
            threads: vec![a, b],
        },
    ))
}

/// Largest vhost-user payload relayed (the biggest standard one, GET_SHMEM_CONFIG's reply,
/// is 2056 bytes).
const MAX_PAYLOAD: usize = 64 * 1024;

/// Copies whole vhost-user messages from `from` to `to` until `from` closes, then shuts `to`
/// down. Reading message by message keeps each message's fds with its own header: a raw byte
/// copy could read the tail of one message together with the next one's fds.
fn pump(from: &UnixStream, to: &UnixStream) {
    let mut buf = vec![0u8; 12 + MAX_PAYLOAD];
    loop {
        let mut fds = Vec::new();
        if !matches!(read_exact_fds(from, &mut buf[..12], &mut fds), Ok(true)) {
            break;
        }
        let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if size > MAX_PAYLOAD
            || !matches!(
                read_exact_fds(from, &mut buf[12..12 + size], &mut fds),
                Ok(true)
            )
        {
            break;
        }
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let msg = IoSlice::new(&buf[..12 + size]);
        if send_all_with_fds(to.as_fd(), &[msg], &borrowed).is_err() {
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
            return;
        }
        // `fds` drop here: the receiver holds its own copies.
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn read_exact_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    read_exact_with_fds(sock.as_fd(), buf, fds, MAX_FDS)
}
