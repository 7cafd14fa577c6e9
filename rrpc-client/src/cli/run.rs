//! `rrpc run`: shell commands over many hosts (DistributedPython's
//! `processCommandsInParallel`), one output file per command, a summary.
//!
//! The hosts are a cluster [`Pool`]: each command is one pool job (a closure
//! calling `proc.run` on the node it lands on), so the pool does the load
//! balancing, the per-host concurrency and the failover — a host lost
//! mid-run is marked lost and its commands run again on the others. In
//! once-per-host mode each job is pinned to its host ([`JobSpec::on_node`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use rrpc_core::{Error, Proxy, Value};

use super::{connect_options, with_port, CliError};
use crate::pool::{JobHandle, JobSpec, Pool, PoolError, PoolOptions};

/// Output kept per command (the server's cap).
const MAX_OUTPUT: i64 = 6 * 1024 * 1024;

/// How long a command without `--timeout` may run: the server enforces a
/// command's own timeout, this only bounds a hung server.
const NO_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long past its `--timeout` a command's call may take: the server kills
/// the command at its timeout, then reports.
const KILL_SLACK: Duration = Duration::from_secs(30);

/// Flags of `rrpc run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Hosts, comma-separated HOST[:PORT].
    #[arg(long, value_delimiter = ',', required = true)]
    hosts: Vec<String>,
    /// Commands at once per host (default: the host's CPU count).
    #[arg(long)]
    parallel: Option<usize>,
    /// Where the output files go (`output<N>.txt`, N from 1).
    #[arg(long, default_value = "rrpc-run")]
    out_dir: PathBuf,
    /// A file of commands, one a line (blank lines and `#` comments skipped).
    #[arg(long, conflicts_with = "command")]
    commands: Option<PathBuf>,
    /// Seconds a command may run before it is killed (default: no limit).
    #[arg(long)]
    timeout: Option<f64>,
    /// The command to run on every host (run by `sh -c`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// The outcome of one command.
#[derive(Debug, Clone)]
struct Outcome {
    host: String,
    command: String,
    exit_code: Option<i64>,
    seconds: f64,
    error: Option<String>,
    file: Option<PathBuf>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.error.is_none() && self.exit_code == Some(0)
    }

    /// A command that never ran: `host` is `-` when it could have run anywhere.
    fn not_run(host: Option<&str>, command: &str, why: &str) -> Outcome {
        Outcome {
            host: host.unwrap_or("-").to_owned(),
            command: command.to_owned(),
            exit_code: None,
            seconds: 0.0,
            error: Some(why.to_owned()),
            file: None,
        }
    }
}

/// One command to run: the command line and, in once-per-host mode, its host.
struct Task {
    command: String,
    host: Option<String>,
}

pub(super) async fn run(args: RunArgs, connect_timeout: Duration) -> Result<ExitCode, CliError> {
    let commands = match &args.commands {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("--commands {}: {e}", file.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect::<Vec<_>>(),
        None if args.command.is_empty() => {
            return Err("nothing to run: give `-- CMD…` or `--commands FILE`".into())
        }
        None => vec![args.command.join(" ")],
    };
    let timeout = args
        .timeout
        .map(|t| Duration::try_from_secs_f64(t).map_err(|_| format!("--timeout {t}: not seconds")))
        .transpose()?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("--out-dir {}: {e}", args.out_dir.display()))?;
    let hosts: Vec<String> = args.hosts.iter().map(|h| with_port(h)).collect();

    // One job per command from a file; the command pinned to each host otherwise.
    let tasks: Vec<Task> = if args.commands.is_some() {
        commands
            .into_iter()
            .map(|command| Task {
                command,
                host: None,
            })
            .collect()
    } else {
        hosts
            .iter()
            .map(|h| Task {
                command: commands[0].clone(),
                host: Some(h.clone()),
            })
            .collect()
    };

    // Connect to every host at once; a dead one is reported, not waited on.
    let mut options = PoolOptions::default()
        .progress(false)
        // A command may follow each lost host to another.
        .retries(u32::try_from(hosts.len()).unwrap_or(u32::MAX))
        .connect_options(connect_options(connect_timeout));
    if let Some(parallel) = args.parallel {
        options = options.concurrency(parallel);
    }
    let pool = match Pool::connect_with(hosts.iter().cloned(), options).await {
        Ok(pool) => Some(pool),
        Err(PoolError::Unreachable(errors)) => {
            for (addr, e) in &errors {
                eprintln!("rrpc run: host unreachable: {addr}: {e}");
            }
            None
        }
        Err(e) => return Err(e.into()),
    };
    let unreachable_at_start = lost_hosts(pool.as_ref());
    for (addr, why) in &unreachable_at_start {
        eprintln!("rrpc run: host unreachable: {addr}: {why}");
    }

    let started = Instant::now();
    let outcomes = match &pool {
        Some(pool) => run_tasks(pool, &tasks, timeout, &args.out_dir).await,
        None => tasks
            .iter()
            .map(|t| match &t.host {
                Some(host) => Outcome::not_run(Some(host), &t.command, "host unreachable"),
                None => Outcome::not_run(None, &t.command, "no reachable host could run it"),
            })
            .collect(),
    };
    let took = started.elapsed();

    // Every host the pool marked lost: unreachable from the start, or lost mid-run.
    let dead: Vec<String> = match &pool {
        Some(pool) => {
            let lost = lost_hosts(Some(pool));
            for (addr, why) in &lost {
                if !unreachable_at_start.iter().any(|(a, _)| a == addr) {
                    eprintln!("rrpc run: host lost during the run: {addr}: {why}");
                }
            }
            lost.into_iter().map(|(addr, _)| addr).collect()
        }
        None => hosts,
    };
    drop(pool);

    print_summary(&outcomes, &dead, took);
    Ok(if outcomes.iter().any(|o| !o.ok()) {
        ExitCode::from(1)
    } else if !dead.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The hosts the pool has marked lost, with why, in `--hosts` order.
fn lost_hosts(pool: Option<&Pool>) -> Vec<(String, String)> {
    let Some(pool) = pool else {
        return Vec::new();
    };
    pool.stats()
        .nodes
        .into_iter()
        .filter_map(|n| {
            let why = n.lost?;
            let why = why.strip_prefix("unreachable: ").unwrap_or(&why).to_owned();
            Some((n.node, why))
        })
        .collect()
}

/// Submits one job per task and gathers the outcomes in task order, writing
/// each command's output file as soon as it is done.
async fn run_tasks(
    pool: &Pool,
    tasks: &[Task],
    timeout: Option<Duration>,
    out_dir: &Path,
) -> Vec<Outcome> {
    let handles: Vec<JobHandle> = tasks
        .iter()
        .map(|task| {
            let job = command_job(&task.command, timeout);
            pool.submit_job(match &task.host {
                Some(host) => job.on_node(host.clone()),
                None => job,
            })
        })
        .collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; tasks.len()];
    let mut pending: FuturesUnordered<_> = handles
        .iter()
        .enumerate()
        .map(|(index, handle)| {
            let handle = handle.clone();
            async move { (index, handle.await) }
        })
        .collect();
    while let Some((index, result)) = pending.next().await {
        let file = out_dir.join(format!("output{}.txt", index + 1));
        outcomes[index] = Some(outcome(&tasks[index], &handles[index], result, &file));
    }
    outcomes
        .into_iter()
        .zip(tasks)
        .map(|(o, task)| {
            o.unwrap_or_else(|| Outcome::not_run(None, &task.command, "it never finished"))
        })
        .collect()
}

/// The pool job of one command: `sh -c` through the `proc` service of the
/// node it lands on. It may run again on another node if its node is lost.
fn command_job(command: &str, timeout: Option<Duration>) -> JobSpec {
    // `exec 2>&1` first: one file holds both streams, interleaved as written.
    // The call's deadline follows `--timeout` (plus slack for the server to
    // kill the command and answer), not the connection's default deadline.
    let deadline = timeout.map_or(NO_LIMIT, |t| t + KILL_SLACK);
    let script: Arc<str> = Arc::from(format!("exec 2>&1\n{command}"));
    JobSpec::with(move |root: Proxy| {
        let script = script.clone();
        async move {
            let proc = root.get("proc").await?.into_proxy()?;
            let options = Value::Map(vec![("max_output".into(), MAX_OUTPUT.into())]);
            proc.call(
                "run",
                (
                    "sh",
                    vec!["-c".to_owned(), script.to_string()],
                    Value::Unit,
                    Value::Unit,
                    timeout.map(|t| t.as_secs_f64()),
                    options,
                ),
            )
            .timeout(deadline)
            .await
        }
    })
    .timeout(deadline)
}

/// The outcome of a finished job; writes the command's output file when it ran.
fn outcome(
    task: &Task,
    handle: &JobHandle,
    result: Result<Value, PoolError>,
    file: &Path,
) -> Outcome {
    let info = handle.info();
    let mut outcome = Outcome {
        host: info
            .node
            .clone()
            .or_else(|| task.host.clone())
            .unwrap_or_else(|| "-".to_owned()),
        command: task.command.clone(),
        exit_code: None,
        seconds: info.duration.map_or(0.0, |d| d.as_secs_f64()),
        error: None,
        file: None,
    };
    let text = match result {
        Ok(done) => {
            outcome.exit_code = done.get("exit_code").and_then(Value::as_i64);
            if let Some(sig) = done.get("signal").and_then(Value::as_i64) {
                outcome.error = Some(format!("killed by signal {sig}"));
            }
            let mut text = done
                .get("stdout")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if done.get("stdout_truncated").and_then(Value::as_bool) == Some(true) {
                text.push_str(&format!(
                    "\n[rrpc run: output truncated at {MAX_OUTPUT} bytes]\n"
                ));
            }
            text
        }
        // It ran and failed: the server refused it, or it ran past its deadline.
        Err(PoolError::Failed { source, .. }) => {
            let why = remote_message(&source);
            outcome.error = Some(why.clone());
            format!("[rrpc run: {why}]\n")
        }
        // It did not run to its end: no output file.
        Err(e) => {
            outcome.error = Some(match e {
                PoolError::NoNodeLeft { .. } => "no reachable host could run it".to_owned(),
                PoolError::PinnedNodeLost { .. } if info.attempts == 0 => {
                    "host unreachable".to_owned()
                }
                PoolError::PinnedNodeLost { reason, .. } => format!("host lost: {reason}"),
                other => other.to_string(),
            });
            return outcome;
        }
    };
    match std::fs::write(file, text) {
        Ok(()) => outcome.file = Some(file.to_owned()),
        Err(e) => outcome.error = Some(format!("cannot write {}: {e}", file.display())),
    }
    outcome
}

fn remote_message(e: &Error) -> String {
    e.remote()
        .map_or_else(|| e.to_string(), |r| r.message.clone())
}

fn print_summary(outcomes: &[Outcome], dead: &[String], took: Duration) {
    let host_w = outcomes
        .iter()
        .map(|o| o.host.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:>3}  {:<host_w$}  {:>4}  {:>8}  command",
        "#", "host", "exit", "seconds"
    );
    for (i, o) in outcomes.iter().enumerate() {
        let exit = o
            .exit_code
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        let note = o
            .error
            .as_deref()
            .map(|e| format!("   ({e})"))
            .unwrap_or_default();
        println!(
            "{:>3}  {:<host_w$}  {exit:>4}  {:>8.2}  {}{note}",
            i + 1,
            o.host,
            o.seconds,
            o.command
        );
    }
    for host in dead {
        println!("unreachable host: {host}");
    }
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    println!(
        "{} command(s), {} ok, {failed} failed, {} host(s) unreachable, in {:.2} s",
        outcomes.len(),
        outcomes.len() - failed,
        dead.len(),
        took.as_secs_f64()
    );
}
