//! Serving an already-connected vhost-user socket (libvirt's `--fd`).
//!
//! vhost-user-backend 0.24 can only accept from a listener (`start_daemon` and the request
//! handler are private). Rather than fork the crate, the backend listens on a private
//! abstract-namespace socket and a relay copies bytes, with their `SCM_RIGHTS` fds, between it
//! and the inherited connection, preserving each chunk's fds (vhost-user attaches fds to the
//! header of a message, and a Unix stream read never merges past a chunk that carries fds).
//! Fds the VMM passes (memory regions, kick/call eventfds, the backend request socket, the GPU
//! socket) are themselves passed through, so only the main channel is relayed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::thread::JoinHandle;

use vhost::vhost_user::Listener;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most fds one vhost-user message carries (`VHOST_MEMORY_BASELINE_NREGIONS`).
const MAX_FDS: usize = 32;

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
        if read_exact_fds(from, &mut buf[..12], &mut fds).is_err() {
            break;
        }
        let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if size > MAX_PAYLOAD || read_exact_fds(from, &mut buf[12..12 + size], &mut fds).is_err() {
            break;
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let msg = &buf[..12 + size];
        let mut sent = 0;
        while sent < msg.len() {
            let r = if sent == 0 {
                to.send_with_fds(&[msg], &raw)
            } else {
                to.send_with_fds(&[&msg[sent..]], &[])
            };
            match r {
                Ok(k) if k > 0 => sent += k,
                _ => {
                    let _ = from.shutdown(std::net::Shutdown::Both);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
        // `fds` drop here: the receiver holds its own copies.
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn read_exact_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let (n, got) = recv(sock, &mut buf[at..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        fds.extend(got);
        at += n;
    }
    Ok(())
}

fn recv(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at `buf`, which is live and exclusively borrowed for the call
    // and at least `iov_len` bytes long; `fds` has room for MAX_FDS descriptors.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let owned = fds[..nfds.min(MAX_FDS)]
        .iter()
        .filter(|&&fd| fd >= 0)
        // SAFETY: recvmsg installed these fds in our table for us; nothing else owns them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    Ok((n, owned))
}
