//! The benchmark program: rrpc measured against the physical floor of this
//! machine, taken in the same run.
//!
//! ```text
//! cargo run --release --example bench                  # full run (~30 s)
//! cargo run --release --example bench -- --quick       # reduced, a few seconds
//! cargo run --release --example bench -- --connect ADDR
//! taskset -c 0 target/release/examples/bench           # pinned: stable latencies
//! ```
//!
//! The program re-runs itself as a child process (`--serve`, hidden) that
//! hosts an rrpc server exporting a `bench` object, a raw TCP echo server
//! and a raw bulk-stream server. Client and server are separate processes,
//! as in real use, so the memory of each can be read from `/proc`.
//!
//! First the raw baselines (plain tokio TCP, same runtime), then the rrpc
//! figures; the output is a table with each rrpc figure, its baseline, the
//! ratio and the issue's target, then one line per figure
//! `rrpc METRIC VALUE UNIT` and one per baseline `raw METRIC VALUE UNIT`.
//!
//! With `--connect ADDR` the rrpc figures that need only the stock demo
//! objects run against that server: `null_call` (as `path.len()`),
//! `pipelined`, `callback` (as `map(cb, [i])`), `async_callback` and
//! `connect`. The others need the `bench` object and the server's process
//! (for its memory) and are skipped; the raw baselines still run against a
//! local child, so ratios mean something only when ADDR is on this host.

mod child;
mod raw;
mod report;
mod rrpc;
mod serve;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use child::{cpu_time, peak_rss, reset_peak, rss, ServerChild};
use report::{percentile_us, Results};
use rrpc::Target;

/// How much of everything to do.
struct Plan {
    warmup: usize,
    latency_iters: usize,
    callback_iters: usize,
    pipeline_time: Duration,
    connects: usize,
    clients: usize,
    clients_time: Duration,
    bulk_bytes: u64,
    proxies: usize,
    idle_connections: usize,
}

const FULL: Plan = Plan {
    warmup: 2_000,
    latency_iters: 20_000,
    callback_iters: 5_000,
    pipeline_time: Duration::from_secs(2),
    connects: 500,
    clients: 100,
    clients_time: Duration::from_secs(2),
    bulk_bytes: 256 << 20,
    proxies: 100_000,
    idle_connections: 1_000,
};

const QUICK: Plan = Plan {
    warmup: 200,
    latency_iters: 2_000,
    callback_iters: 500,
    pipeline_time: Duration::from_millis(250),
    connects: 50,
    clients: 100,
    clients_time: Duration::from_millis(300),
    bulk_bytes: 32 << 20,
    proxies: 10_000,
    idle_connections: 100,
};

/// The latency figures are measured in this many interleaved rounds.
const LATENCY_ROUNDS: usize = 10;

/// Byte strings moved per bulk call, and how many such calls are in flight.
const BULK_CHUNK: usize = 1 << 20;
const BULK_WINDOW: usize = 4;
/// Objects made per `make` call for the proxy_mem figure.
const PROXY_BATCH: usize = 1_000;

const USAGE: &str = "usage: bench [--quick] [--connect HOST:PORT] [--only GROUP,...]
             [--threads N] [--server-threads N]
  --only: groups mem latency pipelined callback connect clients pool bulk
  --threads N: the client runtime's worker threads (0: a current-thread
    runtime; default: tokio's, one per core); --server-threads N: the same
    for the server child";

/// The groups of figures `--only` selects from.
const GROUPS: [&str; 8] = [
    "mem",
    "latency",
    "pipelined",
    "callback",
    "connect",
    "clients",
    "pool",
    "bulk",
];

/// Which groups of figures to measure (all of them by default).
#[derive(Debug, Clone)]
struct Only(Option<Vec<String>>);

impl Only {
    fn parse(list: &str) -> Result<Only> {
        let groups: Vec<String> = list.split(',').map(|g| g.trim().to_owned()).collect();
        for g in &groups {
            if !GROUPS.contains(&g.as_str()) {
                bail!("unknown group {g:?} for --only\n{USAGE}");
            }
        }
        Ok(Only(Some(groups)))
    }

    fn wants(&self, group: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|groups| groups.iter().any(|g| g == group))
    }
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut serve = false;
    let mut connect = None;
    let mut only = Only(None);
    let mut threads = None;
    let mut server_threads = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--serve" => serve = true,
            "--connect" => connect = Some(args.next().context("--connect needs HOST:PORT")?),
            "--only" => only = Only::parse(&args.next().context("--only needs GROUP,...")?)?,
            "--threads" => threads = Some(count(args.next(), "--threads")?),
            "--server-threads" => server_threads = Some(count(args.next(), "--server-threads")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let runtime = match threads {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    if serve {
        let outcome = runtime.block_on(serve::run());
        // The parent is done with us (or gone): leave without draining.
        runtime.shutdown_background();
        return outcome;
    }
    let connect = match connect {
        Some(addr) => Some(resolve(&addr)?),
        None => None,
    };
    let plan: &'static Plan = if quick { &QUICK } else { &FULL };
    // Measure from a task on the runtime's workers, as an async application
    // runs, not from the thread that blocks on the runtime.
    runtime.block_on(async move { tokio::spawn(run(plan, connect, only, server_threads)).await? })
}

/// A thread count given after `flag`.
fn count(value: Option<String>, flag: &str) -> Result<usize> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    value
        .parse()
        .with_context(|| format!("{flag} needs a number, not {value:?}"))
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

async fn run(
    plan: &Plan,
    connect: Option<SocketAddr>,
    only: Only,
    server_threads: Option<usize>,
) -> Result<()> {
    let server = ServerChild::start(server_threads).await?;
    eprintln!(
        "bench: server child {} (rrpc {}, echo {}, bulk {}){}",
        server.pid,
        server.rrpc,
        server.echo,
        server.bulk,
        match connect {
            Some(addr) => format!("; rrpc figures against {addr}"),
            None => String::new(),
        }
    );
    let mut results = Results::default();
    let outcome = measure(plan, &server, connect, &only, &mut results).await;
    server.stop().await;
    outcome?;
    println!();
    results.print_table();
    println!();
    results.print_lines();
    Ok(())
}

async fn measure(
    plan: &Plan,
    server: &ServerChild,
    connect: Option<SocketAddr>,
    only: &Only,
    r: &mut Results,
) -> Result<()> {
    let target = Target::connect(connect.unwrap_or(server.rrpc), connect.is_none()).await?;
    let me = std::process::id();

    if only.wants("mem") {
        // Memory first, while neither process has freed memory to reuse.
        match target.bench() {
            Some(bench) => {
                eprintln!("conn_mem: {} idle connections", plan.idle_connections);
                conn_mem(plan, &target, server.pid, r).await;

                eprintln!("proxy_mem: {} live proxies", plan.proxies);
                let mut proxies = Vec::with_capacity(plan.proxies);
                let (client0, server0) = (rss(me), rss(server.pid));
                rrpc::hold_more(bench, &mut proxies, plan.proxies, PROXY_BATCH).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let per = |before: Option<u64>, after: Option<u64>| {
                    Some(after?.saturating_sub(before?) as f64 / plan.proxies as f64)
                };
                if let Some(b) = per(client0, rss(me)) {
                    r.rrpc("proxy_mem_client", b, "B/proxy");
                }
                if let Some(b) = per(server0, rss(server.pid)) {
                    r.rrpc("proxy_mem_server", b, "B/object");
                }
                drop(proxies);
            }
            None => {
                r.skip("conn_mem", "needs the benchmark server's process");
                r.skip(
                    "proxy_mem",
                    "needs the bench object and the server's process",
                );
            }
        }
    }

    let (latency, callbacks) = (only.wants("latency"), only.wants("callback"));
    if latency || callbacks {
        // The latency figures are taken in interleaved rounds, so that a
        // drift of the machine (shared, virtual) affects each of them alike
        // and the ratios between them hold.
        eprintln!(
            "latency: {} sequential round trips{}, in {LATENCY_ROUNDS} rounds",
            plan.latency_iters,
            if callbacks {
                format!(" and {} callback calls", plan.callback_iters)
            } else {
                String::new()
            }
        );
        raw::pingpong(server.echo, plan.warmup, 0).await?;
        rrpc::null_call(&target, plan.warmup, 0).await?;
        if callbacks {
            rrpc::callback(&target, plan.warmup / 4, 0).await?;
            rrpc::async_callback(&target, plan.warmup / 4, 0).await?;
        }
        let (mut ping, mut null, mut cb, mut acb) = (vec![], vec![], vec![], vec![]);
        for _ in 0..LATENCY_ROUNDS {
            let (n, c) = (
                plan.latency_iters / LATENCY_ROUNDS,
                plan.callback_iters / LATENCY_ROUNDS,
            );
            ping.extend(raw::pingpong(server.echo, 0, n).await?);
            null.extend(rrpc::null_call(&target, 0, n).await?);
            if callbacks {
                cb.extend(rrpc::callback(&target, 0, c).await?);
                acb.extend(rrpc::async_callback(&target, 0, c).await?);
            }
        }
        r.raw("pingpong_p50", percentile_us(&mut ping, 50.0), "us");
        r.raw("pingpong_p25", percentile_us(&mut ping, 25.0), "us");
        r.raw("pingpong_p99", percentile_us(&mut ping, 99.0), "us");
        let null_p50 = percentile_us(&mut null, 50.0);
        r.rrpc("null_call_p50", null_p50, "us");
        r.rrpc("null_call_p25", percentile_us(&mut null, 25.0), "us");
        r.rrpc("null_call_p99", percentile_us(&mut null, 99.0), "us");
        if callbacks {
            let cb_p50 = percentile_us(&mut cb, 50.0);
            r.rrpc("callback_p50", cb_p50, "us");
            // What a callback adds to its two round trips, each a null
            // call's (the difference of the medians, informational):
            // `callback <= 2x null_call` holds only while it is zero or
            // less (see BENCHMARKS.md).
            r.rrpc("callback_excess_p50", cb_p50 - 2.0 * null_p50, "us");
            r.rrpc("callback_p25", percentile_us(&mut cb, 25.0), "us");
            r.rrpc("async_callback_p50", percentile_us(&mut acb, 50.0), "us");
        }
    }

    if only.wants("pipelined") {
        eprintln!("throughput: pipelined on one connection");
        let rate = raw::pipelined(server.echo, 1024, plan.pipeline_time).await?;
        r.raw("pipelined", rate, "msgs/s");
        for depth in [16, 128, 1024, 0] {
            let cpu0 = (cpu_time(me), cpu_time(server.pid));
            // Depth 0 stands for 1024 calls awaited as futures.
            let (name, (rate, calls)) = match depth {
                0 => (
                    "pipelined_1024_futures".to_owned(),
                    rrpc::pipelined_futures(&target, 1024, plan.pipeline_time).await?,
                ),
                _ => (
                    format!("pipelined_{depth}"),
                    rrpc::pipelined(&target, depth, plan.pipeline_time).await?,
                ),
            };
            r.rrpc(&name, rate, "calls/s");
            // What a call costs each side, in CPU time (10 ms resolution).
            let per_call = |before: Option<Duration>, after: Option<Duration>| {
                Some(after?.saturating_sub(before?).as_secs_f64() * 1e6 / calls as f64)
            };
            if let Some(us) = per_call(cpu0.0, cpu_time(me)) {
                r.rrpc(format!("{name}_cpu_client"), us, "us/call");
            }
            if let Some(us) = per_call(cpu0.1, cpu_time(server.pid)) {
                r.rrpc(format!("{name}_cpu_server"), us, "us/call");
            }
        }
    }

    if only.wants("connect") {
        eprintln!("connect: {} connections", plan.connects);
        let mut s = raw::connects(server.echo, plan.connects).await?;
        r.raw("connect_p50", percentile_us(&mut s, 50.0), "us");
        let mut s = rrpc::connects(target.addr, plan.connects).await?;
        r.rrpc("connect_p50", percentile_us(&mut s, 50.0), "us");
    }

    if only.wants("clients") {
        eprintln!("many_clients: {} connections", plan.clients);
        let rate = raw::many_clients(server.echo, plan.clients, plan.clients_time).await?;
        r.raw("many_clients", rate, "msgs/s");
        if connect.is_none() {
            let rate = rrpc::many_clients(target.addr, plan.clients, plan.clients_time).await?;
            r.rrpc("many_clients", rate, "calls/s");
        } else {
            r.skip(
                "many_clients",
                "needs the bench object and lifted connection limits",
            );
        }
    }

    if only.wants("pool") {
        if connect.is_none() {
            let jobs = plan.callback_iters * 4;
            eprintln!("pool: {jobs} tiny jobs on one node");
            let per_job = rrpc::pool_overhead(target.addr, jobs).await?;
            r.rrpc("pool_overhead", per_job, "us");
        } else {
            r.skip("pool_overhead", "needs the bench object");
        }
    }

    if only.wants("bulk") {
        eprintln!("bulk: {} MiB", plan.bulk_bytes >> 20);
        let rate = raw::bulk(server.bulk, plan.bulk_bytes).await?;
        r.raw("bulk", rate, "MB/s");
        match target.bench() {
            Some(bench) => {
                // The RSS the transfers start from: their peaks stay within a
                // few chunks of it, whatever the transfer size.
                for (who, pid) in [("client", me), ("server", server.pid)] {
                    if let Some(before) = rss(pid) {
                        r.rrpc(format!("bulk_rss_before_{who}"), mib(before), "MiB");
                    }
                }
                for (name, down) in [("bulk_down", true), ("bulk_up", false)] {
                    let reset = reset_peak(me) && reset_peak(server.pid);
                    let rate = if down {
                        rrpc::bulk_down(bench, plan.bulk_bytes, BULK_CHUNK, BULK_WINDOW).await?
                    } else {
                        rrpc::bulk_up(bench, plan.bulk_bytes, BULK_CHUNK, BULK_WINDOW).await?
                    };
                    r.rrpc(name, rate, "MB/s");
                    for (who, pid) in [("client", me), ("server", server.pid)] {
                        if let Some(peak) = peak_rss(pid) {
                            r.rrpc(format!("{name}_peak_rss_{who}"), mib(peak), "MiB");
                        }
                    }
                    if !reset {
                        eprintln!("  note: peak RSS could not be reset; it counts from the start");
                    }
                }
            }
            None => r.skip("bulk", "needs the bench object"),
        }
    }

    target.close().await;
    Ok(())
}

/// Server (and client) bytes per idle connection. A failure (a low limit
/// on open files, say) skips the figure instead of ending the run.
async fn conn_mem(plan: &Plan, target: &Target, server_pid: u32, r: &mut Results) {
    let me = std::process::id();
    let (client0, server0) = (rss(me), rss(server_pid));
    let conns = match rrpc::idle_connections(target.addr, plan.idle_connections).await {
        Ok(conns) => conns,
        Err(e) => return r.skip("conn_mem", format!("{e:#}")),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per = |before: Option<u64>, after: Option<u64>| {
        Some(after?.saturating_sub(before?) as f64 / plan.idle_connections as f64)
    };
    if let Some(b) = per(server0, rss(server_pid)) {
        r.rrpc("conn_mem", b, "B/conn");
    }
    if let Some(b) = per(client0, rss(me)) {
        r.rrpc("conn_mem_client", b, "B/conn");
    }
    for conn in &conns {
        conn.close();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
