//! The loopback virtual machine: one process that plays both the VMM and the guest kernel's
//! `virtio_gpu` driver, so the whole chain runs where no VMM forwards context init and blobs.
//!
//! ```text
//!  guest program ──VirtGpu trait──▶ driver (virtgpu ioctls) ──▶ frontend (vhost-user) ══▶ crossway-proxy serve
//!                                     │ guest RAM: sealed memfd, regions with a hole ─────▶ SET_MEM_TABLE
//!                                     └ events: pipe of drm_event records   ◀── SHMEM_MAP (window)
//!  guest program in another process ──LoopbackClient──▶ socket ──▶ LoopbackServer ──▶ driver
//! ```
//!
//! [`frontend`] is the VMM half, [`vring`] the driver's split rings, [`driver`] the ioctls
//! ([`driver::LoopbackFile`] implements `crossway_protocols::virtgpu::VirtGpu`). [`server`]
//! serves device files to other processes over a Unix socket (`crossway_loopback::wire` is its
//! protocol; any [`ServedDevice`] can be served, not only this VM); the guest side of that
//! socket, `crossway_loopback::LoopbackClient`, and the blob mappings both sides use
//! (`crossway_loopback::mmap`) live in the small `crossway-loopback` crate, so guest programs
//! link none of the device. [`uapi`] holds the driver's checks and PRIME tokens that other
//! userspace devices serving the same API reuse.

pub mod driver;
pub mod frontend;
pub mod server;
pub mod uapi;
pub mod vring;

pub use driver::{LoopbackConfig, LoopbackFile, LoopbackVm};
pub use server::{DEFAULT_MAX_CONNECTIONS, LoopbackServer, ServedDevice, ServedFile, ServerConfig};
