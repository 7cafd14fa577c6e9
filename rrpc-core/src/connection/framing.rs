//! Reading length-prefixed frames.
//!
//! Small frames are read many at a time into one buffer and split off it.
//! A big frame (a byte string of [`BIG`] bytes or more, as bulk transfers
//! send) is read straight into a buffer of its own, sized to the frame, so
//! it is copied once, from the kernel, and its byte strings are handed out as
//! slices of it. Such buffers are kept and reused once every slice of them is
//! gone: allocating a fresh megabyte per frame costs a page fault per 4 KiB
//! (the allocator returns freed big blocks to the system), which halves the
//! rate of a bulk transfer.

use std::collections::VecDeque;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::outbox::BIG;

/// The small-frame buffer's initial size, and the least room left for a read.
const READ_ROOM: usize = 8 * 1024;
/// Big-frame buffers kept for reuse, and the largest one kept: enough for
/// transfers in chunks of up to a MiB, four in flight; a connection that did
/// such a transfer holds at most about 4.3 MiB for it.
const POOL: usize = 4;
const POOL_MAX_CAPACITY: usize = 1024 * 1024 + 64 * 1024;

pub(super) struct FrameReader<R> {
    reader: R,
    /// Bytes read and not yet split off as frames.
    buf: BytesMut,
    max_frame: usize,
    /// A big frame being read: its buffer and its length.
    big: Option<(BytesMut, usize)>,
    /// Buffers of earlier big frames (empty handles on their storage).
    pool: VecDeque<BytesMut>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(reader: R, max_frame: usize) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            max_frame,
            big: None,
            pool: VecDeque::new(),
        }
    }

    /// The next frame's payload (without its length prefix); `None` when the
    /// peer closed the stream between two frames. A frame larger than the
    /// limit is an `InvalidData` error.
    ///
    /// Cancel-safe: dropping the future loses nothing already read.
    pub(super) async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if let Some((big, len)) = &mut self.big {
                let left = *len - big.len();
                if left == 0 {
                    // The whole allocation (the handle left after the split
                    // shows none of it).
                    let size = big.capacity();
                    let frame = big.split().freeze();
                    if let Some((parent, _)) = self.big.take() {
                        self.recycle(parent, size);
                    }
                    return Some(Ok(frame));
                }
                match self.reader.read_buf(&mut big.limit(left)).await {
                    Ok(0) => return Some(Err(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if self.buf.len() >= 4 {
                let mut head = [0u8; 4];
                head.copy_from_slice(&self.buf[..4]);
                let len = u32::from_be_bytes(head) as usize;
                if len > self.max_frame {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a frame of {len} bytes"),
                    )));
                }
                if self.buf.len() - 4 >= len {
                    self.buf.advance(4);
                    return Some(Ok(self.buf.split_to(len).freeze()));
                }
                if len >= BIG {
                    // Read the rest straight into a buffer of its own.
                    let mut big = self.buffer_for(len);
                    big.extend_from_slice(&self.buf[4..]);
                    self.buf.clear();
                    self.big = Some((big, len));
                    continue;
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            // Reclaims the space of frames already dropped, or grows.
            self.buf.reserve(READ_ROOM);
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return None,
                Ok(0) => return Some(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// An empty buffer for a frame of `len` bytes: a kept one whose earlier
    /// frame is gone, or a new one.
    fn buffer_for(&mut self, len: usize) -> BytesMut {
        match self.pool.iter_mut().position(|b| b.try_reclaim(len)) {
            Some(at) => self.pool.remove(at).unwrap_or_default(),
            None => BytesMut::with_capacity(len),
        }
    }

    /// Keeps `parent`, the handle on a big frame's buffer of `size` bytes,
    /// unless the buffer is too large to hold on to.
    fn recycle(&mut self, parent: BytesMut, size: usize) {
        if size > POOL_MAX_CAPACITY {
            return;
        }
        if self.pool.len() == POOL {
            self.pool.pop_front();
        }
        self.pool.push_back(parent);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn small_and_big_frames_arrive_whole_and_in_order() {
        let big = vec![9u8; BIG * 3 + 5];
        let mut stream = Vec::new();
        for payload in [&b"one"[..], &big, b"", b"two", &big, b"three"] {
            stream.extend(frame(payload));
        }
        // A reader that hands out a few bytes at a time.
        let (mut tx, rx) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&stream).await.unwrap();
        });
        let mut frames = FrameReader::new(rx, 1 << 20);
        let mut got = Vec::new();
        while let Some(f) = frames.next().await {
            got.push(f.unwrap());
        }
        writer.await.unwrap();
        let expected: Vec<&[u8]> = vec![b"one", &big, b"", b"two", &big, b"three"];
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert_eq!(&g[..], e);
        }
    }

    #[tokio::test]
    async fn a_big_buffer_is_reused_once_its_frame_is_dropped() {
        let big = vec![1u8; BIG * 2];
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend(frame(&big));
        }
        let mut frames = FrameReader::new(&stream[..], 1 << 20);
        let first = frames.next().await.unwrap().unwrap();
        let at = first.as_ptr();
        // Still held: the next frame needs a buffer of its own.
        let second = frames.next().await.unwrap().unwrap();
        assert_ne!(second.as_ptr(), at);
        drop(first);
        let third = frames.next().await.unwrap().unwrap();
        assert_eq!(
            third.as_ptr(),
            at,
            "the first frame's buffer was not reused"
        );
        assert_eq!(&third[..], &big[..]);
        drop(second);
        assert!(frames.next().await.is_none());
    }

    #[tokio::test]
    async fn only_buffers_of_moderate_size_are_kept() {
        for (size, kept) in [(1 << 20, 1), (POOL_MAX_CAPACITY + 1, 0)] {
            let stream = frame(&vec![3u8; size]);
            let mut frames = FrameReader::new(&stream[..], 4 << 20);
            let f = frames.next().await.unwrap().unwrap();
            assert_eq!(f.len(), size);
            assert_eq!(frames.pool.len(), kept, "a frame of {size} bytes");
        }
    }

    #[tokio::test]
    async fn oversized_frames_and_cut_streams_are_errors() {
        let stream = frame(&[0u8; 100]);
        let mut frames = FrameReader::new(&stream[..], 99);
        let err = frames.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut frames = FrameReader::new(&stream[..50], 1000);
        let err = frames.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let big = frame(&vec![0u8; BIG]);
        let mut frames = FrameReader::new(&big[..BIG / 2], 1 << 20);
        let err = frames.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
