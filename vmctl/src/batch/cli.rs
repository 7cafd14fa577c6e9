//! The `vmctl batch` and `vmctl integrate` command lines (the binary only
//! parses them and calls [`run_batch`] / [`run_integrate`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{
    Backend, Batch, CommandRunner, CondorBackend, CondorConfig, JobId, JobQuery, JobSpec,
    LocalBackend, LocalConfig, PbsBackend, PbsConfig, Prefix, SlurmBackend, SlurmConfig,
    SqueueFormat, StageDir,
};
use crate::integrator::{Integrator, IntegratorConfig, Policy};
use crate::security::{ClientSecurityArgs, ServiceSecurityArgs};

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
    /// The embedded in-process queue: jobs run as children of this process
    /// (for `vmctl integrator` with no batch system; the queue lives as long
    /// as the process).
    Local,
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
    pub fn build(&self) -> Result<Backend, super::BatchError> {
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
        Ok(match self.backend {
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
            Kind::Local => Backend::Local(LocalBackend::new(LocalConfig::default())?),
        })
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
    if cmd.backend.backend == Kind::Local {
        return Err(
            "`vmctl batch` needs a batch system: the local queue lives only inside a \
                    process (use `vmctl integrator --backend local`)"
                .into(),
        );
    }
    let backend = cmd.backend.build()?;
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

/// What both `vmctl integrate` and `vmctl integrator` take.
#[derive(Debug, Args)]
pub struct IntegratorArgs {
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
    #[arg(long, default_value_t = 60.0)]
    period: f64,
    /// Jitter fraction of the period (at most 0.5).
    #[arg(long, default_value_t = 0.2)]
    jitter: f64,
    /// Print decisions, submit nothing.
    #[arg(long)]
    dry_run: bool,
    /// The VM-launch job's command.
    #[arg(last = true, required = true)]
    launch_command: Vec<String>,
}

impl IntegratorArgs {
    /// The two backends and the configuration.
    pub fn build(
        &self,
    ) -> Result<(Backend, Backend, IntegratorConfig), Box<dyn std::error::Error>> {
        let exp = self.exp.build()?;
        let cluster = BackendArgs {
            backend: self.cluster_backend,
            prefix: self.cluster_prefix.clone(),
            ..self.exp.clone()
        }
        .build()?;
        let mut launch = JobSpec::command(
            crate::integrator::LAUNCH_PREFIX,
            self.launch_command.clone(),
        )
        .nodes(1)
        .wall_time(Duration::from_secs(self.launch_time));
        launch.queue = self.cluster_queue.clone();
        let mut config = IntegratorConfig::new(
            launch,
            Policy {
                vms_per_node: self.vms_per_node,
                max_nodes: self.max_nodes,
                min_idle_vms: self.min_idle,
            },
        );
        config.exp_queue = self.exp_queue.clone();
        config.period = Duration::try_from_secs_f64(self.period.max(0.1))
            .map_err(|e| format!("bad --period {}: {e}", self.period))?;
        config.jitter = self.jitter;
        config.dry_run = self.dry_run;
        Ok((exp, cluster, config))
    }
}

/// `vmctl integrate`: keep VM-launch jobs on the cluster matched to the
/// experiment's queue.
#[derive(Debug, Args)]
pub struct IntegrateCommand {
    #[command(flatten)]
    args: IntegratorArgs,
    /// One cycle, then exit.
    #[arg(long)]
    once: bool,
}

/// Runs `vmctl integrate …` until SIGINT/SIGTERM (or one cycle with `--once`).
pub async fn run_integrate(cmd: IntegrateCommand) -> CliResult {
    let (exp, cluster, config) = cmd.args.build()?;
    let integrator = Integrator::new(exp, cluster, config)?;
    let print = |r: &crate::integrator::CycleReport| println!("{}", render_cycle(r));
    if cmd.once {
        print(&integrator.cycle().await?);
        return Ok(());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let _signals = crate::task::AbortOnDrop::new(tokio::spawn(async move {
        crate::agent::serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    }));
    integrator.run(stop_rx, print).await;
    Ok(())
}

/// One cycle's report on one line.
pub fn render_cycle(r: &crate::integrator::CycleReport) -> String {
    let tag = if r.dry_run { "dry-run: " } else { "" };
    let mut line = format!(
        "{tag}submit {} VM-launch job(s): {}",
        r.decision.count(),
        r.decision.reason()
    );
    if !r.submitted.is_empty() {
        let ids: Vec<&str> = r.submitted.iter().map(|i| i.0.as_str()).collect();
        line.push_str(&format!(" -> {}", ids.join(", ")));
    }
    for s in &r.shutdowns {
        line.push_str(&format!("; shut block {} down: {}", s.block, s.reason));
    }
    line
}

/// `vmctl integrator`: the integrator as an rrpc service.
#[derive(Debug, Args)]
pub struct ServeCommand {
    #[command(flatten)]
    args: IntegratorArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on; 0 picks a free one (printed in the ready line).
    #[arg(long, default_value_t = 18814)]
    port: u16,
    /// Do not shut idle VM blocks down.
    #[arg(long)]
    no_shutdown: bool,
    /// Seconds a VM block gets to power off when shut down.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
    /// Run cycles only when asked (`run_cycle`), not periodically.
    #[arg(long)]
    manual: bool,
    /// The shared secret and TLS: how the service is reached, and how it
    /// reaches the node agents.
    #[command(flatten)]
    security: ServiceSecurityArgs,
}

/// Runs `vmctl integrator …` until SIGINT/SIGTERM: serves the `integrator`
/// object, prints the ready line, and cycles every jittered period.
pub async fn run_serve(cmd: ServeCommand) -> CliResult {
    use crate::integrator::service::{IntegratorService, READY_LINE};
    let security = cmd.security.load()?;
    if !cmd.no_shutdown {
        if let Some(why) = cmd.security.unreachable_by_own_clients() {
            return Err(format!(
                "the shutdown jobs could not reach this integrator: {why} (or pass \
                 --no-shutdown)"
            )
            .into());
        }
    }
    crate::security::warn_if_open(
        &security.server,
        cmd.host,
        "register VMs and shut VM blocks down",
    );
    tracing::info!("integrator: {}", security.server.describe());
    let grace = Duration::try_from_secs_f64(cmd.shutdown_grace)
        .map_err(|e| format!("bad --shutdown-grace {}: {e}", cmd.shutdown_grace))?;
    let (exp, cluster, mut config) = cmd.args.build()?;
    let listen = std::net::SocketAddr::new(cmd.host, cmd.port);
    let period = config.period;
    let jitter = config.jitter;
    let exp_queue = config.exp_queue.clone();
    config.shutdown_job = None;
    let service = IntegratorService::new(Integrator::new(exp, cluster, config)?);
    service.set_agent_security(security.client.clone());
    let listening = security
        .server
        .apply(rrpc_server::Server::new(service.root()).with_shutdown_grace(Duration::from_secs(5)))
        .bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listening.local_addr();
    if !cmd.no_shutdown {
        // The shutdown job calls this service back, so it is set once bound.
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the vmctl binary for the shutdown job: {e}"))?;
        let mut argv: Vec<String> = vec![
            exe.to_string_lossy().into_owned(),
            "shutdown-block".into(),
            "--integrator".into(),
            addr.to_string(),
            "--grace".into(),
            grace.as_secs_f64().to_string(),
        ];
        // The secret file and the TLS files, never the secret itself.
        for flag in cmd.security.client_flags()? {
            argv.push(
                flag.into_string()
                    .map_err(|f| format!("{} is not UTF-8", f.to_string_lossy()))?,
            );
        }
        argv.push("{block}".into());
        let mut job =
            JobSpec::command("vmctl-shutdown", argv).wall_time(grace + Duration::from_secs(120));
        job.queue = exp_queue;
        service.set_shutdown_job(Some(job)).await?;
    }
    let signal = crate::agent::serve::shutdown_signal();
    let server = listening.spawn();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY_LINE} {addr}")?;
        out.flush()?;
    }
    if !cmd.manual {
        service.start_loop(period, jitter);
    }
    let got = signal.await;
    tracing::info!("{got}: stopping the integrator");
    service.stop_loop();
    server.stop().await;
    Ok(())
}

/// `vmctl shutdown-block`: what a shutdown job runs.
#[derive(Debug, Args)]
pub struct ShutdownBlockCommand {
    /// The integrator service's address.
    #[arg(long)]
    integrator: String,
    /// Seconds the VMs get to power off.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// The block to shut down.
    block: String,
    /// The integrator's shared secret and TLS.
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// Runs `vmctl shutdown-block`: asks the integrator to power the block down
/// (it drops the request if a user job got there first; that is no error).
pub async fn run_shutdown_block(cmd: ShutdownBlockCommand) -> CliResult {
    let security = cmd.security.load()?;
    let conn = security
        .connect(cmd.integrator.as_str(), Duration::from_secs(30))
        .await
        .map_err(|e| {
            format!(
                "cannot connect to the integrator at {}: {e}",
                cmd.integrator
            )
        })?;
    let integrator = conn.root().get("integrator").await?.into_proxy()?;
    let outcome = integrator
        .call("shutdown_block", (cmd.block.clone(), cmd.grace))
        .timeout(Duration::from_secs_f64(cmd.grace.max(0.0) + 360.0))
        .await?;
    let outcome: crate::integrator::service::ShutdownOutcome = rrpc_core::from_value(outcome)?;
    println!(
        "block {}: {}: {}",
        outcome.block,
        if outcome.done { "shut down" } else { "kept" },
        outcome.reason
    );
    conn.close();
    Ok(())
}
