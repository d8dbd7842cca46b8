//! One direction of a Wayland connection as a relay sees it, without the socket: the bytes of a
//! message split across reads, the fds (or what stands for them) waiting for the message that
//! carries them, and the limits on both. Modelled on wayland-backend's `BufferedSocket`
//! (`in_data`, `in_fds`), which does the same for a client or server library.
//!
//! [`MessageStream::for_each`] frames every whole message of what arrived and hands it, with
//! the fd queue, to the relay's handler; the handler processes it with the object map and takes
//! its fds with [`FdQueue::take`]. Messages are handled where they lie in the caller's buffer:
//! only a message that spans two reads is copied (into the pending buffer), so the frame loop
//! copies nothing.

use std::collections::VecDeque;

use arrayvec::ArrayVec;

use crate::wire::{self, HEADER_SIZE, MAX_ARGS, Message, WireError};

/// Limits on what a stream holds between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Bytes of one incomplete message (what it holds, or what its header announces if more).
    pub max_pending_bytes: usize,
    /// Fds received but not yet matched to a message.
    pub max_pending_fds: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_pending_bytes: wire::MAX_MESSAGE_SIZE,
            max_pending_fds: 64,
        }
    }
}

/// Why a stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError<E> {
    /// A header that can never frame a message.
    #[error("framing: {0}")]
    Framing(WireError),
    /// A partial message over [`StreamLimits::max_pending_bytes`].
    #[error("partial message of {size} bytes, over the limit max_pending_bytes = {max}")]
    PartialTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More fds waiting than [`StreamLimits::max_pending_fds`].
    #[error("{queued} fds not matched to any message, over the limit max_pending_fds = {max}")]
    TooManyFds {
        /// Fds waiting.
        queued: usize,
        /// The limit.
        max: usize,
    },
    /// The handler refused a message.
    #[error(transparent)]
    Handler(E),
}

/// The fds (or items standing for them) received and not yet matched to a message, in order.
#[derive(Debug)]
pub struct FdQueue<T>(VecDeque<T>);

impl<T> Default for FdQueue<T> {
    fn default() -> Self {
        FdQueue(VecDeque::new())
    }
}

impl<T> FdQueue<T> {
    /// Fds waiting: what a message's fd arguments may take (`fds_available` of
    /// [`crate::objects::ObjectMap::process_request`]).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No fd waiting.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first `n` fds, for a message with `n` fd arguments (at most [`MAX_ARGS`]; fewer if
    /// fewer are waiting, which the object map's decoding has already refused).
    pub fn take(&mut self, n: usize) -> ArrayVec<T, MAX_ARGS> {
        let n = n.min(MAX_ARGS).min(self.0.len());
        self.0.drain(..n).collect()
    }
}

/// One direction of a connection: a partial message and the fds waiting for their messages.
#[derive(Debug)]
pub struct MessageStream<T> {
    pending: Vec<u8>,
    fds: FdQueue<T>,
    limits: StreamLimits,
}

impl<T> Default for MessageStream<T> {
    fn default() -> Self {
        MessageStream::new(StreamLimits::default())
    }
}

impl<T> MessageStream<T> {
    /// An empty stream with these limits (allocates nothing until a message is split).
    pub fn new(limits: StreamLimits) -> MessageStream<T> {
        MessageStream {
            pending: Vec::new(),
            fds: FdQueue::default(),
            limits,
        }
    }

    /// Bytes of a partial message held.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Fds waiting for their message.
    pub fn queued_fds(&self) -> usize {
        self.fds.len()
    }

    /// Queues fds that arrived, after those already waiting.
    pub fn push_fds(&mut self, fds: impl IntoIterator<Item = T>) {
        self.fds.0.extend(fds);
    }

    /// Hands every whole message of the stream so far (the pending part, then `input`) to
    /// `each` with its raw bytes and the fd queue, and keeps the start of a partial message.
    ///
    /// Stops at the first error of framing or of `each`; the messages before it stay handled.
    /// Then checks the limits: the partial message kept, and the fds left unmatched.
    pub fn for_each<E>(
        &mut self,
        mut input: &[u8],
        mut each: impl FnMut(&[u8], &Message<'_>, &mut FdQueue<T>) -> Result<(), E>,
    ) -> Result<(), StreamError<E>> {
        if !self.pending.is_empty() {
            // Complete the one message that spans reads: its header first, then its body.
            if self.pending.len() < HEADER_SIZE {
                input = self.top_up(input, HEADER_SIZE);
                if self.pending.len() < HEADER_SIZE {
                    return self.check_limits(self.pending.len());
                }
            }
            let want = self.declared_size()?;
            input = self.top_up(input, want);
            if self.pending.len() < want {
                return self.check_limits(want);
            }
            let msg = wire::next_message(&self.pending)
                .map_err(StreamError::Framing)?
                .ok_or(StreamError::Framing(WireError::ShortHeader {
                    available: self.pending.len(),
                }))?;
            each(&self.pending, &msg, &mut self.fds).map_err(StreamError::Handler)?;
            self.pending.clear();
        }
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match wire::next_message(rest).map_err(StreamError::Framing)? {
                Some(msg) => {
                    let len = msg.len();
                    each(&rest[..len], &msg, &mut self.fds).map_err(StreamError::Handler)?;
                    pos += len;
                }
                None => break,
            }
        }
        let rest = &input[pos..];
        let size = match wire::Header::parse(rest) {
            Ok(h) => usize::from(h.size).max(rest.len()),
            Err(_) => rest.len(),
        };
        self.check_limits(size)?;
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Moves bytes from the start of `input` into the pending message until it holds `want`;
    /// returns the rest of `input`.
    fn top_up<'i>(&mut self, input: &'i [u8], want: usize) -> &'i [u8] {
        let take = want.saturating_sub(self.pending.len()).min(input.len());
        let (head, rest) = input.split_at(take);
        self.pending.extend_from_slice(head);
        rest
    }

    /// The size the pending header announces.
    fn declared_size<E>(&self) -> Result<usize, StreamError<E>> {
        wire::Header::parse(&self.pending)
            .map(|h| usize::from(h.size))
            .map_err(StreamError::Framing)
    }

    fn check_limits<E>(&self, partial: usize) -> Result<(), StreamError<E>> {
        let max = self.limits.max_pending_bytes;
        if partial > max {
            return Err(StreamError::PartialTooLarge { size: partial, max });
        }
        let max = self.limits.max_pending_fds;
        if self.fds.len() > max {
            return Err(StreamError::TooManyFds {
                queued: self.fds.len(),
                max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Arg, ObjectId, encode_unchecked};

    fn messages(n: u32) -> Vec<u8> {
        let mut out = vec![];
        for i in 0..n {
            let object = ObjectId::new(i + 1).unwrap();
            let args = [Arg::Uint(i), Arg::Str(Some(c"some text"))];
            encode_unchecked(&mut out, object, 2, &args[..(i as usize % 3).min(2)]).unwrap();
        }
        out
    }

    /// Feeds `bytes` in pieces of `step`, returning the (object, length) of each message seen.
    fn feed(stream: &mut MessageStream<u8>, bytes: &[u8], step: usize) -> Vec<(u32, usize)> {
        let mut seen = vec![];
        for piece in bytes.chunks(step) {
            stream
                .for_each(piece, |raw, msg, _| {
                    seen.push((msg.header.object.get(), raw.len()));
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        seen
    }

    #[test]
    fn messages_split_anywhere_come_out_whole_and_in_order() {
        let bytes = messages(7);
        let whole = feed(&mut MessageStream::default(), &bytes, bytes.len());
        assert_eq!(whole.len(), 7);
        for step in 1..bytes.len() {
            let mut stream = MessageStream::default();
            assert_eq!(feed(&mut stream, &bytes, step), whole, "step {step}");
            assert_eq!(stream.pending_bytes(), 0);
        }
    }

    #[test]
    fn only_the_message_spanning_two_reads_is_kept() {
        let bytes = messages(3);
        let mut stream = MessageStream::default();
        // The first read ends 4 bytes into the second message.
        let first = feed(&mut stream, &bytes[..bytes.len() - 10], usize::MAX);
        let kept = stream.pending_bytes();
        assert!(kept > 0 && kept < bytes.len() / 2, "kept {kept}");
        let rest = feed(&mut stream, &bytes[bytes.len() - 10..], usize::MAX);
        assert_eq!(first.len() + rest.len(), 3);
        assert_eq!(stream.pending_bytes(), 0);
    }

    #[test]
    fn fds_are_taken_in_order_by_their_messages() {
        let mut stream = MessageStream::new(StreamLimits::default());
        stream.push_fds([1u8, 2, 3]);
        let bytes = messages(2);
        let mut got = vec![];
        stream
            .for_each(&bytes, |_, _, fds| {
                got.extend(fds.take(2));
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(stream.queued_fds(), 0);
    }

    #[test]
    fn partial_message_over_the_limit_is_refused_by_its_header() {
        let limits = StreamLimits {
            max_pending_bytes: 16,
            max_pending_fds: 4,
        };
        let mut stream = MessageStream::<u8>::new(limits);
        let mut bytes = vec![];
        let long = [Arg::Array(&[0u8; 64])];
        encode_unchecked(&mut bytes, ObjectId::DISPLAY, 0, &long).unwrap();
        let err = stream.for_each(&bytes[..12], |_, _, _| Ok::<(), ()>(()));
        assert_eq!(err, Err(StreamError::PartialTooLarge { size: 76, max: 16 }));
        // Split inside the header: the header is completed first, then refused.
        let mut stream = MessageStream::<u8>::new(limits);
        stream
            .for_each(&bytes[..4], |_, _, _| Ok::<(), ()>(()))
            .unwrap();
        let err = stream.for_each(&bytes[4..20], |_, _, _| Ok::<(), ()>(()));
        assert_eq!(err, Err(StreamError::PartialTooLarge { size: 76, max: 16 }));
    }

    #[test]
    fn unmatched_fds_over_the_limit_are_refused() {
        let limits = StreamLimits {
            max_pending_bytes: 64,
            max_pending_fds: 2,
        };
        let mut stream = MessageStream::new(limits);
        stream.push_fds([1u8, 2, 3]);
        let err = stream.for_each(&[], |_, _, _| Ok::<(), ()>(()));
        assert_eq!(err, Err(StreamError::TooManyFds { queued: 3, max: 2 }));
    }

    #[test]
    fn bad_header_is_a_framing_error_and_handler_errors_stop_the_loop() {
        let mut stream = MessageStream::<u8>::default();
        let mut bad = messages(1);
        bad.extend_from_slice(&[1, 0, 0, 0, 0, 0, 4, 0]);
        let mut seen = 0;
        let err = stream.for_each(&bad, |_, _, _| {
            seen += 1;
            Ok::<(), ()>(())
        });
        assert_eq!(seen, 1);
        assert!(matches!(err, Err(StreamError::Framing(_))));
        let mut stream = MessageStream::<u8>::default();
        let err = stream.for_each(&messages(3), |_, _, _| Err("no"));
        assert_eq!(err, Err(StreamError::Handler("no")));
    }
}
