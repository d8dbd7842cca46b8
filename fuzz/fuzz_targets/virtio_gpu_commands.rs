//! The virtio-gpu device fed a stream of guest control commands, as a hostile guest driver
//! would send them: decoding, dispatch, resources, backing pages checked against guest RAM,
//! blobs, contexts, fences and limits, against 4 MiB of memfd guest memory in two regions
//! (so scatter lists can cross a region boundary or fall in the hole between them).
//!
//! Input: repeated `[u16 little-endian length][that many bytes]`, each one request (its
//! readable descriptor bytes). Invariants: no panic; every response is at least a 24-byte
//! control header; a response echoes the request's fence flag only for fenced requests.

#![no_main]

use crossway_virtio::context::NullContextFactory;
use crossway_virtio::device::{DeviceConfig, GpuDevice, Limits};
use crossway_virtio::fence::FenceSignaler;
use crossway_sys::memfd::Memfd;
use crossway_virtio::memory::{GuestMem, GuestMemHandle};
use libfuzzer_sys::fuzz_target;
use vm_memory::{FileOffset, GuestAddress};

const REGION: usize = 2 << 20;

fn device() -> Option<GpuDevice> {
    let ram = Memfd::new("fuzz-guest-ram", 2 * REGION as u64).ok()?;
    let low = ram.file().try_clone().ok()?;
    let high = ram.file().try_clone().ok()?;
    let mem = GuestMem::from_ranges_with_files([
        (GuestAddress(0), REGION, Some(FileOffset::new(low, 0))),
        // A hole between the regions, as real VMs have below 4 GiB.
        (GuestAddress(0x1000_0000), REGION, Some(FileOffset::new(high, REGION as u64))),
    ])
    .ok()?;
    let mut config = DeviceConfig::default();
    // Small limits, so the fuzzer reaches them.
    config.limits = Limits { max_resources: 64, max_blob_bytes: 64 << 20, max_contexts: 8 };
    GpuDevice::new(
        config,
        Box::new(NullContextFactory),
        GuestMemHandle::new(mem),
        FenceSignaler::new(None),
    )
    .ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(mut device) = device() else { return };
    let mut rest = data;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (request, next) = tail.split_at(len);
        rest = next;
        let outcome = device.process(request);
        assert!(outcome.response.len() >= 24, "response shorter than a header");
        if let Some((_, _, _)) = outcome.fence {
            // Only a request with VIRTIO_GPU_FLAG_FENCE (bit 0 of hdr.flags) carries a fence.
            assert!(request.len() >= 24 && request[4] & 1 == 1, "fence without the flag");
        }
    }
});
