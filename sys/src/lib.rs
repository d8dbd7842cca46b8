//! `crossway-sys`: the small operating-system helpers both programs share, each a safe wrapper
//! over one kernel interface, so that no other crate repeats them.
//!
//! ```text
//!  crossway-virtio, crossway-loopback, crossway-proxy, crossway-agent
//!        └──▶ fdpass (SCM_RIGHTS on Unix streams) · memfd (sealed host memory)
//! ```
//!
//! [`fdpass`] sends and receives whole buffers with descriptors riding on their first byte;
//! [`memfd`] makes sealed memfds and reads their seals.

pub mod fdpass;
pub mod memfd;
