//! Property tests for every codec: `decode(encode(x)) == x`, and decoding arbitrary bytes
//! returns a value or an error, never a panic.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is the test failure

use std::ffi::CString;

use crossway_protocols::capset::CrosswayCaps;
use crossway_protocols::cross_domain::{
    Command, Commands, Identifier, Identifiers, InitVariant, RingMessage, decode_command, encode,
};
use crossway_protocols::dmabuf::{Feedback, FormatModifier, FormatTable, PreferenceList};
use crossway_protocols::objects::ObjectMap;
use crossway_protocols::tables::{AllowNull, ArgumentType, ProtocolTable};
use crossway_protocols::wire::{self, Arg, Fixed, Message, ObjectId};
use proptest::prelude::*;

/// An argument value that owns its bytes, so strategies can produce it.
#[derive(Debug, Clone)]
enum Owned {
    Int(i32),
    Uint(u32),
    Fixed(i32),
    Str(Option<CString>),
    Object(Option<u32>),
    NewId(u32),
    Array(Vec<u8>),
    Fd,
}

impl Owned {
    fn borrow(&self) -> Arg<'_> {
        match self {
            Owned::Int(v) => Arg::Int(*v),
            Owned::Uint(v) => Arg::Uint(*v),
            Owned::Fixed(v) => Arg::Fixed(Fixed(*v)),
            Owned::Str(s) => Arg::Str(s.as_deref()),
            Owned::Object(o) => Arg::Object(o.and_then(ObjectId::new)),
            Owned::NewId(id) => Arg::NewId(ObjectId::new(*id).unwrap()),
            Owned::Array(a) => Arg::Array(a),
            Owned::Fd => Arg::Fd,
        }
    }

    fn signature(&self) -> ArgumentType {
        match self {
            Owned::Int(_) => ArgumentType::Int,
            Owned::Uint(_) => ArgumentType::Uint,
            Owned::Fixed(_) => ArgumentType::Fixed,
            Owned::Str(s) => ArgumentType::Str(if s.is_none() {
                AllowNull::Yes
            } else {
                AllowNull::No
            }),
            Owned::Object(o) => ArgumentType::Object(if o.is_none() {
                AllowNull::Yes
            } else {
                AllowNull::No
            }),
            Owned::NewId(_) => ArgumentType::NewId,
            Owned::Array(_) => ArgumentType::Array,
            Owned::Fd => ArgumentType::Fd,
        }
    }
}

fn owned_arg() -> impl Strategy<Value = Owned> {
    prop_oneof![
        any::<i32>().prop_map(Owned::Int),
        any::<u32>().prop_map(Owned::Uint),
        any::<i32>().prop_map(Owned::Fixed),
        proptest::option::of(proptest::collection::vec(1u8..=255, 0..40))
            .prop_map(|s| Owned::Str(s.map(|b| CString::new(b).unwrap()))),
        proptest::option::of(1u32..).prop_map(Owned::Object),
        (1u32..).prop_map(Owned::NewId),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Owned::Array),
        Just(Owned::Fd),
    ]
}

fn arg_type() -> impl Strategy<Value = ArgumentType> {
    let null = prop_oneof![Just(AllowNull::Yes), Just(AllowNull::No)];
    prop_oneof![
        Just(ArgumentType::Int),
        Just(ArgumentType::Uint),
        Just(ArgumentType::Fixed),
        null.clone().prop_map(ArgumentType::Str),
        null.prop_map(ArgumentType::Object),
        Just(ArgumentType::NewId),
        Just(ArgumentType::Array),
        Just(ArgumentType::Fd),
    ]
}

fn identifier() -> impl Strategy<Value = Identifier> {
    (any::<u32>(), 1u32..5, any::<u32>()).prop_map(|(id, id_type, size)| Identifier {
        id,
        id_type,
        size,
    })
}

/// Commands that the guest-side encoders produce.
#[derive(Debug, Clone)]
enum OwnedCommand {
    Init(u32, u32, u32),
    Requirements(u32, u32, u32, u32),
    Poll,
    Send(Vec<Identifier>, Vec<u8>),
    Write(u32, bool, Vec<u8>),
}

fn command() -> impl Strategy<Value = OwnedCommand> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(a, b, c)| OwnedCommand::Init(a, b, c)),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(w, h, f, fl)| OwnedCommand::Requirements(w, h, f, fl)),
        Just(OwnedCommand::Poll),
        (
            proptest::collection::vec(identifier(), 0..=28),
            proptest::collection::vec(any::<u8>(), 0..3744)
        )
            .prop_map(|(i, d)| OwnedCommand::Send(i, d)),
        (
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..4072)
        )
            .prop_map(|(i, h, d)| OwnedCommand::Write(i, h, d)),
    ]
}

impl OwnedCommand {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OwnedCommand::Init(q, c, t) => encode::init(out, *q, *c, *t),
            OwnedCommand::Requirements(w, h, f, fl) => {
                encode::get_image_requirements(out, *w, *h, *f, *fl)
            }
            OwnedCommand::Poll => encode::poll(out),
            OwnedCommand::Send(ids, data) => encode::send(out, ids, data).unwrap(),
            OwnedCommand::Write(id, hang_up, data) => {
                encode::write(out, *id, *hang_up, data).unwrap()
            }
        }
    }

    fn matches(&self, cmd: &Command<'_>) -> bool {
        match (self, cmd) {
            (
                OwnedCommand::Init(q, c, t),
                Command::Init {
                    variant: InitVariant::V0,
                    query_ring_id,
                    channel_ring_id,
                    channel_type,
                    ..
                },
            ) => (q, c, t) == (query_ring_id, channel_ring_id, channel_type),
            (
                OwnedCommand::Requirements(w, h, f, fl),
                Command::GetImageRequirements {
                    width,
                    height,
                    drm_format,
                    flags,
                },
            ) => (w, h, f, fl) == (width, height, drm_format, flags),
            (OwnedCommand::Poll, Command::Poll) => true,
            (
                OwnedCommand::Send(ids, d),
                Command::Send {
                    legacy_layout: false,
                    identifiers,
                    data,
                },
            ) => ids.as_slice() == identifiers.as_slice() && d.as_slice() == *data,
            (
                OwnedCommand::Write(i, h, d),
                Command::Write {
                    identifier,
                    hang_up,
                    data,
                },
            ) => (i, h) == (identifier, hang_up) && d.as_slice() == *data,
            _ => false,
        }
    }
}

proptest! {
    #[test]
    fn wayland_decode_of_encode_is_identity(
        object in 1u32..,
        opcode in any::<u16>(),
        args in proptest::collection::vec(owned_arg(), 0..12),
    ) {
        let signature: Vec<_> = args.iter().map(Owned::signature).collect();
        let borrowed: Vec<_> = args.iter().map(Owned::borrow).collect();
        let fds = borrowed.iter().filter(|a| matches!(a, Arg::Fd)).count();
        let mut out = vec![];
        wire::encode(&mut out, ObjectId::new(object).unwrap(), opcode, &signature, &borrowed).unwrap();
        let msg = Message::parse(&out).unwrap();
        prop_assert_eq!(msg.header.object.get(), object);
        prop_assert_eq!(msg.header.opcode, opcode);
        let decoded = msg.decode(&signature, fds).unwrap();
        prop_assert_eq!(decoded.as_slice(), borrowed.as_slice());
        prop_assert_eq!(decoded.fd_count(), fds);
    }

    #[test]
    fn wayland_decode_of_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        signature in proptest::collection::vec(arg_type(), 0..24),
        fds in 0usize..4,
    ) {
        if let Ok(msg) = Message::parse(&bytes) {
            let _ = msg.decode(&signature, fds);
        }
        let _ = wire::decode_args(&bytes, &signature, fds);
        let _ = wire::next_message(&bytes);
    }

    #[test]
    fn wayland_reencode_of_decoded_bytes_is_identity(
        bytes in proptest::collection::vec(any::<u8>(), 0..128),
        signature in proptest::collection::vec(arg_type(), 0..8),
    ) {
        // Whatever decodes must re-encode to a message of the same size that decodes to the
        // same values. Padding contents are not kept: libwayland ignores them, and old
        // libwayland versions sent uninitialised padding, so rejecting it would break clients.
        if let Ok(args) = wire::decode_args(&bytes, &signature, 8) {
            let mut out = vec![];
            wire::encode(&mut out, ObjectId::DISPLAY, 0, &signature, args.as_slice()).unwrap();
            prop_assert_eq!(out.len() - 8, bytes.len());
            let again = wire::decode_args(&out[8..], &signature, 8).unwrap();
            prop_assert_eq!(again.as_slice(), args.as_slice());
        }
    }

    #[test]
    fn object_map_survives_arbitrary_streams(
        stream in proptest::collection::vec(any::<u8>(), 0..512),
        as_events in any::<bool>(),
    ) {
        let mut map: ObjectMap = ObjectMap::new(64);
        let table = ProtocolTable::builtin();
        let mut rest = &stream[..];
        while let Ok(Some(msg)) = wire::next_message(rest) {
            rest = &rest[msg.len()..];
            let result = if as_events {
                map.process_event(table, &msg, 2)
            } else {
                map.process_request(table, &msg, 2)
            };
            if result.is_err() {
                break;
            }
        }
        prop_assert!(map.live() <= 64);
    }

    #[test]
    fn cross_domain_decode_of_encode_is_identity(cmds in proptest::collection::vec(command(), 1..6)) {
        let mut batch = vec![];
        for cmd in &cmds {
            cmd.encode(&mut batch);
        }
        let decoded: Vec<_> = Commands::new(&batch).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(decoded.len(), cmds.len());
        for (want, got) in cmds.iter().zip(&decoded) {
            prop_assert!(want.matches(got), "{:?} decoded as {:?}", want, got);
        }
    }

    #[test]
    fn cross_domain_decode_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        for result in Commands::new(&bytes) {
            let _ = result;
        }
        let _ = decode_command(&bytes);
        let _ = RingMessage::decode(&bytes);
    }

    #[test]
    fn ring_message_decode_of_encode_is_identity(
        ids in proptest::collection::vec(identifier(), 0..=28),
        data in proptest::collection::vec(any::<u8>(), 0..3744),
        read in any::<bool>(),
        hang_up in any::<bool>(),
    ) {
        let msg = if read {
            RingMessage::Read { identifier: ids.first().map_or(0, |i| i.id), hang_up, data: &data }
        } else {
            RingMessage::Receive { identifiers: ids.iter().copied().collect::<Identifiers>(), data: &data }
        };
        let mut ring = vec![0u8; 4096];
        msg.encode(&mut ring).unwrap();
        prop_assert_eq!(RingMessage::decode(&ring).unwrap(), msg);
    }

    #[test]
    fn format_table_and_feedback_round_trip(
        pairs in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<bool>()), 0..64),
        main_device in any::<u64>(),
    ) {
        let mut prefs = PreferenceList::default();
        for (format, modifier, scanout) in pairs {
            prefs.push(FormatModifier { format, modifier }, scanout);
        }
        let fb = Feedback::from_preferences(main_device, &prefs).unwrap();
        let table = FormatTable::from_bytes(fb.table.as_bytes()).unwrap();
        prop_assert_eq!(&table, &fb.table);
        let back = fb.preferences().unwrap();
        // Scanout pairs move to the front; within each group the order is kept.
        let mut expected: Vec<_> = prefs.iter().filter(|p| p.scanout).copied().collect();
        expected.extend(prefs.iter().filter(|p| !p.scanout).copied());
        prop_assert_eq!(back.iter().copied().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn capset_round_trips_and_never_panics(
        flags in any::<u32>(),
        pairs in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<bool>()), 0..64),
        junk in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let formats: PreferenceList = pairs
            .into_iter()
            .map(|(format, modifier, scanout)| crossway_protocols::dmabuf::Preference {
                pair: FormatModifier { format, modifier },
                scanout,
            })
            .collect();
        let caps = CrosswayCaps { flags, formats };
        prop_assert_eq!(CrosswayCaps::from_bytes(&caps.to_bytes()).unwrap(), caps);
        let _ = CrosswayCaps::from_bytes(&junk);
        let _ = FormatTable::from_bytes(&junk);
    }
}
