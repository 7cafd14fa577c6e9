//! The reader and writer tasks.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::LengthDelimitedCodec;
use tracing::Instrument;

use crate::error::Error;
use crate::wire::{self, DecodeLimits, Message};

use super::Shared;

/// Frames are copied into one buffer and written together up to this size.
const COALESCE_BYTES: usize = 64 * 1024;
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
        let mut frames = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(4)
            .max_frame_length(shared.config.max_frame_len)
            .new_read(reader);
        let limits = DecodeLimits {
            max_depth: shared.config.max_depth,
            max_nodes: shared.config.max_nodes,
            max_bytes: shared.config.max_bytes_len,
            max_list: shared.config.max_list_len,
        };
        // Replies answered inline while handling one burst of frames go out
        // together, as one write.
        let mut replies = Vec::new();
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
                let batch = std::mem::take(&mut replies);
                tokio::select! {
                    _ = shared.closed.cancelled() => break,
                    sent = shared.out.send(batch) => if sent.is_err() { break },
                }
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
        next: Option<std::io::Result<bytes::BytesMut>>,
        limits: DecodeLimits,
        replies: &mut Vec<u8>,
    ) -> bool {
        let frame = match next {
            Some(Ok(frame)) => frame.freeze(),
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
        self.touch();
        match wire::decode(&frame, limits) {
            Ok(msg) => match self.handle_message(msg, &frame, replies) {
                Ok(()) => true,
                Err(why) => {
                    protocol_violation(self, &why);
                    false
                }
            },
            // A well-formed message that breaks a limit fails alone.
            Err(why) if why.starts_with(wire::LIMIT_MARK) && self.over_limit(&frame, &why) => true,
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

pub(super) async fn write_loop<W>(
    shared: Arc<Shared>,
    mut frames: mpsc::Receiver<Vec<u8>>,
    mut writer: W,
) where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut buf: Vec<u8> = Vec::with_capacity(COALESCE_BYTES);
    let mut closing = false;
    while !closing {
        tokio::select! {
            biased;
            frame = frames.recv() => match frame {
                Some(frame) if frame.len() >= COALESCE_BYTES && buf.is_empty() => {
                    // A big frame goes out as it is, without a copy.
                    if let Err(e) = write_or_close(&shared, &mut writer, &frame).await {
                        shared.close(Error::ConnectionLost(format!("write failed: {e}").into()));
                        break;
                    }
                    continue;
                }
                Some(frame) => buf.extend_from_slice(&frame),
                None => closing = true,
            },
            _ = shared.wake_writer.notified() => {}
            _ = shared.closed.cancelled() => closing = true,
        }
        // Coalesce whatever else is queued into the same write.
        while buf.len() < COALESCE_BYTES {
            match frames.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        // Closed meanwhile: write what is queued (a goodbye) as the last flush.
        closing |= shared.closed.is_cancelled();
        if !closing {
            shared.drain_control(&mut buf);
        }
        if buf.is_empty() {
            continue;
        }
        let written = if closing {
            tokio::time::timeout(FINAL_FLUSH, writer.write_all(&buf))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        } else {
            tokio::select! {
                r = writer.write_all(&buf) => r,
                // Closed while the peer was not reading: give up on the rest.
                _ = shared.closed.cancelled() => Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        };
        if let Err(e) = written {
            shared.close(Error::ConnectionLost(format!("write failed: {e}").into()));
            break;
        }
        buf.clear();
        if buf.capacity() > 4 * COALESCE_BYTES {
            buf.shrink_to(COALESCE_BYTES);
        }
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, writer.shutdown()).await;
}

/// Writes `bytes`, giving up if the connection closes meanwhile.
async fn write_or_close<W: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    tokio::select! {
        r = writer.write_all(bytes) => r,
        _ = shared.closed.cancelled() => Err(std::io::ErrorKind::BrokenPipe.into()),
    }
}

impl Shared {
    /// Appends queued cancels and releases to `buf` as messages.
    fn drain_control(&self, buf: &mut Vec<u8>) {
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
            let _ = wire::encode_into(&Message::Cancel { id }, buf);
        }
        if pong {
            let _ = wire::encode_into(&Message::Pong, buf);
        }
        if ping {
            let _ = wire::encode_into(&Message::Ping, buf);
        }
        for chunk in releases.chunks(RELEASES_PER_MESSAGE) {
            let _ = wire::encode_into(
                &Message::Release {
                    refs: chunk.to_vec(),
                },
                buf,
            );
        }
    }
}

impl Shared {
    /// A message broke a configured limit. A request is refused on its own
    /// and a call fails on its own, with the reason; returns false when the
    /// message is neither (then it is a protocol violation).
    fn over_limit(self: &Arc<Shared>, frame: &[u8], why: &str) -> bool {
        match wire::decode_head(frame) {
            Some(wire::Head::Request { id }) => {
                tracing::debug!(conn = self.id, request = id, "refused: {why}");
                self.refuse(
                    id,
                    crate::error::RemoteError::new(
                        crate::error::ErrorKind::Refused,
                        format!("the request was refused: {why}"),
                    ),
                );
                true
            }
            Some(wire::Head::Reply { id }) => {
                if let Some((_, waiter)) = self.pending.remove(&id) {
                    let _ = waiter.send(Err(Error::Protocol(format!(
                        "the reply was refused: {why}"
                    ))));
                }
                true
            }
            None => false,
        }
    }
}
