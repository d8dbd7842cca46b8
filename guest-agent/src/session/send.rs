//! Packing relayed requests into cross-domain SENDs (at most 3744 bytes, 28 identifiers and one
//! read pipe each, every identifier with its message).

use super::*;

impl SendQueue {
    /// Where the next message starts.
    pub(super) fn mark(&self) -> (usize, usize, usize) {
        (self.bytes.len(), self.ids.len(), self.pipes.len())
    }

    /// Closes the message begun at `mark`, if it wrote anything.
    pub(super) fn end_message(&mut self, mark: (usize, usize, usize)) {
        if self.bytes.len() > mark.0 {
            self.ends.push((self.bytes.len(), self.ids.len()));
        }
    }

    /// Forgets a message begun at `mark` that failed half-way.
    pub(super) fn rollback(&mut self, (bytes, ids, pipes): (usize, usize, usize)) {
        self.bytes.truncate(bytes);
        self.ids.truncate(ids);
        self.pipes.truncate(pipes);
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ids.clear();
        self.ends.clear();
        self.pipes.clear();
    }
}

impl<D: VirtGpu> Session<D> {
    /// Sends what [`Session::client_message`] queued, in SENDs of at most 3744 bytes, 28
    /// identifiers and one read pipe, each a slice of the queue; a message's identifiers go
    /// with its first bytes, and a message longer than a SEND is split.
    pub(super) fn flush_sends(&mut self) -> Result<(), SessionError> {
        let mut q = std::mem::take(&mut self.sendq);
        let r = self.send_queue(&mut q);
        q.clear();
        self.sendq = q;
        r
    }

    pub(super) fn send_queue(&mut self, q: &mut SendQueue) -> Result<(), SessionError> {
        let is_pipe = |i: &SendId| *i == SendId::ReadPipe;
        // The chunk gathered so far: q.bytes[b0..b1], q.ids[i0..i1].
        let (mut b0, mut i0) = (0, 0);
        let (mut b1, mut i1) = (0, 0);
        for &(b_end, i_end) in &q.ends {
            let len = b_end - b1;
            let pipes = q.ids[i0..i_end].iter().filter(|i| is_pipe(i)).count();
            if b_end - b0 > CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA
                || i_end - i0 > CROSS_DOMAIN_MAX_IDENTIFIERS
                || pipes > 1
            {
                self.send_chunk(&q.bytes[b0..b1], &q.ids[i0..i1], &mut q.pipes)?;
                (b0, i0) = (b1, i1);
            }
            if len > CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA {
                // One long message: its identifiers ride with the first part.
                let mut parts = q.bytes[b1..b_end].chunks(CROSS_DOMAIN_MAX_SEND_RECEIVE_DATA);
                if let Some(first) = parts.next() {
                    self.send_chunk(first, &q.ids[i1..i_end], &mut q.pipes)?;
                }
                for part in parts {
                    self.send_chunk(part, &[], &mut q.pipes)?;
                }
                (b0, i0) = (b_end, i_end);
            }
            (b1, i1) = (b_end, i_end);
        }
        self.send_chunk(&q.bytes[b0..b1], &q.ids[i0..i1], &mut q.pipes)
    }

    /// One SEND; the read pipes it names take the first fds of `pipes`.
    pub(super) fn send_chunk(
        &mut self,
        data: &[u8],
        ids: &[SendId],
        pipes: &mut VecDeque<OwnedFd>,
    ) -> Result<(), SessionError> {
        if data.is_empty() && ids.is_empty() {
            return Ok(());
        }
        let sent = self.ch.send(data, ids)?;
        AgentStats::add(&self.stats.sends, 1);
        for (want, got) in ids.iter().zip(&sent) {
            if *want == SendId::ReadPipe
                && let Some(fd) = pipes.pop_front()
            {
                self.read_pipes.insert(
                    got.id,
                    ClientReadPipe {
                        write: fd,
                        queue: VecDeque::new(),
                        hang_up: false,
                    },
                );
            }
        }
        Ok(())
    }
}
