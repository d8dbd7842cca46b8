//! Protocol tables: every interface that the `wayland-protocols`, `wayland-protocols-wlr` and
//! `wayland-protocols-misc` crates generate, looked up by name.
//!
//! The tables are the crates' own `wayland_backend::protocol::Interface` descriptions (message
//! signatures, `since`, destructors, child interfaces); nothing here restates protocol XML. The
//! registry starts from each protocol's globals and walks every `new_id` child and object
//! argument interface, so interfaces that are only ever created by another object are found too.

use std::collections::HashMap;
use std::sync::LazyLock;

use wayland_backend::protocol::ANONYMOUS_INTERFACE;
pub use wayland_backend::protocol::{AllowNull, ArgumentType, Interface, MessageDesc};
use wayland_client::Proxy;

/// Whether a message travels from client to server or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Request,
    /// Server to client.
    Event,
}

impl Direction {
    /// "request" or "event".
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Event => "event",
        }
    }
}

/// A message that the tables cannot describe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The opcode is past the interface's list of requests or events.
    #[error("{interface} has no {} with opcode {opcode}", direction.as_str())]
    UnknownOpcode {
        /// Interface name.
        interface: &'static str,
        /// Request or event.
        direction: Direction,
        /// The opcode.
        opcode: u16,
    },
    /// The message exists only in a later version than the object has.
    #[error("{interface}.{message} needs version {since}, the object has version {version}")]
    VersionTooLow {
        /// Interface name.
        interface: &'static str,
        /// Message name.
        message: &'static str,
        /// Version that introduced the message.
        since: u32,
        /// Version of the object.
        version: u32,
    },
}

/// Describes `opcode` of `interface` in `direction`, checking it exists at `version`.
pub fn message_desc(
    interface: &'static Interface,
    direction: Direction,
    opcode: u16,
    version: u32,
) -> Result<&'static MessageDesc, TableError> {
    let list = match direction {
        Direction::Request => interface.requests,
        Direction::Event => interface.events,
    };
    let desc = list
        .get(usize::from(opcode))
        .ok_or(TableError::UnknownOpcode {
            interface: interface.name,
            direction,
            opcode,
        })?;
    if desc.since > version {
        return Err(TableError::VersionTooLow {
            interface: interface.name,
            message: desc.name,
            since: desc.since,
            version,
        });
    }
    Ok(desc)
}

/// Whether two interface descriptions are the same interface.
///
/// The client and server code generators emit separate statics, so compare by name.
pub fn same_interface(a: &Interface, b: &Interface) -> bool {
    std::ptr::eq(a, b) || a.name == b.name
}

/// All known interfaces by name.
#[derive(Debug)]
pub struct ProtocolTable {
    by_name: HashMap<&'static str, &'static Interface>,
    globals: Vec<&'static Interface>,
}

impl ProtocolTable {
    /// The table of every interface the protocol crates describe.
    pub fn builtin() -> &'static ProtocolTable {
        static TABLE: LazyLock<ProtocolTable> =
            LazyLock::new(|| ProtocolTable::from_roots(roots()));
        &TABLE
    }

    /// Builds a table from root interfaces and everything reachable from them.
    pub fn from_roots(roots: Vec<&'static Interface>) -> ProtocolTable {
        let mut by_name = HashMap::new();
        let mut stack = roots.clone();
        while let Some(iface) = stack.pop() {
            if std::ptr::eq(iface, &ANONYMOUS_INTERFACE) || by_name.contains_key(iface.name) {
                continue;
            }
            by_name.insert(iface.name, iface);
            for desc in iface.requests.iter().chain(iface.events) {
                stack.extend(desc.child_interface);
                stack.extend(desc.arg_interfaces.iter().copied());
            }
        }
        ProtocolTable {
            by_name,
            globals: roots,
        }
    }

    /// Looks an interface up by its protocol name.
    pub fn get(&self, name: &str) -> Option<&'static Interface> {
        self.by_name.get(name).copied()
    }

    /// Every known interface, in no particular order.
    pub fn interfaces(&self) -> impl Iterator<Item = &'static Interface> + '_ {
        self.by_name.values().copied()
    }

    /// The interfaces that compositors advertise as globals (plus `wl_display`).
    pub fn globals(&self) -> &[&'static Interface] {
        &self.globals
    }

    /// Number of interfaces.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the table is empty (never, for the built-in one).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The global interface of each protocol the crates generate, found once by listing the
/// interfaces of each protocol that no `new_id` creates.
macro_rules! roots {
    ($($ty:path,)*) => {
        vec![$(<$ty as Proxy>::interface(),)*]
    };
}

fn roots() -> Vec<&'static Interface> {
    use wayland_client::protocol as core;
    roots![
        core::wl_display::WlDisplay,
        core::wl_compositor::WlCompositor,
        core::wl_subcompositor::WlSubcompositor,
        core::wl_shm::WlShm,
        core::wl_seat::WlSeat,
        core::wl_output::WlOutput,
        core::wl_data_device_manager::WlDataDeviceManager,
        core::wl_shell::WlShell,
        core::wl_fixes::WlFixes,
        wayland_protocols::ext::idle_notify::v1::client::ext_idle_notifier_v1::ExtIdleNotifierV1,
        wayland_protocols::ext::session_lock::v1::client::ext_session_lock_manager_v1::ExtSessionLockManagerV1,
        wayland_protocols::ext::foreign_toplevel_list::v1::client::ext_foreign_toplevel_list_v1::ExtForeignToplevelListV1,
        wayland_protocols::ext::transient_seat::v1::client::ext_transient_seat_manager_v1::ExtTransientSeatManagerV1,
        wayland_protocols::ext::image_capture_source::v1::client::ext_output_image_capture_source_manager_v1::ExtOutputImageCaptureSourceManagerV1,
        wayland_protocols::ext::image_capture_source::v1::client::ext_foreign_toplevel_image_capture_source_manager_v1::ExtForeignToplevelImageCaptureSourceManagerV1,
        wayland_protocols::ext::image_copy_capture::v1::client::ext_image_copy_capture_manager_v1::ExtImageCopyCaptureManagerV1,
        wayland_protocols::ext::data_control::v1::client::ext_data_control_manager_v1::ExtDataControlManagerV1,
        wayland_protocols::ext::workspace::v1::client::ext_workspace_manager_v1::ExtWorkspaceManagerV1,
        wayland_protocols::ext::background_effect::v1::client::ext_background_effect_manager_v1::ExtBackgroundEffectManagerV1,
        wayland_protocols::wp::content_type::v1::client::wp_content_type_manager_v1::WpContentTypeManagerV1,
        wayland_protocols::wp::color_management::v1::client::wp_color_manager_v1::WpColorManagerV1,
        wayland_protocols::wp::color_management::v1::client::wp_image_description_reference_v1::WpImageDescriptionReferenceV1,
        wayland_protocols::wp::color_representation::v1::client::wp_color_representation_manager_v1::WpColorRepresentationManagerV1,
        wayland_protocols::wp::drm_lease::v1::client::wp_drm_lease_device_v1::WpDrmLeaseDeviceV1,
        wayland_protocols::wp::tearing_control::v1::client::wp_tearing_control_manager_v1::WpTearingControlManagerV1,
        wayland_protocols::wp::fractional_scale::v1::client::wp_fractional_scale_manager_v1::WpFractionalScaleManagerV1,
        wayland_protocols::wp::fullscreen_shell::zv1::client::zwp_fullscreen_shell_v1::ZwpFullscreenShellV1,
        wayland_protocols::wp::idle_inhibit::zv1::client::zwp_idle_inhibit_manager_v1::ZwpIdleInhibitManagerV1,
        wayland_protocols::wp::input_method::zv1::client::zwp_input_method_v1::ZwpInputMethodV1,
        wayland_protocols::wp::input_method::zv1::client::zwp_input_panel_v1::ZwpInputPanelV1,
        wayland_protocols::wp::input_timestamps::zv1::client::zwp_input_timestamps_manager_v1::ZwpInputTimestampsManagerV1,
        wayland_protocols::wp::keyboard_shortcuts_inhibit::zv1::client::zwp_keyboard_shortcuts_inhibit_manager_v1::ZwpKeyboardShortcutsInhibitManagerV1,
        wayland_protocols::wp::linux_dmabuf::zv1::client::zwp_linux_dmabuf_v1::ZwpLinuxDmabufV1,
        wayland_protocols::wp::linux_explicit_synchronization::zv1::client::zwp_linux_explicit_synchronization_v1::ZwpLinuxExplicitSynchronizationV1,
        wayland_protocols::wp::linux_drm_syncobj::v1::client::wp_linux_drm_syncobj_manager_v1::WpLinuxDrmSyncobjManagerV1,
        wayland_protocols::wp::pointer_constraints::zv1::client::zwp_pointer_constraints_v1::ZwpPointerConstraintsV1,
        wayland_protocols::wp::pointer_gestures::zv1::client::zwp_pointer_gestures_v1::ZwpPointerGesturesV1,
        wayland_protocols::wp::presentation_time::client::wp_presentation::WpPresentation,
        wayland_protocols::wp::primary_selection::zv1::client::zwp_primary_selection_device_manager_v1::ZwpPrimarySelectionDeviceManagerV1,
        wayland_protocols::wp::relative_pointer::zv1::client::zwp_relative_pointer_manager_v1::ZwpRelativePointerManagerV1,
        wayland_protocols::wp::single_pixel_buffer::v1::client::wp_single_pixel_buffer_manager_v1::WpSinglePixelBufferManagerV1,
        wayland_protocols::wp::cursor_shape::v1::client::wp_cursor_shape_manager_v1::WpCursorShapeManagerV1,
        wayland_protocols::wp::tablet::zv1::client::zwp_tablet_manager_v1::ZwpTabletManagerV1,
        wayland_protocols::wp::tablet::zv2::client::zwp_tablet_manager_v2::ZwpTabletManagerV2,
        wayland_protocols::wp::text_input::zv1::client::zwp_text_input_manager_v1::ZwpTextInputManagerV1,
        wayland_protocols::wp::text_input::zv3::client::zwp_text_input_manager_v3::ZwpTextInputManagerV3,
        wayland_protocols::wp::viewporter::client::wp_viewporter::WpViewporter,
        wayland_protocols::wp::security_context::v1::client::wp_security_context_manager_v1::WpSecurityContextManagerV1,
        wayland_protocols::wp::alpha_modifier::v1::client::wp_alpha_modifier_v1::WpAlphaModifierV1,
        wayland_protocols::wp::fifo::v1::client::wp_fifo_manager_v1::WpFifoManagerV1,
        wayland_protocols::wp::commit_timing::v1::client::wp_commit_timing_manager_v1::WpCommitTimingManagerV1,
        wayland_protocols::wp::pointer_warp::v1::client::wp_pointer_warp_v1::WpPointerWarpV1,
        wayland_protocols::xdg::activation::v1::client::xdg_activation_v1::XdgActivationV1,
        wayland_protocols::xdg::decoration::zv1::client::zxdg_decoration_manager_v1::ZxdgDecorationManagerV1,
        wayland_protocols::xdg::foreign::zv1::client::zxdg_exporter_v1::ZxdgExporterV1,
        wayland_protocols::xdg::foreign::zv1::client::zxdg_importer_v1::ZxdgImporterV1,
        wayland_protocols::xdg::foreign::zv2::client::zxdg_exporter_v2::ZxdgExporterV2,
        wayland_protocols::xdg::foreign::zv2::client::zxdg_importer_v2::ZxdgImporterV2,
        wayland_protocols::xdg::xdg_output::zv1::client::zxdg_output_manager_v1::ZxdgOutputManagerV1,
        wayland_protocols::xdg::shell::client::xdg_wm_base::XdgWmBase,
        wayland_protocols::xdg::toplevel_drag::v1::client::xdg_toplevel_drag_manager_v1::XdgToplevelDragManagerV1,
        wayland_protocols::xdg::dialog::v1::client::xdg_wm_dialog_v1::XdgWmDialogV1,
        wayland_protocols::xdg::toplevel_icon::v1::client::xdg_toplevel_icon_manager_v1::XdgToplevelIconManagerV1,
        wayland_protocols::xdg::toplevel_tag::v1::client::xdg_toplevel_tag_manager_v1::XdgToplevelTagManagerV1,
        wayland_protocols::xdg::system_bell::v1::client::xdg_system_bell_v1::XdgSystemBellV1,
        wayland_protocols::xwayland::shell::v1::client::xwayland_shell_v1::XwaylandShellV1,
        wayland_protocols::xwayland::keyboard_grab::zv1::client::zwp_xwayland_keyboard_grab_manager_v1::ZwpXwaylandKeyboardGrabManagerV1,
        wayland_protocols_wlr::data_control::v1::client::zwlr_data_control_manager_v1::ZwlrDataControlManagerV1,
        wayland_protocols_wlr::export_dmabuf::v1::client::zwlr_export_dmabuf_manager_v1::ZwlrExportDmabufManagerV1,
        wayland_protocols_wlr::foreign_toplevel::v1::client::zwlr_foreign_toplevel_manager_v1::ZwlrForeignToplevelManagerV1,
        wayland_protocols_wlr::gamma_control::v1::client::zwlr_gamma_control_manager_v1::ZwlrGammaControlManagerV1,
        wayland_protocols_wlr::input_inhibitor::v1::client::zwlr_input_inhibit_manager_v1::ZwlrInputInhibitManagerV1,
        wayland_protocols_wlr::layer_shell::v1::client::zwlr_layer_shell_v1::ZwlrLayerShellV1,
        wayland_protocols_wlr::output_management::v1::client::zwlr_output_manager_v1::ZwlrOutputManagerV1,
        wayland_protocols_wlr::output_power_management::v1::client::zwlr_output_power_manager_v1::ZwlrOutputPowerManagerV1,
        wayland_protocols_wlr::screencopy::v1::client::zwlr_screencopy_manager_v1::ZwlrScreencopyManagerV1,
        wayland_protocols_wlr::virtual_pointer::v1::client::zwlr_virtual_pointer_manager_v1::ZwlrVirtualPointerManagerV1,
        wayland_protocols_misc::gtk_primary_selection::client::gtk_primary_selection_device_manager::GtkPrimarySelectionDeviceManager,
        wayland_protocols_misc::zwp_input_method_v2::client::zwp_input_method_manager_v2::ZwpInputMethodManagerV2,
        wayland_protocols_misc::zwp_virtual_keyboard_v1::client::zwp_virtual_keyboard_manager_v1::ZwpVirtualKeyboardManagerV1,
        wayland_protocols_misc::server_decoration::client::org_kde_kwin_server_decoration_manager::OrgKdeKwinServerDecorationManager,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MAX_ARGS;

    #[test]
    fn builtin_finds_children_by_walking() {
        let table = ProtocolTable::builtin();
        for name in [
            "wl_surface",
            "wl_callback",
            "xdg_toplevel",
            "xdg_popup",
            "wl_data_offer",
            "zwp_linux_buffer_params_v1",
            "zwp_linux_dmabuf_feedback_v1",
            "wl_buffer",
        ] {
            assert!(table.get(name).is_some(), "{name} missing");
        }
        assert!(table.len() > 150, "only {} interfaces", table.len());
    }

    #[test]
    fn builtin_names_are_unique_descriptions() {
        let table = ProtocolTable::builtin();
        for iface in table.interfaces() {
            assert_eq!(
                table.get(iface.name).unwrap().version,
                iface.version,
                "{}",
                iface.name
            );
        }
    }

    #[test]
    fn builtin_signatures_fit_the_decoder() {
        for iface in ProtocolTable::builtin().interfaces() {
            for desc in iface.requests.iter().chain(iface.events) {
                assert!(
                    desc.signature.len() <= MAX_ARGS,
                    "{}.{}",
                    iface.name,
                    desc.name
                );
            }
        }
    }

    #[test]
    fn message_desc_checks_opcode_and_version() {
        let surface = ProtocolTable::builtin().get("wl_surface").unwrap();
        assert_eq!(
            message_desc(surface, Direction::Request, 1, 1)
                .unwrap()
                .name,
            "attach"
        );
        assert_eq!(
            message_desc(surface, Direction::Request, 99, 6).unwrap_err(),
            TableError::UnknownOpcode {
                interface: "wl_surface",
                direction: Direction::Request,
                opcode: 99
            }
        );
        // damage_buffer arrived in version 4.
        assert!(matches!(
            message_desc(surface, Direction::Request, 9, 3),
            Err(TableError::VersionTooLow {
                since: 4,
                version: 3,
                ..
            })
        ));
    }

    #[test]
    fn registry_bind_is_the_untyped_new_id_form() {
        let registry = ProtocolTable::builtin().get("wl_registry").unwrap();
        let bind = &registry.requests[0];
        assert_eq!(bind.name, "bind");
        assert!(bind.child_interface.is_none());
        assert_eq!(bind.signature.len(), 4);
    }
}
