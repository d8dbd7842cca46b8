//! `zwp_linux_dmabuf_v1` buffers: virtio-gpu dmabufs forwarded by resource id, others copied
//! into blobs (relaid out to the host's stride where it chose another).

use super::*;

/// `zwp_linux_buffer_params_v1.add` on the host's `params`.
pub(super) fn add_plane_message(
    out: &mut Vec<u8>,
    params: ObjectId,
    p: &Plane,
    offset: u32,
    stride: u32,
    modifier: u64,
) -> Result<(), SessionError> {
    wire::encode_unchecked(
        out,
        params,
        1, // zwp_linux_buffer_params_v1.add
        &[
            Arg::Fd,
            Arg::Uint(p.plane),
            Arg::Uint(offset),
            Arg::Uint(stride),
            Arg::Uint((modifier >> 32) as u32),
            Arg::Uint(modifier as u32),
        ],
    )
    .map_err(|e| host_err(e.to_string()))?;
    Ok(())
}

/// Modifiers a guest app can allocate for the host: linear memory (guest blobs, memfds,
/// software rendering). Virgl and tiled layouts do not exist in this guest.
pub fn guest_can_allocate(modifier: u64) -> bool {
    modifier == LINEAR
}

/// Bytes per pixel of single-plane RGB DRM fourccs a copied dmabuf may use.
pub(super) fn fourcc_bytes_per_pixel(fourcc: u32) -> Option<u32> {
    crossway_protocols::format::bytes_per_pixel(fourcc).filter(|_| fourcc > 1)
}

/// Where the bytes of `ranges` (in a buffer laid out as `src`) go in the same buffer laid out
/// as `dst` (another offset or stride): `(source offset, destination offset, length)` pieces,
/// a range that spans rows split at row ends. `None` when a range is not within pixel rows.
pub(super) fn relayout(
    src: &BufferLayout,
    dst: &BufferLayout,
    ranges: &[std::ops::Range<u64>],
) -> Option<Vec<(u64, u64, u64)>> {
    let src_stride = u64::try_from(src.stride).ok().filter(|s| *s > 0)?;
    let dst_stride = u64::try_from(dst.stride).ok()?;
    let row_bytes = u64::try_from(src.width).ok()? * u64::from(src.bytes_per_pixel);
    let mut plan = Vec::with_capacity(ranges.len());
    for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let rel = at.checked_sub(src.offset)?;
            let (row, x) = (rel / src_stride, rel % src_stride);
            if x >= row_bytes {
                return None;
            }
            let len = (r.end - at).min(row_bytes - x);
            let to = dst
                .offset
                .checked_add(row.checked_mul(dst_stride)?)?
                .checked_add(x)?;
            plan.push((at, to, len));
            at += len;
            if at < r.end {
                // Coalesced rows: skip the padding to the next row's start.
                at = src.offset + (row + 1) * src_stride;
            }
        }
    }
    Some(plan)
}

impl<D: VirtGpu> Session<D> {
    /// The planes of a params object, which is used or gone from now on.
    pub(super) fn take_params(&mut self, params: u32) -> Vec<Plane> {
        let planes = self.params.remove(&params).unwrap_or_default();
        self.plane_fds = self.plane_fds.saturating_sub(planes.len());
        planes
    }

    /// Counts one more user of an imported GEM handle.
    pub(super) fn ref_import(&mut self, handle: u32) {
        *self.import_refs.entry(handle).or_default() += 1;
    }

    /// Drops users of imported GEM handles, closing each when its last user goes.
    pub(super) fn unref_imports(&mut self, handles: Vec<u32>) {
        for h in handles {
            let Some(refs) = self.import_refs.get_mut(&h) else {
                continue;
            };
            *refs = refs.saturating_sub(1);
            if *refs > 0 {
                continue;
            }
            self.import_refs.remove(&h);
            if !self.release.handles.contains(&h) {
                self.release.handles.push(h);
            }
        }
    }

    /// Records the imported handles of a forwarded dmabuf buffer.
    pub(super) fn insert_imported(&mut self, buffer: u32, handles: Vec<u32>) {
        if let Some(old) = self.imported.insert(buffer, handles) {
            self.unref_imports(old);
        }
    }

    pub(super) fn create_dmabuf(
        &mut self,
        params: u32,
        buffer: Option<u32>,
        (width, height): (i32, i32),
        format: u32,
    ) -> Result<(), SessionError> {
        let params_server = ObjectId::new(params)
            .and_then(|p| self.ids.to_server(p))
            .ok_or_else(|| client_err(params, code::INVALID_OBJECT, "params not on the host"))?;
        let planes = self.take_params(params);
        if planes.is_empty() {
            // The host answers with its own error (incomplete).
            return Ok(());
        }
        // Zero copy: every plane is a virtio-gpu resource of this device.
        let mut handles = Vec::new();
        let mut resources = Vec::new();
        for p in &planes {
            match self.ch.device().prime_fd_to_handle(p.fd.as_fd()) {
                Ok(h) => {
                    self.ref_import(h);
                    handles.push(h);
                    match self.ch.device().resource_info(h) {
                        Ok(info) => resources.push(info.res_handle),
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        if resources.len() == planes.len() {
            for (p, res) in planes.iter().zip(&resources) {
                add_plane_message(
                    &mut self.sendq.bytes,
                    params_server,
                    p,
                    p.offset,
                    p.stride,
                    p.modifier,
                )?;
                self.sendq.ids.push(SendId::Blob(*res));
            }
            AgentStats::add(&self.stats.dmabufs_forwarded, 1);
            match buffer {
                Some(b) => self.insert_imported(b, handles),
                None => {
                    if let Some(old) = self.params_imported.insert(params, handles) {
                        self.unref_imports(old);
                    }
                }
            }
            return Ok(());
        }
        self.unref_imports(handles);
        // Copy path: one plane of a format with a known pixel size.
        let [p] = &planes[..] else {
            return Err(client_err(
                params,
                code::IMPLEMENTATION,
                "multi-planar dmabufs that are not virtio-gpu resources cannot be relayed",
            ));
        };
        let bpp = fourcc_bytes_per_pixel(format).ok_or_else(|| {
            client_err(
                params,
                code::IMPLEMENTATION,
                format!(
                    "dmabuf format {format:#x} is not a virtio-gpu resource and cannot be copied"
                ),
            )
        })?;
        if p.modifier != LINEAR {
            return Err(client_err(
                params,
                code::IMPLEMENTATION,
                "only LINEAR dmabufs that are not virtio-gpu resources can be copied",
            ));
        }
        self.check_pools(params, 0)?;
        let file = File::from(
            p.fd.try_clone()
                .map_err(|e| client_err(params, code::NO_MEMORY, format!("dup: {e}")))?,
        );
        let source_size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let layout = BufferLayout {
            offset: u64::from(p.offset),
            width,
            height,
            stride: i32::try_from(p.stride).map_err(|_| client_err(params, 3, "stride"))?,
            bytes_per_pixel: bpp,
        };
        copy_ranges(&layout, &full_region(width, height), source_size)
            .map_err(|e| client_err(params, 5, format!("dmabuf layout: {e}")))?;
        // A blob the host can display with the client's layout where guest blobs are taken;
        // else the host's own image layout.
        let guest_ok = self
            .ch
            .caps()
            .crossway
            .as_ref()
            .is_some_and(|c| c.flags & CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND != 0);
        let (blob, blob_layout, offset, stride, modifier) = if guest_ok {
            self.check_pools(params, source_size)?;
            let b = self
                .ch
                .create_guest_blob(source_size)
                .map_err(|e| client_err(params, code::NO_MEMORY, e.to_string()))?;
            (b, None, p.offset, p.stride, p.modifier)
        } else {
            let (w, h) = (
                u32::try_from(width).map_err(|_| client_err(params, 6, "width"))?,
                u32::try_from(height).map_err(|_| client_err(params, 6, "height"))?,
            );
            let req = self
                .ch
                .image_requirements(w, h, format, GBM_BO_USE_LINEAR)
                .map_err(|e| client_err(params, code::NO_MEMORY, e.to_string()))?;
            self.check_pools(params, req.size)?;
            let b = self
                .ch
                .blob_for_image(&req)
                .map_err(|e| client_err(params, code::NO_MEMORY, e.to_string()))?;
            let l = BufferLayout {
                offset: u64::from(req.offsets[0]),
                width,
                height,
                stride: i32::try_from(req.strides[0]).map_err(|_| host_err("stride"))?,
                bytes_per_pixel: bpp,
            };
            (b, Some(l), req.offsets[0], req.strides[0], req.modifier)
        };
        let (bo, res) = self.add_blob(blob);
        add_plane_message(
            &mut self.sendq.bytes,
            params_server,
            p,
            offset,
            stride,
            modifier,
        )?;
        self.sendq.ids.push(SendId::Blob(res));
        AgentStats::add(&self.stats.dmabufs_copied, 1);
        let copied = CopiedBuffer {
            file: Rc::new(file),
            source_size,
            bo,
            layout,
            blob_layout,
        };
        match buffer {
            Some(b) => self.insert_buffer(b, copied),
            None => {
                if let Some(Some(old)) = self.params_waiting.insert(params, Some(copied)) {
                    self.unref_blob(old.bo);
                }
            }
        }
        Ok(())
    }
}
