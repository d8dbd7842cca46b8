//! The host compositor as the relay reaches it: where its socket is, what it offers
//! ([`HostInfo`], probed once at start), and one new connection per guest client
//! ([`HostConnector::connect`]), made through a `wp_security_context_v1` listener where the
//! host offers one, so the compositor knows every client of this VM as sandboxed.
//!
//! Everything the host compositor sends is untrusted: the probe bounds its waits, the size of
//! the dmabuf format table and every index into it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossway_protocols::dmabuf::{
    self, DmabufError, Feedback, FormatModifier, FormatTable, PreferenceList, Tranche,
};
use tracing::{debug, info, warn};
use wayland_client::protocol::{wl_callback, wl_registry};
use wayland_client::{Connection, Dispatch, EventQueue, QueueHandle, WEnum};
use wayland_protocols::wp::linux_dmabuf::zv1::client::{
    zwp_linux_dmabuf_feedback_v1 as feedback, zwp_linux_dmabuf_v1 as linux_dmabuf,
};
use wayland_protocols::wp::security_context::v1::client::{
    wp_security_context_manager_v1 as sc_manager, wp_security_context_v1 as sc,
};

/// The interface name of the security-context manager global.
pub const SECURITY_CONTEXT_MANAGER: &str = "wp_security_context_manager_v1";

/// The sandbox engine name the proxy registers its security contexts under.
pub const SANDBOX_ENGINE: &str = "crossway";

/// `DRM_FORMAT_MOD_INVALID`: what a v1/v2 `zwp_linux_dmabuf_v1.format` event implies.
const MOD_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

/// Why probing or preparing the host compositor failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Connecting, reading or writing its socket failed.
    #[error("host compositor at {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// It did not answer a round trip in time.
    #[error("host compositor did not answer within {0:?}")]
    Timeout(Duration),
    /// The Wayland connection over the connected socket could not be set up.
    #[error("setting up the Wayland connection to the host compositor")]
    Handshake(#[source] wayland_client::ConnectError),
    /// It broke the protocol or closed the connection.
    #[error("host compositor connection failed")]
    Wayland(#[source] wayland_client::backend::WaylandError),
    /// One of its events could not be dispatched.
    #[error("dispatching the host compositor's events")]
    Dispatch(#[source] wayland_client::DispatchError),
    /// Waiting for its socket failed.
    #[error("waiting for the host compositor")]
    Poll(#[source] io::Error),
    /// Its dmabuf feedback cannot be used.
    #[error("host compositor's dmabuf feedback")]
    Feedback(#[source] FeedbackError),
    /// A security context was asked of a host that does not offer one.
    #[error("host compositor does not offer {SECURITY_CONTEXT_MANAGER}")]
    NoSecurityContext,
}

/// Why the host compositor's `zwp_linux_dmabuf_feedback_v1` (or its v1-v3 events) cannot be
/// used; the proxy then relays no linux-dmabuf at all.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// A table, index array or device number in it is malformed.
    #[error("malformed feedback")]
    Malformed(#[from] DmabufError),
    /// The format table is larger than [`ProbeLimits::max_format_table_bytes`].
    #[error("format table of {size} bytes is over the limit of {limit}")]
    TableTooLarge {
        /// Bytes announced.
        size: u32,
        /// The limit.
        limit: u32,
    },
    /// The format table's fd holds fewer bytes than announced.
    #[error("format table fd holds {actual} bytes, fewer than the {size} announced")]
    TableShort {
        /// Bytes the fd holds.
        actual: u64,
        /// Bytes announced.
        size: u32,
    },
    /// The format table's fd could not be read.
    #[error("reading the format table")]
    ReadTable(#[source] io::Error),
    /// `tranche_formats` came before any `format_table`.
    #[error("tranche_formats before format_table")]
    TrancheBeforeTable,
    /// More tranches than the table could have entries.
    #[error("more than {} tranches", dmabuf::MAX_TABLE_ENTRIES)]
    TooManyTranches,
    /// A format table arrived but `done` never did.
    #[error("feedback never reached done")]
    NoDone,
    /// `done` arrived without a format table.
    #[error("feedback without a format table")]
    NoTable,
}

/// One global the host compositor advertises.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostGlobal {
    /// The registry name.
    pub name: u32,
    /// The interface.
    pub interface: String,
    /// The highest version offered.
    pub version: u32,
}

/// What the host compositor offers, read once at start.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    /// Its globals in advertisement order.
    pub globals: Vec<HostGlobal>,
    /// The version of `zwp_linux_dmabuf_v1` offered, if any.
    pub dmabuf_version: Option<u32>,
    /// The (format, modifier) pairs it imports, most preferred first, scanout ones marked
    /// (v4+: the default feedback's tranches; v3: the `modifier` events in order). `None`
    /// without linux-dmabuf, or when its feedback was unusable (logged).
    pub dmabuf_formats: Option<PreferenceList>,
    /// Whether it offers `wp_security_context_manager_v1`.
    pub security_context: bool,
}

/// Limits on the probe; the defaults suit a local compositor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeLimits {
    /// The longest wait for the compositor to answer the whole probe.
    pub timeout: Duration,
    /// The largest format table read (bytes).
    pub max_format_table_bytes: u32,
}

impl Default for ProbeLimits {
    fn default() -> Self {
        ProbeLimits {
            timeout: Duration::from_secs(5),
            max_format_table_bytes: (dmabuf::MAX_TABLE_ENTRIES * 16) as u32,
        }
    }
}

impl HostInfo {
    /// Probes the compositor `connector` reaches (on a connection of its own, closed after).
    pub fn probe(connector: &HostConnector) -> Result<HostInfo, HostError> {
        HostInfo::probe_with(connector, ProbeLimits::default())
    }

    /// [`HostInfo::probe`] with explicit limits.
    pub fn probe_with(
        connector: &HostConnector,
        limits: ProbeLimits,
    ) -> Result<HostInfo, HostError> {
        let deadline = Instant::now() + limits.timeout;
        let mut session = Session::open(connector.host_socket(), limits)?;
        let mut state = ProbeState {
            limits,
            ..ProbeState::default()
        };
        let registry = session.conn.display().get_registry(&session.qh, ());
        session.roundtrip(&mut state, deadline)?;
        let dmabuf = state
            .globals
            .iter()
            .find(|g| g.interface == "zwp_linux_dmabuf_v1")
            .cloned();
        let mut dmabuf_version = None;
        if let Some(global) = &dmabuf {
            let version = global.version.min(4);
            dmabuf_version = Some(global.version);
            let proxy: linux_dmabuf::ZwpLinuxDmabufV1 =
                registry.bind(global.name, version, &session.qh, ());
            if version >= 4 {
                let fb = proxy.get_default_feedback(&session.qh, ());
                // The feedback ends with `done`; a round trip after the request covers it
                // for any compositor that sends it at once, as the protocol asks.
                session.roundtrip(&mut state, deadline)?;
                fb.destroy();
            } else {
                session.roundtrip(&mut state, deadline)?;
            }
            if version >= 3 {
                proxy.destroy();
            }
        }
        let dmabuf_formats = match (&dmabuf, state.feedback_result()) {
            (None, _) => None,
            (Some(_), Ok(list)) => Some(list),
            (Some(_), Err(err)) => {
                warn!(
                    err = &err as &dyn std::error::Error,
                    "host dmabuf feedback unusable; linux-dmabuf will not be relayed"
                );
                None
            }
        };
        let _ = session.conn.flush();
        let info = HostInfo {
            security_context: state
                .globals
                .iter()
                .any(|g| g.interface == SECURITY_CONTEXT_MANAGER),
            globals: state.globals,
            dmabuf_version,
            dmabuf_formats,
        };
        info!(
            globals = info.globals.len(),
            dmabuf_version = ?info.dmabuf_version,
            dmabuf_formats = info.dmabuf_formats.as_ref().map(PreferenceList::len),
            security_context = info.security_context,
            "host compositor probed"
        );
        Ok(info)
    }

    /// The global named `interface`, if offered.
    pub fn global(&self, interface: &str) -> Option<&HostGlobal> {
        self.globals.iter().find(|g| g.interface == interface)
    }
}

/// Connects relays to the host compositor.
#[derive(Debug, Clone)]
pub struct HostConnector {
    socket: PathBuf,
    context: Option<Arc<SecurityListener>>,
    /// How to make the security context again, and the one made last: a host compositor that
    /// restarts forgets the listener it was given, so new guest clients would be refused
    /// until the proxy restarts too.
    renewal: Option<Arc<Renewal>>,
}

#[derive(Debug)]
struct Renewal {
    spec: SecurityContextSpec,
    limits: ProbeLimits,
    current: std::sync::Mutex<Option<Arc<SecurityListener>>>,
}

/// A security-context listener the host accepts on: its socket (connected to for every guest
/// client) and the close fd whose hang-up tells the host to stop accepting.
#[derive(Debug)]
struct SecurityListener {
    socket: ListenerFiles,
    app_id: String,
    // Held, never read: the host stops accepting on the listener when this end closes.
    _close_fd: OwnedFd,
}

/// A listening socket's path and the private directory made for it: removed on drop, or
/// earlier by [`ListenerFiles::remove`] for an exit that runs no destructors.
#[derive(Debug)]
struct ListenerFiles {
    dir: PathBuf,
    path: PathBuf,
}

impl ListenerFiles {
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for ListenerFiles {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The metadata of a security context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityContextSpec {
    /// The app id the host will see for every client (the VM's name).
    pub app_id: String,
    /// The instance id.
    pub instance_id: String,
}

impl HostConnector {
    /// Removes the files this connector made (the security-context listener's socket and
    /// directory) now, for an exit that runs no destructors.
    pub fn remove_owned_files(&self) {
        if let Some(l) = &self.context {
            l.socket.remove();
        }
        if let Some(r) = &self.renewal
            && let Some(l) = &*r.current.lock().unwrap_or_else(|e| e.into_inner())
        {
            l.socket.remove();
        }
    }

    /// Connections to the compositor listening on `socket`.
    pub fn new(socket: PathBuf) -> HostConnector {
        HostConnector {
            socket,
            context: None,
            renewal: None,
        }
    }

    /// Resolves a display name as libwayland does: absolute paths stay, names are looked up in
    /// `$XDG_RUNTIME_DIR`; `None` means `$WAYLAND_DISPLAY`, then `wayland-0`.
    pub fn from_display(display: Option<&str>) -> io::Result<HostConnector> {
        let name = match display {
            Some(d) => d.to_owned(),
            None => std::env::var("WAYLAND_DISPLAY").unwrap_or_else(|_| "wayland-0".into()),
        };
        runtime_socket_path(&name).map(HostConnector::new)
    }

    /// The socket new connections go to: the security-context listener where there is one,
    /// else the compositor's own socket.
    pub fn socket(&self) -> &Path {
        match &self.context {
            Some(ctx) => &ctx.socket.path,
            None => &self.socket,
        }
    }

    /// The compositor's own socket.
    pub fn host_socket(&self) -> &Path {
        &self.socket
    }

    /// The app id of the security context connections are made through, if any.
    pub fn security_context_app_id(&self) -> Option<&str> {
        self.context.as_deref().map(|c| c.app_id.as_str())
    }

    /// A connector whose connections all go through a new `wp_security_context_v1` with
    /// `spec`'s metadata and sandbox engine [`SANDBOX_ENGINE`]. The listener stays open as
    /// long as the returned connector (or a clone) lives.
    pub fn with_security_context(
        &self,
        spec: &SecurityContextSpec,
        limits: ProbeLimits,
    ) -> Result<HostConnector, HostError> {
        let deadline = Instant::now() + limits.timeout;
        let dir = private_dir()?;
        // Owned from here so the directory is removed on every error path.
        let files = ListenerFiles {
            path: dir.join("wayland-sc"),
            dir,
        };
        let io_err = |source| HostError::Io {
            path: files.path.clone(),
            source,
        };
        let listener = UnixListener::bind(&files.path).map_err(io_err)?;
        let (close_read, close_write) = std::io::pipe().map_err(io_err)?;
        let (close_read, close_write) = (OwnedFd::from(close_read), OwnedFd::from(close_write));

        let mut session = Session::open(&self.socket, limits)?;
        let mut state = ProbeState::default();
        let registry = session.conn.display().get_registry(&session.qh, ());
        session.roundtrip(&mut state, deadline)?;
        let global = state
            .globals
            .iter()
            .find(|g| g.interface == SECURITY_CONTEXT_MANAGER)
            .ok_or(HostError::NoSecurityContext)?;
        let manager: sc_manager::WpSecurityContextManagerV1 =
            registry.bind(global.name, 1, &session.qh, ());
        let context =
            manager.create_listener(listener.as_fd(), close_read.as_fd(), &session.qh, ());
        context.set_sandbox_engine(SANDBOX_ENGINE.into());
        context.set_app_id(spec.app_id.clone());
        context.set_instance_id(spec.instance_id.clone());
        context.commit();
        context.destroy();
        manager.destroy();
        // The round trip proves the host took the listener without a protocol error. After
        // it, the host owns the listening socket (the protocol lets the creator only close
        // its copies) and keeps accepting after this connection closes.
        session.roundtrip(&mut state, deadline)?;
        drop(listener);
        drop(close_read);
        info!(app_id = %spec.app_id, instance_id = %spec.instance_id, socket = %files.path.display(),
            "host connections go through a security context");
        Ok(HostConnector {
            socket: self.socket.clone(),
            context: Some(Arc::new(SecurityListener {
                socket: files,
                app_id: spec.app_id.clone(),
                _close_fd: close_write,
            })),
            renewal: Some(Arc::new(Renewal {
                spec: spec.clone(),
                limits,
                current: std::sync::Mutex::new(None),
            })),
        })
    }

    /// A new client connection for one guest client. Through a security context whose
    /// listener the host no longer has (it restarted), the context is made again once the host
    /// answers on its own socket.
    pub fn connect(&self) -> io::Result<UnixStream> {
        let with_path = |socket: &Path, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("host compositor at {}: {e}", socket.display()),
            )
        };
        let Some(renewal) = &self.renewal else {
            let socket = self.socket();
            return UnixStream::connect(socket).map_err(|e| with_path(socket, e));
        };
        let mut current = renewal.current.lock().unwrap_or_else(|e| e.into_inner());
        let listener = current.clone().or_else(|| self.context.clone());
        if let Some(l) = &listener {
            match UnixStream::connect(&l.socket.path) {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() != io::ErrorKind::ConnectionRefused => {
                    return Err(with_path(&l.socket.path, e));
                }
                Err(_) => {}
            }
        }
        // Refused: the compositor that held the listener is gone. A new one gets a new
        // context (which fails, and is tried again by the next client, while none runs).
        let plain = HostConnector::new(self.socket.clone());
        let fresh = plain
            .with_security_context(&renewal.spec, renewal.limits)
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))?;
        let l = fresh.context.clone().ok_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionRefused, "no security context")
        })?;
        info!(socket = %l.socket.path.display(), "host compositor restarted: security context made again");
        if let Some(old) = current.replace(l.clone()) {
            old.socket.remove();
        }
        UnixStream::connect(&l.socket.path).map_err(|e| with_path(&l.socket.path, e))
    }
}

/// Where a Wayland socket `name` is, as libwayland resolves it: an absolute path stays, a name
/// is in `$XDG_RUNTIME_DIR`.
pub fn runtime_socket_path(name: &str) -> io::Result<PathBuf> {
    if name.starts_with('/') {
        return Ok(PathBuf::from(name));
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("XDG_RUNTIME_DIR is not set, so the socket {name:?} has no directory"),
        )
    })?;
    Ok(Path::new(&dir).join(name))
}

/// A new directory only this user can enter, for a listening socket.
fn private_dir() -> Result<PathBuf, HostError> {
    use std::os::unix::fs::DirBuilderExt as _;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "crossway-sc-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| HostError::Io {
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
}

/// One wayland-client connection with round trips that give up at a deadline.
struct Session {
    conn: Connection,
    queue: EventQueue<ProbeState>,
    qh: QueueHandle<ProbeState>,
    limits: ProbeLimits,
}

impl Session {
    fn open(socket: &Path, limits: ProbeLimits) -> Result<Session, HostError> {
        let stream = UnixStream::connect(socket).map_err(|source| HostError::Io {
            path: socket.to_path_buf(),
            source,
        })?;
        let conn = Connection::from_socket(stream).map_err(HostError::Handshake)?;
        let queue = conn.new_event_queue();
        let qh = queue.handle();
        Ok(Session {
            conn,
            queue,
            qh,
            limits,
        })
    }

    /// `wl_display.sync` and dispatch until its callback, or [`HostError::Timeout`].
    fn roundtrip(&mut self, state: &mut ProbeState, deadline: Instant) -> Result<(), HostError> {
        state.sync_serial += 1;
        let serial = state.sync_serial;
        self.conn.display().sync(&self.qh, serial);
        loop {
            self.queue.flush().map_err(HostError::Wayland)?;
            self.queue
                .dispatch_pending(state)
                .map_err(HostError::Dispatch)?;
            if state.synced >= serial {
                return Ok(());
            }
            let Some(guard) = self.queue.prepare_read() else {
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(HostError::Timeout(self.limits.timeout));
            }
            let wait = deadline - now;
            let fd = guard.connection_fd();
            let mut pfd = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::time::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            match rustix::event::poll(&mut pfd, Some(&timeout)) {
                Ok(0) => return Err(HostError::Timeout(self.limits.timeout)),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(HostError::Poll(e.into())),
            }
            match guard.read() {
                Ok(_) => {}
                Err(wayland_client::backend::WaylandError::Io(e))
                    if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(HostError::Wayland(e)),
            }
        }
    }
}

/// What the probe collects from events.
#[derive(Debug, Default)]
struct ProbeState {
    limits: ProbeLimits,
    sync_serial: u32,
    synced: u32,
    globals: Vec<HostGlobal>,
    /// v4+ feedback as it arrives.
    table: Option<FormatTable>,
    main_device: u64,
    tranche: Option<Tranche>,
    tranches: Vec<Tranche>,
    feedback_done: bool,
    /// v1–v3 `format`/`modifier` events in order.
    legacy: PreferenceList,
    /// The first thing wrong with the feedback.
    error: Option<FeedbackError>,
}

impl ProbeState {
    fn fail(&mut self, what: impl Into<FeedbackError>) {
        if self.error.is_none() {
            self.error = Some(what.into());
        }
    }

    /// The preference list, from the feedback if one arrived, else the legacy events. Takes
    /// the first error recorded, so a second call sees only the rest of the state.
    fn feedback_result(&mut self) -> Result<PreferenceList, FeedbackError> {
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        if let Some(table) = &self.table {
            if !self.feedback_done {
                return Err(FeedbackError::NoDone);
            }
            let fb = Feedback {
                main_device: self.main_device,
                table: table.clone(),
                tranches: self.tranches.clone(),
            };
            return Ok(fb.preferences()?);
        }
        if self.feedback_done {
            return Err(FeedbackError::NoTable);
        }
        Ok(self.legacy.clone())
    }

    fn read_table(&mut self, fd: OwnedFd, size: u32) -> Result<FormatTable, FeedbackError> {
        if size > self.limits.max_format_table_bytes {
            return Err(FeedbackError::TableTooLarge {
                size,
                limit: self.limits.max_format_table_bytes,
            });
        }
        let file = std::fs::File::from(fd);
        let actual = file.metadata().map_err(FeedbackError::ReadTable)?.len();
        if actual < u64::from(size) {
            return Err(FeedbackError::TableShort { actual, size });
        }
        let mut bytes = vec![0; size as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(FeedbackError::ReadTable)?;
        Ok(FormatTable::from_bytes(&bytes)?)
    }
}

impl Dispatch<wl_registry::WlRegistry, ()> for ProbeState {
    fn event(
        state: &mut Self,
        _: &wl_registry::WlRegistry,
        event: wl_registry::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            wl_registry::Event::Global {
                name,
                interface,
                version,
            } => state.globals.push(HostGlobal {
                name,
                interface,
                version,
            }),
            wl_registry::Event::GlobalRemove { name } => state.globals.retain(|g| g.name != name),
            _ => {}
        }
    }
}

impl Dispatch<wl_callback::WlCallback, u32> for ProbeState {
    fn event(
        state: &mut Self,
        _: &wl_callback::WlCallback,
        event: wl_callback::Event,
        serial: &u32,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let wl_callback::Event::Done { .. } = event {
            state.synced = state.synced.max(*serial);
        }
    }
}

impl Dispatch<linux_dmabuf::ZwpLinuxDmabufV1, ()> for ProbeState {
    fn event(
        state: &mut Self,
        _: &linux_dmabuf::ZwpLinuxDmabufV1,
        event: linux_dmabuf::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            // Deprecated with v3's `modifier`, which v3 compositors send too; a bare format
            // means "implicit modifier".
            linux_dmabuf::Event::Format { format } => state.legacy_format(format),
            linux_dmabuf::Event::Modifier {
                format,
                modifier_hi,
                modifier_lo,
            } => state.legacy_modifier(
                format,
                (u64::from(modifier_hi) << 32) | u64::from(modifier_lo),
            ),
            _ => {}
        }
    }
}

impl Dispatch<feedback::ZwpLinuxDmabufFeedbackV1, ()> for ProbeState {
    fn event(
        state: &mut Self,
        _: &feedback::ZwpLinuxDmabufFeedbackV1,
        event: feedback::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            feedback::Event::FormatTable { fd, size } => match state.read_table(fd, size) {
                Ok(table) => {
                    debug!(entries = table.len(), "host format table");
                    state.table = Some(table);
                }
                Err(err) => state.fail(err),
            },
            feedback::Event::MainDevice { device } => match dmabuf::parse_dev_t(&device) {
                Ok(dev) => state.main_device = dev,
                Err(err) => state.fail(err),
            },
            feedback::Event::TrancheTargetDevice { device } => match dmabuf::parse_dev_t(&device) {
                Ok(dev) => state.tranche_mut().target_device = dev,
                Err(err) => state.fail(err),
            },
            feedback::Event::TrancheFlags { flags } => {
                state.tranche_mut().flags = match flags {
                    WEnum::Value(f) => f.bits(),
                    WEnum::Unknown(v) => v,
                }
            }
            feedback::Event::TrancheFormats { indices } => {
                let parsed = match &state.table {
                    Some(table) => dmabuf::parse_tranche_indices(&indices, table)
                        .map_err(FeedbackError::Malformed),
                    None => Err(FeedbackError::TrancheBeforeTable),
                };
                match parsed {
                    Ok(ix) => state.tranche_mut().indices.extend(ix),
                    Err(err) => state.fail(err),
                }
            }
            feedback::Event::TrancheDone => {
                let tranche = state.tranche.take().unwrap_or_else(empty_tranche);
                if state.tranches.len() >= dmabuf::MAX_TABLE_ENTRIES {
                    state.fail(FeedbackError::TooManyTranches);
                } else {
                    state.tranches.push(tranche);
                }
            }
            feedback::Event::Done => state.feedback_done = true,
            _ => {}
        }
    }
}

impl ProbeState {
    fn tranche_mut(&mut self) -> &mut Tranche {
        self.tranche.get_or_insert_with(empty_tranche)
    }

    /// A v1–v2 `format` event (deprecated by v3's `modifier`, which v3 compositors send too):
    /// a bare format means "implicit modifier", unless a modifier for it came already.
    fn legacy_format(&mut self, format: u32) {
        if self.legacy.modifiers_of(format).next().is_none() {
            self.legacy.push(
                FormatModifier {
                    format,
                    modifier: MOD_INVALID,
                },
                false,
            );
        }
    }

    /// A v3 `modifier` event. A `format` event may have come first: the real pair takes its
    /// place.
    fn legacy_modifier(&mut self, format: u32, modifier: u64) {
        let implicit = FormatModifier {
            format,
            modifier: MOD_INVALID,
        };
        let pair = FormatModifier { format, modifier };
        if self.legacy.contains(implicit) && modifier != MOD_INVALID {
            self.legacy = self
                .legacy
                .iter()
                .map(|p| {
                    if p.pair == implicit {
                        dmabuf::Preference {
                            pair,
                            scanout: false,
                        }
                    } else {
                        *p
                    }
                })
                .collect();
        }
        self.legacy.push(pair, false);
    }
}

fn empty_tranche() -> Tranche {
    Tranche {
        target_device: 0,
        flags: 0,
        indices: Vec::new(),
    }
}

impl Dispatch<sc_manager::WpSecurityContextManagerV1, ()> for ProbeState {
    fn event(
        _: &mut Self,
        _: &sc_manager::WpSecurityContextManagerV1,
        _: sc_manager::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

impl Dispatch<sc::WpSecurityContextV1, ()> for ProbeState {
    fn event(
        _: &mut Self,
        _: &sc::WpSecurityContextV1,
        _: sc::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn legacy_modifier_replaces_implicit_format_in_place() {
        let mut state = ProbeState::default();
        state.legacy_format(1);
        state.legacy_format(2);
        state.legacy_modifier(1, 0x0100_0000_0000_0001);
        state.legacy_modifier(1, 0);
        // A `format` after the format's modifiers adds no implicit pair.
        state.legacy_format(1);
        let pairs: Vec<(u32, u64)> = state
            .feedback_result()
            .unwrap()
            .iter()
            .map(|p| (p.pair.format, p.pair.modifier))
            .collect();
        assert_eq!(
            pairs,
            [(1, 0x0100_0000_0000_0001), (2, MOD_INVALID), (1, 0)]
        );
    }

    #[test]
    fn feedback_without_done_is_refused() {
        let mut state = ProbeState {
            table: FormatTable::from_pairs([FormatModifier {
                format: 1,
                modifier: 0,
            }])
            .ok(),
            ..ProbeState::default()
        };
        assert!(matches!(
            state.feedback_result(),
            Err(FeedbackError::NoDone)
        ));
    }

    #[test]
    fn oversized_format_table_is_refused_before_reading() {
        let mut state = ProbeState {
            limits: ProbeLimits {
                max_format_table_bytes: 32,
                ..ProbeLimits::default()
            },
            ..ProbeState::default()
        };
        let (r, _w) = std::io::pipe().unwrap();
        assert!(matches!(
            state.read_table(r.into(), 48),
            Err(FeedbackError::TableTooLarge {
                size: 48,
                limit: 32
            })
        ));
    }
}
