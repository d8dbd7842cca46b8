//! Wire contracts shared by `crossway-proxy` (host) and `crossway-agent` (guest).
//!
//! Nothing in this crate does I/O or uses `unsafe`: it turns bytes into values and back, and
//! every byte it is given is treated as hostile (from a guest or from a host compositor).
//!
//! ```text
//!  guest app ─wayland─▶ crossway-agent ══cross-domain══▶ crossway-proxy ─wayland─▶ compositor
//!                        │      wire + objects + tables      │
//!                        └── cross_domain + capset + dmabuf ─┘
//! ```
//!
//! - [`wire`]: Wayland message framing and argument codec, decoding in place.
//! - [`tables`]: every interface the `wayland-protocols*` crates describe, by name.
//! - [`objects`]: a connection's object map (ids, interfaces, versions, lifetimes, and the data
//!   a relay keeps per object).
//! - [`translate`]: object-id translation between a client connection and its server
//!   connection, for a relay that creates objects of its own.
//! - [`stream`]: one direction of a connection: partial messages, fds waiting for their
//!   message, limits, and framing each whole message for the relay's handler.
//! - [`opcodes`]: the opcodes the relays dispatch on; [`codes`]: the error codes they send.
//! - [`mod@format`]: bytes per pixel of the formats a relay copies.
//! - [`cross_domain`]: the virtio-gpu cross-domain context's structs and command decoder.
//! - [`dmabuf`]: linux-dmabuf format tables, tranches and preference lists.
//! - [`damage`]: which bytes of a buffer changed (surface and buffer damage through viewport,
//!   scale and transform, and what each rotating buffer missed since it was last copied).
//! - [`capset`]: the Crossway capset, the host's formats and features for the guest.
//! - [`virtgpu`]: the guest's virtgpu DRM uAPI as a trait (real ioctls or the loopback VM).

#![forbid(unsafe_code)]

pub mod capset;
pub mod codes;
pub mod cross_domain;
pub mod damage;
pub mod dmabuf;
pub mod format;
pub mod messages;
pub mod objects;
pub mod opcodes;
pub mod stream;
pub mod tables;
pub mod translate;
pub mod virtgpu;
pub mod wire;

pub use drm_fourcc;
