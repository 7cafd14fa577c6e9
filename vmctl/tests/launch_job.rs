//! `vmctl launch-job`, the real binary, with real QEMU running the tiny
//! guest: the wall-time path and the SIGTERM path both power every VM down
//! gracefully and end with a summary. A client watches through the agent the
//! job serves. Needs `scripts/install-qemu.sh` and
//! `scripts/build-test-guest.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rrpc_client::{from_value, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use vmctl::agent::report::VmInfo;

/// A running `vmctl launch-job`; sent SIGTERM (and given time to power its
/// VMs down) if the test fails before it ended.
struct Job {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Job {
    async fn start(block: u32, extra: &[&str]) -> Job {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .args([
                "launch-job",
                "--vm-cpus",
                "1",
                "--vm-mem",
                "128",
                "--count",
                "1",
            ])
            .args(["--port", "0", "--block", &block.to_string()])
            .arg("--guest-dir")
            .arg(guest_dir())
            .args(extra)
            .env("RUST_LOG", "vmctl=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start vmctl");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        let addr = line
            .trim()
            .strip_prefix("vmctl agent listening on ")
            .unwrap_or_else(|| panic!("no ready line, got {line:?}"))
            .to_owned();
        Job {
            child,
            stdout,
            addr,
        }
    }

    /// Waits for the job to end; returns its exit code and the rest of its
    /// output.
    async fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let mut rest = String::new();
        let status = tokio::time::timeout(within, async {
            self.stdout.read_to_string(&mut rest).await.unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .expect("launch-job did not end in time");
        (status.code(), rest)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.child.id()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Connects to the job's agent and waits until its one VM is ready.
async fn wait_vm_ready(addr: &str) -> VmInfo {
    let conn = rrpc_client::connect(addr).await.unwrap();
    let node = conn.root().get("node").await.unwrap().into_proxy().unwrap();
    let Value::List(vms) = node.call("list", ()).await.unwrap() else {
        panic!("list() is not a list");
    };
    assert_eq!(
        vms.len(),
        1,
        "the job launched one VM before its ready line"
    );
    let vm = vms[0].as_proxy().unwrap();
    let info = vm
        .call("wait_ready", (90.0,))
        .timeout(Duration::from_secs(100))
        .await
        .unwrap();
    conn.close();
    from_value(info).unwrap()
}

#[tokio::test]
async fn the_wall_time_path_powers_every_vm_down_gracefully_and_exits_0() {
    init_tracing();
    let work = async {
        let t0 = Instant::now();
        // Power-down starts at 14 - 4 = 10 s; the guest boots in 3-7 s here.
        let job = Job::start(8, &["--wall-time", "14", "--grace", "4"]).await;
        let info = wait_vm_ready(&job.addr).await;
        assert_eq!(info.ip, "10.200.8.2");
        let (code, out) = job.finish(Duration::from_secs(60)).await;
        let took = t0.elapsed();
        println!("{out}");
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains("stopping because the wall time ran out"),
            "{out}"
        );
        assert!(out.contains("1 VM(s): 1 graceful"), "{out}");
        assert!(
            out.contains("vm-8-0") && out.contains("guest-shutdown"),
            "{out}"
        );
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(14),
            "the job should end between wall time minus grace and the wall time, took {took:?}"
        );
        eprintln!("MEASURED launch-job wall-time path ended after {took:?} (wall 14 s, grace 4 s)");
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

#[tokio::test]
async fn sigterm_to_launch_job_powers_every_vm_down_gracefully_and_exits_0() {
    init_tracing();
    let work = async {
        let job = Job::start(9, &["--grace", "10"]).await;
        let info = wait_vm_ready(&job.addr).await;
        assert_eq!(info.state, "ready");
        let pid = job.child.id().unwrap();
        let t1 = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        let (code, out) = job.finish(Duration::from_secs(30)).await;
        println!("{out}");
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("stopping because SIGTERM received"), "{out}");
        assert!(out.contains("1 VM(s): 1 graceful"), "{out}");
        eprintln!("MEASURED launch-job SIGTERM to exit {:?}", t1.elapsed());
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

#[tokio::test]
async fn launch_job_refuses_more_vms_than_fit_with_the_plan_in_words() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args([
            "launch-job",
            "--vm-cpus",
            "1",
            "--count",
            "100000",
            "--port",
            "0",
        ])
        .arg("--guest-dir")
        .arg(guest_dir())
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--count 100000 asks for more VMs than fit"),
        "{err}"
    );
    assert!(err.contains("20"), "the plan is explained: {err}");
}

#[test]
fn help_lists_the_subcommands() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for sub in ["plan", "agent", "launch-job"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from:\n{help}"
        );
    }
}
