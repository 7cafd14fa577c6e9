//! A real server on 127.0.0.1:0 with the demo objects plus probes for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rrpc_client::{Args, CallContext, Function, Namespace, Remote, RemoteError, Reply, Value};
use rrpc_server::{RunningServer, Server};

/// Fails the test instead of hanging it.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// The test server's `worker` object, through `conn`.
pub async fn worker(conn: &rrpc_client::Connection) -> rrpc_client::Proxy {
    conn.root()
        .get("worker")
        .await
        .unwrap()
        .into_proxy()
        .unwrap()
}

/// Polls `check` until it holds or `secs` pass.
pub async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// Counts the work of `Worker.work`: started, completed.
#[derive(Default, Debug)]
pub struct WorkCounters {
    pub started: AtomicUsize,
    pub completed: AtomicUsize,
}

struct Worker(Arc<WorkCounters>);

impl Remote for Worker {
    fn type_name(&self) -> &str {
        "Worker"
    }
    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            "work" => {
                let ms: u64 = match args.take(0, "ms") {
                    Ok(ms) => ms,
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    self.0.started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    self.0.completed.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, RemoteError>(ms)
                })
            }
            _ => Reply::err(RemoteError::no_such_method("Worker", method)),
        }
    }
}

struct Rendezvous(Arc<tokio::sync::Barrier>);

impl Remote for Rendezvous {
    fn type_name(&self) -> &str {
        "Rendezvous"
    }
    fn call(self: Arc<Self>, _cx: CallContext, method: &str, _args: Args) -> Reply {
        match method {
            "meet" => Reply::future(async move {
                self.0.wait().await;
                Ok::<_, RemoteError>(true)
            }),
            _ => Reply::err(RemoteError::no_such_method("Rendezvous", method)),
        }
    }
}

pub struct TestServer {
    pub server: RunningServer,
    pub addr: String,
    pub work: Arc<WorkCounters>,
}

pub async fn start() -> TestServer {
    let work = Arc::new(WorkCounters::default());
    let kept: Arc<Mutex<Option<Value>>> = Arc::default();
    let kept2 = kept.clone();
    let mut root = rrpc_server::demo::namespace();
    root.insert(
        "echo",
        Function::blocking("echo", |mut a: Args| a.take_value(0, "x")).into_value(),
    );
    root.insert(
        "echo_all",
        Function::blocking("echo_all", |mut a: Args| {
            let all = (0..a.len())
                .map(|i| a.take_value(i, "x"))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::List(all))
        })
        .into_value(),
    );
    root.insert(
        "same",
        Function::blocking("same", |a: Args| {
            Ok(match (a.get(0), a.get(1)) {
                (Some(Value::Object(x)), Some(Value::Object(y))) => {
                    std::ptr::addr_eq(Arc::as_ptr(x), Arc::as_ptr(y))
                }
                (Some(Value::Proxy(x)), Some(Value::Proxy(y))) => x.same_object(y),
                _ => false,
            })
        })
        .into_value(),
    );
    root.insert(
        "keep",
        Function::blocking("keep", move |mut a: Args| {
            *kept.lock().unwrap() = Some(a.take_value(0, "x")?);
            Ok(())
        })
        .into_value(),
    );
    root.insert(
        "is_kept",
        Function::blocking("is_kept", move |mut a: Args| {
            let x = a.take_value(0, "x")?;
            Ok(kept2.lock().unwrap().as_ref() == Some(&x))
        })
        .into_value(),
    );
    root.insert(
        "add1",
        Function::blocking("add1", |mut a: Args| Ok(a.take::<i64>(0, "n")? + 1)).into_value(),
    );
    root.insert(
        "chain",
        Function::from_async("chain", |_cx, mut a: Args| async move {
            let cb = a.take_value(0, "cb")?.into_proxy()?;
            let n: i64 = a.take(1, "n")?;
            let got: i64 = cb.invoke((n,)).await?.decode()?;
            Ok(got * 10)
        })
        .into_value(),
    );
    root.insert("worker", Value::object(Worker(work.clone())));
    root.insert(
        "rendezvous",
        Value::object(Rendezvous(Arc::new(tokio::sync::Barrier::new(2)))),
    );
    root.insert(
        "blob",
        Function::blocking("blob", |mut a: Args| {
            let n: usize = a.take(0, "n")?;
            Ok(Value::Bytes(vec![7u8; n].into()))
        })
        .into_value(),
    );
    start_with(root, work).await
}

pub async fn start_with(root: Namespace, work: Arc<WorkCounters>) -> TestServer {
    // Every test client comes from 127.0.0.1: allow the soak's 200.
    let listening = Server::new(root)
        .with_connection_limits(1024, 512)
        .with_shutdown_grace(Duration::from_secs(2))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listening.local_addr().to_string();
    TestServer {
        server: listening.spawn(),
        addr,
        work,
    }
}
