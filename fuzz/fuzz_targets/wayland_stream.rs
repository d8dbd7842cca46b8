//! A whole Wayland connection through `ObjectMap`, framed with `wire::next_message`.
//!
//! Input: bytes 0..8, a little-endian u64, give each message's direction (bit `i % 64` set:
//! message `i` is an event, `process_event`; clear: a request, `process_request`); byte 8's low
//! 4 bits are the fds received for the whole stream, its high 4 bits the object limit (0: the
//! default); the rest is the byte stream. Processing stops at the first error, as a relay closes the connection.

#![no_main]

use crossway_fuzz::zero_padding;
use crossway_protocols::objects::{DEFAULT_MAX_OBJECTS, ObjectError, ObjectMap, Side};
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::wire::{self, ObjectId};
use libfuzzer_sys::fuzz_target;

/// What the map says about `id`, comparably.
fn state(map: &ObjectMap, id: ObjectId) -> Result<(&'static str, u32), ObjectError> {
    map.get(id).map(|o| (o.interface.name, o.version))
}

fuzz_target!(|data: &[u8]| {
    let [d0, d1, d2, d3, d4, d5, d6, d7, b1, rest @ ..] = data else {
        return;
    };
    let mut stream = rest;
    let directions = u64::from_le_bytes([*d0, *d1, *d2, *d3, *d4, *d5, *d6, *d7]);
    let table = ProtocolTable::builtin();
    let mut fds = usize::from(b1 & 0xf);
    let max_objects = match b1 >> 4 {
        0 => DEFAULT_MAX_OBJECTS,
        n => usize::from(n) + 1,
    };
    let mut map: ObjectMap = ObjectMap::new(max_objects);
    let mut index = 0usize;
    // Stops at a framing error or an incomplete last message.
    while let Ok(Some(msg)) = wire::next_message(stream) {
        let bytes = &stream[..msg.len()];
        let event = directions & (1 << (index % 64)) != 0;
        let sender = msg.header.object;
        let live_before = map.live();
        let before = state(&map, sender);
        let result = if event {
            map.process_event(table, &msg, fds)
        } else {
            map.process_request(table, &msg, fds)
        };
        let p = match result {
            Ok(p) => p,
            Err(e) => {
                // A rejected message changes nothing.
                assert_eq!(
                    map.live(),
                    live_before,
                    "rejected message changed the map: {e}"
                );
                assert_eq!(
                    state(&map, sender),
                    before,
                    "rejected message changed its sender: {e}"
                );
                break;
            }
        };
        assert!(map.live() <= max_objects);
        assert!(!(p.destroyed && p.to_zombie));
        if !p.to_zombie {
            assert_eq!(before, Ok((p.interface.name, p.version)));
        }

        // The fds the message takes come off the queue.
        assert!(p.args.fd_count() <= fds);
        fds -= p.args.fd_count();

        // A created object is alive with the interface reported.
        if let Some((id, interface)) = p.created {
            assert_ne!(id, sender);
            let created = map.get(id).expect("created object is alive");
            assert_eq!(created.interface.name, interface.name);
            let side = if event { Side::Server } else { Side::Client };
            assert_eq!(Side::of(id), side);
        }
        // A destroyed sender is gone: reserved until delete_id (client ids) or freed (server).
        if p.destroyed {
            match (Side::of(sender), map.get(sender)) {
                (Side::Client, Err(ObjectError::DestroyedObject(id)))
                | (Side::Server, Err(ObjectError::UnknownObject(id))) => assert_eq!(id, sender),
                (side, other) => panic!("destroyed {side:?} object {sender} is {other:?}"),
            }
        } else if !p.to_zombie {
            assert!(map.get(sender).is_ok());
        }

        // What the relay forwards: the arguments re-encode to the message, padding aside.
        let mut out = vec![];
        wire::encode(
            &mut out,
            sender,
            msg.header.opcode,
            p.desc.signature,
            p.args.as_slice(),
        )
        .unwrap_or_else(|e| panic!("processed arguments do not re-encode: {e}"));
        assert_eq!(out, zero_padding(bytes, p.args.as_slice()).0);

        stream = &stream[msg.len()..];
        index += 1;
    }
});
