//! The integrator's cycle against a real single-host Slurm (partition `exp`
//! is the experiment's queue, `cluster` the external cluster): stopping and
//! restarting it between cycles never submits a VM-launch job twice, since
//! every cycle recounts the jobs from the batch system by name. Also the
//! dry-run mode on the local backend. The VM-launch job here is a stand-in
//! (`sleep`); booting real VMs is `vmctl launch-job`'s part.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch_support;

use std::sync::Arc;
use std::time::Duration;

use batch_support::{run, wait_running, SlurmCluster};
use vmctl::batch::{
    Batch, JobId, JobQuery, JobSpec, LocalBackend, LocalConfig, SlurmBackend, SlurmConfig,
    SqueueFormat,
};
use vmctl::integrator::{Integrator, IntegratorConfig, Policy};

fn config() -> IntegratorConfig {
    let launch = JobSpec::command("vmctl-launch", ["sleep", "120"])
        .queue("cluster")
        .wall_time(Duration::from_secs(180));
    let mut c = IntegratorConfig::new(
        launch,
        Policy {
            vms_per_node: 2,
            max_nodes: 3,
            min_idle_vms: 0,
        },
    );
    c.exp_queue = Some("exp".into());
    c
}

async fn launch_jobs(slurm: &SlurmBackend) -> Vec<JobId> {
    slurm
        .list(
            &JobQuery::active()
                .in_queue("cluster")
                .with_name_prefix("vmctl-launch"),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect()
}

#[test]
fn a_restarted_integrator_never_submits_twice() {
    let cluster = SlurmCluster::shared();
    run(async {
        let slurm = Arc::new(SlurmBackend::new(SlurmConfig {
            runner: cluster.runner(),
            format: SqueueFormat::Auto,
        }));
        // A running user job, and three user jobs held behind it: 4 slots of
        // demand at 2 VMs per node = 2 nodes.
        let blocker = slurm
            .submit(&JobSpec::command("user-blocker", ["sleep", "120"]).queue("exp"))
            .await
            .unwrap();
        wait_running(&*slurm, &blocker).await;
        let mut user_jobs = vec![blocker.clone()];
        for i in 0..3 {
            let id = slurm
                .submit(
                    &JobSpec::command(format!("user-{i}"), ["true"])
                        .queue("exp")
                        .after_ok(blocker.clone()),
                )
                .await
                .unwrap();
            user_jobs.push(id);
        }

        let first = Integrator::new(slurm.clone(), slurm.clone(), config()).unwrap();
        let report = first.cycle().await.unwrap();
        assert_eq!(report.observation.user_pending, 3, "{report:?}");
        assert_eq!(report.observation.user_running, 1, "{report:?}");
        assert_eq!(report.submitted.len(), 2, "{report:?}");
        drop(first);

        // Restart: a new integrator with no memory of the first.
        for _ in 0..2 {
            let again = Integrator::new(slurm.clone(), slurm.clone(), config()).unwrap();
            let report = again.cycle().await.unwrap();
            assert_eq!(
                report.observation.launch_pending + report.observation.launch_running,
                2,
                "{report:?}"
            );
            assert!(report.submitted.is_empty(), "submitted twice: {report:?}");
            assert!(report.decision.reason().contains("already"), "{report:?}");
        }
        assert_eq!(launch_jobs(&slurm).await.len(), 2);

        // More demand: two more user jobs need one more node; dry-run only
        // says so, the real cycle submits it, max_nodes caps the rest.
        for i in 3..5 {
            let id = slurm
                .submit(
                    &JobSpec::command(format!("user-{i}"), ["true"])
                        .queue("exp")
                        .after_ok(blocker.clone()),
                )
                .await
                .unwrap();
            user_jobs.push(id);
        }
        let mut dry = config();
        dry.dry_run = true;
        let report = Integrator::new(slurm.clone(), slurm.clone(), dry)
            .unwrap()
            .cycle()
            .await
            .unwrap();
        assert_eq!(report.decision.count(), 1, "{report:?}");
        assert!(report.submitted.is_empty());
        assert_eq!(
            launch_jobs(&slurm).await.len(),
            2,
            "dry-run submitted something"
        );
        let report = Integrator::new(slurm.clone(), slurm.clone(), config())
            .unwrap()
            .cycle()
            .await
            .unwrap();
        assert_eq!(report.submitted.len(), 1, "{report:?}");
        assert_eq!(launch_jobs(&slurm).await.len(), 3);

        for id in launch_jobs(&slurm).await.iter().chain(&user_jobs) {
            let _ = slurm.cancel(id).await;
        }
    });
}

#[test]
fn the_run_loop_stops_and_dry_run_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let local = |n: &str| {
            LocalBackend::new(LocalConfig {
                max_running: 1,
                spool: dir.path().join(n),
                workdir: dir.path().to_path_buf(),
                ..LocalConfig::default()
            })
            .unwrap()
        };
        let exp = local("exp");
        let cluster = local("cluster");
        exp.submit(&JobSpec::command("user-a", ["sleep", "30"]))
            .await
            .unwrap();
        exp.submit(&JobSpec::command("user-b", ["true"]))
            .await
            .unwrap();
        // The integrator's own jobs in the experiment's queue are not demand.
        exp.submit(&JobSpec::command("vmctl-shutdown-block", ["true"]))
            .await
            .unwrap();

        let mut c = IntegratorConfig::new(
            JobSpec::command("vmctl-launch", ["sleep", "30"]),
            Policy {
                vms_per_node: 1,
                max_nodes: 5,
                min_idle_vms: 1,
            },
        );
        c.cluster_queue = None;
        c.period = Duration::from_millis(50);
        c.dry_run = true;
        let integrator = Integrator::new(exp.clone(), cluster.clone(), c).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut reports = Vec::new();
        let looping = integrator.run(stop_rx, |r| {
            reports.push(r.clone());
        });
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            stop_tx.send(true).unwrap();
        };
        tokio::join!(looping, stopper);
        assert!(reports.len() >= 3, "{reports:?}");
        for r in &reports {
            assert!(r.dry_run && r.submitted.is_empty());
            // user-a running + user-b pending (one slot) + 1 idle = 3 nodes.
            assert_eq!(r.decision.count(), 3, "{r:?}");
        }
        assert!(cluster.list(&JobQuery::all()).await.unwrap().is_empty());
    });
}

/// Idle VM blocks are shut down through the experiment's own batch system,
/// once: a restarted integrator recognises the shutdown job by its name.
#[test]
fn idle_blocks_get_one_shutdown_job_each() {
    use vmctl::integrator::BlockStatus;
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let local = |n: &str| {
            LocalBackend::new(LocalConfig {
                spool: dir.path().join(n),
                workdir: dir.path().to_path_buf(),
                ..LocalConfig::default()
            })
            .unwrap()
        };
        let exp = local("exp");
        let cluster = local("cluster");
        let fleet = vec![
            BlockStatus {
                block: "node-1".into(),
                vms_ready: 2,
                vms_busy: 0,
            },
            BlockStatus {
                block: "node-2".into(),
                vms_ready: 2,
                vms_busy: 1,
            },
        ];
        let marker = dir.path().join("shutdown-{block}");
        let make = |dry_run: bool| {
            let mut c = IntegratorConfig::new(
                JobSpec::command("vmctl-launch", ["true"]),
                Policy {
                    vms_per_node: 2,
                    max_nodes: 2,
                    min_idle_vms: 0,
                },
            );
            c.cluster_queue = None;
            c.dry_run = dry_run;
            // A stand-in for the real shutdown job: note the block, then
            // stay queued a while, as a real one would until it ran.
            c.shutdown_job = Some(JobSpec::script(
                "x",
                format!("echo \"$VMCTL_BLOCK\" > '{}'\nsleep 30\n", marker.display()),
            ));
            Integrator::new(exp.clone(), cluster.clone(), c)
                .unwrap()
                .with_fleet(fleet.clone())
        };

        let report = make(true).cycle().await.unwrap();
        assert_eq!(report.shutdowns.len(), 1, "{report:?}");
        assert!(report.shutdown_jobs.is_empty(), "dry-run submitted");

        let report = make(false).cycle().await.unwrap();
        assert_eq!(report.shutdowns.len(), 1, "{report:?}");
        assert_eq!(report.shutdowns[0].block, "node-1");
        assert_eq!(report.shutdown_jobs.len(), 1);
        let job = wait_running(&exp, &report.shutdown_jobs[0]).await;
        assert_eq!(job.name, "vmctl-shutdown-node-1");
        let noted = batch_support::read_output(&dir.path().join("shutdown-node-1")).await;
        assert_eq!(noted.trim(), "node-1");
        // The shutdown job is the integrator's own: not demand for a launch.
        assert_eq!(report.observation.user_running, 0);

        // Restarted: the running shutdown job is recognised, nothing new.
        let report = make(false).cycle().await.unwrap();
        assert!(report.shutdowns.is_empty(), "{report:?}");
        assert!(report.shutdown_jobs.is_empty());
        let all = exp.list(&JobQuery::all()).await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(cluster.list(&JobQuery::all()).await.unwrap().is_empty());
    });
}
