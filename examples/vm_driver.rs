//! One driver program for the VMs of several nodes, through their vmctl node
//! agents over rrpc: plan, launch, watch, power down.
//!
//! ```text
//! cargo run --release --example vm_driver                       # two in-process agents
//! cargo run --release --example vm_driver -- --connect H1:P --connect H2:P
//! ```
//!
//! By default it starts two agents in this process on loopback, standing in
//! for two cluster nodes (blocks 1 and 2), each booting the tiny test guest
//! (`scripts/build-test-guest.sh`; `VMCTL_TEST_GUEST_DIR` overrides where it
//! is). Agents given with `--connect` are `vmctl agent --guest-dir DIR`
//! processes anywhere; `--secret-file` (or `RRPC_SECRET`) and `--tls-ca`
//! reach agents that require the shared secret or serve TLS. Every VM is
//! launched by reference, watched through a callback the agent calls back
//! into this program, and powered down with the ACPI power button; the
//! program fails unless each VM shut down gracefully.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rrpc_client::security::ClientSecurityArgs;
use rrpc_client::{from_value, to_value, Function, Proxy};
use rrpc_server::security::ServerSecurity;
use tokio::sync::mpsc;
use vmctl::agent::report::{EndReport, How, PlanReport, ResourcesReport, StateEvent, VmInfo};
use vmctl::agent::{serve, AgentConfig, LaunchSpec, NodeAgent};

/// Plan, launch, watch and power down VMs on several nodes.
#[derive(Debug, Parser)]
struct Cli {
    /// A running agent (`vmctl agent --guest-dir DIR` prints its address);
    /// repeat for more nodes. Default: two in-process agents.
    #[arg(long = "connect", value_name = "ADDR")]
    agents: Vec<String>,
    /// VMs per agent (1 or 2 keep a 2-core machine responsive under TCG).
    #[arg(long, default_value_t = 1)]
    per_agent: u32,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Seconds each guest gets to react to the power button.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// The agents' shared secret and TLS (as for `rrpc`): `--secret-file`
    /// or RRPC_SECRET (the in-process agents require it too), and
    /// `--tls-ca`/`--tls-cert`/`--tls-key`/`--tls-name` for `--connect`
    /// agents serving TLS.
    #[command(flatten)]
    security: ClientSecurityArgs,
}

/// How long a guest may take to boot (TCG on a busy machine).
const READY_TIMEOUT_SECS: f64 = 120.0;

/// A VM as the driver knows it.
struct DriverVm {
    node: String,
    name: String,
    vm: Proxy,
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
    ensure!(cli.per_agent >= 1, "--per-agent must be at least 1");
    ensure!(
        cli.security.tls_ca.is_none() || !cli.agents.is_empty(),
        "--tls-ca is for agents given with --connect (the in-process agents speak plain TCP)"
    );
    let security = cli.security.load()?;

    // 1. The agents: given, or two in-process ones standing in for two nodes.
    let mut local = Vec::new();
    let addrs = if cli.agents.is_empty() {
        let guest = locate_guest()?;
        let mut addrs = Vec::new();
        for block in [1, 2] {
            let agent = Arc::new(NodeAgent::new(AgentConfig::new(block).guest_dir(&guest))?);
            // They require the secret the driver proves, if it has one.
            let own = ServerSecurity {
                secret: security.secret.clone(),
                ..ServerSecurity::none()
            };
            let listening = serve::bind_secured(Arc::clone(&agent), "127.0.0.1:0", &own).await?;
            println!(
                "started an in-process agent for block {block}: {} {}",
                serve::READY_LINE,
                listening.local_addr()
            );
            addrs.push(listening.local_addr().to_string());
            local.push((agent, listening.spawn()));
        }
        addrs
    } else {
        cli.agents.clone()
    };

    // 2. Connect to every node, look at it and plan.
    let mut nodes = Vec::new();
    for addr in &addrs {
        let conn = security
            .connect(addr.as_str(), Duration::from_secs(10))
            .await
            .with_context(|| format!("cannot connect to the agent at {addr}"))?;
        let node = conn.root().get("node").await?.into_proxy()?;
        let res: ResourcesReport = from_value(node.call("resources", ()).await?)?;
        let size = to_value(&BTreeMap::from([("vm_cpus", 1)]))?;
        let plan: PlanReport = from_value(node.call("plan", (size,)).await?)?;
        let name = format!("node{}", res.block);
        println!(
            "\n{name} at {addr}: {} CPUs, {} MiB, accelerator {} ({})",
            res.cpus, res.memory_mib, res.accel, res.accel_reason
        );
        println!(
            "  plan for 1-CPU VMs: {}",
            plan.explain.replace('\n', "\n  ")
        );
        ensure!(
            plan.vms >= cli.per_agent,
            "{name}: only {} VM(s) fit, {} asked",
            plan.vms,
            cli.per_agent
        );
        nodes.push((name, conn, node));
    }

    // 3. Launch the guests everywhere at once; each VM comes back by
    //    reference, and a callback of ours hears about its state changes.
    println!(
        "\nlaunching {} VM(s) on each of {} node(s)",
        cli.per_agent,
        nodes.len()
    );
    let t0 = Instant::now();
    let spec = to_value(&LaunchSpec {
        memory_mib: Some(cli.memory),
        ..LaunchSpec::default()
    })?;
    let mut launches = Vec::new();
    for (name, _conn, node) in &nodes {
        for _ in 0..cli.per_agent {
            let (name, node, spec) = (name.clone(), node.clone(), spec.clone());
            launches.push(async move {
                let vm = node
                    .call("launch", (spec,))
                    .await
                    .with_context(|| format!("{name}: launch failed"))?
                    .into_proxy()?;
                let vm_name: String = from_value(vm.get("name").await?)?;
                Ok::<_, anyhow::Error>(DriverVm {
                    node: name,
                    name: vm_name,
                    vm,
                })
            });
        }
    }
    let mut vms: Vec<DriverVm> = futures::future::try_join_all(launches).await?;
    vms.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    let (events_tx, mut events) = mpsc::unbounded_channel::<(String, StateEvent)>();
    let mut reached = BTreeMap::new();
    for v in &vms {
        let (node, tx) = (v.node.clone(), events_tx.clone());
        let watcher = Function::from_async("on_state", move |_cx, mut args| {
            let (node, tx) = (node.clone(), tx.clone());
            async move {
                let ev: StateEvent = args.take(0, "event")?;
                let _ = tx.send((node, ev));
                Ok(())
            }
        });
        v.vm.call("subscribe", (watcher.into_value(),)).await?;
    }

    // 4. Wait until every guest is ready.
    let ready = vms.iter().map(|v| async move {
        let info =
            v.vm.call("wait_ready", (READY_TIMEOUT_SECS,))
                .timeout(Duration::from_secs_f64(READY_TIMEOUT_SECS + 10.0))
                .await
                .with_context(|| format!("{}: a VM did not become ready", v.node))?;
        Ok::<VmInfo, anyhow::Error>(from_value(info)?)
    });
    let infos = futures::future::try_join_all(ready).await?;
    show_events(&mut events, &mut reached, vms.len(), 2).await;
    println!(
        "\nevery VM is ready after {:.1} s:\n",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "{:<7} {:<8} {:<17} {:<13} {:<6} {:>14}",
        "NODE", "VM", "MAC", "IP", "STATE", "READY AFTER"
    );
    for (v, info) in vms.iter().zip(&infos) {
        let ready = info
            .seconds_to_ready
            .map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<7} {:<8} {:<17} {:<13} {:<6} {:>14}",
            v.node, info.name, info.mac, info.ip, info.state, ready
        );
    }

    // 5. Power everything down: the power button, then quit, then kill.
    let grace = cli.grace;
    println!("\npowering every VM down (power button, {grace} s grace)");
    let downs = vms.iter().map(|v| async move {
        let end =
            v.vm.call("powerdown", (grace,))
                .timeout(Duration::from_secs_f64(grace + 30.0))
                .await
                .with_context(|| format!("{}: power-down failed", v.node))?;
        Ok::<EndReport, anyhow::Error>(from_value(end)?)
    });
    let ends = futures::future::try_join_all(downs).await?;
    show_events(&mut events, &mut reached, vms.len(), 4).await;
    println!(
        "\n{:<7} {:<8} {:<9} {:>9}  DETAIL",
        "NODE", "VM", "ENDED", "TOOK"
    );
    let mut graceful = 0;
    for (v, end) in vms.iter().zip(&ends) {
        let took = end
            .seconds
            .map(|s| format!("{:.0} ms", s * 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<7} {:<8} {:<9} {:>9}  {}",
            v.node, end.name, end.how, took, end.detail
        );
        if end.how == How::Graceful {
            graceful += 1;
        }
    }

    for (_name, conn, _node) in &nodes {
        conn.close();
    }
    for (_agent, server) in local {
        server.stop().await;
    }
    if graceful != ends.len() {
        bail!(
            "only {graceful} of {} VM(s) shut down gracefully",
            ends.len()
        );
    }
    println!("\nall {graceful} VM(s) shut down gracefully");
    Ok(())
}

/// How far along its life a VM is, by its state name.
fn rank(state: &str) -> u8 {
    match state {
        "starting" => 0,
        "running" => 1,
        "ready" | "paused" => 2,
        "shutting-down" => 3,
        _ => 4, // stopped, crashed
    }
}

/// Prints the state events our callbacks received until each of the `vms`
/// VMs has reported a state of rank `at_least` (events that follow each
/// other quickly may arrive merged, so later states count too).
async fn show_events(
    events: &mut mpsc::UnboundedReceiver<(String, StateEvent)>,
    reached: &mut BTreeMap<String, u8>,
    vms: usize,
    at_least: u8,
) {
    let wait = async {
        while reached.values().filter(|r| **r >= at_least).count() < vms {
            let Some((node, ev)) = events.recv().await else {
                return;
            };
            println!("  [{node} {}] {}", ev.vm, ev.detail);
            let r = reached.entry(ev.vm).or_default();
            *r = (*r).max(rank(&ev.state));
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        println!("  (some state events did not arrive within 10 s)");
    }
}

/// The test guest: `VMCTL_TEST_GUEST_DIR`, or `target/test-guest` of this
/// workspace (where `scripts/build-test-guest.sh` puts it).
fn locate_guest() -> Result<PathBuf> {
    let dir = match std::env::var_os("VMCTL_TEST_GUEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("test-guest"),
    };
    for f in ["vmlinux", "initrd.gz"] {
        if !dir.join(f).is_file() {
            bail!(
                "the test guest is missing ({} not found): run `scripts/build-test-guest.sh` \
                 (and `scripts/install-qemu.sh` as root for QEMU), or set VMCTL_TEST_GUEST_DIR",
                dir.join(f).display()
            );
        }
    }
    Ok(dir)
}
