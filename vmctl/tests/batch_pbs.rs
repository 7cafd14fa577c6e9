//! The PBS backend against the `qsub`/`qstat`/`qdel` of Slurm's Torque
//! wrappers (Debian's `slurm-wlm-torque`), on a real single-host Slurm.
//!
//! This is PBS's command-line interface over Slurm, not PBS itself: no PBS,
//! OpenPBS or Torque package exists for Debian 12. The wrappers report every
//! finished job — completed, failed or cancelled — as state `C` with no exit
//! status, and give array tasks plain job ids; the assertions say so where
//! it matters. Needs root and `scripts/setup-slurm.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch_support;

use std::time::Duration;

use batch_support::{read_output, run, wait_finished, wait_running, SlurmCluster};
use vmctl::batch::{
    Batch, BatchError, JobQuery, JobSpec, JobState, PbsBackend, PbsConfig, StageDir,
};

fn backend(slurm: &SlurmCluster) -> PbsBackend {
    PbsBackend::new(PbsConfig {
        runner: slurm.runner(),
        stage: StageDir::here(slurm.scratch("pbs-stage")),
    })
}

#[test]
fn qsub_qstat_and_output_file() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm);
        let dir = slurm.scratch("pbs-basic");
        let spec = JobSpec::script("pbs-basic", "echo \"pbs says $WORD from $(pwd)\"")
            .queue("exp")
            .nodes(1)
            .cpus(1)
            .memory_mib(64)
            .wall_time(Duration::from_secs(90))
            .env("WORD", "hi there")
            .workdir(&dir)
            .stdout(dir.join("out.txt"));
        let id = b.submit(&spec).await.unwrap();
        let job = wait_finished(&b, &id, 1).await.remove(0);
        assert_eq!(job.name, "pbs-basic");
        assert_eq!(job.queue.as_deref(), Some("exp"));
        assert_eq!(job.raw_state, "C");
        assert_eq!(job.state, JobState::Completed);
        let out = read_output(&dir.join("out.txt")).await;
        assert_eq!(
            out.trim(),
            format!("pbs says hi there from {}", dir.display())
        );
    });
}

#[test]
fn qdel_ends_a_running_job() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm);
        let id = b
            .submit(&JobSpec::command("pbs-sleeper", ["sleep", "300"]).queue("cluster"))
            .await
            .unwrap();
        let running = wait_running(&b, &id).await;
        assert_eq!(running.raw_state, "R");
        assert!(b
            .list(&JobQuery::active().in_queue("cluster"))
            .await
            .unwrap()
            .iter()
            .any(|j| j.id == id));
        b.cancel(&id).await.unwrap();
        // The wrappers show a cancelled job as `C` like any finished job.
        let job = wait_finished(&b, &id, 1).await.remove(0);
        assert_eq!(job.raw_state, "C");
    });
}

#[test]
fn a_dependency_holds_a_job_in_the_queue() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm);
        let dir = slurm.scratch("pbs-dep");
        let first = b
            .submit(&JobSpec::command("pbs-first", ["sleep", "3"]))
            .await
            .unwrap();
        let second = b
            .submit(
                &JobSpec::command("pbs-second", ["echo", "after"])
                    .after_ok(first.clone())
                    .stdout(dir.join("second.out")),
            )
            .await
            .unwrap();
        let waiting = b.list(&JobQuery::id(&second)).await.unwrap();
        assert_eq!(waiting[0].raw_state, "Q", "{waiting:?}");
        assert_eq!(waiting[0].state, JobState::Pending);
        wait_finished(&b, &second, 1).await;
        assert_eq!(read_output(&dir.join("second.out")).await.trim(), "after");
    });
}

#[test]
fn an_array_and_a_failure() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm);
        let dir = slurm.scratch("pbs-array");
        let id = b
            .submit(
                &JobSpec::script(
                    "pbs-array",
                    format!(
                        "touch '{}/task-'$BATCH_ARRAY_INDEX\nexit 3\n",
                        dir.display()
                    ),
                )
                .array(2),
            )
            .await
            .unwrap();
        // The wrappers list array tasks under plain ids: find them by name.
        let t0 = std::time::Instant::now();
        loop {
            let jobs = b
                .list(&JobQuery {
                    name: Some("pbs-array".into()),
                    include_finished: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            if jobs.len() == 2 && jobs.iter().all(|j| !j.state.is_active()) {
                // Exit 3, yet `C`: the wrappers do not report exit status.
                assert!(jobs.iter().all(|j| j.raw_state == "C"), "{jobs:?}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "array {id} did not finish: {jobs:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(dir.join("task-0").exists() && dir.join("task-1").exists());

        // Placeholders in output paths have no PBS spelling: a clear error.
        let e = b
            .submit(&JobSpec::command("x", ["true"]).stdout("/tmp/{id}.out"))
            .await
            .unwrap_err();
        assert!(matches!(e, BatchError::Unsupported { .. }), "{e}");
    });
}
