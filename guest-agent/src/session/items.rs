//! Host items (keymaps, format tables, write pipes) turned into guest fds, and pipe data.

use super::*;

pub use crossway_sys::memfd::sealed_memfd;

/// A host write-pipe item the client writes into: the agent reads the local pipe and WRITEs.
#[derive(Debug)]
pub struct HostWritePipe {
    /// The host's pipe id.
    pub id: u32,
    /// Read end of the local pipe.
    pub read: OwnedFd,
}

/// A read pipe: the host's READs for `id` go into `write`.
#[derive(Debug)]
pub struct ClientReadPipe {
    /// Write end the client gave.
    pub write: OwnedFd,
    /// Bytes not yet written.
    pub queue: VecDeque<u8>,
    /// The host hung up: close once `queue` is empty.
    pub hang_up: bool,
}

pub(super) fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo)
        .unwrap_or(false)
}

impl<D: VirtGpu> Session<D> {
    /// The bytes of a host blob item.
    pub(super) fn item_bytes(&mut self, item: &HostItem) -> Result<Vec<u8>, SessionError> {
        if item.kind != HostItemKind::Blob {
            return Err(host_err("expected a blob item"));
        }
        let max = self.config.limits.max_item_bytes;
        if item.size > max {
            return Err(host_err(format!(
                "item {} of {} bytes is over the limit {max}",
                item.id, item.size
            )));
        }
        let len = usize::try_from(item.size).map_err(|_| host_err("item size"))?;
        let blob = self.ch.blob_from_item(item)?;
        let mut bytes = vec![0u8; len];
        let r = blob.mapping.read_at(0, &mut bytes);
        self.ch.close_blob(blob)?;
        r.map_err(|e| host_err(format!("reading item {}: {e}", item.id)))?;
        Ok(bytes)
    }

    /// The guest fd standing for a host item.
    pub(super) fn item_fd(&mut self, item: &HostItem) -> Result<OwnedFd, SessionError> {
        match item.kind {
            HostItemKind::Blob => {
                let bytes = self.item_bytes(item)?;
                AgentStats::add(&self.stats.host_items, 1);
                sealed_memfd("crossway-host-item", &bytes)
                    .map_err(|e| host_err(format!("guest memfd: {e}")))
            }
            HostItemKind::WritePipe => {
                let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| host_err(format!("pipe: {e}")))?;
                self.write_pipes.push(HostWritePipe { id: item.id, read });
                Ok(write)
            }
            HostItemKind::Other(t) => {
                Err(host_err(format!("item of type {t} on a Wayland channel")))
            }
        }
    }

    /// Bytes the client wrote into a host write pipe: WRITE them (`data` empty = hang up).
    pub fn pipe_data(&mut self, id: u32, data: &[u8]) -> Result<(), SessionError> {
        AgentStats::add(&self.stats.pipe_bytes, data.len() as u64);
        self.ch.write_pipe(id, data, data.is_empty())?;
        Ok(())
    }

    /// A READ from the host for read pipe `pipe`: queued for the client's fd.
    pub fn host_read(&mut self, pipe: u32, data: &[u8], hang_up: bool) {
        AgentStats::add(&self.stats.pipe_bytes, data.len() as u64);
        let max = self.config.limits.max_pipe_queue;
        let Some(p) = self.read_pipes.get_mut(&pipe) else {
            return;
        };
        if p.queue.len() + data.len() > max {
            tracing::warn!("read pipe {pipe}: the client does not read; dropping it");
            self.read_pipes.remove(&pipe);
            return;
        }
        p.queue.extend(data);
        p.hang_up |= hang_up;
    }
}
