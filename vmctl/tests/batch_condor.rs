//! The HTCondor backend against a real personal HTCondor 23.9 (Debian 13's
//! `htcondor` in the chroot that `scripts/setup-condor.sh` builds, started
//! by the test with `scripts/condor-local.sh`). Every condor command runs as
//! the non-root user `tester` through the prefix
//! `chroot ROOT runuser -u tester --`: HTCondor refuses root's jobs.
//! Needs root and `scripts/setup-condor.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch_support;

use std::time::Duration;

use batch_support::{read_output, run, wait_finished, wait_running, CondorPool};
use vmctl::batch::{
    Batch, BatchError, CondorBackend, CondorConfig, JobId, JobQuery, JobSpec, JobState,
};

fn backend(pool: &CondorPool, name: &str) -> (CondorBackend, vmctl::batch::StageDir) {
    let stage = pool.stage(name);
    let b = CondorBackend::new(CondorConfig {
        runner: pool.runner(),
        stage: stage.clone(),
        history_limit: 200,
    });
    (b, stage)
}

/// One test, so that one personal condor serves it even when every test
/// runs in its own process (cargo nextest).
#[test]
fn condor_backend_against_a_personal_condor() {
    let pool = CondorPool::start();
    run(async {
        submit_list_output_and_failure_as_non_root(&pool).await;
        an_array_and_condor_rm(&pool).await;
    });
    drop(pool);
}

async fn submit_list_output_and_failure_as_non_root(pool: &CondorPool) {
    let (b, stage) = backend(pool, "basic");
    let ok = JobSpec::command("condor-ok", ["sh", "-c", "echo \"$WORD as $(id -un)\""])
        .env("WORD", "hello condor")
        .cpus(1)
        .memory_mib(64)
        .wall_time(Duration::from_secs(120))
        .comment("rrpc-test")
        .stdout(stage.remote.join("ok-{id}.out"));
    let ok_id = b.submit(&ok).await.unwrap();
    let fail_id = b
        .submit(&JobSpec::script("condor-fails", "exit 3"))
        .await
        .unwrap();

    let job = wait_finished(&b, &ok_id, 1).await.remove(0);
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    assert_eq!(job.raw_state, "Completed");
    assert_eq!(job.name, "condor-ok");
    assert_eq!(job.comment.as_deref(), Some("rrpc-test"));
    assert_eq!(job.exit_code, Some(0));
    let out = read_output(&stage.local.join(format!("ok-{ok_id}.out"))).await;
    assert_eq!(out.trim(), "hello condor as tester");

    let job = wait_finished(&b, &fail_id, 1).await.remove(0);
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(job.exit_code, Some(3));
}

async fn an_array_and_condor_rm(pool: &CondorPool) {
    let (b, stage) = backend(pool, "array");
    let arr = b
        .submit(
            &JobSpec::script("condor-arr", "echo \"index=$BATCH_ARRAY_INDEX\"")
                .array(2)
                .stdout(stage.remote.join("arr-{id}-{index}.out")),
        )
        .await
        .unwrap();
    let sleeper = b
        .submit(&JobSpec::command("condor-sleeper", ["sleep", "300"]))
        .await
        .unwrap();

    let tasks = wait_finished(&b, &arr, 2).await;
    assert!(
        tasks.iter().all(|t| t.state == JobState::Completed),
        "{tasks:?}"
    );
    for i in 0..2 {
        let out = read_output(&stage.local.join(format!("arr-{arr}-{i}.out"))).await;
        assert_eq!(out.trim(), format!("index={i}"));
    }

    let running = wait_running(&b, &sleeper).await;
    assert_eq!(running.id, JobId(format!("{sleeper}.0")));
    assert!(b
        .list(&JobQuery::active())
        .await
        .unwrap()
        .iter()
        .any(|j| j.name == "condor-sleeper"));
    b.cancel(&sleeper).await.unwrap();
    let gone = wait_finished(&b, &sleeper, 1).await.remove(0);
    assert_eq!(gone.state, JobState::Cancelled, "{gone:?}");
    assert_eq!(gone.raw_state, "Removed");

    // What condor cannot express is refused clearly, before any command.
    let e = b
        .submit(&JobSpec::command("x", ["true"]).after_ok(arr.clone()))
        .await
        .unwrap_err();
    assert!(matches!(e, BatchError::Unsupported { .. }), "{e}");
}
