//! The loopback virtual machine: one process that plays both the VMM and the guest kernel's
//! `virtio_gpu` driver, so the whole chain runs where no VMM forwards context init and blobs.
//!
//! ```text
//!  guest program ──VirtGpu trait──▶ driver (virtgpu ioctls) ──▶ frontend (vhost-user) ══▶ crossway-proxy serve
//!                                     │ guest RAM: sealed memfd, regions with a hole ─────▶ SET_MEM_TABLE
//!                                     └ events: pipe of drm_event records   ◀── SHMEM_MAP (window)
//! ```
//!
//! [`frontend`] is the VMM half, [`vring`] the driver's split rings, [`driver`] the ioctls
//! ([`driver::LoopbackFile`] implements `crossway_protocols::virtgpu::VirtGpu`), [`mmap`] the
//! blob mappings (the only `unsafe` besides [`fdpass`]).

pub mod driver;
pub mod fdpass;
pub mod frontend;
pub mod mmap;
pub mod vring;

pub use driver::{LoopbackConfig, LoopbackFile, LoopbackVm};
