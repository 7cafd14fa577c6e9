//! The Slurm backend against a real single-host Slurm (slurm-wlm from
//! Debian, started by the test with `scripts/slurm-local.sh`; partitions
//! `exp` and `cluster`). Needs root and `scripts/setup-slurm.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch_support;

use std::time::Duration;

use batch_support::{read_output, run, wait_finished, wait_running, SlurmCluster};
use vmctl::batch::{
    Batch, BatchError, CommandRunner, JobQuery, JobSpec, JobState, Prefix, SlurmBackend,
    SlurmConfig, SqueueFormat,
};

fn backend(slurm: &SlurmCluster, format: SqueueFormat) -> SlurmBackend {
    SlurmBackend::new(SlurmConfig {
        runner: slurm.runner(),
        format,
    })
}

#[test]
fn submit_list_and_output_file() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm, SqueueFormat::Json);
        let dir = slurm.scratch("basic");
        let spec = JobSpec::command(
            "basic",
            ["sh", "-c", "echo \"greeting=$GREETING\"; echo oops >&2"],
        )
        .queue("exp")
        .nodes(1)
        .cpus(1)
        .memory_mib(64)
        .wall_time(Duration::from_secs(120))
        .env("GREETING", "hello world")
        .comment("rrpc-test")
        .stdout(dir.join("out-{id}.txt"));
        let id = b.submit(&spec).await.unwrap();
        let jobs = wait_finished(&b, &id, 1).await;
        let job = &jobs[0];
        assert_eq!(job.state, JobState::Completed, "{job:?}");
        assert_eq!(job.raw_state, "COMPLETED");
        assert_eq!(job.name, "basic");
        assert_eq!(job.queue.as_deref(), Some("exp"));
        assert_eq!(job.comment.as_deref(), Some("rrpc-test"));
        assert_eq!(job.exit_code, Some(0));
        let out = read_output(&dir.join(format!("out-{id}.txt"))).await;
        assert!(out.contains("greeting=hello world"), "{out}");
        assert!(out.contains("oops"), "stderr joins stdout: {out}");

        // The text format lists the same job the same way.
        let text = backend(&slurm, SqueueFormat::Text);
        let listed = text.list(&JobQuery::id(&id)).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, JobState::Completed);
        assert_eq!(listed[0].comment.as_deref(), Some("rrpc-test"));
        // A finished job is not active.
        assert!(b
            .list(&JobQuery::active())
            .await
            .unwrap()
            .iter()
            .all(|j| j.id != id));
    });
}

#[test]
fn a_failing_job_is_reported_failed() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm, SqueueFormat::Auto);
        let id = b
            .submit(&JobSpec::script("fails", "echo about to fail\nexit 3\n").queue("cluster"))
            .await
            .unwrap();
        let job = wait_finished(&b, &id, 1).await.remove(0);
        assert_eq!(job.state, JobState::Failed, "{job:?}");
        assert_eq!(job.raw_state, "FAILED");
        assert_eq!(job.exit_code, Some(3));
        assert_eq!(job.queue.as_deref(), Some("cluster"));
    });
}

#[test]
fn cancel_a_running_job() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm, SqueueFormat::Json);
        let id = b
            .submit(&JobSpec::command("sleeper", ["sleep", "300"]).queue("cluster"))
            .await
            .unwrap();
        let running = wait_running(&b, &id).await;
        assert_eq!(running.raw_state, "RUNNING");
        assert!(b
            .list(&JobQuery::active().in_queue("cluster"))
            .await
            .unwrap()
            .iter()
            .any(|j| j.id == id));
        b.cancel(&id).await.unwrap();
        let job = wait_finished(&b, &id, 1).await.remove(0);
        assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    });
}

#[test]
fn an_array_runs_every_index() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm, SqueueFormat::Json);
        let dir = slurm.scratch("array");
        let spec = JobSpec::script("arr", "echo \"index=$BATCH_ARRAY_INDEX\"")
            .array(3)
            .stdout(dir.join("arr-{id}-{index}.out"));
        let id = b.submit(&spec).await.unwrap();
        let tasks = wait_finished(&b, &id, 3).await;
        assert_eq!(tasks.len(), 3, "{tasks:#?}");
        let mut indices: Vec<u32> = tasks
            .iter()
            .map(|t| {
                assert_eq!(t.state, JobState::Completed);
                let (parent, index) = t.array.clone().expect("an array task");
                assert_eq!(parent, id);
                index
            })
            .collect();
        indices.sort();
        assert_eq!(indices, [0, 1, 2]);
        for i in 0..3 {
            let out = read_output(&dir.join(format!("arr-{id}-{i}.out"))).await;
            assert_eq!(out.trim(), format!("index={i}"));
        }
    });
}

#[test]
fn a_dependent_job_waits_for_its_dependency() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm, SqueueFormat::Json);
        let dir = slurm.scratch("dependency");
        let marker = dir.join("first-done");
        let first = b
            .submit(&JobSpec::script(
                "first",
                format!("sleep 3\ntouch '{}'\n", marker.display()),
            ))
            .await
            .unwrap();
        let second = b
            .submit(
                &JobSpec::script(
                    "second",
                    format!("test -e '{}' && echo saw-first", marker.display()),
                )
                .after_ok(first.clone())
                .stdout(dir.join("second.out")),
            )
            .await
            .unwrap();
        let waiting = b.list(&JobQuery::id(&second)).await.unwrap();
        assert_eq!(waiting[0].state, JobState::Pending, "{waiting:?}");
        let done = wait_finished(&b, &second, 1).await.remove(0);
        assert_eq!(done.state, JobState::Completed, "{done:?}");
        assert_eq!(
            read_output(&dir.join("second.out")).await.trim(),
            "saw-first"
        );
        let first_job = b.list(&JobQuery::id(&first)).await.unwrap().remove(0);
        assert_eq!(first_job.state, JobState::Completed);
    });
}

/// A FAKE batch command, named as such: a prefix that ignores the real
/// command and prints garbage, or hangs. Proves the error names the command
/// and shows its output.
#[test]
fn malformed_output_and_hangs_give_clear_errors() {
    run(async {
        let garbage = SlurmBackend::new(SlurmConfig {
            runner: CommandRunner::new().prefix(Prefix::argv([
                "sh",
                "-c",
                "echo '<html>fake-slurm: not a job list</html>'",
                "fake-slurm-prints-garbage",
            ])),
            format: SqueueFormat::Json,
        });
        let e = garbage.list(&JobQuery::all()).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BatchError::Parse { .. }), "{msg}");
        assert!(msg.contains("squeue --json"), "{msg}");
        assert!(msg.contains("fake-slurm: not a job list"), "{msg}");
        let e = garbage
            .submit(&JobSpec::command("x", ["true"]))
            .await
            .unwrap_err();
        assert!(matches!(e, BatchError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("sbatch --parsable"), "{e}");

        let hangs = SlurmBackend::new(SlurmConfig {
            runner: CommandRunner::new()
                .prefix(Prefix::argv([
                    "sh",
                    "-c",
                    "echo fake-slurm-hangs; sleep 60",
                    "fake",
                ]))
                .timeout(Duration::from_millis(500)),
            format: SqueueFormat::Auto,
        });
        let e = hangs.list(&JobQuery::all()).await.unwrap_err();
        assert!(matches!(e, BatchError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("fake-slurm-hangs"), "{e}");

        let missing = SlurmBackend::new(SlurmConfig {
            runner: CommandRunner::new().prefix(Prefix::argv(["/nonexistent/fake-ssh"])),
            format: SqueueFormat::Text,
        });
        let e = missing.cancel(&"1".into()).await.unwrap_err();
        assert!(matches!(e, BatchError::Spawn { .. }), "{e}");
        assert!(
            e.to_string().contains("/nonexistent/fake-ssh scancel 1"),
            "{e}"
        );
    });
}

#[test]
fn slurm_errors_name_the_command() {
    let slurm = SlurmCluster::shared();
    run(async {
        let b = backend(&slurm, SqueueFormat::Json);
        let e = b
            .submit(&JobSpec::command("nowhere", ["true"]).queue("no-such-partition"))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BatchError::Failed { .. }), "{msg}");
        assert!(msg.contains("sbatch"), "{msg}");
        assert!(
            msg.contains("invalid partition") || msg.contains("no-such-partition"),
            "{msg}"
        );
    });
}

/// The commands go through a prefix that takes one shell command line, the
/// way `ssh host` does (here `sh -c`, since no sshd runs on the test host):
/// quoting of awkward arguments and the environment (`SLURM_CONF`, passed as
/// `env K=V` on the far side) survive the remote shell.
#[test]
fn through_a_remote_shell_prefix() {
    let slurm = SlurmCluster::shared();
    run(async {
        let dir = slurm.scratch("remote shell");
        let b = SlurmBackend::new(SlurmConfig {
            runner: CommandRunner::new()
                .prefix(Prefix::shell(["env", "-u", "SLURM_CONF", "sh", "-c"]))
                .env("SLURM_CONF", slurm.conf().to_string_lossy()),
            format: SqueueFormat::Auto,
        });
        let id = b
            .submit(
                &JobSpec::command("remote", ["echo", "it's a \"quoted\" $HOME; ok"])
                    .comment("with spaces and 'quotes'")
                    .stdout(dir.join("out {id}.txt")),
            )
            .await
            .unwrap();
        let job = wait_finished(&b, &id, 1).await.remove(0);
        assert_eq!(job.state, JobState::Completed, "{job:?}");
        assert_eq!(job.comment.as_deref(), Some("with spaces and 'quotes'"));
        let out = read_output(&dir.join(format!("out {id}.txt"))).await;
        assert_eq!(out.trim(), "it's a \"quoted\" $HOME; ok");
    });
}
