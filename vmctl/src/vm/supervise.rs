//! The tasks that watch a VM: QMP connection at start-up and the watcher
//! that owns the QEMU child process.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::state::{classify, CrashInfo, ExitInfo, Intent, VmState};
use super::VmError;
use crate::console::Output;
use crate::qemu::VmSpec;
use crate::qmp::{Qmp, QmpError, ShutdownEvent};

/// State shared between the [`Vm`] and its tasks.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) state: watch::Sender<VmState>,
    pub(crate) intent: AtomicU8,
    pub(crate) console_ready: AtomicBool,
    pub(crate) shutdown: watch::Sender<Option<ShutdownEvent>>,
    /// True once no more QMP events can arrive (or QMP never connected).
    pub(crate) events_done: watch::Sender<bool>,
    /// True once the console reader has seen the end of its pipe.
    pub(crate) console_done: watch::Sender<bool>,
    pub(crate) console: Arc<Output>,
    pub(crate) stderr: Arc<Output>,
}

impl Shared {
    /// Moves to `next` unless the state is final.
    pub(crate) fn set(&self, next: VmState) {
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
    pub(crate) fn transition(&self, from: &[VmState], next: VmState) {
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

    pub(crate) fn intent(&self) -> Intent {
        Intent::from_u8(self.intent.load(Ordering::SeqCst))
    }

    pub(crate) fn raise_intent(&self, intent: Intent) {
        self.intent.fetch_max(intent as u8, Ordering::SeqCst);
    }

    pub(crate) fn ready_or_running(&self) -> VmState {
        if self.console_ready.load(Ordering::SeqCst) {
            VmState::Ready
        } else {
            VmState::Running
        }
    }
}

/// Connects QMP, retrying while QEMU has not opened its socket yet.
pub(crate) async fn connect_qmp(
    spec: &VmSpec,
    shared: &Shared,
    timeout: Duration,
) -> Result<Qmp, VmError> {
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
pub(crate) async fn watch_child(
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
