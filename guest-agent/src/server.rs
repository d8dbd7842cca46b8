//! The agent's sockets: the listening Wayland socket (or one systemd passed), one thread per
//! guest client with its own device file and channel, and the optional app the agent runs.
//!
//! A client thread polls the client socket, the channel's event fd and the pipes of its
//! clipboard transfers, and hands what arrives to its [`Session`]. A client that breaks the
//! protocol gets `wl_display.error` and is closed; a host that closes the channel ends that
//! client only, with an error naming the cause. Other clients keep going either way.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use crossway_protocols::virtgpu::VirtGpu;
use crossway_sys::fdpass::{self, Received};
use rustix::event::{PollFd, PollFlags};

use crate::channel::{Channel, ChannelConfig, ChannelMessage};
use crate::session::{AgentStats, Session, SessionConfig, SessionError};

/// Bytes read from a client at once.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read from a clipboard pipe at once (one cross-domain WRITE).
const PIPE_CHUNK: usize = 4072;
/// Bytes a pipe takes without blocking once poll says it is writable (Linux `PIPE_BUF`).
const PIPE_BUF: usize = 4096;
/// How long a client being closed is given to read its last events and its error.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Opens one device file for one client: the device and the `dev_t` of its render node.
pub type OpenDevice<D> = dyn Fn() -> Result<(D, Option<u64>)> + Send + Sync;

/// What every client thread shares.
pub struct Shared<D> {
    /// Opens the device.
    pub open: Box<OpenDevice<D>>,
    /// Channel settings.
    pub channel: ChannelConfig,
    /// Session settings (the guest `dev_t` is filled per device).
    pub session: SessionConfig,
    /// Counters.
    pub stats: Arc<AgentStats>,
    /// Clients now connected.
    pub live: AtomicUsize,
    /// Most clients at once.
    pub max_clients: usize,
}

impl<D> std::fmt::Debug for Shared<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("live", &self.live)
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

/// The socket path for `--socket`: a path as given, a bare name in `$XDG_RUNTIME_DIR`.
pub fn socket_path(socket: &str) -> Result<PathBuf> {
    if socket.contains('/') {
        return Ok(PathBuf::from(socket));
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .context("XDG_RUNTIME_DIR is not set; give --socket an absolute path")?;
    Ok(Path::new(&dir).join(socket))
}

/// The listening socket systemd passed (`LISTEN_FDS=1`, `LISTEN_PID` = this process).
pub fn socket_from_systemd() -> Result<Option<UnixListener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let fds: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_ok || fds == 0 {
        return Ok(None);
    }
    if fds != 1 {
        bail!("systemd passed {fds} sockets; crossway-agent takes exactly one");
    }
    // SAFETY: with LISTEN_PID naming this process, fd 3 (SD_LISTEN_FDS_START) was passed by
    // the service manager for this process to own; nothing else in it has claimed fd 3.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let listener = UnixListener::from(fd);
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::CLOEXEC)
        .context("LISTEN_FDS socket")?;
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called before any thread of this process is started (run() checks systemd
        // activation first), so no other thread reads the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    Ok(Some(listener))
}

/// A bound socket and the lock file beside it (`PATH.lock`, as libwayland does), removed on
/// drop.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    path: Option<PathBuf>,
    _lock: Option<std::fs::File>,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
            let mut lock = p.clone().into_os_string();
            lock.push(".lock");
            let _ = std::fs::remove_file(lock);
        }
    }
}

impl BoundSocket {
    /// Binds `path`, taking its lock file first; a stale socket (no lock holder) is replaced,
    /// a live one is an error.
    pub fn bind(path: &Path) -> Result<BoundSocket> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("lock file {}", Path::new(&lock_path).display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                anyhow::anyhow!(
                    "{} is in use by another compositor or agent",
                    path.display()
                )
            },
        )?;
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        Ok(BoundSocket {
            listener,
            path: Some(path.to_owned()),
            _lock: Some(lock),
        })
    }

    /// A socket systemd owns (nothing to remove).
    pub fn adopted(listener: UnixListener) -> BoundSocket {
        BoundSocket {
            listener,
            path: None,
            _lock: None,
        }
    }
}

/// Accepts clients forever, one thread each.
pub fn accept_loop<D: VirtGpu + Send + 'static>(
    listener: &UnixListener,
    shared: Arc<Shared<D>>,
) -> Result<()> {
    let mut next = 0u64;
    loop {
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("accepting a client"),
        };
        next += 1;
        let n = next;
        if shared.live.load(Ordering::Relaxed) >= shared.max_clients {
            tracing::warn!(
                client = n,
                "refused: {} clients connected (--max-clients)",
                shared.max_clients
            );
            refuse(&stream, "too many clients (crossway-agent --max-clients)");
            continue;
        }
        shared.live.fetch_add(1, Ordering::Relaxed);
        shared.stats.clients.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("client-{n}"))
            .spawn(move || {
                // Every event of this client's session carries its id, and its render node
                // once the device is open.
                let span =
                    tracing::info_span!("client", client = n, device = tracing::field::Empty);
                let _entered = span.enter();
                match serve_client(&stream, &s) {
                    Ok(()) => tracing::info!("disconnected"),
                    Err(e) => tracing::warn!("ended: {e:#}"),
                }
                s.live.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            shared.live.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("no thread for client {n}: {e}");
        }
    }
}

/// Tells a client it cannot be served (`wl_display.error`, implementation) before closing.
fn refuse(stream: &UnixStream, why: &str) {
    let mut msg = Vec::new();
    let text = std::ffi::CString::new(why).unwrap_or_default();
    if crossway_protocols::wire::encode_unchecked(
        &mut msg,
        crossway_protocols::wire::ObjectId::DISPLAY,
        0,
        &[
            crossway_protocols::wire::Arg::Object(Some(
                crossway_protocols::wire::ObjectId::DISPLAY,
            )),
            crossway_protocols::wire::Arg::Uint(3),
            crossway_protocols::wire::Arg::Str(Some(&text)),
        ],
    )
    .is_ok()
    {
        let _ = rustix::io::write(stream, &msg);
    }
}

/// Serves one client until it or the host goes away.
fn serve_client<D: VirtGpu>(stream: &UnixStream, shared: &Shared<D>) -> Result<()> {
    let (dev, guest_dev) = match (shared.open)() {
        Ok(d) => d,
        Err(e) => {
            refuse(stream, &format!("crossway-agent: no virtgpu device: {e:#}"));
            return Err(e);
        }
    };
    if let Some(node) = guest_dev {
        let (major, minor) = (rustix::fs::major(node), rustix::fs::minor(node));
        tracing::Span::current().record("device", format_args!("{major}:{minor}"));
    }
    let ch = match Channel::open(dev, shared.channel.clone()) {
        Ok(c) => c,
        Err(e) => {
            refuse(stream, &format!("crossway-agent: host channel: {e}"));
            return Err(e).context("opening the cross-domain channel");
        }
    };
    tracing::info!(
        crossway_caps = ch.caps().crossway.is_some(),
        "client connected, channel open"
    );
    let mut config = shared.session.clone();
    config.guest_dev = guest_dev;
    let mut session = Session::new(ch, Arc::new(config), shared.stats.clone());
    stream.set_nonblocking(true)?;
    let result = client_loop(stream, &mut session);
    if let Err(e) = &result {
        match e {
            LoopEnd::Session(SessionError::Client {
                object,
                code,
                message,
            }) => {
                session.send_error(*object, *code, message);
            }
            LoopEnd::Session(other) => {
                session.send_error(1, 3, &format!("crossway-agent: {other}"));
            }
            LoopEnd::HostClosed => {
                session.send_error(1, 3, "crossway-agent: the host closed the connection");
            }
            LoopEnd::ClientGone | LoopEnd::Io(_) => {}
        }
        // Best effort: the error reaches a client that still reads.
        flush_client_until(stream, &mut session, FINAL_FLUSH);
    }
    match result {
        Ok(()) | Err(LoopEnd::ClientGone) => Ok(()),
        Err(LoopEnd::HostClosed) => bail!("the host closed the channel"),
        Err(LoopEnd::Session(e)) => Err(e.into()),
        Err(LoopEnd::Io(e)) => Err(e.into()),
    }
}

#[derive(Debug)]
enum LoopEnd {
    ClientGone,
    HostClosed,
    Session(SessionError),
    Io(std::io::Error),
}

impl From<SessionError> for LoopEnd {
    fn from(e: SessionError) -> Self {
        LoopEnd::Session(e)
    }
}

impl From<std::io::Error> for LoopEnd {
    fn from(e: std::io::Error) -> Self {
        LoopEnd::Io(e)
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Client,
    Events,
    WritePipe(usize),
    ReadPipe(u32),
}

fn client_loop<D: VirtGpu>(stream: &UnixStream, session: &mut Session<D>) -> Result<(), LoopEnd> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut pipe_buf = vec![0u8; PIPE_CHUNK];
    loop {
        flush_client(stream, session)?;
        if session.closing {
            return Err(LoopEnd::ClientGone);
        }
        // After the flush: what the host sent last is already on its way to the client.
        session.channel().arm().map_err(SessionError::from)?;
        let mut slots = Vec::with_capacity(4);
        let mut raw: Vec<(RawFd, PollFlags)> = Vec::with_capacity(4);
        let client_flags = if session.to_client.bytes.is_empty() {
            PollFlags::IN
        } else {
            PollFlags::IN | PollFlags::OUT
        };
        raw.push((stream.as_raw_fd(), client_flags));
        slots.push(Slot::Client);
        raw.push((session.channel().event_fd().as_raw_fd(), PollFlags::IN));
        slots.push(Slot::Events);
        for (i, p) in session.write_pipes.iter().enumerate() {
            raw.push((p.read.as_raw_fd(), PollFlags::IN));
            slots.push(Slot::WritePipe(i));
        }
        for (id, p) in &session.read_pipes {
            if !p.queue.is_empty() || p.hang_up {
                raw.push((p.write.as_raw_fd(), PollFlags::OUT));
                slots.push(Slot::ReadPipe(*id));
            }
        }
        // SAFETY: every raw fd above is owned by `stream` or `session`, which outlive this
        // poll call and are not modified until it returns.
        let borrowed: Vec<BorrowedFd<'_>> = raw
            .iter()
            .map(|(fd, _)| unsafe { BorrowedFd::borrow_raw(*fd) })
            .collect();
        let mut pfds: Vec<PollFd<'_>> = borrowed
            .iter()
            .zip(&raw)
            .map(|(fd, (_, flags))| PollFd::new(fd, *flags))
            .collect();
        match rustix::event::poll(&mut pfds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(LoopEnd::Io(e.into())),
        }
        let ready: Vec<(Slot, PollFlags)> = pfds
            .iter()
            .zip(&slots)
            .filter(|(p, _)| !p.revents().is_empty())
            .map(|(p, s)| (*s, p.revents()))
            .collect();
        drop(pfds);
        let mut done_write_pipes = Vec::new();
        for (slot, revents) in ready {
            match slot {
                Slot::Client => {
                    if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                        read_client(stream, session, &mut buf)?;
                    }
                }
                Slot::Events => host_messages(session)?,
                Slot::WritePipe(i) => {
                    let Some(p) = session.write_pipes.get(i) else {
                        continue;
                    };
                    let id = p.id;
                    let n = match rustix::io::read(&p.read, &mut pipe_buf) {
                        Ok(n) => n,
                        Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                        Err(_) => 0,
                    };
                    session.pipe_data(id, &pipe_buf[..n])?;
                    if n == 0 {
                        done_write_pipes.push(i);
                    }
                }
                Slot::ReadPipe(id) => write_read_pipe(session, id),
            }
        }
        done_write_pipes.sort_unstable();
        for i in done_write_pipes.into_iter().rev() {
            session.write_pipes.swap_remove(i);
        }
    }
}

fn host_messages<D: VirtGpu>(session: &mut Session<D>) -> Result<(), LoopEnd> {
    // One message per fence: the loop flushes it to the client before it re-arms the POLL.
    let m = session
        .channel()
        .next_message_timeout(Duration::ZERO)
        .map_err(SessionError::from)?;
    match m {
        None => {}
        Some(ChannelMessage::Receive { data, items }) => session.host_input(&data, items)?,
        Some(ChannelMessage::Read {
            pipe,
            data,
            hang_up,
        }) => session.host_read(pipe, &data, hang_up),
        Some(ChannelMessage::Eof) => return Err(LoopEnd::HostClosed),
    }
    Ok(())
}

/// Writes what is queued for a read pipe the poll found writable. The fd is the client's and
/// usually blocking (its file status is shared with the client, so the agent leaves it so):
/// one write of at most `PIPE_BUF` bytes, which POLLOUT guarantees room for, and back to the
/// poll. A client that never reads its end then stalls only its transfer, never the thread.
fn write_read_pipe<D: VirtGpu>(session: &mut Session<D>, id: u32) {
    let Some(p) = session.read_pipes.get_mut(&id) else {
        return;
    };
    if !p.queue.is_empty() {
        let (a, _) = p.queue.as_slices();
        let a = &a[..a.len().min(PIPE_BUF)];
        match rustix::io::write(&p.write, a) {
            Ok(n) => {
                p.queue.drain(..n);
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => {
                // The reader went away: nothing more to deliver.
                session.read_pipes.remove(&id);
                return;
            }
        }
    }
    if p.hang_up && p.queue.is_empty() {
        session.read_pipes.remove(&id);
    }
}

/// Reads what the client sent and relays it. A control message cut short (more fds than
/// libwayland sends at once) ends the client: fds were lost, so its stream cannot be relayed.
fn read_client<D: VirtGpu>(
    stream: &UnixStream,
    session: &mut Session<D>,
    buf: &mut [u8],
) -> Result<(), LoopEnd> {
    match fdpass::recv_with_fds(stream.as_fd(), buf) {
        Ok(Received::WouldBlock) => Ok(()),
        Ok(Received::Eof) => Err(LoopEnd::ClientGone),
        Ok(Received::Data(n, fds)) => {
            session.client_input(&buf[..n], fds)?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(LoopEnd::ClientGone),
        Err(e) => Err(LoopEnd::Io(e)),
    }
}

/// Writes what is queued for the client, each fd with (or before) its message, at most 28 fds
/// a call. Stops when the socket is full.
fn flush_client<D: VirtGpu>(stream: &UnixStream, session: &mut Session<D>) -> Result<(), LoopEnd> {
    let out = &mut session.to_client;
    while !out.bytes.is_empty() {
        let nfds = out.fds.len().min(fdpass::MAX_FDS_PER_MSG);
        // Bytes up to the message of the first fd left for a later call.
        let end = out
            .fds
            .get(nfds)
            .map_or(out.bytes.len(), |(at, _)| (*at).max(1));
        let borrowed: Vec<BorrowedFd<'_>> =
            out.fds.iter().take(nfds).map(|(_, f)| f.as_fd()).collect();
        let sent = match fdpass::send_with_fds(stream.as_fd(), &out.bytes[..end], &borrowed) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return Err(LoopEnd::ClientGone);
            }
            Err(e) => return Err(LoopEnd::Io(e)),
        };
        drop(borrowed);
        out.fds.drain(..nfds);
        out.bytes.drain(..sent);
        for (at, _) in out.fds.iter_mut() {
            *at = at.saturating_sub(sent);
        }
    }
    // Fds whose message was already written (cannot happen: each goes with its bytes).
    out.fds.clear();
    Ok(())
}

/// Flushes what is queued for the client, waiting for room in its socket up to `timeout` in
/// all (the writes themselves never block): the last events and the error of a client being
/// closed reach it if it reads in time.
fn flush_client_until<D: VirtGpu>(
    stream: &UnixStream,
    session: &mut Session<D>,
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if flush_client(stream, session).is_err() || session.to_client.bytes.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut pfd = [PollFd::new(stream, PollFlags::OUT)];
        match rustix::event::poll(&mut pfd, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Writes `stats` to `path` atomically (a temporary file renamed over it).
pub fn write_stats(path: &Path, stats: &AgentStats) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, stats.to_json())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;

    use super::*;
    use crate::channel::tests::open;
    use crate::session::{ClientReadPipe, SessionConfig, SessionLimits};

    fn session() -> Session<crate::channel::tests::Mock> {
        let config = SessionConfig {
            limits: SessionLimits::default(),
            guest_dev: None,
        };
        Session::new(open(), Arc::new(config), Arc::new(AgentStats::default()))
    }

    #[test]
    fn write_read_pipe_never_blocks_on_a_client_that_does_not_read() {
        let mut session = session();
        // A blocking pipe, as clients create them; nobody reads `_read`.
        let (_read, write) = rustix::pipe::pipe().unwrap();
        session.read_pipes.insert(
            7,
            ClientReadPipe {
                write,
                queue: VecDeque::from(vec![0x5a; 1 << 20]),
                hang_up: true,
            },
        );
        // As the client loop does: write only when poll says the pipe is writable. Far more
        // rounds than the pipe holds; each write takes what fits and returns.
        for _ in 0..64 {
            let fd = session.read_pipes[&7].write.as_fd();
            let mut pfd = [PollFd::new(&fd, PollFlags::OUT)];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if rustix::event::poll(&mut pfd, Some(&zero)).unwrap() == 0 {
                break;
            }
            write_read_pipe(&mut session, 7);
        }
        let left = session.read_pipes[&7].queue.len();
        assert!(left < 1 << 20 && left > 0, "{left} bytes left");
    }

    #[test]
    fn read_client_truncated_fds_end_the_client_and_close_every_fd() {
        let (agent, client) = UnixStream::pair().unwrap();
        agent.set_nonblocking(true).unwrap();
        let mut session = session();
        // 30 copies of a pipe's write end in one control message: two more than libwayland
        // sends at once, so the agent's recvmsg truncates it.
        let (read, write) = rustix::pipe::pipe().unwrap();
        rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK).unwrap();
        let copies: Vec<BorrowedFd<'_>> = (0..fdpass::MAX_FDS_PER_MSG + 2)
            .map(|_| write.as_fd())
            .collect();
        fdpass::send_all_with_fds(
            client.as_fd(),
            &[std::io::IoSlice::new(&[0u8; 12])],
            &copies,
        )
        .unwrap();
        drop(copies);
        drop(write);
        let mut buf = vec![0u8; READ_CHUNK];
        match read_client(&agent, &mut session, &mut buf) {
            Err(LoopEnd::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData),
            other => panic!("expected a truncation error, got {other:?}"),
        }
        // Every copy the agent received was closed: the pipe has no writer left.
        assert_eq!(rustix::io::read(&read, &mut [0u8; 1]), Ok(0));
        assert!(session.to_client.bytes.is_empty());
    }

    #[test]
    fn a_closing_client_gets_its_error_after_a_full_socket_drains() {
        let (agent, client) = UnixStream::pair().unwrap();
        agent.set_nonblocking(true).unwrap();
        let mut session = session();
        // Fill the socket, then queue more events and the error behind them.
        let filler = vec![0u8; 4096];
        while rustix::io::write(&agent, &filler).is_ok() {}
        session.to_client.bytes.extend_from_slice(&[0u8; 8192]);
        session.send_error(1, 3, "closing");
        let queued = session.to_client.bytes.len();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut &client, &mut all).unwrap();
            all
        });
        flush_client_until(&agent, &mut session, Duration::from_secs(5));
        assert!(session.to_client.bytes.is_empty());
        drop(session);
        drop(agent);
        let all = reader.join().unwrap();
        assert!(all.len() >= queued);
        assert!(
            all.ends_with(b"closing\0"),
            "the error is the last thing written"
        );
    }
}
