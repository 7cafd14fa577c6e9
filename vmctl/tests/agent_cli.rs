//! `vmctl agent`, the real binary: prints its ready line, serves the node
//! over rrpc, and on SIGTERM powers its VMs down gracefully and exits 0.
//! Needs `scripts/install-qemu.sh` and `scripts/build-test-guest.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rrpc_client::from_value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use vmctl::agent::report::VmInfo;

#[tokio::test]
async fn vmctl_agent_serves_launches_and_powers_down_on_sigterm() {
    init_tracing();
    let work = async {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .args([
                "agent",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--block",
                "11",
            ])
            .args(["--grace", "20", "--guest-dir"])
            .arg(guest_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
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

        let conn = rrpc_client::connect(addr.as_str()).await.unwrap();
        let node = conn.root().get("node").await.unwrap().into_proxy().unwrap();
        assert_eq!(node.get("block").await.unwrap().as_i64(), Some(11));
        let vm = node.call("launch", ()).await.unwrap().into_proxy().unwrap();
        let info: VmInfo = from_value(
            vm.call("wait_ready", (90.0,))
                .timeout(Duration::from_secs(100))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(info.ip, "10.200.11.2");

        let t0 = Instant::now();
        kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
        let mut rest = String::new();
        let status = tokio::time::timeout(Duration::from_secs(40), async {
            stdout.read_to_string(&mut rest).await.unwrap();
            child.wait().await.unwrap()
        })
        .await
        .expect("vmctl agent did not exit after SIGTERM");
        assert_eq!(status.code(), Some(0), "{rest}");
        assert!(rest.contains("vm-11-0: graceful"), "{rest}");
        eprintln!("MEASURED vmctl agent SIGTERM to exit {:?}", t0.elapsed());
        // The connection was closed by the stopping server.
        let err = vm.call("info", ()).await.unwrap_err();
        assert!(
            err.is_connection_lost() || matches!(err, rrpc_client::Error::Closed),
            "{err}"
        );
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}
