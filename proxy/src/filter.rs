//! `crossway-proxy filter`: the relay on a plain Wayland socket, for VMMs with a built-in
//! cross-domain host (crosvm `--wayland-sock`, libkrun).
//!
//! Skeleton: filled in by the socket-front issue.
