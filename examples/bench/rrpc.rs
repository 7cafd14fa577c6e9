//! The rrpc figures, against the child's `bench` object or, with
//! `--connect`, against the stock demo objects of a running server.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use rrpc_core::{Call, Connection, Function, Proxy, RemoteError, Value};

/// What the figures call: the bench object, or the stock demo objects.
pub struct Target {
    pub addr: SocketAddr,
    conn: Connection,
    root: Proxy,
    /// `bench` of the benchmark server; `None` with `--connect`.
    bench: Option<Proxy>,
    /// The demo's `path` list: its `len()` is the null call with `--connect`.
    path: Proxy,
    /// The client callback passed to `call_back` (or the demo's `map`).
    callback: Value,
}

impl Target {
    pub async fn connect(addr: SocketAddr, own_server: bool) -> Result<Target> {
        let conn = rrpc_client::connect(addr).await?;
        let root = conn.root();
        let bench = match own_server {
            true => Some(root.get("bench").await?.into_proxy()?),
            false => None,
        };
        let path = root.get("path").await?.into_proxy()?;
        // An async closure: served as a task, never on the blocking pool.
        let callback = Function::from_async("cb", |_cx, args| async move {
            let n = args.get(0).and_then(Value::as_i64).unwrap_or(0);
            Ok::<_, RemoteError>(n + 1)
        })
        .into_value();
        Ok(Target {
            addr,
            conn,
            root,
            bench,
            path,
            callback,
        })
    }

    pub fn bench(&self) -> Option<&Proxy> {
        self.bench.as_ref()
    }

    /// The null call: `bench.inc(i)` (or `path.len()` with `--connect`).
    fn null(&self, i: i64) -> Call {
        match &self.bench {
            Some(bench) => bench.call("inc", (i,)),
            None => self.path.call("len", ()),
        }
    }

    /// A call whose server side calls our callback once:
    /// `bench.call_back(cb, i)` (or `map(cb, [i])` with `--connect`).
    fn with_callback(&self, i: i64) -> Call {
        match &self.bench {
            Some(bench) => bench.call("call_back", (self.callback.clone(), i)),
            None => self
                .root
                .call("map", (self.callback.clone(), vec![Value::from(i)])),
        }
    }

    pub async fn close(self) {
        self.conn.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.join()).await;
    }
}

/// Latencies of `iters` sequential null calls, after `warmup`.
pub async fn null_call(t: &Target, warmup: usize, iters: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iters);
    for i in 0..(warmup + iters) as i64 {
        let start = Instant::now();
        let v = t.null(i).await?;
        if i as usize >= warmup {
            samples.push(start.elapsed());
        }
        if t.bench.is_some() && v.as_i64() != Some(i + 1) {
            bail!("inc({i}) answered {v:?}");
        }
    }
    Ok(samples)
}

/// Calls per second with `depth` null calls in flight on one connection,
/// issued for about `duration` (then the last ones are drained); also the
/// number of calls made.
///
/// The calls are started as async results (`Call::start`, no task per
/// call) and collected in the order they were made, as a pipelining
/// client does: the driving task sleeps only when the oldest call has no
/// answer yet.
pub async fn pipelined(t: &Target, depth: usize, duration: Duration) -> Result<(f64, u64)> {
    let mut window = VecDeque::with_capacity(depth);
    let start = Instant::now();
    let mut next = 0i64;
    let mut done = 0u64;
    let mut issuing = true;
    while window.len() < depth {
        window.push_back((next, t.null(next).start()));
        next += 1;
    }
    while let Some((i, oldest)) = window.pop_front() {
        let v = oldest.await?;
        if t.bench.is_some() && v.as_i64() != Some(i + 1) {
            bail!("inc({i}) answered {v:?}");
        }
        done += 1;
        // The clock is read once per 64 answers, not per call.
        if issuing && done.is_multiple_of(64) {
            issuing = start.elapsed() < duration;
        }
        if issuing {
            window.push_back((next, t.null(next).start()));
            next += 1;
        }
    }
    Ok((done as f64 / start.elapsed().as_secs_f64(), done))
}

/// Like [`pipelined`], with each call a future awaited in a
/// `FuturesUnordered` (every answer wakes its own future).
pub async fn pipelined_futures(t: &Target, depth: usize, duration: Duration) -> Result<(f64, u64)> {
    let mut in_flight = FuturesUnordered::new();
    let start = Instant::now();
    let mut next = 0i64;
    let mut done = 0u64;
    let mut issuing = true;
    while in_flight.len() < depth {
        in_flight.push(t.null(next).into_future());
        next += 1;
    }
    while let Some(result) = in_flight.next().await {
        result?;
        done += 1;
        if issuing && done.is_multiple_of(64) {
            issuing = start.elapsed() < duration;
        }
        if issuing {
            in_flight.push(t.null(next).into_future());
            next += 1;
        }
    }
    Ok((done as f64 / start.elapsed().as_secs_f64(), done))
}

/// Latencies of calls whose server side calls a client callback once.
pub async fn callback(t: &Target, warmup: usize, iters: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iters);
    for i in 0..(warmup + iters) as i64 {
        let start = Instant::now();
        let v = t.with_callback(i).await?;
        if i as usize >= warmup {
            samples.push(start.elapsed());
        }
        let expected = match t.bench {
            Some(_) => Value::from(i + 1),
            None => Value::List(vec![Value::from(i + 1)]),
        };
        if v != expected {
            bail!("the callback call answered {v:?}, not {expected:?}");
        }
    }
    Ok(samples)
}

/// Time from `start()` of a null call to its result callback firing.
pub async fn async_callback(t: &Target, warmup: usize, iters: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iters);
    for i in 0..(warmup + iters) as i64 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = Instant::now();
        let result = t.null(i).start();
        result.add_callback(move |r| {
            let _ = tx.send((Instant::now(), r.error()));
        });
        let (fired, error) = rx.await.context("the result callback never ran")?;
        if let Some(e) = error {
            bail!("async call failed: {e}");
        }
        if i as usize >= warmup {
            samples.push(fired - start);
        }
    }
    Ok(samples)
}

/// Times of `iters` connects (TCP connect plus the rrpc handshake).
pub async fn connects(addr: SocketAddr, iters: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        let conn = rrpc_client::connect(addr).await?;
        samples.push(start.elapsed());
        conn.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.join()).await;
    }
    Ok(samples)
}

/// Aggregate calls per second of `clients` connections, each making
/// sequential null calls for `duration`.
pub async fn many_clients(addr: SocketAddr, clients: usize, duration: Duration) -> Result<f64> {
    let mut targets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let conn = rrpc_client::connect(addr).await?;
        let bench = conn.root().get("bench").await?.into_proxy()?;
        targets.push((conn, bench));
    }
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (_, bench) in &targets {
        let (bench, total) = (bench.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < duration {
                bench.call("inc", (n as i64,)).await?;
                n += 1;
            }
            total.fetch_add(n, Ordering::Relaxed);
            Ok::<_, rrpc_core::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    for (conn, bench) in targets {
        drop(bench);
        conn.close();
    }
    Ok(rate)
}

/// MB/s (10^6 bytes) moving `total` bytes from the server in `chunk`-sized
/// byte strings, `window` calls in flight.
pub async fn bulk_down(bench: &Proxy, total: u64, chunk: usize, window: usize) -> Result<f64> {
    let chunks = total.div_ceil(chunk as u64);
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        while sent < chunks && in_flight.len() < window {
            in_flight.push(bench.call("chunk", (chunk,)).into_future());
            sent += 1;
        }
        let Some(result) = in_flight.next().await else {
            break;
        };
        match result? {
            Value::Bytes(b) => got += b.len() as u64,
            other => bail!("chunk answered {}", other.type_name()),
        }
    }
    if got != chunks * chunk as u64 {
        bail!("received {got} bytes, expected {}", chunks * chunk as u64);
    }
    Ok(got as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// MB/s (10^6 bytes) moving `total` bytes to the server in `chunk`-sized
/// byte strings, `window` calls in flight.
pub async fn bulk_up(bench: &Proxy, total: u64, chunk: usize, window: usize) -> Result<f64> {
    let data = Bytes::from(vec![0x5au8; chunk]);
    let chunks = total.div_ceil(chunk as u64);
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        while sent < chunks && in_flight.len() < window {
            let call = bench.call("sink", (Value::Bytes(data.clone()),));
            in_flight.push(call.into_future());
            sent += 1;
        }
        let Some(result) = in_flight.next().await else {
            break;
        };
        acked += result?.as_i64().context("sink answered no length")? as u64;
    }
    if acked != chunks * chunk as u64 {
        bail!(
            "the server took {acked} bytes, expected {}",
            chunks * chunk as u64
        );
    }
    Ok(acked as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// Fills `proxies` (already allocated) up to `count`.
pub async fn hold_more(
    bench: &Proxy,
    proxies: &mut Vec<Proxy>,
    count: usize,
    batch: usize,
) -> Result<()> {
    while proxies.len() < count {
        let n = batch.min(count - proxies.len());
        match bench.call("make", (n,)).await? {
            Value::List(items) => {
                for item in items {
                    proxies.push(item.into_proxy()?);
                }
            }
            other => bail!("make answered {}", other.type_name()),
        }
    }
    Ok(())
}

/// Opens `count` idle connections.
pub async fn idle_connections(addr: SocketAddr, count: usize) -> Result<Vec<Connection>> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let conn = rrpc_client::connect(addr)
            .await
            .with_context(|| format!("connection {} of {count}", i + 1))?;
        conns.push(conn);
    }
    Ok(conns)
}

/// The cluster pool's cost per job for tiny jobs on one node: `jobs` null
/// calls pushed through a one-node pool, 8 in flight; µs of wall time per job.
pub async fn pool_overhead(addr: SocketAddr, jobs: usize) -> Result<f64> {
    use rrpc_client::pool::{Pool, PoolOptions};
    let pool = Pool::connect_with(
        [addr.to_string()],
        PoolOptions::default().concurrency(8).progress(false),
    )
    .await?;
    // Warm up the connection, allocators and caches.
    pool.map("bench", "inc", (0..jobs.min(2_000) as i64).map(|i| (i,)))
        .await?;
    let started = Instant::now();
    let results = pool
        .map("bench", "inc", (0..jobs as i64).map(|i| (i,)))
        .await?;
    let per_job = started.elapsed().as_secs_f64() * 1e6 / jobs as f64;
    anyhow::ensure!(
        results.len() == jobs,
        "the pool returned {} results for {jobs} jobs",
        results.len()
    );
    anyhow::ensure!(
        results.last().and_then(Value::as_i64) == Some(jobs as i64),
        "a wrong result"
    );
    pool.close();
    Ok(per_job)
}
