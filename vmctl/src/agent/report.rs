//! What the agent sends back: plain serde records, so a client reads them
//! with `from_value` or as maps (`value.get("ip")`).

use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::vm::{Ended, VmError, VmState};

/// The short name of a state: `starting`, `running`, `ready`, `paused`,
/// `shutting-down`, `stopped` or `crashed`.
pub fn state_name(state: &VmState) -> &'static str {
    match state {
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Ready => "ready",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting-down",
        VmState::Stopped(_) => "stopped",
        VmState::Crashed(_) => "crashed",
    }
}

/// How a VM ended, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// The guest powered itself off (a guest-initiated `SHUTDOWN`).
    Graceful,
    /// QEMU was told to `quit`.
    Quit,
    /// QEMU was killed by its owner.
    Killed,
    /// QEMU ended unexpectedly.
    Crashed,
    /// Stopping it failed (e.g. QEMU survived SIGKILL).
    Error,
}

impl How {
    /// The word, as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            How::Graceful => "graceful",
            How::Quit => "quit",
            How::Killed => "killed",
            How::Crashed => "crashed",
            How::Error => "error",
        }
    }
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one VM ended, with the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndReport {
    /// The VM's name.
    pub name: String,
    /// How it ended.
    pub how: How,
    /// The full story (the final state, or the error).
    pub detail: String,
    /// Seconds from the power-down request to the end, if one was made here.
    pub seconds: Option<f64>,
}

impl EndReport {
    /// Reads the outcome of a stop request.
    pub fn from_result(name: &str, result: &Result<Ended, VmError>, seconds: Option<f64>) -> Self {
        let (how, detail) = match result {
            Ok(end) => (how_ended(end), VmState::Stopped(end.clone()).to_string()),
            Err(VmError::Crashed { info, .. }) => (How::Crashed, format!("crashed: {info}")),
            Err(e) => (How::Error, e.to_string()),
        };
        Self {
            name: name.to_owned(),
            how,
            detail,
            seconds,
        }
    }

    /// Reads a final state; `None` if the state is not final.
    pub fn from_state(name: &str, state: &VmState) -> Option<Self> {
        let how = match state {
            VmState::Stopped(end) => how_ended(end),
            VmState::Crashed(_) => How::Crashed,
            _ => return None,
        };
        Some(Self {
            name: name.to_owned(),
            how,
            detail: state.to_string(),
            seconds: None,
        })
    }
}

fn how_ended(end: &Ended) -> How {
    match end {
        Ended::Graceful(_) => How::Graceful,
        Ended::Quit => How::Quit,
        Ended::Killed => How::Killed,
    }
}

/// A VM's identity and state (`vm.info()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's name.
    pub name: String,
    /// The node block id of its agent.
    pub block: u32,
    /// Its index in the block.
    pub index: u32,
    /// Its MAC.
    pub mac: String,
    /// The IP the guest derives from its MAC.
    pub ip: String,
    /// The short state name (see [`state_name`]).
    pub state: String,
    /// The state in words.
    pub detail: String,
    /// Seconds from launch to ready, once ready.
    pub seconds_to_ready: Option<f64>,
    /// QEMU's process id.
    pub pid: Option<u32>,
    /// The accelerator (`kvm` or `tcg`).
    pub accel: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// A VM's state now (`vm.status()`, `vm.wait()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM's name.
    pub name: String,
    /// The short state name.
    pub state: String,
    /// The state in words.
    pub detail: String,
    /// Whether the VM has ended for good.
    pub ended: bool,
    /// How it ended, once it has.
    pub how: Option<How>,
    /// QEMU's own run state (`running`, `paused`, …) while QMP answers.
    pub qmp_status: Option<String>,
}

impl VmStatus {
    /// The status of `state` (without asking QEMU).
    pub fn of(name: &str, state: &VmState) -> Self {
        Self {
            name: name.to_owned(),
            state: state_name(state).to_owned(),
            detail: state.to_string(),
            ended: state.is_final(),
            how: EndReport::from_state(name, state).map(|r| r.how),
            qmp_status: None,
        }
    }
}

/// What a subscribed callback receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEvent {
    /// The VM's name.
    pub vm: String,
    /// The short state name.
    pub state: String,
    /// The state in words (for a crash: the exit status and QEMU's stderr).
    pub detail: String,
    /// Whether this is the last event.
    pub ended: bool,
    /// The console's last output, sent with a crash only.
    pub console_tail: Option<String>,
}

impl StateEvent {
    /// The event for `state`.
    pub fn of(name: &str, state: &VmState) -> Self {
        let console_tail = match state {
            VmState::Crashed(info) => Some(info.console_tail.clone()),
            _ => None,
        };
        Self {
            vm: name.to_owned(),
            state: state_name(state).to_owned(),
            detail: state.to_string(),
            ended: state.is_final(),
            console_tail,
        }
    }
}

/// The node as the agent sees it (`node.resources()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourcesReport {
    /// The node block id (the third octet of its VMs' addresses, and more).
    pub block: u32,
    /// CPUs of the node.
    pub cpus: u32,
    /// Memory of the node, MiB.
    pub memory_mib: u64,
    /// The host reserve fraction.
    pub reserve: f64,
    /// Memory the VMs may use together, MiB.
    pub usable_mib: u64,
    /// Memory held by live VMs (and launches in progress), MiB.
    pub memory_in_use_mib: u64,
    /// Live VMs (not ended).
    pub live_vms: u32,
    /// The accelerator new VMs get.
    pub accel: String,
    /// Why.
    pub accel_reason: String,
}

/// A plan in numbers and in words (`node.plan(...)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    /// How many VMs fit.
    pub vms: u32,
    /// CPUs each.
    pub cpus_per_vm: u32,
    /// Memory each, MiB.
    pub memory_per_vm_mib: u64,
    /// Memory kept for the host, MiB.
    pub reserve_mib: u64,
    /// Memory shared by the VMs, MiB.
    pub usable_mib: u64,
    /// The plan in words.
    pub explain: String,
}

impl From<&Plan> for PlanReport {
    fn from(p: &Plan) -> Self {
        Self {
            vms: p.vms,
            cpus_per_vm: p.cpus_per_vm,
            memory_per_vm_mib: p.memory_per_vm_mib,
            reserve_mib: p.reserve_mib,
            usable_mib: p.usable_mib,
            explain: p.explain(),
        }
    }
}
