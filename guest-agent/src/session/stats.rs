//! The agent's counters, shared by every session of the process and written as JSON.

use super::*;

/// Counters of the whole agent (all clients), for `--stats-file`: written as a JSON object
/// with these names as keys, in this order.
#[derive(Debug, Default, serde::Serialize)]
pub struct AgentStats {
    /// Clients accepted.
    pub clients: AtomicU64,
    /// Clients that ended with a protocol error sent by the agent.
    pub clients_refused: AtomicU64,
    /// Messages client → host.
    pub messages_to_host: AtomicU64,
    /// Messages host → client.
    pub messages_to_guest: AtomicU64,
    /// Wayland bytes client → host.
    pub bytes_to_host: AtomicU64,
    /// Wayland bytes host → client.
    pub bytes_to_guest: AtomicU64,
    /// SEND commands.
    pub sends: AtomicU64,
    /// Commits of a surface with a buffer.
    pub frames: AtomicU64,
    /// Bytes of the damage of those commits (buffer coordinates, clipped).
    pub damaged_bytes: AtomicU64,
    /// Bytes the agent copied from client memory into blobs.
    pub bytes_copied: AtomicU64,
    /// `wl_shm` pools, each backed by a blob.
    pub shm_pools: AtomicU64,
    /// Dmabufs forwarded by resource id (no copy).
    pub dmabufs_forwarded: AtomicU64,
    /// Dmabufs copied into a blob (not virtio-gpu resources).
    pub dmabufs_copied: AtomicU64,
    /// Host memfds (keymaps, format tables) turned into guest memfds.
    pub host_items: AtomicU64,
    /// Bytes through clipboard and drag-and-drop pipes, both ways.
    pub pipe_bytes: AtomicU64,
    /// `wl_shm_pool.resize`s past the pool's blob, each a new blob and host pool.
    pub pools_regrown: AtomicU64,
}

impl AgentStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as a pretty-printed JSON object (two-space indent), ending in a newline.
    /// Each counter is read on its own (relaxed), as before: the object is not a snapshot.
    pub fn to_json(&self) -> String {
        // Serializing integers into a String cannot fail.
        let mut json = serde_json::to_string_pretty(self).unwrap_or_default();
        json.push('\n');
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_json_keys_and_layout_stay_as_scripts_read_them() {
        let stats = AgentStats::default();
        AgentStats::add(&stats.clients, 2);
        AgentStats::add(&stats.pipe_bytes, 1 << 40);
        let expected = "{\n  \"clients\": 2,\n  \"clients_refused\": 0,\n  \
            \"messages_to_host\": 0,\n  \"messages_to_guest\": 0,\n  \"bytes_to_host\": 0,\n  \
            \"bytes_to_guest\": 0,\n  \"sends\": 0,\n  \"frames\": 0,\n  \"damaged_bytes\": 0,\n  \
            \"bytes_copied\": 0,\n  \"shm_pools\": 0,\n  \"dmabufs_forwarded\": 0,\n  \
            \"dmabufs_copied\": 0,\n  \"host_items\": 0,\n  \"pipe_bytes\": 1099511627776,\n  \
            \"pools_regrown\": 0\n}\n";
        assert_eq!(stats.to_json(), expected);
    }
}
