//! Running a batch system's commands: an optional prefix (`ssh host`,
//! `chroot DIR runuser -u USER --`), extra environment, a timeout, and
//! bounded capture of stdout and stderr.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::script::sh_quote;
use super::BatchError;

/// The default timeout of one batch command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default cap on captured output, per stream.
pub const DEFAULT_MAX_OUTPUT: usize = 4 << 20;
/// How much output an error message shows.
const ERROR_EXCERPT: usize = 2000;

/// What runs in front of every command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefix {
    argv: Vec<String>,
    remote_shell: bool,
}

impl Prefix {
    /// No prefix: run the commands here.
    pub fn none() -> Self {
        Prefix::default()
    }

    /// Run the commands on `host` through `ssh` (batch mode, no TTY). The
    /// command and its arguments are quoted for the remote shell.
    pub fn ssh(host: impl Into<String>) -> Self {
        Prefix {
            argv: vec![
                "ssh".into(),
                "-o".into(),
                "BatchMode=yes".into(),
                "-T".into(),
                host.into(),
            ],
            remote_shell: true,
        }
    }

    /// Run the commands after `argv`, which passes its arguments on as an
    /// argument vector (`chroot DIR runuser -u USER --`, `sudo -u USER`).
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Prefix {
            argv: argv.into_iter().map(Into::into).collect(),
            remote_shell: false,
        }
    }

    /// Run the commands after `argv`, which takes one shell command line as
    /// its last argument (like `ssh`): the command is quoted into one string.
    pub fn shell<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Prefix {
            argv: argv.into_iter().map(Into::into).collect(),
            remote_shell: true,
        }
    }

    /// Parses a prefix from a command line: words split on whitespace;
    /// starting with `ssh` makes it a remote shell.
    pub fn parse(line: &str) -> Self {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let remote_shell = words.first().is_some_and(|w| w == "ssh");
        Prefix {
            argv: words,
            remote_shell,
        }
    }

    /// True when no prefix is set.
    pub fn is_empty(&self) -> bool {
        self.argv.is_empty()
    }
}

/// A command's result.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout (lossy UTF-8, at most the capture limit).
    pub stdout: String,
    /// Its stderr (lossy UTF-8, at most the capture limit).
    pub stderr: String,
    /// True when some output was dropped because of the limit.
    pub truncated: bool,
}

impl CommandOutput {
    /// stderr and stdout for an error message, truncated.
    pub fn excerpt(&self) -> String {
        let both = match (self.stderr.trim(), self.stdout.trim()) {
            ("", "") => "(no output)".to_owned(),
            (e, "") => format!("stderr: {e}"),
            ("", o) => format!("stdout: {o}"),
            (e, o) => format!("stderr: {e}; stdout: {o}"),
        };
        truncate(&both, ERROR_EXCERPT)
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary), saying so.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

/// Runs batch commands: prefix, environment, timeout, bounded capture.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    prefix: Prefix,
    env: Vec<(String, String)>,
    timeout: Duration,
    max_output: usize,
}

impl Default for CommandRunner {
    fn default() -> Self {
        CommandRunner {
            prefix: Prefix::none(),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

impl CommandRunner {
    /// A runner with no prefix, the default timeout and capture limit.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the prefix.
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = prefix;
        self
    }
    /// Adds an environment variable for the commands (passed through `env`
    /// on the remote side with a shell prefix).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Sets the timeout of each command.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Sets the capture limit per stream.
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The argument vector that runs `program args` with the prefix.
    pub fn argv(&self, program: &str, args: &[String]) -> Vec<String> {
        let mut argv = self.prefix.argv.clone();
        if self.prefix.remote_shell {
            let mut line = String::new();
            if !self.env.is_empty() {
                line.push_str("env");
                for (k, v) in &self.env {
                    line.push(' ');
                    line.push_str(&sh_quote(&format!("{k}={v}")));
                }
                line.push(' ');
            }
            line.push_str(&sh_quote(program));
            for a in args {
                line.push(' ');
                line.push_str(&sh_quote(a));
            }
            argv.push(line);
        } else {
            argv.push(program.to_owned());
            argv.extend(args.iter().cloned());
        }
        argv
    }

    /// How a command is shown in messages.
    pub fn display(&self, program: &str, args: &[String]) -> String {
        let line: Vec<String> = self
            .argv(program, args)
            .iter()
            .map(|a| sh_quote(a))
            .collect();
        truncate(&line.join(" "), 400)
    }

    /// Runs the command and fails unless it exits with status 0.
    pub async fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<CommandOutput, BatchError> {
        let out = self.run_status(program, args, stdin).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(BatchError::Failed {
                command: self.display(program, args),
                status: out.status.to_string(),
                output: out.excerpt(),
            })
        }
    }

    /// Runs the command and returns its output whatever its exit status.
    /// Fails when it cannot start or does not finish within the timeout (the
    /// whole process group is killed then).
    pub async fn run_status(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<CommandOutput, BatchError> {
        let argv = self.argv(program, args);
        let command_line = || self.display(program, args);
        let Some((first, rest)) = argv.split_first() else {
            return Err(BatchError::InvalidSpec("empty command".into()));
        };
        let mut cmd = Command::new(first);
        cmd.args(rest)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !self.prefix.remote_shell {
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        }
        tracing::debug!(command = %command_line(), "batch command");
        let mut child = cmd.spawn().map_err(|source| BatchError::Spawn {
            command: command_line(),
            source,
        })?;
        let group = child.id();
        let out_buf = Arc::new(Mutex::new(Captured::default()));
        let err_buf = Arc::new(Mutex::new(Captured::default()));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut child_stdin = child.stdin.take();
        let input = stdin.map(<[u8]>::to_vec);
        let max = self.max_output;
        let work = async {
            let feed = async {
                if let (Some(mut pipe), Some(data)) = (child_stdin.take(), input) {
                    // A command that does not read its input is not an error here.
                    let _ = pipe.write_all(&data).await;
                    let _ = pipe.shutdown().await;
                }
            };
            let (status, (), (), ()) = tokio::join!(
                child.wait(),
                feed,
                capture(stdout, max, out_buf.clone()),
                capture(stderr, max, err_buf.clone())
            );
            status
        };
        let result = tokio::time::timeout(self.timeout, work).await;
        let take = |b: &Arc<Mutex<Captured>>| {
            let c = b.lock().map(|c| c.clone()).unwrap_or_default();
            (String::from_utf8_lossy(&c.data).into_owned(), c.dropped)
        };
        let (stdout, t1) = take(&out_buf);
        let (stderr, t2) = take(&err_buf);
        match result {
            Ok(Ok(status)) => Ok(CommandOutput {
                status,
                stdout,
                stderr,
                truncated: t1 || t2,
            }),
            Ok(Err(source)) => Err(BatchError::Spawn {
                command: command_line(),
                source,
            }),
            Err(_) => {
                if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) {
                    kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.start_kill();
                let partial = CommandOutput {
                    status: ExitStatus::default(),
                    stdout,
                    stderr,
                    truncated: t1 || t2,
                };
                Err(BatchError::Timeout {
                    command: command_line(),
                    after: self.timeout,
                    output: partial.excerpt(),
                })
            }
        }
    }
}

/// Sends `signal` to the process group `pgid`; a group that is gone already
/// is not an error.
pub(crate) fn kill_group(pgid: i32, signal: nix::sys::signal::Signal) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
    }
}

#[derive(Debug, Default, Clone)]
struct Captured {
    data: Vec<u8>,
    dropped: bool,
}

/// Reads `pipe` to its end, keeping at most `max` bytes (the rest is read
/// and dropped so the writer never blocks).
async fn capture<R: AsyncRead + Unpin>(pipe: Option<R>, max: usize, into: Arc<Mutex<Captured>>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut c) = into.lock() {
                    let room = max.saturating_sub(c.data.len());
                    let keep = n.min(room);
                    c.data.extend_from_slice(&buf[..keep]);
                    if keep < n {
                        c.dropped = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn output_is_captured_and_bounded() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let r = CommandRunner::new().max_output(10);
            let out = r
                .run(
                    "sh",
                    &args(&["-c", "echo 0123456789abcdef; echo err >&2"]),
                    None,
                )
                .await
                .unwrap();
            assert_eq!(out.stdout, "0123456789");
            assert!(out.truncated);
            assert_eq!(out.stderr, "err\n");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_failure_names_the_command_and_its_output() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let r = CommandRunner::new();
            let e = r
                .run("sh", &args(&["-c", "echo broken >&2; exit 3"]), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("sh -c"), "{e}");
            assert!(e.contains("broken"), "{e}");
            assert!(e.contains("exit status: 3"), "{e}");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_hang_is_killed_with_its_group() {
        let r = CommandRunner::new().timeout(Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        let e = r
            .run("sh", &args(&["-c", "echo started; sleep 30 & wait"]), None)
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        let msg = e.to_string();
        assert!(matches!(e, BatchError::Timeout { .. }), "{msg}");
        assert!(msg.contains("started"), "{msg}");
    }

    #[tokio::test]
    async fn stdin_reaches_the_command() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let out = CommandRunner::new()
                .run("cat", &[], Some(b"hello"))
                .await
                .unwrap();
            assert_eq!(out.stdout, "hello");
        })
        .await
        .expect("test timed out");
    }

    #[test]
    fn a_shell_prefix_quotes_the_command() {
        let r = CommandRunner::new()
            .prefix(Prefix::ssh("h"))
            .env("A", "b c");
        let argv = r.argv("squeue", &args(&["-o", "%i|%j"]));
        assert_eq!(argv.last().unwrap(), "env 'A=b c' squeue -o '%i|%j'");
        let r = CommandRunner::new().prefix(Prefix::argv(["chroot", "/r"]));
        assert_eq!(
            r.argv("x", &args(&["a b"])),
            args(&["chroot", "/r", "x", "a b"])
        );
    }
}
