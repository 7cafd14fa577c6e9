//! The socket's write half, shared by the writer task and producers that
//! write inline.
//!
//! The writer task is the sink's owner of last resort: it writes whatever a
//! producer queued and, when the socket is full, waits for it to drain. But a
//! hand-off to the writer costs a task switch, and the tokio scheduler runs a
//! task woken this way on the same thread as the waker, after it: a client
//! that starts a thousand calls in a loop would send none of them until the
//! loop ends, and the peer would sit idle meanwhile. So a producer with
//! enough queued (and the reader, with the replies of a burst) writes
//! itself, at once, while the writer is idle: the socket is polled with a
//! no-op waker, and if it is full the writer task takes over (polling with
//! its own waker).
//!
//! The lock is held only within a poll, never across an `.await`.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncWrite;

use super::outbox::{Frames, Outbox};

/// Where the frames to write come from.
pub(super) trait Source {
    /// Moves everything queued into `into` (which is empty), or marks the
    /// writer idle if nothing is.
    fn take(&self, into: &mut Frames);
}

impl Source for Outbox {
    fn take(&self, into: &mut Frames) {
        Outbox::take(self, into)
    }
}

/// Most chunks given to one vectored write.
const MAX_IOV: usize = 64;

pub(super) type Io = Box<dyn AsyncWrite + Send + Unpin>;

pub(super) struct Sink {
    io: Option<Io>,
    /// The frames being written, and how far.
    current: Frames,
    at: usize,
    offset: usize,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// The last poll found the socket full: the writer task waits for it,
    /// and producers must not poll (their no-op waker would replace its).
    stalled: bool,
    /// Bytes a producer writing inline may still write before it hands the
    /// rest over to the writer task (it is not kept writing for others).
    budget: Option<usize>,
    /// The budget ran out with frames still queued.
    more: bool,
}

impl Sink {
    pub(super) fn new(io: Io) -> Sink {
        Sink {
            io: Some(io),
            current: Frames::default(),
            at: 0,
            offset: 0,
            unflushed: false,
            stalled: false,
            budget: None,
            more: false,
        }
    }

    /// Takes the socket out, to shut it down; the sink then only fails.
    pub(super) fn take_io(&mut self) -> Option<Io> {
        self.io.take()
    }

    /// Whether a producer may write inline now.
    pub(super) fn is_free(&self) -> bool {
        self.io.is_some() && !self.stalled
    }

    /// Writes what is being written, then everything queued in `outbox`,
    /// until the outbox is empty (`Ready(Ok)`), the socket is full
    /// (`Pending`, the waker registered) or it fails.
    pub(super) fn poll_drive(
        &mut self,
        outbox: &impl Source,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let poll = self.drive(outbox, cx);
        self.stalled = poll.is_pending();
        poll
    }

    /// [`poll_drive`](Self::poll_drive) with a waker that wakes nobody, for
    /// producers: they hand a `Pending` (a full socket) over to the writer
    /// task, and stop taking more once `budget` bytes are written (then
    /// `Ready(Ok(true))`: the writer task must be woken for the rest).
    pub(super) fn poll_drive_inline(
        &mut self,
        outbox: &impl Source,
        budget: usize,
    ) -> Poll<std::io::Result<bool>> {
        let mut cx = Context::from_waker(Waker::noop());
        self.budget = Some(budget);
        self.more = false;
        let poll = self.poll_drive(outbox, &mut cx);
        self.budget = None;
        poll.map_ok(|()| std::mem::take(&mut self.more))
    }

    fn drive(&mut self, outbox: &impl Source, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        };
        loop {
            let chunks = self.current.chunks();
            // Skip what is written (and empty chunks).
            while self.at < chunks.len() && chunks[self.at].as_slice().len() == self.offset {
                self.at += 1;
                self.offset = 0;
            }
            if self.at == chunks.len() {
                if self.unflushed {
                    match Pin::new(&mut *io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        other => return other,
                    }
                }
                self.current.clear();
                (self.at, self.offset) = (0, 0);
                if self.budget == Some(0) {
                    // Done with its share: what is queued is the writer's.
                    self.more = true;
                    return Poll::Ready(Ok(()));
                }
                outbox.take(&mut self.current);
                if self.current.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let polled = match &chunks[self.at..] {
                // The common case, small frames back to back in one buffer:
                // no vector of slices to fill.
                [only] => {
                    let one = [IoSlice::new(&only.as_slice()[self.offset..])];
                    Pin::new(&mut *io).poll_write_vectored(cx, &one)
                }
                many => {
                    let mut slices = [IoSlice::new(&[]); MAX_IOV];
                    let mut n = 0;
                    for (i, chunk) in many.iter().enumerate() {
                        if n == MAX_IOV {
                            break;
                        }
                        let bytes = chunk.as_slice();
                        let bytes = if i == 0 { &bytes[self.offset..] } else { bytes };
                        if !bytes.is_empty() {
                            slices[n] = IoSlice::new(bytes);
                            n += 1;
                        }
                    }
                    Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n])
                }
            };
            let mut written = match polled {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(written)) => written,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.unflushed = true;
            if let Some(budget) = &mut self.budget {
                *budget = budget.saturating_sub(written);
            }
            while written > 0 && self.at < chunks.len() {
                let left = chunks[self.at].as_slice().len() - self.offset;
                if written >= left {
                    written -= left;
                    self.at += 1;
                    self.offset = 0;
                } else {
                    self.offset += written;
                    written = 0;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::wire::Message;

    #[tokio::test]
    async fn a_full_socket_is_left_to_the_writer_and_nothing_is_lost() {
        // A pipe of 64 bytes: the inline poll cannot write everything.
        let (w, mut r) = tokio::io::duplex(64);
        let outbox = Outbox::new(1 << 20);
        let mut expected = Vec::new();
        let mut frames = Frames::default();
        for i in 0..50u64 {
            frames
                .encode(&Message::Cancel { id: i }, &[], usize::MAX)
                .unwrap();
            crate::wire::encode_into(&Message::Cancel { id: i }, &mut expected).unwrap();
        }
        let big = Bytes::from(vec![5u8; super::super::outbox::BIG]);
        let msg = crate::wire::Message::Reply {
            id: 1,
            result: Ok(crate::wire::WireValue::Bytes(std::borrow::Cow::Borrowed(
                &big,
            ))),
        };
        frames
            .encode(&msg, std::slice::from_ref(&big), usize::MAX)
            .unwrap();
        crate::wire::encode_into(&msg, &mut expected).unwrap();
        outbox.push_quietly(&mut frames);
        let mut sink = Sink::new(Box::new(w));
        assert!(sink.poll_drive_inline(&outbox, usize::MAX).is_pending());
        assert!(!sink.is_free(), "a stalled sink is the writer's");
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            r.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        });
        std::future::poll_fn(|cx| sink.poll_drive(&outbox, cx))
            .await
            .unwrap();
        assert!(sink.is_free());
        tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
    }

    /// A source that always has one more small batch, up to `left`.
    struct Endless {
        left: std::cell::Cell<usize>,
    }

    impl Source for Endless {
        fn take(&self, into: &mut Frames) {
            if self.left.get() > 0 {
                self.left.set(self.left.get() - 1);
                into.encode(&Message::Ping, &[], usize::MAX).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_producer_writes_its_budget_and_leaves_the_rest_to_the_writer() {
        let (w, mut r) = tokio::io::duplex(1 << 16);
        let source = Endless {
            left: std::cell::Cell::new(3),
        };
        let mut sink = Sink::new(Box::new(w));
        let mut ping = Vec::new();
        crate::wire::encode_into(&Message::Ping, &mut ping).unwrap();
        // A budget of one byte: one batch is written, the rest is left to
        // the writer (and the sink stays free: the socket is not full).
        match sink.poll_drive_inline(&source, 1) {
            Poll::Ready(Ok(more)) => assert!(more, "more is queued"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(sink.is_free());
        let mut got = vec![0u8; ping.len()];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ping);
        assert_eq!(source.left.get(), 2);
        // The writer task writes the rest, and finds the source empty.
        std::future::poll_fn(|cx| sink.poll_drive(&source, cx))
            .await
            .unwrap();
        let mut rest = vec![0u8; 2 * ping.len()];
        r.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, [ping.clone(), ping].concat());
        assert!(sink.is_free());
    }
}
