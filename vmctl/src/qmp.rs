//! An async client of the QEMU Machine Protocol over a unix socket.
//!
//! QMP is line-delimited JSON. The server greets with `{"QMP": …}`; the
//! client must send `qmp_capabilities` before anything else; commands carry
//! an `id` that the reply echoes; events (`{"event": …}`) arrive at any time.
//! One reader task owns the read half: it matches replies to the waiting
//! calls by id and fans events out on a broadcast channel. When the socket
//! closes (QEMU exited) every waiting call fails at once with
//! [`QmpError::Disconnected`]; a connection reset right after `quit` is
//! treated like an ordinary end of file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vmctl::qmp::QmpError> {
//! let qmp = vmctl::qmp::Qmp::connect("/run/vmctl/vm0.qmp").await?;
//! let mut events = qmp.subscribe();
//! println!("{:?}", qmp.query_status().await?);
//! qmp.system_powerdown().await?;
//! while let Ok(event) = events.recv().await {
//!     println!("{} {}", event.name, event.data);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};

use crate::task::AbortOnDrop;

/// The longest QMP message accepted (bytes); a longer line closes the client.
pub const MAX_MESSAGE: usize = 1 << 20;
/// How many events a slow subscriber may fall behind before it loses some.
pub const EVENT_BUFFER: usize = 256;
/// The default time a command may take.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP I/O on {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The peer does not speak QMP as expected.
    #[error("QMP protocol error on {path}: {what}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// QEMU answered the command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, …).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The connection closed (QEMU exited) before the reply came.
    #[error("QMP connection closed (QEMU exited?) while running {command}")]
    Disconnected {
        /// The command that was waiting, or `-` for none.
        command: String,
    },
    /// No reply within the command timeout.
    #[error("QMP command {command} got no reply within {after:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
    },
}

/// One asynchronous QMP event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    /// The event name (`SHUTDOWN`, `POWERDOWN`, `STOP`, `RESUME`, …).
    pub name: String,
    /// The event's `data` member (`null` when absent).
    pub data: Value,
    /// QEMU's timestamp, seconds since the Unix epoch.
    pub timestamp: Option<f64>,
}

/// The data of a `SHUTDOWN` event: who asked and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownEvent {
    /// True when the guest itself powered off or reset.
    pub guest: bool,
    /// QEMU's reason: `guest-shutdown`, `guest-reset`, `guest-panic`,
    /// `host-qmp-quit`, `host-signal`, …
    pub reason: String,
}

impl QmpEvent {
    /// The shutdown details if this is a `SHUTDOWN` event.
    pub fn as_shutdown(&self) -> Option<ShutdownEvent> {
        if self.name != "SHUTDOWN" {
            return None;
        }
        Some(ShutdownEvent {
            guest: self
                .data
                .get("guest")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            reason: self
                .data
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
        })
    }
}

/// The answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// QEMU's run state: `running`, `paused`, `shutdown`, `prelaunch`, …
    pub status: String,
    /// Whether the vCPUs are running.
    pub running: bool,
}

type Reply = Result<Value, QmpError>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, (String, oneshot::Sender<Reply>)>,
    closed: bool,
}

struct Shared {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<Pending>,
    events: Mutex<Option<broadcast::Sender<QmpEvent>>>,
    next_id: AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn events(&self) -> MutexGuard<'_, Option<broadcast::Sender<QmpEvent>>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A negotiated QMP connection. Dropping it stops its reader task.
pub struct Qmp {
    shared: Arc<Shared>,
    closed: watch::Receiver<bool>,
    greeting: Value,
    timeout: Duration,
    _reader: AbortOnDrop,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("path", &self.shared.path)
            .field("closed", &*self.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to the socket at `path`, reads the greeting and negotiates
    /// capabilities.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, QmpError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.clone(),
                source,
            })?;
        Self::handshake(stream, path).await
    }

    /// Runs the QMP handshake on an already connected stream.
    pub async fn handshake(stream: UnixStream, path: PathBuf) -> Result<Self, QmpError> {
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = tokio::time::timeout(DEFAULT_COMMAND_TIMEOUT, read_line(&mut reader))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "(greeting)".into(),
                after: DEFAULT_COMMAND_TIMEOUT,
            })?
            .map_err(|source| QmpError::Io {
                path: path.clone(),
                source,
            })?
            .ok_or_else(|| QmpError::Disconnected {
                command: "(greeting)".into(),
            })?;
        let greeting: Value =
            serde_json::from_slice(&greeting).map_err(|e| QmpError::Protocol {
                path: path.clone(),
                what: format!("greeting is not JSON: {e}"),
            })?;
        let Some(info) = greeting.get("QMP").cloned() else {
            return Err(QmpError::Protocol {
                path,
                what: format!("unexpected greeting {greeting}"),
            });
        };
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            path,
            writer: tokio::sync::Mutex::new(write),
            pending: Mutex::new(Pending::default()),
            events: Mutex::new(Some(events)),
            next_id: AtomicU64::new(1),
        });
        let (closed_tx, closed) = watch::channel(false);
        let task = tokio::spawn(read_loop(reader, Arc::clone(&shared), closed_tx));
        let qmp = Self {
            shared,
            closed,
            greeting: info,
            timeout: DEFAULT_COMMAND_TIMEOUT,
            _reader: AbortOnDrop::new(task),
        };
        qmp.execute("qmp_capabilities", None).await?;
        tracing::debug!(path = %qmp.shared.path.display(), "QMP negotiated");
        Ok(qmp)
    }

    /// Sets the time each command may take (default 10 s).
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The `QMP` member of the greeting (QEMU version and capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A receiver of every event from now on. After the connection closed,
    /// the receiver reports `Closed` at once.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        match &*self.shared.events() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the connection closes (QEMU exited or closed it).
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        // An error means the reader task is gone, which also means closed.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Runs `command` with optional `arguments` and returns its `return`
    /// member.
    #[tracing::instrument(level = "debug", skip(self, arguments), fields(path = %self.shared.path.display()))]
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending();
            if pending.closed {
                return Err(QmpError::Disconnected {
                    command: command.into(),
                });
            }
            pending.waiting.insert(id, (command.to_owned(), tx));
        }
        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        let written = {
            let mut writer = self.shared.writer.lock().await;
            match writer.write_all(line.as_bytes()).await {
                Ok(()) => writer.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(source) = written {
            self.shared.pending().waiting.remove(&id);
            return Err(if is_disconnect(&source) {
                QmpError::Disconnected {
                    command: command.into(),
                }
            } else {
                QmpError::Io {
                    path: self.shared.path.clone(),
                    source,
                }
            });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(QmpError::Disconnected {
                command: command.into(),
            }),
            Err(_) => {
                self.shared.pending().waiting.remove(&id);
                Err(QmpError::Timeout {
                    command: command.into(),
                    after: self.timeout,
                })
            }
        }
    }

    /// `query-status`: the VM's run state.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        let value = self.execute("query-status", None).await?;
        serde_json::from_value(value.clone()).map_err(|e| QmpError::Protocol {
            path: self.shared.path.clone(),
            what: format!("query-status returned {value}: {e}"),
        })
    }

    /// `system_powerdown`: presses the ACPI power button. The guest may
    /// ignore it (no OS, not listening yet).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once. The connection closing before the reply
    /// arrives counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resumes the vCPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

/// Reads one `\n`-terminated line of at most [`MAX_MESSAGE`] bytes; `None`
/// at end of file (a connection reset counts as end of file).
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        if line.len() + chunk.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("QMP message longer than {MAX_MESSAGE} bytes"),
            ));
        }
        line.extend_from_slice(chunk);
        let found = done > chunk.len();
        reader.consume(done);
        if found {
            return Ok(Some(line));
        }
    }
}

async fn read_loop<R: AsyncBufRead + Unpin>(
    mut reader: R,
    shared: Arc<Shared>,
    closed: watch::Sender<bool>,
) {
    let path = shared.path.display().to_string();
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                tracing::debug!(%path, "QMP connection closed");
                break;
            }
            Err(e) => {
                tracing::warn!(%path, error = %e, "QMP read failed; closing");
                break;
            }
        };
        let message: Value = match serde_json::from_slice(&line) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%path, error = %e, "QMP sent a line that is not JSON; ignored");
                continue;
            }
        };
        dispatch(&shared, message);
    }
    // Fail every waiting call at once, and end the event stream.
    let waiting = {
        let mut pending = shared.pending();
        pending.closed = true;
        std::mem::take(&mut pending.waiting)
    };
    for (_, (command, tx)) in waiting {
        let _ = tx.send(Err(QmpError::Disconnected { command }));
    }
    shared.events().take();
    let _ = closed.send(true);
}

fn dispatch(shared: &Shared, message: Value) {
    if let Some(name) = message.get("event").and_then(Value::as_str) {
        let timestamp = message.get("timestamp").and_then(|t| {
            let s = t.get("seconds")?.as_f64()?;
            let us = t.get("microseconds")?.as_f64()?;
            Some(s + us / 1e6)
        });
        let event = QmpEvent {
            name: name.to_owned(),
            data: message.get("data").cloned().unwrap_or(Value::Null),
            timestamp,
        };
        tracing::debug!(path = %shared.path.display(), event = %event.name, data = %event.data, "QMP event");
        if let Some(tx) = &*shared.events() {
            // No subscriber is fine.
            let _ = tx.send(event);
        }
        return;
    }
    let Some(id) = message.get("id").and_then(Value::as_u64) else {
        tracing::warn!(path = %shared.path.display(), %message, "QMP message without id or event; ignored");
        return;
    };
    let Some((command, tx)) = shared.pending().waiting.remove(&id) else {
        tracing::debug!(path = %shared.path.display(), id, "QMP reply for a call nobody waits for");
        return;
    };
    let reply = if let Some(ret) = message.get("return") {
        Ok(ret.clone())
    } else if let Some(err) = message.get("error") {
        let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        Err(QmpError::Command {
            command,
            class: text("class"),
            desc: text("desc"),
        })
    } else {
        Err(QmpError::Protocol {
            path: shared.path.clone(),
            what: format!("reply without return or error: {message}"),
        })
    };
    let _ = tx.send(reply);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The protocol against a scripted fake server on a socket pair; the
    //! real QEMU is exercised in `tests/`.
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    async fn pair() -> (
        Qmp,
        BufReader<tokio::net::unix::OwnedReadHalf>,
        OwnedWriteHalf,
    ) {
        let (client, server) = UnixStream::pair().unwrap();
        let (r, mut w) = server.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let connect = tokio::spawn(Qmp::handshake(client, "/fake.qmp".into()));
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let m: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(m["execute"], "qmp_capabilities");
        w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", m["id"]).as_bytes())
            .await
            .unwrap();
        (connect.await.unwrap().unwrap(), r, w)
    }

    async fn next_command(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Value {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test]
    async fn replies_match_ids_and_events_are_broadcast() {
        let work = async {
            let (qmp, mut r, mut w) = pair().await;
            let mut events = qmp.subscribe();
            let call = tokio::spawn(async move {
                let s = qmp.query_status().await;
                (qmp, s)
            });
            let m = next_command(&mut r).await;
            assert_eq!(m["execute"], "query-status");
            let reply = format!(
                "{{\"event\": \"STOP\", \"timestamp\": {{\"seconds\": 1, \"microseconds\": 500000}}}}\n\
                 {{\"return\": {{\"status\": \"paused\", \"running\": false}}, \"id\": {}}}\n",
                m["id"]
            );
            w.write_all(reply.as_bytes()).await.unwrap();
            let (qmp, status) = call.await.unwrap();
            assert_eq!(status.unwrap().status, "paused");
            let ev = events.recv().await.unwrap();
            assert_eq!((ev.name.as_str(), ev.timestamp), ("STOP", Some(1.5)));
            drop(qmp);
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn command_errors_carry_class_and_description() {
        let work = async {
            let (qmp, mut r, mut w) = pair().await;
            let call = tokio::spawn(async move { qmp.execute("bogus", None).await });
            let m = next_command(&mut r).await;
            let reply = format!(
                "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"The command bogus has not been found\"}}, \"id\": {}}}\n",
                m["id"]
            );
            w.write_all(reply.as_bytes()).await.unwrap();
            let e = call.await.unwrap().unwrap_err();
            assert!(
                matches!(e, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
                "{e}"
            );
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn close_fails_pending_calls_and_ends_events_and_quit_is_ok() {
        let work = async {
            let (qmp, mut r, w) = pair().await;
            let qmp = Arc::new(qmp);
            let mut events = qmp.subscribe();
            let q = Arc::clone(&qmp);
            let status = tokio::spawn(async move { q.query_status().await });
            let q = Arc::clone(&qmp);
            next_command(&mut r).await;
            let quit = tokio::spawn(async move { q.quit().await });
            next_command(&mut r).await;
            drop((r, w));
            assert!(matches!(
                status.await.unwrap(),
                Err(QmpError::Disconnected { .. })
            ));
            quit.await.unwrap().unwrap();
            qmp.closed().await;
            assert!(qmp.is_closed());
            assert!(matches!(
                events.recv().await,
                Err(broadcast::error::RecvError::Closed)
            ));
            assert!(matches!(
                qmp.stop().await,
                Err(QmpError::Disconnected { .. })
            ));
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn oversized_message_closes_the_connection() {
        let work = async {
            let (qmp, _r, mut w) = pair().await;
            let big = vec![b'x'; MAX_MESSAGE + 10];
            w.write_all(&big).await.unwrap();
            qmp.closed().await;
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_bad_greeting_is_a_protocol_error() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let (client, server) = UnixStream::pair().unwrap();
            let (_r, mut w) = server.into_split();
            w.write_all(b"{\"hello\": 1}\n").await.unwrap();
            let e = Qmp::handshake(client, "/fake.qmp".into())
                .await
                .unwrap_err();
            assert!(matches!(e, QmpError::Protocol { .. }), "{e}");
        })
        .await
        .expect("test timed out");
    }

    #[test]
    fn shutdown_event_parses() {
        let ev = QmpEvent {
            name: "SHUTDOWN".into(),
            data: json!({"guest": true, "reason": "guest-shutdown"}),
            timestamp: None,
        };
        assert_eq!(
            ev.as_shutdown(),
            Some(ShutdownEvent {
                guest: true,
                reason: "guest-shutdown".into()
            })
        );
    }
}
