//! One Wayland message against a fixed signature (wayland-rs #184: fix the signature first).
//!
//! Input: byte 0 and the high 5 bits of byte 1 pick a message of the built-in protocol tables
//! (a 13-bit index, modulo the number of messages, into `crossway_fuzz::all_messages()`, which
//! is sorted by interface name); the low 3 bits of byte 1 give the fds available (0..=4); the
//! rest (cut to a multiple of 4) is the message body. The target builds the header, then checks
//! framing, decoding, and that a successful decode re-encodes to the same bytes.

#![no_main]

use crossway_fuzz::{all_messages, zero_padding};
use crossway_protocols::tables::ArgumentType;
use crossway_protocols::wire::{
    self, Arg, HEADER_SIZE, Header, MAX_MESSAGE_SIZE, Message, ObjectId, WireError,
};
use libfuzzer_sys::fuzz_target;

const SENDER: ObjectId = match ObjectId::new(3) {
    Some(id) => id,
    None => unreachable!(),
};

fuzz_target!(|data: &[u8]| {
    let [b0, b1, body @ ..] = data else { return };
    let all = all_messages();
    if all.is_empty() {
        return;
    }
    let selected = all[(usize::from(*b0) | usize::from(b1 >> 3) << 8) % all.len()];
    let signature = selected.desc.signature;
    let fds = usize::from(b1 & 7) % 5;
    let body_len = (body.len() & !3).min(MAX_MESSAGE_SIZE - HEADER_SIZE);
    let body = &body[..body_len];

    let header = Header {
        object: SENDER,
        opcode: selected.opcode,
        size: (HEADER_SIZE + body.len()) as u16,
    };
    let mut head = [0u8; HEADER_SIZE];
    header.write(&mut head);
    let bytes = [&head[..], body].concat();

    // Framing a well-formed header never fails, and both framings agree.
    let msg = Message::parse(&bytes).expect("a header built to fit must frame");
    assert_eq!(msg.header, header);
    assert_eq!(msg.body, body);
    assert_eq!(wire::next_message(&bytes), Ok(Some(msg)));
    // A stream cut anywhere inside the message is "not yet", never an error or a shorter one.
    let cut = usize::from(*b0) % bytes.len();
    assert_eq!(wire::next_message(&bytes[..cut]), Ok(None));

    let fd_args = signature
        .iter()
        .filter(|t| matches!(t, ArgumentType::Fd))
        .count();
    let args = match msg.decode(signature, fds) {
        Ok(args) => args,
        Err(WireError::MissingFds { needed, available }) => {
            assert!(needed == fds + 1 && needed <= fd_args && available == fds);
            return;
        }
        Err(_) => return,
    };
    assert_eq!(args.len(), signature.len());
    assert_eq!(args.fd_count(), fd_args);
    assert!(args.fd_count() <= fds);
    // More fds queued never changes a successful decode.
    assert_eq!(msg.decode(signature, 4).as_ref(), Ok(&args));

    // Re-encode against the same signature: the same bytes, padding aside (see zero_padding).
    let mut out = vec![];
    let written = wire::encode(
        &mut out,
        SENDER,
        selected.opcode,
        signature,
        args.as_slice(),
    )
    .unwrap_or_else(|e| panic!("decoded arguments do not re-encode: {e}"));
    assert_eq!(written, out.len());
    let (expected, _nonzero_padding) = zero_padding(&bytes, args.as_slice());
    assert_eq!(out, expected, "re-encoding differs from the input");
    let wire_len: usize = args.as_slice().iter().map(Arg::wire_len).sum();
    assert_eq!(HEADER_SIZE + wire_len, bytes.len());

    // And it decodes to the same arguments.
    let again = Message::parse(&out).expect("encoded message must frame");
    assert_eq!(again.decode(signature, fds).as_ref(), Ok(&args));
});
