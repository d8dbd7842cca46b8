//! virtio-gpu wire structs and the control/cursor command decoder.
//!
//! Layouts follow `include/uapi/linux/virtio_gpu.h` (Linux 7.2) and the virtio 1.3 spec,
//! section 5.7; struct names keep the C names so they grep against the header. Everything is
//! little-endian, `repr(C)` without implicit padding, sizes asserted at compile time.
//!
//! [`GpuCommand::decode`] takes the readable bytes of one descriptor chain and trusts nothing
//! in them: every count and length is checked against the bytes actually present and against
//! the decoder's own caps before anything is allocated.

#![allow(non_camel_case_types)]
// zerocopy's KnownLayout derive emits helper types without Debug when expanded from `wire!`.
#![allow(missing_debug_implementations)]

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

// Feature bits (virtio spec 5.7.3).
/// 3D mode; the Linux driver needs it for context init and HOST3D blobs.
pub const VIRTIO_GPU_F_VIRGL: u32 = 0;
/// `GET_EDID` is supported.
pub const VIRTIO_GPU_F_EDID: u32 = 1;
/// `RESOURCE_ASSIGN_UUID` is supported.
pub const VIRTIO_GPU_F_RESOURCE_UUID: u32 = 2;
/// Blob resources.
pub const VIRTIO_GPU_F_RESOURCE_BLOB: u32 = 3;
/// Context types and per-context fence rings.
pub const VIRTIO_GPU_F_CONTEXT_INIT: u32 = 4;

// Commands.
/// 2D: display modes.
pub const VIRTIO_GPU_CMD_GET_DISPLAY_INFO: u32 = 0x0100;
/// 2D: create a host resource.
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
/// Drop a resource.
pub const VIRTIO_GPU_CMD_RESOURCE_UNREF: u32 = 0x0102;
/// Show a resource on a scanout.
pub const VIRTIO_GPU_CMD_SET_SCANOUT: u32 = 0x0103;
/// A rectangle of a resource changed.
pub const VIRTIO_GPU_CMD_RESOURCE_FLUSH: u32 = 0x0104;
/// Copy from guest backing to the host resource.
pub const VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
/// Give a resource guest pages.
pub const VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
/// Take them back.
pub const VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: u32 = 0x0107;
/// Capset by index.
pub const VIRTIO_GPU_CMD_GET_CAPSET_INFO: u32 = 0x0108;
/// Capset payload.
pub const VIRTIO_GPU_CMD_GET_CAPSET: u32 = 0x0109;
/// EDID of a scanout.
pub const VIRTIO_GPU_CMD_GET_EDID: u32 = 0x010a;
/// UUID for cross-device sharing.
pub const VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID: u32 = 0x010b;
/// Blob resource.
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB: u32 = 0x010c;
/// Show a blob on a scanout.
pub const VIRTIO_GPU_CMD_SET_SCANOUT_BLOB: u32 = 0x010d;
/// Create a rendering context.
pub const VIRTIO_GPU_CMD_CTX_CREATE: u32 = 0x0200;
/// Destroy it.
pub const VIRTIO_GPU_CMD_CTX_DESTROY: u32 = 0x0201;
/// Make a resource visible to a context.
pub const VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE: u32 = 0x0202;
/// Hide it again.
pub const VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE: u32 = 0x0203;
/// virgl resource (unsupported).
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_3D: u32 = 0x0204;
/// virgl transfer (unsupported).
pub const VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D: u32 = 0x0205;
/// virgl transfer (unsupported).
pub const VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D: u32 = 0x0206;
/// Context command stream.
pub const VIRTIO_GPU_CMD_SUBMIT_3D: u32 = 0x0207;
/// Map a host blob into the host-visible region.
pub const VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB: u32 = 0x0208;
/// Unmap it.
pub const VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB: u32 = 0x0209;
/// Cursor image and position.
pub const VIRTIO_GPU_CMD_UPDATE_CURSOR: u32 = 0x0300;
/// Cursor position.
pub const VIRTIO_GPU_CMD_MOVE_CURSOR: u32 = 0x0301;

// Responses.
/// Success, no payload.
pub const VIRTIO_GPU_RESP_OK_NODATA: u32 = 0x1100;
/// `virtio_gpu_resp_display_info`.
pub const VIRTIO_GPU_RESP_OK_DISPLAY_INFO: u32 = 0x1101;
/// `virtio_gpu_resp_capset_info`.
pub const VIRTIO_GPU_RESP_OK_CAPSET_INFO: u32 = 0x1102;
/// `virtio_gpu_resp_capset`.
pub const VIRTIO_GPU_RESP_OK_CAPSET: u32 = 0x1103;
/// `virtio_gpu_resp_edid`.
pub const VIRTIO_GPU_RESP_OK_EDID: u32 = 0x1104;
/// `virtio_gpu_resp_resource_uuid`.
pub const VIRTIO_GPU_RESP_OK_RESOURCE_UUID: u32 = 0x1105;
/// `virtio_gpu_resp_map_info`.
pub const VIRTIO_GPU_RESP_OK_MAP_INFO: u32 = 0x1106;
/// Unspecified error.
pub const VIRTIO_GPU_RESP_ERR_UNSPEC: u32 = 0x1200;
/// Out of memory (also: a per-VM limit was hit).
pub const VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
/// Bad scanout id.
pub const VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
/// Bad resource id.
pub const VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
/// Bad context id.
pub const VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
/// Bad parameter.
pub const VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

/// `hdr.flags`: the command carries a fence.
pub const VIRTIO_GPU_FLAG_FENCE: u32 = 1 << 0;
/// `hdr.flags`: `ring_idx` is valid (context-init devices).
pub const VIRTIO_GPU_FLAG_INFO_RING_IDX: u32 = 1 << 1;

/// Scanouts the protocol allows.
pub const VIRTIO_GPU_MAX_SCANOUTS: usize = 16;
/// Rings a context may have (`ring_idx` is 0..64).
pub const VIRTIO_GPU_MAX_RINGS: u8 = 64;
/// `ctx_create.context_init` bits naming the capset.
pub const VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK: u32 = 0xff;

/// Blob backed by guest pages.
pub const VIRTIO_GPU_BLOB_MEM_GUEST: u32 = 1;
/// Blob allocated by the host (a context's `blob_id`).
pub const VIRTIO_GPU_BLOB_MEM_HOST3D: u32 = 2;
/// Host blob with guest backing (unsupported).
pub const VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST: u32 = 3;
/// Blob may be mapped (`RESOURCE_MAP_BLOB`, or guest mmap of a guest blob).
pub const VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE: u32 = 1 << 0;
/// Blob may be shared (exported).
pub const VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE: u32 = 1 << 1;
/// Blob may be shared across devices (needs RESOURCE_UUID).
pub const VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE: u32 = 1 << 2;

/// Shared-memory region id of the host-visible window.
pub const VIRTIO_GPU_SHM_ID_HOST_VISIBLE: u8 = 1;
/// `map_info`: cached mapping.
pub const VIRTIO_GPU_MAP_CACHE_CACHED: u32 = 1;

/// DRM-style formats of `RESOURCE_CREATE_2D` (`enum virtio_gpu_formats`).
pub const VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM: u32 = 1;
/// `B8G8R8X8`.
pub const VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM: u32 = 2;
/// `A8R8G8B8`.
pub const VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM: u32 = 3;
/// `X8R8G8B8`.
pub const VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM: u32 = 4;
/// `R8G8B8A8`.
pub const VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM: u32 = 67;
/// `X8B8G8R8`.
pub const VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM: u32 = 68;
/// `A8B8G8R8`.
pub const VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM: u32 = 121;
/// `R8G8B8X8`.
pub const VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM: u32 = 134;

/// Every struct below derives these.
macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout,
                 Immutable, Unaligned)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }

        impl Default for $name {
            fn default() -> Self {
                <Self as zerocopy::FromZeros>::new_zeroed()
            }
        }
    };
}

wire! {
    /// Header of every request and response.
    pub struct virtio_gpu_ctrl_hdr {
        /// `VIRTIO_GPU_CMD_*` or `VIRTIO_GPU_RESP_*`.
        pub type_: U32,
        /// `VIRTIO_GPU_FLAG_*`.
        pub flags: U32,
        /// Fence sequence number.
        pub fence_id: U64,
        /// Context the command belongs to.
        pub ctx_id: U32,
        /// Fence ring, with `FLAG_INFO_RING_IDX`.
        pub ring_idx: u8,
        /// Zero.
        pub padding: [u8; 3],
    }
}

wire! {
    /// Rectangle.
    pub struct virtio_gpu_rect {
        /// Left.
        pub x: U32,
        /// Top.
        pub y: U32,
        /// Width.
        pub width: U32,
        /// Height.
        pub height: U32,
    }
}

wire! {
    /// One scanout in `virtio_gpu_resp_display_info`.
    pub struct virtio_gpu_display_one {
        /// Mode.
        pub r: virtio_gpu_rect,
        /// Non-zero if connected.
        pub enabled: U32,
        /// Zero.
        pub flags: U32,
    }
}

wire! {
    /// Response to `GET_DISPLAY_INFO`.
    pub struct virtio_gpu_resp_display_info {
        /// Header.
        pub hdr: virtio_gpu_ctrl_hdr,
        /// One per possible scanout.
        pub pmodes: [virtio_gpu_display_one; VIRTIO_GPU_MAX_SCANOUTS],
    }
}

wire! {
    /// `GET_EDID`.
    pub struct virtio_gpu_cmd_get_edid {
        /// Scanout.
        pub scanout: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// Response to `GET_EDID`.
    pub struct virtio_gpu_resp_edid {
        /// Header.
        pub hdr: virtio_gpu_ctrl_hdr,
        /// Valid bytes of `edid`.
        pub size: U32,
        /// Zero.
        pub padding: U32,
        /// EDID blocks.
        pub edid: [u8; 1024],
    }
}

wire! {
    /// `RESOURCE_CREATE_2D` (after the header).
    pub struct virtio_gpu_resource_create_2d {
        /// Guest-chosen id, non-zero.
        pub resource_id: U32,
        /// `VIRTIO_GPU_FORMAT_*`.
        pub format: U32,
        /// Width in pixels.
        pub width: U32,
        /// Height in pixels.
        pub height: U32,
    }
}

wire! {
    /// `RESOURCE_UNREF`, `RESOURCE_DETACH_BACKING`, `RESOURCE_ASSIGN_UUID`,
    /// `RESOURCE_UNMAP_BLOB`, `CTX_ATTACH_RESOURCE`, `CTX_DETACH_RESOURCE` (after the header).
    pub struct virtio_gpu_resource_unref {
        /// Resource.
        pub resource_id: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// `SET_SCANOUT`.
    pub struct virtio_gpu_set_scanout {
        /// Visible rectangle.
        pub r: virtio_gpu_rect,
        /// Scanout.
        pub scanout_id: U32,
        /// Resource, 0 disables.
        pub resource_id: U32,
    }
}

wire! {
    /// `RESOURCE_FLUSH`.
    pub struct virtio_gpu_resource_flush {
        /// Damage.
        pub r: virtio_gpu_rect,
        /// Resource.
        pub resource_id: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// `TRANSFER_TO_HOST_2D`.
    pub struct virtio_gpu_transfer_to_host_2d {
        /// Rectangle to copy.
        pub r: virtio_gpu_rect,
        /// Offset of the rectangle's first byte in the backing.
        pub offset: U64,
        /// Resource.
        pub resource_id: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// One scatter-list entry.
    pub struct virtio_gpu_mem_entry {
        /// Guest-physical address.
        pub addr: U64,
        /// Bytes.
        pub length: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// `RESOURCE_ATTACH_BACKING`, followed by `nr_entries` mem entries.
    pub struct virtio_gpu_resource_attach_backing {
        /// Resource.
        pub resource_id: U32,
        /// Entries that follow.
        pub nr_entries: U32,
    }
}

wire! {
    /// `GET_CAPSET_INFO`.
    pub struct virtio_gpu_get_capset_info {
        /// Index, `0..num_capsets`.
        pub capset_index: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// Response to `GET_CAPSET_INFO`.
    pub struct virtio_gpu_resp_capset_info {
        /// Header.
        pub hdr: virtio_gpu_ctrl_hdr,
        /// Capset id.
        pub capset_id: U32,
        /// Highest version.
        pub capset_max_version: U32,
        /// Payload size.
        pub capset_max_size: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// `GET_CAPSET`.
    pub struct virtio_gpu_get_capset {
        /// Capset id.
        pub capset_id: U32,
        /// Version wanted.
        pub capset_version: U32,
    }
}

wire! {
    /// `RESOURCE_CREATE_BLOB`, followed by `nr_entries` mem entries.
    pub struct virtio_gpu_resource_create_blob {
        /// Resource.
        pub resource_id: U32,
        /// `VIRTIO_GPU_BLOB_MEM_*`.
        pub blob_mem: U32,
        /// `VIRTIO_GPU_BLOB_FLAG_*`.
        pub blob_flags: U32,
        /// Entries that follow.
        pub nr_entries: U32,
        /// Context's blob id (HOST3D).
        pub blob_id: U64,
        /// Bytes.
        pub size: U64,
    }
}

wire! {
    /// `SET_SCANOUT_BLOB`.
    pub struct virtio_gpu_set_scanout_blob {
        /// Visible rectangle.
        pub r: virtio_gpu_rect,
        /// Scanout.
        pub scanout_id: U32,
        /// Resource.
        pub resource_id: U32,
        /// Width.
        pub width: U32,
        /// Height.
        pub height: U32,
        /// `VIRTIO_GPU_FORMAT_*`.
        pub format: U32,
        /// Zero.
        pub padding: U32,
        /// Plane strides.
        pub strides: [U32; 4],
        /// Plane offsets.
        pub offsets: [U32; 4],
    }
}

wire! {
    /// `CTX_CREATE`.
    pub struct virtio_gpu_ctx_create {
        /// Valid bytes of `debug_name`.
        pub nlen: U32,
        /// Low 8 bits: capset id (0: legacy virgl).
        pub context_init: U32,
        /// Name for logs.
        pub debug_name: [u8; 64],
    }
}

wire! {
    /// `SUBMIT_3D`, followed by `size` bytes.
    pub struct virtio_gpu_cmd_submit {
        /// Command bytes that follow.
        pub size: U32,
        /// Zero upstream (crosvm's old `num_in_fences`).
        pub padding: U32,
    }
}

wire! {
    /// `RESOURCE_MAP_BLOB`.
    pub struct virtio_gpu_resource_map_blob {
        /// Resource.
        pub resource_id: U32,
        /// Zero.
        pub padding: U32,
        /// Offset inside the host-visible region.
        pub offset: U64,
    }
}

wire! {
    /// Response to `RESOURCE_MAP_BLOB`.
    pub struct virtio_gpu_resp_map_info {
        /// Header.
        pub hdr: virtio_gpu_ctrl_hdr,
        /// `VIRTIO_GPU_MAP_CACHE_*`.
        pub map_info: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// Response to `RESOURCE_ASSIGN_UUID`.
    pub struct virtio_gpu_resp_resource_uuid {
        /// Header.
        pub hdr: virtio_gpu_ctrl_hdr,
        /// UUID.
        pub uuid: [u8; 16],
    }
}

wire! {
    /// Cursor position.
    pub struct virtio_gpu_cursor_pos {
        /// Scanout.
        pub scanout_id: U32,
        /// X.
        pub x: U32,
        /// Y.
        pub y: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// `UPDATE_CURSOR` and `MOVE_CURSOR`.
    pub struct virtio_gpu_update_cursor {
        /// Position.
        pub pos: virtio_gpu_cursor_pos,
        /// Cursor image (64x64), 0 hides.
        pub resource_id: U32,
        /// Hotspot x.
        pub hot_x: U32,
        /// Hotspot y.
        pub hot_y: U32,
        /// Zero.
        pub padding: U32,
    }
}

wire! {
    /// Device configuration space.
    pub struct virtio_gpu_config {
        /// Pending events.
        pub events_read: U32,
        /// Events to clear (write-only).
        pub events_clear: U32,
        /// Scanouts.
        pub num_scanouts: U32,
        /// Capsets, i.e. valid `GET_CAPSET_INFO` indices.
        pub num_capsets: U32,
    }
}

const _: () = {
    assert!(size_of::<virtio_gpu_ctrl_hdr>() == 24);
    assert!(size_of::<virtio_gpu_resp_display_info>() == 408);
    assert!(size_of::<virtio_gpu_resp_edid>() == 24 + 8 + 1024);
    assert!(size_of::<virtio_gpu_resource_create_2d>() + 24 == 40);
    assert!(size_of::<virtio_gpu_set_scanout>() + 24 == 48);
    assert!(size_of::<virtio_gpu_resource_flush>() + 24 == 48);
    assert!(size_of::<virtio_gpu_transfer_to_host_2d>() + 24 == 56);
    assert!(size_of::<virtio_gpu_mem_entry>() == 16);
    assert!(size_of::<virtio_gpu_resource_attach_backing>() + 24 == 32);
    assert!(size_of::<virtio_gpu_resp_capset_info>() == 40);
    assert!(size_of::<virtio_gpu_resource_create_blob>() + 24 == 56);
    assert!(size_of::<virtio_gpu_set_scanout_blob>() + 24 == 96);
    assert!(size_of::<virtio_gpu_ctx_create>() + 24 == 96);
    assert!(size_of::<virtio_gpu_cmd_submit>() + 24 == 32);
    assert!(size_of::<virtio_gpu_resource_map_blob>() + 24 == 40);
    assert!(size_of::<virtio_gpu_resp_map_info>() == 32);
    assert!(size_of::<virtio_gpu_resp_resource_uuid>() == 40);
    assert!(size_of::<virtio_gpu_update_cursor>() + 24 == 56);
    assert!(size_of::<virtio_gpu_config>() == 16);
};

/// Most mem entries one command may carry. Linux sends one per contiguous run of pages; a
/// 4K XRGB buffer on fully scattered 4 KiB pages is 8100 entries.
pub const MAX_MEM_ENTRIES: u32 = 16 * 1024;
/// Most bytes one `SUBMIT_3D` may carry (Linux caps execbuffers at far less in practice).
pub const MAX_SUBMIT_SIZE: u32 = 1 << 20;
/// Most readable bytes the device reads from one descriptor chain.
pub const MAX_REQUEST_SIZE: usize =
    size_of::<virtio_gpu_ctrl_hdr>() + 64 + MAX_MEM_ENTRIES as usize * 16;

/// Why request bytes are not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header.
    #[error("request of {0} bytes is shorter than the 24-byte header")]
    ShortHeader(usize),
    /// Fewer bytes than the command's fixed part.
    #[error("command {cmd:#x} needs {need} bytes, got {got}")]
    Short {
        /// Command type.
        cmd: u32,
        /// Bytes the fixed part and any counted trailer need.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// A count above the decoder's cap.
    #[error("command {cmd:#x} claims {count} {what}, more than the limit {limit}")]
    TooMany {
        /// Command type.
        cmd: u32,
        /// What was counted.
        what: &'static str,
        /// Claimed count.
        count: u32,
        /// Cap.
        limit: u32,
    },
    /// A command type the device does not know.
    #[error("unknown command {0:#x}")]
    Unknown(u32),
}

impl DecodeError {
    /// The response code the guest gets for this error.
    pub fn response(&self) -> u32 {
        match self {
            DecodeError::Unknown(_) => VIRTIO_GPU_RESP_ERR_UNSPEC,
            _ => VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        }
    }
}

/// One decoded request. Variable-length parts borrow the request bytes: the virtqueue loop
/// reads each chain into one reused buffer, and `SUBMIT_3D` is the per-message hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuCommand<'a> {
    /// `GET_DISPLAY_INFO`.
    GetDisplayInfo,
    /// `GET_EDID`.
    GetEdid(virtio_gpu_cmd_get_edid),
    /// `RESOURCE_CREATE_2D`.
    ResourceCreate2d(virtio_gpu_resource_create_2d),
    /// `RESOURCE_UNREF`.
    ResourceUnref(virtio_gpu_resource_unref),
    /// `SET_SCANOUT`.
    SetScanout(virtio_gpu_set_scanout),
    /// `SET_SCANOUT_BLOB`.
    SetScanoutBlob(virtio_gpu_set_scanout_blob),
    /// `RESOURCE_FLUSH`.
    ResourceFlush(virtio_gpu_resource_flush),
    /// `TRANSFER_TO_HOST_2D`.
    TransferToHost2d(virtio_gpu_transfer_to_host_2d),
    /// `RESOURCE_ATTACH_BACKING` with its entries.
    ResourceAttachBacking(
        virtio_gpu_resource_attach_backing,
        &'a [virtio_gpu_mem_entry],
    ),
    /// `RESOURCE_DETACH_BACKING`.
    ResourceDetachBacking(virtio_gpu_resource_unref),
    /// `GET_CAPSET_INFO`.
    GetCapsetInfo(virtio_gpu_get_capset_info),
    /// `GET_CAPSET`.
    GetCapset(virtio_gpu_get_capset),
    /// `RESOURCE_ASSIGN_UUID`.
    ResourceAssignUuid(virtio_gpu_resource_unref),
    /// `RESOURCE_CREATE_BLOB` with its entries.
    ResourceCreateBlob(virtio_gpu_resource_create_blob, &'a [virtio_gpu_mem_entry]),
    /// `CTX_CREATE`.
    CtxCreate(virtio_gpu_ctx_create),
    /// `CTX_DESTROY`.
    CtxDestroy,
    /// `CTX_ATTACH_RESOURCE`.
    CtxAttachResource(virtio_gpu_resource_unref),
    /// `CTX_DETACH_RESOURCE`.
    CtxDetachResource(virtio_gpu_resource_unref),
    /// `SUBMIT_3D` with its command bytes.
    Submit3d(&'a [u8]),
    /// `RESOURCE_MAP_BLOB`.
    ResourceMapBlob(virtio_gpu_resource_map_blob),
    /// `RESOURCE_UNMAP_BLOB`.
    ResourceUnmapBlob(virtio_gpu_resource_unref),
    /// `UPDATE_CURSOR`.
    UpdateCursor(virtio_gpu_update_cursor),
    /// `MOVE_CURSOR`.
    MoveCursor(virtio_gpu_update_cursor),
    /// virgl 3D commands: known, not supported.
    Unsupported(u32),
}

/// A request: header plus command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The header as sent.
    pub hdr: virtio_gpu_ctrl_hdr,
    /// The command.
    pub cmd: GpuCommand<'a>,
}

fn fixed<T: FromBytes + KnownLayout + Immutable + Copy>(
    cmd: u32,
    body: &[u8],
) -> Result<(T, &[u8]), DecodeError> {
    T::read_from_prefix(body).map_err(|_| DecodeError::Short {
        cmd,
        need: size_of::<virtio_gpu_ctrl_hdr>() + size_of::<T>(),
        got: size_of::<virtio_gpu_ctrl_hdr>() + body.len(),
    })
}

fn entries(cmd: u32, count: u32, rest: &[u8]) -> Result<&[virtio_gpu_mem_entry], DecodeError> {
    if count > MAX_MEM_ENTRIES {
        return Err(DecodeError::TooMany {
            cmd,
            what: "mem entries",
            count,
            limit: MAX_MEM_ENTRIES,
        });
    }
    // `count` is at most MAX_MEM_ENTRIES, so this cannot overflow.
    let need = count as usize * size_of::<virtio_gpu_mem_entry>();
    let bytes = rest.get(..need).ok_or(DecodeError::Short {
        cmd,
        need,
        got: rest.len(),
    })?;
    // The entries are unaligned and `need` is a whole number of them: this cannot fail.
    <[virtio_gpu_mem_entry]>::ref_from_bytes(bytes).map_err(|_| DecodeError::Short {
        cmd,
        need,
        got: rest.len(),
    })
}

impl<'a> GpuCommand<'a> {
    /// Decodes the readable bytes of one descriptor chain.
    pub fn decode(bytes: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let (hdr, body) = virtio_gpu_ctrl_hdr::read_from_prefix(bytes)
            .map_err(|_| DecodeError::ShortHeader(bytes.len()))?;
        let t = hdr.type_.get();
        let cmd = match t {
            VIRTIO_GPU_CMD_GET_DISPLAY_INFO => GpuCommand::GetDisplayInfo,
            VIRTIO_GPU_CMD_GET_EDID => GpuCommand::GetEdid(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => GpuCommand::ResourceCreate2d(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_RESOURCE_UNREF => GpuCommand::ResourceUnref(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_SET_SCANOUT => GpuCommand::SetScanout(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_SET_SCANOUT_BLOB => GpuCommand::SetScanoutBlob(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_RESOURCE_FLUSH => GpuCommand::ResourceFlush(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => GpuCommand::TransferToHost2d(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => {
                let (a, rest): (virtio_gpu_resource_attach_backing, _) = fixed(t, body)?;
                let e = entries(t, a.nr_entries.get(), rest)?;
                GpuCommand::ResourceAttachBacking(a, e)
            }
            VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING => {
                GpuCommand::ResourceDetachBacking(fixed(t, body)?.0)
            }
            VIRTIO_GPU_CMD_GET_CAPSET_INFO => GpuCommand::GetCapsetInfo(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_GET_CAPSET => GpuCommand::GetCapset(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID => {
                GpuCommand::ResourceAssignUuid(fixed(t, body)?.0)
            }
            VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => {
                let (b, rest): (virtio_gpu_resource_create_blob, _) = fixed(t, body)?;
                let e = entries(t, b.nr_entries.get(), rest)?;
                GpuCommand::ResourceCreateBlob(b, e)
            }
            VIRTIO_GPU_CMD_CTX_CREATE => GpuCommand::CtxCreate(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_CTX_DESTROY => GpuCommand::CtxDestroy,
            VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE => GpuCommand::CtxAttachResource(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE => GpuCommand::CtxDetachResource(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_SUBMIT_3D => {
                let (s, rest): (virtio_gpu_cmd_submit, _) = fixed(t, body)?;
                let size = s.size.get();
                if size > MAX_SUBMIT_SIZE {
                    return Err(DecodeError::TooMany {
                        cmd: t,
                        what: "submit bytes",
                        count: size,
                        limit: MAX_SUBMIT_SIZE,
                    });
                }
                let data = rest.get(..size as usize).ok_or(DecodeError::Short {
                    cmd: t,
                    need: size as usize,
                    got: rest.len(),
                })?;
                GpuCommand::Submit3d(data)
            }
            VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB => GpuCommand::ResourceMapBlob(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB => GpuCommand::ResourceUnmapBlob(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_UPDATE_CURSOR => GpuCommand::UpdateCursor(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_MOVE_CURSOR => GpuCommand::MoveCursor(fixed(t, body)?.0),
            VIRTIO_GPU_CMD_RESOURCE_CREATE_3D
            | VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D
            | VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D => GpuCommand::Unsupported(t),
            other => return Err(DecodeError::Unknown(other)),
        };
        Ok(Request { hdr, cmd })
    }
}

/// A response, before its header is filled in from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuResponse {
    /// `OK_NODATA`.
    OkNoData,
    /// `OK_DISPLAY_INFO`.
    OkDisplayInfo(Box<[virtio_gpu_display_one; VIRTIO_GPU_MAX_SCANOUTS]>),
    /// `OK_CAPSET_INFO`: id, max version, max size.
    OkCapsetInfo {
        /// Capset id.
        id: u32,
        /// Highest version.
        max_version: u32,
        /// Payload size.
        max_size: u32,
    },
    /// `OK_CAPSET` with its payload.
    OkCapset(Vec<u8>),
    /// `OK_EDID` with its blocks.
    OkEdid(Vec<u8>),
    /// `OK_RESOURCE_UUID`.
    OkResourceUuid([u8; 16]),
    /// `OK_MAP_INFO`.
    OkMapInfo(u32),
    /// An `ERR_*` code.
    Err(u32),
}

impl GpuResponse {
    /// The `VIRTIO_GPU_RESP_*` type.
    pub fn type_(&self) -> u32 {
        match self {
            GpuResponse::OkNoData => VIRTIO_GPU_RESP_OK_NODATA,
            GpuResponse::OkDisplayInfo(_) => VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
            GpuResponse::OkCapsetInfo { .. } => VIRTIO_GPU_RESP_OK_CAPSET_INFO,
            GpuResponse::OkCapset(_) => VIRTIO_GPU_RESP_OK_CAPSET,
            GpuResponse::OkEdid(_) => VIRTIO_GPU_RESP_OK_EDID,
            GpuResponse::OkResourceUuid(_) => VIRTIO_GPU_RESP_OK_RESOURCE_UUID,
            GpuResponse::OkMapInfo(_) => VIRTIO_GPU_RESP_OK_MAP_INFO,
            GpuResponse::Err(code) => *code,
        }
    }

    /// The response bytes. The header echoes the request's fence flag, fence id, context and
    /// ring (virtio spec 5.7.6.7: a fenced request gets a fenced response).
    pub fn encode(&self, req: &virtio_gpu_ctrl_hdr) -> Vec<u8> {
        let flags = req.flags.get() & (VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX);
        let hdr = virtio_gpu_ctrl_hdr {
            type_: self.type_().into(),
            flags: flags.into(),
            fence_id: if flags & VIRTIO_GPU_FLAG_FENCE != 0 {
                req.fence_id
            } else {
                U64::ZERO
            },
            ctx_id: req.ctx_id,
            ring_idx: if flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0 {
                req.ring_idx
            } else {
                0
            },
            padding: [0; 3],
        };
        match self {
            GpuResponse::OkDisplayInfo(pmodes) => virtio_gpu_resp_display_info {
                hdr,
                pmodes: **pmodes,
            }
            .as_bytes()
            .to_vec(),
            GpuResponse::OkCapsetInfo {
                id,
                max_version,
                max_size,
            } => virtio_gpu_resp_capset_info {
                hdr,
                capset_id: (*id).into(),
                capset_max_version: (*max_version).into(),
                capset_max_size: (*max_size).into(),
                padding: U32::ZERO,
            }
            .as_bytes()
            .to_vec(),
            GpuResponse::OkCapset(data) => {
                let mut out = hdr.as_bytes().to_vec();
                out.extend_from_slice(data);
                out
            }
            GpuResponse::OkEdid(data) => {
                let mut resp = virtio_gpu_resp_edid {
                    hdr,
                    ..Default::default()
                };
                let n = data.len().min(resp.edid.len());
                resp.edid[..n].copy_from_slice(&data[..n]);
                resp.size = (n as u32).into();
                resp.as_bytes().to_vec()
            }
            GpuResponse::OkResourceUuid(uuid) => virtio_gpu_resp_resource_uuid { hdr, uuid: *uuid }
                .as_bytes()
                .to_vec(),
            GpuResponse::OkMapInfo(info) => virtio_gpu_resp_map_info {
                hdr,
                map_info: (*info).into(),
                padding: U32::ZERO,
            }
            .as_bytes()
            .to_vec(),
            GpuResponse::OkNoData | GpuResponse::Err(_) => hdr.as_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(t: u32) -> Vec<u8> {
        virtio_gpu_ctrl_hdr {
            type_: t.into(),
            ..Default::default()
        }
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn decode_short_header_is_error() {
        assert_eq!(
            GpuCommand::decode(&[0; 10]),
            Err(DecodeError::ShortHeader(10))
        );
    }

    #[test]
    fn decode_unknown_type_is_error() {
        assert_eq!(
            GpuCommand::decode(&hdr(0x999)),
            Err(DecodeError::Unknown(0x999))
        );
    }

    #[test]
    fn decode_attach_backing_count_beyond_bytes_is_short() {
        let mut b = hdr(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING);
        b.extend_from_slice(
            virtio_gpu_resource_attach_backing {
                resource_id: 1.into(),
                nr_entries: 3.into(),
            }
            .as_bytes(),
        );
        b.extend_from_slice(&[0; 16]);
        assert!(matches!(
            GpuCommand::decode(&b),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decode_attach_backing_huge_count_is_too_many() {
        let mut b = hdr(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING);
        b.extend_from_slice(
            virtio_gpu_resource_attach_backing {
                resource_id: 1.into(),
                nr_entries: u32::MAX.into(),
            }
            .as_bytes(),
        );
        assert!(matches!(
            GpuCommand::decode(&b),
            Err(DecodeError::TooMany { .. })
        ));
    }

    #[test]
    fn decode_submit_size_beyond_bytes_is_short() {
        let mut b = hdr(VIRTIO_GPU_CMD_SUBMIT_3D);
        b.extend_from_slice(
            virtio_gpu_cmd_submit {
                size: 64.into(),
                padding: U32::ZERO,
            }
            .as_bytes(),
        );
        b.extend_from_slice(&[1; 8]);
        assert!(matches!(
            GpuCommand::decode(&b),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decode_every_prefix_of_every_command_never_panics() {
        for t in (0x100..0x10e).chain(0x200..0x20a).chain(0x300..0x302) {
            let mut b = hdr(t);
            b.extend((0..200u8).map(|i| i.wrapping_mul(37)));
            for n in 0..b.len() {
                let _ = GpuCommand::decode(&b[..n]);
            }
        }
    }

    #[test]
    fn encode_fenced_request_echoes_fence_and_ring() {
        let req = virtio_gpu_ctrl_hdr {
            type_: VIRTIO_GPU_CMD_SUBMIT_3D.into(),
            flags: (VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX).into(),
            fence_id: 77.into(),
            ctx_id: 3.into(),
            ring_idx: 1,
            padding: [0; 3],
        };
        let bytes = GpuResponse::OkNoData.encode(&req);
        let (h, _) = virtio_gpu_ctrl_hdr::read_from_prefix(&bytes).unwrap();
        assert_eq!(h.type_.get(), VIRTIO_GPU_RESP_OK_NODATA);
        assert_eq!(h.fence_id.get(), 77);
        assert_eq!(h.ring_idx, 1);
        assert_eq!(h.flags.get(), 3);
    }
}
