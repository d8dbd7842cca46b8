//! Counters per VM and per guest client: messages and bytes each way, buffers by path, bytes
//! copied, frames. Atomics, so the relay threads count without locks; `snapshot` gives JSON.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::BufferPath;

/// One guest client's counters.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Label: the transport's name for this client (context id, socket peer).
    pub label: String,
    /// Messages guest → host (after policy).
    pub messages_to_host: AtomicU64,
    /// Bytes guest → host.
    pub bytes_to_host: AtomicU64,
    /// Messages host → guest.
    pub messages_to_guest: AtomicU64,
    /// Bytes host → guest.
    pub bytes_to_guest: AtomicU64,
    /// Buffers created over a zero-copy dmabuf.
    pub buffers_dmabuf_zero_copy: AtomicU64,
    /// Buffers created over a zero-copy shm pool.
    pub buffers_shm_zero_copy: AtomicU64,
    /// Buffers on the copy path.
    pub buffers_copy: AtomicU64,
    /// Bytes copied from guest pages into host memory.
    pub bytes_copied: AtomicU64,
    /// Commits with a buffer attached.
    pub frames: AtomicU64,
    /// Messages refused by policy or limits (each ends the client).
    pub refused: AtomicU64,
}

impl ClientStats {
    /// New counters named `label`.
    pub fn new(label: impl Into<String>) -> ClientStats {
        ClientStats {
            label: label.into(),
            ..ClientStats::default()
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one buffer on `path`.
    pub fn count_buffer(&self, path: BufferPath) {
        let c = match path {
            BufferPath::DmabufZeroCopy => &self.buffers_dmabuf_zero_copy,
            BufferPath::ShmZeroCopy => &self.buffers_shm_zero_copy,
            BufferPath::Copy => &self.buffers_copy,
        };
        ClientStats::add(c, 1);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> ClientSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientSnapshot {
            label: self.label.clone(),
            messages_to_host: get(&self.messages_to_host),
            bytes_to_host: get(&self.bytes_to_host),
            messages_to_guest: get(&self.messages_to_guest),
            bytes_to_guest: get(&self.bytes_to_guest),
            buffers_dmabuf_zero_copy: get(&self.buffers_dmabuf_zero_copy),
            buffers_shm_zero_copy: get(&self.buffers_shm_zero_copy),
            buffers_copy: get(&self.buffers_copy),
            bytes_copied: get(&self.bytes_copied),
            frames: get(&self.frames),
            refused: get(&self.refused),
        }
    }
}

/// Counters of one client at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientSnapshot {
    /// See [`ClientStats::label`].
    pub label: String,
    /// See [`ClientStats`].
    pub messages_to_host: u64,
    /// See [`ClientStats`].
    pub bytes_to_host: u64,
    /// See [`ClientStats`].
    pub messages_to_guest: u64,
    /// See [`ClientStats`].
    pub bytes_to_guest: u64,
    /// See [`ClientStats`].
    pub buffers_dmabuf_zero_copy: u64,
    /// See [`ClientStats`].
    pub buffers_shm_zero_copy: u64,
    /// See [`ClientStats`].
    pub buffers_copy: u64,
    /// See [`ClientStats`].
    pub bytes_copied: u64,
    /// See [`ClientStats`].
    pub frames: u64,
    /// See [`ClientStats`].
    pub refused: u64,
}

impl ClientSnapshot {
    fn accumulate(&mut self, o: &ClientSnapshot) {
        self.messages_to_host += o.messages_to_host;
        self.bytes_to_host += o.bytes_to_host;
        self.messages_to_guest += o.messages_to_guest;
        self.bytes_to_guest += o.bytes_to_guest;
        self.buffers_dmabuf_zero_copy += o.buffers_dmabuf_zero_copy;
        self.buffers_shm_zero_copy += o.buffers_shm_zero_copy;
        self.buffers_copy += o.buffers_copy;
        self.bytes_copied += o.bytes_copied;
        self.frames += o.frames;
        self.refused += o.refused;
    }
}

/// All clients of one VM, live and gone.
#[derive(Debug, Default)]
pub struct VmStats {
    /// The VM's name.
    pub vm_name: String,
    clients: Mutex<Vec<Arc<ClientStats>>>,
}

/// The VM's counters at one moment: totals and each client.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmSnapshot {
    /// The VM's name.
    pub vm_name: String,
    /// Sum over all clients ever connected.
    pub total: ClientSnapshot,
    /// Clients still connected.
    pub clients_live: u64,
    /// Each client ever connected, oldest first.
    pub clients: Vec<ClientSnapshot>,
}

impl VmStats {
    /// Counters for a VM named `vm_name`.
    pub fn new(vm_name: impl Into<String>) -> VmStats {
        VmStats {
            vm_name: vm_name.into(),
            clients: Mutex::new(Vec::new()),
        }
    }

    /// Registers a new client.
    pub fn client(&self, label: impl Into<String>) -> Arc<ClientStats> {
        let c = Arc::new(ClientStats::new(label));
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c.clone());
        c
    }

    /// The counters now.
    pub fn snapshot(&self) -> VmSnapshot {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = ClientSnapshot {
            label: "total".into(),
            ..ClientSnapshot::default()
        };
        let mut each = Vec::with_capacity(clients.len());
        let mut live = 0;
        for c in clients.iter() {
            let s = c.snapshot();
            total.accumulate(&s);
            // The VM's list holds one reference; any other means the relay still runs.
            if Arc::strong_count(c) > 1 {
                live += 1;
            }
            each.push(s);
        }
        VmSnapshot {
            vm_name: self.vm_name.clone(),
            total,
            clients_live: live,
            clients: each,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_clients_and_counts_live_ones() {
        let vm = VmStats::new("work");
        let a = vm.client("ctx 1");
        let b = vm.client("ctx 2");
        ClientStats::add(&a.frames, 3);
        ClientStats::add(&b.frames, 4);
        b.count_buffer(BufferPath::Copy);
        drop(b);
        let s = vm.snapshot();
        assert_eq!(s.total.frames, 7);
        assert_eq!(s.total.buffers_copy, 1);
        assert_eq!(s.clients.len(), 2);
        assert_eq!(s.clients_live, 1);
        assert_eq!(s.vm_name, "work");
    }
}
