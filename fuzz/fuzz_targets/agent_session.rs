//! The guest agent's relay (`crossway_agent::session::Session`) over an in-memory virtgpu device,
//! fed a guest client's bytes and fds and the host's RECEIVEs and READs, split anywhere: it must
//! never panic, what it queues for the client must frame into whole messages with ordered fd
//! offsets, every SEND must fit the channel and name live resources only, and once the session
//! is dropped every GEM handle it created or imported is closed exactly once and no fd is left.
//!
//! Input: byte 0 picks the device (bit 0: the Crossway capset with guest blobs in SEND; bit 1:
//! PRIME imports succeed, as for virtio-gpu dmabufs; bit 2: their RESOURCE_INFO fails; bits
//! 3-4: the host's image layout (tight, padded stride, offset plane, too small); bit 5: small
//! limits). Then chunks: a flags byte, a length byte and that many bytes.
//! - flags bit 0 clear: client bytes; bits 1-2 fds with them, bits 3-5 what each fd is (the
//!   write end of a pipe, /dev/null, or memfds of several sizes).
//! - flags bit 0 set, bit 6 clear: a host RECEIVE; bits 1-2 items, bits 3-5 what each item is
//!   (a write pipe, a foreign type, blobs of several sizes). The chunk's byte 0 says how many
//!   of the next bytes are Wayland bytes; the bytes after them fill the blobs.
//! - flags bits 0 and 6 set: a host READ for pipe `bytes[0]` (bit 7: hang up); bit 7 alone
//!   with bit 0 clear and bit 6 set: bytes the client wrote into host write pipe `bytes[0]`.
//!
//! The first error ends the session, as the server does.
//!
//! The harness also plays the host compositor's object map: every request in a SEND must name
//! only objects the host has, with new ids the host accepts (the agent translates between the
//! client's ids and its own on the host connection, and must never let a client reach a host
//! object it does not own). RECEIVEs update that map too; once one is not valid for it (a
//! hostile host), the check stops for that input.

#![no_main]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};

use crossway_agent::channel::{Channel, ChannelConfig, HostItem, HostItemKind};
use crossway_agent::session::{AgentStats, Session, SessionConfig, SessionError, SessionLimits};
use crossway_protocols::capset::{CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND, CrosswayCaps};
use crossway_protocols::cross_domain::{
    CAPSET_CROSS_DOMAIN, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB, CROSS_DOMAIN_MAX_IDENTIFIERS,
    CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA, Command, CrossDomainCapabilities,
    CrossDomainImageRequirements, decode_command,
};
use crossway_protocols::virtgpu::{
    BlobHandles, VIRTGPU_BLOB_MEM_HOST3D, VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS, VirtGpu,
    VirtGpuError, VirtGpuMapping, drm_virtgpu_context_set_param, drm_virtgpu_execbuffer,
    drm_virtgpu_resource_create_blob, drm_virtgpu_resource_info,
};
use crossway_protocols::objects::ObjectMap;
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::wire;
use libfuzzer_sys::fuzz_target;
use zerocopy::IntoBytes as _;

/// The Crossway capset id the mock offers.
const CROSSWAY_CAPSET: u32 = 48;
/// Largest blob the mock allocates (a host or guest out of memory past it).
const MAX_MOCK_BLOB: u64 = 8 << 20;
/// Handles of imported dmabufs start here; resource ids of imports are handle + this.
const IMPORT_BASE: u32 = 1 << 20;

/// One mapping: bytes that stay where they are for the mapping's life.
#[derive(Debug, Clone)]
struct Mapping(Rc<RefCell<Vec<u8>>>);

impl VirtGpuMapping for Mapping {
    fn len(&self) -> usize {
        self.0.borrow().len()
    }
    fn read_from(
        &self,
        file: std::os::fd::BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> std::io::Result<()> {
        let mut m = self.0.borrow_mut();
        let dst = offset
            .checked_add(len)
            .and_then(|end| m.get_mut(offset..end))
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        crossway_sys::read_exact_at(file, dst, file_offset)
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtGpuError> {
        let m = self.0.borrow();
        let end = offset.checked_add(buf.len());
        let src = end
            .and_then(|end| m.get(offset..end))
            .ok_or(VirtGpuError::InvalidArgument("past mapping"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), VirtGpuError> {
        let mut m = self.0.borrow_mut();
        let end = offset.checked_add(data.len());
        end.and_then(|end| m.get_mut(offset..end))
            .ok_or(VirtGpuError::InvalidArgument("past mapping"))?
            .copy_from_slice(data);
        Ok(())
    }
}

/// What the mock device knows, shared with the target for the final checks.
#[derive(Default)]
struct State {
    crossway: bool,
    prime_ok: bool,
    prime_info_fails: bool,
    layout: u8,
    /// Live GEM handles → (resource id, mapping, size, blob_mem).
    live: HashMap<u32, (u32, Mapping, u64, u32)>,
    /// Live imported handles by the dmabuf (device, inode) they stand for.
    imports: HashMap<(u64, u64), u32>,
    next_handle: u32,
    next_import: u32,
    /// Bytes HOST3D blobs are filled with (the host item's content).
    fill: Vec<u8>,
    /// The last image requirements asked, answered by the next execbuffer on the query ring.
    ring_handles: Vec<u32>,
    /// The host compositor's view of the connection's objects.
    host: ObjectMap,
    /// Event bytes of a RECEIVE not yet framed into a whole message.
    host_pending: Vec<u8>,
    /// The fuzzed host sent an event the host map refuses: ids are no longer checked.
    desynced: bool,
}

struct Mock {
    state: Rc<RefCell<State>>,
    _events_write: OwnedFd,
    events: OwnedFd,
}

impl VirtGpu for Mock {
    type Mapping = Mapping;

    fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError> {
        Ok(match param {
            VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS => {
                (1 << CAPSET_CROSS_DOMAIN)
                    | if self.state.borrow().crossway {
                        1 << CROSSWAY_CAPSET
                    } else {
                        0
                    }
            }
            _ => 1,
        })
    }

    fn get_caps(&mut self, id: u32, _: u32, buf: &mut [u8]) -> Result<usize, VirtGpuError> {
        let bytes = if id == CAPSET_CROSS_DOMAIN {
            let mut caps = CrossDomainCapabilities::default();
            caps.version.set(1);
            caps.supported_channels.set(1 << 1);
            caps.as_bytes().to_vec()
        } else {
            CrosswayCaps {
                flags: CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND,
                ..CrosswayCaps::default()
            }
            .to_bytes()
        };
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn context_init(&mut self, _: &[drm_virtgpu_context_set_param]) -> Result<(), VirtGpuError> {
        Ok(())
    }

    fn resource_create_blob(
        &mut self,
        req: &drm_virtgpu_resource_create_blob,
    ) -> Result<BlobHandles, VirtGpuError> {
        if req.size == 0 || req.size > MAX_MOCK_BLOB {
            return Err(VirtGpuError::OutOfMemory("mock blob size"));
        }
        let mut st = self.state.borrow_mut();
        let size = usize::try_from(req.size).expect("small");
        let mut bytes = vec![0u8; size.next_multiple_of(4096)];
        if req.blob_mem == VIRTGPU_BLOB_MEM_HOST3D && !st.fill.is_empty() {
            for (b, f) in bytes.iter_mut().zip(st.fill.iter().cycle()) {
                *b = *f;
            }
        }
        st.next_handle += 1;
        let h = st.next_handle;
        st.live.insert(
            h,
            (
                h,
                Mapping(Rc::new(RefCell::new(bytes))),
                req.size,
                req.blob_mem,
            ),
        );
        if st.ring_handles.len() < 2 {
            st.ring_handles.push(h);
        }
        Ok(BlobHandles {
            bo_handle: h,
            res_handle: h,
        })
    }

    fn map(&mut self, bo: u32) -> Result<Mapping, VirtGpuError> {
        let st = self.state.borrow();
        let (_, m, _, _) = st.live.get(&bo).ok_or(VirtGpuError::NoSuchHandle(bo))?;
        Ok(m.clone())
    }

    fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError> {
        let (cmd, _) = decode_command(eb.command).expect("the agent encodes valid commands");
        let mut st = self.state.borrow_mut();
        match cmd {
            Command::Send {
                identifiers, data, ..
            } => {
                assert!(data.len() <= CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA);
                if !st.desynced {
                    let mut rest = &data[..];
                    while let Some(m) = wire::next_message(rest).expect("SENDs frame") {
                        let r = st.host.process_request(ProtocolTable::builtin(), &m, usize::MAX);
                        if let Err(e) = r {
                            panic!("the host would refuse the agent's request: {e}");
                        }
                        rest = &rest[m.len()..];
                    }
                    assert!(rest.is_empty(), "a SEND ends on a message boundary");
                }
                assert!(identifiers.len() <= CROSS_DOMAIN_MAX_IDENTIFIERS);
                for i in &identifiers {
                    if i.id_type == CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB {
                        let live = st.live.values().any(|(res, ..)| *res == i.id)
                            || st.imports.values().any(|h| h + IMPORT_BASE == i.id);
                        assert!(live, "SEND names resource {} that is not live", i.id);
                    }
                }
            }
            Command::GetImageRequirements { width, height, .. } => {
                let stride = u64::from(width) * 4 + if st.layout == 1 { 64 } else { 0 };
                let offset = if st.layout == 2 { 4096 } else { 0 };
                let mut size = stride * u64::from(height) + offset;
                if st.layout == 3 {
                    size = size.saturating_sub(1).max(1);
                }
                let mut reply = CrossDomainImageRequirements::default();
                reply.strides[0].set(u32::try_from(stride).unwrap_or(u32::MAX));
                reply.offsets[0].set(u32::try_from(offset).unwrap_or(0));
                reply.size.set(size);
                reply.blob_id.set(77);
                let query = st.ring_handles[0];
                st.live[&query].1.write_at(0, reply.as_bytes())?;
            }
            _ => {}
        }
        Ok(())
    }

    fn wait(&mut self, _: u32, _: u32) -> Result<(), VirtGpuError> {
        Ok(())
    }

    fn resource_info(&mut self, bo: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError> {
        let st = self.state.borrow();
        if let Some((res, _, size, blob_mem)) = st.live.get(&bo) {
            return Ok(drm_virtgpu_resource_info {
                bo_handle: bo,
                res_handle: *res,
                size: u32::try_from(*size).unwrap_or(u32::MAX),
                blob_mem: *blob_mem,
            });
        }
        if st.imports.values().any(|h| *h == bo) && !st.prime_info_fails {
            return Ok(drm_virtgpu_resource_info {
                bo_handle: bo,
                res_handle: bo + IMPORT_BASE,
                size: 4096,
                blob_mem: 0,
            });
        }
        Err(VirtGpuError::NoSuchHandle(bo))
    }

    fn prime_handle_to_fd(&mut self, _: u32) -> Result<OwnedFd, VirtGpuError> {
        Err(VirtGpuError::InvalidArgument("mock"))
    }

    /// As the kernel: one handle per dmabuf per device file, whatever the number of imports.
    fn prime_fd_to_handle(&mut self, fd: BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
        let mut st = self.state.borrow_mut();
        if !st.prime_ok {
            return Err(VirtGpuError::InvalidArgument("not a virtio-gpu dmabuf"));
        }
        let meta = File::from(fd.try_clone_to_owned().map_err(|_| VirtGpuError::Os(24))?)
            .metadata()
            .map_err(|_| VirtGpuError::Os(9))?;
        let key = (meta.dev(), meta.ino());
        if let Some(h) = st.imports.get(&key) {
            return Ok(*h);
        }
        st.next_import += 1;
        let h = IMPORT_BASE - st.next_import;
        st.imports.insert(key, h);
        Ok(h)
    }

    fn gem_close(&mut self, h: u32) -> Result<(), VirtGpuError> {
        let mut st = self.state.borrow_mut();
        if st.live.remove(&h).is_some() {
            return Ok(());
        }
        let before = st.imports.len();
        st.imports.retain(|_, v| *v != h);
        // A second close of a handle could close whatever the kernel gave that number next.
        assert!(
            st.imports.len() < before,
            "GEM_CLOSE of handle {h}, not open"
        );
        Ok(())
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

static NULL: LazyLock<File> = LazyLock::new(|| File::open("/dev/null").expect("/dev/null"));

fn client_fd(kind: u8, n: u8) -> OwnedFd {
    match kind {
        0 => {
            let (_read, write) = rustix::pipe::pipe().expect("pipe");
            write
        }
        1 => NULL.try_clone().expect("dup").into(),
        k => {
            let size = [4096u64, 16384, 65536, 1 << 20, 100, 0][usize::from(k - 2) % 6]
                + u64::from(n % 2) * 4096;
            let fd =
                rustix::fs::memfd_create("fuzz", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
            rustix::fs::ftruncate(&fd, size).expect("ftruncate");
            fd
        }
    }
}

fn host_item(kind: u8, n: u8) -> HostItem {
    let id = u32::from(n);
    match kind {
        0 => HostItem {
            id,
            kind: HostItemKind::WritePipe,
            size: 0,
        },
        1 => HostItem {
            id,
            kind: HostItemKind::Other(u32::from(n)),
            size: 0,
        },
        k => HostItem {
            id,
            kind: HostItemKind::Blob,
            size: [16, 48, 4096, 0, 1 << 16, 33][usize::from(k - 2) % 6],
        },
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The host compositor's map follows its own events; one it refuses desyncs the check.
fn host_events(st: &mut State, bytes: &[u8]) {
    if st.desynced {
        return;
    }
    st.host_pending.extend_from_slice(bytes);
    let pending = std::mem::take(&mut st.host_pending);
    let mut rest = &pending[..];
    loop {
        match wire::next_message(rest) {
            Ok(Some(m)) => {
                if st
                    .host
                    .process_event(ProtocolTable::builtin(), &m, usize::MAX)
                    .is_err()
                {
                    st.desynced = true;
                    return;
                }
                rest = &rest[m.len()..];
            }
            Ok(None) => break,
            Err(_) => {
                st.desynced = true;
                return;
            }
        }
    }
    st.host_pending = rest.to_vec();
}

fn check_to_client(bytes: &[u8], fds: &[usize]) {
    let mut last = 0;
    for at in fds {
        assert!(
            *at >= last && *at <= bytes.len(),
            "fd offset {at} out of order"
        );
        last = *at;
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        let m = wire::next_message(rest)
            .expect("bytes for the client frame")
            .expect("bytes for the client are whole messages");
        rest = &rest[m.len()..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    let _ = &*NULL;
    let fds_before = open_fds();
    let state = Rc::new(RefCell::new(State {
        crossway: config & 1 != 0,
        prime_ok: config & 2 != 0,
        prime_info_fails: config & 4 != 0,
        layout: (config >> 3) & 3,
        ..State::default()
    }));
    let (events, events_write) = rustix::pipe::pipe().expect("pipe");
    let mock = Mock {
        state: state.clone(),
        _events_write: events_write,
        events,
    };
    let mut channel_config = ChannelConfig::default();
    channel_config.crossway_capset_id = Some(CROSSWAY_CAPSET);
    let ch = Channel::open(mock, channel_config).expect("the mock opens");
    let mut limits = SessionLimits::default();
    if config & 32 != 0 {
        limits.max_pool_bytes = 65536;
        limits.max_guest_blob_pool = 16384;
        limits.max_pools = 2;
        limits.max_objects = 16;
        limits.max_pending_fds = 3;
        limits.max_plane_fds = 2;
        limits.max_pending_bytes = 64;
        limits.max_client_queue = 256;
        limits.max_pipe_queue = 64;
        limits.max_item_bytes = 48;
        limits.max_blob_bytes = 65536;
    }
    let session_config = SessionConfig {
        limits,
        guest_dev: (config & 64 != 0).then_some(0xe280),
    };
    let mut s = Session::new(
        ch,
        Arc::new(session_config),
        Arc::new(AgentStats::default()),
    );
    let mut n = 0u8;
    while let [flags, len, tail @ ..] = rest {
        let flags = *flags;
        let len = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        n = n.wrapping_add(1);
        let count = (flags >> 1) & 3;
        let kind = (flags >> 3) & 7;
        let result = match (flags & 1 != 0, flags & 64 != 0) {
            (false, false) => {
                let fds = (0..count)
                    .map(|i| client_fd(kind, n.wrapping_add(i)))
                    .collect();
                s.client_input(chunk, fds)
            }
            (true, false) => {
                // Byte 0: how many of the rest are Wayland bytes; what follows fills the blobs.
                let (wayland, fill) = match chunk.split_first() {
                    Some((w, body)) => body.split_at(usize::from(*w).min(body.len())),
                    None => (chunk, chunk),
                };
                state.borrow_mut().fill = fill.to_vec();
                host_events(&mut state.borrow_mut(), wayland);
                let items = (0..count)
                    .map(|i| host_item(kind, n.wrapping_add(i)))
                    .collect();
                s.host_input(wayland, items)
            }
            (true, true) => {
                let pipe = chunk.first().map_or(0, |b| u32::from(*b));
                s.host_read(pipe, chunk, flags & 128 != 0);
                Ok(())
            }
            (false, true) => {
                let pipe = chunk.first().map_or(0, |b| u32::from(*b));
                s.pipe_data(pipe, chunk)
            }
        };
        if let Err(e) = &result
            && let SessionError::Client {
                object,
                code,
                message,
            } = e
        {
            s.send_error(*object, *code, message);
        }
        let offsets: Vec<usize> = s.to_client.fds.iter().map(|(at, _)| *at).collect();
        check_to_client(&s.to_client.bytes, &offsets);
        if result.is_err() {
            break;
        }
        // The server writes it all out between calls.
        s.to_client.bytes.clear();
        s.to_client.fds.clear();
    }
    drop(s);
    let st = state.borrow();
    let mut left: HashSet<u32> = st.live.keys().copied().collect();
    for r in &st.ring_handles {
        left.remove(r);
    }
    assert!(left.is_empty(), "GEM handles left open: {left:?}");
    assert!(
        st.imports.is_empty(),
        "imported handles left open: {:?}",
        st.imports
    );
    drop(st);
    drop(state);
    assert_eq!(open_fds(), fds_before, "fds left open after the session");
});
