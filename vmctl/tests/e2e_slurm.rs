//! End to end on a real single-host Slurm (started by the test with
//! `scripts/slurm-local.sh`, KillWait 30 s; partition `exp` is the
//! experiment's queue, `cluster` the external cluster), real `vmctl
//! launch-job` processes run by Slurm, and real QEMU booting the tiny test
//! guest (KVM or TCG).
//!
//! - The whole flow: user jobs wait in `exp` → the integrator service
//!   submits a VM-launch job to `cluster` → the guest boots and the job
//!   registers it with the integrator → the user jobs run → the queue
//!   empties → the integrator submits a shutdown job through `exp`, which
//!   powers the block down → every QEMU process is gone and the node is idle.
//!   One stand-in, named: a real VM would join the experiment's Slurm as a
//!   node (its slurmd) and the user jobs would run inside it; here the test
//!   brings the `exp` partition up when the VM registers (it is `DOWN` until
//!   then, so the user jobs really wait), and the user jobs run on the host.
//! - `scancel` of a VM-launch job powers its VM down gracefully (ACPI
//!   power button, guest shutdown) well within Slurm's kill wait.
//!
//! Needs root, `scripts/setup-slurm.sh`, `scripts/install-qemu.sh` and
//! `scripts/build-test-guest.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch_support;
mod common;

use common::{next_event, recorder};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use batch_support::{init_tracing, wait_for, SlurmCluster};
use rrpc_client::{from_value, Value};
use vmctl::agent::report::VmInfo;
use vmctl::batch::{
    Batch, JobId, JobQuery, JobSpec, JobState, SlurmBackend, SlurmConfig, SqueueFormat,
};
use vmctl::integrator::service::{IntegratorService, Status};
use vmctl::integrator::{Integrator, IntegratorConfig, Policy};

/// Slurm's kill wait in these tests (SIGTERM → SIGKILL on scancel).
const KILL_WAIT: Duration = Duration::from_secs(30);
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// One Slurm for the binary; the tests take turns (the node has few CPUs).
fn slurm() -> (Arc<SlurmCluster>, std::sync::MutexGuard<'static, ()>) {
    static TURN: Mutex<()> = Mutex::new(());
    static SHARED: Mutex<Weak<SlurmCluster>> = Mutex::new(Weak::new());
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = match slot.upgrade() {
        Some(c) => c,
        None => {
            let secs = KILL_WAIT.as_secs().to_string();
            let c = Arc::new(SlurmCluster::start_with(&[(
                "SLURM_KILL_WAIT",
                secs.as_str(),
            )]));
            *slot = Arc::downgrade(&c);
            c
        }
    };
    (cluster, turn)
}

fn run(body: impl std::future::Future<Output = ()>) {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .expect("the test did not finish within its timeout");
    });
}

fn backend(cluster: &SlurmCluster) -> Arc<SlurmBackend> {
    Arc::new(SlurmBackend::new(SlurmConfig {
        runner: cluster.runner(),
        format: SqueueFormat::Auto,
    }))
}

fn scontrol(cluster: &SlurmCluster, args: &[&str]) -> String {
    let out = std::process::Command::new("scontrol")
        .args(args)
        .env("SLURM_CONF", cluster.conf())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scontrol {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node's state as `sinfo` shows it (`idle`, `mixed`, `allocated`…).
fn node_state(cluster: &SlurmCluster) -> String {
    let out = std::process::Command::new("sinfo")
        .args(["-h", "-N", "-n", "localhost", "-o", "%T"])
        .env("SLURM_CONF", cluster.conf())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

async fn wait_node_idle(cluster: &SlurmCluster) {
    let t0 = Instant::now();
    let mut state = String::new();
    while t0.elapsed() < Duration::from_secs(60) {
        state = node_state(cluster);
        if state == "idle" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the node is still {state:?}, not idle");
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has ended too.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The `vmctl launch-job` command of these tests: one tiny guest.
fn launch_command(block: u32, register: Option<&str>) -> Vec<String> {
    let mut argv: Vec<String> = [
        env!("CARGO_BIN_EXE_vmctl"),
        "launch-job",
        "--vm-cpus",
        "1",
        "--vm-mem",
        "128",
        "--count",
        "1",
        "--port",
        "0",
        "--grace",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(["--block".into(), block.to_string()]);
    argv.push("--guest-dir".into());
    argv.push(common::guest_dir().to_string_lossy().into_owned());
    if let Some(addr) = register {
        argv.extend(["--register".into(), addr.to_owned()]);
    }
    argv
}

/// The QEMU pids of the agent at `addr`, once its VMs are ready.
async fn ready_vm_pids(addr: &str) -> Vec<u32> {
    let conn = rrpc_client::connect(addr).await.unwrap();
    let node = conn.root().get("node").await.unwrap().into_proxy().unwrap();
    let Value::List(vms) = node.call("list", ()).await.unwrap() else {
        panic!("list() is not a list");
    };
    let mut pids = Vec::new();
    for vm in vms {
        let vm = vm.into_proxy().unwrap();
        let info: VmInfo = from_value(
            vm.call("wait_ready", (120.0,))
                .timeout(Duration::from_secs(130))
                .await
                .unwrap(),
        )
        .unwrap();
        pids.push(info.pid.unwrap());
    }
    conn.close();
    pids
}

/// Reads the job's output until a line starts with `prefix`; returns its rest.
async fn wait_line(path: &Path, prefix: &str, within: Duration) -> String {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Some(rest) = s.lines().find_map(|l| l.strip_prefix(prefix)) {
                return rest.trim().to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "no line starting {prefix:?} in {} within {within:?}: {:?}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

fn output_of(dir: &Path, id: &JobId) -> PathBuf {
    dir.join(format!("launch-{id}.out"))
}

#[test]
fn scancel_of_a_vm_launch_job_powers_its_vms_down_gracefully_within_the_kill_wait() {
    let (cluster, _turn) = slurm();
    run(async {
        let slurm = backend(&cluster);
        let dir = cluster.scratch("scancel");
        let spec = JobSpec::command("vmctl-launch-scancel", launch_command(31, None))
            .queue("cluster")
            .nodes(1)
            .wall_time(Duration::from_secs(600))
            .stdout(dir.join("launch-{id}.out"));
        let id = slurm.submit(&spec).await.unwrap();
        let out = output_of(&dir, &id);
        let addr = wait_line(&out, "vmctl agent listening on", Duration::from_secs(90)).await;
        let pids = ready_vm_pids(&addr).await;
        assert_eq!(pids.len(), 1);

        let t0 = Instant::now();
        slurm.cancel(&id).await.unwrap();
        wait_for(&*slurm, &id, 1, KILL_WAIT + Duration::from_secs(30), |j| {
            !j.state.is_active()
        })
        .await;
        let took = t0.elapsed();
        let text = std::fs::read_to_string(&out).unwrap();
        println!("{text}");
        assert!(
            text.contains("stopping because SIGTERM received"),
            "vmctl did not get scancel's SIGTERM:\n{text}"
        );
        assert!(
            text.contains("1 VM(s): 1 graceful"),
            "the VM was not powered down gracefully:\n{text}"
        );
        assert!(text.contains("guest-shutdown"), "{text}");
        assert!(
            took < KILL_WAIT,
            "the job took {took:?}, not within the kill wait of {KILL_WAIT:?}"
        );
        for pid in pids {
            assert!(process_gone(pid), "QEMU {pid} still runs");
        }
        wait_node_idle(&cluster).await;
        eprintln!(
            "MEASURED scancel to the end of the VM-launch job: {took:?} (KillWait {KILL_WAIT:?})"
        );
    });
}

#[test]
fn user_jobs_bring_vms_up_and_an_empty_queue_shuts_them_down() {
    let (cluster, _turn) = slurm();
    run(async {
        let slurm = backend(&cluster);
        let dir = cluster.scratch("e2e");
        // The experiment's queue has no VMs yet: its jobs wait.
        scontrol(&cluster, &["update", "PartitionName=exp", "State=DOWN"]);

        // The integrator service, on a real rrpc server.
        let listening_addr;
        let service = {
            // The launch job registers with the service: bind first.
            let placeholder = JobSpec::command("vmctl-launch", ["true"]);
            let mut config = IntegratorConfig::new(
                placeholder,
                Policy {
                    vms_per_node: 2,
                    max_nodes: 1,
                    min_idle_vms: 0,
                },
            );
            config.exp_queue = Some("exp".into());
            config.cluster_queue = Some("cluster".into());
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listening_addr = probe.local_addr().unwrap();
            drop(probe);
            config.launch_job = JobSpec::command(
                "vmctl-launch",
                launch_command(32, Some(&listening_addr.to_string())),
            )
            .queue("cluster")
            .nodes(1)
            .wall_time(Duration::from_secs(600))
            .stdout(dir.join("launch-{id}.out"));
            let service = IntegratorService::new(
                Integrator::new(slurm.clone(), slurm.clone(), config).unwrap(),
            );
            let shutdown = JobSpec::command(
                "vmctl-shutdown",
                [
                    env!("CARGO_BIN_EXE_vmctl").to_owned(),
                    "shutdown-block".into(),
                    "--integrator".into(),
                    listening_addr.to_string(),
                    "--grace".into(),
                    "20".into(),
                    "{block}".into(),
                ],
            )
            .wall_time(Duration::from_secs(300))
            .stdout(dir.join("shutdown-{id}.out"));
            service.set_shutdown_job(Some(shutdown)).await.unwrap();
            service
        };
        let server = rrpc_server::Server::new(service.root())
            .bind(listening_addr)
            .await
            .unwrap()
            .spawn();

        // A driver subscribes.
        let conn = rrpc_client::connect(listening_addr).await.unwrap();
        let integrator = conn
            .root()
            .get("integrator")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let (callback, mut events) = recorder();
        integrator.call("subscribe", (callback,)).await.unwrap();

        let t0 = Instant::now();
        let mut user = Vec::new();
        for i in 0..3 {
            user.push(
                slurm
                    .submit(
                        &JobSpec::command(format!("user-{i}"), ["sleep", "2"])
                            .queue("exp")
                            .cpus(1),
                    )
                    .await
                    .unwrap(),
            );
        }
        service.start_loop(Duration::from_secs(1), 0.2);

        // 3 user jobs at 2 VMs per node: 2 nodes wanted, max_nodes 1.
        let ev = next_event(&mut events, &["cycle"], Duration::from_secs(30)).await;
        let report = ev.report.unwrap();
        assert_eq!(report.observation.user_pending, 3, "{report:?}");
        assert_eq!(report.submitted.len(), 1, "{report:?}");
        let launch = report.submitted[0].clone();

        // The guest boots and the launch job registers it.
        let ev = next_event(&mut events, &["registered"], Duration::from_secs(150)).await;
        let t_ready = t0.elapsed();
        assert!(ev.detail.contains("job-"), "{ev:?}");
        let status: Status = from_value(integrator.call("status", ()).await.unwrap()).unwrap();
        assert_eq!(status.blocks.len(), 1, "{status:?}");
        let block = status.blocks[0].clone();
        assert_eq!(block.block, format!("job-{launch}"));
        let pids = ready_vm_pids(block.agent.as_deref().unwrap()).await;
        assert_eq!(pids.len(), 1);

        // Stand-in for the VM's slurmd joining the experiment's Slurm.
        scontrol(&cluster, &["update", "PartitionName=exp", "State=UP"]);
        for id in &user {
            wait_for(&*slurm, id, 1, Duration::from_secs(90), |j| {
                j.state == JobState::Completed
            })
            .await;
        }
        let t_jobs = t0.elapsed();

        // The queue is empty: the block is shut down through `exp`.
        let ev = next_event(&mut events, &["shutdown"], Duration::from_secs(60)).await;
        assert!(ev.detail.contains("1 VM(s) powered down"), "{ev:?}");
        let t_shutdown = t0.elapsed();
        let launch_job = wait_for(&*slurm, &launch, 1, Duration::from_secs(60), |j| {
            !j.state.is_active()
        })
        .await
        .remove(0);
        assert_eq!(launch_job.state, JobState::Completed, "{launch_job:?}");
        let text = std::fs::read_to_string(output_of(&dir, &launch)).unwrap();
        println!("{text}");
        assert!(text.contains("stopping because every VM stopped"), "{text}");
        assert!(text.contains("1 VM(s): 1 graceful"), "{text}");
        for pid in pids {
            assert!(process_gone(pid), "QEMU {pid} still runs");
        }
        wait_node_idle(&cluster).await;
        let t_idle = t0.elapsed();

        // Exactly one VM-launch job was ever submitted, and nothing is left.
        let all = slurm
            .list(&JobQuery {
                include_finished: true,
                ..JobQuery::all().with_name_prefix("vmctl-launch")
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(slurm.list(&JobQuery::active()).await.unwrap().is_empty());
        let status: Status = from_value(integrator.call("status", ()).await.unwrap()).unwrap();
        assert!(status.blocks.is_empty(), "{status:?}");
        assert_eq!(status.vms.blocks_shut_down, 1, "{status:?}");

        service.stop_loop();
        conn.close();
        server.stop().await;
        eprintln!(
            "MEASURED e2e: VM registered after {t_ready:?}, user jobs done after {t_jobs:?}, \
             block shut down after {t_shutdown:?}, node idle after {t_idle:?}"
        );
    });
}
