//! The connection engine end to end: a real server on 127.0.0.1:0 and the
//! real client. Each test proves one property and would fail without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, start, within, worker};
use rrpc_client::{Config, ConnectOptions, Error, ErrorKind, Function, Value};

#[tokio::test]
async fn an_object_sent_twice_arrives_as_the_same_proxy() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        let obj = root
            .call("MyClass", (0,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        // The server sends the same object back twice: one proxy, same handle.
        let back1 = root
            .call("echo", (obj.clone(),))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let back2 = root
            .call("echo", (obj.clone(),))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        assert!(back1.same_object(&obj) && back2.same_object(&obj));
        assert_eq!(
            conn.stats().proxies,
            1,
            "one live proxy for one remote object"
        );
        // And the path attribute read twice is the same remote list.
        let p1 = root.get("path").await.unwrap().into_proxy().unwrap();
        let p2 = root.get("path").await.unwrap().into_proxy().unwrap();
        assert!(p1.same_object(&p2));
    })
    .await
}

#[tokio::test]
async fn arguments_of_every_kind_arrive_as_they_were_sent() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        // Written one by one into the frame (no list of wire values first),
        // a big byte string shared rather than copied, between small ones.
        let big = bytes::Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let args = vec![
            Value::Unit,
            Value::Bool(true),
            Value::Int(-1 << 40),
            Value::UInt(u64::MAX),
            Value::Float(-2.5),
            Value::from("ünïcode"),
            Value::Bytes(bytes::Bytes::from_static(b"small")),
            Value::Bytes(big.clone()),
            Value::List(vec![Value::Int(300), Value::List(vec![]), Value::from("x")]),
            Value::Map(vec![(Value::from("k"), Value::Bytes(big))]),
            Value::Int(7),
        ];
        let back = root.call("echo_all", args.clone()).await.unwrap();
        assert_eq!(back, Value::List(args.clone()));
        // The same through a direct invocation of the function's proxy.
        let echo_all = root.get("echo_all").await.unwrap().into_proxy().unwrap();
        let back = echo_all.invoke(args.clone()).await.unwrap();
        assert_eq!(back, Value::List(args));
        // No argument, and a single one (its length and value share a write).
        assert_eq!(echo_all.invoke(()).await.unwrap(), Value::List(vec![]));
        let one = root.call("echo_all", (u64::MAX,)).await.unwrap();
        assert_eq!(one, Value::List(vec![Value::UInt(u64::MAX)]));
    })
    .await
}

#[tokio::test]
async fn a_proxy_sent_back_is_the_owners_original_object() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        let a = root.call("MyClass", (0,)).await.unwrap();
        let b = root.call("MyClass", (0,)).await.unwrap();
        // The server receives its own objects, not proxies of proxies.
        assert_eq!(
            root.call("same", (a.clone(), a.clone())).await.unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            root.call("same", (a.clone(), b.clone())).await.unwrap(),
            Value::Bool(false)
        );
        root.call("keep", (a.clone(),)).await.unwrap();
        assert_eq!(root.call("is_kept", (a,)).await.unwrap(), Value::Bool(true));
        assert_eq!(
            root.call("is_kept", (b,)).await.unwrap(),
            Value::Bool(false)
        );
        // The other way round: a client object sent twice reaches the server
        // as one proxy.
        let f = Function::blocking("f", |_| Ok(())).into_value();
        assert_eq!(
            root.call("same", (f.clone(), f)).await.unwrap(),
            Value::Bool(true)
        );
    })
    .await
}

#[tokio::test]
async fn nested_callbacks_client_server_client_server_do_not_deadlock() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        // innermost: a client callback that calls the server's add1
        let r = root.clone();
        let inner = Function::from_async("inner", move |_cx, mut a| {
            let r = r.clone();
            async move {
                let n: i64 = a.take(0, "n")?;
                Ok(r.call("add1", (n,)).await?)
            }
        })
        .into_value();
        // outer: a client callback that calls the server's chain(inner, n+1)
        let r = root.clone();
        let outer = Function::from_async("outer", move |_cx, mut a| {
            let (r, inner) = (r.clone(), inner.clone());
            async move {
                let n: i64 = a.take(0, "n")?;
                Ok(r.call("chain", (inner, n + 1)).await?)
            }
        })
        .into_value();
        // client → server.chain → client.outer → server.chain → client.inner → server.add1
        let got = root.call("chain", (outer, 1)).await.unwrap();
        assert_eq!(got.as_i64(), Some(300));
        // The same with blocking callbacks, which wait() on nested calls.
        let r = root.clone();
        let blocking = Function::blocking("blocking", move |mut a| {
            let n: i64 = a.take(0, "n")?;
            Ok(r.call("add1", (n,)).wait()?)
        });
        let got = root
            .call("chain", (blocking.into_value(), 4))
            .await
            .unwrap();
        assert_eq!(got.as_i64(), Some(50));
    })
    .await
}

#[tokio::test]
async fn two_calls_on_one_connection_run_concurrently() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let meeting = conn
            .root()
            .get("rendezvous")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        // Each call waits at a barrier for the other: served one at a time,
        // neither could return.
        let (a, b) = tokio::join!(
            meeting.call("meet", ()).timeout(Duration::from_secs(5)),
            meeting.call("meet", ()).timeout(Duration::from_secs(5)),
        );
        assert_eq!(a.unwrap(), Value::Bool(true));
        assert_eq!(b.unwrap(), Value::Bool(true));
    })
    .await
}

#[tokio::test]
async fn dropping_every_proxy_releases_the_servers_objects() {
    within(20, async {
        let t = start().await;
        let stats = t.server.handle().clone();
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        let baseline = stats.stats().live_objects;
        let mut objs = Vec::new();
        for i in 0..50 {
            objs.push(
                root.call("MyClass", (i % 3,))
                    .await
                    .unwrap()
                    .into_proxy()
                    .unwrap(),
            );
        }
        assert_eq!(stats.stats().live_objects, baseline + 50);
        // Clones share one reference: dropping half the clones releases nothing.
        let clones = objs.clone();
        drop(clones);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(stats.stats().live_objects, baseline + 50);
        drop(objs);
        assert!(
            eventually(5, || stats.stats().live_objects == baseline).await,
            "the server still holds {} objects",
            stats.stats().live_objects
        );
        // Callbacks the server got from us are released on our side too.
        let loc = Function::blocking("loc", |mut a| Ok(a.take::<i64>(0, "n")? + 1));
        root.call("map", (loc.into_value(), vec![1, 2]))
            .await
            .unwrap();
        assert!(eventually(5, || conn.stats().exported_objects == 0).await);
    })
    .await
}

#[tokio::test]
async fn closing_a_connection_releases_everything_it_held() {
    within(20, async {
        let t = start().await;
        let stats = t.server.handle().clone();
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        let mut objs = Vec::new();
        for _ in 0..20 {
            objs.push(root.call("MyClass", (0,)).await.unwrap());
        }
        assert_eq!(stats.stats().live_objects, 20);
        assert_eq!(stats.stats().connections, 1);
        conn.close();
        assert!(
            eventually(5, || stats.stats().live_objects == 0
                && stats.stats().connections == 0)
            .await
        );
        // The proxies still held locally now fail clearly.
        let err = objs[0]
            .clone()
            .into_proxy()
            .unwrap()
            .call("f", (1,))
            .await
            .unwrap_err();
        assert!(err.is_connection_lost(), "{err}");
    })
    .await
}

#[tokio::test]
async fn a_call_past_its_deadline_times_out_and_is_cancelled_on_the_server() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let worker = worker(&conn).await;
        let started = Instant::now();
        let err = worker
            .call("work", (1500,))
            .timeout(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(t.work.started.load(Ordering::SeqCst), 1);
        // The cancel reaches the server: the request stops running at once...
        let handle = t.server.handle().clone();
        assert!(eventually(2, || handle.stats().running_requests == 0).await);
        // ...and the work never completes.
        tokio::time::sleep(Duration::from_millis(1700)).await;
        assert_eq!(t.work.completed.load(Ordering::SeqCst), 0);
        // The connection is still good.
        assert_eq!(worker.call("work", (1,)).await.unwrap().as_i64(), Some(1));
        assert_eq!(t.work.completed.load(Ordering::SeqCst), 1);
    })
    .await
}

#[tokio::test]
async fn the_default_deadline_comes_from_the_connection_config() {
    within(20, async {
        let t = start().await;
        let options = ConnectOptions::default()
            .config(Config::default().with_call_timeout(Duration::from_millis(150)));
        let conn = rrpc_client::connect_with(&t.addr, options).await.unwrap();
        let worker = worker(&conn).await;
        let err = worker.call("work", (2000,)).await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
    })
    .await
}

#[tokio::test]
async fn unknown_methods_and_wrong_argument_types_get_clear_errors() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        let err = root.call("no_such_thing", ()).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::NoSuchMethod), "{err}");
        assert!(err.to_string().contains("no_such_thing"), "{err}");

        let obj = root
            .call("MyClass", (0,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let err = obj.call("g", (1,)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::NoSuchMethod));
        assert!(
            err.to_string().contains("MyClass has no method `g`"),
            "{err}"
        );

        let err = obj.call("f", ("three",)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::BadArgument), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("argument 0 (`n`)") && text.contains("got str"),
            "{text}"
        );

        let err = obj.set("t", "slow").await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::BadArgument), "{err}");
        let err = obj.get("nope").await.unwrap_err();
        assert_eq!(
            err.remote_kind(),
            Some(&ErrorKind::NoSuchAttribute),
            "{err}"
        );
        let err = obj.invoke(()).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::NotCallable), "{err}");

        // Errors carry context: where they happened.
        let remote = err.remote().unwrap();
        assert!(!remote.context.is_empty(), "{remote:?}");
        // Opening a missing file names the cause.
        let err = root.call("open", ("/nonexistent/rrpc",)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::NotFound), "{err}");

        // After all that, the connection still works.
        assert_eq!(obj.call("f", (1,)).await.unwrap().as_i64(), Some(2));
    })
    .await
}

#[tokio::test]
async fn listing_members_describes_the_object() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let obj = conn
            .root()
            .call("MyClass", (0,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let members = obj.members().await.unwrap();
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["f", "t"]);
        assert!(members[1].writable);
        let root_members = conn.root().members().await.unwrap();
        assert!(root_members
            .iter()
            .any(|m| m.name == "MyClass" && m.signature.contains("t: float")));
    })
    .await
}

#[tokio::test]
async fn results_larger_than_the_callers_frame_limit_are_refused_clearly() {
    within(20, async {
        let t = start().await;
        let options =
            ConnectOptions::default().config(Config::default().with_max_frame_len(64 * 1024));
        let conn = rrpc_client::connect_with(&t.addr, options).await.unwrap();
        let root = conn.root();
        let ok = root.call("blob", (1000,)).await.unwrap();
        assert!(matches!(ok, Value::Bytes(b) if b.len() == 1000));
        let err = root.call("blob", (100_000,)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::Refused), "{err}");
        assert!(err.to_string().contains("frame limit"), "{err}");
        // Sending too much is caught before it leaves.
        let big = Value::Bytes(vec![0u8; 20 << 20].into());
        let err = root.call("echo", (big,)).await.unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }), "{err}");
        assert_eq!(root.call("add1", (1,)).await.unwrap().as_i64(), Some(2));
    })
    .await
}

#[tokio::test]
async fn async_results_report_ready_value_and_fire_callbacks() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let obj = conn
            .root()
            .call("MyClass", (0.3,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let res = obj.call_async("f", (1,));
        assert!(!res.ready());
        let (tx, rx) = tokio::sync::oneshot::channel();
        res.add_callback(move |r| {
            let _ = tx.send(r.value().ok().and_then(|v| v.as_i64()));
        });
        assert_eq!(res.clone().await.unwrap().as_i64(), Some(2));
        assert!(res.ready());
        assert!(res.error().is_none());
        assert_eq!(rx.await.unwrap(), Some(2));
        // A failed call: error() tells why.
        let bad = obj.call_async("f", ("x",));
        let _ = bad.clone().await;
        assert_eq!(
            bad.error().and_then(|e| e.remote_kind().cloned()),
            Some(ErrorKind::BadArgument)
        );
    })
    .await
}

#[tokio::test]
async fn bg_serving_stop_refuses_the_peers_requests_until_resumed() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        let loc = Function::blocking("loc", |mut a| Ok(a.take::<i64>(0, "n")? + 1)).into_value();
        let bg = conn.bg_serving();
        bg.stop();
        assert!(!bg.is_running());
        let err = root.call("map", (loc.clone(), vec![1])).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::Refused), "{err}");
        bg.resume();
        assert_eq!(
            root.call("map", (loc, vec![1]))
                .await
                .unwrap()
                .decode::<Vec<i64>>()
                .unwrap(),
            [2]
        );
    })
    .await
}

#[test]
fn the_blocking_api_works_from_a_plain_thread() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(start());
    let addr = t.addr.clone();
    let worker = std::thread::spawn(move || {
        let conn = rrpc_client::blocking::connect(addr.as_str()).unwrap();
        let obj = conn
            .root()
            .call("MyClass", (0,))
            .wait()
            .unwrap()
            .into_proxy()
            .unwrap();
        let four = obj.call("f", (3,)).wait().unwrap();
        let res = obj.call_async("f", (4,));
        assert!(res.wait(Duration::from_secs(10)));
        conn.close();
        (four, res.value().unwrap())
    });
    let (four, five) = worker.join().unwrap();
    assert_eq!((four.as_i64(), five.as_i64()), (Some(4), Some(5)));
    rt.block_on(t.server.stop());
}

/// A handler that waits for the caller's callback holds no task on either
/// side: the server's handler is parked until the callback's reply wakes it
/// on the reader, and so is the client's callback until the test releases it
/// (a wake-up from elsewhere, which promotes it to a task of its own). Once
/// all is answered, nothing is left behind.
#[tokio::test]
async fn a_handler_waiting_for_a_callback_holds_no_task() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let root = conn.root();
        assert!(root.get("map").await.is_ok());
        let entered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        let (entered2, gate2) = (entered.clone(), gate.clone());
        let callback = Function::from_async("cb", move |_cx, args| {
            let (entered, gate) = (entered2.clone(), gate2.clone());
            async move {
                let n = args.get(0).and_then(Value::as_i64).unwrap_or(0);
                entered.store(true, Ordering::SeqCst);
                gate.notified().await;
                Ok::<_, rrpc_client::RemoteError>(n + 1)
            }
        });
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let result = root
            .call("map", (callback.into_value(), vec![Value::from(41)]))
            .start();
        assert!(eventually(10, || entered.load(Ordering::SeqCst)).await);
        assert_eq!(
            metrics.num_alive_tasks(),
            before,
            "the server's handler and the client's callback wait without a task"
        );
        gate.notify_one();
        let value = tokio::time::timeout(Duration::from_secs(10), result)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(value, Value::List(vec![Value::from(42)]));
        assert!(eventually(10, || metrics.num_alive_tasks() == before).await);
        assert_eq!(conn.stats().running_requests, 0);
    })
    .await
}

/// A server draining for shutdown closes as soon as its last running
/// request ends, here cancelled by its caller: it does not sit out the
/// grace period (2 s for the test server).
#[tokio::test]
async fn a_drain_ends_when_the_last_request_is_cancelled_by_its_caller() {
    within(20, async {
        let t = start().await;
        let conn = rrpc_client::connect(&t.addr).await.unwrap();
        let worker = worker(&conn).await;
        let call = worker
            .call("work", (10_000,))
            .timeout(Duration::from_millis(300))
            .start();
        assert!(eventually(10, || t.work.started.load(Ordering::SeqCst) == 1).await);
        let draining = Instant::now();
        t.server.handle().shutdown();
        let err = call.await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        let reason = conn.closed().await;
        let took = draining.elapsed();
        assert!(reason.to_string().contains("shutting down"), "{reason}");
        assert!(
            took < Duration::from_millis(1500),
            "the drain took {took:?}: it waited for the grace period"
        );
        assert_eq!(t.work.completed.load(Ordering::SeqCst), 0);
    })
    .await
}

/// Dropping a runtime while a handler waits, parked, for something that
/// never comes still drops the handler (and the connection with it): the
/// reader, dropped unfinished, closes the connection. Without that, the
/// parked request and the connection's state would keep each other alive.
#[test]
fn a_runtime_dropped_while_a_handler_waits_drops_the_handler() {
    struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // On a thread of its own, so that a hang fails the test.
    std::thread::spawn(move || {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let entered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (dropped2, entered2) = (dropped.clone(), entered.clone());
        let kept = rt.block_on(async move {
            let mut root = rrpc_server::demo::namespace();
            root.insert(
                "hang",
                Function::from_async("hang", move |_cx, _args| {
                    let flag = Flag(dropped2.clone());
                    let entered = entered2.clone();
                    async move {
                        let _flag = flag;
                        entered.store(true, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                        Ok::<_, rrpc_client::RemoteError>(0)
                    }
                })
                .into_value(),
            );
            let t = common::start_with(root, Default::default()).await;
            let conn = rrpc_client::connect(&t.addr).await.unwrap();
            let waiting = conn.root().call("hang", ()).start();
            assert!(eventually(10, || entered.load(Ordering::SeqCst)).await);
            (t, conn, waiting)
        });
        assert!(!dropped.load(Ordering::SeqCst));
        drop(rt);
        let _ = done_tx.send(dropped.load(Ordering::SeqCst));
        drop(kept);
    });
    let dropped = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("dropping the runtime hung");
    assert!(dropped, "the parked handler outlived its runtime");
}
