//! The `rrpc-server` binary as a real process: its ready line, a SIGKILL in
//! the middle of a call, and a graceful SIGTERM.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use rrpc_client::{ErrorKind, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// Starts the binary on a free port and waits for its ready line.
async fn start_server() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rrpc-server"))
        .args(["--port", "0", "--shutdown-grace", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await.unwrap().expect("the ready line");
    let addr = line
        .strip_prefix("rrpc-server listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "binds to loopback by default: {addr}"
    );
    (child, addr)
}

#[tokio::test]
async fn killing_the_server_fails_a_pending_call_at_once() {
    within(30, async {
        let (mut child, addr) = start_server().await;
        let conn = rrpc_client::connect(&addr).await.unwrap();
        let obj = conn
            .root()
            .call("MyClass", (30,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let pending = obj.call_async("f", (1,));
        let other = obj.call_async("f", (2,));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!pending.ready());
        child.start_kill().unwrap();
        let killed = Instant::now();
        let err = pending.await.unwrap_err();
        let took = killed.elapsed();
        assert!(err.is_connection_lost(), "{err}");
        assert!(took < Duration::from_millis(500), "took {took:?}");
        // Every pending call fails at once, not one by one.
        assert!(other.await.unwrap_err().is_connection_lost());
        // And new calls fail at once too.
        let err = obj.call("f", (3,)).await.unwrap_err();
        assert!(err.is_connection_lost(), "{err}");
        let _ = child.wait().await;
    })
    .await
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish_and_refuses_new_ones() {
    within(30, async {
        let (mut child, addr) = start_server().await;
        let conn = rrpc_client::connect(&addr).await.unwrap();
        let obj = conn
            .root()
            .call("MyClass", (1,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let in_flight = obj.call_async("f", (41,));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pid = child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(200)).await;
        // New calls are refused while the old one drains.
        match obj.call("f", (1,)).await {
            Err(e) => assert!(
                e.remote_kind() == Some(&ErrorKind::Refused) || e.is_connection_lost(),
                "{e}"
            ),
            Ok(v) => panic!("a call after SIGTERM was served: {v:?}"),
        }
        // The call that was running finishes with its value.
        assert_eq!(in_flight.await.unwrap(), Value::Int(42));
        let exit = child.wait().await.unwrap();
        assert!(exit.success(), "exit status {exit:?}");
        // The connection is then closed by the server, with a reason.
        let reason = conn.closed().await;
        assert!(reason.to_string().contains("shutting down"), "{reason}");
    })
    .await
}

#[tokio::test]
async fn help_describes_the_flags() {
    // A hang fails the test instead of blocking the run.
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let out = Command::new(env!("CARGO_BIN_EXE_rrpc-server"))
            .arg("--help")
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for flag in [
            "--host",
            "--port",
            "--max-frame",
            "--shutdown-grace",
            "--secret-file",
            "--allow-unauthenticated",
            "--max-connections",
            "--tls-cert",
            "--generate-certs",
            "--expose",
            "--read-only",
            "--fs-root",
        ] {
            assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn killing_the_server_at_random_points_loses_no_acknowledged_reply() {
    within(60, async {
        for round in 0..5u64 {
            let (mut child, addr) = start_server().await;
            let conn = rrpc_client::connect(&addr).await.unwrap();
            let obj = conn
                .root()
                .call("MyClass", (0,))
                .await
                .unwrap()
                .into_proxy()
                .unwrap();
            // 8 workers make calls back to back; each checks every reply.
            let mut workers = tokio::task::JoinSet::new();
            for w in 0..8i64 {
                let obj = obj.clone();
                workers.spawn(async move {
                    let (mut ok, mut lost) = (0u64, 0u64);
                    for i in 0.. {
                        let n = w * 1_000_000 + i;
                        match obj.call("f", (n,)).await {
                            Ok(v) => {
                                assert_eq!(v.as_i64(), Some(n + 1), "a wrong reply");
                                ok += 1;
                            }
                            Err(e) => {
                                assert!(e.is_connection_lost(), "{e}");
                                lost += 1;
                                break;
                            }
                        }
                    }
                    (ok, lost)
                });
            }
            // Kill at a pseudo-random point.
            let delay = 20 + (round * 37 + 11) % 120;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            child.start_kill().unwrap();
            let (mut ok, mut lost) = (0, 0);
            while let Some(done) = workers.join_next().await {
                let (o, l) = done.unwrap();
                ok += o;
                lost += l;
            }
            // Every worker ended with exactly one lost call, none hung, every
            // acknowledged reply was right.
            assert_eq!(lost, 8);
            assert!(ok > 0, "round {round}: no call completed before the kill");
            let _ = child.wait().await;
        }
    })
    .await
}

#[tokio::test]
async fn the_binary_serves_tls_with_generated_certificates_and_a_secret_from_a_file() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let generated = Command::new(env!("CARGO_BIN_EXE_rrpc-server"))
            .arg("--generate-certs")
            .arg(dir.path())
            .output()
            .await
            .unwrap();
        assert!(generated.status.success(), "{generated:?}");
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "cluster-secret\n").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rrpc-server"))
            .args(["--port", "0"])
            .arg("--tls-cert")
            .arg(dir.path().join("server.pem"))
            .arg("--tls-key")
            .arg(dir.path().join("server.key"))
            .arg("--secret-file")
            .arg(&secret_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        let addr = line
            .strip_prefix("rrpc-server listening on ")
            .unwrap()
            .to_owned();
        let tls =
            rrpc_client::tls::TlsClient::from_pem_files(&dir.path().join("ca.pem"), None).unwrap();
        let secret = rrpc_core::handshake::Secret::new("cluster-secret").unwrap();
        let options = rrpc_client::ConnectOptions::default()
            .tls(tls.clone())
            .config(rrpc_client::Config::default().with_secret(secret));
        let conn = rrpc_client::connect_with(&addr, options).await.unwrap();
        let obj = conn
            .root()
            .call("MyClass", (0,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        assert_eq!(obj.call("f", (1,)).await.unwrap(), Value::Int(2));
        let err = rrpc_client::connect_with(&addr, rrpc_client::ConnectOptions::default().tls(tls))
            .await
            .unwrap_err();
        assert!(matches!(err, rrpc_client::Error::AuthFailed(_)), "{err}");
        child.start_kill().unwrap();
        let _ = child.wait().await;
    })
    .await
}

#[tokio::test]
async fn restriction_flags_hide_services_and_guard_files() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), "in").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rrpc-server"))
            .args([
                "--port",
                "0",
                "--expose",
                "fs,sys",
                "--read-only",
                "--fs-root",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().expect("the ready line");
        let addr = line
            .strip_prefix("rrpc-server listening on ")
            .unwrap()
            .to_owned();
        let conn = rrpc_client::connect(&addr).await.unwrap();
        let root = conn.root();
        for hidden in ["proc", "script"] {
            let err = root.get(hidden).await.unwrap_err();
            assert_eq!(err.remote_kind(), Some(&ErrorKind::NotExposed), "{err}");
        }
        let fs = root.get("fs").await.unwrap().into_proxy().unwrap();
        assert_eq!(
            fs.call("read", ("in.txt",)).await.unwrap().as_str(),
            Some("in")
        );
        let err = fs.call("write", ("in.txt", "x")).await.unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(&ErrorKind::PermissionDenied),
            "{err}"
        );
        let err = fs.call("read", ("/etc/hostname",)).await.unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(&ErrorKind::PermissionDenied),
            "{err}"
        );
        let sys = root.get("sys").await.unwrap().into_proxy().unwrap();
        assert!(sys.call("hostname", ()).await.is_ok());
        child.start_kill().unwrap();
        let _ = child.wait().await;
    })
    .await
}
