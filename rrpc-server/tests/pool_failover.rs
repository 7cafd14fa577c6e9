//! The cluster pool against real `rrpc-server` processes: a node killed with
//! SIGKILL mid-run, and a node frozen with SIGSTOP (it stops answering but
//! its TCP connection stays open), both while jobs run on them.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rrpc_client::pool::{JobHandle, JobSpec, JobStatus, Pool, PoolOptions};
use rrpc_client::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// Starts the binary on a free port and waits for its ready line.
async fn start_server() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rrpc-server"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .unwrap()
        .expect("the ready line");
    let addr = line
        .strip_prefix("rrpc-server listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned();
    (child, addr)
}

/// `MyClass(t).f(n)` on the node: n + 1 after `t` seconds.
fn slow_increment(n: i64, t: f64) -> JobSpec {
    JobSpec::with(move |root| async move {
        let obj = root.call("MyClass", (t,)).await?.into_proxy()?;
        obj.call("f", (n,)).await
    })
}

/// Every status each job went through, by job id.
type StatusLog = Arc<Mutex<HashMap<u64, Vec<JobStatus>>>>;

/// Submits `count` jobs, recording every status each goes through.
fn submit_all(pool: &Pool, count: i64, t: f64) -> (Vec<JobHandle>, StatusLog) {
    let log: StatusLog = Arc::default();
    let jobs = (0..count)
        .map(|n| {
            let log = log.clone();
            pool.submit_job(slow_increment(n, t).on_status(move |info| {
                log.lock()
                    .unwrap()
                    .entry(info.id)
                    .or_default()
                    .push(info.status);
            }))
        })
        .collect();
    (jobs, log)
}

/// Waits until a job runs on `victim`.
async fn until_running_on(jobs: &[JobHandle], victim: &str) {
    loop {
        let busy = jobs.iter().any(|j| {
            let info = j.info();
            info.status == JobStatus::Running && info.node.as_deref() == Some(victim)
        });
        if busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every job gave its result once, and the victim's jobs ran again elsewhere.
async fn check_every_result_once(
    jobs: Vec<JobHandle>,
    log: &Mutex<HashMap<u64, Vec<JobStatus>>>,
    victim: &str,
) -> usize {
    let mut rerun = 0;
    for (n, job) in (0i64..).zip(jobs) {
        assert_eq!(job.clone().await.unwrap(), Value::Int(n + 1), "job {n}");
        let info = job.info();
        if !info.lost_on.is_empty() {
            rerun += 1;
            assert_eq!(info.lost_on, [victim.to_owned()]);
            assert_ne!(info.node.as_deref(), Some(victim));
            assert_eq!(info.attempts, 2);
        }
        let statuses = &log.lock().unwrap()[&info.id];
        let done = statuses.iter().filter(|s| **s == JobStatus::Done).count();
        assert_eq!(done, 1, "job {n} went through {statuses:?}");
        assert!(
            !statuses.contains(&JobStatus::Failed),
            "job {n}: {statuses:?}"
        );
    }
    rerun
}

#[tokio::test]
async fn killing_a_node_mid_run_still_yields_every_result_once() {
    within(60, async {
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push(start_server().await);
        }
        let addrs: Vec<String> = servers.iter().map(|(_, a)| a.clone()).collect();
        let pool = Pool::connect_with(
            &addrs,
            PoolOptions::default().concurrency(2).progress(false),
        )
        .await
        .unwrap();
        let (jobs, log) = submit_all(&pool, 24, 0.3);
        let victim = addrs[1].clone();
        until_running_on(&jobs, &victim).await;
        servers[1].0.start_kill().unwrap();
        let rerun = check_every_result_once(jobs, &log, &victim).await;
        assert!(rerun >= 1, "no job was re-run after the kill");
        let stats = pool.stats();
        let lost = stats.nodes[1].lost.as_deref().unwrap_or_default();
        assert!(lost.contains("connection lost"), "{stats}");
        assert_eq!(stats.done, 24);
        assert_eq!(stats.failed, 0);
        assert_eq!(pool.live_nodes(), 2);
        let _ = servers[1].0.wait().await;
    })
    .await
}

#[tokio::test]
async fn a_node_that_stops_answering_is_dropped_after_the_deadline() {
    within(60, async {
        let mut servers = Vec::new();
        for _ in 0..2 {
            servers.push(start_server().await);
        }
        let addrs: Vec<String> = servers.iter().map(|(_, a)| a.clone()).collect();
        let options = PoolOptions::default()
            .concurrency(2)
            .progress(false)
            .heartbeat(Duration::from_millis(100))
            .node_deadline(Duration::from_millis(500));
        let pool = Pool::connect_with(&addrs, options).await.unwrap();
        let (jobs, log) = submit_all(&pool, 12, 0.3);
        let victim = addrs[0].clone();
        until_running_on(&jobs, &victim).await;
        // Frozen: the socket stays open, but nothing answers any more.
        let pid = servers[0].0.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let rerun = check_every_result_once(jobs, &log, &victim).await;
        assert!(rerun >= 1, "no job was re-run after the freeze");
        let stats = pool.stats();
        let lost = stats.nodes[0].lost.as_deref().unwrap_or_default();
        assert!(lost.contains("did not answer"), "{stats}");
        // kill_on_drop sends SIGKILL, which ends a stopped process too.
    })
    .await
}
