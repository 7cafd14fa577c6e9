//! Typed proxies over a real connection: a real server on 127.0.0.1:0, the
//! real client, and services declared with `#[service]`.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rrpc_client::{
    service, Callback, Error, ErrorKind, MemberKind, Namespace, RemoteError, ServiceError,
    TypedProxy, Value,
};
use rrpc_server::{RunningServer, Server};

/// The calculator's own errors; transport errors arrive as `Rpc`.
#[derive(Debug, thiserror::Error)]
pub enum CalcError {
    #[error("division by zero")]
    DivisionByZero,
    #[error(transparent)]
    Rpc(#[from] Error),
}

impl ServiceError for CalcError {
    fn to_remote(&self) -> RemoteError {
        match self {
            CalcError::DivisionByZero => RemoteError::custom("DivisionByZero", self.to_string()),
            CalcError::Rpc(e) => RemoteError::from(e.clone()),
        }
    }

    fn from_remote(remote: RemoteError) -> Self {
        match &remote.kind {
            ErrorKind::Custom(kind) if kind == "DivisionByZero" => CalcError::DivisionByZero,
            _ => CalcError::Rpc(Error::Remote(remote)),
        }
    }
}

/// A calculator with a running total.
#[service]
pub trait Calc {
    /// Adds two numbers.
    fn add(&self, a: i64, b: i64) -> i64;
    /// Divides, failing with the calculator's own error.
    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError>;
    /// Divides after a pause, as a task.
    async fn slow_div(&self, a: i64, b: i64, ms: u64) -> Result<i64, CalcError>;
    /// Opens a named counter, returned by reference.
    fn counter(&self, name: String) -> CounterProxy;
    /// Calls `f` on each item (the seed's `map`), from the blocking pool.
    fn map(&self, f: Callback<i64, i64>, xs: Vec<i64>) -> Result<Vec<i64>, Error>;
    /// The same, as a task.
    async fn amap(&self, f: Callback<i64, i64>, xs: Vec<i64>) -> Result<Vec<i64>, Error>;
    /// The running total.
    #[rrpc(get)]
    fn total(&self) -> i64;
    #[rrpc(set)]
    fn set_total(&self, value: i64);
    /// A read-only attribute.
    #[rrpc(get)]
    fn version(&self) -> String;
}

/// A counter object, handed out by reference.
#[service]
pub trait Counter {
    fn incr(&self, by: i64) -> i64;
    #[rrpc(get)]
    fn name(&self) -> String;
}

#[derive(Default)]
struct MyCalc {
    total: AtomicI64,
    counters: Mutex<Vec<CounterProxy>>,
}

impl Calc for MyCalc {
    fn add(&self, a: i64, b: i64) -> i64 {
        self.total.fetch_add(a + b, Ordering::SeqCst);
        a + b
    }
    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        a.checked_div(b).ok_or(CalcError::DivisionByZero)
    }
    async fn slow_div(&self, a: i64, b: i64, ms: u64) -> Result<i64, CalcError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.div(a, b)
    }
    fn counter(&self, name: String) -> CounterProxy {
        let proxy = CounterObject::new(MyCounter {
            name,
            n: AtomicI64::new(0),
        })
        .into_typed();
        self.counters.lock().unwrap().push(proxy.clone());
        proxy
    }
    fn map(&self, f: Callback<i64, i64>, xs: Vec<i64>) -> Result<Vec<i64>, Error> {
        xs.into_iter().map(|x| f.call(x).wait()).collect()
    }
    async fn amap(&self, f: Callback<i64, i64>, xs: Vec<i64>) -> Result<Vec<i64>, Error> {
        let mut out = Vec::new();
        for x in xs {
            out.push(f.call(x).await?);
        }
        Ok(out)
    }
    fn total(&self) -> i64 {
        self.total.load(Ordering::SeqCst)
    }
    fn set_total(&self, value: i64) {
        self.total.store(value, Ordering::SeqCst);
    }
    fn version(&self) -> String {
        "1.0".into()
    }
}

struct MyCounter {
    name: String,
    n: AtomicI64,
}

impl Counter for MyCounter {
    fn incr(&self, by: i64) -> i64 {
        self.n.fetch_add(by, Ordering::SeqCst) + by
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

/// Fails the test instead of hanging it.
async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

async fn start() -> (RunningServer, String) {
    let root = Namespace::new("typed").with("calc", CalcObject::new(MyCalc::default()));
    let listening = Server::new(root).bind("127.0.0.1:0").await.unwrap();
    let addr = listening.local_addr().to_string();
    (listening.spawn(), addr)
}

async fn calc(addr: &str) -> (rrpc_client::Connection, CalcProxy) {
    let conn = rrpc_client::connect(addr).await.unwrap();
    let calc: CalcProxy = conn.root().get("calc").await.unwrap().decode().unwrap();
    (conn, calc)
}

#[tokio::test]
async fn typed_calls_return_rust_values() {
    within(20, async {
        let (_server, addr) = start().await;
        let (_conn, calc) = calc(&addr).await;
        assert_eq!(calc.add(2, 3).await.unwrap(), 5);
        assert_eq!(calc.div(7, 2).await.unwrap(), 3);
        // The async-result form: started at once, awaited later.
        let pending = calc.add_async(10, 20);
        assert_eq!(pending.await.unwrap(), 30);
        // With a callback fired by the background task.
        let (tx, rx) = tokio::sync::oneshot::channel();
        calc.slow_div_async(9, 3, 10).add_callback(move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        assert_eq!(rx.await.unwrap(), Ok(3));
    })
    .await
}

#[test]
fn typed_calls_work_from_blocking_code() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, addr) = runtime.block_on(start());
    let conn = rrpc_client::blocking::connect(&addr).unwrap();
    let calc = CalcProxy::from(
        conn.root()
            .get("calc")
            .wait()
            .unwrap()
            .into_proxy()
            .unwrap(),
    );
    assert_eq!(calc.add(1, 2).wait().unwrap(), 3);
    let pending = calc.div_async(8, 2);
    assert_eq!(pending.value().unwrap(), 4);
    assert!(matches!(
        calc.div(1, 0).wait(),
        Err(CalcError::DivisionByZero)
    ));
    assert_eq!(
        calc.map(Callback::new(|x: i64| x + 1), vec![1, 2])
            .wait()
            .unwrap(),
        [2, 3]
    );
    conn.close();
    drop(server);
}

#[tokio::test]
async fn typed_attributes_read_and_write() {
    within(20, async {
        let (_server, addr) = start().await;
        let (_conn, calc) = calc(&addr).await;
        calc.set_total(40).await.unwrap();
        calc.add(1, 1).await.unwrap();
        assert_eq!(calc.total().await.unwrap(), 42);
        assert_eq!(calc.version().await.unwrap(), "1.0");
        // A getter without a setter is read-only, by name too.
        let dynamic = calc.proxy().unwrap();
        let err = dynamic.set("version", "2.0").await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::ReadOnly));
        // A value of the wrong type is refused with the attribute's name.
        let err = dynamic.set("total", "many").await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::BadArgument));
        assert!(err.to_string().contains("total"), "{err}");
    })
    .await
}

#[tokio::test]
async fn a_typed_object_returned_by_reference_is_called_where_it_lives() {
    within(20, async {
        let (_server, addr) = start().await;
        let (conn, calc) = calc(&addr).await;
        let counter = calc.counter("hits".into()).await.unwrap();
        assert!(counter.proxy().is_some(), "the client holds a proxy");
        assert_eq!(counter.incr(2).await.unwrap(), 2);
        assert_eq!(counter.incr(3).await.unwrap(), 5);
        assert_eq!(counter.name().await.unwrap(), "hits");
        // Two counters are two objects; each keeps its own state.
        let other = calc.counter("misses".into()).await.unwrap();
        assert_eq!(other.incr(1).await.unwrap(), 1);
        assert_eq!(counter.incr(0).await.unwrap(), 5);
        assert_eq!(conn.stats().proxies, 3, "calc and two counters");
    })
    .await
}

#[tokio::test]
async fn a_typed_callback_is_called_by_the_server() {
    within(20, async {
        let (_server, addr) = start().await;
        let (_conn, calc) = calc(&addr).await;
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let times10 = Callback::new(move |x: i64| {
            log.lock().unwrap().push(x);
            x * 10
        });
        // From a sync method on the server's blocking pool...
        let out = calc.map(times10.clone(), vec![1, 2, 3]).await.unwrap();
        assert_eq!(out, [10, 20, 30]);
        // ...and from an async one.
        let out = calc.amap(times10, vec![4]).await.unwrap();
        assert_eq!(out, [40]);
        assert_eq!(*seen.lock().unwrap(), [1, 2, 3, 4], "ran here, in order");
        // A failing callback's error reaches the caller with its kind.
        let picky = Callback::try_new(|x: i64| {
            if x < 0 {
                Err(RemoteError::custom("Negative", format!("{x} < 0")))
            } else {
                Ok(x)
            }
        });
        let err = calc.map(picky, vec![1, -1]).await.unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(&ErrorKind::Custom("Negative".into()))
        );
    })
    .await
}

#[tokio::test]
async fn the_same_object_is_reached_typed_and_by_name() {
    within(20, async {
        let (_server, addr) = start().await;
        let conn = rrpc_client::connect(&addr).await.unwrap();
        let dynamic = conn.root().get("calc").await.unwrap().into_proxy().unwrap();
        let typed = CalcProxy::from(dynamic.clone());
        assert_eq!(dynamic.call("add", (1, 2)).await.unwrap(), Value::Int(3));
        assert_eq!(typed.add(3, 4).await.unwrap(), 7);
        // Both changed one total: one object.
        assert_eq!(dynamic.get("total").await.unwrap(), Value::Int(10));
        assert_eq!(typed.total().await.unwrap(), 10);
        assert!(typed.proxy().unwrap().same_object(&dynamic));
        // The dynamic way gets clear argument errors from the generated dispatch.
        let err = dynamic.call("add", ("x", 1)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::BadArgument));
        assert!(err.to_string().contains("`a`"), "{err}");
        let err = dynamic.call("add", (1,)).await.unwrap_err();
        assert!(
            err.to_string().contains("expected 2 argument(s), got 1"),
            "{err}"
        );
        let err = dynamic.call("nope", ()).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::NoSuchMethod));
    })
    .await
}

#[tokio::test]
async fn the_member_listing_reports_declared_methods_and_attributes() {
    within(20, async {
        let (_server, addr) = start().await;
        let (_conn, calc) = calc(&addr).await;
        let members = calc.proxy().unwrap().members().await.unwrap();
        assert_eq!(members, CalcProxy::declared_members());
        let find = |name: &str| members.iter().find(|m| m.name == name).unwrap();
        assert_eq!(find("add").signature, "add(a: i64, b: i64) -> i64");
        assert_eq!(
            find("slow_div").signature,
            "async slow_div(a: i64, b: i64, ms: u64) -> Result<i64, CalcError>"
        );
        assert_eq!(
            find("map").signature,
            "map(f: Callback<i64, i64>, xs: Vec<i64>) -> Result<Vec<i64>, Error>"
        );
        let total = find("total");
        assert_eq!(total.kind, MemberKind::Attribute);
        assert_eq!(total.signature, "i64");
        assert!(total.writable);
        assert!(!find("version").writable);
        assert!(members.iter().all(|m| m.name != "set_total"));
        assert_eq!(CalcProxy::TYPE_NAME, "Calc");
    })
    .await
}

#[tokio::test]
async fn a_remote_user_error_arrives_as_the_typed_error() {
    within(20, async {
        let (_server, addr) = start().await;
        let (conn, calc) = calc(&addr).await;
        assert!(matches!(
            calc.div(1, 0).await,
            Err(CalcError::DivisionByZero)
        ));
        assert!(matches!(
            calc.slow_div(1, 0, 1).await,
            Err(CalcError::DivisionByZero)
        ));
        // By name, the same error is a remote error of the user's kind.
        let err = calc.proxy().unwrap().call("div", (1, 0)).await.unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(&ErrorKind::Custom("DivisionByZero".into()))
        );
        assert!(err.to_string().contains("division by zero"));
        // Transport errors come through the same Result.
        match calc
            .slow_div(1, 1, 2_000)
            .timeout(Duration::from_millis(50))
            .await
        {
            Err(CalcError::Rpc(e)) => assert!(e.is_timeout(), "{e}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        conn.close();
        match calc.div(4, 2).await {
            Err(CalcError::Rpc(e)) => assert!(e.is_connection_lost(), "{e}"),
            other => panic!("expected connection lost, got {other:?}"),
        }
    })
    .await
}
