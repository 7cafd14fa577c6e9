//! The mission's single driver script: VMs follow the batch queue.
//!
//! ```text
//! cargo run --release --example cluster_driver              # 5 user jobs
//! cargo run --release --example cluster_driver -- --users 8 --max-nodes 2
//! ```
//!
//! It needs no batch system: the experiment's queue and the cluster are two
//! local-backend queues (jobs run as child processes here). It starts the
//! integrator service in this process on a loopback port, connects to it
//! over rrpc like any client, subscribes to its decisions, submits some user
//! jobs, and prints the fleet on every change — user jobs pending, running
//! and done, VM-launch jobs pending and running, VMs ready and busy, blocks
//! shut down — until the queue is empty and every node is free again.
//!
//! The VM-launch job is the real `vmctl launch-job` booting the tiny test
//! guest under QEMU and registering its VMs with the integrator, when the
//! `vmctl` binary (next to this example, or `VMCTL_BIN`), QEMU and the test
//! guest (`scripts/build-test-guest.sh`, or `VMCTL_TEST_GUEST_DIR`) are all
//! there. Otherwise — or with `--stand-in` — a **stand-in VM-launch job**
//! runs instead, and says so: this program run again as a child, which
//! registers pretend VMs and serves a pretend `node` agent whose
//! `power_down_all` ends it; every other part (queues, integrator, rrpc,
//! shutdown job) is the same. One more stand-in, in both modes: a real VM
//! would join the experiment's batch system as a node and run the user jobs;
//! here the user jobs wait behind a gate job that the driver opens when the
//! first VM registers, and then run on this host.
//!
//! `--secret-file PATH` (or `RRPC_SECRET`) and `--tls-dir DIR` (from
//! `rrpc-server --generate-certs DIR`) secure every connection of the run —
//! the driver's, the VM-launch jobs' and the shutdown jobs' to the
//! integrator, and the integrator's to the jobs' agents; `--secure` does the
//! same with a throwaway secret and CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rrpc_client::security::{ClientSecurity, ClientSecurityArgs};
use rrpc_client::{from_value, Function, Value};
use rrpc_core::{Args, CallContext, Member, Namespace, Remote, RemoteError, Reply};
use rrpc_server::security::{ServerSecurity, ServerSecurityArgs};
use rrpc_server::tls::ClusterCerts;
use tokio::sync::{mpsc, Notify};
use vmctl::batch::{Batch, JobInfo, JobQuery, JobSpec, JobState, LocalBackend, LocalConfig};
use vmctl::integrator::service::{Event, IntegratorService, ShutdownOutcome, Status};
use vmctl::integrator::{Integrator, IntegratorConfig, Policy};

/// How long connecting (TCP, TLS, handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Drive a VM fleet that follows a batch queue, on this machine.
#[derive(Debug, Parser)]
struct Cli {
    /// User jobs to submit.
    #[arg(long, default_value_t = 5)]
    users: u32,
    /// Seconds each user job works.
    #[arg(long, default_value_t = 2.0)]
    work: f64,
    /// VMs per VM-launch job (one node).
    #[arg(long, default_value_t = 2)]
    vms_per_node: u32,
    /// At most this many VM-launch jobs (nodes) at once.
    #[arg(long, default_value_t = 1)]
    max_nodes: u32,
    /// Run the stand-in VM-launch job even if QEMU and the guest are there.
    #[arg(long)]
    stand_in: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Internal: run as the stand-in VM-launch job registering with ADDR.
    #[arg(long, hide = true, value_name = "ADDR")]
    as_stand_in_launch_job: Option<String>,
    /// Internal: run as a shutdown job of BLOCK against the integrator ADDR.
    #[arg(long, hide = true, num_args = 2, value_names = ["ADDR", "BLOCK"])]
    as_shutdown_job: Vec<String>,
    /// File holding the shared secret that every connection proves (else
    /// RRPC_SECRET, if set): the driver's, the VM-launch jobs' and the
    /// shutdown jobs' connections to the integrator, and the integrator's
    /// to the jobs' agents.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Speak TLS on every connection, with the certificates `rrpc-server
    /// --generate-certs DIR` makes: services present server.pem/server.key,
    /// clients trust ca.pem.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Make a throwaway shared secret and cluster CA, and use both on every
    /// connection (instead of --secret-file and --tls-dir).
    #[arg(long, conflicts_with_all = ["secret_file", "tls_dir"])]
    secure: bool,
}

/// The shared secret and TLS of every connection of the run.
struct Security {
    /// Where the secret came from, to hand on to the jobs (with RRPC_SECRET
    /// alone, the jobs inherit the variable).
    secret_file: Option<PathBuf>,
    /// The certificates' directory.
    tls_dir: Option<PathBuf>,
    server: ServerSecurity,
    client: ClientSecurity,
    /// The throwaway keys of --secure, removed at the end.
    throwaway: Option<PathBuf>,
}

impl Security {
    fn load(cli: &Cli) -> Result<Security> {
        let (secret_file, tls_dir, throwaway) = if cli.secure {
            let dir =
                std::env::temp_dir().join(format!("cluster-driver-{}-keys", std::process::id()));
            let tls = dir.join("tls");
            ClusterCerts::generate(&[])?
                .write_to(&tls)
                .with_context(|| format!("cannot write certificates to {}", tls.display()))?;
            let file = dir.join("secret");
            write_private(
                &file,
                &format!(
                    "{:032x}{:032x}",
                    rand::random::<u128>(),
                    rand::random::<u128>()
                ),
            )?;
            (Some(file), Some(tls), Some(dir))
        } else {
            let abs = |p: &Option<PathBuf>| p.as_ref().map(std::path::absolute).transpose();
            (abs(&cli.secret_file)?, abs(&cli.tls_dir)?, None)
        };
        let server = ServerSecurityArgs {
            secret_file: secret_file.clone(),
            tls_cert: tls_dir.as_ref().map(|d| d.join("server.pem")),
            tls_key: tls_dir.as_ref().map(|d| d.join("server.key")),
            ..ServerSecurityArgs::default()
        }
        .load()?;
        let client = ClientSecurityArgs {
            secret_file: secret_file.clone(),
            tls_ca: tls_dir.as_ref().map(|d| d.join("ca.pem")),
            ..ClientSecurityArgs::default()
        }
        .load()?;
        Ok(Security {
            secret_file,
            tls_dir,
            server,
            client,
            throwaway,
        })
    }

    fn describe(&self) -> String {
        match (&self.client.secret, &self.tls_dir) {
            (Some(_), Some(dir)) => format!(
                "every connection proves the shared secret and speaks TLS (certificates in {})",
                dir.display()
            ),
            (Some(_), None) => "every connection proves the shared secret (no TLS)".into(),
            (None, Some(dir)) => format!(
                "every connection speaks TLS (certificates in {}; no shared secret)",
                dir.display()
            ),
            (None, None) => "no shared secret, no TLS (loopback only)".into(),
        }
    }

    /// The flags of this program run again as a stand-in job.
    fn example_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(f) = &self.secret_file {
            flags.extend(["--secret-file".into(), f.to_string_lossy().into_owned()]);
        }
        if let Some(d) = &self.tls_dir {
            flags.extend(["--tls-dir".into(), d.to_string_lossy().into_owned()]);
        }
        flags
    }

    /// The flags of `vmctl launch-job` (serving its agent, registering)
    /// or, without `serving`, of `vmctl shutdown-block`.
    fn vmctl_flags(&self, serving: bool) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(f) = &self.secret_file {
            flags.extend(["--secret-file".into(), f.to_string_lossy().into_owned()]);
        }
        if let Some(d) = &self.tls_dir {
            let file = |name: &str| d.join(name).to_string_lossy().into_owned();
            if serving {
                flags.extend(["--tls-cert".into(), file("server.pem")]);
                flags.extend(["--tls-key".into(), file("server.key")]);
            }
            flags.extend(["--tls-ca".into(), file("ca.pem")]);
        }
        flags
    }
}

impl Drop for Security {
    fn drop(&mut self) {
        if let Some(dir) = &self.throwaway {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let security = Security::load(&cli)?;
    if let Some(addr) = &cli.as_stand_in_launch_job {
        return stand_in_launch_job(addr, cli.vms_per_node, &security).await;
    }
    if let [addr, block] = cli.as_shutdown_job.as_slice() {
        return shutdown_job(addr, block, &security.client).await;
    }
    let timeout = Duration::from_secs(cli.timeout);
    tokio::time::timeout(timeout, drive(cli, &security))
        .await
        .with_context(|| format!("the fleet did not settle within {timeout:?}"))?
}

/// What the VM-launch job runs.
enum Launcher {
    Real { vmctl: PathBuf, guest: PathBuf },
    StandIn { me: PathBuf },
}

fn find_launcher(stand_in: bool) -> Result<(Launcher, String)> {
    let me = std::env::current_exe().context("cannot find this program")?;
    if stand_in {
        return Ok((
            Launcher::StandIn { me },
            "STAND-IN VM-launch job (--stand-in): pretend VMs, no QEMU".into(),
        ));
    }
    let vmctl = std::env::var_os("VMCTL_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            // target/<profile>/examples/cluster_driver → target/<profile>/vmctl
            me.parent().and_then(Path::parent).map(|d| d.join("vmctl"))
        });
    let guest = std::env::var_os("VMCTL_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-guest"));
    let qemu = std::env::var_os("VMCTL_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
    let qemu_found = qemu.is_absolute() && qemu.is_file()
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&qemu).is_file()));
    let missing = match &vmctl {
        None => Some("no vmctl binary".to_owned()),
        Some(v) if !v.is_file() => Some(format!(
            "no vmctl binary at {} (cargo build --release -p vmctl, or set VMCTL_BIN)",
            v.display()
        )),
        _ if !qemu_found => Some(format!("no QEMU ({})", qemu.display())),
        _ if !guest.join("vmlinux").is_file() || !guest.join("initrd.gz").is_file() => {
            Some(format!(
                "no test guest in {} (scripts/build-test-guest.sh)",
                guest.display()
            ))
        }
        _ => None,
    };
    match (missing, vmctl) {
        (None, Some(vmctl)) => {
            let what = format!(
                "real `{} launch-job` booting the test guest from {}",
                vmctl.display(),
                guest.display()
            );
            Ok((Launcher::Real { vmctl, guest }, what))
        }
        (why, _) => Ok((
            Launcher::StandIn { me },
            format!(
                "STAND-IN VM-launch job ({}): pretend VMs, no QEMU",
                why.unwrap_or_default()
            ),
        )),
    }
}

async fn drive(cli: Cli, security: &Security) -> Result<()> {
    let t0 = Instant::now();
    let (launcher, what) = find_launcher(cli.stand_in)?;
    println!("cluster_driver: the VM-launch job is the {what}");
    println!("cluster_driver: {}", security.describe());

    // The experiment's queue and the cluster: two local queues. The
    // experiment runs at most as many jobs as there can be VMs.
    let exp = LocalBackend::new(LocalConfig {
        max_running: (cli.vms_per_node.max(1) * cli.max_nodes.max(1)) as usize,
        ..LocalConfig::default()
    })?;
    let cluster = LocalBackend::new(LocalConfig {
        max_running: cli.max_nodes.max(1) as usize,
        kill_grace: Duration::from_secs(30),
        ..LocalConfig::default()
    })?;

    // The integrator, served on a loopback port: the VM-launch jobs and the
    // shutdown jobs are other processes that call it over rrpc.
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = probe.local_addr()?;
    drop(probe);
    let mut launch_argv: Vec<String> = match &launcher {
        Launcher::Real { vmctl, guest } => [
            vmctl.to_string_lossy().into_owned(),
            "launch-job".into(),
            "--vm-cpus".into(),
            "1".into(),
            "--vm-mem".into(),
            "128".into(),
            "--count".into(),
            cli.vms_per_node.to_string(),
            "--port".into(),
            "0".into(),
            "--grace".into(),
            "20".into(),
            "--guest-dir".into(),
            guest.to_string_lossy().into_owned(),
            "--register".into(),
            addr.to_string(),
        ]
        .into(),
        Launcher::StandIn { me } => vec![
            me.to_string_lossy().into_owned(),
            "--vms-per-node".into(),
            cli.vms_per_node.to_string(),
            "--as-stand-in-launch-job".into(),
            addr.to_string(),
        ],
    };
    // The secret file and the certificates, never the secret itself.
    match &launcher {
        Launcher::Real { .. } => launch_argv.extend(security.vmctl_flags(true)),
        Launcher::StandIn { .. } => launch_argv.extend(security.example_flags()),
    }
    let shutdown_argv: Vec<String> = match &launcher {
        Launcher::Real { vmctl, .. } => [
            vec![
                vmctl.to_string_lossy().into_owned(),
                "shutdown-block".into(),
                "--integrator".into(),
                addr.to_string(),
                "--grace".into(),
                "20".into(),
            ],
            security.vmctl_flags(false),
            vec!["{block}".into()],
        ]
        .concat(),
        Launcher::StandIn { me } => [
            vec![me.to_string_lossy().into_owned()],
            security.example_flags(),
            vec![
                "--as-shutdown-job".into(),
                addr.to_string(),
                "{block}".into(),
            ],
        ]
        .concat(),
    };
    let mut config = IntegratorConfig::new(
        JobSpec::command("vmctl-launch", launch_argv)
            .nodes(1)
            .wall_time(Duration::from_secs(3600)),
        Policy {
            vms_per_node: cli.vms_per_node,
            max_nodes: cli.max_nodes,
            min_idle_vms: 0,
        },
    );
    config.shutdown_job = Some(JobSpec::command("vmctl-shutdown", shutdown_argv));
    let service = IntegratorService::new(Integrator::new(exp.clone(), cluster.clone(), config)?);
    service.set_agent_security(security.client.clone());
    let server = security
        .server
        .apply(rrpc_server::Server::new(service.root()))
        .bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?
        .spawn();
    println!("cluster_driver: integrator service on {addr}");

    // Connect like any driver and subscribe to the decisions.
    let conn = security.client.connect(addr, CONNECT_TIMEOUT).await?;
    let integrator = conn.root().get("integrator").await?.into_proxy()?;
    let (tx, mut events) = mpsc::unbounded_channel::<Event>();
    let callback = Function::from_async("on_event", move |_cx, mut args| {
        let tx = tx.clone();
        async move {
            let event: Event = args.take(0, "event")?;
            let _ = tx.send(event);
            Ok(())
        }
    });
    integrator
        .call("subscribe", (callback.into_value(),))
        .await?;

    // The user jobs, behind the gate (stand-in for "no VM has joined the
    // experiment's batch system yet").
    let gate_dir = tempfile_dir()?;
    let flag = gate_dir.join("open");
    let gate = exp
        .submit(&JobSpec::script(
            "vmctl-gate",
            format!(
                "while [ ! -e '{}' ]; do sleep 0.2; done\n",
                flag.to_string_lossy()
            ),
        ))
        .await?;
    let mut users = Vec::new();
    for i in 0..cli.users {
        users.push(
            exp.submit(
                &JobSpec::command(format!("user-{i}"), ["sleep", &cli.work.to_string()])
                    .after_ok(gate.clone()),
            )
            .await?,
        );
    }
    println!(
        "cluster_driver: submitted {} user job(s) of {}s; {} VM(s) per node, at most {} node(s)",
        cli.users, cli.work, cli.vms_per_node, cli.max_nodes
    );
    service.start_loop(Duration::from_millis(1000), 0.2);

    let mut last_line = String::new();
    let mut gate_open = false;
    let mut launched = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            e = events.recv() => {
                let Some(e) = e else { bail!("the subscription ended") };
                if e.kind == "registered" && !gate_open {
                    std::fs::write(&flag, b"")?;
                    gate_open = true;
                }
                if let Some(r) = &e.report {
                    launched += r.submitted.len();
                }
                if e.kind != "cycle" || e.report.as_ref().is_some_and(|r| !r.submitted.is_empty() || !r.shutdowns.is_empty()) {
                    println!("{:>6.1}s  {:<16} {}", t0.elapsed().as_secs_f64(), e.kind, e.detail);
                }
            }
            _ = tick.tick() => {}
        }
        let user_jobs = exp.list(&JobQuery::all()).await?;
        let launch_jobs = cluster
            .list(&JobQuery::all().with_name_prefix("vmctl-launch"))
            .await?;
        let status: Status = from_value(integrator.call("status", ()).await?)?;
        let count = |jobs: &[JobInfo], state: JobState| {
            jobs.iter()
                .filter(|j| users.contains(&j.id) || j.name.starts_with("vmctl-launch"))
                .filter(|j| j.state == state)
                .count()
        };
        let done = user_jobs
            .iter()
            .filter(|j| users.contains(&j.id) && !j.state.is_active())
            .count();
        let line = format!(
            "jobs {} pending {} running {} done | VM-launch jobs {} pending {} running | VMs {} ready {} busy | blocks shut down {}",
            count(&user_jobs, JobState::Pending),
            count(&user_jobs, JobState::Running),
            done,
            count(&launch_jobs, JobState::Pending),
            count(&launch_jobs, JobState::Running),
            status.vms.ready,
            status.vms.busy,
            status.vms.blocks_shut_down,
        );
        if line != last_line {
            println!(
                "{:>6.1}s  fleet            {line}",
                t0.elapsed().as_secs_f64()
            );
            last_line = line;
        }
        let failed: Vec<&JobInfo> = user_jobs
            .iter()
            .filter(|j| {
                users.contains(&j.id) && matches!(j.state, JobState::Failed | JobState::Cancelled)
            })
            .collect();
        if !failed.is_empty() {
            bail!("user job(s) failed: {failed:?}");
        }
        let launch_active = launch_jobs.iter().any(|j| j.state.is_active());
        if done == users.len() && !launch_active && status.blocks.is_empty() && launched > 0 {
            break;
        }
    }
    service.stop_loop();
    conn.close();
    server.stop().await;
    let _ = std::fs::remove_dir_all(&gate_dir);
    println!(
        "cluster_driver: the queue is empty and every node is free again after {:.1}s \
         ({launched} VM-launch job(s), all ended)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cluster-driver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// The stand-in agent: pretend VMs; `power_down_all` ends the job.
#[derive(Debug)]
struct StandInNode {
    vms: u32,
    stopped: Notify,
}

impl Remote for StandInNode {
    fn type_name(&self) -> &str {
        "StandInNode"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, _args: Args) -> Reply {
        match method {
            "power_down_all" => {
                self.stopped.notify_one();
                let reports: Vec<Value> = (0..self.vms)
                    .map(|i| Value::from(format!("stand-in VM {i}: powered down")))
                    .collect();
                Reply::ready(Value::List(reports))
            }
            _ => Reply::err(RemoteError::no_such_method("StandInNode", method)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![Member::method(
            "power_down_all",
            "power_down_all(grace) -> [str]",
        )]
    }
}

/// The stand-in VM-launch job: registers pretend VMs with the integrator,
/// serves the pretend agent, and ends when it is powered down.
async fn stand_in_launch_job(integrator_addr: &str, vms: u32, security: &Security) -> Result<()> {
    let block = format!(
        "job-{}",
        std::env::var("BATCH_JOB_ID").unwrap_or_else(|_| std::process::id().to_string())
    );
    let node = Arc::new(StandInNode {
        vms,
        stopped: Notify::new(),
    });
    let server = security
        .server
        .apply(rrpc_server::Server::new(
            Namespace::new("stand-in-agent").with("node", Value::Object(node.clone())),
        ))
        .bind("127.0.0.1:0")
        .await?;
    let agent_addr = server.local_addr();
    let server = server.spawn();
    let conn = security
        .client
        .connect(integrator_addr, CONNECT_TIMEOUT)
        .await?;
    let integrator = conn.root().get("integrator").await?.into_proxy()?;
    integrator
        .call("register_agent", (block.clone(), agent_addr.to_string()))
        .await?;
    // "Booting".
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..vms {
        integrator
            .call(
                "register_vm",
                (block.clone(), i, format!("10.0.2.{}", 15 + i)),
            )
            .await?;
    }
    node.stopped.notified().await;
    let _ = integrator.call("unregister_block", (block,)).await;
    conn.close();
    server.stop().await;
    Ok(())
}

/// The shutdown job of the stand-in mode (`vmctl shutdown-block`'s part).
async fn shutdown_job(addr: &str, block: &str, security: &ClientSecurity) -> Result<()> {
    let conn = security.connect(addr, CONNECT_TIMEOUT).await?;
    let integrator = conn.root().get("integrator").await?.into_proxy()?;
    let outcome: ShutdownOutcome =
        from_value(integrator.call("shutdown_block", (block, 20.0)).await?)?;
    println!(
        "block {}: done={} {}",
        outcome.block, outcome.done, outcome.reason
    );
    conn.close();
    Ok(())
}
