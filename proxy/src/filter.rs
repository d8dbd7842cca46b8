//! `crossway-proxy filter`: the relay on a plain Wayland socket, for VMMs with a built-in
//! cross-domain host (crosvm `--wayland-sock`, libkrun). They connect as ordinary Wayland
//! clients, their fds arrive as host fds, and the same [`Relay`] enforces the policy and
//! tagging in front of the host compositor.
//!
//! ```text
//!  client ──socket──▶ [guest side]  Relay::from_guest ──▶ [host side] ──▶ host compositor
//!                     [guest side] ◀── Relay::from_host  ◀── [host side]
//! ```
//!
//! One thread per client polls both sockets (non-blocking). Each direction has a bounded
//! queue: while the bytes waiting for one side exceed the limit, the relay stops reading the
//! other side, so a client (or compositor) that stops reading cannot grow memory.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rustix::event::{PollFd, PollFlags};
use tracing::{debug, info, info_span, warn};

use crate::host::HostConnector;
use crate::setup::{RelayArgs, RelaySetup};
use crossway_relay::{
    BufferPath, GuestFd, GuestFdKind, NoSync, Outgoing, Relay, RelayConfig, RelayError, VmStats,
};
use crossway_sys::fdpass::{FdQueue, Received, recv_with_fds};

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Options of `filter`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// The Wayland socket to listen on (an absolute path, or a name under $XDG_RUNTIME_DIR).
    #[arg(long, value_name = "PATH")]
    pub listen: String,
    /// Clients relayed at once; more are refused.
    #[arg(long, default_value_t = 256)]
    pub max_clients: usize,
    /// Bytes queued for one side of one client before the relay stops reading the other.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_queued_bytes: usize,
    /// Host, policy and stats options.
    #[command(flatten)]
    pub relay: RelayArgs,
}

/// Runs `filter` until SIGINT or SIGTERM.
pub fn run(args: FilterArgs) -> Result<()> {
    let path = crate::host::runtime_socket_path(&args.listen).context("--listen")?;
    args.relay.restrict_filesystem(&[&path]);
    let setup = RelaySetup::from_args(&args.relay)?;
    setup.install_stats_dump()?;
    let listener = bind(&path)?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    info!(socket = %path.display(), host = %setup.connector.socket().display(), "filter listening");
    let mut announce = format!("WAYLAND_DISPLAY={}\n", path.display());
    if let Some(control) = &setup.headless_control {
        announce.push_str(&format!(
            "CROSSWAY_HEADLESS_CONTROL={}\n",
            control.display()
        ));
    }
    crate::write_stdout(&announce)?;
    crate::sandbox::restrict_syscalls();

    let result = accept_loop(&listener, &setup, &args, &stop);
    let _ = std::fs::remove_file(&path);
    let finished = setup.finish();
    result.and(finished)
}

/// Binds `path`, replacing a stale socket nobody listens on, never a live one.
fn bind(path: &Path) -> Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                bail!("{} is in use by a running server", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("listening on {}", path.display())),
    }
}

fn accept_loop(
    listener: &UnixListener,
    setup: &RelaySetup,
    args: &FilterArgs,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    let live = Arc::new(AtomicUsize::new(0));
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = [PollFd::new(listener, PollFlags::IN)];
        match rustix::event::poll(&mut pfd, Some(&timespec(Duration::from_millis(200)))) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io::Error::from(e)).context("polling the listening socket"),
        }
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: this client is lost, the filter is not.
                    warn!(%e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            };
            counter += 1;
            if live.load(Ordering::Relaxed) >= args.max_clients {
                warn!(
                    limit = args.max_clients,
                    "max_clients reached; connection refused"
                );
                continue;
            }
            let label = match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) => format!("pid {} (#{counter})", cred.pid.as_raw_nonzero()),
                Err(_) => format!("client #{counter}"),
            };
            let client = ClientTask {
                guest: stream,
                connector: setup.connector.clone(),
                config: setup.config.clone(),
                stats: setup.stats.clone(),
                label,
                max_queued: args.max_queued_bytes.max(READ_CHUNK),
            };
            live.fetch_add(1, Ordering::Relaxed);
            let guard = LiveGuard(live.clone());
            let spawned = std::thread::Builder::new()
                .name("filter-client".into())
                .spawn(move || {
                    let _guard = guard;
                    client.run();
                });
            if let Err(e) = spawned {
                warn!(%e, "no thread for a new client; connection dropped");
            }
        }
    }
    info!(
        clients = counter,
        live = live.load(Ordering::Relaxed),
        "filter stopping"
    );
    Ok(())
}

struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// One accepted client, before its thread starts.
struct ClientTask {
    guest: UnixStream,
    connector: HostConnector,
    config: Arc<RelayConfig>,
    stats: Arc<VmStats>,
    label: String,
    max_queued: usize,
}

impl ClientTask {
    fn run(self) {
        let span = info_span!("client", vm = %self.stats.vm_name, client = %self.label);
        let _enter = span.enter();
        let host = match self.connector.connect() {
            Ok(h) => h,
            Err(e) => {
                warn!(%e, "no host connection for this client");
                return;
            }
        };
        let relay = Relay::new(self.config, self.stats.client(self.label));
        debug!("relaying");
        match relay_client(self.guest, host, relay, self.max_queued) {
            Ok(End::GuestError(msg)) => debug!(%msg, "client done: guest error"),
            Ok(End::HostError(msg)) => debug!(%msg, "client done: host error"),
            Ok(end) => debug!(?end, "client done"),
            Err(e) => warn!(%e, "client relay failed"),
        }
    }
}

/// Why a client's relay ended.
#[derive(Debug)]
enum End {
    GuestClosed,
    HostClosed,
    GuestError(String),
    HostError(String),
}

/// One socket with its outgoing queue.
struct Side {
    sock: UnixStream,
    queue: FdQueue,
    open: bool,
}

impl Side {
    fn new(sock: UnixStream) -> io::Result<Side> {
        sock.set_nonblocking(true)?;
        Ok(Side {
            sock,
            queue: FdQueue::default(),
            open: true,
        })
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }

    fn enqueue(&mut self, bytes: &mut Vec<u8>, fds: &mut Vec<(usize, OwnedFd)>) {
        self.queue.push(bytes, std::mem::take(fds));
        bytes.clear();
    }

    /// Sends what it can without blocking; each fd goes no later than its message.
    fn flush(&mut self) -> io::Result<()> {
        self.queue.flush(self.sock.as_fd()).map(|_| ())
    }

    /// Reads what is there: `Ok(None)` if nothing yet, `Ok(Some((0, _)))` at end of stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
        Ok(match recv_with_fds(self.sock.as_fd(), buf)? {
            Received::Data(n, fds) => Some((n, fds)),
            Received::WouldBlock => None,
            Received::Eof => Some((0, Vec::new())),
        })
    }

    /// Sends what is queued, waiting up to `limit` (the peer is going away).
    fn drain_blocking(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.queued() > 0 && self.open {
            if self.flush().is_err() {
                return;
            }
            let now = Instant::now();
            if self.queued() == 0 || now >= deadline {
                return;
            }
            let mut pfd = [PollFd::new(&self.sock, PollFlags::OUT)];
            let _ = rustix::event::poll(&mut pfd, Some(&timespec(deadline - now)));
        }
    }
}

/// What an fd a client sent is, as far as the socket front can tell.
pub fn classify_fd(fd: BorrowedFd<'_>) -> GuestFdKind {
    use rustix::fs::FileType;
    let Ok(stat) = rustix::fs::fstat(fd) else {
        return GuestFdKind::Other;
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Fifo => return GuestFdKind::Pipe,
        // memfds and shm files: fstat has the size, and seeking would move the offset the
        // client shares with us.
        FileType::RegularFile => {
            return GuestFdKind::Memory {
                size: u64::try_from(stat.st_size).unwrap_or(0),
                path: BufferPath::ShmZeroCopy,
                resource: None,
                shrinkable: rustix::fs::fcntl_get_seals(fd)
                    .map_or(true, |s| !s.contains(rustix::fs::SealFlags::SHRINK)),
            };
        }
        _ => {}
    }
    // dmabufs are anonymous inodes whose size only lseek(SEEK_END) tells (and their offset
    // means nothing).
    match rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0)) {
        Ok(size) => {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dmabuf = link.starts_with("/dmabuf:") || link == "anon_inode:dmabuf";
            GuestFdKind::Memory {
                size,
                path: if dmabuf {
                    BufferPath::DmabufZeroCopy
                } else {
                    BufferPath::ShmZeroCopy
                },
                resource: None,
                // A dmabuf's size is fixed when it is made.
                shrinkable: !dmabuf,
            }
        }
        Err(_) => GuestFdKind::Other,
    }
}

/// Relays one client until either side closes or breaks the protocol.
fn relay_client(
    guest: UnixStream,
    host: UnixStream,
    mut relay: Relay,
    max_queued: usize,
) -> io::Result<End> {
    let mut guest = Side::new(guest)?;
    let mut host = Side::new(host)?;
    let mut out = Outgoing::default();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut sync = NoSync;
    loop {
        // Read a side only while the other side's queue has room.
        let read_guest = guest.open && host.queued() < max_queued;
        let read_host = host.open && guest.queued() < max_queued;
        let flags = |read: bool, side: &Side| {
            let mut f = PollFlags::empty();
            if read {
                f |= PollFlags::IN;
            }
            if side.queued() > 0 {
                f |= PollFlags::OUT;
            }
            f
        };
        let mut pfds = [
            PollFd::new(&guest.sock, flags(read_guest, &guest)),
            PollFd::new(&host.sock, flags(read_host, &host)),
        ];
        match rustix::event::poll(&mut pfds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let (g_rev, h_rev) = (pfds[0].revents(), pfds[1].revents());
        let hup = PollFlags::HUP | PollFlags::ERR;

        if read_guest && g_rev.intersects(PollFlags::IN | hup) {
            match guest.read(&mut buf) {
                Ok(None) => {}
                Ok(Some((0, _))) => return Ok(End::GuestClosed),
                Ok(Some((n, fds))) => {
                    let fds = fds
                        .into_iter()
                        .map(|fd| GuestFd {
                            kind: classify_fd(fd.as_fd()),
                            fd,
                        })
                        .collect();
                    if let Err(e) = relay.from_guest(&buf[..n], fds, &mut sync, &mut out) {
                        return Ok(end_with_error(e, &mut guest, &mut out));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Ok(End::GuestError(e.to_string()));
                }
                Err(_) => return Ok(End::GuestClosed),
            }
        }
        if read_host && h_rev.intersects(PollFlags::IN | hup) {
            match host.read(&mut buf) {
                Ok(None) => {}
                Ok(Some((0, _))) => {
                    // The compositor closed (perhaps after a protocol error to this client):
                    // give the client what it said last.
                    guest.drain_blocking(Duration::from_secs(1));
                    return Ok(End::HostClosed);
                }
                Ok(Some((n, fds))) => {
                    if let Err(e) = relay.from_host(&buf[..n], fds, &mut out) {
                        return Ok(end_with_error(e, &mut guest, &mut out));
                    }
                }
                Err(e) => return Ok(End::HostError(e.to_string())),
            }
        }
        host.enqueue(&mut out.to_host, &mut out.host_fds);
        guest.enqueue(&mut out.to_guest, &mut out.guest_fds);
        out.clear();
        if let Err(e) = host.flush() {
            return Ok(End::HostError(e.to_string()));
        }
        if let Err(e) = guest.flush() {
            debug!(%e, "client socket write failed");
            return Ok(End::GuestClosed);
        }
    }
}

/// Sends the guest what the engine queued for it (a `wl_display.error` for a guest error),
/// then ends the client.
fn end_with_error(e: RelayError, guest: &mut Side, out: &mut Outgoing) -> End {
    guest.enqueue(&mut out.to_guest, &mut out.guest_fds);
    out.clear();
    guest.drain_blocking(Duration::from_secs(1));
    match e {
        RelayError::Guest(msg) => {
            warn!(%msg, "guest client broke the protocol or policy; disconnected");
            End::GuestError(msg)
        }
        RelayError::Host(msg) => {
            warn!(%msg, "host compositor sent what the relay cannot follow; client closed");
            End::HostError(msg)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classify_memfd_is_shm_with_its_size() {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert_eq!(
            classify_fd(fd.as_fd()),
            GuestFdKind::Memory {
                size: 4096,
                path: BufferPath::ShmZeroCopy,
                resource: None,
                shrinkable: true,
            }
        );
    }

    #[test]
    fn classify_memfd_sealed_against_shrinking_is_not_shrinkable() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let fd = rustix::fs::memfd_create("t", flags).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        assert!(matches!(
            classify_fd(fd.as_fd()),
            GuestFdKind::Memory {
                shrinkable: false,
                ..
            }
        ));
    }

    #[test]
    fn classify_pipe_is_pipe_and_socket_is_other() {
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(classify_fd(r.as_fd()), GuestFdKind::Pipe);
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(classify_fd(a.as_fd()), GuestFdKind::Other);
    }

    #[test]
    fn flush_sends_each_fd_no_later_than_its_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut side = Side::new(a).unwrap();
        let mut bytes = vec![7u8; 100];
        // 30 fds: the first 29 at offset 0 cannot travel in one sendmsg.
        let mut fds: Vec<(usize, OwnedFd)> = (0..30)
            .map(|i| {
                let (r, _w) = std::io::pipe().unwrap();
                (if i < 29 { 0 } else { 50 }, OwnedFd::from(r))
            })
            .collect();
        side.enqueue(&mut bytes, &mut fds);
        side.flush().unwrap();
        assert_eq!(side.queued(), 0);
        assert!(side.queue.is_empty());
        let mut peer = Side::new(b).unwrap();
        let mut buf = [0u8; 200];
        let mut total = 0;
        let mut fd_count = Vec::new();
        while let Some((n, fds)) = peer.read(&mut buf).unwrap() {
            if n == 0 {
                break;
            }
            fd_count.push((total, fds.len()));
            total += n;
        }
        assert_eq!(total, 100);
        // First read: 28 fds with the first byte; the 29th (offset 0) with byte 1; the 30th
        // with its message at 50 or earlier.
        assert_eq!(fd_count.iter().map(|(_, n)| n).sum::<usize>(), 30);
        assert_eq!(fd_count[0], (0, 28));
        assert!(fd_count.iter().all(|&(at, n)| n == 0 || at <= 50));
    }
}
