//! The `vmctl` command-line tool.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vmctl::agent::{serve, AgentConfig, LaunchSpec, NodeAgent};
use vmctl::launch_job::{self, JobConfig, Registration};
use vmctl::plan::{NodeResources, PlanRequest, VmSize};
use vmctl::security::{PeerTlsArgs, ServerSecurity, ServerSecurityArgs};

/// Run KVM/QEMU virtual machines as batch jobs.
#[derive(Debug, Parser)]
#[command(name = "vmctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print how many VMs of a given size fit on this node.
    Plan {
        /// CPUs per VM (the VMs share the memory equally).
        #[arg(long, conflicts_with = "vm_mem", required_unless_present = "vm_mem")]
        vm_cpus: Option<u32>,
        /// Memory per VM in MiB (as many VMs as fit, at most one per CPU).
        #[arg(long, value_name = "MiB")]
        vm_mem: Option<u64>,
        /// Fraction of the node's memory kept for the host.
        #[arg(long, default_value_t = vmctl::plan::DEFAULT_RESERVE)]
        reserve: f64,
        /// Print the plan as JSON instead of words.
        #[arg(long)]
        json: bool,
    },
    /// Serve this node's VMs over rrpc (the `node` object) until SIGINT or
    /// SIGTERM, then power every VM down and exit.
    Agent {
        #[command(flatten)]
        agent: AgentArgs,
        /// Seconds each VM gets to power off on the power button at shutdown
        /// (then `quit`, then kill).
        #[arg(long, default_value_t = 30.0, value_name = "SECS")]
        grace: f64,
    },
    /// Run as a batch job's VM launcher: plan, launch, serve the agent, wait
    /// for the VMs or the wall time, then power everything down and print a
    /// summary.
    LaunchJob(Box<LaunchJobArgs>),
    /// Submit, list and cancel jobs on Slurm, PBS or HTCondor.
    Batch(vmctl::batch::cli::BatchCommand),
    /// Keep VM-launch jobs on the cluster matched to the experiment's queue.
    Integrate(vmctl::batch::cli::IntegrateCommand),
    /// Serve the integrator over rrpc (the `integrator` object) until SIGINT
    /// or SIGTERM: status, cycles on demand, policy changes, VM
    /// registrations, subscriptions.
    Integrator(Box<vmctl::batch::cli::ServeCommand>),
    /// What a shutdown job runs: ask the integrator to power a VM block
    /// down (dropped if a user job got there first).
    ShutdownBlock(vmctl::batch::cli::ShutdownBlockCommand),
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed in the ready line).
    #[arg(long, default_value_t = 18813)]
    port: u16,
    /// This node's block id: its VMs get MACs 52:54:0a:(200+B/256):(B%256):*.
    #[arg(long, default_value_t = 0)]
    block: u32,
    /// The default guest (vmlinux, initrd.gz) for launches without a kernel
    /// or image, e.g. the test guest of scripts/build-test-guest.sh.
    #[arg(long, value_name = "DIR")]
    guest_dir: Option<PathBuf>,
    /// Where QMP sockets go (default: a fresh directory in $TMPDIR).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Fraction of the node's memory kept for the host.
    #[arg(long, default_value_t = vmctl::plan::DEFAULT_RESERVE)]
    reserve: f64,
    /// The shared secret clients must prove (--secret-file or RRPC_SECRET)
    /// and TLS (--tls-cert, --tls-key, --tls-client-ca).
    #[command(flatten)]
    security: ServerSecurityArgs,
}

impl AgentArgs {
    /// Reads the secret and the TLS files, and warns loudly when the agent
    /// would be reachable from the network without authentication.
    fn security(&self) -> Result<ServerSecurity, Error> {
        let security = self.security.load()?;
        vmctl::security::warn_if_open(&security, self.host, "start and stop VMs");
        tracing::info!("agent: {}", security.describe());
        Ok(security)
    }

    fn config(&self) -> Result<AgentConfig, String> {
        let mut c = AgentConfig::new(self.block);
        c.reserve = self.reserve;
        c.run_dir = self.run_dir.clone();
        if let Some(dir) = &self.guest_dir {
            let dir = std::path::absolute(dir)
                .map_err(|e| format!("--guest-dir {}: {e}", dir.display()))?;
            for f in ["vmlinux", "initrd.gz"] {
                if !dir.join(f).is_file() {
                    return Err(format!(
                        "--guest-dir {}: {f} is missing (build it with scripts/build-test-guest.sh)",
                        dir.display()
                    ));
                }
            }
            c.guest_dir = Some(dir);
        }
        Ok(c)
    }

    fn listen(&self) -> String {
        std::net::SocketAddr::new(self.host, self.port).to_string()
    }
}

#[derive(Debug, Args)]
struct LaunchJobArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// CPUs per VM (the VMs share the usable memory equally, unless --vm-mem).
    #[arg(long, required_unless_present = "vm_mem")]
    vm_cpus: Option<u32>,
    /// Memory per VM in MiB: alone, the VM size to plan for; with --vm-cpus,
    /// the exact memory of each VM.
    #[arg(long, value_name = "MiB")]
    vm_mem: Option<u64>,
    /// Start at most this many VMs (default: as many as fit).
    #[arg(long)]
    count: Option<u32>,
    /// The job's wall time in seconds (default: SLURM_JOB_END_TIME, or the
    /// time left of SLURM_JOB_ID, else no limit).
    #[arg(long, value_name = "SECS")]
    wall_time: Option<f64>,
    /// Seconds before the end of the wall time when the power-down starts.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    grace: f64,
    /// Kernel to boot directly (absolute or relative path).
    #[arg(long, value_name = "PATH", conflicts_with = "guest_dir")]
    kernel: Option<PathBuf>,
    /// Its initramfs.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Its command line.
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// Disk image, opened in snapshot mode (the base is never written).
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Image format: raw or qcow2.
    #[arg(long, default_value = "raw", requires = "image")]
    image_format: String,
    /// A second disk image, also in snapshot mode.
    #[arg(long, value_name = "PATH", requires = "image")]
    image2: Option<PathBuf>,
    /// Network: user, none, tap (a tap per VM with its host route; root) or
    /// tap:IFNAME (an existing device).
    #[arg(long, default_value = "user")]
    network: String,
    /// Regex the console prints when the guest is ready (default: the test
    /// guest's GUEST-READY line with --guest-dir, else QMP answering).
    #[arg(long, value_name = "REGEX")]
    ready_pattern: Option<String>,
    /// Register the agent and every ready VM with the integrator service
    /// at ADDR (`vmctl integrator`), and unregister the block at the end.
    #[arg(long, value_name = "ADDR")]
    register: Option<String>,
    /// The block's name at the integrator (default: job-$SLURM_JOB_ID, or
    /// block-N).
    #[arg(long, requires = "register")]
    register_as: Option<String>,
    /// How to reach the integrator (--register): over TLS with --tls-ca;
    /// the shared secret is the agent's own.
    #[command(flatten)]
    peers: PeerTlsArgs,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmctl: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|e| format!("bad --{flag} {value}: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the async runtime: {e}").into())
}

fn ready_line(addr: std::net::SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} {addr}", serve::READY_LINE);
    let _ = out.flush();
}

fn absolute(flag: &str, path: &Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    path.as_ref()
        .map(|p| std::path::absolute(p).map_err(|e| format!("--{flag} {}: {e}", p.display())))
        .transpose()
}

fn run(cli: Cli) -> Result<std::process::ExitCode, Error> {
    match cli.command {
        Command::Batch(cmd) => {
            tokio::runtime::Runtime::new()?.block_on(vmctl::batch::cli::run_batch(cmd))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Integrate(cmd) => {
            tokio::runtime::Runtime::new()?.block_on(vmctl::batch::cli::run_integrate(cmd))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Integrator(cmd) => {
            runtime()?.block_on(vmctl::batch::cli::run_serve(*cmd))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::ShutdownBlock(cmd) => {
            runtime()?.block_on(vmctl::batch::cli::run_shutdown_block(cmd))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Plan {
            vm_cpus,
            vm_mem,
            reserve,
            json,
        } => {
            let size = match (vm_cpus, vm_mem) {
                (Some(c), _) => VmSize::Cpus(c),
                (None, Some(m)) => VmSize::MemoryMib(m),
                (None, None) => return Err("give --vm-cpus or --vm-mem".into()),
            };
            let node = NodeResources::detect()?;
            let plan = PlanRequest::new(size).reserve(reserve).plan(&node)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!("{}", plan.explain());
                println!("plan: {plan}");
                match vmctl::Accel::Auto.resolve() {
                    Ok(choice) => println!("accelerator: {} ({})", choice.accel, choice.reason),
                    Err(e) => println!("accelerator: cannot choose: {e}"),
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Agent { agent, grace } => {
            let config = agent.config()?;
            let grace = seconds("grace", grace)?;
            let listen = agent.listen();
            let security = agent.security()?;
            runtime()?.block_on(async move {
                let node = Arc::new(NodeAgent::new(config)?);
                let listening = serve::bind_secured(Arc::clone(&node), listen.as_str(), &security)
                    .await
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
                ready_line(listening.local_addr());
                let reports = serve::run(node, listening, serve::shutdown_signal(), grace).await;
                for r in &reports {
                    println!("{}: {}: {}", r.name, r.how, r.detail);
                }
                Ok::<_, Error>(std::process::ExitCode::SUCCESS)
            })
        }
        Command::LaunchJob(args) => {
            let size = match (args.vm_cpus, args.vm_mem) {
                (Some(c), _) => VmSize::Cpus(c),
                (None, Some(m)) => VmSize::MemoryMib(m),
                (None, None) => return Err("give --vm-cpus or --vm-mem".into()),
            };
            let vm = LaunchSpec {
                kernel: absolute("kernel", &args.kernel)?,
                initrd: absolute("initrd", &args.initrd)?,
                append: args.append.clone(),
                image: absolute("image", &args.image)?,
                image_format: Some(args.image_format.clone()),
                second_image: absolute("image2", &args.image2)?,
                network: Some(args.network.clone()),
                ready_pattern: args.ready_pattern.clone(),
                ..LaunchSpec::default()
            };
            if vm.kernel.is_none() && vm.image.is_none() && args.agent.guest_dir.is_none() {
                return Err("give --kernel (with --initrd), --image or --guest-dir".into());
            }
            let security = args.agent.security()?;
            let mut server = rrpc_core::Config::default();
            server.secret = security.secret.clone();
            let peers = args.peers.client(security.secret.clone())?;
            let config = JobConfig {
                size,
                vm_mem_mib: args.vm_cpus.and(args.vm_mem),
                count: args.count,
                wall_time: args
                    .wall_time
                    .map(|w| seconds("wall-time", w))
                    .transpose()?,
                grace: seconds("grace", args.grace)?,
                listen: args.agent.listen(),
                server,
                tls: security.tls.clone(),
                agent: args.agent.config()?,
                vm,
                register: args.register.clone().map(|integrator| Registration {
                    integrator,
                    block: args
                        .register_as
                        .clone()
                        .unwrap_or_else(|| Registration::default_block(args.agent.block)),
                    security: peers,
                }),
            };
            runtime()?.block_on(async move {
                let summary = launch_job::run(config, serve::shutdown_signal(), ready_line).await?;
                print!("{}", summary.render());
                let _ = std::io::stdout().flush();
                Ok(if summary.success() {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                })
            })
        }
    }
}
