//! Decode + re-encode throughput for the messages of a window's frame loop, the work the relay
//! does for every message: frame, look the sender up in the object map, decode against its
//! signature, check object arguments, create/destroy objects, encode again.
//!
//! One frame of a typical client is 11 messages:
//! - requests: `wl_surface.attach`, `wl_surface.damage_buffer`, `wl_surface.frame`,
//!   `wl_surface.commit`, `xdg_surface.ack_configure`;
//! - events: `xdg_toplevel.configure` (with a states array), `xdg_surface.configure`,
//!   `wl_buffer.release`, `wl_callback.done`, `wl_display.delete_id`, `wl_pointer.motion`.
//!
//! The frame callback created by `frame` is destroyed by `done` and released by `delete_id`,
//! so the map is back where it started after each frame and iterations are independent.
//! Criterion prints the rate as elements (messages) per second.

// Setup failures are the report here, as in tests.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossway_protocols::objects::{ObjectMap, Side};
use crossway_protocols::tables::ProtocolTable;
use crossway_protocols::wire::{Arg, Fixed, Message, ObjectId, encode_unchecked, next_message};
use std::hint::black_box;

const FRAMES: usize = 64;

fn id(n: u32) -> ObjectId {
    ObjectId::new(n).unwrap()
}

fn push(out: &mut Vec<u8>, object: u32, opcode: u16, args: &[Arg<'_>]) {
    encode_unchecked(out, id(object), opcode, args).unwrap();
}

/// A map with a toplevel window and a pointer, and the request and event streams of
/// `FRAMES` frames.
fn setup() -> (ObjectMap, Vec<u8>, Vec<u8>) {
    let table = ProtocolTable::builtin();
    let mut setup = vec![];
    push(&mut setup, 1, 1, &[Arg::NewId(id(2))]); // get_registry
    let bind = |out: &mut Vec<u8>, name: u32, iface: &'static std::ffi::CStr, v: u32, new: u32| {
        push(
            out,
            2,
            0,
            &[
                Arg::Uint(name),
                Arg::Str(Some(iface)),
                Arg::Uint(v),
                Arg::NewId(id(new)),
            ],
        );
    };
    bind(&mut setup, 1, c"wl_compositor", 6, 3);
    bind(&mut setup, 2, c"xdg_wm_base", 6, 4);
    bind(&mut setup, 3, c"wl_shm", 1, 5);
    push(
        &mut setup,
        5,
        0,
        &[Arg::NewId(id(6)), Arg::Fd, Arg::Int(1 << 22)],
    ); // create_pool
    push(
        &mut setup,
        6,
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
    push(&mut setup, 3, 0, &[Arg::NewId(id(8))]); // create_surface
    push(
        &mut setup,
        4,
        2,
        &[Arg::NewId(id(9)), Arg::Object(Some(id(8)))],
    ); // get_xdg_surface
    push(&mut setup, 9, 1, &[Arg::NewId(id(10))]); // get_toplevel
    bind(&mut setup, 4, c"wl_seat", 9, 11);
    push(&mut setup, 11, 0, &[Arg::NewId(id(12))]); // get_pointer

    let mut map: ObjectMap = ObjectMap::default();
    let mut rest = &setup[..];
    while let Some(msg) = next_message(rest).unwrap() {
        map.process_request(table, &msg, 1).unwrap();
        rest = &rest[msg.len()..];
    }
    assert_eq!(map.get(id(12)).unwrap().interface.name, "wl_pointer");
    assert_eq!(Side::of(id(13)), Side::Client);

    let (mut requests, mut events) = (vec![], vec![]);
    for frame in 0..FRAMES as u32 {
        let mut req = vec![];
        push(
            &mut req,
            8,
            1,
            &[Arg::Object(Some(id(7))), Arg::Int(0), Arg::Int(0)],
        ); // attach
        push(
            &mut req,
            8,
            9,
            &[Arg::Int(0), Arg::Int(0), Arg::Int(64), Arg::Int(32)],
        ); // damage_buffer
        push(&mut req, 8, 3, &[Arg::NewId(id(13))]); // frame
        push(&mut req, 8, 6, &[]); // commit
        push(&mut req, 9, 4, &[Arg::Uint(frame)]); // ack_configure
        let mut ev = vec![];
        push(
            &mut ev,
            10,
            0,
            &[Arg::Int(640), Arg::Int(480), Arg::Array(&[4, 0, 0, 0])],
        );
        push(&mut ev, 9, 0, &[Arg::Uint(frame)]);
        push(&mut ev, 7, 0, &[]); // wl_buffer.release
        push(&mut ev, 13, 0, &[Arg::Uint(frame * 16)]); // wl_callback.done
        push(&mut ev, 1, 1, &[Arg::Uint(13)]); // delete_id
        push(
            &mut ev,
            12,
            2,
            &[
                Arg::Uint(frame),
                Arg::Fixed(Fixed(2560)),
                Arg::Fixed(Fixed(-512)),
            ],
        );
        requests.extend(req);
        events.extend(ev);
    }
    (map, requests, events)
}

/// Runs one frame's requests then its events through the map, re-encoding into `out`.
fn relay_frames(map: &mut ObjectMap, requests: &[u8], events: &[u8], out: &mut Vec<u8>) -> usize {
    let table = ProtocolTable::builtin();
    let (mut req, mut ev) = (requests, events);
    let mut count = 0;
    for _ in 0..FRAMES {
        for _ in 0..5 {
            let msg = next_message(req).unwrap().unwrap();
            req = &req[msg.len()..];
            let p = map.process_request(table, &msg, 0).unwrap();
            encode_unchecked(out, msg.header.object, msg.header.opcode, p.args.as_slice()).unwrap();
            count += 1;
        }
        for _ in 0..6 {
            let msg = next_message(ev).unwrap().unwrap();
            ev = &ev[msg.len()..];
            let p = map.process_event(table, &msg, 0).unwrap();
            encode_unchecked(out, msg.header.object, msg.header.opcode, p.args.as_slice()).unwrap();
            count += 1;
        }
    }
    count
}

fn bench(c: &mut Criterion) {
    let (mut map, requests, events) = setup();
    let mut out = Vec::with_capacity(requests.len() + events.len());
    let per_iter = relay_frames(&mut map.clone(), &requests, &events, &mut out);
    assert_eq!(out.len(), requests.len() + events.len());

    let mut group = c.benchmark_group("wayland");
    group.throughput(Throughput::Elements(per_iter as u64));
    group.bench_function("frame_loop_decode_objects_reencode", |b| {
        b.iter(|| {
            out.clear();
            black_box(relay_frames(
                &mut map,
                black_box(&requests),
                black_box(&events),
                &mut out,
            ))
        })
    });

    // The codec alone, for comparison: frame + decode with a known signature + re-encode.
    let table = ProtocolTable::builtin();
    let surface = table.get("wl_surface").unwrap();
    let attach_sig = surface.requests[1].signature;
    let mut attach = vec![];
    for _ in 0..FRAMES * 11 {
        push(
            &mut attach,
            8,
            1,
            &[Arg::Object(Some(id(7))), Arg::Int(0), Arg::Int(0)],
        );
    }
    group.throughput(Throughput::Elements((FRAMES * 11) as u64));
    group.bench_function("attach_decode_reencode", |b| {
        b.iter(|| {
            out.clear();
            let mut rest = black_box(&attach[..]);
            while !rest.is_empty() {
                let msg = Message::parse(&rest[..20]).unwrap();
                let args = msg.decode(attach_sig, 0).unwrap();
                encode_unchecked(
                    &mut out,
                    msg.header.object,
                    msg.header.opcode,
                    args.as_slice(),
                )
                .unwrap();
                rest = &rest[20..];
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
