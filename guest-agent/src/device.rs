//! The virtgpu device a channel opens: a virtio_gpu render node with real ioctls
//! ([`crate::drm::RenderNode`]) or the loopback VM's socket (`crossway-loopback`'s
//! `LoopbackClient`, feature `loopback`), behind one [`VirtGpu`] type, [`AgentDevice`].
//!
//! ```text
//!  --device auto ─▶ CROSSWAY_VIRTGPU set? ─yes─▶ its address (loopback:PATH or /dev/dri/…)
//!                                        └─no──▶ find_virtio_render_node()
//!  AgentDevice::open(spec) ─▶ RenderNode (ioctls) │ LoopbackClient (Unix socket)
//! ```

use std::ffi::OsString;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crossway_protocols::virtgpu::{
    BlobHandles, CROSSWAY_VIRTGPU_ENV, VirtGpu, VirtGpuAddress, VirtGpuAddressError, VirtGpuError,
    VirtGpuMapping, drm_virtgpu_context_set_param, drm_virtgpu_execbuffer,
    drm_virtgpu_resource_create_blob, drm_virtgpu_resource_info,
};

use crate::drm::{DrmError, DrmMapping, RenderNode, VIRTIO_GPU_DRIVER};

/// Where DRM device nodes live.
pub const DRM_DEV_DIR: &str = "/dev/dri";
/// Where the kernel describes DRM minors (`renderD128/device/driver` links to the driver).
pub const DRM_SYSFS_DIR: &str = "/sys/class/drm";

/// Which device to open: the agent's `--device` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `auto`: `CROSSWAY_VIRTGPU` if set, else the first virtio_gpu render node.
    Auto,
    /// A render node path, such as `/dev/dri/renderD128`.
    RenderNode(PathBuf),
    /// `loopback:PATH`: the loopback VM's socket.
    Loopback(PathBuf),
}

impl From<VirtGpuAddress> for DeviceSpec {
    fn from(a: VirtGpuAddress) -> DeviceSpec {
        match a {
            VirtGpuAddress::Loopback(p) => DeviceSpec::Loopback(p),
            VirtGpuAddress::RenderNode(p) => DeviceSpec::RenderNode(p),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = VirtGpuAddressError;

    /// `auto`, an absolute render node path, or `loopback:/abs/path`
    /// ([`VirtGpuAddress::from_env_value`]'s syntax).
    fn from_str(s: &str) -> Result<DeviceSpec, VirtGpuAddressError> {
        if s == "auto" {
            return Ok(DeviceSpec::Auto);
        }
        VirtGpuAddress::from_env_value(s).map(DeviceSpec::from)
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::RenderNode(p) => write!(f, "{}", p.display()),
            DeviceSpec::Loopback(p) => write!(f, "loopback:{}", p.display()),
        }
    }
}

impl DeviceSpec {
    /// What `Auto` stands for now (the environment and `/dev/dri` are read once); other specs
    /// are returned as they are. A server opening one device per client resolves once at start.
    pub fn resolve(&self) -> Result<DeviceSpec, DeviceError> {
        match self {
            DeviceSpec::Auto => resolve_auto(
                std::env::var_os(CROSSWAY_VIRTGPU_ENV),
                find_virtio_render_node,
            ),
            other => Ok(other.clone()),
        }
    }
}

/// `Auto` given the value of `CROSSWAY_VIRTGPU` and a render node search. An empty variable
/// counts as unset; a set but malformed one is an error, not a reason to guess.
fn resolve_auto(
    env: Option<OsString>,
    find: impl FnOnce() -> Option<PathBuf>,
) -> Result<DeviceSpec, DeviceError> {
    match env.filter(|v| !v.is_empty()) {
        Some(v) => {
            let s = v.into_string().map_err(|v| DeviceError::Env {
                value: v.to_string_lossy().into_owned(),
                source: VirtGpuAddressError::NotAbsolute(v.to_string_lossy().into_owned()),
            })?;
            VirtGpuAddress::from_env_value(&s)
                .map(DeviceSpec::from)
                .map_err(|source| DeviceError::Env { value: s, source })
        }
        None => find()
            .map(DeviceSpec::RenderNode)
            .ok_or(DeviceError::NoRenderNode),
    }
}

/// Why no device could be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `CROSSWAY_VIRTGPU` holds something that is not a device address.
    #[error("{CROSSWAY_VIRTGPU_ENV}={value:?} is not a device address")]
    Env {
        /// The value.
        value: String,
        /// What is wrong with it.
        #[source]
        source: VirtGpuAddressError,
    },
    /// `auto` found nothing.
    #[error(
        "no virtio_gpu render node in {DRM_DEV_DIR} (is the virtio_gpu module loaded?); \
         name one with --device or {CROSSWAY_VIRTGPU_ENV}"
    )]
    NoRenderNode,
    /// The render node could not be opened or is not virtio_gpu.
    #[error("render node")]
    RenderNode(#[source] DrmError),
    /// A loopback address, in an agent built without the `loopback` feature.
    #[error("loopback device {0} asked for, but this agent was built without feature `loopback`")]
    LoopbackDisabled(PathBuf),
    /// The loopback socket refused or is not there.
    #[error("loopback device {path}")]
    Loopback {
        /// The socket.
        path: PathBuf,
        /// What the client said.
        #[source]
        source: VirtGpuError,
    },
}

/// The first `/dev/dri/renderD*` (by minor number) whose driver is virtio_gpu: the sysfs link
/// `/sys/class/drm/renderDN/device/driver` when it names virtio_gpu, else `DRM_IOCTL_VERSION`
/// on the node itself. The link alone is not enough: virtio_gpu registers its DRM device on
/// the transport's device, so on virtio-pci (QEMU's `virtio-gpu-pci`, `vhost-user-gpu-pci`)
/// the link names `virtio-pci`.
pub fn find_virtio_render_node() -> Option<PathBuf> {
    find_render_node_in(
        Path::new(DRM_DEV_DIR),
        Path::new(DRM_SYSFS_DIR),
        probe_driver_name,
    )
}

fn probe_driver_name(node: &Path) -> Option<String> {
    let fd = rustix::fs::open(
        node,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    crate::drm::driver_name(std::os::fd::AsFd::as_fd(&fd)).ok()
}

/// [`find_virtio_render_node`] over other folders, with the ioctl probe replaceable.
fn find_render_node_in(
    dev_dir: &Path,
    sys_dir: &Path,
    probe: impl Fn(&Path) -> Option<String>,
) -> Option<PathBuf> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir(dev_dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let minor = name.strip_prefix("renderD")?.parse().ok()?;
            Some((minor, name))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().find_map(|(_, name)| {
        let node = dev_dir.join(&name);
        let sysfs = std::fs::read_link(sys_dir.join(&name).join("device/driver")).ok();
        if sysfs.is_some_and(|l| l.file_name().is_some_and(|f| f == VIRTIO_GPU_DRIVER)) {
            return Some(node);
        }
        (probe(&node)? == VIRTIO_GPU_DRIVER).then_some(node)
    })
}

enum Inner {
    Render(RenderNode),
    #[cfg(feature = "loopback")]
    Loopback {
        client: crossway_loopback::LoopbackClient,
        path: PathBuf,
    },
}

/// One open virtgpu device file, a render node or a loopback connection: one per guest client
/// (it is `Send`, so each client's thread owns its own).
pub struct AgentDevice {
    inner: Inner,
}

impl std::fmt::Debug for AgentDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AgentDevice")
            .field(&self.describe())
            .finish()
    }
}

impl AgentDevice {
    /// Opens the device `spec` names (resolving `Auto` first).
    pub fn open(spec: &DeviceSpec) -> Result<AgentDevice, DeviceError> {
        let inner = match spec.resolve()? {
            DeviceSpec::RenderNode(path) => {
                Inner::Render(RenderNode::open(&path).map_err(DeviceError::RenderNode)?)
            }
            #[cfg(feature = "loopback")]
            DeviceSpec::Loopback(path) => Inner::Loopback {
                client: crossway_loopback::LoopbackClient::connect(&path).map_err(|source| {
                    DeviceError::Loopback {
                        path: path.clone(),
                        source,
                    }
                })?,
                path,
            },
            #[cfg(not(feature = "loopback"))]
            DeviceSpec::Loopback(path) => return Err(DeviceError::LoopbackDisabled(path)),
            DeviceSpec::Auto => return Err(DeviceError::NoRenderNode),
        };
        let dev = AgentDevice { inner };
        tracing::debug!(device = %dev.describe(), "virtgpu device open");
        Ok(dev)
    }

    /// What was opened, for logs: `render node /dev/dri/renderD128` or `loopback /run/x.sock`.
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Render(r) => format!("render node {}", r.path().display()),
            #[cfg(feature = "loopback")]
            Inner::Loopback { path, .. } => format!("loopback {}", path.display()),
        }
    }

    /// `st_rdev` of the render node (dmabuf feedback's `main_device`); `None` on the loopback.
    pub fn render_dev(&self) -> Option<u64> {
        match &self.inner {
            Inner::Render(r) => Some(r.rdev()),
            #[cfg(feature = "loopback")]
            Inner::Loopback { .. } => None,
        }
    }
}

enum MapInner {
    Render(DrmMapping),
    #[cfg(feature = "loopback")]
    Loopback(crossway_loopback::mmap::Mapping),
}

/// A CPU mapping of a blob of an [`AgentDevice`]; unmapped on drop.
pub struct AgentMapping {
    inner: MapInner,
}

impl std::fmt::Debug for AgentMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMapping")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl VirtGpuMapping for AgentMapping {
    fn len(&self) -> usize {
        match &self.inner {
            MapInner::Render(m) => m.len(),
            #[cfg(feature = "loopback")]
            MapInner::Loopback(m) => m.len(),
        }
    }

    fn read_from(
        &self,
        file: std::os::fd::BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> std::io::Result<()> {
        match &self.inner {
            MapInner::Render(m) => m.read_from(file, file_offset, offset, len),
            #[cfg(feature = "loopback")]
            MapInner::Loopback(m) => m.read_from(file, file_offset, offset, len),
        }
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), VirtGpuError> {
        match &self.inner {
            MapInner::Render(m) => m.read_at(offset, buf),
            #[cfg(feature = "loopback")]
            MapInner::Loopback(m) => m.read_at(offset, buf),
        }
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), VirtGpuError> {
        match &self.inner {
            MapInner::Render(m) => m.write_at(offset, data),
            #[cfg(feature = "loopback")]
            MapInner::Loopback(m) => m.write_at(offset, data),
        }
    }
}

/// Forwards one `VirtGpu` call to whichever device is inside.
macro_rules! dispatch {
    ($self:ident, $d:ident => $call:expr) => {
        match &mut $self.inner {
            Inner::Render($d) => $call,
            #[cfg(feature = "loopback")]
            Inner::Loopback { client: $d, .. } => $call,
        }
    };
}

impl VirtGpu for AgentDevice {
    type Mapping = AgentMapping;

    fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError> {
        dispatch!(self, d => d.get_param(param))
    }

    fn get_caps(
        &mut self,
        cap_set_id: u32,
        cap_set_ver: u32,
        buf: &mut [u8],
    ) -> Result<usize, VirtGpuError> {
        dispatch!(self, d => d.get_caps(cap_set_id, cap_set_ver, buf))
    }

    fn context_init(
        &mut self,
        params: &[drm_virtgpu_context_set_param],
    ) -> Result<(), VirtGpuError> {
        dispatch!(self, d => d.context_init(params))
    }

    fn resource_create_blob(
        &mut self,
        req: &drm_virtgpu_resource_create_blob,
    ) -> Result<BlobHandles, VirtGpuError> {
        dispatch!(self, d => d.resource_create_blob(req))
    }

    fn map(&mut self, bo_handle: u32) -> Result<AgentMapping, VirtGpuError> {
        let inner = match &mut self.inner {
            Inner::Render(d) => MapInner::Render(d.map(bo_handle)?),
            #[cfg(feature = "loopback")]
            Inner::Loopback { client, .. } => MapInner::Loopback(client.map(bo_handle)?),
        };
        Ok(AgentMapping { inner })
    }

    fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError> {
        dispatch!(self, d => d.execbuffer(eb))
    }

    fn wait(&mut self, bo_handle: u32, flags: u32) -> Result<(), VirtGpuError> {
        dispatch!(self, d => d.wait(bo_handle, flags))
    }

    fn resource_info(&mut self, bo_handle: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError> {
        dispatch!(self, d => d.resource_info(bo_handle))
    }

    fn prime_handle_to_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, VirtGpuError> {
        dispatch!(self, d => d.prime_handle_to_fd(bo_handle))
    }

    fn prime_fd_to_handle(&mut self, fd: BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
        dispatch!(self, d => d.prime_fd_to_handle(fd))
    }

    fn gem_close(&mut self, bo_handle: u32) -> Result<(), VirtGpuError> {
        dispatch!(self, d => d.gem_close(bo_handle))
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Render(d) => d.event_fd(),
            #[cfg(feature = "loopback")]
            Inner::Loopback { client, .. } => client.event_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn agent_device_and_mapping_are_send() {
        assert_send::<AgentDevice>();
        assert_send::<AgentMapping>();
    }

    #[test]
    fn device_spec_parses_auto_render_node_and_loopback() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!(
            "/dev/dri/renderD128".parse(),
            Ok(DeviceSpec::RenderNode("/dev/dri/renderD128".into()))
        );
        assert_eq!(
            "loopback:/run/x.sock".parse(),
            Ok(DeviceSpec::Loopback("/run/x.sock".into()))
        );
    }

    #[test]
    fn device_spec_relative_or_empty_is_rejected() {
        assert!("renderD128".parse::<DeviceSpec>().is_err());
        assert!("loopback:".parse::<DeviceSpec>().is_err());
        assert!("".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn device_spec_display_roundtrips() {
        for s in ["auto", "/dev/dri/renderD129", "loopback:/tmp/v.sock"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn resolve_auto_env_wins_over_render_node_search() {
        let r = resolve_auto(Some("loopback:/tmp/l.sock".into()), || {
            panic!("searched despite the variable")
        });
        assert_eq!(r.unwrap(), DeviceSpec::Loopback("/tmp/l.sock".into()));
    }

    #[test]
    fn resolve_auto_empty_env_searches_render_nodes() {
        let r = resolve_auto(Some("".into()), || Some("/dev/dri/renderD130".into()));
        assert_eq!(
            r.unwrap(),
            DeviceSpec::RenderNode("/dev/dri/renderD130".into())
        );
        let r = resolve_auto(None, || None);
        assert!(matches!(r, Err(DeviceError::NoRenderNode)));
    }

    #[test]
    fn resolve_auto_malformed_env_is_error() {
        let r = resolve_auto(Some("relative.sock".into()), || {
            Some("/dev/dri/renderD128".into())
        });
        assert!(matches!(r, Err(DeviceError::Env { .. })), "{r:?}");
    }

    /// A fake /dev/dri and /sys/class/drm with the given nodes and sysfs drivers.
    fn fake_tree(name: &str, nodes: &[(&str, Option<&str>)]) -> (PathBuf, PathBuf, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("crossway-find-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dev = root.join("dev");
        let sys = root.join("sys");
        std::fs::create_dir_all(&dev).unwrap();
        for (node, driver) in nodes {
            std::fs::write(dev.join(node), b"").unwrap();
            if let Some(driver) = driver {
                let d = sys.join(node).join("device");
                std::fs::create_dir_all(&d).unwrap();
                std::os::unix::fs::symlink(
                    format!("../../../bus/virtio/drivers/{driver}"),
                    d.join("driver"),
                )
                .unwrap();
            }
        }
        (root, dev, sys)
    }

    #[test]
    fn find_render_node_picks_lowest_virtio_by_sysfs() {
        let (root, dev, sys) = fake_tree(
            "sysfs",
            &[
                ("renderD130", Some("virtio_gpu")),
                ("renderD128", Some("i915")),
                ("renderD129", Some("virtio_gpu")),
                ("card0", Some("virtio_gpu")),
            ],
        );
        let found = find_render_node_in(&dev, &sys, |p| {
            assert!(p.ends_with("renderD128"), "probed {p:?} despite sysfs");
            Some("i915".into())
        });
        std::fs::remove_dir_all(root).unwrap();
        assert_eq!(found, Some(dev.join("renderD129")));
    }

    #[test]
    fn find_render_node_virtio_pci_link_asks_the_node() {
        let (root, dev, sys) = fake_tree("pci", &[("renderD128", Some("virtio-pci"))]);
        let found = find_render_node_in(&dev, &sys, |_| Some("virtio_gpu".into()));
        std::fs::remove_dir_all(root).unwrap();
        assert_eq!(found, Some(dev.join("renderD128")));
    }

    #[test]
    fn find_render_node_without_sysfs_asks_the_node() {
        let (root, dev, sys) = fake_tree("probe", &[("renderD128", None), ("renderD129", None)]);
        let found = find_render_node_in(&dev, &sys, |p| {
            Some(if p.ends_with("renderD129") {
                "virtio_gpu".into()
            } else {
                "amdgpu".into()
            })
        });
        std::fs::remove_dir_all(root).unwrap();
        assert_eq!(found, Some(dev.join("renderD129")));
    }

    #[test]
    fn find_render_node_none_without_virtio() {
        let (root, dev, sys) = fake_tree("none", &[("renderD128", Some("i915"))]);
        let found = find_render_node_in(&dev, &sys, |_| None);
        assert_eq!(found, None);
        assert_eq!(
            find_render_node_in(&root.join("missing"), &sys, |_| None),
            None
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn open_render_node_path_that_is_not_drm_fails() {
        let r = AgentDevice::open(&DeviceSpec::RenderNode("/dev/null".into()));
        assert!(
            matches!(r, Err(DeviceError::RenderNode(DrmError::NotDrm(..)))),
            "{r:?}"
        );
    }
}
