//! The Spanish note's distributed-processing job, typed: a `Factorizer`
//! service exports `factoriz_sum(n)` (factorise `n`, sum its prime factors
//! with multiplicity) from an in-process server on a free loopback port; the
//! client calls it through the generated typed proxy for a run of large
//! numbers (the note's "un número alto incrementándolo de a uno"), prints the
//! results and checks each against a local computation.
//!
//! ```text
//! cargo run --release --example typed_factorize
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use rrpc_client::{TypedProxy, Value};
use rrpc_server::Server;

/// The service, declared once for both sides.
#[rrpc_client::service]
pub trait Factorizer {
    /// Factorises `n` and returns the sum of its prime factors, with
    /// multiplicity (`factoriz_sum(12) == 2 + 2 + 3`).
    fn factoriz_sum(&self, n: u64) -> u64;
    /// The prime factors of `n`, smallest first.
    fn factorize(&self, n: u64) -> Vec<u64>;
    /// How many numbers this server has factorised.
    #[rrpc(get)]
    fn served(&self) -> u64;
}

/// The server's implementation: plain Rust, run on the blocking pool.
#[derive(Default)]
struct Local {
    served: AtomicU64,
}

impl Factorizer for Local {
    fn factoriz_sum(&self, n: u64) -> u64 {
        self.served.fetch_add(1, Ordering::Relaxed);
        factors(n).iter().sum()
    }
    fn factorize(&self, n: u64) -> Vec<u64> {
        self.served.fetch_add(1, Ordering::Relaxed);
        factors(n)
    }
    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Trial division by 2, 3 and then 6k ± 1.
fn factors(mut n: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for p in [2, 3] {
        while n >= p && n.is_multiple_of(p) {
            out.push(p);
            n /= p;
        }
    }
    let mut d: u64 = 5;
    while d.saturating_mul(d) <= n {
        for p in [d, d + 2] {
            while n.is_multiple_of(p) {
                out.push(p);
                n /= p;
            }
        }
        d += 6;
    }
    if n > 1 {
        out.push(n);
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    // The server: one typed object in the root namespace.
    let root = rrpc_client::Namespace::new("procdistrib")
        .with("factorizer", FactorizerObject::new(Local::default()));
    let listening = Server::new(root).bind("127.0.0.1:0").await?;
    let addr = listening.local_addr().to_string();
    let server = listening.spawn();
    println!("server listening on {addr}");

    // The client: a typed proxy to the server's object.
    let conn = rrpc_client::connect(&addr).await?;
    let fz: FactorizerProxy = conn.root().get("factorizer").await?.decode()?;

    // One number after another, like the note's clnt_lineal.py.
    let start_n: u64 = 10_000_000_000_000;
    let numbers: Vec<u64> = (start_n..start_n + 10)
        .chain([
            600_851_475_143,
            9_999_999_967 * 3,
            u64::from(u32::MAX) * 65_537,
        ])
        .collect();
    let t = Instant::now();
    let mut mismatches = 0;
    for &n in &numbers {
        let remote = fz.factoriz_sum(n).await?;
        let local_factors = factors(n);
        ensure!(
            local_factors.iter().product::<u64>() == n,
            "local factorisation of {n} is wrong: {local_factors:?}"
        );
        let local: u64 = local_factors.iter().sum();
        let mark = if remote == local { "ok" } else { "MISMATCH" };
        if remote != local {
            mismatches += 1;
        }
        println!("factoriz_sum({n}) = {remote}  [local {local}: {mark}]");
    }
    println!("{} numbers in {:.2?}", numbers.len(), t.elapsed());

    // All at once: async results, collected as they finish.
    let t = Instant::now();
    let pending: Vec<_> = numbers.iter().map(|&n| fz.factoriz_sum_async(n)).collect();
    for (&n, result) in numbers.iter().zip(pending) {
        let remote = result.await?;
        if remote != factors(n).iter().sum::<u64>() {
            mismatches += 1;
        }
    }
    println!(
        "the same {} numbers as async results in {:.2?}",
        numbers.len(),
        t.elapsed()
    );

    // The same object by name, the dynamic way.
    let by_name = fz.proxy().context("the factorizer is remote")?.clone();
    let factors_of = by_name.call("factorize", (600_851_475_143u64,)).await?;
    println!("factorize(600851475143) by name = {factors_of}");
    ensure!(
        factors_of == Value::from(vec![71u64, 839, 1471, 6857]),
        "factorize by name gave {factors_of}"
    );
    println!("the server factorised {} numbers", fz.served().await?);

    ensure!(
        mismatches == 0,
        "{mismatches} remote results differ from the local ones"
    );
    println!("all results match the local computation");
    conn.close();
    server.stop().await;
    Ok(())
}
