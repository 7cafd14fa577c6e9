//! The Russian survey's dispy scenario (`dispy.JobCluster`): jobs that sleep
//! a random short time and return the host they ran on, submitted to a
//! cluster; each job's result is printed with its start time, then the
//! per-node table (Node | CPUs | Jobs | Sec/Job | Node Time Sec).
//!
//! ```text
//! cargo run --release --example job_cluster
//! ```
//!
//! The nodes are in-process servers on free loopback ports; each reports its
//! CPU count through a `sys.cpu_count()` service, which sets how many jobs it
//! runs at once.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use rand::Rng;
use rrpc_client::pool::Pool;
use rrpc_client::{Function, Namespace, Value};
use rrpc_server::Server;

const NODES: usize = 3;
const JOBS: usize = 12;

/// This machine's name, as dispy's `socket.gethostname()`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A node: `compute(n)` sleeps `n` milliseconds and returns `[host, n]`.
async fn node(cpus: u64) -> Result<rrpc_server::RunningServer> {
    // The node's name: this host, and the port that tells the nodes apart
    // (known once the server is bound).
    let name: Arc<OnceLock<String>> = Arc::default();
    let host = name.clone();
    let mut root = Namespace::new("node");
    root.insert(
        "compute",
        Function::from_async("compute", move |_cx, mut args| {
            let host = host.get().cloned().unwrap_or_default();
            async move {
                let n: u64 = args.take(0, "n")?;
                tokio::time::sleep(Duration::from_millis(n)).await;
                Ok(Value::List(vec![Value::from(host), Value::from(n)]))
            }
        })
        .into_value(),
    );
    let mut sys = Namespace::new("sys");
    sys.insert(
        "cpu_count",
        Function::blocking("cpu_count", move |_args| Ok(cpus)).into_value(),
    );
    root.insert("sys", Value::object(sys));
    let listening = Server::new(root).bind("127.0.0.1:0").await?;
    let _ = name.set(format!("{}:{}", hostname(), listening.local_addr().port()));
    Ok(listening.spawn())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut servers = Vec::new();
    for i in 0..NODES {
        servers.push(node(1 + i as u64).await?);
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();

    // cluster = dispy.JobCluster(compute, nodes=[...])
    let cluster = Pool::connect(&addrs).await?;
    let mut rng = rand::rng();
    let jobs: Vec<_> = (0..JOBS)
        .map(|_| cluster.submit("", "compute", (rng.random_range(10..=100u64),)))
        .collect();

    for job in jobs {
        let (host, n): (String, u64) = job.clone().await?.decode()?;
        let info = job.info();
        let start = info
            .started
            .context("a finished job has a start time")?
            .duration_since(UNIX_EPOCH)?
            .as_secs_f64();
        println!("{host} executed job {} at {start:.3} with {n}", job.id());
    }
    println!();
    let stats = cluster.stats();
    println!("{stats}");
    ensure!(stats.done == JOBS as u64, "not every job was done");
    drop(cluster);
    for server in servers {
        server.stop().await;
    }
    Ok(())
}
