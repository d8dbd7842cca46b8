//! dmabuf formats: the `zwp_linux_dmabuf_feedback_v1` format table and tranches, and the
//! preference-ordered (format, modifier) list both programs pass around.
//!
//! The format table is an array of 16-byte entries in the host's byte order: `u32 format`,
//! `u32` padding, `u64 modifier`. `tranche_formats` is an array of `u16` indices into it.
//! Tranches come in descending preference; within a tranche all pairs are equal.

use drm_fourcc::{DrmFourcc, DrmModifier};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `zwp_linux_dmabuf_feedback_v1.tranche_flags`: scan-out may happen on the target device.
pub const TRANCHE_FLAG_SCANOUT: u32 = 1;

/// Most entries a table can have: tranches index it with `u16`.
pub const MAX_TABLE_ENTRIES: usize = 1 << 16;

/// One entry of the format table.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct FormatTableEntry {
    /// DRM fourcc.
    pub format: u32,
    /// Zero.
    pub pad: u32,
    /// DRM format modifier.
    pub modifier: u64,
}

const _: () = assert!(size_of::<FormatTableEntry>() == 16);

/// A (format, modifier) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FormatModifier {
    /// DRM fourcc code (kept raw: a peer may name formats `drm-fourcc` does not know).
    pub format: u32,
    /// DRM format modifier.
    pub modifier: u64,
}

impl FormatModifier {
    /// A pair from the typed names.
    pub fn new(format: DrmFourcc, modifier: DrmModifier) -> FormatModifier {
        FormatModifier {
            format: format as u32,
            modifier: modifier.into(),
        }
    }

    /// The format, if `drm-fourcc` knows it.
    pub fn fourcc(&self) -> Option<DrmFourcc> {
        DrmFourcc::try_from(self.format).ok()
    }

    /// The modifier as a typed value.
    pub fn drm_modifier(&self) -> DrmModifier {
        DrmModifier::from(self.modifier)
    }

    /// Whether the layout is plain rows (the only one a CPU path can read).
    pub fn is_linear(&self) -> bool {
        self.modifier == u64::from(DrmModifier::Linear)
    }
}

impl std::fmt::Display for FormatModifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fourcc() {
            Some(fourcc) => write!(f, "{fourcc}")?,
            None => write!(f, "{:#010x}", self.format)?,
        }
        write!(f, ":{:#018x}", self.modifier)
    }
}

/// Why a table or tranche is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmabufError {
    /// Table bytes are not whole entries.
    #[error("format table of {0} bytes is not a whole number of 16-byte entries")]
    TableSize(usize),
    /// More entries than `u16` indices can reach.
    #[error("format table has {0} entries, more than 65536")]
    TableTooLarge(usize),
    /// `tranche_formats` array of odd length.
    #[error("tranche_formats array of {0} bytes is not a whole number of u16 indices")]
    IndicesSize(usize),
    /// An index past the table.
    #[error("tranche index {index} is past the {len}-entry format table")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// Table length.
        len: usize,
    },
    /// A `dev_t` array of the wrong size.
    #[error("device array of {0} bytes is not a dev_t")]
    DeviceSize(usize),
}

/// A format table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatTable {
    entries: Vec<FormatTableEntry>,
}

impl FormatTable {
    /// Parses table bytes (as mapped from the feedback's `format_table` fd).
    pub fn from_bytes(bytes: &[u8]) -> Result<FormatTable, DmabufError> {
        // Read entry by entry: the bytes may come from a wire buffer with no 8-byte alignment.
        let chunks = bytes.chunks_exact(size_of::<FormatTableEntry>());
        if !chunks.remainder().is_empty() {
            return Err(DmabufError::TableSize(bytes.len()));
        }
        if chunks.len() > MAX_TABLE_ENTRIES {
            return Err(DmabufError::TableTooLarge(chunks.len()));
        }
        let entries = chunks
            .filter_map(|c| FormatTableEntry::read_from_bytes(c).ok())
            .collect();
        Ok(FormatTable { entries })
    }

    /// A table of the given pairs, in order.
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = FormatModifier>,
    ) -> Result<FormatTable, DmabufError> {
        let entries: Vec<_> = pairs
            .into_iter()
            .map(|p| FormatTableEntry {
                format: p.format,
                pad: 0,
                modifier: p.modifier,
            })
            .collect();
        if entries.len() > MAX_TABLE_ENTRIES {
            return Err(DmabufError::TableTooLarge(entries.len()));
        }
        Ok(FormatTable { entries })
    }

    /// The bytes to put in the `format_table` memfd.
    pub fn as_bytes(&self) -> &[u8] {
        self.entries.as_bytes()
    }

    /// The entries.
    pub fn entries(&self) -> &[FormatTableEntry] {
        &self.entries
    }

    /// The pair at `index`.
    pub fn get(&self, index: u16) -> Result<FormatModifier, DmabufError> {
        self.entries
            .get(usize::from(index))
            .map(|e| FormatModifier {
                format: e.format,
                modifier: e.modifier,
            })
            .ok_or(DmabufError::IndexOutOfRange {
                index,
                len: self.entries.len(),
            })
    }

    /// Index of `pair`, if present.
    pub fn index_of(&self, pair: FormatModifier) -> Option<u16> {
        self.entries
            .iter()
            .position(|e| e.format == pair.format && e.modifier == pair.modifier)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parses a `tranche_formats` array (native-endian `u16` indices), checking each against the
/// table.
pub fn parse_tranche_indices(array: &[u8], table: &FormatTable) -> Result<Vec<u16>, DmabufError> {
    let chunks = array.chunks_exact(2);
    if !chunks.remainder().is_empty() {
        return Err(DmabufError::IndicesSize(array.len()));
    }
    chunks
        .map(|c| {
            let index = u16::from_ne_bytes([c[0], c[1]]);
            table.get(index).map(|_| index)
        })
        .collect()
}

/// Encodes `tranche_formats` indices as the array argument.
pub fn tranche_indices_bytes(indices: &[u16]) -> &[u8] {
    indices.as_bytes()
}

/// Parses a `main_device` or `tranche_target_device` array (a native-endian `dev_t`).
pub fn parse_dev_t(array: &[u8]) -> Result<u64, DmabufError> {
    <[u8; 8]>::try_from(array)
        .map(u64::from_ne_bytes)
        .map_err(|_| DmabufError::DeviceSize(array.len()))
}

/// One tranche: a target device, flags and the pairs it prefers equally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tranche {
    /// `dev_t` of the device buffers should be allocated for.
    pub target_device: u64,
    /// `TRANCHE_FLAG_*`.
    pub flags: u32,
    /// Indices into the feedback's format table.
    pub indices: Vec<u16>,
}

/// A complete feedback: what `zwp_linux_dmabuf_feedback_v1` sends between two `done`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// `dev_t` of the compositor's main device.
    pub main_device: u64,
    /// The format table.
    pub table: FormatTable,
    /// Tranches in descending preference.
    pub tranches: Vec<Tranche>,
}

impl Feedback {
    /// Builds a feedback from a preference list: one scanout tranche for the pairs marked
    /// scanout (if any), then one tranche for the rest, all targeting `main_device`.
    pub fn from_preferences(
        main_device: u64,
        prefs: &PreferenceList,
    ) -> Result<Feedback, DmabufError> {
        let table = FormatTable::from_pairs(prefs.iter().map(|p| p.pair))?;
        let mut scanout = vec![];
        let mut rest = vec![];
        for (i, p) in prefs.iter().enumerate() {
            // from_pairs bounded the length by MAX_TABLE_ENTRIES, so the index fits.
            let index = i as u16;
            if p.scanout {
                scanout.push(index)
            } else {
                rest.push(index)
            }
        }
        let tranches = [(TRANCHE_FLAG_SCANOUT, scanout), (0, rest)]
            .into_iter()
            .filter(|(_, indices)| !indices.is_empty())
            .map(|(flags, indices)| Tranche {
                target_device: main_device,
                flags,
                indices,
            })
            .collect();
        Ok(Feedback {
            main_device,
            table,
            tranches,
        })
    }

    /// The pairs in preference order (first tranche first, table order within a tranche),
    /// each once, marked scanout if any tranche naming it has the flag.
    pub fn preferences(&self) -> Result<PreferenceList, DmabufError> {
        let mut list = PreferenceList::default();
        for tranche in &self.tranches {
            for &index in &tranche.indices {
                let pair = self.table.get(index)?;
                list.push(pair, tranche.flags & TRANCHE_FLAG_SCANOUT != 0);
            }
        }
        Ok(list)
    }
}

/// A (format, modifier) pair and whether the host can scan it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Preference {
    /// The pair.
    pub pair: FormatModifier,
    /// Whether it came from a scanout tranche.
    pub scanout: bool,
}

/// Pairs in descending preference, each at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferenceList {
    items: Vec<Preference>,
}

impl PreferenceList {
    /// Appends `pair` unless present (a repeat may only add the scanout mark).
    pub fn push(&mut self, pair: FormatModifier, scanout: bool) {
        match self.items.iter_mut().find(|p| p.pair == pair) {
            Some(existing) => existing.scanout |= scanout,
            None => self.items.push(Preference { pair, scanout }),
        }
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = &Preference> {
        self.items.iter()
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether `pair` is in the list.
    pub fn contains(&self, pair: FormatModifier) -> bool {
        self.items.iter().any(|p| p.pair == pair)
    }

    /// The modifiers of `format`, most preferred first.
    pub fn modifiers_of(&self, format: u32) -> impl Iterator<Item = u64> + '_ {
        self.items
            .iter()
            .filter(move |p| p.pair.format == format)
            .map(|p| p.pair.modifier)
    }

    /// The list without the pairs `keep` rejects, order kept.
    pub fn filtered(&self, mut keep: impl FnMut(FormatModifier) -> bool) -> PreferenceList {
        PreferenceList {
            items: self
                .items
                .iter()
                .copied()
                .filter(|p| keep(p.pair))
                .collect(),
        }
    }
}

impl FromIterator<Preference> for PreferenceList {
    fn from_iter<I: IntoIterator<Item = Preference>>(iter: I) -> Self {
        let mut list = PreferenceList::default();
        for p in iter {
            list.push(p.pair, p.scanout);
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(f: DrmFourcc, m: DrmModifier) -> FormatModifier {
        FormatModifier::new(f, m)
    }

    #[test]
    fn table_of_partial_entry_is_rejected() {
        assert_eq!(
            FormatTable::from_bytes(&[0; 20]),
            Err(DmabufError::TableSize(20))
        );
    }

    #[test]
    fn tranche_index_past_table_is_rejected() {
        let table =
            FormatTable::from_pairs([pair(DrmFourcc::Xrgb8888, DrmModifier::Linear)]).unwrap();
        let array = [1u16].as_bytes().to_vec();
        assert_eq!(
            parse_tranche_indices(&array, &table),
            Err(DmabufError::IndexOutOfRange { index: 1, len: 1 })
        );
        assert_eq!(
            parse_tranche_indices(&[0, 0, 0], &table),
            Err(DmabufError::IndicesSize(3))
        );
    }

    #[test]
    fn feedback_from_preferences_puts_scanout_tranche_first() {
        let mut prefs = PreferenceList::default();
        prefs.push(pair(DrmFourcc::Xrgb8888, DrmModifier::I915_x_tiled), true);
        prefs.push(pair(DrmFourcc::Argb8888, DrmModifier::Linear), false);
        prefs.push(pair(DrmFourcc::Xrgb8888, DrmModifier::Linear), true);
        let fb = Feedback::from_preferences(0xe280, &prefs).unwrap();
        assert_eq!(fb.tranches.len(), 2);
        assert_eq!(fb.tranches[0].flags, TRANCHE_FLAG_SCANOUT);
        assert_eq!(fb.tranches[0].indices, vec![0, 2]);
        assert_eq!(fb.tranches[1].indices, vec![1]);
        let back = fb.preferences().unwrap();
        let order: Vec<_> = back.iter().map(|p| p.pair).collect();
        assert_eq!(
            order[0],
            pair(DrmFourcc::Xrgb8888, DrmModifier::I915_x_tiled)
        );
        assert_eq!(order[1], pair(DrmFourcc::Xrgb8888, DrmModifier::Linear));
        assert_eq!(order[2], pair(DrmFourcc::Argb8888, DrmModifier::Linear));
    }

    #[test]
    fn preference_list_keeps_first_position_of_repeats() {
        let mut prefs = PreferenceList::default();
        let a = pair(DrmFourcc::Xrgb8888, DrmModifier::Linear);
        prefs.push(a, false);
        prefs.push(pair(DrmFourcc::Argb8888, DrmModifier::Linear), false);
        prefs.push(a, true);
        assert_eq!(prefs.len(), 2);
        assert!(prefs.iter().next().unwrap().scanout);
    }

    #[test]
    fn dev_t_must_be_eight_bytes() {
        assert_eq!(parse_dev_t(&0xe280u64.to_ne_bytes()), Ok(0xe280));
        assert_eq!(parse_dev_t(&[0; 4]), Err(DmabufError::DeviceSize(4)));
    }
}
