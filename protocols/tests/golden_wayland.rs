//! Wayland messages as bytes written by hand from the wire-format chapter of the Wayland
//! book (header: object id, then `size << 16 | opcode`; arguments padded to 4 bytes), checked
//! against both the decoder and the encoder. The bytes are little-endian: these tests describe
//! the wire as x86_64 and aarch64 hosts see it.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is the test failure
#![cfg(target_endian = "little")]

use crossway_protocols::objects::{ObjectMap, Side};
use crossway_protocols::tables::{Direction, ProtocolTable, message_desc};
use crossway_protocols::wire::{Arg, Fixed, Message, ObjectId, WireError, encode};

fn id(n: u32) -> ObjectId {
    ObjectId::new(n).unwrap()
}

/// Decodes `bytes` as `interface.message` and checks the arguments, then encodes `expected`
/// and checks the bytes come back.
fn golden(interface: &str, dir: Direction, bytes: &[u8], fds: usize, expected: &[Arg<'_>]) {
    let iface = ProtocolTable::builtin().get(interface).unwrap();
    let msg = Message::parse(bytes).unwrap();
    let desc = message_desc(iface, dir, msg.header.opcode, iface.version).unwrap();
    let args = msg.decode(desc.signature, fds).unwrap();
    assert_eq!(args.as_slice(), expected, "{interface}.{}", desc.name);
    let mut out = vec![];
    encode(
        &mut out,
        msg.header.object,
        msg.header.opcode,
        desc.signature,
        expected,
    )
    .unwrap();
    assert_eq!(out, bytes, "{interface}.{} re-encoded", desc.name);
}

#[test]
fn registry_bind_with_string_interface_and_new_id() {
    #[rustfmt::skip]
    let bytes = [
        0x02, 0, 0, 0,   0x00, 0x00, 0x28, 0x00,          // wl_registry@2, opcode 0, 40 bytes
        0x01, 0, 0, 0,                                    // name 1
        0x0e, 0, 0, 0,   b'w', b'l', b'_', b'c',          // "wl_compositor\0" (14) + 2 pad
        b'o', b'm', b'p', b'o', b's', b'i', b't', b'o',
        b'r', 0, 0, 0,
        0x04, 0, 0, 0,                                    // version 4
        0x03, 0, 0, 0,                                    // new id 3
    ];
    golden(
        "wl_registry",
        Direction::Request,
        &bytes,
        0,
        &[
            Arg::Uint(1),
            Arg::Str(Some(c"wl_compositor")),
            Arg::Uint(4),
            Arg::NewId(id(3)),
        ],
    );
}

#[test]
fn surface_attach_with_negative_offset() {
    #[rustfmt::skip]
    let bytes = [
        0x04, 0, 0, 0,   0x01, 0x00, 0x14, 0x00,          // wl_surface@4, opcode 1, 20 bytes
        0x05, 0, 0, 0,                                    // buffer 5
        0xff, 0xff, 0xff, 0xff,                           // x = -1
        0x02, 0, 0, 0,                                    // y = 2
    ];
    golden(
        "wl_surface",
        Direction::Request,
        &bytes,
        0,
        &[Arg::Object(Some(id(5))), Arg::Int(-1), Arg::Int(2)],
    );
}

#[test]
fn surface_attach_null_buffer() {
    #[rustfmt::skip]
    let bytes = [
        0x04, 0, 0, 0,   0x01, 0x00, 0x14, 0x00,
        0, 0, 0, 0,   0, 0, 0, 0,   0, 0, 0, 0,
    ];
    golden(
        "wl_surface",
        Direction::Request,
        &bytes,
        0,
        &[Arg::Object(None), Arg::Int(0), Arg::Int(0)],
    );
}

#[test]
fn surface_commit_has_no_arguments() {
    let bytes = [0x04, 0, 0, 0, 0x06, 0x00, 0x08, 0x00];
    golden("wl_surface", Direction::Request, &bytes, 0, &[]);
}

#[test]
fn toplevel_configure_event_with_states_array() {
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0, 0, 0,   0x00, 0x00, 0x18, 0x00,          // xdg_toplevel@10, event 0, 24 bytes
        0x80, 0x02, 0, 0,                                 // width 640
        0xe0, 0x01, 0, 0,                                 // height 480
        0x04, 0, 0, 0,   0x04, 0, 0, 0,                   // array of 4 bytes: [activated = 4]
    ];
    golden(
        "xdg_toplevel",
        Direction::Event,
        &bytes,
        0,
        &[Arg::Int(640), Arg::Int(480), Arg::Array(&[4, 0, 0, 0])],
    );
}

#[test]
fn toplevel_set_title_pads_string() {
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0, 0, 0,   0x02, 0x00, 0x10, 0x00,          // xdg_toplevel@10, opcode 2, 16 bytes
        0x03, 0, 0, 0,   b'h', b'i', 0, 0,                // "hi\0" + 1 pad
    ];
    golden(
        "xdg_toplevel",
        Direction::Request,
        &bytes,
        0,
        &[Arg::Str(Some(c"hi"))],
    );
}

#[test]
fn shm_create_pool_carries_fd_out_of_band() {
    #[rustfmt::skip]
    let bytes = [
        0x05, 0, 0, 0,   0x00, 0x00, 0x10, 0x00,          // wl_shm@5, opcode 0, 16 bytes
        0x06, 0, 0, 0,                                    // new id 6
        0x00, 0x10, 0, 0,                                 // size 4096; the fd has no bytes
    ];
    golden(
        "wl_shm",
        Direction::Request,
        &bytes,
        1,
        &[Arg::NewId(id(6)), Arg::Fd, Arg::Int(4096)],
    );
    let msg = Message::parse(&bytes).unwrap();
    let shm = ProtocolTable::builtin().get("wl_shm").unwrap();
    assert_eq!(
        msg.decode(shm.requests[0].signature, 0).unwrap_err(),
        WireError::MissingFds {
            needed: 1,
            available: 0
        }
    );
}

#[test]
fn pointer_motion_fixed_coordinates() {
    #[rustfmt::skip]
    let bytes = [
        0x00, 0x00, 0x00, 0xff,  0x02, 0x00, 0x14, 0x00,  // wl_pointer@0xff000000, event 2
        0xe8, 0x03, 0, 0,                                 // time 1000
        0x80, 0x0a, 0, 0,                                 // x = 10.5
        0x00, 0xfe, 0xff, 0xff,                           // y = -2.0
    ];
    golden(
        "wl_pointer",
        Direction::Event,
        &bytes,
        0,
        &[
            Arg::Uint(1000),
            Arg::Fixed(Fixed(0x0a80)),
            Arg::Fixed(Fixed(-512)),
        ],
    );
    assert_eq!(Fixed(0x0a80).to_f64(), 10.5);
}

#[test]
fn buffer_params_add_with_modifier_halves() {
    #[rustfmt::skip]
    let bytes = [
        0x07, 0, 0, 0,   0x01, 0x00, 0x1c, 0x00,          // zwp_linux_buffer_params_v1@7, add
        0x00, 0, 0, 0,                                    // plane 0
        0x40, 0, 0, 0,                                    // offset 64
        0x00, 0x04, 0, 0,                                 // stride 1024
        0xff, 0xff, 0xff, 0x00,                           // modifier_hi (INVALID)
        0xff, 0xff, 0xff, 0xff,                           // modifier_lo
    ];
    golden(
        "zwp_linux_buffer_params_v1",
        Direction::Request,
        &bytes,
        1,
        &[
            Arg::Fd,
            Arg::Uint(0),
            Arg::Uint(64),
            Arg::Uint(1024),
            Arg::Uint(0x00ff_ffff),
            Arg::Uint(u32::MAX),
        ],
    );
}

#[test]
fn data_offer_accept_null_mime_type() {
    #[rustfmt::skip]
    let bytes = [
        0x00, 0x00, 0x00, 0xff,  0x00, 0x00, 0x10, 0x00,  // wl_data_offer@0xff000000, accept
        0x2a, 0, 0, 0,                                    // serial 42
        0, 0, 0, 0,                                       // null mime type
    ];
    golden(
        "wl_data_offer",
        Direction::Request,
        &bytes,
        0,
        &[Arg::Uint(42), Arg::Str(None)],
    );
}

#[test]
fn display_error_event() {
    #[rustfmt::skip]
    let bytes = [
        0x01, 0, 0, 0,   0x00, 0x00, 0x18, 0x00,          // wl_display@1, event 0, 24 bytes
        0x03, 0, 0, 0,                                    // object 3
        0x01, 0, 0, 0,                                    // code 1
        0x04, 0, 0, 0,   b'b', b'a', b'd', 0,             // "bad\0"
    ];
    golden(
        "wl_display",
        Direction::Event,
        &bytes,
        0,
        &[
            Arg::Object(Some(id(3))),
            Arg::Uint(1),
            Arg::Str(Some(c"bad")),
        ],
    );
}

#[test]
fn dmabuf_feedback_tranche_formats_array() {
    #[rustfmt::skip]
    let bytes = [
        0x09, 0, 0, 0,   0x05, 0x00, 0x10, 0x00,          // feedback@9, event 5 tranche_formats
        0x04, 0, 0, 0,   0x00, 0x00, 0x02, 0x00,          // 4 bytes: u16 indices 0 and 2
    ];
    golden(
        "zwp_linux_dmabuf_feedback_v1",
        Direction::Event,
        &bytes,
        0,
        &[Arg::Array(&[0, 0, 2, 0])],
    );
}

#[test]
fn hand_written_client_stream_builds_object_map() {
    // get_registry(2); bind(1, "wl_compositor", 4, 3); create_surface(4); frame(5)
    #[rustfmt::skip]
    let stream: Vec<u8> = [
        &[0x01, 0, 0, 0, 0x01, 0x00, 0x0c, 0x00, 0x02, 0, 0, 0][..],
        &[0x02, 0, 0, 0, 0x00, 0x00, 0x28, 0x00, 0x01, 0, 0, 0, 0x0e, 0, 0, 0,
          b'w', b'l', b'_', b'c', b'o', b'm', b'p', b'o', b's', b'i', b't', b'o', b'r', 0, 0, 0,
          0x04, 0, 0, 0, 0x03, 0, 0, 0],
        &[0x03, 0, 0, 0, 0x00, 0x00, 0x0c, 0x00, 0x04, 0, 0, 0],
        &[0x04, 0, 0, 0, 0x03, 0x00, 0x0c, 0x00, 0x05, 0, 0, 0],
    ]
    .concat();
    let mut map: ObjectMap = ObjectMap::default();
    let table = ProtocolTable::builtin();
    let mut rest = &stream[..];
    let mut names = vec![];
    while let Some(msg) = crossway_protocols::wire::next_message(rest).unwrap() {
        let p = map.process_request(table, &msg, 0).unwrap();
        names.push(format!("{}.{}", p.interface.name, p.desc.name));
        rest = &rest[msg.len()..];
    }
    assert!(rest.is_empty());
    assert_eq!(
        names,
        [
            "wl_display.get_registry",
            "wl_registry.bind",
            "wl_compositor.create_surface",
            "wl_surface.frame"
        ]
    );
    assert_eq!(map.get(id(5)).unwrap().interface.name, "wl_callback");
    assert_eq!(Side::of(id(5)), Side::Client);
}
