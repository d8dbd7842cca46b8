//! Pixel formats: bytes per pixel of the single-plane formats a relay may copy, for both relays
//! and the headless compositor.

use drm_fourcc::DrmFourcc as F;

/// `wl_shm.format` 0: ARGB8888 (the only two codes that are not fourccs).
pub const WL_SHM_ARGB8888: u32 = 0;
/// `wl_shm.format` 1: XRGB8888.
pub const WL_SHM_XRGB8888: u32 = 1;

/// The 16-bit-per-channel integer formats `drm_fourcc` 2.2 does not name: `XR48`, `XB48`,
/// `AR48`, `AB48`.
const EIGHT_BYTE_INTEGER: [u32; 4] = [
    u32::from_le_bytes(*b"XR48"),
    u32::from_le_bytes(*b"XB48"),
    u32::from_le_bytes(*b"AR48"),
    u32::from_le_bytes(*b"AB48"),
];

/// Bytes per pixel of a single-plane, non-subsampled format, by `wl_shm.format` (0 and 1) or
/// DRM fourcc; `None` for formats without one (YUV, planar, compressed) or unknown codes.
pub fn bytes_per_pixel(format: u32) -> Option<u32> {
    let f = match format {
        WL_SHM_ARGB8888 => F::Argb8888,
        WL_SHM_XRGB8888 => F::Xrgb8888,
        f if EIGHT_BYTE_INTEGER.contains(&f) => return Some(8),
        f => F::try_from(f).ok()?,
    };
    fourcc_bytes_per_pixel(f)
}

/// Bytes per pixel of a single-plane, non-subsampled DRM format.
pub fn fourcc_bytes_per_pixel(f: F) -> Option<u32> {
    Some(match f {
        F::C8 | F::R8 | F::Rgb332 | F::Bgr233 => 1,
        F::R16
        | F::Rg88
        | F::Gr88
        | F::Xrgb4444
        | F::Xbgr4444
        | F::Rgbx4444
        | F::Bgrx4444
        | F::Argb4444
        | F::Abgr4444
        | F::Rgba4444
        | F::Bgra4444
        | F::Xrgb1555
        | F::Xbgr1555
        | F::Rgbx5551
        | F::Bgrx5551
        | F::Argb1555
        | F::Abgr1555
        | F::Rgba5551
        | F::Bgra5551
        | F::Rgb565
        | F::Bgr565 => 2,
        F::Rgb888 | F::Bgr888 => 3,
        F::Rg1616
        | F::Gr1616
        | F::Xrgb8888
        | F::Xbgr8888
        | F::Rgbx8888
        | F::Bgrx8888
        | F::Argb8888
        | F::Abgr8888
        | F::Rgba8888
        | F::Bgra8888
        | F::Xrgb2101010
        | F::Xbgr2101010
        | F::Rgbx1010102
        | F::Bgrx1010102
        | F::Argb2101010
        | F::Abgr2101010
        | F::Rgba1010102
        | F::Bgra1010102 => 4,
        F::Xrgb16161616f | F::Xbgr16161616f | F::Argb16161616f | F::Abgr16161616f => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fourcc(code: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*code)
    }

    #[test]
    fn bytes_per_pixel_known_and_unknown_formats() {
        assert_eq!(bytes_per_pixel(0), Some(4));
        assert_eq!(bytes_per_pixel(1), Some(4));
        assert_eq!(bytes_per_pixel(fourcc(b"RG16")), Some(2));
        assert_eq!(bytes_per_pixel(fourcc(b"BG24")), Some(3));
        assert_eq!(bytes_per_pixel(fourcc(b"AB30")), Some(4));
        assert_eq!(bytes_per_pixel(fourcc(b"AB4H")), Some(8));
        assert_eq!(bytes_per_pixel(fourcc(b"XR48")), Some(8));
        assert_eq!(bytes_per_pixel(fourcc(b"R8  ")), Some(1));
        assert_eq!(bytes_per_pixel(fourcc(b"NV12")), None);
        assert_eq!(bytes_per_pixel(fourcc(b"YUYV")), None);
        assert_eq!(bytes_per_pixel(2), None);
        // drm_fourcc.h: DRM_FORMAT_XRGB8888 = 0x34325258.
        assert_eq!(fourcc(b"XR24"), 0x3432_5258);
    }

    /// The formats the agent listed by hand before this table existed, all still known.
    #[test]
    fn bytes_per_pixel_covers_the_hand_written_list() {
        let lists: [(&[&[u8; 4]], u32); 5] = [
            (&[b"C8  ", b"R8  ", b"RGB8", b"BGR8"], 1),
            (
                &[
                    b"R16 ", b"RG88", b"GR88", b"XR12", b"XB12", b"RX12", b"BX12", b"AR12",
                    b"AB12", b"RA12", b"BA12", b"XR15", b"XB15", b"RX15", b"BX15", b"AR15",
                    b"AB15", b"RA15", b"BA15", b"RG16", b"BG16",
                ],
                2,
            ),
            (&[b"RG24", b"BG24"], 3),
            (
                &[
                    b"RG32", b"GR32", b"XR24", b"XB24", b"RX24", b"BX24", b"AR24", b"AB24",
                    b"RA24", b"BA24", b"XR30", b"XB30", b"RX30", b"BX30", b"AR30", b"AB30",
                    b"RA30", b"BA30",
                ],
                4,
            ),
            (
                &[
                    b"XR4H", b"XB4H", b"AR4H", b"AB4H", b"XR48", b"XB48", b"AR48", b"AB48",
                ],
                8,
            ),
        ];
        for (codes, bpp) in lists {
            for code in codes {
                assert_eq!(bytes_per_pixel(fourcc(code)), Some(bpp), "{code:?}");
            }
        }
    }
}
