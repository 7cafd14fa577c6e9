//! The server child process (this program re-run with `--serve`) and the
//! memory readings of a process from `/proc`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::serve::parse_ready_line;

/// How long the child may take to print its ready line.
const READY_DEADLINE: Duration = Duration::from_secs(15);

/// The running server child. Dropping it kills the child; [`stop`] first
/// asks it to leave by closing its standard input.
///
/// [`stop`]: ServerChild::stop
pub struct ServerChild {
    /// Closing it tells the child to exit (it reads until end of file).
    stdin: Option<ChildStdin>,
    child: Child,
    pub pid: u32,
    pub rrpc: SocketAddr,
    pub echo: SocketAddr,
    pub bulk: SocketAddr,
}

impl ServerChild {
    /// Starts `current_exe --serve` (with `--threads N` when given) and
    /// waits for its ready line.
    pub async fn start(threads: Option<usize>) -> Result<ServerChild> {
        let exe = std::env::current_exe().context("cannot find this program to re-run it")?;
        let mut command = Command::new(exe);
        command.arg("--serve");
        if let Some(n) = threads {
            command.arg("--threads").arg(n.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server child")?;
        let pid = child.id().context("the server child exited at once")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_DEADLINE, lines.next_line())
            .await
            .with_context(|| format!("no ready line from the server child in {READY_DEADLINE:?}"))??
            .context("the server child exited before it was ready")?;
        let (rrpc, echo, bulk) = parse_ready_line(&line)?;
        // Nothing more is printed; keep draining so the child never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerChild {
            stdin,
            child,
            pid,
            rrpc,
            echo,
            bulk,
        })
    }

    /// Asks the child to leave, and kills it if it has not within 5 s.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        let waited = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        if waited.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// One field (in kB) of `/proc/PID/status`, in bytes.
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident set size of process `pid`, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of process `pid` since start or the last
/// [`reset_peak`], in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// Resets the peak RSS of `pid` to its current RSS; false when the kernel
/// refuses (then the peak counts from the process's start).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU time (user + system, every thread) used so far by process `pid`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // In clock ticks of USER_HZ, which is 100 on every Linux ABI.
    Some(Duration::from_millis((utime + stime) * 10))
}
