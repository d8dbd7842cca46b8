//! The relay engine (`crossway-relay`) fed both directions of a connection,
//! split at arbitrary points, with arbitrary fds: it must never panic, and what it forwards
//! must stay well formed.
//!
//! Input: byte 0 picks the configuration (bit 0: tagging on; bit 1: host dmabuf formats known;
//! bits 2-3: small limits). Then chunks: a flags byte (bit 0: host → guest, else guest → host;
//! bits 1-2: fds sent with the chunk; bits 3-5: what each guest fd is), a length byte, and that
//! many stream bytes. After an error every call must keep failing.

#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Arc, LazyLock};

use crossway_protocols::dmabuf::{FormatModifier, PreferenceList};
use crossway_protocols::wire;
use libfuzzer_sys::fuzz_target;

use crossway_relay::{
    BufferPath, ClientStats, GuestFd, GuestFdKind, Outgoing, Relay, RelayConfig, RelayError,
    SyncBuffers, SyncError,
};

struct CountSync;

impl SyncBuffers for CountSync {
    fn sync(&mut self, _: u32, ranges: &[(u64, u64)]) -> Result<u64, SyncError> {
        let mut total = 0u64;
        for &(start, len) in ranges {
            assert!(start.checked_add(len).is_some(), "range overflows");
            total += len;
        }
        Ok(total)
    }
}

static NULL: LazyLock<File> = LazyLock::new(|| File::open("/dev/null").expect("/dev/null"));

fn fd() -> OwnedFd {
    NULL.try_clone().expect("dup /dev/null").into()
}

fn guest_fd(selector: u8, n: u8) -> GuestFd {
    let kind = match selector {
        0 => GuestFdKind::Pipe,
        1 => GuestFdKind::Other,
        s => GuestFdKind::Memory {
            size: [0, 4096, 1 << 20, u64::MAX, 65536, 100][usize::from(s) % 6].saturating_add(u64::from(n)),
            path: [BufferPath::Copy, BufferPath::ShmZeroCopy, BufferPath::DmabufZeroCopy]
                [usize::from(s) % 3],
            resource: (s != 7).then_some(u32::from(n)),
            shrinkable: n % 5 == 0,
        },
    };
    GuestFd { fd: fd(), kind }
}

/// Checks that fd offsets are ordered and inside the bytes they go with.
fn check_fds(bytes: &[u8], fds: &[(usize, OwnedFd)]) {
    let mut last = 0;
    for (at, _) in fds {
        assert!(*at >= last && *at <= bytes.len(), "fd offset {at} out of order");
        last = *at;
    }
}

/// The output must frame into whole messages.
fn check_framing(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let m = wire::next_message(bytes)
            .expect("forwarded bytes frame")
            .expect("forwarded bytes are whole messages");
        bytes = &bytes[m.len()..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config_byte, mut rest)) = data.split_first() else {
        return;
    };
    let mut config = RelayConfig::default();
    if config_byte & 1 != 0 {
        config.policy.tagging.vm_name = Some("fuzz".into());
    }
    if config_byte & 2 != 0 {
        let mut list = PreferenceList::default();
        list.push(FormatModifier { format: 0x3432_5258, modifier: 0 }, true);
        list.push(FormatModifier { format: 0x3231_564e, modifier: 0 }, false);
        config.host_formats = Some(Arc::new(list));
    }
    if config_byte & 4 != 0 {
        config.limits.max_objects = 8;
        config.limits.max_pending_fds = 2;
        config.limits.max_string_bytes = 5;
    }
    if config_byte & 8 != 0 {
        config.limits.max_pending_bytes = 16;
        config.limits.max_shm_pool_bytes = 4096;
    }
    let mut relay = Relay::new(Arc::new(config), Arc::new(ClientStats::new("fuzz")));
    let mut out = Outgoing::default();
    let mut failed = false;
    let mut n = 0u8;
    while let [flags, len, tail @ ..] = rest {
        let flags = *flags;
        let len = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        n = n.wrapping_add(1);
        let count = (flags >> 1) & 3;
        out.clear();
        let result = if flags & 1 == 0 {
            let fds = (0..count).map(|_| guest_fd((flags >> 3) & 7, n)).collect();
            relay.from_guest(chunk, fds, &mut CountSync, &mut out)
        } else {
            let fds = (0..count).map(|_| fd()).collect();
            relay.from_host(chunk, fds, &mut out)
        };
        check_fds(&out.to_host, &out.host_fds);
        check_fds(&out.to_guest, &out.guest_fds);
        check_framing(&out.to_host);
        check_framing(&out.to_guest);
        match result {
            Ok(()) => assert!(!failed, "a failed relay accepted more input"),
            Err(RelayError::Guest(_)) if !failed => {
                // The last message to the guest is the wl_display.error.
                assert!(!out.to_guest.is_empty(), "guest error without wl_display.error");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
});
