//! `crossway-test-client`: a Wayland client that shows a window with a known pattern, in a
//! memfd-backed dmabuf (LINEAR, optional plane offset, padded stride) or a `wl_shm` buffer, so
//! tests can check that the exact pixels reach the screen. With `--frames N` it animates
//! (the pattern scrolls one column per frame, full damage, driven by frame callbacks, two
//! buffers) and reports its frame rate. With `--bad` it sends deliberately wrong dmabuf
//! parameters and prints what the compositor answered.
//!
//! With a `zwp_linux_dmabuf_v1` of version 4 or more it reads the default feedback, prints its
//! tranches, and uses the first advertised modifier for the format that it can produce (only
//! LINEAR, from a memfd).
//!
//! Output lines (stdout), for tests: `feedback tranche ...`, `modifier 0x...`, `created`,
//! `failed`, `protocol error: ...`, `configured WxH`, `shown`, `frames N seconds S fps F`.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt as _;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use crossway_protocols::dmabuf::{FormatTable, parse_tranche_indices};
use wayland_client::backend::ObjectId;
use wayland_client::protocol::{
    wl_buffer, wl_callback, wl_compositor, wl_registry, wl_shm, wl_shm_pool, wl_surface,
};
use wayland_client::{
    Connection, Dispatch, DispatchError, Proxy, QueueHandle, WEnum, delegate_noop,
    event_created_child,
};
use wayland_protocols::wp::linux_dmabuf::zv1::client::{
    zwp_linux_buffer_params_v1 as params, zwp_linux_dmabuf_feedback_v1 as feedback,
    zwp_linux_dmabuf_v1 as dmabuf,
};
use wayland_protocols::wp::presentation_time::client::{wp_presentation, wp_presentation_feedback};
use wayland_protocols::xdg::shell::client::{xdg_surface, xdg_toplevel, xdg_wm_base};

/// XRGB8888.
const XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
const LINEAR: u64 = 0;
const PADDING_BYTE: u8 = 0x5a;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BufferKind {
    /// A memfd passed through zwp_linux_dmabuf_v1 as a LINEAR dmabuf.
    Dmabuf,
    /// A wl_shm pool.
    Shm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bad {
    /// Two planes over the same bytes.
    Overlap,
    /// A stride smaller than a row of pixels.
    SmallStride,
    /// A plane offset past the end of the buffer.
    OffsetPastEnd,
    /// A format nobody advertises.
    UnknownFormat,
    /// A modifier the compositor did not advertise for the format.
    UnadvertisedModifier,
}

/// A window whose buffer is a memfd dmabuf with a known pattern.
#[derive(Debug, Parser)]
#[command(name = "crossway-test-client", version)]
struct Args {
    /// Buffer width.
    #[arg(long, default_value_t = 64)]
    width: u32,
    /// Buffer height.
    #[arg(long, default_value_t = 48)]
    height: u32,
    /// Bytes before the first row.
    #[arg(long, default_value_t = 0)]
    offset: u32,
    /// Bytes per row (default: width * 4 + 64, i.e. padded).
    #[arg(long)]
    stride: Option<u32>,
    /// Window title.
    #[arg(long, default_value = "crossway-test-client")]
    title: String,
    /// What the buffers are.
    #[arg(long, value_enum, default_value = "dmabuf")]
    buffer: BufferKind,
    /// Animate this many frames, then exit (0: show one frame).
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// Ask wp_presentation for feedback on every frame and report how many were presented.
    #[arg(long)]
    presentation: bool,
    /// Use create_immed instead of create + created.
    #[arg(long)]
    immed: bool,
    /// Send bad parameters of this kind and report the answer.
    #[arg(long, value_enum)]
    bad: Option<Bad>,
    /// Exit after this many milliseconds of showing the window (0: run until killed).
    #[arg(long, default_value_t = 0)]
    exit_after: u64,
    /// Animate only inside this rectangle `X,Y,W,H` (buffer pixels) and damage only it; the
    /// rest of the window keeps the still pattern.
    #[arg(long, value_parser = parse_rect)]
    damage: Option<[u32; 4]>,
}

fn parse_rect(s: &str) -> Result<[u32; 4], String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|n| n.trim().parse::<u32>().map_err(|e| format!("{n:?}: {e}")))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| "expected X,Y,W,H".to_owned())
}

/// The colour of pixel (x, y): four quadrants (red, green, blue, white) with a one-pixel
/// checker in the top-left 8x8 so that off-by-one rows or columns show.
pub fn pattern(x: u32, y: u32, width: u32, height: u32) -> [u8; 3] {
    if x < 8 && y < 8 {
        return if (x + y).is_multiple_of(2) {
            [255, 255, 0]
        } else {
            [0, 0, 0]
        };
    }
    match (x < width / 2, y < height / 2) {
        (true, true) => [255, 0, 0],
        (false, true) => [0, 255, 0],
        (true, false) => [0, 0, 255],
        (false, false) => [255, 255, 255],
    }
}

#[derive(Default)]
struct State {
    /// The first frame was shown (later frames damage only `--damage`).
    shown: bool,
    compositor: Option<wl_compositor::WlCompositor>,
    shm: Option<wl_shm::WlShm>,
    busy: HashMap<ObjectId, bool>,
    frame_done: bool,
    presentation: Option<wp_presentation::WpPresentation>,
    presented: u64,
    discarded: u64,
    wm_base: Option<xdg_wm_base::XdgWmBase>,
    dmabuf: Option<(dmabuf::ZwpLinuxDmabufV1, u32)>,
    table: Option<FormatTable>,
    tranche_flags: u32,
    tranches: Vec<(u32, Vec<(u32, u64)>)>,
    feedback_done: bool,
    created: Option<wl_buffer::WlBuffer>,
    failed: bool,
    configured: Option<(i32, i32)>,
    closed: bool,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            say(&format!("error: {err}"));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let conn = Connection::connect_to_env().map_err(|e| format!("connect: {e}"))?;
    let mut queue = conn.new_event_queue::<State>();
    let qh = queue.handle();
    conn.display().get_registry(&qh, ());
    let mut state = State::default();
    roundtrip(&mut queue, &mut state)?;
    let (Some(compositor), Some(wm_base)) = (state.compositor.clone(), state.wm_base.clone())
    else {
        return Err("compositor lacks wl_compositor or xdg_wm_base".into());
    };
    let mut modifier = LINEAR;
    if args.buffer == BufferKind::Dmabuf
        && let Some((dmabuf, version)) = state.dmabuf.clone()
        && version >= 4
    {
        dmabuf.get_default_feedback(&qh, ());
        while !state.feedback_done {
            dispatch(&mut queue, &mut state)?;
        }
        // Memfds can only be LINEAR: take LINEAR where the compositor offers it for XRGB8888.
        let offered: Vec<u64> = state
            .tranches
            .iter()
            .flat_map(|(_, pairs)| {
                pairs
                    .iter()
                    .filter(|(f, _)| *f == XRGB8888)
                    .map(|(_, m)| *m)
            })
            .collect();
        modifier = offered
            .iter()
            .copied()
            .find(|m| *m == LINEAR)
            .ok_or("no LINEAR XRGB8888 offered")?;
    }

    let (width, height) = (args.width, args.height);
    let stride = args.stride.unwrap_or(width * 4 + 64);
    let size = args.offset as usize + stride as usize * height as usize;
    let mut frame = Frame::new(width, height, args.offset, stride, size);
    frame.animated = args.damage;

    let mut buffers = Vec::new();
    for i in 0..2 {
        let file = memfd(size)?;
        frame.draw(&file, 0)?;
        let buffer = match args.buffer {
            BufferKind::Shm => {
                let shm = state.shm.clone().ok_or("compositor lacks wl_shm")?;
                let pool = shm.create_pool(file.as_fd(), size as i32, &qh, ());
                let buffer = pool.create_buffer(
                    args.offset as i32,
                    width as i32,
                    height as i32,
                    stride as i32,
                    wl_shm::Format::Xrgb8888,
                    &qh,
                    (),
                );
                pool.destroy();
                buffer
            }
            BufferKind::Dmabuf => {
                let (dmabuf, _) = state
                    .dmabuf
                    .clone()
                    .ok_or("compositor lacks zwp_linux_dmabuf_v1")?;
                if i == 0 {
                    say(&format!("modifier {modifier:#018x}"));
                }
                match dmabuf_buffer(args, &mut queue, &mut state, &dmabuf, &file, modifier, size)? {
                    Some(buffer) => buffer,
                    None => return Ok(()),
                }
            }
        };
        say("created");
        state.busy.insert(buffer.id(), false);
        buffers.push((buffer, file));
        if args.frames == 0 {
            break;
        }
    }

    let surface = compositor.create_surface(&qh, ());
    let xdg = wm_base.get_xdg_surface(&surface, &qh, ());
    let toplevel = xdg.get_toplevel(&qh, ());
    toplevel.set_title(args.title.clone());
    toplevel.set_app_id("crossway.test-client".into());
    surface.commit();
    while state.configured.is_none() {
        dispatch(&mut queue, &mut state)?;
    }
    if args.presentation && state.presentation.is_none() {
        return Err("compositor lacks wp_presentation".into());
    }
    let feedback = args
        .presentation
        .then(|| state.presentation.clone())
        .flatten();
    let present = |state: &mut State, buffer: &wl_buffer::WlBuffer| {
        if let Some(presentation) = &feedback {
            presentation.feedback(&surface, &qh, ());
        }
        surface.attach(Some(buffer), 0, 0);
        match (args.damage, state.shown) {
            (Some([x, y, w, h]), true) => {
                surface.damage_buffer(x as i32, y as i32, w as i32, h as i32)
            }
            _ => surface.damage_buffer(0, 0, width as i32, height as i32),
        }
        surface.frame(&qh, ());
        state.frame_done = false;
        state.busy.insert(buffer.id(), true);
        surface.commit();
    };
    present(&mut state, &buffers[0].0);
    roundtrip(&mut queue, &mut state)?;
    state.shown = true;
    say("shown");

    if args.frames > 0 {
        let start = Instant::now();
        for n in 1..=args.frames {
            while !state.frame_done {
                dispatch(&mut queue, &mut state)?;
            }
            // A buffer the compositor has released; wait for one if both are in use.
            let next = loop {
                if let Some(b) = buffers
                    .iter()
                    .find(|(b, _)| state.busy.get(&b.id()) == Some(&false))
                {
                    break b;
                }
                dispatch(&mut queue, &mut state)?;
            };
            frame.draw(&next.1, n)?;
            present(&mut state, &next.0);
        }
        if args.presentation {
            // The last frame's feedback arrives with the next refresh.
            while state.presented + state.discarded < args.frames + 1
                && start.elapsed() < Duration::from_secs(30)
            {
                dispatch(&mut queue, &mut state)?;
            }
            say(&format!(
                "presented {} discarded {}",
                state.presented, state.discarded
            ));
        }
        let seconds = start.elapsed().as_secs_f64();
        say(&format!(
            "frames {} seconds {seconds:.3} fps {:.1}",
            args.frames,
            args.frames as f64 / seconds
        ));
        return Ok(());
    }

    let start = Instant::now();
    while !state.closed
        && (args.exit_after == 0 || start.elapsed() < Duration::from_millis(args.exit_after))
    {
        conn.flush().map_err(|e| e.to_string())?;
        if let Some(guard) = queue.prepare_read() {
            let fd = guard.connection_fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            if rustix::event::poll(&mut fds, Some(&timeout)).map_err(|e| e.to_string())? > 0 {
                guard.read().map_err(|e| e.to_string())?;
            }
        }
        queue.dispatch_pending(&mut state).map_err(report)?;
    }
    Ok(())
}

fn report(err: DispatchError) -> String {
    match err {
        DispatchError::Backend(wayland_client::backend::WaylandError::Protocol(p)) => {
            let line = format!(
                "protocol error: {}@{}: code {}: {}",
                p.object_interface, p.object_id, p.code, p.message
            );
            say(&line);
            line
        }
        other => other.to_string(),
    }
}

fn roundtrip(
    queue: &mut wayland_client::EventQueue<State>,
    state: &mut State,
) -> Result<(), String> {
    queue.roundtrip(state).map(|_| ()).map_err(report)
}

fn dispatch(
    queue: &mut wayland_client::EventQueue<State>,
    state: &mut State,
) -> Result<(), String> {
    queue.blocking_dispatch(state).map(|_| ()).map_err(report)
}

/// The pixels of one frame, built from three row templates (checker rows, top rows, bottom
/// rows) so that animation stays cheap at large sizes.
struct Frame {
    width: u32,
    height: u32,
    offset: u32,
    stride: u32,
    bytes: Vec<u8>,
    /// Only this rectangle scrolls (`--damage`).
    animated: Option<[u32; 4]>,
}

impl Frame {
    fn new(width: u32, height: u32, offset: u32, stride: u32, size: usize) -> Frame {
        Frame {
            width,
            height,
            offset,
            stride,
            bytes: vec![PADDING_BYTE; size],
            animated: None,
        }
    }

    /// Draws the pattern scrolled left by `shift` columns and writes the whole buffer.
    fn draw(&mut self, file: &std::fs::File, shift: u64) -> Result<(), String> {
        let (w, h) = (self.width, self.height);
        let animated = self.animated;
        let row = |y: u32| -> Vec<u8> {
            (0..w)
                .flat_map(|x| {
                    let moves = animated.is_none_or(|[ax, _, aw, _]| x >= ax && x < ax + aw);
                    let shift = if moves { shift } else { 0 };
                    let sx = ((u64::from(x) + shift) % u64::from(w.max(1))) as u32;
                    let [r, g, b] = pattern(sx, y, w, h);
                    [b, g, r, 0xff]
                })
                .collect()
        };
        let templates: Vec<Vec<u8>> = (0..8.min(h))
            .map(row)
            .chain([row(8.min(h.saturating_sub(1))), row(h / 2)])
            .collect();
        for y in 0..h {
            let template = if y < 8 {
                &templates[y as usize]
            } else if y < h / 2 {
                &templates[templates.len() - 2]
            } else {
                &templates[templates.len() - 1]
            };
            let at = self.offset as usize + y as usize * self.stride as usize;
            self.bytes[at..at + template.len()].copy_from_slice(template);
        }
        file.write_all_at(&self.bytes, 0)
            .map_err(|e| format!("writing buffer: {e}"))
    }
}

fn memfd(size: usize) -> Result<std::fs::File, String> {
    let fd = rustix::fs::memfd_create("crossway-test-client", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| format!("memfd_create: {e}"))?;
    let file = std::fs::File::from(fd);
    file.set_len(size as u64)
        .map_err(|e| format!("sizing buffer: {e}"))?;
    Ok(file)
}

/// Creates one dmabuf buffer over `file` (or sends the bad parameters asked for and returns
/// `None` after reporting the answer).
fn dmabuf_buffer(
    args: &Args,
    queue: &mut wayland_client::EventQueue<State>,
    state: &mut State,
    dmabuf: &dmabuf::ZwpLinuxDmabufV1,
    file: &std::fs::File,
    mut modifier: u64,
    size: usize,
) -> Result<Option<wl_buffer::WlBuffer>, String> {
    let qh = queue.handle();
    let (width, height) = (args.width, args.height);
    let mut format = XRGB8888;
    let mut plane_offset = args.offset;
    let mut plane_stride = args.stride.unwrap_or(width * 4 + 64);
    match args.bad {
        Some(Bad::SmallStride) => plane_stride = width * 4 - 4,
        Some(Bad::UnknownFormat) => format = u32::from_le_bytes(*b"ZZ99"),
        Some(Bad::UnadvertisedModifier) => modifier = 0x00ff_0000_0000_0042,
        Some(Bad::OffsetPastEnd) => plane_offset = size as u32 + 4096,
        _ => {}
    }
    let params = dmabuf.create_params(&qh, ());
    let (hi, lo) = ((modifier >> 32) as u32, modifier as u32);
    params.add(file.as_fd(), 0, plane_offset, plane_stride, hi, lo);
    if args.bad == Some(Bad::Overlap) {
        params.add(file.as_fd(), 1, plane_offset, plane_stride, hi, lo);
    }
    let flags = params::Flags::empty();
    if args.immed {
        let buffer = params.create_immed(width as i32, height as i32, format, flags, &qh, ());
        roundtrip(queue, state)?;
        return Ok(Some(buffer));
    }
    state.created = None;
    state.failed = false;
    params.create(width as i32, height as i32, format, flags);
    while state.created.is_none() && !state.failed {
        dispatch(queue, state)?;
    }
    if state.created.is_none() {
        say("failed");
    }
    Ok(state.created.take())
}

impl Dispatch<wl_registry::WlRegistry, ()> for State {
    fn event(
        state: &mut Self,
        registry: &wl_registry::WlRegistry,
        event: wl_registry::Event,
        _: &(),
        _: &Connection,
        qh: &QueueHandle<Self>,
    ) {
        if let wl_registry::Event::Global {
            name,
            interface,
            version,
        } = event
        {
            match interface.as_str() {
                "wl_compositor" => {
                    state.compositor = Some(registry.bind(name, version.min(4), qh, ()))
                }
                "xdg_wm_base" => state.wm_base = Some(registry.bind(name, 1, qh, ())),
                "wl_shm" => state.shm = Some(registry.bind(name, 1, qh, ())),
                "wp_presentation" => state.presentation = Some(registry.bind(name, 1, qh, ())),
                "zwp_linux_dmabuf_v1" => {
                    let v = version.min(4);
                    state.dmabuf = Some((registry.bind(name, v, qh, ()), v));
                }
                _ => {}
            }
        }
    }
}

impl Dispatch<feedback::ZwpLinuxDmabufFeedbackV1, ()> for State {
    fn event(
        state: &mut Self,
        _: &feedback::ZwpLinuxDmabufFeedbackV1,
        event: feedback::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            feedback::Event::FormatTable { fd, size } => {
                let mut bytes = vec![0; size as usize];
                let file = std::fs::File::from(fd);
                let ok = std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).is_ok();
                state.table = ok.then(|| FormatTable::from_bytes(&bytes).ok()).flatten();
            }
            feedback::Event::MainDevice { device } => {
                say(&format!("feedback main_device {}", hex(&device)));
            }
            feedback::Event::TrancheFlags { flags } => {
                state.tranche_flags = match flags {
                    WEnum::Value(f) => f.bits(),
                    WEnum::Unknown(v) => v,
                }
            }
            feedback::Event::TrancheFormats { indices } => {
                let pairs = state
                    .table
                    .as_ref()
                    .and_then(|t| parse_tranche_indices(&indices, t).ok().map(|ix| (t, ix)))
                    .map(|(t, ix)| {
                        ix.iter()
                            .filter_map(|i| t.get(*i).ok())
                            .map(|p| (p.format, p.modifier))
                            .collect()
                    })
                    .unwrap_or_default();
                state.tranches.push((state.tranche_flags, pairs));
            }
            feedback::Event::TrancheDone => {
                if let Some((flags, pairs)) = state.tranches.last() {
                    let list: Vec<_> = pairs
                        .iter()
                        .map(|(f, m)| {
                            format!("{}:{m:#x}", String::from_utf8_lossy(&f.to_le_bytes()))
                        })
                        .collect();
                    say(&format!(
                        "feedback tranche flags {flags} formats {}",
                        list.join(",")
                    ));
                }
                state.tranche_flags = 0;
            }
            feedback::Event::Done => state.feedback_done = true,
            _ => {}
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut value = [0u8; 8];
    let n = bytes.len().min(8);
    value[..n].copy_from_slice(&bytes[..n]);
    format!("{:#x}", u64::from_ne_bytes(value))
}

impl Dispatch<params::ZwpLinuxBufferParamsV1, ()> for State {
    fn event(
        state: &mut Self,
        _: &params::ZwpLinuxBufferParamsV1,
        event: params::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            params::Event::Created { buffer } => state.created = Some(buffer),
            params::Event::Failed => state.failed = true,
            _ => {}
        }
    }

    event_created_child!(State, params::ZwpLinuxBufferParamsV1, [
        params::EVT_CREATED_OPCODE => (wl_buffer::WlBuffer, ()),
    ]);
}

impl Dispatch<xdg_wm_base::XdgWmBase, ()> for State {
    fn event(
        _: &mut Self,
        base: &xdg_wm_base::XdgWmBase,
        event: xdg_wm_base::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_wm_base::Event::Ping { serial } = event {
            base.pong(serial);
        }
    }
}

impl Dispatch<xdg_surface::XdgSurface, ()> for State {
    fn event(
        state: &mut Self,
        xdg: &xdg_surface::XdgSurface,
        event: xdg_surface::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let xdg_surface::Event::Configure { serial } = event {
            xdg.ack_configure(serial);
            if state.configured.is_none() {
                state.configured = Some((0, 0));
            }
        }
    }
}

impl Dispatch<xdg_toplevel::XdgToplevel, ()> for State {
    fn event(
        state: &mut Self,
        _: &xdg_toplevel::XdgToplevel,
        event: xdg_toplevel::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            xdg_toplevel::Event::Configure { width, height, .. } => {
                say(&format!("configured {width}x{height}"))
            }
            xdg_toplevel::Event::Close => state.closed = true,
            _ => {}
        }
    }
}

delegate_noop!(State: ignore wl_compositor::WlCompositor);
delegate_noop!(State: ignore wl_surface::WlSurface);
delegate_noop!(State: ignore wl_shm::WlShm);
delegate_noop!(State: ignore wp_presentation::WpPresentation);

impl Dispatch<wp_presentation_feedback::WpPresentationFeedback, ()> for State {
    fn event(
        state: &mut Self,
        _: &wp_presentation_feedback::WpPresentationFeedback,
        event: wp_presentation_feedback::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        match event {
            wp_presentation_feedback::Event::Presented { .. } => state.presented += 1,
            wp_presentation_feedback::Event::Discarded => state.discarded += 1,
            _ => {}
        }
    }
}
delegate_noop!(State: ignore wl_shm_pool::WlShmPool);

impl Dispatch<wl_buffer::WlBuffer, ()> for State {
    fn event(
        state: &mut Self,
        buffer: &wl_buffer::WlBuffer,
        event: wl_buffer::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let wl_buffer::Event::Release = event {
            state.busy.insert(buffer.id(), false);
        }
    }
}

impl Dispatch<wl_callback::WlCallback, ()> for State {
    fn event(
        state: &mut Self,
        _: &wl_callback::WlCallback,
        event: wl_callback::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        if let wl_callback::Event::Done { .. } = event {
            state.frame_done = true;
        }
    }
}
delegate_noop!(State: ignore dmabuf::ZwpLinuxDmabufV1);
