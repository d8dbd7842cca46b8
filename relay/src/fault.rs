//! Protocol errors the relay raises against a guest client, as the `wl_display.error` event
//! libwayland's server would send for the same fault.

use std::fmt::Write as _;

use crossway_protocols::objects::ObjectError;
use crossway_protocols::wire::{self, Arg, ObjectId, WireError};

pub use crossway_protocols::codes::{display, params, shm};

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
