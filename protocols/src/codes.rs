//! Error codes of the `wl_display.error` events the relays send, and the error both raise when a
//! message the tables decoded does not have the arguments their code expects.

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

/// A message whose arguments, though they decoded against the tables, are not the ones the
/// relay's code for it expects (the tables and the code disagree): a `display::IMPLEMENTATION`
/// error for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{interface}.{message}: arguments not as the relay expects")]
pub struct UnexpectedArgs {
    /// The interface.
    pub interface: &'static str,
    /// The message.
    pub message: &'static str,
}

impl UnexpectedArgs {
    /// The `wl_display.error` code to send.
    pub const CODE: u32 = display::IMPLEMENTATION;
}
