//! The per-message work of [`Relay`]: each whole message framed by its
//! [`MessageStream`](crossway_protocols::stream::MessageStream) is parsed with the object map,
//! checked and rewritten for its interface, and forwarded with its fds tagged by message offset.
//!
//! Unchanged messages are copied as received; only rewritten ones (tagged titles and app ids,
//! capped global versions) are encoded again. Nothing is allocated per message on the frame
//! loop: scratch buffers live in the relay.

use std::ffi::CStr;
use std::os::fd::OwnedFd;

use crossway_protocols::codes::UnexpectedArgs;
use crossway_protocols::messages::{
    CreateBuffer, CreatePool, Global, ParamsAdd, ParamsCreate, Rect4,
};
use crossway_protocols::opcodes as op;
use crossway_protocols::stream::{FdQueue, StreamError};
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::wire::{self, Arg, Message, ObjectId};

use super::fault::{Fault, display};
use super::policy::Tagging;
use super::text;
use super::{ClientStats, GuestFd, Outgoing, Relay, SyncBuffers};

/// The VM's prefixes, rendered once per client.
#[derive(Debug)]
pub(super) struct Tags {
    title_prefix: String,
    app_id_prefix: String,
    /// Sent right after `get_toplevel`, so an untitled window is tagged too.
    bare_title: String,
    bare_app_id: String,
}

impl Tags {
    pub(super) fn new(tagging: &Tagging) -> Option<Tags> {
        // A NUL could not travel in a Wayland string; the policy file refuses them already.
        let clean = |s: String| s.replace('\0', "");
        let title_prefix = clean(tagging.title_prefix()?);
        let app_id_prefix = clean(tagging.app_id_prefix()?);
        let bare_title = title_prefix.trim().to_owned();
        let bare_app_id = app_id_prefix
            .trim()
            .trim_end_matches(['.', '-', '_', ':', '/'])
            .to_owned();
        Some(Tags {
            title_prefix,
            app_id_prefix,
            bare_title,
            bare_app_id,
        })
    }
}

/// Buffers reused across messages.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    text: String,
    bytes: Vec<u8>,
}

impl Scratch {
    /// `prefix` + `value` as `push` keeps it (see [`text`]), cut to `max` bytes on a character
    /// boundary, as a C string.
    fn tagged(
        &mut self,
        prefix: &str,
        value: &[u8],
        push: fn(&mut String, &str),
        max: usize,
    ) -> Result<&CStr, Fault> {
        self.text.clear();
        self.text.push_str(prefix);
        push(&mut self.text, &String::from_utf8_lossy(value));
        let mut end = self.text.len().min(max);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        self.text.truncate(end);
        self.bytes.clear();
        self.bytes.extend_from_slice(self.text.as_bytes());
        self.bytes.push(0);
        CStr::from_bytes_with_nul(&self.bytes)
            .map_err(|e| Fault::display(display::IMPLEMENTATION, format!("tagging: {e}")))
    }
}

/// Counters of one call, added to the shared atomics once at its end.
#[derive(Debug, Default)]
struct Counts {
    messages: u64,
    frames: u64,
    copied: u64,
}

fn shape(interface: &'static str, message: &'static str) -> Fault {
    let e = UnexpectedArgs { interface, message };
    Fault::display(UnexpectedArgs::CODE, e.to_string())
}

fn is_tracked(interface: &str) -> bool {
    matches!(
        interface,
        "wl_surface" | "wl_buffer" | "wl_shm_pool" | "zwp_linux_buffer_params_v1" | "wp_viewport"
    )
}

impl Relay {
    pub(super) fn guest_input(
        &mut self,
        bytes: &[u8],
        sync: &mut dyn SyncBuffers,
        out: &mut Outgoing,
    ) -> Result<(), Fault> {
        let start = out.to_host.len();
        let mut counts = Counts::default();
        // Out of `self` while it runs, so the handler may borrow the rest of the relay.
        let mut stream = std::mem::take(&mut self.guest);
        let result = stream.for_each(bytes, |raw, msg, fds| {
            self.guest_message(raw, msg, fds, sync, out, &mut counts)
        });
        self.guest = stream;
        let s = &self.stats;
        ClientStats::add(&s.messages_to_host, counts.messages);
        ClientStats::add(&s.bytes_to_host, (out.to_host.len() - start) as u64);
        ClientStats::add(&s.frames, counts.frames);
        ClientStats::add(&s.bytes_copied, counts.copied);
        result.map_err(|e| match e {
            StreamError::Handler(fault) => fault,
            StreamError::Framing(e) => Fault::from_wire(&e),
            e @ (StreamError::PartialTooLarge { .. } | StreamError::TooManyFds { .. }) => {
                Fault::display(display::NO_MEMORY, e.to_string())
            }
        })
    }

    fn guest_message(
        &mut self,
        raw: &[u8],
        msg: &Message<'_>,
        queue: &mut FdQueue<GuestFd>,
        sync: &mut dyn SyncBuffers,
        out: &mut Outgoing,
        counts: &mut Counts,
    ) -> Result<(), Fault> {
        let sender = msg.header.object;
        let opcode = msg.header.opcode;
        let p = self
            .map
            .process_request(ProtocolTable::builtin(), msg, queue.len())
            .map_err(|e| Fault::from_object(sender, &e))?;
        // The decoder checked that the queue holds this many.
        let fds = queue.take(p.args.fd_count());
        if let Some((id, interface)) = p.created
            && is_tracked(interface.name)
        {
            self.buffers.forget(id);
        }
        let args = p.args.as_slice();
        let iface = p.interface.name;
        let name = p.desc.name;
        let limits = &self.config.limits;
        let at = out.to_host.len();
        let mut rewritten = false;
        let mut toplevel = None;
        match (iface, opcode) {
            ("wl_registry", op::REGISTRY_BIND) => {
                let [
                    Arg::Uint(global),
                    Arg::Str(Some(interface)),
                    Arg::Uint(version),
                    _,
                ] = args
                else {
                    return Err(shape(iface, name));
                };
                self.registry
                    .check_bind(sender, *global, interface, *version)?;
            }
            ("wl_shm", op::SHM_CREATE_POOL) => {
                let (Some(m), [fd]) = (CreatePool::parse(args), &fds[..]) else {
                    return Err(shape(iface, name));
                };
                self.buffers
                    .create_pool(sender, m.pool, fd, m.size, limits.max_shm_pool_bytes)?;
            }
            ("wl_shm_pool", op::POOL_CREATE_BUFFER) => {
                let m = CreateBuffer::parse(args).ok_or_else(|| shape(iface, name))?;
                let path = self.buffers.create_buffer(
                    sender, m.buffer, m.offset, m.width, m.height, m.stride, m.format,
                )?;
                self.stats.count_buffer(path);
            }
            ("wl_shm_pool", op::POOL_RESIZE) => {
                let [Arg::Int(size)] = args else {
                    return Err(shape(iface, name));
                };
                self.buffers
                    .resize_pool(sender, *size, limits.max_shm_pool_bytes)?;
            }
            ("wl_shm_pool", op::POOL_DESTROY) => self.buffers.destroy_pool(sender),
            ("wl_buffer", op::BUFFER_DESTROY) => self.buffers.destroy_buffer(sender),
            ("wl_surface", op::SURFACE_ATTACH) => {
                let [Arg::Object(buffer), _, _] = args else {
                    return Err(shape(iface, name));
                };
                self.buffers.attach(sender, *buffer);
            }
            ("wl_surface", op::SURFACE_DAMAGE | op::SURFACE_DAMAGE_BUFFER) => {
                let r = Rect4::parse(args).ok_or_else(|| shape(iface, name))?;
                if opcode == op::SURFACE_DAMAGE {
                    self.buffers
                        .damage_surface(sender, r.x, r.y, r.width, r.height);
                } else {
                    self.buffers
                        .damage_buffer(sender, r.x, r.y, r.width, r.height);
                }
            }
            ("wl_surface", op::SURFACE_SET_BUFFER_TRANSFORM | op::SURFACE_SET_BUFFER_SCALE)
            | ("wp_viewporter", op::VIEWPORTER_GET_VIEWPORT)
            | ("wp_viewport", _) => {
                super::damage::geometry(self.buffers.damage(), sender, iface, opcode, args)
                    .map_err(|()| shape(iface, name))?;
            }
            ("wl_surface", op::SURFACE_COMMIT) => {
                let done = self.buffers.commit(sender, sync)?;
                counts.frames += u64::from(done.frame);
                counts.copied += done.copied;
            }
            ("wl_surface", op::SURFACE_DESTROY) => self.buffers.destroy_surface(sender),
            ("zwp_linux_dmabuf_v1", op::DMABUF_CREATE_PARAMS) => {
                let [Arg::NewId(params)] = args else {
                    return Err(shape(iface, name));
                };
                self.buffers.create_params(*params);
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_DESTROY) => {
                self.buffers.destroy_params(sender)
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_ADD) => {
                let (Some(m), [fd]) = (ParamsAdd::parse(args), &fds[..]) else {
                    return Err(shape(iface, name));
                };
                self.buffers
                    .params_add(sender, &fd.kind, m.plane, m.offset, m.stride, m.modifier)?;
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_CREATE | op::PARAMS_CREATE_IMMED) => {
                let m = ParamsCreate::parse(args).ok_or_else(|| shape(iface, name))?;
                let path = self.buffers.params_create(
                    sender,
                    m.buffer,
                    m.width,
                    m.height,
                    m.format,
                    self.config.host_formats.as_deref(),
                )?;
                self.stats.count_buffer(path);
            }
            ("xdg_surface", op::XDG_SURFACE_GET_TOPLEVEL) => {
                let [Arg::NewId(id)] = args else {
                    return Err(shape(iface, name));
                };
                toplevel = Some(*id);
            }
            ("xdg_toplevel", op::TOPLEVEL_SET_TITLE | op::TOPLEVEL_SET_APP_ID) => {
                if let Some(tags) = &self.tags {
                    let [Arg::Str(Some(value))] = args else {
                        return Err(shape(iface, name));
                    };
                    let (prefix, push): (_, fn(&mut String, &str)) =
                        if opcode == op::TOPLEVEL_SET_TITLE {
                            (&tags.title_prefix, text::push_title)
                        } else {
                            (&tags.app_id_prefix, text::push_app_id)
                        };
                    let tagged = self.scratch.tagged(
                        prefix,
                        value.to_bytes(),
                        push,
                        limits.max_string_bytes,
                    )?;
                    encode(&mut out.to_host, sender, opcode, &[Arg::Str(Some(tagged))])?;
                    rewritten = true;
                }
            }
            _ => {}
        }
        if !rewritten {
            out.to_host.extend_from_slice(raw);
        }
        out.host_fds.extend(fds.into_iter().map(|f| (at, f.fd)));
        counts.messages += 1;
        if let (Some(id), Some(tags)) = (toplevel, &self.tags) {
            let max = limits.max_string_bytes;
            for (opcode, bare) in [
                (op::TOPLEVEL_SET_TITLE, &tags.bare_title),
                (op::TOPLEVEL_SET_APP_ID, &tags.bare_app_id),
            ] {
                let value = self.scratch.tagged(bare, b"", text::push_title, max)?;
                encode(&mut out.to_host, id, opcode, &[Arg::Str(Some(value))])?;
                counts.messages += 1;
            }
        }
        Ok(())
    }

    pub(super) fn host_input(&mut self, bytes: &[u8], out: &mut Outgoing) -> Result<(), String> {
        let start = out.to_guest.len();
        let mut messages = 0;
        let mut stream = std::mem::take(&mut self.host);
        let result = stream.for_each(bytes, |raw, msg, fds| {
            self.host_message(raw, msg, fds, out, &mut messages)
        });
        self.host = stream;
        ClientStats::add(&self.stats.messages_to_guest, messages);
        ClientStats::add(
            &self.stats.bytes_to_guest,
            (out.to_guest.len() - start) as u64,
        );
        result.map_err(|e| match e {
            StreamError::Handler(why) => why,
            e => e.to_string(),
        })
    }

    fn host_message(
        &mut self,
        raw: &[u8],
        msg: &Message<'_>,
        queue: &mut FdQueue<OwnedFd>,
        out: &mut Outgoing,
        messages: &mut u64,
    ) -> Result<(), String> {
        let sender = msg.header.object;
        let opcode = msg.header.opcode;
        let p = self
            .map
            .process_event(ProtocolTable::builtin(), msg, queue.len())
            .map_err(|e| e.to_string())?;
        let args = p.args.as_slice();
        let iface = p.interface.name;
        let at = out.to_guest.len();
        let mut forward = true;
        let mut rewritten = false;
        let mut host_error = None;
        match (iface, opcode) {
            ("wl_display", op::DISPLAY_ERROR) => {
                host_error = Some(match args {
                    [Arg::Object(object), Arg::Uint(code), Arg::Str(text)] => format!(
                        "error on object {} code {code}: {}",
                        wire::ObjectId::raw(*object),
                        text.map(CStr::to_string_lossy).unwrap_or_default()
                    ),
                    _ => "wl_display.error".to_owned(),
                });
            }
            ("wl_registry", op::REGISTRY_GLOBAL) => {
                let Some(Global {
                    name: global,
                    interface,
                    version,
                }) = Global::parse(args)
                else {
                    return Err("wl_registry.global with unexpected arguments".into());
                };
                match self.registry.on_global(
                    &self.config.policy,
                    self.config.host_formats.is_some(),
                    global,
                    interface,
                    version,
                ) {
                    None => forward = false,
                    Some(v) if v == version => {}
                    Some(v) => {
                        let capped = [Arg::Uint(global), Arg::Str(Some(interface)), Arg::Uint(v)];
                        wire::encode_unchecked(&mut out.to_guest, sender, opcode, &capped)
                            .map_err(|e| e.to_string())?;
                        rewritten = true;
                    }
                }
            }
            ("wl_registry", op::REGISTRY_GLOBAL_REMOVE) => {
                if let [Arg::Uint(global)] = args {
                    forward = self.registry.on_global_remove(*global);
                }
            }
            ("zwp_linux_buffer_params_v1", op::PARAMS_CREATED) => {
                if let [Arg::NewId(buffer)] = args {
                    self.buffers.params_created(sender, *buffer);
                }
            }
            ("wl_output", op::OUTPUT_GEOMETRY) => {
                // kwin's virtual outputs report a physical size of -1 mm; foot 1.13 dies of
                // SIGFPE on it. 0 is what other compositors send for "unknown".
                if let Some(sane) = output_geometry_without_negative_size(args) {
                    wire::encode_unchecked(&mut out.to_guest, sender, opcode, &sane)
                        .map_err(|e| e.to_string())?;
                    rewritten = true;
                }
            }
            _ => {}
        }
        let fds = queue.take(p.args.fd_count());
        if forward {
            out.guest_fds.extend(fds.into_iter().map(|fd| (at, fd)));
        }
        if forward {
            if !rewritten {
                out.to_guest.extend_from_slice(raw);
            }
            *messages += 1;
        }
        match host_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `wl_output.geometry`'s arguments with a negative physical width or height replaced by 0
/// (unknown), or `None` when they need no change.
fn output_geometry_without_negative_size<'a>(args: &[Arg<'a>]) -> Option<[Arg<'a>; 8]> {
    let [
        x,
        y,
        Arg::Int(w),
        Arg::Int(h),
        subpixel,
        make,
        model,
        transform,
    ] = args
    else {
        return None;
    };
    (*w < 0 || *h < 0).then(|| {
        [
            *x,
            *y,
            Arg::Int((*w).max(0)),
            Arg::Int((*h).max(0)),
            *subpixel,
            *make,
            *model,
            *transform,
        ]
    })
}

fn encode(out: &mut Vec<u8>, object: ObjectId, opcode: u16, args: &[Arg<'_>]) -> Result<(), Fault> {
    wire::encode_unchecked(out, object, opcode, args)
        .map(|_| ())
        .map_err(|e| Fault::display(display::IMPLEMENTATION, format!("re-encoding: {e}")))
}
