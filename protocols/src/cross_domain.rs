//! The virtio-gpu cross-domain context (capset 5): wire structs, constants and a command
//! decoder, compatible with crosvm/rutabaga_gfx, libkrun, sommelier and wayland-proxy-virtwl.
//!
//! There is no written specification; rutabaga's `cross_domain_protocol.rs` is the de-facto
//! definition. Struct names and field names follow it so they grep against the reference.
//! Everything is little-endian and `repr(C)` without implicit padding; sizes and offsets are
//! asserted at compile time.
//!
//! Guest-to-host commands arrive batched in one `SUBMIT_3D`; [`Commands`] walks them by
//! `hdr.cmd_size` and accepts what real peers send: the four `CMD_INIT` sizes, both
//! `CrossDomainSendReceive` header sizes (4 and 28 identifiers), and slack after a command.
//! Host-to-guest ring messages ([`RingMessage`]) are written with header bytes 1..8 zero,
//! because wayland-proxy-virtwl reads the first little-endian u32 as the command.

use std::mem::{offset_of, size_of};

use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Capset id of the cross-domain context.
pub const CAPSET_CROSS_DOMAIN: u32 = 5;
/// The capset's size, as the host reports in `GET_CAPSET_INFO`.
pub const CAPSET_CROSS_DOMAIN_SIZE: u32 = size_of::<CrossDomainCapabilities>() as u32;
/// `CrossDomainCapabilities::version`: every command up to `WRITE`.
pub const CROSS_DOMAIN_VERSION: u32 = 1;

/// `CMD_INIT`.
pub const CROSS_DOMAIN_CMD_INIT: u8 = 1;
/// `CMD_GET_IMAGE_REQUIREMENTS`.
pub const CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS: u8 = 2;
/// `CMD_POLL`.
pub const CROSS_DOMAIN_CMD_POLL: u8 = 3;
/// `CMD_SEND` (guest to host).
pub const CROSS_DOMAIN_CMD_SEND: u8 = 4;
/// `CMD_RECEIVE` (host to guest, in the channel ring).
pub const CROSS_DOMAIN_CMD_RECEIVE: u8 = 5;
/// `CMD_READ` (host to guest, in the channel ring).
pub const CROSS_DOMAIN_CMD_READ: u8 = 6;
/// `CMD_WRITE` (guest to host).
pub const CROSS_DOMAIN_CMD_WRITE: u8 = 7;
/// Command 8: libkrun `FUTEX_NEW`, rutabaga >= 0.1.80 `CREATE_ATOMIC_MEMORY_SENTINEL`.
pub const CROSS_DOMAIN_CMD_FUTEX_NEW: u8 = 8;
/// Command 9: libkrun `FUTEX_SIGNAL`, rutabaga `SIGNAL_ATOMIC_MEMORY_SENTINEL`.
pub const CROSS_DOMAIN_CMD_FUTEX_SIGNAL: u8 = 9;
/// Command 10: libkrun `FUTEX_DESTROY`, rutabaga `DESTROY_ATOMIC_MEMORY_SENTINEL`.
pub const CROSS_DOMAIN_CMD_FUTEX_DESTROY: u8 = 10;
/// Command 11: libkrun `READ_EVENTFD_NEW`, rutabaga `READ_CREATE_EVENT`.
pub const CROSS_DOMAIN_CMD_READ_EVENTFD_NEW: u8 = 11;
/// Command 12: libkrun `READ_EVENTFD_DESTROY`; rutabaga reuses it for `IMPORT_VIRTIOFS_HANDLE`.
pub const CROSS_DOMAIN_CMD_READ_EVENTFD_DESTROY: u8 = 12;
/// Command 13: rutabaga `ASSIGN_SOCKET_UUID`.
pub const CROSS_DOMAIN_CMD_ASSIGN_SOCKET_UUID: u8 = 13;

/// Channel type: a Wayland socket.
pub const CROSS_DOMAIN_CHANNEL_TYPE_WAYLAND: u32 = 0x0001;
/// Channel type: camera.
pub const CROSS_DOMAIN_CHANNEL_TYPE_CAMERA: u32 = 0x0002;
/// Channel type: PipeWire (muvm).
pub const CROSS_DOMAIN_CHANNEL_TYPE_PIPEWIRE: u32 = 0x0010;
/// Channel type: X11 (muvm).
pub const CROSS_DOMAIN_CHANNEL_TYPE_X11: u32 = 0x0011;
/// Channel type: no socket, query ring only.
pub const CROSS_DOMAIN_CHANNEL_TYPE_NONE: u32 = 0;

/// Identifier type: a virtio-gpu blob resource (guest to host) or a host item (host to guest).
pub const CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB: u32 = 1;
/// Identifier type: a sync object (defined, never implemented by any peer).
pub const CROSS_DOMAIN_ID_TYPE_VIRTGPU_SYNC: u32 = 2;
/// Identifier type: a pipe the guest reads; the host compositor gets its write end.
pub const CROSS_DOMAIN_ID_TYPE_READ_PIPE: u32 = 3;
/// Identifier type: a pipe the host compositor gave a write end of; the guest writes.
pub const CROSS_DOMAIN_ID_TYPE_WRITE_PIPE: u32 = 4;

/// Ring index of the query ring (`GET_IMAGE_REQUIREMENTS` replies).
pub const CROSS_DOMAIN_QUERY_RING: u32 = 0;
/// Ring index of the channel ring (`RECEIVE`/`READ`).
pub const CROSS_DOMAIN_CHANNEL_RING: u32 = 1;
/// Submission without a ring.
pub const CROSS_DOMAIN_RING_NONE: u32 = 0xffff_ffff;

/// Read-pipe ids count up from here; the first is `PIPE_READ_START + 1`.
pub const CROSS_DOMAIN_PIPE_READ_START: u32 = 0x8000_0000;
/// Identifiers per `SEND`/`RECEIVE` (libwayland's `MAX_FDS_OUT`).
pub const CROSS_DOMAIN_MAX_IDENTIFIERS: usize = 28;
/// Identifiers per message in the layout used before 2024.
pub const CROSS_DOMAIN_MAX_IDENTIFIERS_V0: usize = 4;
/// A ring is one page.
pub const CROSS_DOMAIN_RING_SIZE: usize = 4096;
/// Wayland bytes per `RECEIVE` (and per `SEND` from sommelier): ring minus the header.
pub const CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA: usize =
    CROSS_DOMAIN_RING_SIZE - size_of::<CrossDomainSendReceive>();
/// Pipe bytes per `READ`/`WRITE`.
pub const CROSS_DOMAIN_MAX_READ_WRITE_DATA: usize =
    CROSS_DOMAIN_RING_SIZE - size_of::<CrossDomainReadWrite>();

/// `GET_IMAGE_REQUIREMENTS` flags (minigbm usage bits).
pub mod gbm_flags {
    /// Scanout.
    pub const SCANOUT: u32 = 1 << 0;
    /// GPU rendering.
    pub const RENDERING: u32 = 1 << 2;
    /// Linear layout.
    pub const LINEAR: u32 = 1 << 4;
    /// Sampled as a texture.
    pub const TEXTURING: u32 = 1 << 5;
    /// Camera writes.
    pub const CAMERA_WRITE: u32 = 1 << 6;
    /// Camera reads.
    pub const CAMERA_READ: u32 = 1 << 7;
    /// Protected content.
    pub const PROTECTED: u32 = 1 << 8;
    /// CPU reads often.
    pub const SW_READ_OFTEN: u32 = 1 << 9;
    /// CPU writes often.
    pub const SW_WRITE_OFTEN: u32 = 1 << 11;
}

/// `map_info` cache types.
pub mod map_info {
    /// Cached.
    pub const CACHE_CACHED: u32 = 0x01;
    /// Uncached.
    pub const CACHE_UNCACHED: u32 = 0x02;
    /// Write-combined.
    pub const CACHE_WC: u32 = 0x03;
}

/// Common 8-byte header of every command and ring message.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainHeader {
    /// `CROSS_DOMAIN_CMD_*`.
    pub cmd: u8,
    /// C headers call it `fence_ctx_idx`; hosts ignore it.
    pub ring_idx: u8,
    /// Bytes of this command including trailing data (guest to host); 0 in ring messages.
    pub cmd_size: U16,
    /// Zero.
    pub pad: U32,
}

/// The capset 5 payload.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainCapabilities {
    /// [`CROSS_DOMAIN_VERSION`].
    pub version: U32,
    /// Bit mask of `1 << CROSS_DOMAIN_CHANNEL_TYPE_*`.
    pub supported_channels: U32,
    /// Whether image allocations can be exported as dmabufs.
    pub supports_dmabuf: U32,
    /// Whether external GPU memory can be imported.
    pub supports_external_gpu_memory: U32,
}

/// `CMD_INIT` before the channel ring existed (16 bytes): one ring for both.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainInitLegacy {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Resource id of the only ring.
    pub query_ring_id: U32,
    /// Channel type.
    pub channel_type: U32,
}

/// `CMD_INIT` as sommelier, wayland-proxy-virtwl and crosvm <= 0.1.71 send it (20 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainInit {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Resource id of the query ring.
    pub query_ring_id: U32,
    /// Resource id of the channel ring.
    pub channel_ring_id: U32,
    /// Channel type.
    pub channel_type: U32,
}

/// libkrun's `CMD_INIT` with a protocol version (24 bytes; muvm sends 1).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainInitV1 {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Resource id of the query ring.
    pub query_ring_id: U32,
    /// Resource id of the channel ring.
    pub channel_ring_id: U32,
    /// Channel type.
    pub channel_type: U32,
    /// libkrun protocol version.
    pub protocol_version: U32,
}

/// rutabaga >= 0.1.80's `CMD_INIT` with an internal socket uuid (36 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainInitV2 {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Resource id of the query ring.
    pub query_ring_id: U32,
    /// Resource id of the channel ring.
    pub channel_ring_id: U32,
    /// Channel type.
    pub channel_type: U32,
    /// u128 little-endian; used only with the internal socket channel type.
    pub internal_socket_uuid: [u8; 16],
}

/// `CMD_GET_IMAGE_REQUIREMENTS` (24 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainGetImageRequirements {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Width in pixels.
    pub width: U32,
    /// Height in pixels.
    pub height: U32,
    /// DRM fourcc.
    pub drm_format: U32,
    /// [`gbm_flags`].
    pub flags: U32,
}

/// Reply to `GET_IMAGE_REQUIREMENTS`, written at offset 0 of the query ring without a header.
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainImageRequirements {
    /// Per-plane strides.
    pub strides: [U32; 4],
    /// Per-plane offsets.
    pub offsets: [U32; 4],
    /// DRM format modifier of the allocation.
    pub modifier: U64,
    /// Bytes of the allocation.
    pub size: U64,
    /// Id to pass to `RESOURCE_CREATE_BLOB` (HOST3D).
    pub blob_id: U32,
    /// [`map_info`] cache type.
    pub map_info: U32,
    /// Vulkan memory type index, or -1.
    pub memory_idx: I32,
    /// Deprecated, always -1.
    pub physical_device_idx: I32,
}

/// `CMD_POLL` (16 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainPoll {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Zero.
    pub pad: U64,
}

/// `SEND`/`RECEIVE` header with `N` identifier slots: 28 today, 4 in the pre-2024 layout.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct CrossDomainSendReceiveN<const N: usize> {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Identifiers in use.
    pub num_identifiers: U32,
    /// Bytes of Wayland data after the header.
    pub opaque_data_size: U32,
    /// Resource, item or pipe ids.
    pub identifiers: [U32; N],
    /// `CROSS_DOMAIN_ID_TYPE_*` of each identifier.
    pub identifier_types: [U32; N],
    /// Host to guest only: byte size of each blob item.
    pub identifier_sizes: [U32; N],
}

/// The `SEND`/`RECEIVE` header in use since 2024 (352 bytes).
pub type CrossDomainSendReceive = CrossDomainSendReceiveN<CROSS_DOMAIN_MAX_IDENTIFIERS>;
/// The pre-2024 `SEND`/`RECEIVE` header (64 bytes).
pub type CrossDomainSendReceiveV0 = CrossDomainSendReceiveN<CROSS_DOMAIN_MAX_IDENTIFIERS_V0>;

impl<const N: usize> Default for CrossDomainSendReceiveN<N> {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// `READ`/`WRITE` header (24 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainReadWrite {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Pipe id.
    pub identifier: U32,
    /// 1 when the writer closed its end.
    pub hang_up: U32,
    /// Bytes of pipe data after the header.
    pub opaque_data_size: U32,
    /// Zero.
    pub pad: U32,
}

/// libkrun `FUTEX_NEW` / rutabaga `CREATE_ATOMIC_MEMORY_SENTINEL` / `IMPORT_VIRTIOFS_HANDLE`
/// (32 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainFutexNew {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// virtio-fs id.
    pub fs_id: U64,
    /// virtio-fs handle.
    pub handle: U64,
    /// Item id.
    pub id: U32,
    /// Zero.
    pub pad: U32,
}

/// libkrun `FUTEX_SIGNAL`/`FUTEX_DESTROY`/`READ_EVENTFD_NEW` and rutabaga equivalents (16 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainFutexSignal {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// Item id.
    pub id: U32,
    /// Zero.
    pub pad: U32,
}

/// rutabaga `ASSIGN_SOCKET_UUID` (32 bytes).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
pub struct CrossDomainAssignSocketUuid {
    /// Header.
    pub hdr: CrossDomainHeader,
    /// u128 little-endian.
    pub socket_uuid: [u8; 16],
    /// Item id.
    pub id: U32,
    /// Zero.
    pub pad: U32,
}

// Layout checks against the reference (cross-domain.md §1.3).
const _: () = {
    assert!(size_of::<CrossDomainHeader>() == 8);
    assert!(offset_of!(CrossDomainHeader, cmd_size) == 2);
    assert!(offset_of!(CrossDomainHeader, pad) == 4);
    assert!(size_of::<CrossDomainCapabilities>() == 16);
    assert!(offset_of!(CrossDomainCapabilities, supports_external_gpu_memory) == 12);
    assert!(size_of::<CrossDomainInitLegacy>() == 16);
    assert!(offset_of!(CrossDomainInitLegacy, channel_type) == 12);
    assert!(size_of::<CrossDomainInit>() == 20);
    assert!(offset_of!(CrossDomainInit, channel_ring_id) == 12);
    assert!(offset_of!(CrossDomainInit, channel_type) == 16);
    assert!(size_of::<CrossDomainInitV1>() == 24);
    assert!(offset_of!(CrossDomainInitV1, protocol_version) == 20);
    assert!(size_of::<CrossDomainInitV2>() == 36);
    assert!(offset_of!(CrossDomainInitV2, internal_socket_uuid) == 20);
    assert!(size_of::<CrossDomainGetImageRequirements>() == 24);
    assert!(offset_of!(CrossDomainGetImageRequirements, flags) == 20);
    assert!(size_of::<CrossDomainImageRequirements>() == 64);
    assert!(offset_of!(CrossDomainImageRequirements, offsets) == 16);
    assert!(offset_of!(CrossDomainImageRequirements, modifier) == 32);
    assert!(offset_of!(CrossDomainImageRequirements, size) == 40);
    assert!(offset_of!(CrossDomainImageRequirements, blob_id) == 48);
    assert!(offset_of!(CrossDomainImageRequirements, map_info) == 52);
    assert!(offset_of!(CrossDomainImageRequirements, memory_idx) == 56);
    assert!(offset_of!(CrossDomainImageRequirements, physical_device_idx) == 60);
    assert!(size_of::<CrossDomainPoll>() == 16);
    assert!(size_of::<CrossDomainSendReceive>() == 352);
    assert!(offset_of!(CrossDomainSendReceive, num_identifiers) == 8);
    assert!(offset_of!(CrossDomainSendReceive, opaque_data_size) == 12);
    assert!(offset_of!(CrossDomainSendReceive, identifiers) == 16);
    assert!(offset_of!(CrossDomainSendReceive, identifier_types) == 128);
    assert!(offset_of!(CrossDomainSendReceive, identifier_sizes) == 240);
    assert!(size_of::<CrossDomainSendReceiveV0>() == 64);
    assert!(offset_of!(CrossDomainSendReceiveV0, identifier_types) == 32);
    assert!(offset_of!(CrossDomainSendReceiveV0, identifier_sizes) == 48);
    assert!(size_of::<CrossDomainReadWrite>() == 24);
    assert!(offset_of!(CrossDomainReadWrite, opaque_data_size) == 16);
    assert!(size_of::<CrossDomainFutexNew>() == 32);
    assert!(offset_of!(CrossDomainFutexNew, id) == 24);
    assert!(size_of::<CrossDomainFutexSignal>() == 16);
    assert!(size_of::<CrossDomainAssignSocketUuid>() == 32);
    assert!(offset_of!(CrossDomainAssignSocketUuid, id) == 24);
    assert!(CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA == 3744);
    assert!(CROSS_DOMAIN_MAX_READ_WRITE_DATA == 4072);
};

/// Which `CMD_INIT` layout a guest sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitVariant {
    /// 16 bytes, one ring.
    Legacy,
    /// 20 bytes.
    V0,
    /// 24 bytes, libkrun.
    V1,
    /// 36 bytes, rutabaga >= 0.1.80.
    V2,
}

/// One identifier of a `SEND` or `RECEIVE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identifier {
    /// Resource, item or pipe id.
    pub id: u32,
    /// `CROSS_DOMAIN_ID_TYPE_*`.
    pub id_type: u32,
    /// Byte size (host to guest blob items; 0 otherwise).
    pub size: u32,
}

/// Identifiers of one message, held inline.
pub type Identifiers = arrayvec::ArrayVec<Identifier, CROSS_DOMAIN_MAX_IDENTIFIERS>;

/// A decoded guest-to-host command.
// Identifiers are held inline so that decoding a SEND does not allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `CMD_INIT`.
    Init {
        /// Which layout was sent.
        variant: InitVariant,
        /// Query ring resource id.
        query_ring_id: u32,
        /// Channel ring resource id (equal to the query ring for [`InitVariant::Legacy`]).
        channel_ring_id: u32,
        /// Channel type.
        channel_type: u32,
        /// libkrun protocol version ([`InitVariant::V1`]).
        protocol_version: Option<u32>,
        /// Internal socket uuid ([`InitVariant::V2`]).
        internal_socket_uuid: Option<u128>,
    },
    /// `CMD_GET_IMAGE_REQUIREMENTS`.
    GetImageRequirements {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// DRM fourcc.
        drm_format: u32,
        /// [`gbm_flags`].
        flags: u32,
    },
    /// `CMD_POLL`.
    Poll,
    /// `CMD_SEND`: Wayland bytes and the identifiers standing for their fds.
    Send {
        /// Whether the pre-2024 4-identifier layout was used.
        legacy_layout: bool,
        /// Identifiers in fd order.
        identifiers: Identifiers,
        /// Wayland bytes.
        data: &'a [u8],
    },
    /// `CMD_WRITE`: bytes for a write pipe the host received.
    Write {
        /// Pipe item id.
        identifier: u32,
        /// Whether the guest closed its end after these bytes.
        hang_up: bool,
        /// Pipe bytes.
        data: &'a [u8],
    },
    /// Commands 8 to 13: extensions whose meaning differs between libkrun and rutabaga; framed
    /// so a batch can go on, left to the context to refuse.
    Extension {
        /// The command number.
        cmd: u8,
        /// The whole command, header included.
        bytes: &'a [u8],
    },
}

/// Why a command cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossDomainError {
    /// Fewer bytes than a header.
    #[error("command header needs 8 bytes, {available} left")]
    ShortHeader {
        /// Bytes left.
        available: usize,
    },
    /// `cmd_size` smaller than the command's struct or than the header.
    #[error("command {cmd} has cmd_size {cmd_size}, below its {needed}-byte layout")]
    SizeTooSmall {
        /// Command.
        cmd: u8,
        /// Its `cmd_size`.
        cmd_size: u16,
        /// Smallest valid size.
        needed: usize,
    },
    /// `cmd_size` past the end of the submission.
    #[error("command {cmd} has cmd_size {cmd_size}, past the {available} bytes left")]
    SizePastEnd {
        /// Command.
        cmd: u8,
        /// Its `cmd_size`.
        cmd_size: u16,
        /// Bytes left.
        available: usize,
    },
    /// A `CMD_INIT` size none of the four layouts has.
    #[error("CMD_INIT of {0} bytes matches no known layout (16, 20, 24, 36)")]
    InitSize(u16),
    /// `num_identifiers` above what the layout holds.
    #[error("{count} identifiers, the layout holds at most {max}")]
    TooManyIdentifiers {
        /// Claimed count.
        count: u32,
        /// Layout's capacity.
        max: usize,
    },
    /// The data size does not fit the command.
    #[error("data size {data_size} does not fit a {cmd_size}-byte command")]
    DataSize {
        /// Claimed data size.
        data_size: u32,
        /// The command's size.
        cmd_size: u16,
    },
    /// An unknown command number.
    #[error("unknown cross-domain command {0}")]
    UnknownCommand(u8),
    /// A host-to-guest command sent by the guest.
    #[error("command {0} goes from host to guest, not the other way")]
    WrongDirection(u8),
    /// `hang_up` other than 0 or 1.
    #[error("hang_up must be 0 or 1, not {0}")]
    BadHangUp(u32),
}

/// Iterator over the commands of one `SUBMIT_3D`, walking `hdr.cmd_size`.
///
/// After the first error it yields nothing more: a host cannot know where the next command
/// starts.
#[derive(Debug, Clone)]
pub struct Commands<'a> {
    rest: &'a [u8],
}

impl<'a> Commands<'a> {
    /// Walks `buf`.
    pub fn new(buf: &'a [u8]) -> Commands<'a> {
        Commands { rest: buf }
    }
}

impl<'a> Iterator for Commands<'a> {
    type Item = Result<Command<'a>, CrossDomainError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = decode_command(self.rest);
        match &result {
            Ok((_, used)) => self.rest = &self.rest[*used..],
            Err(_) => self.rest = &[],
        }
        Some(result.map(|(cmd, _)| cmd))
    }
}

/// Decodes the first command of `buf`, returning it and its `cmd_size`.
pub fn decode_command(buf: &[u8]) -> Result<(Command<'_>, usize), CrossDomainError> {
    let (hdr, _) =
        CrossDomainHeader::read_from_prefix(buf).map_err(|_| CrossDomainError::ShortHeader {
            available: buf.len(),
        })?;
    let cmd_size = hdr.cmd_size.get();
    let size = usize::from(cmd_size);
    let bytes = buf.get(..size).ok_or(CrossDomainError::SizePastEnd {
        cmd: hdr.cmd,
        cmd_size,
        available: buf.len(),
    })?;
    let too_small = |needed: usize| CrossDomainError::SizeTooSmall {
        cmd: hdr.cmd,
        cmd_size,
        needed,
    };
    if size < size_of::<CrossDomainHeader>() {
        return Err(too_small(size_of::<CrossDomainHeader>()));
    }
    let command = match hdr.cmd {
        CROSS_DOMAIN_CMD_INIT => decode_init(bytes, cmd_size)?,
        CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS => {
            let (c, _) = CrossDomainGetImageRequirements::read_from_prefix(bytes)
                .map_err(|_| too_small(size_of::<CrossDomainGetImageRequirements>()))?;
            Command::GetImageRequirements {
                width: c.width.get(),
                height: c.height.get(),
                drm_format: c.drm_format.get(),
                flags: c.flags.get(),
            }
        }
        CROSS_DOMAIN_CMD_POLL => {
            // sommelier sends the 16-byte struct; accept a bare header too, it carries nothing.
            Command::Poll
        }
        CROSS_DOMAIN_CMD_SEND => decode_send(bytes, cmd_size)?,
        CROSS_DOMAIN_CMD_WRITE => {
            let (c, data) = CrossDomainReadWrite::read_from_prefix(bytes)
                .map_err(|_| too_small(size_of::<CrossDomainReadWrite>()))?;
            let data_size = c.opaque_data_size.get();
            let data = usize::try_from(data_size)
                .ok()
                .and_then(|n| data.get(..n))
                .ok_or(CrossDomainError::DataSize {
                    data_size,
                    cmd_size,
                })?;
            let hang_up = match c.hang_up.get() {
                0 => false,
                1 => true,
                other => return Err(CrossDomainError::BadHangUp(other)),
            };
            Command::Write {
                identifier: c.identifier.get(),
                hang_up,
                data,
            }
        }
        CROSS_DOMAIN_CMD_RECEIVE | CROSS_DOMAIN_CMD_READ => {
            return Err(CrossDomainError::WrongDirection(hdr.cmd));
        }
        cmd @ CROSS_DOMAIN_CMD_FUTEX_NEW..=CROSS_DOMAIN_CMD_ASSIGN_SOCKET_UUID => {
            Command::Extension { cmd, bytes }
        }
        other => return Err(CrossDomainError::UnknownCommand(other)),
    };
    Ok((command, size))
}

fn decode_init(bytes: &[u8], cmd_size: u16) -> Result<Command<'_>, CrossDomainError> {
    // Dispatch on cmd_size, as upstream does; libkrun's prefix guessing misreads batches.
    let bad = || CrossDomainError::InitSize(cmd_size);
    if cmd_size == 16 {
        let (c, _) = CrossDomainInitLegacy::read_from_prefix(bytes).map_err(|_| bad())?;
        return Ok(Command::Init {
            variant: InitVariant::Legacy,
            query_ring_id: c.query_ring_id.get(),
            channel_ring_id: c.query_ring_id.get(),
            channel_type: c.channel_type.get(),
            protocol_version: None,
            internal_socket_uuid: None,
        });
    }
    // The other layouts are the 20-byte one plus one trailing field.
    let (c, _) = CrossDomainInit::read_from_prefix(bytes).map_err(|_| bad())?;
    let (variant, protocol_version, internal_socket_uuid) = match cmd_size {
        20 => (InitVariant::V0, None, None),
        24 => {
            let (v1, _) = CrossDomainInitV1::read_from_prefix(bytes).map_err(|_| bad())?;
            (InitVariant::V1, Some(v1.protocol_version.get()), None)
        }
        36 => {
            let (v2, _) = CrossDomainInitV2::read_from_prefix(bytes).map_err(|_| bad())?;
            (
                InitVariant::V2,
                None,
                Some(u128::from_le_bytes(v2.internal_socket_uuid)),
            )
        }
        _ => return Err(CrossDomainError::InitSize(cmd_size)),
    };
    Ok(Command::Init {
        variant,
        query_ring_id: c.query_ring_id.get(),
        channel_ring_id: c.channel_ring_id.get(),
        channel_type: c.channel_type.get(),
        protocol_version,
        internal_socket_uuid,
    })
}

/// Both layouts keep `opaque_data_size` at offset 12, so `cmd_size - opaque_data_size` tells
/// them apart: 64 for the 4-identifier layout, 352 (or more, with slack) for the current one.
fn decode_send(bytes: &[u8], cmd_size: u16) -> Result<Command<'_>, CrossDomainError> {
    let too_small = CrossDomainError::SizeTooSmall {
        cmd: CROSS_DOMAIN_CMD_SEND,
        cmd_size,
        needed: size_of::<CrossDomainSendReceiveV0>(),
    };
    let data_size = bytes
        .get(12..16)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(too_small)?;
    let bad_size = CrossDomainError::DataSize {
        data_size,
        cmd_size,
    };
    let header_len = usize::from(cmd_size)
        .checked_sub(usize::try_from(data_size).map_err(|_| bad_size.clone())?)
        .ok_or(bad_size.clone())?;
    let (legacy_layout, identifiers, data) = if header_len >= size_of::<CrossDomainSendReceive>() {
        let (c, rest) =
            CrossDomainSendReceive::read_from_prefix(bytes).map_err(|_| bad_size.clone())?;
        (false, identifiers_of(&c)?, rest)
    } else if header_len == size_of::<CrossDomainSendReceiveV0>() {
        let (c, rest) =
            CrossDomainSendReceiveV0::read_from_prefix(bytes).map_err(|_| bad_size.clone())?;
        (true, identifiers_of(&c)?, rest)
    } else {
        return Err(bad_size);
    };
    let data = data.get(..data_size as usize).ok_or(bad_size)?;
    Ok(Command::Send {
        legacy_layout,
        identifiers,
        data,
    })
}

fn identifiers_of<const N: usize>(
    c: &CrossDomainSendReceiveN<N>,
) -> Result<Identifiers, CrossDomainError> {
    let count = c.num_identifiers.get();
    let n = usize::try_from(count)
        .ok()
        .filter(|n| *n <= N)
        .ok_or(CrossDomainError::TooManyIdentifiers { count, max: N })?;
    Ok((0..n)
        .map(|i| Identifier {
            id: c.identifiers[i].get(),
            id_type: c.identifier_types[i].get(),
            size: c.identifier_sizes[i].get(),
        })
        .collect())
}

/// A host-to-guest message in the channel ring.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingMessage<'a> {
    /// `CMD_RECEIVE`: Wayland bytes from the host compositor with their fds as items. Zero
    /// identifiers and zero bytes mean the host closed the connection.
    Receive {
        /// Items in fd order.
        identifiers: Identifiers,
        /// Wayland bytes.
        data: &'a [u8],
    },
    /// `CMD_READ`: bytes from a read pipe.
    Read {
        /// Pipe id the guest chose.
        identifier: u32,
        /// Whether the host-side writer closed the pipe.
        hang_up: bool,
        /// Pipe bytes.
        data: &'a [u8],
    },
}

/// Why a ring message cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Too many identifiers for one message.
    #[error("{0} identifiers, a ring message holds at most {CROSS_DOMAIN_MAX_IDENTIFIERS}")]
    TooManyIdentifiers(usize),
    /// Too much data for one message.
    #[error("{len} data bytes, a ring message holds at most {max}")]
    TooMuchData {
        /// Bytes given.
        len: usize,
        /// Capacity.
        max: usize,
    },
    /// The ring holds something that is not a complete message.
    #[error("ring holds no valid message: {0}")]
    Malformed(&'static str),
}

impl RingMessage<'_> {
    /// Writes the message at the start of `ring` (a 4096-byte ring page), header bytes 1..8
    /// zero as hosts do. Returns the bytes written.
    pub fn encode(&self, ring: &mut [u8]) -> Result<usize, RingError> {
        match self {
            RingMessage::Receive { identifiers, data } => {
                if data.len() > CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA {
                    return Err(RingError::TooMuchData {
                        len: data.len(),
                        max: CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA,
                    });
                }
                let mut c = CrossDomainSendReceive::default();
                c.hdr.cmd = CROSS_DOMAIN_CMD_RECEIVE;
                c.num_identifiers.set(identifiers.len() as u32);
                c.opaque_data_size.set(data.len() as u32);
                for (i, ident) in identifiers.iter().enumerate() {
                    c.identifiers[i].set(ident.id);
                    c.identifier_types[i].set(ident.id_type);
                    c.identifier_sizes[i].set(ident.size);
                }
                put(ring, c.as_bytes(), data)
            }
            RingMessage::Read {
                identifier,
                hang_up,
                data,
            } => {
                if data.len() > CROSS_DOMAIN_MAX_READ_WRITE_DATA {
                    return Err(RingError::TooMuchData {
                        len: data.len(),
                        max: CROSS_DOMAIN_MAX_READ_WRITE_DATA,
                    });
                }
                let mut c = CrossDomainReadWrite::default();
                c.hdr.cmd = CROSS_DOMAIN_CMD_READ;
                c.identifier.set(*identifier);
                c.hang_up.set(u32::from(*hang_up));
                c.opaque_data_size.set(data.len() as u32);
                put(ring, c.as_bytes(), data)
            }
        }
    }

    /// Reads the message at the start of a ring page, dispatching on the first u32 like
    /// wayland-proxy-virtwl (hosts leave `cmd_size` at 0).
    pub fn decode(ring: &[u8]) -> Result<RingMessage<'_>, RingError> {
        let cmd = ring
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(RingError::Malformed("shorter than a header"))?;
        match cmd {
            c if c == u32::from(CROSS_DOMAIN_CMD_RECEIVE) => {
                let (c, rest) = CrossDomainSendReceive::read_from_prefix(ring)
                    .map_err(|_| RingError::Malformed("RECEIVE header truncated"))?;
                let count = c.num_identifiers.get() as usize;
                if count > CROSS_DOMAIN_MAX_IDENTIFIERS {
                    return Err(RingError::TooManyIdentifiers(count));
                }
                let identifiers =
                    identifiers_of(&c).map_err(|_| RingError::TooManyIdentifiers(count))?;
                let data = rest
                    .get(..c.opaque_data_size.get() as usize)
                    .ok_or(RingError::Malformed("RECEIVE data past the ring"))?;
                Ok(RingMessage::Receive { identifiers, data })
            }
            c if c == u32::from(CROSS_DOMAIN_CMD_READ) => {
                let (c, rest) = CrossDomainReadWrite::read_from_prefix(ring)
                    .map_err(|_| RingError::Malformed("READ header truncated"))?;
                let data = rest
                    .get(..c.opaque_data_size.get() as usize)
                    .ok_or(RingError::Malformed("READ data past the ring"))?;
                Ok(RingMessage::Read {
                    identifier: c.identifier.get(),
                    hang_up: c.hang_up.get() != 0,
                    data,
                })
            }
            _ => Err(RingError::Malformed(
                "first word is neither RECEIVE nor READ",
            )),
        }
    }
}

fn put(ring: &mut [u8], header: &[u8], data: &[u8]) -> Result<usize, RingError> {
    let len = header.len() + data.len();
    let max = ring.len();
    let out = ring
        .get_mut(..len)
        .ok_or(RingError::TooMuchData { len, max })?;
    out[..header.len()].copy_from_slice(header);
    out[header.len()..].copy_from_slice(data);
    Ok(len)
}

/// Encoders for guest-to-host commands, as a guest agent submits them.
pub mod encode {
    use super::*;

    fn header(cmd: u8, size: usize) -> CrossDomainHeader {
        CrossDomainHeader {
            cmd,
            ring_idx: 0,
            cmd_size: U16::new(size as u16),
            pad: U32::ZERO,
        }
    }

    /// The 20-byte `CMD_INIT` every Wayland guest agent sends.
    pub fn init(out: &mut Vec<u8>, query_ring_id: u32, channel_ring_id: u32, channel_type: u32) {
        let c = CrossDomainInit {
            hdr: header(CROSS_DOMAIN_CMD_INIT, size_of::<CrossDomainInit>()),
            query_ring_id: query_ring_id.into(),
            channel_ring_id: channel_ring_id.into(),
            channel_type: channel_type.into(),
        };
        out.extend_from_slice(c.as_bytes());
    }

    /// `CMD_GET_IMAGE_REQUIREMENTS`.
    pub fn get_image_requirements(
        out: &mut Vec<u8>,
        width: u32,
        height: u32,
        drm_format: u32,
        flags: u32,
    ) {
        let c = CrossDomainGetImageRequirements {
            hdr: header(
                CROSS_DOMAIN_CMD_GET_IMAGE_REQUIREMENTS,
                size_of::<CrossDomainGetImageRequirements>(),
            ),
            width: width.into(),
            height: height.into(),
            drm_format: drm_format.into(),
            flags: flags.into(),
        };
        out.extend_from_slice(c.as_bytes());
    }

    /// `CMD_POLL`.
    pub fn poll(out: &mut Vec<u8>) {
        let c = CrossDomainPoll {
            hdr: header(CROSS_DOMAIN_CMD_POLL, size_of::<CrossDomainPoll>()),
            pad: U64::ZERO,
        };
        out.extend_from_slice(c.as_bytes());
    }

    /// `CMD_SEND` in the 28-identifier layout.
    pub fn send(
        out: &mut Vec<u8>,
        identifiers: &[Identifier],
        data: &[u8],
    ) -> Result<(), RingError> {
        if identifiers.len() > CROSS_DOMAIN_MAX_IDENTIFIERS {
            return Err(RingError::TooManyIdentifiers(identifiers.len()));
        }
        let max = usize::from(u16::MAX) - size_of::<CrossDomainSendReceive>();
        if data.len() > max {
            return Err(RingError::TooMuchData {
                len: data.len(),
                max,
            });
        }
        let mut c = CrossDomainSendReceive {
            hdr: header(
                CROSS_DOMAIN_CMD_SEND,
                size_of::<CrossDomainSendReceive>() + data.len(),
            ),
            ..Default::default()
        };
        c.num_identifiers.set(identifiers.len() as u32);
        c.opaque_data_size.set(data.len() as u32);
        for (i, ident) in identifiers.iter().enumerate() {
            c.identifiers[i].set(ident.id);
            c.identifier_types[i].set(ident.id_type);
            c.identifier_sizes[i].set(ident.size);
        }
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(data);
        Ok(())
    }

    /// `CMD_WRITE`.
    pub fn write(
        out: &mut Vec<u8>,
        identifier: u32,
        hang_up: bool,
        data: &[u8],
    ) -> Result<(), RingError> {
        let max = usize::from(u16::MAX) - size_of::<CrossDomainReadWrite>();
        if data.len() > max {
            return Err(RingError::TooMuchData {
                len: data.len(),
                max,
            });
        }
        let c = CrossDomainReadWrite {
            hdr: header(
                CROSS_DOMAIN_CMD_WRITE,
                size_of::<CrossDomainReadWrite>() + data.len(),
            ),
            identifier: identifier.into(),
            hang_up: u32::from(hang_up).into(),
            opaque_data_size: (data.len() as u32).into(),
            pad: U32::ZERO,
        };
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(data);
        Ok(())
    }
}

/// The guessed read-pipe id sequence both sides keep: pre-increment from
/// [`CROSS_DOMAIN_PIPE_READ_START`], wrapping back to it (so the first id is `0x80000001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeIds {
    last: u32,
}

impl Default for PipeIds {
    fn default() -> Self {
        PipeIds {
            last: CROSS_DOMAIN_PIPE_READ_START,
        }
    }
}

impl PipeIds {
    /// The next read-pipe id.
    pub fn next_id(&mut self) -> u32 {
        self.last = self
            .last
            .checked_add(1)
            .unwrap_or(CROSS_DOMAIN_PIPE_READ_START);
        self.last
    }
}
