//! `crossway-sys`: the small operating-system helpers both programs share, each a safe wrapper
//! over one kernel interface, so that no other crate repeats them (crosvm's `base`,
//! rutabaga's `rutabaga_os`).
//!
//! ```text
//!  crossway-virtio, crossway-loopback, crossway-proxy, crossway-agent
//!        └──▶ fdpass (SCM_RIGHTS on Unix streams) · memfd (sealed memfds)
//!             · eventfd (wake a poll loop) · page_size
//! ```
//!
//! [`fdpass`] passes descriptors, blocking (whole buffers) or not (one `sendmsg`, and the
//! queue the relays send from), and refuses truncated control messages; [`memfd`] makes
//! sealed memfds and reads their seals; [`eventfd`] makes, wakes and drains eventfds.
//! Everything goes through rustix; the one `unsafe` block left borrows a raw fd number the
//! vhost crate lends ([`fdpass::dup_raw`]).

pub mod eventfd;
pub mod fdpass;
pub mod memfd;

/// The size of a memory page (from the auxiliary vector, no system call).
pub fn page_size() -> usize {
    rustix::param::page_size()
}
