//! What of each copy-path buffer the host memfd missed: per-surface damage through buffer
//! transform, scale and viewport ([`SurfaceDamage`]), and per-buffer staleness across buffers
//! in rotation ([`StaleTracker`]), both from `crossway_protocols::damage`.
//!
//! ```text
//!  damage / damage_buffer / set_buffer_{transform,scale} / wp_viewport.set_*
//!        ──▶ Tracked::surfaces[surface]: SurfaceDamage
//!  commit(surface, buffer WxH) ──▶ this commit's damage D, in buffer pixels
//!        ──▶ StaleTracker: D ∪ what this buffer missed since the host last saw it
//! ```
//!
//! State is one [`SurfaceDamage`] per live `wl_surface`, one surface id per live `wp_viewport`
//! and the tracker's entry per buffer (at most [`DEFAULT_MAX_BUFFERS_PER_SURFACE`] per
//! surface): each costs constant memory ([`Region`]s hold at most 16 rectangles), and ids are
//! bounded by the object map's limit.

use crossway_protocols::damage::{
    DEFAULT_MAX_BUFFERS_PER_SURFACE, Rect, Region, StaleTracker, SurfaceDamage,
};
use crossway_protocols::wire::{Arg, ObjectId};

use super::IdMap;
use crossway_protocols::opcodes as op;

#[derive(Debug, Default)]
struct Surface {
    damage: SurfaceDamage,
    /// Size of the buffer the surface shows, for commits that attach nothing new.
    shown: Option<(i32, i32)>,
}

/// Damage and staleness of one client's surfaces and copy-path buffers.
#[derive(Debug)]
pub struct Tracked {
    surfaces: IdMap<Surface>,
    /// `wp_viewport` → its `wl_surface`.
    viewports: IdMap<u32>,
    stale: StaleTracker,
}

impl Default for Tracked {
    fn default() -> Self {
        Tracked {
            surfaces: IdMap::default(),
            viewports: IdMap::default(),
            stale: StaleTracker::new(DEFAULT_MAX_BUFFERS_PER_SURFACE),
        }
    }
}

/// What a commit must refresh of the buffer it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing changed.
    Nothing,
    /// These pixels (clipped to the buffer).
    Region(Region),
    /// All of it.
    Whole,
}

impl Tracked {
    fn surface(&mut self, surface: ObjectId) -> &mut Surface {
        self.surfaces.entry(surface.get()).or_default()
    }

    /// Drops what was known of an id the map just gave a new object.
    pub fn forget(&mut self, id: ObjectId) {
        self.destroy_surface(id);
        self.viewports.remove(&id.get());
        self.stale.forget_buffer(id.get());
    }

    /// `wl_surface.damage`, surface-local.
    pub fn damage_surface(&mut self, surface: ObjectId, rect: Rect) {
        self.surface(surface)
            .damage
            .damage_surface(rect.x, rect.y, rect.width, rect.height);
    }

    /// `wl_surface.damage_buffer`, buffer pixels.
    pub fn damage_buffer(&mut self, surface: ObjectId, rect: Rect) {
        self.surface(surface)
            .damage
            .damage_buffer(rect.x, rect.y, rect.width, rect.height);
    }

    /// `wl_surface.set_buffer_transform`. A value outside `wl_output.transform` is left to the
    /// host compositor, which ends the client for it; until then the old transform stands.
    pub fn set_buffer_transform(&mut self, surface: ObjectId, transform: i32) {
        let _ = self.surface(surface).damage.set_buffer_transform(transform);
    }

    /// `wl_surface.set_buffer_scale` (a scale below 1 is the host's error to raise, as above).
    pub fn set_buffer_scale(&mut self, surface: ObjectId, scale: i32) {
        let _ = self.surface(surface).damage.set_buffer_scale(scale);
    }

    /// `wp_viewporter.get_viewport(viewport, surface)`.
    pub fn get_viewport(&mut self, viewport: ObjectId, surface: ObjectId) {
        self.viewports.insert(viewport.get(), surface.get());
    }

    fn viewed(&mut self, viewport: ObjectId) -> Option<&mut SurfaceDamage> {
        let surface = *self.viewports.get(&viewport.get())?;
        Some(&mut self.surfaces.entry(surface).or_default().damage)
    }

    /// `wp_viewport.set_source` in raw `wl_fixed_t` (all -1.0 unsets it); a bad value is the
    /// host's error to raise.
    pub fn set_viewport_source(&mut self, viewport: ObjectId, source: [i32; 4]) {
        if let Some(d) = self.viewed(viewport) {
            let _ = d.set_viewport_source(Some(source));
        }
    }

    /// `wp_viewport.set_destination` ((-1, -1) unsets it).
    pub fn set_viewport_destination(&mut self, viewport: ObjectId, width: i32, height: i32) {
        if let Some(d) = self.viewed(viewport) {
            let _ = d.set_viewport_destination(Some((width, height)));
        }
    }

    /// `wp_viewport.destroy`: the surface goes back to no viewport.
    pub fn destroy_viewport(&mut self, viewport: ObjectId) {
        if let Some(d) = self.viewed(viewport) {
            let _ = d.set_viewport_source(None);
            let _ = d.set_viewport_destination(None);
        }
        self.viewports.remove(&viewport.get());
    }

    /// `wl_surface.destroy`: its viewports go inert, and the buffers it showed are copied whole
    /// when next committed.
    pub fn destroy_surface(&mut self, surface: ObjectId) {
        let s = surface.get();
        if self.surfaces.remove(&s).is_some() {
            self.viewports.retain(|_, v| *v != s);
        }
        self.stale.forget_surface(s);
    }

    /// A buffer whose host bytes may have changed behind the tracker (destroyed, or another
    /// buffer over the same bytes was refreshed): copied whole when next committed.
    pub fn forget_buffer(&mut self, buffer: ObjectId) {
        self.stale.forget_buffer(buffer.get());
    }

    /// `wl_surface.commit` that attached nothing new (or detached: `size` `None`): the pending
    /// damage and geometry apply to what the surface already shows, which needs no refresh.
    pub fn commit_unchanged(&mut self, surface: ObjectId, detached: bool) {
        let s = self.surface(surface);
        if detached {
            s.shown = None;
        }
        s.damage.commit(s.shown);
    }

    /// `wl_surface.commit` showing a zero-copy buffer: its damage needs no copy, and the
    /// copy-path buffers the surface showed before no longer know what they missed (copied
    /// whole if shown again).
    pub fn commit_zero_copy(&mut self, surface: ObjectId) {
        if let Some(s) = self.surfaces.get_mut(&surface.get()) {
            s.shown = None;
            s.damage.commit(None);
        }
        self.stale.forget_surface(surface.get());
    }

    /// `wl_surface.commit` showing `buffer` of `size` pixels: what of it the host memfd lacks.
    pub fn commit(&mut self, surface: ObjectId, buffer: ObjectId, size: (i32, i32)) -> Refresh {
        let s = self.surface(surface);
        s.shown = Some(size);
        let damage = s.damage.commit(Some(size));
        let region = self
            .stale
            .commit(surface.get(), buffer.get(), size, &damage);
        if region.is_empty() {
            Refresh::Nothing
        } else if region.rects() == [Rect::new(0, 0, size.0, size.1)] {
            Refresh::Whole
        } else {
            Refresh::Region(region)
        }
    }
}

/// Hands a geometry request (`wl_surface.set_buffer_{transform,scale}`,
/// `wp_viewporter.get_viewport`, `wp_viewport.*`) to `tracked`; `Err` when its arguments are
/// not what the tables say.
pub(super) fn geometry(
    tracked: &mut Tracked,
    sender: ObjectId,
    interface: &str,
    opcode: u16,
    args: &[Arg<'_>],
) -> Result<(), ()> {
    match (interface, opcode, args) {
        ("wl_surface", op::SURFACE_SET_BUFFER_TRANSFORM, [Arg::Int(t)]) => {
            tracked.set_buffer_transform(sender, *t)
        }
        ("wl_surface", op::SURFACE_SET_BUFFER_SCALE, [Arg::Int(s)]) => {
            tracked.set_buffer_scale(sender, *s)
        }
        ("wp_viewporter", op::VIEWPORTER_GET_VIEWPORT, [Arg::NewId(v), Arg::Object(Some(s))]) => {
            tracked.get_viewport(*v, *s)
        }
        ("wp_viewport", op::VIEWPORT_DESTROY, []) => tracked.destroy_viewport(sender),
        (
            "wp_viewport",
            op::VIEWPORT_SET_SOURCE,
            [Arg::Fixed(x), Arg::Fixed(y), Arg::Fixed(w), Arg::Fixed(h)],
        ) => tracked.set_viewport_source(sender, [x.0, y.0, w.0, h.0]),
        ("wp_viewport", op::VIEWPORT_SET_DESTINATION, [Arg::Int(w), Arg::Int(h)]) => {
            tracked.set_viewport_destination(sender, *w, *h)
        }
        _ => return Err(()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u32) -> ObjectId {
        ObjectId::new(n).unwrap()
    }

    #[test]
    fn tracked_destroyed_surface_forgets_its_viewports_and_damage() {
        let mut t = Tracked::default();
        t.get_viewport(id(20), id(7));
        t.damage_buffer(id(7), Rect::new(0, 0, 1, 1));
        t.destroy_surface(id(7));
        assert!(t.viewports.is_empty() && t.surfaces.is_empty());
        // A later viewport request on the dead viewport reaches no surface.
        t.set_viewport_destination(id(20), 10, 10);
        assert!(t.surfaces.is_empty());
    }

    #[test]
    fn tracked_viewport_destination_maps_surface_damage_to_buffer_pixels() {
        let mut t = Tracked::default();
        t.get_viewport(id(20), id(7));
        t.set_viewport_destination(id(20), 50, 50);
        assert_eq!(t.commit(id(7), id(9), (100, 100)), Refresh::Whole);
        t.damage_surface(id(7), Rect::new(0, 0, 1, 1));
        // Surface pixel (0, 0) of a 50x50 destination is buffer pixels (0..2, 0..2).
        let Refresh::Region(r) = t.commit(id(7), id(9), (100, 100)) else {
            panic!("not a region")
        };
        assert_eq!(r.rects(), [Rect::new(0, 0, 2, 2)]);
    }

    #[test]
    fn tracked_commit_without_damage_refreshes_nothing() {
        let mut t = Tracked::default();
        t.commit(id(7), id(9), (10, 10));
        assert_eq!(t.commit(id(7), id(9), (10, 10)), Refresh::Nothing);
    }
}
