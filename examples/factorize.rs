//! The Spanish note's scenario ("Procesamiento distribuido"): the same
//! server runs on several machines exporting `factoriz_sum(n)` — factorise
//! `n`, sum its prime factors — and the client keeps every server busy with
//! a range of large numbers (the note's `reparteThreads`), gathering every
//! result. Here the three servers are in-process, on free loopback ports.
//!
//! ```text
//! cargo run --release --example factorize
//! ```
//!
//! Exits non-zero unless the pool's results equal a local serial run.

use std::time::Instant;

use anyhow::{ensure, Result};
use rrpc_client::pool::{Pool, PoolOptions};
use rrpc_client::{Function, Namespace, Value};
use rrpc_server::Server;

/// The first number of the range, and how many numbers to factorise. Near
/// 10^14 some numbers have a large prime factor and take milliseconds of
/// trial division, others take microseconds: each job takes a different time.
const START: u64 = 100_000_000_000_000;
const COUNT: u64 = 200;
const SERVERS: usize = 3;

/// The sum of the prime factors of `n`, with multiplicity
/// (`factoriz_sum(12) = 2 + 2 + 3 = 7`).
fn factoriz_sum(mut n: u64) -> u64 {
    let mut sum = 0;
    let mut d = 2;
    while d * d <= n {
        while n.is_multiple_of(d) {
            sum += d;
            n /= d;
        }
        d += if d == 2 { 1 } else { 2 };
    }
    if n > 1 {
        sum += n;
    }
    sum
}

#[tokio::main]
async fn main() -> Result<()> {
    // The servers: each exports factoriz_sum, like the note's serv_processes.py.
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..SERVERS {
        let mut root = Namespace::new("factorizar");
        root.insert(
            "factoriz_sum",
            Function::blocking("factoriz_sum", |mut args| {
                let n: u64 = args.take(0, "n")?;
                Ok(Value::from(factoriz_sum(n)))
            })
            .with_signature("factoriz_sum(n: int) -> int")
            .into_value(),
        );
        let listening = Server::new(root).bind("127.0.0.1:0").await?;
        addrs.push(listening.local_addr().to_string());
        servers.push(listening.spawn());
    }
    println!("servers listening on {}", addrs.join(", "));

    let numbers: Vec<u64> = (START..START + COUNT).collect();

    // The local serial computation, for the reference results and time.
    let started = Instant::now();
    let serial: Vec<u64> = numbers.iter().map(|&n| factoriz_sum(n)).collect();
    let serial_time = started.elapsed();
    println!(
        "serial, here: {COUNT} numbers in {:.3} s ({:.2} ms per number)",
        serial_time.as_secs_f64(),
        serial_time.as_secs_f64() * 1e3 / COUNT as f64
    );

    // The pool: one job at a time per server, as in the note.
    let pool = Pool::connect_with(&addrs, PoolOptions::default().concurrency(1)).await?;
    let started = Instant::now();
    let results = pool
        .map("", "factoriz_sum", numbers.iter().map(|&n| (n,)))
        .await?;
    let pool_time = started.elapsed();
    let distributed: Vec<u64> = results
        .into_iter()
        .map(Value::decode)
        .collect::<Result<_, _>>()?;
    println!(
        "pool of {SERVERS} servers: {COUNT} numbers in {:.3} s",
        pool_time.as_secs_f64()
    );
    for (n, sum) in numbers.iter().zip(&distributed).take(5) {
        println!("  factoriz_sum({n}) = {sum}");
    }
    println!("  …");

    println!();
    println!("{}", pool.stats());
    println!(
        "speed-up versus the local serial run: {:.2}x ({} servers sharing {} CPUs here)",
        serial_time.as_secs_f64() / pool_time.as_secs_f64(),
        SERVERS,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    ensure!(
        distributed == serial,
        "the pool's results differ from the local serial computation"
    );
    println!("results identical to the local serial computation: yes");

    drop(pool);
    for server in servers {
        server.stop().await;
    }
    Ok(())
}
