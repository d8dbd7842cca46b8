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
//!   (`crossway_protocols::damage`), so the host sees a pool on the blob.
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
//!
//! One submodule per job, as in `crossway-relay`: `send` packs SENDs, `shm` and `dmabuf` turn
//! buffers into blobs or resource ids (`blobs` owns the blobs), `feedback` narrows the host's
//! format table, `registry` the globals, `items` turns host items into guest fds, and `stats`
//! counts.

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossway_protocols::capset::CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND;
use crossway_protocols::codes::UnexpectedArgs;
use crossway_protocols::cross_domain::{
    CROSS_DOMAIN_MAX_IDENTIFIERS, CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA,
};
use crossway_protocols::dmabuf::{FormatModifier, FormatTable};
use crossway_protocols::messages::{
    CreateBuffer, CreatePool, Global, ParamsAdd, ParamsCreate, Rect4,
};
use crossway_protocols::objects::{ObjectMap, Processed, Side};
use crossway_protocols::opcodes as op;
use crossway_protocols::stream::{FdQueue, MessageStream, StreamError, StreamLimits};
use crossway_protocols::tables::{Direction, ProtocolTable, message_desc};
use crossway_protocols::translate::{IdTranslation, ServerSide, TranslateError, rewrite_ids};
use crossway_protocols::virtgpu::{VirtGpu, VirtGpuMapping};
use crossway_protocols::wire::{self, Arg, Message, ObjectId};

use crate::channel::{Blob, Channel, ChannelError, HostItem, HostItemKind, SendId};
use crossway_protocols::damage::{
    BufferLayout, Rect, Region, StaleTracker, SurfaceDamage, copy_ranges,
};

mod blobs;
mod dmabuf;
mod feedback;
mod items;
mod registry;
mod send;
mod shm;
mod stats;
#[cfg(test)]
mod tests;

use self::{blobs::*, dmabuf::*, feedback::*, items::*, shm::*};

pub use dmabuf::guest_can_allocate;
pub use items::{ClientReadPipe, HostWritePipe, sealed_memfd};
pub use registry::{UNRELAYABLE_GLOBALS, cap_global};
pub use stats::AgentStats;

/// `wl_display.error` codes.
use crossway_protocols::codes::display as code;

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
    /// Most host objects of the agent's own (pools replaced by a resize and awaiting the
    /// host's `delete_id`, a released `wl_shm` kept for its pools).
    pub max_private_objects: usize,
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
            max_private_objects: 256,
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

/// A blob shared by a pool (or copied dmabuf) and its buffers.
struct SharedBlob<M> {
    blob: Blob<M>,
    refs: usize,
}

struct Pool {
    /// The host's `wl_shm` it was made with (host id), for the pool that replaces it when a
    /// resize outgrows the blob.
    shm: ObjectId,
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

/// What the session keeps of a Wayland object, in the object map: created with the object,
/// dropped when it is destroyed, so nothing of an old object can reach one reusing its id.
#[derive(Default)]
enum ObjectData {
    /// Nothing (most objects).
    #[default]
    None,
    /// A `wl_surface`'s damage and buffers (boxed: every id's slot is as large as the largest
    /// variant, and the map may hold 4 ids per allowed object).
    Surface(Box<Surface>),
    /// A `wp_viewport`: the surface it was made for (`None` once that surface is destroyed).
    Viewport(Option<u32>),
    /// A `zwp_linux_dmabuf_feedback_v1`'s format table translation.
    Feedback(Box<FeedbackState>),
}

// An id's slot stays small whatever the data (the README's limits table counts on it).
const _: () = assert!(ObjectMap::<ObjectData>::SLOT_BYTES <= 32);

/// The session's data of the live object `object` (a raw id from a message).
fn data_mut(map: &mut ObjectMap<ObjectData>, object: u32) -> Option<&mut ObjectData> {
    map.data_mut(ObjectId::new(object)?)
}

/// The state of the live `wl_surface` `surface`, made on first use.
fn surface_in(map: &mut ObjectMap<ObjectData>, surface: u32) -> Option<&mut Surface> {
    let data = data_mut(map, surface)?;
    if matches!(data, ObjectData::None) {
        *data = ObjectData::Surface(Box::default());
    }
    match data {
        ObjectData::Surface(s) => Some(s),
        _ => None,
    }
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

/// The relay state of one guest client and its channel.
pub struct Session<D: VirtGpu> {
    ch: Channel<D>,
    config: Arc<SessionConfig>,
    stats: Arc<AgentStats>,
    map: ObjectMap<ObjectData>,
    /// Client ids ↔ host ids: the agent creates host objects the client never sees.
    ids: IdTranslation,
    /// Client → host: partial request, fds waiting for their request.
    client: MessageStream<OwnedFd>,
    /// Host → client: partial event, items waiting for their event.
    host: MessageStream<HostItem>,
    blobs: HashMap<u32, SharedBlob<D::Mapping>>,
    pools: HashMap<u32, Pool>,
    buffers: HashMap<u32, CopiedBuffer>,
    /// Dmabuf buffers forwarded by resource: the GEM handles to close with them.
    imported: HashMap<u32, Vec<u32>>,
    /// References to each imported GEM handle: PRIME import of a dmabuf the device file
    /// already knows returns the same handle, and one GEM_CLOSE closes it for all.
    import_refs: HashMap<u32, usize>,
    stale: StaleTracker,
    params: HashMap<u32, Vec<Plane>>,
    /// Plane fds held in `params`.
    plane_fds: usize,
    /// `create` (not immed) params waiting for the host's `created`: what the buffer will be.
    params_waiting: HashMap<u32, Option<CopiedBuffer>>,
    params_imported: HashMap<u32, Vec<u32>>,
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

fn shape(object: u32, interface: &'static str, message: &'static str) -> SessionError {
    let e = UnexpectedArgs { interface, message };
    client_err(object, UnexpectedArgs::CODE, e.to_string())
}

impl<D: VirtGpu> Session<D> {
    /// A session over an open channel.
    pub fn new(ch: Channel<D>, config: Arc<SessionConfig>, stats: Arc<AgentStats>) -> Self {
        let max_objects = config.limits.max_objects;
        let limits = StreamLimits {
            max_pending_bytes: config.limits.max_pending_bytes,
            max_pending_fds: config.limits.max_pending_fds,
        };
        let map = ObjectMap::new(max_objects);
        let private = config.limits.max_private_objects;
        let ids = IdTranslation::new(map.max_ids().saturating_add(private), private);
        Session {
            ch,
            config,
            stats,
            map,
            ids,
            client: MessageStream::new(limits),
            host: MessageStream::new(limits),
            blobs: HashMap::new(),
            pools: HashMap::new(),
            buffers: HashMap::new(),
            imported: HashMap::new(),
            import_refs: HashMap::new(),
            stale: StaleTracker::default(),
            params: HashMap::new(),
            plane_fds: 0,
            params_waiting: HashMap::new(),
            params_imported: HashMap::new(),
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
        self.client.push_fds(fds);
        // Out of `self` while it runs, so the handler may borrow the rest of the session.
        let mut stream = std::mem::take(&mut self.client);
        let result = stream.for_each(bytes, |raw, msg, fds| self.client_message(raw, msg, fds));
        self.client = stream;
        // Whatever was relayed before an error still goes out, in order.
        let flushed = self.flush_sends();
        self.release_deferred();
        result.map_err(|e| match e {
            StreamError::Handler(e) => e,
            StreamError::Framing(e) => client_err(1, code::INVALID_METHOD, format!("framing: {e}")),
            e @ (StreamError::PartialTooLarge { .. } | StreamError::TooManyFds { .. }) => {
                client_err(1, code::NO_MEMORY, e.to_string())
            }
        })?;
        flushed?;
        Ok(())
    }

    /// Relays one request into the send queue, all of it or (on error) none of it.
    fn client_message(
        &mut self,
        raw: &[u8],
        msg: &Message<'_>,
        fds: &mut FdQueue<OwnedFd>,
    ) -> Result<(), SessionError> {
        let mark = self.sendq.mark();
        let r = self.relay_request(raw, msg, fds);
        match &r {
            Ok(()) => self.sendq.end_message(mark),
            Err(_) => self.sendq.rollback(mark),
        }
        r
    }

    fn relay_request(
        &mut self,
        raw: &[u8],
        msg: &Message<'_>,
        queue: &mut FdQueue<OwnedFd>,
    ) -> Result<(), SessionError> {
        let sender = id(msg.header.object);
        let p = self
            .map
            .process_request(ProtocolTable::builtin(), msg, queue.len())
            .map_err(|e| client_err(sender, code::INVALID_OBJECT, e.to_string()))?;
        AgentStats::add(&self.stats.messages_to_host, 1);
        AgentStats::add(&self.stats.bytes_to_host, raw.len() as u64);
        let mut fds = queue.take(p.args.fd_count());
        let iface = p.interface.name;
        let name = p.desc.name;
        let args = p.args.as_slice();
        let mut forward = true;
        match (iface, msg.header.opcode) {
            ("wl_shm", op::SHM_CREATE_POOL) => {
                let (Some(m), [_]) = (CreatePool::parse(args), &fds[..]) else {
                    return Err(shape(sender, iface, name));
                };
                let fd = fds.pop().ok_or_else(|| shape(sender, iface, name))?;
                let shm = self.server_id(msg.header.object)?;
                let res = self.create_pool(shm, sender, id(m.pool), fd, m.size)?;
                self.sendq.ids.push(SendId::Blob(res));
            }
            ("wl_shm_pool", op::POOL_CREATE_BUFFER) => {
                let m = CreateBuffer::parse(args).ok_or_else(|| shape(sender, iface, name))?;
                let size = (m.width, m.height);
                self.create_shm_buffer(sender, id(m.buffer), m.offset, size, m.stride, m.format)?;
            }
            ("wl_shm_pool", op::POOL_RESIZE) => {
                let [Arg::Int(size)] = args else {
                    return Err(shape(sender, iface, name));
                };
                forward = self.resize_pool(sender, *size)?;
            }
            ("wl_shm", op::SHM_RELEASE) => {
                forward = !self.keep_released_shm(msg.header.object, p.version)?;
            }
            ("wl_shm_pool", op::POOL_DESTROY) => {
                if let Some(pool) = self.pools.remove(&sender) {
                    self.unref_blob(pool.bo);
                }
            }
            ("wl_buffer", op::BUFFER_DESTROY) => self.forget_buffer(sender),
            ("wl_surface", op::SURFACE_ATTACH) => {
                let [Arg::Object(buffer), _, _] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender)?.pending = Some(buffer.map(id));
            }
            ("wl_surface", op::SURFACE_DAMAGE) => {
                let r = Rect4::parse(args).ok_or_else(|| shape(sender, iface, name))?;
                let damage = &mut self.surface(sender)?.damage;
                damage.damage_surface(r.x, r.y, r.width, r.height);
            }
            ("wl_surface", op::SURFACE_DAMAGE_BUFFER) => {
                let r = Rect4::parse(args).ok_or_else(|| shape(sender, iface, name))?;
                let damage = &mut self.surface(sender)?.damage;
                damage.damage_buffer(r.x, r.y, r.width, r.height);
            }
            ("wl_surface", op::SURFACE_SET_BUFFER_TRANSFORM) => {
                let [Arg::Int(t)] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender)?
                    .damage
                    .set_buffer_transform(*t)
                    .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
            }
            ("wl_surface", op::SURFACE_SET_BUFFER_SCALE) => {
                let [Arg::Int(s)] = args else {
                    return Err(shape(sender, iface, name));
                };
                self.surface(sender)?
                    .damage
                    .set_buffer_scale(*s)
                    .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
            }
            ("wl_surface", op::SURFACE_COMMIT) => self.commit(sender)?,
            ("wl_surface", op::SURFACE_DESTROY) => {
                // Its state left the map with it.
                self.stale.forget_surface(sender);
                // The surface's viewports are inert now (wp_viewport: no_surface); its id may
                // name a new surface next, which they must not reach.
                for (_, data) in self.map.iter_data_mut() {
                    if let ObjectData::Viewport(s) = data
                        && *s == Some(sender)
                    {
                        *s = None;
                    }
                }
            }
            ("wp_viewporter", op::VIEWPORTER_GET_VIEWPORT) => {
                if let [Arg::NewId(v), Arg::Object(Some(s))] = args
                    && let Some(data) = self.map.data_mut(*v)
                {
                    *data = ObjectData::Viewport(Some(id(*s)));
                }
            }
            ("wp_viewport", op::VIEWPORT_SET_SOURCE) => {
                let [Arg::Fixed(x), Arg::Fixed(y), Arg::Fixed(w), Arg::Fixed(h)] = args else {
                    return Err(shape(sender, iface, name));
                };
                let src = [x.0, y.0, w.0, h.0];
                let unset = src.iter().all(|v| *v == -256);
                if let Some(s) = self.viewport_surface(sender) {
                    self.surface(s)?
                        .damage
                        .set_viewport_source((!unset).then_some(src))
                        .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
                }
            }
            ("wp_viewport", op::VIEWPORT_SET_DESTINATION) => {
                let [Arg::Int(w), Arg::Int(h)] = args else {
                    return Err(shape(sender, iface, name));
                };
                let unset = *w == -1 && *h == -1;
                if let Some(s) = self.viewport_surface(sender) {
                    self.surface(s)?
                        .damage
                        .set_viewport_destination((!unset).then_some((*w, *h)))
                        .map_err(|e| client_err(sender, code::INVALID_METHOD, e.to_string()))?;
                }
            }
            ("wp_viewport", op::VIEWPORT_DESTROY) => {
                if let Some(ObjectData::Viewport(Some(s))) = p.released
                    && let Some(surface) = surface_in(&mut self.map, s)
                {
                    // Errors are impossible for "unset".
                    let _ = surface.damage.set_viewport_source(None);
                    let _ = surface.damage.set_viewport_destination(None);
                }
            }
            ("zwp_linux_dmabuf_v1", op::DMABUF_CREATE_PARAMS) => {
                if let [Arg::NewId(p)] = args {
                    self.params.insert(id(*p), Vec::new());
                }
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_ADD) => {
                let m = ParamsAdd::parse(args).ok_or_else(|| shape(sender, iface, name))?;
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
                    plane: m.plane,
                    offset: m.offset,
                    stride: m.stride,
                    modifier: m.modifier,
                });
                // Held back: sent with `create`, once the buffer's size and format are known.
                forward = false;
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_CREATE | op::PARAMS_CREATE_IMMED) => {
                let m = ParamsCreate::parse(args).ok_or_else(|| shape(sender, iface, name))?;
                let buffer = m.buffer.map(id);
                self.create_dmabuf(sender, buffer, (m.width, m.height), m.format)?;
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_DESTROY) => {
                self.take_params(sender);
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
            self.forward_request(raw, msg.header.object, args)?;
        }
        if p.destroyed {
            self.ids
                .server_object_destroyed(msg.header.object, p.interface, p.version);
        }
        Ok(())
    }

    /// The host id of the client's object `object`.
    fn server_id(&self, object: ObjectId) -> Result<ObjectId, SessionError> {
        self.ids.to_server(object).ok_or_else(|| {
            client_err(
                object.get(),
                code::INVALID_OBJECT,
                "object has no object on the host",
            )
        })
    }

    /// Queues the request `raw` from `sender` for the host, in the host's ids: new ids get one
    /// of the host connection's, object arguments theirs.
    fn forward_request(
        &mut self,
        raw: &[u8],
        sender: ObjectId,
        args: &[Arg<'_>],
    ) -> Result<(), SessionError> {
        let server = self.server_id(sender)?;
        let at = self.sendq.bytes.len();
        self.sendq.bytes.extend_from_slice(raw);
        let ids = &mut self.ids;
        rewrite_ids(
            &mut self.sendq.bytes[at..],
            server,
            args,
            |arg, id| match arg {
                Arg::NewId(_) => ids.bind_new(id).map(ObjectId::get),
                _ => (ids.to_server(id).map(ObjectId::get)).ok_or(TranslateError::Unmapped(id)),
            },
        )
        .map_err(|e| {
            let c = match e {
                TranslateError::Exhausted(_) | TranslateError::TooManyPrivate(_) => code::NO_MEMORY,
                _ => code::INVALID_OBJECT,
            };
            client_err(sender.get(), c, e.to_string())
        })
    }

    /// `wl_shm.release` of `shm` (destroyed in the client's map): when pools made with it are
    /// alive, the host object stays, as the agent's own, so that a resize can still make a pool
    /// with it; the client is told its id is free. Returns whether it was kept.
    fn keep_released_shm(&mut self, shm: ObjectId, version: u32) -> Result<bool, SessionError> {
        let server = self.server_id(shm)?;
        if !self.pools.values().any(|p| p.shm == server) {
            return Ok(false);
        }
        let Some(iface) = ProtocolTable::builtin().get("wl_shm") else {
            return Ok(false);
        };
        if self.ids.detach(shm, iface, version).is_err() {
            // Over the private-object limit: released, and a later resize will say so.
            return Ok(false);
        }
        // The host will not send this id's delete_id: the agent does.
        let _ = self.map.delete_id(shm.get());
        let args = [Arg::Uint(shm.get())];
        wire::encode_unchecked(
            &mut self.to_client.bytes,
            ObjectId::DISPLAY,
            op::DISPLAY_DELETE_ID,
            &args,
        )
        .map_err(|e| host_err(e.to_string()))?;
        Ok(true)
    }

    /// Relays a RECEIVE from the host: Wayland bytes (maybe partial) and the items standing
    /// for their fds.
    pub fn host_input(&mut self, data: &[u8], items: Vec<HostItem>) -> Result<(), SessionError> {
        self.host.push_fds(items);
        let mut stream = std::mem::take(&mut self.host);
        let result = stream.for_each(data, |raw, msg, items| self.host_message(raw, msg, items));
        self.host = stream;
        self.release_deferred();
        result.map_err(|e| match e {
            StreamError::Handler(e) => e,
            e => host_err(e.to_string()),
        })?;
        if self.to_client.bytes.len() > self.config.limits.max_client_queue {
            return Err(client_err(
                1,
                code::NO_MEMORY,
                "the client does not read its events",
            ));
        }
        Ok(())
    }

    /// Relays one event: its sender and object arguments translated to the client's ids
    /// while it is decoded, then [`Self::client_event`]. Events for the agent's own host
    /// objects end here.
    fn host_message(
        &mut self,
        raw: &[u8],
        msg: &Message<'_>,
        queue: &mut FdQueue<HostItem>,
    ) -> Result<(), SessionError> {
        let object = match self.ids.to_client(msg.header.object) {
            ServerSide::Client(c) => c,
            ServerSide::Private(interface, version) => {
                let desc = message_desc(interface, Direction::Event, msg.header.opcode, version)
                    .map_err(|e| host_err(e.to_string()))?;
                let args = msg
                    .decode(desc.signature, queue.len())
                    .map_err(|e| host_err(e.to_string()))?;
                // Nothing the agent makes has events it needs: drop it with its items.
                drop(queue.take(args.fd_count()));
                return Ok(());
            }
            // An object of the host's the client destroyed while this was on its way: dropped,
            // as libwayland drops it (no interface, so no fds are taken).
            ServerSide::Unknown if Side::of(msg.header.object) == Side::Server => {
                tracing::debug!(object = %msg.header.object, "event for a destroyed host object");
                return Ok(());
            }
            ServerSide::Unknown => {
                return Err(host_err(format!(
                    "event for object {}, which the agent did not create",
                    msg.header.object
                )));
            }
        };
        let mut m = *msg;
        m.header.object = object;
        // `delete_id`'s argument is an id too: the host's, freed; the client's to free, if any.
        let deleted: [u8; 4];
        if object == ObjectId::DISPLAY && msg.header.opcode == op::DISPLAY_DELETE_ID {
            let host_id = <[u8; 4]>::try_from(msg.body)
                .map_err(|_| host_err("delete_id with unexpected arguments"))?;
            let freed = self.ids.server_deleted(u32::from_ne_bytes(host_id));
            match freed.map_err(|e| host_err(e.to_string()))? {
                Some(client) => deleted = client.get().to_ne_bytes(),
                // One of the agent's own objects.
                None => return Ok(()),
            }
            m.body = &deleted;
        }
        let ids = &mut self.ids;
        let p = self
            .map
            .process_event_mapped(ProtocolTable::builtin(), &m, queue.len(), |id, new| {
                if new {
                    return ids.bind_server_new(id).ok();
                }
                match ids.to_client(id) {
                    ServerSide::Client(c) => Some(c),
                    _ => None,
                }
            })
            .map_err(|e| host_err(e.to_string()))?;
        self.client_event(&raw[..wire::HEADER_SIZE], &m, &p, queue)
    }

    /// Acts on an event in the client's ids (`msg`, decoded as `p`; `header` is the host's
    /// header bytes) and queues it for the client.
    fn client_event(
        &mut self,
        header: &[u8],
        msg: &Message<'_>,
        p: &Processed<'_, ObjectData>,
        queue: &mut FdQueue<HostItem>,
    ) -> Result<(), SessionError> {
        let sender = id(msg.header.object);
        let mut items = queue.take(p.args.fd_count());
        let iface = p.interface.name;
        let args = p.args.as_slice();
        let at = self.to_client.bytes.len();
        let mut forward = !p.to_zombie;
        if p.destroyed {
            // A destructor event (wl_callback.done, a server-made object's end).
            self.ids
                .server_object_destroyed(msg.header.object, p.interface, p.version);
        }
        let mut rewritten: Option<Vec<u8>> = None;
        let mut fds: Vec<OwnedFd> = Vec::new();
        match (iface, msg.header.opcode) {
            ("wl_registry", op::REGISTRY_GLOBAL) => {
                let Some(g) = Global::parse(args) else {
                    return Err(host_err("wl_registry.global with unexpected arguments"));
                };
                match cap_global(g.interface, g.version) {
                    None => forward = false,
                    Some(v) if v == g.version => {}
                    Some(v) => {
                        let mut b = Vec::new();
                        wire::encode_unchecked(
                            &mut b,
                            msg.header.object,
                            msg.header.opcode,
                            &[Arg::Uint(g.name), Arg::Str(Some(g.interface)), Arg::Uint(v)],
                        )
                        .map_err(|e| host_err(e.to_string()))?;
                        rewritten = Some(b);
                    }
                }
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_CREATED) => {
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
            ("zwp_linux_buffer_params_v1", op::PARAMS_FAILED) => {
                if let Some(Some(c)) = self.params_waiting.remove(&sender) {
                    self.unref_blob(c.bo);
                }
                if let Some(h) = self.params_imported.remove(&sender) {
                    self.unref_imports(h);
                }
            }
            ("zwp_linux_dmabuf_feedback_v1", op::FEEDBACK_FORMAT_TABLE) => {
                let ([Arg::Fd, Arg::Uint(_size)], [item]) = (args, &items[..]) else {
                    return Err(host_err("format_table without its table"));
                };
                let table = self.item_bytes(item)?;
                let (fd, size, map) = guest_format_table(&table)?;
                if let Some(data) = data_mut(&mut self.map, sender) {
                    *data = ObjectData::Feedback(Box::new(FeedbackState { map }));
                }
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
            (
                "zwp_linux_dmabuf_feedback_v1",
                op::FEEDBACK_MAIN_DEVICE | op::FEEDBACK_TRANCHE_TARGET_DEVICE,
            ) => {
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
            ("zwp_linux_dmabuf_feedback_v1", op::FEEDBACK_TRANCHE_FORMATS) => {
                let [Arg::Array(indices)] = args else {
                    return Err(host_err("tranche_formats with unexpected arguments"));
                };
                let map = match self.map.data(msg.header.object) {
                    Some(ObjectData::Feedback(f)) => f.map.as_slice(),
                    _ => &[],
                };
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
            ("zwp_linux_dmabuf_v1", op::DMABUF_MODIFIER) => {
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
            None => {
                // The host's bytes with the client's ids.
                let out = &mut self.to_client.bytes;
                out.extend_from_slice(header);
                out.extend_from_slice(msg.body);
                let ok = rewrite_ids(&mut out[at..], msg.header.object, args, |_, id| {
                    Ok::<u32, std::convert::Infallible>(id.get())
                });
                let Ok(()) = ok;
            }
        }
        self.to_client.fds.extend(fds.into_iter().map(|f| (at, f)));
        AgentStats::add(&self.stats.messages_to_guest, 1);
        AgentStats::add(
            &self.stats.bytes_to_guest,
            (self.to_client.bytes.len() - at) as u64,
        );
        if iface == "wl_display" && msg.header.opcode == op::DISPLAY_ERROR {
            self.closing = true;
        }
        Ok(())
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

/// Strips what a C string cannot hold.
fn sanitize(message: &str) -> std::ffi::CString {
    let clean: Vec<u8> = message.bytes().filter(|b| *b != 0).take(1000).collect();
    std::ffi::CString::new(clean).unwrap_or_default()
}
