//! `rrpc run`: shell commands over many hosts (DistributedPython's
//! `processCommandsInParallel`), one output file per command, a summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rrpc_core::{Proxy, Value};

use super::schedule::{self, Attempt, Job};
use super::{connect, with_port, CliError};

/// Output kept per command (the server's cap).
const MAX_OUTPUT: i64 = 6 * 1024 * 1024;

/// Flags of `rrpc run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Hosts, comma-separated HOST[:PORT].
    #[arg(long, value_delimiter = ',', required = true)]
    hosts: Vec<String>,
    /// Commands at once per host.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
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
}

struct Host {
    addr: String,
    proc: Option<Proxy>,
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

    // Connect to every host at once; a dead one is reported, not waited on.
    let hosts: Vec<Host> = futures::future::join_all(args.hosts.iter().map(|h| async move {
        let addr = with_port(h);
        match connect(&addr, connect_timeout).await {
            Ok(conn) => match conn
                .root()
                .get("proc")
                .await
                .and_then(|v| Ok(v.into_proxy()?))
            {
                Ok(proc) => Host {
                    addr,
                    proc: Some(proc),
                },
                Err(e) => {
                    eprintln!("rrpc run: {addr}: no `proc` service: {e}");
                    Host { addr, proc: None }
                }
            },
            Err(e) => {
                eprintln!("rrpc run: host unreachable: {e}");
                Host { addr, proc: None }
            }
        }
    }))
    .await;
    let dead: Vec<&str> = hosts
        .iter()
        .filter(|h| h.proc.is_none())
        .map(|h| h.addr.as_str())
        .collect();

    // One job per command from a file; the same command pinned to each host otherwise.
    let jobs: Vec<Job<Arc<str>>> = if args.commands.is_some() {
        commands
            .iter()
            .enumerate()
            .map(|(index, c)| Job {
                index,
                work: Arc::from(c.as_str()),
                pinned: None,
            })
            .collect()
    } else {
        (0..hosts.len())
            .map(|h| Job {
                index: h,
                work: Arc::from(commands[0].as_str()),
                pinned: Some(h),
            })
            .collect()
    };
    let out_dir = args.out_dir.clone();
    let live: Vec<(usize, &Host)> = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.proc.is_some())
        .collect();
    // The scheduler sees live hosts only; pinned indexes are remapped to them.
    let jobs: Vec<Job<Arc<str>>> = jobs
        .into_iter()
        .map(|mut j| {
            j.pinned = j
                .pinned
                .map(|h| live.iter().position(|(i, _)| *i == h).unwrap_or(usize::MAX));
            j
        })
        .collect();
    let live_hosts: Vec<&Host> = live.iter().map(|(_, h)| *h).collect();
    let started = Instant::now();
    let outcomes = schedule::run_all(
        &live_hosts,
        jobs,
        args.parallel,
        |_, host, job| run_one(host, job, timeout, out_dir.clone()),
        |job| Outcome {
            host: "-".to_owned(),
            command: job.work.to_string(),
            exit_code: None,
            seconds: 0.0,
            error: Some("no reachable host could run it".to_owned()),
            file: None,
        },
    )
    .await;

    print_summary(&outcomes, &dead, started.elapsed());
    Ok(if outcomes.iter().any(|o| !o.ok()) {
        ExitCode::from(1)
    } else if !dead.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_one(
    host: &Host,
    job: Job<Arc<str>>,
    timeout: Option<Duration>,
    out_dir: PathBuf,
) -> Attempt<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome {
        host: host.addr.clone(),
        command: job.work.to_string(),
        exit_code: None,
        seconds: 0.0,
        error: None,
        file: None,
    };
    let Some(proc) = &host.proc else {
        outcome.error = Some("host unreachable".to_owned());
        return Attempt::HostLost(outcome);
    };
    // `exec 2>&1` first: one file holds both streams, interleaved as written.
    let script = format!("exec 2>&1\n{}", job.work);
    let options = Value::Map(vec![("max_output".into(), MAX_OUTPUT.into())]);
    let call = proc
        .call(
            "run",
            (
                "sh",
                vec!["-c".to_owned(), script],
                Value::Unit,
                Value::Unit,
                timeout.map(|t| t.as_secs_f64()),
                options,
            ),
        )
        // The server enforces the command's own timeout; this only bounds a hung server.
        .timeout(timeout.map_or(Duration::from_secs(7 * 24 * 3600), |t| {
            t + Duration::from_secs(30)
        }));
    let result = call.await;
    outcome.seconds = started.elapsed().as_secs_f64();
    let file = out_dir.join(format!("output{}.txt", job.index + 1));
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
        Err(e) if e.is_connection_lost() => {
            outcome.error = Some(format!("host lost: {e}"));
            return Attempt::HostLost(outcome);
        }
        Err(e) => {
            let why = e
                .remote()
                .map_or_else(|| e.to_string(), |r| r.message.clone());
            outcome.error = Some(why.clone());
            format!("[rrpc run: {why}]\n")
        }
    };
    match std::fs::write(&file, text) {
        Ok(()) => outcome.file = Some(file),
        Err(e) => outcome.error = Some(format!("cannot write {}: {e}", file.display())),
    }
    Attempt::Done(outcome)
}

fn print_summary(outcomes: &[Outcome], dead: &[&str], took: Duration) {
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
