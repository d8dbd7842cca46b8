//! The virtio-gpu device behind `crossway-proxy serve`: command structs, resources, blobs,
//! contexts, fences and capsets, served to a VMM over vhost-user.
//!
//! ```text
//!  VMM (QEMU, crosvm) ──vhost-user──▶ backend ──▶ queue ──▶ device ──▶ context (cross-domain, in proxy)
//!                                       │                     ├─ blob: udmabuf or memfd copy
//!                                       └─ SHMEM_MAP ◀────────┴─ host blobs (MAP_BLOB)
//! ```
//!
//! Layers, bottom up: [`protocol`] (wire structs, decoder), [`memory`] (guest ranges checked
//! against the frontend's memfd regions), [`blob`] / [`udmabuf`] / [`crossway_sys::memfd`]
//! (guest blobs as host fds), [`fence`] (timelines), [`context`] (the trait a context type implements),
//! [`device`] (the model), [`queue`] (virtqueues), [`backend`] (vhost-user).

pub mod backend;
pub mod blob;
pub mod context;
pub mod device;
pub mod edid;
pub mod fence;
pub mod inherited_fd;
pub mod loopback;
pub mod memory;
pub mod protocol;
pub mod queue;
pub mod stats;
pub mod udmabuf;

#[cfg(test)]
mod tests;

pub use context::{Context, ContextFactory, CtxId, ResourceId};
pub use device::{DeviceConfig, GpuDevice, Limits};
