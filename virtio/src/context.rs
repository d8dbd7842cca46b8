//! The context trait: what a context type (cross-domain, in `crossway-proxy`) implements so the
//! device can run it without knowing Wayland.
//!
//! The device owns contexts and resources; a context sees only the resources attached to it
//! (`CTX_ATTACH_RESOURCE`), through [`ContextResources`] while a command runs, or through an
//! owned [`GuestWriter`] for writes that happen later (the cross-domain channel ring).

use std::os::fd::OwnedFd;

use crate::blob::BlobError;
use crate::fence::FenceSignaler;
use crate::memory::{Backing, GuestMemHandle, MemoryError};
use crate::protocol::{
    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY, VIRTIO_GPU_RESP_ERR_UNSPEC,
};

/// A context id, chosen by the guest (one per DRM file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtxId(pub u32);

/// A resource id, chosen by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(pub u32);

/// What a context's fence does when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStatus {
    /// Done: the device answers now (and releases earlier fences on the ring).
    Signaled,
    /// Held until the context calls [`FenceSignaler::signal`] for it, or a later fence on the
    /// same ring completes.
    Pending,
}

/// Why a context refused something.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The command stream is malformed.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// A resource the command names is not attached to this context.
    #[error("resource {0} is not attached to this context")]
    UnknownResource(u32),
    /// The context type cannot do this.
    #[error("not supported by this context type: {0}")]
    Unsupported(&'static str),
    /// Host memory could not be had.
    #[error("out of host memory")]
    OutOfMemory,
    /// Guest memory could not be accessed.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// A guest blob could not be exported to the host or copied into its host memfd.
    #[error("guest blob")]
    Blob(#[from] BlobError),
    /// A host system call failed; `what` names it (`eventfd`, `pipe`, the worker thread, ..).
    #[error("{what}")]
    Host {
        /// The call or object that failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A Wayland channel was asked for, but the VM was started without a host compositor;
    /// the reason is the one found at startup.
    #[error("no host compositor: {0}")]
    NoHostCompositor(String),
    /// The host compositor's socket did not accept the channel's connection.
    #[error("connecting to the host compositor")]
    HostConnect(#[source] std::io::Error),
    /// The guest writes to a Wayland channel whose host side has closed.
    #[error("the Wayland channel has ended")]
    ChannelEnded,
    /// The context's own bookkeeping disagrees with itself: a bug here, not the guest's.
    #[error("context state out of step: {0}")]
    OutOfStep(&'static str),
}

impl ContextError {
    /// The response code the guest gets.
    pub fn response(&self) -> u32 {
        match self {
            ContextError::InvalidCommand(_) | ContextError::Memory(_) => {
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
            }
            ContextError::UnknownResource(_) => VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ContextError::OutOfMemory => VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
            ContextError::Unsupported(_)
            | ContextError::Blob(_)
            | ContextError::Host { .. }
            | ContextError::NoHostCompositor(_)
            | ContextError::HostConnect(_)
            | ContextError::ChannelEnded
            | ContextError::OutOfStep(_) => VIRTIO_GPU_RESP_ERR_UNSPEC,
        }
    }
}

/// What kind of memory a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// `RESOURCE_CREATE_2D`: host copy plus guest backing.
    TwoD,
    /// `BLOB_MEM_GUEST`: guest pages.
    GuestBlob,
    /// `BLOB_MEM_HOST3D`: host memory a context allocated.
    HostBlob,
}

/// What a context may know about an attached resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// Id.
    pub id: ResourceId,
    /// Kind.
    pub kind: ResourceKind,
    /// Bytes.
    pub size: u64,
    /// `VIRTIO_GPU_BLOB_FLAG_*` (0 for 2D).
    pub blob_flags: u32,
    /// The context's blob id (HOST3D).
    pub blob_id: u64,
    /// Whether guest pages back it now.
    pub has_backing: bool,
}

/// A resource exported as a host fd.
#[derive(Debug)]
pub struct ExportedFd {
    /// A dmabuf (udmabuf) or a memfd.
    pub fd: OwnedFd,
    /// True for a zero-copy dmabuf over guest pages or a host blob; false for the copy path's
    /// memfd, which needs [`ContextResources::sync`] after the guest writes.
    pub zero_copy: bool,
    /// Bytes.
    pub size: u64,
}

/// A HOST3D blob a context allocated for `RESOURCE_CREATE_BLOB`.
#[derive(Debug)]
pub struct HostBlob {
    /// Its memory (a sealed memfd, or a dmabuf).
    pub fd: OwnedFd,
    /// Bytes; at least the size the guest asked for.
    pub size: u64,
    /// `VIRTIO_GPU_MAP_CACHE_*` for `RESOURCE_MAP_BLOB`.
    pub map_info: u32,
}

/// The resources attached to a context, while one of its commands runs.
pub trait ContextResources {
    /// Info on an attached resource.
    fn info(&self, id: ResourceId) -> Option<ResourceInfo>;
    /// Reads guest backing bytes of an attached resource.
    fn read(&self, id: ResourceId, offset: u64, buf: &mut [u8]) -> Result<(), ContextError>;
    /// Writes guest backing bytes of an attached resource.
    fn write(&self, id: ResourceId, offset: u64, data: &[u8]) -> Result<(), ContextError>;
    /// An owned handle to write into the resource's guest backing later, from any thread.
    fn guest_writer(&self, id: ResourceId) -> Result<GuestWriter, ContextError>;
    /// The resource as a host fd (dmabuf, copy-path memfd or host blob fd).
    fn export(&mut self, id: ResourceId) -> Result<ExportedFd, ContextError>;
    /// For copy-path resources, copies the given byte ranges (damaged rows) from guest pages
    /// into the host memfd; returns bytes copied (0 for zero-copy resources).
    fn sync(&mut self, id: ResourceId, ranges: &[(u64, u64)]) -> Result<u64, ContextError>;
}

/// A context type's instance.
pub trait Context: Send {
    /// `SUBMIT_3D`: the command bytes, and the resources attached to this context.
    fn submit(
        &mut self,
        cmd: &[u8],
        resources: &mut dyn ContextResources,
    ) -> Result<(), ContextError>;

    /// A fence on `ring` arrived with a command. The default completes it at once.
    fn create_fence(&mut self, ring: u8, fence_id: u64) -> FenceStatus {
        let _ = (ring, fence_id);
        FenceStatus::Signaled
    }

    /// `CTX_ATTACH_RESOURCE`.
    fn attach_resource(&mut self, info: ResourceInfo) {
        let _ = info;
    }

    /// `CTX_DETACH_RESOURCE`, or the resource went away.
    fn detach_resource(&mut self, id: ResourceId) {
        let _ = id;
    }

    /// `RESOURCE_CREATE_BLOB` with `BLOB_MEM_HOST3D` and this context's `blob_id`.
    fn create_blob(
        &mut self,
        resource: ResourceId,
        blob_id: u64,
        size: u64,
        blob_flags: u32,
    ) -> Result<HostBlob, ContextError> {
        let _ = (resource, blob_id, size, blob_flags);
        Err(ContextError::Unsupported("host blobs"))
    }
}

/// Creates contexts for `CTX_CREATE`.
pub trait ContextFactory: Send {
    /// A context for `capset_id` (0: a legacy context without `context_init`). `fences`
    /// reports this context's fences completed later.
    fn create(
        &mut self,
        ctx: CtxId,
        capset_id: u32,
        debug_name: &str,
        fences: FenceSignaler,
    ) -> Result<Box<dyn Context>, ContextError>;
}

/// Contexts that accept resources and fences but no commands: what `CTX_CREATE` gets until a
/// real context type is plugged in, and for legacy (virgl) contexts, which Crossway does not
/// render (Mesa falls back to software).
#[derive(Debug, Default)]
pub struct NullContextFactory;

/// See [`NullContextFactory`].
#[derive(Debug)]
pub struct NullContext;

impl Context for NullContext {
    fn submit(
        &mut self,
        _cmd: &[u8],
        _resources: &mut dyn ContextResources,
    ) -> Result<(), ContextError> {
        Err(ContextError::Unsupported("command submission"))
    }
}

impl ContextFactory for NullContextFactory {
    fn create(
        &mut self,
        _ctx: CtxId,
        _capset_id: u32,
        _debug_name: &str,
        _fences: FenceSignaler,
    ) -> Result<Box<dyn Context>, ContextError> {
        Ok(Box::new(NullContext))
    }
}

/// Writes into a resource's guest backing as it was when the handle was made. If the guest
/// later replaces the backing, writes through an old handle still land in the old pages (or
/// fail if those left guest memory), never outside guest RAM.
#[derive(Debug, Clone)]
pub struct GuestWriter {
    pub(crate) mem: GuestMemHandle,
    pub(crate) backing: Backing,
}

impl GuestWriter {
    /// A writer over `backing` in `mem`: for `ContextResources` implementations outside this
    /// crate (test doubles of the device).
    pub fn new(mem: GuestMemHandle, backing: Backing) -> GuestWriter {
        GuestWriter { mem, backing }
    }

    /// Writes `data` at `offset` of the backing.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        use vm_memory::GuestAddressSpace;
        self.backing.write_at(&self.mem.memory(), offset, data)
    }

    /// Reads at `offset` of the backing.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        use vm_memory::GuestAddressSpace;
        self.backing.read_at(&self.mem.memory(), offset, buf)
    }

    /// Backing bytes.
    pub fn len(&self) -> u64 {
        self.backing.len()
    }

    /// No backing bytes.
    pub fn is_empty(&self) -> bool {
        self.backing.is_empty()
    }
}
