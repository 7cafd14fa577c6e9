//! The integrator's core: a stateless cycle that keeps the VM fleet matched
//! to the experiment's batch queue, after the article's "integrator service".
//!
//! Each cycle starts from scratch: it counts the user jobs pending and
//! running in the experiment's queue and the VM-launch jobs pending and
//! running on the cluster (recognised by their name prefix, never by memory
//! of earlier cycles), decides with [`policy::decide`], logs the decision
//! with its reason, and submits the VM-launch jobs (unless in dry-run
//! mode). Stopping and restarting it at any time loses nothing and never
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

use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::batch::{Batch, BatchError, JobId, JobQuery, JobSpec, JobState};
pub use policy::{decide, Decision, Observation, Policy};

/// The default name prefix of VM-launch jobs.
pub const LAUNCH_PREFIX: &str = "vmctl-launch";
/// Jobs in the experiment's queue whose name starts with this are the
/// integrator's own (VM shutdown jobs…), not user jobs.
pub const OWN_PREFIX: &str = "vmctl-";

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
            period: Duration::from_secs(60),
            jitter: 0.2,
            dry_run: false,
        }
    }
}

/// What one cycle saw, decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// The counts.
    pub observation: Observation,
    /// The decision.
    pub decision: Decision,
    /// The VM-launch jobs submitted (none in dry-run mode).
    pub submitted: Vec<JobId>,
    /// True in dry-run mode.
    pub dry_run: bool,
}

/// The integrator: an experiment backend, a cluster backend and a config.
#[derive(Debug)]
pub struct Integrator<E, C> {
    exp: E,
    cluster: C,
    config: IntegratorConfig,
}

impl<E: Batch, C: Batch> Integrator<E, C> {
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
        if config.cluster_queue.is_some() {
            config.launch_job.queue = config.cluster_queue.clone();
        }
        Ok(Integrator {
            exp,
            cluster,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IntegratorConfig {
        &self.config
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
        Ok(CycleReport {
            observation,
            decision,
            submitted,
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
