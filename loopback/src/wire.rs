//! The loopback socket protocol: each `VirtGpu` call of a guest program in another process, and
//! its answer, as one frame on a Unix stream socket, with file descriptors passed by
//! `SCM_RIGHTS` (`crossway_sys::fdpass`).
//!
//! One connection is one open device file (one DRM fd: at most one context, its own GEM
//! handles and event queue), as with the kernel.
//!
//! ```text
//!  frame    = len: u32 | body: [u8; len]            (len <= max_message, else the connection closes)
//!  hello    = "CWVG" | version: u32 = 1 | status: u32 | max_message: u32      server → client, first
//!             status 0: the event fd rides along (the client polls and reads it directly);
//!             status 1: an error follows (for example the connection limit) and the server closes
//!  request  = op: u32 | arguments                    client → server, one at a time
//!  reply    = status: u32 = 0 | results              server → client, one per request
//!           | status: u32 = 1 | error
//!  error    = kind: u32 | value: u64 | message: bytes      (kinds: `VirtGpuError` variants 1..=8)
//!  bytes    = len: u32 | [u8; len]
//! ```
//! All integers little-endian. Requests and their results:
//!
//! | op | call | arguments | results |
//! |---|---|---|---|
//! | 1 | `get_param` | param: u64 | value: u64 |
//! | 2 | `get_caps` | id: u32, ver: u32, max_len: u32 | size: u64, data: bytes |
//! | 3 | `context_init` | n: u32, n × (param: u64, value: u64) | — |
//! | 4 | `resource_create_blob` | blob_mem: u32, blob_flags: u32, size: u64, blob_id: u64, cmd: bytes | bo: u32, res: u32 |
//! | 5 | `map` | bo: u32 | n: u32, n × (offset: u64, len: u64) + **fd** |
//! | 6 | `execbuffer` | flags: u32, ring_idx: u32, n: u32, n × bo: u32, command: bytes | — |
//! | 7 | `wait` | bo: u32, flags: u32 | — |
//! | 8 | `resource_info` | bo: u32 | bo: u32, res: u32, size: u32, blob_mem: u32 |
//! | 9 | `prime_handle_to_fd` | bo: u32 | **fd** |
//! | 10 | `prime_fd_to_handle` | **fd** | bo: u32 |
//! | 11 | `gem_close` | bo: u32 | — |
//!
//! `map` answers with the file behind the blob and the pieces of it to map one after another
//! (what `mmap::Mapping::new` takes): for a guest blob that is the guest-RAM memfd and the
//! blob's scattered pages, for a host blob the backend's blob fd. So a loopback guest program
//! can reach all of guest RAM, as the guest kernel could; the loopback is a test rig, not a
//! security boundary (the proxy is).

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use crossway_protocols::virtgpu::{VirtGpuError, drm_virtgpu_context_set_param};

use crossway_sys::fdpass;

/// First word of the hello.
pub const MAGIC: [u8; 4] = *b"CWVG";
/// Protocol version.
pub const VERSION: u32 = 1;
/// Default largest frame body either side accepts.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Most file descriptors kept from one frame; extra ones are closed.
pub const MAX_FDS_PER_FRAME: usize = 1;
/// Longest error message kept from the peer.
const MAX_ERROR_MESSAGE: usize = 256;

/// Request op codes.
pub mod op {
    /// `get_param`.
    pub const GET_PARAM: u32 = 1;
    /// `get_caps`.
    pub const GET_CAPS: u32 = 2;
    /// `context_init`.
    pub const CONTEXT_INIT: u32 = 3;
    /// `resource_create_blob`.
    pub const CREATE_BLOB: u32 = 4;
    /// `map`.
    pub const MAP: u32 = 5;
    /// `execbuffer`.
    pub const EXECBUFFER: u32 = 6;
    /// `wait`.
    pub const WAIT: u32 = 7;
    /// `resource_info`.
    pub const RESOURCE_INFO: u32 = 8;
    /// `prime_handle_to_fd`.
    pub const PRIME_HANDLE_TO_FD: u32 = 9;
    /// `prime_fd_to_handle`.
    pub const PRIME_FD_TO_HANDLE: u32 = 10;
    /// `gem_close`.
    pub const GEM_CLOSE: u32 = 11;
}

/// Reply status: success, results follow.
pub const STATUS_OK: u32 = 0;
/// Reply status: an error follows.
pub const STATUS_ERR: u32 = 1;

/// Framing and decoding failures.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection between frames.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection inside a frame.
    #[error("peer closed the connection mid-frame")]
    Truncated,
    /// A socket call failed.
    #[error("socket")]
    Io(#[source] std::io::Error),
    /// A frame longer than the limit.
    #[error("frame of {len} bytes exceeds max_message ({max})")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame whose contents do not parse.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// One received frame.
#[derive(Debug, Default)]
pub struct Frame {
    /// The body.
    pub body: Vec<u8>,
    /// Descriptors that came with it (at most [`MAX_FDS_PER_FRAME`]).
    pub fds: Vec<OwnedFd>,
}

/// Sends one frame, with `fd` attached to its first byte.
pub fn send_frame(
    sock: BorrowedFd<'_>,
    body: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), WireError> {
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    fdpass::send_all_with_fds(
        sock,
        &[IoSlice::new(&len.to_le_bytes()), IoSlice::new(body)],
        &fds,
    )
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::WriteZero => WireError::Truncated,
        _ => WireError::Io(e),
    })
}

/// Fills `buf` from the stream, keeping descriptors that arrive on the way. Returns
/// [`WireError::Closed`] if the peer closed before the first byte.
fn read_exact_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), WireError> {
    match fdpass::read_exact_with_fds(sock, buf, fds, MAX_FDS_PER_FRAME) {
        Ok(true) => Ok(()),
        Ok(false) => Err(WireError::Closed),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Truncated),
        Err(e) => Err(WireError::Io(e)),
    }
}

/// Receives one frame of at most `max` body bytes. An oversized frame is an error without
/// reading its body: the stream cannot be resynchronised, so the caller closes it.
pub fn recv_frame(sock: BorrowedFd<'_>, max: usize) -> Result<Frame, WireError> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    read_exact_with_fds(sock, &mut header, &mut fds)?;
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    match read_exact_with_fds(sock, &mut body, &mut fds) {
        Err(WireError::Closed) if len > 0 => return Err(WireError::Truncated),
        r => r?,
    }
    Ok(Frame { body, fds })
}

/// Little-endian encoder.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends `len: u32 | bytes` (longer slices are cut at `u32::MAX`, beyond any frame).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let n = b.len().min(u32::MAX as usize);
        self.u32(n as u32);
        self.0.extend_from_slice(&b[..n]);
        self
    }
}

/// Little-endian decoder over untrusted bytes: every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Malformed("message too short"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(w))
    }
    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }
    /// `len: u32 | bytes`.
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// `n` items of `item_size` bytes follow: checks they fit before anything is allocated.
    pub fn count(&mut self, item_size: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        match n.checked_mul(item_size) {
            Some(total) if total <= self.b.len() => Ok(n),
            _ => Err(WireError::Malformed("count larger than the message")),
        }
    }
    /// Fails unless everything was read.
    pub fn finish(self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes"))
        }
    }
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// op 1.
    GetParam {
        /// `VIRTGPU_PARAM_*`.
        param: u64,
    },
    /// op 2.
    GetCaps {
        /// Capset id.
        id: u32,
        /// Version.
        version: u32,
        /// The caller's buffer size.
        max_len: u32,
    },
    /// op 3.
    ContextInit(Vec<drm_virtgpu_context_set_param>),
    /// op 4.
    CreateBlob(crossway_protocols::virtgpu::drm_virtgpu_resource_create_blob),
    /// op 5.
    Map {
        /// GEM handle.
        bo: u32,
    },
    /// op 6.
    Execbuffer {
        /// `VIRTGPU_EXECBUF_*`.
        flags: u32,
        /// Ring.
        ring_idx: u32,
        /// GEM handles.
        bo_handles: Vec<u32>,
        /// Command bytes.
        command: Vec<u8>,
    },
    /// op 7.
    Wait {
        /// GEM handle.
        bo: u32,
        /// `VIRTGPU_WAIT_*`.
        flags: u32,
    },
    /// op 8.
    ResourceInfo {
        /// GEM handle.
        bo: u32,
    },
    /// op 9.
    PrimeHandleToFd {
        /// GEM handle.
        bo: u32,
    },
    /// op 10 (the fd travels as ancillary data).
    PrimeFdToHandle,
    /// op 11.
    GemClose {
        /// GEM handle.
        bo: u32,
    },
}

impl Request {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Request::GetParam { param } => {
                w.u32(op::GET_PARAM).u64(*param);
            }
            Request::GetCaps {
                id,
                version,
                max_len,
            } => {
                w.u32(op::GET_CAPS).u32(*id).u32(*version).u32(*max_len);
            }
            Request::ContextInit(params) => {
                w.u32(op::CONTEXT_INIT).u32(params.len() as u32);
                for p in params {
                    w.u64(p.param).u64(p.value);
                }
            }
            Request::CreateBlob(b) => {
                w.u32(op::CREATE_BLOB)
                    .u32(b.blob_mem)
                    .u32(b.blob_flags)
                    .u64(b.size)
                    .u64(b.blob_id)
                    .bytes(&b.cmd);
            }
            Request::Map { bo } => {
                w.u32(op::MAP).u32(*bo);
            }
            Request::Execbuffer {
                flags,
                ring_idx,
                bo_handles,
                command,
            } => {
                w.u32(op::EXECBUFFER)
                    .u32(*flags)
                    .u32(*ring_idx)
                    .u32(bo_handles.len() as u32);
                for h in bo_handles {
                    w.u32(*h);
                }
                w.bytes(command);
            }
            Request::Wait { bo, flags } => {
                w.u32(op::WAIT).u32(*bo).u32(*flags);
            }
            Request::ResourceInfo { bo } => {
                w.u32(op::RESOURCE_INFO).u32(*bo);
            }
            Request::PrimeHandleToFd { bo } => {
                w.u32(op::PRIME_HANDLE_TO_FD).u32(*bo);
            }
            Request::PrimeFdToHandle => {
                w.u32(op::PRIME_FD_TO_HANDLE);
            }
            Request::GemClose { bo } => {
                w.u32(op::GEM_CLOSE).u32(*bo);
            }
        }
        w.0
    }

    /// Parses a frame body from the peer.
    pub fn decode(body: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader::new(body);
        let req = match r.u32()? {
            op::GET_PARAM => Request::GetParam { param: r.u64()? },
            op::GET_CAPS => Request::GetCaps {
                id: r.u32()?,
                version: r.u32()?,
                max_len: r.u32()?,
            },
            op::CONTEXT_INIT => {
                let n = r.count(16)?;
                let mut params = Vec::with_capacity(n);
                for _ in 0..n {
                    params.push(drm_virtgpu_context_set_param {
                        param: r.u64()?,
                        value: r.u64()?,
                    });
                }
                Request::ContextInit(params)
            }
            op::CREATE_BLOB => Request::CreateBlob(
                crossway_protocols::virtgpu::drm_virtgpu_resource_create_blob {
                    blob_mem: r.u32()?,
                    blob_flags: r.u32()?,
                    size: r.u64()?,
                    blob_id: r.u64()?,
                    cmd: r.bytes()?.to_vec(),
                },
            ),
            op::MAP => Request::Map { bo: r.u32()? },
            op::EXECBUFFER => {
                let flags = r.u32()?;
                let ring_idx = r.u32()?;
                let n = r.count(4)?;
                let mut bo_handles = Vec::with_capacity(n);
                for _ in 0..n {
                    bo_handles.push(r.u32()?);
                }
                Request::Execbuffer {
                    flags,
                    ring_idx,
                    bo_handles,
                    command: r.bytes()?.to_vec(),
                }
            }
            op::WAIT => Request::Wait {
                bo: r.u32()?,
                flags: r.u32()?,
            },
            op::RESOURCE_INFO => Request::ResourceInfo { bo: r.u32()? },
            op::PRIME_HANDLE_TO_FD => Request::PrimeHandleToFd { bo: r.u32()? },
            op::PRIME_FD_TO_HANDLE => Request::PrimeFdToHandle,
            op::GEM_CLOSE => Request::GemClose { bo: r.u32()? },
            _ => return Err(WireError::Malformed("unknown op")),
        };
        r.finish()?;
        Ok(req)
    }
}

/// Appends `err` in the reply's error encoding.
pub fn encode_error(w: &mut Writer, err: &VirtGpuError) {
    let (kind, value, msg): (u32, u64, &str) = match err {
        VirtGpuError::InvalidArgument(m) => (1, 0, m),
        VirtGpuError::NoSuchHandle(h) => (2, u64::from(*h), ""),
        VirtGpuError::OutOfMemory(m) => (3, 0, m),
        VirtGpuError::Busy => (4, 0, ""),
        VirtGpuError::TimedOut => (5, 0, ""),
        VirtGpuError::Device(c) => (6, u64::from(*c), ""),
        VirtGpuError::DeviceLost(m) => (7, 0, m.as_str()),
        VirtGpuError::Os(e) => (8, u64::from(*e as u32), ""),
    };
    w.u32(kind).u64(value).bytes(msg.as_bytes());
}

/// Reads an error encoded by [`encode_error`].
pub fn decode_error(r: &mut Reader<'_>) -> Result<VirtGpuError, WireError> {
    let kind = r.u32()?;
    let value = r.u64()?;
    let raw = r.bytes()?;
    let msg = String::from_utf8_lossy(&raw[..raw.len().min(MAX_ERROR_MESSAGE)]).into_owned();
    Ok(match kind {
        1 => VirtGpuError::InvalidArgument(intern(msg)),
        2 => VirtGpuError::NoSuchHandle(value as u32),
        3 => VirtGpuError::OutOfMemory(intern(msg)),
        4 => VirtGpuError::Busy,
        5 => VirtGpuError::TimedOut,
        6 => VirtGpuError::Device(value as u32),
        7 => VirtGpuError::DeviceLost(msg),
        8 => VirtGpuError::Os(value as u32 as i32),
        _ => return Err(WireError::Malformed("unknown error kind")),
    })
}

/// `VirtGpuError`'s messages are `&'static str`; the server's come from a small fixed set, so
/// each distinct one is kept once, up to a bound that a misbehaving server cannot push past.
fn intern(msg: String) -> &'static str {
    const MAX_INTERNED: usize = 128;
    static TABLE: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut table = TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = table.iter().find(|s| **s == msg) {
        return s;
    }
    if table.len() >= MAX_INTERNED {
        return "(loopback server message not kept)";
    }
    let s: &'static str = Box::leak(msg.into_boxed_str());
    table.push(s);
    s
}

/// The hello the server sends first.
pub fn encode_hello(result: Result<usize, &VirtGpuError>) -> Vec<u8> {
    let mut w = Writer::default();
    w.0.extend_from_slice(&MAGIC);
    w.u32(VERSION);
    match result {
        Ok(max) => {
            w.u32(STATUS_OK).u32(u32::try_from(max).unwrap_or(u32::MAX));
        }
        Err(e) => {
            w.u32(STATUS_ERR).u32(0);
            encode_error(&mut w, e);
        }
    }
    w.0
}

/// Parses the hello: the server's `max_message`, or the error it refused with.
pub fn decode_hello(body: &[u8]) -> Result<Result<usize, VirtGpuError>, WireError> {
    let mut r = Reader::new(body);
    if r.take(4)? != MAGIC {
        return Err(WireError::Malformed("not a loopback virtgpu socket"));
    }
    if r.u32()? != VERSION {
        return Err(WireError::Malformed("protocol version"));
    }
    let status = r.u32()?;
    let max = r.u32()? as usize;
    match status {
        STATUS_OK => {
            r.finish()?;
            Ok(Ok(max))
        }
        STATUS_ERR => Ok(Err(decode_error(&mut r)?)),
        _ => Err(WireError::Malformed("status")),
    }
}

/// Sends a hello or reply frame on a socket held as any fd owner.
pub fn send(sock: &impl AsFd, body: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), WireError> {
    send_frame(sock.as_fd(), body, fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn request_decode_encode_roundtrips() {
        let reqs = [
            Request::GetParam { param: 7 },
            Request::GetCaps {
                id: 5,
                version: 0,
                max_len: 16,
            },
            Request::ContextInit(vec![drm_virtgpu_context_set_param { param: 1, value: 5 }]),
            Request::CreateBlob(
                crossway_protocols::virtgpu::drm_virtgpu_resource_create_blob {
                    blob_mem: 1,
                    blob_flags: 3,
                    size: 4096,
                    cmd: vec![1, 2, 3],
                    blob_id: 9,
                },
            ),
            Request::Map { bo: 3 },
            Request::Execbuffer {
                flags: 4,
                ring_idx: 1,
                bo_handles: vec![1, 2],
                command: vec![9; 16],
            },
            Request::Wait { bo: 1, flags: 1 },
            Request::ResourceInfo { bo: 2 },
            Request::PrimeHandleToFd { bo: 2 },
            Request::PrimeFdToHandle,
            Request::GemClose { bo: 2 },
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn request_decode_truncated_or_trailing_is_malformed() {
        let b = Request::Execbuffer {
            flags: 0,
            ring_idx: 0,
            bo_handles: vec![1],
            command: vec![1, 2],
        }
        .encode();
        for n in 0..b.len() {
            assert!(Request::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Request::decode(&long).is_err());
        // A count that promises more than the message holds allocates nothing.
        let mut huge = Writer::default();
        huge.u32(op::CONTEXT_INIT).u32(u32::MAX);
        assert!(matches!(
            Request::decode(&huge.0),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn error_encode_decode_keeps_kind_and_message() {
        for e in [
            VirtGpuError::InvalidArgument("ring_idx"),
            VirtGpuError::NoSuchHandle(4),
            VirtGpuError::OutOfMemory("guest RAM"),
            VirtGpuError::Busy,
            VirtGpuError::TimedOut,
            VirtGpuError::Device(0x1200),
            VirtGpuError::DeviceLost("gone".into()),
            VirtGpuError::Os(17),
        ] {
            let mut w = Writer::default();
            encode_error(&mut w, &e);
            assert_eq!(decode_error(&mut Reader::new(&w.0)).unwrap(), e);
        }
    }

    #[test]
    fn frame_with_fd_arrives_with_its_fd_and_oversize_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let m = crossway_sys::memfd::Memfd::new("t", 4096).unwrap();
        let big = vec![7u8; 300_000];
        let reader = std::thread::spawn(move || {
            let f = recv_frame(b.as_fd(), 1 << 20).unwrap();
            assert_eq!(f.body.len(), 300_000);
            assert_eq!(f.fds.len(), 1);
            let e = recv_frame(b.as_fd(), 16).unwrap_err();
            assert!(matches!(e, WireError::TooLarge { len: 17, max: 16 }));
        });
        send(&a, &big, Some(m.file().as_fd())).unwrap();
        send(&a, &[0; 17], None).unwrap();
        reader.join().unwrap();
    }
}
