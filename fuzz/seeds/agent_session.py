#!/usr/bin/env python3
"""Writes the agent_session seeds (see fuzz_targets/agent_session.rs for the input format):
a wl_shm surface through each blob layout, dmabufs forwarded and copied with a dmabuf feedback
whose format table arrives as a host blob, and a keymap plus clipboard pipes both ways."""
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent_session")


def u(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def i(v):
    return struct.pack("<i", v)


def pad(b):
    return b + b"\0" * ((4 - len(b) % 4) % 4)


def s(text):
    return u(len(text) + 1) + pad(text.encode() + b"\0")


def arr(b):
    return u(len(b)) + pad(b)


def msg(obj, op, *args):
    body = b"".join(args)
    return u(obj) + u(((8 + len(body)) << 16) | op) + body


def bind(name, iface, version, new):
    return msg(2, 0, u(name), s(iface), u(version), u(new))


def client(data, fds=0, kind=0):
    """Client chunks of at most 255 bytes; the fds ride with the first."""
    out = b""
    flags = (fds << 1) | (kind << 3)
    while True:
        out += bytes([flags, min(len(data), 255)]) + data[:255]
        data, flags = data[255:], 0
        if not data:
            return out


def host(data, items=0, kind=0, fill=b""):
    body = bytes([len(data)]) + data + fill
    assert len(data) < 255 and len(body) <= 255
    return bytes([1 | (items << 1) | (kind << 3), len(body)]) + body


AR24 = struct.unpack("<I", b"AR24")[0]
XR24 = struct.unpack("<I", b"XR24")[0]
seeds = {}

# wl_shm: registry 2, compositor 3, shm 4, pool 5 (a 16 KiB memfd), buffer 6, surface 7,
# viewporter 8, viewport 9.
reg = msg(1, 1, u(2)) + bind(1, "wl_compositor", 4, 3) + bind(2, "wl_shm", 1, 4)
pool = msg(4, 0, u(5), u(16384))
buf = msg(5, 0, u(6), i(0), i(32), i(32), i(128), u(0)) + msg(3, 0, u(7))
frame = msg(7, 1, u(6), i(0), i(0)) + msg(7, 9, i(0), i(0), i(8), i(8)) + msg(7, 6)
more = msg(7, 7, i(1)) + msg(7, 8, i(2)) + msg(7, 2, i(1), i(1), i(4), i(4)) + msg(7, 6)
vp = (
    bind(3, "wp_viewporter", 1, 8)
    + msg(8, 1, u(9), u(7))
    + msg(9, 1, i(0), i(0), i(16 * 256), i(16 * 256))
    + msg(9, 2, i(8), i(8))
    + msg(7, 2, i(0), i(0), i(8), i(8))
    + msg(7, 6)
)
tail = msg(9, 0) + msg(6, 0) + msg(7, 1, u(0), i(0), i(0)) + msg(7, 6) + msg(5, 1) + msg(7, 0)
globals_ = (
    msg(2, 0, u(1), s("wl_compositor"), u(6))
    + msg(2, 0, u(9), s("zz_unknown_v1"), u(1))
    + msg(2, 0, u(2), s("wl_shm"), u(2))
)
shm = (
    client(reg) + client(pool, 1, 3) + client(buf) + client(frame) + client(more) + client(vp)
    + client(tail) + host(globals_)
)
for cfg, name in [(0, "shm_host3d"), (1, "shm_guest_blob"), (8, "shm_padded"), (16, "shm_offset")]:
    seeds[name] = bytes([cfg]) + shm

# dmabuf: zwp_linux_dmabuf_v1 3, default feedback 4, params 5 (immed, buffer 6), params 7
# (create, the host's buffer 0xff000000).
reg = msg(1, 1, u(2)) + bind(1, "zwp_linux_dmabuf_v1", 4, 3) + msg(3, 2, u(4)) + msg(3, 1, u(5))
add5 = msg(5, 1, u(0), u(0), u(128), u(0), u(0))
immed = msg(5, 3, u(6), i(32), i(32), u(AR24), u(0)) + msg(3, 1, u(7))
add7 = msg(7, 1, u(0), u(0), u(128), u(0), u(0))
create = msg(7, 2, i(32), i(32), u(AR24), u(0))
table = (
    struct.pack("<IIQ", AR24, 0, 0)
    + struct.pack("<IIQ", AR24, 0, 0x0100000000000001)
    + struct.pack("<IIQ", XR24, 0, 0)
)
dev = arr(struct.pack("<Q", 0xE280))
feedback = (
    msg(4, 2, dev) + msg(4, 4, dev) + msg(4, 5, arr(struct.pack("<HHH", 0, 1, 2)))
    + msg(4, 6, u(0)) + msg(4, 3) + msg(4, 0)
)
dmabuf = (
    client(reg) + client(add5, 1, 3) + client(immed) + client(add7, 1, 3) + client(create)
    + host(msg(4, 1, u(48)), 1, 3, table) + host(feedback) + host(msg(7, 0, u(0xFF000000)))
    + client(msg(6, 0) + msg(0xFF000000, 0) + msg(4, 0))
)
for cfg, name in [(2, "dmabuf_forwarded"), (0, "dmabuf_copied_host3d"), (1, "dmabuf_copied_guest"),
                  (6, "dmabuf_info_fails")]:
    seeds[name] = bytes([cfg]) + dmabuf

# seat 3, keyboard 4, data device manager 5, data device 6, data source 7; the host's offer
# 0xff000000.
reg = (
    msg(1, 1, u(2)) + bind(1, "wl_seat", 7, 3) + msg(3, 1, u(4))
    + bind(2, "wl_data_device_manager", 3, 5) + msg(5, 1, u(6), u(3)) + msg(5, 0, u(7))
)
keymap = msg(4, 0, u(1), u(4096))
offer = msg(6, 0, u(0xFF000000)) + msg(0xFF000000, 0, s("text/plain"))
receive = msg(0xFF000000, 1, s("text/plain"))
send = msg(7, 1, s("text/plain"))
seeds["clipboard"] = (
    bytes([0]) + client(reg) + host(keymap, 1, 4, b"xkb_keymap {};\n") + host(offer)
    + client(receive, 1, 0) + host(send, 1, 0)
    + bytes([0x41 | 0x80, 8]) + u(1) + b"abcd"  # READ for the first read pipe, hang up
    + bytes([0x40, 8]) + u(1) + b"efgh"  # the client writes into write pipe 1
)

os.makedirs(HERE, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {HERE}")
