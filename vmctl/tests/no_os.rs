//! Real QEMU with no OS at all (no kernel, no disk): only firmware runs.
//! Needs `scripts/install-qemu.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use vmctl::qemu::{Network, Serial, VmSpec};
use vmctl::vm::{Ended, PowerDownPolicy, Vm, VmOptions, VmState};

fn bare_spec(name: &str, dir: &std::path::Path) -> VmSpec {
    VmSpec::new(name, dir)
        .unwrap()
        .memory_mib(64)
        .network(Network::None)
        .serial(Serial::None)
}

/// Nothing listens for the ACPI power button, so the power button presses
/// are repeated until the grace period ends and QEMU is told to quit.
#[tokio::test]
async fn vm_without_os_ignores_powerdown_and_is_escalated_to_quit() {
    init_tracing();
    require_qemu();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let vm = Vm::launch(bare_spec("no-os", dir.path()), VmOptions::default())
            .await
            .unwrap();
        assert_eq!(
            vm.state(),
            VmState::Ready,
            "no pattern: ready once QMP answers"
        );
        let status = vm.query_status().await.unwrap();
        assert!(status.running, "{status:?}");

        let mut events = vm.qmp().subscribe();
        let policy = PowerDownPolicy {
            graceful: Duration::from_secs(2),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_millis(500),
            quit_grace: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
        };
        let t0 = Instant::now();
        let ended = vm.power_down(&policy).await.unwrap();
        let took = t0.elapsed();
        assert_eq!(ended, Ended::Quit);
        assert!(
            took >= policy.graceful,
            "quit came before the grace period: {took:?}"
        );
        assert!(
            took < policy.graceful + policy.quit_grace,
            "quit took too long: {took:?}"
        );
        // QEMU saw several presses of the power button.
        let mut powerdowns = 0;
        while let Ok(ev) = events.try_recv() {
            if ev.name == "POWERDOWN" {
                powerdowns += 1;
            }
        }
        assert!(
            powerdowns >= 2,
            "expected repeated presses, saw {powerdowns}"
        );
        eprintln!("MEASURED no_os_powerdown_to_quit_ms={}", took.as_millis());
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// Dropping a running VM kills its QEMU: nothing outlives its owner.
#[tokio::test]
async fn dropping_a_vm_kills_qemu() {
    init_tracing();
    require_qemu();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let vm = Vm::launch(bare_spec("dropped", dir.path()), VmOptions::default())
            .await
            .unwrap();
        let pid = vm.pid().unwrap();
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        assert!(proc_dir.exists());
        drop(vm);
        // The child is reaped by tokio's orphan reaper; wait until it is gone
        // (a zombie shows state Z until then).
        loop {
            match std::fs::read_to_string(proc_dir.join("stat")) {
                Err(_) => break,
                Ok(stat) if stat.contains(") Z ") => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// A QEMU that cannot start is reported with what QEMU said.
#[tokio::test]
async fn qemu_start_failure_reports_qemu_stderr() {
    init_tracing();
    require_qemu();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = bare_spec("bad", dir.path());
        spec.extra_args.push("-no-such-option".into());
        let err = Vm::launch(spec, VmOptions::default()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no-such-option"), "{text}");
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// Waiting for a console line that never comes fails after the timeout and
/// says what was awaited.
#[tokio::test]
async fn readiness_timeout_is_an_error_naming_the_wait() {
    init_tracing();
    require_qemu();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let spec = bare_spec("never-ready", dir.path()).serial(Serial::Pipe);
        let options = VmOptions::default()
            .ready_when(vmctl::console::ReadyPattern::Substring("NEVER".into()));
        let vm = Vm::launch(spec, options).await.unwrap();
        assert_eq!(vm.state(), VmState::Running);
        let err = vm.wait_ready(Duration::from_millis(500)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("never-ready") && text.contains("readiness"),
            "{text}"
        );
        assert_eq!(vm.kill().await.unwrap(), Ended::Killed);
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}
