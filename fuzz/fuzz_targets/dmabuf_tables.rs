//! dmabuf feedback tables and the Crossway capset.
//!
//! Input: byte 0 times 16 is where the rest splits into format table bytes and a
//! `tranche_formats` array (clamped to the end); the whole rest is also parsed as a capset
//! payload and, from its first 8 bytes, as a `dev_t`.

#![no_main]

use crossway_protocols::capset::{CrosswayCaps, MAX_CAPSET_FORMATS};
use crossway_protocols::dmabuf::{
    DmabufError, Feedback, FormatTable, Tranche, parse_dev_t, parse_tranche_indices,
    tranche_indices_bytes,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [b0, rest @ ..] = data else { return };
    let split = (usize::from(*b0) * 16).min(rest.len());
    let (table_bytes, index_bytes) = rest.split_at(split);
    tables(table_bytes, index_bytes);
    capset(rest);
    let dev = &rest[..rest.len().min(8)];
    match parse_dev_t(dev) {
        Ok(v) => assert_eq!(v.to_ne_bytes(), dev),
        Err(e) => assert_eq!(e, DmabufError::DeviceSize(dev.len())),
    }
});

fn tables(table_bytes: &[u8], index_bytes: &[u8]) {
    let table = match FormatTable::from_bytes(table_bytes) {
        Ok(table) => table,
        Err(e) => {
            assert!(
                matches!(e, DmabufError::TableSize(n) if n == table_bytes.len() && n % 16 != 0)
            );
            return;
        }
    };
    // The table is the bytes, entry for entry (padding included), and parses back to itself.
    assert_eq!(table.len(), table_bytes.len() / 16);
    assert_eq!(table.as_bytes(), table_bytes);
    assert_eq!(
        FormatTable::from_bytes(table.as_bytes()).as_ref(),
        Ok(&table)
    );
    for (i, entry) in table.entries().iter().enumerate() {
        let pair = table.get(i as u16).expect("index inside the table");
        assert_eq!((pair.format, pair.modifier), (entry.format, entry.modifier));
        let first = table.index_of(pair).expect("a pair of the table is found");
        assert!(usize::from(first) <= i);
        assert_eq!(table.get(first), Ok(pair));
    }
    if let Ok(past_end) = u16::try_from(table.len()) {
        assert!(table.get(past_end).is_err());
    }

    let indices = match parse_tranche_indices(index_bytes, &table) {
        Ok(indices) => indices,
        Err(DmabufError::IndicesSize(n)) => {
            assert!(n == index_bytes.len() && n % 2 == 1);
            return;
        }
        Err(DmabufError::IndexOutOfRange { index, len }) => {
            assert!(usize::from(index) >= len && len == table.len());
            return;
        }
        Err(e) => panic!("unexpected tranche error {e}"),
    };
    assert_eq!(tranche_indices_bytes(&indices), index_bytes);
    assert!(indices.iter().all(|&i| usize::from(i) < table.len()));

    // A feedback of one tranche of those indices: its preference list has each pair once.
    let feedback = Feedback {
        main_device: 0xe280,
        table: table.clone(),
        tranches: vec![Tranche {
            target_device: 0xe280,
            flags: u32::from(index_bytes.first().copied().unwrap_or(0) & 1),
            indices: indices.clone(),
        }],
    };
    let prefs = feedback.preferences().expect("indices were checked");
    assert!(prefs.len() <= indices.len());
    for &i in &indices {
        assert!(prefs.contains(table.get(i).expect("checked index")));
    }
    // And a feedback built from that list describes the same pairs and scanout marks.
    let rebuilt = Feedback::from_preferences(0xe280, &prefs).expect("list fits a table");
    let back = rebuilt.preferences().expect("built feedback is consistent");
    assert_eq!(back.len(), prefs.len());
    for p in prefs.iter() {
        assert!(
            back.iter().any(|q| q == p),
            "{p:?} lost in the rebuilt feedback"
        );
    }
}

fn capset(bytes: &[u8]) {
    let Ok(caps) = CrosswayCaps::from_bytes(bytes) else {
        return;
    };
    assert!(caps.formats.len() <= MAX_CAPSET_FORMATS);
    let encoded = caps.to_bytes();
    assert_eq!(encoded.len(), 16 + 16 * caps.formats.len());
    assert!(encoded.len() <= bytes.len());
    assert_eq!(CrosswayCaps::from_bytes(&encoded).as_ref(), Ok(&caps));
    assert_eq!(encoded[..4], bytes[..4]);
    assert_eq!(encoded[4..8], bytes[4..8]);
}
