//! What the Linux `virtio_gpu` driver checks and hands out on its side of the virtgpu uAPI,
//! whatever device is behind it: shared by the loopback driver and by other userspace devices
//! that serve the same API (the reference host in `tests/`), so both refuse the same requests
//! the same way.

use std::os::fd::{BorrowedFd, OwnedFd};

use crossway_protocols::virtgpu::*;

use crossway_sys::memfd::Memfd;

/// A file's context as `CONTEXT_INIT` asked for it (unset params are 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContextParams {
    /// `VIRTGPU_CONTEXT_PARAM_CAPSET_ID`.
    pub capset_id: u32,
    /// `VIRTGPU_CONTEXT_PARAM_NUM_RINGS`.
    pub num_rings: u32,
    /// `VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK`.
    pub poll_rings_mask: u64,
}

/// Checks `CONTEXT_INIT`'s params as `virtio_gpu_context_init_ioctl` does: each param once,
/// a capset the device lists (`supported`: a bit per capset id, as
/// `VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS` answers), at most [`VIRTGPU_MAX_RINGS`] rings and a poll
/// mask within them; a debug name is accepted and ignored.
pub fn context_params(
    params: &[drm_virtgpu_context_set_param],
    supported: u64,
) -> Result<ContextParams, VirtGpuError> {
    let (mut capset, mut rings, mut mask) = (None, None, None);
    for p in params {
        let slot = match p.param {
            VIRTGPU_CONTEXT_PARAM_CAPSET_ID => &mut capset,
            VIRTGPU_CONTEXT_PARAM_NUM_RINGS => &mut rings,
            VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK => &mut mask,
            VIRTGPU_CONTEXT_PARAM_DEBUG_NAME => continue,
            _ => return Err(VirtGpuError::InvalidArgument("unknown context param")),
        };
        if slot.replace(p.value).is_some() {
            return Err(VirtGpuError::InvalidArgument("context param set twice"));
        }
    }
    let capset = capset.unwrap_or(0);
    if capset != 0 && (capset >= 64 || supported & (1 << capset) == 0) {
        return Err(VirtGpuError::InvalidArgument("capset not supported"));
    }
    let rings = rings.unwrap_or(0);
    if rings > VIRTGPU_MAX_RINGS {
        return Err(VirtGpuError::InvalidArgument("too many rings"));
    }
    let mask = mask.unwrap_or(0);
    let valid = if rings == 64 {
        u64::MAX
    } else {
        (1u64 << rings) - 1
    };
    if mask & !valid != 0 {
        return Err(VirtGpuError::InvalidArgument("poll mask outside the rings"));
    }
    Ok(ContextParams {
        // Both fit: checked above against 64.
        capset_id: capset as u32,
        num_rings: rings as u32,
        poll_rings_mask: mask,
    })
}

/// `VIRTGPU_PARAM_SUPPORTED_CAPSET_IDS` for a device listing capsets `ids`: a bit per id
/// below 64.
pub fn capset_mask(ids: impl IntoIterator<Item = u32>) -> u64 {
    ids.into_iter()
        .filter(|&id| id < 64)
        .fold(0, |m, id| m | (1u64 << id))
}

/// `GET_CAPS`: copies the device's capset `data`, cut to the `max_size` its capset info
/// announced, into `buf` as far as it goes; returns the capset's size.
pub fn copy_capset(data: &[u8], max_size: u32, buf: &mut [u8]) -> usize {
    let size = (max_size as usize).min(data.len());
    let n = size.min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    size
}

/// What `PRIME_HANDLE_TO_FD` yields on a userspace device: not a dmabuf but a token, a small
/// memfd naming the resource (`magic`, resource id, `cookie`), which `PRIME_FD_TO_HANDLE` of
/// any file of the same device turns back into a handle. `cookie` tells devices with the same
/// magic apart (two loopback VMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimeTokens {
    /// First bytes of every token of this kind of device.
    pub magic: [u8; 8],
    /// This device's.
    pub cookie: u32,
}

const TOKEN_LEN: usize = 16;

impl PrimeTokens {
    /// A token for resource `res`, as a memfd called `name`.
    pub fn export(&self, name: &str, res: u32) -> Result<OwnedFd, VirtGpuError> {
        let m =
            Memfd::new(name, TOKEN_LEN as u64).map_err(|_| VirtGpuError::OutOfMemory("memfd"))?;
        let mut b = [0u8; TOKEN_LEN];
        b[..8].copy_from_slice(&self.magic);
        b[8..12].copy_from_slice(&res.to_le_bytes());
        b[12..].copy_from_slice(&self.cookie.to_le_bytes());
        m.write_at(0, &b)
            .map_err(|_| VirtGpuError::OutOfMemory("memfd"))?;
        m.try_clone_fd()
            .map_err(|e| VirtGpuError::Os(e.raw_os_error().unwrap_or(0)))
    }

    /// The resource a token of this device names; anything else (a real dmabuf, another
    /// device's token, a short file) is refused.
    pub fn import(&self, fd: BorrowedFd<'_>) -> Result<u32, VirtGpuError> {
        let mut b = [0u8; TOKEN_LEN];
        let n = rustix::io::pread(fd, &mut b, 0).unwrap_or(0);
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        if n != TOKEN_LEN || b[..8] != self.magic || word(12) != self.cookie {
            return Err(VirtGpuError::InvalidArgument(
                "not a buffer of this device (foreign dmabufs are not imported)",
            ));
        }
        Ok(word(8))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::fd::AsFd as _;

    use super::*;

    fn p(param: u64, value: u64) -> drm_virtgpu_context_set_param {
        drm_virtgpu_context_set_param { param, value }
    }

    #[test]
    fn context_params_cross_domain_set_is_accepted() {
        let c = context_params(&CROSS_DOMAIN_CONTEXT_PARAMS, capset_mask([5, 48])).unwrap();
        assert_eq!(c.capset_id, 5);
        assert!(c.num_rings >= 1);
    }

    #[test]
    fn context_params_bad_sets_are_refused() {
        let ok = capset_mask([5]);
        let bad = [
            vec![p(VIRTGPU_CONTEXT_PARAM_CAPSET_ID, 6)],
            vec![p(VIRTGPU_CONTEXT_PARAM_CAPSET_ID, 70)],
            vec![
                p(VIRTGPU_CONTEXT_PARAM_NUM_RINGS, 1),
                p(VIRTGPU_CONTEXT_PARAM_NUM_RINGS, 1),
            ],
            vec![p(VIRTGPU_CONTEXT_PARAM_NUM_RINGS, VIRTGPU_MAX_RINGS + 1)],
            vec![
                p(VIRTGPU_CONTEXT_PARAM_NUM_RINGS, 2),
                p(VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK, 0b100),
            ],
            vec![p(0x99, 0)],
        ];
        for params in bad {
            assert!(context_params(&params, ok).is_err(), "{params:?}");
        }
    }

    #[test]
    fn copy_capset_cuts_to_max_size_and_buffer() {
        let mut buf = [0u8; 2];
        assert_eq!(copy_capset(&[1, 2, 3, 4], 3, &mut buf), 3);
        assert_eq!(buf, [1, 2]);
    }

    #[test]
    fn prime_tokens_round_trip_and_foreign_is_refused() {
        let a = PrimeTokens {
            magic: *b"TESTPRIM",
            cookie: 7,
        };
        let fd = a.export("token", 42).unwrap();
        assert_eq!(a.import(fd.as_fd()).unwrap(), 42);
        let other = PrimeTokens { cookie: 8, ..a };
        assert!(other.import(fd.as_fd()).is_err());
        let empty = Memfd::new("empty", 0).unwrap().try_clone_fd().unwrap();
        assert!(a.import(empty.as_fd()).is_err());
    }
}
