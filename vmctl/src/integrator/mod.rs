//! The integrator's core: a stateless cycle that keeps the VM fleet matched
//! to the experiment's batch queue, after the article's "integrator service".
//!
//! Each cycle starts from scratch: it counts the user jobs pending and
//! running in the experiment's queue and the VM-launch jobs pending and
//! running on the cluster (recognised by their name prefix, never by memory
//! of earlier cycles), decides with [`policy::decide`], logs the decision
//! with its reason, and submits the VM-launch jobs (unless in dry-run
//! mode). With a [`Fleet`] (the VMs' registrations) and a shutdown job, it
//! also submits, through the experiment's own batch system, a shutdown job
//! for each wholly idle VM block ([`policy::decide_shutdown`]); a block
//! that already has one is recognised by the job's name. Stopping and restarting it at any time loses nothing and never
//! submits twice for the same demand. Cycles are separated by a jittered
//! period ([`jitter`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use vmctl::batch::{JobSpec, LocalBackend, LocalConfig};
//! use vmctl::integrator::{Integrator, IntegratorConfig, Policy};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let exp = LocalBackend::new(LocalConfig::default())?;
//! let cluster = LocalBackend::new(LocalConfig::default())?;
//! let launch = JobSpec::command("vmctl-launch", ["vmctl", "launch-job"]);
//! let config = IntegratorConfig::new(launch, Policy { vms_per_node: 4, max_nodes: 8, min_idle_vms: 0 });
//! let integrator = Integrator::new(exp, cluster, config)?;
//! let report = integrator.cycle().await?;
//! println!("{}", report.decision.reason());
//! # Ok(()) }
//! ```

pub mod jitter;
pub mod policy;
pub mod service;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use std::future::Future;

use crate::batch::{Batch, BatchError, JobId, JobQuery, JobSpec, JobState, Work};
pub use policy::{decide, decide_shutdown, BlockStatus, Decision, Observation, Policy, Shutdown};

/// The default name prefix of VM-launch jobs.
pub const LAUNCH_PREFIX: &str = "vmctl-launch";
/// Jobs in the experiment's queue whose name starts with this are the
/// integrator's own (VM shutdown jobs…), not user jobs.
pub const OWN_PREFIX: &str = "vmctl-";
/// The default name prefix of VM-block shutdown jobs (followed by the block).
pub const SHUTDOWN_PREFIX: &str = "vmctl-shutdown-";

/// Where the integrator learns the VM blocks and how busy they are (the
/// VMs' registrations).
pub trait Fleet: Send + Sync {
    /// Every block with its ready and busy VMs; `observation` is what this
    /// cycle counted in the batch systems (for fleets that only know which
    /// VMs are up, not which run a job).
    fn blocks(
        &self,
        observation: &Observation,
    ) -> impl Future<Output = Result<Vec<BlockStatus>, BatchError>> + Send;
}

/// No registrations known: no shutdown decisions.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFleet;

impl Fleet for NoFleet {
    async fn blocks(&self, _: &Observation) -> Result<Vec<BlockStatus>, BatchError> {
        Ok(Vec::new())
    }
}

/// A fixed list of blocks (demos and tests).
impl Fleet for Vec<BlockStatus> {
    async fn blocks(&self, _: &Observation) -> Result<Vec<BlockStatus>, BatchError> {
        Ok(self.clone())
    }
}

/// How the integrator works.
#[derive(Debug, Clone)]
pub struct IntegratorConfig {
    /// The policy.
    pub policy: Policy,
    /// The experiment's queue (`None`: every job of the experiment backend).
    pub exp_queue: Option<String>,
    /// The cluster's queue for VM-launch jobs (`None`: the backend's default).
    pub cluster_queue: Option<String>,
    /// The VM-launch job; its name must start with `launch_prefix`.
    pub launch_job: JobSpec,
    /// How VM-launch jobs are recognised on the cluster.
    pub launch_prefix: String,
    /// Jobs in the experiment's queue with this name prefix are not user jobs.
    pub own_prefix: String,
    /// The job that shuts a VM block down, submitted to the experiment's
    /// batch system; `{block}` in its command or script is the block's name
    /// (also in `$VMCTL_BLOCK`). `None`: never shut blocks down.
    pub shutdown_job: Option<JobSpec>,
    /// Shutdown jobs are named this prefix followed by the block.
    pub shutdown_prefix: String,
    /// The nominal period between cycles.
    pub period: Duration,
    /// The jitter fraction of the period (clamped to [`jitter::MAX_JITTER`]).
    pub jitter: f64,
    /// Decide and log, but submit nothing.
    pub dry_run: bool,
}

impl IntegratorConfig {
    /// A configuration with the default prefixes, a 60 s period and 20 % jitter.
    pub fn new(launch_job: JobSpec, policy: Policy) -> Self {
        IntegratorConfig {
            policy,
            exp_queue: None,
            cluster_queue: launch_job.queue.clone(),
            launch_job,
            launch_prefix: LAUNCH_PREFIX.into(),
            own_prefix: OWN_PREFIX.into(),
            shutdown_job: None,
            shutdown_prefix: SHUTDOWN_PREFIX.into(),
            period: Duration::from_secs(60),
            jitter: 0.2,
            dry_run: false,
        }
    }
}

/// What one cycle saw, decided and did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CycleReport {
    /// The counts.
    pub observation: Observation,
    /// The decision.
    pub decision: Decision,
    /// The VM-launch jobs submitted (none in dry-run mode).
    pub submitted: Vec<JobId>,
    /// The blocks decided to shut down, with the reasons.
    pub shutdowns: Vec<Shutdown>,
    /// The shutdown jobs submitted (none in dry-run mode).
    pub shutdown_jobs: Vec<JobId>,
    /// True in dry-run mode.
    pub dry_run: bool,
}

/// The integrator: an experiment backend, a cluster backend, the fleet and
/// a config.
#[derive(Debug)]
pub struct Integrator<E, C, F = NoFleet> {
    exp: E,
    cluster: C,
    fleet: F,
    config: IntegratorConfig,
}

impl<E: Batch, C: Batch> Integrator<E, C, NoFleet> {
    /// Checks the configuration.
    pub fn new(exp: E, cluster: C, mut config: IntegratorConfig) -> Result<Self, BatchError> {
        config.launch_job.validate()?;
        if !config.launch_job.name.starts_with(&config.launch_prefix) {
            return Err(BatchError::InvalidSpec(format!(
                "the VM-launch job's name {:?} must start with {:?}, or restarts could not recognise it",
                config.launch_job.name, config.launch_prefix
            )));
        }
        if config.launch_prefix.is_empty() || config.own_prefix.is_empty() {
            return Err(BatchError::InvalidSpec("empty job name prefix".into()));
        }
        if config.policy.vms_per_node == 0 {
            return Err(BatchError::InvalidSpec(
                "vms_per_node must be at least 1".into(),
            ));
        }
        if !config.shutdown_prefix.starts_with(&config.own_prefix) {
            return Err(BatchError::InvalidSpec(format!(
                "the shutdown prefix {:?} must start with {:?}, or shutdown jobs would count as user jobs",
                config.shutdown_prefix, config.own_prefix
            )));
        }
        if let Some(job) = &config.shutdown_job {
            shutdown_spec(job, &config.shutdown_prefix, "block")?;
        }
        if config.cluster_queue.is_some() {
            config.launch_job.queue = config.cluster_queue.clone();
        }
        Ok(Integrator {
            exp,
            cluster,
            fleet: NoFleet,
            config,
        })
    }

    /// Uses `fleet` to learn the VM blocks (for shutdown decisions).
    pub fn with_fleet<F: Fleet>(self, fleet: F) -> Integrator<E, C, F> {
        Integrator {
            exp: self.exp,
            cluster: self.cluster,
            fleet,
            config: self.config,
        }
    }
}

/// The shutdown job of `block`, from the template.
fn shutdown_spec(template: &JobSpec, prefix: &str, block: &str) -> Result<JobSpec, BatchError> {
    let mut spec = template.clone();
    spec.name = format!("{prefix}{block}");
    spec.work = match &template.work {
        Work::Command(argv) => {
            Work::Command(argv.iter().map(|a| a.replace("{block}", block)).collect())
        }
        Work::Script(s) => Work::Script(s.replace("{block}", block)),
    };
    spec.env.insert("VMCTL_BLOCK".into(), block.into());
    spec.validate()?;
    Ok(spec)
}

impl<E: Batch, C: Batch, F: Fleet> Integrator<E, C, F> {
    /// The configuration.
    pub fn config(&self) -> &IntegratorConfig {
        &self.config
    }

    /// The fleet.
    pub fn fleet(&self) -> &F {
        &self.fleet
    }

    /// Sets (or clears) the job that shuts a VM block down.
    pub fn set_shutdown_job(&mut self, job: Option<JobSpec>) -> Result<(), BatchError> {
        if let Some(job) = &job {
            shutdown_spec(job, &self.config.shutdown_prefix, "block")?;
        }
        self.config.shutdown_job = job;
        Ok(())
    }

    /// Changes the policy from the next cycle on.
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), BatchError> {
        if policy.vms_per_node == 0 {
            return Err(BatchError::InvalidSpec(
                "vms_per_node must be at least 1".into(),
            ));
        }
        self.config.policy = policy;
        Ok(())
    }

    /// Counts, from scratch, what the batch systems show now.
    pub async fn observe(&self) -> Result<Observation, BatchError> {
        let mut user = JobQuery::active();
        user.queue = self.config.exp_queue.clone();
        let mut launch = JobQuery::active().with_name_prefix(&self.config.launch_prefix);
        launch.queue = self.config.cluster_queue.clone();
        let (user, launch) = tokio::try_join!(self.exp.list(&user), self.cluster.list(&launch))?;
        let mut obs = Observation::default();
        for j in user
            .iter()
            .filter(|j| !j.name.starts_with(&self.config.own_prefix))
        {
            match j.state {
                JobState::Pending => obs.user_pending += 1,
                JobState::Running => obs.user_running += 1,
                _ => {}
            }
        }
        for j in &launch {
            match j.state {
                JobState::Pending => obs.launch_pending += 1,
                JobState::Running => obs.launch_running += 1,
                _ => {}
            }
        }
        Ok(obs)
    }

    /// One cycle: observe, decide, log, submit.
    pub async fn cycle(&self) -> Result<CycleReport, BatchError> {
        let observation = self.observe().await?;
        let decision = decide(&self.config.policy, &observation);
        let dry_run = self.config.dry_run;
        tracing::info!(
            target: "vmctl::integrator",
            dry_run,
            user_pending = observation.user_pending,
            user_running = observation.user_running,
            launch_pending = observation.launch_pending,
            launch_running = observation.launch_running,
            submit = decision.count(),
            reason = decision.reason(),
            "decision"
        );
        let mut submitted = Vec::new();
        if !dry_run {
            for _ in 0..decision.count() {
                let id = self.cluster.submit(&self.config.launch_job).await?;
                tracing::info!(target: "vmctl::integrator", job = %id, "submitted a VM-launch job");
                submitted.push(id);
            }
        }
        let mut shutdowns = Vec::new();
        let mut shutdown_jobs = Vec::new();
        if let Some(template) = &self.config.shutdown_job {
            let prefix = &self.config.shutdown_prefix;
            let blocks = self.fleet.blocks(&observation).await?;
            let mut query = JobQuery::active().with_name_prefix(prefix);
            query.queue = self.config.exp_queue.clone();
            let shutting_down: Vec<String> = self
                .exp
                .list(&query)
                .await?
                .into_iter()
                .filter_map(|j| j.name.strip_prefix(prefix.as_str()).map(str::to_owned))
                .collect();
            shutdowns = decide_shutdown(&self.config.policy, &observation, &blocks, &shutting_down);
            for s in &shutdowns {
                tracing::info!(target: "vmctl::integrator", dry_run, block = %s.block, reason = %s.reason, "shut a VM block down");
                if !dry_run {
                    let mut spec = shutdown_spec(template, prefix, &s.block)?;
                    if spec.queue.is_none() {
                        spec.queue = self.config.exp_queue.clone();
                    }
                    let id = self.exp.submit(&spec).await?;
                    tracing::info!(target: "vmctl::integrator", job = %id, block = %s.block, "submitted a shutdown job");
                    shutdown_jobs.push(id);
                }
            }
        }
        Ok(CycleReport {
            observation,
            decision,
            submitted,
            shutdowns,
            shutdown_jobs,
            dry_run,
        })
    }

    /// Runs cycles until `stop` turns true, sleeping a jittered period in
    /// between. A failed cycle is logged and the next one starts afresh.
    pub async fn run(
        &self,
        mut stop: watch::Receiver<bool>,
        mut on_cycle: impl FnMut(&CycleReport),
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.cycle().await {
                Ok(report) => on_cycle(&report),
                Err(e) => tracing::warn!(target: "vmctl::integrator", error = %e, "cycle failed"),
            }
            let pause = jitter::next_period(self.config.period, self.config.jitter);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
