//! The cross-domain command decoder (a guest's `SUBMIT_3D` batch) and the ring message decoder
//! (a host's channel ring page), on the same input.

#![no_main]

use crossway_protocols::cross_domain::{
    CROSS_DOMAIN_CMD_ASSIGN_SOCKET_UUID, CROSS_DOMAIN_CMD_FUTEX_NEW, CROSS_DOMAIN_MAX_IDENTIFIERS,
    CROSS_DOMAIN_MAX_IDENTIFIERS_V0, CROSS_DOMAIN_RING_SIZE, Command, Commands, InitVariant,
    RingMessage, decode_command, encode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    commands(data);
    ring(data);
});

/// Whether `inner` lies within `outer`.
fn within(inner: &[u8], outer: &[u8]) -> bool {
    let o = outer.as_ptr_range();
    let i = inner.as_ptr_range();
    o.start <= i.start && i.end <= o.end
}

fn commands(data: &[u8]) {
    let mut iter = Commands::new(data);
    let mut rest = data;
    while let Some(item) = iter.next() {
        // The iterator walks exactly as decode_command does, one cmd_size at a time.
        let direct = decode_command(rest);
        match (&item, &direct) {
            (Ok(a), Ok((b, used))) => {
                assert_eq!(a, b);
                assert!(
                    *used >= 8 && *used <= rest.len(),
                    "cmd_size {used} of {}",
                    rest.len()
                );
                check(a, &rest[..*used]);
                rest = &rest[*used..];
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b);
                // Nothing after an error: where the next command starts is unknown.
                assert!(iter.next().is_none());
                return;
            }
            _ => panic!("iterator gave {item:?}, decode_command {direct:?}"),
        }
    }
    assert!(
        rest.is_empty(),
        "iterator stopped with {} bytes left",
        rest.len()
    );
}

/// Invariants of one decoded command whose bytes (`cmd_size` of them) are `bytes`.
fn check(command: &Command<'_>, bytes: &[u8]) {
    let reencoded = {
        let mut out = vec![];
        match *command {
            Command::Init {
                variant,
                query_ring_id,
                channel_ring_id,
                channel_type,
                protocol_version,
                internal_socket_uuid,
            } => {
                assert_eq!(protocol_version.is_some(), variant == InitVariant::V1);
                assert_eq!(internal_socket_uuid.is_some(), variant == InitVariant::V2);
                if variant == InitVariant::Legacy {
                    assert_eq!(query_ring_id, channel_ring_id);
                }
                let size = match variant {
                    InitVariant::Legacy => 16,
                    InitVariant::V0 => 20,
                    InitVariant::V1 => 24,
                    InitVariant::V2 => 36,
                };
                assert_eq!(bytes.len(), size);
                if variant == InitVariant::V0 {
                    encode::init(&mut out, query_ring_id, channel_ring_id, channel_type);
                }
            }
            Command::GetImageRequirements {
                width,
                height,
                drm_format,
                flags,
            } => encode::get_image_requirements(&mut out, width, height, drm_format, flags),
            Command::Poll => encode::poll(&mut out),
            Command::Send {
                legacy_layout,
                ref identifiers,
                data,
            } => {
                let max = if legacy_layout {
                    CROSS_DOMAIN_MAX_IDENTIFIERS_V0
                } else {
                    CROSS_DOMAIN_MAX_IDENTIFIERS
                };
                assert!(identifiers.len() <= max);
                assert!(within(data, bytes), "SEND data outside its command");
                let header = if legacy_layout { 64 } else { 352 };
                assert!(data.len() + header <= bytes.len());
                // The encoder writes the 28-identifier layout, which holds 288 fewer data bytes
                // in a u16 cmd_size than the legacy one.
                if encode::send(&mut out, identifiers, data).is_err() {
                    assert!(legacy_layout && data.len() > usize::from(u16::MAX) - 352);
                }
            }
            Command::Write {
                identifier,
                hang_up,
                data,
            } => {
                assert!(within(data, bytes), "WRITE data outside its command");
                assert!(data.len() + 24 <= bytes.len());
                encode::write(&mut out, identifier, hang_up, data)
                    .expect("decoded WRITE must re-encode");
            }
            Command::Extension { cmd, bytes: ext } => {
                assert!(
                    (CROSS_DOMAIN_CMD_FUTEX_NEW..=CROSS_DOMAIN_CMD_ASSIGN_SOCKET_UUID)
                        .contains(&cmd)
                );
                assert_eq!(ext, bytes);
                assert_eq!(ext[0], cmd);
            }
        }
        out
    };
    // What the guest-side encoders write decodes to the same command, using all of its bytes.
    if !reencoded.is_empty() {
        let (again, used) = decode_command(&reencoded)
            .unwrap_or_else(|e| panic!("re-encoded {command:?} does not decode: {e}"));
        let expected = match command.clone() {
            Command::Send {
                identifiers, data, ..
            } => Command::Send {
                legacy_layout: false,
                identifiers,
                data,
            },
            other => other,
        };
        assert_eq!(again, expected);
        assert_eq!(used, reencoded.len());
    }
}

fn ring(data: &[u8]) {
    // A ring is one page.
    let page = &data[..data.len().min(CROSS_DOMAIN_RING_SIZE)];
    let Ok(message) = RingMessage::decode(page) else {
        return;
    };
    match &message {
        RingMessage::Receive { identifiers, data } => {
            assert!(identifiers.len() <= CROSS_DOMAIN_MAX_IDENTIFIERS);
            assert!(within(data, page));
        }
        RingMessage::Read { data, .. } => assert!(within(data, page)),
    }
    let mut out = [0u8; CROSS_DOMAIN_RING_SIZE];
    let n = message
        .encode(&mut out)
        .unwrap_or_else(|e| panic!("a message decoded from a page does not fit a page: {e}"));
    assert_eq!(RingMessage::decode(&out[..n]).as_ref(), Ok(&message));
    assert_eq!(RingMessage::decode(&out).as_ref(), Ok(&message));
}
