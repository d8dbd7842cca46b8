//! The guest side of one cross-domain Wayland channel (capset 5) over the virtgpu uAPI
//! ([`VirtGpu`]): what sommelier's `virtgpu_channel.cc` and wayland-proxy-virtwl's `dev.ml` do,
//! in the same order (reference cross-domain.md §1.1 and §1.4).
//!
//! ```text
//!  Channel::open:  GETPARAM x6 → GET_CAPS(5) → GET_CAPS(Crossway, if offered)
//!                  → CONTEXT_INIT{capset 5, 2 rings, poll ring 1} → 2 one-page guest rings, mapped
//!                  → EXECBUFFER(CMD_INIT 20 B) → EXECBUFFER(RING_IDX 1, CMD_POLL)
//!  send            → EXECBUFFER(CMD_SEND, 28-slot header)       guest → host Wayland bytes
//!  next_message    ← drm_event on the event fd → channel ring    host → guest, then re-POLL
//!  image_requirements → EXECBUFFER(RING_IDX 0, bo = query ring) + WAIT → 64-byte reply
//! ```
//!
//! One [`Channel`] is one device file, one context and one host compositor connection, so one
//! per guest client. The host is untrusted here too: every ring message is bounds-checked and a
//! malformed one is an error ([`ChannelError::Ring`]), never a panic.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crossway_protocols::capset::{CrosswayCaps, DEFAULT_CROSSWAY_CAPSET_ID, MAX_CAPSET_FORMATS};
use crossway_protocols::cross_domain::{
    CAPSET_CROSS_DOMAIN, CROSS_DOMAIN_CHANNEL_RING, CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND,
    CROSS_DOMAIN_ID_TYPE_READ_PIPE, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB,
    CROSS_DOMAIN_ID_TYPE_WRITE_PIPE, CROSS_DOMAIN_MAX_IDENTIFIERS,
    CROSS_DOMAIN_MAX_READ_WRITE_DATA, CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA, CROSS_DOMAIN_QUERY_RING,
    CROSS_DOMAIN_RING_SIZE, CrossDomainCapabilities, CrossDomainImageRequirements, Identifier,
    PipeIds, RingError, RingMessage, encode,
};
use crossway_protocols::virtgpu::{
    BlobHandles, CROSS_DOMAIN_CONTEXT_PARAMS, DRM_EVENT_SIZE, DrmEvent,
    VIRTGPU_BLOB_FLAG_USE_MAPPABLE, VIRTGPU_BLOB_FLAG_USE_SHAREABLE, VIRTGPU_BLOB_MEM_GUEST,
    VIRTGPU_BLOB_MEM_HOST3D, VIRTGPU_EVENT_FENCE_SIGNALED, VIRTGPU_EXECBUF_RING_IDX,
    VIRTGPU_PARAM_3D_FEATURES, VIRTGPU_PARAM_CAPSET_QUERY_FIX, VIRTGPU_PARAM_CONTEXT_INIT,
    VIRTGPU_PARAM_HOST_VISIBLE, VIRTGPU_PARAM_RESOURCE_BLOB, VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS,
    VirtGpu, VirtGpuError, VirtGpuMapping, drm_virtgpu_execbuffer,
    drm_virtgpu_resource_create_blob,
};
use zerocopy::FromBytes;

/// Image requirement answers kept per channel by default (sommelier and wayland-proxy-virtwl
/// cache them too; a client resizing through many sizes must not grow the cache forever).
pub const DEFAULT_MAX_IMAGE_CACHE: usize = 256;
/// Largest blob the channel creates or maps by default (a 8K ARGB frame is 128 MiB).
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 512 << 20;

/// Settings of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Id of the Crossway capset to read at open, or `None` to ignore it (plain cross-domain).
    pub crossway_capset_id: Option<u32>,
    /// Image requirement answers cached at most; the cache is emptied when full.
    pub max_image_cache: usize,
    /// Largest blob created or mapped, in bytes (host item sizes included).
    pub max_blob_size: u64,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            crossway_capset_id: Some(DEFAULT_CROSSWAY_CAPSET_ID),
            max_image_cache: DEFAULT_MAX_IMAGE_CACHE,
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        }
    }
}

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A virtgpu call failed.
    #[error("{op} failed: {source}")]
    Device {
        /// The ioctl or command.
        op: &'static str,
        /// What the device said.
        #[source]
        source: VirtGpuError,
    },
    /// A device parameter the channel needs is 0.
    #[error("the device lacks {0}")]
    MissingParam(&'static str),
    /// The device offers no cross-domain capset.
    #[error("the device offers no cross-domain capset (capset mask {0:#x})")]
    NoCrossDomain(u64),
    /// The cross-domain capset is shorter than its 16 bytes.
    #[error("cross-domain capset of {0} bytes, expected 16")]
    ShortCapset(usize),
    /// The host supports no Wayland channel.
    #[error("the host offers no Wayland channel (supported channels {0:#x})")]
    NoWaylandChannel(u32),
    /// A ring mapping is not one page.
    #[error("ring mapping of {0} bytes, expected {CROSS_DOMAIN_RING_SIZE}")]
    RingMapping(usize),
    /// The channel ring holds no valid message.
    #[error("malformed channel ring message")]
    Ring(#[source] RingError),
    /// Reading or polling the event fd failed.
    #[error("event fd")]
    EventFd(#[source] std::io::Error),
    /// The event fd closed (the device file is gone).
    #[error("event fd closed")]
    EventFdClosed,
    /// The event fd yielded bytes that are not `drm_event` records.
    #[error("malformed drm_event at byte {0}")]
    BadEvent(usize),
    /// A fence event arrived while no POLL was outstanding.
    #[error("fence event with no POLL outstanding")]
    SpuriousFence,
    /// The host already closed the channel (a zero-length RECEIVE was seen).
    #[error("the host closed the channel")]
    Closed,
    /// More identifiers than a SEND holds.
    #[error("{0} identifiers, a SEND holds at most {CROSS_DOMAIN_MAX_IDENTIFIERS}")]
    TooManyIdentifiers(usize),
    /// More than one read pipe in one SEND (hosts keep one guessed id per SEND).
    #[error("{0} read pipes in one SEND, at most 1")]
    TooManyPipes(usize),
    /// More Wayland bytes than a SEND carries.
    #[error("{0} bytes, a SEND carries at most {CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA}")]
    TooMuchData(usize),
    /// A READ for a pipe this channel did not open (or already saw hang up).
    #[error("READ for unknown read pipe {0:#x}")]
    UnknownReadPipe(u32),
    /// A blob size of 0 or above the configured limit.
    #[error("blob of {size} bytes (limit {max})")]
    BlobSize {
        /// Size asked for.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// RESOURCE_INFO disagrees with what RESOURCE_CREATE_BLOB returned.
    #[error("resource {created} reported as {reported} by RESOURCE_INFO")]
    ResourceMismatch {
        /// Id from create.
        created: u32,
        /// Id from info.
        reported: u32,
    },
    /// The host's image requirements are inconsistent.
    #[error("image requirements for {width}x{height}: {what}")]
    BadImageRequirements {
        /// Width asked.
        width: u32,
        /// Height asked.
        height: u32,
        /// What is wrong.
        what: &'static str,
    },
    /// A host item that is not a blob was used as one.
    #[error("item {id} has type {id_type}, not a blob")]
    NotABlob {
        /// Item id.
        id: u32,
        /// Its type.
        id_type: u32,
    },
}

fn failed(op: &'static str) -> impl FnOnce(VirtGpuError) -> ChannelError {
    move |source| ChannelError::Device { op, source }
}

/// What the host offers, read at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCaps {
    /// The cross-domain capset's `version`.
    pub version: u32,
    /// `supports_dmabuf`: image allocations are dmabufs on the host.
    pub supports_dmabuf: bool,
    /// The Crossway capset, when the device offers it and it parsed.
    pub crossway: Option<CrosswayCaps>,
}

/// A host-to-guest item named in a RECEIVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostItemKind {
    /// A blob (memfd or dmabuf on the host): create a HOST3D blob with its id and size.
    Blob,
    /// The write end of a pipe the host compositor gave: answer with [`Channel::write_pipe`].
    WritePipe,
    /// A type a Wayland channel does not carry (other hosts' extensions); left to the caller.
    Other(u32),
}

/// One identifier of a RECEIVE, in fd order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostItem {
    /// Item id.
    pub id: u32,
    /// What it stands for.
    pub kind: HostItemKind,
    /// Byte size (blobs).
    pub size: u32,
}

impl HostItem {
    fn from_identifier(i: &Identifier) -> HostItem {
        let kind = match i.id_type {
            CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB => HostItemKind::Blob,
            CROSS_DOMAIN_ID_TYPE_WRITE_PIPE => HostItemKind::WritePipe,
            other => HostItemKind::Other(other),
        };
        HostItem {
            id: i.id,
            kind,
            size: i.size,
        }
    }
}

/// One host-to-guest message of the channel ring, copied out of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMessage {
    /// Wayland bytes from the host compositor and the items standing for their fds.
    Receive {
        /// Wayland bytes (may split a message; the stream continues in the next RECEIVE).
        data: Vec<u8>,
        /// Items in fd order.
        items: Vec<HostItem>,
    },
    /// Bytes for one of this channel's read pipes.
    Read {
        /// The pipe id (from [`Channel::send`]).
        pipe: u32,
        /// The bytes.
        data: Vec<u8>,
        /// The host-side writer closed: no more READs for this pipe.
        hang_up: bool,
    },
    /// The host closed the connection (a RECEIVE with no bytes and no items).
    Eof,
}

/// An fd of a guest→host Wayland message, as the channel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendId {
    /// A blob resource (a guest blob of this channel, or a HOST3D blob): its resource id.
    Blob(u32),
    /// A pipe the guest client reads from: the channel guesses the host's next pipe id.
    ReadPipe,
}

/// Image layout the host chose for `GET_IMAGE_REQUIREMENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRequirements {
    /// Per-plane strides.
    pub strides: [u32; 4],
    /// Per-plane offsets.
    pub offsets: [u32; 4],
    /// DRM format modifier of the allocation.
    pub modifier: u64,
    /// Bytes of the allocation.
    pub size: u64,
    /// The blob id for [`Channel::create_host_blob`].
    pub blob_id: u32,
    /// Cache type (`map_info`).
    pub map_info: u32,
}

impl ImageRequirements {
    fn from_reply(
        r: &CrossDomainImageRequirements,
        width: u32,
        height: u32,
    ) -> Result<Self, ChannelError> {
        let bad = |what| ChannelError::BadImageRequirements {
            width,
            height,
            what,
        };
        let req = ImageRequirements {
            strides: r.strides.map(|s| s.get()),
            offsets: r.offsets.map(|s| s.get()),
            modifier: r.modifier.get(),
            size: r.size.get(),
            blob_id: r.blob_id.get(),
            map_info: r.map_info.get(),
        };
        if req.size == 0 {
            return Err(bad("size 0"));
        }
        // Plane 0 must fit: offset + stride * height <= size (the caller writes rows there).
        let end = u64::from(req.strides[0])
            .checked_mul(u64::from(height))
            .and_then(|n| n.checked_add(u64::from(req.offsets[0])));
        match end {
            Some(end) if end <= req.size => Ok(req),
            _ => Err(bad("plane 0 runs past the allocation")),
        }
    }
}

/// A blob this channel created and mapped. Give it back with [`Channel::close_blob`]; dropping
/// it only unmaps (the GEM handle stays open until the channel is dropped).
#[derive(Debug)]
pub struct Blob<M> {
    /// GEM handle in the channel's device file.
    pub bo_handle: u32,
    /// virtio-gpu resource id: what a SEND names ([`SendId::Blob`]).
    pub res_id: u32,
    /// Bytes asked for.
    pub size: u64,
    /// The CPU mapping.
    pub mapping: M,
}

struct Ring<M> {
    handles: BlobHandles,
    mapping: M,
}

/// One cross-domain Wayland channel: a device file with its context, two rings and the state
/// of the POLL/fence exchange.
pub struct Channel<D: VirtGpu> {
    dev: D,
    config: ChannelConfig,
    caps: HostCaps,
    query: Ring<D::Mapping>,
    channel: Ring<D::Mapping>,
    pipes: PipeIds,
    open_read_pipes: HashSet<u32>,
    images: HashMap<(u32, u32, u32, u32), ImageRequirements>,
    poll_outstanding: bool,
    /// The outstanding POLL's fence arrived (one POLL is outstanding at a time).
    fence_signaled: bool,
    event_carry: Vec<u8>,
    closed: bool,
    cmd: Vec<u8>,
    ring_copy: Box<[u8; CROSS_DOMAIN_RING_SIZE]>,
}

impl<D: VirtGpu> std::fmt::Debug for Channel<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("caps", &self.caps)
            .field("query_ring", &self.query.handles.res_handle)
            .field("channel_ring", &self.channel.handles.res_handle)
            .field("poll_outstanding", &self.poll_outstanding)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

fn require_param(
    d: &mut impl VirtGpu,
    param: u64,
    name: &'static str,
) -> Result<u64, ChannelError> {
    match d.get_param(param).map_err(failed("GETPARAM"))? {
        0 => Err(ChannelError::MissingParam(name)),
        v => Ok(v),
    }
}

fn read_caps<D: VirtGpu>(d: &mut D, config: &ChannelConfig) -> Result<HostCaps, ChannelError> {
    for (param, name) in [
        (VIRTGPU_PARAM_3D_FEATURES, "3D_FEATURES"),
        (VIRTGPU_PARAM_CAPSET_QUERY_FIX, "CAPSET_QUERY_FIX"),
        (VIRTGPU_PARAM_RESOURCE_BLOB, "RESOURCE_BLOB"),
        (VIRTGPU_PARAM_HOST_VISIBLE, "HOST_VISIBLE"),
        (VIRTGPU_PARAM_CONTEXT_INIT, "CONTEXT_INIT"),
    ] {
        require_param(d, param, name)?;
    }
    let mask = d
        .get_param(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS)
        .map_err(failed("GETPARAM"))?;
    if mask & (1 << CAPSET_CROSS_DOMAIN) == 0 {
        return Err(ChannelError::NoCrossDomain(mask));
    }
    let mut raw = [0u8; size_of::<CrossDomainCapabilities>()];
    let n = d
        .get_caps(CAPSET_CROSS_DOMAIN, 0, &mut raw)
        .map_err(failed("GET_CAPS"))?;
    if n < raw.len() {
        return Err(ChannelError::ShortCapset(n));
    }
    let cd =
        CrossDomainCapabilities::read_from_bytes(&raw).map_err(|_| ChannelError::ShortCapset(n))?;
    let channels = cd.supported_channels.get();
    if channels & (1 << CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND) == 0 {
        return Err(ChannelError::NoWaylandChannel(channels));
    }
    let crossway = match config.crossway_capset_id {
        Some(id) if id < 64 && mask & (1 << id) != 0 => {
            // Absent or unreadable, the channel degrades to plain cross-domain.
            let mut buf = vec![0u8; 16 + 16 * MAX_CAPSET_FORMATS];
            match d.get_caps(id, 0, &mut buf) {
                Ok(n) => match CrosswayCaps::from_bytes(buf.get(..n).unwrap_or(&buf)) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(capset = id, "ignoring the Crossway capset: {e}");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(capset = id, "cannot read the Crossway capset: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    Ok(HostCaps {
        version: cd.version.get(),
        supports_dmabuf: cd.supports_dmabuf.get() != 0,
        crossway,
    })
}

impl<D: VirtGpu> Channel<D> {
    /// Opens a Wayland channel on `dev`, a freshly opened device file (no context yet): the
    /// sequence of cross-domain.md §1.1 steps 2-7. On return a POLL is outstanding.
    pub fn open(mut dev: D, config: ChannelConfig) -> Result<Channel<D>, ChannelError> {
        let caps = read_caps(&mut dev, &config)?;
        dev.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS)
            .map_err(failed("CONTEXT_INIT"))?;
        let mut rings = Vec::with_capacity(2);
        for _ in 0..2 {
            let handles = dev
                .resource_create_blob(&drm_virtgpu_resource_create_blob {
                    blob_mem: VIRTGPU_BLOB_MEM_GUEST,
                    blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
                    size: CROSS_DOMAIN_RING_SIZE as u64,
                    ..Default::default()
                })
                .map_err(failed("RESOURCE_CREATE_BLOB (ring)"))?;
            let mapping = dev.map(handles.bo_handle).map_err(failed("MAP (ring)"))?;
            if mapping.len() < CROSS_DOMAIN_RING_SIZE {
                return Err(ChannelError::RingMapping(mapping.len()));
            }
            rings.push(Ring { handles, mapping });
        }
        let channel_ring = rings.pop().ok_or(ChannelError::RingMapping(0))?;
        let query_ring = rings.pop().ok_or(ChannelError::RingMapping(0))?;
        let mut ch = Channel {
            dev,
            config,
            caps,
            query: query_ring,
            channel: channel_ring,
            pipes: PipeIds::default(),
            open_read_pipes: HashSet::new(),
            images: HashMap::new(),
            poll_outstanding: false,
            fence_signaled: false,
            event_carry: Vec::new(),
            closed: false,
            cmd: Vec::with_capacity(CROSS_DOMAIN_RING_SIZE),
            ring_copy: Box::new([0; CROSS_DOMAIN_RING_SIZE]),
        };
        encode::init(
            &mut ch.cmd,
            ch.query.handles.res_handle,
            ch.channel.handles.res_handle,
            CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND,
        );
        ch.submit("CMD_INIT", None, &[])?;
        ch.poll()?;
        tracing::debug!(
            query_ring = ch.query.handles.res_handle,
            channel_ring = ch.channel.handles.res_handle,
            "cross-domain channel open"
        );
        Ok(ch)
    }

    /// What the host offered at open.
    pub fn caps(&self) -> &HostCaps {
        &self.caps
    }

    /// The device file, for calls the channel does not wrap (PRIME imports of client dmabufs).
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The fd to poll for host messages (readable when [`Channel::next_message`] will not
    /// block on the device, once [`Channel::arm`] submitted the POLL).
    pub fn event_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dev.event_fd()
    }

    /// Submits `self.cmd` with no ring (`ring = None`) or on a ring with its fence.
    fn submit(
        &mut self,
        op: &'static str,
        ring: Option<u32>,
        bo_handles: &[u32],
    ) -> Result<(), ChannelError> {
        let (flags, ring_idx) = match ring {
            Some(r) => (VIRTGPU_EXECBUF_RING_IDX, r),
            None => (0, 0),
        };
        self.dev
            .execbuffer(&drm_virtgpu_execbuffer {
                flags,
                command: &self.cmd,
                bo_handles,
                ring_idx,
            })
            .map_err(failed(op))
    }

    fn poll(&mut self) -> Result<(), ChannelError> {
        self.cmd.clear();
        encode::poll(&mut self.cmd);
        self.submit("CMD_POLL", Some(CROSS_DOMAIN_CHANNEL_RING), &[])?;
        self.poll_outstanding = true;
        Ok(())
    }

    /// Sends Wayland bytes with the identifiers standing for their fds, in fd order. Returns the
    /// identifiers as sent (a read pipe's guessed id is what later READs name).
    pub fn send(&mut self, data: &[u8], ids: &[SendId]) -> Result<Vec<Identifier>, ChannelError> {
        if ids.len() > CROSS_DOMAIN_MAX_IDENTIFIERS {
            return Err(ChannelError::TooManyIdentifiers(ids.len()));
        }
        let pipes = ids.iter().filter(|i| **i == SendId::ReadPipe).count();
        if pipes > 1 {
            return Err(ChannelError::TooManyPipes(pipes));
        }
        if data.len() > CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA {
            return Err(ChannelError::TooMuchData(data.len()));
        }
        // The guessed id is taken only once the SEND is sure to be well formed: the host
        // advances its counter only for SENDs it accepts.
        let mut probe = self.pipes;
        let idents: Vec<Identifier> = ids
            .iter()
            .map(|i| match *i {
                SendId::Blob(res) => Identifier {
                    id: res,
                    id_type: CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB,
                    size: 0,
                },
                SendId::ReadPipe => Identifier {
                    id: probe.next_id(),
                    id_type: CROSS_DOMAIN_ID_TYPE_READ_PIPE,
                    size: 0,
                },
            })
            .collect();
        self.send_raw(data, &idents)?;
        self.pipes = probe;
        for i in &idents {
            if i.id_type == CROSS_DOMAIN_ID_TYPE_READ_PIPE {
                self.open_read_pipes.insert(i.id);
            }
        }
        Ok(idents)
    }

    /// Sends exactly these identifiers, touching no pipe counter: for conformance and bad-input
    /// tests (a wrong guessed pipe id, an unknown resource).
    pub fn send_raw(&mut self, data: &[u8], idents: &[Identifier]) -> Result<(), ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        self.cmd.clear();
        encode::send(&mut self.cmd, idents, data).map_err(|e| match e {
            RingError::TooManyIdentifiers(n) => ChannelError::TooManyIdentifiers(n),
            _ => ChannelError::TooMuchData(data.len()),
        })?;
        self.submit("CMD_SEND", None, &[])
    }

    /// Writes `data` to a write-pipe item the host sent ([`HostItemKind::WritePipe`]), in
    /// WRITEs of at most 4072 bytes; `hang_up` closes the pipe after the last one.
    pub fn write_pipe(&mut self, id: u32, data: &[u8], hang_up: bool) -> Result<(), ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        let mut chunks = data.chunks(CROSS_DOMAIN_MAX_READ_WRITE_DATA).peekable();
        if chunks.peek().is_none() {
            return self.write_one(id, &[], hang_up);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.write_one(id, chunk, hang_up && last)?;
        }
        Ok(())
    }

    fn write_one(&mut self, id: u32, data: &[u8], hang_up: bool) -> Result<(), ChannelError> {
        self.cmd.clear();
        encode::write(&mut self.cmd, id, hang_up, data)
            .map_err(|_| ChannelError::TooMuchData(data.len()))?;
        self.submit("CMD_WRITE", None, &[])
    }

    /// Blocks until the host writes the next message into the channel ring.
    pub fn next_message(&mut self) -> Result<ChannelMessage, ChannelError> {
        loop {
            if let Some(m) = self.next_message_timeout(Duration::from_secs(3600))? {
                return Ok(m);
            }
        }
    }

    /// Like [`Channel::next_message`], giving up after `timeout` with `Ok(None)`
    /// (`Duration::ZERO` only takes what is already there).
    pub fn next_message_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ChannelMessage>, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        if !self.poll_outstanding {
            self.poll()?;
        }
        if !self.wait_fence(timeout)? {
            return Ok(None);
        }
        self.fence_signaled = false;
        self.poll_outstanding = false;
        // Copy the message out before the next POLL lets the host write the ring again.
        self.channel
            .mapping
            .read_at(0, &mut self.ring_copy[..])
            .map_err(failed("reading the channel ring"))?;
        let msg = match RingMessage::decode(&self.ring_copy[..]).map_err(ChannelError::Ring)? {
            RingMessage::Receive { identifiers, data } => {
                if identifiers.is_empty() && data.is_empty() {
                    ChannelMessage::Eof
                } else {
                    ChannelMessage::Receive {
                        data: data.to_vec(),
                        items: identifiers.iter().map(HostItem::from_identifier).collect(),
                    }
                }
            }
            RingMessage::Read {
                identifier,
                hang_up,
                data,
            } => {
                if !self.open_read_pipes.contains(&identifier) {
                    return Err(ChannelError::UnknownReadPipe(identifier));
                }
                if hang_up {
                    self.open_read_pipes.remove(&identifier);
                }
                ChannelMessage::Read {
                    pipe: identifier,
                    data: data.to_vec(),
                    hang_up,
                }
            }
        };
        if msg == ChannelMessage::Eof {
            self.closed = true;
        }
        // The next POLL goes out with the next call or [`Channel::arm`]: a relay delivers this
        // message first, and pays for the POLL's submission after.
        Ok(Some(msg))
    }

    /// Submits the POLL for the host's next message if none is outstanding: the event fd
    /// ([`Channel::event_fd`]) becomes readable only for an outstanding POLL, so call this
    /// before waiting on it.
    pub fn arm(&mut self) -> Result<(), ChannelError> {
        if !self.closed && !self.poll_outstanding {
            self.poll()?;
        }
        Ok(())
    }

    /// Waits for one fence event; false on timeout.
    fn wait_fence(&mut self, timeout: Duration) -> Result<bool, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.fence_signaled {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = rustix::event::Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: left.subsec_nanos().into(),
            };
            let fd = self.dev.event_fd();
            let mut pfd = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let ready = match rustix::event::poll(&mut pfd, Some(&ts)) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(ChannelError::EventFd(e.into())),
            };
            if ready == 0 {
                if left.is_zero() {
                    return Ok(false);
                }
                continue;
            }
            let mut buf = [0u8; 8 * DRM_EVENT_SIZE];
            let n = match rustix::io::read(fd, &mut buf) {
                Ok(0) => return Err(ChannelError::EventFdClosed),
                Ok(n) => n,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                Err(e) => return Err(ChannelError::EventFd(e.into())),
            };
            self.event_carry.extend_from_slice(&buf[..n]);
            self.take_events()?;
        }
    }

    /// Counts the whole `drm_event` records in `event_carry`, keeping a partial tail.
    fn take_events(&mut self) -> Result<(), ChannelError> {
        let whole = self.event_carry.len() / DRM_EVENT_SIZE * DRM_EVENT_SIZE;
        let (events, rest) = DrmEvent::decode_all(&self.event_carry[..whole]);
        rest.map_err(ChannelError::BadEvent)?;
        self.event_carry.drain(..whole);
        for e in events {
            if e.type_ != VIRTGPU_EVENT_FENCE_SIGNALED {
                tracing::warn!(
                    event_type = e.type_,
                    "ignoring a drm_event that is not a fence"
                );
                continue;
            }
            // One POLL is outstanding at a time, so at most one fence can be pending.
            if !self.poll_outstanding || self.fence_signaled {
                return Err(ChannelError::SpuriousFence);
            }
            self.fence_signaled = true;
        }
        Ok(())
    }

    /// The host's layout for a `width` x `height` image of `drm_format` with `flags`
    /// (`gbm_flags`; sommelier sends `SCANOUT | LINEAR`), cached per arguments.
    pub fn image_requirements(
        &mut self,
        width: u32,
        height: u32,
        drm_format: u32,
        flags: u32,
    ) -> Result<ImageRequirements, ChannelError> {
        let key = (width, height, drm_format, flags);
        if let Some(r) = self.images.get(&key) {
            return Ok(*r);
        }
        self.cmd.clear();
        encode::get_image_requirements(&mut self.cmd, width, height, drm_format, flags);
        let query = self.query.handles.bo_handle;
        self.submit(
            "CMD_GET_IMAGE_REQUIREMENTS",
            Some(CROSS_DOMAIN_QUERY_RING),
            &[query],
        )?;
        self.dev
            .wait(query, 0)
            .map_err(failed("WAIT (query ring)"))?;
        let mut raw = [0u8; size_of::<CrossDomainImageRequirements>()];
        self.query
            .mapping
            .read_at(0, &mut raw)
            .map_err(failed("reading the query ring"))?;
        let reply = CrossDomainImageRequirements::read_from_bytes(&raw).map_err(|_| {
            ChannelError::BadImageRequirements {
                width,
                height,
                what: "short reply",
            }
        })?;
        let req = ImageRequirements::from_reply(&reply, width, height)?;
        if self.images.len() >= self.config.max_image_cache {
            self.images.clear();
        }
        self.images.insert(key, req);
        Ok(req)
    }

    fn check_size(&self, size: u64) -> Result<(), ChannelError> {
        if size == 0 || size > self.config.max_blob_size {
            return Err(ChannelError::BlobSize {
                size,
                max: self.config.max_blob_size,
            });
        }
        Ok(())
    }

    fn blob(
        &mut self,
        req: drm_virtgpu_resource_create_blob,
    ) -> Result<Blob<D::Mapping>, ChannelError> {
        self.check_size(req.size)?;
        let h = self
            .dev
            .resource_create_blob(&req)
            .map_err(failed("RESOURCE_CREATE_BLOB"))?;
        let mapped = self.dev.map(h.bo_handle).map_err(failed("MAP"));
        let info = self
            .dev
            .resource_info(h.bo_handle)
            .map_err(failed("RESOURCE_INFO"));
        let (mapping, info) = match (mapped, info) {
            (Ok(m), Ok(i)) => (m, i),
            (Err(e), _) | (_, Err(e)) => {
                let _ = self.dev.gem_close(h.bo_handle);
                return Err(e);
            }
        };
        if info.res_handle != h.res_handle {
            let _ = self.dev.gem_close(h.bo_handle);
            return Err(ChannelError::ResourceMismatch {
                created: h.res_handle,
                reported: info.res_handle,
            });
        }
        Ok(Blob {
            bo_handle: h.bo_handle,
            res_id: info.res_handle,
            size: req.size,
            mapping,
        })
    }

    /// A guest blob of `size` bytes (guest RAM), mapped; send it as [`SendId::Blob`] where the
    /// host accepts guest blobs (`CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND`).
    pub fn create_guest_blob(&mut self, size: u64) -> Result<Blob<D::Mapping>, ChannelError> {
        self.blob(drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_GUEST,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
            size,
            ..Default::default()
        })
    }

    /// A HOST3D blob for a host blob id of `size` bytes, mapped.
    pub fn create_host_blob(
        &mut self,
        blob_id: u32,
        size: u64,
    ) -> Result<Blob<D::Mapping>, ChannelError> {
        self.blob(drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_HOST3D,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
            size,
            blob_id: u64::from(blob_id),
            ..Default::default()
        })
    }

    /// The HOST3D blob of a received blob item (a keymap, a format table, a pool), mapped.
    pub fn blob_from_item(&mut self, item: &HostItem) -> Result<Blob<D::Mapping>, ChannelError> {
        match item.kind {
            HostItemKind::Blob => self.create_host_blob(item.id, u64::from(item.size)),
            HostItemKind::WritePipe => Err(ChannelError::NotABlob {
                id: item.id,
                id_type: CROSS_DOMAIN_ID_TYPE_WRITE_PIPE,
            }),
            HostItemKind::Other(t) => Err(ChannelError::NotABlob {
                id: item.id,
                id_type: t,
            }),
        }
    }

    /// The HOST3D blob for an image the host laid out ([`Channel::image_requirements`]).
    pub fn blob_for_image(
        &mut self,
        req: &ImageRequirements,
    ) -> Result<Blob<D::Mapping>, ChannelError> {
        self.create_host_blob(req.blob_id, req.size)
    }

    /// Unmaps a blob and closes its GEM handle (the host drops it once no SEND uses it).
    pub fn close_blob(&mut self, blob: Blob<D::Mapping>) -> Result<(), ChannelError> {
        let handle = blob.bo_handle;
        drop(blob.mapping);
        self.dev.gem_close(handle).map_err(failed("GEM_CLOSE"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;
    use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
    use std::sync::{Arc, Mutex};

    use crossway_protocols::cross_domain::{CROSS_DOMAIN_CMD_POLL, CROSS_DOMAIN_CMD_SEND};
    use crossway_protocols::virtgpu::{drm_virtgpu_context_set_param, drm_virtgpu_resource_info};
    use zerocopy::IntoBytes as _;

    use super::*;

    #[derive(Debug, Clone)]
    pub(crate) struct MockMapping(Arc<Mutex<Vec<u8>>>);

    impl VirtGpuMapping for MockMapping {
        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        fn read_from(
            &self,
            file: BorrowedFd<'_>,
            file_offset: u64,
            offset: usize,
            len: usize,
        ) -> std::io::Result<()> {
            let mut m = self.0.lock().unwrap();
            let dst = offset
                .checked_add(len)
                .and_then(|end| m.get_mut(offset..end))
                .ok_or(std::io::ErrorKind::InvalidInput)?;
            crossway_sys::read_exact_at(file, dst, file_offset)
        }
        fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtGpuError> {
            let m = self.0.lock().unwrap();
            let src = m
                .get(offset..offset + buf.len())
                .ok_or(VirtGpuError::InvalidArgument("past mapping"))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), VirtGpuError> {
            let mut m = self.0.lock().unwrap();
            m.get_mut(offset..offset + data.len())
                .ok_or(VirtGpuError::InvalidArgument("past mapping"))?
                .copy_from_slice(data);
            Ok(())
        }
    }

    /// Execbuffer as recorded: flags, ring, bo handles, command bytes.
    pub(crate) type Exec = (u32, u32, Vec<u32>, Vec<u8>);

    /// A device that records what the channel submits; the test plays the host by writing the
    /// rings and the event pipe.
    #[derive(Debug)]
    pub(crate) struct Mock {
        capset_mask: u64,
        channels: u32,
        context: Vec<drm_virtgpu_context_set_param>,
        pub(crate) blobs: Vec<(drm_virtgpu_resource_create_blob, MockMapping)>,
        pub(crate) execs: Vec<Exec>,
        pub(crate) image_reply: CrossDomainImageRequirements,
        /// What PRIME_FD_TO_HANDLE answers (a resource's handle, as for a virtio-gpu dmabuf),
        /// or `None` for a dmabuf that is not one.
        pub(crate) prime_handle: Option<u32>,
        /// Handles given to GEM_CLOSE, in order.
        pub(crate) closed: Vec<u32>,
        /// For each GEM_CLOSE, how many execbuffers came before it.
        pub(crate) closed_after: Vec<usize>,
        events: OwnedFd,
        host_events: std::io::PipeWriter,
    }

    impl Mock {
        pub(crate) fn new() -> Mock {
            let (r, w) = std::io::pipe().unwrap();
            let mut image_reply = CrossDomainImageRequirements::default();
            image_reply.strides[0].set(256);
            image_reply.size.set(256 * 64);
            image_reply.blob_id.set(9);
            Mock {
                capset_mask: 1 << 5,
                channels: 1 << 1,
                context: vec![],
                blobs: vec![],
                execs: vec![],
                image_reply,
                prime_handle: None,
                closed: vec![],
                closed_after: vec![],
                events: r.into(),
                host_events: w,
            }
        }

        fn ring(&self, i: usize) -> &MockMapping {
            &self.blobs[i].1
        }

        /// The host writes `msg` into the channel ring and signals the POLL fence.
        pub(crate) fn host_message(&mut self, ring: &[u8]) {
            self.ring(1).write_at(0, ring).unwrap();
            self.host_events
                .write_all(&DrmEvent::FENCE_SIGNALED.to_bytes())
                .unwrap();
        }
    }

    impl VirtGpu for Mock {
        type Mapping = MockMapping;

        fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError> {
            Ok(match param {
                VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS => self.capset_mask,
                _ => 1,
            })
        }
        fn get_caps(&mut self, id: u32, _: u32, buf: &mut [u8]) -> Result<usize, VirtGpuError> {
            assert_eq!(id, 5, "only capset 5 is in the mask");
            let mut caps = CrossDomainCapabilities::default();
            caps.version.set(1);
            caps.supported_channels.set(self.channels);
            buf[..16].copy_from_slice(caps.as_bytes());
            Ok(16)
        }
        fn context_init(
            &mut self,
            params: &[drm_virtgpu_context_set_param],
        ) -> Result<(), VirtGpuError> {
            self.context = params.to_vec();
            Ok(())
        }
        fn resource_create_blob(
            &mut self,
            req: &drm_virtgpu_resource_create_blob,
        ) -> Result<BlobHandles, VirtGpuError> {
            let size = usize::try_from(req.size).unwrap().next_multiple_of(4096);
            self.blobs.push((
                req.clone(),
                MockMapping(Arc::new(Mutex::new(vec![0; size]))),
            ));
            let n = self.blobs.len() as u32;
            Ok(BlobHandles {
                bo_handle: n,
                res_handle: n,
            })
        }
        fn map(&mut self, bo: u32) -> Result<MockMapping, VirtGpuError> {
            Ok(self.blobs[bo as usize - 1].1.clone())
        }
        fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError> {
            self.execs.push((
                eb.flags,
                eb.ring_idx,
                eb.bo_handles.to_vec(),
                eb.command.to_vec(),
            ));
            if eb.command[0] == 2 {
                // GET_IMAGE_REQUIREMENTS: the host answers in the query ring at once.
                self.ring(0).write_at(0, self.image_reply.as_bytes())?;
            }
            Ok(())
        }
        fn wait(&mut self, _: u32, _: u32) -> Result<(), VirtGpuError> {
            Ok(())
        }
        fn resource_info(&mut self, bo: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError> {
            Ok(drm_virtgpu_resource_info {
                bo_handle: bo,
                res_handle: bo,
                size: self.blobs[bo as usize - 1].0.size as u32,
                blob_mem: self.blobs[bo as usize - 1].0.blob_mem,
            })
        }
        fn prime_handle_to_fd(&mut self, _: u32) -> Result<OwnedFd, VirtGpuError> {
            Err(VirtGpuError::InvalidArgument("mock"))
        }
        fn prime_fd_to_handle(&mut self, _: BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
            self.prime_handle
                .ok_or(VirtGpuError::InvalidArgument("mock"))
        }
        fn gem_close(&mut self, h: u32) -> Result<(), VirtGpuError> {
            self.closed.push(h);
            self.closed_after.push(self.execs.len());
            Ok(())
        }
        fn event_fd(&self) -> BorrowedFd<'_> {
            self.events.as_fd()
        }
    }

    pub(crate) fn open() -> Channel<Mock> {
        Channel::open(Mock::new(), ChannelConfig::default()).unwrap()
    }

    pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn receive(ids: &[(u32, u32, u32)], data: &[u8]) -> Vec<u8> {
        let identifiers = ids
            .iter()
            .map(|&(id, id_type, size)| Identifier { id, id_type, size })
            .collect();
        let mut ring = vec![0u8; CROSS_DOMAIN_RING_SIZE];
        RingMessage::Receive { identifiers, data }
            .encode(&mut ring)
            .unwrap();
        ring
    }

    #[test]
    fn open_follows_the_sommelier_sequence() {
        let mut ch = open();
        let d = ch.device();
        assert_eq!(d.context, CROSS_DOMAIN_CONTEXT_PARAMS);
        assert_eq!(d.blobs.len(), 2);
        for (req, _) in &d.blobs {
            assert_eq!(
                (req.blob_mem, req.size),
                (VIRTGPU_BLOB_MEM_GUEST, 4096),
                "one-page guest rings"
            );
        }
        // INIT (20 bytes, no ring) {query ring 1, channel ring 2, Wayland}, then POLL on ring 1.
        assert_eq!(d.execs.len(), 2);
        let (flags, _, _, init) = &d.execs[0];
        assert_eq!(*flags, 0);
        assert_eq!(init.len(), 20);
        assert_eq!(&init[..8], &[1, 0, 20, 0, 0, 0, 0, 0]);
        assert_eq!(
            [u32_at(init, 8), u32_at(init, 12), u32_at(init, 16)],
            [1, 2, 1]
        );
        let (flags, ring, _, poll) = &d.execs[1];
        assert_eq!((*flags, *ring), (VIRTGPU_EXECBUF_RING_IDX, 1));
        assert_eq!(poll.len(), 16);
        assert_eq!(poll[0], CROSS_DOMAIN_CMD_POLL);
        assert_eq!(ch.caps().crossway, None, "mock offers no Crossway capset");
    }

    #[test]
    fn open_without_capset_5_is_refused() {
        let mut m = Mock::new();
        m.capset_mask = 1 << 48;
        assert!(matches!(
            Channel::open(m, ChannelConfig::default()),
            Err(ChannelError::NoCrossDomain(_))
        ));
    }

    #[test]
    fn open_without_wayland_channel_is_refused() {
        let mut m = Mock::new();
        m.channels = 1 << 0x11;
        assert!(matches!(
            Channel::open(m, ChannelConfig::default()),
            Err(ChannelError::NoWaylandChannel(_))
        ));
    }

    #[test]
    fn send_encodes_28_slot_header_with_guessed_pipe_ids() {
        let mut ch = open();
        let data = [0xaa_u8; 12];
        let sent = ch
            .send(&data, &[SendId::Blob(7), SendId::ReadPipe])
            .unwrap();
        assert_eq!(sent[1].id, 0x8000_0001, "pre-incremented from 0x80000000");
        let (flags, _, bos, cmd) = ch.device().execs.last().unwrap().clone();
        assert_eq!((flags, bos.len()), (0, 0));
        assert_eq!(cmd.len(), 352 + 12);
        assert_eq!(cmd[0], CROSS_DOMAIN_CMD_SEND);
        assert_eq!(u16::from_le_bytes([cmd[2], cmd[3]]), 364);
        assert_eq!(&cmd[4..8], &[0; 4]);
        assert_eq!((u32_at(&cmd, 8), u32_at(&cmd, 12)), (2, 12));
        assert_eq!((u32_at(&cmd, 16), u32_at(&cmd, 20)), (7, 0x8000_0001));
        assert_eq!((u32_at(&cmd, 128), u32_at(&cmd, 132)), (1, 3));
        assert_eq!(&cmd[352..], &data);
        let again = ch.send(&[], &[SendId::ReadPipe]).unwrap();
        assert_eq!(again[0].id, 0x8000_0002);
    }

    #[test]
    fn send_refuses_two_pipes_and_oversized_data_without_advancing_the_guess() {
        let mut ch = open();
        assert!(matches!(
            ch.send(&[], &[SendId::ReadPipe, SendId::ReadPipe]),
            Err(ChannelError::TooManyPipes(2))
        ));
        assert!(matches!(
            ch.send(&vec![0; 3745], &[SendId::ReadPipe]),
            Err(ChannelError::TooMuchData(3745))
        ));
        assert!(matches!(
            ch.send(&[], &[SendId::Blob(1); 29]),
            Err(ChannelError::TooManyIdentifiers(29))
        ));
        assert_eq!(ch.device().execs.len(), 2, "nothing submitted");
        let sent = ch.send(&[], &[SendId::ReadPipe]).unwrap();
        assert_eq!(sent[0].id, 0x8000_0001);
    }

    #[test]
    fn next_message_receive_returns_items_and_polls_again() {
        let mut ch = open();
        ch.device()
            .host_message(&receive(&[(5, 1, 4096), (6, 4, 0), (7, 9, 0)], b"wayland!"));
        let m = ch.next_message_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            m,
            Some(ChannelMessage::Receive {
                data: b"wayland!".to_vec(),
                items: vec![
                    HostItem {
                        id: 5,
                        kind: HostItemKind::Blob,
                        size: 4096
                    },
                    HostItem {
                        id: 6,
                        kind: HostItemKind::WritePipe,
                        size: 0
                    },
                    HostItem {
                        id: 7,
                        kind: HostItemKind::Other(9),
                        size: 0
                    },
                ]
            })
        );
        // The next POLL waits for `arm` (or the next call), then goes out once.
        assert_eq!(ch.device().execs.len(), 2, "no POLL before the caller asks");
        ch.arm().unwrap();
        ch.arm().unwrap();
        let (flags, ring, _, cmd) = ch.device().execs.last().unwrap().clone();
        assert_eq!((flags, ring, cmd[0]), (VIRTGPU_EXECBUF_RING_IDX, 1, 3));
        assert_eq!(ch.device().execs.len(), 3, "exactly one new POLL");
    }

    #[test]
    fn next_message_times_out_without_a_fence() {
        let mut ch = open();
        assert_eq!(
            ch.next_message_timeout(Duration::from_millis(20)).unwrap(),
            None
        );
        assert_eq!(ch.device().execs.len(), 2, "the POLL stays outstanding");
    }

    #[test]
    fn next_message_read_for_own_pipe_until_hang_up() {
        let mut ch = open();
        let pipe = ch.send(&[], &[SendId::ReadPipe]).unwrap()[0].id;
        let mut ring = vec![0u8; 4096];
        RingMessage::Read {
            identifier: pipe,
            hang_up: false,
            data: b"text",
        }
        .encode(&mut ring)
        .unwrap();
        ch.device().host_message(&ring);
        assert_eq!(
            ch.next_message().unwrap(),
            ChannelMessage::Read {
                pipe,
                data: b"text".to_vec(),
                hang_up: false
            }
        );
        RingMessage::Read {
            identifier: pipe,
            hang_up: true,
            data: b"",
        }
        .encode(&mut ring)
        .unwrap();
        ch.device().host_message(&ring);
        assert!(matches!(
            ch.next_message().unwrap(),
            ChannelMessage::Read { hang_up: true, .. }
        ));
        // The pipe is gone: another READ for it is the host misbehaving.
        ch.device().host_message(&ring);
        assert!(matches!(
            ch.next_message(),
            Err(ChannelError::UnknownReadPipe(p)) if p == pipe
        ));
    }

    #[test]
    fn next_message_zero_length_receive_is_eof_then_closed() {
        let mut ch = open();
        ch.device().host_message(&receive(&[], b""));
        assert_eq!(ch.next_message().unwrap(), ChannelMessage::Eof);
        assert_eq!(ch.device().execs.len(), 2, "no POLL after EOF");
        assert!(matches!(ch.next_message(), Err(ChannelError::Closed)));
        assert!(matches!(ch.send(b"x", &[]), Err(ChannelError::Closed)));
    }

    #[test]
    fn next_message_malformed_ring_is_an_error_not_a_panic() {
        let cases: Vec<Vec<u8>> = vec![
            // Unknown first word.
            {
                let mut r = vec![0u8; 4096];
                r[0] = 9;
                r
            },
            // 29 identifiers.
            {
                let mut r = receive(&[], b"x");
                r[8] = 29;
                r
            },
            // Data size past the ring.
            {
                let mut r = receive(&[], b"x");
                r[12..16].copy_from_slice(&4000u32.to_le_bytes());
                r
            },
            // READ whose size runs past the ring.
            {
                let mut r = vec![0u8; 4096];
                r[0] = 6;
                r[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
                r
            },
        ];
        for ring in cases {
            let mut ch = open();
            ch.device().host_message(&ring);
            let r = ch.next_message_timeout(Duration::from_secs(5));
            assert!(matches!(r, Err(ChannelError::Ring(_))), "{r:?}");
        }
    }

    #[test]
    fn take_events_rejects_a_second_fence_for_one_poll() {
        let mut ch = open();
        let mut two = DrmEvent::FENCE_SIGNALED.to_bytes().to_vec();
        two.extend_from_slice(&DrmEvent::FENCE_SIGNALED.to_bytes());
        ch.device().host_events.write_all(&two).unwrap();
        assert!(matches!(
            ch.next_message_timeout(Duration::from_secs(5)),
            Err(ChannelError::SpuriousFence)
        ));
    }

    #[test]
    fn image_requirements_query_ring_then_cached() {
        let mut ch = open();
        let r = ch.image_requirements(64, 64, 0x3432_5241, 0x11).unwrap();
        assert_eq!((r.strides[0], r.size, r.blob_id), (256, 256 * 64, 9));
        let (flags, ring, bos, cmd) = ch.device().execs.last().unwrap().clone();
        assert_eq!((flags, ring, bos), (VIRTGPU_EXECBUF_RING_IDX, 0, vec![1]));
        assert_eq!(cmd.len(), 24);
        assert_eq!(
            [
                u32_at(&cmd, 8),
                u32_at(&cmd, 12),
                u32_at(&cmd, 16),
                u32_at(&cmd, 20)
            ],
            [64, 64, 0x3432_5241, 0x11]
        );
        ch.image_requirements(64, 64, 0x3432_5241, 0x11).unwrap();
        assert_eq!(ch.device().execs.len(), 3, "second answer from the cache");
    }

    #[test]
    fn image_requirements_plane_past_allocation_is_refused() {
        let mut m = Mock::new();
        m.image_reply.size.set(100);
        let mut ch = Channel::open(m, ChannelConfig::default()).unwrap();
        assert!(matches!(
            ch.image_requirements(64, 64, 0x3432_5241, 0x11),
            Err(ChannelError::BadImageRequirements { .. })
        ));
    }

    #[test]
    fn blobs_guest_and_host_carry_resource_ids_and_limits() {
        let mut ch = open();
        let g = ch.create_guest_blob(10_000).unwrap();
        assert_eq!((g.res_id, g.mapping.len()), (3, 12_288));
        let item = HostItem {
            id: 42,
            kind: HostItemKind::Blob,
            size: 5000,
        };
        let h = ch.blob_from_item(&item).unwrap();
        let (req, _) = &ch.device().blobs[3];
        assert_eq!(
            (req.blob_mem, req.blob_id, req.size),
            (VIRTGPU_BLOB_MEM_HOST3D, 42, 5000)
        );
        assert_eq!(h.res_id, 4);
        assert!(matches!(
            ch.create_guest_blob(0),
            Err(ChannelError::BlobSize { .. })
        ));
        assert!(matches!(
            ch.create_guest_blob(DEFAULT_MAX_BLOB_SIZE + 1),
            Err(ChannelError::BlobSize { .. })
        ));
        let pipe = HostItem {
            kind: HostItemKind::WritePipe,
            ..item
        };
        assert!(matches!(
            ch.blob_from_item(&pipe),
            Err(ChannelError::NotABlob { .. })
        ));
        ch.close_blob(g).unwrap();
    }

    #[test]
    fn write_pipe_splits_into_4072_byte_writes_hanging_up_last() {
        let mut ch = open();
        ch.write_pipe(0x44, &vec![1u8; 5000], true).unwrap();
        let execs = &ch.device().execs[2..];
        assert_eq!(execs.len(), 2);
        let sizes: Vec<_> = execs
            .iter()
            .map(|(_, _, _, c)| (c[0], u32_at(c, 8), u32_at(c, 12), u32_at(c, 16)))
            .collect();
        assert_eq!(sizes, [(7, 0x44, 0, 4072), (7, 0x44, 1, 928)]);
    }
}
