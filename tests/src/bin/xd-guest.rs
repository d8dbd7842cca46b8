//! `crossway-xd-guest SCENARIO`: a guest program for `crossway-proxy vm` that speaks Wayland
//! over one cross-domain channel directly (`crossway_agent::channel`), with no guest
//! compositor in between. Requests are built with `wire::encode` against the protocol tables
//! and replay what real clients send (recorded in `tests/fixtures/streams/`); events are
//! framed and decoded with an `ObjectMap`, their fds arriving as host items. The device is the
//! one the agent would open (`crossway_agent::device`: `CROSSWAY_VIRTGPU`, else the first
//! virtio_gpu render node).
//!
//! Scenarios (stdout, one fact per line, for tests):
//! - `registry`: `global INTERFACE VERSION` per global, then `done`.
//! - `shm-window`: weston-simple-shm's sequence (compositor v1, xdg_wm_base v1, wl_shm v1; a
//!   toplevel; a guest blob as the wl_shm pool fd; XRGB8888 quadrants red, green, blue, white;
//!   attach + damage + frame + commit, `--frames` frames paced by `wl_callback.done`).
//!   Prints `configured`, `buffer WxH guest-blob`, `frame N`, `shown`.
//! - `host-blob-window`: the same with sommelier's buffers: GET_IMAGE_REQUIREMENTS, a HOST3D
//!   blob mapped and filled at the host's stride, used as the pool (compositor v4,
//!   `damage_buffer`). Prints `image stride S size N`, then as above with `host-blob`.
//! - `rotating-window`: a client drawing with buffer age (compositor v4): three buffers in one
//!   guest blob, used in turn; `--frames` frames of pattern A with a black ball moving down
//!   and right, each damaging (`damage_buffer`) only the balls it erased and drew; the last
//!   frame erases the ball. Prints `configured`, `buffer WxH rotating`, `frame N`, `shown`.
//! - `clipboard-paste`: wl-paste's sequence (seat, keyboard, data device, a 1x1 window for
//!   focus); on `selection` it asks for text through a read pipe and prints `pasted TEXT`
//!   (`--read-first`: waits for the text before dropping its window and syncing).
//! - `keymap`: binds wl_seat, gets the keyboard, maps the keymap blob and prints
//!   `keymap format F size N xkb_keymap`.
//! - `bad-resource`, `bad-pipe`, `bad-size`: a SEND naming a resource that does not exist, a
//!   read pipe with a wrong guessed id, a Wayland message lying about its size. Each prints
//!   `bad: WHAT HAPPENED`, then opens a fresh channel and prints `fresh: N globals` (failing
//!   unless they are the globals the first channel saw).
//!
//! With `--change-after PATH` a window scenario, once shown, waits until PATH exists, then
//! writes pattern B (pattern A turned half a turn: white, blue / green, red) through the same
//! guest mapping into the buffer on screen, commits it again and prints `changed` once that
//! frame is done: on the zero-copy path the host sees the guest's pages themselves.
//! With `--measure-pid PID` it reads PID's CPU time (utime + stime, /proc/PID/stat) after the
//! first frame and after the last, and prints `cpu PID ticks T frames F wall_ms W` (ticks of
//! `getconf CLK_TCK`; F = frames after the first).
//! With `--hold-until PATH` a window scenario keeps its window (answering pings) until PATH
//! exists, then prints `released`. Failures print `failed: ...` and exit 1.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use clap::{Parser, ValueEnum};
use crossway_agent::channel::{
    Channel, ChannelConfig, ChannelError, ChannelMessage, HostItem, HostItemKind, SendId,
};
use crossway_agent::device::{AgentDevice, DeviceSpec};
use crossway_protocols::cross_domain::{
    CROSS_DOMAIN_ID_TYPE_READ_PIPE, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB,
    CROSS_DOMAIN_MAX_IDENTIFIERS, CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA, Identifier, gbm_flags,
};
use crossway_protocols::objects::ObjectMap;
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::virtgpu::VirtGpuMapping;
use crossway_protocols::wire::{self, Arg, Message, ObjectId};
use crossway_tests::pixels::quadrants_rgb;

/// XRGB8888 as wl_shm names it.
const WL_SHM_XRGB8888: u32 = 1;
/// XRGB8888 as DRM names it.
const DRM_XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
/// How long any one wait for the host may take.
const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Registry,
    ShmWindow,
    HostBlobWindow,
    RotatingWindow,
    ClipboardPaste,
    Keymap,
    BadResource,
    BadPipe,
    BadSize,
}

/// A guest program speaking Wayland over one cross-domain channel.
#[derive(Debug, Parser)]
struct Cli {
    /// What to do.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Frames to draw in window scenarios.
    #[arg(long, default_value_t = 3)]
    frames: u32,
    /// Window width.
    #[arg(long, default_value_t = 96)]
    width: u32,
    /// Window height.
    #[arg(long, default_value_t = 64)]
    height: u32,
    /// Window title.
    #[arg(long, default_value = "xd-guest")]
    title: String,
    /// Window app id.
    #[arg(long, default_value = "xd-guest")]
    app_id: String,
    /// clipboard-paste: wait for the pipe right after `receive`, before wl-paste's
    /// destroy + sync (nothing else then wakes the host side but the pipe itself).
    #[arg(long)]
    read_first: bool,
    /// Keep the window until this path exists.
    #[arg(long, value_name = "PATH")]
    hold_until: Option<PathBuf>,
    /// Window scenarios: once shown, wait for this path, then draw pattern B into the buffer
    /// on screen through the same mapping and commit it again.
    #[arg(long, value_name = "PATH")]
    change_after: Option<PathBuf>,
    /// Window scenarios: report this process's CPU time over the frames after the first.
    #[arg(long, value_name = "PID")]
    measure_pid: Option<u32>,
}

/// Which picture a window draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Quadrants red, green / blue, white.
    A,
    /// Pattern A turned half a turn: white, blue / green, red.
    B,
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The pattern a window draws ([`quadrants_rgb`], which the scenarios check against), as
/// XRGB8888 bytes in memory order (B, G, R, X).
fn pattern(x: u32, y: u32, w: u32, h: u32) -> [u8; 4] {
    let [r, g, b] = quadrants_rgb(x, y, w, h);
    [b, g, r, 255]
}

fn draw(
    map: &impl VirtGpuMapping,
    offset: usize,
    stride: usize,
    w: u32,
    h: u32,
    which: Pattern,
) -> Result<()> {
    let mut row = vec![0u8; w as usize * 4];
    for y in 0..h {
        for x in 0..w {
            let px = match which {
                Pattern::A => pattern(x, y, w, h),
                Pattern::B => pattern(w - 1 - x, h - 1 - y, w, h),
            };
            row[x as usize * 4..][..4].copy_from_slice(&px);
        }
        map.write_at(offset + y as usize * stride, &row)?;
    }
    Ok(())
}

/// A decoded event argument, owned.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Int(i32),
    Uint(u32),
    Fixed(i32),
    Str(Option<String>),
    Obj(u32),
    NewId(u32),
    Array(Vec<u8>),
    Fd(HostItem),
}

impl Val {
    fn uint(&self) -> Result<u32> {
        match self {
            Val::Uint(v) => Ok(*v),
            Val::Int(v) => Ok(*v as u32),
            other => bail!("expected a uint, got {other:?}"),
        }
    }
    fn str(&self) -> Result<&str> {
        match self {
            Val::Str(Some(s)) => Ok(s),
            other => bail!("expected a string, got {other:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Event {
    object: u32,
    interface: &'static str,
    name: &'static str,
    args: Vec<Val>,
}

impl Event {
    fn is(&self, object: u32, name: &str) -> bool {
        self.object == object && self.name == name
    }
    fn arg(&self, i: usize) -> Result<&Val> {
        self.args
            .get(i)
            .with_context(|| format!("{}.{} has no argument {i}", self.interface, self.name))
    }
}

/// A Wayland client connection whose transport is a cross-domain channel.
struct Conn {
    ch: Channel<AgentDevice>,
    map: ObjectMap,
    next_id: u32,
    out: Vec<u8>,
    out_ids: Vec<SendId>,
    inbuf: Vec<u8>,
    items: VecDeque<HostItem>,
    events: VecDeque<Event>,
    pipes: Vec<(u32, Vec<u8>, bool)>,
    registry: u32,
    globals: Vec<(u32, String, u32)>,
}

impl Conn {
    fn open(spec: &DeviceSpec) -> Result<Conn> {
        let dev = AgentDevice::open(spec)?;
        let ch = Channel::open(dev, ChannelConfig::default()).context("opening the channel")?;
        Ok(Conn {
            ch,
            map: ObjectMap::default(),
            next_id: 1,
            out: Vec::new(),
            out_ids: Vec::new(),
            inbuf: Vec::new(),
            items: VecDeque::new(),
            events: VecDeque::new(),
            pipes: Vec::new(),
            registry: 0,
            globals: Vec::new(),
        })
    }

    fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// The id [`Conn::new_id`] will return next, for a raw message the object map never sees
    /// (a bad one): the connection goes on as if it had not been sent.
    fn peek_id(&self) -> u32 {
        self.next_id + 1
    }

    /// Queues a request by name; flushes first when the SEND would overflow, and after a
    /// message carrying a read pipe (one per SEND).
    fn request(&mut self, object: u32, name: &str, args: &[Arg<'_>], fds: &[SendId]) -> Result<()> {
        let id = ObjectId::new(object).context("null object")?;
        let obj = self.map.get(id)?;
        let (opcode, desc) = obj
            .interface
            .requests
            .iter()
            .enumerate()
            .find(|(_, d)| d.name == name)
            .with_context(|| format!("{} has no request {name}", obj.interface.name))?;
        let mut msg = Vec::new();
        wire::encode(&mut msg, id, opcode as u16, desc.signature, args)?;
        self.map
            .process_request(ProtocolTable::builtin(), &Message::parse(&msg)?, fds.len())
            .with_context(|| format!("{}.{name}", obj.interface.name))?;
        if self.out.len() + msg.len() > CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA
            || self.out_ids.len() + fds.len() > CROSS_DOMAIN_MAX_IDENTIFIERS
        {
            self.flush()?;
        }
        self.out.extend_from_slice(&msg);
        self.out_ids.extend_from_slice(fds);
        if fds.contains(&SendId::ReadPipe) {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends what is queued; returns the identifiers as sent.
    fn flush(&mut self) -> Result<Vec<Identifier>> {
        if self.out.is_empty() {
            return Ok(vec![]);
        }
        let sent = self.ch.send(&self.out, &self.out_ids)?;
        self.out.clear();
        self.out_ids.clear();
        Ok(sent)
    }

    /// Takes one channel message (waiting up to `timeout`) and decodes the events it completes.
    fn dispatch(&mut self, timeout: Duration) -> Result<bool> {
        self.flush()?;
        let Some(m) = self.ch.next_message_timeout(timeout)? else {
            return Ok(false);
        };
        match m {
            ChannelMessage::Eof => bail!("the host closed the channel"),
            ChannelMessage::Read {
                pipe,
                data,
                hang_up,
            } => match self.pipes.iter_mut().find(|p| p.0 == pipe) {
                Some(p) => {
                    p.1.extend_from_slice(&data);
                    p.2 |= hang_up;
                }
                None => self.pipes.push((pipe, data, hang_up)),
            },
            ChannelMessage::Receive { data, items } => {
                self.inbuf.extend_from_slice(&data);
                self.items.extend(items);
                self.decode_events()?;
            }
        }
        Ok(true)
    }

    fn decode_events(&mut self) -> Result<()> {
        let inbuf = std::mem::take(&mut self.inbuf);
        let mut at = 0;
        while let Some(msg) = wire::next_message(&inbuf[at..])? {
            let p = self
                .map
                .process_event(ProtocolTable::builtin(), &msg, self.items.len())?;
            let mut args = Vec::with_capacity(p.args.len());
            for a in p.args.as_slice() {
                args.push(match *a {
                    Arg::Int(v) => Val::Int(v),
                    Arg::Uint(v) => Val::Uint(v),
                    Arg::Fixed(v) => Val::Fixed(v.0),
                    Arg::Str(s) => Val::Str(s.map(|s| s.to_string_lossy().into_owned())),
                    Arg::Object(o) => Val::Obj(ObjectId::raw(o)),
                    Arg::NewId(id) => Val::NewId(id.get()),
                    Arg::Array(a) => Val::Array(a.to_vec()),
                    Arg::Fd => Val::Fd(self.items.pop_front().context("fd without item")?),
                });
            }
            let ev = Event {
                object: msg.header.object.get(),
                interface: p.interface.name,
                name: p.desc.name,
                args,
            };
            at += msg.len();
            if p.to_zombie {
                continue;
            }
            match (ev.interface, ev.name) {
                ("wl_display", "error") => bail!(
                    "protocol error on object {:?}: code {:?}: {:?}",
                    ev.args.first(),
                    ev.args.get(1),
                    ev.args.get(2)
                ),
                ("xdg_wm_base", "ping") => {
                    let serial = ev.arg(0)?.uint()?;
                    self.request(ev.object, "pong", &[Arg::Uint(serial)], &[])?;
                }
                ("wl_registry", "global") => {
                    let name = ev.arg(0)?.uint()?;
                    let iface = ev.arg(1)?.str()?.to_owned();
                    let version = ev.arg(2)?.uint()?;
                    self.globals.push((name, iface, version));
                }
                _ => self.events.push_back(ev),
            }
        }
        self.inbuf = inbuf[at..].to_vec();
        Ok(())
    }

    /// Waits for the first queued or incoming event matching `pred`, removing it.
    fn wait(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.events.iter().position(&pred) {
                return self.events.remove(i).context("event vanished");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(), "timed out waiting for {what}");
            self.dispatch(left)?;
        }
    }

    fn roundtrip(&mut self) -> Result<()> {
        let cb = self.new_id();
        self.request(1, "sync", &[Arg::NewId(oid(cb)?)], &[])?;
        self.wait("wl_display.sync", |e| e.is(cb, "done"))?;
        Ok(())
    }

    /// get_registry + sync, as every client starts.
    fn registry(&mut self) -> Result<()> {
        self.registry = self.new_id();
        self.request(1, "get_registry", &[Arg::NewId(oid(self.registry)?)], &[])?;
        self.roundtrip()
    }

    fn bind(&mut self, interface: &str, version: u32) -> Result<u32> {
        let (name, _, offered) = self
            .globals
            .iter()
            .find(|g| g.1 == interface)
            .cloned()
            .with_context(|| format!("the host offers no {interface}"))?;
        ensure!(
            offered >= version,
            "{interface} offered at v{offered}, need v{version}"
        );
        let id = self.new_id();
        let cname = CString::new(interface)?;
        self.request(
            self.registry,
            "bind",
            &[
                Arg::Uint(name),
                Arg::Str(Some(&cname)),
                Arg::Uint(version),
                Arg::NewId(oid(id)?),
            ],
            &[],
        )?;
        Ok(id)
    }

    /// Keeps serving (pongs) until `path` exists, then prints `released`.
    fn hold(&mut self, path: Option<&Path>) -> Result<()> {
        let Some(path) = path else { return Ok(()) };
        self.serve_until(path)?;
        say("released")
    }

    /// Keeps serving (pongs) until `path` exists.
    fn serve_until(&mut self, path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !path.exists() {
            ensure!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            self.dispatch(Duration::from_millis(20))?;
            self.events.clear();
        }
        Ok(())
    }
}

fn oid(id: u32) -> Result<ObjectId> {
    ObjectId::new(id).context("null id")
}

/// A toplevel, configured and acked. Returns (surface, xdg_surface, toplevel).
fn toplevel(c: &mut Conn, compositor: u32, wm: u32, cli: &Cli) -> Result<(u32, u32, u32)> {
    let surface = c.new_id();
    c.request(
        compositor,
        "create_surface",
        &[Arg::NewId(oid(surface)?)],
        &[],
    )?;
    let xdg_surface = c.new_id();
    c.request(
        wm,
        "get_xdg_surface",
        &[
            Arg::NewId(oid(xdg_surface)?),
            Arg::Object(Some(oid(surface)?)),
        ],
        &[],
    )?;
    let top = c.new_id();
    c.request(xdg_surface, "get_toplevel", &[Arg::NewId(oid(top)?)], &[])?;
    let title = CString::new(cli.title.as_str())?;
    c.request(top, "set_title", &[Arg::Str(Some(&title))], &[])?;
    let app_id = CString::new(cli.app_id.as_str())?;
    c.request(top, "set_app_id", &[Arg::Str(Some(&app_id))], &[])?;
    c.request(surface, "commit", &[], &[])?;
    let configure = c.wait("xdg_surface.configure", |e| e.is(xdg_surface, "configure"))?;
    let serial = configure.arg(0)?.uint()?;
    c.request(xdg_surface, "ack_configure", &[Arg::Uint(serial)], &[])?;
    say("configured")?;
    Ok((surface, xdg_surface, top))
}

/// A wl_buffer on a pool whose fd is the blob `res`.
#[allow(clippy::too_many_arguments)]
fn buffer(
    c: &mut Conn,
    shm: u32,
    res: u32,
    pool_size: u64,
    offset: u32,
    stride: u32,
    w: u32,
    h: u32,
) -> Result<u32> {
    let pool = blob_pool(c, shm, res, pool_size)?;
    let buf = pool_buffer(c, pool, offset, stride, w, h)?;
    c.request(pool, "destroy", &[], &[])?;
    Ok(buf)
}

/// A `wl_shm_pool` over guest blob `res`.
fn blob_pool(c: &mut Conn, shm: u32, res: u32, size: u64) -> Result<u32> {
    let pool = c.new_id();
    c.request(
        shm,
        "create_pool",
        &[
            Arg::NewId(oid(pool)?),
            Arg::Fd,
            Arg::Int(i32::try_from(size)?),
        ],
        &[SendId::Blob(res)],
    )?;
    Ok(pool)
}

/// An XRGB8888 `wl_buffer` of `pool` at `offset`.
fn pool_buffer(c: &mut Conn, pool: u32, offset: u32, stride: u32, w: u32, h: u32) -> Result<u32> {
    let buf = c.new_id();
    c.request(
        pool,
        "create_buffer",
        &[
            Arg::NewId(oid(buf)?),
            Arg::Int(offset as i32),
            Arg::Int(w as i32),
            Arg::Int(h as i32),
            Arg::Int(stride as i32),
            Arg::Uint(WL_SHM_XRGB8888),
        ],
        &[],
    )?;
    Ok(buf)
}

/// Attach `buf`, damage all of it, ask for a frame callback, commit, and wait for it.
fn commit_frame(
    c: &mut Conn,
    surface: u32,
    buf: u32,
    cli: &Cli,
    damage_buffer: bool,
) -> Result<()> {
    let damage = if damage_buffer {
        "damage_buffer"
    } else {
        "damage"
    };
    commit_damaged(c, surface, buf, damage, &[[0, 0, cli.width, cli.height]])
}

/// Attach `buf`, `damage` (the request's name) each of `rects` (x, y, width, height), ask for a
/// frame callback, commit, and wait for it.
fn commit_damaged(
    c: &mut Conn,
    surface: u32,
    buf: u32,
    damage: &str,
    rects: &[[u32; 4]],
) -> Result<()> {
    c.request(
        surface,
        "attach",
        &[Arg::Object(Some(oid(buf)?)), Arg::Int(0), Arg::Int(0)],
        &[],
    )?;
    for rect in rects {
        c.request(surface, damage, &rect.map(|v| Arg::Int(v as i32)), &[])?;
    }
    let cb = c.new_id();
    c.request(surface, "frame", &[Arg::NewId(oid(cb)?)], &[])?;
    c.request(surface, "commit", &[], &[])?;
    c.wait("frame done", |e| e.is(cb, "done"))?;
    Ok(())
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after
/// the command name, which may hold spaces and parentheses).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("/proc/PID/stat too short")?
            .parse()
            .context("/proc/PID/stat field")
    };
    // After ')', field 3 (state) is index 0: utime (14) is 11, stime (15) is 12.
    Ok(field(11)? + field(12)?)
}

/// `frames` frames over `buffers`, in turn; returns the index of the buffer left on screen.
fn present(
    c: &mut Conn,
    surface: u32,
    buffers: &[u32],
    cli: &Cli,
    damage_buffer: bool,
) -> Result<usize> {
    let mut start = None;
    for n in 0..cli.frames {
        let i = n as usize % buffers.len();
        commit_frame(c, surface, buffers[i], cli, damage_buffer)?;
        say(&format!("frame {}", n + 1))?;
        if let (0, Some(pid)) = (n, cli.measure_pid) {
            start = Some((cpu_ticks(pid)?, Instant::now()));
        }
    }
    if let (Some(pid), Some((ticks, at))) = (cli.measure_pid, start) {
        let used = cpu_ticks(pid)?.saturating_sub(ticks);
        say(&format!(
            "cpu {pid} ticks {used} frames {} wall_ms {}",
            cli.frames - 1,
            at.elapsed().as_millis()
        ))?;
    }
    say("shown")?;
    Ok((cli.frames.max(1) as usize - 1) % buffers.len())
}

/// `--change-after`: waits for the path, draws pattern B with `redraw` into the buffer on
/// screen, and commits that buffer again.
fn change(
    c: &mut Conn,
    surface: u32,
    buf: u32,
    cli: &Cli,
    damage_buffer: bool,
    redraw: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let Some(path) = cli.change_after.as_deref() else {
        return Ok(());
    };
    c.serve_until(path)?;
    redraw()?;
    commit_frame(c, surface, buf, cli, damage_buffer)?;
    say("changed")
}

/// The registry, then wl_compositor at `compositor_version`, xdg_wm_base v1 and wl_shm v1 in
/// this order, then a round trip: how both window clients start. Returns their ids.
fn window_globals(c: &mut Conn, compositor_version: u32) -> Result<(u32, u32, u32)> {
    c.registry()?;
    let compositor = c.bind("wl_compositor", compositor_version)?;
    let wm = c.bind("xdg_wm_base", 1)?;
    let shm = c.bind("wl_shm", 1)?;
    c.roundtrip()?;
    Ok((compositor, wm, shm))
}

fn shm_window(c: &mut Conn, cli: &Cli) -> Result<()> {
    // weston-simple-shm binds all three at version 1.
    let (compositor, wm, shm) = window_globals(c, 1)?;
    let formats: Vec<u32> = c
        .events
        .iter()
        .filter(|e| e.is(shm, "format"))
        .filter_map(|e| e.arg(0).ok()?.uint().ok())
        .collect();
    ensure!(
        formats.contains(&WL_SHM_XRGB8888),
        "wl_shm lacks XRGB8888: {formats:?}"
    );
    let (surface, _, _) = toplevel(c, compositor, wm, cli)?;
    let (w, h) = (cli.width, cli.height);
    let stride = w * 4;
    let size = u64::from(stride) * u64::from(h);
    // Two buffers, one pool each, as simple-shm alternates them.
    let mut buffers = Vec::new();
    let mut blobs = Vec::new();
    for _ in 0..2 {
        let blob = c.ch.create_guest_blob(size)?;
        draw(&blob.mapping, 0, stride as usize, w, h, Pattern::A)?;
        buffers.push(buffer(c, shm, blob.res_id, size, 0, stride, w, h)?);
        blobs.push(blob);
    }
    say(&format!("buffer {w}x{h} guest-blob"))?;
    let on_screen = present(c, surface, &buffers, cli, false)?;
    let mapping = &blobs[on_screen].mapping;
    change(c, surface, buffers[on_screen], cli, false, || {
        draw(mapping, 0, stride as usize, w, h, Pattern::B)
    })?;
    c.hold(cli.hold_until.as_deref())
}

fn host_blob_window(c: &mut Conn, cli: &Cli) -> Result<()> {
    // sommelier binds wl_compositor at v4 where offered (damage_buffer).
    let (compositor, wm, shm) = window_globals(c, 4)?;
    let (surface, _, _) = toplevel(c, compositor, wm, cli)?;
    let (w, h) = (cli.width, cli.height);
    let req =
        c.ch.image_requirements(w, h, DRM_XRGB8888, gbm_flags::SCANOUT | gbm_flags::LINEAR)?;
    say(&format!(
        "image stride {} size {}",
        req.strides[0], req.size
    ))?;
    ensure!(req.strides[0] >= w * 4, "stride below a row");
    let blob = c.ch.blob_for_image(&req)?;
    let redraw = |which| {
        draw(
            &blob.mapping,
            req.offsets[0] as usize,
            req.strides[0] as usize,
            w,
            h,
            which,
        )
    };
    redraw(Pattern::A)?;
    let buf = buffer(
        c,
        shm,
        blob.res_id,
        req.size,
        req.offsets[0],
        req.strides[0],
        w,
        h,
    )?;
    say(&format!("buffer {w}x{h} host-blob"))?;
    present(c, surface, &[buf], cli, true)?;
    change(c, surface, buf, cli, true, || redraw(Pattern::B))?;
    c.hold(cli.hold_until.as_deref())
}

/// Side of the ball `rotating-window` moves.
const BALL: u32 = 6;

/// Where frame `n` draws its ball (x, y): consecutive balls share no row.
fn ball(n: u32, w: u32, h: u32) -> (u32, u32) {
    ((n * 5) % (w - BALL), (n * (BALL + 2)) % (h - BALL))
}

fn rotating_window(c: &mut Conn, cli: &Cli) -> Result<()> {
    let (compositor, wm, shm) = window_globals(c, 4)?;
    let (surface, _, _) = toplevel(c, compositor, wm, cli)?;
    let (w, h) = (cli.width, cli.height);
    ensure!(w > BALL && h > BALL, "window smaller than the ball");
    let stride = w * 4;
    let one = u64::from(stride) * u64::from(h);
    let blob = c.ch.create_guest_blob(3 * one)?;
    let pool = blob_pool(c, shm, blob.res_id, 3 * one)?;
    let mut buffers = Vec::new();
    for i in 0..3 {
        let offset = u32::try_from(i * one)?;
        let buf = pool_buffer(c, pool, offset, stride, w, h)?;
        buffers.push((buf, offset as usize));
    }
    say(&format!("buffer {w}x{h} rotating"))?;
    let frames = cli.frames.max(2);
    for n in 0..frames {
        let (buf, offset) = buffers[n as usize % 3];
        // The whole picture, as a client repairing its buffer from its age would leave it.
        draw(&blob.mapping, offset, stride as usize, w, h, Pattern::A)?;
        let last = n + 1 == frames;
        if !last {
            let (x, y) = ball(n, w, h);
            let black = vec![0u8; BALL as usize * 4];
            for row in y..y + BALL {
                blob.mapping
                    .write_at(offset + (row * stride + x * 4) as usize, &black)?;
            }
        }
        let rect = |(x, y): (u32, u32)| [x, y, BALL, BALL];
        let mut damage = vec![];
        if n == 0 {
            damage.push([0, 0, w, h]);
        } else {
            damage.push(rect(ball(n - 1, w, h)));
            if !last {
                damage.push(rect(ball(n, w, h)));
            }
        }
        commit_damaged(c, surface, buf, "damage_buffer", &damage)?;
        say(&format!("frame {}", n + 1))?;
    }
    say("shown")?;
    c.hold(cli.hold_until.as_deref())
}

fn seat_keyboard(c: &mut Conn, seat_version: u32) -> Result<(u32, u32)> {
    let seat = c.bind("wl_seat", seat_version)?;
    c.roundtrip()?;
    let keyboard = c.new_id();
    c.request(seat, "get_keyboard", &[Arg::NewId(oid(keyboard)?)], &[])?;
    Ok((seat, keyboard))
}

fn keymap(c: &mut Conn) -> Result<()> {
    c.registry()?;
    let (_, keyboard) = seat_keyboard(c, 2)?;
    let ev = c.wait("wl_keyboard.keymap", |e| e.is(keyboard, "keymap"))?;
    let format = ev.arg(0)?.uint()?;
    let Val::Fd(item) = ev.arg(1)? else {
        bail!("keymap without fd")
    };
    let size = ev.arg(2)?.uint()?;
    ensure!(
        item.kind == HostItemKind::Blob,
        "keymap fd arrived as {:?}",
        item.kind
    );
    ensure!(
        item.size >= size,
        "item of {} bytes for a {size}-byte keymap",
        item.size
    );
    let blob = c.ch.blob_from_item(item)?;
    let mut head = [0u8; 10];
    blob.mapping.read_at(0, &mut head)?;
    ensure!(
        &head == b"xkb_keymap",
        "keymap starts with {:?}",
        String::from_utf8_lossy(&head)
    );
    say(&format!("keymap format {format} size {size} xkb_keymap"))?;
    c.ch.close_blob(blob)?;
    Ok(())
}

fn clipboard_paste(c: &mut Conn, cli: &Cli) -> Result<()> {
    c.registry()?;
    // wl-paste: seat v2, compositor v2, xdg_wm_base v1, wl_shm v1, data device manager v1.
    let seat = c.bind("wl_seat", 2)?;
    let compositor = c.bind("wl_compositor", 2)?;
    let wm = c.bind("xdg_wm_base", 1)?;
    let shm = c.bind("wl_shm", 1)?;
    let ddm = c.bind("wl_data_device_manager", 1)?;
    c.roundtrip()?;
    let device = c.new_id();
    c.request(
        ddm,
        "get_data_device",
        &[Arg::NewId(oid(device)?), Arg::Object(Some(oid(seat)?))],
        &[],
    )?;
    let keyboard = c.new_id();
    c.request(seat, "get_keyboard", &[Arg::NewId(oid(keyboard)?)], &[])?;
    let (surface, xdg_surface, top) = toplevel(c, compositor, wm, cli)?;
    // A 1x1 buffer so the window maps and gets keyboard focus (and with it the selection): a
    // guest blob where the host takes them in SEND, else a HOST3D blob it laid out.
    let guest_blobs = c.ch.caps().crossway.as_ref().is_some_and(|caps| {
        caps.flags & crossway_protocols::capset::CROSSWAY_FLAG_GUEST_BLOBS_IN_SEND != 0
    });
    let (blob, size, stride) = if guest_blobs {
        (c.ch.create_guest_blob(4096)?, 4, 4)
    } else {
        let req =
            c.ch.image_requirements(1, 1, u32::from_le_bytes(*b"XR24"), 0)?;
        let blob = c.ch.blob_for_image(&req)?;
        (blob, req.size, req.strides[0])
    };
    blob.mapping.write_at(0, &[0, 0, 0, 255])?;
    let buf = buffer(c, shm, blob.res_id, size, 0, stride, 1, 1)?;
    c.request(
        surface,
        "attach",
        &[Arg::Object(Some(oid(buf)?)), Arg::Int(0), Arg::Int(0)],
        &[],
    )?;
    c.request(
        surface,
        "damage",
        &[Arg::Int(0), Arg::Int(0), Arg::Int(1), Arg::Int(1)],
        &[],
    )?;
    c.request(surface, "commit", &[], &[])?;
    let sel = c.wait("wl_data_device.selection", |e| e.is(device, "selection"))?;
    let offer = match sel.arg(0)? {
        Val::Obj(0) => bail!("the host has no selection"),
        Val::Obj(o) => *o,
        other => bail!("selection {other:?}"),
    };
    let mimes: Vec<String> = c
        .events
        .iter()
        .filter(|e| e.is(offer, "offer"))
        .filter_map(|e| e.arg(0).ok()?.str().ok().map(str::to_owned))
        .collect();
    let mime = ["text/plain;charset=utf-8", "text/plain"]
        .into_iter()
        .find(|m| mimes.iter().any(|o| o == m))
        .with_context(|| format!("no text among {mimes:?}"))?;
    say(&format!("offer {mime}"))?;
    let cmime = CString::new(mime)?;
    c.request(
        offer,
        "receive",
        &[Arg::Str(Some(&cmime)), Arg::Fd],
        &[SendId::ReadPipe],
    )?;
    // wl-paste then drops its window and syncs, and only then reads the pipe.
    let drop_window = |c: &mut Conn| -> Result<()> {
        c.request(top, "destroy", &[], &[])?;
        c.request(xdg_surface, "destroy", &[], &[])?;
        c.request(surface, "destroy", &[], &[])?;
        c.roundtrip()
    };
    if !cli.read_first {
        drop_window(c)?;
    }
    let deadline = Instant::now() + TIMEOUT;
    let text = loop {
        if let Some(p) = c.pipes.iter().find(|p| p.2) {
            break String::from_utf8_lossy(&p.1).into_owned();
        }
        ensure!(
            Instant::now() < deadline,
            "no hang-up on the read pipe; pipes {:?}",
            c.pipes
                .iter()
                .map(|p| (p.0, String::from_utf8_lossy(&p.1).into_owned(), p.2))
                .collect::<Vec<_>>()
        );
        c.dispatch(Duration::from_millis(100))?;
    };
    say(&format!("pasted {text}"))?;
    if cli.read_first {
        drop_window(c)?;
    }
    c.request(offer, "destroy", &[], &[])?;
    c.roundtrip()?;
    c.ch.close_blob(blob)?;
    Ok(())
}

fn registry(c: &mut Conn) -> Result<()> {
    c.registry()?;
    for (_, iface, version) in &c.globals {
        say(&format!("global {iface} {version}"))?;
    }
    say("done")
}

/// What a bad scenario sends: the raw SEND's outcome (refused at once, or accepted by the
/// device for the host to judge).
type BadSend = fn(&mut Conn) -> Result<Result<(), ChannelError>>;

/// wl_shm.create_pool naming a resource id that no blob has.
fn bad_resource(c: &mut Conn) -> Result<Result<(), ChannelError>> {
    let shm = c.bind("wl_shm", 1)?;
    c.flush()?;
    let pool = c.peek_id();
    let mut msg = Vec::new();
    wire::encode_unchecked(
        &mut msg,
        oid(shm)?,
        0,
        &[Arg::NewId(oid(pool)?), Arg::Fd, Arg::Int(4096)],
    )?;
    Ok(c.ch.send_raw(
        &msg,
        &[ident(0x00de_ad00, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB)],
    ))
}

/// A sync carrying a read pipe whose id skips ahead of the host's counter.
fn bad_pipe(c: &mut Conn) -> Result<Result<(), ChannelError>> {
    let msg = raw_sync(c)?;
    Ok(c.ch.send_raw(&msg, &[ident(0x8000_0005, CROSS_DOMAIN_ID_TYPE_READ_PIPE)]))
}

/// wl_display.sync whose header claims 4 bytes, less than the header itself (a larger lie
/// would only make the host wait for bytes that never come).
fn bad_size(c: &mut Conn) -> Result<Result<(), ChannelError>> {
    let mut msg = raw_sync(c)?;
    msg[4..8].copy_from_slice(&(4u32 << 16).to_ne_bytes());
    Ok(c.ch.send_raw(&msg, &[]))
}

/// A wl_display.sync the object map never sees, for [`Channel::send_raw`].
fn raw_sync(c: &Conn) -> Result<Vec<u8>> {
    let mut msg = Vec::new();
    wire::encode_unchecked(
        &mut msg,
        ObjectId::DISPLAY,
        0,
        &[Arg::NewId(oid(c.peek_id())?)],
    )?;
    Ok(msg)
}

fn ident(id: u32, id_type: u32) -> Identifier {
    Identifier {
        id,
        id_type,
        size: 0,
    }
}

/// Runs `send`, then shows that a fresh channel on the same VM still serves a client: the
/// same globals as before.
fn bad(spec: &DeviceSpec, send: BadSend) -> Result<()> {
    let mut c = Conn::open(spec)?;
    c.registry()?;
    let outcome = send(&mut c)?;
    // Refused at once (the SUBMIT_3D failed), or later: an error event or the channel closed.
    let what = match outcome {
        Err(e) => format!("refused: {:#}", anyhow!(e)),
        Ok(()) => match c.roundtrip() {
            Err(e) => format!("channel: {e:#}"),
            Ok(()) => "accepted".to_owned(),
        },
    };
    say(&format!("bad: {what}"))?;
    let before = std::mem::take(&mut c.globals);
    drop(c);
    let mut fresh = Conn::open(spec)?;
    fresh.registry()?;
    let names = |g: &[(u32, String, u32)]| -> Vec<(String, u32)> {
        g.iter().map(|(_, i, v)| (i.clone(), *v)).collect()
    };
    ensure!(
        names(&fresh.globals) == names(&before),
        "a fresh channel sees other globals: {:?}, before {:?}",
        names(&fresh.globals),
        names(&before)
    );
    say(&format!("fresh: {} globals", fresh.globals.len()))
}

fn run(cli: &Cli) -> Result<()> {
    // The device the agent would open: CROSSWAY_VIRTGPU, else the first virtio_gpu node.
    let spec = DeviceSpec::Auto.resolve()?;
    let scenario: fn(&mut Conn, &Cli) -> Result<()> = match cli.scenario {
        Scenario::BadResource => return bad(&spec, bad_resource),
        Scenario::BadPipe => return bad(&spec, bad_pipe),
        Scenario::BadSize => return bad(&spec, bad_size),
        Scenario::Registry => |c, _| registry(c),
        Scenario::ShmWindow => shm_window,
        Scenario::HostBlobWindow => host_blob_window,
        Scenario::RotatingWindow => rotating_window,
        Scenario::ClipboardPaste => clipboard_paste,
        Scenario::Keymap => |c, _| keymap(c),
    };
    scenario(&mut Conn::open(&spec)?, cli)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = say(&format!("failed: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
