//! `crossway-test-client`: a Wayland client that shows a window with a known pattern, in a
//! memfd-backed dmabuf (LINEAR, optional plane offset, padded stride) or a `wl_shm` buffer, so
//! tests can check that the exact pixels reach the screen. With `--frames N` it animates
//! (the pattern scrolls one column per frame, full damage, driven by frame callbacks, two
//! buffers) and reports its frame rate. With `--bad` it sends deliberately wrong dmabuf
//! parameters (or truncates a buffer the compositor shows) and prints what the compositor
//! answered. Its memfds are sealed against shrinking (`F_SEAL_SHRINK`), as a dmabuf's size is
//! fixed, except for `--bad truncate`.
//!
//! With a `zwp_linux_dmabuf_v1` of version 4 or more it reads the default feedback, prints its
//! tranches, and uses the first advertised modifier for the format that it can produce (only
//! LINEAR, from a memfd).
//!
//! With `--buffer virtgpu` the buffers are virtio-gpu guest blobs (mappable, shareable) of the
//! device a guest agent uses (`CROSSWAY_VIRTGPU`, else the first virtio_gpu render node): the
//! client draws through the blob's mapping and passes its PRIME export as a LINEAR dmabuf, so
//! a guest relay can name the resource instead of copying its bytes.
//!
//! Hooks for scenarios: `--still` animates without scrolling (every frame is pattern A, fully
//! damaged); `--change-after PATH`, once the frames are done, waits for PATH, draws pattern B
//! (pattern A turned half a turn) into the buffer on screen through the same memory and
//! commits it again; `--hold-until PATH` keeps the window until PATH exists; `--measure-pid
//! PID` reads PID's CPU time (utime + stime) when the window is shown and after the last
//! frame.
//!
//! Output lines (stdout), for tests: `feedback tranche ...`, `modifier 0x...`, `created`,
//! `failed`, `protocol error: ...`, `configured WxH`, `shown`, `frames N seconds S fps F`,
//! `cpu PID ticks T frames N wall_ms W` (ticks of `getconf CLK_TCK`), `changed`, `released`.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use crossway_agent::device::{AgentDevice, AgentMapping, DeviceSpec};
use crossway_protocols::dmabuf::{FormatTable, parse_tranche_indices};
// Picture A, which the scenarios check against (one definition for both sides).
use crossway_protocols::virtgpu::{
    CROSS_DOMAIN_CONTEXT_PARAMS, VIRTGPU_BLOB_FLAG_USE_MAPPABLE, VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
    VIRTGPU_BLOB_MEM_GUEST, VirtGpu, VirtGpuMapping, drm_virtgpu_resource_create_blob,
};
use crossway_tests::pixels::test_client_rgb as pattern;
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
    /// A virtio-gpu guest blob, drawn through its mapping, passed as its PRIME dmabuf (LINEAR).
    Virtgpu,
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
    /// A memfd without `F_SEAL_SHRINK` shown once, then truncated to 0 bytes and attached and
    /// committed again (a compositor that maps it unguarded dies of `SIGBUS`).
    Truncate,
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
    /// Window app id.
    #[arg(long, default_value = "crossway.test-client")]
    app_id: String,
    /// Animate without scrolling: every frame draws pattern A again (full damage).
    #[arg(long)]
    still: bool,
    /// Once the frames are done, wait for this path, then draw pattern B into the buffer on
    /// screen through the same memory and commit it again.
    #[arg(long, value_name = "PATH")]
    change_after: Option<PathBuf>,
    /// Keep the window until this path exists.
    #[arg(long, value_name = "PATH")]
    hold_until: Option<PathBuf>,
    /// Report this process's CPU time over the frames after the first.
    #[arg(long, value_name = "PID")]
    measure_pid: Option<u32>,
    /// Once shown, time this many `wl_display.sync` round trips and report their median and
    /// 99th percentile.
    #[arg(long, value_name = "N", default_value_t = 0)]
    sync_rtt: u32,
    /// Make each wl_shm pool half the buffer's size, then grow it with `wl_shm_pool.resize`
    /// before the buffer is made (as libwayland-cursor does as it loads more cursors).
    #[arg(long)]
    grow_pool: bool,
}

impl Args {
    /// Bytes per row of a buffer.
    fn stride(&self) -> u32 {
        self.stride.unwrap_or(self.width * 4 + 64)
    }
}

fn parse_rect(s: &str) -> Result<[u32; 4], String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|n| n.trim().parse::<u32>().map_err(|e| format!("{n:?}: {e}")))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| "expected X,Y,W,H".to_owned())
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
    configured: bool,
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
    if args.buffer != BufferKind::Shm
        && let Some((dmabuf, version)) = state.dmabuf.clone()
        && version >= 4
    {
        dmabuf.get_default_feedback(&qh, ());
        while !state.feedback_done {
            dispatch(&mut queue, &mut state)?;
        }
        // Memfds and mapped guest blobs can only be LINEAR: the compositor must offer it for
        // XRGB8888.
        let offered = state.tranches.iter().flat_map(|(_, pairs)| pairs);
        if !offered.into_iter().any(|&p| p == (XRGB8888, LINEAR)) {
            return Err("no LINEAR XRGB8888 offered".into());
        }
    }

    let (width, height) = (args.width, args.height);
    let stride = args.stride();
    let size = args.offset as usize + stride as usize * height as usize;
    let mut frame = Frame::new(width, height, args.offset, stride, size);
    frame.animated = args.damage;
    // Guest blobs live as long as the device file that made them.
    let mut device = match args.buffer {
        BufferKind::Virtgpu => Some(open_device()?),
        _ => None,
    };

    let mut buffers = Vec::new();
    for i in 0..2 {
        let storage = match device.as_mut() {
            Some(dev) => guest_blob(dev, size)?,
            None => Storage::File(memfd(size, args.bad != Some(Bad::Truncate))?),
        };
        frame.draw(&storage, 0, Picture::A)?;
        let buffer = match args.buffer {
            BufferKind::Shm => {
                let shm = state.shm.clone().ok_or("compositor lacks wl_shm")?;
                let pool = if args.grow_pool {
                    let pool = shm.create_pool(storage.fd(), (size / 2) as i32, &qh, ());
                    pool.resize(size as i32);
                    pool
                } else {
                    shm.create_pool(storage.fd(), size as i32, &qh, ())
                };
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
            BufferKind::Dmabuf | BufferKind::Virtgpu => {
                let (dmabuf, _) = state
                    .dmabuf
                    .clone()
                    .ok_or("compositor lacks zwp_linux_dmabuf_v1")?;
                if i == 0 {
                    say(&format!("modifier {LINEAR:#018x}"));
                }
                match dmabuf_buffer(args, &mut queue, &mut state, &dmabuf, storage.fd(), size)? {
                    Some(buffer) => buffer,
                    None => return Ok(()),
                }
            }
        };
        say("created");
        state.busy.insert(buffer.id(), false);
        buffers.push((buffer, storage));
        if args.frames == 0 {
            break;
        }
    }

    let surface = compositor.create_surface(&qh, ());
    let xdg = wm_base.get_xdg_surface(&surface, &qh, ());
    let toplevel = xdg.get_toplevel(&qh, ());
    toplevel.set_title(args.title.clone());
    toplevel.set_app_id(args.app_id.clone());
    surface.commit();
    while !state.configured {
        dispatch(&mut queue, &mut state)?;
    }
    if args.presentation && state.presentation.is_none() {
        return Err("compositor lacks wp_presentation".into());
    }
    let feedback = args
        .presentation
        .then(|| state.presentation.clone())
        .flatten();
    let present = |state: &mut State, buffer: &wl_buffer::WlBuffer, full: bool| {
        if let Some(presentation) = &feedback {
            presentation.feedback(&surface, &qh, ());
        }
        surface.attach(Some(buffer), 0, 0);
        match (args.damage, state.shown && !full) {
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
    present(&mut state, &buffers[0].0, true);
    roundtrip(&mut queue, &mut state)?;
    state.shown = true;
    say("shown");
    if args.sync_rtt > 0 {
        let mut samples = Vec::with_capacity(args.sync_rtt as usize);
        for _ in 0..args.sync_rtt {
            let t = Instant::now();
            roundtrip(&mut queue, &mut state)?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        say(&format!(
            "sync-rtt samples {} p50_us {:.0} p99_us {:.0}",
            samples.len(),
            at(0.5),
            at(0.99)
        ));
    }
    if args.bad == Some(Bad::Truncate) {
        if let Storage::File(file) = &buffers[0].1 {
            file.set_len(0).map_err(|e| format!("truncating: {e}"))?;
        }
        say("truncated");
        present(&mut state, &buffers[0].0, true);
        roundtrip(&mut queue, &mut state)?;
        say("survived");
        return Ok(());
    }
    let mut on_screen = 0;

    if args.frames > 0 {
        let start = Instant::now();
        let cpu_start = args.measure_pid.map(cpu_ticks).transpose()?;
        for n in 1..=args.frames {
            while !state.frame_done {
                dispatch(&mut queue, &mut state)?;
            }
            // A buffer the compositor has released; wait for one if both are in use.
            let next = loop {
                if let Some(i) = buffers
                    .iter()
                    .position(|(b, _)| state.busy.get(&b.id()) == Some(&false))
                {
                    break i;
                }
                dispatch(&mut queue, &mut state)?;
            };
            let shift = if args.still { 0 } else { n };
            frame.draw(&buffers[next].1, shift, Picture::A)?;
            present(&mut state, &buffers[next].0, false);
            on_screen = next;
        }
        // The last frame counts once the compositor has used it.
        while !state.frame_done {
            dispatch(&mut queue, &mut state)?;
        }
        if let (Some(pid), Some(ticks)) = (args.measure_pid, cpu_start) {
            say(&format!(
                "cpu {pid} ticks {} frames {} wall_ms {}",
                cpu_ticks(pid)?.saturating_sub(ticks),
                args.frames,
                start.elapsed().as_millis()
            ));
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
    }

    if let Some(path) = &args.change_after {
        serve_until(&conn, &mut queue, &mut state, |_| path.exists())?;
        // The same memory the compositor shows: on a zero-copy path it reads these pages.
        let (buffer, storage) = &buffers[on_screen];
        frame.draw(storage, 0, Picture::B)?;
        present(&mut state, buffer, true);
        while !state.frame_done {
            dispatch(&mut queue, &mut state)?;
        }
        say("changed");
    }
    if let Some(path) = &args.hold_until {
        serve_until(&conn, &mut queue, &mut state, |s| s.closed || path.exists())?;
        say("released");
        return Ok(());
    }
    if args.frames > 0 || args.change_after.is_some() {
        return Ok(());
    }
    let start = Instant::now();
    let exit_after = Duration::from_millis(args.exit_after);
    serve_until(&conn, &mut queue, &mut state, |s| {
        s.closed || (args.exit_after != 0 && start.elapsed() >= exit_after)
    })?;
    Ok(())
}

/// Dispatches events (answering pings, releases, frame callbacks) until `done` holds, looking
/// at it at least every 50 ms.
fn serve_until(
    conn: &Connection,
    queue: &mut wayland_client::EventQueue<State>,
    state: &mut State,
    mut done: impl FnMut(&State) -> bool,
) -> Result<(), String> {
    while !done(state) {
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
        queue.dispatch_pending(state).map_err(report)?;
    }
    Ok(())
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after
/// the command name, which may hold spaces and parentheses).
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')', field 3 (state) is index 0: utime (14) is 11, stime (15) is 12.
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .ok_or("/proc/PID/stat too short")?
            .parse()
            .map_err(|e| format!("/proc/PID/stat field {}: {e}", i + 3))
    };
    Ok(field(11)? + field(12)?)
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

/// Which picture a frame shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Picture {
    /// [`pattern`].
    A,
    /// [`pattern`] turned half a turn (the checker at the bottom right).
    B,
}

/// Where one buffer's bytes live.
enum Storage {
    /// A memfd (wl_shm pool or memfd "dmabuf").
    File(std::fs::File),
    /// A virtio-gpu guest blob: drawn through `mapping`, shared as `prime`.
    Blob {
        mapping: AgentMapping,
        prime: OwnedFd,
    },
}

impl Storage {
    /// The fd the compositor gets.
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Storage::File(f) => f.as_fd(),
            Storage::Blob { prime, .. } => prime.as_fd(),
        }
    }

    fn write(&self, bytes: &[u8]) -> Result<(), String> {
        match self {
            Storage::File(f) => f
                .write_all_at(bytes, 0)
                .map_err(|e| format!("writing buffer: {e}")),
            Storage::Blob { mapping, .. } => mapping
                .write_at(0, bytes)
                .map_err(|e| format!("writing through the blob's mapping: {e}")),
        }
    }
}

/// The pixels of one frame, built from row templates (the checker rows, a top row, a bottom
/// row) so that animation stays cheap at large sizes.
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

    /// Draws `picture` scrolled left by `shift` columns and writes the whole buffer.
    fn draw(&mut self, out: &Storage, shift: u64, picture: Picture) -> Result<(), String> {
        let (w, h) = (self.width, self.height);
        let animated = self.animated;
        // Row y of the picture is row `source(y)` of the pattern.
        let source = |y: u32| match picture {
            Picture::A => y,
            Picture::B => h - 1 - y,
        };
        let row = |y: u32| -> Vec<u8> {
            let sy = source(y);
            (0..w)
                .flat_map(|x| {
                    let moves = animated.is_none_or(|[ax, _, aw, _]| x >= ax && x < ax + aw);
                    let shift = if moves { shift } else { 0 };
                    let sx = ((u64::from(x) + shift) % u64::from(w.max(1))) as u32;
                    let sx = match picture {
                        Picture::A => sx,
                        Picture::B => w - 1 - sx,
                    };
                    let [r, g, b] = pattern(sx, sy, w, h);
                    [b, g, r, 0xff]
                })
                .collect()
        };
        // A pattern row depends only on this class of its row number.
        let class = |sy: u32| {
            if sy < 8 {
                sy
            } else if sy < h / 2 {
                8
            } else {
                9
            }
        };
        let mut templates: HashMap<u32, Vec<u8>> = HashMap::new();
        for y in 0..h {
            let template = templates.entry(class(source(y))).or_insert_with(|| row(y));
            let at = self.offset as usize + y as usize * self.stride as usize;
            self.bytes[at..at + template.len()].copy_from_slice(template);
        }
        out.write(&self.bytes)
    }
}

fn memfd(size: usize, seal: bool) -> Result<std::fs::File, String> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "crossway-test-client",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| format!("memfd_create: {e}"))?;
    let file = std::fs::File::from(fd);
    file.set_len(size as u64)
        .map_err(|e| format!("sizing buffer: {e}"))?;
    if seal {
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK)
            .map_err(|e| format!("sealing buffer: {e}"))?;
    }
    Ok(file)
}

/// The virtgpu device a guest agent would open, with a cross-domain context: a file without a
/// context gets a default one at its first blob (Linux before 2025), which a host serving only
/// cross-domain refuses.
fn open_device() -> Result<AgentDevice, String> {
    let mut dev =
        AgentDevice::open(&DeviceSpec::Auto).map_err(|e| format!("virtgpu device: {e}"))?;
    dev.context_init(&CROSS_DOMAIN_CONTEXT_PARAMS)
        .map_err(|e| format!("CONTEXT_INIT on {}: {e}", dev.describe()))?;
    say(&format!("device {}", dev.describe()));
    Ok(dev)
}

/// A mappable, shareable guest blob of at least `size` bytes, mapped, and its PRIME export.
fn guest_blob(dev: &mut AgentDevice, size: usize) -> Result<Storage, String> {
    let size = u64::try_from(size.next_multiple_of(4096)).map_err(|e| e.to_string())?;
    let handles = dev
        .resource_create_blob(&drm_virtgpu_resource_create_blob {
            blob_mem: VIRTGPU_BLOB_MEM_GUEST,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
            size,
            ..Default::default()
        })
        .map_err(|e| format!("RESOURCE_CREATE_BLOB of {size} bytes: {e}"))?;
    let mapping = dev
        .map(handles.bo_handle)
        .map_err(|e| format!("MAP of blob {}: {e}", handles.res_handle))?;
    let prime = dev
        .prime_handle_to_fd(handles.bo_handle)
        .map_err(|e| format!("PRIME export of blob {}: {e}", handles.res_handle))?;
    say(&format!("blob res {} size {size}", handles.res_handle));
    Ok(Storage::Blob { mapping, prime })
}

/// Creates one dmabuf buffer over `fd` (or sends the bad parameters asked for and returns
/// `None` after reporting the answer).
fn dmabuf_buffer(
    args: &Args,
    queue: &mut wayland_client::EventQueue<State>,
    state: &mut State,
    dmabuf: &dmabuf::ZwpLinuxDmabufV1,
    fd: BorrowedFd<'_>,
    size: usize,
) -> Result<Option<wl_buffer::WlBuffer>, String> {
    let qh = queue.handle();
    let (width, height) = (args.width, args.height);
    let mut format = XRGB8888;
    let mut modifier = LINEAR;
    let mut plane_offset = args.offset;
    let mut plane_stride = args.stride();
    match args.bad {
        Some(Bad::SmallStride) => plane_stride = width * 4 - 4,
        Some(Bad::UnknownFormat) => format = u32::from_le_bytes(*b"ZZ99"),
        Some(Bad::UnadvertisedModifier) => modifier = 0x00ff_0000_0000_0042,
        Some(Bad::OffsetPastEnd) => plane_offset = size as u32 + 4096,
        _ => {}
    }
    let params = dmabuf.create_params(&qh, ());
    let (hi, lo) = ((modifier >> 32) as u32, modifier as u32);
    params.add(fd, 0, plane_offset, plane_stride, hi, lo);
    if args.bad == Some(Bad::Overlap) {
        params.add(fd, 1, plane_offset, plane_stride, hi, lo);
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
            state.configured = true;
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
