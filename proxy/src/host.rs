//! The host compositor as the relay reaches it: where its socket is, and one new connection per
//! guest client.
//!
//! Skeleton: the socket-front issue adds the start-up probe (`HostInfo`: globals, dmabuf
//! feedback) and connections made through `wp_security_context_v1`.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Connects relays to the host compositor.
#[derive(Debug, Clone)]
pub struct HostConnector {
    socket: PathBuf,
}

impl HostConnector {
    /// Connections to the compositor listening on `socket`.
    pub fn new(socket: PathBuf) -> HostConnector {
        HostConnector { socket }
    }

    /// Resolves a display name as libwayland does: absolute paths stay, names are looked up in
    /// `$XDG_RUNTIME_DIR`; `None` means `$WAYLAND_DISPLAY`, then `wayland-0`.
    pub fn from_display(display: Option<&str>) -> io::Result<HostConnector> {
        let name = match display {
            Some(d) => d.to_owned(),
            None => std::env::var("WAYLAND_DISPLAY").unwrap_or_else(|_| "wayland-0".into()),
        };
        if name.starts_with('/') {
            return Ok(HostConnector::new(PathBuf::from(name)));
        }
        let dir = std::env::var_os("XDG_RUNTIME_DIR").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("XDG_RUNTIME_DIR is not set, so the display {name:?} cannot be found"),
            )
        })?;
        Ok(HostConnector::new(Path::new(&dir).join(name)))
    }

    /// The compositor's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new client connection for one guest client.
    pub fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("host compositor at {}: {e}", self.socket.display()),
            )
        })
    }
}
