//! The Wayland wire format: message framing, argument decoding in place over the received
//! bytes, and encoding.
//!
//! A message is an 8-byte header (sender object id, then `size << 16 | opcode`, both in the
//! host's byte order) followed by its arguments, each padded to 4 bytes. File descriptors travel
//! out of band (`SCM_RIGHTS`) in the order of the message's `fd` arguments, so decoding only
//! counts them; the caller pops that many from its queue of received fds.
//!
//! Decoding never copies or allocates: [`Arg::Str`] and [`Arg::Array`] borrow the input. Every
//! length read from the wire is checked against the message before it is used.

use std::ffi::CStr;
use std::fmt;
use std::num::NonZeroU32;

use arrayvec::ArrayVec;
use wayland_backend::protocol::{AllowNull, ArgumentType};

/// Size of the message header.
pub const HEADER_SIZE: usize = 8;

/// Largest message the header can describe (its size field is 16 bits).
pub const MAX_MESSAGE_SIZE: usize = u16::MAX as usize & !3;

/// Most arguments a decoded message can hold. Every message of the built-in protocol tables fits
/// (checked by a test); a longer signature is refused with [`WireError::TooManyArguments`].
pub const MAX_ARGS: usize = 20;

/// A Wayland object id that is not null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(NonZeroU32);

impl ObjectId {
    /// `wl_display`, the one object that exists from the start.
    pub const DISPLAY: ObjectId = ObjectId(NonZeroU32::MIN);

    /// Returns `None` for the null id 0.
    pub const fn new(id: u32) -> Option<ObjectId> {
        match NonZeroU32::new(id) {
            Some(id) => Some(ObjectId(id)),
            None => None,
        }
    }

    /// The id as it appears on the wire.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The wire value of an optional id: 0 for `None`.
    pub fn raw(id: Option<ObjectId>) -> u32 {
        id.map_or(0, ObjectId::get)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A signed 24.8 fixed-point number, as `wl_fixed_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fixed(pub i32);

impl Fixed {
    /// Nearest fixed-point value of `v` (saturating).
    pub fn from_f64(v: f64) -> Fixed {
        Fixed((v * 256.0).round() as i32)
    }

    /// The value as a float.
    pub fn to_f64(self) -> f64 {
        f64::from(self.0) / 256.0
    }
}

/// The fixed part of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The object the message is sent to (request) or from (event).
    pub object: ObjectId,
    /// Index of the request or event in the object's interface.
    pub opcode: u16,
    /// Total size in bytes, header included; a multiple of 4.
    pub size: u16,
}

impl Header {
    /// Parses and validates a header from the first 8 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        let Some((object, word)) = buf
            .get(..HEADER_SIZE)
            .map(|h| (read_u32(h, 0), read_u32(h, 4)))
        else {
            return Err(WireError::ShortHeader {
                available: buf.len(),
            });
        };
        let size = (word >> 16) as u16;
        let opcode = (word & 0xffff) as u16;
        if usize::from(size) < HEADER_SIZE {
            return Err(WireError::SizeTooSmall { size });
        }
        if !size.is_multiple_of(4) {
            return Err(WireError::SizeUnaligned { size });
        }
        let object = ObjectId::new(object).ok_or(WireError::NullSender)?;
        Ok(Header {
            object,
            opcode,
            size,
        })
    }

    /// Writes the header's 8 bytes.
    pub fn write(&self, out: &mut [u8; HEADER_SIZE]) {
        out[..4].copy_from_slice(&self.object.get().to_ne_bytes());
        let word = (u32::from(self.size) << 16) | u32::from(self.opcode);
        out[4..].copy_from_slice(&word.to_ne_bytes());
    }
}

/// Splits the first complete message off a stream buffer.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole message (the header or the body is
/// still to come), and an error when the header itself is invalid, so a peer cannot stall the
/// reader with a size that can never be satisfied.
pub fn next_message(buf: &[u8]) -> Result<Option<Message<'_>>, WireError> {
    if buf.len() < HEADER_SIZE {
        return Ok(None);
    }
    let header = Header::parse(buf)?;
    match buf.get(..usize::from(header.size)) {
        Some(bytes) => Ok(Some(Message {
            header,
            body: &bytes[HEADER_SIZE..],
        })),
        None => Ok(None),
    }
}

/// One framed message: its header and the argument bytes, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The validated header.
    pub header: Header,
    /// The `header.size - 8` argument bytes.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// Frames exactly one message that fills `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, WireError> {
        let header = Header::parse(buf)?;
        let size = usize::from(header.size);
        if size > buf.len() {
            return Err(WireError::SizePastBuffer {
                size,
                available: buf.len(),
            });
        }
        if size < buf.len() {
            return Err(WireError::TrailingBytes {
                extra: buf.len() - size,
            });
        }
        Ok(Message {
            header,
            body: &buf[HEADER_SIZE..],
        })
    }

    /// Total bytes of the message, header included.
    pub fn len(&self) -> usize {
        usize::from(self.header.size)
    }

    /// A message always has a header, so it is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Decodes the arguments against `signature`.
    ///
    /// `fds_available` is how many received fds are queued for this and later messages; a
    /// message with more `fd` arguments than that is rejected. The result borrows `self.body`.
    pub fn decode(
        &self,
        signature: &[ArgumentType],
        fds_available: usize,
    ) -> Result<Args<'a>, WireError> {
        decode_args(self.body, signature, fds_available)
    }
}

/// One decoded argument. Strings and arrays borrow the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// `int`
    Int(i32),
    /// `uint` (also enums and bitfields)
    Uint(u32),
    /// `fixed`
    Fixed(Fixed),
    /// `string`; `None` is the null string of a nullable argument.
    Str(Option<&'a CStr>),
    /// `object`; `None` is the null object of a nullable argument.
    Object(Option<ObjectId>),
    /// `new_id`: the id the sender allocated for the new object.
    NewId(ObjectId),
    /// `array`: the raw bytes, without the length word or padding.
    Array(&'a [u8]),
    /// `fd`: the next fd from the out-of-band queue.
    Fd,
}

impl Arg<'_> {
    /// The signature type name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Arg::Int(_) => "int",
            Arg::Uint(_) => "uint",
            Arg::Fixed(_) => "fixed",
            Arg::Str(_) => "string",
            Arg::Object(_) => "object",
            Arg::NewId(_) => "new_id",
            Arg::Array(_) => "array",
            Arg::Fd => "fd",
        }
    }

    /// Bytes this argument takes on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Arg::Str(None) | Arg::Int(_) | Arg::Uint(_) | Arg::Fixed(_) => 4,
            Arg::Object(_) | Arg::NewId(_) => 4,
            Arg::Str(Some(s)) => 4 + padded(s.to_bytes_with_nul().len()),
            Arg::Array(a) => 4 + padded(a.len()),
            Arg::Fd => 0,
        }
    }

    fn matches(&self, ty: ArgumentType) -> bool {
        match (self, ty) {
            (Arg::Int(_), ArgumentType::Int)
            | (Arg::Uint(_), ArgumentType::Uint)
            | (Arg::Fixed(_), ArgumentType::Fixed)
            | (Arg::NewId(_), ArgumentType::NewId)
            | (Arg::Array(_), ArgumentType::Array)
            | (Arg::Fd, ArgumentType::Fd) => true,
            (Arg::Str(s), ArgumentType::Str(null)) => s.is_some() || null == AllowNull::Yes,
            (Arg::Object(o), ArgumentType::Object(null)) => o.is_some() || null == AllowNull::Yes,
            _ => false,
        }
    }
}

/// Signature type name, for error messages.
pub fn type_name(ty: ArgumentType) -> &'static str {
    match ty {
        ArgumentType::Int => "int",
        ArgumentType::Uint => "uint",
        ArgumentType::Fixed => "fixed",
        ArgumentType::Str(_) => "string",
        ArgumentType::Object(_) => "object",
        ArgumentType::NewId => "new_id",
        ArgumentType::Array => "array",
        ArgumentType::Fd => "fd",
    }
}

/// The decoded arguments of one message, held inline (no allocation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args<'a> {
    items: ArrayVec<Arg<'a>, MAX_ARGS>,
    fds: usize,
}

impl<'a> Args<'a> {
    /// The arguments in signature order.
    pub fn as_slice(&self) -> &[Arg<'a>] {
        &self.items
    }

    /// Mutable access, for rewriting an argument before re-encoding.
    pub fn as_mut_slice(&mut self) -> &mut [Arg<'a>] {
        &mut self.items
    }

    /// How many fds this message takes from the out-of-band queue.
    pub fn fd_count(&self) -> usize {
        self.fds
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the message has no arguments.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<'a> std::ops::Index<usize> for Args<'a> {
    type Output = Arg<'a>;
    fn index(&self, i: usize) -> &Arg<'a> {
        &self.items[i]
    }
}

/// Why bytes are not a valid message, or arguments cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer than 8 bytes where a header was expected.
    #[error("message header needs 8 bytes, only {available} available")]
    ShortHeader {
        /// Bytes that were there.
        available: usize,
    },
    /// The size field is below the header size.
    #[error("message size {size} is smaller than the 8-byte header")]
    SizeTooSmall {
        /// The size field.
        size: u16,
    },
    /// The size field is not a multiple of 4.
    #[error("message size {size} is not a multiple of 4")]
    SizeUnaligned {
        /// The size field.
        size: u16,
    },
    /// The size field runs past the bytes that were received.
    #[error("message of {size} bytes runs past the {available} bytes received")]
    SizePastBuffer {
        /// The size field.
        size: usize,
        /// Bytes that were there.
        available: usize,
    },
    /// The header names object 0.
    #[error("message sent to the null object id 0")]
    NullSender,
    /// An argument, or its length word, runs past the end of the message.
    #[error("argument {index} ({kind}) runs past the end of the message")]
    ArgumentPastEnd {
        /// Position in the signature.
        index: usize,
        /// Its type.
        kind: &'static str,
    },
    /// A string's last byte is not NUL.
    #[error("string argument {index} is not NUL-terminated")]
    StringNotTerminated {
        /// Position in the signature.
        index: usize,
    },
    /// A string holds a NUL before its end, so peers would disagree about its value.
    #[error("string argument {index} contains a NUL byte before its end")]
    StringInteriorNul {
        /// Position in the signature.
        index: usize,
    },
    /// A null string where the signature does not allow one.
    #[error("string argument {index} is null but not nullable")]
    NullString {
        /// Position in the signature.
        index: usize,
    },
    /// Object id 0 where the signature does not allow a null object.
    #[error("object argument {index} is null but not nullable")]
    NullObject {
        /// Position in the signature.
        index: usize,
    },
    /// A `new_id` argument of 0.
    #[error("new_id argument {index} is the null id")]
    NullNewId {
        /// Position in the signature.
        index: usize,
    },
    /// More `fd` arguments than fds were received.
    #[error("message has {needed} fd arguments but only {available} fds were received")]
    MissingFds {
        /// `fd` arguments in the message.
        needed: usize,
        /// Fds queued.
        available: usize,
    },
    /// Bytes left over after the last argument.
    #[error("{extra} bytes left over after the last argument")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
    /// The signature has more arguments than a decoded message can hold.
    #[error("signature has {count} arguments, more than the {MAX_ARGS} supported")]
    TooManyArguments {
        /// Arguments in the signature.
        count: usize,
    },
    /// An encoded message would not fit the 16-bit size field.
    #[error("message would be {size} bytes, over the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge {
        /// Size it would have.
        size: usize,
    },
    /// An argument to encode does not match the signature.
    #[error("argument {index} is {found} but the signature expects {expected}")]
    ArgumentMismatch {
        /// Position in the signature.
        index: usize,
        /// What was given.
        found: &'static str,
        /// What the signature says.
        expected: &'static str,
    },
    /// The number of arguments to encode differs from the signature.
    #[error("{found} arguments given, the signature has {expected}")]
    ArgumentCount {
        /// Arguments given.
        found: usize,
        /// Arguments in the signature.
        expected: usize,
    },
}

/// Decodes `body` (the bytes after the header) against `signature`.
pub fn decode_args<'a>(
    body: &'a [u8],
    signature: &[ArgumentType],
    fds_available: usize,
) -> Result<Args<'a>, WireError> {
    if signature.len() > MAX_ARGS {
        return Err(WireError::TooManyArguments {
            count: signature.len(),
        });
    }
    let mut args = Args::default();
    let mut pos = 0usize;
    for (index, &ty) in signature.iter().enumerate() {
        let arg = match ty {
            ArgumentType::Fd => {
                args.fds += 1;
                if args.fds > fds_available {
                    return Err(WireError::MissingFds {
                        needed: args.fds,
                        available: fds_available,
                    });
                }
                Arg::Fd
            }
            _ => {
                let word = body.get(pos..pos + 4).map(|w| read_u32(w, 0)).ok_or(
                    WireError::ArgumentPastEnd {
                        index,
                        kind: type_name(ty),
                    },
                )?;
                pos += 4;
                match ty {
                    ArgumentType::Int => Arg::Int(word as i32),
                    ArgumentType::Uint => Arg::Uint(word),
                    ArgumentType::Fixed => Arg::Fixed(Fixed(word as i32)),
                    ArgumentType::Object(null) => match (ObjectId::new(word), null) {
                        (None, AllowNull::No) => return Err(WireError::NullObject { index }),
                        (id, _) => Arg::Object(id),
                    },
                    ArgumentType::NewId => {
                        Arg::NewId(ObjectId::new(word).ok_or(WireError::NullNewId { index })?)
                    }
                    ArgumentType::Str(null) => {
                        if word == 0 {
                            if null == AllowNull::No {
                                return Err(WireError::NullString { index });
                            }
                            Arg::Str(None)
                        } else {
                            let bytes = take_padded(body, &mut pos, word, index, "string")?;
                            let s = CStr::from_bytes_with_nul(bytes).map_err(|_| {
                                if bytes.last() == Some(&0) {
                                    WireError::StringInteriorNul { index }
                                } else {
                                    WireError::StringNotTerminated { index }
                                }
                            })?;
                            Arg::Str(Some(s))
                        }
                    }
                    ArgumentType::Array => {
                        Arg::Array(take_padded(body, &mut pos, word, index, "array")?)
                    }
                    ArgumentType::Fd => unreachable!("fd handled above"),
                }
            }
        };
        // Cannot fail: the signature length was checked against the capacity above.
        let _ = args.items.try_push(arg);
    }
    if pos != body.len() {
        return Err(WireError::TrailingBytes {
            extra: body.len() - pos,
        });
    }
    Ok(args)
}

/// Takes `len` bytes at `*pos` plus padding to 4, advancing `*pos`.
fn take_padded<'a>(
    body: &'a [u8],
    pos: &mut usize,
    len: u32,
    index: usize,
    kind: &'static str,
) -> Result<&'a [u8], WireError> {
    let past_end = WireError::ArgumentPastEnd { index, kind };
    let len = usize::try_from(len).map_err(|_| past_end.clone())?;
    let end = pos
        .checked_add(padded_checked(len).ok_or(past_end.clone())?)
        .ok_or(past_end.clone())?;
    if end > body.len() {
        return Err(past_end);
    }
    let bytes = &body[*pos..*pos + len];
    *pos = end;
    Ok(bytes)
}

/// Appends one message to `out`, checking `args` against `signature`.
///
/// Returns the number of bytes written. On error nothing is appended.
pub fn encode(
    out: &mut Vec<u8>,
    object: ObjectId,
    opcode: u16,
    signature: &[ArgumentType],
    args: &[Arg<'_>],
) -> Result<usize, WireError> {
    if args.len() != signature.len() {
        return Err(WireError::ArgumentCount {
            found: args.len(),
            expected: signature.len(),
        });
    }
    for (index, (arg, &ty)) in args.iter().zip(signature).enumerate() {
        if !arg.matches(ty) {
            return Err(WireError::ArgumentMismatch {
                index,
                found: arg.kind(),
                expected: type_name(ty),
            });
        }
    }
    encode_unchecked(out, object, opcode, args)
}

/// Appends one message to `out` without a signature (the arguments are their own description).
///
/// Used on the forwarding path, where the arguments were just decoded against the signature.
/// Returns the number of bytes written. On error nothing is appended.
pub fn encode_unchecked(
    out: &mut Vec<u8>,
    object: ObjectId,
    opcode: u16,
    args: &[Arg<'_>],
) -> Result<usize, WireError> {
    let size = HEADER_SIZE + args.iter().map(Arg::wire_len).sum::<usize>();
    if size > MAX_MESSAGE_SIZE {
        return Err(WireError::TooLarge { size });
    }
    out.reserve(size);
    let mut header = [0u8; HEADER_SIZE];
    Header {
        object,
        opcode,
        size: size as u16,
    }
    .write(&mut header);
    out.extend_from_slice(&header);
    for arg in args {
        match *arg {
            Arg::Int(v) => out.extend_from_slice(&v.to_ne_bytes()),
            Arg::Uint(v) => out.extend_from_slice(&v.to_ne_bytes()),
            Arg::Fixed(v) => out.extend_from_slice(&v.0.to_ne_bytes()),
            Arg::Object(id) => out.extend_from_slice(&ObjectId::raw(id).to_ne_bytes()),
            Arg::NewId(id) => out.extend_from_slice(&id.get().to_ne_bytes()),
            Arg::Str(None) => out.extend_from_slice(&0u32.to_ne_bytes()),
            Arg::Str(Some(s)) => put_padded(out, s.to_bytes_with_nul()),
            Arg::Array(a) => put_padded(out, a),
            Arg::Fd => {}
        }
    }
    Ok(size)
}

fn put_padded(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths were bounded by MAX_MESSAGE_SIZE before this is reached.
    out.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    out.extend_from_slice(bytes);
    out.resize(out.len() + (padded(bytes.len()) - bytes.len()), 0);
}

/// `len` rounded up to a multiple of 4.
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

fn padded_checked(len: usize) -> Option<usize> {
    len.checked_add(3).map(|l| l & !3)
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTACH: &[ArgumentType] = &[
        ArgumentType::Object(AllowNull::Yes),
        ArgumentType::Int,
        ArgumentType::Int,
    ];

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn header_size_below_eight_is_rejected() {
        let buf = words(&[3, 4 << 16]);
        assert_eq!(
            Header::parse(&buf),
            Err(WireError::SizeTooSmall { size: 4 })
        );
    }

    #[test]
    fn header_unaligned_size_is_rejected() {
        let buf = words(&[3, 13 << 16, 0, 0]);
        assert_eq!(
            Header::parse(&buf),
            Err(WireError::SizeUnaligned { size: 13 })
        );
    }

    #[test]
    fn header_short_buffer_is_rejected() {
        assert_eq!(
            Header::parse(&[1, 0, 0]),
            Err(WireError::ShortHeader { available: 3 })
        );
    }

    #[test]
    fn header_null_sender_is_rejected() {
        assert_eq!(
            Header::parse(&words(&[0, 8 << 16])),
            Err(WireError::NullSender)
        );
    }

    #[test]
    fn next_message_incomplete_body_waits() {
        let buf = words(&[3, (20 << 16) | 1, 5]);
        assert_eq!(next_message(&buf), Ok(None));
    }

    #[test]
    fn parse_size_past_buffer_is_rejected() {
        let buf = words(&[3, (20 << 16) | 1, 5]);
        assert_eq!(
            Message::parse(&buf),
            Err(WireError::SizePastBuffer {
                size: 20,
                available: 12
            })
        );
    }

    #[test]
    fn decode_null_object_where_nullable_is_none() {
        let buf = words(&[3, (20 << 16) | 1, 0, 7, 9]);
        let msg = Message::parse(&buf).unwrap();
        let args = msg.decode(ATTACH, 0).unwrap();
        assert_eq!(
            args.as_slice(),
            &[Arg::Object(None), Arg::Int(7), Arg::Int(9)]
        );
    }

    #[test]
    fn decode_null_object_not_nullable_is_rejected() {
        let sig = &[ArgumentType::Object(AllowNull::No)];
        assert_eq!(
            decode_args(&words(&[0]), sig, 0),
            Err(WireError::NullObject { index: 0 })
        );
    }

    #[test]
    fn decode_string_without_nul_is_rejected() {
        let mut body = words(&[4]);
        body.extend_from_slice(b"abcd");
        let sig = &[ArgumentType::Str(AllowNull::No)];
        assert_eq!(
            decode_args(&body, sig, 0),
            Err(WireError::StringNotTerminated { index: 0 })
        );
    }

    #[test]
    fn decode_string_with_interior_nul_is_rejected() {
        let mut body = words(&[4]);
        body.extend_from_slice(b"a\0c\0");
        let sig = &[ArgumentType::Str(AllowNull::No)];
        assert_eq!(
            decode_args(&body, sig, 0),
            Err(WireError::StringInteriorNul { index: 0 })
        );
    }

    #[test]
    fn decode_string_length_past_message_is_rejected() {
        let mut body = words(&[400]);
        body.extend_from_slice(b"abc\0");
        let sig = &[ArgumentType::Str(AllowNull::No)];
        assert_eq!(
            decode_args(&body, sig, 0),
            Err(WireError::ArgumentPastEnd {
                index: 0,
                kind: "string"
            })
        );
    }

    #[test]
    fn decode_huge_array_length_is_rejected_without_overflow() {
        let body = words(&[u32::MAX]);
        assert_eq!(
            decode_args(&body, &[ArgumentType::Array], 0),
            Err(WireError::ArgumentPastEnd {
                index: 0,
                kind: "array"
            })
        );
    }

    #[test]
    fn decode_more_fds_than_received_is_rejected() {
        let sig = &[ArgumentType::Fd, ArgumentType::Uint, ArgumentType::Fd];
        assert_eq!(
            decode_args(&words(&[1]), sig, 1),
            Err(WireError::MissingFds {
                needed: 2,
                available: 1
            })
        );
        assert_eq!(decode_args(&words(&[1]), sig, 2).unwrap().fd_count(), 2);
    }

    #[test]
    fn decode_trailing_bytes_are_rejected() {
        assert_eq!(
            decode_args(&words(&[1, 2]), &[ArgumentType::Uint], 0),
            Err(WireError::TrailingBytes { extra: 4 })
        );
    }

    #[test]
    fn encode_signature_mismatch_appends_nothing() {
        let mut out = vec![];
        let err = encode(&mut out, ObjectId::DISPLAY, 0, ATTACH, &[Arg::Uint(1)]);
        assert_eq!(
            err,
            Err(WireError::ArgumentCount {
                found: 1,
                expected: 3
            })
        );
        let err = encode(
            &mut out,
            ObjectId::DISPLAY,
            0,
            &[ArgumentType::Object(AllowNull::No)],
            &[Arg::Object(None)],
        );
        assert_eq!(
            err,
            Err(WireError::ArgumentMismatch {
                index: 0,
                found: "object",
                expected: "object"
            })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn encode_too_large_is_rejected() {
        let big = vec![1u8; MAX_MESSAGE_SIZE];
        let mut out = vec![];
        let err = encode(
            &mut out,
            ObjectId::DISPLAY,
            0,
            &[ArgumentType::Array],
            &[Arg::Array(&big)],
        );
        assert!(matches!(err, Err(WireError::TooLarge { .. })));
        assert!(out.is_empty());
    }

    #[test]
    fn fixed_round_trips_quarter_values() {
        assert_eq!(Fixed::from_f64(-2.25).to_f64(), -2.25);
        assert_eq!(Fixed::from_f64(1.0), Fixed(256));
    }
}
