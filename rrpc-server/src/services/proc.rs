//! `proc`: run a command to completion (`run`), or start one and follow it
//! through a process object (`spawn`), its output delivered to a client
//! callback as it appears.
//!
//! Every child runs in a process group of its own, owned by the call (`run`)
//! or by the process object (`spawn`): a timeout, a cancelled call, a dropped
//! object or a closed connection kills the whole group, so nothing outlives
//! its owner. Captured output is bounded ([`MAX_OUTPUT`] per stream by
//! default), with truncation reported.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rrpc_core::{Args, CallContext, ErrorKind, Member, Proxy, Remote, RemoteError, Reply, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fs::FsPolicy;
use super::RemoteMap;

/// Output captured per stream by default (more is drained and dropped).
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// The most output a caller may ask to capture per stream.
pub const MAX_OUTPUT_LIMIT: usize = 6 * 1024 * 1024;

/// The process service.
#[derive(Debug)]
pub struct Proc {
    policy: Arc<FsPolicy>,
    env: Arc<RemoteMap>,
}

/// What to run, as the client described it.
#[derive(Debug)]
struct Spec {
    cmd: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    timeout: Option<Duration>,
    stdin: Option<Bytes>,
    max_output: usize,
}

impl Spec {
    fn parse(args: &mut Args, with_callback: bool) -> Result<Spec, RemoteError> {
        args.expect_count(1, if with_callback { 5 } else { 6 })?;
        let cmd: String = args.take(0, "cmd")?;
        if cmd.is_empty() {
            return Err(RemoteError::bad_argument(
                "argument 0 (`cmd`): empty command",
            ));
        }
        let argv: Vec<String> = args.take_opt(1, "args")?.unwrap_or_default();
        let env: BTreeMap<String, String> = args.take_opt(2, "env")?.unwrap_or_default();
        let cwd: Option<String> = args.take_opt(3, "cwd")?;
        let mut spec = Spec {
            cmd,
            args: argv,
            env,
            cwd,
            timeout: None,
            stdin: None,
            max_output: MAX_OUTPUT,
        };
        if !with_callback {
            let timeout: Option<f64> = args.take_opt(4, "timeout")?;
            spec.timeout = timeout
                .map(|t| {
                    Duration::try_from_secs_f64(t).map_err(|_| {
                        RemoteError::bad_argument(format!("timeout must be seconds >= 0, got {t}"))
                    })
                })
                .transpose()?;
            if let Some(options) = args.take_opt::<Value>(5, "options")? {
                if let Some(stdin) = options.get("stdin") {
                    spec.stdin = Some(match stdin {
                        Value::Str(s) => Bytes::from(s.clone().into_bytes()),
                        Value::Bytes(b) => b.clone(),
                        other => {
                            return Err(RemoteError::bad_argument(format!(
                                "options.stdin: expected str or bytes, got {}",
                                other.type_name()
                            )))
                        }
                    });
                }
                if let Some(max) = options.get("max_output").and_then(Value::as_i64) {
                    spec.max_output = usize::try_from(max).unwrap_or(0).min(MAX_OUTPUT_LIMIT);
                }
            }
        }
        Ok(spec)
    }

    fn display(&self) -> String {
        std::iter::once(self.cmd.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Kills a child's process group when dropped, unless disarmed.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&self, signal: Signal) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill(Signal::SIGKILL);
    }
}

/// Reads a stream to its end, keeping at most `cap` bytes.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut stream) = stream else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = cap.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    (kept, truncated)
}

/// Exit code and signal of a finished process, with its output.
fn outcome(
    pid: Option<u32>,
    status: ExitStatus,
    out: (Vec<u8>, bool),
    err: (Vec<u8>, bool),
    took: Duration,
) -> Value {
    let text = |b: Vec<u8>| Value::Str(String::from_utf8_lossy(&b).into_owned());
    Value::Map(vec![
        ("pid".into(), pid.into()),
        ("exit_code".into(), status.code().into()),
        ("signal".into(), status.signal().into()),
        ("success".into(), status.success().into()),
        ("stdout".into(), text(out.0)),
        ("stderr".into(), text(err.0)),
        ("stdout_truncated".into(), out.1.into()),
        ("stderr_truncated".into(), err.1.into()),
        ("duration".into(), took.as_secs_f64().into()),
    ])
}

fn spawn_error(what: &str, err: std::io::Error) -> RemoteError {
    let kind = RemoteError::from(std::io::Error::from(err.kind())).kind;
    RemoteError::new(kind, format!("cannot run `{what}`: {err}"))
}

impl Proc {
    /// A process service whose children start from `env` (the server's
    /// `sys.env`) in the connection's working directory.
    pub fn new(policy: Arc<FsPolicy>, env: Arc<RemoteMap>) -> Proc {
        Proc { policy, env }
    }

    fn command(&self, cx: &CallContext, spec: &Spec, stdin: bool) -> Command {
        let mut cmd = Command::new(&spec.cmd);
        let cwd = self.policy.cwd(cx);
        let cwd = match &spec.cwd {
            Some(dir) => cwd.join(dir),
            None => cwd,
        };
        cmd.args(&spec.args)
            .env_clear()
            .envs(self.env.string_pairs())
            .envs(&spec.env)
            .current_dir(cwd)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        cmd
    }

    async fn run(self: Arc<Self>, cx: CallContext, mut args: Args) -> Result<Value, RemoteError> {
        let spec = Spec::parse(&mut args, false)?;
        let what = spec.display();
        let started = Instant::now();
        let mut child = self
            .command(&cx, &spec, spec.stdin.is_some())
            .spawn()
            .map_err(|e| spawn_error(&what, e))?;
        let pid = child.id();
        let group = GroupGuard(pid);
        let stdin = child.stdin.take();
        let feed = async {
            if let (Some(mut w), Some(data)) = (stdin, spec.stdin.clone()) {
                // A child that does not read its input is not an error.
                let _ = w.write_all(&data).await;
            }
        };
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let cap = spec.max_output;
        let work = async {
            let (_, out, err, status) = tokio::join!(
                feed,
                read_capped(out, cap),
                read_capped(err, cap),
                child.wait()
            );
            (out, err, status)
        };
        let finished = match spec.timeout {
            Some(limit) => tokio::time::timeout(limit, work).await.ok(),
            None => Some(work.await),
        };
        match finished {
            Some((out, err, status)) => {
                group.disarm();
                let status = status.map_err(|e| spawn_error(&what, e))?;
                Ok(outcome(pid, status, out, err, started.elapsed()))
            }
            None => {
                group.kill(Signal::SIGKILL);
                let _ = child.wait().await;
                Err(RemoteError::new(
                    ErrorKind::Timeout,
                    format!(
                        "`{what}` ran past its timeout of {:.1} s and was killed",
                        spec.timeout.map_or(0.0, |t| t.as_secs_f64())
                    ),
                ))
            }
        }
    }

    fn spawn(&self, cx: &CallContext, mut args: Args) -> Result<Value, RemoteError> {
        let callback = match args.take_opt::<Value>(4, "on_output")? {
            None => None,
            Some(Value::Proxy(p)) => Some(p),
            Some(other) => {
                return Err(RemoteError::bad_argument(format!(
                    "argument 4 (`on_output`): expected a callable of the caller's, got {}",
                    other.type_name()
                )))
            }
        };
        let spec = Spec::parse(&mut args, true)?;
        let what = spec.display();
        let mut child = self
            .command(cx, &spec, true)
            .spawn()
            .map_err(|e| spawn_error(&what, e))?;
        let pid = child.id();
        let group = GroupGuard(pid);
        let stop = CancellationToken::new();
        let (status_tx, status_rx) = watch::channel(None);
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let stdin = child.stdin.take();
        let started = Instant::now();
        let stopped = stop.clone();
        let conn_closed = cx.connection().clone();
        tokio::spawn(async move {
            let work = async {
                let (out, err, status) = tokio::join!(
                    pump(out, "stdout", callback.clone()),
                    pump(err, "stderr", callback),
                    child.wait()
                );
                (out, err, status)
            };
            tokio::select! {
                (out, err, status) = work => {
                    group.disarm();
                    let value = match status {
                        Ok(status) => outcome(pid, status, out, err, started.elapsed()),
                        Err(e) => Value::Str(format!("cannot wait for `{}`: {e}", pid.unwrap_or(0))),
                    };
                    let _ = status_tx.send(Some(value));
                }
                _ = stopped.cancelled() => {
                    drop(group);
                    let _ = child.wait().await;
                }
                _ = conn_closed.closed() => {
                    drop(group);
                    let _ = child.wait().await;
                }
            }
        });
        Ok(Value::object(Process {
            pid,
            command: what,
            stop,
            status: status_rx,
            stdin: tokio::sync::Mutex::new(stdin),
        }))
    }
}

/// Reads a stream to its end: to the callback as it comes, or kept (bounded).
async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    name: &'static str,
    mut callback: Option<Proxy>,
) -> (Vec<u8>, bool) {
    if callback.is_none() {
        return read_capped(stream, MAX_OUTPUT).await;
    }
    let Some(mut stream) = stream else {
        return (Vec::new(), false);
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(cb) = &callback {
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            if let Err(e) = cb.invoke((name, text)).await {
                tracing::debug!("output callback failed, output dropped from now on: {e}");
                callback = None;
            }
        }
    }
    (Vec::new(), false)
}

impl Remote for Proc {
    fn type_name(&self) -> &str {
        "proc"
    }

    fn call(self: Arc<Self>, cx: CallContext, method: &str, args: Args) -> Reply {
        match method {
            "run" => {
                Reply::future(
                    async move { self.run(cx, args).await.map_err(|e| e.context("proc.run")) },
                )
            }
            "spawn" => Reply::Ready(self.spawn(&cx, args).map_err(|e| e.context("proc.spawn"))),
            other => Reply::err(RemoteError::no_such_method("proc", other)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method(
                "run",
                "run(cmd: str, args: list[str] = [], env: map = {}, cwd: str = None, \
                 timeout: float = None, options: {stdin, max_output} = None) \
                 -> {exit_code, signal, success, stdout, stderr, stdout_truncated, \
                 stderr_truncated, duration, pid}",
            ),
            Member::method(
                "spawn",
                "spawn(cmd: str, args: list[str] = [], env: map = {}, cwd: str = None, \
                 on_output: callable(stream, text) = None) -> Process",
            ),
        ]
    }
}

/// A process started by `proc.spawn`, owned by whoever holds this object:
/// when the last proxy goes (or the connection closes), its group is killed.
#[derive(Debug)]
pub struct Process {
    pid: Option<u32>,
    command: String,
    stop: CancellationToken,
    status: watch::Receiver<Option<Value>>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Process {
    fn finished(&self) -> Option<Value> {
        self.status.borrow().clone()
    }
}

fn parse_signal(value: Option<Value>) -> Result<Signal, RemoteError> {
    let bad = |what: String| RemoteError::bad_argument(format!("unknown signal {what}"));
    match value {
        None => Ok(Signal::SIGKILL),
        Some(Value::Int(n)) => i32::try_from(n)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| bad(n.to_string())),
        Some(Value::Str(name)) => {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            full.parse::<Signal>().map_err(|_| bad(name))
        }
        Some(other) => Err(bad(other.type_name().to_owned())),
    }
}

impl Remote for Process {
    fn type_name(&self) -> &str {
        "Process"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            "wait" => {
                let timeout = match args.take_opt::<f64>(0, "timeout") {
                    Ok(t) => t.and_then(|t| Duration::try_from_secs_f64(t).ok()),
                    Err(e) => return Reply::err(e),
                };
                let mut rx = self.status.clone();
                Reply::future(async move {
                    let done = async {
                        rx.wait_for(Option::is_some)
                            .await
                            .map(|v| v.clone().unwrap_or_default())
                            .map_err(|_| RemoteError::new(ErrorKind::Io, "the process was lost"))
                    };
                    match timeout {
                        None => done.await,
                        Some(limit) => tokio::time::timeout(limit, done).await.map_err(|_| {
                            RemoteError::new(
                                ErrorKind::Timeout,
                                format!(
                                    "`{}` is still running after {:.1} s",
                                    self.command,
                                    limit.as_secs_f64()
                                ),
                            )
                        })?,
                    }
                })
            }
            "poll" => Reply::ready(self.finished()),
            "kill" => {
                let signal = match args.take_opt::<Value>(0, "signal").and_then(parse_signal) {
                    Ok(s) => s,
                    Err(e) => return Reply::err(e),
                };
                if self.finished().is_some() {
                    return Reply::ready(false);
                }
                if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
                    if let Err(e) = killpg(Pid::from_raw(pid), signal) {
                        return Reply::err(RemoteError::from(std::io::Error::from(e)));
                    }
                }
                Reply::ready(true)
            }
            "write" => {
                let data = match args.take_value(0, "data") {
                    Ok(Value::Str(s)) => Bytes::from(s.into_bytes()),
                    Ok(Value::Bytes(b)) => b,
                    Ok(other) => {
                        return Reply::err(RemoteError::bad_argument(format!(
                            "argument 0 (`data`): expected str or bytes, got {}",
                            other.type_name()
                        )))
                    }
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    let mut stdin = self.stdin.lock().await;
                    let pipe = stdin.as_mut().ok_or_else(|| {
                        RemoteError::new(ErrorKind::Io, "the process's stdin is not open")
                    })?;
                    pipe.write_all(&data).await?;
                    Ok(data.len())
                })
            }
            "close_stdin" => Reply::future(async move {
                self.stdin.lock().await.take();
                Ok(())
            }),
            other => Reply::err(RemoteError::no_such_method("Process", other)),
        }
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "pid" => Reply::ready(self.pid),
            "command" => Reply::ready(self.command.as_str()),
            "running" => Reply::ready(self.finished().is_none()),
            _ => Reply::err(RemoteError::no_such_attribute("Process", name)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method(
                "wait",
                "wait(timeout: float = None) -> {exit_code, signal, ...}",
            ),
            Member::method("poll", "poll() -> map | None"),
            Member::method("kill", "kill(signal: int | str = \"KILL\") -> bool"),
            Member::method("write", "write(data: str | bytes) -> int"),
            Member::method("close_stdin", "close_stdin()"),
            Member::attribute("pid", "int"),
            Member::attribute("command", "str"),
            Member::attribute("running", "bool"),
        ]
    }
}
