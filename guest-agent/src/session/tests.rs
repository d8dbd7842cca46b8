#![allow(clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;

use crossway_protocols::cross_domain::{
    CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB, Command, decode_command,
};

use super::*;
use crate::channel::tests::{Mock, open};

fn session() -> Session<Mock> {
    let config = SessionConfig {
        limits: SessionLimits::default(),
        guest_dev: Some(0xe2_80),
    };
    Session::new(open(), Arc::new(config), Arc::new(AgentStats::default()))
}

/// Every SEND the session made so far: identifiers (id, type) and data.
/// One SEND: identifiers (id, type) and data.
type Sent = (Vec<(u32, u32)>, Vec<u8>);

fn sends(s: &mut Session<Mock>) -> Vec<Sent> {
    s.channel()
        .device()
        .execs
        .iter()
        .filter_map(|(_, _, _, cmd)| match decode_command(cmd).ok()?.0 {
            Command::Send {
                identifiers, data, ..
            } => Some((
                identifiers.iter().map(|i| (i.id, i.id_type)).collect(),
                data.to_vec(),
            )),
            _ => None,
        })
        .collect()
}

fn msg(object: u32, opcode: u16, args: &[Arg<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_unchecked(&mut out, ObjectId::new(object).unwrap(), opcode, args).unwrap();
    out
}

fn memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

#[test]
fn long_streams_are_split_at_message_boundaries_into_sends_that_fit() {
    let mut s = session();
    // wl_display.sync(new id n), 12 bytes each: 1000 of them are 12000 bytes.
    let mut stream = Vec::new();
    for n in 2..1002u32 {
        stream.extend(msg(1, 0, &[Arg::NewId(ObjectId::new(n).unwrap())]));
    }
    s.client_input(&stream, vec![]).unwrap();
    let sent = sends(&mut s);
    assert!(sent.len() >= 4, "{} SENDs", sent.len());
    let mut joined = Vec::new();
    for (ids, data) in &sent {
        assert!(ids.is_empty());
        assert!(data.len() <= CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA);
        assert_eq!(data.len() % 12, 0, "a SEND ends on a message boundary");
        joined.extend_from_slice(data);
    }
    assert_eq!(joined, stream);
}

#[test]
fn a_request_that_fails_sends_nothing_of_itself() {
    let mut s = session();
    let sync = msg(1, 0, &[Arg::NewId(ObjectId::new(2).unwrap())]);
    let mut stream = sync.clone();
    stream.extend(msg(7, 0, &[])); // no object 7
    assert!(s.client_input(&stream, vec![]).is_err());
    // What came before the error still goes out, and only that.
    assert_eq!(sends(&mut s), vec![(vec![], sync)]);
}

#[test]
fn a_message_split_across_reads_goes_out_whole() {
    let mut s = session();
    let m = msg(1, 0, &[Arg::NewId(ObjectId::new(2).unwrap())]);
    s.client_input(&m[..5], vec![]).unwrap();
    assert!(sends(&mut s).is_empty());
    s.client_input(&m[5..], vec![]).unwrap();
    assert_eq!(sends(&mut s), vec![(vec![], m)]);
}

#[test]
fn a_pool_becomes_a_blob_identifier_with_the_message() {
    let mut s = session();
    let mut stream = msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]); // get_registry
    // wl_registry.bind(1, "wl_shm", 1, new id 3): the map needs the object to exist.
    let shm = c"wl_shm";
    stream.extend(msg(
        2,
        0,
        &[
            Arg::Uint(1),
            Arg::Str(Some(shm)),
            Arg::Uint(1),
            Arg::NewId(ObjectId::new(3).unwrap()),
        ],
    ));
    let pool = msg(
        3,
        0,
        &[
            Arg::NewId(ObjectId::new(4).unwrap()),
            Arg::Fd,
            Arg::Int(4096),
        ],
    );
    stream.extend(&pool);
    s.client_input(&stream, vec![memfd(4096)]).unwrap();
    let sent = sends(&mut s);
    let (ids, data) = sent.last().unwrap();
    // No Crossway capset on the mock: a HOST3D image blob backs the pool.
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].1, CROSS_DOMAIN_ID_TYPE_VIRTGPU_BLOB);
    assert!(data.ends_with(&pool));
    assert_eq!(s.stats.shm_pools.load(Ordering::Relaxed), 1);
}

#[test]
fn a_pool_larger_than_its_file_is_refused() {
    let mut s = session();
    let mut stream = msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]);
    stream.extend(msg(
        2,
        0,
        &[
            Arg::Uint(1),
            Arg::Str(Some(c"wl_shm")),
            Arg::Uint(1),
            Arg::NewId(ObjectId::new(3).unwrap()),
        ],
    ));
    stream.extend(msg(
        3,
        0,
        &[
            Arg::NewId(ObjectId::new(4).unwrap()),
            Arg::Fd,
            Arg::Int(8192),
        ],
    ));
    let e = s.client_input(&stream, vec![memfd(4096)]).unwrap_err();
    assert!(
        matches!(&e, SessionError::Client { object: 3, code: 2, message } if message.contains("file of 4096")),
        "{e}"
    );
}

#[test]
fn requests_on_unknown_objects_are_client_errors() {
    let mut s = session();
    let e = s.client_input(&msg(7, 0, &[]), vec![]).unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::Client {
                object: 7,
                code: 0,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn fds_not_matched_to_messages_are_bounded() {
    let mut s = session();
    let fds: Vec<OwnedFd> = (0..300).map(|_| memfd(1)).collect();
    let e = s.client_input(&[], fds).unwrap_err();
    assert!(matches!(&e, SessionError::Client { code: 2, .. }), "{e}");
}

#[test]
fn unknown_host_globals_are_hidden_and_versions_capped() {
    let mut s = session();
    s.client_input(&msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]), vec![])
        .unwrap();
    let mut events = msg(
        2,
        0,
        &[Arg::Uint(1), Arg::Str(Some(c"zz_secret_v1")), Arg::Uint(1)],
    );
    events.extend(msg(
        2,
        0,
        &[
            Arg::Uint(2),
            Arg::Str(Some(c"wl_compositor")),
            Arg::Uint(999),
        ],
    ));
    s.host_input(&events, vec![]).unwrap();
    let out = std::mem::take(&mut s.to_client.bytes);
    let m = wire::Message::parse(&out).unwrap();
    assert_eq!(m.len(), out.len(), "one event forwarded");
    let name = c"wl_compositor";
    let known = ProtocolTable::builtin()
        .get("wl_compositor")
        .unwrap()
        .version;
    assert_eq!(
        out,
        msg(
            2,
            0,
            &[Arg::Uint(2), Arg::Str(Some(name)), Arg::Uint(known)]
        )
    );
}

#[test]
fn host_events_with_missing_items_are_host_errors() {
    let mut s = session();
    s.client_input(&msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]), vec![])
        .unwrap();
    // An event for an object that was never created.
    let e = s.host_input(&msg(9, 0, &[]), vec![]).unwrap_err();
    assert!(matches!(e, SessionError::Host(_)), "{e}");
}

#[test]
fn host_write_pipes_become_local_pipes() {
    let mut s = session();
    let item = HostItem {
        id: 5,
        kind: HostItemKind::WritePipe,
        size: 0,
    };
    let fd = s.item_fd(&item).unwrap();
    assert!(is_fifo(fd.as_fd()));
    assert_eq!(s.write_pipes.len(), 1);
    assert_eq!(s.write_pipes[0].id, 5);
}

#[test]
fn format_tables_keep_only_linear_and_map_indices() {
    // Entries as the protocol lays them out: format u32, 4 bytes padding, modifier u64.
    let mut host = Vec::new();
    for (format, modifier) in [
        (ARGB8888, 0x0100_0000_0000_0001u64),
        (ARGB8888, LINEAR),
        (u32::from_le_bytes(*b"XR24"), LINEAR),
    ] {
        host.extend_from_slice(&format.to_ne_bytes());
        host.extend_from_slice(&[0; 4]);
        host.extend_from_slice(&modifier.to_ne_bytes());
    }
    let (fd, size, map) = guest_format_table(&host).unwrap();
    assert_eq!(map, vec![None, Some(0), Some(1)]);
    assert_eq!(size, 32);
    let mut bytes = vec![0; 32];
    File::from(fd).read_exact_at(&mut bytes, 0).unwrap();
    let guest = FormatTable::from_bytes(&bytes).unwrap();
    assert_eq!(guest.len(), 2);
    assert!(guest.get(0).unwrap().is_linear() && guest.get(1).unwrap().is_linear());
}

#[test]
fn relayout_moves_rows_to_the_hosts_stride() {
    let src = BufferLayout {
        offset: 0,
        width: 4,
        height: 3,
        stride: 16,
        bytes_per_pixel: 4,
    };
    let dst = BufferLayout {
        offset: 64,
        stride: 32,
        ..src
    };
    // Rows 0..3 coalesced in the source (stride == row bytes).
    assert_eq!(
        relayout(&src, &dst, std::slice::from_ref(&(0..48))).unwrap(),
        vec![(0, 64, 16), (16, 96, 16), (32, 128, 16)]
    );
    // Part of row 1.
    assert_eq!(
        relayout(&src, &dst, std::slice::from_ref(&(20..28))).unwrap(),
        vec![(20, 100, 8)]
    );
    // Padding is not pixel data.
    let padded = BufferLayout { stride: 20, ..src };
    assert!(relayout(&padded, &dst, std::slice::from_ref(&(16..20))).is_none());
}

#[test]
fn cap_global_hides_unknown_interfaces() {
    assert_eq!(cap_global(c"zz_nothing_v9", 3), None);
    assert_eq!(cap_global(c"wl_shm", 1), Some(1));
    let v = ProtocolTable::builtin().get("wl_seat").unwrap().version;
    assert_eq!(cap_global(c"wl_seat", v + 5), Some(v));
}

/// `wl_display.get_registry` (id 2) and a bind of each `(interface, version, id)`.
fn binds(globals: &[(&CStr, u32, u32)]) -> Vec<u8> {
    let mut stream = msg(1, 1, &[Arg::NewId(ObjectId::new(2).unwrap())]);
    for (n, (interface, version, new)) in globals.iter().enumerate() {
        stream.extend(msg(
            2,
            0,
            &[
                Arg::Uint(n as u32 + 1),
                Arg::Str(Some(interface)),
                Arg::Uint(*version),
                Arg::NewId(ObjectId::new(*new).unwrap()),
            ],
        ));
    }
    stream
}

fn new_id(n: u32) -> Arg<'static> {
    Arg::NewId(ObjectId::new(n).unwrap())
}

fn obj(n: u32) -> Arg<'static> {
    Arg::Object(ObjectId::new(n))
}

/// wl_compositor 3, wl_shm 4, a pool 5 of 64x64 ARGB on a memfd, buffer 6 in it and
/// surface 7.
fn shm_surface(s: &mut Session<Mock>) {
    shm_surface_in(s, memfd(64 * 64 * 4));
}

/// Binds, a 64x64 pool (5) in `pool`, a buffer (6) in it, a surface (7).
fn shm_surface_in(s: &mut Session<Mock>, pool: OwnedFd) {
    let mut stream = binds(&[(c"wl_compositor", 4, 3), (c"wl_shm", 1, 4)]);
    stream.extend(msg(4, 0, &[new_id(5), Arg::Fd, Arg::Int(64 * 64 * 4)]));
    stream.extend(msg(
        5,
        0,
        &[
            new_id(6),
            Arg::Int(0),
            Arg::Int(64),
            Arg::Int(64),
            Arg::Int(256),
            Arg::Uint(0),
        ],
    ));
    stream.extend(msg(3, 0, &[new_id(7)]));
    s.client_input(&stream, vec![pool]).unwrap();
}

#[test]
fn a_pool_truncated_under_a_commit_is_a_client_error_not_a_fault() {
    let mut s = session();
    let pool = memfd(64 * 64 * 4);
    shm_surface_in(&mut s, pool.try_clone().unwrap());
    // The app shrinks its pool, then attaches and commits a buffer in it.
    rustix::fs::ftruncate(&pool, 0).unwrap();
    let mut commit = msg(7, 1, &[obj(6), Arg::Int(0), Arg::Int(0)]);
    commit.extend(msg(7, 6, &[]));
    let e = s.client_input(&commit, Vec::new()).unwrap_err();
    assert!(
        matches!(&e, SessionError::Client { object: 6, message, .. } if message.contains("reading the client's buffer")),
        "{e}"
    );
}

#[test]
fn surface_destroy_forgets_its_viewports() {
    let mut s = session();
    shm_surface(&mut s);
    let mut stream = msg(
        2,
        0,
        &[
            Arg::Uint(9),
            Arg::Str(Some(c"wp_viewporter")),
            Arg::Uint(1),
            new_id(8),
        ],
    );
    stream.extend(msg(8, 1, &[new_id(9), obj(7)]));
    s.client_input(&stream, vec![]).unwrap();
    assert_eq!(s.viewport_surface(9), Some(7));
    s.client_input(&msg(7, 0, &[]), vec![]).unwrap();
    assert_eq!(s.viewport_surface(9), None);
}

#[test]
fn destroyed_buffer_is_forgotten_by_the_surface_it_was_on() {
    let mut s = session();
    shm_surface(&mut s);
    let mut stream = msg(7, 1, &[obj(6), Arg::Int(0), Arg::Int(0)]);
    stream.extend(msg(7, 6, &[]));
    s.client_input(&stream, vec![]).unwrap();
    assert_eq!(s.surface(7).unwrap().current, Some(6));
    assert_eq!(s.blobs.len(), 1);
    s.client_input(&msg(6, 0, &[]), vec![]).unwrap();
    assert_eq!(s.surface(7).unwrap().current, None);
    assert!(s.buffers.is_empty());
    // The pool still holds the blob; its destroy lets it go.
    s.client_input(&msg(5, 1, &[]), vec![]).unwrap();
    assert!(s.blobs.is_empty());
}

/// zwp_linux_dmabuf_v1 3 (v3), params 4 with one LINEAR plane on a memfd.
fn params_with_plane(s: &mut Session<Mock>) -> Result<(), SessionError> {
    let mut stream = binds(&[(c"zwp_linux_dmabuf_v1", 3, 3)]);
    stream.extend(msg(3, 1, &[new_id(4)]));
    stream.extend(add_plane(4));
    s.client_input(&stream, vec![memfd(64 * 64 * 4)])
}

fn add_plane(params: u32) -> Vec<u8> {
    msg(
        params,
        1,
        &[
            Arg::Fd,
            Arg::Uint(0),
            Arg::Uint(0),
            Arg::Uint(256),
            Arg::Uint(0),
            Arg::Uint(0),
        ],
    )
}

fn create_immed(params: u32, buffer: u32) -> Vec<u8> {
    msg(
        params,
        3,
        &[
            new_id(buffer),
            Arg::Int(64),
            Arg::Int(64),
            Arg::Uint(ARGB8888),
            Arg::Uint(0),
        ],
    )
}

#[test]
fn params_add_after_create_is_already_used() {
    let mut s = session();
    params_with_plane(&mut s).unwrap();
    s.client_input(&create_immed(4, 5), vec![]).unwrap();
    assert_eq!(s.stats.dmabufs_copied.load(Ordering::Relaxed), 1);
    let e = s
        .client_input(&add_plane(4), vec![memfd(4096)])
        .unwrap_err();
    assert!(
        matches!(
            &e,
            SessionError::Client {
                object: 4,
                code: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.plane_fds, 0);
}

#[test]
fn plane_fds_held_in_params_are_bounded() {
    let mut s = Session::new(
        open(),
        Arc::new(SessionConfig {
            limits: SessionLimits {
                max_plane_fds: 2,
                ..SessionLimits::default()
            },
            guest_dev: None,
        }),
        Arc::new(AgentStats::default()),
    );
    params_with_plane(&mut s).unwrap();
    let mut stream = msg(3, 1, &[new_id(5)]);
    stream.extend(add_plane(5));
    s.client_input(&stream, vec![memfd(4096)]).unwrap();
    assert_eq!(s.plane_fds, 2);
    // A destroyed params object gives its planes back.
    s.client_input(&msg(5, 0, &[]), vec![]).unwrap();
    assert_eq!(s.plane_fds, 1);
    let mut stream = msg(3, 1, &[new_id(6)]);
    stream.extend(add_plane(6));
    stream.extend(msg(3, 1, &[new_id(7)]));
    stream.extend(add_plane(7));
    let e = s
        .client_input(&stream, vec![memfd(4096), memfd(4096)])
        .unwrap_err();
    assert!(
        matches!(
            &e,
            SessionError::Client {
                object: 7,
                code: code::NO_MEMORY,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn copied_dmabufs_count_against_the_pool_limit() {
    let mut s = Session::new(
        open(),
        Arc::new(SessionConfig {
            limits: SessionLimits {
                max_pools: 1,
                ..SessionLimits::default()
            },
            guest_dev: None,
        }),
        Arc::new(AgentStats::default()),
    );
    params_with_plane(&mut s).unwrap();
    s.client_input(&create_immed(4, 5), vec![]).unwrap();
    let mut stream = msg(3, 1, &[new_id(6)]);
    stream.extend(add_plane(6));
    stream.extend(create_immed(6, 7));
    let e = s
        .client_input(&stream, vec![memfd(64 * 64 * 4)])
        .unwrap_err();
    assert!(
        matches!(
            &e,
            SessionError::Client {
                object: 6,
                code: code::NO_MEMORY,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.blobs.len(), 1);
}

#[test]
fn an_imported_handle_shared_by_two_buffers_is_closed_once_after_both() {
    let mut s = session();
    // PRIME import answers one handle for the same dmabuf, as the kernel does.
    s.channel().device().prime_handle = Some(1);
    params_with_plane(&mut s).unwrap();
    s.client_input(&create_immed(4, 5), vec![]).unwrap();
    let mut stream = msg(3, 1, &[new_id(6)]);
    stream.extend(add_plane(6));
    stream.extend(create_immed(6, 7));
    s.client_input(&stream, vec![memfd(4096)]).unwrap();
    assert_eq!(s.stats.dmabufs_forwarded.load(Ordering::Relaxed), 2);
    s.client_input(&msg(5, 0, &[]), vec![]).unwrap();
    assert!(
        s.channel().device().closed.is_empty(),
        "closed while buffer 7 uses it"
    );
    s.client_input(&msg(7, 0, &[]), vec![]).unwrap();
    assert_eq!(s.channel().device().closed, vec![1]);
    drop(s);
}

#[test]
fn cap_global_hides_globals_whose_fds_cannot_be_relayed() {
    for name in UNRELAYABLE_GLOBALS {
        let c = std::ffi::CString::new(name).unwrap();
        assert!(ProtocolTable::builtin().get(name).is_some(), "{name}");
        assert_eq!(cap_global(&c, 1), None, "{name}");
    }
    // Every request with an fd in the tables is relayed (pools, dmabuf planes, pipes for
    // `receive`), reached only through a hidden global, or the one accepted exception.
    let mut hidden = std::collections::HashSet::new();
    let mut stack: Vec<_> = UNRELAYABLE_GLOBALS
        .iter()
        .map(|n| ProtocolTable::builtin().get(n).unwrap())
        .collect();
    while let Some(i) = stack.pop() {
        if hidden.insert(i.name) {
            for d in i.requests.iter().chain(i.events) {
                stack.extend(d.child_interface);
            }
        }
    }
    let mut left = vec![];
    for i in ProtocolTable::builtin().interfaces() {
        for r in i.requests {
            let fd = r
                .signature
                .iter()
                .any(|a| matches!(a, crossway_protocols::tables::ArgumentType::Fd));
            let relayed = matches!(
                (i.name, r.name),
                ("wl_shm", "create_pool") | ("zwp_linux_buffer_params_v1", "add")
            ) || r.name == "receive";
            if fd && !relayed && !hidden.contains(i.name) {
                left.push(format!("{}.{}", i.name, r.name));
            }
        }
    }
    assert_eq!(left, ["wp_image_description_creator_icc_v1.set_icc_file"]);
}

#[test]
fn host_items_over_the_size_limit_are_refused_before_mapping() {
    let mut s = Session::new(
        open(),
        Arc::new(SessionConfig {
            limits: SessionLimits {
                max_item_bytes: 4096,
                ..SessionLimits::default()
            },
            guest_dev: None,
        }),
        Arc::new(AgentStats::default()),
    );
    let blobs = s.channel().device().blobs.len();
    let item = HostItem {
        id: 3,
        kind: HostItemKind::Blob,
        size: 4097,
    };
    let e = s.item_fd(&item).unwrap_err();
    assert!(
        matches!(&e, SessionError::Host(m) if m.contains("over the limit")),
        "{e}"
    );
    assert_eq!(
        s.channel().device().blobs.len(),
        blobs,
        "no blob was created"
    );
    let fd = s.item_fd(&HostItem { size: 4096, ..item }).unwrap();
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 4096);
}

#[test]
fn a_pool_destroyed_in_the_read_that_created_it_is_closed_after_its_send() {
    let mut s = session();
    let mut stream = binds(&[(c"wl_shm", 1, 3)]);
    stream.extend(msg(3, 0, &[new_id(4), Arg::Fd, Arg::Int(4096)]));
    stream.extend(msg(4, 1, &[]));
    s.client_input(&stream, vec![memfd(4096)]).unwrap();
    let (ids, _) = sends(&mut s).pop().unwrap();
    let res = ids[0].0;
    let d = s.channel().device();
    let send_at = d
        .execs
        .iter()
        .position(|(.., cmd)| matches!(decode_command(cmd), Ok((Command::Send { .. }, _))))
        .unwrap();
    // The mock's GEM handles are its resource ids.
    let at = d
        .closed
        .iter()
        .position(|h| *h == res)
        .expect("the blob is closed");
    assert!(
        d.closed_after[at] > send_at,
        "closed before the SEND naming it"
    );
}

#[test]
fn blob_bytes_of_a_client_are_bounded_before_a_blob_is_made() {
    let mut s = Session::new(
        open(),
        Arc::new(SessionConfig {
            limits: SessionLimits {
                max_blob_bytes: 3 * 4096,
                ..SessionLimits::default()
            },
            guest_dev: None,
        }),
        Arc::new(AgentStats::default()),
    );
    let mut stream = binds(&[(c"wl_shm", 1, 3)]);
    stream.extend(msg(3, 0, &[new_id(4), Arg::Fd, Arg::Int(2 * 4096)]));
    s.client_input(&stream, vec![memfd(2 * 4096)]).unwrap();
    let made = s.channel().device().blobs.len();
    let e = s
        .client_input(
            &msg(3, 0, &[new_id(5), Arg::Fd, Arg::Int(2 * 4096)]),
            vec![memfd(2 * 4096)],
        )
        .unwrap_err();
    assert!(
        matches!(
            &e,
            SessionError::Client {
                object: 3,
                code: code::NO_MEMORY,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.channel().device().blobs.len(), made);
}

/// `shm_surface`'s pool (5) grown to `size` over a file of that size; the mock host's images
/// are made large enough for it.
fn grow_pool(s: &mut Session<Mock>, size: i32) -> Result<(), SessionError> {
    s.channel().device().image_reply.size.set(size as u64);
    s.client_input(&msg(5, 2, &[Arg::Int(size)]), vec![])
}

fn client_events(s: &mut Session<Mock>) -> Vec<(u32, u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = &std::mem::take(&mut s.to_client.bytes)[..];
    while let Some(m) = wire::next_message(rest).unwrap() {
        out.push((m.header.object.get(), m.header.opcode, m.body.to_vec()));
        rest = &rest[m.len()..];
    }
    out
}

#[test]
fn a_resize_within_the_blob_goes_to_the_host() {
    let mut s = session();
    let pool = memfd(64 * 64 * 4);
    shm_surface_in(&mut s, pool.try_clone().unwrap());
    // The mock's images are 16384 bytes: the pool's blob holds 16384.
    s.client_input(&msg(5, 2, &[Arg::Int(64 * 64 * 4)]), vec![])
        .unwrap();
    let sent = sends(&mut s);
    assert_eq!(sent.last().unwrap().1, msg(5, 2, &[Arg::Int(64 * 64 * 4)]));
}

#[test]
fn a_resize_past_the_blob_puts_a_new_host_pool_behind_the_clients() {
    let mut s = session();
    let pool = memfd(64 * 64 * 4);
    shm_surface_in(&mut s, pool.try_clone().unwrap());
    rustix::fs::ftruncate(&pool, 65536).unwrap();
    let blobs_before = s.channel().device().blobs.len();
    grow_pool(&mut s, 65536).unwrap();
    // A new blob, a host pool on it (host id 8: the client's ids stop at 7), the old host pool
    // destroyed; the resize itself is not sent.
    assert_eq!(s.channel().device().blobs.len(), blobs_before + 1);
    let (ids, data) = sends(&mut s).pop().unwrap();
    assert_eq!(ids.len(), 1);
    let mut want = msg(4, 0, &[new_id(8), Arg::Fd, Arg::Int(65536)]);
    want.extend(msg(5, 1, &[]));
    assert_eq!(data, want);
    assert_eq!(s.stats.pools_regrown.load(Ordering::Relaxed), 1);
    // A buffer made now, in the grown part, is made from the new host pool with a host id of
    // its own (the client's 8 is the host's 9).
    let create = |id, offset| {
        msg(
            5,
            0,
            &[
                new_id(id),
                Arg::Int(offset),
                Arg::Int(64),
                Arg::Int(64),
                Arg::Int(256),
                Arg::Uint(0),
            ],
        )
    };
    s.client_input(&create(8, 16384), vec![]).unwrap();
    let (_, data) = sends(&mut s).pop().unwrap();
    let mut want = create(9, 16384);
    want[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert_eq!(data, want);
    // Both buffers show: the old one still copies into the old blob.
    let mut show = msg(7, 1, &[obj(6), Arg::Int(0), Arg::Int(0)]);
    show.extend(msg(7, 6, &[]));
    show.extend(msg(7, 1, &[obj(8), Arg::Int(0), Arg::Int(0)]));
    show.extend(msg(7, 6, &[]));
    s.client_input(&show, vec![]).unwrap();
    assert_eq!(s.stats.bytes_copied.load(Ordering::Relaxed), 2 * 16384);
    // Host events come back in the client's ids: release of host buffer 9 is buffer 8's.
    let mut events = msg(9, 0, &[]);
    // The host's delete_id of its old pool (5) is the agent's alone.
    events.extend(msg(1, 1, &[Arg::Uint(5)]));
    s.host_input(&events, vec![]).unwrap();
    assert_eq!(client_events(&mut s), vec![(8, 0, vec![])]);
    // The client destroys its pool: the host's pool 8 goes, and its delete_id is the client's 5.
    s.client_input(&msg(5, 1, &[]), vec![]).unwrap();
    assert_eq!(sends(&mut s).pop().unwrap().1, msg(8, 1, &[]));
    s.host_input(&msg(1, 1, &[Arg::Uint(8)]), vec![]).unwrap();
    assert_eq!(
        client_events(&mut s),
        vec![(1, 1, 5u32.to_ne_bytes().to_vec())]
    );
    // Host ids 5 and 8 are free again; the last freed goes first, as in libwayland.
    s.client_input(&msg(3, 0, &[new_id(5)]), vec![]).unwrap();
    assert_eq!(sends(&mut s).pop().unwrap().1, msg(3, 0, &[new_id(8)]));
    s.client_input(&msg(3, 0, &[new_id(9)]), vec![]).unwrap();
    assert_eq!(sends(&mut s).pop().unwrap().1, msg(3, 0, &[new_id(5)]));
}

#[test]
fn bad_resizes_are_the_pools_errors() {
    for (size, file, code, text) in [
        (4096, 16384, 2, "shrinking"),
        (-5, 16384, 1, "invalid size"),
        (0, 16384, 1, "invalid size"),
        (i32::MAX, 16384, 1, "over the limit"),
        (65536, 16384, 2, "on a file of 16384"),
    ] {
        let mut s = session();
        let pool = memfd(file);
        shm_surface_in(&mut s, pool);
        let e = grow_pool(&mut s, size).unwrap_err();
        assert!(
            matches!(&e, SessionError::Client { object: 5, code: c, message } if *c == code && message.contains(text)),
            "{size}: {e}"
        );
    }
}

#[test]
fn a_released_shm_is_kept_for_its_pools_and_its_id_freed() {
    let mut s = session();
    let pool = memfd(64 * 64 * 4);
    // wl_shm version 2 has release.
    let mut stream = binds(&[(c"wl_compositor", 4, 3), (c"wl_shm", 2, 4)]);
    stream.extend(msg(4, 0, &[new_id(5), Arg::Fd, Arg::Int(16384)]));
    stream.extend(msg(4, 1, &[]));
    s.client_input(&stream, vec![pool.try_clone().unwrap()])
        .unwrap();
    // The release did not reach the host, and the client got its delete_id from the agent.
    assert!(!sends(&mut s).pop().unwrap().1.ends_with(&msg(4, 1, &[])));
    assert_eq!(
        client_events(&mut s),
        vec![(1, 1, 4u32.to_ne_bytes().to_vec())]
    );
    // The pool still grows, through the kept wl_shm (host id 4).
    rustix::fs::ftruncate(&pool, 65536).unwrap();
    grow_pool(&mut s, 65536).unwrap();
    let (_, data) = sends(&mut s).pop().unwrap();
    assert!(data.starts_with(&msg(4, 0, &[new_id(6), Arg::Fd, Arg::Int(65536)])));
    // The client's id 4 is free: a new object with it gets a host id of its own.
    s.client_input(&msg(1, 1, &[new_id(4)]), vec![]).unwrap();
    assert_eq!(sends(&mut s).pop().unwrap().1, msg(1, 1, &[new_id(7)]));
}

#[test]
fn host_events_naming_objects_the_client_lacks_are_host_errors() {
    let mut s = session();
    shm_surface(&mut s);
    // An event for an id the agent never gave the host.
    let e = s.host_input(&msg(40, 0, &[]), vec![]).unwrap_err();
    assert!(matches!(e, SessionError::Host(_)), "{e}");
    // delete_id of an id the agent did not allocate.
    let mut s = session();
    shm_surface(&mut s);
    let e = s
        .host_input(&msg(1, 1, &[Arg::Uint(30)]), vec![])
        .unwrap_err();
    assert!(matches!(e, SessionError::Host(_)), "{e}");
}

#[test]
fn server_created_objects_get_the_clients_server_range_ids() {
    let mut s = session();
    params_with_plane(&mut s).unwrap();
    let create = |params| {
        msg(
            params,
            2,
            &[
                Arg::Int(64),
                Arg::Int(64),
                Arg::Uint(ARGB8888),
                Arg::Uint(0),
            ],
        )
    };
    s.client_input(&create(4), vec![]).unwrap();
    // The host makes buffer 0xff000000: the client's first server-range id.
    let s0 = 0xff00_0000;
    s.host_input(&msg(4, 0, &[new_id(s0)]), vec![]).unwrap();
    assert_eq!(
        client_events(&mut s),
        vec![(4, 0, s0.to_ne_bytes().to_vec())]
    );
    // A second params and buffer: the host reuses nothing yet, ids go on in step.
    let mut stream = msg(3, 1, &[new_id(5)]);
    stream.extend(add_plane(5));
    stream.extend(create(5));
    s.client_input(&stream, vec![memfd(64 * 64 * 4)]).unwrap();
    s.host_input(&msg(5, 0, &[new_id(s0 + 1)]), vec![]).unwrap();
    assert_eq!(client_events(&mut s)[0].2, (s0 + 1).to_ne_bytes());
    // The client destroys its first buffer: the host's goes, and the host's next new object
    // (which may reuse the host's id) takes the client's freed one.
    s.client_input(&msg(s0, 0, &[]), vec![]).unwrap();
    assert_eq!(sends(&mut s).pop().unwrap().1, msg(s0, 0, &[]));
    // An event on its way for the destroyed buffer is dropped, as libwayland does.
    s.host_input(&msg(s0, 0, &[]), vec![]).unwrap();
    assert!(client_events(&mut s).is_empty());
    let mut stream = msg(3, 1, &[new_id(6)]);
    stream.extend(add_plane(6));
    stream.extend(create(6));
    s.client_input(&stream, vec![memfd(64 * 64 * 4)]).unwrap();
    s.host_input(&msg(6, 0, &[new_id(s0 + 7)]), vec![]).unwrap();
    assert_eq!(client_events(&mut s)[0].2, s0.to_ne_bytes());
    // A host id made twice is a host error.
    let mut stream = msg(3, 1, &[new_id(7)]);
    stream.extend(add_plane(7));
    stream.extend(create(7));
    s.client_input(&stream, vec![memfd(64 * 64 * 4)]).unwrap();
    let e = s
        .host_input(&msg(7, 0, &[new_id(s0 + 7)]), vec![])
        .unwrap_err();
    assert!(matches!(e, SessionError::Host(_)), "{e}");
}

/// Per-message cost of the session both ways, printed (run with `cargo test --release -p
/// crossway-agent -- --ignored --nocapture per_message_cost`): requests naming objects (attach
/// a buffer, damage_buffer, attach null; one read and one SEND per three) and events
/// (`wl_buffer.release`, three thousand per read).
#[test]
#[ignore = "a benchmark: prints figures"]
fn per_message_cost() {
    let mut s = session();
    shm_surface(&mut s);
    let rounds = 200_000u32;
    let mut best_req = f64::MAX;
    let mut best_ev = f64::MAX;
    for _ in 0..5 {
        let (mut req_ns, mut ev_ns) = (0u128, 0u128);
        for _ in 0..rounds / 1000 {
            let mut requests = Vec::new();
            let mut events = Vec::new();
            for _ in 0..1000 {
                requests.extend(msg(7, 1, &[obj(6), Arg::Int(0), Arg::Int(0)]));
                requests.extend(msg(
                    7,
                    9,
                    &[Arg::Int(0), Arg::Int(0), Arg::Int(1), Arg::Int(1)],
                ));
                requests.extend(msg(7, 1, &[Arg::Object(None), Arg::Int(0), Arg::Int(0)]));
                for _ in 0..3 {
                    events.extend(msg(6, 0, &[]));
                }
            }
            let t = std::time::Instant::now();
            let mut at = 0;
            let mut i = 0;
            while at < requests.len() {
                // attach (20) + damage_buffer (24) + attach (20) per frame.
                let end = at + 64;
                s.client_input(&requests[at..end], vec![]).unwrap();
                at = end;
                i += 1;
                if i % 64 == 0 {
                    s.channel().device().execs.clear();
                }
            }
            req_ns += t.elapsed().as_nanos();
            let t = std::time::Instant::now();
            s.host_input(&events, vec![]).unwrap();
            ev_ns += t.elapsed().as_nanos();
            s.to_client.bytes.clear();
        }
        let per = |ns: u128| ns as f64 / f64::from(rounds * 3);
        best_req = best_req.min(per(req_ns));
        best_ev = best_ev.min(per(ev_ns));
    }
    println!(
        "agent session: {best_req:.0} ns per request (one SEND per frame), {best_ev:.0} ns per event"
    );
}
