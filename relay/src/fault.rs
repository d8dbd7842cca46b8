//! Protocol errors the relay raises against a guest client, as the `wl_display.error` event
//! libwayland's server would send for the same fault.

use std::fmt::Write as _;

use crossway_protocols::objects::ObjectError;
use crossway_protocols::wire::{self, Arg, ObjectId, WireError};

/// `wl_display.error` codes (core protocol).
pub mod display {
    /// The object does not exist, or is not what the message needs.
    pub const INVALID_OBJECT: u32 = 0;
    /// The method does not exist at this version, or its arguments do not decode.
    pub const INVALID_METHOD: u32 = 1;
    /// Out of memory (a limit was reached).
    pub const NO_MEMORY: u32 = 2;
    /// The relay could not carry out a valid request.
    pub const IMPLEMENTATION: u32 = 3;
}

/// `wl_shm.error` codes.
pub mod shm {
    /// Buffer format is not known.
    pub const INVALID_FORMAT: u32 = 0;
    /// Invalid size or stride during pool or buffer creation.
    pub const INVALID_STRIDE: u32 = 1;
    /// Mmapping the file descriptor failed.
    pub const INVALID_FD: u32 = 2;
}

/// `zwp_linux_buffer_params_v1.error` codes.
pub mod params {
    /// The params object was already used to create a buffer.
    pub const ALREADY_USED: u32 = 0;
    /// Plane index out of bounds.
    pub const PLANE_IDX: u32 = 1;
    /// The plane index was already set.
    pub const PLANE_SET: u32 = 2;
    /// Missing or too many planes to create a buffer.
    pub const INCOMPLETE: u32 = 3;
    /// Format not supported.
    pub const INVALID_FORMAT: u32 = 4;
    /// Invalid width or height.
    pub const INVALID_DIMENSIONS: u32 = 5;
    /// Offset + stride × height goes out of the dmabuf's bounds.
    pub const OUT_OF_BOUNDS: u32 = 6;
}

/// A protocol error against the guest client: which object, which code, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The object the error is about (`wl_display` for framing and lookup errors).
    pub object: ObjectId,
    /// The code, from the object's interface's error enum or `wl_display`'s.
    pub code: u32,
    /// What went wrong, for the guest's log and ours.
    pub message: String,
}

impl Fault {
    /// A fault on `object`.
    pub fn new(object: ObjectId, code: u32, message: impl Into<String>) -> Fault {
        Fault {
            object,
            code,
            message: message.into(),
        }
    }

    /// A fault on `wl_display`.
    pub fn display(code: u32, message: impl Into<String>) -> Fault {
        Fault::new(ObjectId::DISPLAY, code, message)
    }

    /// The error libwayland's server raises for the same fault of a request to `sender`.
    pub fn from_object(sender: ObjectId, e: &ObjectError) -> Fault {
        use ObjectError as E;
        let code = match e {
            // "invalid object": the sender, or an object argument, is missing or mistyped.
            E::UnknownObject(_)
            | E::DestroyedObject(_)
            | E::InvalidArgumentObject { .. }
            | E::WrongInterface { .. } => display::INVALID_OBJECT,
            // wl_registry.bind of an interface or version the server has not advertised.
            E::UnknownInterface(_) | E::BadVersion { .. } => {
                return Fault::new(sender, display::INVALID_OBJECT, e.to_string());
            }
            E::TooManyObjects(_) | E::IdSpaceExhausted { .. } => display::NO_MEMORY,
            // Demarshalling failures (new ids included) are "invalid arguments".
            E::IdInUse(_)
            | E::WrongSide { .. }
            | E::IdNotNext { .. }
            | E::Table(_)
            | E::Wire { .. }
            | E::UnexpectedDeleteId(_) => display::INVALID_METHOD,
        };
        Fault::display(code, e.to_string())
    }

    /// A framing error in the guest's stream.
    pub fn from_wire(e: &WireError) -> Fault {
        Fault::display(display::INVALID_METHOD, e.to_string())
    }

    /// Appends the `wl_display.error` event to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut text = String::with_capacity(self.message.len() + 1);
        // Cap what a guest-controlled string can make us send back.
        for c in self.message.chars().filter(|&c| c != '\0').take(512) {
            text.push(c);
        }
        let _ = write!(text, "\0");
        let Ok(cstr) = std::ffi::CStr::from_bytes_with_nul(text.as_bytes()) else {
            return;
        };
        let args = [
            Arg::Object(Some(self.object)),
            Arg::Uint(self.code),
            Arg::Str(Some(cstr)),
        ];
        // Cannot fail: the message is far below the 64 KiB limit.
        let _ = wire::encode_unchecked(out, ObjectId::DISPLAY, 0, &args);
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "object {} error {}: {}",
            self.object, self.code, self.message
        )
    }
}
