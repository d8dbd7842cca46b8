//! The Crossway capset: what the host proxy tells the guest agent before any Wayland traffic.
//!
//! Besides cross-domain (capset 5) the device advertises a capset of its own whose payload is,
//! little-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  version        (CROSSWAY_CAPSET_VERSION)
//!      4     4  flags          (CROSSWAY_FLAG_*)
//!      8     4  num_formats
//!     12     4  reserved, 0
//!     16  16*n  entries: u32 fourcc, u32 entry flags (bit 0: scanout), u64 modifier
//! ```
//!
//! Entries are the host compositor's dmabuf preference list as the proxy read it at start,
//! most preferred first. The capset id is configurable on both sides; guests learn the ids a
//! device supports as a 64-bit mask, so it must stay below 64.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::dmabuf::{FormatModifier, PreferenceList};

/// Default capset id of the Crossway capset: high enough to stay clear of the ids Linux and
/// rutabaga assign (1..=10 today), below 64 so it fits the guest's supported-capsets mask.
pub const DEFAULT_CROSSWAY_CAPSET_ID: u32 = 48;

/// Version of the payload layout.
pub const CROSSWAY_CAPSET_VERSION: u32 = 1;

/// Guest blobs may be sent as `SEND` identifiers: the host turns their pages into a dmabuf
/// (udmabuf) or a copied memfd. rutabaga rejects such blobs, so an agent must not send them
/// to a host that does not set this flag.
pub const CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND: u32 = 1 << 0;
/// Guest blobs become real dmabufs on the host (udmabuf works there), i.e. zero copies.
pub const CROSSWAY_FLAG_GUEST_BLOBS_ZERO_COPY: u32 = 1 << 1;
/// HOST3D blobs can be mapped into the guest (the VMM offers the shared-memory window).
pub const CROSSWAY_FLAG_HOST_BLOBS_MAPPABLE: u32 = 1 << 2;

/// Entry flag: the host compositor may scan this pair out.
pub const CROSSWAY_FORMAT_SCANOUT: u32 = 1 << 0;

/// Most format entries a capset carries.
pub const MAX_CAPSET_FORMATS: usize = 1024;

/// Payload header.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct CrosswayCapsetHeader {
    /// [`CROSSWAY_CAPSET_VERSION`].
    pub version: U32,
    /// `CROSSWAY_FLAG_*`.
    pub flags: U32,
    /// Entries that follow.
    pub num_formats: U32,
    /// Zero.
    pub reserved: U32,
}

/// One format entry.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct CrosswayCapsetFormat {
    /// DRM fourcc.
    pub fourcc: U32,
    /// `CROSSWAY_FORMAT_*`.
    pub flags: U32,
    /// DRM format modifier.
    pub modifier: U64,
}

const _: () = {
    assert!(size_of::<CrosswayCapsetHeader>() == 16);
    assert!(size_of::<CrosswayCapsetFormat>() == 16);
};

/// The decoded capset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrosswayCaps {
    /// `CROSSWAY_FLAG_*`.
    pub flags: u32,
    /// The host compositor's dmabuf preferences.
    pub formats: PreferenceList,
}

/// Why capset bytes are not a Crossway capset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsetError {
    /// Shorter than the header.
    #[error("capset of {0} bytes is shorter than its 16-byte header")]
    Short(usize),
    /// A layout version this code does not know.
    #[error("capset version {0} is not supported (expected {CROSSWAY_CAPSET_VERSION})")]
    Version(u32),
    /// More entries than allowed, or than the bytes hold.
    #[error(
        "capset claims {claimed} formats, {available} bytes hold {fit} (limit {MAX_CAPSET_FORMATS})"
    )]
    Formats {
        /// Claimed count.
        claimed: u32,
        /// Bytes after the header.
        available: usize,
        /// Entries those bytes hold.
        fit: usize,
    },
}

impl CrosswayCaps {
    /// The payload bytes, at most [`MAX_CAPSET_FORMATS`] entries (the least preferred are
    /// dropped).
    pub fn to_bytes(&self) -> Vec<u8> {
        let formats: Vec<_> = self.formats.iter().take(MAX_CAPSET_FORMATS).collect();
        let header = CrosswayCapsetHeader {
            version: CROSSWAY_CAPSET_VERSION.into(),
            flags: self.flags.into(),
            num_formats: (formats.len() as u32).into(),
            reserved: U32::ZERO,
        };
        let mut out = header.as_bytes().to_vec();
        for p in formats {
            let entry = CrosswayCapsetFormat {
                fourcc: p.pair.format.into(),
                flags: if p.scanout {
                    CROSSWAY_FORMAT_SCANOUT
                } else {
                    0
                }
                .into(),
                modifier: p.pair.modifier.into(),
            };
            out.extend_from_slice(entry.as_bytes());
        }
        out
    }

    /// Parses the payload. Bytes after the last entry are ignored: the guest reads the size the
    /// host reported, which a later version may grow.
    pub fn from_bytes(bytes: &[u8]) -> Result<CrosswayCaps, CapsetError> {
        let (header, rest) = CrosswayCapsetHeader::read_from_prefix(bytes)
            .map_err(|_| CapsetError::Short(bytes.len()))?;
        if header.version.get() != CROSSWAY_CAPSET_VERSION {
            return Err(CapsetError::Version(header.version.get()));
        }
        let claimed = header.num_formats.get();
        let fit = rest.len() / size_of::<CrosswayCapsetFormat>();
        let count = usize::try_from(claimed)
            .ok()
            .filter(|&n| n <= fit && n <= MAX_CAPSET_FORMATS)
            .ok_or(CapsetError::Formats {
                claimed,
                available: rest.len(),
                fit,
            })?;
        let mut formats = PreferenceList::default();
        for chunk in rest
            .chunks_exact(size_of::<CrosswayCapsetFormat>())
            .take(count)
        {
            if let Ok(entry) = CrosswayCapsetFormat::read_from_bytes(chunk) {
                let pair = FormatModifier {
                    format: entry.fourcc.get(),
                    modifier: entry.modifier.get(),
                };
                formats.push(pair, entry.flags.get() & CROSSWAY_FORMAT_SCANOUT != 0);
            }
        }
        Ok(CrosswayCaps {
            flags: header.flags.get(),
            formats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drm_fourcc::{DrmFourcc, DrmModifier};

    #[test]
    fn capset_claiming_more_formats_than_bytes_is_rejected() {
        let mut bytes = CrosswayCaps::default().to_bytes();
        bytes[8] = 3;
        assert_eq!(
            CrosswayCaps::from_bytes(&bytes),
            Err(CapsetError::Formats {
                claimed: 3,
                available: 0,
                fit: 0
            })
        );
    }

    #[test]
    fn capset_round_trips_order_and_scanout() {
        let mut formats = PreferenceList::default();
        formats.push(
            FormatModifier::new(DrmFourcc::Xrgb8888, DrmModifier::I915_y_tiled),
            true,
        );
        formats.push(
            FormatModifier::new(DrmFourcc::Argb8888, DrmModifier::Linear),
            false,
        );
        let caps = CrosswayCaps {
            flags: CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND,
            formats,
        };
        assert_eq!(CrosswayCaps::from_bytes(&caps.to_bytes()).unwrap(), caps);
    }

    #[test]
    fn capset_unknown_version_is_rejected() {
        let mut bytes = CrosswayCaps::default().to_bytes();
        bytes[0] = 9;
        assert_eq!(
            CrosswayCaps::from_bytes(&bytes),
            Err(CapsetError::Version(9))
        );
    }
}
