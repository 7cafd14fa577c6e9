//! Streamed, checksummed file transfers through a server's `fs` service
//! (`fs.upload` / `fs.download`), in bounded memory on both sides.
//!
//! Data moves in chunks of [`TransferOptions::chunk_size`] bytes with at most
//! [`TransferOptions::window`] chunks in flight, so memory stays near
//! `window × chunk_size` whatever the file size. Both sides compute a
//! SHA-256 of the stream; the server refuses to commit an upload whose
//! digest differs, and a download whose digest differs is an error.
//!
//! ```no_run
//! # async fn run() -> Result<(), rrpc_client::transfer::TransferError> {
//! use rrpc_client::transfer::{self, TransferOptions};
//! let conn = rrpc_client::connect("127.0.0.1:18812").await?;
//! let fs = transfer::fs_service(&conn).await?;
//! let sent = transfer::upload_file(&fs, "input.dat".as_ref(), "/tmp/input.dat", &TransferOptions::default()).await?;
//! println!("{} bytes, sha256 {}", sent.bytes, sent.sha256);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use rrpc_core::{Connection, Error, Proxy, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a transfer moves its data.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Bytes per chunk (at most the server's limit of 8 MiB; default 2 MiB).
    pub chunk_size: usize,
    /// Chunks in flight at once (default 4).
    pub window: usize,
    /// Deadline of each chunk's call (default 60 s).
    pub call_timeout: Duration,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            chunk_size: 2 * 1024 * 1024,
            window: 4,
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// What a finished transfer moved.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferReport {
    /// Bytes moved.
    pub bytes: u64,
    /// SHA-256 of the bytes, in hex, as both sides computed it.
    pub sha256: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl TransferReport {
    /// Throughput in MiB/s.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A call to the server failed (its remote error says why).
    #[error("{0}")]
    Rpc(#[from] Error),
    /// The local file could not be read or written.
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    /// The two sides saw different bytes.
    #[error("checksum mismatch: this side has SHA-256 {local} over {local_bytes} bytes, the server {remote} over {remote_bytes} bytes")]
    Mismatch {
        /// This side's digest.
        local: String,
        /// Bytes this side moved.
        local_bytes: u64,
        /// The server's digest.
        remote: String,
        /// Bytes the server moved.
        remote_bytes: u64,
    },
    /// The server answered something unexpected.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl From<rrpc_core::ValueError> for TransferError {
    fn from(err: rrpc_core::ValueError) -> Self {
        TransferError::Rpc(Error::Value(err))
    }
}

/// The server's `fs` service.
pub async fn fs_service(conn: &Connection) -> Result<Proxy, TransferError> {
    Ok(conn.root().get("fs").await?.into_proxy()?)
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `{size, sha256}` a server's `finish` returned.
fn summary(value: &Value) -> Result<(u64, String), TransferError> {
    let size = value
        .get("size")
        .and_then(Value::as_i64)
        .and_then(|n| u64::try_from(n).ok());
    let sha = value.get("sha256").and_then(Value::as_str);
    match (size, sha) {
        (Some(size), Some(sha)) => Ok((size, sha.to_owned())),
        _ => Err(TransferError::Protocol(format!(
            "finish returned {value:?}"
        ))),
    }
}

/// Reads up to `len` bytes (fewer only at the end of the stream).
async fn read_chunk(reader: &mut (impl AsyncRead + Unpin), len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await?;
    Ok(buf)
}

/// Uploads everything `reader` yields to `remote` on the server.
pub async fn upload_from(
    fs: &Proxy,
    mut reader: impl AsyncRead + Unpin,
    remote: &str,
    options: &TransferOptions,
) -> Result<TransferReport, TransferError> {
    let started = Instant::now();
    let chunk_size = options.chunk_size.clamp(1, 8 * 1024 * 1024);
    let upload = fs.call("upload", (remote,)).await?.into_proxy()?;
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    let mut in_flight = VecDeque::new();
    loop {
        let chunk = read_chunk(&mut reader, chunk_size).await?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(&chunk);
        let len = chunk.len() as u64;
        let call = upload
            .call("write", (offset, Value::Bytes(chunk.into())))
            .timeout(options.call_timeout)
            .start();
        in_flight.push_back(call);
        offset += len;
        if in_flight.len() >= options.window.max(1) {
            if let Some(oldest) = in_flight.pop_front() {
                oldest.await?;
            }
        }
    }
    while let Some(call) = in_flight.pop_front() {
        call.await?;
    }
    let local = hex(&hasher.finalize());
    let done = upload
        .call("finish", (local.as_str(),))
        .timeout(options.call_timeout)
        .await?;
    let (remote_bytes, remote_sha) = summary(&done)?;
    if remote_sha != local || remote_bytes != offset {
        return Err(TransferError::Mismatch {
            local,
            local_bytes: offset,
            remote: remote_sha,
            remote_bytes,
        });
    }
    Ok(TransferReport {
        bytes: offset,
        sha256: local,
        elapsed: started.elapsed(),
    })
}

/// Uploads the local file `local` to `remote` on the server.
pub async fn upload_file(
    fs: &Proxy,
    local: &Path,
    remote: &str,
    options: &TransferOptions,
) -> Result<TransferReport, TransferError> {
    let file = tokio::fs::File::open(local)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", local.display())))?;
    upload_from(fs, file, remote, options).await
}

/// Downloads `remote` from the server into `writer`.
pub async fn download_to(
    fs: &Proxy,
    remote: &str,
    mut writer: impl AsyncWrite + Unpin,
    options: &TransferOptions,
) -> Result<TransferReport, TransferError> {
    let started = Instant::now();
    let chunk_size = options.chunk_size.clamp(1, 8 * 1024 * 1024) as u64;
    let download = fs.call("download", (remote,)).await?.into_proxy()?;
    let mut size: u64 = download.get("size").await?.decode()?;
    let mut hasher = Sha256::new();
    let mut next = 0u64;
    let mut received = 0u64;
    let mut in_flight = VecDeque::new();
    loop {
        while in_flight.len() < options.window.max(1) && next < size {
            let len = chunk_size.min(size - next);
            let call = download
                .call("read", (next, len))
                .timeout(options.call_timeout)
                .start();
            in_flight.push_back((len, call));
            next += len;
        }
        let Some((asked, call)) = in_flight.pop_front() else {
            break;
        };
        let data = match call.await? {
            Value::Bytes(b) => b,
            other => {
                return Err(TransferError::Protocol(format!(
                    "a chunk came as {}",
                    other.type_name()
                )))
            }
        };
        writer.write_all(&data).await?;
        hasher.update(&data);
        received += data.len() as u64;
        if (data.len() as u64) < asked {
            // The file shrank while we read it: stop asking for more.
            size = received;
        }
    }
    writer.flush().await?;
    let local = hex(&hasher.finalize());
    let done = download
        .call("finish", ())
        .timeout(options.call_timeout)
        .await?;
    let (remote_bytes, remote_sha) = summary(&done)?;
    if remote_sha != local || remote_bytes != received {
        return Err(TransferError::Mismatch {
            local,
            local_bytes: received,
            remote: remote_sha,
            remote_bytes,
        });
    }
    Ok(TransferReport {
        bytes: received,
        sha256: local,
        elapsed: started.elapsed(),
    })
}

/// Downloads `remote` from the server into the local file `local`; a
/// failed download leaves no file behind.
pub async fn download_file(
    fs: &Proxy,
    remote: &str,
    local: &Path,
    options: &TransferOptions,
) -> Result<TransferReport, TransferError> {
    let file = tokio::fs::File::create(local)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", local.display())))?;
    let result = download_to(fs, remote, tokio::io::BufWriter::new(file), options).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(local).await;
    }
    result
}
