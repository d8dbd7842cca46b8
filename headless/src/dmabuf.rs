//! linux-dmabuf for the headless compositor: the advertised table and the import.
//!
//! smithay's pixman renderer imports dmabufs only through `DMA_BUF_IOCTL_SYNC`, which a
//! memfd-backed buffer (what every GPU-less test client makes) answers with `ENOTTY`: such
//! buffers would be accepted and never drawn. So the compositor validates each plane itself,
//! with checked arithmetic, and copies the rows it draws at commit (`pread` from a memfd, so a
//! client that shrinks it gets an error, not the compositor a `SIGBUS`; a real dmabuf, whose
//! size is fixed, through a read-only mapping). A buffer whose layout it cannot read (a tiled
//! modifier, several planes) is refused with `failed`, not drawn wrong.

use std::os::fd::AsFd;

use crossway_protocols::dmabuf::{FormatModifier, PreferenceList};
use crossway_protocols::format::fourcc_bytes_per_pixel;
use drm_fourcc::{DrmFourcc, DrmModifier};
use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::{Buffer as _, Format, Fourcc, Modifier};
use smithay::backend::renderer::element::memory::MemoryRenderBuffer;
use smithay::utils::Transform;
use smithay::wayland::dmabuf::{DmabufFeedback, DmabufFeedbackBuilder};
use smithay::reexports::wayland_server::protocol::wl_shm;
use smithay::reexports::wayland_protocols::wp::linux_dmabuf::zv1::server::zwp_linux_dmabuf_feedback_v1::TrancheFlags;

use super::mapping::{PlaneReader, ReadError};

/// `dev_t` of a render node `/dev/dri/renderD128` (major 226, minor 128). The compositor has
/// no device; clients only compare the value and wayland-info prints tranches only when it is
/// not zero.
pub const FAKE_RENDER_NODE: u64 = (226 << 8) | 128;

/// What the compositor advertises through `zwp_linux_dmabuf_v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmabufConfig {
    /// Main device `dev_t`.
    pub main_device: u64,
    /// Pairs in preference order; those marked scanout form the first tranche.
    pub preferences: PreferenceList,
}

impl Default for DmabufConfig {
    /// A table shaped like an Intel GPU's: each 32-bit RGB format with Y-tiled, X-tiled and
    /// LINEAR, in that order (tiled first, as a GPU prefers), RGB565 with X-tiled and LINEAR;
    /// the scanout tranche offers XRGB8888 and ARGB8888 X-tiled and LINEAR.
    fn default() -> Self {
        let mut preferences = PreferenceList::default();
        for format in [DrmFourcc::Xrgb8888, DrmFourcc::Argb8888] {
            for modifier in [DrmModifier::I915_x_tiled, DrmModifier::Linear] {
                preferences.push(FormatModifier::new(format, modifier), true);
            }
        }
        for format in [
            DrmFourcc::Xrgb8888,
            DrmFourcc::Argb8888,
            DrmFourcc::Xbgr8888,
            DrmFourcc::Abgr8888,
        ] {
            for modifier in [
                DrmModifier::I915_y_tiled,
                DrmModifier::I915_x_tiled,
                DrmModifier::Linear,
            ] {
                preferences.push(FormatModifier::new(format, modifier), false);
            }
        }
        for modifier in [DrmModifier::I915_x_tiled, DrmModifier::Linear] {
            preferences.push(FormatModifier::new(DrmFourcc::Rgb565, modifier), false);
        }
        DmabufConfig {
            main_device: FAKE_RENDER_NODE,
            preferences,
        }
    }
}

impl DmabufConfig {
    /// Parses `FOURCC:MODIFIER[:scanout],...`, e.g. `XR24:0x0:scanout,AR24:0x0`. Modifiers are
    /// numbers (hex with 0x) or `linear`/`invalid`.
    pub fn parse_preferences(spec: &str) -> Result<PreferenceList, String> {
        let mut prefs = PreferenceList::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = item.split(':');
            let fourcc = parts.next().unwrap_or_default();
            let code =
                fourcc_from_str(fourcc).ok_or_else(|| format!("unknown fourcc {fourcc:?}"))?;
            let modifier = match parts.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("linear") => 0,
                Some("invalid") => u64::from(DrmModifier::Invalid),
                Some(m) => parse_u64(m).ok_or_else(|| format!("bad modifier {m:?} in {item:?}"))?,
            };
            let scanout = match parts.next() {
                None => false,
                Some("scanout") => true,
                Some(other) => return Err(format!("unknown flag {other:?} in {item:?}")),
            };
            prefs.push(
                FormatModifier {
                    format: code,
                    modifier,
                },
                scanout,
            );
        }
        if prefs.is_empty() {
            return Err("no formats given".into());
        }
        Ok(prefs)
    }

    /// The pairs as smithay formats, skipping fourccs smithay does not know.
    pub fn advertised(&self) -> Vec<(Fourcc, u64)> {
        self.preferences
            .iter()
            .filter_map(|p| {
                Fourcc::try_from(p.pair.format)
                    .ok()
                    .map(|f| (f, p.pair.modifier))
            })
            .collect()
    }

    /// The default feedback: a scanout tranche first (if any pair is marked), then the main
    /// tranche with every pair, as GPU compositors send it.
    pub fn feedback(&self) -> std::io::Result<DmabufFeedback> {
        let format = |p: &crossway_protocols::dmabuf::Preference| {
            Fourcc::try_from(p.pair.format).ok().map(|code| Format {
                code,
                modifier: Modifier::from(p.pair.modifier),
            })
        };
        let main: Vec<_> = self.preferences.iter().filter_map(format).collect();
        let scanout: Vec<_> = self
            .preferences
            .iter()
            .filter(|p| p.scanout)
            .filter_map(format)
            .collect();
        let dev = self.main_device as libc_dev_t;
        let mut builder = DmabufFeedbackBuilder::new(dev, main);
        if !scanout.is_empty() {
            builder = builder.add_preference_tranche(dev, Some(TrancheFlags::Scanout), scanout);
        }
        builder.build()
    }
}

#[allow(non_camel_case_types)]
type libc_dev_t = u64;

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn fourcc_from_str(s: &str) -> Option<u32> {
    let bytes = s.as_bytes();
    if bytes.len() == 4 {
        return Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    }
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

/// Why a dmabuf is refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The (format, modifier) pair was not advertised.
    #[error("{0} was not advertised")]
    NotAdvertised(String),
    /// A format this compositor cannot draw.
    #[error("format {0} cannot be drawn (single-plane RGB formats only)")]
    Format(String),
    /// A modifier whose layout is not plain rows.
    #[error("modifier {0:#018x} is not LINEAR; this compositor reads buffers linearly")]
    NotLinear(u64),
    /// Not exactly one plane.
    #[error("{0} planes given, the format has one")]
    Planes(usize),
    /// Two planes share bytes of the same file.
    #[error("planes {0} and {1} overlap in the same buffer")]
    Overlap(usize, usize),
    /// A plane's stride is below a row's bytes.
    #[error("stride {stride} is below the {row} bytes of a row")]
    StrideTooSmall {
        /// Given stride.
        stride: u32,
        /// Bytes per row.
        row: u64,
    },
    /// A plane runs past the end of its file.
    #[error("plane needs bytes up to {end}, the buffer has {size}")]
    OutOfBounds {
        /// End of the last row.
        end: u64,
        /// File size.
        size: u64,
    },
    /// Arithmetic on the plane layout overflowed.
    #[error("plane layout overflows")]
    Overflow,
    /// The plane could not be sized or mapped.
    #[error("mapping the plane failed: {0}")]
    Map(#[from] std::io::Error),
    /// The plane's rows could not be read at commit (the client shrank its file).
    #[error("reading the plane failed: {0}")]
    Read(#[from] ReadError),
}

impl ImportError {
    /// Whether the protocol's `invalid_format` error applies.
    pub fn is_format_error(&self) -> bool {
        matches!(self, ImportError::NotAdvertised(_))
    }

    /// Whether the protocol's `incomplete` error applies (wrong number of planes).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, ImportError::Planes(_))
    }
}

/// A validated, mapped single-plane dmabuf.
#[derive(Debug)]
pub struct DmabufImport {
    plane: PlaneReader,
    format: Fourcc,
    width: u32,
    height: u32,
    offset: u32,
    stride: u32,
}

/// Validates `dmabuf` against the advertised pairs and maps its plane.
pub fn import_dmabuf(
    dmabuf: &Dmabuf,
    advertised: &[(Fourcc, u64)],
) -> Result<DmabufImport, ImportError> {
    let format = dmabuf.format();
    let modifier = u64::from(format.modifier);
    if !advertised.contains(&(format.code, modifier)) {
        return Err(ImportError::NotAdvertised(format!(
            "{}:{modifier:#018x}",
            format.code
        )));
    }
    let bpp = fourcc_bytes_per_pixel(format.code)
        .ok_or_else(|| ImportError::Format(format.code.to_string()))?;
    if modifier != u64::from(DrmModifier::Linear) {
        return Err(ImportError::NotLinear(modifier));
    }
    check_overlap(dmabuf)?;
    let planes = dmabuf.num_planes();
    if planes != 1 {
        return Err(ImportError::Planes(planes));
    }
    let size = dmabuf.size();
    let (width, height) = (size.w as u32, size.h as u32);
    let fd = dmabuf.handles().next().ok_or(ImportError::Planes(0))?;
    let offset = dmabuf.offsets().next().ok_or(ImportError::Planes(0))?;
    let stride = dmabuf.strides().next().ok_or(ImportError::Planes(0))?;
    let row = u64::from(width)
        .checked_mul(u64::from(bpp))
        .ok_or(ImportError::Overflow)?;
    if u64::from(stride) < row {
        return Err(ImportError::StrideTooSmall { stride, row });
    }
    let end = u64::from(stride)
        .checked_mul(u64::from(height).saturating_sub(1))
        .and_then(|v| v.checked_add(row))
        .and_then(|v| v.checked_add(u64::from(offset)))
        .ok_or(ImportError::Overflow)?;
    let file_size = file_size(fd.as_fd())?;
    if end > file_size {
        return Err(ImportError::OutOfBounds {
            end,
            size: file_size,
        });
    }
    let len = usize::try_from(end).map_err(|_| ImportError::Overflow)?;
    let plane = PlaneReader::new(fd, len)?;
    Ok(DmabufImport {
        plane,
        format: format.code,
        width,
        height,
        offset,
        stride,
    })
}

/// Refuses planes whose byte ranges overlap within one file (compared by device and inode,
/// since each plane arrives as its own fd).
fn check_overlap(dmabuf: &Dmabuf) -> Result<(), ImportError> {
    let height = u64::try_from(dmabuf.size().h).map_err(|_| ImportError::Overflow)?;
    let mut ranges = vec![];
    for (i, ((fd, offset), stride)) in dmabuf
        .handles()
        .zip(dmabuf.offsets())
        .zip(dmabuf.strides())
        .enumerate()
    {
        let stat = rustix::fs::fstat(fd).map_err(std::io::Error::from)?;
        let len = u64::from(stride)
            .checked_mul(height)
            .ok_or(ImportError::Overflow)?;
        let start = u64::from(offset);
        let end = start.checked_add(len).ok_or(ImportError::Overflow)?;
        ranges.push((i, (stat.st_dev, stat.st_ino), start, end));
    }
    for (a, &(i, file_a, start_a, end_a)) in ranges.iter().enumerate() {
        for &(j, file_b, start_b, end_b) in &ranges[a + 1..] {
            if file_a == file_b && start_a < end_b && start_b < end_a {
                return Err(ImportError::Overlap(i, j));
            }
        }
    }
    Ok(())
}

fn file_size(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    let size = rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0))?;
    rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0))?;
    Ok(size)
}

impl DmabufImport {
    /// A render buffer holding the buffer's current pixels.
    pub fn to_render_buffer(
        &self,
        scale: i32,
        transform: Transform,
    ) -> Result<MemoryRenderBuffer, ImportError> {
        let bpp = fourcc_bytes_per_pixel(self.format)
            .ok_or_else(|| ImportError::Format(self.format.to_string()))?;
        let row = (self.width * bpp) as usize;
        let mut pixels = vec![0u8; row * self.height as usize];
        self.plane.copy_rows(
            self.offset as usize,
            self.stride as usize,
            row,
            self.height as usize,
            &mut pixels,
        )?;
        let size = (self.width as i32, self.height as i32);
        Ok(MemoryRenderBuffer::from_slice(
            &pixels,
            self.format,
            size,
            scale.max(1),
            transform,
            None,
        ))
    }
}

/// The `wl_shm` formats offered besides the mandatory ARGB8888 and XRGB8888.
pub fn extra_shm_formats() -> Vec<wl_shm::Format> {
    vec![
        wl_shm::Format::Abgr8888,
        wl_shm::Format::Xbgr8888,
        wl_shm::Format::Rgb565,
    ]
}
