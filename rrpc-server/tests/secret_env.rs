//! A server that took its secret from `RRPC_SECRET` never hands it out:
//! not through `sys.env`, not to the processes `proc` starts.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

mod common;

use rrpc_client::{Config, ConnectOptions, Value};
use rrpc_core::handshake::Secret;
use tokio::process::Command;

const SECRET: &str = "a long and very secret passphrase";

#[tokio::test]
async fn the_secret_from_the_environment_is_never_handed_out() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rrpc-server"))
            .args(["--port", "0"])
            .env("RRPC_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = common::ready_addr(&mut child).await;
        let options = ConnectOptions::default()
            .config(Config::default().with_secret(Secret::new(SECRET).unwrap()));
        let conn = rrpc_client::connect_with(&addr, options).await.unwrap();
        let sys = conn.root().get("sys").await.unwrap().into_proxy().unwrap();
        let env = sys.get("env").await.unwrap().into_proxy().unwrap();
        assert_eq!(
            env.call("get", ("RRPC_SECRET",)).await.unwrap(),
            Value::Unit
        );
        let items = env.call("items", ()).await.unwrap();
        assert!(
            !format!("{items:?}").contains(SECRET),
            "sys.env.items() shows the secret"
        );
        let proc = conn.root().get("proc").await.unwrap().into_proxy().unwrap();
        let out = proc
            .call("run", ("sh", vec!["-c", "echo ${RRPC_SECRET-unset}"]))
            .await
            .unwrap();
        let stdout = out.get("stdout").unwrap();
        let text = match stdout {
            Value::Str(s) => s.clone(),
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("stdout is {other:?}"),
        };
        assert_eq!(text.trim(), "unset", "a child saw the secret");
        child.start_kill().unwrap();
        let _ = child.wait().await;
    })
    .await
    .expect("test timed out")
}
