//! The loopback VM's driver against the real vhost-user backend (`backend::serve`, served on a
//! Unix socket from a thread of this process) with a test context type: guest RAM, queues,
//! SHMEM_MAP and every virtgpu call cross the real vhost-user socket.
//!
//! The test context's SUBMIT_3D understands three-word commands `[op, a, b]` (little-endian):
//! - 1: export resource `a` through the device's export path (copy-path memfd here, udmabuf
//!   where present), checksum its bytes, write `[sum: u64, first 56 bytes]` into resource `b`;
//! - 2: "poll": the fence of this command stays pending until the next op 3;
//! - 3: signal the fence op 2 left pending.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossway_loopback::LoopbackClient;
use crossway_loopback::wire::{self, Request, Writer};
use crossway_protocols::virtgpu::*;
use crossway_sys::memfd::Memfd;
use crossway_virtio::blob::ExportMode;
use crossway_virtio::context::{
    Context, ContextError, ContextFactory, ContextResources, CtxId, FenceStatus, HostBlob,
    ResourceId,
};
use crossway_virtio::device::DeviceConfig;
use crossway_virtio::fence::FenceSignaler;
use crossway_virtio::loopback::{LoopbackFile, LoopbackServer, LoopbackVm, ServerConfig};

struct TestContext {
    ctx: u32,
    fences: FenceSignaler,
    hold_next: bool,
    held: Vec<(u8, u64)>,
    host: HashMap<u32, OwnedFd>,
}

impl Context for TestContext {
    fn submit(&mut self, cmd: &[u8], res: &mut dyn ContextResources) -> Result<(), ContextError> {
        let w = |i: usize| -> Result<u32, ContextError> {
            let b = cmd
                .get(i * 4..i * 4 + 4)
                .ok_or(ContextError::InvalidCommand("short".into()))?;
            Ok(u32::from_le_bytes(b.try_into().unwrap()))
        };
        self.hold_next = false;
        match w(0)? {
            1 => {
                let (a, b) = (ResourceId(w(1)?), ResourceId(w(2)?));
                let e = res.export(a)?;
                res.sync(a, &[(0, e.size)])?;
                let mut bytes = vec![0u8; e.size as usize];
                std::fs::File::from(e.fd)
                    .read_exact_at(&mut bytes, 0)
                    .unwrap();
                let sum: u64 = bytes.iter().map(|&x| u64::from(x)).sum();
                let mut out = sum.to_le_bytes().to_vec();
                out.extend_from_slice(&bytes[..56]);
                res.write(b, 0, &out)
            }
            2 => {
                self.hold_next = true;
                Ok(())
            }
            3 => {
                for (ring, id) in self.held.drain(..) {
                    self.fences.signal(self.ctx, ring, id);
                }
                Ok(())
            }
            _ => Err(ContextError::InvalidCommand("op".into())),
        }
    }

    fn create_fence(&mut self, ring: u8, fence_id: u64) -> FenceStatus {
        if std::mem::take(&mut self.hold_next) {
            self.held.push((ring, fence_id));
            FenceStatus::Pending
        } else {
            FenceStatus::Signaled
        }
    }

    fn create_blob(
        &mut self,
        resource: ResourceId,
        blob_id: u64,
        size: u64,
        _flags: u32,
    ) -> Result<HostBlob, ContextError> {
        // Blob id 224 is a compositor's format table: a 224-byte fd behind a page-sized blob.
        let fd_len = if blob_id == SHORT_BLOB_ID { 224 } else { size };
        let m = Memfd::new("host-blob", fd_len).map_err(|_| ContextError::OutOfMemory)?;
        m.write_at(0, format!("host blob {blob_id}").as_bytes())
            .unwrap();
        self.host.insert(resource.0, m.try_clone_fd().unwrap());
        Ok(HostBlob {
            fd: m.try_clone_fd().unwrap(),
            size,
            map_info: 1,
        })
    }
}

struct TestFactory;

impl ContextFactory for TestFactory {
    fn create(
        &mut self,
        ctx: CtxId,
        _capset: u32,
        _name: &str,
        fences: FenceSignaler,
    ) -> Result<Box<dyn Context>, ContextError> {
        Ok(Box::new(TestContext {
            ctx: ctx.0,
            fences,
            hold_next: false,
            held: Vec::new(),
            host: HashMap::new(),
        }))
    }
}

struct Setup {
    vm: LoopbackVm,
    _dir: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("crossway-lb-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let device = DeviceConfig {
        export_mode: ExportMode::CopyOnly,
        host_visible_size: 64 << 20,
        ..DeviceConfig::default()
    };
    let vm = LoopbackVm::with_backend_thread(&dir.join("gpu.sock"), device, Box::new(TestFactory))
        .unwrap();
    Setup { vm, _dir: dir }
}

fn cross_domain_file(vm: &LoopbackVm) -> LoopbackFile {
    let mut f = vm.open().unwrap();
    cross_domain_init(&mut f);
    f
}

fn cross_domain_init(f: &mut impl VirtGpu) {
    f.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS).unwrap();
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn guest_blob(f: &mut impl VirtGpu, size: u64) -> BlobHandles {
    f.resource_create_blob(&drm_virtgpu_resource_create_blob {
        blob_mem: VIRTGPU_BLOB_MEM_GUEST,
        blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
        size,
        ..Default::default()
    })
    .unwrap()
}

fn read_events(f: &impl VirtGpu, timeout: Duration) -> Vec<DrmEvent> {
    let efd = f.event_fd();
    let mut fds = [rustix::event::PollFd::new(
        &efd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    if rustix::event::poll(&mut fds, Some(&ts)).unwrap() == 0 {
        return Vec::new();
    }
    let mut b = [0u8; 256];
    let n = rustix::io::read(f.event_fd(), &mut b).unwrap();
    let (evs, rest) = DrmEvent::decode_all(&b[..n]);
    rest.unwrap();
    evs
}

#[test]
fn loopback_getparam_and_caps_read_capset_5() {
    let s = setup("caps");
    let mut f = s.vm.open().unwrap();
    for p in [
        VIRTGPU_PARAM_3D_FEATURES,
        VIRTGPU_PARAM_CAPSET_QUERY_FIX,
        VIRTGPU_PARAM_RESOURCE_BLOB,
        VIRTGPU_PARAM_HOST_VISIBLE,
        VIRTGPU_PARAM_CONTEXT_INIT,
    ] {
        assert_eq!(f.get_param(p).unwrap(), 1, "param {p}");
    }
    let ids = f.get_param(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS).unwrap();
    assert_eq!(ids, (1 << 5) | (1 << 48));
    let mut caps = [0u8; 16];
    assert_eq!(f.get_caps(5, 0, &mut caps).unwrap(), 16);
    assert_eq!(&caps[..8], &words(&[1, 1 << 1])[..]);
    assert_eq!(
        f.get_param(99),
        Err(VirtGpuError::InvalidArgument("unknown param"))
    );
}

#[test]
fn loopback_guest_blob_scattered_bytes_reach_backend_export() {
    let s = setup("guest");
    let mut f = cross_domain_file(&s.vm);
    let src = guest_blob(&mut f, 64 * 1024);
    let dst = guest_blob(&mut f, 4096);
    // Scattered: no two consecutive pages are adjacent, and they cross regions.
    let pages = f.guest_pages(src.bo_handle).unwrap();
    assert_eq!(pages.len(), 16);
    assert!(pages.windows(2).all(|w| w[1] != w[0] + 4096));
    let first_region_end = pages.iter().min().unwrap() + (32 << 20);
    assert!(pages.iter().any(|&p| p >= first_region_end));
    let m = f.map(src.bo_handle).unwrap();
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    m.write_at(0, &data).unwrap();
    f.execbuffer(&drm_virtgpu_execbuffer {
        flags: 0,
        command: &words(&[1, src.res_handle, dst.res_handle]),
        bo_handles: &[src.bo_handle, dst.bo_handle],
        ring_idx: 0,
    })
    .unwrap();
    f.wait(dst.bo_handle, 0).unwrap();
    let out = f.map(dst.bo_handle).unwrap();
    let mut got = [0u8; 64];
    out.read_at(0, &mut got).unwrap();
    let sum: u64 = data.iter().map(|&x| u64::from(x)).sum();
    assert_eq!(u64::from_le_bytes(got[..8].try_into().unwrap()), sum);
    assert_eq!(&got[8..], &data[..56]);
    let info = f.resource_info(src.bo_handle).unwrap();
    assert_eq!(
        (info.res_handle, info.size, info.blob_mem),
        (src.res_handle, 65536, 1)
    );
    drop(m);
    f.gem_close(src.bo_handle).unwrap();
    assert_eq!(
        f.resource_info(src.bo_handle),
        Err(VirtGpuError::NoSuchHandle(src.bo_handle))
    );
}

#[test]
fn loopback_host_blob_mapped_both_ways() {
    let s = setup("host");
    let mut f = cross_domain_file(&s.vm);
    let h = f
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_HOST3D,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            size: 8192,
            blob_id: 42,
            cmd: Vec::new(),
        })
        .unwrap();
    assert_eq!(s.vm.window_maps(), 1);
    let m = f.map(h.bo_handle).unwrap();
    let mut b = [0u8; 12];
    m.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"host blob 42");
    // Guest writes land in the host's memory: a second mapping (fresh from the window fd)
    // sees them.
    m.write_at(100, b"from guest").unwrap();
    let m2 = f.map(h.bo_handle).unwrap();
    let mut c = [0u8; 10];
    m2.read_at(100, &mut c).unwrap();
    assert_eq!(&c, b"from guest");
}

const SHORT_BLOB_ID: u64 = 224;

#[test]
fn loopback_host_blob_fd_shorter_than_page_maps_zero_filled() {
    // The loopback VMM refuses SHMEM_MAP of an fd shorter than the range, as QEMU 11.1 does;
    // the device maps a covering copy instead.
    let s = setup("host-short");
    let mut f = cross_domain_file(&s.vm);
    let h = f
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_HOST3D,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            size: 4096,
            blob_id: SHORT_BLOB_ID,
            cmd: Vec::new(),
        })
        .unwrap();
    assert_eq!(s.vm.window_maps(), 1);
    let m = f.map(h.bo_handle).unwrap();
    let mut b = [0u8; 4096];
    m.read_at(0, &mut b).unwrap();
    assert_eq!(&b[..13], b"host blob 224");
    assert!(b[224..].iter().all(|&x| x == 0));
}

#[test]
fn loopback_host_blob_without_mappable_is_refused_as_linux_does() {
    let s = setup("host-unmappable");
    let mut f = cross_domain_file(&s.vm);
    let h = f
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_HOST3D,
            blob_flags: 0,
            size: 8192,
            blob_id: 43,
            cmd: Vec::new(),
        })
        .unwrap();
    assert_eq!(s.vm.window_maps(), 0, "not mapped into the window");
    let err = f.map(h.bo_handle).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, VirtGpuError::InvalidArgument(m) if m.contains("USE_MAPPABLE")),
        "{err:?}"
    );
    assert!(f.map_pieces(h.bo_handle).is_err());
}

#[test]
fn loopback_ring_fences_ordered_one_event_each() {
    let s = setup("fences");
    let mut f = cross_domain_file(&s.vm);
    let bo = guest_blob(&mut f, 4096);
    let poll = words(&[2, 0, 0]);
    fn eb(cmd: &[u8]) -> drm_virtgpu_execbuffer<'_> {
        drm_virtgpu_execbuffer {
            flags: VIRTGPU_EXECBUF_RING_IDX,
            command: cmd,
            bo_handles: &[],
            ring_idx: 1,
        }
    }
    // A held POLL fence on ring 1, then two more commands on ring 1 that complete at once:
    // completing them releases the earlier one too, and each fence raises its own event.
    f.execbuffer(&drm_virtgpu_execbuffer {
        bo_handles: &[bo.bo_handle],
        ..eb(&poll)
    })
    .unwrap();
    assert!(read_events(&f, Duration::from_millis(100)).is_empty());
    assert_eq!(
        f.wait(bo.bo_handle, VIRTGPU_WAIT_NOWAIT),
        Err(VirtGpuError::Busy)
    );
    f.execbuffer(&eb(&words(&[3, 0, 0]))).unwrap();
    let mut evs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while evs.len() < 2 && Instant::now() < deadline {
        evs.extend(read_events(&f, Duration::from_millis(200)));
    }
    assert_eq!(evs, vec![DrmEvent::FENCE_SIGNALED; 2]);
    f.wait(bo.bo_handle, VIRTGPU_WAIT_NOWAIT).unwrap();
    // Ring 0 is not in the poll mask: no event.
    f.execbuffer(&drm_virtgpu_execbuffer {
        ring_idx: 0,
        ..eb(&words(&[3, 0, 0]))
    })
    .unwrap();
    assert!(read_events(&f, Duration::from_millis(100)).is_empty());
    // Ring 2 does not exist.
    assert!(
        f.execbuffer(&drm_virtgpu_execbuffer {
            ring_idx: 2,
            ..eb(&poll)
        })
        .is_err()
    );
    // A refused command is reported with the device's answer.
    assert_eq!(
        f.execbuffer(&eb(&words(&[9, 0, 0]))),
        Err(VirtGpuError::Device(0x1205))
    );
}

#[test]
fn loopback_prime_roundtrip_between_files_same_resource() {
    let s = setup("prime");
    let mut a = cross_domain_file(&s.vm);
    let mut b = cross_domain_file(&s.vm);
    let h = guest_blob(&mut a, 4096);
    a.map(h.bo_handle).unwrap().write_at(0, b"shared").unwrap();
    let fd = a.prime_handle_to_fd(h.bo_handle).unwrap();
    let hb = b.prime_fd_to_handle(fd.as_fd()).unwrap();
    assert_eq!(b.resource_info(hb).unwrap().res_handle, h.res_handle);
    assert_eq!(b.prime_fd_to_handle(fd.as_fd()).unwrap(), hb);
    let mut got = [0u8; 6];
    b.map(hb).unwrap().read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"shared");
    let foreign = Memfd::new("x", 16).unwrap();
    assert!(b.prime_fd_to_handle(foreign.file().as_fd()).is_err());
    // The resource lives while either file holds a handle.
    a.gem_close(h.bo_handle).unwrap();
    b.map(hb).unwrap().read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"shared");
}

#[test]
fn loopback_context_init_after_bo_is_refused() {
    let s = setup("order");
    let mut f = s.vm.open().unwrap();
    guest_blob(&mut f, 4096);
    assert_eq!(
        f.context_init(&[drm_virtgpu_context_set_param {
            param: VIRTGPU_CONTEXT_PARAM_CAPSET_ID,
            value: 5
        }]),
        Err(VirtGpuError::Os(libc::EEXIST))
    );
    let mut g = s.vm.open().unwrap();
    let bad = g.context_init(&[
        drm_virtgpu_context_set_param {
            param: VIRTGPU_CONTEXT_PARAM_NUM_RINGS,
            value: 2,
        },
        drm_virtgpu_context_set_param {
            param: VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK,
            value: 4,
        },
    ]);
    assert!(bad.is_err());
}

/// Round trip of one `EXECBUFFER` on poll ring 1 plus its fence event through the loopback
/// and the real backend. `CROSSWAY_RTT_N=10000 cargo test --release -p crossway-virtio --test
/// loopback_driver rtt -- --nocapture` prints the figures the issue asks for; plain `cargo
/// test` runs 200 as a smoke test.
#[test]
fn loopback_execbuffer_fence_rtt_reports_median_p99() {
    let n: usize = std::env::var("CROSSWAY_RTT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let s = setup("rtt");
    let mut f = cross_domain_file(&s.vm);
    let cmd = words(&[3, 0, 0]);
    let mut times = Vec::with_capacity(n);
    let mut b = [0u8; 8];
    for _ in 0..n {
        let t = Instant::now();
        f.execbuffer(&drm_virtgpu_execbuffer {
            flags: VIRTGPU_EXECBUF_RING_IDX,
            command: &cmd,
            bo_handles: &[],
            ring_idx: 1,
        })
        .unwrap();
        assert_eq!(rustix::io::read(f.event_fd(), &mut b).unwrap(), 8);
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[n / 2];
    let p99 = times[(n * 99 / 100).min(n - 1)];
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "loopback EXECBUFFER+fence event RTT over {n}: median {median:?}, p99 {p99:?}"
    );
    assert_eq!(DrmEvent::decode_all(&b).0, vec![DrmEvent::FENCE_SIGNALED]);
}

// --- The Unix-socket server and LoopbackClient (a guest program in another process) ---

fn socket_server(s: &Setup, name: &str, config: ServerConfig) -> (LoopbackServer, PathBuf) {
    let path = s._dir.join(format!("{name}.sock"));
    let server = LoopbackServer::bind(s.vm.clone(), &path, config).unwrap();
    (server, path)
}

/// A raw connection past the hello, for sending frames a client never would.
fn raw(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    let c = std::os::unix::net::UnixStream::connect(path).unwrap();
    let hello = wire::recv_frame(c.as_fd(), 4096).unwrap();
    assert_eq!(hello.fds.len(), 1, "event fd with the hello");
    wire::decode_hello(&hello.body).unwrap().unwrap();
    c
}

fn raw_call(c: &std::os::unix::net::UnixStream, body: &[u8]) -> Vec<u8> {
    wire::send(c, body, None).unwrap();
    wire::recv_frame(c.as_fd(), 1 << 20).unwrap().body
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "condition never held");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn socket_two_concurrent_clients_have_own_contexts_and_share_by_prime() {
    let s = setup("sock-two");
    let (server, path) = socket_server(&s, "two", ServerConfig::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = path.clone();
    let other = std::thread::spawn(move || {
        let mut b = LoopbackClient::connect(&p2).unwrap();
        cross_domain_init(&mut b);
        let own = guest_blob(&mut b, 4096);
        assert_eq!(own.bo_handle, 1, "handles are per connection");
        let fd: OwnedFd = rx.recv().unwrap();
        let h = b.prime_fd_to_handle(fd.as_fd()).unwrap();
        assert_ne!(h, own.bo_handle);
        let m = b.map(h).unwrap();
        let mut got = [0u8; 5];
        m.read_at(70_000, &mut got).unwrap();
        assert_eq!(&got, b"hello");
        b.resource_info(h).unwrap().res_handle
    });
    let mut a = LoopbackClient::connect(&path).unwrap();
    cross_domain_init(&mut a);
    assert_eq!(
        a.context_init(&[]),
        Err(VirtGpuError::Os(libc::EEXIST)),
        "one context per connection"
    );
    let blob = guest_blob(&mut a, 128 * 1024);
    assert_eq!(blob.bo_handle, 1);
    let m = a.map(blob.bo_handle).unwrap();
    assert_eq!(m.len(), 128 * 1024);
    m.write_at(70_000, b"hello").unwrap();
    tx.send(a.prime_handle_to_fd(blob.bo_handle).unwrap())
        .unwrap();
    assert_eq!(other.join().unwrap(), blob.res_handle);
    wait_until(|| server.active_connections() == 1);
    drop(a);
    wait_until(|| server.active_connections() == 0);
}

#[test]
fn socket_client_events_and_host_blob_match_in_process_file() {
    let s = setup("sock-events");
    let (_server, path) = socket_server(&s, "events", ServerConfig::default());
    let mut c = LoopbackClient::connect(&path).unwrap();
    cross_domain_init(&mut c);
    // op 2 holds the fence on poll ring 1, op 3 signals it: one event on the passed fd.
    let ring = |c: &mut LoopbackClient, op: u32| {
        c.execbuffer(&drm_virtgpu_execbuffer {
            flags: VIRTGPU_EXECBUF_RING_IDX,
            command: &words(&[op, 0, 0]),
            bo_handles: &[],
            ring_idx: 1,
        })
        .unwrap();
    };
    ring(&mut c, 2);
    assert!(read_events(&c, Duration::from_millis(50)).is_empty());
    ring(&mut c, 3);
    let mut evs = read_events(&c, Duration::from_secs(5));
    if evs.len() < 2 {
        evs.extend(read_events(&c, Duration::from_secs(5)));
    }
    assert_eq!(evs, vec![DrmEvent::FENCE_SIGNALED; 2]);
    // A host blob maps through the fd the backend sent with SHMEM_MAP.
    let h = c
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_HOST3D,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            size: 4096,
            blob_id: 7,
            ..Default::default()
        })
        .unwrap();
    let m = c.map(h.bo_handle).unwrap();
    let mut got = [0u8; 11];
    m.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"host blob 7");
    assert_eq!(c.gem_close(h.bo_handle), Ok(()));
    assert_eq!(
        c.gem_close(h.bo_handle),
        Err(VirtGpuError::NoSuchHandle(h.bo_handle))
    );
}

#[test]
fn socket_malformed_request_gets_error_reply_and_connection_lives() {
    let s = setup("sock-malformed");
    let (_server, path) = socket_server(&s, "malformed", ServerConfig::default());
    let c = raw(&path);
    let refused = |body: &[u8]| {
        let mut w = Writer::default();
        w.u32(wire::STATUS_ERR);
        wire::encode_error(&mut w, &VirtGpuError::InvalidArgument("malformed request"));
        assert_eq!(body, &w.0[..]);
    };
    refused(&raw_call(&c, &[]));
    refused(&raw_call(&c, &[0xff; 7]));
    refused(&raw_call(&c, &99u32.to_le_bytes()));
    let mut long = Request::GetParam { param: 1 }.encode();
    long.push(0);
    refused(&raw_call(&c, &long));
    let mut huge_count = Writer::default();
    huge_count
        .u32(wire::op::EXECBUFFER)
        .u32(0)
        .u32(0)
        .u32(u32::MAX);
    refused(&raw_call(&c, &huge_count.0));
    // A descriptor where none belongs is refused too, and closed.
    let m = Memfd::new("stray", 4096).unwrap();
    wire::send(
        &c,
        &Request::GetParam { param: 1 }.encode(),
        Some(m.file().as_fd()),
    )
    .unwrap();
    let r = wire::recv_frame(c.as_fd(), 1 << 20).unwrap();
    assert_eq!(r.body[..4], wire::STATUS_ERR.to_le_bytes());
    // Still served.
    let ok = raw_call(&c, &Request::GetParam { param: 1 }.encode());
    assert_eq!(ok, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn socket_oversize_frame_closes_that_connection_only() {
    let s = setup("sock-oversize");
    let config = ServerConfig {
        max_message: 1024,
        ..ServerConfig::default()
    };
    let (server, path) = socket_server(&s, "oversize", config);
    let mut good = LoopbackClient::connect(&path).unwrap();
    let c = raw(&path);
    let mut frame = 1025u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[0; 64]);
    std::io::Write::write_all(&mut &c, &frame).unwrap();
    // Closed with our unread bytes in its buffer: EOF or ECONNRESET.
    match wire::recv_frame(c.as_fd(), 1 << 20) {
        Err(wire::WireError::Closed) => {}
        Err(wire::WireError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    wait_until(|| server.active_connections() == 1);
    // The client refuses to send what the server would close over, and stays usable.
    cross_domain_init(&mut good);
    let big = vec![0u8; 2000];
    assert!(matches!(
        good.execbuffer(&drm_virtgpu_execbuffer {
            flags: 0,
            command: &big,
            bo_handles: &[],
            ring_idx: 0,
        }),
        Err(VirtGpuError::InvalidArgument(_))
    ));
    assert_eq!(good.get_param(VIRTGPU_PARAM_RESOURCE_BLOB), Ok(1));
}

#[test]
fn socket_client_gone_mid_call_frees_its_file_and_server_goes_on() {
    let s = setup("sock-gone");
    let (server, path) = socket_server(&s, "gone", ServerConfig::default());
    {
        // Half a frame, then gone.
        let c = raw(&path);
        let body = Request::GetParam { param: 1 }.encode();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body[..3]);
        std::io::Write::write_all(&mut &c, &frame).unwrap();
    }
    {
        // A whole request whose answer nobody reads; its context and blob are released.
        let mut c = LoopbackClient::connect(&path).unwrap();
        cross_domain_init(&mut c);
        guest_blob(&mut c, 1 << 20);
        let c = raw(&path);
        wire::send(&c, &Request::GetParam { param: 1 }.encode(), None).unwrap();
    }
    wait_until(|| server.active_connections() == 0);
    let mut c = LoopbackClient::connect(&path).unwrap();
    cross_domain_init(&mut c);
    assert_eq!(c.get_param(VIRTGPU_PARAM_CONTEXT_INIT), Ok(1));
}

#[test]
fn socket_connection_limit_refuses_extra_client_with_error() {
    let s = setup("sock-limit");
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let (server, path) = socket_server(&s, "limit", config);
    let a = LoopbackClient::connect(&path).unwrap();
    let _b = LoopbackClient::connect(&path).unwrap();
    assert_eq!(
        LoopbackClient::connect(&path).unwrap_err(),
        VirtGpuError::OutOfMemory("max_connections")
    );
    drop(a);
    wait_until(|| server.active_connections() == 1);
    LoopbackClient::connect(&path).unwrap();
}

#[test]
fn socket_server_dropped_client_sees_device_lost() {
    let s = setup("sock-drop");
    let (server, path) = socket_server(&s, "drop", ServerConfig::default());
    let mut c = LoopbackClient::connect(&path).unwrap();
    assert_eq!(c.get_param(VIRTGPU_PARAM_RESOURCE_BLOB), Ok(1));
    drop(server);
    assert!(!path.exists());
    assert!(matches!(
        c.get_param(VIRTGPU_PARAM_RESOURCE_BLOB),
        Err(VirtGpuError::DeviceLost(_))
    ));
    assert!(matches!(
        c.get_param(VIRTGPU_PARAM_RESOURCE_BLOB),
        Err(VirtGpuError::DeviceLost(_))
    ));
}
