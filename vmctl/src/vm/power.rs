//! Stopping a VM: the power button, then `quit`, then SIGKILL.

use std::time::Duration;

use tokio::time::Instant;

use super::state::{Ended, Intent, VmState};
use super::{Vm, VmError};
use crate::qmp::QmpError;

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

impl Vm {
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

    /// Tells QEMU to `quit` at once (no power button), and waits up to
    /// `grace` for it to exit; then kills it. Returns how it ended.
    #[tracing::instrument(skip_all, fields(vm = %self.spec.name))]
    pub async fn quit(&self, grace: Duration) -> Result<Ended, VmError> {
        if let Some(end) = self.final_result() {
            return end;
        }
        self.shared.raise_intent(Intent::Quit);
        self.shared.set(VmState::ShuttingDown);
        if let Err(e) = self.qmp.quit().await {
            tracing::warn!(error = %e, "quit failed");
        }
        if let Some(end) = self.wait_final_until(Instant::now() + grace).await {
            return end;
        }
        tracing::warn!(?grace, "QEMU ignored quit; killing it");
        self.kill().await
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
}
