//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use std::sync::LazyLock;

use crossway_protocols::tables::{Direction, Interface, MessageDesc, ProtocolTable};
use crossway_protocols::wire::{Arg, HEADER_SIZE, padded};

/// One message of the built-in tables: interface, direction, opcode and its description.
#[derive(Debug, Clone, Copy)]
pub struct Selected {
    /// The interface.
    pub interface: &'static Interface,
    /// Request or event.
    pub direction: Direction,
    /// Index in the interface's requests or events.
    pub opcode: u16,
    /// Its description (signature, since, ...).
    pub desc: &'static MessageDesc,
}

/// Every (interface, direction, opcode) of `ProtocolTable::builtin()`, in a deterministic order
/// (interfaces sorted by name, then requests, then events), so that an input always picks the
/// same signature (wayland-rs #184: fix the signature first, then fuzz the body).
pub fn all_messages() -> &'static [Selected] {
    static ALL: LazyLock<Vec<Selected>> = LazyLock::new(|| {
        let mut interfaces: Vec<_> = ProtocolTable::builtin().interfaces().collect();
        interfaces.sort_by_key(|i| i.name);
        let mut all = vec![];
        for interface in interfaces {
            for (direction, list) in [
                (Direction::Request, interface.requests),
                (Direction::Event, interface.events),
            ] {
                for (opcode, desc) in list.iter().enumerate() {
                    all.push(Selected {
                        interface,
                        direction,
                        opcode: opcode as u16,
                        desc,
                    });
                }
            }
        }
        all
    });
    &ALL
}

/// `message` (header included) with the padding bytes after each string and array zeroed, as
/// `wire::encode` writes them, and whether any of them was not zero.
///
/// The decoder does not look at padding bytes (neither does libwayland), so a decode/encode round
/// trip reproduces the input exactly except there.
pub fn zero_padding(message: &[u8], args: &[Arg<'_>]) -> (Vec<u8>, bool) {
    let mut out = message.to_vec();
    let mut nonzero = false;
    let mut pos = HEADER_SIZE;
    for arg in args {
        let content = match arg {
            Arg::Fd => continue,
            Arg::Str(Some(s)) => s.to_bytes_with_nul().len(),
            Arg::Array(a) => a.len(),
            _ => {
                pos += 4;
                continue;
            }
        };
        pos += 4;
        for b in &mut out[pos + content..pos + padded(content)] {
            nonzero |= *b != 0;
            *b = 0;
        }
        pos += padded(content);
    }
    assert_eq!(pos, message.len(), "arguments do not cover the message");
    (out, nonzero)
}
