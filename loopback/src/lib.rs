//! `crossway-loopback`: the guest program's side of the loopback VM, the socket through which a
//! program in another process uses the loopback VM's virtio-gpu device as if it were a render
//! node.
//!
//! ```text
//!  guest program ──VirtGpu──▶ LoopbackClient ──wire (Unix socket, SCM_RIGHTS)──▶ crossway-proxy vm
//!                                 └─ mmap: blob mappings (host blob fds, guest-RAM pieces)      (crossway_virtio::loopback)
//! ```
//!
//! [`client::LoopbackClient`] implements `crossway_protocols::virtgpu::VirtGpu`; [`wire`] is the
//! socket protocol both sides speak; [`mmap`] maps blobs (both sides use it). The crate links
//! none of the device (no vhost, no vm-memory), so the guest agent can carry it.

pub mod client;
pub mod mmap;
pub mod wire;

pub use client::LoopbackClient;
