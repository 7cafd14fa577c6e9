//! Real QEMU (TCG here, KVM where it works) running the tiny test guest.
//! Needs `scripts/install-qemu.sh` and `scripts/build-test-guest.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::*;
use vmctl::net::VmAddress;
use vmctl::qemu::{Drive, Serial};
use vmctl::vm::{Ended, PowerDownPolicy, Vm, VmOptions, VmState};

/// The guest boots to its ready line (which shows the MAC we gave it and the
/// IP derived by vmctl's rule), pauses and resumes, and powers itself off on
/// the ACPI power button: a guest-initiated SHUTDOWN.
#[tokio::test]
async fn guest_boots_to_ready_and_powers_down_gracefully() {
    init_tracing();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let addr = VmAddress::new(0, 3).unwrap();
        let log = dir.path().join("console.log");
        let spec = guest_spec("graceful", dir.path(), "")
            .mac(addr.mac())
            .serial(Serial::PipeAndLog(log.clone()));
        let t0 = Instant::now();
        let vm = Vm::launch(spec, VmOptions::default().ready_when(guest_ready()))
            .await
            .unwrap();
        let mut states = vm.subscribe();
        let qmp_up = t0.elapsed();
        vm.wait_ready(READY_TIMEOUT).await.unwrap();
        let boot = t0.elapsed();
        assert_eq!(vm.state(), VmState::Ready);
        let expected = format!("GUEST-READY mac={} ip={}", addr.mac(), addr.ip());
        assert!(
            vm.console_tail().contains(&expected),
            "expected {expected:?} in the console:\n{}",
            vm.console_tail()
        );

        vm.pause().await.unwrap();
        assert_eq!(vm.state(), VmState::Paused);
        assert_eq!(vm.query_status().await.unwrap().status, "paused");
        vm.resume().await.unwrap();
        assert_eq!(vm.state(), VmState::Ready);
        assert!(vm.query_status().await.unwrap().running);

        let t1 = Instant::now();
        let ended = vm.power_down(&PowerDownPolicy::default()).await.unwrap();
        let down = t1.elapsed();
        match &ended {
            Ended::Graceful(ev) => {
                assert!(ev.guest, "{ev:?}");
                assert_eq!(ev.reason, "guest-shutdown");
            }
            other => panic!("expected a graceful end, got {other:?}"),
        }
        assert_eq!(vm.state(), VmState::Stopped(ended.clone()));
        states.mark_changed();
        assert!(states.borrow_and_update().is_final());
        assert!(vm.console_tail().contains("GUEST-POWERBUTTON"));
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains(&expected), "console log file:\n{logged}");
        assert!(!vm.spec().qmp_socket.exists(), "QMP socket left behind");
        eprintln!(
            "MEASURED accel={} qmp_up_ms={} boot_to_ready_ms={} powerdown_to_exit_ms={}",
            vm.accel().accel,
            qmp_up.as_millis(),
            boot.as_millis(),
            down.as_millis()
        );
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// With `snapshot=on` the guest's writes to /dev/vda go to a temporary
/// overlay: the base image stays byte for byte the same.
#[tokio::test]
async fn guest_disk_writes_do_not_reach_the_snapshot_base_image() {
    init_tracing();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("base.raw");
        let original: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&image, &original).unwrap();
        let before = checksum(&std::fs::read(&image).unwrap());

        // This VM's console goes to a file that QEMU writes and vmctl follows.
        let spec = guest_spec("snapshot", dir.path(), "writedisk=1")
            .drive(Drive::new(&image))
            .serial(Serial::File(dir.path().join("console.log")));
        assert!(spec.drives[0].snapshot, "snapshot must be the default");
        let vm = Vm::launch(spec, VmOptions::default().ready_when(guest_ready()))
            .await
            .unwrap();
        vm.wait_ready(READY_TIMEOUT).await.unwrap();
        assert!(
            vm.console_tail().contains("GUEST-DISK-WRITTEN"),
            "the guest did not write its disk:\n{}",
            vm.console_tail()
        );
        let ended = vm.power_down(&PowerDownPolicy::default()).await.unwrap();
        assert!(matches!(ended, Ended::Graceful(_)), "{ended:?}");

        let after = checksum(&std::fs::read(&image).unwrap());
        assert_eq!(before, after, "the base image changed");
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// Killing QEMU behind the VM's back is reported as a crash, with the exit
/// status and the console's last lines, to a subscriber.
#[tokio::test]
async fn sigkill_of_qemu_is_reported_as_crashed() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    init_tracing();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let vm = Vm::launch(
            guest_spec("crash", dir.path(), ""),
            VmOptions::default().ready_when(guest_ready()),
        )
        .await
        .unwrap();
        vm.wait_ready(READY_TIMEOUT).await.unwrap();
        let mut subscriber = vm.subscribe();
        let pid = i32::try_from(vm.pid().unwrap()).unwrap();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();

        let state = subscriber
            .wait_for(VmState::is_final)
            .await
            .unwrap()
            .clone();
        let VmState::Crashed(info) = state else {
            panic!("expected Crashed, got {state}");
        };
        assert_eq!(info.exit_status.signal, Some(9), "{info}");
        assert!(info.console_tail.contains("GUEST-READY"), "{info:?}");
        // A power-down request now reports the crash instead of hanging.
        let err = vm
            .power_down(&PowerDownPolicy::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("crashed"), "{err}");
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// A guest that powers itself off without being asked ended cleanly: the
/// watcher reports a graceful stop, not a crash.
#[tokio::test]
async fn guest_that_powers_off_by_itself_is_stopped_not_crashed() {
    init_tracing();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let vm = Vm::launch(
            guest_spec("self-off", dir.path(), "poweroffafter=1"),
            VmOptions::default().ready_when(guest_ready()),
        )
        .await
        .unwrap();
        vm.wait_ready(READY_TIMEOUT).await.unwrap();
        match vm.wait_stopped().await {
            VmState::Stopped(Ended::Graceful(ev)) => assert!(ev.guest, "{ev:?}"),
            other => panic!("expected a graceful stop, got {other}"),
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// FNV-1a, enough to compare two versions of a file.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
