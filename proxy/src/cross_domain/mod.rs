//! The cross-domain context type (capset 5), wire-compatible with crosvm/rutabaga: each Wayland
//! channel becomes one [`crossway_relay::Relay`] in front of the host compositor.
//!
//! ```text
//!  guest ─SUBMIT_3D─▶ CrossDomainContext::submit ─ INIT / GET_IMAGE_REQUIREMENTS / POLL
//!                         │ SEND: ids → host fds ─▶ Relay::from_guest ─▶ sendmsg ─▶ compositor
//!                         │ WRITE ─▶ write-pipe item
//!  guest ◀─ring 1──── worker thread ◀─ Relay::from_host ◀─ recvmsg ◀──────────── compositor
//!                         (RECEIVE / READ, one per POLL fence)      read pipes ◀─ compositor
//! ```
//!
//! Facts followed: `shared/reference/cross-domain.md` §1 (commands, quirks) and §2 (what
//! rutabaga does with identifiers and items). Differences from rutabaga: a `SEND` carrying a
//! guest blob is accepted (its udmabuf dmabuf or copy-path memfd is sent), and the stream is
//! relayed through the policy engine rather than copied blindly.

pub mod image;
mod state;
mod sys;
mod worker;

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossway_protocols::cross_domain::{
    CAPSET_CROSS_DOMAIN, CROSS_DOMAIN_CHANNEL_TYPE_NONE, CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND,
    CROSS_DOMAIN_ID_TYPE_READ_PIPE, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB, CROSS_DOMAIN_RING_SIZE,
    Command, Commands, CrossDomainImageRequirements,
};
use crossway_virtio::context::{
    Context, ContextError, ContextFactory, ContextResources, CtxId, FenceStatus, HostBlob,
    NullContext, ResourceId, ResourceKind,
};
use crossway_virtio::fence::FenceSignaler;
use zerocopy::IntoBytes;

use crossway_sys::fdpass::FdQueue;
pub use image::{ImageAllocator, ImageError, ImageLayout, ImageRequest, MemfdAllocator};
pub use state::split_receive;
use state::{Channel, Item, State};
use worker::lock;

use crate::host::HostConnector;
use crossway_relay::{
    BufferPath, GuestFd, GuestFdKind, Outgoing, Relay, RelayConfig, RelayError, SyncBuffers,
    SyncError, VmStats,
};

/// The guest's page size: blob sizes are whole pages.
const GUEST_PAGE_SIZE: u64 = 4096;

/// Limits on one cross-domain context; all configurable, defaults below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossDomainLimits {
    /// Live items (image requirements, host blobs not yet created, pipes). Default 1024.
    /// Reaching it fails the command that needed one, or ends the channel when the host sent
    /// the fd.
    pub max_items: usize,
    /// Ring messages waiting for the guest's `POLL`; while full, the worker stops reading the
    /// host socket and pipes. Default 256 (at most 1 MiB).
    pub max_ring_messages: usize,
    /// Guest-to-host bytes waiting because the compositor is not reading; above it the channel
    /// ends. Default 4 MiB.
    pub max_host_queue_bytes: usize,
    /// Bytes buffered per write pipe (`CMD_WRITE` faster than the compositor reads); above it
    /// the `WRITE` fails. Default 1 MiB.
    pub max_write_pipe_bytes: usize,
    /// Width or height of an image. Default 16384.
    pub max_image_dimension: u32,
    /// Bytes of one image. Default 512 MiB.
    pub max_image_bytes: u64,
    /// Bytes read from the host socket at a time. Default 4096.
    pub host_read_bytes: usize,
}

impl Default for CrossDomainLimits {
    fn default() -> Self {
        CrossDomainLimits {
            max_items: 1024,
            max_ring_messages: 256,
            max_host_queue_bytes: 4 << 20,
            max_write_pipe_bytes: 1 << 20,
            max_image_dimension: 16384,
            max_image_bytes: 512 << 20,
            host_read_bytes: 4096,
        }
    }
}

/// What every context of one VM shares.
#[derive(Debug, Clone)]
struct Env {
    config: Arc<RelayConfig>,
    connector: Result<HostConnector, String>,
    stats: Arc<VmStats>,
    limits: CrossDomainLimits,
    allocator: Arc<dyn ImageAllocator>,
}

/// Creates [`CrossDomainContext`]s for capset 5 and [`NullContext`]s for anything else.
#[derive(Debug)]
pub struct CrossDomainFactory {
    env: Env,
}

impl CrossDomainFactory {
    /// Contexts whose Wayland channels connect through `connector`.
    pub fn new(
        config: Arc<RelayConfig>,
        connector: HostConnector,
        stats: Arc<VmStats>,
    ) -> CrossDomainFactory {
        CrossDomainFactory::build(config, Ok(connector), stats)
    }

    /// From `serve`'s relay setup.
    pub fn from_setup(setup: &crate::setup::RelaySetup) -> CrossDomainFactory {
        CrossDomainFactory::new(
            setup.config.clone(),
            setup.connector.clone(),
            setup.stats.clone(),
        )
    }

    /// Contexts without a host compositor: query-only channels work, a Wayland channel's
    /// `INIT` fails with `reason` logged.
    pub fn without_host(
        config: Arc<RelayConfig>,
        stats: Arc<VmStats>,
        reason: impl Into<String>,
    ) -> CrossDomainFactory {
        CrossDomainFactory::build(config, Err(reason.into()), stats)
    }

    fn build(
        config: Arc<RelayConfig>,
        connector: Result<HostConnector, String>,
        stats: Arc<VmStats>,
    ) -> CrossDomainFactory {
        CrossDomainFactory {
            env: Env {
                config,
                connector,
                stats,
                limits: CrossDomainLimits::default(),
                allocator: Arc::new(MemfdAllocator),
            },
        }
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: CrossDomainLimits) -> CrossDomainFactory {
        self.env.limits = limits;
        self
    }

    /// Replaces the image allocator (the GBM seam).
    pub fn with_allocator(mut self, allocator: Arc<dyn ImageAllocator>) -> CrossDomainFactory {
        self.env.allocator = allocator;
        self
    }

    /// A context directly (tests, or a VMM embedding the device).
    pub fn create_context(
        &self,
        ctx: CtxId,
        fences: FenceSignaler,
    ) -> Result<CrossDomainContext, ContextError> {
        CrossDomainContext::new(Arc::new(self.env.clone()), ctx, fences)
    }
}

impl ContextFactory for CrossDomainFactory {
    fn create(
        &mut self,
        ctx: CtxId,
        capset_id: u32,
        debug_name: &str,
        fences: FenceSignaler,
    ) -> Result<Box<dyn Context>, ContextError> {
        if capset_id != CAPSET_CROSS_DOMAIN {
            return Ok(Box::new(NullContext));
        }
        tracing::debug!(ctx = ctx.0, name = debug_name, "cross-domain context");
        Ok(Box::new(self.create_context(ctx, fences)?))
    }
}

#[derive(Debug, Clone, Copy)]
struct Init {
    query_ring: ResourceId,
    channel_type: u32,
}

/// One cross-domain context: one guest client's Wayland channel (or a query-only context).
#[derive(Debug)]
pub struct CrossDomainContext {
    ctx: CtxId,
    env: Arc<Env>,
    state: Arc<Mutex<State>>,
    init: Option<Init>,
    worker: Option<JoinHandle<()>>,
    /// `vm`, `ctx` and (once a Wayland channel opens) `client`: entered by every entry point
    /// and by the worker thread, so their events need not name the context.
    span: tracing::Span,
}

fn invalid(what: impl std::fmt::Display) -> ContextError {
    ContextError::InvalidCommand(what.to_string())
}

/// `SyncBuffers` over the resources of the running `SUBMIT_3D`.
struct ResourceSync<'a>(&'a mut dyn ContextResources);

impl SyncBuffers for ResourceSync<'_> {
    fn sync(&mut self, resource: u32, ranges: &[(u64, u64)]) -> Result<u64, SyncError> {
        self.0
            .sync(ResourceId(resource), ranges)
            .map_err(|e| SyncError::Device(Box::new(e)))
    }
}

impl CrossDomainContext {
    fn new(
        env: Arc<Env>,
        ctx: CtxId,
        fences: FenceSignaler,
    ) -> Result<CrossDomainContext, ContextError> {
        let wake = crossway_sys::eventfd::eventfd().map_err(|source| ContextError::Host {
            what: "eventfd",
            source,
        })?;
        let state = State::new(ctx.0, env.limits.clone(), fences, Arc::new(wake));
        let span = tracing::info_span!(
            "context",
            vm = %env.stats.vm_name,
            ctx = ctx.0,
            client = tracing::field::Empty
        );
        Ok(CrossDomainContext {
            ctx,
            env,
            state: Arc::new(Mutex::new(state)),
            init: None,
            worker: None,
            span,
        })
    }

    fn init(
        &mut self,
        query_ring_id: u32,
        channel_ring_id: u32,
        channel_type: u32,
        resources: &mut dyn ContextResources,
    ) -> Result<(), ContextError> {
        if self.init.is_some() {
            return Err(invalid("second CMD_INIT on one context"));
        }
        let query = ResourceId(query_ring_id);
        let ring = ResourceId(channel_ring_id);
        let q = resources
            .info(query)
            .ok_or(ContextError::UnknownResource(query_ring_id))?;
        if q.size < std::mem::size_of::<CrossDomainImageRequirements>() as u64 || !q.has_backing {
            return Err(invalid("query ring too small or without backing"));
        }
        match channel_type {
            CROSS_DOMAIN_CHANNEL_TYPE_NONE => {}
            CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND => {
                let c = resources
                    .info(ring)
                    .ok_or(ContextError::UnknownResource(channel_ring_id))?;
                if c.size < CROSS_DOMAIN_RING_SIZE as u64 || !c.has_backing {
                    return Err(invalid(
                        "channel ring smaller than a page or without backing",
                    ));
                }
                let writer = resources.guest_writer(ring)?;
                let connector = self.env.connector.as_ref().map_err(|reason| {
                    tracing::error!(reason = %reason, "Wayland channel refused: no host compositor");
                    ContextError::NoHostCompositor(reason.clone())
                })?;
                let stream = connector
                    .connect()
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(|e| {
                        tracing::error!(error = %e, "Wayland channel refused: cannot connect to the host compositor");
                        ContextError::HostConnect(e)
                    })?;
                let label = format!("ctx {}", self.ctx.0);
                self.span.record("client", label.as_str());
                let relay = Box::new(Relay::new(
                    self.env.config.clone(),
                    self.env.stats.client(label),
                ));
                {
                    let mut st = lock(&self.state);
                    st.ring = Some(writer);
                    st.channel = Some(Channel {
                        relay,
                        host: Some(Arc::new(stream)),
                        host_out: FdQueue::default(),
                    });
                }
                let state = self.state.clone();
                let span = self.span.clone();
                let worker = std::thread::Builder::new()
                    .name(format!("crossway-xd-{}", self.ctx.0))
                    .spawn(move || span.in_scope(|| worker::run(state)))
                    .map_err(|source| ContextError::Host {
                        what: "spawning the channel's worker thread",
                        source,
                    })?;
                self.worker = Some(worker);
                tracing::info!(host = %connector.socket().display(), "Wayland channel connected");
            }
            other => {
                tracing::warn!(channel_type = other, "channel type not supported");
                return Err(ContextError::Unsupported("cross-domain channel type"));
            }
        }
        self.init = Some(Init {
            query_ring: query,
            channel_type,
        });
        Ok(())
    }

    fn image_requirements(
        &mut self,
        req: ImageRequest,
        resources: &mut dyn ContextResources,
    ) -> Result<(), ContextError> {
        let init = self
            .init
            .ok_or_else(|| invalid("GET_IMAGE_REQUIREMENTS before INIT"))?;
        let (id, layout) = {
            let mut st = lock(&self.state);
            match st.image_cache.get(&req).copied() {
                Some(id) => match st.items.get(&id) {
                    Some(Item::Image { layout, .. }) => (id, *layout),
                    _ => return Err(ContextError::OutOfStep("image cache")),
                },
                None => {
                    let layout = self
                        .env
                        .allocator
                        .layout(
                            &req,
                            st.limits.max_image_dimension,
                            st.limits.max_image_bytes,
                        )
                        .map_err(invalid)?;
                    let id = st
                        .add_item(Item::Image { req, layout })
                        .ok_or(ContextError::OutOfMemory)?;
                    st.image_cache.insert(req, id);
                    (id, layout)
                }
            }
        };
        resources.write(init.query_ring, 0, layout.reply(id).as_bytes())
    }

    fn send(
        &mut self,
        identifiers: &[crossway_protocols::cross_domain::Identifier],
        data: &[u8],
        resources: &mut dyn ContextResources,
    ) -> Result<(), ContextError> {
        if self
            .init
            .is_none_or(|i| i.channel_type != CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND)
        {
            return Err(invalid("SEND without a Wayland channel"));
        }
        // Every identifier is resolved before anything is sent: a bad one fails the SEND whole.
        let mut fds = Vec::with_capacity(identifiers.len());
        let mut new_pipes = Vec::new();
        for ident in identifiers {
            match ident.id_type {
                CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB => {
                    let info = resources
                        .info(ResourceId(ident.id))
                        .ok_or(ContextError::UnknownResource(ident.id))?;
                    let e = resources.export(ResourceId(ident.id))?;
                    let path = match (info.kind, e.zero_copy) {
                        (ResourceKind::HostBlob, _) => BufferPath::ShmZeroCopy,
                        (_, true) => BufferPath::DmabufZeroCopy,
                        (_, false) => BufferPath::Copy,
                    };
                    fds.push(GuestFd {
                        fd: e.fd,
                        kind: GuestFdKind::Memory {
                            size: e.size,
                            path,
                            resource: Some(ident.id),
                            // Guest-blob dmabufs and the proxy's own sealed memfds.
                            shrinkable: false,
                        },
                    });
                }
                CROSS_DOMAIN_ID_TYPE_READ_PIPE => {
                    let mut st = lock(&self.state);
                    // The guest guesses the id the host will give (reference §1.4): the
                    // counter moves on every read pipe, and a wrong guess fails the SEND.
                    let expected = st.pipe_ids.next_id();
                    if expected != ident.id {
                        return Err(invalid(format!(
                            "read pipe id {:#x} is not the expected {expected:#x}",
                            ident.id
                        )));
                    }
                    if !st.item_room() {
                        return Err(ContextError::OutOfMemory);
                    }
                    drop(st);
                    let (r, w) = sys::pipe().map_err(|source| ContextError::Host {
                        what: "pipe",
                        source,
                    })?;
                    new_pipes.push((ident.id, r));
                    fds.push(GuestFd {
                        fd: w,
                        kind: GuestFdKind::Pipe,
                    });
                }
                other => {
                    return Err(invalid(format!(
                        "identifier type {other} cannot be sent to the host"
                    )));
                }
            }
        }
        let mut st = lock(&self.state);
        let closed = st.channel.as_ref().is_none_or(|c| c.host.is_none());
        if closed {
            return Err(ContextError::ChannelEnded);
        }
        if !new_pipes.is_empty() {
            for (id, r) in new_pipes {
                st.read_pipes.insert(id, Arc::new(r));
            }
            // The worker polls a set it built before these existed.
            crossway_sys::eventfd::wake(st.wake.as_fd());
        }
        let mut out = Outgoing::default();
        let max_queue = st.limits.max_host_queue_bytes;
        let Some(ch) = st.channel.as_mut() else {
            return Err(ContextError::ChannelEnded);
        };
        let result = ch
            .relay
            .guest_to_host(data, fds, &mut ResourceSync(resources), &mut out);
        ch.host_out
            .push(&out.to_host, std::mem::take(&mut out.host_fds));
        let mut end: Option<String> = None;
        if let Some(host) = ch.host.clone() {
            match ch.host_out.flush(host.as_fd()) {
                Ok(true) => {}
                Ok(false) if ch.host_out.len() > max_queue => {
                    tracing::warn!(
                        limit = max_queue,
                        "cross-domain limit max_host_queue_bytes reached"
                    );
                    end = Some("the host compositor is not reading (max_host_queue_bytes)".into());
                }
                Ok(false) => crossway_sys::eventfd::wake(st.wake.as_fd()),
                Err(e) => end = Some(format!("writing to the host compositor: {e}")),
            }
        }
        if let Err(e) = st.queue_to_guest(&mut out) {
            end = Some(e.0);
        }
        match result {
            Ok(()) => {}
            Err(RelayError::Guest(e)) => {
                tracing::info!(error = %e, "guest client broke the protocol");
                end.get_or_insert(e);
            }
            Err(RelayError::Host(e)) => {
                end.get_or_insert(e);
            }
        }
        if let Some(why) = end {
            st.end_channel(&why);
        }
        Ok(())
    }

    fn write(&mut self, identifier: u32, hang_up: bool, data: &[u8]) -> Result<(), ContextError> {
        let mut st = lock(&self.state);
        let max = st.limits.max_write_pipe_bytes;
        let Some(Item::WritePipe(wp)) = st.items.get_mut(&identifier) else {
            return Err(invalid(format!(
                "{identifier:#x} is not a write pipe of this context"
            )));
        };
        if wp.buf.len() + data.len() > max {
            return Err(invalid(format!(
                "write pipe {identifier:#x} has more than max_write_pipe_bytes ({max}) waiting"
            )));
        }
        wp.buf.extend(data);
        let flushed = wp.flush();
        if hang_up {
            if let Some(Item::WritePipe(wp)) = st.items.remove(&identifier) {
                st.close_write_pipe(wp);
            }
        } else if !flushed {
            crossway_sys::eventfd::wake(st.wake.as_fd());
        }
        Ok(())
    }
}

impl Context for CrossDomainContext {
    fn submit(
        &mut self,
        cmd: &[u8],
        resources: &mut dyn ContextResources,
    ) -> Result<(), ContextError> {
        let span = self.span.clone();
        let _entered = span.enter();
        lock(&self.state).polled = false;
        for c in Commands::new(cmd) {
            match c.map_err(invalid)? {
                Command::Init {
                    query_ring_id,
                    channel_ring_id,
                    channel_type,
                    ..
                } => self.init(query_ring_id, channel_ring_id, channel_type, resources)?,
                Command::GetImageRequirements {
                    width,
                    height,
                    drm_format,
                    flags,
                } => self.image_requirements(
                    ImageRequest {
                        width,
                        height,
                        format: drm_format,
                        flags,
                    },
                    resources,
                )?,
                Command::Poll => {
                    if self.init.is_none() {
                        return Err(invalid("POLL before INIT"));
                    }
                    lock(&self.state).polled = true;
                }
                Command::Send {
                    identifiers, data, ..
                } => self.send(&identifiers, data, resources)?,
                Command::Write {
                    identifier,
                    hang_up,
                    data,
                } => self.write(identifier, hang_up, data)?,
                Command::Extension { cmd, .. } => {
                    tracing::debug!(cmd, "cross-domain extension refused");
                    return Err(ContextError::Unsupported("cross-domain commands 8 to 13"));
                }
            }
        }
        Ok(())
    }

    fn create_fence(&mut self, ring: u8, fence_id: u64) -> FenceStatus {
        let _entered = self.span.enter();
        match ring {
            1 => lock(&self.state).channel_fence(fence_id),
            _ => FenceStatus::Signaled,
        }
    }

    fn create_blob(
        &mut self,
        resource: ResourceId,
        blob_id: u64,
        size: u64,
        blob_flags: u32,
    ) -> Result<HostBlob, ContextError> {
        let span = self.span.clone();
        let _entered = span.enter();
        let _ = blob_flags;
        let id = u32::try_from(blob_id).map_err(|_| invalid(format!("blob id {blob_id}")))?;
        let mut st = lock(&self.state);
        match st.items.get(&id) {
            Some(Item::Image { req, layout }) => {
                if size != layout.size {
                    return Err(invalid(format!(
                        "blob of {size} bytes for an image of {}",
                        layout.size
                    )));
                }
                let (req, layout) = (*req, *layout);
                drop(st);
                let fd = self.env.allocator.allocate(&req, &layout).map_err(|e| {
                    tracing::warn!(error = %e, "image allocation failed");
                    ContextError::OutOfMemory
                })?;
                tracing::debug!(resource = resource.0, size, "image blob");
                Ok(HostBlob {
                    fd,
                    size: layout.size,
                    map_info: layout.map_info,
                })
            }
            Some(Item::Blob { size: have, .. }) => {
                // The guest kernel rounds blob sizes up to whole pages, so a 64433-byte keymap
                // comes back as a 65536-byte blob. Mapping up to the end of the page that holds
                // the fd's last byte is safe (the rest of that page reads as zeros); a page
                // wholly past the end would fault, so anything larger is refused.
                let whole_pages = have
                    .checked_next_multiple_of(GUEST_PAGE_SIZE)
                    .unwrap_or(u64::MAX);
                if size > whole_pages {
                    return Err(invalid(format!(
                        "blob of {size} bytes for an item of {have}"
                    )));
                }
                let Some(Item::Blob { fd, size: have }) = st.items.remove(&id) else {
                    return Err(ContextError::OutOfStep("item vanished"));
                };
                Ok(HostBlob {
                    fd,
                    size: size.max(have),
                    map_info: crossway_protocols::cross_domain::map_info::CACHE_CACHED,
                })
            }
            _ => Err(invalid(format!(
                "blob id {id} is not an item of this context"
            ))),
        }
    }
}

impl Drop for CrossDomainContext {
    fn drop(&mut self) {
        let span = self.span.clone();
        let _entered = span.enter();
        {
            let mut st = lock(&self.state);
            st.stop = true;
            crossway_sys::eventfd::wake(st.wake.as_fd());
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        // Everything else (host socket, items, pipes) closes with the state, now unshared.
        let mut st = lock(&self.state);
        st.items.clear();
        st.read_pipes.clear();
        st.closing.clear();
        st.channel = None;
        st.queue = VecDeque::new();
        tracing::debug!("cross-domain context dropped");
    }
}

#[cfg(test)]
mod tests;
