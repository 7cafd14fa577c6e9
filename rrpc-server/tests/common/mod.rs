//! A stock server (the toolbox) on 127.0.0.1:0, in-process, for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use rrpc_client::{Connection, Error, ErrorKind, Proxy, Value};
use rrpc_server::services::{stock_root, ToolboxOptions};
use rrpc_server::{RunningServer, Server};

/// Fails the test instead of hanging it.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

pub struct Stock {
    pub server: RunningServer,
    pub conn: Connection,
}

impl Stock {
    pub async fn start(options: ToolboxOptions) -> Stock {
        let root = stock_root(&options).unwrap();
        let listening = Server::new(root)
            .with_shutdown_grace(Duration::from_secs(2))
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let addr = listening.local_addr();
        let server = listening.spawn();
        let conn = rrpc_client::connect(addr).await.unwrap();
        Stock { server, conn }
    }

    pub async fn service(&self, name: &str) -> Proxy {
        self.conn
            .root()
            .get(name)
            .await
            .unwrap()
            .into_proxy()
            .unwrap()
    }

    pub async fn another_connection(&self) -> Connection {
        rrpc_client::connect(self.server.local_addr())
            .await
            .unwrap()
    }
}

/// The remote error of a failed call, checked for its kind.
pub fn expect_err(result: Result<Value, Error>, kind: ErrorKind) -> String {
    let err = result.expect_err("the call should fail");
    let remote = err
        .remote()
        .unwrap_or_else(|| panic!("not a remote error: {err}"));
    assert_eq!(remote.kind, kind, "wrong kind: {remote}");
    remote.message.clone()
}

pub fn s(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key} in {value:?}"))
        .to_owned()
}

pub fn i(value: &Value, key: &str) -> i64 {
    value
        .get(key)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no int {key} in {value:?}"))
}

/// Waits for a spawned `rrpc-server`'s ready line on its piped stdout and
/// returns the address it names.
pub async fn ready_addr(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .unwrap()
        .expect("the ready line");
    line.strip_prefix("rrpc-server listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned()
}
