//! Command-level tests of the cross-domain context against a mock device (guest memory in an
//! anonymous mapping, resources in a table) and a mock compositor (a Unix listener the test
//! drives by hand).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossway_protocols::cross_domain::{
    CROSS_DOMAIN_ID_TYPE_READ_PIPE, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB,
    CROSS_DOMAIN_ID_TYPE_WRITE_PIPE, Identifier, RingMessage, encode,
};
use crossway_sys::memfd::Memfd;
use crossway_virtio::context::{ExportedFd, GuestWriter, ResourceInfo};
use crossway_virtio::memory::{Backing, GuestMemHandle};
use crossway_virtio::protocol::virtio_gpu_mem_entry;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::*;

struct Res {
    info: ResourceInfo,
    backing: Option<Backing>,
    host: Option<Memfd>,
    zero_copy: bool,
}

struct Mock {
    mem: GuestMemHandle,
    res: HashMap<u32, Res>,
    next_addr: u64,
}

impl Mock {
    fn new() -> Mock {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        Mock {
            mem: GuestMemoryAtomic::new(mem),
            res: HashMap::new(),
            next_addr: 0,
        }
    }

    fn info(id: u32, kind: ResourceKind, size: u64, has_backing: bool) -> ResourceInfo {
        ResourceInfo {
            id: ResourceId(id),
            kind,
            size,
            blob_flags: 1,
            blob_id: 0,
            has_backing,
        }
    }

    /// A one-page guest blob (a ring).
    fn ring(&mut self, id: u32) {
        let entry = virtio_gpu_mem_entry {
            addr: self.next_addr.into(),
            length: 4096.into(),
            padding: 0.into(),
        };
        self.next_addr += 4096;
        let backing = Backing::new(&self.mem.memory(), &[entry]).unwrap();
        self.res.insert(
            id,
            Res {
                info: Mock::info(id, ResourceKind::GuestBlob, 4096, true),
                backing: Some(backing),
                host: None,
                zero_copy: true,
            },
        );
    }

    /// A blob whose export is a memfd.
    fn blob(&mut self, id: u32, kind: ResourceKind, size: u64, zero_copy: bool) {
        self.res.insert(
            id,
            Res {
                info: Mock::info(id, kind, size, false),
                backing: None,
                host: Some(Memfd::new("mock", size).unwrap()),
                zero_copy,
            },
        );
    }

    fn read(&self, id: u32) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        self.res[&id]
            .backing
            .as_ref()
            .unwrap()
            .read_at(&self.mem.memory(), 0, &mut b)
            .unwrap();
        b
    }
}

impl ContextResources for Mock {
    fn info(&self, id: ResourceId) -> Option<ResourceInfo> {
        self.res.get(&id.0).map(|r| r.info)
    }
    fn read(&self, id: ResourceId, offset: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        let r = self
            .res
            .get(&id.0)
            .ok_or(ContextError::UnknownResource(id.0))?;
        Ok(r.backing
            .as_ref()
            .ok_or(ContextError::OutOfMemory)?
            .read_at(&self.mem.memory(), offset, buf)?)
    }
    fn write(&self, id: ResourceId, offset: u64, data: &[u8]) -> Result<(), ContextError> {
        let r = self
            .res
            .get(&id.0)
            .ok_or(ContextError::UnknownResource(id.0))?;
        Ok(r.backing
            .as_ref()
            .ok_or(ContextError::OutOfMemory)?
            .write_at(&self.mem.memory(), offset, data)?)
    }
    fn guest_writer(&self, id: ResourceId) -> Result<GuestWriter, ContextError> {
        let r = self
            .res
            .get(&id.0)
            .ok_or(ContextError::UnknownResource(id.0))?;
        Ok(GuestWriter::new(
            self.mem.clone(),
            r.backing.clone().ok_or(ContextError::OutOfMemory)?,
        ))
    }
    fn export(&mut self, id: ResourceId) -> Result<ExportedFd, ContextError> {
        let r = self
            .res
            .get(&id.0)
            .ok_or(ContextError::UnknownResource(id.0))?;
        let m = r
            .host
            .as_ref()
            .ok_or(ContextError::Unsupported("no export"))?;
        Ok(ExportedFd {
            fd: m.try_clone_fd().unwrap(),
            zero_copy: r.zero_copy,
            size: r.info.size,
        })
    }
    fn sync(&mut self, _id: ResourceId, _ranges: &[(u64, u64)]) -> Result<u64, ContextError> {
        Ok(0)
    }
}

const QUERY: u32 = 10;
const CHANNEL: u32 = 11;

struct Rig {
    ctx: CrossDomainContext,
    res: Mock,
    fences: FenceSignaler,
    listener: Option<UnixListener>,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig_with(limits: CrossDomainLimits) -> Rig {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("crossway-xd-unit-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("wayland-0");
    let listener = UnixListener::bind(&sock).unwrap();
    let factory = CrossDomainFactory::new(
        Arc::new(RelayConfig::default()),
        HostConnector::new(sock),
        Arc::new(VmStats::new("unit")),
    )
    .with_limits(limits);
    let fences = FenceSignaler::new(None);
    let ctx = factory.create_context(CtxId(7), fences.clone()).unwrap();
    let mut res = Mock::new();
    res.ring(QUERY);
    res.ring(CHANNEL);
    Rig {
        ctx,
        res,
        fences,
        listener: Some(listener),
        dir,
    }
}

fn rig() -> Rig {
    rig_with(CrossDomainLimits::default())
}

impl Rig {
    fn submit(&mut self, cmd: &[u8]) -> Result<(), ContextError> {
        self.ctx.submit(cmd, &mut self.res)
    }

    /// INIT with a Wayland channel relaying through [`PassThrough`]; returns the compositor's
    /// end.
    fn wayland(&mut self) -> UnixStream {
        self.submit(&init_cmd(QUERY, CHANNEL, 1)).unwrap();
        // Nothing has crossed the channel yet (the compositor has not even accepted), so the
        // worker has not used the Wayland relay.
        lock(&self.ctx.state).channel.as_mut().unwrap().relay = Box::new(PassThrough);
        let (s, _) = self.listener.take().unwrap().accept().unwrap();
        s
    }

    fn poll(&mut self, fence: u64) -> FenceStatus {
        self.submit(&poll_cmd()).unwrap();
        self.ctx.create_fence(1, fence)
    }

    /// Waits for the worker to signal `fence`, then decodes the channel ring.
    fn wait_signal(&mut self, fence: u64) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let done = self.fences.take();
            if !done.is_empty() {
                assert_eq!(done.len(), 1, "one signal per POLL fence");
                assert_eq!((done[0].ctx, done[0].ring, done[0].fence_id), (7, 1, fence));
                return self.res.read(CHANNEL);
            }
            assert!(Instant::now() < deadline, "fence {fence} never signalled");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The next ring message, POLLing once.
    fn next(&mut self, fence: u64) -> Vec<u8> {
        match self.poll(fence) {
            FenceStatus::Signaled => self.res.read(CHANNEL),
            FenceStatus::Pending => self.wait_signal(fence),
        }
    }

    fn quiet(&mut self) {
        std::thread::sleep(Duration::from_millis(50));
        assert!(self.fences.take().is_empty());
    }

    /// POLLs from fence `*fence` on until RECEIVEs brought at least `want` bytes; returns each
    /// message's data (never empty, never more than a RECEIVE holds).
    fn receive_bytes(&mut self, fence: &mut u64, want: usize) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        let mut got = 0;
        while got < want {
            let (_, d) = receive(&self.next(*fence));
            assert!(
                !d.is_empty() && d.len() <= 3744,
                "RECEIVE of {} bytes",
                d.len()
            );
            got += d.len();
            pieces.push(d);
            *fence += 1;
        }
        pieces
    }
}

fn init_cmd(query: u32, channel: u32, channel_type: u32) -> Vec<u8> {
    let mut c = Vec::new();
    encode::init(&mut c, query, channel, channel_type);
    c
}

fn poll_cmd() -> Vec<u8> {
    let mut c = Vec::new();
    encode::poll(&mut c);
    c
}

fn receive(page: &[u8]) -> (Vec<Identifier>, Vec<u8>) {
    assert_eq!(&page[1..8], &[0; 7], "header bytes 1-7 zero");
    match RingMessage::decode(page).unwrap() {
        RingMessage::Receive { identifiers, data } => (identifiers.to_vec(), data.to_vec()),
        other => panic!("not a RECEIVE: {other:?}"),
    }
}

fn send_cmd(ids: &[Identifier], data: &[u8]) -> Vec<u8> {
    let mut c = Vec::new();
    encode::send(&mut c, ids, data).unwrap();
    c
}

fn ident(id: u32, id_type: u32) -> Identifier {
    Identifier {
        id,
        id_type,
        size: 0,
    }
}

fn recv_host(s: &UnixStream, want: usize) -> (Vec<u8>, Vec<OwnedFd>) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 8192];
    while bytes.len() < want {
        let mut pfd = [rustix::event::PollFd::new(s, rustix::event::PollFlags::IN)];
        rustix::event::poll(&mut pfd, None).unwrap();
        match crossway_sys::fdpass::recv_with_fds(s.as_fd(), &mut buf).unwrap() {
            crossway_sys::fdpass::Received::Data(n, f) => {
                bytes.extend_from_slice(&buf[..n]);
                fds.extend(f);
            }
            crossway_sys::fdpass::Received::Eof => break,
            crossway_sys::fdpass::Received::WouldBlock => {}
        }
    }
    (bytes, fds)
}

#[test]
fn init_all_four_sizes_accepted() {
    for size in [16u8, 20, 24, 36] {
        let mut r = rig();
        let mut c = vec![0u8; usize::from(size)];
        c[0] = 1;
        c[2] = size;
        c[8..12].copy_from_slice(&QUERY.to_le_bytes());
        if size > 16 {
            c[12..16].copy_from_slice(&CHANNEL.to_le_bytes());
        }
        // channel_type 0 (query only) sits at 12 (legacy) or 16.
        r.submit(&c)
            .unwrap_or_else(|e| panic!("INIT of {size} bytes: {e}"));
    }
}

#[test]
fn init_wayland_connects_and_second_init_is_error() {
    let mut r = rig();
    let _host = r.wayland();
    assert!(matches!(
        r.submit(&init_cmd(QUERY, CHANNEL, 1)),
        Err(ContextError::InvalidCommand(_))
    ));
}

#[test]
fn init_unattached_ring_is_unknown_resource() {
    let mut r = rig();
    assert!(matches!(
        r.submit(&init_cmd(QUERY, 99, 1)),
        Err(ContextError::UnknownResource(99))
    ));
    assert!(matches!(
        r.submit(&init_cmd(98, CHANNEL, 0)),
        Err(ContextError::UnknownResource(98))
    ));
}

#[test]
fn init_unknown_channel_type_is_unsupported() {
    let mut r = rig();
    assert!(matches!(
        r.submit(&init_cmd(QUERY, CHANNEL, 0x11)),
        Err(ContextError::Unsupported(_))
    ));
}

#[test]
fn bad_cmd_size_is_invalid_command() {
    let mut r = rig();
    let mut init = init_cmd(QUERY, CHANNEL, 0);
    init[2] = 18;
    assert!(matches!(
        r.submit(&init),
        Err(ContextError::InvalidCommand(_))
    ));
    init[2] = 200; // past the end
    assert!(matches!(
        r.submit(&init),
        Err(ContextError::InvalidCommand(_))
    ));
    let mut r = rig();
    let _h = r.wayland();
    let mut send = send_cmd(&[], b"12345678");
    send[2] = 100; // header and data size no longer agree
    assert!(matches!(
        r.submit(&send),
        Err(ContextError::InvalidCommand(_))
    ));
}

#[test]
fn commands_before_init_are_refused() {
    let mut r = rig();
    assert!(r.submit(&poll_cmd()).is_err());
    assert!(r.submit(&send_cmd(&[], b"abcd")).is_err());
}

#[test]
fn send_unknown_or_foreign_identifier_is_error_and_sends_nothing() {
    let mut r = rig();
    let mut host = r.wayland();
    // 55 is not attached to this context (another context's resource looks the same).
    let bad = send_cmd(&[ident(55, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB)], b"abcd");
    assert!(matches!(
        r.submit(&bad),
        Err(ContextError::UnknownResource(55))
    ));
    for t in [2u32, 4, 5, 99] {
        r.res.blob(20, ResourceKind::GuestBlob, 4096, true);
        let bad = send_cmd(&[ident(20, t)], b"abcd");
        assert!(
            matches!(r.submit(&bad), Err(ContextError::InvalidCommand(_))),
            "type {t}"
        );
    }
    r.submit(&send_cmd(&[], b"ok!!")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok!!", "nothing of the refused SENDs reached the host");
}

#[test]
fn send_more_than_28_identifiers_is_error() {
    let mut r = rig();
    let _h = r.wayland();
    let mut c = send_cmd(&[], b"");
    c[8..12].copy_from_slice(&29u32.to_le_bytes());
    assert!(matches!(r.submit(&c), Err(ContextError::InvalidCommand(_))));
}

#[test]
fn send_blobs_reach_host_as_fds_of_their_sizes() {
    let mut r = rig();
    let host = r.wayland();
    r.res.blob(20, ResourceKind::GuestBlob, 8192, true);
    r.res.blob(21, ResourceKind::GuestBlob, 4096, false);
    r.res.blob(22, ResourceKind::HostBlob, 4096, true);
    let ids = [20, 21, 22].map(|i| ident(i, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB));
    r.submit(&send_cmd(&ids, b"wayland!")).unwrap();
    let (bytes, fds) = recv_host(&host, 8);
    assert_eq!(bytes, b"wayland!");
    // Buffer paths and `sync` are the Wayland relay's (tested in `crossway_relay` and end to
    // end); through the pass-through every blob arrives as its exported fd, in order.
    let sizes: Vec<_> = fds.iter().map(|fd| sys::classify(fd.as_fd())).collect();
    assert_eq!(sizes, [8192, 4096, 4096].map(sys::HostFdClass::Memory));
}

#[test]
fn send_legacy_four_identifier_layout_accepted() {
    let mut r = rig();
    let host = r.wayland();
    r.res.blob(20, ResourceKind::GuestBlob, 4096, true);
    let data = b"legacy!!";
    let mut c = vec![0u8; 64];
    c[0] = 4;
    c[2..4].copy_from_slice(&((64 + data.len()) as u16).to_le_bytes());
    c[8..12].copy_from_slice(&1u32.to_le_bytes());
    c[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
    c[16..20].copy_from_slice(&20u32.to_le_bytes());
    c[32..36].copy_from_slice(&CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB.to_le_bytes());
    c.extend_from_slice(data);
    r.submit(&c).unwrap();
    let (bytes, fds) = recv_host(&host, data.len());
    assert_eq!(bytes, data);
    assert_eq!(fds.len(), 1);
}

#[test]
fn read_pipe_guessed_id_rule_and_read_messages_with_hang_up() {
    let mut r = rig();
    let host = r.wayland();
    // The first read pipe is 0x80000001; a wrong guess fails (and moves the counter on, as
    // the host allocated that id).
    let wrong = send_cmd(
        &[ident(0x8000_0002, CROSS_DOMAIN_ID_TYPE_READ_PIPE)],
        b"recv",
    );
    assert!(matches!(
        r.submit(&wrong),
        Err(ContextError::InvalidCommand(_))
    ));
    let right = send_cmd(
        &[ident(0x8000_0002, CROSS_DOMAIN_ID_TYPE_READ_PIPE)],
        b"recv",
    );
    r.submit(&right).unwrap();
    let (_, mut fds) = recv_host(&host, 4);
    assert_eq!(fds.len(), 1);
    let mut w = std::fs::File::from(fds.remove(0));
    w.write_all(b"clipboard").unwrap();
    let page = r.next(1);
    match RingMessage::decode(&page).unwrap() {
        RingMessage::Read {
            identifier,
            hang_up,
            data,
        } => {
            assert_eq!(
                (identifier, hang_up, data),
                (0x8000_0002, false, &b"clipboard"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    drop(w);
    let page = r.next(2);
    assert_eq!(
        RingMessage::decode(&page).unwrap(),
        RingMessage::Read {
            identifier: 0x8000_0002,
            hang_up: true,
            data: &[]
        }
    );
    assert!(
        lock(&r.ctx.state).read_pipes.is_empty(),
        "read pipe item freed"
    );
}

#[test]
fn poll_fence_pending_until_host_speaks_one_message_per_fence() {
    let mut r = rig();
    let mut host = r.wayland();
    assert_eq!(r.poll(1), FenceStatus::Pending);
    r.quiet();
    host.write_all(b"hello").unwrap();
    let (ids, data) = receive(&r.wait_signal(1));
    assert!(ids.is_empty());
    assert_eq!(data, b"hello");
    // Two host writes while nobody polls: two messages, one per later POLL.
    host.write_all(&[1u8; 3000]).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    host.write_all(&[2u8; 3000]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.quiet();
    let mut fence = 2;
    let got = r.receive_bytes(&mut fence, 6000).concat();
    assert_eq!(got, [[1u8; 3000], [2u8; 3000]].concat());
    assert_eq!(r.poll(fence), FenceStatus::Pending);
    // Ring-0 fences and fences without POLL complete at once.
    assert_eq!(r.ctx.create_fence(0, 100), FenceStatus::Signaled);
}

#[test]
fn receive_splits_long_host_writes_at_3744_bytes() {
    let mut r = rig_with(CrossDomainLimits {
        host_read_bytes: 16384,
        ..CrossDomainLimits::default()
    });
    let mut host = r.wayland();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&big).unwrap();
    let pieces = r.receive_bytes(&mut 1, big.len());
    assert_eq!(pieces.concat(), big);
    let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
    assert!(sizes.contains(&3744), "{sizes:?}");
}

#[test]
fn receive_host_fds_become_blob_and_write_pipe_items() {
    let mut r = rig();
    let host = r.wayland();
    let keymap = Memfd::new("keymap", 12345).unwrap();
    let (pipe_r, pipe_w) = sys::pipe().unwrap();
    let kfd = keymap.try_clone_fd().unwrap();
    crossway_sys::fdpass::send_with_fds(
        host.as_fd(),
        b"keymap+send!",
        &[kfd.as_fd(), pipe_w.as_fd()],
    )
    .unwrap();
    drop(pipe_w);
    let (ids, data) = receive(&r.next(1));
    assert_eq!(data, b"keymap+send!");
    assert_eq!(ids.len(), 2);
    assert_eq!(
        (ids[0].id_type, ids[0].size),
        (CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB, 12345)
    );
    assert_eq!(ids[1].id_type, CROSS_DOMAIN_ID_TYPE_WRITE_PIPE);
    assert_ne!(ids[0].id, ids[1].id);
    // More than the page holding the item's last byte would fault when mapped: refused, and
    // the item stays.
    assert!(
        r.ctx
            .create_blob(ResourceId(29), u64::from(ids[0].id), 20480, 0)
            .is_err()
    );
    // The blob item backs one HOST3D blob of the page-rounded size the guest kernel asks for,
    // then is gone.
    let blob = r
        .ctx
        .create_blob(ResourceId(30), u64::from(ids[0].id), 16384, 0)
        .unwrap();
    assert_eq!(blob.size, 16384);
    assert!(
        r.ctx
            .create_blob(ResourceId(31), u64::from(ids[0].id), 12345, 0)
            .is_err()
    );
    // WRITE into the write pipe, then hang up: the compositor's read end sees data and EOF.
    let mut w = Vec::new();
    encode::write(&mut w, ids[1].id, false, b"selection ").unwrap();
    encode::write(&mut w, ids[1].id, true, b"data").unwrap();
    r.submit(&w).unwrap();
    let mut rd = std::fs::File::from(pipe_r);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut b = [0u8; 64];
        match rd.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, b"selection data");
    // The write pipe item is gone: another WRITE is an error.
    let mut w = Vec::new();
    encode::write(&mut w, ids[1].id, false, b"late").unwrap();
    assert!(matches!(r.submit(&w), Err(ContextError::InvalidCommand(_))));
    assert!(
        lock(&r.ctx.state).items.is_empty(),
        "items freed when consumed"
    );
}

#[test]
fn write_to_unknown_identifier_is_error() {
    let mut r = rig();
    let _h = r.wayland();
    let mut w = Vec::new();
    encode::write(&mut w, 12345, false, b"x").unwrap();
    assert!(matches!(r.submit(&w), Err(ContextError::InvalidCommand(_))));
}

#[test]
fn host_fd_that_is_neither_memory_nor_write_pipe_ends_channel() {
    let mut r = rig();
    let host = r.wayland();
    let (sock_a, _sock_b) = UnixStream::pair().unwrap();
    crossway_sys::fdpass::send_with_fds(host.as_fd(), b"badfd!!!", &[sock_a.as_fd()]).unwrap();
    let (ids, data) = receive(&r.next(1));
    assert!(ids.is_empty() && data.is_empty(), "channel ended with EOF");
    assert!(r.submit(&send_cmd(&[], b"more")).is_err());
}

#[test]
fn host_eof_is_zero_length_receive() {
    let mut r = rig();
    let host = r.wayland();
    drop(host);
    let (ids, data) = receive(&r.next(1));
    assert!(ids.is_empty() && data.is_empty());
    assert_eq!(r.poll(2), FenceStatus::Pending);
    r.quiet();
}

#[test]
fn ring_queue_full_stops_reading_host() {
    let mut r = rig_with(CrossDomainLimits {
        max_ring_messages: 2,
        host_read_bytes: 100,
        ..CrossDomainLimits::default()
    });
    let mut host = r.wayland();
    host.write_all(&[7u8; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let queued = lock(&r.ctx.state).queue.len();
    assert!(queued <= 3, "queue grew to {queued}");
    let got = r.receive_bytes(&mut 1, 1000).concat();
    assert_eq!(got, [7u8; 1000]);
}

#[test]
fn image_requirements_cached_and_laid_out() {
    let mut r = rig();
    r.submit(&init_cmd(QUERY, CHANNEL, 0)).unwrap();
    let query = |r: &mut Rig, w: u32, h: u32, f: u32| {
        let mut c = Vec::new();
        encode::get_image_requirements(&mut c, w, h, f, 0x11);
        r.submit(&c).map(|()| {
            let page = r.res.read(QUERY);
            let (reply, _) = CrossDomainImageRequirements::read_from_prefix(&page).unwrap();
            reply
        })
    };
    use zerocopy::FromBytes;
    let a = query(&mut r, 64, 64, image::DRM_FORMAT_ARGB8888).unwrap();
    assert_eq!(a.strides[0].get(), 256);
    assert_eq!(a.size.get(), 16384);
    assert_eq!(a.modifier.get(), 0);
    assert_eq!(a.map_info.get(), 1);
    assert_eq!((a.memory_idx.get(), a.physical_device_idx.get()), (-1, -1));
    let b = query(&mut r, 64, 64, image::DRM_FORMAT_ARGB8888).unwrap();
    assert_eq!(a.blob_id, b.blob_id, "cached");
    let nv12 = query(&mut r, 64, 64, image::DRM_FORMAT_NV12).unwrap();
    assert_ne!(nv12.blob_id, a.blob_id);
    assert_eq!(nv12.offsets[1].get(), 16384);
    assert!(query(&mut r, 64, 64, 0xdead_beef).is_err());
    assert!(query(&mut r, 0, 64, image::DRM_FORMAT_ARGB8888).is_err());
    // The blob id backs any number of resources of exactly that size.
    let id = u64::from(a.blob_id.get());
    let blob = r.ctx.create_blob(ResourceId(40), id, 16384, 0).unwrap();
    assert_eq!(blob.size, 16384);
    assert_eq!(
        sys::classify(blob.fd.as_fd()),
        sys::HostFdClass::Memory(16384)
    );
    assert!(r.ctx.create_blob(ResourceId(41), id, 16384, 0).is_ok());
    assert!(r.ctx.create_blob(ResourceId(42), id, 8192, 0).is_err());
    assert!(r.ctx.create_blob(ResourceId(43), 999, 4096, 0).is_err());
}

#[test]
fn item_limit_refuses_more_images() {
    let mut r = rig_with(CrossDomainLimits {
        max_items: 2,
        ..CrossDomainLimits::default()
    });
    r.submit(&init_cmd(QUERY, CHANNEL, 0)).unwrap();
    for (i, ok) in [(1, true), (2, true), (3, false)] {
        let mut c = Vec::new();
        encode::get_image_requirements(&mut c, i, 1, image::DRM_FORMAT_R8, 0);
        assert_eq!(r.submit(&c).is_ok(), ok, "image {i}");
    }
}

#[test]
fn dropping_context_closes_host_connection_and_pipes() {
    let mut r = rig();
    let host = r.wayland();
    r.submit(&send_cmd(
        &[ident(0x8000_0001, CROSS_DOMAIN_ID_TYPE_READ_PIPE)],
        b"pipe",
    ))
    .unwrap();
    let (_, fds) = recv_host(&host, 4);
    let w = fds.into_iter().next().unwrap();
    let Rig { ctx, .. } = &mut r;
    let ctx = std::mem::replace(
        ctx,
        CrossDomainFactory::without_host(
            Arc::new(RelayConfig::default()),
            Arc::new(VmStats::new("x")),
            "none",
        )
        .create_context(CtxId(8), FenceSignaler::new(None))
        .unwrap(),
    );
    drop(ctx);
    // The compositor sees its connection closed and the pipe's reader gone.
    let (bytes, _) = recv_host(&host, 1);
    assert!(bytes.is_empty());
    assert!(
        sys::write_nonblocking(w.as_fd(), b"x").is_err(),
        "read end closed"
    );
}

/// Relays bytes and fds unchanged, so these tests exercise the transport (rings, items, fds,
/// pipes) with raw bytes; the Wayland relay has its own tests in `crossway_relay`, and the
/// end-to-end tests run both together.
#[derive(Debug)]
pub(super) struct PassThrough;

impl super::state::StreamRelay for PassThrough {
    fn guest_to_host(
        &mut self,
        bytes: &[u8],
        fds: Vec<crossway_relay::GuestFd>,
        _sync: &mut dyn crossway_relay::SyncBuffers,
        out: &mut Outgoing,
    ) -> Result<(), crossway_relay::RelayError> {
        let at = out.to_host.len();
        out.to_host.extend_from_slice(bytes);
        out.host_fds.extend(fds.into_iter().map(|f| (at, f.fd)));
        Ok(())
    }

    fn host_to_guest(
        &mut self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Outgoing,
    ) -> Result<(), crossway_relay::RelayError> {
        let at = out.to_guest.len();
        out.to_guest.extend_from_slice(bytes);
        out.guest_fds.extend(fds.into_iter().map(|fd| (at, fd)));
        Ok(())
    }
}
