//! The states a VM goes through, and how an exit is read.

use std::fmt;
use std::os::unix::process::ExitStatusExt;

use serde::{Deserialize, Serialize};

use crate::qmp::ShutdownEvent;

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

/// What the owner has asked for; decides how an exit is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Intent {
    None = 0,
    PowerDown = 1,
    Quit = 2,
    Kill = 3,
}

impl Intent {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Intent::PowerDown,
            2 => Intent::Quit,
            3 => Intent::Kill,
            _ => Intent::None,
        }
    }
}

/// Reads an exit: a clean end, or why it is a crash.
pub(crate) fn classify(
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
