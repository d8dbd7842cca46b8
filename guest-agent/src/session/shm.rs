//! `wl_shm` pools and buffers backed by blobs, and the damage-limited copy at each commit.

use super::*;

pub(super) fn full_region(width: i32, height: i32) -> Region {
    Region::from_rect(Rect {
        x: 0,
        y: 0,
        width,
        height,
    })
}

impl<D: VirtGpu> Session<D> {
    /// Records a copied buffer, letting go of what an earlier buffer of the same id held.
    pub(super) fn insert_buffer(&mut self, buffer: u32, entry: CopiedBuffer) {
        if let Some(old) = self.buffers.insert(buffer, entry) {
            self.unref_blob(old.bo);
        }
    }

    pub(super) fn surface(&mut self, surface: u32) -> Result<&mut Surface, SessionError> {
        surface_in(&mut self.map, surface)
            .ok_or_else(|| client_err(surface, code::INVALID_OBJECT, "not a live surface"))
    }

    /// The surface a `wp_viewport` was made for, while that surface lives.
    pub(super) fn viewport_surface(&self, viewport: u32) -> Option<u32> {
        match self.map.data(ObjectId::new(viewport)?) {
            Some(ObjectData::Viewport(s)) => *s,
            _ => None,
        }
    }

    /// `wl_shm.create_pool` on `shm`. Errors name the `wl_shm` with its codes, as
    /// libwayland-server does (invalid_stride for the size, invalid_fd for the file).
    pub(super) fn create_pool(
        &mut self,
        shm: u32,
        pool: u32,
        fd: OwnedFd,
        size: i32,
    ) -> Result<u32, SessionError> {
        pub(super) const INVALID_STRIDE: u32 = 1;
        pub(super) const INVALID_FD: u32 = 2;
        let max = self.config.limits.max_pool_bytes;
        let size = u64::try_from(size)
            .ok()
            .filter(|s| *s > 0 && *s <= max)
            .ok_or_else(|| {
                client_err(
                    shm,
                    INVALID_STRIDE,
                    format!("pool size {size} is not in 1..={max}"),
                )
            })?;
        self.check_pools(shm, size)?;
        let file = File::from(fd);
        let actual = file
            .metadata()
            .map_err(|e| client_err(shm, INVALID_FD, format!("pool fd: {e}")))?
            .len();
        if actual < size {
            return Err(client_err(
                shm,
                INVALID_FD,
                format!("pool of {size} bytes on a file of {actual}"),
            ));
        }
        let blob = self.pool_blob(size).map_err(|e| {
            client_err(
                shm,
                code::NO_MEMORY,
                format!("no blob for a pool of {size} bytes: {e}"),
            )
        })?;
        let (bo, res) = self.add_blob(blob);
        self.pools.insert(
            pool,
            Pool {
                file: Rc::new(file),
                size,
                bo,
            },
        );
        AgentStats::add(&self.stats.shm_pools, 1);
        Ok(res)
    }

    /// Refuses one more blob-backed pool or copied dmabuf of `bytes` over
    /// [`SessionLimits::max_pools`] or [`SessionLimits::max_blob_bytes`].
    pub(super) fn check_pools(&self, object: u32, bytes: u64) -> Result<(), SessionError> {
        let held: u64 = self.blobs.values().map(|b| b.blob.size).sum();
        let max = self.config.limits.max_blob_bytes;
        if held.checked_add(bytes).is_none_or(|total| total > max) {
            return Err(client_err(
                object,
                code::NO_MEMORY,
                format!("{bytes} more blob bytes over the limit {max} ({held} held)"),
            ));
        }
        // One blob each, kept while a buffer uses it (after `wl_shm_pool.destroy` too).
        if self.blobs.len() >= self.config.limits.max_pools {
            return Err(client_err(
                object,
                code::NO_MEMORY,
                format!(
                    "more than {} pools and copied dmabufs",
                    self.config.limits.max_pools
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn resize_pool(&mut self, pool: u32, size: i32) -> Result<(), SessionError> {
        let Some(p) = self.pools.get_mut(&pool) else {
            return Ok(());
        };
        let size = u64::try_from(size).unwrap_or(0);
        let capacity = self.blobs.get(&p.bo).map_or(0, |b| b.blob.size);
        if size < p.size {
            return Err(client_err(pool, 2, "wl_shm_pool.resize cannot shrink"));
        }
        if size > capacity {
            return Err(client_err(
                pool,
                code::IMPLEMENTATION,
                format!(
                    "wl_shm_pool.resize to {size} bytes: crossway-agent backs a pool with a \
                     blob of fixed size ({capacity}); create a new pool instead"
                ),
            ));
        }
        let actual = p.file.metadata().map(|m| m.len()).unwrap_or(0);
        if actual < size {
            return Err(client_err(
                pool,
                2,
                format!("pool resized to {size} bytes on a file of {actual}"),
            ));
        }
        p.size = size;
        Ok(())
    }

    pub(super) fn create_shm_buffer(
        &mut self,
        pool: u32,
        buffer: u32,
        offset: i32,
        (width, height): (i32, i32),
        stride: i32,
        format: u32,
    ) -> Result<(), SessionError> {
        let Some(p) = self.pools.get(&pool) else {
            return Err(client_err(pool, code::INVALID_OBJECT, "unknown pool"));
        };
        let bpp = crossway_protocols::format::bytes_per_pixel(format).ok_or_else(|| {
            client_err(pool, 0, format!("wl_shm format {format:#x} not supported"))
        })?;
        let layout = BufferLayout {
            offset: u64::try_from(offset).map_err(|_| client_err(pool, 1, "negative offset"))?,
            width,
            height,
            stride,
            bytes_per_pixel: bpp,
        };
        // An empty region checks the layout against the pool.
        let full = full_region(width, height);
        copy_ranges(&layout, &full, p.size)
            .map_err(|e| client_err(pool, 1, format!("buffer layout: {e}")))?;
        let entry = CopiedBuffer {
            file: p.file.clone(),
            source_size: p.size,
            bo: p.bo,
            layout,
            blob_layout: None,
        };
        if let Some(b) = self.blobs.get_mut(&entry.bo) {
            b.refs += 1;
        }
        self.insert_buffer(buffer, entry);
        Ok(())
    }

    pub(super) fn forget_buffer(&mut self, buffer: u32) {
        if let Some(b) = self.buffers.remove(&buffer) {
            self.unref_blob(b.bo);
        }
        if let Some(handles) = self.imported.remove(&buffer) {
            self.unref_imports(handles);
        }
        self.stale.forget_buffer(buffer);
        // A later buffer may reuse the id: what the surfaces remember of this one must not
        // reach it (committing without a new attach shows nothing new).
        for (_, data) in self.map.iter_data_mut() {
            let ObjectData::Surface(s) = data else {
                continue;
            };
            if s.current == Some(buffer) {
                s.current = None;
            }
            if s.pending == Some(Some(buffer)) {
                s.pending = Some(None);
            }
        }
    }

    pub(super) fn commit(&mut self, surface: u32) -> Result<(), SessionError> {
        let s = surface_in(&mut self.map, surface)
            .ok_or_else(|| client_err(surface, code::INVALID_OBJECT, "not a live surface"))?;
        if let Some(b) = s.pending.take() {
            s.current = b;
        }
        let Some(buffer) = s.current else {
            // Nothing to show; drop the damage with the commit.
            let _ = s.damage.commit(None);
            return Ok(());
        };
        let Some(b) = self.buffers.get(&buffer) else {
            // A dmabuf forwarded by resource, or a buffer the agent does not copy.
            let _ = s.damage.commit(None);
            AgentStats::add(&self.stats.frames, 1);
            return Ok(());
        };
        let size = (b.layout.width, b.layout.height);
        let damage = s.damage.commit(Some(size));
        let bpp = u64::from(b.layout.bytes_per_pixel);
        AgentStats::add(&self.stats.frames, 1);
        AgentStats::add(&self.stats.damaged_bytes, damage.area() * bpp);
        let region = self.stale.commit(surface, buffer, size, &damage);
        if region.is_empty() {
            return Ok(());
        }
        let Some(b) = self.buffers.get(&buffer) else {
            return Ok(());
        };
        let src_ranges = copy_ranges(&b.layout, &region, b.source_size)
            .map_err(|e| client_err(buffer, code::INVALID_OBJECT, e.to_string()))?;
        // A buffer holds a reference on its blob, so the blob is there while the buffer is.
        let blob = &self
            .blobs
            .get(&b.bo)
            .ok_or_else(|| host_err("a copied buffer without its blob"))?
            .blob;
        let plan = match &b.blob_layout {
            None => src_ranges
                .iter()
                .map(|r| (r.start, r.start, r.end - r.start))
                .collect(),
            Some(dst) => relayout(&b.layout, dst, &src_ranges)
                .ok_or_else(|| host_err("the blob's layout does not hold the buffer"))?,
        };
        let mut copied = 0;
        for (src, dst, len) in plan {
            if dst.checked_add(len).is_none_or(|end| end > blob.size) {
                return Err(host_err("the blob's layout does not hold the buffer"));
            }
            read_into(&b.file, src, &blob.mapping, dst, len).map_err(|e| {
                client_err(
                    buffer,
                    code::INVALID_OBJECT,
                    format!("reading the client's buffer: {e}"),
                )
            })?;
            copied += len;
        }
        AgentStats::add(&self.stats.bytes_copied, copied);
        // Buffers sharing bytes with this one were overwritten in the blob: copy them in full
        // at their next commit.
        let (bo, layout) = (b.bo, b.layout);
        let overlapping: Vec<u32> = self
            .buffers
            .iter()
            .filter(|(id, o)| **id != buffer && o.bo == bo && o.layout.overlaps(&layout))
            .map(|(id, _)| *id)
            .collect();
        for o in overlapping {
            self.stale.forget_buffer(o);
        }
        Ok(())
    }
}
