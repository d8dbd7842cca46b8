//! The agent's device layer (`crossway_agent::device`) on the loopback VM's socket: the calls a
//! channel makes, through `crossway-loopback`'s client, against a real loopback VM and device.
//! (Here rather than in the agent's own tests, so the agent links no vhost crate even for tests.)

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use crossway_agent::device::{AgentDevice, DeviceError, DeviceSpec};
use crossway_protocols::virtgpu::*;
use crossway_virtio::blob::ExportMode;
use crossway_virtio::context::NullContextFactory;
use crossway_virtio::device::DeviceConfig;
use crossway_virtio::loopback::{LoopbackServer, LoopbackVm, ServerConfig};
use std::os::fd::AsFd;

struct Setup {
    _server: LoopbackServer,
    sock: PathBuf,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("crossway-agentdev-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let device = DeviceConfig {
        export_mode: ExportMode::CopyOnly,
        host_visible_size: 16 << 20,
        ..DeviceConfig::default()
    };
    let vm = LoopbackVm::with_backend_thread(
        &dir.join("gpu.sock"),
        device,
        Box::new(NullContextFactory),
    )
    .unwrap();
    let sock = dir.join("vm.sock");
    let server = LoopbackServer::bind(vm, &sock, ServerConfig::default()).unwrap();
    Setup {
        _server: server,
        sock,
        dir,
    }
}

#[test]
fn loopback_device_params_caps_and_describe() {
    let s = setup("caps");
    let mut d = AgentDevice::open(&DeviceSpec::Loopback(s.sock.clone())).unwrap();
    assert_eq!(d.describe(), format!("loopback {}", s.sock.display()));
    assert_eq!(d.render_dev(), None);
    assert_eq!(d.get_param(VIRTGPU_PARAM_CONTEXT_INIT).unwrap(), 1);
    let ids = d.get_param(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS).unwrap();
    assert_ne!(ids & (1 << 5), 0);
    let mut caps = [0u8; 16];
    assert_eq!(d.get_caps(5, 0, &mut caps).unwrap(), 16);
    assert!(matches!(
        d.get_param(999),
        Err(VirtGpuError::InvalidArgument(_))
    ));
}

#[test]
fn loopback_device_blob_map_prime_and_close() {
    let s = setup("blob");
    let spec = DeviceSpec::Loopback(s.sock.clone());
    let mut d = AgentDevice::open(&spec).unwrap();
    d.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS).unwrap();
    let h = d
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_GUEST,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
            size: 3 * 4096,
            ..Default::default()
        })
        .unwrap();
    let m = d.map(h.bo_handle).unwrap();
    assert_eq!(m.len(), 3 * 4096);
    m.write_at(3 * 4096 - 4, b"tail").unwrap();
    assert!(m.write_at(3 * 4096 - 3, b"tail").is_err());
    let info = d.resource_info(h.bo_handle).unwrap();
    assert_eq!((info.res_handle, info.size), (h.res_handle, 3 * 4096));

    // Another device file imports the same resource and sees the bytes.
    let fd = d.prime_handle_to_fd(h.bo_handle).unwrap();
    let mut other = AgentDevice::open(&spec).unwrap();
    let oh = other.prime_fd_to_handle(fd.as_fd()).unwrap();
    assert_eq!(other.resource_info(oh).unwrap().res_handle, h.res_handle);
    let mut b = [0u8; 4];
    other
        .map(oh)
        .unwrap()
        .read_at(3 * 4096 - 4, &mut b)
        .unwrap();
    assert_eq!(&b, b"tail");

    drop(m);
    d.gem_close(h.bo_handle).unwrap();
    assert!(matches!(
        d.resource_info(h.bo_handle),
        Err(VirtGpuError::NoSuchHandle(_))
    ));
}

#[test]
fn loopback_device_missing_socket_is_clear_error() {
    let r = AgentDevice::open(&DeviceSpec::Loopback("/nonexistent/vm.sock".into()));
    assert!(matches!(r, Err(DeviceError::Loopback { .. })), "{r:?}");
}
