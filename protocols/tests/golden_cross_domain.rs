//! Cross-domain commands as bytes written by hand from the struct layouts in the reference
//! (rutabaga's `cross_domain_protocol.rs`; all fields little-endian), checked against the
//! decoder, the encoders and the zerocopy structs.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is the test failure

use crossway_protocols::cross_domain::*;
use zerocopy::{FromBytes, IntoBytes};

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn only(buf: &[u8]) -> Command<'_> {
    let mut cmds = Commands::new(buf);
    let cmd = cmds.next().unwrap().unwrap();
    assert!(cmds.next().is_none());
    cmd
}

#[test]
fn capabilities_wayland_only() {
    let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let caps = CrossDomainCapabilities::read_from_bytes(&bytes).unwrap();
    assert_eq!(caps.version.get(), 1);
    assert_eq!(
        caps.supported_channels.get(),
        1 << CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND
    );
    assert_eq!(caps.as_bytes(), &bytes);
}

#[test]
fn init_v0_twenty_bytes() {
    #[rustfmt::skip]
    let bytes = [
        0x01, 0x00, 0x14, 0x00, 0, 0, 0, 0,               // cmd 1, ring_idx 0, cmd_size 20, pad
        0x0a, 0, 0, 0,                                    // query ring resource 10
        0x0b, 0, 0, 0,                                    // channel ring resource 11
        0x01, 0, 0, 0,                                    // channel type Wayland
    ];
    let expected = Command::Init {
        variant: InitVariant::V0,
        query_ring_id: 10,
        channel_ring_id: 11,
        channel_type: CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND,
        protocol_version: None,
        internal_socket_uuid: None,
    };
    assert_eq!(only(&bytes), expected);
    let mut out = vec![];
    encode::init(&mut out, 10, 11, 1);
    assert_eq!(out, bytes);
}

#[test]
fn init_legacy_sixteen_bytes_uses_one_ring() {
    let bytes = [
        0x01, 0x00, 0x10, 0x00, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0x01, 0, 0, 0,
    ];
    let Command::Init {
        variant,
        query_ring_id,
        channel_ring_id,
        ..
    } = only(&bytes)
    else {
        panic!("not an init")
    };
    assert_eq!(
        (variant, query_ring_id, channel_ring_id),
        (InitVariant::Legacy, 10, 10)
    );
}

#[test]
fn init_libkrun_twenty_four_bytes() {
    let mut bytes = vec![0x01, 0x00, 0x18, 0x00, 0, 0, 0, 0];
    bytes.extend(le(&[10, 11, 1, 1]));
    let Command::Init {
        variant,
        protocol_version,
        ..
    } = only(&bytes)
    else {
        panic!()
    };
    assert_eq!((variant, protocol_version), (InitVariant::V1, Some(1)));
}

#[test]
fn init_rutabaga_thirty_six_bytes_with_uuid() {
    let mut bytes = vec![0x01, 0x00, 0x24, 0x00, 0, 0, 0, 0];
    bytes.extend(le(&[10, 11, 0xffff_ffff]));
    bytes.extend(1u128.to_le_bytes());
    let Command::Init {
        variant,
        channel_type,
        internal_socket_uuid,
        ..
    } = only(&bytes)
    else {
        panic!()
    };
    assert_eq!(
        (variant, channel_type, internal_socket_uuid),
        (InitVariant::V2, 0xffff_ffff, Some(1))
    );
}

#[test]
fn init_of_unknown_size_is_rejected() {
    let mut bytes = vec![0x01, 0x00, 0x1c, 0x00, 0, 0, 0, 0];
    bytes.extend(le(&[10, 11, 1, 1, 1]));
    assert_eq!(
        decode_command(&bytes).unwrap_err(),
        CrossDomainError::InitSize(28)
    );
}

#[test]
fn get_image_requirements_xrgb_scanout_linear() {
    #[rustfmt::skip]
    let bytes = [
        0x02, 0x00, 0x18, 0x00, 0, 0, 0, 0,
        0x00, 0x01, 0, 0,                                 // width 256
        0x80, 0x00, 0, 0,                                 // height 128
        b'X', b'R', b'2', b'4',                           // fourcc XR24
        0x11, 0, 0, 0,                                    // SCANOUT | LINEAR
    ];
    let expected = Command::GetImageRequirements {
        width: 256,
        height: 128,
        drm_format: 0x3432_5258,
        flags: gbm_flags::SCANOUT | gbm_flags::LINEAR,
    };
    assert_eq!(only(&bytes), expected);
    let mut out = vec![];
    encode::get_image_requirements(&mut out, 256, 128, 0x3432_5258, 0x11);
    assert_eq!(out, bytes);
}

#[test]
fn image_requirements_reply_layout() {
    let mut bytes = le(&[1024, 0, 0, 0, 0, 0, 0, 0]); // strides, offsets
    bytes.extend(0x0100_0000_0000_0001u64.to_le_bytes()); // modifier
    bytes.extend(131_072u64.to_le_bytes()); // size
    bytes.extend(le(&[2, map_info::CACHE_CACHED]));
    bytes.extend((-1i32).to_le_bytes());
    bytes.extend((-1i32).to_le_bytes());
    assert_eq!(bytes.len(), 64);
    let reply = CrossDomainImageRequirements::read_from_bytes(&bytes).unwrap();
    assert_eq!(reply.strides[0].get(), 1024);
    assert_eq!(reply.modifier.get(), 0x0100_0000_0000_0001);
    assert_eq!(reply.size.get(), 131_072);
    assert_eq!(reply.blob_id.get(), 2);
    assert_eq!(reply.memory_idx.get(), -1);
    assert_eq!(reply.as_bytes(), &bytes[..]);
}

#[test]
fn poll_sixteen_bytes() {
    let bytes = [0x03, 0x00, 0x10, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(only(&bytes), Command::Poll);
    let mut out = vec![];
    encode::poll(&mut out);
    assert_eq!(out, bytes);
}

#[test]
fn send_current_layout_one_blob() {
    // 352-byte header + 8 data bytes = 360 = 0x168.
    let mut bytes = vec![0x04, 0x00, 0x68, 0x01, 0, 0, 0, 0];
    bytes.extend(le(&[1, 8])); // num_identifiers, opaque_data_size
    bytes.extend(le(&[7])); // identifiers[0] @16
    bytes.resize(128, 0);
    bytes.extend(le(&[CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB])); // identifier_types[0] @128
    bytes.resize(352, 0);
    bytes.extend([0x04, 0, 0, 0, 0x06, 0x00, 0x08, 0x00]); // wl_surface@4.commit
    let Command::Send {
        legacy_layout,
        identifiers,
        data,
    } = only(&bytes)
    else {
        panic!()
    };
    assert!(!legacy_layout);
    assert_eq!(
        identifiers.as_slice(),
        &[Identifier {
            id: 7,
            id_type: 1,
            size: 0
        }]
    );
    assert_eq!(data, &bytes[352..]);
    let mut out = vec![];
    encode::send(&mut out, &identifiers, data).unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn send_legacy_layout_four_identifiers() {
    // 64-byte header + 4 data bytes = 68 = 0x44.
    let mut bytes = vec![0x04, 0x00, 0x44, 0x00, 0, 0, 0, 0];
    bytes.extend(le(&[
        1,
        4,
        0x8000_0001,
        0,
        0,
        0,
        CROSS_DOMAIN_ID_TYPE_READ_PIPE,
        0,
        0,
        0,
    ]));
    bytes.resize(64, 0);
    bytes.extend([1, 2, 3, 4]);
    let Command::Send {
        legacy_layout,
        identifiers,
        data,
    } = only(&bytes)
    else {
        panic!()
    };
    assert!(legacy_layout);
    assert_eq!(
        identifiers[0],
        Identifier {
            id: 0x8000_0001,
            id_type: 3,
            size: 0
        }
    );
    assert_eq!(data, &[1, 2, 3, 4]);
}

#[test]
fn send_with_twenty_nine_identifiers_is_rejected() {
    let mut bytes = vec![0x04, 0x00, 0x60, 0x01, 0, 0, 0, 0];
    bytes.extend(le(&[29, 0]));
    bytes.resize(352, 0);
    assert_eq!(
        decode_command(&bytes).unwrap_err(),
        CrossDomainError::TooManyIdentifiers { count: 29, max: 28 }
    );
}

#[test]
fn write_with_hang_up() {
    #[rustfmt::skip]
    let bytes = [
        0x07, 0x00, 0x1b, 0x00, 0, 0, 0, 0,               // cmd 7, cmd_size 27
        0x05, 0, 0, 0,                                    // write pipe item 5
        0x01, 0, 0, 0,                                    // hang_up
        0x03, 0, 0, 0,   0, 0, 0, 0,                      // 3 bytes, pad
        b'a', b'b', b'c',
    ];
    assert_eq!(
        only(&bytes),
        Command::Write {
            identifier: 5,
            hang_up: true,
            data: b"abc"
        }
    );
    let mut out = vec![];
    encode::write(&mut out, 5, true, b"abc").unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn batch_walks_cmd_size_with_trailing_slack() {
    // A POLL padded to 24 bytes, then an INIT: the decoder follows cmd_size, not struct size.
    let mut bytes = vec![0x03, 0x00, 0x18, 0x00, 0, 0, 0, 0];
    bytes.resize(24, 0);
    encode::init(&mut bytes, 1, 2, 1);
    let cmds: Vec<_> = Commands::new(&bytes).collect::<Result<_, _>>().unwrap();
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0], Command::Poll);
    assert!(matches!(
        cmds[1],
        Command::Init {
            query_ring_id: 1,
            channel_ring_id: 2,
            ..
        }
    ));
}

#[test]
fn zero_cmd_size_stops_the_batch() {
    let bytes = [0x03, 0x00, 0x00, 0x00, 0, 0, 0, 0];
    let results: Vec<_> = Commands::new(&bytes).collect();
    assert_eq!(results.len(), 1);
    assert!(matches!(
        results[0],
        Err(CrossDomainError::SizeTooSmall { cmd_size: 0, .. })
    ));
}

#[test]
fn receive_ring_message_keeps_header_bytes_one_to_seven_zero() {
    let mut identifiers = Identifiers::new();
    identifiers.push(Identifier {
        id: 2,
        id_type: CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB,
        size: 4096,
    });
    let mut ring = [0xaau8; 4096];
    let n = RingMessage::Receive {
        identifiers,
        data: b"wxyz",
    }
    .encode(&mut ring)
    .unwrap();
    assert_eq!(n, 356);
    assert_eq!(&ring[..8], &[5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&ring[8..20], &le(&[1, 4, 2])[..]);
    assert_eq!(&ring[128..132], &le(&[1])[..]);
    assert_eq!(&ring[240..244], &le(&[4096])[..]);
    assert_eq!(&ring[352..356], b"wxyz");
}

#[test]
fn read_ring_message_layout() {
    let mut ring = [0u8; 4096];
    let n = RingMessage::Read {
        identifier: 0x8000_0001,
        hang_up: true,
        data: &[],
    }
    .encode(&mut ring)
    .unwrap();
    #[rustfmt::skip]
    let expected = [
        0x06, 0, 0, 0, 0, 0, 0, 0,
        0x01, 0, 0, 0x80,                                 // pipe 0x80000001
        0x01, 0, 0, 0,                                    // hang_up
        0, 0, 0, 0,   0, 0, 0, 0,                         // no data, pad
    ];
    assert_eq!(&ring[..n], &expected);
    assert_eq!(
        RingMessage::decode(&ring).unwrap(),
        RingMessage::Read {
            identifier: 0x8000_0001,
            hang_up: true,
            data: &[]
        }
    );
}

#[test]
fn receive_of_more_than_3744_bytes_is_refused() {
    let mut ring = [0u8; 4096];
    let data = vec![0; 3745];
    assert_eq!(
        RingMessage::Receive {
            identifiers: Identifiers::new(),
            data: &data
        }
        .encode(&mut ring),
        Err(RingError::TooMuchData {
            len: 3745,
            max: 3744
        })
    );
}

#[test]
fn read_pipe_ids_start_after_0x80000000() {
    let mut ids = PipeIds::default();
    assert_eq!(ids.next_id(), 0x8000_0001);
    assert_eq!(ids.next_id(), 0x8000_0002);
}
