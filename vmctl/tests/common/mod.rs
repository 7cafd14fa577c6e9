//! Shared helpers of the real-QEMU tests: find QEMU and the test guest, and
//! fail with a clear message (never pass silently) when they are missing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rrpc_client::{Function, Value};
use tokio::sync::mpsc;
use vmctl::console::ReadyPattern;
use vmctl::integrator::service::Event;
use vmctl::qemu::VmSpec;

/// Every test's overall limit.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the guest may take to boot (TCG on a loaded 2-core box).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("vmctl=info")),
        )
        .with_test_writer()
        .try_init();
}

/// The QEMU binary (`VMCTL_QEMU` or `qemu-system-x86_64` in `PATH`).
pub fn require_qemu() {
    let qemu = std::env::var_os(vmctl::qemu::QEMU_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(vmctl::qemu::DEFAULT_QEMU));
    let found = if qemu.components().count() > 1 {
        qemu.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(&qemu).is_file()))
            .unwrap_or(false)
    };
    assert!(
        found,
        "QEMU ({}) not found: run `scripts/install-qemu.sh` as root, or set {} to the binary",
        qemu.display(),
        vmctl::qemu::QEMU_ENV
    );
}

/// The test guest's directory: `VMCTL_TEST_GUEST_DIR`, or the default of
/// `scripts/build-test-guest.sh` (`<repo>/target/test-guest`).
pub fn guest_dir() -> PathBuf {
    require_qemu();
    let dir = std::env::var_os("VMCTL_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("test-guest")
        });
    for f in ["vmlinux", "initrd.gz"] {
        assert!(
            dir.join(f).is_file(),
            "test guest file {} is missing: run `scripts/build-test-guest.sh` \
             (or set VMCTL_TEST_GUEST_DIR to its output directory)",
            dir.join(f).display()
        );
    }
    dir
}

/// A spec that boots the tiny test guest with extra kernel arguments.
pub fn guest_spec(name: &str, run_dir: &Path, append: &str) -> VmSpec {
    let g = guest_dir();
    VmSpec::new(name, run_dir).unwrap().kernel(
        g.join("vmlinux"),
        Some(g.join("initrd.gz")),
        format!("console=ttyS0 quiet panic=-1 {append}").trim_end(),
    )
}

/// The guest's readiness line.
pub fn guest_ready() -> ReadyPattern {
    ReadyPattern::regex(r"^GUEST-READY mac=\S+ ip=\S+").unwrap()
}

/// A client callback that forwards every integrator event to a channel
/// (pass it to the integrator's `subscribe`).
pub fn recorder() -> (Value, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let f = Function::from_async("on_event", move |_cx, mut args| {
        let tx = tx.clone();
        async move {
            let event: Event = args.take(0, "event")?;
            let _ = tx.send(event);
            Ok(())
        }
    });
    (f.into_value(), rx)
}

/// The next event of one of `kinds`, within `within` (the others are
/// logged and skipped).
pub async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    kinds: &[&str],
    within: Duration,
) -> Event {
    tokio::time::timeout(within, async {
        loop {
            let e = rx.recv().await.expect("the subscription ended");
            eprintln!("event {}: {}", e.kind, e.detail);
            if kinds.contains(&e.kind.as_str()) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kinds:?} event within {within:?}"))
}
