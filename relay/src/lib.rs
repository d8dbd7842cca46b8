//! `crossway-relay`: the Wayland relay engine, one [`Relay`] per guest client connection, shared by the
//! cross-domain context (`crossway_proxy::cross_domain`) and the socket front (`crossway-proxy filter`).
//!
//! The engine does no I/O. Its transport hands it what arrived from the guest (bytes, possibly
//! a partial message, plus fds with what the transport knows of them) and what arrived from the
//! host compositor (bytes plus fds), and collects what must go out in an [`Outgoing`]. It
//! parses every message in both directions with the protocol tables and an object map, and
//! enforces the [`policy::Policy`] on the host side of the VM boundary.
//!
//! Fds travel with the bytes of the message that carries them: every fd in an [`Outgoing`] is
//! tagged with the byte offset of its message, so a transport that must split the stream
//! (cross-domain RECEIVE carries at most 3744 bytes) sends each fd no later than its message.

pub mod buffers;
pub mod damage;
pub mod fault;
pub mod policy;
pub mod registry;
pub mod stats;
pub mod text;

mod engine;
#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crossway_protocols::objects::ObjectMap;
use crossway_protocols::stream::{MessageStream, StreamLimits};

pub use fault::Fault;
pub use policy::{Policy, PolicyError, Tagging};
pub use stats::{ClientStats, VmStats};

/// How the guest's buffer memory reaches the host compositor; counted per buffer in the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferPath {
    /// A dmabuf over the guest's pages (udmabuf) or a host-allocated dmabuf: no copies.
    DmabufZeroCopy,
    /// A memfd the guest maps directly (a host blob): no copies.
    ShmZeroCopy,
    /// A host memfd the proxy refreshes from guest pages at each commit (no udmabuf).
    Copy,
}

/// What a transport knows of an fd the guest sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFdKind {
    /// Memory (a dmabuf or memfd) of `size` bytes.
    Memory {
        /// Bytes the fd holds; plane layouts and shm pools are checked against it.
        size: u64,
        /// How it reaches the host.
        path: BufferPath,
        /// The virtio-gpu resource behind it (cross-domain), for [`SyncBuffers::sync`].
        resource: Option<u32>,
        /// The peer can shrink it (a memfd without `F_SEAL_SHRINK`): fine for a `wl_shm`
        /// pool (compositors guard those), refused as a dmabuf plane, which compositors map
        /// unguarded since a real dmabuf's size is fixed.
        shrinkable: bool,
    },
    /// A pipe end (clipboard, drag and drop).
    Pipe,
    /// Anything else (the socket front cannot always tell).
    Other,
}

/// An fd from the guest, in the order the guest sent it.
#[derive(Debug)]
pub struct GuestFd {
    /// The host fd.
    pub fd: OwnedFd,
    /// What it is.
    pub kind: GuestFdKind,
}

/// Refreshes copy-path buffers from guest memory before a commit reaches the host.
pub trait SyncBuffers {
    /// Copies `ranges` (byte offset, length) of `resource` from guest pages into its host
    /// memfd; returns the bytes copied.
    fn sync(&mut self, resource: u32, ranges: &[(u64, u64)]) -> Result<u64, SyncError>;
}

/// Why a copy-path buffer could not be refreshed; the relay answers the guest with
/// `wl_display.error` (implementation) and ends that client.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// This transport has no guest pages behind its fds (the socket front).
    #[error("this transport cannot refresh buffers")]
    Unsupported,
    /// The device refused or failed the copy (a range past the resource, a resource gone).
    #[error("the device could not copy guest pages: {0}")]
    Device(Box<dyn std::error::Error + Send + Sync>),
}

/// For transports whose buffers never need a refresh (the socket front).
#[derive(Debug, Default)]
pub struct NoSync;

impl SyncBuffers for NoSync {
    fn sync(&mut self, _resource: u32, _ranges: &[(u64, u64)]) -> Result<u64, SyncError> {
        Err(SyncError::Unsupported)
    }
}

/// What one call produced. Transports drain it after each call.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// Bytes for the host compositor.
    pub to_host: Vec<u8>,
    /// Fds for the host compositor, each with the offset in `to_host` of its message.
    pub host_fds: Vec<(usize, OwnedFd)>,
    /// Bytes for the guest client.
    pub to_guest: Vec<u8>,
    /// Fds for the guest, each with the offset in `to_guest` of its message.
    pub guest_fds: Vec<(usize, OwnedFd)>,
}

impl Outgoing {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.to_host.is_empty()
            && self.host_fds.is_empty()
            && self.to_guest.is_empty()
            && self.guest_fds.is_empty()
    }

    /// Forgets what was sent.
    pub fn clear(&mut self) {
        self.to_host.clear();
        self.host_fds.clear();
        self.to_guest.clear();
        self.guest_fds.clear();
    }
}

/// Why a connection must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The guest client broke the protocol or the policy. A `wl_display.error` event for it is
    /// already in [`Outgoing::to_guest`]: send that, then close this client (only this one).
    #[error("guest client error: {0}")]
    Guest(String),
    /// The host compositor sent something the relay cannot follow: close this client.
    #[error("host compositor error: {0}")]
    Host(String),
}

/// Limits on one guest client connection; every one is configurable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    /// Live Wayland objects.
    pub max_objects: usize,
    /// Bytes of one incomplete message or fds held while waiting for the rest of a message.
    pub max_pending_bytes: usize,
    /// Fds received but not yet matched to a message.
    pub max_pending_fds: usize,
    /// Size of one `wl_shm` pool.
    pub max_shm_pool_bytes: u64,
    /// Bytes of a title or app id after tagging.
    pub max_string_bytes: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_objects: 16_384,
            max_pending_bytes: 64 * 1024,
            max_pending_fds: 64,
            max_shm_pool_bytes: 512 << 20,
            max_string_bytes: 1024,
        }
    }
}

/// What every relay of one proxy (one VM) shares.
#[derive(Debug, Clone, Default)]
pub struct RelayConfig {
    /// Globals, versions, tagging.
    pub policy: Policy,
    /// Limits per client.
    pub limits: RelayLimits,
    /// The (format, modifier) pairs the host compositor imports, from its dmabuf feedback read
    /// at start (see `crossway_proxy::host::HostInfo`). `None`: unknown, so `zwp_linux_dmabuf_v1` is not
    /// advertised to the guest.
    pub host_formats: Option<Arc<crossway_protocols::dmabuf::PreferenceList>>,
}

/// A map keyed by Wayland object id (or global name), hashed with rustc-hash's `FxHasher` (a
/// multiply per key): Wayland ids are small dense integers the peer chooses, and the maps are
/// bounded by the object map's limit, so a peer gains nothing from collisions but a slower
/// map, and the frame loop avoids SipHash.
pub type IdMap<V> = rustc_hash::FxHashMap<u32, V>;

/// One guest client's relay: its object map, partial messages and fds waiting on both sides,
/// advertised globals and buffer state.
#[derive(Debug)]
pub struct Relay {
    config: Arc<RelayConfig>,
    stats: Arc<ClientStats>,
    map: ObjectMap,
    /// Guest → host: partial request, fds waiting for their request.
    guest: MessageStream<GuestFd>,
    /// Host → guest: partial event, fds waiting for their event.
    host: MessageStream<OwnedFd>,
    registry: registry::Registry,
    buffers: buffers::Buffers,
    tags: Option<engine::Tags>,
    scratch: engine::Scratch,
    /// Set once the connection must end: every later call returns it again.
    failed: Option<RelayError>,
}

impl Relay {
    /// A relay for a new guest client; `stats` is its entry in the VM's [`VmStats`].
    pub fn new(config: Arc<RelayConfig>, stats: Arc<ClientStats>) -> Relay {
        let tags = engine::Tags::new(&config.policy.tagging);
        let limits = StreamLimits {
            max_pending_bytes: config.limits.max_pending_bytes,
            max_pending_fds: config.limits.max_pending_fds,
        };
        Relay {
            map: ObjectMap::new(config.limits.max_objects),
            config,
            stats,
            guest: MessageStream::new(limits),
            host: MessageStream::new(limits),
            registry: registry::Registry::default(),
            buffers: buffers::Buffers::default(),
            tags,
            scratch: engine::Scratch::default(),
            failed: None,
        }
    }

    /// This client's counters.
    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// The shared configuration.
    pub fn config(&self) -> &Arc<RelayConfig> {
        &self.config
    }

    /// Guest → host: `bytes` continue the guest's stream (any split), `fds` follow the fds
    /// already received, in order.
    ///
    /// Every complete message is parsed, checked against the policy and forwarded into
    /// `out.to_host` (with its fds in `out.host_fds`); a partial message waits for the next
    /// call. On [`RelayError::Guest`] the `wl_display.error` for the guest is already in
    /// `out.to_guest`; messages before the faulty one stay in `out.to_host`.
    pub fn from_guest(
        &mut self,
        bytes: &[u8],
        fds: Vec<GuestFd>,
        sync: &mut dyn SyncBuffers,
        out: &mut Outgoing,
    ) -> Result<(), RelayError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.guest.push_fds(fds);
        let result = self.guest_input(bytes, sync, out);
        if let Err(fault) = result {
            fault.encode(&mut out.to_guest);
            ClientStats::add(&self.stats.refused, 1);
            tracing::warn!("guest protocol error: {fault}");
            let e = RelayError::Guest(fault.to_string());
            self.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Host → guest: `bytes` continue the host's stream, `fds` follow in order.
    ///
    /// Events are parsed and filtered (registry) into `out.to_guest` with their fds in
    /// `out.guest_fds`. A host `wl_display.error` is forwarded, then returned as
    /// [`RelayError::Host`].
    pub fn from_host(
        &mut self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Outgoing,
    ) -> Result<(), RelayError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.host.push_fds(fds);
        if let Err(why) = self.host_input(bytes, out) {
            tracing::warn!("host compositor: {why}");
            let e = RelayError::Host(why);
            self.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }
}
