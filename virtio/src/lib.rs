//! The virtio-gpu device behind `crossway-proxy serve`: command structs, resources, blobs,
//! contexts, fences and capsets, served to a VMM over vhost-user, plus the loopback VM that
//! plays VMM and guest driver where no real VM is at hand.
//!
//! ```text
//!  VMM (QEMU, crosvm) ──vhost-user──▶ backend ──▶ device model ──▶ context (cross-domain, in proxy)
//! ```
//!
//! Nothing is here yet: the device model is the work of the virtio-gpu device issue. The crate
//! exists so the workspace has its final shape and the dependency rules of ARCHITECTURE.md
//! hold from the start.

#![deny(unsafe_op_in_unsafe_fn)]
