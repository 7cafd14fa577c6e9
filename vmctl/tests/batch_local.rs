//! The local backend on its own: jobs as child processes of the test, with
//! bounded concurrency, states, output files, arrays, dependencies, wall
//! time, and cancel killing the whole process group.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch_support;

use std::path::Path;
use std::time::Duration;

use batch_support::{read_output, run, wait_finished, wait_running};
use vmctl::batch::{
    Batch, BatchError, JobId, JobQuery, JobSpec, JobState, LocalBackend, LocalConfig,
};

fn backend(max_running: usize, dir: &Path) -> LocalBackend {
    LocalBackend::new(LocalConfig {
        max_running,
        spool: dir.join("spool"),
        workdir: dir.to_path_buf(),
        kill_grace: Duration::from_secs(2),
        ..LocalConfig::default()
    })
    .unwrap()
}

fn alive(pid: i32) -> bool {
    // A zombie counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn output_env_states_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let b = backend(2, dir.path());
        let ok = b
            .submit(
                &JobSpec::script("hello", "echo \"$WORD in $(pwd)\"; echo err >&2")
                    .env("WORD", "hi there")
                    .comment("c1")
                    .stdout("out-{id}.txt"),
            )
            .await
            .unwrap();
        let bad = b
            .submit(&JobSpec::command("bad", ["sh", "-c", "exit 7"]))
            .await
            .unwrap();
        let job = wait_finished(&b, &ok, 1).await.remove(0);
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.queue.as_deref(), Some("local"));
        assert_eq!(job.comment.as_deref(), Some("c1"));
        let out = read_output(&dir.path().join(format!("out-{ok}.txt"))).await;
        assert_eq!(out, format!("hi there in {}\nerr\n", dir.path().display()));
        let job = wait_finished(&b, &bad, 1).await.remove(0);
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.exit_code, Some(7));
        assert_eq!(job.raw_state, "FAILED (exit 7)");
    });
}

#[test]
fn concurrency_is_bounded_and_cancel_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let b = backend(1, dir.path());
        let pidfile = dir.path().join("grandchild.pid");
        let first = b
            .submit(&JobSpec::script(
                "first",
                format!("sleep 300 &\necho $! > '{}'\nwait\n", pidfile.display()),
            ))
            .await
            .unwrap();
        let second = b
            .submit(&JobSpec::command("second", ["true"]))
            .await
            .unwrap();
        wait_running(&b, &first).await;
        let grandchild: i32 = read_output(&pidfile).await.trim().parse().unwrap();
        assert!(alive(grandchild));
        // One slot: the second job waits.
        let waiting = b.list(&JobQuery::id(&second)).await.unwrap().remove(0);
        assert_eq!(waiting.state, JobState::Pending);

        b.cancel(&first).await.unwrap();
        let job = wait_finished(&b, &first, 1).await.remove(0);
        assert_eq!(job.state, JobState::Cancelled);
        assert!(
            !alive(grandchild),
            "the job's background child survived the cancel"
        );
        let job = wait_finished(&b, &second, 1).await.remove(0);
        assert_eq!(job.state, JobState::Completed);

        // Cancelling a pending job, and an unknown id.
        let blocker = b
            .submit(&JobSpec::command("blocker", ["sleep", "300"]))
            .await
            .unwrap();
        let queued = b
            .submit(&JobSpec::command("queued", ["true"]))
            .await
            .unwrap();
        b.cancel(&queued).await.unwrap();
        assert_eq!(
            b.list(&JobQuery::id(&queued)).await.unwrap()[0].state,
            JobState::Cancelled
        );
        b.cancel(&blocker).await.unwrap();
        assert!(matches!(
            b.cancel(&JobId("999".into())).await,
            Err(BatchError::NotFound(_))
        ));
    });
}

#[test]
fn arrays_dependencies_and_wall_time() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let b = backend(2, dir.path());
        let arr = b
            .submit(
                &JobSpec::script("arr", "echo \"i=$BATCH_ARRAY_INDEX\"")
                    .array(3)
                    .stdout("arr-{id}-{index}.out"),
            )
            .await
            .unwrap();
        let after = b
            .submit(&JobSpec::command("after", ["true"]).after_ok(arr.clone()))
            .await
            .unwrap();
        let tasks = wait_finished(&b, &arr, 3).await;
        assert_eq!(tasks.len(), 3);
        for i in 0..3 {
            let out = read_output(&dir.path().join(format!("arr-{arr}-{i}.out"))).await;
            assert_eq!(out.trim(), format!("i={i}"));
        }
        assert_eq!(
            wait_finished(&b, &after, 1).await[0].state,
            JobState::Completed
        );

        // A dependency that fails: the dependent job can never run.
        let fails = b
            .submit(&JobSpec::command("fails", ["false"]))
            .await
            .unwrap();
        let orphan = b
            .submit(&JobSpec::command("orphan", ["true"]).after_ok(fails))
            .await
            .unwrap();
        let job = wait_finished(&b, &orphan, 1).await.remove(0);
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(job.raw_state, "DEPENDENCY_NEVER_SATISFIED");

        // Wall time.
        let slow = b
            .submit(
                &JobSpec::command("slow", ["sleep", "300"]).wall_time(Duration::from_millis(500)),
            )
            .await
            .unwrap();
        let job = wait_finished(&b, &slow, 1).await.remove(0);
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.raw_state, "TIMEOUT");
    });
}

#[test]
fn dropping_the_backend_kills_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let b = backend(1, dir.path());
        let pidfile = dir.path().join("pid");
        let id = b
            .submit(&JobSpec::script(
                "long",
                format!("echo $$ > '{}'\nexec sleep 300\n", pidfile.display()),
            ))
            .await
            .unwrap();
        wait_running(&b, &id).await;
        let pid: i32 = read_output(&pidfile).await.trim().parse().unwrap();
        assert!(alive(pid));
        drop(b);
        for _ in 0..40 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the job outlived its backend");
    });
}

#[test]
fn finished_jobs_are_forgotten_after_a_while() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let b = LocalBackend::new(LocalConfig {
            spool: dir.path().join("spool"),
            workdir: dir.path().to_path_buf(),
            keep_finished: Duration::from_millis(300),
            ..LocalConfig::default()
        })
        .unwrap();
        let old = b.submit(&JobSpec::command("old", ["true"])).await.unwrap();
        wait_finished(&b, &old, 1).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let new = b
            .submit(&JobSpec::command("new", ["sleep", "5"]))
            .await
            .unwrap();
        let ids: Vec<JobId> = b
            .list(&JobQuery::all())
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(ids, [new]);
    });
}
