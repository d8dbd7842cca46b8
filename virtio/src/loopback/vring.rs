//! The driver's side of a split virtqueue (virtio 1.x §2.7) laid out in guest RAM: the
//! descriptor table, the available ring the loopback writes and the used ring the backend
//! writes. No `EVENT_IDX` (not negotiated), no indirect descriptors.

use std::sync::atomic::{Ordering, fence};

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// `VRING_DESC_F_NEXT`.
const VRING_DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
const VRING_DESC_F_WRITE: u16 = 2;

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VringError {
    /// Not enough free descriptors for the chain.
    #[error("virtqueue full: {need} descriptors needed, {free} free")]
    Full {
        /// Descriptors the chain needs.
        need: usize,
        /// Free descriptors.
        free: usize,
    },
    /// An empty chain.
    #[error("empty descriptor chain")]
    Empty,
    /// Guest memory access failed (the ring lies outside guest RAM).
    #[error("guest memory: {0}")]
    Memory(String),
    /// The backend put a descriptor id in the used ring that is not an outstanding head.
    #[error("backend returned unknown descriptor {0}")]
    BadUsed(u32),
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// Addresses and size of a split ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringLayout {
    /// Queue size (a power of two).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

impl VringLayout {
    /// The layout at `base`, each part aligned as the spec asks (16, 2, 4); returns it and the
    /// bytes it takes.
    pub fn at(base: u64, size: u16) -> (VringLayout, u64) {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let end = used + 6 + 8 * n;
        (
            VringLayout {
                size,
                desc,
                avail,
                used,
            },
            end - base,
        )
    }
}

/// The driver's bookkeeping of one split ring.
#[derive(Debug)]
pub struct Vring {
    layout: VringLayout,
    free: Vec<u16>,
    /// `next` links of outstanding chains, to free them when used.
    chain_next: Vec<Option<u16>>,
    outstanding: Vec<bool>,
    avail_idx: u16,
    last_used: u16,
}

impl Vring {
    /// A ring over zeroed guest memory at `layout`.
    pub fn new(mem: &GuestMem, layout: VringLayout) -> Result<Vring, VringError> {
        let n = usize::from(layout.size);
        let (_, bytes) = VringLayout::at(layout.desc, layout.size);
        let zero = vec![0u8; usize::try_from(bytes).unwrap_or(0)];
        mem.write_slice(&zero, GuestAddress(layout.desc))
            .map_err(|e| VringError::Memory(e.to_string()))?;
        Ok(Vring {
            layout,
            free: (0..layout.size).rev().collect(),
            chain_next: vec![None; n],
            outstanding: vec![false; n],
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// The layout.
    pub fn layout(&self) -> VringLayout {
        self.layout
    }

    /// Free descriptors.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Writes a chain and publishes it in the available ring; returns its head.
    pub fn add(&mut self, mem: &GuestMem, chain: &[Buffer]) -> Result<u16, VringError> {
        if chain.is_empty() {
            return Err(VringError::Empty);
        }
        if chain.len() > self.free.len() {
            return Err(VringError::Full {
                need: chain.len(),
                free: self.free.len(),
            });
        }
        let ids: Vec<u16> = (0..chain.len()).filter_map(|_| self.free.pop()).collect();
        let m = |e: vm_memory::GuestMemoryError| VringError::Memory(e.to_string());
        for (i, (b, &id)) in chain.iter().zip(&ids).enumerate() {
            let next = ids.get(i + 1).copied();
            let mut flags = if b.write { VRING_DESC_F_WRITE } else { 0 };
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT;
            }
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&b.addr.to_le_bytes());
            d[8..12].copy_from_slice(&b.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            let at = self.layout.desc + 16 * u64::from(id);
            mem.write_slice(&d, GuestAddress(at)).map_err(m)?;
            self.chain_next[usize::from(id)] = next;
        }
        let head = ids[0];
        self.outstanding[usize::from(head)] = true;
        let slot = u64::from(self.avail_idx % self.layout.size);
        mem.write_obj(head.to_le(), GuestAddress(self.layout.avail + 4 + 2 * slot))
            .map_err(m)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it (virtio §2.7.13).
        fence(Ordering::SeqCst);
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.layout.avail + 2),
            Ordering::Release,
        )
        .map_err(m)?;
        fence(Ordering::SeqCst);
        Ok(head)
    }

    /// The next used entry `(head, written bytes)`, freeing its chain.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Result<Option<(u16, u32)>, VringError> {
        let m = |e: vm_memory::GuestMemoryError| VringError::Memory(e.to_string());
        let idx: u16 = u16::from_le(
            mem.load(GuestAddress(self.layout.used + 2), Ordering::Acquire)
                .map_err(m)?,
        );
        if idx == self.last_used {
            return Ok(None);
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.layout.size);
        let at = self.layout.used + 4 + 8 * slot;
        let id: u32 = u32::from_le(mem.read_obj(GuestAddress(at)).map_err(m)?);
        let len: u32 = u32::from_le(mem.read_obj(GuestAddress(at + 4)).map_err(m)?);
        self.last_used = self.last_used.wrapping_add(1);
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| self.outstanding.get(usize::from(h)) == Some(&true))
            .ok_or(VringError::BadUsed(id))?;
        self.outstanding[usize::from(head)] = false;
        let mut cur = Some(head);
        while let Some(c) = cur {
            self.free.push(c);
            cur = self.chain_next[usize::from(c)].take();
        }
        Ok(Some((head, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn vring_layout_at_aligns_used_ring() {
        let (l, bytes) = VringLayout::at(0x1000, 256);
        assert_eq!(l.avail, 0x1000 + 4096);
        assert_eq!(l.used % 4, 0);
        assert_eq!(bytes, l.used + 6 + 8 * 256 - 0x1000);
    }

    #[test]
    fn vring_add_then_device_use_frees_chain() {
        let mem: GuestMem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let (layout, _) = VringLayout::at(0, 4);
        let mut v = Vring::new(&mem, layout).unwrap();
        let chain = [
            Buffer {
                addr: 0x8000,
                len: 24,
                write: false,
            },
            Buffer {
                addr: 0x9000,
                len: 64,
                write: true,
            },
        ];
        let head = v.add(&mem, &chain).unwrap();
        assert_eq!(v.free(), 2);
        assert!(matches!(
            v.add(&mem, &[chain[0]; 3]),
            Err(VringError::Full { .. })
        ));
        assert_eq!(v.pop_used(&mem).unwrap(), None);
        // Play the device: used[0] = {head, 24}, used.idx = 1.
        mem.write_obj(u32::from(head), GuestAddress(layout.used + 4))
            .unwrap();
        mem.write_obj(24u32, GuestAddress(layout.used + 8)).unwrap();
        mem.write_obj(1u16, GuestAddress(layout.used + 2)).unwrap();
        assert_eq!(v.pop_used(&mem).unwrap(), Some((head, 24)));
        assert_eq!(v.free(), 4);
    }

    #[test]
    fn vring_unknown_used_id_is_error() {
        let mem: GuestMem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let (layout, _) = VringLayout::at(0, 4);
        let mut v = Vring::new(&mem, layout).unwrap();
        mem.write_obj(3u32, GuestAddress(layout.used + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(layout.used + 2)).unwrap();
        assert!(matches!(v.pop_used(&mem), Err(VringError::BadUsed(3))));
    }
}
