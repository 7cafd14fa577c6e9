//! Streamed transfers: `fs.upload(path)` and `fs.download(path)` return an
//! object the client moves chunks through, each chunk at most [`MAX_CHUNK`]
//! bytes, with a SHA-256 of the whole stream compared at the end.
//!
//! Chunks carry their offset, so a client may keep several in flight; the
//! server handles them strictly in order (a chunk waits for its turn), so the
//! memory held is bounded by the client's window times the chunk size.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rrpc_core::{Args, CallContext, ErrorKind, Member, Remote, RemoteError, Reply, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{io_error, OpenSpec, Target};

/// The largest chunk accepted or sent in one call.
pub const MAX_CHUNK: usize = 8 * 1024 * 1024;

/// Hex digits of a SHA-256.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until `turn` reaches `offset`; a chunk for an offset already
/// passed is a duplicate or a gap, refused.
async fn wait_turn(turn: &watch::Sender<u64>, offset: u64, what: &str) -> Result<(), RemoteError> {
    let mut rx = turn.subscribe();
    let now = *rx
        .wait_for(|at| *at >= offset)
        .await
        .map_err(|_| RemoteError::internal(format!("{what}: the transfer is gone")))?;
    if now != offset {
        return Err(RemoteError::bad_argument(format!(
            "{what}: chunk at offset {offset} comes after offset {now} was reached; \
             chunks must cover the stream once, in order"
        )));
    }
    Ok(())
}

static NEXT_UPLOAD: AtomicU64 = AtomicU64::new(0);

/// An upload in progress: chunks go to a temporary file beside the target,
/// renamed over it when `finish` confirms the checksum. Dropped unfinished
/// (the client gave up or went away), the temporary file is removed.
#[derive(Debug)]
pub struct Upload {
    path: Target,
    tmp: Target,
    turn: watch::Sender<u64>,
    state: Mutex<UploadState>,
}

#[derive(Debug)]
struct UploadState {
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    finished: bool,
}

impl Upload {
    /// Starts an upload to `path`.
    pub fn create(path: Target) -> Result<Upload, RemoteError> {
        let name = path
            .shown()
            .file_name()
            .ok_or_else(|| {
                RemoteError::bad_argument(format!(
                    "upload {}: names no file",
                    path.shown().display()
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let tmp = path.with_file_name(&format!(
            ".{name}.rrpc-upload-{}-{}",
            std::process::id(),
            NEXT_UPLOAD.fetch_add(1, Ordering::Relaxed)
        ));
        let spec = OpenSpec {
            write: true,
            create: true,
            truncate: true,
            ..OpenSpec::default()
        };
        let file = tmp
            .open(spec)
            .map_err(|e| io_error("upload", path.shown(), e))?;
        Ok(Upload {
            path,
            tmp,
            turn: watch::Sender::new(0),
            state: Mutex::new(UploadState {
                file: Some(file),
                hasher: Sha256::new(),
                written: 0,
                finished: false,
            }),
        })
    }

    fn write_chunk(&self, data: &[u8]) -> Result<u64, RemoteError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let file = state.file.as_mut().ok_or_else(|| {
            RemoteError::new(
                ErrorKind::Io,
                format!("upload {}: already finished", self.path.shown().display()),
            )
        })?;
        file.write_all(data)
            .map_err(|e| io_error("upload", self.path.shown(), e))?;
        state.hasher.update(data);
        state.written += data.len() as u64;
        Ok(state.written)
    }

    fn finish(&self, expected: Option<String>) -> Result<Value, RemoteError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut file) = state.file.take() else {
            return Err(RemoteError::new(
                ErrorKind::Io,
                format!("upload {}: already finished", self.path.shown().display()),
            ));
        };
        file.flush()
            .map_err(|e| io_error("upload", self.path.shown(), e))?;
        drop(file);
        let digest = hex(&std::mem::take(&mut state.hasher).finalize());
        if let Some(expected) = expected {
            if !expected.eq_ignore_ascii_case(&digest) {
                let _ = self.tmp.remove_file();
                state.finished = true;
                return Err(RemoteError::new(
                    ErrorKind::Io,
                    format!(
                        "upload {}: checksum mismatch: the client sent SHA-256 {expected}, \
                         the server received {digest} over {} bytes; the file was not written",
                        self.path.shown().display(),
                        state.written
                    ),
                ));
            }
        }
        self.tmp
            .rename(&self.path)
            .map_err(|e| io_error("upload", self.path.shown(), e))?;
        state.finished = true;
        Ok(Value::Map(vec![
            (
                "path".into(),
                self.path.shown().to_string_lossy().into_owned().into(),
            ),
            ("size".into(), state.written.into()),
            ("sha256".into(), digest.into()),
        ]))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if !state.finished {
            state.file = None;
            let _ = self.tmp.remove_file();
        }
    }
}

impl Remote for Upload {
    fn type_name(&self) -> &str {
        "Upload"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            "write" => {
                let parsed = (|| {
                    args.expect_count(2, 2)?;
                    let offset: u64 = args.take(0, "offset")?;
                    let data = match args.take_value(1, "data")? {
                        Value::Bytes(b) => b,
                        Value::Str(s) => Bytes::from(s.into_bytes()),
                        other => {
                            return Err(RemoteError::bad_argument(format!(
                                "argument 1 (`data`): expected bytes, got {}",
                                other.type_name()
                            )))
                        }
                    };
                    if data.len() > MAX_CHUNK {
                        return Err(RemoteError::bad_argument(format!(
                            "a chunk of {} bytes is over the limit of {MAX_CHUNK}",
                            data.len()
                        )));
                    }
                    Ok((offset, data))
                })();
                let (offset, data) = match parsed {
                    Ok(p) => p,
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    wait_turn(&self.turn, offset, "upload.write").await?;
                    let this = self.clone();
                    let result = tokio::task::spawn_blocking(move || this.write_chunk(&data))
                        .await
                        .map_err(|e| RemoteError::internal(format!("upload.write: {e}")))?;
                    match result {
                        Ok(written) => {
                            self.turn.send_replace(written);
                            Ok(written)
                        }
                        Err(e) => {
                            // Nothing after a failed chunk can be right.
                            self.turn.send_replace(u64::MAX);
                            Err(e)
                        }
                    }
                })
            }
            "finish" => {
                let expected = match args.take_opt::<String>(0, "sha256") {
                    Ok(e) => e,
                    Err(e) => return Reply::err(e),
                };
                Reply::blocking(move || self.finish(expected))
            }
            "abort" => Reply::blocking(move || {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.file = None;
                state.finished = true;
                let _ = self.tmp.remove_file();
                Ok(Value::Unit)
            }),
            other => Reply::err(RemoteError::no_such_method("Upload", other)),
        }
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "written" => Reply::ready(*self.turn.borrow()),
            "path" => Reply::ready(self.path.shown().to_string_lossy().into_owned()),
            _ => Reply::err(RemoteError::no_such_attribute("Upload", name)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("write", "write(offset: int, data: bytes) -> int"),
            Member::method(
                "finish",
                "finish(sha256: str = None) -> {path, size, sha256}",
            ),
            Member::method("abort", "abort()"),
            Member::attribute("written", "int"),
            Member::attribute("path", "str"),
        ]
    }
}

/// A download in progress: chunks are read in order, hashed as they go.
#[derive(Debug)]
pub struct Download {
    path: Target,
    size: u64,
    turn: watch::Sender<u64>,
    /// Set when a short read met the end of the file.
    eof: std::sync::atomic::AtomicBool,
    state: Mutex<DownloadState>,
}

#[derive(Debug)]
struct DownloadState {
    file: File,
    hasher: Sha256,
    sent: u64,
}

impl Download {
    /// Opens `path` for a download.
    pub fn open(path: Target) -> Result<Download, RemoteError> {
        let spec = OpenSpec {
            read: true,
            ..OpenSpec::default()
        };
        let file = path
            .open(spec)
            .map_err(|e| io_error("download", path.shown(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_error("download", path.shown(), e))?;
        if meta.is_dir() {
            return Err(RemoteError::new(
                ErrorKind::Io,
                format!("download {}: is a directory", path.shown().display()),
            ));
        }
        Ok(Download {
            path,
            size: meta.len(),
            turn: watch::Sender::new(0),
            eof: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(DownloadState {
                file,
                hasher: Sha256::new(),
                sent: 0,
            }),
        })
    }

    fn read_chunk(&self, len: usize) -> Result<Bytes, RemoteError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::with_capacity(len);
        (&mut state.file)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_error("download", self.path.shown(), e))?;
        state.hasher.update(&buf);
        state.sent += buf.len() as u64;
        Ok(Bytes::from(buf))
    }
}

impl Remote for Download {
    fn type_name(&self) -> &str {
        "Download"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            "read" => {
                let parsed = (|| {
                    args.expect_count(2, 2)?;
                    let offset: u64 = args.take(0, "offset")?;
                    let len: usize = args.take(1, "size")?;
                    Ok::<_, RemoteError>((offset, len.min(MAX_CHUNK)))
                })();
                let (offset, len) = match parsed {
                    Ok(p) => p,
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    if let Err(e) = wait_turn(&self.turn, offset, "download.read").await {
                        // Past the end of a file that shrank: nothing more.
                        if self.eof.load(Ordering::SeqCst) {
                            return Ok(Value::Bytes(Bytes::new()));
                        }
                        return Err(e);
                    }
                    let this = self.clone();
                    let result = tokio::task::spawn_blocking(move || this.read_chunk(len))
                        .await
                        .map_err(|e| RemoteError::internal(format!("download.read: {e}")))?;
                    match result {
                        Ok(data) => {
                            self.turn.send_replace(offset + data.len() as u64);
                            // A short chunk is the end: later offsets must not wait.
                            if data.len() < len {
                                self.eof.store(true, Ordering::SeqCst);
                                self.turn.send_replace(u64::MAX);
                            }
                            Ok(Value::Bytes(data))
                        }
                        Err(e) => {
                            self.turn.send_replace(u64::MAX);
                            Err(e)
                        }
                    }
                })
            }
            "finish" => Reply::blocking(move || {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let digest = hex(&std::mem::take(&mut state.hasher).finalize());
                Ok(Value::Map(vec![
                    (
                        "path".into(),
                        self.path.shown().to_string_lossy().into_owned().into(),
                    ),
                    ("size".into(), state.sent.into()),
                    ("sha256".into(), digest.into()),
                ]))
            }),
            other => Reply::err(RemoteError::no_such_method("Download", other)),
        }
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "size" => Reply::ready(self.size),
            "path" => Reply::ready(self.path.shown().to_string_lossy().into_owned()),
            _ => Reply::err(RemoteError::no_such_attribute("Download", name)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("read", "read(offset: int, size: int) -> bytes"),
            Member::method("finish", "finish() -> {path, size, sha256}"),
            Member::attribute("size", "int"),
            Member::attribute("path", "str"),
        ]
    }
}
