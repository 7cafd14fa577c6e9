//! The VM's serial console as its owner sees it: a bounded tail of the
//! output, the output split into lines for subscribers, and a readiness
//! pattern to look for.
//!
//! Everything here is bounded: the tail keeps only the last N bytes, a line
//! longer than [`MAX_LINE`] is cut, and a slow line subscriber loses old
//! lines instead of growing a queue.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// The longest console line handed to the pattern and to subscribers; longer
/// lines are cut there.
pub const MAX_LINE: usize = 4096;
/// How many lines a slow subscriber may fall behind.
pub const LINE_BUFFER: usize = 1024;
/// How often a console *file* is polled for new output.
pub const FILE_POLL: Duration = Duration::from_millis(50);

/// What marks the guest as ready on its console.
#[derive(Debug, Clone)]
pub enum ReadyPattern {
    /// A line contains this text.
    Substring(String),
    /// A line matches this regular expression.
    Regex(regex::Regex),
}

impl ReadyPattern {
    /// A regular expression pattern; the error names the bad expression.
    pub fn regex(expr: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(expr).map(ReadyPattern::Regex)
    }

    /// Whether `line` shows readiness.
    pub fn is_match(&self, line: &str) -> bool {
        match self {
            ReadyPattern::Substring(s) => line.contains(s.as_str()),
            ReadyPattern::Regex(r) => r.is_match(line),
        }
    }
}

/// The last `capacity` bytes written, oldest first.
#[derive(Debug)]
pub struct Tail {
    bytes: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
}

impl Tail {
    /// An empty tail that keeps at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::with_capacity(capacity.min(64 * 1024)),
            capacity,
            dropped: 0,
        }
    }

    /// Appends `data`, forgetting the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.capacity {
            self.dropped += (data.len() - self.capacity) as u64;
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.dropped += overflow as u64;
        self.bytes.extend(data);
    }

    /// The kept bytes as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// How many bytes were forgotten so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; calls `on_line` for each complete line (without the
    /// `\r\n`/`\n`).
    pub fn feed(&mut self, data: &[u8], mut on_line: impl FnMut(String)) {
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                let text = String::from_utf8_lossy(&line);
                on_line(text.trim_end_matches('\r').to_owned());
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            }
        }
    }

    /// The unfinished last line, if any.
    pub fn finish(&mut self, on_line: impl FnOnce(String)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            on_line(
                String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned(),
            );
        }
    }
}

/// Output of one stream (console or QEMU's stderr), shared between the task
/// that reads it and the VM's owner.
#[derive(Debug)]
pub struct Output {
    tail: Mutex<Tail>,
    lines: broadcast::Sender<String>,
}

impl Output {
    /// A shared output keeping `tail_bytes` of history.
    pub fn new(tail_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            tail: Mutex::new(Tail::new(tail_bytes)),
            lines: broadcast::channel(LINE_BUFFER).0,
        })
    }

    /// The last bytes of output as text.
    pub fn tail(&self) -> String {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).text()
    }

    /// Every line from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.lines.subscribe()
    }

    fn push(&self, data: &[u8]) {
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(data);
    }

    fn line(&self, line: String) {
        // No subscriber is fine.
        let _ = self.lines.send(line);
    }
}

/// Where output is read from.
#[derive(Debug)]
pub enum Source<R> {
    /// A pipe (QEMU's stdout or stderr), read until end of file.
    Pipe(R),
    /// A file QEMU writes; polled every [`FILE_POLL`] until the task is
    /// stopped by its owner.
    File(PathBuf),
}

/// Reads `source` into `output`, calling `on_line` for every line. Returns
/// at end of a pipe; runs until aborted for a file.
pub async fn pump<R: AsyncRead + Unpin>(
    source: Source<R>,
    output: Arc<Output>,
    mut on_line: impl FnMut(&str),
) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut handle = |data: &[u8], splitter: &mut LineSplitter| {
        output.push(data);
        splitter.feed(data, |line| {
            on_line(&line);
            output.line(line);
        });
    };
    match source {
        Source::Pipe(mut r) => loop {
            match r.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => handle(&buf[..n], &mut splitter),
                Err(e) => {
                    tracing::debug!(error = %e, "output pipe read failed");
                    break;
                }
            }
        },
        Source::File(path) => {
            let mut file = loop {
                match tokio::fs::File::open(&path).await {
                    Ok(f) => break f,
                    Err(_) => tokio::time::sleep(FILE_POLL).await,
                }
            };
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => tokio::time::sleep(FILE_POLL).await,
                    Ok(n) => handle(&buf[..n], &mut splitter),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "console file read failed");
                        break;
                    }
                }
            }
        }
    }
    splitter.finish(|line| {
        on_line(&line);
        output.line(line);
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_only_the_last_bytes() {
        let mut t = Tail::new(8);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.text(), "lo world");
        assert_eq!(t.dropped(), 3);
        t.push(b"0123456789ab");
        assert_eq!(t.text(), "456789ab");
    }

    #[test]
    fn lines_are_split_across_chunks_and_cut_when_long() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        s.feed(b"GUEST-RE", |l| lines.push(l));
        s.feed(b"ADY mac=x\r\nnext", |l| lines.push(l));
        assert_eq!(lines, ["GUEST-READY mac=x"]);
        s.finish(|l| lines.push(l));
        assert_eq!(lines[1], "next");
        let long = vec![b'a'; MAX_LINE * 2];
        let mut got = Vec::new();
        s.feed(&long, |l| got.push(l));
        s.feed(b"\n", |l| got.push(l));
        assert_eq!(got[0].len(), MAX_LINE);
    }

    #[test]
    fn patterns_match_lines() {
        let sub = ReadyPattern::Substring("GUEST-READY".into());
        assert!(sub.is_match("GUEST-READY mac=52:54:0a:c8:00:02"));
        assert!(!sub.is_match("booting"));
        let re = ReadyPattern::regex(r"^GUEST-READY mac=([0-9a-f:]{17}) ip=\S+").unwrap();
        assert!(re.is_match("GUEST-READY mac=52:54:0a:c8:00:02 ip=10.200.0.2"));
        assert!(!re.is_match("x GUEST-READY mac=52:54:0a:c8:00:02 ip=10.200.0.2"));
        assert!(ReadyPattern::regex("(").is_err());
    }

    #[tokio::test]
    async fn pump_follows_a_file_that_appears_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let out = Output::new(1024);
        let mut sub = out.subscribe();
        let _task = crate::task::AbortOnDrop::new(tokio::spawn(pump::<tokio::io::Empty>(
            Source::File(path.clone()),
            Arc::clone(&out),
            |_| {},
        )));
        let work = async {
            std::fs::write(&path, "first\n").unwrap();
            assert_eq!(sub.recv().await.unwrap(), "first");
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut f, b"second\n").unwrap();
            assert_eq!(sub.recv().await.unwrap(), "second");
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .unwrap();
        assert_eq!(out.tail(), "first\nsecond\n");
    }

    #[tokio::test]
    async fn pump_reads_a_pipe_to_the_end() {
        let (mut w, r) = tokio::io::duplex(64);
        let out = Output::new(1024);
        let mut sub = out.subscribe();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let task = tokio::spawn(pump(Source::Pipe(r), Arc::clone(&out), move |l| {
            seen2.lock().unwrap().push(l.to_owned());
        }));
        tokio::io::AsyncWriteExt::write_all(&mut w, b"one\ntwo\nthree")
            .await
            .unwrap();
        drop(w);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), ["one", "two", "three"]);
        assert_eq!(out.tail(), "one\ntwo\nthree");
        assert_eq!(sub.recv().await.unwrap(), "one");
    }
}
