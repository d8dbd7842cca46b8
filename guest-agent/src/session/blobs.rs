//! The blobs behind a client's pools and copied dmabufs: creation, reference counts, release
//! once the SENDs that name them are out, and copies from client memory into their mappings.

use super::*;

/// Reads `len` bytes at `src` of `file` straight into `mapping` at `dst`.
pub(super) fn read_into<M: VirtGpuMapping>(
    file: &File,
    src: u64,
    mapping: &M,
    dst: u64,
    len: u64,
) -> std::io::Result<()> {
    let (Ok(dst), Ok(len)) = (usize::try_from(dst), usize::try_from(len)) else {
        return Err(std::io::Error::other("range too large"));
    };
    if dst.checked_add(len).is_none_or(|end| end > mapping.len()) {
        return Err(std::io::Error::other("range past the blob"));
    }
    mapping.read_from(file.as_fd(), src, dst, len)
}

impl<D: VirtGpu> Session<D> {
    /// A blob of at least `size` bytes whose bytes map 1:1 to a pool's: a guest blob where
    /// the host accepts them in SEND, else a linear HOST3D image of 4096-byte rows. Pools over
    /// [`SessionLimits::max_guest_blob_pool`] take a HOST3D blob too: clients such as foot
    /// reserve a large sparse pool and touch little of it, and host memory is allocated as
    /// touched where a guest blob's pages are all pinned at creation.
    pub(super) fn pool_blob(&mut self, size: u64) -> Result<Blob<D::Mapping>, ChannelError> {
        let guest_ok = self
            .ch
            .caps()
            .crossway
            .as_ref()
            .is_some_and(|c| c.flags & CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND != 0);
        if guest_ok && size <= self.config.limits.max_guest_blob_pool {
            return self.ch.create_guest_blob(size);
        }
        // Hosts cap image sides (16384 is common): wide rows for large pools.
        let width = if size <= u64::from(POOL_BLOB_WIDTH) * 4 * 16384 {
            POOL_BLOB_WIDTH
        } else {
            POOL_BLOB_WIDTH * 16
        };
        let row = u64::from(width) * 4;
        let rows = u32::try_from(size.div_ceil(row).max(1))
            .map_err(|_| ChannelError::TooMuchData(usize::MAX))?;
        let req = self
            .ch
            .image_requirements(width, rows, ARGB8888, GBM_BO_USE_LINEAR)?;
        if req.offsets[0] != 0 || req.size < size {
            return Err(ChannelError::BadImageRequirements {
                width,
                height: rows,
                what: "the host's image does not hold the pool contiguously",
            });
        }
        self.ch.blob_for_image(&req)
    }

    pub(super) fn add_blob(&mut self, blob: Blob<D::Mapping>) -> (u32, u32) {
        let bo = blob.bo_handle;
        let res = blob.res_id;
        self.blobs.insert(bo, SharedBlob { blob, refs: 1 });
        (bo, res)
    }

    pub(super) fn unref_blob(&mut self, bo: u32) {
        let Some(b) = self.blobs.get_mut(&bo) else {
            return;
        };
        b.refs = b.refs.saturating_sub(1);
        if b.refs == 0
            && let Some(b) = self.blobs.remove(&bo)
        {
            self.release.blobs.push(b.blob);
        }
    }

    /// Closes the blobs and imported handles let go of since the last call. Not before: a
    /// SEND naming them may still be queued in `sendq` (a pool created and destroyed in one
    /// read, a dmabuf buffer created and destroyed), and the host resolves the resource id
    /// only when the SEND arrives.
    pub(super) fn release_deferred(&mut self) {
        for blob in std::mem::take(&mut self.release.blobs) {
            let bo = blob.bo_handle;
            if let Err(e) = self.ch.close_blob(blob) {
                tracing::warn!("closing blob {bo}: {e}");
            }
        }
        for h in std::mem::take(&mut self.release.handles) {
            // Imported again since (PRIME gave the same handle back): still in use.
            if self.import_refs.contains_key(&h) {
                continue;
            }
            if let Err(e) = self.ch.device().gem_close(h) {
                tracing::warn!("closing imported dmabuf handle {h}: {e}");
            }
        }
    }
}
