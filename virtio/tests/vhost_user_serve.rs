//! The backend as a separate process, driven by the vhost crate's frontend: negotiation, a
//! shared memfd, queue setup and real commands, over `--socket-path`-style listening and over
//! an inherited connected socket (libvirt's `--fd`).
//!
//! The backend process is this test binary re-executed with `CROSSWAY_VU_CHILD` set; it runs
//! only the `child_backend` helper, which calls `crossway_virtio::backend::serve`.

// Helpers outside #[test] fns unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crossway_sys::memfd::Memfd;
use crossway_virtio::backend::{Endpoint, ServeConfig, serve};
use crossway_virtio::blob::ExportMode;
use crossway_virtio::context::NullContextFactory;
use crossway_virtio::device::DeviceConfig;
use crossway_virtio::protocol::*;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::{FromBytes, IntoBytes};

const MEM_SIZE: usize = 16 << 20;
const CHILD_ENV: &str = "CROSSWAY_VU_CHILD";

/// Runs the backend when this binary is re-executed as the child; a no-op otherwise.
#[test]
fn child_backend() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let endpoint = if let Some(fd) = spec.strip_prefix("fd:") {
        let fd: i32 = fd.parse().unwrap();
        // SAFETY: the parent placed a socket at this fd number for us before exec.
        Endpoint::Fd(unsafe { OwnedFd::from_raw_fd(fd) })
    } else {
        Endpoint::SocketPath(PathBuf::from(spec))
    };
    let device = DeviceConfig {
        export_mode: ExportMode::CopyOnly,
        ..DeviceConfig::default()
    };
    let stats = serve(ServeConfig {
        endpoint,
        device,
        factory: Box::new(NullContextFactory),
    })
    .unwrap();
    assert!(stats.commands >= 5, "backend saw {stats:?}");
}

fn child(spec: &str, inherit: Option<OwnedFd>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_backend",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, spec);
    if let Some(fd) = inherit {
        let raw = fd.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls run: dup2 onto fd 3
        // (which clears FD_CLOEXEC on the copy). `fd` stays open in the parent until spawn
        // returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let c = cmd.spawn().unwrap();
        drop(fd);
        return c;
    }
    cmd.spawn().unwrap()
}

fn wait_exit(mut c: Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            assert!(status.success(), "backend exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("backend did not exit after the frontend hung up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Guest {
    mem: GuestMemoryMmap,
    _memfd: Memfd,
}

fn guest() -> Guest {
    let memfd = Memfd::new("guest-ram", MEM_SIZE as u64).unwrap();
    let file = memfd.file().try_clone().unwrap();
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap();
    Guest { mem, _memfd: memfd }
}

fn hva(g: &Guest, gpa: u64) -> u64 {
    g.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
}

fn hdr(t: u32, ctx: u32) -> virtio_gpu_ctrl_hdr {
    virtio_gpu_ctrl_hdr {
        type_: t.into(),
        ctx_id: ctx.into(),
        ..Default::default()
    }
}

fn req<T: IntoBytes + zerocopy::Immutable>(h: virtio_gpu_ctrl_hdr, body: &T) -> Vec<u8> {
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

fn drive(mut frontend: Frontend) {
    let features = frontend.get_features().unwrap();
    for bit in [
        VIRTIO_GPU_F_VIRGL,
        VIRTIO_GPU_F_EDID,
        VIRTIO_GPU_F_RESOURCE_UUID,
        VIRTIO_GPU_F_RESOURCE_BLOB,
        VIRTIO_GPU_F_CONTEXT_INIT,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit} missing");
    }
    assert_ne!(features & (1 << 32), 0, "VERSION_1 missing");
    frontend.set_owner().unwrap();
    frontend.set_features(features).unwrap();
    let proto = frontend.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::CONFIG));
    assert!(proto.contains(VhostUserProtocolFeatures::SHMEM));
    frontend
        .set_protocol_features(
            proto & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
        )
        .unwrap();
    assert_eq!(frontend.get_queue_num().unwrap(), 2);
    let (_, cfg) = frontend
        .get_config(0, 16, VhostUserConfigFlags::empty(), &[0; 16])
        .unwrap();
    let (cfg, _) = virtio_gpu_config::read_from_prefix(&cfg[..]).unwrap();
    assert_eq!(cfg.num_scanouts.get(), 1);
    assert_eq!(cfg.num_capsets.get(), 2);

    let g = guest();
    frontend
        .set_mem_table(&[VhostUserMemoryRegionInfo::from_guest_region(
            g.mem.find_region(GuestAddress(0)).unwrap(),
        )
        .unwrap()])
        .unwrap();
    let mock = MockSplitQueue::new(&g.mem, 256);
    frontend.set_vring_num(0, 256).unwrap();
    frontend
        .set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: 256,
                queue_size: 256,
                flags: 0,
                desc_table_addr: hva(&g, mock.desc_table_addr().0),
                used_ring_addr: hva(&g, mock.used_addr().0),
                avail_ring_addr: hva(&g, mock.avail_addr().0),
                log_addr: None,
            },
        )
        .unwrap();
    frontend.set_vring_base(0, 0).unwrap();
    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    frontend.set_vring_call(0, &call).unwrap();
    frontend.set_vring_kick(0, &kick).unwrap();
    frontend.set_vring_enable(0, true).unwrap();

    let mut next = 0u16;
    let mut send = |request: &[u8]| -> Vec<u8> {
        let slot = u64::from(next / 2);
        let (ra, wa) = (0x10_0000 + slot * 0x1_0000, 0x80_0000 + slot * 0x1_0000);
        g.mem.write_slice(request, GuestAddress(ra)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(ra, request.len() as u32, 1, next + 1)),
            RawDescriptor::from(SplitDescriptor::new(wa, 4096, 2, 0)),
        ];
        let before = mock.used().idx().load();
        mock.add_desc_chains(&descs, next).unwrap();
        next += 2;
        kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while mock.used().idx().load() == before {
            assert!(Instant::now() < deadline, "no response from the backend");
            std::thread::sleep(Duration::from_millis(2));
        }
        let e = mock
            .used()
            .ring()
            .ref_at(before as usize % 256)
            .unwrap()
            .load();
        let mut b = vec![0; e.len() as usize];
        g.mem.read_slice(&mut b, GuestAddress(wa)).unwrap();
        b
    };
    let ty = |b: &[u8]| {
        virtio_gpu_ctrl_hdr::read_from_prefix(b)
            .unwrap()
            .0
            .type_
            .get()
    };

    let di = send(hdr(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, 0).as_bytes());
    assert_eq!(ty(&di), VIRTIO_GPU_RESP_OK_DISPLAY_INFO);
    assert_eq!(di.len(), 408);
    let ci = send(&req(
        hdr(VIRTIO_GPU_CMD_GET_CAPSET_INFO, 0),
        &virtio_gpu_get_capset_info {
            capset_index: 0.into(),
            padding: 0.into(),
        },
    ));
    let (ci, _) = virtio_gpu_resp_capset_info::read_from_prefix(&ci[..]).unwrap();
    assert_eq!((ci.capset_id.get(), ci.capset_max_size.get()), (5, 16));
    let c2d = send(&req(
        hdr(VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, 0),
        &virtio_gpu_resource_create_2d {
            resource_id: 1.into(),
            format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM.into(),
            width: 64.into(),
            height: 64.into(),
        },
    ));
    assert_eq!(ty(&c2d), VIRTIO_GPU_RESP_OK_NODATA);
    let mut attach = req(
        hdr(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, 0),
        &virtio_gpu_resource_attach_backing {
            resource_id: 1.into(),
            nr_entries: 1.into(),
        },
    );
    attach.extend_from_slice(
        virtio_gpu_mem_entry {
            addr: 0x40_0000u64.into(),
            length: (64 * 64 * 4u32).into(),
            padding: 0.into(),
        }
        .as_bytes(),
    );
    assert_eq!(ty(&send(&attach)), VIRTIO_GPU_RESP_OK_NODATA);
    let mut bad = attach.clone();
    bad[32..40].copy_from_slice(&(MEM_SIZE as u64).to_le_bytes());
    assert_eq!(ty(&send(&bad)), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    let mut cc = virtio_gpu_ctx_create {
        nlen: 0.into(),
        context_init: 5.into(),
        ..Default::default()
    };
    cc.debug_name[0] = b'x';
    assert_eq!(
        ty(&send(&req(hdr(VIRTIO_GPU_CMD_CTX_CREATE, 1), &cc))),
        VIRTIO_GPU_RESP_OK_NODATA
    );
    drop(frontend);
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "backend never created {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn serve_socket_path_frontend_negotiates_and_commands_succeed() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("crossway-vu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gpu.sock");
    let _ = std::fs::remove_file(&path);
    let c = child(path.to_str().unwrap(), None);
    wait_for(&path);
    let frontend = Frontend::connect(&path, 2).unwrap();
    drive(frontend);
    wait_exit(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_connected_fd_frontend_negotiates_and_commands_succeed() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let (ours, theirs) = UnixStream::pair().unwrap();
    let c = child("fd:3", Some(OwnedFd::from(theirs)));
    let frontend = Frontend::from_stream(ours, 2);
    drive(frontend);
    wait_exit(c);
}
