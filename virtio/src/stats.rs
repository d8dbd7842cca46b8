//! Counters the device keeps per VM (read by the proxy's stats and by tests).

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-VM counters.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Commands processed (control and cursor queues).
    pub commands: AtomicU64,
    /// Commands answered with an error.
    pub errors: AtomicU64,
    /// Guest blobs exported as udmabuf dmabufs.
    pub blobs_zero_copy: AtomicU64,
    /// Guest blobs exported through the copy path.
    pub blobs_copied: AtomicU64,
    /// Bytes copied from guest pages into host memfds (copy path and 2D transfers).
    pub bytes_copied: AtomicU64,
    /// Times a per-VM limit refused a command.
    pub limits_hit: AtomicU64,
}

/// A plain copy of [`DeviceStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`DeviceStats::commands`].
    pub commands: u64,
    /// See [`DeviceStats::errors`].
    pub errors: u64,
    /// See [`DeviceStats::blobs_zero_copy`].
    pub blobs_zero_copy: u64,
    /// See [`DeviceStats::blobs_copied`].
    pub blobs_copied: u64,
    /// See [`DeviceStats::bytes_copied`].
    pub bytes_copied: u64,
    /// See [`DeviceStats::limits_hit`].
    pub limits_hit: u64,
}

impl DeviceStats {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            commands: l(&self.commands),
            errors: l(&self.errors),
            blobs_zero_copy: l(&self.blobs_zero_copy),
            blobs_copied: l(&self.blobs_copied),
            bytes_copied: l(&self.bytes_copied),
            limits_hit: l(&self.limits_hit),
        }
    }
}
