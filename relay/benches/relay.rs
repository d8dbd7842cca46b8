//! Relay engine throughput: a window's frame loop through `Relay::from_guest` and
//! `Relay::from_host` (framing, object map, policy and buffer checks, forwarding).
//!
//! One frame is 11 messages, as in `protocols/benches/wire.rs`:
//! - requests: `wl_surface.attach`, `damage_buffer`, `frame`, `commit`,
//!   `xdg_surface.ack_configure` (one `from_guest` call);
//! - events: `xdg_toplevel.configure`, `xdg_surface.configure`, `wl_buffer.release`,
//!   `wl_callback.done`, `wl_display.delete_id`, `wl_pointer.motion` (one `from_host` call).
//!
//! The callback made by `frame` is destroyed by `done` and released by `delete_id`, so every
//! frame starts from the same state. Criterion prints messages per second ("elements").

// Setup failures are the report here, as in tests.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::fs::File;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::wire::{self, Arg, Fixed, ObjectId};
use crossway_relay::{
    BufferPath, ClientStats, GuestFd, GuestFdKind, Outgoing, Relay, RelayConfig, SyncBuffers,
    SyncError,
};

const FRAMES: usize = 64;

fn id(n: u32) -> ObjectId {
    ObjectId::new(n).unwrap()
}

fn push(out: &mut Vec<u8>, request: bool, object: u32, iface: &str, opcode: u16, args: &[Arg]) {
    let i = ProtocolTable::builtin().get(iface).unwrap();
    let list = if request { i.requests } else { i.events };
    let sig = list[usize::from(opcode)].signature;
    wire::encode(out, id(object), opcode, sig, args).unwrap();
}

/// Claims each refresh copied its bytes without touching memory: measures the engine only.
struct CountSync;

impl SyncBuffers for CountSync {
    fn sync(&mut self, _: u32, ranges: &[(u64, u64)]) -> Result<u64, SyncError> {
        Ok(ranges.iter().map(|r| r.1).sum())
    }
}

/// A relay with a toplevel window on a 640x480 buffer from a pool on `path`, and a pointer.
fn setup(path: BufferPath) -> Relay {
    let mut config = RelayConfig::default();
    config.policy.tagging.vm_name = Some("bench".into());
    let mut relay = Relay::new(Arc::new(config), Arc::new(ClientStats::new("bench")));
    let mut out = Outgoing::default();
    let mut req = vec![];
    push(&mut req, true, 1, "wl_display", 1, &[Arg::NewId(id(2))]);
    relay
        .from_guest(&req, vec![], &mut CountSync, &mut out)
        .unwrap();
    let mut ev = vec![];
    for (name, iface, v) in [
        (1, "wl_compositor", 6),
        (2, "xdg_wm_base", 6),
        (3, "wl_shm", 1),
        (4, "wl_seat", 9),
    ] {
        let c = CString::new(iface).unwrap();
        push(
            &mut ev,
            false,
            2,
            "wl_registry",
            0,
            &[Arg::Uint(name), Arg::Str(Some(&c)), Arg::Uint(v)],
        );
    }
    relay.from_host(&ev, vec![], &mut out).unwrap();
    let mut req = vec![];
    for (name, iface, v, new) in [
        (1, "wl_compositor", 6, 3),
        (2, "xdg_wm_base", 6, 4),
        (3, "wl_shm", 1, 5),
    ] {
        let c = CString::new(iface).unwrap();
        push(
            &mut req,
            true,
            2,
            "wl_registry",
            0,
            &[
                Arg::Uint(name),
                Arg::Str(Some(&c)),
                Arg::Uint(v),
                Arg::NewId(id(new)),
            ],
        );
    }
    push(
        &mut req,
        true,
        5,
        "wl_shm",
        0,
        &[Arg::NewId(id(6)), Arg::Fd, Arg::Int(1 << 22)],
    );
    push(
        &mut req,
        true,
        6,
        "wl_shm_pool",
        0,
        &[
            Arg::NewId(id(7)),
            Arg::Int(0),
            Arg::Int(640),
            Arg::Int(480),
            Arg::Int(2560),
            Arg::Uint(1),
        ],
    );
    push(&mut req, true, 3, "wl_compositor", 0, &[Arg::NewId(id(8))]);
    push(
        &mut req,
        true,
        4,
        "xdg_wm_base",
        2,
        &[Arg::NewId(id(9)), Arg::Object(Some(id(8)))],
    );
    push(&mut req, true, 9, "xdg_surface", 1, &[Arg::NewId(id(10))]);
    let c = CString::new("wl_seat").unwrap();
    push(
        &mut req,
        true,
        2,
        "wl_registry",
        0,
        &[
            Arg::Uint(4),
            Arg::Str(Some(&c)),
            Arg::Uint(9),
            Arg::NewId(id(11)),
        ],
    );
    push(&mut req, true, 11, "wl_seat", 0, &[Arg::NewId(id(12))]);
    let fd = GuestFd {
        fd: File::open("/dev/null").unwrap().into(),
        kind: GuestFdKind::Memory {
            size: 1 << 22,
            path,
            resource: Some(1),
            shrinkable: false,
        },
    };
    relay
        .from_guest(&req, vec![fd], &mut CountSync, &mut out)
        .unwrap();
    relay
}

/// Each frame's requests and events, as separate byte strings.
fn frames() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..FRAMES as u32)
        .map(|frame| {
            let mut req = vec![];
            push(
                &mut req,
                true,
                8,
                "wl_surface",
                1,
                &[Arg::Object(Some(id(7))), Arg::Int(0), Arg::Int(0)],
            );
            push(
                &mut req,
                true,
                8,
                "wl_surface",
                9,
                &[Arg::Int(0), Arg::Int(0), Arg::Int(64), Arg::Int(32)],
            );
            push(&mut req, true, 8, "wl_surface", 3, &[Arg::NewId(id(13))]);
            push(&mut req, true, 8, "wl_surface", 6, &[]);
            push(&mut req, true, 9, "xdg_surface", 4, &[Arg::Uint(frame)]);
            let mut ev = vec![];
            push(
                &mut ev,
                false,
                10,
                "xdg_toplevel",
                0,
                &[Arg::Int(640), Arg::Int(480), Arg::Array(&[4, 0, 0, 0])],
            );
            push(&mut ev, false, 9, "xdg_surface", 0, &[Arg::Uint(frame)]);
            push(&mut ev, false, 7, "wl_buffer", 0, &[]);
            push(&mut ev, false, 13, "wl_callback", 0, &[Arg::Uint(frame)]);
            push(&mut ev, false, 1, "wl_display", 1, &[Arg::Uint(13)]);
            push(
                &mut ev,
                false,
                12,
                "wl_pointer",
                2,
                &[
                    Arg::Uint(frame),
                    Arg::Fixed(Fixed(2560)),
                    Arg::Fixed(Fixed(-512)),
                ],
            );
            (req, ev)
        })
        .collect()
}

fn run(relay: &mut Relay, frames: &[(Vec<u8>, Vec<u8>)], out: &mut Outgoing) -> usize {
    for (req, ev) in frames {
        out.clear();
        relay.from_guest(req, vec![], &mut CountSync, out).unwrap();
        relay.from_host(ev, vec![], out).unwrap();
    }
    frames.len() * 11
}

fn bench(c: &mut Criterion) {
    let frames = frames();
    let mut out = Outgoing::default();
    let mut group = c.benchmark_group("relay");
    for (name, path) in [
        ("frame_loop_shm_zero_copy", BufferPath::ShmZeroCopy),
        ("frame_loop_copy_path", BufferPath::Copy),
    ] {
        let mut relay = setup(path);
        let per_iter = run(&mut relay, &frames, &mut out);
        let s = relay.stats().snapshot();
        assert_eq!(s.frames, FRAMES as u64);
        assert_eq!(s.messages_to_host as usize, 13 + FRAMES * 5);
        group.throughput(Throughput::Elements(per_iter as u64));
        group.bench_function(name, |b| {
            b.iter(|| black_box(run(&mut relay, black_box(&frames), &mut out)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
