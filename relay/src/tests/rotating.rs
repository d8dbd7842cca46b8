//! The copy path with buffers in rotation: a client draws each frame into the buffer the host
//! saw longest ago and damages only what changed since its previous frame (wl_surface:
//! "damage is relative to the surface's previous content"), so the host memfd of that buffer
//! must get every row it missed since the host last saw it, not just this commit's damage.

use super::*;

/// Guest pages and the host memfd of one resource; a refresh copies guest bytes to the host.
struct Mirror {
    resource: u32,
    guest: Vec<u8>,
    host: Vec<u8>,
}

impl SyncBuffers for Mirror {
    fn sync(&mut self, resource: u32, ranges: &[(u64, u64)]) -> Result<u64, SyncError> {
        assert_eq!(resource, self.resource);
        let mut n = 0;
        for &(start, len) in ranges {
            let r = start as usize..(start + len) as usize;
            self.host[r.clone()].copy_from_slice(&self.guest[r]);
            n += len;
        }
        Ok(n)
    }
}

const W: i32 = 64;
const H: i32 = 48;
const STRIDE: i32 = W * 4;
const BUFFER_BYTES: i32 = STRIDE * H;
const BALL: i32 = 4;

/// Buffer ids, all in pool 8 of resource 11, one after the other.
const BUFFERS: [u32; 3] = [9, 10, 11];

/// Where the ball of frame `n` is: it moves down and right, so consecutive balls share no row.
fn ball(n: i32) -> (i32, i32) {
    ((n * 7) % (W - BALL), (n * (BALL + 1)) % (H - BALL))
}

/// Frame `n` as the client draws it into buffer `b`: a background and the ball, whole.
fn draw(guest: &mut [u8], b: usize, n: i32) {
    let base = b * BUFFER_BYTES as usize;
    let (bx, by) = ball(n);
    for y in 0..H {
        for x in 0..W {
            let inside = (bx..bx + BALL).contains(&x) && (by..by + BALL).contains(&y);
            let v = if inside { 0x80 | n as u8 } else { 0x11 };
            let at = base + (y * STRIDE + x * 4) as usize;
            guest[at..at + 4].copy_from_slice(&[v, v, v, 0xff]);
        }
    }
}

/// Pool 8 of `pool` bytes on copy-path resource 11, with `buffers` (id, offset) of W x H.
fn pool_with(pool: i32, buffers: &[(u32, i32)]) -> Harness {
    let mut r = Requests::default().create_pool(pool);
    for &(b, offset) in buffers {
        r = r.req(
            8,
            "wl_shm_pool",
            0,
            &[
                Arg::NewId(id(b)),
                Arg::Int(offset),
                Arg::Int(W),
                Arg::Int(H),
                Arg::Int(STRIDE),
                Arg::Uint(1),
            ],
        );
    }
    let mut h = Harness::bound();
    h.guest(r.0, vec![mem(pool as u64, BufferPath::Copy, Some(11))])
        .unwrap();
    h
}

fn setup(buffers: usize) -> (Harness, Mirror) {
    let pool = BUFFER_BYTES * buffers as i32;
    let ids: Vec<(u32, i32)> = (0..buffers)
        .map(|i| (BUFFERS[i], i as i32 * BUFFER_BYTES))
        .collect();
    let h = pool_with(pool, &ids);
    let mirror = Mirror {
        resource: 11,
        guest: vec![0; pool as usize],
        host: vec![0; pool as usize],
    };
    (h, mirror)
}

/// `wl_surface.damage_buffer` on surface 7.
fn damage_buffer(r: Requests, (x, y, w, h): (i32, i32, i32, i32)) -> Requests {
    r.req(
        7,
        "wl_surface",
        op::SURFACE_DAMAGE_BUFFER,
        &[Arg::Int(x), Arg::Int(y), Arg::Int(w), Arg::Int(h)],
    )
}

/// Runs `frames` frames over `buffers` buffers; after each commit, the host's bytes of the
/// committed buffer must be the guest's. Returns the bytes copied per frame.
fn run(buffers: usize, frames: i32) -> Vec<u64> {
    let (mut h, mut m) = setup(buffers);
    let mut copied = vec![];
    for n in 0..frames {
        let b = n as usize % buffers;
        draw(&mut m.guest, b, n);
        let mut r = Requests::default().attach(BUFFERS[b]);
        r = if n == 0 {
            damage_buffer(r, (0, 0, W, H))
        } else {
            let ((x0, y0), (x1, y1)) = (ball(n - 1), ball(n));
            damage_buffer(damage_buffer(r, (x0, y0, BALL, BALL)), (x1, y1, BALL, BALL))
        };
        let before = h.relay.stats().snapshot().bytes_copied;
        h.relay
            .from_guest(&r.commit().0, vec![], &mut m, &mut h.out)
            .unwrap();
        copied.push(h.relay.stats().snapshot().bytes_copied - before);
        let span = b * BUFFER_BYTES as usize..(b + 1) * BUFFER_BYTES as usize;
        let (want, got) = (&m.guest[span.clone()], &m.host[span]);
        if want != got {
            let row = (0..want.len())
                .find(|&i| want[i] != got[i])
                .map(|i| i / STRIDE as usize);
            panic!("frame {n} in buffer {b}: the host's bytes differ from row {row:?}");
        }
    }
    copied
}

#[test]
fn rotating_two_buffers_partial_damage_host_matches_guest_every_frame() {
    run(2, 12);
}

#[test]
fn rotating_three_buffers_partial_damage_host_matches_guest_every_frame() {
    run(3, 12);
}

#[test]
fn rotating_buffers_copy_only_what_each_missed() {
    let copied = run(2, 8);
    // The first commit of each buffer copies it whole.
    assert_eq!(copied[..2], [BUFFER_BYTES as u64; 2]);
    // Then each buffer missed two frames: at most three balls, each BALL rows.
    let most = 3 * BALL as u64 * STRIDE as u64;
    assert!(
        copied[2..].iter().all(|&c| c > 0 && c <= most),
        "{copied:?}"
    );
}

#[test]
fn overlapping_buffer_is_copied_whole_after_the_other_is_copied() {
    // Buffers 9 and 10 over the same bytes (offset 0), each shown once.
    let mut h = pool_with(BUFFER_BYTES, &[(9, 0), (10, 0)]);
    for b in [9, 10] {
        h.guest(Requests::default().attach(b).commit().0, vec![])
            .unwrap();
    }
    h.sync.0.clear();
    // Buffer 10 was copied whole after 9's copy: 9 is copied whole again, damage or not.
    h.guest(
        damage_buffer(Requests::default().attach(9), (0, 0, 1, 1))
            .commit()
            .0,
        vec![],
    )
    .unwrap();
    assert_eq!(h.sync.0, [(11, vec![(0, BUFFER_BYTES as u64)])]);
}
