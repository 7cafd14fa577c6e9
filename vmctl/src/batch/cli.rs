//! The `vmctl batch` and `vmctl integrate` command lines (the binary only
//! parses them and calls [`run_batch`] / [`run_integrate`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{
    Backend, Batch, CommandRunner, CondorBackend, CondorConfig, JobId, JobQuery, JobSpec,
    PbsBackend, PbsConfig, Prefix, SlurmBackend, SlurmConfig, SqueueFormat, StageDir,
};
use crate::integrator::{Integrator, IntegratorConfig, Policy};

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Which batch system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// sbatch/squeue/scancel.
    Slurm,
    /// qsub/qstat/qdel.
    Pbs,
    /// condor_submit/condor_q/condor_rm.
    Condor,
}

/// How to reach one batch system.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// The batch system.
    #[arg(long, value_enum, default_value = "slurm")]
    pub backend: Kind,
    /// A command prefix for every batch command, e.g. "ssh head-node".
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Seconds before a batch command counts as hung.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Where scripts for PBS/HTCondor are written: LOCAL or LOCAL:REMOTE.
    #[arg(long)]
    pub stage_dir: Option<String>,
}

impl BackendArgs {
    /// Builds the backend.
    pub fn build(&self) -> Backend {
        let runner = CommandRunner::new()
            .prefix(Prefix::parse(&self.prefix))
            .timeout(Duration::from_secs(self.timeout));
        let stage = |kind: &str| match self.stage_dir.as_deref().map(|s| s.split_once(':')) {
            Some(Some((local, remote))) => StageDir {
                local: PathBuf::from(local),
                remote: PathBuf::from(remote),
            },
            Some(None) => StageDir::here(self.stage_dir.clone().unwrap_or_default()),
            None => StageDir::default_for(kind),
        };
        match self.backend {
            Kind::Slurm => Backend::Slurm(SlurmBackend::new(SlurmConfig {
                runner,
                format: SqueueFormat::Auto,
            })),
            Kind::Pbs => Backend::Pbs(PbsBackend::new(PbsConfig {
                runner,
                stage: stage("pbs"),
            })),
            Kind::Condor => Backend::Condor(CondorBackend::new(CondorConfig {
                runner,
                stage: stage("condor"),
                ..CondorConfig::default()
            })),
        }
    }
}

/// `vmctl batch`: submit, list and cancel jobs on a batch system.
#[derive(Debug, Args)]
pub struct BatchCommand {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(subcommand)]
    action: BatchAction,
}

#[derive(Debug, Subcommand)]
enum BatchAction {
    /// Submit a job: `vmctl batch submit --name N [options] -- CMD ARGS…`
    /// or `--script FILE`. Prints the job id.
    Submit(Box<SubmitArgs>),
    /// List jobs (pending and running; `--all` adds finished ones).
    List {
        /// Also finished jobs the batch system remembers.
        #[arg(long)]
        all: bool,
        /// Only this partition or queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only names starting with this.
        #[arg(long)]
        name_prefix: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel jobs.
    Cancel {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// The job's name.
    #[arg(long)]
    name: String,
    /// A shell script file to run instead of a command.
    #[arg(long, conflicts_with = "command")]
    script: Option<PathBuf>,
    /// Partition or queue.
    #[arg(long)]
    queue: Option<String>,
    /// Nodes.
    #[arg(long)]
    nodes: Option<u32>,
    /// CPUs.
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long, value_name = "MiB")]
    mem: Option<u64>,
    /// Wall-time limit in seconds.
    #[arg(long, value_name = "SECONDS")]
    time: Option<u64>,
    /// Stdout file ({id} and {index} are replaced).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Stderr file (with stdout when not given).
    #[arg(long)]
    error: Option<PathBuf>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Environment variables, KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Run as an array of N tasks ($BATCH_ARRAY_INDEX holds the index).
    #[arg(long)]
    array: Option<u32>,
    /// Start after this job completed successfully.
    #[arg(long = "after")]
    after: Vec<String>,
    /// A comment.
    #[arg(long)]
    comment: Option<String>,
    /// The command and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

impl SubmitArgs {
    fn spec(&self) -> Result<JobSpec, Box<dyn std::error::Error>> {
        let mut spec = match &self.script {
            Some(path) => JobSpec::script(
                &self.name,
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            ),
            None if self.command.is_empty() => {
                return Err("give a command after `--`, or --script FILE".into())
            }
            None => JobSpec::command(&self.name, self.command.clone()),
        };
        spec.queue = self.queue.clone();
        spec.resources.nodes = self.nodes;
        spec.resources.cpus = self.cpus;
        spec.resources.memory_mib = self.mem;
        spec.wall_time = self.time.map(Duration::from_secs);
        spec.stdout = self.output.clone();
        spec.stderr = self.error.clone();
        spec.workdir = self.workdir.clone();
        spec.array = self.array;
        spec.comment = self.comment.clone();
        spec.after_ok = self.after.iter().map(|s| JobId(s.clone())).collect();
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--env wants KEY=VALUE, not {kv:?}"))?;
            spec.env.insert(k.to_owned(), v.to_owned());
        }
        Ok(spec)
    }
}

/// Runs `vmctl batch …`.
pub async fn run_batch(cmd: BatchCommand) -> CliResult {
    let backend = cmd.backend.build();
    match cmd.action {
        BatchAction::Submit(args) => {
            let id = backend.submit(&args.spec()?).await?;
            println!("{id}");
        }
        BatchAction::List {
            all,
            queue,
            name_prefix,
            json,
        } => {
            let query = JobQuery {
                include_finished: all,
                queue,
                name_prefix,
                ..JobQuery::default()
            };
            let jobs = backend.list(&query).await?;
            let mut out = std::io::stdout().lock();
            if json {
                for j in &jobs {
                    writeln!(out, "{}", serde_json::to_string(j)?)?;
                }
            } else {
                writeln!(
                    out,
                    "{:<14} {:<24} {:<10} {:<10} RAW",
                    "ID", "NAME", "QUEUE", "STATE"
                )?;
                for j in &jobs {
                    writeln!(
                        out,
                        "{:<14} {:<24} {:<10} {:<10} {}",
                        j.id.0,
                        j.name,
                        j.queue.as_deref().unwrap_or("-"),
                        format!("{:?}", j.state).to_lowercase(),
                        j.raw_state
                    )?;
                }
            }
        }
        BatchAction::Cancel { ids } => {
            for id in ids {
                backend.cancel(&JobId(id)).await?;
            }
        }
    }
    Ok(())
}

/// `vmctl integrate`: keep VM-launch jobs on the cluster matched to the
/// experiment's queue.
#[derive(Debug, Args)]
pub struct IntegrateCommand {
    /// The experiment's batch system.
    #[command(flatten)]
    exp: BackendArgs,
    /// The experiment's queue (default: every queue).
    #[arg(long)]
    exp_queue: Option<String>,
    /// The cluster's batch system.
    #[arg(long, value_enum, default_value = "slurm")]
    cluster_backend: Kind,
    /// The command prefix for the cluster's commands, e.g. "ssh cluster-head".
    #[arg(long, default_value = "")]
    cluster_prefix: String,
    /// The cluster's queue for VM-launch jobs.
    #[arg(long)]
    cluster_queue: Option<String>,
    /// VMs started by one VM-launch job (one node).
    #[arg(long, default_value_t = 1)]
    vms_per_node: u32,
    /// At most this many VM-launch jobs at once.
    #[arg(long, default_value_t = 1)]
    max_nodes: u32,
    /// VM slots kept free for jobs to come.
    #[arg(long, default_value_t = 0)]
    min_idle: u32,
    /// Wall time of a VM-launch job, seconds.
    #[arg(long, default_value_t = 3600)]
    launch_time: u64,
    /// Seconds between cycles (jittered).
    #[arg(long, default_value_t = 60)]
    period: u64,
    /// Jitter fraction of the period (at most 0.5).
    #[arg(long, default_value_t = 0.2)]
    jitter: f64,
    /// Print decisions, submit nothing.
    #[arg(long)]
    dry_run: bool,
    /// One cycle, then exit.
    #[arg(long)]
    once: bool,
    /// The VM-launch job's command.
    #[arg(last = true, required = true)]
    launch_command: Vec<String>,
}

/// Runs `vmctl integrate …` until SIGINT/SIGTERM (or one cycle with `--once`).
pub async fn run_integrate(cmd: IntegrateCommand) -> CliResult {
    let exp = cmd.exp.build();
    let cluster = BackendArgs {
        backend: cmd.cluster_backend,
        prefix: cmd.cluster_prefix.clone(),
        ..cmd.exp.clone()
    }
    .build();
    let mut launch = JobSpec::command(crate::integrator::LAUNCH_PREFIX, cmd.launch_command.clone())
        .nodes(1)
        .wall_time(Duration::from_secs(cmd.launch_time));
    launch.queue = cmd.cluster_queue.clone();
    let mut config = IntegratorConfig::new(
        launch,
        Policy {
            vms_per_node: cmd.vms_per_node,
            max_nodes: cmd.max_nodes,
            min_idle_vms: cmd.min_idle,
        },
    );
    config.exp_queue = cmd.exp_queue;
    config.period = Duration::from_secs(cmd.period.max(1));
    config.jitter = cmd.jitter;
    config.dry_run = cmd.dry_run;
    let integrator = Integrator::new(exp, cluster, config)?;
    let print = |r: &crate::integrator::CycleReport| {
        let tag = if r.dry_run { "dry-run: " } else { "" };
        println!(
            "{tag}submit {} VM-launch job(s): {}{}",
            r.decision.count(),
            r.decision.reason(),
            if r.submitted.is_empty() {
                String::new()
            } else {
                format!(
                    " -> {}",
                    r.submitted
                        .iter()
                        .map(|i| i.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    };
    if cmd.once {
        print(&integrator.cycle().await?);
        return Ok(());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    integrator.run(stop_rx, print).await;
    Ok(())
}
