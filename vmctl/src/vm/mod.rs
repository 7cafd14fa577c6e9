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

mod power;
mod state;
mod supervise;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::accel::AccelChoice;
use crate::console::{self, Output, ReadyPattern, Source};
use crate::qemu::{QemuError, Serial, VmSpec};
use crate::qmp::{Qmp, QmpError};
use crate::task::AbortOnDrop;

pub use power::PowerDownPolicy;
use state::Intent;
pub use state::{CrashInfo, Ended, ExitInfo, VmState};
use supervise::{connect_qmp, watch_child, Shared};

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
