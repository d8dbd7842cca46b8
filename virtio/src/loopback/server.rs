//! The loopback VM's Unix-socket server: guest programs in other processes reach the loopback
//! device through it, one connection per open device file (protocol in
//! [`crossway_loopback::wire`]).
//!
//! ```text
//!  guest program ──LoopbackClient──▶ socket ──▶ LoopbackServer: one thread and one LoopbackFile
//!                ◀── event fd, map fds ──┘                      per connection ──▶ LoopbackVm
//! ```
//!
//! The server is generic over the device it serves ([`ServedDevice`], whose files are
//! [`ServedFile`]s): the loopback VM in production, and in tests a reference host (rutabaga's
//! cross-domain context) that must answer guest programs exactly as this socket does.
//!
//! A connection's misbehaviour ends that connection only: an unparsable request gets an error
//! reply, a broken frame (oversized, cut short) closes the connection, and its `LoopbackFile`
//! is dropped, which closes its GEM handles and destroys its context as the kernel does when
//! a DRM fd is closed.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossway_protocols::virtgpu::{VirtGpu, VirtGpuError, drm_virtgpu_execbuffer};

use crate::loopback::driver::{LoopbackFile, LoopbackVm};
use crossway_loopback::mmap::{Mapping, Piece};
use crossway_loopback::wire::{
    self, Frame, Request, STATUS_ERR, STATUS_OK, WireError, Writer, encode_error,
};

/// Limits of the socket server.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Open connections at most (each is a device file with its own context).
    pub max_connections: usize,
    /// Largest frame body accepted or sent.
    pub max_message: usize,
}

/// A guest's open device files: as many as `serve`'s contexts (`--max-contexts`, 256 by
/// default), since each guest client normally holds one. A real VM has no lower limit of its
/// own; 16 used to refuse a 17th client that a real VM would take.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_message: wire::DEFAULT_MAX_MESSAGE,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or configuring the listening socket.
    #[error("listening on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Starting the accept thread.
    #[error("starting the accept thread")]
    Thread(#[source] std::io::Error),
}

/// A device the socket server serves: each connection opens one file of it, as each `open()`
/// of a render node does.
pub trait ServedDevice: Send + Sync + 'static {
    /// One open device file.
    type File: ServedFile;
    /// Opens a device file for a new connection.
    fn open(&self) -> Result<Self::File, VirtGpuError>;
}

/// One open device file as the socket server needs it: the `VirtGpu` calls, plus what `MAP`
/// answers with, since the program on the other side maps the memory itself.
pub trait ServedFile: VirtGpu {
    /// What `MAP` + `mmap` of `bo_handle` covers: a file and the `(offset, len)` pieces of it
    /// to map one after another (page aligned).
    fn map_pieces(&self, bo_handle: u32) -> Result<(OwnedFd, Vec<(u64, usize)>), VirtGpuError>;

    /// The context id of this file on the device, for logs.
    fn ctx_id(&self) -> u32;
}

/// Maps what [`ServedFile::map_pieces`] names, for a [`ServedFile`] whose own `map` is the same
/// view in this process.
pub fn map_served(file: &impl ServedFile, bo_handle: u32) -> Result<Mapping, VirtGpuError> {
    let (fd, pieces) = file.map_pieces(bo_handle)?;
    let pieces: Vec<Piece<'_>> = pieces
        .iter()
        .map(|&(offset, len)| Piece {
            fd: fd.as_fd(),
            offset,
            len,
        })
        .collect();
    Mapping::new(&pieces)
}

impl ServedDevice for LoopbackVm {
    type File = LoopbackFile;
    fn open(&self) -> Result<LoopbackFile, VirtGpuError> {
        LoopbackVm::open(self)
    }
}

impl ServedFile for LoopbackFile {
    fn map_pieces(&self, bo_handle: u32) -> Result<(OwnedFd, Vec<(u64, usize)>), VirtGpuError> {
        LoopbackFile::map_pieces(self, bo_handle)
    }
    fn ctx_id(&self) -> u32 {
        LoopbackFile::ctx_id(self)
    }
}

struct Shared<D> {
    vm: D,
    config: ServerConfig,
    stop: AtomicBool,
    active: AtomicUsize,
    limit_logged: AtomicBool,
    next_id: AtomicUsize,
    /// Clones of open connections, shut down when the server stops.
    conns: Mutex<Vec<(usize, UnixStream)>>,
}

/// A listening loopback socket serving `D` (the loopback VM unless said otherwise). Dropping it
/// stops accepting, shuts every connection down and removes the socket file.
pub struct LoopbackServer<D: ServedDevice = LoopbackVm> {
    shared: Arc<Shared<D>>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl<D: ServedDevice> std::fmt::Debug for LoopbackServer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackServer")
            .field("path", &self.path)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<D: ServedDevice> LoopbackServer<D> {
    /// Listens at `path` (a stale socket file there is replaced) and serves `vm`.
    pub fn bind(
        vm: D,
        path: &Path,
        config: ServerConfig,
    ) -> Result<LoopbackServer<D>, ServerError> {
        let bind_err = |source| ServerError::Bind {
            path: path.to_owned(),
            source,
        };
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            vm,
            config,
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            limit_logged: AtomicBool::new(false),
            next_id: AtomicUsize::new(1),
            conns: Mutex::new(Vec::new()),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("loopback-accept".into())
            .spawn(move || accept_loop(&s2, &listener))
            .map_err(ServerError::Thread)?;
        tracing::info!(path = %path.display(), ?config, "loopback socket listening");
        Ok(LoopbackServer {
            shared,
            path: path.to_owned(),
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }
}

impl<D: ServedDevice> Drop for LoopbackServer<D> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, c) in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop<D: ServedDevice>(shared: &Arc<Shared<D>>, listener: &UnixListener) {
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !shared.stop.load(Ordering::Acquire) {
        let mut fds = [rustix::event::PollFd::new(
            listener,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(error = %e, "socket mode");
            continue;
        }
        // Reserve a slot before anything else so that the limit holds under a burst.
        let max = shared.config.max_connections;
        if shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            if !shared.limit_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_connections = max,
                    "limit reached: connection refused; --max-connections raises it (logged once)"
                );
            }
            let e = VirtGpuError::OutOfMemory("max_connections");
            let _ = wire::send(&stream, &wire::encode_hello(Err(&e)), None);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            shared
                .conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((id, clone));
        }
        let s2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("loopback-conn-{id}"))
            .spawn(move || {
                let span = tracing::debug_span!("loopback_client", client = id);
                let _g = span.enter();
                serve_connection(&s2, stream);
                s2.conns
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retain(|(i, _)| *i != id);
                s2.active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "connection thread");
            shared.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve_connection<D: ServedDevice>(shared: &Shared<D>, stream: UnixStream) {
    let max = shared.config.max_message;
    let mut file = match shared.vm.open() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "opening a device file");
            let _ = wire::send(&stream, &wire::encode_hello(Err(&e)), None);
            return;
        }
    };
    if let Err(e) = wire::send(&stream, &wire::encode_hello(Ok(max)), Some(file.event_fd())) {
        tracing::debug!(error = %e, "client left before the hello");
        return;
    }
    tracing::debug!(ctx = file.ctx_id(), "client connected");
    loop {
        let frame = match wire::recv_frame(stream.as_fd(), max) {
            Ok(f) => f,
            Err(WireError::Closed) => {
                tracing::debug!("client closed");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "closing a loopback connection");
                break;
            }
        };
        let (body, fd) = answer(&mut file, frame, max);
        if let Err(e) = wire::send(&stream, &body, fd.as_ref().map(|f| f.as_fd())) {
            tracing::debug!(error = %e, "client left before its reply");
            break;
        }
    }
    // Dropping `file` closes its handles and destroys its context.
}

/// One request's reply body and descriptor.
fn answer(file: &mut impl ServedFile, frame: Frame, max: usize) -> (Vec<u8>, Option<OwnedFd>) {
    let mut w = Writer::default();
    match dispatch(file, frame, max, &mut w) {
        Ok(fd) => {
            let mut out = Writer::default();
            out.u32(STATUS_OK);
            out.0.extend_from_slice(&w.0);
            (out.0, fd)
        }
        Err(e) => {
            tracing::trace!(error = %e, "request refused");
            let mut out = Writer::default();
            out.u32(STATUS_ERR);
            encode_error(&mut out, &e);
            (out.0, None)
        }
    }
}

fn dispatch(
    file: &mut impl ServedFile,
    frame: Frame,
    max: usize,
    w: &mut Writer,
) -> Result<Option<OwnedFd>, VirtGpuError> {
    let req = Request::decode(&frame.body).map_err(|e| {
        tracing::warn!(error = %e, "malformed request");
        VirtGpuError::InvalidArgument("malformed request")
    })?;
    let mut fds = frame.fds;
    let wants_fd = matches!(req, Request::PrimeFdToHandle);
    if fds.len() != usize::from(wants_fd) {
        return Err(VirtGpuError::InvalidArgument(if wants_fd {
            "PRIME_FD_TO_HANDLE without a descriptor"
        } else {
            "unexpected descriptor with the request"
        }));
    }
    tracing::trace!(?req, "request");
    match req {
        Request::GetParam { param } => {
            w.u64(file.get_param(param)?);
        }
        Request::GetCaps {
            id,
            version,
            max_len,
        } => {
            // Leave room for the reply's own words.
            let cap = (max_len as usize).min(max.saturating_sub(64));
            let mut buf = vec![0u8; cap];
            let size = file.get_caps(id, version, &mut buf)?;
            buf.truncate(size.min(cap));
            w.u64(size as u64).bytes(&buf);
        }
        Request::ContextInit(params) => file.context_init(&params)?,
        Request::CreateBlob(b) => {
            let h = file.resource_create_blob(&b)?;
            w.u32(h.bo_handle).u32(h.res_handle);
        }
        Request::Map { bo } => {
            let (fd, pieces) = file.map_pieces(bo)?;
            w.u32(u32::try_from(pieces.len()).map_err(|_| VirtGpuError::OutOfMemory("pieces"))?);
            for (off, len) in &pieces {
                w.u64(*off).u64(*len as u64);
            }
            if w.0.len() > max.saturating_sub(16) {
                return Err(VirtGpuError::OutOfMemory("map reply exceeds max_message"));
            }
            return Ok(Some(fd));
        }
        Request::Execbuffer {
            flags,
            ring_idx,
            bo_handles,
            command,
        } => file.execbuffer(&drm_virtgpu_execbuffer {
            flags,
            command: &command,
            bo_handles: &bo_handles,
            ring_idx,
        })?,
        Request::Wait { bo, flags } => file.wait(bo, flags)?,
        Request::ResourceInfo { bo } => {
            let i = file.resource_info(bo)?;
            w.u32(i.bo_handle)
                .u32(i.res_handle)
                .u32(i.size)
                .u32(i.blob_mem);
        }
        Request::PrimeHandleToFd { bo } => return Ok(Some(file.prime_handle_to_fd(bo)?)),
        Request::PrimeFdToHandle => {
            let fd = fds
                .pop()
                .ok_or(VirtGpuError::InvalidArgument("no descriptor"))?;
            w.u32(file.prime_fd_to_handle(fd.as_fd())?);
        }
        Request::GemClose { bo } => file.gem_close(bo)?,
    }
    Ok(None)
}
