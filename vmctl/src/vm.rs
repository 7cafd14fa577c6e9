//! A running VM: QEMU as a child process, its QMP monitor, its console, and
//! the state everyone may watch.
//!
//! [`Vm::launch`] starts QEMU (not daemonized), connects QMP and returns;
//! [`Vm::wait_ready`] waits for the readiness pattern on the serial console.
//! A watcher task owns the child process: it notices every exit, works out
//! whether the end was asked for, and publishes the final state —
//! [`VmState::Stopped`] with how it ended, or [`VmState::Crashed`] with the
//! exit status and the console's last lines. [`Vm::power_down`] does what the
//! article's launch script does at the end of a job, with retries: press the
//! ACPI power button (again and again, since a booting guest may not listen
//! yet) until the guest reacts or a grace period passes, then `quit`, then
//! kill.
//!
//! Every task and the child belong to the [`Vm`]: dropping it aborts the
//! tasks, and the watcher's child handle kills QEMU as it is dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use vmctl::console::ReadyPattern;
//! use vmctl::qemu::VmSpec;
//! use vmctl::vm::{PowerDownPolicy, Vm, VmOptions};
//!
//! let spec = VmSpec::new("vm0", "/run/vmctl")?
//!     .kernel("/guest/vmlinux", Some("/guest/initrd.gz".into()), "console=ttyS0");
//! let options = VmOptions::default().ready_when(ReadyPattern::Substring("GUEST-READY".into()));
//! let vm = Vm::launch(spec, options).await?;
//! vm.wait_ready(Duration::from_secs(60)).await?;
//! let ended = vm.power_down(&PowerDownPolicy::default()).await?;
//! println!("{ended:?}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::accel::AccelChoice;
use crate::console::{self, Output, ReadyPattern, Source};
use crate::qemu::{QemuError, Serial, VmSpec};
use crate::qmp::{Qmp, QmpError, ShutdownEvent};
use crate::task::AbortOnDrop;

/// Errors of a VM's life.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The spec or the spawn failed.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// A QMP command failed.
    #[error("VM {vm}: {source}")]
    Qmp {
        /// The VM's name.
        vm: String,
        /// The cause.
        source: QmpError,
    },
    /// Preparing the run directory failed.
    #[error("VM {vm}: {what} {path}: {source}")]
    Io {
        /// The VM's name.
        vm: String,
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// QEMU ended before it could be used.
    #[error("VM {vm}: QEMU ended during start-up: {state}\nQEMU said: {stderr}")]
    EndedEarly {
        /// The VM's name.
        vm: String,
        /// The final state.
        state: VmState,
        /// QEMU's last stderr output.
        stderr: String,
    },
    /// A wait ran out of time.
    #[error("VM {vm}: {what} did not happen within {after:?}\nconsole tail:\n{console_tail}")]
    Timeout {
        /// The VM's name.
        vm: String,
        /// What was awaited.
        what: &'static str,
        /// How long it was awaited.
        after: Duration,
        /// The console's last output.
        console_tail: String,
    },
    /// The VM ended where it should not have.
    #[error("VM {vm} is not running: {state}")]
    NotRunning {
        /// The VM's name.
        vm: String,
        /// The state it is in.
        state: VmState,
    },
    /// QEMU crashed (possibly during a power-down).
    #[error("VM {vm} crashed: {info}")]
    Crashed {
        /// The VM's name.
        vm: String,
        /// The details.
        info: Box<CrashInfo>,
    },
    /// QEMU survived even SIGKILL for the kill grace period.
    #[error("VM {vm}: QEMU (pid {pid:?}) did not exit after SIGKILL within {after:?}")]
    Unkillable {
        /// The VM's name.
        vm: String,
        /// QEMU's process id.
        pid: Option<u32>,
        /// How long was waited.
        after: Duration,
    },
}

/// How QEMU's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal, if one killed it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Converts a process exit status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }

    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(9)) => write!(f, "killed by signal 9 (SIGKILL)"),
            (None, Some(15)) => write!(f, "killed by signal 15 (SIGTERM)"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}

/// How a VM that was told to stop, or stopped itself cleanly, ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    /// The guest powered itself off (QMP `SHUTDOWN` with `guest: true`,
    /// reason `guest-shutdown`), after a power-down request or on its own.
    Graceful(ShutdownEvent),
    /// QEMU was told to `quit`.
    Quit,
    /// QEMU was killed by its owner.
    Killed,
}

/// What is known about an unexpected end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashInfo {
    /// QEMU's exit status.
    pub exit_status: ExitInfo,
    /// Why this counts as a crash.
    pub reason: String,
    /// The `SHUTDOWN` event, if QEMU sent one (e.g. a guest panic or reset
    /// with `-no-reboot`).
    pub shutdown: Option<ShutdownEvent>,
    /// The serial console's last output.
    pub console_tail: String,
    /// QEMU's last stderr output.
    pub stderr_tail: String,
}

impl fmt::Display for CrashInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.exit_status)?;
        if !self.stderr_tail.trim().is_empty() {
            write!(f, "; QEMU said: {}", self.stderr_tail.trim())?;
        }
        Ok(())
    }
}

/// The life of a VM, as published to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// QEMU started; QMP not connected yet.
    Starting,
    /// QMP answers; the readiness pattern has not been seen yet.
    Running,
    /// QMP answers and the readiness pattern was seen (or none was set).
    Ready,
    /// The vCPUs are stopped (`stop`).
    Paused,
    /// A power-down is in progress.
    ShuttingDown,
    /// QEMU exited as asked or as the guest decided. Final.
    Stopped(Ended),
    /// QEMU exited unexpectedly. Final.
    Crashed(Box<CrashInfo>),
}

impl VmState {
    /// True for `Stopped` and `Crashed`, which never change again.
    pub fn is_final(&self) -> bool {
        matches!(self, VmState::Stopped(_) | VmState::Crashed(_))
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmState::Starting => f.write_str("starting"),
            VmState::Running => f.write_str("running"),
            VmState::Ready => f.write_str("ready"),
            VmState::Paused => f.write_str("paused"),
            VmState::ShuttingDown => f.write_str("shutting down"),
            VmState::Stopped(Ended::Graceful(e)) => {
                write!(f, "stopped: guest shut down ({})", e.reason)
            }
            VmState::Stopped(Ended::Quit) => f.write_str("stopped: quit"),
            VmState::Stopped(Ended::Killed) => f.write_str("stopped: killed"),
            VmState::Crashed(info) => write!(f, "crashed: {info}"),
        }
    }
}

/// How a VM is watched.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The console line that marks the guest ready; `None`: ready as soon as
    /// QMP answers.
    pub ready: Option<ReadyPattern>,
    /// How long QEMU may take to open its QMP socket.
    pub qmp_timeout: Duration,
    /// How many bytes of console (and of stderr) output are kept.
    pub tail_bytes: usize,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            ready: None,
            qmp_timeout: Duration::from_secs(30),
            tail_bytes: 64 * 1024,
        }
    }
}

impl VmOptions {
    /// Sets the readiness pattern.
    pub fn ready_when(mut self, pattern: ReadyPattern) -> Self {
        self.ready = Some(pattern);
        self
    }
}

/// The escalation of [`Vm::power_down`].
#[derive(Debug, Clone)]
pub struct PowerDownPolicy {
    /// How long the guest has to power off after the first button press.
    pub graceful: Duration,
    /// The first pause between button presses; it doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// The longest pause between button presses.
    pub retry_max: Duration,
    /// How long QEMU has to exit after `quit`.
    pub quit_grace: Duration,
    /// How long QEMU has to exit after SIGKILL.
    pub kill_grace: Duration,
}

impl Default for PowerDownPolicy {
    fn default() -> Self {
        Self {
            graceful: Duration::from_secs(60),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(5),
            quit_grace: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
        }
    }
}

/// What the owner has asked for; decides how an exit is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Intent {
    None = 0,
    PowerDown = 1,
    Quit = 2,
    Kill = 3,
}

impl Intent {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Intent::PowerDown,
            2 => Intent::Quit,
            3 => Intent::Kill,
            _ => Intent::None,
        }
    }
}

/// Reads an exit: a clean end, or why it is a crash.
fn classify(
    intent: Intent,
    shutdown: Option<&ShutdownEvent>,
    exit: ExitInfo,
) -> Result<Ended, String> {
    if let Some(ev) = shutdown {
        if ev.guest && ev.reason == "guest-shutdown" && exit.success() {
            return Ok(Ended::Graceful(ev.clone()));
        }
    }
    match intent {
        Intent::Kill => Ok(Ended::Killed),
        Intent::Quit if exit.success() || shutdown.is_some_and(|e| e.reason == "host-qmp-quit") => {
            Ok(Ended::Quit)
        }
        _ => Err(match shutdown {
            Some(ev) if ev.guest => format!("the guest stopped the VM ({})", ev.reason),
            Some(ev) => format!("QEMU shut down unasked ({})", ev.reason),
            None => "QEMU exited unexpectedly".to_owned(),
        }),
    }
}

/// State shared between the [`Vm`] and its tasks.
struct Shared {
    name: String,
    state: watch::Sender<VmState>,
    intent: AtomicU8,
    console_ready: AtomicBool,
    shutdown: watch::Sender<Option<ShutdownEvent>>,
    /// True once no more QMP events can arrive (or QMP never connected).
    events_done: watch::Sender<bool>,
    /// True once the console reader has seen the end of its pipe.
    console_done: watch::Sender<bool>,
    console: Arc<Output>,
    stderr: Arc<Output>,
}

impl Shared {
    /// Moves to `next` unless the state is final.
    fn set(&self, next: VmState) {
        self.state.send_if_modified(|s| {
            if s.is_final() || *s == next {
                false
            } else {
                tracing::info!(vm = %self.name, from = %s, to = %next, "VM state");
                *s = next;
                true
            }
        });
    }

    /// Moves from one of `from` to `next`.
    fn transition(&self, from: &[VmState], next: VmState) {
        self.state.send_if_modified(|s| {
            if from.contains(s) {
                tracing::info!(vm = %self.name, from = %s, to = %next, "VM state");
                *s = next;
                true
            } else {
                false
            }
        });
    }

    fn intent(&self) -> Intent {
        Intent::from_u8(self.intent.load(Ordering::SeqCst))
    }

    fn raise_intent(&self, intent: Intent) {
        self.intent.fetch_max(intent as u8, Ordering::SeqCst);
    }

    fn ready_or_running(&self) -> VmState {
        if self.console_ready.load(Ordering::SeqCst) {
            VmState::Ready
        } else {
            VmState::Running
        }
    }
}

/// A running QEMU and everything that watches it.
pub struct Vm {
    spec: VmSpec,
    accel: AccelChoice,
    pid: Option<u32>,
    shared: Arc<Shared>,
    qmp: Qmp,
    kill: mpsc::Sender<()>,
    _tasks: Vec<AbortOnDrop>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.spec.name)
            .field("pid", &self.pid)
            .field("accel", &self.accel.accel)
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Starts QEMU for `spec`, connects its QMP socket and returns once QMP
    /// answers. The console is watched for `options.ready` from the first
    /// byte on.
    #[tracing::instrument(skip_all, fields(vm = %spec.name))]
    pub async fn launch(spec: VmSpec, options: VmOptions) -> Result<Vm, VmError> {
        let accel = spec.accel.resolve().map_err(QemuError::from)?;
        tracing::info!(accel = %accel.accel, reason = %accel.reason, "accelerator chosen");
        let mut cmd = spec.command(accel.accel)?;
        let name = spec.name.clone();
        let io_err = |what, path: &std::path::Path| {
            let vm = name.clone();
            let path = path.to_path_buf();
            move |source| VmError::Io {
                vm,
                what,
                path,
                source,
            }
        };
        if let Some(dir) = spec.qmp_socket.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("cannot create run directory", dir))?;
        }
        match std::fs::remove_file(&spec.qmp_socket) {
            Ok(()) => {
                tracing::debug!(path = %spec.qmp_socket.display(), "removed a stale QMP socket")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove stale socket", &spec.qmp_socket)(e)),
        }

        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            program: spec.qemu.display().to_string(),
            source,
        })?;
        let pid = child.id();
        tracing::info!(?pid, qmp = %spec.qmp_socket.display(), "QEMU started");

        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            state: watch::channel(VmState::Starting).0,
            intent: AtomicU8::new(Intent::None as u8),
            console_ready: AtomicBool::new(options.ready.is_none()),
            shutdown: watch::channel(None).0,
            events_done: watch::channel(false).0,
            console_done: watch::channel(false).0,
            console: Output::new(options.tail_bytes),
            stderr: Output::new(options.tail_bytes),
        });
        let mut tasks = Vec::new();

        // The console: from QEMU's stdout, or from the file QEMU writes.
        let console_source = match (&spec.serial, child.stdout.take()) {
            (Serial::Pipe | Serial::PipeAndLog(_), Some(out)) => Some(Source::Pipe(out)),
            (Serial::File(path), _) => Some(Source::File(path.clone())),
            _ => None,
        };
        match console_source {
            Some(source) => {
                if matches!(source, Source::File(_)) {
                    // A followed file has no end: nothing to wait for on exit.
                    shared.console_done.send_replace(true);
                }
                let s = Arc::clone(&shared);
                let pattern = options.ready.clone();
                tasks.push(AbortOnDrop::new(tokio::spawn(async move {
                    let s2 = Arc::clone(&s);
                    console::pump(source, Arc::clone(&s.console), move |line| {
                        tracing::trace!(vm = %s2.name, line, "console");
                        if let Some(p) = &pattern {
                            if !s2.console_ready.load(Ordering::SeqCst) && p.is_match(line) {
                                tracing::info!(vm = %s2.name, line, "readiness pattern seen");
                                s2.console_ready.store(true, Ordering::SeqCst);
                                s2.transition(&[VmState::Running], VmState::Ready);
                            }
                        }
                    })
                    .await;
                    s.console_done.send_replace(true);
                })));
            }
            None => {
                shared.console_done.send_replace(true);
            }
        }
        if let Some(err) = child.stderr.take() {
            let s = Arc::clone(&shared);
            tasks.push(AbortOnDrop::new(tokio::spawn(async move {
                let name = s.name.clone();
                console::pump(Source::Pipe(err), Arc::clone(&s.stderr), |line| {
                    tracing::warn!(vm = %name, "qemu: {line}");
                })
                .await;
            })));
        }

        let (kill_tx, kill_rx) = mpsc::channel(4);
        tasks.push(AbortOnDrop::new(tokio::spawn(watch_child(
            child,
            kill_rx,
            Arc::clone(&shared),
            spec.qmp_socket.clone(),
        ))));

        let qmp = match connect_qmp(&spec, &shared, options.qmp_timeout).await {
            Ok(qmp) => qmp,
            Err(e) => {
                // Dropping the tasks kills QEMU.
                drop(tasks);
                return Err(e);
            }
        };
        let mut events = qmp.subscribe();
        let s = Arc::clone(&shared);
        tasks.push(AbortOnDrop::new(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        if let Some(sd) = ev.as_shutdown() {
                            tracing::info!(vm = %s.name, guest = sd.guest, reason = %sd.reason, "SHUTDOWN event");
                            s.shutdown.send_replace(Some(sd));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(vm = %s.name, lost = n, "QMP events lost");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            s.events_done.send_replace(true);
        })));
        let next = shared.ready_or_running();
        shared.transition(&[VmState::Starting], next);

        Ok(Vm {
            spec,
            accel,
            pid,
            shared,
            qmp,
            kill: kill_tx,
            _tasks: tasks,
        })
    }

    /// The VM's spec.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The accelerator in use and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The QMP client.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.shared.state.borrow().clone()
    }

    /// A receiver of state changes; the final state stays in it.
    pub fn subscribe(&self) -> watch::Receiver<VmState> {
        self.shared.state.subscribe()
    }

    /// Every console line from now on.
    pub fn console_lines(&self) -> broadcast::Receiver<String> {
        self.shared.console.subscribe()
    }

    /// The console's last output (bounded by [`VmOptions::tail_bytes`]).
    pub fn console_tail(&self) -> String {
        self.shared.console.tail()
    }

    /// QEMU's last stderr output.
    pub fn stderr_tail(&self) -> String {
        self.shared.stderr.tail()
    }

    /// Waits until the readiness pattern was seen. Fails at once if the VM
    /// ends first, and after `timeout` with the console tail.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), VmError> {
        let mut rx = self.subscribe();
        let wait = async move {
            rx.wait_for(|s| *s == VmState::Ready || s.is_final())
                .await
                .map(|s| s.clone())
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(VmState::Ready)) => Ok(()),
            Ok(Ok(state)) => Err(VmError::NotRunning {
                vm: self.spec.name.clone(),
                state,
            }),
            Ok(Err(_)) => Err(self.not_running()),
            Err(_) => {
                if self.shared.console_ready.load(Ordering::SeqCst) {
                    return Ok(()); // seen, but e.g. paused since
                }
                Err(VmError::Timeout {
                    vm: self.spec.name.clone(),
                    what: "readiness",
                    after: timeout,
                    console_tail: self.console_tail(),
                })
            }
        }
    }

    /// Waits until the VM reaches a final state and returns it.
    pub async fn wait_stopped(&self) -> VmState {
        let mut rx = self.subscribe();
        let state = match rx.wait_for(VmState::is_final).await {
            Ok(s) => s.clone(),
            Err(_) => self.state(),
        };
        state
    }

    /// `query-status` over QMP.
    pub async fn query_status(&self) -> Result<crate::qmp::StatusInfo, VmError> {
        self.qmp.query_status().await.map_err(|e| self.qmp_err(e))
    }

    /// Pauses the vCPUs.
    pub async fn pause(&self) -> Result<(), VmError> {
        self.qmp.stop().await.map_err(|e| self.qmp_err(e))?;
        self.shared
            .transition(&[VmState::Running, VmState::Ready], VmState::Paused);
        Ok(())
    }

    /// Resumes the vCPUs.
    pub async fn resume(&self) -> Result<(), VmError> {
        self.qmp.cont().await.map_err(|e| self.qmp_err(e))?;
        let next = self.shared.ready_or_running();
        self.shared.transition(&[VmState::Paused], next);
        Ok(())
    }

    /// Stops the VM: ACPI power button (repeated) → `quit` → SIGKILL, each
    /// step only if the previous one did not end QEMU within its grace
    /// period. Returns how it ended; a crash on the way is an error.
    #[tracing::instrument(skip_all, fields(vm = %self.spec.name))]
    pub async fn power_down(&self, policy: &PowerDownPolicy) -> Result<Ended, VmError> {
        if let Some(end) = self.final_result() {
            return end;
        }
        // A paused guest cannot see the power button.
        if self.state() == VmState::Paused {
            if let Err(e) = self.qmp.cont().await {
                tracing::warn!(error = %e, "cont before power-down failed");
            }
        }
        self.shared.raise_intent(Intent::PowerDown);
        self.shared.set(VmState::ShuttingDown);

        // 1. The power button, until the guest reacts or the grace period ends.
        let deadline = Instant::now() + policy.graceful;
        let mut pause = policy.retry_initial;
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut presses = 0u32;
        loop {
            if shutdown.borrow().is_some() {
                tracing::info!("guest reacted; waiting for QEMU to exit");
                if let Some(end) = self.wait_final_until(deadline).await {
                    return end;
                }
                break;
            }
            match self.qmp.system_powerdown().await {
                Ok(()) => presses += 1,
                Err(QmpError::Disconnected { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "system_powerdown failed"),
            }
            tracing::debug!(presses, "power button pressed");
            let until = (Instant::now() + pause).min(deadline);
            let mut state = self.subscribe();
            tokio::select! {
                _ = state.wait_for(VmState::is_final) => {}
                _ = shutdown.wait_for(Option::is_some) => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            if let Some(end) = self.final_result() {
                return end;
            }
            if Instant::now() >= deadline {
                break;
            }
            pause = (pause * 2).min(policy.retry_max);
        }

        // 2. quit.
        tracing::info!(presses, grace = ?policy.graceful, "guest did not power off; sending quit");
        self.shared.raise_intent(Intent::Quit);
        if let Err(e) = self.qmp.quit().await {
            tracing::warn!(error = %e, "quit failed");
        }
        if let Some(end) = self
            .wait_final_until(Instant::now() + policy.quit_grace)
            .await
        {
            return end;
        }

        // 3. SIGKILL.
        tracing::warn!(grace = ?policy.quit_grace, "QEMU ignored quit; killing it");
        self.kill_now();
        if let Some(end) = self
            .wait_final_until(Instant::now() + policy.kill_grace)
            .await
        {
            return end;
        }
        Err(VmError::Unkillable {
            vm: self.spec.name.clone(),
            pid: self.pid,
            after: policy.kill_grace,
        })
    }

    /// Kills QEMU at once (SIGKILL) and waits for it to be reaped.
    pub async fn kill(&self) -> Result<Ended, VmError> {
        if let Some(end) = self.final_result() {
            return end;
        }
        self.kill_now();
        match self
            .wait_final_until(Instant::now() + Duration::from_secs(10))
            .await
        {
            Some(end) => end,
            None => Err(VmError::Unkillable {
                vm: self.spec.name.clone(),
                pid: self.pid,
                after: Duration::from_secs(10),
            }),
        }
    }

    fn kill_now(&self) {
        self.shared.raise_intent(Intent::Kill);
        self.shared.set(VmState::ShuttingDown);
        // Full or closed: a kill is already pending, or the child is reaped.
        let _ = self.kill.try_send(());
    }

    /// The final state as a result, if the VM has ended.
    fn final_result(&self) -> Option<Result<Ended, VmError>> {
        match self.state() {
            VmState::Stopped(end) => Some(Ok(end)),
            VmState::Crashed(info) => Some(Err(VmError::Crashed {
                vm: self.spec.name.clone(),
                info,
            })),
            _ => None,
        }
    }

    async fn wait_final_until(&self, deadline: Instant) -> Option<Result<Ended, VmError>> {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(VmState::is_final)).await;
        self.final_result()
    }

    fn qmp_err(&self, source: QmpError) -> VmError {
        match source {
            QmpError::Disconnected { .. } if self.state().is_final() => self.not_running(),
            source => VmError::Qmp {
                vm: self.spec.name.clone(),
                source,
            },
        }
    }

    fn not_running(&self) -> VmError {
        VmError::NotRunning {
            vm: self.spec.name.clone(),
            state: self.state(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The tasks are aborted by their owners in `_tasks`; the watcher's
        // child handle kills QEMU. A socket left by a killed QEMU is removed.
        if !self.state().is_final() {
            tracing::info!(vm = %self.spec.name, "VM dropped while running; killing QEMU");
            let _ = std::fs::remove_file(&self.spec.qmp_socket);
        }
    }
}

/// Connects QMP, retrying while QEMU has not opened its socket yet.
async fn connect_qmp(spec: &VmSpec, shared: &Shared, timeout: Duration) -> Result<Qmp, VmError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    let mut state = shared.state.subscribe();
    loop {
        match Qmp::connect(&spec.qmp_socket).await {
            Ok(qmp) => return Ok(qmp),
            Err(QmpError::Connect { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(source) => {
                return Err(VmError::Qmp {
                    vm: spec.name.clone(),
                    source,
                })
            }
        }
        if Instant::now() >= deadline {
            return Err(VmError::Timeout {
                vm: spec.name.clone(),
                what: "QMP socket",
                after: timeout,
                console_tail: shared.console.tail(),
            });
        }
        let until = (Instant::now() + pause).min(deadline);
        tokio::select! {
            r = state.wait_for(VmState::is_final) => {
                let state = match r {
                    Ok(s) => s.clone(),
                    Err(_) => VmState::Starting,
                };
                return Err(VmError::EndedEarly {
                    vm: spec.name.clone(),
                    state,
                    stderr: shared.stderr.tail(),
                });
            }
            _ = tokio::time::sleep_until(until) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Owns the child: waits for it to exit (killing it when asked), then
/// publishes the final state.
async fn watch_child(
    mut child: Child,
    mut kill: mpsc::Receiver<()>,
    shared: Arc<Shared>,
    qmp_socket: PathBuf,
) {
    let mut kill_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            msg = kill.recv(), if kill_open => match msg {
                Some(()) => {
                    tracing::info!(vm = %shared.name, "sending SIGKILL to QEMU");
                    if let Err(e) = child.start_kill() {
                        tracing::warn!(vm = %shared.name, error = %e, "kill failed");
                    }
                }
                None => kill_open = false,
            },
        }
    };
    let exit = match status {
        Ok(status) => ExitInfo::from_status(status),
        Err(e) => {
            tracing::error!(vm = %shared.name, error = %e, "waiting for QEMU failed");
            ExitInfo {
                code: None,
                signal: None,
            }
        }
    };
    // QEMU sends SHUTDOWN before it exits, and its console output is still
    // in the pipe: let the QMP and console readers reach their ends first.
    let grace = Duration::from_secs(2);
    let mut events_done = shared.events_done.subscribe();
    let mut console_done = shared.console_done.subscribe();
    let state_now = shared.state.borrow().clone();
    if state_now != VmState::Starting {
        let _ = tokio::time::timeout(grace, events_done.wait_for(|d| *d)).await;
    }
    let _ = tokio::time::timeout(grace, console_done.wait_for(|d| *d)).await;

    let shutdown = shared.shutdown.borrow().clone();
    let intent = shared.intent();
    let next = match classify(intent, shutdown.as_ref(), exit) {
        Ok(ended) => {
            tracing::info!(vm = %shared.name, %exit, ?ended, "QEMU exited");
            VmState::Stopped(ended)
        }
        Err(reason) => {
            let info = CrashInfo {
                exit_status: exit,
                reason,
                shutdown,
                console_tail: shared.console.tail(),
                stderr_tail: shared.stderr.tail(),
            };
            tracing::error!(vm = %shared.name, %info, "QEMU crashed");
            VmState::Crashed(Box::new(info))
        }
    };
    // QEMU removes its socket on a clean exit, but not when killed.
    if std::fs::remove_file(&qmp_socket).is_ok() {
        tracing::debug!(vm = %shared.name, "removed the QMP socket left behind");
    }
    shared.set(next);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sd(guest: bool, reason: &str) -> ShutdownEvent {
        ShutdownEvent {
            guest,
            reason: reason.into(),
        }
    }

    const OK: ExitInfo = ExitInfo {
        code: Some(0),
        signal: None,
    };
    const KILLED: ExitInfo = ExitInfo {
        code: None,
        signal: Some(9),
    };

    #[test]
    fn guest_power_off_is_graceful_asked_or_not() {
        let ev = sd(true, "guest-shutdown");
        for intent in [Intent::None, Intent::PowerDown, Intent::Quit] {
            assert_eq!(
                classify(intent, Some(&ev), OK),
                Ok(Ended::Graceful(ev.clone()))
            );
        }
    }

    #[test]
    fn quit_and_kill_are_what_was_asked() {
        assert_eq!(
            classify(Intent::Quit, Some(&sd(false, "host-qmp-quit")), OK),
            Ok(Ended::Quit)
        );
        assert_eq!(classify(Intent::Kill, None, KILLED), Ok(Ended::Killed));
    }

    #[test]
    fn unasked_ends_are_crashes() {
        let e = classify(Intent::None, None, KILLED).unwrap_err();
        assert!(e.contains("unexpectedly"), "{e}");
        // A kernel panic with -no-reboot: the guest "reset".
        let e = classify(Intent::None, Some(&sd(true, "guest-reset")), OK).unwrap_err();
        assert!(e.contains("guest-reset"), "{e}");
        let e = classify(Intent::PowerDown, Some(&sd(false, "host-signal")), OK).unwrap_err();
        assert!(e.contains("host-signal"), "{e}");
        assert!(classify(Intent::Quit, None, KILLED).is_err());
    }

    #[test]
    fn exit_info_reads_well() {
        assert_eq!(KILLED.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(OK.to_string(), "exit code 0");
    }
}
