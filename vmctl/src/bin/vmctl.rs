//! The `vmctl` command-line tool.

use clap::{Parser, Subcommand};
use vmctl::plan::{NodeResources, PlanRequest, VmSize};

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
    /// Submit, list and cancel jobs on Slurm, PBS or HTCondor.
    Batch(vmctl::batch::cli::BatchCommand),
    /// Keep VM-launch jobs on the cluster matched to the experiment's queue.
    Integrate(vmctl::batch::cli::IntegrateCommand),
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
        Ok(()) => std::process::ExitCode::SUCCESS,
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

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Batch(cmd) => {
            tokio::runtime::Runtime::new()?.block_on(vmctl::batch::cli::run_batch(cmd))
        }
        Command::Integrate(cmd) => {
            tokio::runtime::Runtime::new()?.block_on(vmctl::batch::cli::run_integrate(cmd))
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
            Ok(())
        }
    }
}
