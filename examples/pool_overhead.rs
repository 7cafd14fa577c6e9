//! The pool's cost per job for tiny jobs on one node: many no-op jobs pushed
//! through the pool, wall time divided by the job count (dispy's round trip
//! is 8–10 ms a job). For comparison it also times the same calls made
//! directly on one connection, with as many in flight.
//!
//! ```text
//! cargo run --release --example pool_overhead
//! ```
//!
//! Prints `rrpc pool_overhead VALUE us` (and `rrpc direct_call VALUE us`).

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use futures::stream::{self, StreamExt};
use rrpc_client::pool::{Pool, PoolOptions};
use rrpc_client::{Function, Namespace, Value};
use rrpc_server::Server;

const JOBS: usize = 20_000;
/// Jobs in flight on the node at once.
const CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() -> Result<()> {
    let mut root = Namespace::new("bench");
    root.insert(
        "noop",
        Function::from_async("noop", |_cx, _args| async { Ok(Value::Unit) }).into_value(),
    );
    let listening = Server::new(root).bind("127.0.0.1:0").await?;
    let addr = listening.local_addr().to_string();
    let server = listening.spawn();

    let pool = Pool::connect_with(
        [addr.clone()],
        PoolOptions::default()
            .concurrency(CONCURRENCY)
            .progress(false),
    )
    .await?;
    // Warm up connections, allocators and caches.
    pool.map("", "noop", (0..2_000).map(|_| ())).await?;

    let started = Instant::now();
    let results = pool.map("", "noop", (0..JOBS).map(|_| ())).await?;
    let through_pool = per_job(started.elapsed());
    ensure!(results.len() == JOBS);

    // The same calls straight on one connection, CONCURRENCY at a time.
    let conn = rrpc_client::connect(&addr).await?;
    let direct_root = conn.root();
    let direct = |n: usize| {
        let root = direct_root.clone();
        stream::iter(0..n)
            .map(move |_| root.call("noop", ()).into_future())
            .buffer_unordered(CONCURRENCY)
            .count()
    };
    direct(2_000).await;
    let started = Instant::now();
    ensure!(direct(JOBS).await == JOBS);
    let straight = per_job(started.elapsed());

    println!("{JOBS} no-op jobs on one node, {CONCURRENCY} in flight:");
    println!("  through the pool   {through_pool:>7.1} µs per job");
    println!("  direct calls       {straight:>7.1} µs per call");
    println!(
        "  pool's own share   {:>7.1} µs per job",
        through_pool - straight
    );
    println!("rrpc pool_overhead {through_pool:.1} us");
    println!("rrpc direct_call {straight:.1} us");

    conn.close();
    drop(pool);
    server.stop().await;
    Ok(())
}

fn per_job(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6 / JOBS as f64
}
