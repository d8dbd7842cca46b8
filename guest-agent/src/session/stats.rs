//! The agent's counters, shared by every session of the process and written as JSON.

use super::*;

/// Counters of the whole agent (all clients), for `--stats-file`.
#[derive(Debug, Default)]
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
}

impl AgentStats {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as a JSON object.
    pub fn to_json(&self) -> String {
        let fields: [(&str, &AtomicU64); 15] = [
            ("clients", &self.clients),
            ("clients_refused", &self.clients_refused),
            ("messages_to_host", &self.messages_to_host),
            ("messages_to_guest", &self.messages_to_guest),
            ("bytes_to_host", &self.bytes_to_host),
            ("bytes_to_guest", &self.bytes_to_guest),
            ("sends", &self.sends),
            ("frames", &self.frames),
            ("damaged_bytes", &self.damaged_bytes),
            ("bytes_copied", &self.bytes_copied),
            ("shm_pools", &self.shm_pools),
            ("dmabufs_forwarded", &self.dmabufs_forwarded),
            ("dmabufs_copied", &self.dmabufs_copied),
            ("host_items", &self.host_items),
            ("pipe_bytes", &self.pipe_bytes),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {}", v.load(Ordering::Relaxed)))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }
}
