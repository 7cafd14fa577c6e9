//! The cluster pool against real in-process servers on 127.0.0.1:0: input
//! order, load spreading, CPU discovery, status callbacks, cancellation,
//! failover when a node's connection dies, not-retryable jobs, and the
//! clear failures of an empty or emptied cluster. (Killing a real server
//! process mid-run is in rrpc-server/tests/pool_failover.rs.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start_with, within, TestServer, WorkCounters};
use rrpc_client::pool::{JobSpec, JobStatus, Pool, PoolError, PoolOptions};
use rrpc_client::{Args, Function, Namespace, Value};

/// `square(n, ms)`: n², after sleeping `ms` milliseconds.
fn square() -> Value {
    Function::from_async("square", |_cx, mut a: Args| async move {
        let n: i64 = a.take(0, "n")?;
        let ms: u64 = a.take_opt(1, "ms")?.unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(n * n)
    })
    .into_value()
}

/// A node whose `square` works.
async fn good_node() -> TestServer {
    let mut root = Namespace::new("good");
    root.insert("square", square());
    start_with(root, Arc::new(WorkCounters::default())).await
}

/// A node whose `square` kills the connection it is called on — the node
/// dies in the middle of the job, as far as the client can tell.
async fn dying_node() -> TestServer {
    let mut root = Namespace::new("dying");
    root.insert(
        "square",
        Function::from_async("square", |cx, _a: Args| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cx.connection().close();
            std::future::pending::<()>().await;
            Ok(())
        })
        .into_value(),
    );
    start_with(root, Arc::new(WorkCounters::default())).await
}

fn quiet() -> PoolOptions {
    PoolOptions::default().progress(false)
}

#[tokio::test]
async fn map_returns_results_in_input_order_and_uses_every_node() {
    within(30, async {
        let servers = [good_node().await, good_node().await, good_node().await];
        let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
        let pool = Pool::connect_with(&addrs, quiet().concurrency(2))
            .await
            .unwrap();
        // Later inputs are quicker, so they finish first: order must still hold.
        let inputs: Vec<(i64, u64)> = (0..60).map(|n| (n, 60 - n as u64)).collect();
        let results = pool.map("", "square", inputs).await.unwrap();
        let expected: Vec<Value> = (0..60i64).map(|n| Value::from(n * n)).collect();
        assert_eq!(results, expected);
        let stats = pool.stats();
        assert_eq!(stats.nodes.len(), 3);
        for node in &stats.nodes {
            assert!(node.jobs > 0, "node {} ran nothing:\n{stats}", node.node);
            assert_eq!(node.failures, 0);
        }
        assert_eq!(stats.done, 60);
        assert!(stats.speedup() > 1.5, "no parallelism:\n{stats}");
        let table = stats.to_string();
        assert!(
            table.contains("Node") && table.contains("Sec/Job"),
            "{table}"
        );
    })
    .await
}

#[tokio::test]
async fn idle_nodes_are_preferred_and_concurrency_is_respected() {
    within(30, async {
        let servers = [good_node().await, good_node().await];
        let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
        let pool = Pool::connect_with(&addrs, quiet().concurrency(2))
            .await
            .unwrap();
        // Two jobs on two idle nodes: one each.
        let a = pool.submit("", "square", (1, 1000));
        let b = pool.submit("", "square", (2, 1000));
        common::eventually(5, || {
            a.status() == JobStatus::Running && b.status() == JobStatus::Running
        })
        .await;
        assert_ne!(a.info().node, b.info().node, "both went to one node");
        // Four more: the cluster holds 4 at once, so 2 wait in the queue.
        let more: Vec<_> = (3..7)
            .map(|n| pool.submit("", "square", (n, 1000)))
            .collect();
        let stats = pool.stats();
        assert_eq!((stats.running, stats.queued), (4, 2), "{stats:?}");
        for node in &stats.nodes {
            assert_eq!(node.running, 2);
        }
        assert_eq!(a.await.unwrap(), Value::from(1));
        assert_eq!(b.await.unwrap(), Value::from(4));
        for (n, job) in (3i64..).zip(more) {
            assert_eq!(job.await.unwrap(), Value::from(n * n));
        }
    })
    .await
}

#[tokio::test]
async fn concurrency_defaults_to_the_cpu_count_the_node_reports() {
    within(30, async {
        let mut sys = Namespace::new("sys");
        sys.insert(
            "cpu_count",
            Function::blocking("cpu_count", |_a: Args| Ok(3u64)).into_value(),
        );
        let mut root = Namespace::new("with-sys");
        root.insert("square", square());
        root.insert("sys", Value::object(sys));
        let with_sys = start_with(root, Arc::new(WorkCounters::default())).await;
        let without = good_node().await;
        let pool = Pool::connect_with([with_sys.addr.clone(), without.addr.clone()], quiet())
            .await
            .unwrap();
        let stats = pool.stats();
        assert_eq!((stats.nodes[0].cpus, stats.nodes[0].concurrency), (3, 3));
        // No `sys` service and nothing configured: one job at a time.
        assert_eq!((stats.nodes[1].cpus, stats.nodes[1].concurrency), (1, 1));
        drop(pool);
        // Configured per node, it wins over the report.
        let pool = Pool::connect_with(
            [
                rrpc_client::pool::NodeSpec::new(with_sys.addr.clone()).concurrency(5),
                without.addr.clone().into(),
            ],
            quiet().concurrency(2),
        )
        .await
        .unwrap();
        let stats = pool.stats();
        assert_eq!((stats.nodes[0].cpus, stats.nodes[0].concurrency), (3, 5));
        assert_eq!((stats.nodes[1].cpus, stats.nodes[1].concurrency), (2, 2));
    })
    .await
}

#[tokio::test]
async fn a_job_handle_is_an_async_result_with_status_callbacks() {
    within(30, async {
        let server = good_node().await;
        let pool = Pool::connect_with([server.addr.clone()], quiet())
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let job = pool.submit_job(JobSpec::call("", "square", (7, 50)).on_status(move |info| {
            log.lock().unwrap().push((info.status, info.node.clone()));
        }));
        assert!(!job.ready());
        let (tx, rx) = tokio::sync::oneshot::channel();
        job.add_callback(move |j| {
            let _ = tx.send(j.result());
        });
        assert_eq!(job.clone().await.unwrap(), Value::from(49));
        assert!(job.ready() && job.error().is_none());
        assert_eq!(rx.await.unwrap().unwrap().unwrap(), Value::from(49));
        // From blocking code, too.
        let j2 = job.clone();
        let (waited, value) =
            tokio::task::spawn_blocking(move || (j2.wait(Duration::from_secs(1)), j2.value()))
                .await
                .unwrap();
        assert!(waited);
        assert_eq!(value.unwrap(), Value::from(49));
        let info = job.info();
        assert_eq!(info.id, 0);
        assert_eq!(info.status, JobStatus::Done);
        assert_eq!(info.node.as_deref(), Some(server.addr.as_str()));
        assert_eq!(info.attempts, 1);
        let (start, end) = (info.started.unwrap(), info.ended.unwrap());
        assert!(end >= start && info.duration.unwrap() >= Duration::from_millis(50));
        let statuses: Vec<JobStatus> = seen.lock().unwrap().iter().map(|s| s.0).collect();
        assert_eq!(
            statuses,
            [JobStatus::Queued, JobStatus::Running, JobStatus::Done]
        );
        // A remote error fails the job with the node and the remote kind.
        let bad = pool.submit("", "square", ("seven",)).await.unwrap_err();
        assert!(bad.remote().is_some(), "{bad}");
        assert!(bad.to_string().contains(&server.addr), "{bad}");
    })
    .await
}

#[tokio::test]
async fn cancel_stops_queued_and_running_jobs_and_wait_all_returns() {
    within(30, async {
        let server = good_node().await;
        let pool = Pool::connect_with([server.addr.clone()], quiet().concurrency(1))
            .await
            .unwrap();
        let running = pool.submit("", "square", (1, 10_000));
        let queued = pool.submit("", "square", (2, 10_000));
        let last = pool.submit("", "square", (3, 0));
        common::eventually(5, || running.status() == JobStatus::Running).await;
        assert_eq!(queued.status(), JobStatus::Queued);
        assert!(queued.cancel());
        assert!(running.cancel());
        assert!(!running.cancel(), "cancelling twice");
        assert!(matches!(
            running.clone().await,
            Err(PoolError::Cancelled(0))
        ));
        assert_eq!(queued.status(), JobStatus::Cancelled);
        // The freed slot goes to the next job at once.
        assert_eq!(last.await.unwrap(), Value::from(9));
        pool.wait_all().await;
        assert_eq!(pool.active(), 0);
        let stats = pool.stats();
        assert_eq!((stats.done, stats.cancelled), (1, 2));
        // cancel_all empties the pool.
        for n in 0..5 {
            pool.submit("", "square", (n, 10_000));
        }
        assert_eq!(pool.cancel_all(), 5);
        pool.wait_all().await;
    })
    .await
}

#[tokio::test]
async fn jobs_on_a_dying_node_are_re_run_on_the_others() {
    within(30, async {
        let dying = dying_node().await;
        let good = good_node().await;
        let pool = Pool::connect_with(
            [dying.addr.clone(), good.addr.clone()],
            quiet().concurrency(2),
        )
        .await
        .unwrap();
        let jobs: Vec<_> = (0..10).map(|n| pool.submit("", "square", (n, 5))).collect();
        for (n, job) in (0i64..).zip(&jobs) {
            assert_eq!(job.clone().await.unwrap(), Value::from(n * n), "job {n}");
        }
        // The first jobs went to the dying node (idle nodes first, in order),
        // were cut off with it, and ran again on the good one.
        let rerun: Vec<_> = jobs
            .iter()
            .filter(|j| !j.info().lost_on.is_empty())
            .collect();
        assert!(!rerun.is_empty(), "no job was re-run");
        for job in rerun {
            let info = job.info();
            assert_eq!(info.lost_on, std::slice::from_ref(&dying.addr));
            assert_eq!(info.node.as_deref(), Some(good.addr.as_str()));
            assert_eq!(info.attempts, 2);
        }
        let stats = pool.stats();
        assert!(stats.nodes[0].lost.is_some(), "{stats}");
        assert_eq!(stats.nodes[1].jobs, 10);
        assert_eq!(pool.live_nodes(), 1);
    })
    .await
}

#[tokio::test]
async fn a_job_marked_not_retryable_fails_instead_of_re_running() {
    within(30, async {
        let dying = dying_node().await;
        let good = good_node().await;
        let pool = Pool::connect_with([dying.addr.clone(), good.addr.clone()], quiet())
            .await
            .unwrap();
        // Idle nodes tie; the first in the list gets the first job.
        let job = pool.submit_job(JobSpec::call("", "square", (4,)).not_retryable());
        let err = job.clone().await.unwrap_err();
        assert!(matches!(err, PoolError::NotRetried { .. }), "{err}");
        assert!(err.to_string().contains("not retryable"), "{err}");
        assert!(err.to_string().contains(&dying.addr), "{err}");
        let info = job.info();
        assert_eq!((info.status, info.attempts), (JobStatus::Failed, 1));
        assert_eq!(
            pool.stats().nodes[1].jobs,
            0,
            "it ran again on the good node"
        );
        // A retryable job after it runs on the node that is left.
        assert_eq!(
            pool.submit("", "square", (4,)).await.unwrap(),
            Value::from(16)
        );
    })
    .await
}

#[tokio::test]
async fn the_retry_limit_is_kept() {
    within(30, async {
        let nodes = [dying_node().await, dying_node().await, good_node().await];
        let addrs: Vec<String> = nodes.iter().map(|s| s.addr.clone()).collect();
        // With 0 retries a node loss fails the job.
        let pool = Pool::connect_with(&addrs, quiet().retries(0))
            .await
            .unwrap();
        let err = pool.submit("", "square", (2,)).await.unwrap_err();
        assert!(
            matches!(err, PoolError::RetriesExhausted { attempts: 1, .. }),
            "{err}"
        );
        // With 1 retry (per job) it survives one loss.
        let job = pool.submit_job(JobSpec::call("", "square", (3,)).retries(1));
        assert_eq!(job.clone().await.unwrap(), Value::from(9));
        assert_eq!(job.info().attempts, 2);
    })
    .await
}

#[tokio::test]
async fn with_no_node_left_pending_jobs_fail_with_a_clear_error() {
    within(30, async {
        let dying = dying_node().await;
        let pool = Pool::connect_with([dying.addr.clone()], quiet().concurrency(1))
            .await
            .unwrap();
        let jobs: Vec<_> = (0..5).map(|n| pool.submit("", "square", (n,))).collect();
        let started = Instant::now();
        for job in jobs {
            let err = job.await.unwrap_err();
            assert!(matches!(err, PoolError::NoNodeLeft { .. }), "{err}");
            assert!(err.to_string().contains("no node is left"), "{err}");
            assert!(err.to_string().contains(&dying.addr), "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // New jobs fail at once too.
        let err = pool.submit("", "square", (1,)).await.unwrap_err();
        assert!(err.is_node_loss(), "{err}");
        assert_eq!(pool.active(), 0);
    })
    .await
}

#[tokio::test]
async fn an_empty_cluster_fails_fast() {
    within(10, async {
        let started = Instant::now();
        let err = Pool::connect(Vec::<String>::new()).await.unwrap_err();
        assert!(matches!(err, PoolError::EmptyCluster), "{err}");
        // Addresses where nothing listens: fails at once, naming each.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let err = Pool::connect([addr.clone()]).await.unwrap_err();
        assert!(matches!(err, PoolError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    })
    .await
}

#[tokio::test]
async fn an_unreachable_node_is_listed_and_the_others_work() {
    within(10, async {
        let good = good_node().await;
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = free.local_addr().unwrap().to_string();
        drop(free);
        let pool = Pool::connect_with([gone.clone(), good.addr.clone()], quiet())
            .await
            .unwrap();
        assert_eq!(
            pool.submit("", "square", (5,)).await.unwrap(),
            Value::from(25)
        );
        let stats = pool.stats();
        assert!(stats.nodes[0]
            .lost
            .as_deref()
            .unwrap()
            .contains("unreachable"));
        assert!(stats.to_string().contains(&format!("{gone} (lost)")));
    })
    .await
}

#[tokio::test]
async fn nodes_added_while_running_get_work() {
    within(30, async {
        let first = good_node().await;
        let pool = Pool::connect_with([first.addr.clone()], quiet().concurrency(1))
            .await
            .unwrap();
        let jobs: Vec<_> = (0..8)
            .map(|n| pool.submit("", "square", (n, 100)))
            .collect();
        let second = good_node().await;
        let index = pool.add_node(second.addr.clone()).await.unwrap();
        assert_eq!(index, 1);
        for job in &jobs {
            job.clone().await.unwrap();
        }
        let stats = pool.stats();
        assert!(
            stats.nodes[1].jobs >= 3,
            "the new node got little work:\n{stats}"
        );
    })
    .await
}

#[tokio::test]
async fn typed_or_multi_call_jobs_run_as_closures_over_the_root() {
    within(30, async {
        let server = good_node().await;
        let pool = Pool::connect_with([server.addr.clone()], quiet())
            .await
            .unwrap();
        let results = pool
            .map_jobs((1..=3i64).map(|n| {
                JobSpec::with(move |root| async move {
                    let a: i64 = root.call("square", (n,)).await?.decode()?;
                    let b: i64 = root.call("square", (a,)).await?.decode()?;
                    Ok(Value::from(b))
                })
            }))
            .await;
        let values: Vec<Value> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, [Value::from(1), Value::from(16), Value::from(81)]);
    })
    .await
}

#[tokio::test]
async fn a_pinned_job_runs_on_its_node_only_and_fails_when_it_is_lost() {
    within(30, async {
        let nodes = [good_node().await, good_node().await, dying_node().await];
        let (a, b, dying) = (&nodes[0].addr, &nodes[1].addr, &nodes[2].addr);
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = free.local_addr().unwrap().to_string();
        drop(free);
        let pool = Pool::connect_with([a.clone(), b.clone(), gone.clone()], quiet().concurrency(1))
            .await
            .unwrap();
        // Four slow jobs pinned to b queue up there; unpinned jobs submitted
        // after them are not held up, and never go to b while it is full.
        let pinned: Vec<_> = (0..4)
            .map(|n| pool.submit_job(JobSpec::call("", "square", (n, 150)).on_node(b.clone())))
            .collect();
        let free_jobs: Vec<_> = (10..12)
            .map(|n| pool.submit("", "square", (n, 0)))
            .collect();
        for (n, job) in (10i64..).zip(&free_jobs) {
            assert_eq!(job.clone().await.unwrap(), Value::from(n * n));
            assert_eq!(job.info().node.as_deref(), Some(a.as_str()), "job {n}");
        }
        assert!(
            !pinned[3].ready(),
            "the unpinned jobs waited for the pinned ones"
        );
        for (n, job) in (0i64..).zip(&pinned) {
            assert_eq!(job.clone().await.unwrap(), Value::from(n * n));
            let info = job.info();
            assert_eq!(info.node.as_deref(), Some(b.as_str()), "job {n}");
            assert_eq!(info.attempts, 1);
        }
        let stats = pool.stats();
        assert_eq!(stats.nodes[1].jobs, 4, "{stats}");

        // Pinned to a node the pool could not reach, or does not have: fails at once.
        let err = pool
            .submit_job(JobSpec::call("", "square", (1,)).on_node(gone.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::PinnedNodeLost { .. }), "{err}");
        assert!(
            err.is_node_loss() && err.to_string().contains("unreachable"),
            "{err}"
        );
        let err = pool
            .submit_job(JobSpec::call("", "square", (1,)).on_node("10.9.9.9:1"))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::PinnedNodeLost { .. }), "{err}");

        // Pinned to a node that dies: the running job and the one queued
        // behind it fail, and neither moves to the live node.
        drop(pool);
        let pool = Pool::connect_with([a.clone(), dying.clone()], quiet().concurrency(1))
            .await
            .unwrap();
        let on_dying: Vec<_> = (0..2)
            .map(|n| pool.submit_job(JobSpec::call("", "square", (n,)).on_node(dying.clone())))
            .collect();
        for job in &on_dying {
            let err = job.clone().await.unwrap_err();
            assert!(matches!(err, PoolError::PinnedNodeLost { .. }), "{err}");
            assert!(err.to_string().contains(dying.as_str()), "{err}");
        }
        assert_eq!(on_dying[0].info().attempts, 1);
        assert_eq!(on_dying[1].info().attempts, 0);
        let stats = pool.stats();
        assert!(stats.nodes[1].lost.is_some(), "{stats}");
        assert_eq!(
            stats.nodes[0].jobs, 0,
            "a pinned job ran elsewhere:\n{stats}"
        );
        assert_eq!(pool.active(), 0);
    })
    .await
}

#[tokio::test]
async fn dropping_the_pool_fails_its_unfinished_jobs_and_stops_its_tasks() {
    within(30, async {
        let server = good_node().await;
        let pool = Pool::connect_with([server.addr.clone()], quiet().concurrency(1))
            .await
            .unwrap();
        let running = pool.submit("", "square", (1, 10_000));
        let queued = pool.submit("", "square", (2, 0));
        common::eventually(5, || running.status() == JobStatus::Running).await;
        drop(pool);
        assert!(matches!(running.await, Err(PoolError::Shutdown(0))));
        assert!(matches!(queued.await, Err(PoolError::Shutdown(1))));
        // The connection went with it, so the server's call was cancelled.
        let handle = server.server.handle().clone();
        assert!(
            common::eventually(5, || handle.stats().connections == 0).await,
            "the pool's connection is still open"
        );
    })
    .await
}
