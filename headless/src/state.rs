//! The compositor's state and its protocol handlers (smithay), one `impl` per protocol family.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smithay::backend::allocator::dmabuf::Dmabuf;
use smithay::backend::allocator::{Buffer as _, Fourcc};
use smithay::backend::renderer::element::memory::MemoryRenderBuffer;
use smithay::backend::renderer::utils::{RendererSurfaceStateUserData, on_commit_buffer_handler};
use smithay::desktop::utils::OutputPresentationFeedback;
use smithay::desktop::{PopupKind, PopupManager, Space, Window};
use smithay::reexports::wayland_protocols::wp::presentation_time::server::wp_presentation_feedback;
use smithay::utils::{Clock, Monotonic};
use smithay::wayland::presentation::Refresh;
use smithay::input::{Seat, SeatHandler, SeatState};
use smithay::output::Output;
use smithay::reexports::wayland_protocols::xdg::decoration::zv1::server::zxdg_toplevel_decoration_v1::Mode as DecorationMode;
use smithay::reexports::wayland_protocols::xdg::shell::server::xdg_toplevel;
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason, ObjectId};
use smithay::reexports::wayland_server::protocol::wl_surface::{self, WlSurface};
use smithay::reexports::wayland_server::protocol::{wl_buffer, wl_seat};
use smithay::reexports::wayland_server::{Client, DisplayHandle, Resource};
use smithay::utils::{Rectangle, Serial, Transform, SERIAL_COUNTER};
use smithay::wayland::buffer::BufferHandler;
use smithay::wayland::compositor::{
    self, CompositorClientState, CompositorHandler, CompositorState, SurfaceAttributes,
    with_states,
};
use smithay::wayland::dmabuf::{DmabufFeedback, DmabufGlobal, DmabufHandler, DmabufState, ImportNotifier, get_dmabuf};
use smithay::wayland::fractional_scale::{FractionalScaleHandler, with_fractional_scale};
use smithay::wayland::output::OutputHandler;
use smithay::wayland::selection::data_device::{
    ClientDndGrabHandler, DataDeviceHandler, DataDeviceState, ServerDndGrabHandler,
};
use smithay::wayland::selection::primary_selection::{PrimarySelectionHandler, PrimarySelectionState};
use smithay::wayland::selection::SelectionHandler;
use smithay::wayland::shell::xdg::decoration::XdgDecorationHandler;
use smithay::wayland::shell::xdg::{
    PopupSurface, PositionerState, ToplevelSurface, XdgShellHandler, XdgShellState,
    XdgToplevelSurfaceData,
};
use smithay::wayland::security_context::{
    SecurityContext, SecurityContextHandler, SecurityContextListenerSource,
};
use smithay::wayland::shm::{ShmHandler, ShmState, with_buffer_contents};
use smithay::reexports::calloop::LoopHandle;
use tracing::{debug, warn};

use super::dmabuf::{DmabufImport, import_dmabuf};
use super::{Placement, Stats};

/// Per-client data.
#[derive(Debug, Default)]
pub struct ClientState {
    /// smithay's per-client compositor state.
    pub compositor_state: CompositorClientState,
    /// The security context the client connected through (`wp_security_context_v1`), if any.
    pub security_context: Option<SecurityContext>,
}

impl ClientState {
    /// The security context's app id of `client`, if it connected through one.
    pub fn security_context_app_id(client: &Client) -> Option<String> {
        client
            .get_data::<ClientState>()
            .and_then(|d| d.security_context.as_ref())
            .and_then(|c| c.app_id.clone())
    }
}

impl ClientData for ClientState {
    fn initialized(&self, _client_id: ClientId) {}
    fn disconnected(&self, _client_id: ClientId, _reason: DisconnectReason) {}
}

/// A dmabuf surface's pixels, copied from the client's mapping at commit (smithay's pixman
/// import cannot read memfd-backed dmabufs, see `super::dmabuf`).
#[derive(Debug, Default)]
pub struct DmabufSurface(pub Mutex<Option<(ObjectId, MemoryRenderBuffer)>>);

/// Everything the compositor knows.
#[derive(Debug)]
pub struct State {
    pub display: DisplayHandle,
    /// For event sources added while running (security-context listeners).
    pub loop_handle: LoopHandle<'static, (State, super::Backend)>,
    pub start: Instant,
    /// The clock wp_presentation reports (CLOCK_MONOTONIC).
    pub clock: Clock<Monotonic>,
    pub compositor: CompositorState,
    pub xdg_shell: XdgShellState,
    pub shm: ShmState,
    pub seat_state: SeatState<State>,
    pub seat: Seat<State>,
    pub data_device: DataDeviceState,
    pub primary_selection: PrimarySelectionState,
    pub dmabuf_state: DmabufState,
    pub surface_feedback: Option<DmabufFeedback>,
    /// Validated, mapped dmabufs by `wl_buffer` id.
    pub dmabufs: HashMap<ObjectId, DmabufImport>,
    pub advertised: Vec<(Fourcc, u64)>,
    pub space: Space<Window>,
    pub popups: PopupManager,
    pub output: Output,
    pub placement: Placement,
    pub stats: Arc<Mutex<Stats>>,
    pub running: bool,
}

impl State {
    /// Takes `stream` on as a client with `data` (which says whether it came through a
    /// security context) and counts it.
    pub fn accept_client(&mut self, stream: std::os::unix::net::UnixStream, data: ClientState) {
        let sandboxed = data.security_context.is_some();
        match self.display.insert_client(stream, Arc::new(data)) {
            Ok(_) => self.stats.lock().unwrap_or_else(|e| e.into_inner()).clients += 1,
            Err(err) => warn!(?err, sandboxed, "client not accepted"),
        }
    }

    /// The window whose toplevel (or a subsurface of it) is `surface`.
    pub fn window_for(&self, surface: &WlSurface) -> Option<Window> {
        self.space
            .elements()
            .find(|w| w.toplevel().is_some_and(|t| t.wl_surface() == surface))
            .cloned()
    }

    /// Lays the windows out again: tiles in a grid of near-square cells, or cascades.
    pub fn arrange(&mut self) {
        let size = self
            .output
            .current_mode()
            .map(|m| m.size)
            .unwrap_or_default();
        let windows: Vec<Window> = self.space.elements().cloned().collect();
        let n = windows.len() as i32;
        let cols = (f64::from(n).sqrt().ceil() as i32).max(1);
        let rows = ((n + cols - 1) / cols).max(1);
        for (i, window) in windows.into_iter().enumerate() {
            let i = i as i32;
            let location = match self.placement {
                Placement::Tile => ((i % cols) * size.w / cols, (i / cols) * size.h / rows),
                Placement::Cascade => (32 * i, 32 * i),
            };
            self.space.map_element(window, location, false);
        }
    }

    fn count_buffer(&self, buffer: &wl_buffer::WlBuffer) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(dmabuf) = get_dmabuf(buffer) {
            stats.dmabuf_commits += 1;
            *stats
                .formats
                .entry(format_key(
                    dmabuf.format().code,
                    dmabuf.format().modifier.into(),
                ))
                .or_default() += 1;
        } else if let Ok(format) = with_buffer_contents(buffer, |_, _, data| data.format) {
            stats.shm_commits += 1;
            *stats.formats.entry(format!("shm:{format:?}")).or_default() += 1;
        }
    }

    /// Copies a newly committed dmabuf's pixels into the surface's render buffer.
    fn refresh_dmabuf_surface(&mut self, surface: &WlSurface) {
        let buffer = with_states(surface, |states| {
            states
                .data_map
                .get::<RendererSurfaceStateUserData>()
                .and_then(|d| d.lock().ok()?.buffer().map(|b| (**b).clone()))
        });
        let imported = buffer
            .as_ref()
            .and_then(|b| self.dmabufs.get(&b.id()).map(|i| (b.id(), i)));
        let failed = with_states(surface, |states| {
            states
                .data_map
                .insert_if_missing_threadsafe(DmabufSurface::default);
            let slot = states.data_map.get::<DmabufSurface>()?;
            let mut slot = slot.0.lock().unwrap_or_else(|e| e.into_inner());
            match imported {
                None => *slot = None,
                Some((id, import)) => {
                    let (scale, transform) = {
                        let mut cached = states.cached_state.get::<SurfaceAttributes>();
                        let attrs = cached.current();
                        (attrs.buffer_scale, Transform::from(attrs.buffer_transform))
                    };
                    match import.to_render_buffer(scale, transform) {
                        Ok(buffer) => *slot = Some((id, buffer)),
                        Err(err) => {
                            *slot = None;
                            return Some(err);
                        }
                    }
                }
            }
            None
        });
        // The client broke its own buffer (shrank the file behind it): it alone is
        // disconnected, with an error that says why.
        if let Some(err) = failed {
            warn!(%err, "dmabuf could not be read at commit; client disconnected");
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .dmabuf_refused += 1;
            surface.post_error(
                wl_surface::Error::InvalidSize,
                format!("attached dmabuf cannot be read: {err}"),
            );
        }
    }
}

/// The stats key of a format/modifier pair: `XR24:0x0000000000000000`.
pub fn format_key(format: Fourcc, modifier: u64) -> String {
    format!("{format}:{modifier:#018x}")
}

impl CompositorHandler for State {
    fn compositor_state(&mut self) -> &mut CompositorState {
        &mut self.compositor
    }

    fn client_compositor_state<'a>(&self, client: &'a Client) -> &'a CompositorClientState {
        match client.get_data::<ClientState>() {
            Some(data) => &data.compositor_state,
            // Every client is inserted with ClientState; a foreign one gets a shared empty state.
            None => {
                static FALLBACK: std::sync::OnceLock<CompositorClientState> =
                    std::sync::OnceLock::new();
                FALLBACK.get_or_init(CompositorClientState::default)
            }
        }
    }

    fn commit(&mut self, surface: &WlSurface) {
        let new_buffer = with_states(surface, |states| {
            match &states
                .cached_state
                .get::<SurfaceAttributes>()
                .current()
                .buffer
            {
                Some(compositor::BufferAssignment::NewBuffer(buffer)) => Some(buffer.clone()),
                _ => None,
            }
        });
        {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.commits += 1;
        }
        if let Some(buffer) = &new_buffer {
            self.count_buffer(buffer);
        }
        on_commit_buffer_handler::<Self>(surface);
        if new_buffer.is_some() {
            self.refresh_dmabuf_surface(surface);
        }
        self.popups.commit(surface);

        if !compositor::is_sync_subsurface(surface) {
            let mut root = surface.clone();
            while let Some(parent) = compositor::get_parent(&root) {
                root = parent;
            }
            if let Some(window) = self.window_for(&root) {
                window.on_commit();
            }
        }

        // First commit of a toplevel: send its initial configure.
        if let Some(window) = self.window_for(surface)
            && let Some(toplevel) = window.toplevel()
            && !toplevel.is_initial_configure_sent()
        {
            toplevel.send_configure();
        }
        // A toplevel that has a buffer gets keyboard focus (clipboard clients need it).
        if new_buffer.is_some() && self.window_for(surface).is_some() {
            let focused = self.seat.get_keyboard().and_then(|k| k.current_focus());
            if focused.as_ref() != Some(surface)
                && let Some(keyboard) = self.seat.get_keyboard()
            {
                keyboard.set_focus(self, Some(surface.clone()), SERIAL_COUNTER.next_serial());
            }
        }
        if let Some(PopupKind::Xdg(popup)) = self.popups.find_popup(surface)
            && !popup.is_initial_configure_sent()
            && let Err(err) = popup.send_configure()
        {
            warn!(?err, "popup configure failed");
        }
    }
}

impl BufferHandler for State {
    fn buffer_destroyed(&mut self, buffer: &wl_buffer::WlBuffer) {
        self.dmabufs.remove(&buffer.id());
    }
}

impl ShmHandler for State {
    fn shm_state(&self) -> &ShmState {
        &self.shm
    }
}

impl XdgShellHandler for State {
    fn xdg_shell_state(&mut self) -> &mut XdgShellState {
        &mut self.xdg_shell
    }

    fn new_toplevel(&mut self, surface: ToplevelSurface) {
        surface.with_pending_state(|state| {
            state.states.set(xdg_toplevel::State::Activated);
            state.decoration_mode = Some(DecorationMode::ServerSide);
        });
        let window = Window::new_wayland_window(surface);
        self.space.map_element(window, (0, 0), true);
        self.arrange();
        debug!(windows = self.space.elements().count(), "toplevel mapped");
    }

    fn toplevel_destroyed(&mut self, surface: ToplevelSurface) {
        if let Some(window) = self.window_for(surface.wl_surface()) {
            self.space.unmap_elem(&window);
            self.arrange();
        }
    }

    fn new_popup(&mut self, surface: PopupSurface, positioner: PositionerState) {
        surface.with_pending_state(|state| state.geometry = positioner.get_geometry());
        if let Err(err) = self.popups.track_popup(PopupKind::Xdg(surface)) {
            warn!(?err, "popup not tracked");
        }
    }

    fn reposition_request(
        &mut self,
        surface: PopupSurface,
        positioner: PositionerState,
        token: u32,
    ) {
        surface.with_pending_state(|state| {
            state.geometry = positioner.get_geometry();
            state.positioner = positioner;
        });
        surface.send_repositioned(token);
    }

    fn grab(&mut self, _surface: PopupSurface, _seat: wl_seat::WlSeat, _serial: Serial) {}
}

impl XdgDecorationHandler for State {
    fn new_decoration(&mut self, toplevel: ToplevelSurface) {
        toplevel
            .with_pending_state(|state| state.decoration_mode = Some(DecorationMode::ServerSide));
    }

    fn request_mode(&mut self, toplevel: ToplevelSurface, _mode: DecorationMode) {
        // Windows are always decorated by the "server" (which draws no frame): screenshots show
        // the client's pixels only.
        toplevel
            .with_pending_state(|state| state.decoration_mode = Some(DecorationMode::ServerSide));
        if toplevel.is_initial_configure_sent() {
            toplevel.send_pending_configure();
        }
    }

    fn unset_mode(&mut self, toplevel: ToplevelSurface) {
        self.request_mode(toplevel, DecorationMode::ServerSide);
    }
}

impl SeatHandler for State {
    type KeyboardFocus = WlSurface;
    type PointerFocus = WlSurface;
    type TouchFocus = WlSurface;

    fn seat_state(&mut self) -> &mut SeatState<State> {
        &mut self.seat_state
    }

    fn focus_changed(&mut self, seat: &Seat<Self>, focused: Option<&WlSurface>) {
        let client = focused.and_then(|s| self.display.get_client(s.id()).ok());
        smithay::wayland::selection::data_device::set_data_device_focus(
            &self.display,
            seat,
            client.clone(),
        );
        smithay::wayland::selection::primary_selection::set_primary_focus(
            &self.display,
            seat,
            client,
        );
    }
}

impl SelectionHandler for State {
    type SelectionUserData = ();
}

impl DataDeviceHandler for State {
    fn data_device_state(&self) -> &DataDeviceState {
        &self.data_device
    }
}

impl ClientDndGrabHandler for State {}
impl ServerDndGrabHandler for State {}

impl PrimarySelectionHandler for State {
    fn primary_selection_state(&self) -> &PrimarySelectionState {
        &self.primary_selection
    }
}

impl OutputHandler for State {}

impl FractionalScaleHandler for State {
    fn new_fractional_scale(&mut self, surface: WlSurface) {
        let scale = self.output.current_scale().fractional_scale();
        with_states(&surface, |states| {
            with_fractional_scale(states, |fs| fs.set_preferred_scale(scale))
        });
    }
}

impl DmabufHandler for State {
    fn dmabuf_state(&mut self) -> &mut DmabufState {
        &mut self.dmabuf_state
    }

    fn dmabuf_imported(
        &mut self,
        _global: &DmabufGlobal,
        dmabuf: Dmabuf,
        notifier: ImportNotifier,
    ) {
        match import_dmabuf(&dmabuf, &self.advertised) {
            Ok(import) => match notifier.successful::<State>() {
                Ok(buffer) => {
                    self.stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dmabuf_imports += 1;
                    self.dmabufs.insert(buffer.id(), import);
                }
                Err(err) => debug!(?err, "client went away during dmabuf import"),
            },
            Err(err) => {
                warn!(%err, "dmabuf import refused");
                self.stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .dmabuf_refused += 1;
                if err.is_format_error() {
                    notifier.invalid_format();
                } else if err.is_incomplete() {
                    notifier.incomplete();
                } else {
                    notifier.failed();
                }
            }
        }
    }

    fn new_surface_feedback(
        &mut self,
        _surface: &WlSurface,
        _global: &DmabufGlobal,
    ) -> Option<DmabufFeedback> {
        self.surface_feedback.clone()
    }
}

impl SecurityContextHandler for State {
    fn context_created(&mut self, source: SecurityContextListenerSource, context: SecurityContext) {
        debug!(app_id = ?context.app_id, engine = ?context.sandbox_engine, "security context listener");
        let inserted = self
            .loop_handle
            .insert_source(source, move |stream, _, (state, _)| {
                let data = ClientState {
                    security_context: Some(context.clone()),
                    ..ClientState::default()
                };
                state.accept_client(stream, data);
            });
        if let Err(err) = inserted {
            warn!(%err, "security-context listener not watched");
        }
    }
}

/// Toplevel identity for tests: title and app_id as the client set them.
pub fn toplevel_identity(toplevel: &ToplevelSurface) -> (Option<String>, Option<String>) {
    with_states(toplevel.wl_surface(), |states| {
        states
            .data_map
            .get::<XdgToplevelSurfaceData>()
            .and_then(|d| d.lock().ok().map(|d| (d.title.clone(), d.app_id.clone())))
            .unwrap_or_default()
    })
}

/// The window's geometry in output coordinates.
pub fn window_rect(
    space: &Space<Window>,
    window: &Window,
) -> Option<Rectangle<i32, smithay::utils::Logical>> {
    let location = space.element_location(window)?;
    let geometry = window.geometry();
    Some(Rectangle::new(location, geometry.size))
}

/// Frame callbacks and presentation feedback for every mapped surface.
pub fn send_frames(state: &mut State, now: Duration, refresh: Duration, seq: u64) {
    let output = state.output.clone();
    // Whatever was committed before this refresh was composed in it: tell wp_presentation
    // clients so (a fixed-rate, vsync'd "display").
    let mut presented = OutputPresentationFeedback::new(&output);
    for window in state.space.elements() {
        window.take_presentation_feedback(
            &mut presented,
            |_, _| Some(output.clone()),
            |_, _| wp_presentation_feedback::Kind::Vsync,
        );
    }
    presented.presented(
        state.clock.now(),
        Refresh::Fixed(refresh),
        seq,
        wp_presentation_feedback::Kind::Vsync,
    );
    for window in state.space.elements() {
        window.send_frame(&output, now, Some(Duration::ZERO), |_, _| {
            Some(output.clone())
        });
        if let Some(toplevel) = window.toplevel() {
            for (popup, _) in PopupManager::popups_for_surface(toplevel.wl_surface()) {
                smithay::desktop::utils::send_frames_surface_tree(
                    popup.wl_surface(),
                    &output,
                    now,
                    Some(Duration::ZERO),
                    |_, _| Some(output.clone()),
                );
            }
        }
    }
}

/// Stats shared with the handle.
pub fn count_frame(stats: &Mutex<Stats>, damaged: bool) {
    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
    s.frames += 1;
    if damaged {
        s.frames_damaged += 1;
    }
}

smithay::delegate_compositor!(State);
smithay::delegate_shm!(State);
smithay::delegate_xdg_shell!(State);
smithay::delegate_xdg_decoration!(State);
smithay::delegate_seat!(State);
smithay::delegate_data_device!(State);
smithay::delegate_primary_selection!(State);
smithay::delegate_output!(State);
smithay::delegate_viewporter!(State);
smithay::delegate_fractional_scale!(State);
smithay::delegate_presentation!(State);
smithay::delegate_dmabuf!(State);
smithay::delegate_security_context!(State);
