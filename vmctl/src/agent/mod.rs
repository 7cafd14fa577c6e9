//! The node agent: an rrpc service that plans, launches, watches and powers
//! down the VMs of one node, so that one driver program controls the VMs of
//! every node.
//!
//! The server's root is a namespace with one export, `node` (a
//! [`NodeAgent`]):
//!
//! | `node.` | does |
//! | --- | --- |
//! | `resources()` | CPUs, memory, reserve, memory in use, accelerator |
//! | `plan(size, reserve=0.2)` | `size` is `{"vm_cpus": N}`, `{"vm_mem_mib": M}` or a plain CPU count; the plan in numbers and words |
//! | `launch(spec={})` | starts a VM (see [`LaunchSpec`]) and returns it **by reference** |
//! | `list()` | the VMs (live and ended) by reference |
//! | `power_down_all(grace=60)` | powers every live VM down at once; how each ended |
//!
//! and each VM ([`VmObject`]) offers `info`, `status`, `wait_ready`,
//! `powerdown`, `quit`, `kill`, `wait`, `console_tail`, `pause`, `resume`
//! and `subscribe(callback)`.
//!
//! The agent owns its VMs: dropping it (its last handle) kills every QEMU it
//! started. VM `i` of block `b` gets the MAC and IP of
//! [`VmAddress::new(b, i)`](crate::net::VmAddress); an index is reused only
//! once its VM has ended.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use vmctl::agent::{serve, AgentConfig, NodeAgent};
//!
//! let agent = Arc::new(NodeAgent::new(AgentConfig::new(1).guest_dir("/guest"))?);
//! let listening = serve::bind(Arc::clone(&agent), "127.0.0.1:0").await?;
//! println!("vmctl agent listening on {}", listening.local_addr());
//! serve::run(agent, listening, serve::shutdown_signal(), std::time::Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```

mod node_object;
pub mod report;
pub mod serve;
mod spec;
mod vm_object;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rrpc_core::{ErrorKind, RemoteError};

use crate::accel::{Accel, AccelChoice};
use crate::net::{VmAddress, MAX_VMS_PER_BLOCK};
use crate::plan::{NodeResources, PlanRequest, VmSize, DEFAULT_RESERVE};
use crate::tapnet::{Tap, TapConfig};
use crate::vm::{PowerDownPolicy, Vm, VmOptions};
use report::{EndReport, PlanReport, ResourcesReport};
pub use spec::{LaunchSpec, DEFAULT_APPEND, GUEST_READY_REGEX};
pub use vm_object::{VmEntry, VmObject, MAX_SUBSCRIPTIONS};

/// Errors of the agent's own API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The request cannot be served as asked.
    #[error("{0}")]
    Refused(String),
    /// The node could not be read.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// The accelerator could not be chosen.
    #[error(transparent)]
    Accel(#[from] crate::accel::AccelError),
    /// The run directory could not be made.
    #[error("cannot create the agent's run directory {path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// QEMU could not be started or did not come up.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// The VM's tap could not be set up.
    #[error(transparent)]
    Tap(#[from] crate::tapnet::TapError),
}

impl From<AgentError> for RemoteError {
    fn from(e: AgentError) -> RemoteError {
        let kind = match &e {
            AgentError::Refused(_) => ErrorKind::Refused,
            AgentError::Vm(crate::vm::VmError::Qemu(_)) => ErrorKind::BadArgument,
            _ => ErrorKind::Io,
        };
        RemoteError::new(kind, e.to_string())
    }
}

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's block id (see [`crate::net`]).
    pub block: u32,
    /// Where QMP sockets go; default a fresh directory under the system's
    /// temporary directory, removed with the agent.
    pub run_dir: Option<PathBuf>,
    /// The default guest (`vmlinux`, `initrd.gz`) for specs without a kernel
    /// or image.
    pub guest_dir: Option<PathBuf>,
    /// The node's resources; default: read from `/proc`.
    pub resources: Option<NodeResources>,
    /// The host memory reserve.
    pub reserve: f64,
    /// The accelerator for new VMs.
    pub accel: Accel,
    /// How long QEMU may take to open QMP.
    pub qmp_timeout: Duration,
    /// Run the tap set-up of network `tap` inside this network namespace
    /// (`ip netns exec`); QEMU must then run there too.
    pub tap_netns: Option<String>,
}

impl AgentConfig {
    /// Block `block`, every other setting at its default.
    pub fn new(block: u32) -> Self {
        Self {
            block,
            run_dir: None,
            guest_dir: None,
            resources: None,
            reserve: DEFAULT_RESERVE,
            accel: Accel::Auto,
            qmp_timeout: Duration::from_secs(30),
            tap_netns: None,
        }
    }

    /// Sets the default guest directory.
    pub fn guest_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.guest_dir = Some(dir.into());
        self
    }

    /// Sets the run directory.
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }
}

enum Slot {
    /// A launch in progress holds its index and memory.
    Launching {
        memory_mib: u64,
    },
    Vm(Arc<VmEntry>),
}

impl Slot {
    /// Memory held; an ended VM holds none.
    fn memory_in_use(&self) -> u64 {
        match self {
            Slot::Launching { memory_mib } => *memory_mib,
            Slot::Vm(e) if !e.vm.state().is_final() => e.vm.spec().memory_mib,
            Slot::Vm(_) => 0,
        }
    }

    fn is_free(&self) -> bool {
        matches!(self, Slot::Vm(e) if e.vm.state().is_final())
    }
}

/// The `node` object: one node's VMs.
pub struct NodeAgent {
    block: u32,
    run_dir: PathBuf,
    own_run_dir: bool,
    guest_dir: Option<PathBuf>,
    resources: NodeResources,
    reserve: f64,
    accel: Accel,
    accel_choice: AccelChoice,
    qmp_timeout: Duration,
    tap_netns: Option<String>,
    table: Mutex<BTreeMap<u32, Slot>>,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent")
            .field("block", &self.block)
            .field("run_dir", &self.run_dir)
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

/// Gives a slot back unless the launch completed.
struct Reservation<'a> {
    agent: &'a NodeAgent,
    index: Option<u32>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(index) = self.index.take() {
            if let Ok(mut table) = self.agent.table.lock() {
                if matches!(table.get(&index), Some(Slot::Launching { .. })) {
                    table.remove(&index);
                }
            }
        }
    }
}

impl NodeAgent {
    /// An agent for this node.
    pub fn new(config: AgentConfig) -> Result<NodeAgent, AgentError> {
        crate::net::VmAddress::new(config.block, 0)
            .map_err(|e| AgentError::Refused(e.to_string()))?;
        if !(0.0..1.0).contains(&config.reserve) {
            return Err(AgentError::Refused(format!(
                "reserve {} is not in [0, 1)",
                config.reserve
            )));
        }
        let resources = match config.resources {
            Some(r) => r,
            None => NodeResources::detect()?,
        };
        let (run_dir, own_run_dir) = match config.run_dir {
            Some(dir) => (dir, false),
            None => (
                std::env::temp_dir().join(format!(
                    "vmctl-agent-{}-b{}",
                    std::process::id(),
                    config.block
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&run_dir).map_err(|source| AgentError::RunDir {
            path: run_dir.clone(),
            source,
        })?;
        let accel_choice = config.accel.resolve()?;
        Ok(NodeAgent {
            block: config.block,
            run_dir,
            own_run_dir,
            guest_dir: config.guest_dir,
            resources,
            reserve: config.reserve,
            accel: config.accel,
            accel_choice,
            qmp_timeout: config.qmp_timeout,
            tap_netns: config.tap_netns,
            table: Mutex::new(BTreeMap::new()),
        })
    }

    /// The node block id.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// The node's resources.
    pub fn resources(&self) -> NodeResources {
        self.resources
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Slot>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert or remove): keep going.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Memory the VMs may use together, MiB.
    pub fn usable_mib(&self) -> u64 {
        let reserve = (self.resources.memory_mib as f64 * self.reserve).ceil() as u64;
        self.resources.memory_mib.saturating_sub(reserve)
    }

    /// `resources()`.
    pub fn resources_report(&self) -> ResourcesReport {
        let table = self.lock();
        let in_use = table.values().map(Slot::memory_in_use).sum();
        let live = table
            .values()
            .filter(|s| !s.is_free())
            .count()
            .try_into()
            .unwrap_or(u32::MAX);
        ResourcesReport {
            block: self.block,
            cpus: self.resources.cpus,
            memory_mib: self.resources.memory_mib,
            reserve: self.reserve,
            usable_mib: self.usable_mib(),
            memory_in_use_mib: in_use,
            live_vms: live,
            accel: self.accel_choice.accel.to_string(),
            accel_reason: self.accel_choice.reason.clone(),
        }
    }

    /// `plan(size, reserve)`.
    pub fn plan(&self, size: VmSize, reserve: Option<f64>) -> Result<PlanReport, AgentError> {
        let plan = PlanRequest::new(size)
            .reserve(reserve.unwrap_or(self.reserve))
            .plan(&self.resources)?;
        Ok(PlanReport::from(&plan))
    }

    /// Starts a VM; returns once QEMU answers on QMP (not when the guest is
    /// ready: see [`Vm::wait_ready`]).
    pub async fn launch(&self, request: LaunchSpec) -> Result<Arc<VmEntry>, AgentError> {
        let memory = request.memory();
        let mut reservation = Reservation {
            agent: self,
            index: None,
        };
        let (index, previous) = {
            let mut table = self.lock();
            let in_use: u64 = table.values().map(Slot::memory_in_use).sum();
            if in_use.saturating_add(memory) > self.usable_mib() {
                return Err(AgentError::Refused(format!(
                    "not enough memory on block {}: {memory} MiB asked, {} of {} MiB usable \
                     ({:.0} % reserved for the host) already in use",
                    self.block,
                    in_use,
                    self.usable_mib(),
                    self.reserve * 100.0
                )));
            }
            if let Some(name) = &request.name {
                let taken = table.values().any(
                    |s| matches!(s, Slot::Vm(e) if !e.vm.state().is_final() && e.vm.name() == name),
                );
                if taken {
                    return Err(AgentError::Refused(format!("a VM named {name} is running")));
                }
            }
            let index = (0..MAX_VMS_PER_BLOCK)
                .find(|i| table.get(i).is_none_or(Slot::is_free))
                .ok_or_else(|| {
                    AgentError::Refused(format!(
                        "block {} has no free VM index (all {MAX_VMS_PER_BLOCK} in use)",
                        self.block
                    ))
                })?;
            let previous = table.insert(index, Slot::Launching { memory_mib: memory });
            (index, previous)
        };
        reservation.index = Some(index);
        if let Some(Slot::Vm(old)) = previous {
            // The ended VM that had this index gives its tap back first.
            old.release_tap().await;
        }

        let addr =
            VmAddress::new(self.block, index).map_err(|e| AgentError::Refused(e.to_string()))?;
        let defaults = spec::Defaults {
            block: self.block,
            run_dir: &self.run_dir,
            guest_dir: self.guest_dir.as_deref(),
            accel: self.accel,
        };
        let built = request
            .build(addr, &defaults)
            .map_err(AgentError::Refused)?;
        let mut options = VmOptions {
            qmp_timeout: self.qmp_timeout,
            ..VmOptions::default()
        };
        options.ready = built.ready;
        let tap = match &built.auto_tap {
            Some(name) => {
                let mut config = TapConfig::for_mac(name.clone(), &addr.mac())
                    .map_err(|e| AgentError::Refused(e.to_string()))?;
                config.netns = self.tap_netns.clone();
                Some(Tap::create(config).await?)
            }
            None => None,
        };
        let started = Instant::now();
        let vm = match Vm::launch(built.spec, options).await {
            Ok(vm) => vm,
            Err(e) => {
                if let Some(tap) = tap {
                    if let Err(te) = tap.teardown().await {
                        tracing::warn!(tap = %tap.ifname(), "tap teardown failed: {te}");
                    }
                }
                return Err(e.into());
            }
        };
        let entry = VmEntry::new(vm, addr, started, tap);
        self.lock().insert(index, Slot::Vm(Arc::clone(&entry)));
        reservation.index = None;
        tracing::info!(vm = %entry.vm.name(), mac = %addr.mac(), ip = %addr.ip(), "VM launched");
        Ok(entry)
    }

    /// Every VM in the table (live and ended), by index.
    pub fn vms(&self) -> Vec<Arc<VmEntry>> {
        self.lock()
            .values()
            .filter_map(|s| match s {
                Slot::Vm(e) => Some(Arc::clone(e)),
                Slot::Launching { .. } => None,
            })
            .collect()
    }

    /// Powers every live VM down at once with `policy`; reports how each
    /// VM in the table ended (ended ones as they ended).
    pub async fn power_down_all(&self, policy: &PowerDownPolicy) -> Vec<EndReport> {
        let vms = self.vms();
        let jobs = vms.iter().map(|e| async move {
            match EndReport::from_state(e.vm.name(), &e.vm.state()) {
                Some(report) => report,
                None => e.power_down(policy).await,
            }
        });
        futures::future::join_all(jobs).await
    }

    /// Kills every VM now, removes their taps and forgets them (what
    /// dropping the agent does).
    pub fn kill_all_now(&self) {
        let slots = std::mem::take(&mut *self.lock());
        let taps: Vec<Tap> = slots
            .values()
            .filter_map(|s| match s {
                Slot::Vm(e) => e.take_tap(),
                Slot::Launching { .. } => None,
            })
            .collect();
        drop(slots);
        for tap in taps {
            if let Err(e) = tap.teardown_blocking() {
                tracing::warn!(tap = %tap.ifname(), "tap teardown failed: {e}");
            }
        }
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        // Dropping the table's entries kills every QEMU.
        self.kill_all_now();
        if self.own_run_dir {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}
