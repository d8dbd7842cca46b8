//! `crossway-headless`: the embedded headless compositor, a real Wayland compositor (smithay, pixman software
//! rendering) with no screen, for the demo, for end-to-end tests and for "run guest apps in CI
//! and check what they drew".
//!
//! ```text
//!  Wayland clients ──socket──▶ compositor thread (calloop) ──▶ pixman output image
//!                                 ▲                               │
//!  Headless handle ──requests─────┘   control socket (JSON lines) ┘──▶ screenshots, stats
//! ```
//!
//! [`Headless::start`] runs it on a thread of its own and returns a handle that can wait for a
//! toplevel, capture the output or one toplevel as RGBA, and read counters. Processes that do
//! not share the address space use the control socket ([`control`]).

pub mod command;
pub mod control;
pub mod dmabuf;
mod mapping;
mod render;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use smithay::backend::allocator::Fourcc;
use smithay::backend::renderer::damage::OutputDamageTracker;
use smithay::backend::renderer::pixman::PixmanRenderer;
use smithay::backend::renderer::{Bind, Offscreen};
use smithay::desktop::{PopupManager, Space};
use smithay::input::SeatState;
use smithay::input::keyboard::XkbConfig;
use smithay::output::{Mode, Output, PhysicalProperties, Scale, Subpixel};
use smithay::reexports::calloop::channel::{self, Channel, Event as ChannelEvent};
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::calloop::{EventLoop, Interest, Mode as PollMode, PostAction};
use smithay::reexports::pixman;
use smithay::reexports::wayland_server::{Display, ListeningSocket};
use smithay::utils::{Size, Transform};
use smithay::wayland::compositor::CompositorState;
use smithay::wayland::dmabuf::DmabufState;
use smithay::wayland::fractional_scale::FractionalScaleManagerState;
use smithay::wayland::output::OutputManagerState;
use smithay::wayland::presentation::PresentationState;
use smithay::wayland::security_context::SecurityContextState;
use smithay::wayland::selection::data_device::DataDeviceState;
use smithay::wayland::selection::primary_selection::PrimarySelectionState;
use smithay::wayland::shell::xdg::XdgShellState;
use smithay::wayland::shell::xdg::decoration::XdgDecorationState;
use smithay::wayland::shm::ShmState;
use smithay::wayland::viewporter::ViewporterState;
use tracing::{debug, info, warn};

pub use dmabuf::DmabufConfig;
use state::{ClientState, State};

/// How toplevels are placed on the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// A grid of near-square cells, one window at the top-left of each.
    #[default]
    Tile,
    /// Each window 32 pixels right and down from the previous one.
    Cascade,
}

/// Where the compositor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// A name under `$XDG_RUNTIME_DIR`, as `WAYLAND_DISPLAY`.
    Name(String),
    /// An absolute path.
    Path(PathBuf),
}

/// How to run the compositor.
#[derive(Debug, Clone)]
pub struct HeadlessConfig {
    /// The listening socket.
    pub socket: SocketSpec,
    /// Output size in pixels.
    pub size: (i32, i32),
    /// Output scale (integer).
    pub scale: i32,
    /// Refresh rate in millihertz; frame callbacks follow it.
    pub refresh_mhz: i32,
    /// Window placement.
    pub placement: Placement,
    /// What linux-dmabuf advertises.
    pub dmabuf: DmabufConfig,
}

impl HeadlessConfig {
    /// Defaults (1280x800 at 60 Hz, scale 1, tiled, a GPU-shaped dmabuf table) on `socket`.
    pub fn new(socket: SocketSpec) -> HeadlessConfig {
        HeadlessConfig {
            socket,
            size: (1280, 800),
            scale: 1,
            refresh_mhz: 60_000,
            placement: Placement::Tile,
            dmabuf: DmabufConfig::default(),
        }
    }
}

/// Counters, readable while the compositor runs.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// `wl_surface.commit`s.
    pub commits: u64,
    /// Commits that attached a new `wl_shm` buffer.
    pub shm_commits: u64,
    /// Commits that attached a new dmabuf buffer.
    pub dmabuf_commits: u64,
    /// dmabufs created (`created` or `create_immed`).
    pub dmabuf_imports: u64,
    /// dmabuf creations refused.
    pub dmabuf_refused: u64,
    /// Buffers attached, by `FOURCC:modifier` (dmabuf) or `shm:Format`.
    pub formats: BTreeMap<String, u64>,
    /// Output frames (one per refresh).
    pub frames: u64,
    /// Frames in which something changed.
    pub frames_damaged: u64,
    /// Clients that connected.
    pub clients: u64,
}

/// A toplevel as tests see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToplevelInfo {
    /// `xdg_toplevel.set_title`.
    pub title: Option<String>,
    /// `xdg_toplevel.set_app_id`.
    pub app_id: Option<String>,
    /// Position and size of its geometry on the output: x, y, width, height.
    pub rect: (i32, i32, i32, i32),
    /// Whether it has a buffer (is drawn).
    pub mapped: bool,
    /// The app id of the security context its client connected through, if any
    /// (`wp_security_context_v1`; the proxy sets it to the VM's name).
    pub security_context_app_id: Option<String>,
}

/// Selects a toplevel by title or app_id (exact match; either may be left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ToplevelMatch {
    /// Required title.
    pub title: Option<String>,
    /// Required app_id.
    pub app_id: Option<String>,
}

impl ToplevelMatch {
    /// Matches a title.
    pub fn title(title: impl Into<String>) -> ToplevelMatch {
        ToplevelMatch {
            title: Some(title.into()),
            app_id: None,
        }
    }

    /// Matches an app_id.
    pub fn app_id(app_id: impl Into<String>) -> ToplevelMatch {
        ToplevelMatch {
            title: None,
            app_id: Some(app_id.into()),
        }
    }

    fn matches(&self, info: &ToplevelInfo) -> bool {
        self.title
            .as_ref()
            .is_none_or(|t| info.title.as_ref() == Some(t))
            && self
                .app_id
                .as_ref()
                .is_none_or(|a| info.app_id.as_ref() == Some(a))
    }
}

/// An RGBA image, rows packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` RGBA pixels.
    pub rgba: Vec<u8>,
}

impl Image {
    /// Wraps RGBA bytes, checking their length.
    pub fn from_rgba(width: u32, height: u32, rgba: Vec<u8>) -> Result<Image> {
        let expected = width as usize * height as usize * 4;
        if rgba.len() != expected {
            bail!(
                "{width}x{height} RGBA needs {expected} bytes, got {}",
                rgba.len()
            );
        }
        Ok(Image {
            width,
            height,
            rgba,
        })
    }

    /// The pixel at (x, y) as [r, g, b, a].
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 4;
        self.rgba.get(i..i + 4).and_then(|p| p.try_into().ok())
    }

    /// Writes a PNG.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), self.width, self.height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgba)?;
        writer.finish()?;
        Ok(())
    }

    /// Reads a PNG written by [`Image::save_png`] (8-bit RGBA).
    pub fn load_png(path: &Path) -> Result<Image> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info()?;
        let mut buf = vec![
            0;
            reader
                .output_buffer_size()
                .ok_or_else(|| anyhow!("PNG too large"))?
        ];
        let info = reader.next_frame(&mut buf)?;
        if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
            bail!("{}: not 8-bit RGBA", path.display());
        }
        buf.truncate(info.buffer_size());
        Image::from_rgba(info.width, info.height, buf)
    }
}

type Reply<T> = mpsc::Sender<Result<T>>;

/// What the handle asks the compositor thread.
enum Request {
    Screenshot(Reply<Image>),
    ToplevelImage(ToplevelMatch, Reply<Image>),
    Toplevels(Reply<Vec<ToplevelInfo>>),
    Stop,
}

/// A running headless compositor. Dropping it stops the compositor.
#[derive(Debug)]
pub struct Headless {
    socket_path: PathBuf,
    requests: channel::Sender<Request>,
    stats: Arc<Mutex<Stats>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Screenshot(_) => "Screenshot",
            Request::ToplevelImage(..) => "ToplevelImage",
            Request::Toplevels(_) => "Toplevels",
            Request::Stop => "Stop",
        })
    }
}

impl Headless {
    /// Starts the compositor on a thread of its own; returns once clients can connect.
    pub fn start(config: HeadlessConfig) -> Result<Headless> {
        let socket_path = match &config.socket {
            SocketSpec::Path(path) => path.clone(),
            SocketSpec::Name(name) => {
                let dir = std::env::var_os("XDG_RUNTIME_DIR")
                    .ok_or_else(|| anyhow!("XDG_RUNTIME_DIR is not set"))?;
                Path::new(&dir).join(name)
            }
        };
        if config.size.0 <= 0 || config.size.1 <= 0 || config.scale <= 0 || config.refresh_mhz <= 0
        {
            bail!("output size, scale and refresh must be positive");
        }
        // Bind here so that a taken socket is reported to the caller, not lost in the thread.
        let listener = ListeningSocket::bind_absolute(socket_path.clone())
            .with_context(|| format!("listening on {}", socket_path.display()))?;
        let (requests, channel) = channel::channel();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let thread_stats = stats.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("headless-compositor".into())
            .spawn(move || run_compositor(config, listener, channel, thread_stats, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                let err = thread
                    .join()
                    .map_err(|_| anyhow!("compositor thread panicked"))?;
                return Err(err
                    .err()
                    .unwrap_or_else(|| anyhow!("compositor thread exited at start")));
            }
        }
        info!(socket = %socket_path.display(), "headless compositor listening");
        Ok(Headless {
            socket_path,
            requests,
            stats,
            thread: Some(thread),
        })
    }

    /// The listening socket: set `WAYLAND_DISPLAY` to it (absolute paths are accepted).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| anyhow!("compositor has stopped"))?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("compositor did not answer"))?
    }

    /// The whole output as RGBA.
    pub fn screenshot(&self) -> Result<Image> {
        self.ask(Request::Screenshot)
    }

    /// One toplevel's window (its geometry, with subsurfaces and popups) as RGBA.
    pub fn toplevel_image(&self, which: &ToplevelMatch) -> Result<Image> {
        let which = which.clone();
        self.ask(|tx| Request::ToplevelImage(which, tx))
    }

    /// The toplevels, bottom-most first.
    pub fn toplevels(&self) -> Result<Vec<ToplevelInfo>> {
        self.ask(Request::Toplevels)
    }

    /// Waits until a toplevel matching `which` has a buffer.
    pub fn wait_for_toplevel(
        &self,
        which: &ToplevelMatch,
        timeout: Duration,
    ) -> Result<ToplevelInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self
                .toplevels()?
                .into_iter()
                .find(|t| t.mapped && which.matches(t))
            {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                bail!("no toplevel matching {which:?} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the compositor and waits for its thread.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.requests.send(Request::Stop);
        let result = thread
            .join()
            .map_err(|_| anyhow!("compositor thread panicked"))?;
        let _ = std::fs::remove_file(&self.socket_path);
        result
    }
}

impl Drop for Headless {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            warn!("headless compositor: {err:#}");
        }
    }
}

/// Everything the loop owns besides the protocol state.
pub(crate) struct Backend {
    refresh: Duration,
    renderer: PixmanRenderer,
    target: pixman::Image<'static, 'static>,
    tracker: OutputDamageTracker,
}

fn run_compositor(
    config: HeadlessConfig,
    listener: ListeningSocket,
    requests: Channel<Request>,
    stats: Arc<Mutex<Stats>>,
    ready: mpsc::Sender<Result<()>>,
) -> Result<()> {
    type Parts = (
        EventLoop<'static, (State, Backend)>,
        Display<State>,
        State,
        Backend,
    );
    let setup = || -> Result<Parts> {
        let event_loop = EventLoop::try_new()?;
        let display = Display::<State>::new()?;
        let dh = display.handle();
        let mut seat_state = SeatState::new();
        let mut seat = seat_state.new_wl_seat(&dh, "seat0");
        seat.add_keyboard(XkbConfig::default(), 200, 25)
            .map_err(|e| anyhow!("keymap: {e:?}"))?;
        seat.add_pointer();

        let (w, h) = config.size;
        let output = Output::new(
            "HEADLESS-1".into(),
            PhysicalProperties {
                size: (0, 0).into(),
                subpixel: Subpixel::Unknown,
                make: "Crossway".into(),
                model: "Headless".into(),
            },
        );
        let mode = Mode {
            size: (w, h).into(),
            refresh: config.refresh_mhz,
        };
        output.create_global::<State>(&dh);
        output.change_current_state(
            Some(mode),
            Some(Transform::Normal),
            Some(Scale::Integer(config.scale)),
            Some((0, 0).into()),
        );
        output.set_preferred(mode);

        let mut dmabuf_state = DmabufState::new();
        let feedback = config
            .dmabuf
            .feedback()
            .context("building dmabuf feedback")?;
        let _global = dmabuf_state.create_global_with_default_feedback::<State>(&dh, &feedback);

        let mut space = Space::default();
        space.map_output(&output, (0, 0));
        let state = State {
            display: dh.clone(),
            loop_handle: event_loop.handle(),
            start: Instant::now(),
            clock: smithay::utils::Clock::new(),
            compositor: CompositorState::new_v6::<State>(&dh),
            xdg_shell: XdgShellState::new::<State>(&dh),
            shm: ShmState::new::<State>(&dh, dmabuf::extra_shm_formats()),
            seat_state,
            seat,
            data_device: DataDeviceState::new::<State>(&dh),
            primary_selection: PrimarySelectionState::new::<State>(&dh),
            dmabuf_state,
            surface_feedback: Some(feedback),
            dmabufs: Default::default(),
            advertised: config.dmabuf.advertised(),
            space,
            popups: PopupManager::default(),
            output,
            placement: config.placement,
            stats,
            running: true,
        };
        // Globals whose state smithay keeps inside the global itself.
        XdgDecorationState::new::<State>(&dh);
        OutputManagerState::new_with_xdg_output::<State>(&dh);
        ViewporterState::new::<State>(&dh);
        FractionalScaleManagerState::new::<State>(&dh);
        PresentationState::new::<State>(&dh, rustix::time::ClockId::Monotonic as u32);
        // Clients inside a security context must not nest another (the protocol's rule).
        SecurityContextState::new::<State, _>(&dh, |client| {
            client
                .get_data::<ClientState>()
                .is_none_or(|d| d.security_context.is_none())
        });

        let mut renderer = PixmanRenderer::new()?;
        let target = renderer.create_buffer(Fourcc::Argb8888, (w, h).into())?;
        let tracker = OutputDamageTracker::from_output(&state.output);
        let refresh = Duration::from_nanos(1_000_000_000_000 / config.refresh_mhz as u64);
        Ok((
            event_loop,
            display,
            state,
            Backend {
                refresh,
                renderer,
                target,
                tracker,
            },
        ))
    };
    let (mut event_loop, display, state, backend) = match setup() {
        Ok(parts) => parts,
        Err(err) => {
            let msg = format!("{err:#}");
            let _ = ready.send(Err(err));
            bail!(msg);
        }
    };
    let handle = event_loop.handle();

    handle
        .insert_source(
            Generic::new(listener, Interest::READ, PollMode::Level),
            |_, listener, (state, _)| {
                while let Ok(Some(stream)) = listener.accept() {
                    state.accept_client(stream, ClientState::default());
                }
                Ok(PostAction::Continue)
            },
        )
        .map_err(|e| anyhow!("{e}"))?;

    handle
        .insert_source(
            Generic::new(display, Interest::READ, PollMode::Level),
            |_, display, (state, _)| {
                // SAFETY: `get_mut` is unsafe only because dropping or replacing the display would
                // leave calloop polling a closed fd; dispatching does neither.
                unsafe { display.get_mut().dispatch_clients(state)? };
                Ok(PostAction::Continue)
            },
        )
        .map_err(|e| anyhow!("{e}"))?;

    handle
        .insert_source(requests, |event, _, (state, backend)| match event {
            ChannelEvent::Msg(request) => answer(request, state, backend),
            ChannelEvent::Closed => state.running = false,
        })
        .map_err(|e| anyhow!("{e}"))?;

    let interval = Duration::from_nanos(1_000_000_000_000 / config.refresh_mhz as u64);
    // Refreshes on absolute deadlines, so the rate does not drift by the time each frame
    // takes; a late frame is not made up for (the next deadline is the next one in the future).
    let mut deadline = Instant::now() + interval;
    handle
        .insert_source(
            Timer::from_deadline(deadline),
            move |_, _, (state, backend)| {
                frame(state, backend);
                let now = Instant::now();
                deadline += interval;
                if deadline <= now {
                    let behind = (now - deadline).as_nanos() / interval.as_nanos() + 1;
                    deadline += interval * u32::try_from(behind).unwrap_or(u32::MAX);
                }
                TimeoutAction::ToInstant(deadline)
            },
        )
        .map_err(|e| anyhow!("{e}"))?;

    let _ = ready.send(Ok(()));
    let mut data = (state, backend);
    while data.0.running {
        event_loop.dispatch(Some(interval), &mut data)?;
        data.0.display.flush_clients()?;
    }
    debug!("headless compositor stopped");
    Ok(())
}

/// One output refresh: compose what changed, then frame callbacks.
fn frame(state: &mut State, backend: &mut Backend) {
    let elements = render::output_elements(&mut backend.renderer, state);
    let damaged = match backend.renderer.bind(&mut backend.target) {
        Ok(mut framebuffer) => {
            match backend.tracker.render_output(
                &mut backend.renderer,
                &mut framebuffer,
                0,
                &elements,
                render::CLEAR_COLOR,
            ) {
                Ok(result) => result.damage.is_some_and(|d| !d.is_empty()),
                Err(err) => {
                    warn!(?err, "render failed");
                    false
                }
            }
        }
        Err(err) => {
            warn!(?err, "binding the output image failed");
            false
        }
    };
    state::count_frame(&state.stats, damaged);
    let (frames, refresh) = (
        state.stats.lock().map(|s| s.frames).unwrap_or_default(),
        backend.refresh,
    );
    state::send_frames(state, state.start.elapsed(), refresh, frames);
    state.space.refresh();
    state.popups.cleanup();
}

fn answer(request: Request, state: &mut State, backend: &mut Backend) {
    match request {
        Request::Screenshot(reply) => {
            let size = state
                .output
                .current_mode()
                .map(|m| m.size)
                .unwrap_or_default();
            let elements = render::output_elements(&mut backend.renderer, state);
            let _ = reply.send(render::capture(&mut backend.renderer, size, &elements));
        }
        Request::ToplevelImage(which, reply) => {
            let result = (|| {
                let window = state
                    .space
                    .elements()
                    .find(|w| w.toplevel().is_some() && which.matches(&toplevel_info(state, w)))
                    .cloned()
                    .ok_or_else(|| anyhow!("no toplevel matching {which:?}"))?;
                let size = window.geometry().size;
                if size.w <= 0 || size.h <= 0 {
                    bail!("toplevel {which:?} has no buffer yet");
                }
                let elements =
                    render::window_elements(&mut backend.renderer, &window, (0, 0).into());
                render::capture(
                    &mut backend.renderer,
                    Size::from((size.w, size.h)),
                    &elements,
                )
            })();
            let _ = reply.send(result);
        }
        Request::Toplevels(reply) => {
            let infos = state
                .space
                .elements()
                .map(|w| toplevel_info(state, w))
                .collect();
            let _ = reply.send(Ok(infos));
        }
        Request::Stop => state.running = false,
    }
}

fn toplevel_info(state: &State, window: &smithay::desktop::Window) -> ToplevelInfo {
    let (title, app_id) = window
        .toplevel()
        .map(state::toplevel_identity)
        .unwrap_or_default();
    let rect = state::window_rect(&state.space, window)
        .map(|r| (r.loc.x, r.loc.y, r.size.w, r.size.h))
        .unwrap_or_default();
    let mapped = window.toplevel().is_some_and(|t| {
        smithay::wayland::compositor::with_states(t.wl_surface(), |states| {
            states
                .data_map
                .get::<smithay::backend::renderer::utils::RendererSurfaceStateUserData>()
                .is_some_and(|d| d.lock().is_ok_and(|d| d.buffer().is_some()))
        })
    });
    let security_context_app_id = window.toplevel().and_then(|t| {
        state
            .display
            .get_client(smithay::reexports::wayland_server::Resource::id(
                t.wl_surface(),
            ))
            .ok()
            .and_then(|c| ClientState::security_context_app_id(&c))
    });
    ToplevelInfo {
        title,
        app_id,
        rect,
        mapped,
        security_context_app_id,
    }
}
