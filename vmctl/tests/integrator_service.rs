//! The integrator as an rrpc service, over a real rrpc connection, on the
//! local backend (no batch system needed): status, cycles on demand, policy
//! changes, VM registrations, the subscription (and its end when the
//! connection closes), and a real shutdown job (`vmctl shutdown-block`, run
//! by the experiment's local queue) powering a block down through a real
//! node agent. Also the `vmctl integrator` binary: ready line, a call, and a
//! clean stop on SIGTERM. The VM-launch job here is a stand-in (`sleep`):
//! booting VMs is the e2e test's part.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{next_event, recorder};
use rrpc_client::{from_value, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use vmctl::agent::{serve, AgentConfig, NodeAgent};
use vmctl::batch::{Batch, JobQuery, JobSpec, LocalBackend, LocalConfig};
use vmctl::integrator::service::{IntegratorService, ShutdownOutcome, Status};
use vmctl::integrator::{CycleReport, Integrator, IntegratorConfig, Policy};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn local(max_running: usize) -> LocalBackend {
    LocalBackend::new(LocalConfig {
        max_running,
        kill_grace: Duration::from_secs(2),
        ..LocalConfig::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integrator_served_over_rrpc() {
    let work = async {
        // The experiment's queue runs one job at a time: one user job runs,
        // two wait.
        let exp = local(1);
        let cluster = local(4);
        let mut user = Vec::new();
        for i in 0..3 {
            user.push(
                exp.submit(&JobSpec::command(format!("user-{i}"), ["sleep", "60"]))
                    .await
                    .unwrap(),
            );
        }
        let launch = JobSpec::command("vmctl-launch", ["sleep", "60"]);
        let config = IntegratorConfig::new(
            launch,
            Policy {
                vms_per_node: 4,
                max_nodes: 2,
                min_idle_vms: 0,
            },
        );
        let service =
            IntegratorService::new(Integrator::new(exp.clone(), cluster.clone(), config).unwrap());
        let listening = rrpc_server::Server::new(service.root())
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let addr = listening.local_addr();
        let server = listening.spawn();
        // The shutdown job: the real binary calling this service back.
        let shutdown = JobSpec::command(
            "vmctl-shutdown",
            [
                env!("CARGO_BIN_EXE_vmctl").to_owned(),
                "shutdown-block".into(),
                "--integrator".into(),
                addr.to_string(),
                "--grace".into(),
                "5".into(),
                "{block}".into(),
            ],
        );
        service.set_shutdown_job(Some(shutdown)).await.unwrap();

        let conn = rrpc_client::connect(addr).await.unwrap();
        let integrator = conn
            .root()
            .get("integrator")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let (callback, mut events) = recorder();
        integrator.call("subscribe", (callback,)).await.unwrap();
        assert_eq!(service.subscriber_count(), 1);

        // Nothing has run yet.
        let status: Status = from_value(integrator.call("status", ()).await.unwrap()).unwrap();
        assert_eq!(status.cycles, 0);
        assert!(status.last.is_none());

        // 3 user jobs at 4 VMs per node: one VM-launch job.
        let report: CycleReport =
            from_value(integrator.call("run_cycle", ()).await.unwrap()).unwrap();
        assert_eq!(report.observation.user_pending, 2, "{report:?}");
        assert_eq!(report.observation.user_running, 1, "{report:?}");
        assert_eq!(report.submitted.len(), 1, "{report:?}");
        let ev = next_event(&mut events, &["cycle"], Duration::from_secs(30)).await;
        assert!(ev.detail.contains("submit 1"), "{ev:?}");
        assert_eq!(ev.report.unwrap().submitted, report.submitted);

        // One VM per node now: 3 nodes wanted, max_nodes caps it at 2.
        let policy: Policy = from_value(
            integrator
                .call("set_policy", (serde_json_map(&[("vms_per_node", 1)]),))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(policy.vms_per_node, 1);
        assert_eq!(policy.max_nodes, 2, "untouched fields stay");
        next_event(&mut events, &["policy"], Duration::from_secs(30)).await;
        let report: CycleReport =
            from_value(integrator.call("run_cycle", ()).await.unwrap()).unwrap();
        assert_eq!(report.submitted.len(), 1, "{report:?}");
        assert!(
            report.decision.reason().contains("capped by max_nodes 2"),
            "{report:?}"
        );
        let err = integrator
            .call("set_policy", (serde_json_map(&[("vms_per_node", 0)]),))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("vms_per_node"), "{err}");

        // A block of two VMs registers; its agent (a real one, no VMs).
        let agent = Arc::new(NodeAgent::new(AgentConfig::new(9)).unwrap());
        let agent_server = serve::bind(agent, "127.0.0.1:0").await.unwrap();
        let agent_addr = agent_server.local_addr();
        let agent_server = agent_server.spawn();
        for i in 0..2u32 {
            integrator
                .call("register_vm", ("blk-a", i, format!("10.0.2.{}", 15 + i)))
                .await
                .unwrap();
            let ev = next_event(&mut events, &["registered"], Duration::from_secs(30)).await;
            assert!(ev.detail.contains("blk-a"), "{ev:?}");
        }
        integrator
            .call("register_agent", ("blk-a", agent_addr.to_string()))
            .await
            .unwrap();
        // Bad registrations get clear errors.
        let err = integrator
            .call("register_vm", ("blk-a", 2, "not-an-ip"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not-an-ip"), "{err}");
        let err = integrator
            .call("register_vm", ("bad block/name", 0, "10.0.2.15"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bad block name"), "{err}");
        let err = integrator.call("register_vm", ()).await.unwrap_err();
        assert!(err.to_string().contains("block"), "{err}");

        let status: Status = from_value(integrator.call("status", ()).await.unwrap()).unwrap();
        assert_eq!(status.cycles, 2);
        assert_eq!(status.vms.ready, 2);
        assert_eq!(status.blocks.len(), 1);
        assert_eq!(status.blocks[0].agent, Some(agent_addr.to_string()));

        // While user jobs wait, a shutdown request is dropped.
        let outcome: ShutdownOutcome = from_value(
            integrator
                .call("shutdown_block", ("blk-a", 1.0))
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(!outcome.done, "{outcome:?}");
        assert!(outcome.reason.contains("wait"), "{outcome:?}");

        // The queue empties: the next cycle decides to shut the idle block
        // down and submits the shutdown job, which powers it down through
        // the agent.
        for id in user.iter().rev() {
            exp.cancel(id).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while !exp.list(&JobQuery::active()).await.unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the cancelled user jobs did not end");
        let report: CycleReport =
            from_value(integrator.call("run_cycle", ()).await.unwrap()).unwrap();
        assert_eq!(report.shutdowns.len(), 1, "{report:?}");
        assert_eq!(report.shutdowns[0].block, "blk-a");
        assert_eq!(report.shutdown_jobs.len(), 1, "{report:?}");
        let ev = next_event(&mut events, &["shutdown"], Duration::from_secs(30)).await;
        assert!(ev.detail.contains("powered down"), "{ev:?}");
        assert_eq!(ev.vms.ready, 0, "{ev:?}");
        assert_eq!(ev.vms.blocks_shut_down, 1, "{ev:?}");
        let status: Status = from_value(integrator.call("status", ()).await.unwrap()).unwrap();
        assert!(status.blocks.is_empty(), "{status:?}");

        // A block whose agent is gone (its launch job was killed outright)
        // is forgotten rather than shut down again every cycle.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        integrator
            .call("register_vm", ("blk-gone", 0, "10.0.2.15"))
            .await
            .unwrap();
        integrator
            .call("register_agent", ("blk-gone", dead_addr.to_string()))
            .await
            .unwrap();
        let outcome: ShutdownOutcome = from_value(
            integrator
                .call("shutdown_block", ("blk-gone", 1.0))
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(!outcome.done, "{outcome:?}");
        assert!(outcome.reason.contains("unreachable"), "{outcome:?}");
        let status: Status = from_value(integrator.call("status", ()).await.unwrap()).unwrap();
        assert!(status.blocks.is_empty(), "{status:?}");

        // The subscription ends with the connection.
        conn.close();
        tokio::time::timeout(Duration::from_secs(10), async {
            while service.subscriber_count() > 0 {
                service.run_cycle().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the subscription outlived its connection");

        for j in cluster
            .list(&JobQuery::active().with_name_prefix("vmctl-launch"))
            .await
            .unwrap()
        {
            cluster.cancel(&j.id).await.unwrap();
        }
        agent_server.stop().await;
        server.stop().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}

fn serde_json_map(fields: &[(&str, i64)]) -> Value {
    Value::Map(
        fields
            .iter()
            .map(|(k, v)| (Value::from(*k), Value::from(*v)))
            .collect(),
    )
}

#[tokio::test]
async fn the_binary_serves_and_stops_on_sigterm() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let work = async {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .args([
                "integrator",
                "--backend",
                "local",
                "--cluster-backend",
                "local",
                "--port",
                "0",
                "--manual",
                "--",
                "sleep",
                "5",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        let addr = line
            .trim()
            .strip_prefix("vmctl integrator listening on ")
            .unwrap_or_else(|| panic!("no ready line, got {line:?}"))
            .to_owned();
        let conn = rrpc_client::connect(addr.as_str()).await.unwrap();
        let integrator = conn
            .root()
            .get("integrator")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let report: CycleReport =
            from_value(integrator.call("run_cycle", ()).await.unwrap()).unwrap();
        assert_eq!(report.submitted.len(), 0, "no user jobs: {report:?}");
        assert!(
            report.decision.reason().contains("no user jobs"),
            "{report:?}"
        );
        conn.close();
        kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("vmctl integrator did not stop on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status:?}");
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}
