//! The reader and writer tasks.

use std::sync::Arc;
use std::time::Duration;

use std::io::IoSlice;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use crate::error::Error;
use crate::wire::{self, DecodeLimits, Message};

use super::framing::FrameReader;
use super::outbox::Frames;
use super::Shared;

/// Replies answered inline are batched up to this size before they join the
/// outbox.
const COALESCE_BYTES: usize = 64 * 1024;
/// Most chunks given to one vectored write.
const MAX_IOV: usize = 64;
/// At most this many (id, count) pairs go in one release message.
const RELEASES_PER_MESSAGE: usize = 4096;
/// How long the last frames (a goodbye) may take to leave once closing.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

pub(super) async fn read_loop<R>(shared: Arc<Shared>, reader: R)
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let span = tracing::debug_span!("conn", id = shared.id, peer = %shared.peer);
    async {
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
        'reading: loop {
            let next = tokio::select! {
                _ = shared.closed.cancelled() => break,
                _ = shared.close_requested.notified() => {
                    // A drained connection closes here, after the last burst.
                    shared.shutdown(super::SHUTTING_DOWN, Error::Closed);
                    break;
                }
                next = frames.next() => next,
            };
            // The peer is alive: once per burst is enough.
            shared.touch();
            if !shared.on_frame(next, limits, &mut replies) {
                break;
            }
            // Handle the frames that are already here before flushing.
            while replies.len() < COALESCE_BYTES {
                match frames.next().now_or_never() {
                    Some(next) => {
                        if !shared.on_frame(next, limits, &mut replies) {
                            break 'reading;
                        }
                    }
                    None => break,
                }
            }
            if !replies.is_empty() {
                // A peer that does not read its replies stops being read.
                shared.outbox.reserve(&shared.closed).await;
                if shared.closed.is_cancelled() {
                    break;
                }
                shared.outbox.push(&mut replies);
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

pub(super) async fn write_loop<W>(shared: Arc<Shared>, mut writer: W)
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut frames = Frames::default();
    loop {
        shared.outbox.take(&mut frames);
        if frames.is_empty() {
            // Nothing queued: wait for a producer, a control message or the end.
            tokio::select! {
                biased;
                _ = shared.outbox.work() => {}
                _ = shared.closed.cancelled() => {}
            }
            shared.outbox.take(&mut frames);
        }
        // Closed meanwhile: write what is queued (a goodbye) as the last flush.
        let closing = shared.closed.is_cancelled();
        if !closing {
            shared.drain_control(&mut frames);
        }
        if !frames.is_empty() {
            let written = if closing {
                tokio::time::timeout(FINAL_FLUSH, write_frames(&mut writer, &frames))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            } else {
                tokio::select! {
                    r = write_frames(&mut writer, &frames) => r,
                    // Closed while the peer was not reading: give up on the rest.
                    _ = shared.closed.cancelled() => Err(std::io::ErrorKind::BrokenPipe.into()),
                }
            };
            if let Err(e) = written {
                shared.close(Error::ConnectionLost(format!("write failed: {e}").into()));
                break;
            }
            frames.clear();
        }
        if closing {
            break;
        }
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, writer.shutdown()).await;
}

/// Writes every chunk of `frames`, several per system call where the
/// stream takes vectored writes, then flushes.
async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &Frames,
) -> std::io::Result<()> {
    let chunks = frames.chunks();
    if chunks.len() == 1 || !writer.is_write_vectored() {
        for chunk in chunks {
            writer.write_all(chunk.as_slice()).await?;
        }
        return writer.flush().await;
    }
    // The first chunk not fully written, and how much of it was.
    let (mut at, mut offset) = (0, 0);
    while at < chunks.len() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        for (i, chunk) in chunks[at..].iter().enumerate() {
            if n == MAX_IOV {
                break;
            }
            let bytes = chunk.as_slice();
            let bytes = if i == 0 { &bytes[offset..] } else { bytes };
            if !bytes.is_empty() {
                slices[n] = IoSlice::new(bytes);
                n += 1;
            }
        }
        if n == 0 {
            break;
        }
        let mut written = writer.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && at < chunks.len() {
            let left = chunks[at].as_slice().len() - offset;
            if written >= left {
                written -= left;
                at += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
        // Skip chunks left empty.
        while at < chunks.len() && chunks[at].as_slice().len() == offset {
            at += 1;
            offset = 0;
        }
    }
    writer.flush().await
}

impl Shared {
    /// Appends queued cancels and releases to `frames` as messages.
    fn drain_control(&self, frames: &mut Frames) {
        let (cancels, releases, pong, ping) = {
            let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
            (
                std::mem::take(&mut control.cancels),
                std::mem::take(&mut control.releases),
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
