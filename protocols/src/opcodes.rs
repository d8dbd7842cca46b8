//! Opcodes of the messages the relays act on, for dispatch on `(interface, opcode)` without
//! comparing names per message. A test checks each one against the protocol tables.

use crate::tables::Direction::{self, Event, Request};

macro_rules! opcodes {
    ($($(#[$doc:meta])* $name:ident = $iface:literal $dir:ident $msg:literal $value:literal;)*) => {
        $($(#[$doc])* pub const $name: u16 = $value;)*

        /// Every constant above as (interface, direction, message name, opcode).
        pub const ALL: &[(&str, Direction, &str, u16)] = &[$(($iface, $dir, $msg, $value),)*];
    };
}

opcodes! {
    /// `wl_display.error`
    DISPLAY_ERROR = "wl_display" Event "error" 0;
    /// `wl_display.delete_id`
    DISPLAY_DELETE_ID = "wl_display" Event "delete_id" 1;
    /// `wl_registry.bind`
    REGISTRY_BIND = "wl_registry" Request "bind" 0;
    /// `wl_registry.global`
    REGISTRY_GLOBAL = "wl_registry" Event "global" 0;
    /// `wl_registry.global_remove`
    REGISTRY_GLOBAL_REMOVE = "wl_registry" Event "global_remove" 1;
    /// `wl_shm.create_pool`
    SHM_CREATE_POOL = "wl_shm" Request "create_pool" 0;
    SHM_RELEASE = "wl_shm" Request "release" 1;
    /// `wl_shm_pool.create_buffer`
    POOL_CREATE_BUFFER = "wl_shm_pool" Request "create_buffer" 0;
    /// `wl_shm_pool.destroy`
    POOL_DESTROY = "wl_shm_pool" Request "destroy" 1;
    /// `wl_shm_pool.resize`
    POOL_RESIZE = "wl_shm_pool" Request "resize" 2;
    /// `wl_buffer.destroy`
    BUFFER_DESTROY = "wl_buffer" Request "destroy" 0;
    /// `wl_surface.destroy`
    SURFACE_DESTROY = "wl_surface" Request "destroy" 0;
    /// `wl_surface.attach`
    SURFACE_ATTACH = "wl_surface" Request "attach" 1;
    /// `wl_surface.damage`
    SURFACE_DAMAGE = "wl_surface" Request "damage" 2;
    /// `wl_surface.commit`
    SURFACE_COMMIT = "wl_surface" Request "commit" 6;
    /// `wl_surface.set_buffer_transform`
    SURFACE_SET_BUFFER_TRANSFORM = "wl_surface" Request "set_buffer_transform" 7;
    /// `wl_surface.set_buffer_scale`
    SURFACE_SET_BUFFER_SCALE = "wl_surface" Request "set_buffer_scale" 8;
    /// `wl_surface.damage_buffer`
    SURFACE_DAMAGE_BUFFER = "wl_surface" Request "damage_buffer" 9;
    /// `wp_viewporter.get_viewport`
    VIEWPORTER_GET_VIEWPORT = "wp_viewporter" Request "get_viewport" 1;
    /// `wp_viewport.destroy`
    VIEWPORT_DESTROY = "wp_viewport" Request "destroy" 0;
    /// `wp_viewport.set_source`
    VIEWPORT_SET_SOURCE = "wp_viewport" Request "set_source" 1;
    /// `wp_viewport.set_destination`
    VIEWPORT_SET_DESTINATION = "wp_viewport" Request "set_destination" 2;
    /// `zwp_linux_dmabuf_v1.create_params`
    DMABUF_CREATE_PARAMS = "zwp_linux_dmabuf_v1" Request "create_params" 1;
    /// `zwp_linux_dmabuf_v1.modifier`
    DMABUF_MODIFIER = "zwp_linux_dmabuf_v1" Event "modifier" 1;
    /// `zwp_linux_buffer_params_v1.destroy`
    PARAMS_DESTROY = "zwp_linux_buffer_params_v1" Request "destroy" 0;
    /// `zwp_linux_buffer_params_v1.add`
    PARAMS_ADD = "zwp_linux_buffer_params_v1" Request "add" 1;
    /// `zwp_linux_buffer_params_v1.create`
    PARAMS_CREATE = "zwp_linux_buffer_params_v1" Request "create" 2;
    /// `zwp_linux_buffer_params_v1.create_immed`
    PARAMS_CREATE_IMMED = "zwp_linux_buffer_params_v1" Request "create_immed" 3;
    /// `zwp_linux_buffer_params_v1.created`
    PARAMS_CREATED = "zwp_linux_buffer_params_v1" Event "created" 0;
    /// `zwp_linux_buffer_params_v1.failed`
    PARAMS_FAILED = "zwp_linux_buffer_params_v1" Event "failed" 1;
    /// `zwp_linux_dmabuf_feedback_v1.destroy`
    FEEDBACK_DESTROY = "zwp_linux_dmabuf_feedback_v1" Request "destroy" 0;
    /// `zwp_linux_dmabuf_feedback_v1.format_table`
    FEEDBACK_FORMAT_TABLE = "zwp_linux_dmabuf_feedback_v1" Event "format_table" 1;
    /// `zwp_linux_dmabuf_feedback_v1.main_device`
    FEEDBACK_MAIN_DEVICE = "zwp_linux_dmabuf_feedback_v1" Event "main_device" 2;
    /// `zwp_linux_dmabuf_feedback_v1.tranche_target_device`
    FEEDBACK_TRANCHE_TARGET_DEVICE =
        "zwp_linux_dmabuf_feedback_v1" Event "tranche_target_device" 4;
    /// `zwp_linux_dmabuf_feedback_v1.tranche_formats`
    FEEDBACK_TRANCHE_FORMATS = "zwp_linux_dmabuf_feedback_v1" Event "tranche_formats" 5;
    /// `wl_output.geometry`
    OUTPUT_GEOMETRY = "wl_output" Event "geometry" 0;
    /// `xdg_surface.get_toplevel`
    XDG_SURFACE_GET_TOPLEVEL = "xdg_surface" Request "get_toplevel" 1;
    /// `xdg_toplevel.set_title`
    TOPLEVEL_SET_TITLE = "xdg_toplevel" Request "set_title" 2;
    /// `xdg_toplevel.set_app_id`
    TOPLEVEL_SET_APP_ID = "xdg_toplevel" Request "set_app_id" 3;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{ProtocolTable, message_desc};

    #[test]
    fn opcodes_match_the_tables() {
        let t = ProtocolTable::builtin();
        for &(iface, dir, name, opcode) in ALL {
            let i = t.get(iface).unwrap();
            let desc = message_desc(i, dir, opcode, i.version).unwrap();
            assert_eq!(desc.name, name, "{iface}.{name}");
        }
    }
}
