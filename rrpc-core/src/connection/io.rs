//! The reader and writer tasks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tracing::Instrument;

use crate::error::Error;
use crate::wire::{self, DecodeLimits, Message};

use super::framing::FrameReader;
use super::outbox::Frames;
use super::parked::{serve_ready, ReaderScope};
use super::sink::{Sink, Source};
use super::{Shared, RELEASES_PER_MESSAGE};

/// Replies answered inline are batched up to this size before they join the
/// outbox.
const COALESCE_BYTES: usize = 64 * 1024;

/// Bytes a producer writing inline writes at most (its own frames and
/// whatever others queued meanwhile) before it leaves the rest to the
/// writer task.
const INLINE_BUDGET: usize = 256 * 1024;
/// How long the last frames (a goodbye) may take to leave once closing.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

pub(super) async fn read_loop<R>(shared: Arc<Shared>, reader: R)
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let span = tracing::debug_span!("conn", id = shared.id, peer = %shared.peer);
    async {
        // Dropped unfinished (its runtime shutting down), the reader still
        // closes the connection: parked handlers, pending calls and exports
        // are let go instead of holding each other in a cycle.
        let _close = CloseOnDrop(&shared);
        let mut frames = FrameReader::new(reader, shared.config.max_frame_len);
        let limits = DecodeLimits {
            max_depth: shared.config.max_depth,
            max_nodes: shared.config.max_nodes,
            max_bytes: shared.config.max_bytes_len,
            max_list: shared.config.max_list_len,
        };
        // Replies answered inline while handling one burst of frames go out
        // together, as one write.
        let mut replies = Frames::default();
        // Made once and kept: a waiter registered anew on every burst costs
        // two lock round trips each.
        let closed = shared.closed.cancelled();
        let close_requested = shared.close_requested.notified();
        tokio::pin!(closed, close_requested);
        loop {
            if shared.is_closed() {
                break;
            }
            let next = tokio::select! {
                // Frames first: the others are looked at only when none is
                // here, that is between bursts.
                biased;
                next = frames.next() => next,
                _ = &mut closed => break,
                _ = &mut close_requested => {
                    // A drained connection closes here, after the last burst.
                    shared.shutdown(super::SHUTTING_DOWN, Error::Closed);
                    break;
                }
            };
            // The peer is alive: once per burst is enough.
            shared.touch();
            if !shared.on_burst(next, &mut frames, limits, &mut replies) {
                break;
            }
            if !replies.is_empty() {
                // A peer that does not read its replies stops being read.
                shared.outbox.reserve(&shared.closed).await;
                if shared.is_closed() {
                    break;
                }
                // Written from here, at once: no hand-off to the writer.
                shared.send(&mut replies, 0);
            }
        }
        // The reader owns nothing else; dropping the stream half is enough.
        drop(frames);
        let _ = shared.tasks.close();
    }
    .instrument(span)
    .await
}

impl Shared {
    /// Handles a burst: the frame `first`, the frames already here after it
    /// (up to a batch of replies), then the parked handlers they woke. False
    /// when reading must stop.
    fn on_burst<R>(
        self: &Arc<Shared>,
        first: Option<std::io::Result<bytes::Bytes>>,
        frames: &mut FrameReader<R>,
        limits: DecodeLimits,
        replies: &mut Frames,
    ) -> bool
    where
        R: AsyncRead + Unpin,
    {
        let _scope = ReaderScope::enter(self);
        let mut go_on = self.on_frame(first, limits, replies);
        while go_on && replies.len() < COALESCE_BYTES {
            match frames.next().now_or_never() {
                Some(next) => go_on = self.on_frame(next, limits, replies),
                None => break,
            }
        }
        serve_ready(self, replies);
        go_on
    }

    /// Handles one result of the frame stream; false when reading must stop.
    fn on_frame(
        self: &Arc<Shared>,
        next: Option<std::io::Result<bytes::Bytes>>,
        limits: DecodeLimits,
        replies: &mut Frames,
    ) -> bool {
        let frame = match next {
            Some(Ok(frame)) => frame,
            None => {
                self.close(Error::ConnectionLost(
                    "the peer closed the connection".into(),
                ));
                return false;
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                let why = format!(
                    "frame rejected: {e} (this side accepts at most {} bytes)",
                    self.config.max_frame_len
                );
                protocol_violation(self, &why);
                return false;
            }
            Some(Err(e)) => {
                self.close(Error::ConnectionLost(format!("read failed: {e}").into()));
                return false;
            }
        };
        match wire::decode(&frame, limits) {
            Ok(msg) => match self.handle_message(msg, &frame, replies) {
                Ok(()) => true,
                Err(why) => {
                    protocol_violation(self, &why);
                    false
                }
            },
            // A well-formed message that breaks a limit fails alone.
            Err(why)
                if why.starts_with(wire::LIMIT_MARK) && self.over_limit(&frame, &why, replies) =>
            {
                true
            }
            Err(why) => {
                protocol_violation(self, &why);
                false
            }
        }
    }
}

/// The peer broke the protocol: tell it why and close.
fn protocol_violation(shared: &Shared, why: &str) {
    tracing::warn!(conn = shared.id, peer = %shared.peer, "protocol violation: {why}");
    shared.shutdown(
        &format!("protocol violation: {why}"),
        Error::Protocol(format!("the peer sent a bad frame: {why}")),
    );
}

/// The writer task: writes what producers queued and did not write
/// themselves, control messages, and what a full socket held back.
pub(super) async fn write_loop(shared: Arc<Shared>) {
    let mut closing = false;
    let closed = shared.closed.cancelled();
    tokio::pin!(closed);
    loop {
        if !closing {
            tokio::select! {
                biased;
                _ = shared.outbox.work() => {}
                _ = &mut closed => {}
            }
            closing = shared.is_closed();
        }
        let drive = std::future::poll_fn(|cx| shared.lock_sink().poll_drive(&*shared, cx));
        let written = if closing {
            // What is queued (a goodbye) goes out as the last flush, if the
            // peer reads it soon enough.
            tokio::time::timeout(FINAL_FLUSH, drive)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        } else {
            tokio::select! {
                r = drive => r,
                _ = &mut closed => {
                    closing = true;
                    continue;
                }
            }
        };
        if let Err(e) = written {
            shared.close(Error::ConnectionLost(format!("write failed: {e}").into()));
            break;
        }
        if closing {
            break;
        }
    }
    let io = shared.lock_sink().take_io();
    if let Some(mut io) = io {
        let _ = tokio::time::timeout(FINAL_FLUSH, io.shutdown()).await;
    }
}

impl Shared {
    fn lock_sink(&self) -> std::sync::MutexGuard<'_, Sink> {
        // Nothing in the sink panics while it is locked; were it poisoned,
        // its state would still be consistent (a poll either wrote or not).
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frames` and, when at least `inline_min` bytes are queued and
    /// the writer is idle, writes them from here (see [`super::sink`]);
    /// otherwise the writer task is woken if it waits.
    pub(super) fn send(&self, frames: &mut Frames, inline_min: usize) {
        let pushed = self.outbox.push_quietly(frames);
        if pushed.queued >= inline_min && self.write_inline() {
            return;
        }
        if pushed.wake {
            self.outbox.nudge();
        }
    }

    /// Writes what is queued from the calling thread; false when the
    /// writer task has the socket (busy, or waiting for it to drain).
    fn write_inline(&self) -> bool {
        let mut sink = match self.sink.try_lock() {
            Ok(sink) => sink,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        if !sink.is_free() || self.is_closed() {
            return false;
        }
        // A transport that panics here would leave the writer thinking it
        // has work in hand: the connection is closed instead of stalling.
        let _unwind = CloseOnUnwind(self);
        match sink.poll_drive_inline(self, INLINE_BUDGET) {
            Poll::Ready(Ok(false)) => {}
            // Its share is written; the rest is the writer task's.
            Poll::Ready(Ok(true)) => {
                drop(sink);
                self.outbox.nudge();
            }
            Poll::Ready(Err(e)) => {
                drop(sink);
                self.close(Error::ConnectionLost(format!("write failed: {e}").into()));
            }
            // The socket is full: the writer task waits for it to drain.
            Poll::Pending => {
                drop(sink);
                self.outbox.nudge();
            }
        }
        true
    }
}

/// Closes the connection, if it is still open, when dropped.
struct CloseOnDrop<'a>(&'a Shared);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if !self.0.is_closed() {
            self.0.close(Error::ConnectionLost(
                "the connection's runtime shut down".into(),
            ));
        }
    }
}

/// Closes the connection if dropped during a panic.
struct CloseOnUnwind<'a>(&'a Shared);

impl Drop for CloseOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close(Error::ConnectionLost(
                "the transport panicked while writing".into(),
            ));
        }
    }
}

/// What the sink writes: control messages (cancels, releases, pings), then
/// the outbox; so control messages join the next write, whoever makes it.
impl Source for Shared {
    fn take(&self, into: &mut Frames) {
        if self.control_pending.swap(false, Ordering::AcqRel) && !self.is_closed() {
            super::with_scratch(|frames| {
                self.drain_control(frames);
                self.outbox.push_quietly(frames);
            });
        }
        self.outbox.take(into);
    }
}

impl Shared {
    /// Control messages were queued: they go out with the next write, and
    /// the writer is woken in case there is none.
    pub(super) fn control_queued(&self) {
        self.control_pending.store(true, Ordering::Release);
        self.outbox.nudge();
    }

    /// Appends queued cancels and releases to `frames` as messages.
    fn drain_control(&self, frames: &mut Frames) {
        let (cancels, releases, pong, ping) = {
            let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
            // Releases wait until they are due (see `proxy_dropped`).
            let releases = if std::mem::take(&mut control.releases_due) {
                // Reset under the lock: a release queued next sets its own.
                self.release_due.store(u64::MAX, Ordering::Release);
                std::mem::take(&mut control.releases)
            } else {
                Vec::new()
            };
            (
                std::mem::take(&mut control.cancels),
                releases,
                std::mem::take(&mut control.pong),
                std::mem::take(&mut control.ping),
            )
        };
        for id in cancels {
            // These messages are tiny and well-formed: encoding cannot fail.
            let _ = frames.encode(&Message::Cancel { id }, &[], usize::MAX);
        }
        if pong {
            let _ = frames.encode(&Message::Pong, &[], usize::MAX);
        }
        if ping {
            let _ = frames.encode(&Message::Ping, &[], usize::MAX);
        }
        for chunk in releases.chunks(RELEASES_PER_MESSAGE) {
            let _ = frames.encode(
                &Message::Release {
                    refs: chunk.to_vec(),
                },
                &[],
                usize::MAX,
            );
        }
    }
}

impl Shared {
    /// A message broke a configured limit. A request is refused on its own
    /// and a call fails on its own, with the reason; returns false when the
    /// message is neither (then it is a protocol violation).
    fn over_limit(self: &Arc<Shared>, frame: &[u8], why: &str, replies: &mut Frames) -> bool {
        match wire::decode_head(frame) {
            Some(wire::Head::Request { id }) => {
                tracing::debug!(conn = self.id, request = id, "refused: {why}");
                self.refuse(
                    id,
                    crate::error::RemoteError::new(
                        crate::error::ErrorKind::Refused,
                        format!("the request was refused: {why}"),
                    ),
                    replies,
                );
                true
            }
            Some(wire::Head::Reply { id }) => {
                if let Some((_, waiter)) = self.pending.remove(&id) {
                    waiter.settle(Err(Error::Protocol(format!(
                        "the reply was refused: {why}"
                    ))));
                }
                true
            }
            None => false,
        }
    }
}
