//! Buffers a guest client hands the host: `wl_shm` pools and buffers, `zwp_linux_dmabuf_v1`
//! params, and per-surface attach and damage for the copy path.
//!
//! Every size is checked against the fd behind it (as the transport measured it) with `u64`
//! checked arithmetic before the request that relies on it is forwarded, so the host compositor
//! never maps past the end of guest memory. Copy-path buffers are refreshed from guest pages
//! at `wl_surface.commit`, before the commit reaches the host: the pixels that buffer missed
//! since the host last saw it, as [`super::damage::Tracked`] works out.

use arrayvec::ArrayVec;
use crossway_protocols::damage::{BufferLayout, Rect, copy_ranges};
use crossway_protocols::dmabuf::{FormatModifier, PreferenceList};
use crossway_protocols::wire::ObjectId;
use drm_fourcc::DrmFourcc;

use super::damage::{Refresh, Tracked};
use super::fault::{Fault, display, params, shm};
use super::{BufferPath, GuestFd, GuestFdKind, IdMap, SyncBuffers};

/// Most planes a dmabuf has (linux-dmabuf's plane_idx limit).
pub const MAX_PLANES: usize = 4;

/// What the transport said of one fd, as kept for a plane or pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    size: u64,
    path: BufferPath,
    resource: Option<u32>,
    shrinkable: bool,
}

impl Memory {
    fn of(kind: &GuestFdKind) -> Option<Memory> {
        match *kind {
            GuestFdKind::Memory {
                size,
                path,
                resource,
                shrinkable,
            } => Some(Memory {
                size,
                path,
                resource,
                shrinkable,
            }),
            GuestFdKind::Pipe | GuestFdKind::Other => None,
        }
    }
}

/// One plane of a buffer: where its rows lie in its fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plane {
    memory: Memory,
    offset: u64,
    stride: u64,
    rows: u64,
}

impl Plane {
    fn bytes(&self) -> u64 {
        // Checked at creation: offset + stride × rows fits the fd.
        self.stride * self.rows
    }
}

/// A `wl_buffer` the relay knows the layout of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Buffer {
    planes: ArrayVec<Plane, MAX_PLANES>,
    /// Width and height in pixels.
    size: (i32, i32),
    /// Bytes per pixel of plane 0 when it is the only plane and the format is known: damage
    /// then maps to bytes; otherwise a damaged buffer is copied whole.
    bytes_per_pixel: Option<u32>,
}

impl Buffer {
    /// Where plane 0's pixels lie, when damage can be mapped to its bytes.
    fn layout(&self) -> Option<BufferLayout> {
        let [plane] = self.planes.as_slice() else {
            return None;
        };
        Some(BufferLayout {
            offset: plane.offset,
            width: self.size.0,
            height: self.size.1,
            stride: i32::try_from(plane.stride).ok()?,
            bytes_per_pixel: self.bytes_per_pixel?,
        })
    }

    /// Whether a copy-path plane of `self` shares bytes of a resource with one of `other`.
    fn overlaps(&self, other: &Buffer) -> bool {
        let copied = |p: &&Plane| p.memory.path == BufferPath::Copy && p.memory.resource.is_some();
        self.planes.iter().filter(copied).any(|a| {
            other.planes.iter().filter(copied).any(|b| {
                a.memory.resource == b.memory.resource
                    && a.offset < b.offset + b.bytes()
                    && b.offset < a.offset + a.bytes()
            })
        })
    }
}

fn buffer_path(planes: &[Plane]) -> BufferPath {
    if planes.iter().any(|p| p.memory.path == BufferPath::Copy) {
        BufferPath::Copy
    } else {
        planes
            .first()
            .map_or(BufferPath::ShmZeroCopy, |p| p.memory.path)
    }
}

#[derive(Debug)]
struct Pool {
    memory: Memory,
    size: u64,
    /// The pool's memory when the client may grow it (a plain memfd on the socket front, not a
    /// fixed-size virtio-gpu resource): `resize` past the size seen at creation looks again.
    growable: Option<std::os::fd::OwnedFd>,
}

#[derive(Debug, Clone, Copy)]
struct ParamsPlane {
    memory: Memory,
    offset: u32,
    stride: u32,
    modifier: u64,
}

#[derive(Debug, Default)]
struct Params {
    planes: [Option<ParamsPlane>; MAX_PLANES],
    used: bool,
    /// The layout of a `create` waiting for the host's `created` event.
    pending: Option<Buffer>,
}

#[derive(Debug, Default)]
struct Surface {
    /// `attach` since the last commit: `Some(None)` detaches.
    attached: Option<Option<ObjectId>>,
}

/// What a commit did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// A buffer was attached: one frame.
    pub frame: bool,
    /// Bytes refreshed from guest pages.
    pub copied: u64,
}

/// The buffer state of one client.
#[derive(Debug, Default)]
pub struct Buffers {
    pools: IdMap<Pool>,
    buffers: IdMap<Buffer>,
    params: IdMap<Params>,
    surfaces: IdMap<Surface>,
    /// Damage and what each copy-path buffer missed.
    damage: Tracked,
    /// Scratch: (resource, offset, length) to refresh at a commit.
    spans: Vec<(u32, u64, u64)>,
    /// Scratch: merged ranges of one resource.
    ranges: Vec<(u64, u64)>,
}

/// Bytes per pixel of single-plane formats the relay knows (wl_shm's codes 0 and 1 are
/// ARGB8888 and XRGB8888; every other code is the DRM fourcc).
pub fn bytes_per_pixel(format: u32) -> Option<u64> {
    crossway_protocols::format::bytes_per_pixel(format).map(u64::from)
}

/// Rows of `plane` for an image `height` rows tall: half for the chroma planes of 4:2:0
/// formats, all of them otherwise (an over-estimate for formats not listed, never an
/// under-estimate).
pub fn plane_rows(format: u32, plane: usize, height: u64) -> u64 {
    use DrmFourcc as F;
    let half = matches!(
        F::try_from(format),
        Ok(F::Nv12 | F::Nv21 | F::P010 | F::P012 | F::P016 | F::Yuv420 | F::Yvu420)
    );
    if plane > 0 && half {
        height.div_ceil(2)
    } else {
        height
    }
}

impl Buffers {
    /// Drops what was known of an id the map just gave a new object.
    pub fn forget(&mut self, id: ObjectId) {
        let k = id.get();
        self.pools.remove(&k);
        self.buffers.remove(&k);
        self.params.remove(&k);
        self.surfaces.remove(&k);
        self.damage.forget(id);
    }

    /// Surface damage and geometry, for the requests the engine hands on unchanged.
    pub fn damage(&mut self) -> &mut Tracked {
        &mut self.damage
    }

    /// `wl_shm.create_pool(pool, fd, size)`.
    pub fn create_pool(
        &mut self,
        shm_object: ObjectId,
        pool: ObjectId,
        fd: &GuestFd,
        size: i32,
        max: u64,
    ) -> Result<(), Fault> {
        let memory = Memory::of(&fd.kind).ok_or_else(|| {
            Fault::new(shm_object, shm::INVALID_FD, "pool fd is not shared memory")
        })?;
        let size = check_pool_size(shm_object, size, &memory, max)?;
        // Clients grow pools with ftruncate then resize (foot, GTK); a resource's size is fixed.
        let growable = match memory.resource {
            None => fd.fd.try_clone().ok(),
            Some(_) => None,
        };
        self.pools.insert(
            pool.get(),
            Pool {
                memory,
                size,
                growable,
            },
        );
        Ok(())
    }

    /// `wl_shm_pool.resize(size)`: only grows, within the fd and the limit.
    pub fn resize_pool(&mut self, pool: ObjectId, size: i32, max: u64) -> Result<(), Fault> {
        let p = self
            .pools
            .get_mut(&pool.get())
            .ok_or_else(|| unknown_to_relay(pool))?;
        if u64::try_from(size).is_ok_and(|s| s > p.memory.size)
            && let Some(now) = p.growable.as_ref().and_then(current_size)
        {
            p.memory.size = p.memory.size.max(now);
        }
        let new = check_pool_size(pool, size, &p.memory, max)?;
        if new < p.size {
            return Err(Fault::new(
                pool,
                shm::INVALID_STRIDE,
                format!("pool cannot shrink from {} to {new} bytes", p.size),
            ));
        }
        p.size = new;
        Ok(())
    }

    /// `wl_shm_pool.destroy`: its buffers keep their own layout.
    pub fn destroy_pool(&mut self, pool: ObjectId) {
        self.pools.remove(&pool.get());
    }

    /// `wl_shm_pool.create_buffer(buffer, offset, width, height, stride, format)`, checked as
    /// libwayland does plus the format's row size; returns the buffer's path.
    #[allow(clippy::too_many_arguments)]
    pub fn create_buffer(
        &mut self,
        pool: ObjectId,
        buffer: ObjectId,
        offset: i32,
        width: i32,
        height: i32,
        stride: i32,
        format: u32,
    ) -> Result<BufferPath, Fault> {
        let (memory, pool_size) = self
            .pools
            .get(&pool.get())
            .map(|p| (p.memory, p.size))
            .ok_or_else(|| unknown_to_relay(pool))?;
        let bad = |why: String| Fault::new(pool, shm::INVALID_STRIDE, why);
        let (Ok(offset), Ok(width), Ok(height), Ok(stride)) = (
            u64::try_from(offset),
            u64::try_from(width),
            u64::try_from(height),
            u64::try_from(stride),
        ) else {
            return Err(bad(format!(
                "negative buffer geometry: offset {offset}, {width}x{height}, stride {stride}"
            )));
        };
        if width == 0 || height == 0 {
            return Err(bad(format!("empty buffer {width}x{height}")));
        }
        let row = width
            .checked_mul(bytes_per_pixel(format).unwrap_or(1))
            .ok_or_else(|| bad("row size overflows".into()))?;
        if stride < row {
            return Err(bad(format!(
                "stride {stride} is less than a row of {row} bytes"
            )));
        }
        let end = stride
            .checked_mul(height)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| bad("buffer size overflows".into()))?;
        if end > pool_size {
            return Err(bad(format!(
                "buffer ends at byte {end}, past the pool's {pool_size} bytes"
            )));
        }
        let mut planes = ArrayVec::new();
        planes.push(Plane {
            memory,
            offset,
            stride,
            rows: height,
        });
        self.insert_buffer(
            buffer,
            Buffer {
                planes,
                size: (
                    i32::try_from(width).unwrap_or(i32::MAX),
                    i32::try_from(height).unwrap_or(i32::MAX),
                ),
                bytes_per_pixel: bytes_per_pixel(format).and_then(|b| u32::try_from(b).ok()),
            },
        );
        Ok(memory.path)
    }

    /// `wl_buffer.destroy`.
    pub fn destroy_buffer(&mut self, buffer: ObjectId) {
        self.buffers.remove(&buffer.get());
        self.damage.forget_buffer(buffer);
    }

    fn insert_buffer(&mut self, id: ObjectId, buffer: Buffer) {
        self.damage.forget_buffer(id);
        self.buffers.insert(id.get(), buffer);
    }

    /// `zwp_linux_dmabuf_v1.create_params(params)`.
    pub fn create_params(&mut self, id: ObjectId) {
        self.params.insert(id.get(), Params::default());
    }

    /// `zwp_linux_buffer_params_v1.destroy`.
    pub fn destroy_params(&mut self, id: ObjectId) {
        self.params.remove(&id.get());
    }

    /// `zwp_linux_buffer_params_v1.add(fd, plane_idx, offset, stride, modifier_hi, modifier_lo)`,
    /// the modifier's halves joined.
    #[allow(clippy::too_many_arguments)]
    pub fn params_add(
        &mut self,
        id: ObjectId,
        fd: &GuestFdKind,
        plane_idx: u32,
        offset: u32,
        stride: u32,
        modifier: u64,
    ) -> Result<(), Fault> {
        let p = self
            .params
            .get_mut(&id.get())
            .ok_or_else(|| unknown_to_relay(id))?;
        if p.used {
            return Err(Fault::new(id, params::ALREADY_USED, "params already used"));
        }
        let memory = Memory::of(fd).ok_or_else(|| {
            Fault::new(
                id,
                params::OUT_OF_BOUNDS,
                format!("plane {plane_idx} fd is not a buffer"),
            )
        })?;
        // A compositor maps a dmabuf plane without a SIGBUS guard (a real dmabuf cannot
        // shrink); a memfd posing as one must be sealed so that it cannot either.
        if memory.shrinkable {
            return Err(Fault::new(
                id,
                params::OUT_OF_BOUNDS,
                format!("plane {plane_idx} fd can shrink (a memfd without F_SEAL_SHRINK)"),
            ));
        }
        let slot = usize::try_from(plane_idx)
            .ok()
            .and_then(|i| p.planes.get_mut(i))
            .ok_or_else(|| {
                Fault::new(
                    id,
                    params::PLANE_IDX,
                    format!("plane index {plane_idx} is not below {MAX_PLANES}"),
                )
            })?;
        if slot.is_some() {
            return Err(Fault::new(
                id,
                params::PLANE_SET,
                format!("plane {plane_idx} already set"),
            ));
        }
        *slot = Some(ParamsPlane {
            memory,
            offset,
            stride,
            modifier,
        });
        Ok(())
    }

    /// `create` (`buffer` `None`: the host names it in `created`) or `create_immed`; every
    /// check of the protocol and the plane layout against the fds; returns the buffer's path.
    pub fn params_create(
        &mut self,
        id: ObjectId,
        buffer: Option<ObjectId>,
        width: i32,
        height: i32,
        format: u32,
        host_formats: Option<&PreferenceList>,
    ) -> Result<BufferPath, Fault> {
        let p = self
            .params
            .get_mut(&id.get())
            .ok_or_else(|| unknown_to_relay(id))?;
        let fault = |code, why: String| Fault::new(id, code, why);
        if p.used {
            return Err(fault(params::ALREADY_USED, "params already used".into()));
        }
        p.used = true;
        let count = p.planes.iter().take_while(|s| s.is_some()).count();
        if count == 0 || p.planes[count..].iter().any(Option::is_some) {
            return Err(fault(
                params::INCOMPLETE,
                "planes must be set from 0 without gaps".into(),
            ));
        }
        let set = || p.planes.iter().flatten();
        let modifier = set().next().map_or(0, |pl| pl.modifier);
        if set().any(|pl| pl.modifier != modifier) {
            return Err(fault(
                params::INVALID_FORMAT,
                "planes have different modifiers".into(),
            ));
        }
        let pair = FormatModifier { format, modifier };
        if !host_formats.is_some_and(|list| list.contains(pair)) {
            return Err(fault(
                params::INVALID_FORMAT,
                format!("{pair} is not imported by the host"),
            ));
        }
        let positive = |v: i32| u64::try_from(v).ok().filter(|&v| v > 0);
        let (Some(w), Some(h)) = (positive(width), positive(height)) else {
            return Err(fault(
                params::INVALID_DIMENSIONS,
                format!("invalid size {width}x{height}"),
            ));
        };
        let mut planes = ArrayVec::<Plane, MAX_PLANES>::new();
        for (i, pl) in set().enumerate() {
            let rows = plane_rows(format, i, h);
            let (offset, stride) = (u64::from(pl.offset), u64::from(pl.stride));
            let end = stride
                .checked_mul(rows)
                .and_then(|b| b.checked_add(offset))
                .ok_or_else(|| fault(params::OUT_OF_BOUNDS, format!("plane {i} overflows")))?;
            if end > pl.memory.size {
                return Err(fault(
                    params::OUT_OF_BOUNDS,
                    format!(
                        "plane {i} ends at byte {end}, past its {} bytes",
                        pl.memory.size
                    ),
                ));
            }
            if count == 1
                && let Some(bpp) = bytes_per_pixel(format)
                && stride < w.saturating_mul(bpp)
            {
                return Err(fault(
                    params::OUT_OF_BOUNDS,
                    format!("plane {i} stride {stride} is less than a row of {width} pixels"),
                ));
            }
            // Two planes in the same guest resource must not overlap.
            for (j, other) in planes.iter().enumerate() {
                let same =
                    pl.memory.resource.is_some() && other.memory.resource == pl.memory.resource;
                if same && offset < other.offset + other.bytes() && other.offset < end {
                    return Err(fault(
                        params::OUT_OF_BOUNDS,
                        format!("planes {j} and {i} overlap"),
                    ));
                }
            }
            planes.push(Plane {
                memory: pl.memory,
                offset,
                stride,
                rows,
            });
        }
        let path = buffer_path(&planes);
        let single = planes.len() == 1;
        let made = Buffer {
            planes,
            // Both positive i32s, checked above.
            size: (width, height),
            bytes_per_pixel: bytes_per_pixel(format)
                .filter(|_| single)
                .and_then(|b| u32::try_from(b).ok()),
        };
        match buffer {
            Some(b) => self.insert_buffer(b, made),
            None => p.pending = Some(made),
        }
        Ok(path)
    }

    /// The host's `zwp_linux_buffer_params_v1.created(buffer)`.
    pub fn params_created(&mut self, id: ObjectId, buffer: ObjectId) {
        if let Some(made) = self
            .params
            .get_mut(&id.get())
            .and_then(|p| p.pending.take())
        {
            self.insert_buffer(buffer, made);
        }
    }

    /// `wl_surface.attach(buffer, ..)`.
    pub fn attach(&mut self, surface: ObjectId, buffer: Option<ObjectId>) {
        self.surfaces.entry(surface.get()).or_default().attached = Some(buffer);
    }

    /// `wl_surface.damage`: surface-local coordinates.
    pub fn damage_surface(&mut self, surface: ObjectId, x: i32, y: i32, width: i32, height: i32) {
        self.damage
            .damage_surface(surface, Rect::new(x, y, width, height));
    }

    /// `wl_surface.damage_buffer`: buffer pixels.
    pub fn damage_buffer(&mut self, surface: ObjectId, x: i32, y: i32, width: i32, height: i32) {
        self.damage
            .damage_buffer(surface, Rect::new(x, y, width, height));
    }

    /// `wl_surface.destroy`.
    pub fn destroy_surface(&mut self, surface: ObjectId) {
        self.surfaces.remove(&surface.get());
        self.damage.destroy_surface(surface);
    }

    /// `wl_surface.commit`: refreshes what a copy-path buffer missed since the host last saw
    /// it, before the commit is forwarded.
    pub fn commit(
        &mut self,
        surface: ObjectId,
        sync: &mut dyn SyncBuffers,
    ) -> Result<Committed, Fault> {
        let attached = self
            .surfaces
            .get_mut(&surface.get())
            .and_then(|s| s.attached.take());
        let buffer = match attached {
            Some(Some(buffer)) => buffer,
            other => {
                self.damage.commit_unchanged(surface, other.is_some());
                return Ok(Committed::default());
            }
        };
        let mut done = Committed {
            frame: true,
            copied: 0,
        };
        let Some(b) = self.buffers.get(&buffer.get()) else {
            self.damage.commit_unchanged(surface, true);
            return Ok(done);
        };
        if !b.planes.iter().any(|p| p.memory.path == BufferPath::Copy) {
            // Nothing to refresh: the host reads the guest's pages.
            self.damage.commit_zero_copy(surface);
            return Ok(done);
        }
        let refresh = self.damage.commit(surface, buffer, b.size);
        self.spans.clear();
        let layout = b.layout();
        for plane in &b.planes {
            if plane.memory.path != BufferPath::Copy {
                continue;
            }
            let resource = plane.memory.resource.ok_or_else(|| {
                Fault::new(
                    buffer,
                    display::IMPLEMENTATION,
                    "copy-path buffer has no resource to refresh",
                )
            })?;
            let whole = (resource, plane.offset, plane.bytes());
            match (&refresh, layout) {
                (Refresh::Nothing, _) => {}
                (Refresh::Region(region), Some(layout)) => {
                    // Exact rectangles, not whole rows: with weston-simple-damage they copy a
                    // tenth of the bytes for the same serve CPU time (one `pwrite` per row
                    // piece costs about what the bytes saved do; docs/results/2026-12-04-*).
                    // Checked at creation, so an error here is the relay's own bug: copy all.
                    match copy_ranges(&layout, region, plane.memory.size) {
                        Ok(ranges) => self
                            .spans
                            .extend(ranges.iter().map(|r| (resource, r.start, r.end - r.start))),
                        Err(_) => self.spans.push(whole),
                    }
                }
                _ => self.spans.push(whole),
            }
        }
        if !self.spans.is_empty() {
            // Buffers over the same bytes now hold what this one does: the tracker's idea of
            // them is out of date, so they are copied whole next time.
            for (&other, o) in &self.buffers {
                if other != buffer.get()
                    && b.overlaps(o)
                    && let Some(other) = ObjectId::new(other)
                {
                    self.damage.forget_buffer(other);
                }
            }
        }
        self.spans.sort_unstable();
        let mut rest = &self.spans[..];
        while let Some(&(resource, _, _)) = rest.first() {
            let n = rest.iter().take_while(|s| s.0 == resource).count();
            self.ranges.clear();
            for &(_, start, len) in &rest[..n] {
                match self.ranges.last_mut() {
                    Some((s0, l0)) if start <= *s0 + *l0 => {
                        *l0 = (*l0).max(start + len - *s0);
                    }
                    _ => self.ranges.push((start, len)),
                }
            }
            rest = &rest[n..];
            done.copied += sync.sync(resource, &self.ranges).map_err(|e| {
                Fault::new(
                    surface,
                    display::IMPLEMENTATION,
                    format!("refreshing resource {resource}: {e}"),
                )
            })?;
        }
        Ok(done)
    }
}

fn check_pool_size(object: ObjectId, size: i32, memory: &Memory, max: u64) -> Result<u64, Fault> {
    let size = u64::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| Fault::new(object, shm::INVALID_STRIDE, format!("invalid size {size}")))?;
    if size > memory.size {
        return Err(Fault::new(
            object,
            shm::INVALID_FD,
            format!(
                "pool of {size} bytes is larger than its fd ({})",
                memory.size
            ),
        ));
    }
    if size > max {
        return Err(Fault::new(
            object,
            shm::INVALID_STRIDE,
            format!("pool of {size} bytes is over the limit max_shm_pool_bytes = {max}"),
        ));
    }
    Ok(size)
}

/// The size of a memory fd now (it may have grown since it was received).
fn current_size(fd: &std::os::fd::OwnedFd) -> Option<u64> {
    let file = std::fs::File::from(fd.try_clone().ok()?);
    file.metadata().ok().map(|m| m.len())
}

fn unknown_to_relay(id: ObjectId) -> Fault {
    Fault::new(
        id,
        display::IMPLEMENTATION,
        "object unknown to the relay's buffer state",
    )
}
