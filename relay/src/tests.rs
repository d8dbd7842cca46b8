//! Engine tests on byte streams built with `wire::encode` against the protocol tables.

#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::fs::File;
use std::sync::Arc;

use crossway_protocols::dmabuf::{FormatModifier, PreferenceList};
use crossway_protocols::tables::{Direction, ProtocolTable};
use crossway_protocols::wire::{self, Arg, Message, ObjectId};

use super::fault::{display, params, shm};
use super::*;
use crossway_protocols::opcodes as op;

mod rotating;

const ARGB8888: u32 = 0x3432_5241;
const XRGB8888: u32 = 0x3432_5258;
const NV12: u32 = 0x3231_564e;

fn id(n: u32) -> ObjectId {
    ObjectId::new(n).unwrap()
}

/// Appends one message, encoded with the signature the tables give `interface`.
fn push(
    out: &mut Vec<u8>,
    dir: Direction,
    object: u32,
    interface: &str,
    opcode: u16,
    args: &[Arg<'_>],
) {
    let iface = ProtocolTable::builtin().get(interface).unwrap();
    let list = match dir {
        Direction::Request => iface.requests,
        Direction::Event => iface.events,
    };
    wire::encode(
        out,
        id(object),
        opcode,
        list[usize::from(opcode)].signature,
        args,
    )
    .unwrap();
}

/// A client request sequence.
#[derive(Default)]
struct Requests(Vec<u8>);

impl Requests {
    fn req(mut self, object: u32, interface: &str, opcode: u16, args: &[Arg<'_>]) -> Self {
        push(
            &mut self.0,
            Direction::Request,
            object,
            interface,
            opcode,
            args,
        );
        self
    }
    /// `wl_display.get_registry`: registry 2.
    fn get_registry(self) -> Self {
        self.req(1, "wl_display", 1, &[Arg::NewId(id(2))])
    }
    /// `wl_shm.create_pool` on wl_shm 4: pool 8 of `size` bytes (its fd is sent beside).
    fn create_pool(self, size: i32) -> Self {
        self.req(
            4,
            "wl_shm",
            0,
            &[Arg::NewId(id(8)), Arg::Fd, Arg::Int(size)],
        )
    }
    /// `wl_shm_pool.create_buffer` on pool 8: buffer 9.
    fn create_buffer(self, offset: i32, width: i32, height: i32, stride: i32, format: u32) -> Self {
        self.req(
            8,
            "wl_shm_pool",
            0,
            &[
                Arg::NewId(id(9)),
                Arg::Int(offset),
                Arg::Int(width),
                Arg::Int(height),
                Arg::Int(stride),
                Arg::Uint(format),
            ],
        )
    }
    /// `wl_shm_pool.resize` of pool 8.
    fn resize_pool(self, size: i32) -> Self {
        self.req(8, "wl_shm_pool", 2, &[Arg::Int(size)])
    }
    /// `wl_surface.attach(buffer, 0, 0)` on surface 7.
    fn attach(self, buffer: u32) -> Self {
        self.req(
            7,
            "wl_surface",
            1,
            &[Arg::Object(Some(id(buffer))), Arg::Int(0), Arg::Int(0)],
        )
    }
    /// `wl_surface.damage(x, y, width, height)` on surface 7.
    fn damage(self, x: i32, y: i32, width: i32, height: i32) -> Self {
        let rect = [Arg::Int(x), Arg::Int(y), Arg::Int(width), Arg::Int(height)];
        self.req(7, "wl_surface", op::SURFACE_DAMAGE, &rect)
    }
    /// `wl_surface.set_buffer_scale(scale)` on surface 7.
    fn buffer_scale(self, scale: i32) -> Self {
        self.req(
            7,
            "wl_surface",
            op::SURFACE_SET_BUFFER_SCALE,
            &[Arg::Int(scale)],
        )
    }
    /// `wl_surface.commit` on surface 7.
    fn commit(self) -> Self {
        self.req(7, "wl_surface", 6, &[])
    }
    /// `zwp_linux_buffer_params_v1.add` on params 8 (its fd is sent beside).
    fn add(self, plane: u32, offset: u32, stride: u32, modifier: u64) -> Self {
        self.req(
            8,
            "zwp_linux_buffer_params_v1",
            1,
            &[
                Arg::Fd,
                Arg::Uint(plane),
                Arg::Uint(offset),
                Arg::Uint(stride),
                Arg::Uint((modifier >> 32) as u32),
                Arg::Uint(modifier as u32),
            ],
        )
    }
    /// `zwp_linux_buffer_params_v1.create` on params 8 (the host names the buffer).
    fn create(self, width: i32, height: i32, format: u32) -> Self {
        self.req(
            8,
            "zwp_linux_buffer_params_v1",
            2,
            &[
                Arg::Int(width),
                Arg::Int(height),
                Arg::Uint(format),
                Arg::Uint(0),
            ],
        )
    }
    /// `zwp_linux_buffer_params_v1.create_immed` on params 8: buffer 9.
    fn create_immed(self, width: i32, height: i32, format: u32) -> Self {
        self.req(
            8,
            "zwp_linux_buffer_params_v1",
            3,
            &[
                Arg::NewId(id(9)),
                Arg::Int(width),
                Arg::Int(height),
                Arg::Uint(format),
                Arg::Uint(0),
            ],
        )
    }
    fn bind(self, registry: u32, name: u32, interface: &str, version: u32, new: u32) -> Self {
        let c = CString::new(interface).unwrap();
        self.req(
            registry,
            "wl_registry",
            0,
            &[
                Arg::Uint(name),
                Arg::Str(Some(&c)),
                Arg::Uint(version),
                Arg::NewId(id(new)),
            ],
        )
    }
}

/// A host event sequence.
#[derive(Default)]
struct Events(Vec<u8>);

impl Events {
    fn ev(mut self, object: u32, interface: &str, opcode: u16, args: &[Arg<'_>]) -> Self {
        push(
            &mut self.0,
            Direction::Event,
            object,
            interface,
            opcode,
            args,
        );
        self
    }
    fn global(self, name: u32, interface: &str, version: u32) -> Self {
        let c = CString::new(interface).unwrap();
        self.ev(
            2,
            "wl_registry",
            0,
            &[Arg::Uint(name), Arg::Str(Some(&c)), Arg::Uint(version)],
        )
    }
}

/// Records refreshes and claims to have copied every byte.
#[derive(Default)]
struct RecordSync(Vec<(u32, Vec<(u64, u64)>)>);

impl SyncBuffers for RecordSync {
    fn sync(&mut self, resource: u32, ranges: &[(u64, u64)]) -> Result<u64, SyncError> {
        self.0.push((resource, ranges.to_vec()));
        Ok(ranges.iter().map(|r| r.1).sum())
    }
}

fn any_fd() -> OwnedFd {
    File::open("/dev/null").unwrap().into()
}

fn mem(size: u64, path: BufferPath, resource: Option<u32>) -> GuestFd {
    GuestFd {
        fd: any_fd(),
        kind: GuestFdKind::Memory {
            size,
            path,
            resource,
            shrinkable: false,
        },
    }
}

/// A memfd the peer can shrink (no `F_SEAL_SHRINK`), as the socket front classifies it.
fn shrinkable_mem(size: u64) -> GuestFd {
    GuestFd {
        fd: any_fd(),
        kind: GuestFdKind::Memory {
            size,
            path: BufferPath::ShmZeroCopy,
            resource: None,
            shrinkable: true,
        },
    }
}

fn formats() -> Arc<PreferenceList> {
    let mut list = PreferenceList::default();
    list.push(
        FormatModifier {
            format: XRGB8888,
            modifier: 0,
        },
        true,
    );
    list.push(
        FormatModifier {
            format: ARGB8888,
            modifier: 0,
        },
        false,
    );
    list.push(
        FormatModifier {
            format: NV12,
            modifier: 0,
        },
        false,
    );
    Arc::new(list)
}

struct Harness {
    relay: Relay,
    out: Outgoing,
    sync: RecordSync,
}

impl Harness {
    fn with(config: RelayConfig) -> Harness {
        Harness {
            relay: Relay::new(Arc::new(config), Arc::new(ClientStats::new("test"))),
            out: Outgoing::default(),
            sync: RecordSync::default(),
        }
    }

    fn config() -> RelayConfig {
        let mut c = RelayConfig {
            host_formats: Some(formats()),
            ..RelayConfig::default()
        };
        c.policy.tagging.vm_name = Some("work".into());
        c
    }

    /// A client with registry 2, the host's globals seen, and wl_compositor 3, wl_shm 4,
    /// xdg_wm_base 5, zwp_linux_dmabuf_v1 6 bound; wl_surface 7.
    fn bound() -> Harness {
        Harness::bound_with(Harness::config())
    }

    /// A client that asked for registry 2, no globals seen yet.
    fn registry(config: RelayConfig) -> Harness {
        let mut h = Harness::with(config);
        h.guest(Requests::default().get_registry().0, vec![])
            .unwrap();
        h
    }

    /// A client with registry 2 that saw [`standard_globals`].
    fn globals_seen(config: RelayConfig) -> Harness {
        let mut h = Harness::registry(config);
        h.host(standard_globals().0).unwrap();
        h
    }

    fn bound_with(config: RelayConfig) -> Harness {
        let mut h = Harness::globals_seen(config);
        let r = Requests::default()
            .bind(2, 1, "wl_compositor", 6, 3)
            .bind(2, 2, "wl_shm", 1, 4)
            .bind(2, 3, "xdg_wm_base", 6, 5)
            .bind(2, 4, "zwp_linux_dmabuf_v1", 4, 6)
            .req(3, "wl_compositor", 0, &[Arg::NewId(id(7))]);
        h.guest(r.0, vec![]).unwrap();
        h.out.clear();
        h
    }

    fn guest(&mut self, bytes: Vec<u8>, fds: Vec<GuestFd>) -> Result<(), RelayError> {
        self.relay
            .from_guest(&bytes, fds, &mut self.sync, &mut self.out)
    }

    fn host(&mut self, bytes: Vec<u8>) -> Result<(), RelayError> {
        self.relay.from_host(&bytes, vec![], &mut self.out)
    }

    /// Decoded messages of one direction of the output, as (object, opcode, args-bytes).
    fn messages(bytes: &[u8]) -> Vec<(u32, u16, Vec<u8>)> {
        let mut rest = bytes;
        let mut v = vec![];
        while let Some(m) = wire::next_message(rest).unwrap() {
            v.push((m.header.object.get(), m.header.opcode, m.body.to_vec()));
            rest = &rest[m.len()..];
        }
        assert!(rest.is_empty());
        v
    }

    /// The `wl_display.error` sent to the guest: (object, code, message).
    fn guest_error(&self) -> (u32, u32, String) {
        let display = ProtocolTable::builtin().get("wl_display").unwrap();
        let sig = display.events[0].signature;
        let (obj, opcode, body) = Harness::messages(&self.out.to_guest)
            .pop()
            .expect("no error sent");
        assert_eq!(
            (obj, opcode),
            (1, 0),
            "last message to the guest is not wl_display.error"
        );
        let args = wire::decode_args(&body, sig, 0).unwrap();
        match args.as_slice() {
            [Arg::Object(Some(o)), Arg::Uint(code), Arg::Str(Some(s))] => {
                (o.get(), *code, s.to_string_lossy().into_owned())
            }
            other => panic!("bad error event {other:?}"),
        }
    }

    fn expect_guest_error(&mut self, bytes: Vec<u8>, fds: Vec<GuestFd>) -> (u32, u32, String) {
        let e = self.guest(bytes, fds).unwrap_err();
        assert!(matches!(e, RelayError::Guest(_)), "{e:?}");
        self.guest_error()
    }

    /// Strings of the set_title / set_app_id requests sent to the host.
    fn host_strings(&self, opcode: u16) -> Vec<String> {
        Harness::messages(&self.out.to_host)
            .into_iter()
            .filter(|m| m.1 == opcode && m.0 >= 8 && m.0 < 100)
            .filter_map(|(_, _, body)| {
                let args = wire::decode_args(
                    &body,
                    &[crossway_protocols::tables::ArgumentType::Str(
                        crossway_protocols::tables::AllowNull::No,
                    )],
                    0,
                )
                .ok()?;
                match args.as_slice() {
                    [Arg::Str(Some(s))] => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                }
            })
            .collect()
    }
}

fn standard_globals() -> Events {
    Events::default()
        .global(1, "wl_compositor", 6)
        .global(2, "wl_shm", 2)
        .global(3, "xdg_wm_base", 6)
        .global(4, "zwp_linux_dmabuf_v1", 4)
        .global(5, "zwlr_screencopy_manager_v1", 3)
        .global(6, "wl_seat", 99)
        .global(7, "evil_unknown_v1", 1)
}

/// Names and versions of the globals the guest was shown.
fn advertised(bytes: &[u8]) -> Vec<(u32, String, u32)> {
    let sig = ProtocolTable::builtin().get("wl_registry").unwrap().events[0].signature;
    Harness::messages(bytes)
        .into_iter()
        .filter(|m| m.0 == 2 && m.1 == 0)
        .map(
            |(_, _, body)| match wire::decode_args(&body, sig, 0).unwrap().as_slice() {
                [Arg::Uint(n), Arg::Str(Some(s)), Arg::Uint(v)] => {
                    (*n, s.to_string_lossy().into_owned(), *v)
                }
                _ => unreachable!(),
            },
        )
        .collect()
}

// ---- framing, reassembly, fds ----

/// Pool 8 of `pool_size` bytes and buffer 9 in it: 64x16 XRGB8888, stride 256.
fn pool_and_buffer(pool_size: i32) -> Requests {
    Requests::default()
        .create_pool(pool_size)
        .create_buffer(0, 64, 16, 256, 1)
}

#[test]
fn from_guest_split_at_every_byte_is_reassembled() {
    let stream = pool_and_buffer(4096).attach(9).commit().0;
    let mut whole = Harness::bound();
    whole
        .guest(
            stream.clone(),
            vec![mem(4096, BufferPath::ShmZeroCopy, Some(1))],
        )
        .unwrap();
    assert_eq!(whole.out.to_host, stream);
    for split in 1..stream.len() {
        let mut h = Harness::bound();
        // The fd arrives with the first part, before its message is complete.
        h.guest(
            stream[..split].to_vec(),
            vec![mem(4096, BufferPath::ShmZeroCopy, Some(1))],
        )
        .unwrap();
        h.guest(stream[split..].to_vec(), vec![]).unwrap();
        assert_eq!(h.out.to_host, stream, "split at {split}");
        assert_eq!(h.out.host_fds.len(), 1);
        assert_eq!(
            h.out.host_fds[0].0, 0,
            "fd tagged with its message's offset"
        );
    }
}

#[test]
fn from_guest_fd_offsets_point_at_their_message() {
    let mut h = Harness::bound();
    let stream = Requests::default().commit().create_pool(4096).0;
    h.guest(stream, vec![mem(4096, BufferPath::ShmZeroCopy, None)])
        .unwrap();
    assert_eq!(h.out.host_fds.len(), 1);
    assert_eq!(h.out.host_fds[0].0, 8, "after the 8-byte commit");
}

#[test]
fn from_guest_leftover_fds_wait_for_the_next_message() {
    let mut h = Harness::bound();
    h.guest(vec![], vec![mem(4096, BufferPath::ShmZeroCopy, None)])
        .unwrap();
    let stream = pool_and_buffer(4096).0;
    h.guest(stream.clone(), vec![]).unwrap();
    assert_eq!(h.out.to_host, stream);
    assert_eq!(h.out.host_fds.len(), 1);
    assert_eq!(h.out.host_fds[0].0, 0, "with create_pool");
}

#[test]
fn from_guest_missing_fd_is_guest_error() {
    let mut h = Harness::bound();
    let (obj, code, msg) = h.expect_guest_error(pool_and_buffer(4096).0, vec![]);
    assert_eq!((obj, code), (1, display::INVALID_METHOD));
    assert!(msg.contains("fd"), "{msg}");
    assert!(h.out.to_host.is_empty());
}

#[test]
fn from_guest_too_many_pending_fds_is_guest_error() {
    let mut h = Harness::bound();
    let fds = (0..65).map(|_| mem(1, BufferPath::Copy, None)).collect();
    let (_, code, msg) = h.expect_guest_error(vec![], fds);
    assert_eq!(code, display::NO_MEMORY);
    assert!(msg.contains("max_pending_fds"), "{msg}");
}

#[test]
fn from_guest_partial_message_over_limit_is_guest_error() {
    let mut config = Harness::config();
    config.limits.max_pending_bytes = 64;
    let mut h = Harness::with(config);
    // A header announcing 1000 bytes.
    let mut bytes = 1u32.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&((1000u32 << 16) | 1).to_ne_bytes());
    let (_, code, msg) = h.expect_guest_error(bytes, vec![]);
    assert_eq!(code, display::NO_MEMORY);
    assert!(msg.contains("max_pending_bytes"), "{msg}");
}

#[test]
fn from_guest_after_error_keeps_failing() {
    let mut h = Harness::bound();
    h.expect_guest_error(Requests::default().req(99, "wl_surface", 6, &[]).0, vec![]);
    h.out.clear();
    assert!(h.guest(Requests::default().commit().0, vec![]).is_err());
    assert!(h.out.to_host.is_empty());
}

#[test]
fn from_host_split_events_are_reassembled() {
    let events = standard_globals().0;
    let mut whole = Harness::registry(Harness::config());
    whole.host(events.clone()).unwrap();
    assert_eq!(advertised(&whole.out.to_guest).len(), 5);
    for split in [1, 7, 8, 13, events.len() - 1] {
        let mut h = Harness::registry(Harness::config());
        h.host(events[..split].to_vec()).unwrap();
        h.host(events[split..].to_vec()).unwrap();
        assert_eq!(h.out.to_guest, whole.out.to_guest, "split at {split}");
    }
}

#[test]
fn from_host_fds_follow_their_event() {
    let mut h = Harness::bound();
    h.guest(
        Requests::default()
            .bind(2, 6, "wl_seat", 9, 8)
            .req(8, "wl_seat", 1, &[Arg::NewId(id(9))])
            .0,
        vec![],
    )
    .unwrap();
    let keymap = Events::default()
        .ev(
            9,
            "wl_keyboard",
            0,
            &[Arg::Uint(1), Arg::Fd, Arg::Uint(100)],
        )
        .0;
    let before = h.out.to_guest.len();
    h.relay
        .from_host(&keymap, vec![any_fd()], &mut h.out)
        .unwrap();
    assert_eq!(h.out.guest_fds.len(), 1);
    assert_eq!(h.out.guest_fds[0].0, before);
}

#[test]
fn from_host_display_error_is_forwarded_then_host_error() {
    let mut h = Harness::bound();
    let text = CString::new("bad buffer").unwrap();
    let ev = Events::default()
        .ev(
            1,
            "wl_display",
            0,
            &[
                Arg::Object(Some(id(7))),
                Arg::Uint(2),
                Arg::Str(Some(&text)),
            ],
        )
        .0;
    let e = h.host(ev.clone()).unwrap_err();
    assert!(matches!(e, RelayError::Host(m) if m.contains("bad buffer")));
    assert_eq!(h.out.to_guest, ev);
}

#[test]
fn from_host_malformed_event_is_host_error() {
    let mut h = Harness::bound();
    let ev = Events::default()
        .ev(99, "wl_callback", 0, &[Arg::Uint(1)])
        .0;
    assert!(matches!(h.host(ev).unwrap_err(), RelayError::Host(_)));
}

// ---- registry and policy ----

#[test]
fn registry_hides_denied_and_unknown_globals_and_caps_versions() {
    let h = Harness::globals_seen(Harness::config());
    let seen = advertised(&h.out.to_guest);
    let names: Vec<_> = seen.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(
        names,
        [
            "wl_compositor",
            "wl_shm",
            "xdg_wm_base",
            "zwp_linux_dmabuf_v1",
            "wl_seat"
        ]
    );
    let seat = seen.iter().find(|g| g.1 == "wl_seat").unwrap();
    assert_eq!(
        seat.2,
        Policy::default().cap("wl_seat").unwrap(),
        "99 capped"
    );
    let shm = seen.iter().find(|g| g.1 == "wl_shm").unwrap();
    assert_eq!(shm.2, 2, "host version below the cap is kept");
}

#[test]
fn registry_hides_dmabuf_without_host_formats() {
    let mut config = Harness::config();
    config.host_formats = None;
    let h = Harness::globals_seen(config);
    assert!(
        advertised(&h.out.to_guest)
            .iter()
            .all(|g| g.1 != "zwp_linux_dmabuf_v1")
    );
}

#[test]
fn registry_global_remove_only_for_advertised_names() {
    let mut h = Harness::bound();
    let ev = Events::default()
        .ev(2, "wl_registry", 1, &[Arg::Uint(5)])
        .ev(2, "wl_registry", 1, &[Arg::Uint(1)])
        .0;
    h.host(ev).unwrap();
    let msgs = Harness::messages(&h.out.to_guest);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].2, 1u32.to_ne_bytes());
}

#[test]
fn bind_denied_global_by_name_is_guest_error() {
    let mut h = Harness::bound();
    let (obj, code, msg) = h.expect_guest_error(
        Requests::default()
            .bind(2, 5, "zwlr_screencopy_manager_v1", 1, 8)
            .0,
        vec![],
    );
    assert_eq!((obj, code), (2, display::INVALID_OBJECT));
    assert!(msg.contains("not advertised"), "{msg}");
    assert!(h.out.to_host.is_empty());
}

#[test]
fn bind_allowed_name_with_other_interface_is_guest_error() {
    let mut h = Harness::bound();
    let (obj, code, _) = h.expect_guest_error(
        Requests::default()
            .bind(2, 1, "zwlr_screencopy_manager_v1", 1, 8)
            .0,
        vec![],
    );
    assert_eq!((obj, code), (2, display::INVALID_OBJECT));
}

#[test]
fn bind_version_above_advertised_is_guest_error() {
    let mut h = Harness::bound();
    // wl_shm was advertised at 2.
    let (_, code, msg) =
        h.expect_guest_error(Requests::default().bind(2, 2, "wl_shm", 3, 8).0, vec![]);
    assert_eq!(code, display::INVALID_OBJECT);
    assert!(msg.contains("version"), "{msg}");
}

#[test]
fn bind_unknown_interface_is_guest_error() {
    let mut h = Harness::bound();
    let (obj, code, _) = h.expect_guest_error(
        Requests::default().bind(2, 7, "evil_unknown_v1", 1, 8).0,
        vec![],
    );
    assert_eq!((obj, code), (2, display::INVALID_OBJECT));
}

// ---- object ownership, size lies, limits ----

#[test]
fn request_to_unknown_object_is_invalid_object() {
    let mut h = Harness::bound();
    let (obj, code, msg) =
        h.expect_guest_error(Requests::default().req(42, "wl_surface", 6, &[]).0, vec![]);
    assert_eq!((obj, code), (1, display::INVALID_OBJECT));
    assert!(msg.contains("42"), "{msg}");
}

#[test]
fn request_to_server_object_not_created_is_invalid_object() {
    let mut h = Harness::bound();
    let (_, code, _) = h.expect_guest_error(
        Requests::default().req(0xff00_0003, "wl_buffer", 0, &[]).0,
        vec![],
    );
    assert_eq!(code, display::INVALID_OBJECT);
}

#[test]
fn object_argument_of_wrong_interface_is_invalid_object() {
    let mut h = Harness::bound();
    // attach(buffer = the wl_compositor)
    let r = Requests::default().req(
        7,
        "wl_surface",
        1,
        &[Arg::Object(Some(id(3))), Arg::Int(0), Arg::Int(0)],
    );
    let (_, code, msg) = h.expect_guest_error(r.0, vec![]);
    assert_eq!(code, display::INVALID_OBJECT);
    assert!(msg.contains("wl_compositor"), "{msg}");
}

#[test]
fn new_id_not_next_is_invalid_method() {
    let mut h = Harness::bound();
    let (_, code, _) = h.expect_guest_error(
        Requests::default()
            .req(3, "wl_compositor", 0, &[Arg::NewId(id(50))])
            .0,
        vec![],
    );
    assert_eq!(code, display::INVALID_METHOD);
}

#[test]
fn size_larger_than_arguments_is_invalid_method() {
    let mut h = Harness::bound();
    // wl_surface.commit claiming 12 bytes.
    let mut bytes = 7u32.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&((12u32 << 16) | 6).to_ne_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let (_, code, msg) = h.expect_guest_error(bytes, vec![]);
    assert_eq!(code, display::INVALID_METHOD);
    assert!(msg.contains("left over"), "{msg}");
}

#[test]
fn size_smaller_than_arguments_is_invalid_method() {
    let mut h = Harness::bound();
    // wl_surface.attach with 8 bytes of arguments instead of 12.
    let mut bytes = 7u32.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&((16u32 << 16) | 1).to_ne_bytes());
    bytes.extend_from_slice(&[0; 8]);
    let (_, code, _) = h.expect_guest_error(bytes, vec![]);
    assert_eq!(code, display::INVALID_METHOD);
}

#[test]
fn size_unaligned_is_invalid_method() {
    let mut h = Harness::bound();
    let mut bytes = 7u32.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&((10u32 << 16) | 6).to_ne_bytes());
    let (_, code, _) = h.expect_guest_error(bytes, vec![]);
    assert_eq!(code, display::INVALID_METHOD);
}

#[test]
fn too_many_objects_is_no_memory() {
    let mut config = Harness::config();
    config.limits.max_objects = 4;
    let mut h = Harness::with(config);
    let r = Requests::default()
        .get_registry()
        .req(1, "wl_display", 0, &[Arg::NewId(id(3))])
        .req(1, "wl_display", 0, &[Arg::NewId(id(4))])
        .req(1, "wl_display", 0, &[Arg::NewId(id(5))]);
    let (_, code, _) = h.expect_guest_error(r.0, vec![]);
    assert_eq!(code, display::NO_MEMORY);
    assert_eq!(
        Harness::messages(&h.out.to_host).len(),
        3,
        "earlier requests still go out"
    );
}

#[test]
fn ids_never_reused_end_at_the_id_space_cap_with_no_memory() {
    let mut config = Harness::config();
    config.limits.max_objects = 8;
    let mut h = Harness::with(config);
    // wl_display.sync with ever higher ids, each callback done and its id deleted: never more
    // than two live objects, but ids keep growing.
    let mut n = 2;
    let err = loop {
        let r = Requests::default().req(1, "wl_display", 0, &[Arg::NewId(id(n))]);
        match h.guest(r.0, vec![]) {
            Ok(()) => {}
            Err(e) => break e,
        }
        let done = Events::default()
            .ev(n, "wl_callback", 0, &[Arg::Uint(0)])
            .ev(1, "wl_display", 1, &[Arg::Uint(n)]);
        h.host(done.0).unwrap();
        n += 1;
        assert!(n < 1000, "no cap on the id space");
    };
    assert!(
        matches!(err, RelayError::Guest(ref m) if m.contains("reused")),
        "{err:?}"
    );
    // 4 ids per allowed object, plus the null id and wl_display.
    assert_eq!(n, 34);
}

// ---- tagging ----

/// xdg_surface 8 for surface 7, xdg_toplevel 9.
fn toplevel_requests() -> Requests {
    Requests::default()
        .req(
            5,
            "xdg_wm_base",
            2,
            &[Arg::NewId(id(8)), Arg::Object(Some(id(7)))],
        )
        .req(8, "xdg_surface", 1, &[Arg::NewId(id(9))])
}

fn toplevel(h: &mut Harness) {
    h.guest(toplevel_requests().0, vec![]).unwrap();
}

#[test]
fn tagging_get_toplevel_injects_bare_title_and_app_id() {
    let mut h = Harness::bound();
    let before = h.relay.stats().snapshot().messages_to_host;
    toplevel(&mut h);
    assert_eq!(h.host_strings(op::TOPLEVEL_SET_TITLE), ["[work]"]);
    assert_eq!(h.host_strings(op::TOPLEVEL_SET_APP_ID), ["work"]);
    assert_eq!(h.relay.stats().snapshot().messages_to_host - before, 2 + 2);
}

#[test]
fn tagging_prefixes_title_and_app_id() {
    let mut h = Harness::bound();
    toplevel(&mut h);
    h.out.clear();
    let (t, a) = (
        CString::new("Editor").unwrap(),
        CString::new("org.gnome.Editor").unwrap(),
    );
    let r = Requests::default()
        .req(9, "xdg_toplevel", 2, &[Arg::Str(Some(&t))])
        .req(9, "xdg_toplevel", 3, &[Arg::Str(Some(&a))]);
    h.guest(r.0, vec![]).unwrap();
    assert_eq!(h.host_strings(op::TOPLEVEL_SET_TITLE), ["[work] Editor"]);
    assert_eq!(
        h.host_strings(op::TOPLEVEL_SET_APP_ID),
        ["work.org.gnome.Editor"]
    );
}

#[test]
fn tagging_truncates_on_a_char_boundary() {
    let mut config = Harness::config();
    config.limits.max_string_bytes = 10;
    let mut h = Harness::bound_with(config);
    toplevel(&mut h);
    h.out.clear();
    // "[work] " is 7 bytes; "éé" is 4: the second é would end at byte 11.
    let t = CString::new("ééé").unwrap();
    h.guest(
        Requests::default()
            .req(9, "xdg_toplevel", 2, &[Arg::Str(Some(&t))])
            .0,
        vec![],
    )
    .unwrap();
    assert_eq!(h.host_strings(op::TOPLEVEL_SET_TITLE), ["[work] é"]);
}

/// The title and app id the host receives for `title` and `app_id` sent by the guest.
fn tagged_strings(title: &str, app_id: &str) -> (Vec<String>, Vec<String>) {
    let mut h = Harness::bound();
    toplevel(&mut h);
    h.out.clear();
    let (t, a) = (CString::new(title).unwrap(), CString::new(app_id).unwrap());
    let r = Requests::default()
        .req(9, "xdg_toplevel", 2, &[Arg::Str(Some(&t))])
        .req(9, "xdg_toplevel", 3, &[Arg::Str(Some(&a))]);
    h.guest(r.0, vec![]).unwrap();
    (
        h.host_strings(op::TOPLEVEL_SET_TITLE),
        h.host_strings(op::TOPLEVEL_SET_APP_ID),
    )
}

#[test]
fn tagging_title_control_characters_are_dropped() {
    let (t, _) = tagged_strings("a\u{1b}[2Jb\u{7f}c\u{9b}d", "x");
    assert_eq!(t, ["[work] a[2Jbcd"]);
}

#[test]
fn tagging_title_line_breaks_are_dropped() {
    let (t, _) = tagged_strings("Mail\n[bank] Login\r\u{2028}", "x");
    assert_eq!(t, ["[work] Mail[bank] Login"]);
}

#[test]
fn tagging_title_bidi_overrides_are_dropped() {
    // U+202E would draw the rest right to left; U+2066..9 isolate; U+200F/U+061C marks.
    let (t, _) = tagged_strings("\u{202E}knab\u{202C} \u{2067}x\u{2069}\u{200F}\u{61C}", "x");
    assert_eq!(t, ["[work] knab x"]);
}

#[test]
fn tagging_app_id_is_limited_to_reverse_dns_characters() {
    let (_, a) = tagged_strings("t", "org.bank\n/\u{202E}Login app");
    assert_eq!(a, ["work.org.bankLoginapp"]);
}

#[test]
fn tagging_off_without_vm_name_forwards_as_is() {
    let mut config = Harness::config();
    config.policy.tagging.vm_name = None;
    let mut h = Harness::bound_with(config);
    h.out.clear();
    let t = CString::new("Editor").unwrap();
    let r = toplevel_requests().req(9, "xdg_toplevel", 2, &[Arg::Str(Some(&t))]);
    h.guest(r.0.clone(), vec![]).unwrap();
    assert_eq!(h.out.to_host, r.0);
}

// ---- shm ----

#[test]
fn shm_pool_over_limit_is_invalid_stride() {
    let mut config = Harness::config();
    config.limits.max_shm_pool_bytes = 1 << 20;
    let mut h = Harness::bound_with(config);
    let (obj, code, msg) = h.expect_guest_error(
        Requests::default().create_pool(2 << 20).0,
        vec![mem(4 << 20, BufferPath::ShmZeroCopy, None)],
    );
    assert_eq!((obj, code), (4, shm::INVALID_STRIDE));
    assert!(msg.contains("max_shm_pool_bytes"), "{msg}");
}

#[test]
fn shm_pool_memfd_that_can_shrink_is_accepted() {
    // Compositors guard their wl_shm mappings against SIGBUS; clients do not seal pools.
    let mut h = Harness::bound();
    let stream = pool_and_buffer(4096).0;
    h.guest(stream.clone(), vec![shrinkable_mem(4096)]).unwrap();
    assert_eq!(h.out.to_host, stream);
}

#[test]
fn shm_pool_bigger_than_fd_is_invalid_fd() {
    let mut h = Harness::bound();
    let r = Requests::default().create_pool(8192);
    let (obj, code, _) = h.expect_guest_error(r.0, vec![mem(4096, BufferPath::ShmZeroCopy, None)]);
    assert_eq!((obj, code), (4, shm::INVALID_FD));
}

#[test]
fn shm_pool_on_a_pipe_is_invalid_fd() {
    let mut h = Harness::bound();
    let r = Requests::default().create_pool(4096);
    let fd = GuestFd {
        fd: any_fd(),
        kind: GuestFdKind::Pipe,
    };
    let (_, code, _) = h.expect_guest_error(r.0, vec![fd]);
    assert_eq!(code, shm::INVALID_FD);
}

#[test]
fn shm_pool_of_negative_size_is_invalid_stride() {
    let mut h = Harness::bound();
    let r = Requests::default().create_pool(-1);
    let (_, code, _) = h.expect_guest_error(r.0, vec![mem(4096, BufferPath::ShmZeroCopy, None)]);
    assert_eq!(code, shm::INVALID_STRIDE);
}

#[test]
fn shm_resize_grows_within_fd_and_never_shrinks() {
    let mut h = Harness::bound();
    let r = Requests::default().create_pool(4096).resize_pool(8192);
    h.guest(r.0, vec![mem(8192, BufferPath::ShmZeroCopy, None)])
        .unwrap();
    let (obj, code, msg) = h.expect_guest_error(Requests::default().resize_pool(4096).0, vec![]);
    assert_eq!((obj, code), (8, shm::INVALID_STRIDE));
    assert!(msg.contains("shrink"), "{msg}");
}

#[test]
fn shm_resize_past_fd_is_invalid_fd() {
    let mut h = Harness::bound();
    let r = Requests::default().create_pool(4096).resize_pool(8193);
    let (obj, code, _) = h.expect_guest_error(r.0, vec![mem(8192, BufferPath::ShmZeroCopy, None)]);
    assert_eq!((obj, code), (8, shm::INVALID_FD));
}

#[test]
fn shm_buffer_past_pool_is_invalid_stride() {
    let mut h = Harness::bound();
    // 64x16 at stride 256 is 4096 bytes: one byte of offset runs past a 4096-byte pool.
    let r = Requests::default()
        .create_pool(4096)
        .create_buffer(4, 64, 16, 256, 1);
    let (obj, code, msg) =
        h.expect_guest_error(r.0, vec![mem(4096, BufferPath::ShmZeroCopy, None)]);
    assert_eq!((obj, code), (8, shm::INVALID_STRIDE));
    assert!(msg.contains("past the pool"), "{msg}");
    assert_eq!(
        Harness::messages(&h.out.to_host).len(),
        1,
        "the pool went out, the buffer did not"
    );
}

#[test]
fn shm_buffer_with_overflowing_geometry_is_invalid_stride() {
    let mut h = Harness::bound();
    let r = Requests::default()
        .create_pool(4096)
        .create_buffer(i32::MAX, 1, i32::MAX, i32::MAX, 1);
    let (_, code, _) = h.expect_guest_error(r.0, vec![mem(4096, BufferPath::ShmZeroCopy, None)]);
    assert_eq!(code, shm::INVALID_STRIDE);
}

#[test]
fn shm_buffer_stride_below_row_is_invalid_stride() {
    let mut h = Harness::bound();
    let r = Requests::default()
        .create_pool(4096)
        .create_buffer(0, 64, 4, 128, 0);
    let (_, code, msg) = h.expect_guest_error(r.0, vec![mem(4096, BufferPath::ShmZeroCopy, None)]);
    assert_eq!(code, shm::INVALID_STRIDE);
    assert!(msg.contains("row"), "{msg}");
}

#[test]
fn shm_buffers_are_counted_by_path() {
    let mut h = Harness::bound();
    h.guest(
        pool_and_buffer(4096).0,
        vec![mem(4096, BufferPath::Copy, Some(3))],
    )
    .unwrap();
    let s = h.relay.stats().snapshot();
    assert_eq!((s.buffers_copy, s.buffers_shm_zero_copy), (1, 0));
}

// ---- copy path ----

/// Pool 8 on a copy-path resource 11, buffer 9 at offset 4096: 64x100, stride 256.
fn copy_buffer() -> Harness {
    let mut h = Harness::bound();
    let r = Requests::default()
        .create_pool(65536)
        .create_buffer(4096, 64, 100, 256, 0);
    h.guest(r.0, vec![mem(65536, BufferPath::Copy, Some(11))])
        .unwrap();
    h.out.clear();
    h
}

fn frame(damage: &[(i32, i32)]) -> Requests {
    let mut r = Requests::default().attach(9);
    for &(y, h) in damage {
        r = r.req(
            7,
            "wl_surface",
            9,
            &[Arg::Int(0), Arg::Int(y), Arg::Int(64), Arg::Int(h)],
        );
    }
    r.commit()
}

#[test]
fn copy_path_first_commit_copies_whole_buffer() {
    let mut h = copy_buffer();
    h.guest(frame(&[(0, 1)]).0, vec![]).unwrap();
    assert_eq!(h.sync.0, [(11, vec![(4096, 25600)])]);
}

#[test]
fn copy_path_commit_copies_merged_damaged_rows_before_forwarding() {
    let mut h = copy_buffer();
    h.guest(frame(&[]).0, vec![]).unwrap();
    h.sync.0.clear();
    h.out.clear();
    h.guest(frame(&[(10, 10), (15, 15), (90, 50), (-5, 7)]).0, vec![])
        .unwrap();
    assert_eq!(
        h.sync.0,
        [(
            11,
            vec![
                (4096, 512),
                (4096 + 10 * 256, 20 * 256),
                (4096 + 90 * 256, 10 * 256)
            ]
        )]
    );
    let s = h.relay.stats().snapshot();
    assert_eq!(s.frames, 2);
    assert_eq!(s.bytes_copied, 25600 + 512 + 20 * 256 + 10 * 256);
}

#[test]
fn copy_path_surface_damage_copies_its_buffer_pixels() {
    let mut h = copy_buffer();
    h.guest(frame(&[]).0, vec![]).unwrap();
    h.sync.0.clear();
    let r = Requests::default().attach(9).damage(0, 0, 1, 1).commit();
    h.guest(r.0, vec![]).unwrap();
    assert_eq!(h.sync.0, [(11, vec![(4096, 4)])]);
}

#[test]
fn copy_path_surface_damage_follows_buffer_scale() {
    let mut h = copy_buffer();
    let r = Requests::default().buffer_scale(2).attach(9).commit();
    h.guest(r.0, vec![]).unwrap();
    h.sync.0.clear();
    let r = Requests::default().attach(9).damage(1, 1, 1, 1).commit();
    h.guest(r.0, vec![]).unwrap();
    // Surface pixel (1, 1) is buffer pixels (2..4, 2..4): 8 bytes of rows 2 and 3.
    let at = |row: u64| 4096 + row * 256 + 8;
    assert_eq!(h.sync.0, [(11, vec![(at(2), 8), (at(3), 8)])]);
}

#[test]
fn copy_path_new_buffer_scale_copies_whole_buffer() {
    let mut h = copy_buffer();
    h.guest(frame(&[]).0, vec![]).unwrap();
    h.sync.0.clear();
    let r = Requests::default().buffer_scale(2).attach(9).commit();
    h.guest(r.0, vec![]).unwrap();
    assert_eq!(h.sync.0, [(11, vec![(4096, 25600)])]);
}

#[test]
fn copy_path_commit_without_attach_is_no_frame() {
    let mut h = copy_buffer();
    h.guest(Requests::default().commit().0, vec![]).unwrap();
    assert!(h.sync.0.is_empty());
    assert_eq!(h.relay.stats().snapshot().frames, 0);
}

#[test]
fn copy_path_destroyed_buffer_is_not_synced() {
    let mut h = copy_buffer();
    let r = Requests::default()
        .attach(9)
        .req(9, "wl_buffer", 0, &[])
        .commit();
    h.guest(r.0, vec![]).unwrap();
    assert!(h.sync.0.is_empty());
}

#[test]
fn copy_path_sync_failure_is_guest_error() {
    struct Failing;
    impl SyncBuffers for Failing {
        fn sync(&mut self, _: u32, _: &[(u64, u64)]) -> Result<u64, SyncError> {
            Err(SyncError::Device("gone".into()))
        }
    }
    let mut h = copy_buffer();
    let e = h
        .relay
        .from_guest(&frame(&[]).0, vec![], &mut Failing, &mut h.out)
        .unwrap_err();
    assert!(matches!(e, RelayError::Guest(m) if m.contains("gone")));
    assert!(
        Harness::messages(&h.out.to_host).iter().all(|m| m.1 != 6),
        "commit not forwarded"
    );
}

#[test]
fn zero_copy_commit_counts_frame_without_sync() {
    let mut h = Harness::bound();
    h.guest(
        pool_and_buffer(4096).0,
        vec![mem(4096, BufferPath::ShmZeroCopy, Some(1))],
    )
    .unwrap();
    h.guest(Requests::default().attach(9).commit().0, vec![])
        .unwrap();
    assert!(h.sync.0.is_empty());
    assert_eq!(h.relay.stats().snapshot().frames, 1);
}

// ---- dmabuf ----

fn params() -> Harness {
    let mut h = Harness::bound();
    h.guest(
        Requests::default()
            .req(6, "zwp_linux_dmabuf_v1", 1, &[Arg::NewId(id(8))])
            .0,
        vec![],
    )
    .unwrap();
    h.out.clear();
    h
}

/// `zwp_linux_buffer_params_v1.add` on params 8.
fn add(plane: u32, offset: u32, stride: u32, modifier: u64) -> Requests {
    Requests::default().add(plane, offset, stride, modifier)
}

fn dmabuf(size: u64) -> GuestFd {
    mem(size, BufferPath::DmabufZeroCopy, Some(21))
}

#[test]
fn dmabuf_valid_params_are_forwarded_and_counted() {
    let mut h = params();
    let bytes = add(0, 0, 256, 0).create_immed(64, 16, XRGB8888).0;
    h.guest(bytes.clone(), vec![dmabuf(4096)]).unwrap();
    assert_eq!(h.out.to_host, bytes);
    assert_eq!(h.out.host_fds.len(), 1);
    assert_eq!(h.relay.stats().snapshot().buffers_dmabuf_zero_copy, 1);
}

#[test]
fn dmabuf_plane_past_fd_is_out_of_bounds() {
    let mut h = params();
    let bytes = add(0, 1, 256, 0).create_immed(64, 16, XRGB8888).0;
    let (obj, code, _) = h.expect_guest_error(bytes, vec![dmabuf(4096)]);
    assert_eq!((obj, code), (8, params::OUT_OF_BOUNDS));
    assert!(
        Harness::messages(&h.out.to_host).iter().all(|m| m.1 != 3),
        "create_immed not forwarded"
    );
}

#[test]
fn dmabuf_huge_offset_and_stride_do_not_overflow() {
    let mut h = params();
    let bytes = add(0, u32::MAX, u32::MAX, 0)
        .create_immed(i32::MAX, i32::MAX, XRGB8888)
        .0;
    let (_, code, _) = h.expect_guest_error(bytes, vec![dmabuf(u64::MAX)]);
    assert_eq!(code, params::OUT_OF_BOUNDS);
}

#[test]
fn dmabuf_overlapping_planes_are_out_of_bounds() {
    let mut h = params();
    // NV12 64x64: plane 0 is 64 rows of 64 bytes; plane 1 starts inside it, same resource.
    let bytes = add(0, 0, 64, 0)
        .add(1, 2048, 64, 0)
        .create_immed(64, 64, NV12)
        .0;
    let (_, code, msg) = h.expect_guest_error(bytes, vec![dmabuf(65536), dmabuf(65536)]);
    assert_eq!(code, params::OUT_OF_BOUNDS);
    assert!(msg.contains("overlap"), "{msg}");
}

#[test]
fn dmabuf_two_plane_layout_is_accepted() {
    let mut h = params();
    // NV12 64x64: 4096 bytes of luma then 32 rows of chroma.
    let bytes = add(0, 0, 64, 0)
        .add(1, 4096, 64, 0)
        .create_immed(64, 64, NV12)
        .0;
    h.guest(bytes.clone(), vec![dmabuf(6144), dmabuf(6144)])
        .unwrap();
    assert_eq!(h.out.to_host, bytes);
    let at: Vec<_> = h.out.host_fds.iter().map(|f| f.0).collect();
    assert_eq!(at, [0, 28], "each fd with its add");
    assert_eq!(h.relay.stats().snapshot().buffers_dmabuf_zero_copy, 1);
}

#[test]
fn dmabuf_plane_index_out_of_range_is_plane_idx() {
    let mut h = params();
    let (obj, code, _) = h.expect_guest_error(add(4, 0, 256, 0).0, vec![dmabuf(4096)]);
    assert_eq!((obj, code), (8, params::PLANE_IDX));
}

#[test]
fn dmabuf_plane_set_twice_is_plane_set() {
    let mut h = params();
    let bytes = add(0, 0, 256, 0).add(0, 0, 256, 0).0;
    let (_, code, _) = h.expect_guest_error(bytes, vec![dmabuf(4096), dmabuf(4096)]);
    assert_eq!(code, params::PLANE_SET);
}

#[test]
fn dmabuf_gap_in_planes_is_incomplete() {
    let mut h = params();
    let bytes = add(1, 0, 256, 0).create_immed(64, 16, XRGB8888).0;
    let (_, code, _) = h.expect_guest_error(bytes, vec![dmabuf(4096)]);
    assert_eq!(code, params::INCOMPLETE);
}

#[test]
fn dmabuf_unknown_format_or_modifier_is_invalid_format() {
    let mut h = params();
    let bytes = add(0, 0, 256, 0x0100_0000_0000_0001)
        .create_immed(64, 16, XRGB8888)
        .0;
    let (_, code, msg) = h.expect_guest_error(bytes, vec![dmabuf(4096)]);
    assert_eq!(code, params::INVALID_FORMAT);
    assert!(msg.contains("not imported"), "{msg}");
}

#[test]
fn dmabuf_zero_size_is_invalid_dimensions() {
    let mut h = params();
    let bytes = add(0, 0, 256, 0).create_immed(0, 16, XRGB8888).0;
    let (_, code, _) = h.expect_guest_error(bytes, vec![dmabuf(4096)]);
    assert_eq!(code, params::INVALID_DIMENSIONS);
}

#[test]
fn dmabuf_stride_below_row_is_out_of_bounds() {
    let mut h = params();
    let bytes = add(0, 0, 128, 0).create_immed(64, 16, XRGB8888).0;
    let (_, code, _) = h.expect_guest_error(bytes, vec![dmabuf(4096)]);
    assert_eq!(code, params::OUT_OF_BOUNDS);
}

#[test]
fn dmabuf_plane_fd_not_memory_is_refused() {
    let mut h = params();
    let fd = GuestFd {
        fd: any_fd(),
        kind: GuestFdKind::Other,
    };
    let (obj, code, _) = h.expect_guest_error(add(0, 0, 256, 0).0, vec![fd]);
    assert_eq!((obj, code), (8, params::OUT_OF_BOUNDS));
    assert!(h.out.to_host.is_empty(), "add not forwarded");
}

#[test]
fn dmabuf_plane_memfd_that_can_shrink_is_refused() {
    let mut h = params();
    let bytes = add(0, 0, 256, 0).create_immed(64, 16, XRGB8888).0;
    let (obj, code, msg) = h.expect_guest_error(bytes, vec![shrinkable_mem(4096)]);
    assert_eq!((obj, code), (8, params::OUT_OF_BOUNDS));
    assert!(msg.contains("F_SEAL_SHRINK"), "{msg}");
    assert!(h.out.to_host.is_empty(), "add not forwarded");
}

#[test]
fn dmabuf_params_used_twice_is_already_used() {
    let mut h = params();
    let bytes = add(0, 0, 256, 0).create_immed(64, 16, XRGB8888).0;
    h.guest(bytes, vec![dmabuf(4096)]).unwrap();
    let r = Requests::default().create(64, 16, XRGB8888);
    let (_, code, _) = h.expect_guest_error(r.0, vec![]);
    assert_eq!(code, params::ALREADY_USED);
}

#[test]
fn dmabuf_create_then_created_buffer_syncs_on_copy_path() {
    let mut h = params();
    let bytes = add(0, 0, 256, 0).create(64, 16, XRGB8888).0;
    h.guest(bytes, vec![mem(4096, BufferPath::Copy, Some(31))])
        .unwrap();
    h.host(
        Events::default()
            .ev(
                8,
                "zwp_linux_buffer_params_v1",
                0,
                &[Arg::NewId(id(0xff00_0000))],
            )
            .0,
    )
    .unwrap();
    h.guest(Requests::default().attach(0xff00_0000).commit().0, vec![])
        .unwrap();
    assert_eq!(h.sync.0, [(31, vec![(0, 4096)])]);
    assert_eq!(h.relay.stats().snapshot().buffers_copy, 1);
}

// ---- stats ----

#[test]
fn stats_count_messages_and_bytes_each_way() {
    let mut h = Harness::bound();
    let s0 = h.relay.stats().snapshot();
    let r = Requests::default().commit().commit();
    h.guest(r.0, vec![]).unwrap();
    let ping = Events::default().ev(5, "xdg_wm_base", 0, &[Arg::Uint(7)]);
    h.host(ping.0).unwrap();
    let s = h.relay.stats().snapshot();
    assert_eq!(s.messages_to_host - s0.messages_to_host, 2);
    assert_eq!(s.bytes_to_host - s0.bytes_to_host, 16);
    assert_eq!(s.messages_to_guest - s0.messages_to_guest, 1);
    assert_eq!(s.bytes_to_guest - s0.bytes_to_guest, 12);
    // The 7 globals of which 5 were shown, before.
    assert_eq!(s0.messages_to_guest, 5);
}

#[test]
fn stats_count_refused_guest_messages() {
    let mut h = Harness::bound();
    h.expect_guest_error(Requests::default().req(42, "wl_surface", 6, &[]).0, vec![]);
    assert_eq!(h.relay.stats().snapshot().refused, 1);
}

#[test]
fn decoded_error_event_is_well_formed() {
    let f = Fault::new(id(7), 3, "bad\0thing");
    let mut out = vec![];
    f.encode(&mut out);
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.len(), out.len());
    assert_eq!((m.header.object, m.header.opcode), (ObjectId::DISPLAY, 0));
    let sig = ProtocolTable::builtin().get("wl_display").unwrap().events[0].signature;
    match m.decode(sig, 0).unwrap().as_slice() {
        [Arg::Object(Some(o)), Arg::Uint(3), Arg::Str(Some(s))] => {
            assert_eq!(o.get(), 7);
            assert_eq!(s.to_bytes(), b"badthing", "the NUL is dropped");
        }
        other => panic!("bad error event {other:?}"),
    }
}

#[test]
fn registry_never_advertises_an_interface_unknown_to_the_tables() {
    let mut config = Harness::config();
    config.policy.globals.insert("evil_unknown_v1".into(), 1);
    let h = Harness::globals_seen(config);
    assert!(
        advertised(&h.out.to_guest)
            .iter()
            .all(|g| g.1 != "evil_unknown_v1")
    );
}

#[test]
fn policy_file_denial_hides_a_default_global() {
    let mut config = Harness::config();
    config.policy = Policy::from_toml("[globals]\nwl_seat = false\n").unwrap();
    let h = Harness::globals_seen(config);
    let seen = advertised(&h.out.to_guest);
    assert!(seen.iter().all(|g| g.1 != "wl_seat"));
    assert!(seen.iter().any(|g| g.1 == "wl_compositor"));
}

#[test]
fn shm_resize_after_the_client_grew_its_memfd_is_accepted() {
    // foot and GTK ftruncate the pool's memfd, then resize: the socket front's fds have no
    // resource behind them, so the relay looks at the fd's size again.
    let memfd = rustix::fs::memfd_create("pool", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let file = File::from(memfd);
    file.set_len(4096).unwrap();
    let fd = GuestFd {
        fd: file.try_clone().unwrap().into(),
        kind: GuestFdKind::Memory {
            size: 4096,
            path: BufferPath::ShmZeroCopy,
            resource: None,
            shrinkable: false,
        },
    };
    let mut h = Harness::bound();
    let create = Requests::default().req(
        4,
        "wl_shm",
        0,
        &[Arg::NewId(id(8)), Arg::Fd, Arg::Int(4096)],
    );
    h.guest(create.0, vec![fd]).unwrap();
    file.set_len(16384).unwrap();
    let resize = Requests::default().req(8, "wl_shm_pool", 2, &[Arg::Int(16384)]);
    h.guest(resize.0, vec![]).unwrap();
    // Past what the fd holds now is still refused.
    let too_far = Requests::default().req(8, "wl_shm_pool", 2, &[Arg::Int(16385)]);
    let (obj, code, _) = h.expect_guest_error(too_far.0, vec![]);
    assert_eq!((obj, code), (8, shm::INVALID_FD));
}

/// A client bound to a host wl_output (global 8, object 8) that then sends `geometry` with a
/// physical size of `w`×`h` mm; returns the geometry the guest got.
fn output_geometry_seen(w: i32, h: i32) -> Vec<u8> {
    let mut client = Harness::bound();
    client
        .host(Events::default().global(8, "wl_output", 4).0)
        .unwrap();
    client
        .guest(Requests::default().bind(2, 8, "wl_output", 4, 8).0, vec![])
        .unwrap();
    client.out.clear();
    let make = CString::new("make").unwrap();
    let model = CString::new("model").unwrap();
    let ev = Events::default().ev(
        8,
        "wl_output",
        0,
        &[
            Arg::Int(0),
            Arg::Int(0),
            Arg::Int(w),
            Arg::Int(h),
            Arg::Int(0),
            Arg::Str(Some(&make)),
            Arg::Str(Some(&model)),
            Arg::Int(0),
        ],
    );
    client.host(ev.0).unwrap();
    let msgs = Harness::messages(&client.out.to_guest);
    assert_eq!(msgs.len(), 1);
    msgs[0].2.clone()
}

#[test]
fn output_geometry_negative_physical_size_becomes_unknown() {
    let body = output_geometry_seen(-1, -1);
    assert_eq!(&body[8..16], &[0u8; 8], "width and height are 0");
}

#[test]
fn output_geometry_real_physical_size_is_forwarded_as_is() {
    let body = output_geometry_seen(600, 340);
    assert_eq!(&body[8..12], &600i32.to_ne_bytes());
    assert_eq!(&body[12..16], &340i32.to_ne_bytes());
}
