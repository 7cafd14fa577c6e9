//! Out of file descriptors, the server still answers: a client that
//! arrives is told why it is turned away instead of hanging in the backlog.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

mod common;

use rrpc_client::Error;
use tokio::process::{Child, Command};

async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// The binary with at most `fds` descriptors, on a free port.
async fn start_server(fds: u32) -> (Child, String) {
    let script = format!("ulimit -n {fds} && exec \"$0\" --port 0",);
    let mut child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_rrpc-server")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = common::ready_addr(&mut child).await;
    (child, addr)
}

#[tokio::test]
async fn a_server_out_of_descriptors_refuses_newcomers_with_the_reason() {
    within(60, async {
        let (mut child, addr) = start_server(64).await;
        let hog = rrpc_client::connect(&addr).await.unwrap();
        let fs = hog.root().get("fs").await.unwrap().into_proxy().unwrap();
        // Take every descriptor the server has left.
        let mut files = Vec::new();
        let exhausted = loop {
            match fs.call("open", ("/dev/null",)).await {
                Ok(file) => files.push(file),
                Err(e) => break e,
            }
            assert!(files.len() < 1000, "the descriptor limit was not applied");
        };
        assert!(exhausted.remote().is_some(), "{exhausted}");
        let newcomer = tokio::time::timeout(Duration::from_secs(10), rrpc_client::connect(&addr))
            .await
            .expect("a newcomer must get an answer, not hang");
        match newcomer {
            Err(Error::Refused(why)) => {
                assert!(why.contains("out of file descriptors"), "{why}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Once descriptors are free again, clients are served.
        drop(files);
        let mut served = None;
        for _ in 0..200 {
            if let Ok(conn) = rrpc_client::connect(&addr).await {
                served = Some(conn);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let served = served.expect("served again after the files were released");
        assert!(served.root().call("MyClass", (0,)).await.is_ok());
        child.start_kill().unwrap();
        let _ = child.wait().await;
    })
    .await
}
