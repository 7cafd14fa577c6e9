//! The tour: every capability of rrpc, walked through against an in-process
//! server on a free loopback port. This is the README's main job:
//!
//! ```text
//! cargo run --release --example tour
//! ```

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rrpc_client::{ErrorKind, Function, Value};
use rrpc_server::{demo, Server};

#[tokio::main]
async fn main() -> Result<()> {
    // 1. A server: the stock demo objects plus one function of our own.
    let mut root = demo::namespace();
    root.insert(
        "factorize",
        Function::blocking("factorize", |mut args| {
            let mut n: u64 = args.take(0, "n")?;
            let mut factors = Vec::new();
            let mut d = 2;
            while d * d <= n {
                while n.is_multiple_of(d) {
                    factors.push(d);
                    n /= d;
                }
                d += 1;
            }
            if n > 1 {
                factors.push(n);
            }
            Ok(Value::from(factors))
        })
        .with_signature("factorize(n: int) -> list[int]")
        .into_value(),
    );
    let listening = Server::new(root).bind("127.0.0.1:0").await?;
    let addr = listening.local_addr();
    let stats = listening.handle();
    let server = listening.spawn();
    section(&format!("server listening on {addr} (in-process)"));

    // 2. Connect and look around (RPyC's dir()).
    let conn = rrpc_client::connect(addr).await?;
    let root = conn.root();
    section("what the server offers");
    for m in root.members().await? {
        println!("  {:<10} {}", m.name, m.signature);
    }

    // 3. Call a function; data comes back by value.
    section("a remote function");
    let factors: Vec<u64> = root
        .call("factorize", (600_851_475_143u64,))
        .await?
        .decode()?;
    println!("  factorize(600851475143) = {factors:?}");
    ensure!(factors.iter().product::<u64>() == 600_851_475_143);

    // 4. Objects by reference: a class instance, its method and attribute.
    section("objects by reference");
    let obj = root.call("MyClass", (0,)).await?.into_proxy()?;
    println!("  obj = MyClass(0) -> {obj:?}");
    println!("  obj.f(3) = {}", obj.call("f", (3,)).await?);
    obj.set("t", 0.2).await?;
    println!("  obj.t = {} (set remotely)", obj.get("t").await?);
    let path = root.get("path").await?.into_proxy()?;
    path.call("append", ("/opt/lib",)).await?;
    let same = root.get("path").await?.into_proxy()?;
    println!(
        "  path.append('/opt/lib') -> {} ; same proxy both times: {}",
        same.call("list", ()).await?,
        same.same_object(&path)
    );

    // 5. Local closures as callbacks; the server calls back over the same link.
    section("callbacks: the server calls our closure");
    let loc = Function::blocking("loc", |mut args| {
        let n: i64 = args.take(0, "n")?;
        println!("  loc {n}   (running here, called by the server)");
        Ok(n * n)
    });
    let squares = root.call("map", (loc.into_value(), vec![1, 2, 3])).await?;
    println!("  map(loc, [1, 2, 3]) = {squares:?}");

    // 6. Nested calls: our callback calls the server while the server waits on it.
    section("nested callbacks without deadlock");
    let r = root.clone();
    let nested = Function::from_async("nested", move |_cx, mut args| {
        let r = r.clone();
        async move {
            let n: u64 = args.take(0, "n")?;
            Ok(r.call("factorize", (n,)).await?)
        }
    });
    let nested_result = root
        .call("map", (nested.into_value(), vec![12, 97]))
        .await?;
    println!("  map(x -> server.factorize(x), [12, 97]) = {nested_result:?}");

    // 7. Async results: ready, value, callbacks served in the background.
    section("async calls");
    let res = obj.call_async("f", (1,));
    println!("  res = async obj.f(1); res.ready = {}", res.ready());
    let (tx, rx) = tokio::sync::oneshot::channel();
    res.add_callback(move |r| {
        println!("  callback fired in the background: {:?}", r.value());
        let _ = tx.send(());
    });
    println!("  res.await = {}", res.clone().await?);
    rx.await?;

    // 8. Many calls in flight on one connection run concurrently.
    section("concurrency on one connection");
    let started = Instant::now();
    let calls: Vec<_> = (0..10).map(|i| obj.call_async("f", (i,))).collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await?);
    }
    println!(
        "  10 calls of 0.2 s each took {:.2} s in total: {results:?}",
        started.elapsed().as_secs_f64()
    );

    // 9. Deadlines: a late call times out and is cancelled on the server.
    section("deadlines and cancellation");
    obj.set("t", 5).await?;
    let err = failure(
        obj.call("f", (1,))
            .timeout(Duration::from_millis(300))
            .await,
    )?;
    println!("  obj.f(1) with a 0.3 s deadline: {err}");
    let cancelled_at = Instant::now();
    while stats.stats().running_requests > 0 && cancelled_at.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "  the server stopped the call {:.1} ms later (requests running: {})",
        cancelled_at.elapsed().as_secs_f64() * 1e3,
        stats.stats().running_requests
    );

    // 10. Clear errors, carrying the remote kind and context.
    section("errors");
    for err in [
        failure(obj.call("nope", ()).await)?,
        failure(obj.call("f", ("three",)).await)?,
        failure(root.call("open", ("/nonexistent",)).await)?,
    ] {
        let kind = err.remote_kind().cloned().unwrap_or(ErrorKind::Internal);
        println!("  [{kind}] {}", err.to_string().replace('\n', "\n    "));
    }

    // 11. Distributed reference counting: drop proxies, the server lets go.
    section("distributed reference counting");
    let many: Vec<_> = futures_join((0..100).map(|_| root.call("MyClass", (0,)))).await?;
    println!(
        "  server objects held by clients: {}",
        stats.stats().live_objects
    );
    drop(many);
    drop(obj);
    drop(path);
    drop(same);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.stats().live_objects > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "  after dropping every proxy: {}",
        stats.stats().live_objects
    );

    // 12. Close; the server stops gracefully.
    section("close and shut down");
    conn.close();
    server.stop().await;
    println!("  done.");
    Ok(())
}

async fn futures_join(calls: impl Iterator<Item = rrpc_client::Call>) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for call in calls {
        out.push(call.await?);
    }
    Ok(out)
}

/// The error of a call that must fail.
fn failure(result: Result<Value, rrpc_client::Error>) -> Result<rrpc_client::Error> {
    match result {
        Ok(v) => anyhow::bail!("the call should have failed, it returned {v:?}"),
        Err(e) => Ok(e),
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}
