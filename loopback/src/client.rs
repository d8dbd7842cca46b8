//! The guest program's side of the loopback socket: [`LoopbackClient`] implements
//! `crossway_protocols::virtgpu::VirtGpu` by sending each call to the loopback VM's server
//! (`crossway_virtio::loopback::server`, protocol in [`crate::wire`]) and mapping the
//! descriptors it answers with.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crossway_protocols::virtgpu::*;

use crate::mmap::{Mapping, Piece};
use crate::wire::{self, Reader, Request, STATUS_ERR, STATUS_OK, WireError};

/// Largest reply a client accepts, whatever the server announces.
const CLIENT_MAX_MESSAGE: usize = 16 << 20;

/// One open loopback device file in another process: one connection to the loopback VM's
/// socket, its context and GEM handles, and the event fd the server passed at connect.
#[derive(Debug)]
pub struct LoopbackClient {
    stream: UnixStream,
    events: OwnedFd,
    max_message: usize,
    lost: Option<String>,
}

fn lost(e: impl std::fmt::Display) -> VirtGpuError {
    VirtGpuError::DeviceLost(e.to_string())
}

fn malformed(e: WireError) -> VirtGpuError {
    VirtGpuError::DeviceLost(format!("loopback server reply: {e}"))
}

impl LoopbackClient {
    /// Connects to the loopback socket at `path` (what `CROSSWAY_VIRTGPU=loopback:PATH`
    /// names): like `open("/dev/dri/renderD128")`.
    pub fn connect(path: &Path) -> Result<LoopbackClient, VirtGpuError> {
        let stream = UnixStream::connect(path)
            .map_err(|e| lost(format!("connecting to {}: {e}", path.display())))?;
        let mut hello = wire::recv_frame(stream.as_fd(), 4096).map_err(malformed)?;
        let max_message = wire::decode_hello(&hello.body).map_err(malformed)??;
        let events = hello
            .fds
            .pop()
            .ok_or_else(|| lost("loopback server sent no event fd"))?;
        Ok(LoopbackClient {
            stream,
            events,
            max_message: max_message.min(CLIENT_MAX_MESSAGE),
            lost: None,
        })
    }

    /// Sends `req` and returns the reply's results and descriptor.
    fn call(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(Vec<u8>, Option<OwnedFd>), VirtGpuError> {
        if let Some(l) = &self.lost {
            return Err(VirtGpuError::DeviceLost(l.clone()));
        }
        let r = self.exchange(req, fd);
        if let Err(VirtGpuError::DeviceLost(l)) = &r {
            // A broken stream cannot be resynchronised: every later call fails the same way.
            self.lost = Some(l.clone());
        }
        r
    }

    fn exchange(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(Vec<u8>, Option<OwnedFd>), VirtGpuError> {
        let body = req.encode();
        if body.len() > self.max_message {
            // Refused locally, as the server would close the connection over it.
            return Err(VirtGpuError::InvalidArgument(
                "request larger than the loopback socket's max_message",
            ));
        }
        wire::send_frame(self.stream.as_fd(), &body, fd).map_err(lost)?;
        let mut frame = wire::recv_frame(self.stream.as_fd(), self.max_message).map_err(lost)?;
        let mut r = Reader::new(&frame.body);
        match r.u32().map_err(malformed)? {
            STATUS_OK => {
                let rest = frame.body.split_off(4);
                Ok((rest, frame.fds.pop()))
            }
            STATUS_ERR => Err(wire::decode_error(&mut r).map_err(malformed)?),
            _ => Err(malformed(WireError::Malformed("status"))),
        }
    }

    /// Sends `req` and expects results without a descriptor.
    fn call_plain(&mut self, req: &Request) -> Result<Vec<u8>, VirtGpuError> {
        Ok(self.call(req, None)?.0)
    }

    fn call_fd(&mut self, req: &Request) -> Result<(Vec<u8>, OwnedFd), VirtGpuError> {
        match self.call(req, None)? {
            (b, Some(fd)) => Ok((b, fd)),
            (_, None) => Err(lost("loopback server reply lacks its descriptor")),
        }
    }
}

fn done(r: Reader<'_>) -> Result<(), VirtGpuError> {
    r.finish().map_err(malformed)
}

impl VirtGpu for LoopbackClient {
    type Mapping = Mapping;

    fn get_param(&mut self, param: u64) -> Result<u64, VirtGpuError> {
        let b = self.call_plain(&Request::GetParam { param })?;
        let mut r = Reader::new(&b);
        let v = r.u64().map_err(malformed)?;
        done(r)?;
        Ok(v)
    }

    fn get_caps(
        &mut self,
        cap_set_id: u32,
        cap_set_ver: u32,
        buf: &mut [u8],
    ) -> Result<usize, VirtGpuError> {
        let b = self.call_plain(&Request::GetCaps {
            id: cap_set_id,
            version: cap_set_ver,
            max_len: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        })?;
        let mut r = Reader::new(&b);
        let size = r.u64().map_err(malformed)?;
        let data = r.bytes().map_err(malformed)?;
        done(r)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        usize::try_from(size).map_err(|_| malformed(WireError::Malformed("capset size")))
    }

    fn context_init(
        &mut self,
        params: &[drm_virtgpu_context_set_param],
    ) -> Result<(), VirtGpuError> {
        done(Reader::new(
            &self.call_plain(&Request::ContextInit(params.to_vec()))?,
        ))
    }

    fn resource_create_blob(
        &mut self,
        req: &drm_virtgpu_resource_create_blob,
    ) -> Result<BlobHandles, VirtGpuError> {
        let b = self.call_plain(&Request::CreateBlob(req.clone()))?;
        let mut r = Reader::new(&b);
        let h = BlobHandles {
            bo_handle: r.u32().map_err(malformed)?,
            res_handle: r.u32().map_err(malformed)?,
        };
        done(r)?;
        Ok(h)
    }

    fn map(&mut self, bo_handle: u32) -> Result<Mapping, VirtGpuError> {
        let (b, fd) = self.call_fd(&Request::Map { bo: bo_handle })?;
        let mut r = Reader::new(&b);
        let n = r.count(16).map_err(malformed)?;
        let mut pieces = Vec::with_capacity(n);
        for _ in 0..n {
            let offset = r.u64().map_err(malformed)?;
            let len = usize::try_from(r.u64().map_err(malformed)?)
                .map_err(|_| malformed(WireError::Malformed("piece length")))?;
            pieces.push(Piece {
                fd: fd.as_fd(),
                offset,
                len,
            });
        }
        done(r)?;
        // Mapping::new checks alignment and sizes of what the server said.
        Mapping::new(&pieces)
    }

    fn execbuffer(&mut self, eb: &drm_virtgpu_execbuffer<'_>) -> Result<(), VirtGpuError> {
        done(Reader::new(&self.call_plain(&Request::Execbuffer {
            flags: eb.flags,
            ring_idx: eb.ring_idx,
            bo_handles: eb.bo_handles.to_vec(),
            command: eb.command.to_vec(),
        })?))
    }

    fn wait(&mut self, bo_handle: u32, flags: u32) -> Result<(), VirtGpuError> {
        done(Reader::new(&self.call_plain(&Request::Wait {
            bo: bo_handle,
            flags,
        })?))
    }

    fn resource_info(&mut self, bo_handle: u32) -> Result<drm_virtgpu_resource_info, VirtGpuError> {
        let b = self.call_plain(&Request::ResourceInfo { bo: bo_handle })?;
        let mut r = Reader::new(&b);
        let info = drm_virtgpu_resource_info {
            bo_handle: r.u32().map_err(malformed)?,
            res_handle: r.u32().map_err(malformed)?,
            size: r.u32().map_err(malformed)?,
            blob_mem: r.u32().map_err(malformed)?,
        };
        done(r)?;
        Ok(info)
    }

    fn prime_handle_to_fd(&mut self, bo_handle: u32) -> Result<OwnedFd, VirtGpuError> {
        let (b, fd) = self.call_fd(&Request::PrimeHandleToFd { bo: bo_handle })?;
        done(Reader::new(&b))?;
        Ok(fd)
    }

    fn prime_fd_to_handle(&mut self, fd: BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
        let (b, _) = self.call(&Request::PrimeFdToHandle, Some(fd))?;
        let mut r = Reader::new(&b);
        let h = r.u32().map_err(malformed)?;
        done(r)?;
        Ok(h)
    }

    fn gem_close(&mut self, bo_handle: u32) -> Result<(), VirtGpuError> {
        done(Reader::new(
            &self.call_plain(&Request::GemClose { bo: bo_handle })?,
        ))
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}
