//! The VM-launch job: what a batch job runs on the node it was given.
//!
//! As in the article: count the node's CPUs and memory, work out how many
//! VMs fit (memory shared equally after the host reserve), start them, and
//! wait until they have all stopped or the job's time is nearly up; then
//! power every VM down (power button, then `quit`, then kill) and end with a
//! summary of how each VM ended. Meanwhile the node agent is served, so a
//! driver program can watch and control the VMs. SIGTERM (`scancel`,
//! pre-emption) and SIGINT take the same graceful path.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::report::{EndReport, How, PlanReport};
use crate::agent::serve::{self, StopSignal};
use crate::agent::{AgentConfig, AgentError, LaunchSpec, NodeAgent, VmEntry};
use crate::plan::VmSize;
use crate::security::ClientSecurity;
use crate::walltime;

/// Errors that stop the job before any VM ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The options do not make a job.
    #[error("{0}")]
    Invalid(String),
    /// The agent could not be set up.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent's server could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the job does.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The VM size the plan is made for.
    pub size: VmSize,
    /// With [`VmSize::Cpus`]: give each VM exactly this much memory (MiB)
    /// instead of an equal share of the usable memory.
    pub vm_mem_mib: Option<u64>,
    /// Start at most this many VMs (default: as many as fit).
    pub count: Option<u32>,
    /// The job's wall time (default: from Slurm, else none).
    pub wall_time: Option<Duration>,
    /// How long before the end of the wall time the power-down starts; the
    /// whole escalation fits in it.
    pub grace: Duration,
    /// Where the agent listens.
    pub listen: String,
    /// The agent server's connection settings (shared secret, limits).
    pub server: rrpc_core::Config,
    /// Serve the agent over TLS (default: plain TCP).
    pub tls: Option<rrpc_server::tls::TlsServer>,
    /// The agent (block, guest directory, reserve, …).
    pub agent: AgentConfig,
    /// What each VM boots (cpus and memory are set from the plan).
    pub vm: LaunchSpec,
    /// Tell an integrator service about the agent and every VM that gets
    /// ready (and that the block is gone at the end).
    pub register: Option<Registration>,
}

/// Where and as what the job registers its VMs.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The integrator service's address.
    pub integrator: String,
    /// The block's name there (letters, digits, `.`, `_`, `-`).
    pub block: String,
    /// The secret and TLS with which to reach it.
    pub security: ClientSecurity,
}

impl Registration {
    /// The default block name: `job-ID` with the batch job's id
    /// (`SLURM_JOB_ID`, `PBS_JOBID`, or `BATCH_JOB_ID` of the local backend),
    /// else `block-N` from the agent's block id.
    pub fn default_block(block: u32) -> String {
        for var in ["SLURM_JOB_ID", "PBS_JOBID", "BATCH_JOB_ID"] {
            if let Ok(id) = std::env::var(var) {
                let id: String = id
                    .chars()
                    .take(56)
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                if !id.is_empty() {
                    return format!("job-{id}");
                }
            }
        }
        format!("block-{block}")
    }
}

/// Connects to the integrator and returns its `integrator` object.
async fn integrator_proxy(
    reg: &Registration,
) -> Result<(rrpc_client::Connection, rrpc_core::Proxy), String> {
    let addr = reg.integrator.as_str();
    let conn = reg
        .security
        .connect(addr, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            rrpc_core::Error::Timeout(_) => {
                format!("connecting to the integrator at {addr} timed out")
            }
            e => format!("cannot connect to the integrator at {addr}: {e}"),
        })?;
    let proxy = conn
        .root()
        .get("integrator")
        .await
        .map_err(|e| format!("the integrator at {addr}: {e}"))?
        .into_proxy()
        .map_err(|e| format!("the integrator at {addr}: `integrator` is no object: {e}"))?;
    Ok((conn, proxy))
}

/// Registers the agent, then every VM as it gets ready. Failures are
/// logged: the VMs run on without the integrator.
async fn register(reg: Registration, agent: SocketAddr, entries: Vec<Arc<VmEntry>>) {
    let result = async {
        let (conn, integrator) = integrator_proxy(&reg).await?;
        integrator
            .call("register_agent", (reg.block.clone(), agent.to_string()))
            .await
            .map_err(|e| format!("register_agent: {e}"))?;
        let ready = entries.iter().map(|e| async move {
            let mut states = e.vm().subscribe();
            let ok = states
                .wait_for(|s| *s == crate::vm::VmState::Ready || s.is_final())
                .await
                .is_ok_and(|s| *s == crate::vm::VmState::Ready);
            (ok, e.info())
        });
        for (ok, info) in futures::future::join_all(ready).await {
            if !ok {
                continue;
            }
            integrator
                .call(
                    "register_vm",
                    (reg.block.clone(), info.index, info.ip.clone()),
                )
                .await
                .map_err(|e| format!("register_vm {}: {e}", info.name))?;
            tracing::info!(vm = %info.name, block = %reg.block, "registered with the integrator");
        }
        // Keep the connection: the integrator sees the agent as long as it lives.
        Ok::<_, String>(conn)
    }
    .await;
    match result {
        Ok(conn) => {
            conn.closed().await;
        }
        Err(e) => tracing::warn!("registration with the integrator failed: {e}"),
    }
}

/// Tells the integrator the block is gone.
async fn unregister(reg: &Registration) {
    let result = async {
        let (conn, integrator) = integrator_proxy(reg).await?;
        let r = integrator
            .call("unregister_block", (reg.block.clone(),))
            .await
            .map_err(|e| format!("unregister_block: {e}"));
        conn.close();
        r
    }
    .await;
    if let Err(e) = result {
        tracing::warn!("telling the integrator the block is gone failed: {e}");
    }
}

/// Why the job stopped waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Every VM had stopped by itself.
    AllStopped,
    /// The wall time minus the grace period was reached.
    WallTime,
    /// A signal asked the job to stop.
    Signal(StopSignal),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::AllStopped => f.write_str("every VM stopped by itself"),
            StopReason::WallTime => f.write_str("the wall time ran out"),
            StopReason::Signal(s) => write!(f, "{s} received"),
        }
    }
}

/// How one VM of the job fared.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// Its MAC.
    pub mac: String,
    /// Its IP.
    pub ip: String,
    /// Seconds from launch to ready, if it got there.
    pub seconds_to_ready: Option<f64>,
    /// How it ended.
    pub end: EndReport,
}

/// The job's result.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// The plan it followed.
    pub plan: PlanReport,
    /// Why it stopped waiting.
    pub reason: StopReason,
    /// Every VM it launched.
    pub vms: Vec<VmOutcome>,
    /// Launches that failed.
    pub launch_errors: Vec<String>,
}

impl JobSummary {
    /// True when every planned VM launched and none crashed or resisted.
    pub fn success(&self) -> bool {
        self.launch_errors.is_empty()
            && self
                .vms
                .iter()
                .all(|v| !matches!(v.end.how, How::Crashed | How::Error))
    }

    /// How many VMs ended `how`.
    pub fn count(&self, how: How) -> usize {
        self.vms.iter().filter(|v| v.end.how == how).count()
    }

    /// The summary as text: one line per VM and a total.
    pub fn render(&self) -> String {
        let mut out = format!("launch-job: stopping because {}\n", self.reason);
        out.push_str(&format!(
            "{:<12} {:<17} {:<13} {:>7}  ENDED\n",
            "VM", "MAC", "IP", "READY"
        ));
        for v in &self.vms {
            let ready = v
                .seconds_to_ready
                .map(|s| format!("{s:.1}s"))
                .unwrap_or_else(|| "-".into());
            let took = v
                .end
                .seconds
                .map(|s| format!(" after {s:.2}s"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:<12} {:<17} {:<13} {:>7}  {}{took}: {}\n",
                v.end.name, v.mac, v.ip, ready, v.end.how, v.end.detail
            ));
        }
        for e in &self.launch_errors {
            out.push_str(&format!("launch failed: {e}\n"));
        }
        out.push_str(&format!(
            "launch-job: {} VM(s): {} graceful, {} quit, {} killed, {} crashed, {} error(s), {} launch failure(s)\n",
            self.vms.len(),
            self.count(How::Graceful),
            self.count(How::Quit),
            self.count(How::Killed),
            self.count(How::Crashed),
            self.count(How::Error),
            self.launch_errors.len()
        ));
        out
    }
}

/// Runs the job. `on_listening` is called once the agent accepts
/// connections and every VM has been launched (so `node.list()` shows them
/// all; the binary prints its ready line there); `signal` ends the wait
/// early.
pub async fn run(
    config: JobConfig,
    signal: impl Future<Output = StopSignal>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<JobSummary, JobError> {
    let t0 = Instant::now();
    let wall = walltime::find(config.wall_time).map_err(JobError::Invalid)?;
    let deadline = match &wall {
        Some(w) => {
            tracing::info!(left = ?w.left, source = %w.source, grace = ?config.grace, "wall time");
            Some(t0 + w.left.saturating_sub(config.grace))
        }
        None => {
            tracing::info!("no wall time: running until the VMs stop or a signal");
            None
        }
    };

    let agent = Arc::new(NodeAgent::new(config.agent.clone())?);
    let plan = agent.plan(config.size, Some(config.agent.reserve))?;
    tracing::info!("{}", plan.explain);
    if plan.vms == 0 {
        return Err(JobError::Invalid(format!(
            "no VM fits on this node: {}",
            plan.explain
        )));
    }
    let count = match config.count {
        Some(0) => return Err(JobError::Invalid("--count 0 starts nothing".into())),
        Some(n) if n > plan.vms => {
            return Err(JobError::Invalid(format!(
                "--count {n} asks for more VMs than fit ({}): {}",
                plan.vms, plan.explain
            )))
        }
        Some(n) => n,
        None => plan.vms,
    };
    let memory = match config.vm_mem_mib {
        Some(m) if m > plan.memory_per_vm_mib => {
            return Err(JobError::Invalid(format!(
                "--vm-mem {m} MiB is more than each VM's share ({} MiB): {}",
                plan.memory_per_vm_mib, plan.explain
            )))
        }
        Some(m) => m,
        None => plan.memory_per_vm_mib,
    };

    let mut server = serve::server(Arc::clone(&agent)).with_config(config.server.clone());
    if let Some(tls) = &config.tls {
        server = server.with_tls(tls.clone());
    }
    let listening = server
        .bind(config.listen.as_str())
        .await
        .map_err(|source| JobError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listening.local_addr();
    let server = listening.spawn();

    let spec = LaunchSpec {
        cpus: Some(plan.cpus_per_vm),
        memory_mib: Some(memory),
        name: None,
        ..config.vm.clone()
    };
    let launches = (0..count).map(|_| agent.launch(spec.clone()));
    let mut entries: Vec<Arc<VmEntry>> = Vec::new();
    let mut launch_errors = Vec::new();
    for result in futures::future::join_all(launches).await {
        match result {
            Ok(e) => entries.push(e),
            Err(e) => {
                tracing::error!("launch failed: {e}");
                launch_errors.push(e.to_string());
            }
        }
    }

    // Every VM is in the agent's list by now.
    on_listening(addr);
    let registering = config.register.clone().map(|reg| {
        crate::task::AbortOnDrop::new(tokio::spawn(register(reg, addr, entries.clone())))
    });

    let all_stopped = async {
        for e in &entries {
            e.vm().wait_stopped().await;
        }
    };
    let wall_time = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        _ = all_stopped => StopReason::AllStopped,
        _ = wall_time => StopReason::WallTime,
        s = signal => StopReason::Signal(s),
    };
    tracing::info!(%reason, "powering the VMs down");
    let reports = agent
        .power_down_all(&serve::policy_within(config.grace))
        .await;
    server.stop().await;
    drop(registering);
    if let Some(reg) = &config.register {
        unregister(reg).await;
    }

    let vms = entries
        .iter()
        .map(|e| {
            let info = e.info();
            let end = reports
                .iter()
                .find(|r| r.name == info.name)
                .cloned()
                .or_else(|| EndReport::from_state(&info.name, &e.vm().state()))
                .unwrap_or_else(|| EndReport {
                    name: info.name.clone(),
                    how: How::Error,
                    detail: format!("still {} after the power-down", info.detail),
                    seconds: None,
                });
            VmOutcome {
                mac: info.mac,
                ip: info.ip,
                seconds_to_ready: info.seconds_to_ready,
                end,
            }
        })
        .collect();
    Ok(JobSummary {
        plan,
        reason,
        vms,
        launch_errors,
    })
}
