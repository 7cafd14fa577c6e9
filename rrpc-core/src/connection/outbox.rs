//! Encoded frames on their way to the socket.
//!
//! Callers, the reader (with the replies it answered inline) and spawned
//! requests encode their messages into [`Frames`] and append them to the
//! connection's [`Outbox`]; the writer takes everything queued at once and
//! writes it with one (vectored) write. Small frames are copied back to back
//! into one buffer that the writer hands back for reuse, so a frame costs
//! neither an allocation nor a channel slot; a big byte string (a
//! [`Bytes`] of [`BIG`] bytes or more) is not copied at all but queued as a
//! slice of its own between the bytes around it.
//!
//! The outbox is bounded in bytes: producers that may wait do so while
//! more than the limit is queued (the writer is behind because the peer is
//! not reading). The writer takes the queue as a whole, so at most twice the
//! limit plus one frame per producer is held.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, Message};

/// Byte strings from this size up are queued without a copy.
pub(super) const BIG: usize = 64 * 1024;
/// A reused buffer larger than this is dropped instead of kept.
const KEEP_CAPACITY: usize = 64 * 1024;

/// A run of bytes in a [`Frames`].
pub(super) enum Chunk {
    /// Bytes copied in (small frames, headers of big ones).
    Owned(Vec<u8>),
    /// A big byte string, shared with the value it came from.
    Shared(Bytes),
}

impl Chunk {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(b) => b,
        }
    }
}

/// Whole frames, in order, as a list of chunks.
#[derive(Default)]
pub(super) struct Frames {
    chunks: Vec<Chunk>,
    len: usize,
}

/// Keeps `v`, emptied, as the buffer to reuse, unless one is kept already
/// or it is too large to hold on to.
fn keep(kept: &mut Option<Vec<u8>>, mut v: Vec<u8>) {
    if kept.is_none() && v.capacity() <= KEEP_CAPACITY {
        v.clear();
        *kept = Some(v);
    }
}

/// Where a [`Frames`] stood, to roll an unfinished frame back.
struct Mark {
    chunks: usize,
    tail: usize,
    len: usize,
}

impl Frames {
    /// Total bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Empties the frames, keeping the first buffer's capacity for reuse.
    pub(super) fn clear(&mut self) {
        if let [Chunk::Owned(v)] = &mut self.chunks[..] {
            // The common case: one buffer of small frames.
            if v.capacity() <= KEEP_CAPACITY {
                v.clear();
                self.len = 0;
                return;
            }
        }
        let mut kept = None;
        for chunk in self.chunks.drain(..) {
            if let Chunk::Owned(v) = chunk {
                keep(&mut kept, v);
            }
        }
        self.chunks.extend(kept.map(Chunk::Owned));
        self.len = 0;
    }

    /// The buffer bytes are copied into: the last chunk if it is one.
    fn tail(&mut self) -> &mut Vec<u8> {
        if !matches!(self.chunks.last(), Some(Chunk::Owned(_))) {
            self.chunks.push(Chunk::Owned(Vec::with_capacity(256)));
        }
        match self.chunks.last_mut() {
            Some(Chunk::Owned(v)) => v,
            // Just ensured above.
            _ => unreachable!("the last chunk is an owned buffer"),
        }
    }

    fn copy_in(&mut self, bytes: &[u8]) {
        self.tail().extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn share(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.chunks.push(Chunk::Shared(bytes));
    }

    fn mark(&self) -> Mark {
        Mark {
            chunks: self.chunks.len(),
            tail: match self.chunks.last() {
                Some(Chunk::Owned(v)) => v.len(),
                _ => 0,
            },
            len: self.len,
        }
    }

    fn rollback(&mut self, mark: Mark) {
        self.chunks.truncate(mark.chunks);
        if let Some(Chunk::Owned(v)) = self.chunks.last_mut() {
            v.truncate(mark.tail);
        }
        self.len = mark.len;
    }

    /// Appends `msg` as one frame (length prefix included), sharing rather
    /// than copying any byte string that is a slice of one of `big`. Returns
    /// the size of the message without its prefix; on failure, or when the
    /// message is larger than `max`, nothing is appended.
    pub(super) fn encode(
        &mut self,
        msg: &Message<'_>,
        big: &[Bytes],
        max: usize,
    ) -> Result<usize, EncodeFailure> {
        self.encode_with(max, |body| {
            wire::encode::message(&mut body.writer(big), msg);
            Ok(())
        })
    }

    /// Appends one frame whose message `body` writes, length prefix
    /// included. Returns the size of the message without its prefix; when
    /// `body` fails, or the message is larger than `max`, nothing is
    /// appended.
    pub(super) fn encode_with(
        &mut self,
        max: usize,
        body: impl FnOnce(&mut Body<'_>) -> Result<(), crate::error::Error>,
    ) -> Result<usize, EncodeFailure> {
        let mark = self.mark();
        self.copy_in(&[0; 4]);
        let prefix_chunk = self.chunks.len() - 1;
        let prefix_at = self.tail().len() - 4;
        let start = self.len;
        if let Err(e) = body(&mut Body(self)) {
            self.rollback(mark);
            return Err(EncodeFailure::Refused(e));
        }
        let size = self.len - start;
        let prefix = match u32::try_from(size) {
            Ok(prefix) if size <= max => prefix,
            _ => {
                self.rollback(mark);
                return Err(EncodeFailure::TooLarge(size));
            }
        };
        if let Some(Chunk::Owned(v)) = self.chunks.get_mut(prefix_chunk) {
            v[prefix_at..prefix_at + 4].copy_from_slice(&prefix.to_be_bytes());
        }
        Ok(size)
    }

    /// Moves every frame of `other` to the end of these; `other` is left
    /// empty (with a buffer to reuse).
    pub(super) fn append(&mut self, other: &mut Frames) {
        if self.is_empty() {
            std::mem::swap(self, other);
            other.clear();
            return;
        }
        // The first small buffer of `other` is copied in and given back
        // empty, for reuse.
        let mut kept = None;
        for chunk in other.chunks.drain(..) {
            match chunk {
                Chunk::Owned(v) if v.len() < BIG => {
                    self.copy_in(&v);
                    keep(&mut kept, v);
                }
                Chunk::Owned(v) => {
                    self.len += v.len();
                    self.chunks.push(Chunk::Owned(v));
                }
                Chunk::Shared(b) => self.share(b),
            }
        }
        other.chunks.extend(kept.map(Chunk::Owned));
        other.len = 0;
    }
}

/// The frame being written by [`Frames::encode_with`]'s `body`: it can only
/// be appended to.
pub(super) struct Body<'f>(&'f mut Frames);

// A byte string gathered with the fields before it is never one to share.
const _: () = assert!(wire::encode::HEAD < BIG);

impl Body<'_> {
    /// The encoder's view of the frame: byte strings of [`BIG`] bytes or
    /// more that are slices of one of `big` are shared, not copied.
    pub(super) fn writer<'a>(&'a mut self, big: &'a [Bytes]) -> impl wire::encode::Out + 'a {
        FramesWriter {
            frames: self.0,
            big,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug)]
pub(super) enum EncodeFailure {
    /// The message is larger than allowed, by this many bytes.
    TooLarge(usize),
    /// What wrote the message gave up (a value it could not send).
    Refused(crate::error::Error),
}

/// The encoder's view of a [`Frames`]. (The encoder gathers a message's
/// small fields itself: they are copied in as they come.)
struct FramesWriter<'a> {
    frames: &'a mut Frames,
    big: &'a [Bytes],
}

impl wire::encode::Out for FramesWriter<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if bytes.len() >= BIG {
            let (start, end) = (
                bytes.as_ptr() as usize,
                bytes.as_ptr() as usize + bytes.len(),
            );
            let owner = self.big.iter().find(|b| {
                let at = b.as_ptr() as usize;
                start >= at && end <= at + b.len()
            });
            if let Some(owner) = owner {
                // Inside `owner` (checked above), so `slice_ref` cannot panic.
                self.frames.share(owner.slice_ref(bytes));
                return;
            }
        }
        self.frames.copy_in(bytes);
    }
}

/// What [`Outbox::push_quietly`] did.
pub(super) struct Pushed {
    /// The writer was waiting for work and was not woken.
    pub(super) wake: bool,
    /// Bytes queued now.
    pub(super) queued: usize,
}

/// The queue between the connection's producers and its writer.
pub(super) struct Outbox {
    queue: Mutex<Queue>,
    /// Bytes queued (a copy of `Queue::frames.len`, read without the lock).
    queued: AtomicUsize,
    /// Wakes the writer.
    work: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Bytes queued beyond which producers that can wait do.
    limit: usize,
}

struct Queue {
    frames: Frames,
    /// Whether the writer waits for work (and must be woken).
    writer_idle: bool,
}

impl Outbox {
    pub(super) fn new(limit: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                frames: Frames::default(),
                writer_idle: true,
            }),
            queued: AtomicUsize::new(0),
            work: Notify::new(),
            room: Notify::new(),
            limit: limit.max(1),
        }
    }

    /// Whether producers that can wait should.
    pub(super) fn is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.limit
    }

    /// Waits until there is room (or the connection closes).
    pub(super) async fn reserve(&self, closed: &CancellationToken) {
        while self.is_full() {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.is_full() {
                return;
            }
            tokio::select! {
                _ = room => {}
                _ = closed.cancelled() => return,
            }
        }
    }

    /// Appends `frames` (leaving it empty), whatever is queued already,
    /// and wakes the writer if it waits (the connection uses
    /// `Shared::send`, which may also write them itself).
    #[cfg(test)]
    pub(super) fn push(&self, frames: &mut Frames) {
        if self.push_quietly(frames).wake {
            self.nudge();
        }
    }

    /// Appends `frames` (leaving it empty) without waking the writer: the
    /// caller writes them itself, or calls [`nudge`](Self::nudge) if
    /// [`Pushed::wake`] says so.
    pub(super) fn push_quietly(&self, frames: &mut Frames) -> Pushed {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.frames.append(frames);
        let queued = queue.frames.len();
        self.queued.store(queued, Ordering::Release);
        Pushed {
            wake: queued > 0 && std::mem::take(&mut queue.writer_idle),
            queued,
        }
    }

    /// Wakes the writer (for work queued here or elsewhere).
    pub(super) fn nudge(&self) {
        self.work.notify_one();
    }

    /// Takes everything queued, swapping in `spare` (an empty [`Frames`]
    /// with buffers to reuse); when nothing is queued the writer is marked
    /// idle and `spare` comes back empty.
    pub(super) fn take(&self, spare: &mut Frames) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.frames.is_empty() {
                queue.writer_idle = true;
                return;
            }
            std::mem::swap(&mut queue.frames, spare);
            self.queued.store(0, Ordering::Release);
        }
        self.room.notify_waiters();
    }

    /// Completes when a producer may have queued something.
    pub(super) async fn work(&self) {
        self.work.notified().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::wire::encode::Out;
    use crate::wire::{DecodeLimits, Op, WireValue};

    const LIMITS: DecodeLimits = DecodeLimits::new(16, 1000);

    fn call(bytes: &[u8]) -> Message<'_> {
        Message::Request {
            id: 9,
            target: 0,
            timeout_ms: 1,
            op: Op::Call {
                method: Cow::Borrowed("sink"),
                args: vec![WireValue::Bytes(Cow::Borrowed(bytes))],
            },
        }
    }

    fn flat(frames: &Frames) -> Vec<u8> {
        frames
            .chunks()
            .iter()
            .flat_map(|c| c.as_slice().to_vec())
            .collect()
    }

    #[test]
    fn frames_encode_as_wire_does() {
        let mut frames = Frames::default();
        frames.encode(&call(b"abc"), &[], usize::MAX).unwrap();
        frames.encode(&Message::Ping, &[], usize::MAX).unwrap();
        let mut expected = Vec::new();
        wire::encode_into(&call(b"abc"), &mut expected).unwrap();
        wire::encode_into(&Message::Ping, &mut expected).unwrap();
        assert_eq!(flat(&frames), expected);
        assert_eq!(frames.len(), expected.len());
        assert_eq!(frames.chunks().len(), 1);
    }

    #[test]
    fn big_byte_strings_are_shared_not_copied() {
        let payload = Bytes::from(vec![7u8; BIG + 10]);
        let mut frames = Frames::default();
        frames.encode(&Message::Pong, &[], usize::MAX).unwrap();
        let size = frames
            .encode(&call(&payload), std::slice::from_ref(&payload), usize::MAX)
            .unwrap();
        frames.encode(&Message::Ping, &[], usize::MAX).unwrap();
        // Pong and the call's head, the payload itself, the ping.
        assert_eq!(frames.chunks().len(), 3);
        match &frames.chunks()[1] {
            Chunk::Shared(b) => assert_eq!(b.as_ptr(), payload.as_ptr()),
            Chunk::Owned(_) => panic!("the payload was copied"),
        }
        let mut expected = Vec::new();
        wire::encode_into(&Message::Pong, &mut expected).unwrap();
        let at = expected.len();
        wire::encode_into(&call(&payload), &mut expected).unwrap();
        wire::encode_into(&Message::Ping, &mut expected).unwrap();
        let bytes = flat(&frames);
        assert_eq!(bytes, expected);
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(len, size);
        let msg = wire::decode(&bytes[at + 4..at + 4 + len], LIMITS).unwrap();
        assert!(matches!(msg, Message::Request { id: 9, .. }));
    }

    #[test]
    fn a_frame_over_the_limit_leaves_nothing_behind() {
        let payload = Bytes::from(vec![1u8; BIG * 2]);
        let mut frames = Frames::default();
        frames.encode(&Message::Ping, &[], usize::MAX).unwrap();
        let before = flat(&frames);
        let err = frames
            .encode(&call(&payload), std::slice::from_ref(&payload), BIG)
            .unwrap_err();
        assert!(matches!(err, EncodeFailure::TooLarge(n) if n > BIG * 2));
        assert_eq!(flat(&frames), before);
        assert_eq!(frames.len(), before.len());
        // Still usable afterwards.
        frames.encode(&Message::Pong, &[], usize::MAX).unwrap();
        let mut expected = before;
        wire::encode_into(&Message::Pong, &mut expected).unwrap();
        assert_eq!(flat(&frames), expected);
    }

    #[test]
    fn a_frame_whose_writer_gives_up_leaves_nothing_behind() {
        let payload = Bytes::from(vec![3u8; BIG + 1]);
        let mut frames = Frames::default();
        frames.encode(&Message::Ping, &[], usize::MAX).unwrap();
        let before = flat(&frames);
        let err = frames
            .encode_with(usize::MAX, |body| {
                let mut out = body.writer(std::slice::from_ref(&payload));
                out.put(b"head");
                out.put(&payload); // shared: a chunk of its own
                out.put(b"tail");
                Err(crate::error::Error::Closed)
            })
            .unwrap_err();
        assert!(matches!(
            err,
            EncodeFailure::Refused(crate::error::Error::Closed)
        ));
        assert_eq!(flat(&frames), before);
        assert_eq!(frames.len(), before.len());
        assert_eq!(frames.chunks().len(), 1);
        frames.encode(&Message::Pong, &[], usize::MAX).unwrap();
        let mut expected = before;
        wire::encode_into(&Message::Pong, &mut expected).unwrap();
        assert_eq!(flat(&frames), expected);
    }

    #[test]
    fn append_keeps_order_and_reuses_buffers() {
        let payload = Bytes::from(vec![3u8; BIG]);
        let (mut a, mut b) = (Frames::default(), Frames::default());
        a.encode(&Message::Ping, &[], usize::MAX).unwrap();
        b.encode(&call(&payload), std::slice::from_ref(&payload), usize::MAX)
            .unwrap();
        b.encode(&Message::Pong, &[], usize::MAX).unwrap();
        let expected = [flat(&a), flat(&b)].concat();
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(flat(&a), expected);
        assert_eq!(a.len(), expected.len());
        // Appending into an empty one swaps, without copying.
        let mut c = Frames::default();
        let first = a.chunks()[0].as_slice().as_ptr();
        c.append(&mut a);
        assert_eq!(c.chunks()[0].as_slice().as_ptr(), first);
        assert_eq!(flat(&c), expected);
    }

    #[tokio::test]
    async fn producers_wait_for_room_and_the_writer_makes_it() {
        let outbox = std::sync::Arc::new(Outbox::new(8));
        let closed = CancellationToken::new();
        let mut frames = Frames::default();
        frames.encode(&Message::Ping, &[], usize::MAX).unwrap();
        frames.encode(&Message::Ping, &[], usize::MAX).unwrap();
        outbox.push(&mut frames);
        assert!(outbox.is_full());
        let waiter = {
            let (outbox, closed) = (outbox.clone(), closed.clone());
            tokio::spawn(async move { outbox.reserve(&closed).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut taken = Frames::default();
        outbox.take(&mut taken);
        assert!(!taken.is_empty());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!outbox.is_full());
        // Nothing queued: the writer is marked idle, and the next push wakes it.
        outbox.take(&mut taken);
        let mut more = Frames::default();
        more.encode(&Message::Pong, &[], usize::MAX).unwrap();
        outbox.push(&mut more);
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.work())
            .await
            .unwrap();
    }
}
