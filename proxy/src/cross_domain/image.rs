//! `GET_IMAGE_REQUIREMENTS`: plane layouts for a (width, height, fourcc) the way a GPU driver
//! would lay them out (LINEAR, strides aligned to 256 bytes, planes at page boundaries), and the
//! allocator seam that backs them at `RESOURCE_CREATE_BLOB`.
//!
//! Only memfds are allocated today. A render node with GBM (allocating with the first modifier of
//! the host compositor's preference list that GBM can do for the format, as issue 6 asks) plugs
//! in as another [`ImageAllocator`]; this machine has no `/dev/dri`, so that is left as a seam.

use std::os::fd::OwnedFd;

use crossway_protocols::cross_domain::{CrossDomainImageRequirements, map_info};
use crossway_sys::memfd::Memfd;

/// `DRM_FORMAT_MOD_LINEAR`.
pub const DRM_FORMAT_MOD_LINEAR: u64 = 0;
/// Stride alignment: what common GPUs need for linear render targets and scanout.
pub const STRIDE_ALIGN: u32 = 256;
/// Planes start at page boundaries.
pub const PLANE_ALIGN: u64 = 4096;

const fn fourcc(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// One plane of a format: bytes per pixel block, and its subsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plane {
    /// Bytes per (subsampled) pixel.
    cpp: u32,
    /// Horizontal subsampling divisor.
    hsub: u32,
    /// Vertical subsampling divisor.
    vsub: u32,
}

const fn p(cpp: u32) -> Plane {
    Plane {
        cpp,
        hsub: 1,
        vsub: 1,
    }
}

const fn sub(cpp: u32, hsub: u32, vsub: u32) -> Plane {
    Plane { cpp, hsub, vsub }
}

/// The formats an image can be asked for, with their planes.
fn planes(format: u32) -> Option<&'static [Plane]> {
    const ONE: [Plane; 1] = [p(1)];
    const TWO: [Plane; 1] = [p(2)];
    const FOUR: [Plane; 1] = [p(4)];
    const EIGHT: [Plane; 1] = [p(8)];
    const NV12: [Plane; 2] = [p(1), sub(2, 2, 2)];
    const P010: [Plane; 2] = [p(2), sub(4, 2, 2)];
    const YUV420: [Plane; 3] = [p(1), sub(1, 2, 2), sub(1, 2, 2)];
    Some(match &format.to_le_bytes() {
        b"R8  " | b"C8  " => &ONE,
        b"RG16" | b"BG16" | b"GR88" | b"RG88" | b"R16 " | b"AR15" | b"XR15" => &TWO,
        b"AR24" | b"XR24" | b"AB24" | b"XB24" | b"RA24" | b"RX24" | b"BA24" | b"BX24" | b"AR30"
        | b"XR30" | b"AB30" | b"XB30" => &FOUR,
        b"AB4H" | b"XB4H" | b"AR4H" | b"XR4H" | b"AB48" | b"XB48" => &EIGHT,
        b"NV12" | b"NV21" => &NV12,
        b"P010" => &P010,
        b"YU12" | b"YV12" => &YUV420,
        _ => return None,
    })
}

/// `DRM_FORMAT_NV12`.
pub const DRM_FORMAT_NV12: u32 = fourcc(b"NV12");
/// `DRM_FORMAT_ARGB8888`.
pub const DRM_FORMAT_ARGB8888: u32 = fourcc(b"AR24");
/// `DRM_FORMAT_XRGB8888`.
pub const DRM_FORMAT_XRGB8888: u32 = fourcc(b"XR24");
/// `DRM_FORMAT_R8`.
pub const DRM_FORMAT_R8: u32 = fourcc(b"R8  ");

/// Why an image cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not a format this host lays out.
    #[error("unknown or unsupported format {0:#010x}")]
    UnknownFormat(u32),
    /// Zero or above `max_image_dimension`.
    #[error("image size {width}x{height} out of range (1..={max})")]
    Dimensions {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Limit.
        max: u32,
    },
    /// Above `max_image_bytes`, or overflowing.
    #[error("image of {0} bytes is above the limit")]
    TooLarge(u64),
    /// The allocation failed.
    #[error("allocation failed: {0}")]
    Alloc(String),
}

/// The layout of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLayout {
    /// Per-plane strides (unused planes 0).
    pub strides: [u32; 4],
    /// Per-plane offsets (unused planes 0).
    pub offsets: [u32; 4],
    /// DRM format modifier.
    pub modifier: u64,
    /// Bytes, page aligned.
    pub size: u64,
    /// `map_info` cache type.
    pub map_info: u32,
}

impl ImageLayout {
    /// The 64-byte reply for the query ring.
    pub fn reply(&self, blob_id: u32) -> CrossDomainImageRequirements {
        CrossDomainImageRequirements {
            strides: self.strides.map(Into::into),
            offsets: self.offsets.map(Into::into),
            modifier: self.modifier.into(),
            size: self.size.into(),
            blob_id: blob_id.into(),
            map_info: self.map_info.into(),
            memory_idx: (-1).into(),
            physical_device_idx: (-1).into(),
        }
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

/// A LINEAR layout of `width`x`height` in `format`, checked against the limits.
pub fn linear_layout(
    width: u32,
    height: u32,
    format: u32,
    max_dimension: u32,
    max_bytes: u64,
) -> Result<ImageLayout, ImageError> {
    let planes = planes(format).ok_or(ImageError::UnknownFormat(format))?;
    if width == 0 || height == 0 || width > max_dimension || height > max_dimension {
        return Err(ImageError::Dimensions {
            width,
            height,
            max: max_dimension,
        });
    }
    let mut layout = ImageLayout {
        strides: [0; 4],
        offsets: [0; 4],
        modifier: DRM_FORMAT_MOD_LINEAR,
        size: 0,
        map_info: map_info::CACHE_CACHED,
    };
    let too_large = ImageError::TooLarge(u64::MAX);
    let mut offset = 0u64;
    for (i, plane) in planes.iter().enumerate() {
        let w = u64::from(width.div_ceil(plane.hsub));
        let h = u64::from(height.div_ceil(plane.vsub));
        let stride =
            align_up(w * u64::from(plane.cpp), u64::from(STRIDE_ALIGN)).ok_or(too_large.clone())?;
        offset = align_up(offset, PLANE_ALIGN).ok_or(too_large.clone())?;
        layout.strides[i] = u32::try_from(stride).map_err(|_| too_large.clone())?;
        layout.offsets[i] = u32::try_from(offset).map_err(|_| too_large.clone())?;
        offset = stride
            .checked_mul(h)
            .and_then(|s| s.checked_add(offset))
            .ok_or(too_large.clone())?;
    }
    let size = align_up(offset, PLANE_ALIGN).ok_or(too_large)?;
    if size > max_bytes {
        return Err(ImageError::TooLarge(size));
    }
    layout.size = size;
    Ok(layout)
}

/// What `GET_IMAGE_REQUIREMENTS` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageRequest {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// DRM fourcc.
    pub format: u32,
    /// minigbm usage flags.
    pub flags: u32,
}

/// Lays out and allocates images. The default is [`MemfdAllocator`]; a GBM allocator on a
/// render node is the seam issue 6 leaves for hosts that have one.
pub trait ImageAllocator: Send + Sync + std::fmt::Debug {
    /// The layout for a request (answered at `GET_IMAGE_REQUIREMENTS`).
    fn layout(
        &self,
        req: &ImageRequest,
        max_dimension: u32,
        max_bytes: u64,
    ) -> Result<ImageLayout, ImageError>;
    /// Memory for one resource of that layout (at `RESOURCE_CREATE_BLOB`).
    fn allocate(&self, req: &ImageRequest, layout: &ImageLayout) -> Result<OwnedFd, ImageError>;
}

/// LINEAR images in sealed-size memfds: what the guest maps and the compositor imports as
/// `wl_shm` pools or memfd "dmabufs".
#[derive(Debug, Default, Clone, Copy)]
pub struct MemfdAllocator;

impl ImageAllocator for MemfdAllocator {
    fn layout(
        &self,
        req: &ImageRequest,
        max_dimension: u32,
        max_bytes: u64,
    ) -> Result<ImageLayout, ImageError> {
        linear_layout(req.width, req.height, req.format, max_dimension, max_bytes)
    }

    fn allocate(&self, _req: &ImageRequest, layout: &ImageLayout) -> Result<OwnedFd, ImageError> {
        let m = Memfd::new("crossway-image", layout.size)
            .map_err(|e| ImageError::Alloc(e.to_string()))?;
        m.try_clone_fd()
            .map_err(|e| ImageError::Alloc(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_argb_stride_aligned_size_page_aligned() {
        let l = linear_layout(100, 10, DRM_FORMAT_ARGB8888, 16384, 1 << 30)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.strides, [512, 0, 0, 0]);
        assert_eq!(l.offsets, [0; 4]);
        assert_eq!(l.size, 8192);
        assert_eq!(l.modifier, DRM_FORMAT_MOD_LINEAR);
        assert_eq!(l.map_info, map_info::CACHE_CACHED);
    }

    #[test]
    fn layout_nv12_has_two_planes_at_page_boundaries() {
        let l = linear_layout(641, 479, DRM_FORMAT_NV12, 16384, 1 << 30)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.strides[0], 768);
        assert_eq!(l.strides[1], 768); // 321 * 2 = 642 -> 768
        assert_eq!(l.offsets[0], 0);
        let y = 768u64 * 479;
        assert_eq!(u64::from(l.offsets[1]), y.div_ceil(4096) * 4096);
        assert_eq!(
            l.size,
            (u64::from(l.offsets[1]) + 768 * 240).div_ceil(4096) * 4096
        );
    }

    #[test]
    fn layout_unknown_format_is_error() {
        assert_eq!(
            linear_layout(1, 1, 0x1234_5678, 16384, 1 << 30),
            Err(ImageError::UnknownFormat(0x1234_5678))
        );
    }

    #[test]
    fn layout_limits_refuse_zero_huge_and_oversized() {
        assert!(matches!(
            linear_layout(0, 1, DRM_FORMAT_R8, 100, 1 << 30),
            Err(ImageError::Dimensions { .. })
        ));
        assert!(matches!(
            linear_layout(101, 1, DRM_FORMAT_R8, 100, 1 << 30),
            Err(ImageError::Dimensions { .. })
        ));
        assert!(matches!(
            linear_layout(100, 100, DRM_FORMAT_XRGB8888, 100, 4096),
            Err(ImageError::TooLarge(_))
        ));
        assert!(matches!(
            linear_layout(u32::MAX, u32::MAX, DRM_FORMAT_XRGB8888, u32::MAX, u64::MAX),
            Err(ImageError::TooLarge(_))
        ));
    }
}
