//! The arguments of the messages both relays act on, as named fields: each `parse` takes the
//! arguments the object map decoded (so their types already match the signature) and gives
//! `None` only if the tables and this code disagree (see [`crate::codes::UnexpectedArgs`]).

use std::ffi::CStr;

use crate::wire::{Arg, ObjectId};

/// `wl_registry.global`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Global<'a> {
    /// The global's name.
    pub name: u32,
    /// Its interface.
    pub interface: &'a CStr,
    /// Its version.
    pub version: u32,
}

impl<'a> Global<'a> {
    /// From the event's arguments.
    pub fn parse(args: &[Arg<'a>]) -> Option<Global<'a>> {
        let [
            Arg::Uint(name),
            Arg::Str(Some(interface)),
            Arg::Uint(version),
        ] = args
        else {
            return None;
        };
        Some(Global {
            name: *name,
            interface,
            version: *version,
        })
    }
}

/// `wl_shm.create_pool` (its fd is the message's one fd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatePool {
    /// The new pool.
    pub pool: ObjectId,
    /// Its size in bytes, as the client sent it.
    pub size: i32,
}

impl CreatePool {
    /// From the request's arguments.
    pub fn parse(args: &[Arg<'_>]) -> Option<CreatePool> {
        let [Arg::NewId(pool), Arg::Fd, Arg::Int(size)] = args else {
            return None;
        };
        Some(CreatePool {
            pool: *pool,
            size: *size,
        })
    }
}

/// `wl_shm_pool.create_buffer`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateBuffer {
    /// The new buffer.
    pub buffer: ObjectId,
    /// Byte offset in the pool.
    pub offset: i32,
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// Bytes per row.
    pub stride: i32,
    /// `wl_shm.format`.
    pub format: u32,
}

impl CreateBuffer {
    /// From the request's arguments.
    pub fn parse(args: &[Arg<'_>]) -> Option<CreateBuffer> {
        let [
            Arg::NewId(buffer),
            Arg::Int(offset),
            Arg::Int(width),
            Arg::Int(height),
            Arg::Int(stride),
            Arg::Uint(format),
        ] = args
        else {
            return None;
        };
        Some(CreateBuffer {
            buffer: *buffer,
            offset: *offset,
            width: *width,
            height: *height,
            stride: *stride,
            format: *format,
        })
    }
}

/// `zwp_linux_buffer_params_v1.add` (its fd is the message's one fd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamsAdd {
    /// Plane index.
    pub plane: u32,
    /// Byte offset of the plane in the fd.
    pub offset: u32,
    /// Bytes per row.
    pub stride: u32,
    /// The format modifier (`modifier_hi` and `modifier_lo` joined).
    pub modifier: u64,
}

impl ParamsAdd {
    /// From the request's arguments.
    pub fn parse(args: &[Arg<'_>]) -> Option<ParamsAdd> {
        let [
            Arg::Fd,
            Arg::Uint(plane),
            Arg::Uint(offset),
            Arg::Uint(stride),
            Arg::Uint(hi),
            Arg::Uint(lo),
        ] = args
        else {
            return None;
        };
        Some(ParamsAdd {
            plane: *plane,
            offset: *offset,
            stride: *stride,
            modifier: (u64::from(*hi) << 32) | u64::from(*lo),
        })
    }
}

/// `zwp_linux_buffer_params_v1.create` and `create_immed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamsCreate {
    /// The new buffer (`create_immed`); `None` for `create`, whose buffer comes with `created`.
    pub buffer: Option<ObjectId>,
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// DRM fourcc.
    pub format: u32,
    /// `zwp_linux_buffer_params_v1.flags`.
    pub flags: u32,
}

impl ParamsCreate {
    /// From either request's arguments.
    pub fn parse(args: &[Arg<'_>]) -> Option<ParamsCreate> {
        let (buffer, rest) = match args {
            [Arg::NewId(b), rest @ ..] => (Some(*b), rest),
            rest => (None, rest),
        };
        let [
            Arg::Int(width),
            Arg::Int(height),
            Arg::Uint(format),
            Arg::Uint(flags),
        ] = rest
        else {
            return None;
        };
        Some(ParamsCreate {
            buffer,
            width: *width,
            height: *height,
            format: *format,
            flags: *flags,
        })
    }
}

/// A rectangle of four ints (`wl_surface.damage`, `damage_buffer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect4 {
    /// Left.
    pub x: i32,
    /// Top.
    pub y: i32,
    /// Width.
    pub width: i32,
    /// Height.
    pub height: i32,
}

impl Rect4 {
    /// From the request's arguments.
    pub fn parse(args: &[Arg<'_>]) -> Option<Rect4> {
        let [Arg::Int(x), Arg::Int(y), Arg::Int(width), Arg::Int(height)] = args else {
            return None;
        };
        Some(Rect4 {
            x: *x,
            y: *y,
            width: *width,
            height: *height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_create_parse_with_and_without_buffer() {
        let id = ObjectId::new(9).unwrap();
        let rest = [Arg::Int(4), Arg::Int(5), Arg::Uint(6), Arg::Uint(0)];
        let immed = [&[Arg::NewId(id)][..], &rest[..]].concat();
        assert_eq!(ParamsCreate::parse(&immed).unwrap().buffer, Some(id));
        let plain = ParamsCreate::parse(&rest).unwrap();
        assert_eq!((plain.buffer, plain.width, plain.format), (None, 4, 6));
        assert_eq!(ParamsCreate::parse(&rest[1..]), None);
    }

    #[test]
    fn params_add_joins_the_modifier() {
        let args = [
            Arg::Fd,
            Arg::Uint(1),
            Arg::Uint(2),
            Arg::Uint(3),
            Arg::Uint(0x0100_0000),
            Arg::Uint(7),
        ];
        let add = ParamsAdd::parse(&args).unwrap();
        assert_eq!(add.modifier, 0x0100_0000_0000_0007);
        assert_eq!(add.plane, 1);
    }
}
