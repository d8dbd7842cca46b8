//! Composing the output and capturing images, in software with pixman.

use smithay::backend::allocator::Fourcc;
use smithay::backend::renderer::damage::OutputDamageTracker;
use smithay::backend::renderer::element::Kind;
use smithay::backend::renderer::element::memory::MemoryRenderBufferRenderElement;
use smithay::backend::renderer::element::surface::WaylandSurfaceRenderElement;
use smithay::backend::renderer::pixman::PixmanRenderer;
use smithay::backend::renderer::utils::RendererSurfaceStateUserData;
use smithay::backend::renderer::{Bind, ExportMem, Offscreen};
use smithay::desktop::{PopupManager, Window};
use smithay::reexports::pixman;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Buffer as BufferCoords, Physical, Point, Rectangle, Size};
use smithay::wayland::compositor::{TraversalAction, with_surface_tree_downward};
use tracing::warn;

use super::Image;
use super::state::{DmabufSurface, State};

smithay::backend::renderer::element::render_elements! {
    /// What the compositor draws: client surfaces, and dmabuf surfaces it read itself.
    pub HeadlessElement<=PixmanRenderer>;
    Surface=WaylandSurfaceRenderElement<PixmanRenderer>,
    Memory=MemoryRenderBufferRenderElement<PixmanRenderer>,
}

/// Background of the output: a dark grey no test client draws.
pub const CLEAR_COLOR: [f32; 4] = [0.1, 0.1, 0.12, 1.0];

/// The elements of one surface tree, front to back, like smithay's
/// `render_elements_from_surface_tree` except that dmabuf surfaces are drawn from the pixels
/// copied at commit.
pub fn surface_tree_elements(
    renderer: &mut PixmanRenderer,
    surface: &WlSurface,
    location: Point<i32, Physical>,
) -> Vec<HeadlessElement> {
    let mut elements = vec![];
    with_surface_tree_downward(
        surface,
        location.to_f64(),
        |_, states, location| {
            let view = states
                .data_map
                .get::<RendererSurfaceStateUserData>()
                .and_then(|d| d.lock().ok().and_then(|d| d.view()));
            match view {
                Some(view) => {
                    TraversalAction::DoChildren(*location + view.offset.to_f64().to_physical(1.0))
                }
                None => TraversalAction::SkipChildren,
            }
        },
        |surface, states, location| {
            let Some(view) = states
                .data_map
                .get::<RendererSurfaceStateUserData>()
                .and_then(|d| d.lock().ok().and_then(|d| d.view()))
            else {
                return;
            };
            let location = *location + view.offset.to_f64().to_physical(1.0);
            let dmabuf = states.data_map.get::<DmabufSurface>().and_then(|d| {
                d.0.lock()
                    .ok()
                    .and_then(|b| b.as_ref().map(|(_, buf)| buf.clone()))
            });
            if let Some(buffer) = dmabuf {
                match MemoryRenderBufferRenderElement::from_buffer(
                    renderer,
                    location,
                    &buffer,
                    None,
                    Some(view.src),
                    Some(view.dst),
                    Kind::Unspecified,
                ) {
                    Ok(element) => elements.push(HeadlessElement::Memory(element)),
                    Err(err) => warn!(?err, "dmabuf surface not drawn"),
                }
                return;
            }
            match WaylandSurfaceRenderElement::from_surface(
                renderer,
                surface,
                states,
                location,
                1.0,
                Kind::Unspecified,
            ) {
                Ok(Some(element)) => elements.push(HeadlessElement::Surface(element)),
                Ok(None) => {}
                Err(err) => warn!(?err, "surface not drawn"),
            }
        },
        |_, _, _| true,
    );
    elements
}

/// The elements of one window with its popups, front to back, with the window's geometry
/// origin at `origin`.
pub fn window_elements(
    renderer: &mut PixmanRenderer,
    window: &Window,
    origin: Point<i32, Physical>,
) -> Vec<HeadlessElement> {
    let Some(toplevel) = window.toplevel() else {
        return vec![];
    };
    let surface = toplevel.wl_surface();
    // The window's surface starts before its geometry by the geometry's offset (client-side
    // shadows); place the geometry at `origin`.
    let base = origin - window.geometry().loc.to_physical(1);
    let mut elements = vec![];
    for (popup, offset) in PopupManager::popups_for_surface(surface) {
        let popup_offset = (offset - popup.geometry().loc).to_physical(1);
        elements.extend(surface_tree_elements(
            renderer,
            popup.wl_surface(),
            base + window.geometry().loc.to_physical(1) + popup_offset,
        ));
    }
    elements.extend(surface_tree_elements(renderer, surface, base));
    elements
}

/// All windows, top-most first.
pub fn output_elements(renderer: &mut PixmanRenderer, state: &State) -> Vec<HeadlessElement> {
    let mut elements = vec![];
    let windows: Vec<_> = state.space.elements().cloned().collect();
    for window in windows.iter().rev() {
        let Some(location) = state.space.element_location(window) else {
            continue;
        };
        elements.extend(window_elements(renderer, window, location.to_physical(1)));
    }
    elements
}

/// Renders `elements` into a fresh RGBA image of `size` (for captures).
pub fn capture(
    renderer: &mut PixmanRenderer,
    size: Size<i32, Physical>,
    elements: &[HeadlessElement],
) -> anyhow::Result<Image> {
    let mut target: pixman::Image<'static, 'static> = renderer.create_buffer(
        Fourcc::Argb8888,
        size.to_logical(1)
            .to_buffer(1, smithay::utils::Transform::Normal),
    )?;
    let mut tracker = OutputDamageTracker::new(size, 1.0, smithay::utils::Transform::Normal);
    let mut framebuffer = renderer.bind(&mut target)?;
    tracker.render_output(renderer, &mut framebuffer, 0, elements, CLEAR_COLOR)?;
    read_framebuffer(renderer, &framebuffer, size)
}

/// Reads a framebuffer back as RGBA.
pub fn read_framebuffer(
    renderer: &mut PixmanRenderer,
    framebuffer: &<PixmanRenderer as smithay::backend::renderer::RendererSuper>::Framebuffer<'_>,
    size: Size<i32, Physical>,
) -> anyhow::Result<Image> {
    let region: Rectangle<i32, BufferCoords> = Rectangle::from_size((size.w, size.h).into());
    // ABGR8888 is R, G, B, A in memory order on little-endian machines.
    let mapping = renderer.copy_framebuffer(framebuffer, region, Fourcc::Abgr8888)?;
    let bytes = renderer.map_texture(&mapping)?;
    Image::from_rgba(size.w as u32, size.h as u32, bytes.to_vec())
}
