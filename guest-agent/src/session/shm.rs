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
        shm_server: ObjectId,
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
                shm: shm_server,
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

    /// `wl_shm_pool.resize` of `pool`, with libwayland-server's checks (a pool only grows,
    /// over a file that long). Within the blob behind the pool, the resize goes to the host
    /// (returns `true`). Past it, a larger blob and a new host pool on it take the client's
    /// pool's place: buffers made from now on are made from the new pool, while earlier ones
    /// keep the old blob until they are destroyed; the old host pool is destroyed (its buffers
    /// live on, as `wl_shm_pool.destroy` says) and the resize itself is not forwarded.
    pub(super) fn resize_pool(&mut self, pool: u32, size: i32) -> Result<bool, SessionError> {
        const INVALID_STRIDE: u32 = 1;
        const INVALID_FD: u32 = 2;
        let Some(p) = self.pools.get(&pool) else {
            return Err(client_err(pool, code::INVALID_OBJECT, "unknown pool"));
        };
        let max = self.config.limits.max_pool_bytes;
        let size = u64::try_from(size)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| client_err(pool, INVALID_STRIDE, format!("invalid size ({size})")))?;
        if size < p.size {
            return Err(client_err(pool, INVALID_FD, "shrinking pool invalid"));
        }
        if size > max {
            return Err(client_err(
                pool,
                INVALID_STRIDE,
                format!("pool size {size} is over the limit of {max} bytes"),
            ));
        }
        let actual = p.file.metadata().map(|m| m.len()).unwrap_or(0);
        if actual < size {
            return Err(client_err(
                pool,
                INVALID_FD,
                format!("pool resized to {size} bytes on a file of {actual}"),
            ));
        }
        let capacity = self.blobs.get(&p.bo).map_or(0, |b| b.blob.size);
        if size <= capacity {
            if let Some(p) = self.pools.get_mut(&pool) {
                p.size = size;
            }
            return Ok(true);
        }
        self.replace_pool(pool, size)?;
        Ok(false)
    }

    /// Puts a new host pool on a blob of `size` bytes behind the client's `pool`.
    fn replace_pool(&mut self, pool: u32, size: u64) -> Result<(), SessionError> {
        let client_pool =
            ObjectId::new(pool).ok_or_else(|| client_err(1, code::INVALID_OBJECT, "pool id 0"))?;
        let (shm, old_bo) = match self.pools.get(&pool) {
            Some(p) => (p.shm, p.bo),
            None => return Err(client_err(pool, code::INVALID_OBJECT, "unknown pool")),
        };
        let version = self.map.get(client_pool).map_or(1, |o| o.version);
        let table = ProtocolTable::builtin();
        let (Some(pool_iface), Some(shm_iface)) = (table.get("wl_shm_pool"), table.get("wl_shm"))
        else {
            return Err(host_err("wl_shm_pool is not in the protocol tables"));
        };
        // The pool's wl_shm, if still on the host (the client's, live, or kept by the agent
        // after a release); its id may name another object by now.
        let shm_alive = match self.ids.to_client(shm) {
            ServerSide::Client(c) => self.map.get(c).is_ok_and(|o| o.interface.name == "wl_shm"),
            ServerSide::Private(i, _) => i.name == shm_iface.name,
            ServerSide::Unknown => false,
        };
        if !shm_alive {
            return Err(client_err(
                pool,
                code::IMPLEMENTATION,
                "the pool's wl_shm was released, so the pool cannot grow past its blob",
            ));
        }
        // The old blob stays held by the buffers made from it.
        let held = self.blobs.get(&old_bo).map_or(0, |b| b.blob.size);
        self.check_pools(pool, size.saturating_sub(held))?;
        let blob = self.pool_blob(size).map_err(|e| {
            client_err(
                pool,
                code::NO_MEMORY,
                format!("no blob for a pool grown to {size} bytes: {e}"),
            )
        })?;
        let new_server = self
            .ids
            .new_private(pool_iface, version)
            .map_err(|e| client_err(pool, code::NO_MEMORY, e.to_string()))?;
        let old_server = self.server_id(client_pool)?;
        let (bo, res) = self.add_blob(blob);
        // Both the host's pool and the client's are sized `size`; the blob may be larger.
        let size_arg = i32::try_from(size).map_err(|_| client_err(pool, 1, "size"))?;
        let q = &mut self.sendq;
        wire::encode_unchecked(
            &mut q.bytes,
            shm,
            op::SHM_CREATE_POOL,
            &[Arg::NewId(new_server), Arg::Fd, Arg::Int(size_arg)],
        )
        .map_err(|e| host_err(e.to_string()))?;
        q.ids.push(SendId::Blob(res));
        wire::encode_unchecked(&mut q.bytes, old_server, op::POOL_DESTROY, &[])
            .map_err(|e| host_err(e.to_string()))?;
        self.ids
            .rebind(client_pool, new_server, pool_iface, version)
            .map_err(|e| host_err(e.to_string()))?;
        if let Some(p) = self.pools.get_mut(&pool) {
            p.bo = bo;
            p.size = size;
        }
        self.unref_blob(old_bo);
        AgentStats::add(&self.stats.pools_regrown, 1);
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
