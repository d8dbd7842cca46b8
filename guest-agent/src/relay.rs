//! The relay of one guest client: every message in both directions is parsed with the
//! protocol tables and an object map, and forwarded unchanged unless its fds must be
//! translated (they cannot cross the VM boundary) or the host's format advertisement must be
//! narrowed to what the guest can allocate.
//!
//! ```text
//!  client ──wire bytes + fds──▶ Session::client_input ──SEND (≤ 3744 B, ≤ 28 ids)──▶ channel
//!  client ◀──wire bytes + fds── Session::host_input ◀──RECEIVE (bytes + items)───── channel
//! ```
//!
//! What becomes of each fd (guest → host):
//! - `wl_shm.create_pool`: the pool is backed by a blob of the same size (a guest blob where
//!   the host accepts them, else a HOST3D blob the host allocated); at each commit the damaged
//!   rows of the surface's buffer are copied from the client's pool into the blob
//!   ([`crate::damage`]), so the host sees a pool on the blob.
//! - `zwp_linux_buffer_params_v1.add`: a virtio-gpu dmabuf goes by its resource id (PRIME
//!   import, RESOURCE_INFO); any other dmabuf is copied into a blob at each commit.
//! - a pipe (`wl_data_offer.receive` and the like): a read pipe; the host's READs are written
//!   into it.
//!
//! and host → guest: blob items (keymaps, format tables) become guest memfds of the exact
//! size, sealed; write-pipe items become a local pipe whose reads go back as WRITEs.
//!
//! The session does no socket I/O: [`crate::server`] reads and writes the client socket and
//! polls the fds this module hands out.

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossway_protocols::capset::CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND;
use crossway_protocols::cross_domain::{
    CROSS_DOMAIN_MAX_IDENTIFIERS, CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA,
};
use crossway_protocols::dmabuf::{FormatModifier, FormatTable};
use crossway_protocols::objects::ObjectMap;
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::virtgpu::{VirtGpu, VirtGpuMapping};
use crossway_protocols::wire::{self, Arg, Message, ObjectId};

use crate::channel::{Blob, Channel, ChannelError, HostItem, HostItemKind, SendId};
use crossway_protocols::damage::{
    BufferLayout, Rect, Region, StaleTracker, SurfaceDamage, copy_ranges,
};

/// `wl_display.error` codes.
mod code {
    pub const INVALID_OBJECT: u32 = 0;
    pub const INVALID_METHOD: u32 = 1;
    pub const NO_MEMORY: u32 = 2;
    pub const IMPLEMENTATION: u32 = 3;
}

/// DRM fourcc ARGB8888, the format the pool-sized HOST3D blobs are asked for.
const ARGB8888: u32 = u32::from_le_bytes(*b"AR24");
/// Width of the pool-sized HOST3D blobs: one 4096-byte row per page.
const POOL_BLOB_WIDTH: u32 = 1024;
/// `DRM_FORMAT_MOD_LINEAR`.
const LINEAR: u64 = 0;
/// GBM usage bits of the pool blobs (`GBM_BO_USE_LINEAR`).
const GBM_BO_USE_LINEAR: u32 = 1 << 4;

/// Limits of one guest client, all enforced before memory is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest `wl_shm` pool (bytes).
    pub max_pool_bytes: u64,
    /// Largest pool backed by a guest blob; larger ones use a HOST3D blob.
    pub max_guest_blob_pool: u64,
    /// Bytes of all the client's blobs together (pools and copied dmabufs): a client can
    /// reserve large sparse memfds for nothing, while each blob takes guest or host memory.
    pub max_blob_bytes: u64,
    /// Most live `wl_shm` pools plus copied dmabufs (blobs; a destroyed pool counts while
    /// buffers made from it live).
    pub max_pools: usize,
    /// Most live objects.
    pub max_objects: usize,
    /// Fds received but not yet matched to a message.
    pub max_pending_fds: usize,
    /// Dmabuf plane fds held in `zwp_linux_buffer_params_v1` objects not yet used (the agent
    /// keeps them until `create`, so a client could otherwise hold 4 per params object).
    pub max_plane_fds: usize,
    /// Bytes of one partial message kept between reads.
    pub max_pending_bytes: usize,
    /// Bytes queued for the client before it is dropped as not reading.
    pub max_client_queue: usize,
    /// Bytes queued towards one read pipe before its reader is dropped.
    pub max_pipe_queue: usize,
    /// Largest host blob item turned into a guest memfd (keymaps, format tables): each is
    /// read into memory whole.
    pub max_item_bytes: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_pool_bytes: 512 << 20,
            max_guest_blob_pool: 64 << 20,
            // foot reserves a 512 MiB pool per scrollable buffer and keeps several.
            max_blob_bytes: 8 << 30,
            max_pools: 1024,
            max_objects: 65_536,
            max_pending_fds: 256,
            max_plane_fds: 256,
            max_pending_bytes: wire::MAX_MESSAGE_SIZE,
            max_client_queue: 8 << 20,
            max_pipe_queue: 4 << 20,
            max_item_bytes: 16 << 20,
        }
    }
}

/// Settings a session shares with the others.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Limits.
    pub limits: SessionLimits,
    /// `dev_t` of the guest's render node: the dmabuf feedback's main and target device
    /// become this one. `None` (the loopback device) keeps the host's.
    pub guest_dev: Option<u64>,
}

/// Counters of the whole agent (all clients), for `--stats-file`.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Clients accepted.
    pub clients: AtomicU64,
    /// Clients that ended with a protocol error sent by the agent.
    pub clients_refused: AtomicU64,
    /// Messages client → host.
    pub messages_to_host: AtomicU64,
    /// Messages host → client.
    pub messages_to_guest: AtomicU64,
    /// Wayland bytes client → host.
    pub bytes_to_host: AtomicU64,
    /// Wayland bytes host → client.
    pub bytes_to_guest: AtomicU64,
    /// SEND commands.
    pub sends: AtomicU64,
    /// Commits of a surface with a buffer.
    pub frames: AtomicU64,
    /// Bytes of the damage of those commits (buffer coordinates, clipped).
    pub damaged_bytes: AtomicU64,
    /// Bytes the agent copied from client memory into blobs.
    pub bytes_copied: AtomicU64,
    /// `wl_shm` pools, each backed by a blob.
    pub shm_pools: AtomicU64,
    /// Dmabufs forwarded by resource id (no copy).
    pub dmabufs_forwarded: AtomicU64,
    /// Dmabufs copied into a blob (not virtio-gpu resources).
    pub dmabufs_copied: AtomicU64,
    /// Host memfds (keymaps, format tables) turned into guest memfds.
    pub host_items: AtomicU64,
    /// Bytes through clipboard and drag-and-drop pipes, both ways.
    pub pipe_bytes: AtomicU64,
}

impl AgentStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as a JSON object.
    pub fn to_json(&self) -> String {
        let fields: [(&str, &AtomicU64); 15] = [
            ("clients", &self.clients),
            ("clients_refused", &self.clients_refused),
            ("messages_to_host", &self.messages_to_host),
            ("messages_to_guest", &self.messages_to_guest),
            ("bytes_to_host", &self.bytes_to_host),
            ("bytes_to_guest", &self.bytes_to_guest),
            ("sends", &self.sends),
            ("frames", &self.frames),
            ("damaged_bytes", &self.damaged_bytes),
            ("bytes_copied", &self.bytes_copied),
            ("shm_pools", &self.shm_pools),
            ("dmabufs_forwarded", &self.dmabufs_forwarded),
            ("dmabufs_copied", &self.dmabufs_copied),
            ("host_items", &self.host_items),
            ("pipe_bytes", &self.pipe_bytes),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {}", v.load(Ordering::Relaxed)))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }
}

/// Why a session ends.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client broke the protocol or a limit; it was sent `wl_display.error`.
    #[error("client error on object {object} (code {code}): {message}")]
    Client {
        /// Object named in the error.
        object: u32,
        /// `wl_display.error` code.
        code: u32,
        /// What went wrong.
        message: String,
    },
    /// The host sent something this agent cannot relay.
    #[error("host: {0}")]
    Host(String),
    /// The channel failed.
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
}

fn client_err(object: u32, code: u32, message: impl Into<String>) -> SessionError {
    SessionError::Client {
        object,
        code,
        message: message.into(),
    }
}

fn host_err(message: impl Into<String>) -> SessionError {
    SessionError::Host(message.into())
}

/// Bytes and fds for the client, fds tagged with the offset of their message.
#[derive(Debug, Default)]
pub struct ToClient {
    /// Wire bytes.
    pub bytes: Vec<u8>,
    /// Fds, each with the offset in `bytes` of the message that carries it.
    pub fds: VecDeque<(usize, OwnedFd)>,
}

/// A host write-pipe item the client writes into: the agent reads the local pipe and WRITEs.
#[derive(Debug)]
pub struct HostWritePipe {
    /// The host's pipe id.
    pub id: u32,
    /// Read end of the local pipe.
    pub read: OwnedFd,
}

/// A read pipe: the host's READs for `id` go into `write`.
#[derive(Debug)]
pub struct ClientReadPipe {
    /// Write end the client gave.
    pub write: OwnedFd,
    /// Bytes not yet written.
    pub queue: VecDeque<u8>,
    /// The host hung up: close once `queue` is empty.
    pub hang_up: bool,
}

/// A blob shared by a pool (or copied dmabuf) and its buffers.
struct SharedBlob<M> {
    blob: Blob<M>,
    refs: usize,
}

struct Pool {
    /// The client's memory.
    file: Rc<File>,
    /// Bytes of the pool as the client sized it.
    size: u64,
    /// GEM handle of the blob behind it.
    bo: u32,
}

/// A buffer whose content the agent copies into a blob at each commit.
struct CopiedBuffer {
    file: Rc<File>,
    /// Bytes of the client's memory the layout may read.
    source_size: u64,
    bo: u32,
    layout: BufferLayout,
    /// The blob's layout when the host chose another stride or offset (HOST3D images).
    blob_layout: Option<BufferLayout>,
}

#[derive(Default)]
struct Surface {
    damage: SurfaceDamage,
    /// `Some(b)` after an attach not yet committed (`b` = null or a buffer).
    pending: Option<Option<u32>>,
    current: Option<u32>,
}

struct Plane {
    fd: OwnedFd,
    plane: u32,
    offset: u32,
    stride: u32,
    modifier: u64,
}

/// One dmabuf feedback object's table translation.
#[derive(Default)]
struct FeedbackState {
    /// Host table index → guest table index.
    map: Vec<Option<u16>>,
}

/// Blobs and imported GEM handles no object uses any more, closed by
/// [`Session::release_deferred`].
struct Deferred<M> {
    blobs: Vec<Blob<M>>,
    handles: Vec<u32>,
}

/// Messages relayed towards the host and not sent yet, written once: their bytes one after
/// another, the identifiers of their fds in order, and where each message ends in both. A
/// SEND is a slice of each.
#[derive(Default)]
struct SendQueue {
    bytes: Vec<u8>,
    ids: Vec<SendId>,
    /// (end in `bytes`, end in `ids`) of each message.
    ends: Vec<(usize, usize)>,
    /// Fds waiting for a read-pipe id from their SEND, in `ids` order.
    pipes: VecDeque<OwnedFd>,
}

impl SendQueue {
    /// Where the next message starts.
    fn mark(&self) -> (usize, usize, usize) {
        (self.bytes.len(), self.ids.len(), self.pipes.len())
    }

    /// Closes the message begun at `mark`, if it wrote anything.
    fn end_message(&mut self, mark: (usize, usize, usize)) {
        if self.bytes.len() > mark.0 {
            self.ends.push((self.bytes.len(), self.ids.len()));
        }
    }

    /// Forgets a message begun at `mark` that failed half-way.
    fn rollback(&mut self, (bytes, ids, pipes): (usize, usize, usize)) {
        self.bytes.truncate(bytes);
        self.ids.truncate(ids);
        self.pipes.truncate(pipes);
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ids.clear();
        self.ends.clear();
        self.pipes.clear();
    }
}

/// The relay state of one guest client and its channel.
pub struct Session<D: VirtGpu> {
    ch: Channel<D>,
    config: Arc<SessionConfig>,
    stats: Arc<AgentStats>,
    map: ObjectMap,
    client_pending: Vec<u8>,
    client_fds: VecDeque<OwnedFd>,
    host_pending: Vec<u8>,
    host_items: VecDeque<HostItem>,
    blobs: HashMap<u32, SharedBlob<D::Mapping>>,
    pools: HashMap<u32, Pool>,
    buffers: HashMap<u32, CopiedBuffer>,
    /// Dmabuf buffers forwarded by resource: the GEM handles to close with them.
    imported: HashMap<u32, Vec<u32>>,
    /// References to each imported GEM handle: PRIME import of a dmabuf the device file
    /// already knows returns the same handle, and one GEM_CLOSE closes it for all.
    import_refs: HashMap<u32, usize>,
    surfaces: HashMap<u32, Surface>,
    viewports: HashMap<u32, u32>,
    stale: StaleTracker,
    params: HashMap<u32, Vec<Plane>>,
    /// Plane fds held in `params`.
    plane_fds: usize,
    /// `create` (not immed) params waiting for the host's `created`: what the buffer will be.
    params_waiting: HashMap<u32, Option<CopiedBuffer>>,
    params_imported: HashMap<u32, Vec<u32>>,
    feedback: HashMap<u32, FeedbackState>,
    sendq: SendQueue,
    /// Let go of, closed once the SENDs queued so far are out.
    release: Deferred<D::Mapping>,
    /// Pipes the host writes into.
    pub read_pipes: HashMap<u32, ClientReadPipe>,
    /// Pipes the client writes into, for the server to poll.
    pub write_pipes: Vec<HostWritePipe>,
    /// What goes to the client next.
    pub to_client: ToClient,
    /// The client was sent a protocol error: flush and close.
    pub closing: bool,
}

impl<D: VirtGpu> std::fmt::Debug for Session<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("objects", &self.map.live())
            .field("pools", &self.pools.len())
            .field("buffers", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

fn id(o: ObjectId) -> u32 {
    o.get()
}

fn shape(object: u32, iface: &str, name: &str) -> SessionError {
    client_err(
        object,
        code::INVALID_METHOD,
        format!("{iface}.{name}: unexpected arguments"),
    )
}

impl<D: VirtGpu> Session<D> {
    /// A session over an open channel.
    pub fn new(ch: Channel<D>, config: Arc<SessionConfig>, stats: Arc<AgentStats>) -> Self {
        let max_objects = config.limits.max_objects;
        Session {
            ch,
            config,
            stats,
            map: ObjectMap::new(max_objects),
            client_pending: Vec::new(),
            client_fds: VecDeque::new(),
            host_pending: Vec::new(),
            host_items: VecDeque::new(),
            blobs: HashMap::new(),
            pools: HashMap::new(),
            buffers: HashMap::new(),
            imported: HashMap::new(),
            import_refs: HashMap::new(),
            surfaces: HashMap::new(),
            viewports: HashMap::new(),
            stale: StaleTracker::default(),
            params: HashMap::new(),
            plane_fds: 0,
            params_waiting: HashMap::new(),
            params_imported: HashMap::new(),
            feedback: HashMap::new(),
            sendq: SendQueue::default(),
            release: Deferred {
                blobs: Vec::new(),
                handles: Vec::new(),
            },
            read_pipes: HashMap::new(),
            write_pipes: Vec::new(),
            to_client: ToClient::default(),
            closing: false,
        }
    }

    /// The channel (for the server's poll and its host messages).
    pub fn channel(&mut self) -> &mut Channel<D> {
        &mut self.ch
    }

    /// Queues `wl_display.error` for the client after a [`SessionError::Client`].
    pub fn send_error(&mut self, object: u32, code: u32, message: &str) {
        let text = sanitize(message);
        let obj = ObjectId::new(object).unwrap_or(ObjectId::DISPLAY);
        let args = [
            Arg::Object(Some(obj)),
            Arg::Uint(code),
            Arg::Str(Some(text.as_c_str())),
        ];
        if wire::encode_unchecked(&mut self.to_client.bytes, ObjectId::DISPLAY, 0, &args).is_err() {
            tracing::warn!("could not encode the error for the client");
        }
        AgentStats::add(&self.stats.clients_refused, 1);
        self.closing = true;
    }

    /// Relays what the client sent: bytes (maybe a partial message) and the fds that came
    /// with them. SENDs go out before this returns.
    pub fn client_input(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) -> Result<(), SessionError> {
        self.client_fds.extend(fds);
        if self.client_fds.len() > self.config.limits.max_pending_fds {
            return Err(client_err(
                1,
                code::NO_MEMORY,
                format!(
                    "{} fds not matched to messages, over the limit {}",
                    self.client_fds.len(),
                    self.config.limits.max_pending_fds
                ),
            ));
        }
        let mut pending = std::mem::take(&mut self.client_pending);
        let result = reassemble(
            &mut pending,
            bytes,
            |raw, msg| self.client_message(raw, msg),
            |e| client_err(1, code::INVALID_METHOD, format!("framing: {e}")),
        );
        self.client_pending = pending;
        // Whatever was relayed before an error still goes out, in order.
        let flushed = self.flush_sends();
        self.release_deferred();
        result?;
        flushed?;
        if self.client_pending.len() > self.config.limits.max_pending_bytes {
            return Err(client_err(
                1,
                code::NO_MEMORY,
                "partial message over the size limit",
            ));
        }
        Ok(())
    }

    /// Relays one request into the send queue, all of it or (on error) none of it.
    fn client_message(&mut self, raw: &[u8], msg: &Message<'_>) -> Result<(), SessionError> {
        let mark = self.sendq.mark();
        let r = self.relay_request(raw, msg);
        match &r {
            Ok(()) => self.sendq.end_message(mark),
            Err(_) => self.sendq.rollback(mark),
        }
        r
    }

    fn relay_request(&mut self, raw: &[u8], msg: &Message<'_>) -> Result<(), SessionError> {
        let sender = id(msg.header.object);
        let p = self
            .map
            .process_request(ProtocolTable::builtin(), msg, self.client_fds.len())
            .map_err(|e| client_err(sender, code::INVALID_OBJECT, e.to_string()))?;
        AgentStats::add(&self.stats.messages_to_host, 1);
        AgentStats::add(&self.stats.bytes_to_host, raw.len() as u64);
        let mut fds = take_front(&mut self.client_fds, p.args.fd_count());
        let iface = p.interface.name;
        let name = p.desc.name;
        let args = p.args.as_slice();
        let mut forward = true;
        match (iface, name) {
            ("wl_shm", "create_pool") => {
                let ([Arg::NewId(pool), Arg::Fd, Arg::Int(size)], [_]) = (args, &fds[..]) else {
                    return Err(shape(sender, iface, name));
                };
                let fd = fds.pop().ok_or_else(|| shape(sender, iface, name))?;
                let res = self.create_pool(sender, id(*pool), fd, *size)?;
                self.sendq.ids.push(SendId::Blob(res));
            }
            ("wl_shm_pool", "create_buffer") => {
                let [
                    Arg::NewId(buffer),
                    Arg::Int(offset),
                    Arg::Int(width),
                    Arg::Int(height),
                    Arg::Int(stride),
                    Arg::Uint(format),
                ] = args
                else {
                    return Err(shape(sender, iface, name));
                };
                self.create_shm_buffer(
                    sender,
                    id(*buffer),
                    *offset,
                    (*width, *height),
                    *stride,
                    *format,
                )?;
            }
            ("wl_shm_pool", "resize") => {
                let [Arg::Int(size)] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.resize_pool(sender, *size)?;
            }
            ("wl_shm_pool", "destroy") => {
                if let Some(pool) = self.pools.remove(&sender) {
                    self.unref_blob(pool.bo);
                }
            }
            ("wl_buffer", "destroy") => self.forget_buffer(sender),
            ("wl_surface", "attach") => {
                let [Arg::Object(buffer), _, _] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender).pending = Some(buffer.map(id));
            }
            ("wl_surface", "damage") => {
                let [Arg::Int(x), Arg::Int(y), Arg::Int(w), Arg::Int(h)] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender).damage.damage_surface(*x, *y, *w, *h);
            }
            ("wl_surface", "damage_buffer") => {
                let [Arg::Int(x), Arg::Int(y), Arg::Int(w), Arg::Int(h)] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender).damage.damage_buffer(*x, *y, *w, *h);
            }
            ("wl_surface", "set_buffer_transform") => {
                let [Arg::Int(t)] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender)
                    .damage
                    .set_buffer_transform(*t)
                    .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
            }
            ("wl_surface", "set_buffer_scale") => {
                let [Arg::Int(s)] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender)
                    .damage
                    .set_buffer_scale(*s)
                    .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
            }
            ("wl_surface", "commit") => self.commit(sender)?,
            ("wl_surface", "destroy") => {
                self.surfaces.remove(&sender);
                self.stale.forget_surface(sender);
                // The surface's viewports are inert now (wp_viewport: no_surface); its id may
                // name a new surface next, which they must not reach.
                self.viewports.retain(|_, s| *s != sender);
            }
            ("wp_viewporter", "get_viewport") => {
                if let [Arg::NewId(v), Arg::Object(Some(s))] = args {
                    self.viewports.insert(id(*v), id(*s));
                }
            }
            ("wp_viewport", "set_source") => {
                let [Arg::Fixed(x), Arg::Fixed(y), Arg::Fixed(w), Arg::Fixed(h)] = args else {
                    return Err(shape(sender, iface, name));
                };
                let src = [x.0, y.0, w.0, h.0];
                let unset = src.iter().all(|v| *v == -256);
                if let Some(s) = self.viewports.get(&sender).copied() {
                    self.surface(s)
                        .damage
                        .set_viewport_source((!unset).then_some(src))
                        .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
                }
            }
            ("wp_viewport", "set_destination") => {
                let [Arg::Int(w), Arg::Int(h)] = args else {
                    return Err(shape(sender, iface, name));
                };
                let unset = *w == -1 && *h == -1;
                if let Some(s) = self.viewports.get(&sender).copied() {
                    self.surface(s)
                        .damage
                        .set_viewport_destination((!unset).then_some((*w, *h)))
                        .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
                }
            }
            ("wp_viewport", "destroy") => {
                if let Some(s) = self.viewports.remove(&sender)
                    && let Some(surface) = self.surfaces.get_mut(&s)
                {
                    // Errors are impossible for "unset".
                    let _ = surface.damage.set_viewport_source(None);
                    let _ = surface.damage.set_viewport_destination(None);
                }
            }
            ("zwp_linux_dmabuf_v1", "create_params") => {
                if let [Arg::NewId(p)] = args {
                    self.params.insert(id(*p), Vec::new());
                }
            }
            ("zwp_linux_buffer_params_v1", "add") => {
                let [
                    Arg::Fd,
                    Arg::Uint(plane),
                    Arg::Uint(offset),
                    Arg::Uint(stride),
                    Arg::Uint(hi),
                    Arg::Uint(lo),
                ] = args
                else {
                    return Err(shape(sender, iface, name));
                };
                let fd = fds.pop().ok_or_else(|| shape(sender, iface, name))?;
                if self.plane_fds >= self.config.limits.max_plane_fds {
                    return Err(client_err(
                        sender,
                        code::NO_MEMORY,
                        format!(
                            "more than {} dmabuf planes held in params objects",
                            self.config.limits.max_plane_fds
                        ),
                    ));
                }
                // Params leave the map at `create`: an `add` after it is already_used (0),
                // which the host cannot see because `add` is held back here.
                let planes = self
                    .params
                    .get_mut(&sender)
                    .ok_or_else(|| client_err(sender, 0, "params already used"))?;
                if planes.len() >= 4 {
                    return Err(client_err(sender, 1, "more than 4 planes"));
                }
                self.plane_fds += 1;
                planes.push(Plane {
                    fd,
                    plane: *plane,
                    offset: *offset,
                    stride: *stride,
                    modifier: (u64::from(*hi) << 32) | u64::from(*lo),
                });
                // Held back: sent with `create`, once the buffer's size and format are known.
                forward = false;
            }
            ("zwp_linux_buffer_params_v1", "create" | "create_immed") => {
                let (buffer, rest) = match args {
                    [Arg::NewId(b), rest @ ..] => (Some(id(*b)), rest),
                    rest => (None, rest),
                };
                let [Arg::Int(w), Arg::Int(h), Arg::Uint(format), Arg::Uint(_)] = rest else {
                    return Err(shape(sender, iface, name));
                };
                self.create_dmabuf(sender, buffer, (*w, *h), *format)?;
            }
            ("zwp_linux_buffer_params_v1", "destroy") => {
                self.take_params(sender);
            }
            ("zwp_linux_dmabuf_feedback_v1", "destroy") => {
                self.feedback.remove(&sender);
            }
            _ => {
                // Any other fd: a pipe the client reads (the host writes into it).
                for fd in fds.drain(..) {
                    if !is_fifo(fd.as_fd()) {
                        return Err(client_err(
                            sender,
                            code::IMPLEMENTATION,
                            format!("{iface}.{name}: only pipes can be passed here"),
                        ));
                    }
                    self.sendq.ids.push(SendId::ReadPipe);
                    self.sendq.pipes.push_back(fd);
                }
            }
        }
        if forward {
            self.sendq.bytes.extend_from_slice(raw);
        }
        Ok(())
    }

    /// The planes of a params object, which is used or gone from now on.
    fn take_params(&mut self, params: u32) -> Vec<Plane> {
        let planes = self.params.remove(&params).unwrap_or_default();
        self.plane_fds = self.plane_fds.saturating_sub(planes.len());
        planes
    }

    /// Counts one more user of an imported GEM handle.
    fn ref_import(&mut self, handle: u32) {
        *self.import_refs.entry(handle).or_default() += 1;
    }

    /// Drops users of imported GEM handles, closing each when its last user goes.
    fn unref_imports(&mut self, handles: Vec<u32>) {
        for h in handles {
            let Some(refs) = self.import_refs.get_mut(&h) else {
                continue;
            };
            *refs = refs.saturating_sub(1);
            if *refs > 0 {
                continue;
            }
            self.import_refs.remove(&h);
            if !self.release.handles.contains(&h) {
                self.release.handles.push(h);
            }
        }
    }

    /// Records a copied buffer, letting go of what an earlier buffer of the same id held.
    fn insert_buffer(&mut self, buffer: u32, entry: CopiedBuffer) {
        if let Some(old) = self.buffers.insert(buffer, entry) {
            self.unref_blob(old.bo);
        }
    }

    /// Records the imported handles of a forwarded dmabuf buffer.
    fn insert_imported(&mut self, buffer: u32, handles: Vec<u32>) {
        if let Some(old) = self.imported.insert(buffer, handles) {
            self.unref_imports(old);
        }
    }

    fn surface(&mut self, surface: u32) -> &mut Surface {
        self.surfaces.entry(surface).or_default()
    }

    /// A blob of at least `size` bytes whose bytes map 1:1 to a pool's: a guest blob where
    /// the host accepts them in SEND, else a linear HOST3D image of 4096-byte rows. Pools over
    /// [`SessionLimits::max_guest_blob_pool`] take a HOST3D blob too: clients such as foot
    /// reserve a large sparse pool and touch little of it, and host memory is allocated as
    /// touched where a guest blob's pages are all pinned at creation.
    fn pool_blob(&mut self, size: u64) -> Result<Blob<D::Mapping>, ChannelError> {
        let guest_ok = self
            .ch
            .caps()
            .crossway
            .as_ref()
            .is_some_and(|c| c.flags & CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND != 0);
        if guest_ok && size <= self.config.limits.max_guest_blob_pool {
            return self.ch.create_guest_blob(size);
        }
        // Hosts cap image sides (16384 is common): wide rows for large pools.
        let width = if size <= u64::from(POOL_BLOB_WIDTH) * 4 * 16384 {
            POOL_BLOB_WIDTH
        } else {
            POOL_BLOB_WIDTH * 16
        };
        let row = u64::from(width) * 4;
        let rows = u32::try_from(size.div_ceil(row).max(1))
            .map_err(|_| ChannelError::TooMuchData(usize::MAX))?;
        let req = self
            .ch
            .image_requirements(width, rows, ARGB8888, GBM_BO_USE_LINEAR)?;
        if req.offsets[0] != 0 || req.size < size {
            return Err(ChannelError::BadImageRequirements {
                width,
                height: rows,
                what: "the host's image does not hold the pool contiguously",
            });
        }
        self.ch.blob_for_image(&req)
    }

    fn add_blob(&mut self, blob: Blob<D::Mapping>) -> (u32, u32) {
        let bo = blob.bo_handle;
        let res = blob.res_id;
        self.blobs.insert(bo, SharedBlob { blob, refs: 1 });
        (bo, res)
    }

    fn unref_blob(&mut self, bo: u32) {
        let Some(b) = self.blobs.get_mut(&bo) else {
            return;
        };
        b.refs = b.refs.saturating_sub(1);
        if b.refs == 0
            && let Some(b) = self.blobs.remove(&bo)
        {
            self.release.blobs.push(b.blob);
        }
    }

    /// Closes the blobs and imported handles let go of since the last call. Not before: a
    /// SEND naming them may still be queued in `sendq` (a pool created and destroyed in one
    /// read, a dmabuf buffer created and destroyed), and the host resolves the resource id
    /// only when the SEND arrives.
    fn release_deferred(&mut self) {
        for blob in std::mem::take(&mut self.release.blobs) {
            let bo = blob.bo_handle;
            if let Err(e) = self.ch.close_blob(blob) {
                tracing::warn!("closing blob {bo}: {e}");
            }
        }
        for h in std::mem::take(&mut self.release.handles) {
            // Imported again since (PRIME gave the same handle back): still in use.
            if self.import_refs.contains_key(&h) {
                continue;
            }
            if let Err(e) = self.ch.device().gem_close(h) {
                tracing::warn!("closing imported dmabuf handle {h}: {e}");
            }
        }
    }

    /// `wl_shm.create_pool` on `shm`. Errors name the `wl_shm` with its codes, as
    /// libwayland-server does (invalid_stride for the size, invalid_fd for the file).
    fn create_pool(
        &mut self,
        shm: u32,
        pool: u32,
        fd: OwnedFd,
        size: i32,
    ) -> Result<u32, SessionError> {
        const INVALID_STRIDE: u32 = 1;
        const INVALID_FD: u32 = 2;
        let max = self.config.limits.max_pool_bytes;
        let size = u64::try_from(size)
            .ok()
            .filter(|s| *s > 0 && *s <= max)
            .ok_or_else(|| {
                client_err(
                    shm,
                    INVALID_STRIDE,
                    format!("pool size {size} is not in 1..={max}"),
                )
            })?;
        self.check_pools(shm, size)?;
        let file = File::from(fd);
        let actual = file
            .metadata()
            .map_err(|e| client_err(shm, INVALID_FD, format!("pool fd: {e}")))?
            .len();
        if actual < size {
            return Err(client_err(
                shm,
                INVALID_FD,
                format!("pool of {size} bytes on a file of {actual}"),
            ));
        }
        let blob = self.pool_blob(size).map_err(|e| {
            client_err(
                shm,
                code::NO_MEMORY,
                format!("no blob for a pool of {size} bytes: {e}"),
            )
        })?;
        let (bo, res) = self.add_blob(blob);
        self.pools.insert(
            pool,
            Pool {
                file: Rc::new(file),
                size,
                bo,
            },
        );
        AgentStats::add(&self.stats.shm_pools, 1);
        Ok(res)
    }

    /// Refuses one more blob-backed pool or copied dmabuf of `bytes` over
    /// [`SessionLimits::max_pools`] or [`SessionLimits::max_blob_bytes`].
    fn check_pools(&self, object: u32, bytes: u64) -> Result<(), SessionError> {
        let held: u64 = self.blobs.values().map(|b| b.blob.size).sum();
        let max = self.config.limits.max_blob_bytes;
        if held.checked_add(bytes).is_none_or(|total| total > max) {
            return Err(client_err(
                object,
                code::NO_MEMORY,
                format!("{bytes} more blob bytes over the limit {max} ({held} held)"),
            ));
        }
        // One blob each, kept while a buffer uses it (after `wl_shm_pool.destroy` too).
        if self.blobs.len() >= self.config.limits.max_pools {
            return Err(client_err(
                object,
                code::NO_MEMORY,
                format!(
                    "more than {} pools and copied dmabufs",
                    self.config.limits.max_pools
                ),
            ));
        }
        Ok(())
    }

    fn resize_pool(&mut self, pool: u32, size: i32) -> Result<(), SessionError> {
        let Some(p) = self.pools.get_mut(&pool) else {
            return Ok(());
        };
        let size = u64::try_from(size).unwrap_or(0);
        let capacity = self.blobs.get(&p.bo).map_or(0, |b| b.blob.size);
        if size < p.size {
            return Err(client_err(pool, 2, "wl_shm_pool.resize cannot shrink"));
        }
        if size > capacity {
            return Err(client_err(
                pool,
                code::IMPLEMENTATION,
                format!(
                    "wl_shm_pool.resize to {size} bytes: crossway-agent backs a pool with a \
                     blob of fixed size ({capacity}); create a new pool instead"
                ),
            ));
        }
        let actual = p.file.metadata().map(|m| m.len()).unwrap_or(0);
        if actual < size {
            return Err(client_err(
                pool,
                2,
                format!("pool resized to {size} bytes on a file of {actual}"),
            ));
        }
        p.size = size;
        Ok(())
    }

    fn create_shm_buffer(
        &mut self,
        pool: u32,
        buffer: u32,
        offset: i32,
        (width, height): (i32, i32),
        stride: i32,
        format: u32,
    ) -> Result<(), SessionError> {
        let Some(p) = self.pools.get(&pool) else {
            return Err(client_err(pool, code::INVALID_OBJECT, "unknown pool"));
        };
        let bpp = crossway_protocols::damage::shm_bytes_per_pixel(format).ok_or_else(|| {
            client_err(pool, 0, format!("wl_shm format {format:#x} not supported"))
        })?;
        let layout = BufferLayout {
            offset: u64::try_from(offset).map_err(|_| client_err(pool, 1, "negative offset"))?,
            width,
            height,
            stride,
            bytes_per_pixel: bpp,
        };
        // An empty region checks the layout against the pool.
        let full = full_region(width, height);
        copy_ranges(&layout, &full, p.size)
            .map_err(|e| client_err(pool, 1, format!("buffer layout: {e}")))?;
        let entry = CopiedBuffer {
            file: p.file.clone(),
            source_size: p.size,
            bo: p.bo,
            layout,
            blob_layout: None,
        };
        if let Some(b) = self.blobs.get_mut(&entry.bo) {
            b.refs += 1;
        }
        self.insert_buffer(buffer, entry);
        Ok(())
    }

    fn forget_buffer(&mut self, buffer: u32) {
        if let Some(b) = self.buffers.remove(&buffer) {
            self.unref_blob(b.bo);
        }
        if let Some(handles) = self.imported.remove(&buffer) {
            self.unref_imports(handles);
        }
        self.stale.forget_buffer(buffer);
        // A later buffer may reuse the id: what the surfaces remember of this one must not
        // reach it (committing without a new attach shows nothing new).
        for s in self.surfaces.values_mut() {
            if s.current == Some(buffer) {
                s.current = None;
            }
            if s.pending == Some(Some(buffer)) {
                s.pending = Some(None);
            }
        }
    }

    fn commit(&mut self, surface: u32) -> Result<(), SessionError> {
        let s = self.surfaces.entry(surface).or_default();
        if let Some(b) = s.pending.take() {
            s.current = b;
        }
        let Some(buffer) = s.current else {
            // Nothing to show; drop the damage with the commit.
            let _ = s.damage.commit(None);
            return Ok(());
        };
        let Some(b) = self.buffers.get(&buffer) else {
            // A dmabuf forwarded by resource, or a buffer the agent does not copy.
            let _ = s.damage.commit(None);
            AgentStats::add(&self.stats.frames, 1);
            return Ok(());
        };
        let size = (b.layout.width, b.layout.height);
        let damage = s.damage.commit(Some(size));
        let bpp = u64::from(b.layout.bytes_per_pixel);
        AgentStats::add(&self.stats.frames, 1);
        AgentStats::add(&self.stats.damaged_bytes, damage.area() * bpp);
        let region = self.stale.commit(surface, buffer, size, &damage);
        if region.is_empty() {
            return Ok(());
        }
        let Some(b) = self.buffers.get(&buffer) else {
            return Ok(());
        };
        let src_ranges = copy_ranges(&b.layout, &region, b.source_size)
            .map_err(|e| client_err(buffer, code::INVALID_OBJECT, e.to_string()))?;
        // A buffer holds a reference on its blob, so the blob is there while the buffer is.
        let blob = &self
            .blobs
            .get(&b.bo)
            .ok_or_else(|| host_err("a copied buffer without its blob"))?
            .blob;
        let plan = match &b.blob_layout {
            None => src_ranges
                .iter()
                .map(|r| (r.start, r.start, r.end - r.start))
                .collect(),
            Some(dst) => relayout(&b.layout, dst, &src_ranges)
                .ok_or_else(|| host_err("the blob's layout does not hold the buffer"))?,
        };
        let mut copied = 0;
        for (src, dst, len) in plan {
            if dst.checked_add(len).is_none_or(|end| end > blob.size) {
                return Err(host_err("the blob's layout does not hold the buffer"));
            }
            read_into(&b.file, src, &blob.mapping, dst, len).map_err(|e| {
                client_err(
                    buffer,
                    code::INVALID_OBJECT,
                    format!("reading the client's buffer: {e}"),
                )
            })?;
            copied += len;
        }
        AgentStats::add(&self.stats.bytes_copied, copied);
        // Buffers sharing bytes with this one were overwritten in the blob: copy them in full
        // at their next commit.
        let (bo, layout) = (b.bo, b.layout);
        let overlapping: Vec<u32> = self
            .buffers
            .iter()
            .filter(|(id, o)| **id != buffer && o.bo == bo && o.layout.overlaps(&layout))
            .map(|(id, _)| *id)
            .collect();
        for o in overlapping {
            self.stale.forget_buffer(o);
        }
        Ok(())
    }

    fn create_dmabuf(
        &mut self,
        params: u32,
        buffer: Option<u32>,
        (width, height): (i32, i32),
        format: u32,
    ) -> Result<(), SessionError> {
        let planes = self.take_params(params);
        if planes.is_empty() {
            // The host answers with its own error (incomplete).
            return Ok(());
        }
        // Zero copy: every plane is a virtio-gpu resource of this device.
        let mut handles = Vec::new();
        let mut resources = Vec::new();
        for p in &planes {
            match self.ch.device().prime_fd_to_handle(p.fd.as_fd()) {
                Ok(h) => {
                    self.ref_import(h);
                    handles.push(h);
                    match self.ch.device().resource_info(h) {
                        Ok(info) => resources.push(info.res_handle),
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        if resources.len() == planes.len() {
            for (p, res) in planes.iter().zip(&resources) {
                add_plane_message(
                    &mut self.sendq.bytes,
                    params,
                    p,
                    p.offset,
                    p.stride,
                    p.modifier,
                )?;
                self.sendq.ids.push(SendId::Blob(*res));
            }
            AgentStats::add(&self.stats.dmabufs_forwarded, 1);
            match buffer {
                Some(b) => self.insert_imported(b, handles),
                None => {
                    if let Some(old) = self.params_imported.insert(params, handles) {
                        self.unref_imports(old);
                    }
                }
            }
            return Ok(());
        }
        self.unref_imports(handles);
        // Copy path: one plane of a format with a known pixel size.
        let [p] = &planes[..] else {
            return Err(client_err(
                params,
                code::IMPLEMENTATION,
                "multi-planar dmabufs that are not virtio-gpu resources cannot be relayed",
            ));
        };
        let bpp = fourcc_bytes_per_pixel(format).ok_or_else(|| {
            client_err(
                params,
                code::IMPLEMENTATION,
                format!(
                    "dmabuf format {format:#x} is not a virtio-gpu resource and cannot be copied"
                ),
            )
        })?;
        if p.modifier != LINEAR {
            return Err(client_err(
                params,
                code::IMPLEMENTATION,
                "only LINEAR dmabufs that are not virtio-gpu resources can be copied",
            ));
        }
        self.check_pools(params, 0)?;
        let file = File::from(
            p.fd.try_clone()
                .map_err(|e| client_err(params, code::NO_MEMORY, format!("dup: {e}")))?,
        );
        let source_size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let layout = BufferLayout {
            offset: u64::from(p.offset),
            width,
            height,
            stride: i32::try_from(p.stride).map_err(|_| client_err(params, 3, "stride"))?,
            bytes_per_pixel: bpp,
        };
        copy_ranges(&layout, &full_region(width, height), source_size)
            .map_err(|e| client_err(params, 5, format!("dmabuf layout: {e}")))?;
        // A blob the host can display with the client's layout where guest blobs are taken;
        // else the host's own image layout.
        let guest_ok = self
            .ch
            .caps()
            .crossway
            .as_ref()
            .is_some_and(|c| c.flags & CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND != 0);
        let (blob, blob_layout, offset, stride, modifier) = if guest_ok {
            self.check_pools(params, source_size)?;
            let b = self
                .ch
                .create_guest_blob(source_size)
                .map_err(|e| client_err(params, code::NO_MEMORY, e.to_string()))?;
            (b, None, p.offset, p.stride, p.modifier)
        } else {
            let (w, h) = (
                u32::try_from(width).map_err(|_| client_err(params, 6, "width"))?,
                u32::try_from(height).map_err(|_| client_err(params, 6, "height"))?,
            );
            let req = self
                .ch
                .image_requirements(w, h, format, GBM_BO_USE_LINEAR)
                .map_err(|e| client_err(params, code::NO_MEMORY, e.to_string()))?;
            self.check_pools(params, req.size)?;
            let b = self
                .ch
                .blob_for_image(&req)
                .map_err(|e| client_err(params, code::NO_MEMORY, e.to_string()))?;
            let l = BufferLayout {
                offset: u64::from(req.offsets[0]),
                width,
                height,
                stride: i32::try_from(req.strides[0]).map_err(|_| host_err("stride"))?,
                bytes_per_pixel: bpp,
            };
            (b, Some(l), req.offsets[0], req.strides[0], req.modifier)
        };
        let (bo, res) = self.add_blob(blob);
        add_plane_message(&mut self.sendq.bytes, params, p, offset, stride, modifier)?;
        self.sendq.ids.push(SendId::Blob(res));
        AgentStats::add(&self.stats.dmabufs_copied, 1);
        let copied = CopiedBuffer {
            file: Rc::new(file),
            source_size,
            bo,
            layout,
            blob_layout,
        };
        match buffer {
            Some(b) => self.insert_buffer(b, copied),
            None => {
                if let Some(Some(old)) = self.params_waiting.insert(params, Some(copied)) {
                    self.unref_blob(old.bo);
                }
            }
        }
        Ok(())
    }

    /// Sends what [`Session::client_message`] queued, in SENDs of at most 3744 bytes, 28
    /// identifiers and one read pipe, each a slice of the queue; a message's identifiers go
    /// with its first bytes, and a message longer than a SEND is split.
    fn flush_sends(&mut self) -> Result<(), SessionError> {
        let mut q = std::mem::take(&mut self.sendq);
        let r = self.send_queue(&mut q);
        q.clear();
        self.sendq = q;
        r
    }

    fn send_queue(&mut self, q: &mut SendQueue) -> Result<(), SessionError> {
        let is_pipe = |i: &SendId| *i == SendId::ReadPipe;
        // The chunk gathered so far: q.bytes[b0..b1], q.ids[i0..i1].
        let (mut b0, mut i0) = (0, 0);
        let (mut b1, mut i1) = (0, 0);
        for &(b_end, i_end) in &q.ends {
            let len = b_end - b1;
            let pipes = q.ids[i0..i_end].iter().filter(|i| is_pipe(i)).count();
            if b_end - b0 > CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA
                || i_end - i0 > CROSS_DOMAIN_MAX_IDENTIFIERS
                || pipes > 1
            {
                self.send_chunk(&q.bytes[b0..b1], &q.ids[i0..i1], &mut q.pipes)?;
                (b0, i0) = (b1, i1);
            }
            if len > CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA {
                // One long message: its identifiers ride with the first part.
                let mut parts = q.bytes[b1..b_end].chunks(CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA);
                if let Some(first) = parts.next() {
                    self.send_chunk(first, &q.ids[i1..i_end], &mut q.pipes)?;
                }
                for part in parts {
                    self.send_chunk(part, &[], &mut q.pipes)?;
                }
                (b0, i0) = (b_end, i_end);
            }
            (b1, i1) = (b_end, i_end);
        }
        self.send_chunk(&q.bytes[b0..b1], &q.ids[i0..i1], &mut q.pipes)
    }

    /// One SEND; the read pipes it names take the first fds of `pipes`.
    fn send_chunk(
        &mut self,
        data: &[u8],
        ids: &[SendId],
        pipes: &mut VecDeque<OwnedFd>,
    ) -> Result<(), SessionError> {
        if data.is_empty() && ids.is_empty() {
            return Ok(());
        }
        let sent = self.ch.send(data, ids)?;
        AgentStats::add(&self.stats.sends, 1);
        for (want, got) in ids.iter().zip(&sent) {
            if *want == SendId::ReadPipe
                && let Some(fd) = pipes.pop_front()
            {
                self.read_pipes.insert(
                    got.id,
                    ClientReadPipe {
                        write: fd,
                        queue: VecDeque::new(),
                        hang_up: false,
                    },
                );
            }
        }
        Ok(())
    }

    /// Relays a RECEIVE from the host: Wayland bytes (maybe partial) and the items standing
    /// for their fds.
    pub fn host_input(&mut self, data: &[u8], items: Vec<HostItem>) -> Result<(), SessionError> {
        self.host_items.extend(items);
        if self.host_items.len() > self.config.limits.max_pending_fds {
            return Err(host_err("too many items not matched to events"));
        }
        let mut pending = std::mem::take(&mut self.host_pending);
        let result = reassemble(
            &mut pending,
            data,
            |raw, msg| self.host_message(raw, msg),
            |e| host_err(format!("framing: {e}")),
        );
        self.host_pending = pending;
        self.release_deferred();
        result?;
        if self.host_pending.len() > self.config.limits.max_pending_bytes {
            return Err(host_err("partial event over the size limit"));
        }
        if self.to_client.bytes.len() > self.config.limits.max_client_queue {
            return Err(client_err(
                1,
                code::NO_MEMORY,
                "the client does not read its events",
            ));
        }
        Ok(())
    }

    fn host_message(&mut self, raw: &[u8], msg: &Message<'_>) -> Result<(), SessionError> {
        let sender = id(msg.header.object);
        let p = self
            .map
            .process_event(ProtocolTable::builtin(), msg, self.host_items.len())
            .map_err(|e| host_err(e.to_string()))?;
        let mut items = take_front(&mut self.host_items, p.args.fd_count());
        let iface = p.interface.name;
        let name = p.desc.name;
        let args = p.args.as_slice();
        let at = self.to_client.bytes.len();
        let mut forward = !p.to_zombie;
        let mut rewritten: Option<Vec<u8>> = None;
        let mut fds: Vec<OwnedFd> = Vec::new();
        match (iface, name) {
            ("wl_registry", "global") => {
                let [Arg::Uint(g), Arg::Str(Some(interface)), Arg::Uint(version)] = args else {
                    return Err(host_err("wl_registry.global with unexpected arguments"));
                };
                match cap_global(interface, *version) {
                    None => forward = false,
                    Some(v) if v == *version => {}
                    Some(v) => {
                        let mut b = Vec::new();
                        wire::encode_unchecked(
                            &mut b,
                            msg.header.object,
                            msg.header.opcode,
                            &[Arg::Uint(*g), Arg::Str(Some(interface)), Arg::Uint(v)],
                        )
                        .map_err(|e| host_err(e.to_string()))?;
                        rewritten = Some(b);
                    }
                }
            }
            ("zwp_linux_buffer_params_v1", "created") => {
                if let [Arg::NewId(b)] = args {
                    let b = id(*b);
                    if let Some(Some(copied)) = self.params_waiting.remove(&sender) {
                        self.insert_buffer(b, copied);
                    }
                    if let Some(h) = self.params_imported.remove(&sender) {
                        self.insert_imported(b, h);
                    }
                }
            }
            ("zwp_linux_buffer_params_v1", "failed") => {
                if let Some(Some(c)) = self.params_waiting.remove(&sender) {
                    self.unref_blob(c.bo);
                }
                if let Some(h) = self.params_imported.remove(&sender) {
                    self.unref_imports(h);
                }
            }
            ("zwp_linux_dmabuf_feedback_v1", "format_table") => {
                let ([Arg::Fd, Arg::Uint(_size)], [item]) = (args, &items[..]) else {
                    return Err(host_err("format_table without its table"));
                };
                let table = self.item_bytes(item)?;
                let (fd, size, map) = guest_format_table(&table)?;
                self.feedback.entry(sender).or_default().map = map;
                let mut b = Vec::new();
                wire::encode_unchecked(
                    &mut b,
                    msg.header.object,
                    msg.header.opcode,
                    &[Arg::Fd, Arg::Uint(size)],
                )
                .map_err(|e| host_err(e.to_string()))?;
                rewritten = Some(b);
                fds.push(fd);
                items.clear();
            }
            ("zwp_linux_dmabuf_feedback_v1", "main_device" | "tranche_target_device") => {
                if let Some(dev) = self.config.guest_dev {
                    let bytes = dev.to_ne_bytes();
                    let mut b = Vec::new();
                    wire::encode_unchecked(
                        &mut b,
                        msg.header.object,
                        msg.header.opcode,
                        &[Arg::Array(&bytes)],
                    )
                    .map_err(|e| host_err(e.to_string()))?;
                    rewritten = Some(b);
                }
            }
            ("zwp_linux_dmabuf_feedback_v1", "tranche_formats") => {
                let [Arg::Array(indices)] = args else {
                    return Err(host_err("tranche_formats with unexpected arguments"));
                };
                let map = self
                    .feedback
                    .get(&sender)
                    .map(|f| f.map.as_slice())
                    .unwrap_or(&[]);
                let mut kept: Vec<u8> = Vec::new();
                for c in indices.chunks_exact(2) {
                    let i = u16::from_ne_bytes([c[0], c[1]]);
                    if let Some(Some(g)) = map.get(usize::from(i)) {
                        kept.extend_from_slice(&g.to_ne_bytes());
                    }
                }
                let mut b = Vec::new();
                wire::encode_unchecked(
                    &mut b,
                    msg.header.object,
                    msg.header.opcode,
                    &[Arg::Array(&kept)],
                )
                .map_err(|e| host_err(e.to_string()))?;
                rewritten = Some(b);
            }
            ("zwp_linux_dmabuf_v1", "modifier") => {
                if let [Arg::Uint(_), Arg::Uint(hi), Arg::Uint(lo)] = args {
                    let m = (u64::from(*hi) << 32) | u64::from(*lo);
                    forward &= guest_can_allocate(m);
                }
            }
            _ => {}
        }
        for item in items {
            fds.push(self.item_fd(&item)?);
        }
        if !forward {
            return Ok(());
        }
        match &rewritten {
            Some(b) => self.to_client.bytes.extend_from_slice(b),
            None => self.to_client.bytes.extend_from_slice(raw),
        }
        self.to_client.fds.extend(fds.into_iter().map(|f| (at, f)));
        AgentStats::add(&self.stats.messages_to_guest, 1);
        AgentStats::add(
            &self.stats.bytes_to_guest,
            (self.to_client.bytes.len() - at) as u64,
        );
        if iface == "wl_display" && name == "error" {
            self.closing = true;
        }
        Ok(())
    }

    /// The bytes of a host blob item.
    fn item_bytes(&mut self, item: &HostItem) -> Result<Vec<u8>, SessionError> {
        if item.kind != HostItemKind::Blob {
            return Err(host_err("expected a blob item"));
        }
        let max = self.config.limits.max_item_bytes;
        if item.size > max {
            return Err(host_err(format!(
                "item {} of {} bytes is over the limit {max}",
                item.id, item.size
            )));
        }
        let len = usize::try_from(item.size).map_err(|_| host_err("item size"))?;
        let blob = self.ch.blob_from_item(item)?;
        let mut bytes = vec![0u8; len];
        let r = blob.mapping.read_at(0, &mut bytes);
        self.ch.close_blob(blob)?;
        r.map_err(|e| host_err(format!("reading item {}: {e}", item.id)))?;
        Ok(bytes)
    }

    /// The guest fd standing for a host item.
    fn item_fd(&mut self, item: &HostItem) -> Result<OwnedFd, SessionError> {
        match item.kind {
            HostItemKind::Blob => {
                let bytes = self.item_bytes(item)?;
                AgentStats::add(&self.stats.host_items, 1);
                sealed_memfd("crossway-host-item", &bytes)
                    .map_err(|e| host_err(format!("guest memfd: {e}")))
            }
            HostItemKind::WritePipe => {
                let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| host_err(format!("pipe: {e}")))?;
                self.write_pipes.push(HostWritePipe { id: item.id, read });
                Ok(write)
            }
            HostItemKind::Other(t) => {
                Err(host_err(format!("item of type {t} on a Wayland channel")))
            }
        }
    }

    /// Bytes the client wrote into a host write pipe: WRITE them (`data` empty = hang up).
    pub fn pipe_data(&mut self, id: u32, data: &[u8]) -> Result<(), SessionError> {
        AgentStats::add(&self.stats.pipe_bytes, data.len() as u64);
        self.ch.write_pipe(id, data, data.is_empty())?;
        Ok(())
    }

    /// A READ from the host for read pipe `pipe`: queued for the client's fd.
    pub fn host_read(&mut self, pipe: u32, data: &[u8], hang_up: bool) {
        AgentStats::add(&self.stats.pipe_bytes, data.len() as u64);
        let max = self.config.limits.max_pipe_queue;
        let Some(p) = self.read_pipes.get_mut(&pipe) else {
            return;
        };
        if p.queue.len() + data.len() > max {
            tracing::warn!("read pipe {pipe}: the client does not read; dropping it");
            self.read_pipes.remove(&pipe);
            return;
        }
        p.queue.extend(data);
        p.hang_up |= hang_up;
    }
}

impl<D: VirtGpu> Drop for Session<D> {
    fn drop(&mut self) {
        let blobs = self.blobs.drain().map(|(_, b)| b.blob);
        for blob in blobs
            .chain(self.release.blobs.drain(..))
            .collect::<Vec<_>>()
        {
            let _ = self.ch.close_blob(blob);
        }
        for h in std::mem::take(&mut self.release.handles) {
            if !self.import_refs.contains_key(&h) {
                let _ = self.ch.device().gem_close(h);
            }
        }
        // Each imported handle once, however many buffers shared it.
        for (h, _) in self.import_refs.drain() {
            let _ = self.ch.device().gem_close(h);
        }
    }
}

/// Appends `input` to `pending` (the partial message kept from the last call), hands each whole
/// message to `each` with its raw bytes, and keeps what is left of a partial one in `pending`.
/// Stops at the first error (of framing or of `each`); the messages before it stay handled
/// and are dropped from `pending`.
fn reassemble(
    pending: &mut Vec<u8>,
    input: &[u8],
    mut each: impl FnMut(&[u8], &Message<'_>) -> Result<(), SessionError>,
    framing: impl FnOnce(wire::WireError) -> SessionError,
) -> Result<(), SessionError> {
    pending.extend_from_slice(input);
    let mut pos = 0;
    let result = loop {
        let rest = pending.get(pos..).unwrap_or_default();
        match wire::next_message(rest) {
            Ok(Some(msg)) => {
                let len = msg.len();
                let Some(raw) = rest.get(..len) else {
                    break Ok(());
                };
                if let Err(e) = each(raw, &msg) {
                    break Err(e);
                }
                pos += len;
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(framing(e)),
        }
    };
    pending.drain(..pos.min(pending.len()));
    result
}

/// The first `n` of `queue` (the object map checked that a message's fds have arrived).
fn take_front<T>(queue: &mut VecDeque<T>, n: usize) -> Vec<T> {
    queue.drain(..n.min(queue.len())).collect()
}

fn add_plane_message(
    out: &mut Vec<u8>,
    params: u32,
    p: &Plane,
    offset: u32,
    stride: u32,
    modifier: u64,
) -> Result<(), SessionError> {
    let obj = ObjectId::new(params).ok_or_else(|| host_err("params id 0"))?;
    wire::encode_unchecked(
        out,
        obj,
        1, // zwp_linux_buffer_params_v1.add
        &[
            Arg::Fd,
            Arg::Uint(p.plane),
            Arg::Uint(offset),
            Arg::Uint(stride),
            Arg::Uint((modifier >> 32) as u32),
            Arg::Uint(modifier as u32),
        ],
    )
    .map_err(|e| host_err(e.to_string()))?;
    Ok(())
}

/// Globals never advertised to guest clients although the tables know them: their requests
/// carry fds the agent cannot turn into anything the host could use (sync files and DRM
/// syncobjs of the guest's kernel, a listening socket, gamma and keymap memfds sent as
/// requests). Advertised, a client that used them (Mesa's WSI takes explicit sync as soon as it
/// is offered) would be disconnected at its first such request; hidden, it falls back.
/// `wp_color_manager_v1` stays: only its `set_icc_file` carries an fd, and parametric image
/// descriptions work.
pub const UNRELAYABLE_GLOBALS: [&str; 5] = [
    "wp_linux_drm_syncobj_manager_v1",
    "zwp_linux_explicit_synchronization_v1",
    "wp_security_context_manager_v1",
    "zwlr_gamma_control_manager_v1",
    "zwp_virtual_keyboard_manager_v1",
];

/// The version a host global is advertised with to guest clients: `None` for interfaces the
/// tables do not know and for [`UNRELAYABLE_GLOBALS`] (never advertised), else at most the
/// tables' version.
pub fn cap_global(interface: &CStr, version: u32) -> Option<u32> {
    let name = interface.to_str().ok()?;
    if UNRELAYABLE_GLOBALS.contains(&name) {
        return None;
    }
    let known = ProtocolTable::builtin().get(name)?;
    Some(version.min(known.version))
}

/// Modifiers a guest app can allocate for the host: linear memory (guest blobs, memfds,
/// software rendering). Virgl and tiled layouts do not exist in this guest.
pub fn guest_can_allocate(modifier: u64) -> bool {
    modifier == LINEAR
}

/// The guest's format table: the host's entries the guest can allocate, in the host's order;
/// returns the sealed memfd, its size and the host index → guest index map.
fn guest_format_table(host: &[u8]) -> Result<(OwnedFd, u32, Vec<Option<u16>>), SessionError> {
    let table =
        FormatTable::from_bytes(host).map_err(|e| host_err(format!("format table: {e}")))?;
    let mut map = Vec::with_capacity(table.len());
    let mut kept: Vec<FormatModifier> = Vec::new();
    for i in 0..table.len() {
        let pair = u16::try_from(i)
            .ok()
            .and_then(|i| table.get(i).ok())
            .ok_or_else(|| host_err("format table index"))?;
        if pair.is_linear() {
            map.push(u16::try_from(kept.len()).ok());
            kept.push(pair);
        } else {
            map.push(None);
        }
    }
    let guest = FormatTable::from_pairs(kept).map_err(|e| host_err(e.to_string()))?;
    let bytes = guest.as_bytes();
    let fd = sealed_memfd("crossway-format-table", bytes)
        .map_err(|e| host_err(format!("guest memfd: {e}")))?;
    let size = u32::try_from(bytes.len()).map_err(|_| host_err("format table size"))?;
    Ok((fd, size, map))
}

/// A memfd holding `bytes`, sealed against writes and resizing (clients map it read-only or
/// private, as keymaps and format tables require).
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let file = File::from(fd);
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(fd)
}

fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo)
        .unwrap_or(false)
}

/// Bytes per pixel of single-plane RGB DRM fourccs a copied dmabuf may use.
fn fourcc_bytes_per_pixel(fourcc: u32) -> Option<u32> {
    crossway_protocols::damage::shm_bytes_per_pixel(fourcc).filter(|_| fourcc > 1)
}

/// Where the bytes of `ranges` (in a buffer laid out as `src`) go in the same buffer laid out
/// as `dst` (another offset or stride): `(source offset, destination offset, length)` pieces,
/// a range that spans rows split at row ends. `None` when a range is not within pixel rows.
fn relayout(
    src: &BufferLayout,
    dst: &BufferLayout,
    ranges: &[std::ops::Range<u64>],
) -> Option<Vec<(u64, u64, u64)>> {
    let src_stride = u64::try_from(src.stride).ok().filter(|s| *s > 0)?;
    let dst_stride = u64::try_from(dst.stride).ok()?;
    let row_bytes = u64::try_from(src.width).ok()? * u64::from(src.bytes_per_pixel);
    let mut plan = Vec::with_capacity(ranges.len());
    for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let rel = at.checked_sub(src.offset)?;
            let (row, x) = (rel / src_stride, rel % src_stride);
            if x >= row_bytes {
                return None;
            }
            let len = (r.end - at).min(row_bytes - x);
            let to = dst
                .offset
                .checked_add(row.checked_mul(dst_stride)?)?
                .checked_add(x)?;
            plan.push((at, to, len));
            at += len;
            if at < r.end {
                // Coalesced rows: skip the padding to the next row's start.
                at = src.offset + (row + 1) * src_stride;
            }
        }
    }
    Some(plan)
}

fn full_region(width: i32, height: i32) -> Region {
    Region::from_rect(Rect {
        x: 0,
        y: 0,
        width,
        height,
    })
}

/// Strips what a C string cannot hold.
fn sanitize(message: &str) -> std::ffi::CString {
    let clean: Vec<u8> = message.bytes().filter(|b| *b != 0).take(1000).collect();
    std::ffi::CString::new(clean).unwrap_or_default()
}

/// Reads `len` bytes at `src` of `file` straight into `mapping` at `dst`.
fn read_into<M: VirtGpuMapping>(
    file: &File,
    src: u64,
    mapping: &M,
    dst: u64,
    len: u64,
) -> std::io::Result<()> {
    let (Ok(dst), Ok(len)) = (usize::try_from(dst), usize::try_from(len)) else {
        return Err(std::io::Error::other("range too large"));
    };
    if dst.checked_add(len).is_none_or(|end| end > mapping.len()) {
        return Err(std::io::Error::other("range past the blob"));
    }
    // SAFETY: `mapping` maps `mapping.len()` bytes at `as_ptr()` for as long as it lives (the
    // `VirtGpuMapping` contract), and `&mapping` keeps it alive for this call; the range was
    // checked against that length above. The memory is shared with the host, which only reads
    // it; plain bytes have no invalid values.
    let slice = unsafe { std::slice::from_raw_parts_mut(mapping.as_ptr().add(dst), len) };
    file.read_exact_at(slice, src)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::OwnedFd;

    use crossway_protocols::cross_domain::{
        CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB, Command, decode_command,
    };

    use super::*;
    use crate::channel::tests::{Mock, open};

    fn session() -> Session<Mock> {
        let config = SessionConfig {
            limits: SessionLimits::default(),
            guest_dev: Some(0xe2_80),
        };
        Session::new(open(), Arc::new(config), Arc::new(AgentStats::default()))
    }

    /// Every SEND the session made so far: identifiers (id, type) and data.
    /// One SEND: identifiers (id, type) and data.
    type Sent = (Vec<(u32, u32)>, Vec<u8>);

    fn sends(s: &mut Session<Mock>) -> Vec<Sent> {
        s.channel()
            .device()
            .execs
            .iter()
            .filter_map(|(_, _, _, cmd)| match decode_command(cmd).ok()?.0 {
                Command::Send {
                    identifiers, data, ..
                } => Some((
                    identifiers.iter().map(|i| (i.id, i.id_type)).collect(),
                    data.to_vec(),
                )),
                _ => None,
            })
            .collect()
    }

    fn msg(object: u32, opcode: u16, args: &[Arg<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_unchecked(&mut out, ObjectId::new(object).unwrap(), opcode, args).unwrap();
        out
    }

    fn memfd(size: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        fd
    }

    #[test]
    fn long_streams_are_split_at_message_boundaries_into_sends_that_fit() {
        let mut s = session();
        // wl_display.sync(new id n), 12 bytes each: 1000 of them are 12000 bytes.
        let mut stream = Vec::new();
        for n in 2..1002u32 {
            stream.extend(msg(1, 0, &[Arg::NewId(ObjectId::new(n).unwrap())]));
        }
        s.client_input(&stream, vec![]).unwrap();
        let sent = sends(&mut s);
        assert!(sent.len() >= 4, "{} SENDs", sent.len());
        let mut joined = Vec::new();
        for (ids, data) in &sent {
            assert!(ids.is_empty());
            assert!(data.len() <= CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA);
            assert_eq!(data.len() % 12, 0, "a SEND ends on a message boundary");
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, stream);
    }

    #[test]
    fn a_request_that_fails_sends_nothing_of_itself() {
        let mut s = session();
        let sync = msg(1, 0, &[Arg::NewId(ObjectId::new(2).unwrap())]);
        let mut stream = sync.clone();
        stream.extend(msg(7, 0, &[])); // no object 7
        assert!(s.client_input(&stream, vec![]).is_err());
        // What came before the error still goes out, and only that.
        assert_eq!(sends(&mut s), vec![(vec![], sync)]);
    }

    #[test]
    fn a_message_split_across_reads_goes_out_whole() {
        let mut s = session();
        let m = msg(1, 0, &[Arg::NewId(ObjectId::new(2).unwrap())]);
        s.client_input(&m[..5], vec![]).unwrap();
        assert!(sends(&mut s).is_empty());
        s.client_input(&m[5..], vec![]).unwrap();
        assert_eq!(sends(&mut s), vec![(vec![], m)]);
    }

    #[test]
    fn a_pool_becomes_a_blob_identifier_with_the_message() {
        let mut s = session();
        let mut stream = msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]); // get_registry
        // wl_registry.bind(1, "wl_shm", 1, new id 3): the map needs the object to exist.
        let shm = c"wl_shm";
        stream.extend(msg(
            2,
            0,
            &[
                Arg::Uint(1),
                Arg::Str(Some(shm)),
                Arg::Uint(1),
                Arg::NewId(ObjectId::new(3).unwrap()),
            ],
        ));
        let pool = msg(
            3,
            0,
            &[
                Arg::NewId(ObjectId::new(4).unwrap()),
                Arg::Fd,
                Arg::Int(4096),
            ],
        );
        stream.extend(&pool);
        s.client_input(&stream, vec![memfd(4096)]).unwrap();
        let sent = sends(&mut s);
        let (ids, data) = sent.last().unwrap();
        // No Crossway capset on the mock: a HOST3D image blob backs the pool.
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].1, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB);
        assert!(data.ends_with(&pool));
        assert_eq!(s.stats.shm_pools.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_pool_larger_than_its_file_is_refused() {
        let mut s = session();
        let mut stream = msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]);
        stream.extend(msg(
            2,
            0,
            &[
                Arg::Uint(1),
                Arg::Str(Some(c"wl_shm")),
                Arg::Uint(1),
                Arg::NewId(ObjectId::new(3).unwrap()),
            ],
        ));
        stream.extend(msg(
            3,
            0,
            &[
                Arg::NewId(ObjectId::new(4).unwrap()),
                Arg::Fd,
                Arg::Int(8192),
            ],
        ));
        let e = s.client_input(&stream, vec![memfd(4096)]).unwrap_err();
        assert!(
            matches!(&e, SessionError::Client { object: 3, code: 2, message } if message.contains("file of 4096")),
            "{e}"
        );
    }

    #[test]
    fn requests_on_unknown_objects_are_client_errors() {
        let mut s = session();
        let e = s.client_input(&msg(7, 0, &[]), vec![]).unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::Client {
                    object: 7,
                    code: 0,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn fds_not_matched_to_messages_are_bounded() {
        let mut s = session();
        let fds: Vec<OwnedFd> = (0..300).map(|_| memfd(1)).collect();
        let e = s.client_input(&[], fds).unwrap_err();
        assert!(matches!(&e, SessionError::Client { code: 2, .. }), "{e}");
    }

    #[test]
    fn unknown_host_globals_are_hidden_and_versions_capped() {
        let mut s = session();
        s.client_input(&msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]), vec![])
            .unwrap();
        let mut events = msg(
            2,
            0,
            &[Arg::Uint(1), Arg::Str(Some(c"zz_secret_v1")), Arg::Uint(1)],
        );
        events.extend(msg(
            2,
            0,
            &[
                Arg::Uint(2),
                Arg::Str(Some(c"wl_compositor")),
                Arg::Uint(999),
            ],
        ));
        s.host_input(&events, vec![]).unwrap();
        let out = std::mem::take(&mut s.to_client.bytes);
        let m = wire::Message::parse(&out).unwrap();
        assert_eq!(m.len(), out.len(), "one event forwarded");
        let name = c"wl_compositor";
        let known = ProtocolTable::builtin()
            .get("wl_compositor")
            .unwrap()
            .version;
        assert_eq!(
            out,
            msg(
                2,
                0,
                &[Arg::Uint(2), Arg::Str(Some(name)), Arg::Uint(known)]
            )
        );
    }

    #[test]
    fn host_events_with_missing_items_are_host_errors() {
        let mut s = session();
        s.client_input(&msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]), vec![])
            .unwrap();
        // An event for an object that was never created.
        let e = s.host_input(&msg(9, 0, &[]), vec![]).unwrap_err();
        assert!(matches!(e, SessionError::Host(_)), "{e}");
    }

    #[test]
    fn host_write_pipes_become_local_pipes() {
        let mut s = session();
        let item = HostItem {
            id: 5,
            kind: HostItemKind::WritePipe,
            size: 0,
        };
        let fd = s.item_fd(&item).unwrap();
        assert!(is_fifo(fd.as_fd()));
        assert_eq!(s.write_pipes.len(), 1);
        assert_eq!(s.write_pipes[0].id, 5);
    }

    #[test]
    fn format_tables_keep_only_linear_and_map_indices() {
        // Entries as the protocol lays them out: format u32, 4 bytes padding, modifier u64.
        let mut host = Vec::new();
        for (format, modifier) in [
            (ARGB8888, 0x0100_0000_0000_0001u64),
            (ARGB8888, LINEAR),
            (u32::from_le_bytes(*b"XR24"), LINEAR),
        ] {
            host.extend_from_slice(&format.to_ne_bytes());
            host.extend_from_slice(&[0; 4]);
            host.extend_from_slice(&modifier.to_ne_bytes());
        }
        let (fd, size, map) = guest_format_table(&host).unwrap();
        assert_eq!(map, vec![None, Some(0), Some(1)]);
        assert_eq!(size, 32);
        let mut bytes = vec![0; 32];
        File::from(fd).read_exact_at(&mut bytes, 0).unwrap();
        let guest = FormatTable::from_bytes(&bytes).unwrap();
        assert_eq!(guest.len(), 2);
        assert!(guest.get(0).unwrap().is_linear() && guest.get(1).unwrap().is_linear());
    }

    #[test]
    fn sealed_memfds_refuse_writes() {
        let fd = sealed_memfd("t", b"keymap").unwrap();
        let f = File::from(fd);
        assert!(f.write_all_at(b"x", 0).is_err());
        assert!(f.set_len(1).is_err());
        let mut b = [0; 6];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"keymap");
    }

    #[test]
    fn relayout_moves_rows_to_the_hosts_stride() {
        let src = BufferLayout {
            offset: 0,
            width: 4,
            height: 3,
            stride: 16,
            bytes_per_pixel: 4,
        };
        let dst = BufferLayout {
            offset: 64,
            stride: 32,
            ..src
        };
        // Rows 0..3 coalesced in the source (stride == row bytes).
        assert_eq!(
            relayout(&src, &dst, std::slice::from_ref(&(0..48))).unwrap(),
            vec![(0, 64, 16), (16, 96, 16), (32, 128, 16)]
        );
        // Part of row 1.
        assert_eq!(
            relayout(&src, &dst, std::slice::from_ref(&(20..28))).unwrap(),
            vec![(20, 100, 8)]
        );
        // Padding is not pixel data.
        let padded = BufferLayout { stride: 20, ..src };
        assert!(relayout(&padded, &dst, std::slice::from_ref(&(16..20))).is_none());
    }

    #[test]
    fn cap_global_hides_unknown_interfaces() {
        assert_eq!(cap_global(c"zz_nothing_v9", 3), None);
        assert_eq!(cap_global(c"wl_shm", 1), Some(1));
        let v = ProtocolTable::builtin().get("wl_seat").unwrap().version;
        assert_eq!(cap_global(c"wl_seat", v + 5), Some(v));
    }

    /// `wl_display.get_registry` (id 2) and a bind of each `(interface, version, id)`.
    fn binds(globals: &[(&CStr, u32, u32)]) -> Vec<u8> {
        let mut stream = msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]);
        for (n, (interface, version, new)) in globals.iter().enumerate() {
            stream.extend(msg(
                2,
                0,
                &[
                    Arg::Uint(n as u32 + 1),
                    Arg::Str(Some(interface)),
                    Arg::Uint(*version),
                    Arg::NewId(ObjectId::new(*new).unwrap()),
                ],
            ));
        }
        stream
    }

    fn new_id(n: u32) -> Arg<'static> {
        Arg::NewId(ObjectId::new(n).unwrap())
    }

    fn obj(n: u32) -> Arg<'static> {
        Arg::Object(ObjectId::new(n))
    }

    /// wl_compositor 3, wl_shm 4, a pool 5 of 64x64 ARGB on a memfd, buffer 6 in it and
    /// surface 7.
    fn shm_surface(s: &mut Session<Mock>) {
        let mut stream = binds(&[(c"wl_compositor", 4, 3), (c"wl_shm", 1, 4)]);
        stream.extend(msg(4, 0, &[new_id(5), Arg::Fd, Arg::Int(64 * 64 * 4)]));
        stream.extend(msg(
            5,
            0,
            &[
                new_id(6),
                Arg::Int(0),
                Arg::Int(64),
                Arg::Int(64),
                Arg::Int(256),
                Arg::Uint(0),
            ],
        ));
        stream.extend(msg(3, 0, &[new_id(7)]));
        s.client_input(&stream, vec![memfd(64 * 64 * 4)]).unwrap();
    }

    #[test]
    fn surface_destroy_forgets_its_viewports() {
        let mut s = session();
        shm_surface(&mut s);
        let mut stream = msg(
            2,
            0,
            &[
                Arg::Uint(9),
                Arg::Str(Some(c"wp_viewporter")),
                Arg::Uint(1),
                new_id(8),
            ],
        );
        stream.extend(msg(8, 1, &[new_id(9), obj(7)]));
        s.client_input(&stream, vec![]).unwrap();
        assert_eq!(s.viewports.get(&9), Some(&7));
        s.client_input(&msg(7, 0, &[]), vec![]).unwrap();
        assert!(s.viewports.is_empty());
    }

    #[test]
    fn destroyed_buffer_is_forgotten_by_the_surface_it_was_on() {
        let mut s = session();
        shm_surface(&mut s);
        let mut stream = msg(7, 1, &[obj(6), Arg::Int(0), Arg::Int(0)]);
        stream.extend(msg(7, 6, &[]));
        s.client_input(&stream, vec![]).unwrap();
        assert_eq!(s.surfaces[&7].current, Some(6));
        assert_eq!(s.blobs.len(), 1);
        s.client_input(&msg(6, 0, &[]), vec![]).unwrap();
        assert_eq!(s.surfaces[&7].current, None);
        assert!(s.buffers.is_empty());
        // The pool still holds the blob; its destroy lets it go.
        s.client_input(&msg(5, 1, &[]), vec![]).unwrap();
        assert!(s.blobs.is_empty());
    }

    /// zwp_linux_dmabuf_v1 3 (v3), params 4 with one LINEAR plane on a memfd.
    fn params_with_plane(s: &mut Session<Mock>) -> Result<(), SessionError> {
        let mut stream = binds(&[(c"zwp_linux_dmabuf_v1", 3, 3)]);
        stream.extend(msg(3, 1, &[new_id(4)]));
        stream.extend(add_plane(4));
        s.client_input(&stream, vec![memfd(64 * 64 * 4)])
    }

    fn add_plane(params: u32) -> Vec<u8> {
        msg(
            params,
            1,
            &[
                Arg::Fd,
                Arg::Uint(0),
                Arg::Uint(0),
                Arg::Uint(256),
                Arg::Uint(0),
                Arg::Uint(0),
            ],
        )
    }

    fn create_immed(params: u32, buffer: u32) -> Vec<u8> {
        msg(
            params,
            3,
            &[
                new_id(buffer),
                Arg::Int(64),
                Arg::Int(64),
                Arg::Uint(ARGB8888),
                Arg::Uint(0),
            ],
        )
    }

    #[test]
    fn params_add_after_create_is_already_used() {
        let mut s = session();
        params_with_plane(&mut s).unwrap();
        s.client_input(&create_immed(4, 5), vec![]).unwrap();
        assert_eq!(s.stats.dmabufs_copied.load(Ordering::Relaxed), 1);
        let e = s
            .client_input(&add_plane(4), vec![memfd(4096)])
            .unwrap_err();
        assert!(
            matches!(
                &e,
                SessionError::Client {
                    object: 4,
                    code: 0,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(s.plane_fds, 0);
    }

    #[test]
    fn plane_fds_held_in_params_are_bounded() {
        let mut s = Session::new(
            open(),
            Arc::new(SessionConfig {
                limits: SessionLimits {
                    max_plane_fds: 2,
                    ..SessionLimits::default()
                },
                guest_dev: None,
            }),
            Arc::new(AgentStats::default()),
        );
        params_with_plane(&mut s).unwrap();
        let mut stream = msg(3, 1, &[new_id(5)]);
        stream.extend(add_plane(5));
        s.client_input(&stream, vec![memfd(4096)]).unwrap();
        assert_eq!(s.plane_fds, 2);
        // A destroyed params object gives its planes back.
        s.client_input(&msg(5, 0, &[]), vec![]).unwrap();
        assert_eq!(s.plane_fds, 1);
        let mut stream = msg(3, 1, &[new_id(6)]);
        stream.extend(add_plane(6));
        stream.extend(msg(3, 1, &[new_id(7)]));
        stream.extend(add_plane(7));
        let e = s
            .client_input(&stream, vec![memfd(4096), memfd(4096)])
            .unwrap_err();
        assert!(
            matches!(
                &e,
                SessionError::Client {
                    object: 7,
                    code: code::NO_MEMORY,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn copied_dmabufs_count_against_the_pool_limit() {
        let mut s = Session::new(
            open(),
            Arc::new(SessionConfig {
                limits: SessionLimits {
                    max_pools: 1,
                    ..SessionLimits::default()
                },
                guest_dev: None,
            }),
            Arc::new(AgentStats::default()),
        );
        params_with_plane(&mut s).unwrap();
        s.client_input(&create_immed(4, 5), vec![]).unwrap();
        let mut stream = msg(3, 1, &[new_id(6)]);
        stream.extend(add_plane(6));
        stream.extend(create_immed(6, 7));
        let e = s
            .client_input(&stream, vec![memfd(64 * 64 * 4)])
            .unwrap_err();
        assert!(
            matches!(
                &e,
                SessionError::Client {
                    object: 6,
                    code: code::NO_MEMORY,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(s.blobs.len(), 1);
    }

    #[test]
    fn an_imported_handle_shared_by_two_buffers_is_closed_once_after_both() {
        let mut s = session();
        // PRIME import answers one handle for the same dmabuf, as the kernel does.
        s.channel().device().prime_handle = Some(1);
        params_with_plane(&mut s).unwrap();
        s.client_input(&create_immed(4, 5), vec![]).unwrap();
        let mut stream = msg(3, 1, &[new_id(6)]);
        stream.extend(add_plane(6));
        stream.extend(create_immed(6, 7));
        s.client_input(&stream, vec![memfd(4096)]).unwrap();
        assert_eq!(s.stats.dmabufs_forwarded.load(Ordering::Relaxed), 2);
        s.client_input(&msg(5, 0, &[]), vec![]).unwrap();
        assert!(
            s.channel().device().closed.is_empty(),
            "closed while buffer 7 uses it"
        );
        s.client_input(&msg(7, 0, &[]), vec![]).unwrap();
        assert_eq!(s.channel().device().closed, vec![1]);
        drop(s);
    }

    #[test]
    fn cap_global_hides_globals_whose_fds_cannot_be_relayed() {
        for name in UNRELAYABLE_GLOBALS {
            let c = std::ffi::CString::new(name).unwrap();
            assert!(ProtocolTable::builtin().get(name).is_some(), "{name}");
            assert_eq!(cap_global(&c, 1), None, "{name}");
        }
        // Every request with an fd in the tables is relayed (pools, dmabuf planes, pipes for
        // `receive`), reached only through a hidden global, or the one accepted exception.
        let mut hidden = std::collections::HashSet::new();
        let mut stack: Vec<_> = UNRELAYABLE_GLOBALS
            .iter()
            .map(|n| ProtocolTable::builtin().get(n).unwrap())
            .collect();
        while let Some(i) = stack.pop() {
            if hidden.insert(i.name) {
                for d in i.requests.iter().chain(i.events) {
                    stack.extend(d.child_interface);
                }
            }
        }
        let mut left = vec![];
        for i in ProtocolTable::builtin().interfaces() {
            for r in i.requests {
                let fd = r
                    .signature
                    .iter()
                    .any(|a| matches!(a, crossway_protocols::tables::ArgumentType::Fd));
                let relayed = matches!(
                    (i.name, r.name),
                    ("wl_shm", "create_pool") | ("zwp_linux_buffer_params_v1", "add")
                ) || r.name == "receive";
                if fd && !relayed && !hidden.contains(i.name) {
                    left.push(format!("{}.{}", i.name, r.name));
                }
            }
        }
        assert_eq!(left, ["wp_image_description_creator_icc_v1.set_icc_file"]);
    }

    #[test]
    fn host_items_over_the_size_limit_are_refused_before_mapping() {
        let mut s = Session::new(
            open(),
            Arc::new(SessionConfig {
                limits: SessionLimits {
                    max_item_bytes: 4096,
                    ..SessionLimits::default()
                },
                guest_dev: None,
            }),
            Arc::new(AgentStats::default()),
        );
        let blobs = s.channel().device().blobs.len();
        let item = HostItem {
            id: 3,
            kind: HostItemKind::Blob,
            size: 4097,
        };
        let e = s.item_fd(&item).unwrap_err();
        assert!(
            matches!(&e, SessionError::Host(m) if m.contains("over the limit")),
            "{e}"
        );
        assert_eq!(
            s.channel().device().blobs.len(),
            blobs,
            "no blob was created"
        );
        let fd = s.item_fd(&HostItem { size: 4096, ..item }).unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 4096);
    }

    #[test]
    fn a_pool_destroyed_in_the_read_that_created_it_is_closed_after_its_send() {
        let mut s = session();
        let mut stream = binds(&[(c"wl_shm", 1, 3)]);
        stream.extend(msg(3, 0, &[new_id(4), Arg::Fd, Arg::Int(4096)]));
        stream.extend(msg(4, 1, &[]));
        s.client_input(&stream, vec![memfd(4096)]).unwrap();
        let (ids, _) = sends(&mut s).pop().unwrap();
        let res = ids[0].0;
        let d = s.channel().device();
        let send_at = d
            .execs
            .iter()
            .position(|(.., cmd)| matches!(decode_command(cmd), Ok((Command::Send { .. }, _))))
            .unwrap();
        // The mock's GEM handles are its resource ids.
        let at = d
            .closed
            .iter()
            .position(|h| *h == res)
            .expect("the blob is closed");
        assert!(
            d.closed_after[at] > send_at,
            "closed before the SEND naming it"
        );
    }

    #[test]
    fn blob_bytes_of_a_client_are_bounded_before_a_blob_is_made() {
        let mut s = Session::new(
            open(),
            Arc::new(SessionConfig {
                limits: SessionLimits {
                    max_blob_bytes: 3 * 4096,
                    ..SessionLimits::default()
                },
                guest_dev: None,
            }),
            Arc::new(AgentStats::default()),
        );
        let mut stream = binds(&[(c"wl_shm", 1, 3)]);
        stream.extend(msg(3, 0, &[new_id(4), Arg::Fd, Arg::Int(2 * 4096)]));
        s.client_input(&stream, vec![memfd(2 * 4096)]).unwrap();
        let made = s.channel().device().blobs.len();
        let e = s
            .client_input(
                &msg(3, 0, &[new_id(5), Arg::Fd, Arg::Int(2 * 4096)]),
                vec![memfd(2 * 4096)],
            )
            .unwrap_err();
        assert!(
            matches!(
                &e,
                SessionError::Client {
                    object: 3,
                    code: code::NO_MEMORY,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(s.channel().device().blobs.len(), made);
    }
}
