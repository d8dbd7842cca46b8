//! The cross-domain context end to end inside one process: the embedded headless compositor,
//! the vhost-user backend (`crossway_virtio::backend::serve` on a thread) with
//! `CrossDomainFactory`, and the loopback VM's driver playing the guest over a real vhost-user
//! socket. The guest sends `wl_display.get_registry` + `sync` and reads the compositor's
//! answer out of the channel ring, one POLL fence per message.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossway_headless::{Headless, HeadlessConfig, SocketSpec};
use crossway_protocols::cross_domain::{self, CrossDomainImageRequirements, RingMessage};
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::virtgpu::*;
use crossway_protocols::wire::{self, Arg, ObjectId};
use crossway_proxy::cross_domain::CrossDomainFactory;
use crossway_proxy::host::HostConnector;
use crossway_relay::{RelayConfig, VmStats};
use crossway_virtio::blob::ExportMode;
use crossway_virtio::device::DeviceConfig;
use crossway_virtio::loopback::{LoopbackFile, LoopbackVm};
use zerocopy::{FromZeros as _, IntoBytes as _};

struct Setup {
    vm: LoopbackVm,
    _headless: Headless,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(name: &str, factory: impl FnOnce(&std::path::Path) -> CrossDomainFactory) -> Setup {
    let dir = std::env::temp_dir().join(format!("crossway-xd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let headless =
        Headless::start(HeadlessConfig::new(SocketSpec::Path(dir.join("wayland-0")))).unwrap();
    let factory = factory(headless.socket_path());
    let vm = LoopbackVm::with_backend_thread(
        &dir.join("gpu.sock"),
        DeviceConfig {
            export_mode: ExportMode::CopyOnly,
            host_visible_size: 64 << 20,
            ..DeviceConfig::default()
        },
        Box::new(factory),
    )
    .unwrap();
    Setup {
        vm,
        _headless: headless,
        dir,
    }
}

fn factory_for(socket: &std::path::Path) -> CrossDomainFactory {
    CrossDomainFactory::new(
        Arc::new(RelayConfig::default()),
        HostConnector::new(socket.to_path_buf()),
        Arc::new(VmStats::new("test")),
    )
}

struct Guest {
    f: LoopbackFile,
    query: (BlobHandles, <LoopbackFile as VirtGpu>::Mapping),
    channel: (BlobHandles, <LoopbackFile as VirtGpu>::Mapping),
}

fn ring(f: &mut LoopbackFile) -> (BlobHandles, <LoopbackFile as VirtGpu>::Mapping) {
    let h = f
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_GUEST,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            size: 4096,
            ..Default::default()
        })
        .unwrap();
    let m = f.map(h.bo_handle).unwrap();
    (h, m)
}

fn submit(
    f: &mut LoopbackFile,
    cmd: &[u8],
    ring_idx: Option<u32>,
    bos: &[u32],
) -> Result<(), VirtGpuError> {
    f.execbuffer(&drm_virtgpu_execbuffer {
        flags: if ring_idx.is_some() {
            VIRTGPU_EXECBUF_RING_IDX
        } else {
            0
        },
        command: cmd,
        bo_handles: bos,
        ring_idx: ring_idx.unwrap_or(0),
    })
}

/// A cross-domain context with its two rings, and how its `CMD_INIT` went.
fn try_guest(vm: &LoopbackVm, channel_type: u32) -> (Guest, Result<(), VirtGpuError>) {
    let mut f = vm.open().unwrap();
    f.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS).unwrap();
    let query = ring(&mut f);
    let channel = ring(&mut f);
    let mut init = Vec::new();
    cross_domain::encode::init(
        &mut init,
        query.0.res_handle,
        channel.0.res_handle,
        channel_type,
    );
    let r = submit(
        &mut f,
        &init,
        None,
        &[query.0.bo_handle, channel.0.bo_handle],
    );
    (Guest { f, query, channel }, r)
}

fn guest(vm: &LoopbackVm, channel_type: u32) -> Guest {
    let (g, r) = try_guest(vm, channel_type);
    r.unwrap();
    g
}

fn wait_event(f: &LoopbackFile, timeout: Duration) -> bool {
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
        return false;
    }
    let mut b = [0u8; 64];
    let n = rustix::io::read(f.event_fd(), &mut b).unwrap();
    let (evs, rest) = DrmEvent::decode_all(&b[..n]);
    rest.unwrap();
    assert_eq!(evs.len(), 1, "one event per POLL fence");
    true
}

/// POLLs once and returns the ring message (owned), or None on timeout.
fn poll_message(g: &mut Guest, timeout: Duration) -> Option<Vec<u8>> {
    let mut poll = Vec::new();
    cross_domain::encode::poll(&mut poll);
    submit(&mut g.f, &poll, Some(1), &[]).unwrap();
    if !wait_event(&g.f, timeout) {
        return None;
    }
    let mut page = vec![0u8; 4096];
    g.channel.1.read_at(0, &mut page).unwrap();
    Some(page)
}

fn registry_and_sync() -> Vec<u8> {
    let table = ProtocolTable::builtin();
    let display = table.get("wl_display").unwrap();
    let mut out = Vec::new();
    // wl_display.get_registry(new_id 2), wl_display.sync(new_id 3).
    wire::encode(
        &mut out,
        ObjectId::DISPLAY,
        1,
        display.requests[1].signature,
        &[Arg::NewId(ObjectId::new(2).unwrap())],
    )
    .unwrap();
    wire::encode(
        &mut out,
        ObjectId::DISPLAY,
        0,
        display.requests[0].signature,
        &[Arg::NewId(ObjectId::new(3).unwrap())],
    )
    .unwrap();
    out
}

/// (object, opcode, body) of each whole message in `stream`.
fn messages(stream: &[u8]) -> Vec<(u32, u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Ok(Some(m)) = wire::next_message(rest) {
        let len = usize::from(m.header.size);
        out.push((m.header.object.get(), m.header.opcode, m.body.to_vec()));
        rest = &rest[len..];
    }
    out
}

#[test]
fn cross_domain_registry_and_sync_reach_guest_as_receive() {
    let s = setup("registry", factory_for);
    let mut g = guest(&s.vm, 1);
    // POLL before anything was sent: the fence stays pending.
    let mut poll = Vec::new();
    cross_domain::encode::poll(&mut poll);
    submit(&mut g.f, &poll, Some(1), &[]).unwrap();
    assert!(
        !wait_event(&g.f, Duration::from_millis(100)),
        "fence signalled with nothing to say"
    );
    let mut send = Vec::new();
    cross_domain::encode::send(&mut send, &[], &registry_and_sync()).unwrap();
    submit(&mut g.f, &send, None, &[]).unwrap();
    assert!(wait_event(&g.f, Duration::from_secs(10)), "no RECEIVE");
    let mut stream = Vec::new();
    let mut page = vec![0u8; 4096];
    g.channel.1.read_at(0, &mut page).unwrap();
    loop {
        assert_eq!(&page[1..8], &[0; 7], "header bytes 1-7 zero");
        match RingMessage::decode(&page).unwrap() {
            RingMessage::Receive { identifiers, data } => {
                assert!(!data.is_empty(), "unexpected EOF");
                assert!(identifiers.is_empty());
                stream.extend_from_slice(data);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msgs = messages(&stream);
        if msgs.iter().any(|(o, op, _)| *o == 3 && *op == 0) {
            let global = ProtocolTable::builtin().get("wl_registry").unwrap().events[0].signature;
            let globals: Vec<String> = msgs
                .iter()
                .filter(|(o, op, _)| *o == 2 && *op == 0)
                .map(
                    |(_, _, body)| match wire::decode_args(body, global, 0).unwrap().as_slice() {
                        [_, Arg::Str(Some(name)), _] => name.to_string_lossy().into_owned(),
                        other => panic!("wl_registry.global {other:?}"),
                    },
                )
                .collect();
            assert!(globals.iter().any(|g| g == "wl_compositor"), "{globals:?}");
            assert!(globals.iter().any(|g| g == "xdg_wm_base"), "{globals:?}");
            // wl_callback.done comes after every global (then wl_display.delete_id).
            let done = msgs.iter().position(|m| (m.0, m.1) == (3, 0)).unwrap();
            let last_global = msgs.iter().rposition(|m| (m.0, m.1) == (2, 0)).unwrap();
            assert!(done > last_global);
            break;
        }
        page = poll_message(&mut g, Duration::from_secs(10)).expect("rest of the answer");
    }
    // Nothing more to say: the next POLL stays pending.
    assert!(poll_message(&mut g, Duration::from_millis(100)).is_none());
}

#[test]
fn cross_domain_image_requirements_answer_in_query_ring_and_back_a_host_blob() {
    let s = setup("image", factory_for);
    let mut g = guest(&s.vm, 0);
    let mut cmd = Vec::new();
    cross_domain::encode::get_image_requirements(
        &mut cmd,
        640,
        480,
        u32::from_le_bytes(*b"XR24"),
        0x11,
    );
    submit(&mut g.f, &cmd, Some(0), &[g.query.0.bo_handle]).unwrap();
    g.f.wait(g.query.0.bo_handle, 0).unwrap();
    let mut reply = CrossDomainImageRequirements::new_zeroed();
    g.query.1.read_at(0, reply.as_mut_bytes()).unwrap();
    assert_eq!(reply.strides[0].get(), 2560, "stride");
    let size = reply.size.get();
    assert_eq!(size, 2560 * 480);
    let blob_id = reply.blob_id.get();
    assert_eq!(reply.memory_idx.get(), -1);
    let h =
        g.f.resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_HOST3D,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
            size,
            blob_id: u64::from(blob_id),
            ..Default::default()
        })
        .unwrap();
    let m = g.f.map(h.bo_handle).unwrap();
    m.write_at(0, b"pixels").unwrap();
    // A wrong size for the same blob id is refused.
    assert!(
        g.f.resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_HOST3D,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            size: 4096,
            blob_id: u64::from(blob_id),
            ..Default::default()
        })
        .is_err()
    );
}

#[test]
fn cross_domain_wayland_init_without_compositor_fails_cleanly() {
    let s = setup("nohost", |_| {
        CrossDomainFactory::without_host(
            Arc::new(RelayConfig::default()),
            Arc::new(VmStats::new("test")),
            "no display",
        )
    });
    let (_refused, init) = try_guest(&s.vm, 1);
    assert_eq!(init, Err(VirtGpuError::Device(0x1200)));
    // A query-only INIT on another context still works.
    let g = guest(&s.vm, 0);
    drop(g);
}

/// Round trips `wl_display.sync` → `wl_callback.done` through the whole path (loopback VM,
/// vhost-user, cross-domain context, relay, headless compositor) and prints the median.
#[test]
#[allow(clippy::print_stderr)]
fn cross_domain_sync_round_trips_complete() {
    let s = setup("rtt", factory_for);
    let mut g = guest(&s.vm, 1);
    let n: u32 = std::env::var("CROSSWAY_XD_RTT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let table = ProtocolTable::builtin();
    let sync_sig = table.get("wl_display").unwrap().requests[0].signature;
    let mut times = Vec::new();
    for i in 0..n {
        let id = 2 + i;
        let mut bytes = Vec::new();
        wire::encode(
            &mut bytes,
            ObjectId::DISPLAY,
            0,
            sync_sig,
            &[Arg::NewId(ObjectId::new(id).unwrap())],
        )
        .unwrap();
        let start = Instant::now();
        let mut send = Vec::new();
        cross_domain::encode::send(&mut send, &[], &bytes).unwrap();
        submit(&mut g.f, &send, None, &[]).unwrap();
        let mut stream = Vec::new();
        loop {
            let Some(page) = poll_message(&mut g, Duration::from_secs(10)) else {
                panic!("sync {i} not answered; got {:?}", messages(&stream));
            };
            let RingMessage::Receive { data, .. } = RingMessage::decode(&page).unwrap() else {
                panic!("not a RECEIVE");
            };
            stream.extend_from_slice(data);
            if messages(&stream).iter().any(|m| (m.0, m.1) == (id, 0)) {
                break;
            }
        }
        times.push(start.elapsed());
    }
    times.sort();
    eprintln!(
        "cross-domain sync round trip over {n}: median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
