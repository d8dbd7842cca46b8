//! Which host globals guest clients see, and at which version.

use super::*;

/// Globals never advertised to guest clients although the tables know them: their requests
/// carry fds the agent cannot turn into anything the host could use (sync files and DRM
/// syncobjs of the guest's kernel, a listening socket, gamma and keymap memfds sent as
/// requests). Advertised, a client that used them (Mesa's WSI takes explicit sync as soon as it
/// is offered) would be disconnected at its first such request; hidden, it falls back.
/// `wp_color_manager_v1` stays: only its `set_icc_file` carries an fd, and parametric image
/// descriptions work.
pub const UNRELAYABLE_GLOBALS: [&str; 5] = [
    "wp_linux_drm_syncobj_manager_v1",
    "zwp_linux_explicit_synchronization_v1",
    "wp_security_context_manager_v1",
    "zwlr_gamma_control_manager_v1",
    "zwp_virtual_keyboard_manager_v1",
];

/// The version a host global is advertised with to guest clients: `None` for interfaces the
/// tables do not know and for [`UNRELAYABLE_GLOBALS`] (never advertised), else at most the
/// tables' version.
pub fn cap_global(interface: &CStr, version: u32) -> Option<u32> {
    let name = interface.to_str().ok()?;
    if UNRELAYABLE_GLOBALS.contains(&name) {
        return None;
    }
    let known = ProtocolTable::builtin().get(name)?;
    Some(version.min(known.version))
}
