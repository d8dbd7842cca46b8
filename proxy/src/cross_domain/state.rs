//! State one cross-domain context shares between the device thread (`SUBMIT_3D`, fences,
//! `RESOURCE_CREATE_BLOB`) and its channel's worker thread: the item table, the queue of ring
//! messages waiting for a `POLL` fence, the bytes waiting for the host socket, and pipes.
//!
//! One mutex guards all of it (the relay too), so "one ring message per POLL fence" and "fds
//! no later than their message" hold without lock ordering.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::net::Shutdown;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use crossway_protocols::cross_domain::{
    CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB, CROSS_DOMAIN_ID_TYPE_WRITE_PIPE,
    CROSS_DOMAIN_MAX_IDENTIFIERS, CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA, CROSS_DOMAIN_PIPE_READ_START,
    CROSS_DOMAIN_RING_SIZE, Identifier, Identifiers, PipeIds, RingMessage,
};
use crossway_virtio::context::{FenceStatus, GuestWriter};
use crossway_virtio::fence::FenceSignaler;

use super::CrossDomainLimits;
use super::image::{ImageLayout, ImageRequest};
use super::sys;
use crossway_relay::{GuestFd, Outgoing, Relay, RelayError, SyncBuffers};
use crossway_sys::fdpass::FdQueue;

/// What an item id stands for.
#[derive(Debug)]
pub(crate) enum Item {
    /// A `GET_IMAGE_REQUIREMENTS` answer; kept until the context dies (one blob id can back
    /// many resources).
    Image {
        req: ImageRequest,
        layout: ImageLayout,
    },
    /// A host memory fd (keymap, format table, buffer) for one `RESOURCE_CREATE_BLOB`.
    Blob { fd: OwnedFd, size: u64 },
    /// A pipe write end the host compositor gave us; the guest writes with `CMD_WRITE`.
    WritePipe(WritePipe),
}

/// A write end with what is still to be written into it.
#[derive(Debug)]
pub(crate) struct WritePipe {
    pub fd: Arc<OwnedFd>,
    pub buf: VecDeque<u8>,
}

impl WritePipe {
    /// Writes what it can. `Ok(true)` when the buffer is empty; a reader that went away drops
    /// the buffer (the data has nowhere to go).
    pub fn flush(&mut self) -> bool {
        while !self.buf.is_empty() {
            let (front, _) = self.buf.as_slices();
            match sys::write_nonblocking(self.fd.as_fd(), front) {
                Ok(Some(0)) | Ok(None) => return false,
                Ok(Some(n)) => {
                    self.buf.drain(..n);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "write pipe closed by its reader");
                    self.buf.clear();
                }
            }
        }
        true
    }
}

/// What a channel's stream passes through on its way between guest and host: the Wayland
/// [`Relay`] in the product; the transport's unit tests put a pass-through in its place after
/// `INIT`, so they can check ring splitting, fds and pipes with raw bytes.
pub(crate) trait StreamRelay: Send + std::fmt::Debug {
    /// See [`Relay::from_guest`].
    fn guest_to_host(
        &mut self,
        bytes: &[u8],
        fds: Vec<GuestFd>,
        sync: &mut dyn SyncBuffers,
        out: &mut Outgoing,
    ) -> Result<(), RelayError>;

    /// See [`Relay::from_host`].
    fn host_to_guest(
        &mut self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Outgoing,
    ) -> Result<(), RelayError>;
}

impl StreamRelay for Relay {
    fn guest_to_host(
        &mut self,
        bytes: &[u8],
        fds: Vec<GuestFd>,
        sync: &mut dyn SyncBuffers,
        out: &mut Outgoing,
    ) -> Result<(), RelayError> {
        Relay::from_guest(self, bytes, fds, sync, out)
    }

    fn host_to_guest(
        &mut self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Outgoing,
    ) -> Result<(), RelayError> {
        Relay::from_host(self, bytes, fds, out)
    }
}

/// The Wayland channel: relay, host connection, pending output.
#[derive(Debug)]
pub(crate) struct Channel {
    pub relay: Box<dyn StreamRelay>,
    /// `None` once the channel ended.
    pub host: Option<Arc<UnixStream>>,
    pub host_out: FdQueue,
}

/// Everything behind the context's mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub ctx: u32,
    pub limits: CrossDomainLimits,
    pub fences: FenceSignaler,
    pub wake: Arc<OwnedFd>,
    pub stop: bool,
    /// Items by id (general ids from a counter, never in the read-pipe range).
    pub items: BTreeMap<u32, Item>,
    last_item: u32,
    pub image_cache: HashMap<ImageRequest, u32>,
    /// Read ends of pipes whose write end went to the compositor, by the guest's guessed id.
    pub read_pipes: BTreeMap<u32, Arc<OwnedFd>>,
    pub pipe_ids: PipeIds,
    /// Write pipes the guest hung up on, flushing their last bytes.
    pub closing: BTreeMap<u64, WritePipe>,
    next_closing: u64,
    /// The channel ring.
    pub ring: Option<GuestWriter>,
    /// Encoded ring messages, oldest first.
    pub queue: VecDeque<Vec<u8>>,
    /// A `POLL` was submitted and its fence not created yet.
    pub polled: bool,
    /// `POLL` fences waiting for a message.
    pub pending_fences: VecDeque<u64>,
    pub channel: Option<Channel>,
    limit_logged: bool,
}

/// Why the channel must end (logged, then a zero-length RECEIVE).
#[derive(Debug)]
pub(crate) struct ChannelEnd(pub String);

impl State {
    pub fn new(
        ctx: u32,
        limits: CrossDomainLimits,
        fences: FenceSignaler,
        wake: Arc<OwnedFd>,
    ) -> State {
        State {
            ctx,
            limits,
            fences,
            wake,
            stop: false,
            items: BTreeMap::new(),
            last_item: 1,
            image_cache: HashMap::new(),
            read_pipes: BTreeMap::new(),
            pipe_ids: PipeIds::default(),
            closing: BTreeMap::new(),
            next_closing: 0,
            ring: None,
            queue: VecDeque::new(),
            polled: false,
            pending_fences: VecDeque::new(),
            channel: None,
            limit_logged: false,
        }
    }

    fn live_items(&self) -> usize {
        self.items.len() + self.read_pipes.len() + self.closing.len()
    }

    /// Whether one more item fits; logs the limit once.
    pub fn item_room(&mut self) -> bool {
        if self.live_items() < self.limits.max_items {
            return true;
        }
        if !self.limit_logged {
            self.limit_logged = true;
            tracing::warn!(
                limit = self.limits.max_items,
                "cross-domain limit max_items reached"
            );
        }
        false
    }

    /// Stores an item under a new id (ids start at 2, as rutabaga's).
    pub fn add_item(&mut self, item: Item) -> Option<u32> {
        if !self.item_room() {
            return None;
        }
        loop {
            let next = self.last_item.wrapping_add(1);
            self.last_item = if next == 0 || next >= CROSS_DOMAIN_PIPE_READ_START {
                2
            } else {
                next
            };
            if !self.items.contains_key(&self.last_item) {
                break;
            }
        }
        self.items.insert(self.last_item, item);
        Some(self.last_item)
    }

    /// Queues a ring message and writes it at once if a POLL fence waits.
    pub fn push_ring(&mut self, msg: &RingMessage<'_>) {
        let mut page = [0u8; CROSS_DOMAIN_RING_SIZE];
        match msg.encode(&mut page) {
            Ok(n) => self.queue.push_back(page[..n].to_vec()),
            Err(e) => tracing::error!(error = %e, "ring message not encodable"),
        }
        self.pump();
    }

    /// Whether the worker may read more from the host.
    pub fn has_room(&self) -> bool {
        self.queue.len() < self.limits.max_ring_messages
    }

    fn write_front(&mut self) {
        let was_full = !self.has_room();
        let Some(msg) = self.queue.pop_front() else {
            return;
        };
        match &self.ring {
            Some(ring) => {
                if let Err(e) = ring.write(0, &msg) {
                    tracing::warn!(error = %e, "channel ring write failed");
                }
            }
            None => tracing::warn!("ring message without a channel ring"),
        }
        if was_full && self.has_room() {
            crossway_sys::eventfd::wake(self.wake.as_fd());
        }
    }

    /// One message per waiting fence.
    pub fn pump(&mut self) {
        while !self.queue.is_empty() {
            let Some(fence) = self.pending_fences.pop_front() else {
                return;
            };
            self.write_front();
            self.fences.signal(self.ctx, 1, fence);
        }
    }

    /// A fence on the channel ring.
    pub fn channel_fence(&mut self, fence_id: u64) -> FenceStatus {
        if !std::mem::take(&mut self.polled) {
            return FenceStatus::Signaled;
        }
        if self.pending_fences.is_empty() && !self.queue.is_empty() {
            self.write_front();
            return FenceStatus::Signaled;
        }
        self.pending_fences.push_back(fence_id);
        self.pump();
        FenceStatus::Pending
    }

    /// Ends the channel after the compositor closed its end: no error.
    pub fn host_closed(&mut self) {
        self.finish_channel("the host compositor closed the connection", false);
    }

    /// Ends the channel once because something failed: logs why (warning), closes the host
    /// connection, tells the guest (zero-length RECEIVE).
    pub fn end_channel(&mut self, why: &str) {
        self.finish_channel(why, true);
    }

    fn finish_channel(&mut self, why: &str, failed: bool) {
        let Some(ch) = self.channel.as_mut() else {
            return;
        };
        let Some(host) = ch.host.take() else {
            return;
        };
        let _ = host.shutdown(Shutdown::Both);
        ch.host_out = FdQueue::default();
        if failed {
            tracing::warn!(reason = why, "cross-domain channel ended");
        } else {
            tracing::info!(reason = why, "cross-domain channel ended");
        }
        self.push_ring(&RingMessage::Receive {
            identifiers: Identifiers::new(),
            data: &[],
        });
        crossway_sys::eventfd::wake(self.wake.as_fd());
    }

    /// Turns what the relay has for the guest into RECEIVE messages: each fd becomes an item
    /// (memory ⇒ blob, write end ⇒ write pipe) and travels no later than its message.
    pub fn queue_to_guest(&mut self, out: &mut Outgoing) -> Result<(), ChannelEnd> {
        let bytes = std::mem::take(&mut out.to_guest);
        let mut fds = std::mem::take(&mut out.guest_fds);
        if bytes.is_empty() && fds.is_empty() {
            return Ok(());
        }
        fds.sort_by_key(|(o, _)| *o);
        let offsets: Vec<usize> = fds.iter().map(|(o, _)| *o).collect();
        let mut idents = Vec::with_capacity(fds.len());
        for (_, fd) in fds {
            idents.push(self.fd_to_item(fd)?);
        }
        for (data, ids) in split_receive(bytes.len(), &offsets) {
            let identifiers: Identifiers = idents[ids].iter().copied().collect();
            self.push_ring(&RingMessage::Receive {
                identifiers,
                data: &bytes[data],
            });
        }
        Ok(())
    }

    fn fd_to_item(&mut self, fd: OwnedFd) -> Result<Identifier, ChannelEnd> {
        let full = || ChannelEnd("max_items reached".into());
        match sys::classify(fd.as_fd()) {
            sys::HostFdClass::Memory(size) => {
                let size32 = u32::try_from(size).map_err(|_| {
                    ChannelEnd(format!(
                        "host memory fd of {size} bytes does not fit a RECEIVE"
                    ))
                })?;
                let id = self.add_item(Item::Blob { fd, size }).ok_or_else(full)?;
                Ok(Identifier {
                    id,
                    id_type: CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB,
                    size: size32,
                })
            }
            sys::HostFdClass::WritePipe => {
                sys::set_nonblocking(fd.as_fd())
                    .map_err(|e| ChannelEnd(format!("write pipe: {e}")))?;
                let id = self
                    .add_item(Item::WritePipe(WritePipe {
                        fd: Arc::new(fd),
                        buf: VecDeque::new(),
                    }))
                    .ok_or_else(full)?;
                Ok(Identifier {
                    id,
                    id_type: CROSS_DOMAIN_ID_TYPE_WRITE_PIPE,
                    size: 0,
                })
            }
            sys::HostFdClass::Other => Err(ChannelEnd(
                "the host compositor sent an fd that is neither memory nor a pipe write end".into(),
            )),
        }
    }

    /// A write pipe the guest hung up on keeps flushing its last bytes, then closes.
    pub fn close_write_pipe(&mut self, mut wp: WritePipe) {
        if !wp.flush() {
            self.next_closing += 1;
            self.closing.insert(self.next_closing, wp);
            crossway_sys::eventfd::wake(self.wake.as_fd());
        }
    }
}

/// Splits `len` bytes whose fds' messages start at `fd_offsets` (sorted) into RECEIVE
/// messages: at most 3744 bytes and 28 identifiers each, every fd in the message holding the
/// start of its Wayland message or an earlier one. Returns (byte range, fd index range) pairs.
pub fn split_receive(len: usize, fd_offsets: &[usize]) -> Vec<(Range<usize>, Range<usize>)> {
    const MAX_IDS: usize = CROSS_DOMAIN_MAX_IDENTIFIERS;
    let mut out = Vec::new();
    let (mut pos, mut f) = (0usize, 0usize);
    while pos < len || f < fd_offsets.len() {
        let rest = &fd_offsets[f..];
        if pos >= len {
            // Fds past the last byte (none in a well-formed stream): carry them anyway.
            let n = rest.len().min(MAX_IDS);
            out.push((pos..pos, f..f + n));
            f += n;
            continue;
        }
        let mut end = len.min(pos + CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA);
        let mut n = rest.iter().take_while(|&&o| o < end).count();
        if n > MAX_IDS {
            let cut = rest[MAX_IDS];
            if cut > pos {
                end = cut;
                n = rest.iter().take_while(|&&o| o < end).count();
            } else {
                // More than 28 fds due at this very byte: send 28 ahead of it, without bytes.
                end = pos;
                n = MAX_IDS;
            }
        }
        out.push((pos..end, f..f + n));
        pos = end;
        f += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_receive_long_stream_in_3744_byte_pieces() {
        let s = split_receive(10_000, &[]);
        assert_eq!(
            s,
            vec![(0..3744, 0..0), (3744..7488, 0..0), (7488..10_000, 0..0)]
        );
    }

    #[test]
    fn split_receive_fd_goes_with_its_message() {
        let s = split_receive(8000, &[4000]);
        assert_eq!(
            s,
            vec![(0..3744, 0..0), (3744..7488, 0..1), (7488..8000, 1..1)]
        );
    }

    #[test]
    fn split_receive_more_than_28_fds_cut_before_the_29th() {
        let offsets: Vec<usize> = (0..40).map(|i| i * 16).collect();
        let s = split_receive(640, &offsets);
        assert_eq!(s, vec![(0..448, 0..28), (448..640, 28..40)]);
        for (_, ids) in &s {
            assert!(ids.len() <= 28);
        }
    }

    #[test]
    fn split_receive_many_fds_on_one_byte_send_28_at_a_time() {
        let offsets = vec![0usize; 30];
        let s = split_receive(16, &offsets);
        assert_eq!(s, vec![(0..0, 0..28), (0..16, 28..30)]);
    }

    #[test]
    fn split_receive_empty_is_nothing() {
        assert!(split_receive(0, &[]).is_empty());
    }

    /// The rules on many generated streams: the pieces cover bytes and fds in order, each
    /// within a RECEIVE's limits, and no fd travels after the first byte of its message.
    #[test]
    fn split_receive_generated_streams_keep_limits_and_fd_order() {
        let mut seed = 0x2545_f491_u64;
        let mut next = |m: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % m
        };
        for _ in 0..2000 {
            let len = next(12_000);
            let mut offsets: Vec<usize> = (0..next(80)).map(|_| next(len + 1)).collect();
            offsets.sort_unstable();
            let pieces = split_receive(len, &offsets);
            let (mut pos, mut f) = (0, 0);
            for (bytes, ids) in &pieces {
                assert_eq!((bytes.start, ids.start), (pos, f), "{len} {offsets:?}");
                assert!(bytes.len() <= CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA);
                assert!(ids.len() <= CROSS_DOMAIN_MAX_IDENTIFIERS);
                assert!(
                    !bytes.is_empty() || !ids.is_empty(),
                    "an empty RECEIVE means EOF"
                );
                for &o in &offsets[ids.clone()] {
                    assert!(
                        o >= bytes.start,
                        "fd of offset {o} after its byte: {pieces:?}"
                    );
                }
                (pos, f) = (bytes.end, ids.end);
            }
            assert_eq!((pos, f), (len, offsets.len()));
        }
    }
}
