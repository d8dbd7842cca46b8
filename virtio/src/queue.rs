//! Moving requests and responses through a virtqueue: read one chain's readable bytes, let
//! the device process them, write the response into the writable part, and put the chain in
//! the used ring now or, for a pending fence, later.

use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT};

use crate::device::GpuDevice;
use crate::fence::HeldDescriptor;
use crate::memory::GuestMem;
use crate::protocol::{
    GpuResponse, MAX_REQUEST_SIZE, MAX_SUBMIT_SIZE, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    virtio_gpu_ctrl_hdr,
};

/// Why a queue could not be serviced.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue's rings are not in guest memory, or similar.
    #[error("virtqueue")]
    Queue(#[from] virtio_queue::Error),
}

/// Most bytes read from one chain: a full `SUBMIT_3D` or a full scatter list.
const MAX_CHAIN_READ: usize = {
    let s = size_of::<virtio_gpu_ctrl_hdr>() + 8 + MAX_SUBMIT_SIZE as usize;
    if s > MAX_REQUEST_SIZE {
        s
    } else {
        MAX_REQUEST_SIZE
    }
};

/// Processes every available chain. Returns whether any entry went into the used ring.
pub fn process_queue(
    device: &mut GpuDevice,
    queue: &mut Queue,
    mem: &GuestMem,
) -> Result<bool, QueueError> {
    let mut used = false;
    // Reused for every chain of this call: the request bytes and the descriptors to return.
    let mut buf = Vec::new();
    let mut ready = Vec::new();
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let response_and_fence = match chain.clone().reader(mem) {
            Ok(mut reader) => {
                let n = reader.available_bytes();
                if n > MAX_CHAIN_READ {
                    tracing::debug!(bytes = n, "request larger than the device reads");
                    let hdr = read_hdr(&mut reader);
                    (
                        GpuResponse::Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER).encode(&hdr),
                        None,
                    )
                } else {
                    buf.clear();
                    match reader.read_to_end(&mut buf) {
                        Ok(_) => {
                            let o = device.process(&buf);
                            (o.response, o.fence)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "unreadable request");
                            (Vec::new(), None)
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed descriptor chain");
                (Vec::new(), None)
            }
        };
        let (response, fence) = response_and_fence;
        let written = match chain.writer(mem) {
            Ok(mut w) => {
                let n = response.len().min(w.available_bytes());
                if n < response.len() {
                    tracing::debug!(need = response.len(), have = n, "response truncated");
                }
                w.write_all(&response[..n]).map(|_| n).unwrap_or(0)
            }
            Err(_) => 0,
        };
        let desc = HeldDescriptor {
            head,
            len: written as u32,
        };
        device.complete(fence, desc, &mut ready);
        for d in ready.drain(..) {
            queue.add_used(mem, d.head, d.len)?;
            used = true;
        }
    }
    used |= release(device, queue, mem)?;
    Ok(used)
}

/// Puts descriptors whose fences completed (or whose context went away) in the used ring.
pub fn release(
    device: &mut GpuDevice,
    queue: &mut Queue,
    mem: &GuestMem,
) -> Result<bool, QueueError> {
    let mut used = false;
    let mut ds = device.take_orphans();
    ds.extend(device.take_completed());
    for d in ds {
        queue.add_used(mem, d.head, d.len)?;
        used = true;
    }
    Ok(used)
}

fn read_hdr(reader: &mut impl Read) -> virtio_gpu_ctrl_hdr {
    let mut b = [0u8; size_of::<virtio_gpu_ctrl_hdr>()];
    if reader.read_exact(&mut b).is_ok() {
        zerocopy::FromBytes::read_from_bytes(&b[..]).unwrap_or_default()
    } else {
        virtio_gpu_ctrl_hdr::default()
    }
}
