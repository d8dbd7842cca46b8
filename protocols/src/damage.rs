//! What of a buffer changed since it was last copied (by the agent into its guest blob, or by
//! the proxy into its host memfd), and the byte ranges of the source memory to copy for it.
//!
//! ```text
//!  wl_surface.damage / damage_buffer / set_buffer_transform / set_buffer_scale,
//!  wp_viewport.set_source / set_destination      ──▶ SurfaceDamage (one per wl_surface)
//!  wl_surface.commit ── SurfaceDamage::commit ──▶ damage D in buffer pixels
//!                    ── StaleTracker::commit(surface, buffer, D) ──▶ region R to copy
//!                    ── copy_ranges(layout, R) ──▶ pool byte ranges: pool → blob
//! ```
//!
//! The rules, from wayland.xml (`wl_surface`, `wl_output.transform`) and viewporter.xml:
//! - Surface damage is in surface-local coordinates; the surface is the buffer passed through
//!   the inverse of the buffer transform, divided by the buffer scale, then cropped to the
//!   viewport source and stretched to the viewport destination. Converting it to buffer pixels
//!   rounds outwards, so every buffer pixel that contributes to a damaged surface pixel is in.
//! - Buffer damage is already in buffer pixels.
//! - Damage is relative to the surface's previous content, not to the buffer's. A client that
//!   rotates buffers draws into a buffer whose last copy is older, so [`StaleTracker`] adds to
//!   every other buffer of the surface what each commit damaged.
//!
//! Everything here comes from an untrusted client: coordinates are clamped, arithmetic is
//! widened or checked, and a [`Region`] holds at most [`MAX_REGION_RECTS`] rectangles (more are
//! merged into bounding boxes, which only ever grows the region), so a client sending a million
//! damage requests costs constant memory and constant time per request.

use std::collections::HashMap;
use std::ops::Range;

/// Most rectangles a [`Region`] keeps; beyond this, rectangles are merged (pixman-like regions
/// can grow without bound, which an untrusted client could use to make every commit slow).
pub const MAX_REGION_RECTS: usize = 16;

/// Buffers the [`StaleTracker`] remembers per surface by default. A client rotates 2 to 4
/// buffers; one with more sees its least recently committed buffers copied in full next time.
pub const DEFAULT_MAX_BUFFERS_PER_SURFACE: usize = 8;

/// `wl_fixed_t` value of -1.0, which `wp_viewport.set_source` uses for "unset".
const FIXED_MINUS_ONE: i32 = -256;

/// Why a damage request or a buffer layout is refused. The first four are the protocol errors
/// the compositor would raise (`wl_surface.invalid_transform`, `wl_surface.invalid_scale`,
/// `wp_viewport.bad_value` twice); the relay may also leave them to the host compositor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DamageError {
    /// `wl_surface.set_buffer_transform` with a value outside `wl_output.transform`.
    #[error("buffer transform {0} is not a wl_output.transform value")]
    InvalidTransform(i32),
    /// `wl_surface.set_buffer_scale` with a value below 1.
    #[error("buffer scale {0} is not positive")]
    InvalidScale(i32),
    /// `wp_viewport.set_source` with a rectangle that is neither unset (all -1) nor non-empty at
    /// non-negative coordinates (raw `wl_fixed_t` values).
    #[error("viewport source {0:?} is neither unset nor a valid rectangle")]
    InvalidViewportSource([i32; 4]),
    /// `wp_viewport.set_destination` with a size that is neither unset (-1, -1) nor positive.
    #[error("viewport destination {0}x{1} is neither unset nor positive")]
    InvalidViewportDestination(i32, i32),
    /// A buffer layout with an empty size, a stride shorter than a row, or 0 bytes per pixel.
    #[error(
        "buffer layout of {width}x{height} pixels, stride {stride}, {bytes_per_pixel} bytes per pixel is invalid"
    )]
    InvalidLayout {
        /// Width in pixels.
        width: i32,
        /// Height in pixels.
        height: i32,
        /// Bytes from one row to the next.
        stride: i32,
        /// Bytes per pixel.
        bytes_per_pixel: u32,
    },
    /// A buffer that does not fit in its pool (`wl_shm.invalid_stride` on the compositor side).
    #[error("buffer at offset {offset} spanning {len} bytes runs past the {pool_size}-byte pool")]
    PastPool {
        /// The buffer's offset in the pool.
        offset: u64,
        /// `stride * height`.
        len: u64,
        /// The pool's size.
        pool_size: u64,
    },
    /// A layout whose byte extent does not fit in 64 bits.
    #[error("buffer layout size overflows")]
    Overflow,
}

/// A rectangle in integer pixel coordinates; empty when `width` or `height` is not positive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width; the right edge `x + width` is exclusive.
    pub width: i32,
    /// Height; the bottom edge `y + height` is exclusive.
    pub height: i32,
}

impl Rect {
    /// The rectangle at `(x, y)` of `width` × `height`.
    pub const fn new(x: i32, y: i32, width: i32, height: i32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether the rectangle has no pixels.
    pub fn is_empty(&self) -> bool {
        self.width <= 0 || self.height <= 0
    }

    /// Number of pixels (0 when empty).
    pub fn area(&self) -> u64 {
        if self.is_empty() {
            return 0;
        }
        u64::from(self.width.unsigned_abs()) * u64::from(self.height.unsigned_abs())
    }

    /// Whether pixel `(x, y)` is inside.
    pub fn contains_point(&self, x: i32, y: i32) -> bool {
        let (x0, y0, x1, y1) = self.edges();
        !self.is_empty()
            && i64::from(x) >= x0
            && i64::from(x) < x1
            && i64::from(y) >= y0
            && i64::from(y) < y1
    }

    /// Exclusive edges `(x0, y0, x1, y1)`, widened so that `x + width` cannot overflow.
    fn edges(&self) -> (i64, i64, i64, i64) {
        let (x, y) = (i64::from(self.x), i64::from(self.y));
        (x, y, x + i64::from(self.width), y + i64::from(self.height))
    }

    /// The rectangle with edges `x0..x1`, `y0..y1` clamped to `0..=i32::MAX`, or `None` when
    /// that is empty. Damage is only ever meaningful at non-negative coordinates (neither a
    /// surface nor a buffer has content left of or above its origin), and clamping there keeps
    /// every bounding box of two stored rectangles representable.
    fn from_edges(x0: i64, y0: i64, x1: i64, y1: i64) -> Option<Rect> {
        let clamp = |v: i64| v.clamp(0, i64::from(i32::MAX));
        let (x0, y0, x1, y1) = (clamp(x0), clamp(y0), clamp(x1), clamp(y1));
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        Some(Rect {
            x: i32::try_from(x0).ok()?,
            y: i32::try_from(y0).ok()?,
            width: i32::try_from(x1 - x0).ok()?,
            height: i32::try_from(y1 - y0).ok()?,
        })
    }

    /// This rectangle clamped to non-negative coordinates, or `None` when nothing is left.
    fn normalized(&self) -> Option<Rect> {
        if self.is_empty() {
            return None;
        }
        let (x0, y0, x1, y1) = self.edges();
        Rect::from_edges(x0, y0, x1, y1)
    }

    /// Whether `other` (non-empty) lies entirely inside `self`.
    fn contains(&self, other: &Rect) -> bool {
        let (a, b) = (self.edges(), other.edges());
        a.0 <= b.0 && a.1 <= b.1 && a.2 >= b.2 && a.3 >= b.3
    }

    /// Smallest rectangle containing both (both normalized, so the result is representable).
    fn bounding(&self, other: &Rect) -> Option<Rect> {
        let (a, b) = (self.edges(), other.edges());
        Rect::from_edges(a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3))
    }

    /// Whether the union of the two is exactly a rectangle (same span on one axis, touching or
    /// overlapping on the other).
    fn unites_exactly(&self, other: &Rect) -> bool {
        let (a, b) = (self.edges(), other.edges());
        let same_rows = a.1 == b.1 && a.3 == b.3 && a.0 <= b.2 && b.0 <= a.2;
        let same_columns = a.0 == b.0 && a.2 == b.2 && a.1 <= b.3 && b.1 <= a.3;
        same_rows || same_columns
    }

    /// This rectangle cut to `0..width` × `0..height`.
    fn clip(&self, width: i32, height: i32) -> Option<Rect> {
        if self.is_empty() {
            return None;
        }
        let (x0, y0, x1, y1) = self.edges();
        Rect::from_edges(x0, y0, x1.min(i64::from(width)), y1.min(i64::from(height)))
    }
}

/// A union of at most [`MAX_REGION_RECTS`] rectangles at non-negative coordinates, which may
/// overlap. Adding never loses pixels: past the limit, the new rectangle is merged with the
/// stored one whose bounding box grows least, so the region may grow beyond what was added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Region {
    rects: Vec<Rect>,
}

impl Region {
    /// The empty region.
    pub fn new() -> Region {
        Region::default()
    }

    /// The region of one rectangle (clamped to non-negative coordinates).
    pub fn from_rect(rect: Rect) -> Region {
        let mut region = Region::new();
        region.add(rect);
        region
    }

    /// The rectangles, in no particular order.
    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    /// Whether the region has no pixels.
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    /// Empties the region.
    pub fn clear(&mut self) {
        self.rects.clear();
    }

    /// Whether pixel `(x, y)` is in the region.
    pub fn contains_point(&self, x: i32, y: i32) -> bool {
        self.rects.iter().any(|r| r.contains_point(x, y))
    }

    /// Smallest rectangle containing the region.
    pub fn bounding_box(&self) -> Option<Rect> {
        let mut rects = self.rects.iter();
        let first = *rects.next()?;
        rects.try_fold(first, |acc, r| acc.bounding(r))
    }

    /// Adds `rect`: the part of it at non-negative coordinates, which is what damage can mean.
    /// Costs O([`MAX_REGION_RECTS`]²) at worst, whatever was added before.
    pub fn add(&mut self, rect: Rect) {
        let Some(mut rect) = rect.normalized() else {
            return;
        };
        // Every `continue` removes a stored rectangle, so this ends.
        loop {
            if self.rects.iter().any(|r| r.contains(&rect)) {
                return;
            }
            self.rects.retain(|r| !rect.contains(r));
            if let Some(i) = self.rects.iter().position(|r| r.unites_exactly(&rect)) {
                let merged = self.rects.swap_remove(i).bounding(&rect);
                match merged {
                    Some(merged) => rect = merged,
                    None => return,
                }
                continue;
            }
            if self.rects.len() < MAX_REGION_RECTS {
                self.rects.push(rect);
                return;
            }
            let growth = |r: &Rect| {
                r.bounding(&rect)
                    .map_or(u64::MAX, |b| b.area().saturating_sub(r.area()))
            };
            let Some(i) = (0..self.rects.len()).min_by_key(|&i| growth(&self.rects[i])) else {
                return;
            };
            match self.rects.swap_remove(i).bounding(&rect) {
                Some(merged) => rect = merged,
                None => return,
            }
        }
    }

    /// Adds every rectangle of `other`.
    pub fn union(&mut self, other: &Region) {
        for rect in &other.rects {
            self.add(*rect);
        }
    }

    /// The part of the region inside `0..width` × `0..height`.
    pub fn clipped(&self, width: i32, height: i32) -> Region {
        let mut clipped = Region::new();
        for rect in &self.rects {
            if let Some(r) = rect.clip(width, height) {
                clipped.add(r);
            }
        }
        clipped
    }

    /// Number of distinct pixels (overlaps counted once).
    pub fn area(&self) -> u64 {
        bands(&self.rects)
            .iter()
            .map(|band| {
                let rows = (band.y1 - band.y0) as u64;
                let width: i64 = band.spans.iter().map(|&(x0, x1)| x1 - x0).sum();
                rows * width as u64
            })
            .sum()
    }
}

/// Rows `y0..y1` over which the region is the same set of disjoint, sorted column spans.
#[derive(Debug)]
struct Band {
    y0: i64,
    y1: i64,
    spans: Vec<(i64, i64)>,
}

/// The region cut into horizontal bands, top to bottom, each with merged column spans.
fn bands(rects: &[Rect]) -> Vec<Band> {
    let mut ys: Vec<i64> = rects
        .iter()
        .filter(|r| !r.is_empty())
        .flat_map(|r| {
            let (_, y0, _, y1) = r.edges();
            [y0, y1]
        })
        .collect();
    ys.sort_unstable();
    ys.dedup();
    let mut out = Vec::new();
    for pair in ys.windows(2) {
        let (y0, y1) = (pair[0], pair[1]);
        let mut spans: Vec<(i64, i64)> = rects
            .iter()
            .filter(|r| !r.is_empty())
            .map(Rect::edges)
            .filter(|e| e.1 <= y0 && e.3 >= y1)
            .map(|e| (e.0, e.2))
            .collect();
        if spans.is_empty() {
            continue;
        }
        spans.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(spans.len());
        for (x0, x1) in spans {
            match merged.last_mut() {
                Some(last) if x0 <= last.1 => last.1 = last.1.max(x1),
                _ => merged.push((x0, x1)),
            }
        }
        out.push(Band {
            y0,
            y1,
            spans: merged,
        });
    }
    out
}

/// Double-buffered state of a surface that decides how surface coordinates map to buffer
/// pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    /// `wl_output.transform`, 0..=7.
    transform: u8,
    /// Buffer scale, at least 1.
    scale: i32,
    /// Viewport source as raw `wl_fixed_t` x, y, width, height.
    source: Option<[i32; 4]>,
    /// Viewport destination size in surface coordinates.
    destination: Option<(i32, i32)>,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            transform: 0,
            scale: 1,
            source: None,
            destination: None,
        }
    }
}

/// One axis of the map from surface coordinates to transformed buffer coordinates (the buffer
/// after its transform, before scaling down): `t = (a + s * b) / c`, for `s` in `0..limit`.
#[derive(Debug, Clone, Copy)]
struct Axis {
    a: i128,
    b: i128,
    c: i128,
    /// Surface extent on this axis; surface damage beyond it is outside the surface.
    limit: i128,
}

impl Axis {
    /// Buffer-pixel span `floor(t(s0))..ceil(t(s1))` of surface span `s0..s1`, cut to
    /// `0..extent` (the transformed buffer's extent on this axis), or `None` if empty.
    fn map(&self, s0: i64, s1: i64, extent: i64) -> Option<(i64, i64)> {
        let s0 = i128::from(s0).clamp(0, self.limit);
        let s1 = i128::from(s1).clamp(0, self.limit);
        if s1 <= s0 || self.b <= 0 || self.c <= 0 {
            return None;
        }
        // All terms are non-negative (the viewport source origin is checked non-negative), so
        // integer division floors. With inputs below 2^32 every product stays below 2^100.
        let t0 = (self.a + s0 * self.b) / self.c;
        let t1 = (self.a + s1 * self.b + self.c - 1) / self.c;
        let extent = i128::from(extent);
        let (t0, t1) = (t0.min(extent), t1.min(extent));
        if t1 <= t0 {
            return None;
        }
        Some((i64::try_from(t0).ok()?, i64::try_from(t1).ok()?))
    }
}

/// Ceiling of `n / d` for positive `d`.
fn div_ceil(n: i128, d: i128) -> i128 {
    (n + d - 1) / d
}

/// Damage and geometry state of one `wl_surface`, as the relay sees its requests.
///
/// The relay calls the setters as the client's requests pass (after the client's
/// `wp_viewport` is destroyed, `set_viewport_source(None)` and `set_viewport_destination(None)`)
/// and [`SurfaceDamage::commit`] at each `wl_surface.commit`.
#[derive(Debug, Clone, Default)]
pub struct SurfaceDamage {
    surface: Region,
    buffer: Region,
    pending: Geometry,
    /// Geometry and buffer size of the last commit that had a buffer; a commit with anything
    /// different is damaged in full, because then the same surface damage lands on other
    /// buffer pixels and what [`StaleTracker`] accumulated no longer lines up.
    last: Option<(Geometry, (i32, i32))>,
}

impl SurfaceDamage {
    /// A surface with no damage, transform normal, scale 1 and no viewport.
    pub fn new() -> SurfaceDamage {
        SurfaceDamage::default()
    }

    /// `wl_surface.damage`: surface-local coordinates.
    pub fn damage_surface(&mut self, x: i32, y: i32, width: i32, height: i32) {
        self.surface.add(Rect::new(x, y, width, height));
    }

    /// `wl_surface.damage_buffer`: buffer pixels.
    pub fn damage_buffer(&mut self, x: i32, y: i32, width: i32, height: i32) {
        self.buffer.add(Rect::new(x, y, width, height));
    }

    /// `wl_surface.set_buffer_transform` (pending until commit).
    pub fn set_buffer_transform(&mut self, transform: i32) -> Result<(), DamageError> {
        match u8::try_from(transform) {
            Ok(t @ 0..=7) => {
                self.pending.transform = t;
                Ok(())
            }
            _ => Err(DamageError::InvalidTransform(transform)),
        }
    }

    /// `wl_surface.set_buffer_scale` (pending until commit).
    pub fn set_buffer_scale(&mut self, scale: i32) -> Result<(), DamageError> {
        if scale < 1 {
            return Err(DamageError::InvalidScale(scale));
        }
        self.pending.scale = scale;
        Ok(())
    }

    /// `wp_viewport.set_source` with raw `wl_fixed_t` x, y, width, height; `None` or all -1.0
    /// unsets it (pending until commit).
    pub fn set_viewport_source(&mut self, source: Option<[i32; 4]>) -> Result<(), DamageError> {
        self.pending.source = match source {
            None => None,
            Some(s) if s == [FIXED_MINUS_ONE; 4] => None,
            Some(s @ [x, y, w, h]) if x >= 0 && y >= 0 && w > 0 && h > 0 => Some(s),
            Some(s) => return Err(DamageError::InvalidViewportSource(s)),
        };
        Ok(())
    }

    /// `wp_viewport.set_destination`; `None` or (-1, -1) unsets it (pending until commit).
    pub fn set_viewport_destination(
        &mut self,
        destination: Option<(i32, i32)>,
    ) -> Result<(), DamageError> {
        self.pending.destination = match destination {
            None | Some((-1, -1)) => None,
            Some((w, h)) if w > 0 && h > 0 => Some((w, h)),
            Some((w, h)) => return Err(DamageError::InvalidViewportDestination(w, h)),
        };
        Ok(())
    }

    /// `wl_surface.commit`: applies the pending state and returns this commit's damage in the
    /// pixels of the buffer the surface now shows, of `buffer_size` (`None` when it shows none):
    /// buffer damage plus surface damage converted through viewport, scale and transform,
    /// rounded outwards, clipped to the buffer. All of the buffer when the geometry or the
    /// buffer size changed since the last commit with a buffer (or there was none). Clears the
    /// pending damage.
    pub fn commit(&mut self, buffer_size: Option<(i32, i32)>) -> Region {
        let surface = std::mem::take(&mut self.surface);
        let buffer = std::mem::take(&mut self.buffer);
        let geometry = self.pending;
        let Some((width, height)) = buffer_size.filter(|&(w, h)| w > 0 && h > 0) else {
            self.last = None;
            return Region::new();
        };
        if self.last != Some((geometry, (width, height))) {
            self.last = Some((geometry, (width, height)));
            return Region::from_rect(Rect::new(0, 0, width, height));
        }
        let mut damage = buffer.clipped(width, height);
        for rect in surface.rects() {
            if let Some(r) = surface_to_buffer(&geometry, (width, height), rect) {
                damage.add(r);
            }
        }
        damage
    }
}

/// `rect` in surface coordinates → buffer pixels of a `buffer` of that size, rounded outwards.
fn surface_to_buffer(geometry: &Geometry, buffer: (i32, i32), rect: &Rect) -> Option<Rect> {
    let (bw, bh) = (i64::from(buffer.0), i64::from(buffer.1));
    // Size of the buffer once its transform is undone: 90° turns swap the axes.
    let (tw, th) = if geometry.transform % 2 == 1 {
        (bh, bw)
    } else {
        (bw, bh)
    };
    let scale = i128::from(geometry.scale);
    let axis = |extent: i64, src: Option<(i32, i32)>, dst: Option<i32>| -> Axis {
        let extent = i128::from(extent);
        match (src, dst) {
            // t = s * scale
            (None, None) => Axis {
                a: 0,
                b: scale,
                c: 1,
                limit: div_ceil(extent, scale),
            },
            // t = scale * (src_x + s * src_w / dst) / 256, src in wl_fixed
            (Some((sx, sw)), Some(dw)) => Axis {
                a: scale * i128::from(sx) * i128::from(dw),
                b: scale * i128::from(sw),
                c: 256 * i128::from(dw),
                limit: i128::from(dw),
            },
            // The destination is the source's size (an integer, or the compositor's bad_size).
            (Some((sx, sw)), None) => Axis {
                a: scale * i128::from(sx),
                b: scale * 256,
                c: 256,
                limit: div_ceil(i128::from(sw), 256),
            },
            // The source is the whole buffer: t = s * extent / dst
            (None, Some(dw)) => Axis {
                a: 0,
                b: extent,
                c: i128::from(dw),
                limit: i128::from(dw),
            },
        }
    };
    let src = geometry.source;
    let dst = geometry.destination;
    let ax = axis(tw, src.map(|s| (s[0], s[2])), dst.map(|d| d.0));
    let ay = axis(th, src.map(|s| (s[1], s[3])), dst.map(|d| d.1));
    let (x0, y0, x1, y1) = rect.edges();
    let (x0, x1) = ax.map(x0, x1, tw)?;
    let (y0, y1) = ay.map(y0, y1, th)?;
    // Back through the transform: it is what the client applied to its content, "a flip
    // around the vertical axis followed by a counter-clockwise rotation" (wl_output.transform);
    // so the surface's top-left corner is, for 90, the buffer's bottom-left corner.
    let (bx, by) = match geometry.transform {
        0 => ((x0, x1), (y0, y1)),
        1 => ((y0, y1), (tw - x1, tw - x0)),
        2 => ((tw - x1, tw - x0), (th - y1, th - y0)),
        3 => ((th - y1, th - y0), (x0, x1)),
        4 => ((tw - x1, tw - x0), (y0, y1)),
        5 => ((y0, y1), (x0, x1)),
        6 => ((x0, x1), (th - y1, th - y0)),
        _ => ((th - y1, th - y0), (tw - x1, tw - x0)),
    };
    Rect::from_edges(bx.0, by.0, bx.1.min(bw), by.1.min(bh))
}

/// What the tracker knows of one buffer's blob copy.
#[derive(Debug, Clone)]
struct BufferCopy {
    /// Surface the buffer was last committed on.
    surface: u32,
    /// Buffer size at that commit.
    size: (i32, i32),
    /// What of the blob differs from the client's buffer as of the surface's last commit
    /// (the client's next frame in this buffer differs from its old content by at most that).
    stale: Region,
}

/// Which parts of each buffer's blob copy are stale.
///
/// At a commit of surface S showing buffer B with damage D (in B's pixels, from
/// [`SurfaceDamage::commit`]): every other buffer last shown on S goes stale by D; B's copy
/// region is its stale region ∪ D, or all of B when B was never copied, or last copied for
/// another surface or size; then B is fresh. Keys are protocol object ids (`wl_buffer`,
/// `wl_surface`).
///
/// The tracker assumes each buffer's blob bytes change only when that buffer is copied. So the
/// relay forgets a buffer when it is destroyed (ids are reused), when its pool's blob is
/// replaced (`wl_shm_pool.resize`), and when another buffer whose bytes overlap it in the pool
/// is copied ([`BufferLayout::overlaps`]); each is then copied in full at its next commit.
///
/// With N buffers in rotation, a commit copies the union of the last N commits' damage: the
/// host compositor may read any pixel of the buffer it shows (a pixman renderer composites
/// straight from it), so the blob must equal the client's buffer, not just its latest damage.
#[derive(Debug, Clone)]
pub struct StaleTracker {
    buffers: HashMap<u32, BufferCopy>,
    /// Buffers last shown on each surface, least recently committed first.
    surfaces: HashMap<u32, Vec<u32>>,
    max_buffers_per_surface: usize,
}

impl Default for StaleTracker {
    fn default() -> Self {
        StaleTracker::new(DEFAULT_MAX_BUFFERS_PER_SURFACE)
    }
}

impl StaleTracker {
    /// A tracker remembering at most `max_buffers_per_surface` buffers per surface (at least
    /// 1); each commit costs O(that × [`MAX_REGION_RECTS`]²).
    pub fn new(max_buffers_per_surface: usize) -> StaleTracker {
        StaleTracker {
            buffers: HashMap::new(),
            surfaces: HashMap::new(),
            max_buffers_per_surface: max_buffers_per_surface.max(1),
        }
    }

    /// Records that `surface` committed `buffer` of `size` pixels with `damage`, and returns
    /// the region of the buffer to copy into its blob now.
    pub fn commit(
        &mut self,
        surface: u32,
        buffer: u32,
        size: (i32, i32),
        damage: &Region,
    ) -> Region {
        let full = Region::from_rect(Rect::new(0, 0, size.0, size.1));
        let damage = damage.clipped(size.0, size.1);
        let shown = self.surfaces.entry(surface).or_default();
        for other in shown.iter().filter(|&&b| b != buffer) {
            if let Some(copy) = self.buffers.get_mut(other) {
                if copy.size == size {
                    copy.stale.union(&damage);
                } else {
                    copy.stale = Region::from_rect(Rect::new(0, 0, copy.size.0, copy.size.1));
                }
            }
        }
        shown.retain(|&b| b != buffer);
        shown.push(buffer);
        let evicted = if shown.len() > self.max_buffers_per_surface {
            Some(shown.remove(0))
        } else {
            None
        };
        let previous = self.buffers.insert(
            buffer,
            BufferCopy {
                surface,
                size,
                stale: Region::new(),
            },
        );
        if let Some(evicted) = evicted {
            self.buffers.remove(&evicted);
        }
        match previous {
            Some(copy) if copy.surface == surface && copy.size == size => {
                let mut region = copy.stale;
                region.union(&damage);
                region
            }
            Some(copy) => {
                if copy.surface != surface
                    && let Some(list) = self.surfaces.get_mut(&copy.surface)
                {
                    list.retain(|&b| b != buffer);
                }
                full
            }
            None => full,
        }
    }

    /// Forgets `buffer` (destroyed): a buffer with its id is copied in full at its first commit.
    pub fn forget_buffer(&mut self, buffer: u32) {
        if let Some(copy) = self.buffers.remove(&buffer)
            && let Some(list) = self.surfaces.get_mut(&copy.surface)
        {
            list.retain(|&b| b != buffer);
        }
    }

    /// Forgets `surface` (destroyed) and the copies of the buffers last shown on it.
    pub fn forget_surface(&mut self, surface: u32) {
        for buffer in self.surfaces.remove(&surface).unwrap_or_default() {
            self.buffers.remove(&buffer);
        }
    }
}

/// Where a `wl_shm` buffer lies in its pool (`wl_shm_pool.create_buffer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLayout {
    /// Byte offset of the first pixel in the pool.
    pub offset: u64,
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// Bytes from one row to the next.
    pub stride: i32,
    /// Bytes per pixel, from [`crate::format::bytes_per_pixel`].
    pub bytes_per_pixel: u32,
}

/// A checked [`BufferLayout`]: where its bytes lie in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteSpan {
    /// `offset..offset + stride * height`.
    pub bytes: Range<u64>,
    /// The stride, non-negative.
    pub stride: u64,
}

impl BufferLayout {
    /// Checks the layout as `wl_shm_pool.create_buffer` does (a non-empty size, a stride that
    /// holds a row, `offset + stride * height` within `pool_size`) and returns its bytes.
    pub fn byte_span(&self, pool_size: u64) -> Result<ByteSpan, DamageError> {
        let invalid = DamageError::InvalidLayout {
            width: self.width,
            height: self.height,
            stride: self.stride,
            bytes_per_pixel: self.bytes_per_pixel,
        };
        let (Ok(width), Ok(height), Ok(stride)) = (
            u64::try_from(self.width),
            u64::try_from(self.height),
            u64::try_from(self.stride),
        ) else {
            return Err(invalid);
        };
        let bpp = u64::from(self.bytes_per_pixel);
        let row_bytes = width.checked_mul(bpp).ok_or(DamageError::Overflow)?;
        if width == 0 || height == 0 || bpp == 0 || stride < row_bytes {
            return Err(invalid);
        }
        let len = stride.checked_mul(height).ok_or(DamageError::Overflow)?;
        let end = self.offset.checked_add(len).ok_or(DamageError::Overflow)?;
        if end > pool_size {
            return Err(DamageError::PastPool {
                offset: self.offset,
                len,
                pool_size,
            });
        }
        Ok(ByteSpan {
            bytes: self.offset..end,
            stride,
        })
    }

    /// Whether the two buffers (of one pool) share bytes; `false` if either layout is invalid.
    /// Copying one of them rewrites the other's blob bytes behind the [`StaleTracker`]'s back,
    /// so the relay forgets the other one.
    pub fn overlaps(&self, other: &BufferLayout) -> bool {
        match (self.byte_span(u64::MAX), other.byte_span(u64::MAX)) {
            (Ok(a), Ok(b)) => a.bytes.start < b.bytes.end && b.bytes.start < a.bytes.end,
            _ => false,
        }
    }
}

/// Byte ranges of the pool to copy for `region` of a buffer laid out as `layout`: per row of
/// the region, one range per run of damaged pixels, overlapping rectangles counted once;
/// ranges sorted, disjoint and coalesced when they touch (so a region spanning whole rows of a
/// buffer without row padding is one range). Errors when the layout is invalid or
/// `offset + stride * height` runs past `pool_size`, as `wl_shm` checks.
pub fn copy_ranges(
    layout: &BufferLayout,
    region: &Region,
    pool_size: u64,
) -> Result<Vec<Range<u64>>, DamageError> {
    let span = layout.byte_span(pool_size)?;
    let stride = span.stride;
    let bpp = u64::from(layout.bytes_per_pixel);
    // From here every offset is below the span's end, which fits.
    let clipped = region.clipped(layout.width, layout.height);
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for band in bands(clipped.rects()) {
        for row in band.y0..band.y1 {
            let base = layout.offset + row as u64 * stride;
            for &(x0, x1) in &band.spans {
                let range = base + x0 as u64 * bpp..base + x1 as u64 * bpp;
                match ranges.last_mut() {
                    Some(last) if last.end == range.start => last.end = range.end,
                    _ => ranges.push(range),
                }
            }
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// An exact fraction `n / d` with `d > 0`, for the brute-force reference.
    #[derive(Debug, Clone, Copy)]
    struct Q(i128, i128);

    impl Q {
        fn int(v: i64) -> Q {
            Q(i128::from(v), 1)
        }
        fn add(self, o: Q) -> Q {
            Q(self.0 * o.1 + o.0 * self.1, self.1 * o.1)
        }
        fn mul(self, o: Q) -> Q {
            Q(self.0 * o.0, self.1 * o.1)
        }
        fn div(self, o: Q) -> Q {
            Q(self.0 * o.1, self.1 * o.0)
        }
        fn lt(self, o: Q) -> bool {
            self.0 * o.1 < o.0 * self.1
        }
        fn min(self, o: Q) -> Q {
            if self.lt(o) { self } else { o }
        }
        fn max(self, o: Q) -> Q {
            if self.lt(o) { o } else { self }
        }
    }

    /// Surface state for the reference: transform, scale, viewport source (wl_fixed), dest.
    #[derive(Debug, Clone, Copy)]
    struct Setup {
        transform: i32,
        scale: i32,
        source: Option<[i32; 4]>,
        destination: Option<(i32, i32)>,
        buffer: (i32, i32),
    }

    /// Buffer pixels touched by surface `rects`, pixel by pixel, straight from the protocol
    /// text: a surface coordinate goes through the viewport (source in the scaled buffer,
    /// stretched to the destination), times the scale, into the buffer with its transform
    /// undone; the transform is a flip around the vertical axis then counter-clockwise
    /// quarter turns, applied here to each transformed pixel's centre.
    fn reference(setup: &Setup, rects: &[Rect]) -> HashSet<(i32, i32)> {
        let (bw, bh) = (i64::from(setup.buffer.0), i64::from(setup.buffer.1));
        let (tw, th) = if setup.transform % 2 == 1 {
            (bh, bw)
        } else {
            (bw, bh)
        };
        let scale = Q::int(i64::from(setup.scale));
        // Per axis: source origin, source length, destination length (= surface length).
        let axis = |i: usize| -> (Q, Q, Q) {
            let ext = [tw, th][i];
            let (origin, len) = match setup.source {
                Some(s) => (Q(i128::from(s[i]), 256), Q(i128::from(s[2 + i]), 256)),
                None => (Q::int(0), Q::int(ext).div(scale)),
            };
            let dst = match setup.destination {
                Some(d) => Q::int(i64::from([d.0, d.1][i])),
                None => len,
            };
            (origin, len, dst)
        };
        let axes = [axis(0), axis(1)];
        let to_t = |s: Q, i: usize| {
            let (origin, len, dst) = axes[i];
            origin.add(s.mul(len).div(dst)).mul(scale)
        };
        let mut touched = HashSet::new();
        for py in 0..th {
            for px in 0..tw {
                let hit = rects.iter().any(|r| {
                    let lo = [r.x, r.y];
                    let hi = [
                        i64::from(r.x) + i64::from(r.width),
                        i64::from(r.y) + i64::from(r.height),
                    ];
                    (0..2).all(|i| {
                        let p = [px, py][i];
                        let s0 = Q::int(i64::from(lo[i])).max(Q::int(0));
                        let s1 = Q::int(hi[i]).min(axes[i].2);
                        if !s0.lt(s1) {
                            return false;
                        }
                        let (t0, t1) = (to_t(s0, i), to_t(s1, i));
                        t0.lt(Q::int(p + 1)) && Q::int(p).lt(t1)
                    })
                });
                if !hit {
                    continue;
                }
                let (mut x, mut y, mut w, mut h) = (2 * px + 1, 2 * py + 1, 2 * tw, 2 * th);
                if setup.transform >= 4 {
                    x = w - x;
                }
                for _ in 0..setup.transform % 4 {
                    (x, y) = (y, w - x);
                    (w, h) = (h, w);
                }
                touched.insert((((x - 1) / 2) as i32, ((y - 1) / 2) as i32));
            }
        }
        touched
    }

    fn pixels(region: &Region, (w, h): (i32, i32)) -> HashSet<(i32, i32)> {
        let mut set = HashSet::new();
        for y in 0..h {
            for x in 0..w {
                if region.contains_point(x, y) {
                    set.insert((x, y));
                }
            }
        }
        set
    }

    /// A surface set up as `setup` that has committed once (the first commit is full).
    fn surface(setup: &Setup) -> SurfaceDamage {
        let mut s = SurfaceDamage::new();
        s.set_buffer_transform(setup.transform).unwrap();
        s.set_buffer_scale(setup.scale).unwrap();
        s.set_viewport_source(setup.source).unwrap();
        s.set_viewport_destination(setup.destination).unwrap();
        s.commit(Some(setup.buffer));
        s
    }

    fn damage_of(setup: &Setup, rects: &[Rect]) -> Region {
        let mut s = surface(setup);
        for r in rects {
            s.damage_surface(r.x, r.y, r.width, r.height);
        }
        s.commit(Some(setup.buffer))
    }

    const PROBES: [Rect; 6] = [
        Rect::new(0, 0, 1, 1),
        Rect::new(1, 2, 3, 1),
        Rect::new(2, 0, 10, 10),
        Rect::new(-3, -3, 4, 5),
        Rect::new(5, 1, 1, 100),
        Rect::new(3, 3, 0, 2),
    ];

    #[test]
    fn surface_damage_every_transform_and_scale_matches_reference() {
        for transform in 0..8 {
            for scale in 1..=3 {
                let setup = Setup {
                    transform,
                    scale,
                    source: None,
                    destination: None,
                    buffer: (12, 6),
                };
                for probe in PROBES {
                    let got = pixels(&damage_of(&setup, &[probe]), setup.buffer);
                    assert_eq!(got, reference(&setup, &[probe]), "{setup:?} {probe:?}");
                }
                let got = pixels(&damage_of(&setup, &PROBES), setup.buffer);
                assert_eq!(got, reference(&setup, &PROBES), "{setup:?} all probes");
            }
        }
    }

    #[test]
    fn surface_damage_transform_90_top_left_is_buffer_bottom_left() {
        let setup = Setup {
            transform: 1,
            scale: 1,
            source: None,
            destination: None,
            buffer: (4, 2),
        };
        let got = damage_of(&setup, &[Rect::new(0, 0, 1, 1)]);
        assert_eq!(got.rects(), &[Rect::new(0, 1, 1, 1)]);
    }

    #[test]
    fn surface_damage_viewport_scaling_matches_reference() {
        let sources = [
            None,
            Some([256, 512, 6 * 256, 3 * 256]),
            Some([128, 64, 5 * 256 + 100, 2 * 256 + 7]),
            Some([0, 0, 12 * 256, 12 * 256]),
        ];
        let destinations = [Some((12, 6)), Some((3, 2)), Some((7, 5)), Some((24, 1))];
        for transform in 0..8 {
            for scale in 1..=2 {
                for source in sources {
                    for destination in destinations {
                        let setup = Setup {
                            transform,
                            scale,
                            source,
                            destination,
                            buffer: (12, 12),
                        };
                        for probe in PROBES {
                            let got = pixels(&damage_of(&setup, &[probe]), setup.buffer);
                            assert_eq!(got, reference(&setup, &[probe]), "{setup:?} {probe:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn surface_damage_source_without_destination_crops() {
        let setup = Setup {
            transform: 0,
            scale: 1,
            source: Some([2 * 256, 3 * 256, 4 * 256, 2 * 256]),
            destination: None,
            buffer: (10, 10),
        };
        let got = damage_of(&setup, &[Rect::new(1, 0, 100, 1)]);
        assert_eq!(got.rects(), &[Rect::new(3, 3, 3, 1)]);
        assert_eq!(
            pixels(&got, setup.buffer),
            reference(&setup, &[Rect::new(1, 0, 100, 1)])
        );
    }

    #[test]
    fn surface_damage_huge_values_clip_to_buffer() {
        for transform in 0..8 {
            let setup = Setup {
                transform,
                scale: 3,
                source: None,
                destination: None,
                buffer: (9, 6),
            };
            let mut s = surface(&setup);
            s.damage_surface(0, 0, i32::MAX, i32::MAX);
            s.damage_buffer(i32::MIN, i32::MIN, i32::MAX, i32::MAX);
            s.damage_buffer(i32::MAX, i32::MAX, i32::MAX, i32::MAX);
            assert_eq!(s.commit(Some((9, 6))).rects(), &[Rect::new(0, 0, 9, 6)]);
            s.damage_surface(i32::MIN, i32::MIN, i32::MAX, i32::MAX);
            s.damage_surface(-5, -5, -1, 3);
            assert!(s.commit(Some((9, 6))).is_empty());
        }
        let mut s = surface(&Setup {
            transform: 5,
            scale: i32::MAX,
            source: Some([i32::MAX, 0, i32::MAX, i32::MAX]),
            destination: Some((1, i32::MAX)),
            buffer: (i32::MAX, i32::MAX),
        });
        s.damage_surface(0, 0, i32::MAX, i32::MAX);
        let got = s.commit(Some((i32::MAX, i32::MAX)));
        assert!(got.rects().iter().all(|r| r.x >= 0 && r.y >= 0));
    }

    #[test]
    fn surface_damage_buffer_damage_is_clipped_not_transformed() {
        let setup = Setup {
            transform: 3,
            scale: 2,
            source: None,
            destination: None,
            buffer: (8, 4),
        };
        let mut s = surface(&setup);
        s.damage_buffer(6, 1, 5, 2);
        assert_eq!(s.commit(Some((8, 4))).rects(), &[Rect::new(6, 1, 2, 2)]);
    }

    #[test]
    fn surface_damage_bad_values_are_errors() {
        let mut s = SurfaceDamage::new();
        assert_eq!(
            s.set_buffer_transform(8),
            Err(DamageError::InvalidTransform(8))
        );
        assert_eq!(
            s.set_buffer_transform(-1),
            Err(DamageError::InvalidTransform(-1))
        );
        assert_eq!(s.set_buffer_scale(0), Err(DamageError::InvalidScale(0)));
        assert_eq!(
            s.set_viewport_source(Some([-1, 0, 256, 256])),
            Err(DamageError::InvalidViewportSource([-1, 0, 256, 256]))
        );
        assert_eq!(
            s.set_viewport_source(Some([0, 0, 0, 256])),
            Err(DamageError::InvalidViewportSource([0, 0, 0, 256]))
        );
        assert_eq!(s.set_viewport_source(Some([-256; 4])), Ok(()));
        assert_eq!(
            s.set_viewport_destination(Some((0, 5))),
            Err(DamageError::InvalidViewportDestination(0, 5))
        );
        assert_eq!(s.set_viewport_destination(Some((-1, -1))), Ok(()));
    }

    #[test]
    fn surface_damage_geometry_change_is_full() {
        let mut s = SurfaceDamage::new();
        s.damage_buffer(0, 0, 1, 1);
        assert_eq!(s.commit(Some((4, 4))).rects(), &[Rect::new(0, 0, 4, 4)]);
        s.damage_buffer(0, 0, 1, 1);
        assert_eq!(s.commit(Some((4, 4))).rects(), &[Rect::new(0, 0, 1, 1)]);
        assert!(
            s.commit(Some((4, 4))).is_empty(),
            "pending damage was cleared"
        );
        s.set_buffer_scale(2).unwrap();
        assert_eq!(s.commit(Some((4, 4))).rects(), &[Rect::new(0, 0, 4, 4)]);
        assert_eq!(s.commit(Some((4, 2))).rects(), &[Rect::new(0, 0, 4, 2)]);
        s.set_viewport_destination(Some((9, 9))).unwrap();
        assert_eq!(s.commit(Some((4, 2))).rects(), &[Rect::new(0, 0, 4, 2)]);
        assert!(s.commit(Some((4, 2))).is_empty());
        assert!(s.commit(None).is_empty());
        assert_eq!(s.commit(Some((4, 2))).rects(), &[Rect::new(0, 0, 4, 2)]);
    }

    #[test]
    fn rect_negative_and_huge_values_normalize() {
        assert_eq!(
            Region::from_rect(Rect::new(-5, -5, 10, 10)).rects(),
            &[Rect::new(0, 0, 5, 5)]
        );
        assert_eq!(
            Region::from_rect(Rect::new(i32::MAX - 1, 0, i32::MAX, 1)).rects(),
            &[Rect::new(i32::MAX - 1, 0, 1, 1)]
        );
        assert!(Region::from_rect(Rect::new(i32::MIN, i32::MIN, i32::MAX, i32::MAX)).is_empty());
        assert!(Region::from_rect(Rect::new(3, 3, -4, 5)).is_empty());
        let mut r = Region::from_rect(Rect::new(0, 0, 1, 1));
        r.add(Rect::new(i32::MAX - 1, i32::MAX - 1, 5, 5));
        for _ in 0..MAX_REGION_RECTS {
            r.add(Rect::new(i32::MAX / 2, 7, 1, 1));
        }
        assert_eq!(r.area(), 2 + 1);
        assert_eq!(r.bounding_box(), Some(Rect::new(0, 0, i32::MAX, i32::MAX)));
    }

    #[test]
    fn region_contained_and_adjacent_rects_merge_exactly() {
        let mut r = Region::new();
        for y in 0..100 {
            r.add(Rect::new(10, y, 50, 1));
        }
        r.add(Rect::new(20, 20, 5, 5));
        assert_eq!(r.rects(), &[Rect::new(10, 0, 50, 100)]);
        r.add(Rect::new(60, 0, 10, 100));
        assert_eq!(r.rects(), &[Rect::new(10, 0, 60, 100)]);
    }

    #[test]
    fn region_area_counts_overlaps_once() {
        let mut r = Region::new();
        r.add(Rect::new(0, 0, 10, 10));
        r.add(Rect::new(5, 5, 10, 10));
        r.add(Rect::new(100, 100, 1, 1));
        assert_eq!(r.area(), 100 + 100 - 25 + 1);
    }

    /// A client sending a million damage requests in one commit: the pending region stays at
    /// most `MAX_REGION_RECTS` rectangles and still covers every one of them.
    #[test]
    fn surface_damage_million_rects_stay_bounded_and_covered() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m) as i32
        };
        let mut surface = SurfaceDamage::new();
        surface.commit(Some((4096, 4096)));
        let mut sample = Vec::new();
        let started = std::time::Instant::now();
        for i in 0..1_000_000 {
            let r = Rect::new(next(4000), next(4000), next(50) + 1, next(50) + 1);
            surface.damage_surface(r.x, r.y, r.width, r.height);
            if i % 97 == 0 {
                sample.push(r);
            }
            assert!(surface.surface.rects().len() <= MAX_REGION_RECTS);
        }
        let elapsed = started.elapsed();
        let region = surface.commit(Some((4096, 4096)));
        println!(
            "1e6 damage requests: {elapsed:?}, {} rects",
            region.rects().len()
        );
        assert!(region.rects().len() <= MAX_REGION_RECTS);
        for r in sample {
            let (x1, y1) = (r.x + r.width - 1, r.y + r.height - 1);
            for (x, y) in [(r.x, r.y), (x1, r.y), (r.x, y1), (x1, y1)] {
                assert!(region.contains_point(x, y), "{r:?} lost");
            }
        }
    }

    #[test]
    fn stale_tracker_two_buffers_accumulate_other_damage() {
        let mut t = StaleTracker::default();
        let size = (100, 100);
        let full = Region::from_rect(Rect::new(0, 0, 100, 100));
        let d = |x| Region::from_rect(Rect::new(x, x, 2, 2));
        assert_eq!(t.commit(1, 10, size, &d(0)), full, "never copied");
        assert_eq!(t.commit(1, 11, size, &d(10)), full, "never copied");
        let mut want = d(10);
        want.union(&d(20));
        assert_eq!(t.commit(1, 10, size, &d(20)), want);
        let mut want = d(20);
        want.union(&d(30));
        assert_eq!(t.commit(1, 11, size, &d(30)), want);
        assert_eq!(t.commit(1, 11, size, &d(40)), d(40), "same buffer again");
    }

    #[test]
    fn stale_tracker_three_buffers_accumulate_two_frames() {
        let mut t = StaleTracker::default();
        let size = (100, 100);
        let d = |x| Region::from_rect(Rect::new(x, 0, 1, 1));
        for (i, b) in [10, 11, 12].into_iter().enumerate() {
            t.commit(1, b, size, &d(i as i32));
        }
        let mut want = d(1);
        want.union(&d(2));
        want.union(&d(3));
        assert_eq!(t.commit(1, 10, size, &d(3)), want);
        let mut want = d(2);
        want.union(&d(3));
        want.union(&d(4));
        assert_eq!(t.commit(1, 11, size, &d(4)), want);
    }

    #[test]
    fn stale_tracker_new_size_surface_or_forgotten_is_full() {
        let mut t = StaleTracker::default();
        let small = Region::from_rect(Rect::new(1, 1, 1, 1));
        let full = |w, h| Region::from_rect(Rect::new(0, 0, w, h));
        t.commit(1, 10, (8, 8), &small);
        assert_eq!(t.commit(1, 10, (8, 8), &small), small);
        assert_eq!(t.commit(1, 10, (8, 4), &small), full(8, 4), "other size");
        assert_eq!(t.commit(2, 10, (8, 4), &small), full(8, 4), "other surface");
        assert_eq!(t.commit(2, 10, (8, 4), &small), small);
        t.forget_buffer(10);
        assert_eq!(
            t.commit(2, 10, (8, 4), &small),
            full(8, 4),
            "forgotten buffer"
        );
        t.forget_surface(2);
        assert_eq!(
            t.commit(2, 10, (8, 4), &small),
            full(8, 4),
            "forgotten surface"
        );
        // Buffer 11 of another size on the same surface goes stale in full.
        t.commit(2, 11, (4, 4), &full(4, 4));
        t.commit(2, 10, (8, 4), &small);
        assert_eq!(t.commit(2, 11, (4, 4), &small), full(4, 4));
    }

    #[test]
    fn stale_tracker_evicts_least_recent_buffer_beyond_limit() {
        let mut t = StaleTracker::new(2);
        let small = Region::from_rect(Rect::new(1, 1, 1, 1));
        let full = Region::from_rect(Rect::new(0, 0, 4, 4));
        for b in [10, 11, 12] {
            t.commit(1, b, (4, 4), &small);
        }
        assert_eq!(t.commit(1, 12, (4, 4), &small), small);
        assert_eq!(t.commit(1, 11, (4, 4), &small), small);
        assert_eq!(t.commit(1, 10, (4, 4), &small), full, "evicted");
    }

    fn layout(width: i32, height: i32, stride: i32, offset: u64) -> BufferLayout {
        BufferLayout {
            offset,
            width,
            height,
            stride,
            bytes_per_pixel: 4,
        }
    }

    #[test]
    fn copy_ranges_whole_rows_without_padding_coalesce() {
        let l = layout(10, 10, 40, 100);
        let r = Region::from_rect(Rect::new(0, 2, 10, 3));
        assert_eq!(copy_ranges(&l, &r, 500).unwrap(), vec![180..300]);
    }

    #[test]
    fn copy_ranges_padded_rows_are_one_range_each() {
        let l = layout(10, 10, 48, 0);
        let r = Region::from_rect(Rect::new(0, 2, 10, 2));
        assert_eq!(copy_ranges(&l, &r, 480).unwrap(), vec![96..136, 144..184]);
    }

    #[test]
    fn copy_ranges_overlaps_are_copied_once() {
        let l = layout(64, 64, 64 * 4 + 12, 7);
        let mut r = Region::new();
        r.add(Rect::new(0, 0, 10, 10));
        r.add(Rect::new(5, 5, 10, 10));
        r.add(Rect::new(8, 2, 30, 3));
        r.add(Rect::new(60, 60, 10, 10));
        let ranges = copy_ranges(&l, &r, 1 << 20).unwrap();
        let bytes: u64 = ranges.iter().map(|x| x.end - x.start).sum();
        assert_eq!(bytes, r.clipped(64, 64).area() * 4);
        assert!(ranges.windows(2).all(|w| w[0].end < w[1].start));
    }

    #[test]
    fn copy_ranges_small_damage_copies_exactly_its_bytes() {
        let l = layout(256, 256, 1024, 0);
        let r = Region::from_rect(Rect::new(5, 5, 10, 10));
        let ranges = copy_ranges(&l, &r, 1 << 18).unwrap();
        assert_eq!(ranges.len(), 10);
        assert_eq!(ranges.iter().map(|x| x.end - x.start).sum::<u64>(), 400);
    }

    #[test]
    fn copy_ranges_bad_layouts_are_errors() {
        let r = Region::from_rect(Rect::new(0, 0, 1, 1));
        assert!(matches!(
            copy_ranges(&layout(10, 10, 40, 1), &r, 400),
            Err(DamageError::PastPool { .. })
        ));
        assert_eq!(
            copy_ranges(&layout(10, 10, 40, u64::MAX - 10), &r, u64::MAX),
            Err(DamageError::Overflow)
        );
        for bad in [
            layout(10, 10, 39, 0),
            layout(0, 10, 40, 0),
            layout(10, -1, 40, 0),
            layout(10, 10, -40, 0),
        ] {
            assert!(matches!(
                copy_ranges(&bad, &r, 1 << 20),
                Err(DamageError::InvalidLayout { .. })
            ));
        }
        let mut zero_bpp = layout(1, 1, 4, 0);
        zero_bpp.bytes_per_pixel = 0;
        assert!(copy_ranges(&zero_bpp, &r, 4).is_err());
        let outside = Region::from_rect(Rect::new(20, 0, 5, 5));
        assert_eq!(
            copy_ranges(&layout(10, 10, 40, 0), &outside, 400).unwrap(),
            vec![]
        );
    }

    #[test]
    fn buffer_layout_overlaps_when_bytes_are_shared() {
        let a = layout(10, 10, 40, 0);
        assert!(a.overlaps(&layout(10, 10, 40, 399)));
        assert!(!a.overlaps(&layout(10, 10, 40, 400)));
        assert!(!a.overlaps(&layout(10, 10, 39, 0)), "invalid layout");
        assert_eq!(a.byte_span(400).unwrap().bytes, 0..400);
    }

    #[test]
    fn copy_ranges_24_bit_rows_use_three_bytes() {
        let l = BufferLayout {
            offset: 0,
            width: 5,
            height: 2,
            stride: 16,
            bytes_per_pixel: 3,
        };
        let r = Region::from_rect(Rect::new(1, 1, 2, 1));
        assert_eq!(copy_ranges(&l, &r, 32).unwrap(), vec![19..25]);
    }

    fn setup_strategy() -> impl Strategy<Value = Setup> {
        (
            0..8i32,
            1..4i32,
            1..12i32,
            1..12i32,
            prop::option::of((0..6 * 256, 0..6 * 256, 1..8 * 256, 1..8 * 256)),
            prop::option::of((1..16i32, 1..16i32)),
        )
            .prop_map(|(transform, scale, w, h, source, destination)| {
                // Without a destination the source size must be whole (else wp_viewport's
                // bad_size), which is what the reference assumes.
                let source = source.map(|(x, y, sw, sh)| {
                    let whole = |v: i32| {
                        if destination.is_none() {
                            v & !255 | 256
                        } else {
                            v
                        }
                    };
                    [x, y, whole(sw), whole(sh)]
                });
                Setup {
                    transform,
                    scale,
                    source,
                    destination,
                    buffer: (w * scale, h * scale),
                }
            })
    }

    fn rect_strategy() -> impl Strategy<Value = Rect> {
        (-4..20i32, -4..20i32, -2..20i32, -2..20i32).prop_map(|(x, y, w, h)| Rect::new(x, y, w, h))
    }

    proptest! {
        #[test]
        fn surface_damage_random_setups_match_reference(
            setup in setup_strategy(),
            rects in prop::collection::vec(rect_strategy(), 1..6),
        ) {
            let got = pixels(&damage_of(&setup, &rects), setup.buffer);
            prop_assert_eq!(got, reference(&setup, &rects));
        }

        /// A client drawing random damage into 2 or 3 rotating buffers of one pool (repainting
        /// in each what changed since it last used it, as with EGL's buffer age), sometimes
        /// destroying a buffer and making a new one with garbage in it: after every commit,
        /// copying the tracker's region makes the blob equal the client's buffer.
        #[test]
        fn stale_tracker_copies_keep_blob_equal_to_client(
            buffers in 2usize..=3,
            w in 1i32..12,
            h in 1i32..12,
            pad in 0i32..6,
            frames in prop::collection::vec(
                (any::<u8>(), rect_strategy(), any::<bool>(), 0u8..12),
                1..40,
            ),
        ) {
            let stride = w * 4 + pad;
            let buffer_bytes = (stride * h) as usize;
            let pool_size = buffer_bytes * buffers;
            let mut pool = vec![0xaau8; pool_size];
            let mut blob = vec![0x55u8; pool_size];
            let mut scene = vec![[0u8; 4]; (w * h) as usize];
            let mut ids: Vec<u32> = (0..buffers as u32).collect();
            let mut next_id = buffers as u32;
            let mut client_dirty: Vec<Region> =
                vec![Region::from_rect(Rect::new(0, 0, w, h)); buffers];
            let mut surface = SurfaceDamage::new();
            let mut tracker = StaleTracker::default();
            let mut current = 0usize;
            for (color, d, as_buffer_damage, event) in frames {
                match event {
                    0 => {} // draw into the same buffer again
                    1 => {
                        // Destroy the next buffer, make a new one with garbage content.
                        current = (current + 1) % buffers;
                        tracker.forget_buffer(ids[current]);
                        ids[current] = next_id;
                        next_id += 1;
                        let start = current * buffer_bytes;
                        for (i, b) in pool[start..start + buffer_bytes].iter_mut().enumerate() {
                            *b = (i as u8).wrapping_mul(31) ^ color;
                        }
                        client_dirty[current] = Region::from_rect(Rect::new(0, 0, w, h));
                    }
                    _ => current = (current + 1) % buffers,
                }
                // The scene changes in d; every buffer must now repaint d.
                for y in 0..h {
                    for x in 0..w {
                        if d.contains_point(x, y) {
                            scene[(y * w + x) as usize] = [color, color ^ 0x0f, x as u8, y as u8];
                        }
                    }
                }
                for dirty in &mut client_dirty {
                    dirty.add(d);
                }
                let base = current * buffer_bytes;
                let todo = std::mem::take(&mut client_dirty[current]);
                for y in 0..h {
                    for x in 0..w {
                        if todo.contains_point(x, y) {
                            let at = base + (y * stride + x * 4) as usize;
                            pool[at..at + 4].copy_from_slice(&scene[(y * w + x) as usize]);
                        }
                    }
                }
                if as_buffer_damage {
                    surface.damage_buffer(d.x, d.y, d.width, d.height);
                } else {
                    surface.damage_surface(d.x, d.y, d.width, d.height);
                }
                let damage = surface.commit(Some((w, h)));
                let region = tracker.commit(7, ids[current], (w, h), &damage);
                let l = BufferLayout {
                    offset: base as u64,
                    width: w,
                    height: h,
                    stride,
                    bytes_per_pixel: 4,
                };
                for range in copy_ranges(&l, &region, pool_size as u64).unwrap() {
                    let (a, b) = (range.start as usize, range.end as usize);
                    blob[a..b].copy_from_slice(&pool[a..b]);
                }
                for y in 0..h {
                    let row = base + (y * stride) as usize;
                    let pixels = row..row + (w * 4) as usize;
                    prop_assert_eq!(&blob[pixels.clone()], &pool[pixels.clone()]);
                    for x in 0..w {
                        let at = row + (x * 4) as usize;
                        prop_assert_eq!(&pool[at..at + 4], &scene[(y * w + x) as usize]);
                    }
                }
            }
        }
    }
}
