//! The worker thread of one Wayland channel: polls the host socket, the read ends of pipes,
//! write pipes with bytes waiting, and a wake eventfd; turns what arrives into ring messages.
//!
//! It stops reading the host socket and pipes while the ring-message queue is full (the guest
//! is not polling), which pushes back on the compositor through its socket buffer.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use crossway_protocols::cross_domain::{CROSS_DOMAIN_MAX_READ_WRITE_DATA, RingMessage};
use rustix::event::{PollFd, PollFlags};

use super::state::State;
use super::sys;
use crossway_relay::{Outgoing, RelayError};

pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Source {
    Wake,
    Host(Arc<UnixStream>),
    ReadPipe(u32, Arc<OwnedFd>),
    WritePipe(u32, Arc<OwnedFd>),
    Closing(u64, Arc<OwnedFd>),
}

/// Runs until the context sets `stop`.
pub(crate) fn run(state: Arc<Mutex<State>>) {
    let (wake, read_size) = {
        let st = lock(&state);
        (st.wake.clone(), st.limits.host_read_bytes.max(64))
    };
    let mut buf = vec![0u8; read_size];
    let mut pipe_buf = vec![0u8; CROSS_DOMAIN_MAX_READ_WRITE_DATA];
    loop {
        let mut sources = vec![(Source::Wake, PollFlags::IN)];
        {
            let st = lock(&state);
            if st.stop {
                return;
            }
            let room = st.has_room();
            if let Some(ch) = &st.channel
                && let Some(host) = &ch.host
            {
                let mut flags = PollFlags::empty();
                if room {
                    flags |= PollFlags::IN;
                }
                if !ch.host_out.is_empty() {
                    flags |= PollFlags::OUT;
                }
                if !flags.is_empty() {
                    sources.push((Source::Host(host.clone()), flags));
                }
            }
            if room {
                for (&id, fd) in &st.read_pipes {
                    sources.push((Source::ReadPipe(id, fd.clone()), PollFlags::IN));
                }
            }
            for (&id, item) in &st.items {
                if let super::state::Item::WritePipe(wp) = item
                    && !wp.buf.is_empty()
                {
                    sources.push((Source::WritePipe(id, wp.fd.clone()), PollFlags::OUT));
                }
            }
            for (&k, wp) in &st.closing {
                sources.push((Source::Closing(k, wp.fd.clone()), PollFlags::OUT));
            }
        }
        let ready: Vec<PollFlags> = {
            let mut fds: Vec<PollFd<'_>> = sources
                .iter()
                .map(|(s, flags)| {
                    let fd = match s {
                        Source::Wake => wake.as_fd(),
                        Source::Host(h) => h.as_fd(),
                        Source::ReadPipe(_, fd)
                        | Source::WritePipe(_, fd)
                        | Source::Closing(_, fd) => fd.as_fd(),
                    };
                    PollFd::from_borrowed_fd(fd, *flags)
                })
                .collect();
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cross-domain worker poll failed");
                    lock(&state).end_channel("worker poll failed");
                    return;
                }
            }
            fds.iter().map(PollFd::revents).collect()
        };
        for ((source, asked), revents) in sources.iter().zip(ready) {
            if revents.is_empty() {
                continue;
            }
            match source {
                Source::Wake => crossway_sys::eventfd::drain(wake.as_fd()),
                Source::Host(host) => {
                    if revents.intersects(PollFlags::OUT | PollFlags::HUP | PollFlags::ERR)
                        && asked.contains(PollFlags::OUT)
                    {
                        flush_host(&state);
                    }
                    // Only read while the ring queue has room, even on a hang-up: what the
                    // compositor sent before closing is still owed to the guest.
                    if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR)
                        && asked.contains(PollFlags::IN)
                    {
                        read_host(&state, host, &mut buf);
                    }
                }
                Source::ReadPipe(id, fd) => read_pipe(&state, *id, fd, &mut pipe_buf),
                Source::WritePipe(id, _) => {
                    let mut st = lock(&state);
                    if let Some(super::state::Item::WritePipe(wp)) = st.items.get_mut(id) {
                        wp.flush();
                    }
                }
                Source::Closing(k, _) => {
                    let mut st = lock(&state);
                    if st.closing.get_mut(k).is_some_and(|wp| wp.flush()) {
                        st.closing.remove(k);
                    }
                }
            }
        }
    }
}

fn flush_host(state: &Mutex<State>) {
    let mut st = lock(state);
    let Some(ch) = st.channel.as_mut() else {
        return;
    };
    let Some(host) = ch.host.clone() else {
        return;
    };
    if let Err(e) = ch.host_out.flush(host.as_fd()) {
        st.end_channel(&format!("writing to the host compositor: {e}"));
    }
}

fn read_host(state: &Mutex<State>, host: &UnixStream, buf: &mut [u8]) {
    let received = crossway_sys::fdpass::recv_with_fds(host.as_fd(), buf);
    let mut st = lock(state);
    match received {
        Ok(crossway_sys::fdpass::Received::WouldBlock) => {}
        Ok(crossway_sys::fdpass::Received::Eof) => st.host_closed(),
        Err(e) => st.end_channel(&format!("reading from the host compositor: {e}")),
        Ok(crossway_sys::fdpass::Received::Data(n, fds)) => {
            let mut out = Outgoing::default();
            let Some(ch) = st.channel.as_mut() else {
                return;
            };
            if ch.host.is_none() {
                return;
            }
            let r = ch.relay.host_to_guest(&buf[..n], fds, &mut out);
            if let Err(e) = st.queue_to_guest(&mut out) {
                st.end_channel(&e.0);
                return;
            }
            match r {
                Ok(()) => {}
                Err(RelayError::Guest(e) | RelayError::Host(e)) => st.end_channel(&e),
            }
        }
    }
}

fn read_pipe(state: &Mutex<State>, id: u32, fd: &OwnedFd, buf: &mut [u8]) {
    let r = sys::read_nonblocking(fd.as_fd(), buf);
    let mut st = lock(state);
    match r {
        Ok(None) => {}
        Ok(Some(n)) if n > 0 => st.push_ring(&RingMessage::Read {
            identifier: id,
            hang_up: false,
            data: &buf[..n],
        }),
        other => {
            if let Err(e) = other {
                tracing::debug!(id, error = %e, "read pipe failed; hanging up");
            }
            st.read_pipes.remove(&id);
            st.push_ring(&RingMessage::Read {
                identifier: id,
                hang_up: true,
                data: &[],
            });
        }
    }
}
