//! The cluster pool: spread independent jobs over many rrpc servers.
//!
//! A [`Pool`] (alias [`ClusterPool`]) connects to a list of servers, learns
//! how many jobs each runs at once (its CPU count, or what you configure),
//! and keeps every node busy up to that, idle nodes first. Each submitted job
//! gets a [`JobHandle`] — an async result with the job's status, node and
//! times. When a node dies or stops answering its heartbeat within
//! [`PoolOptions::node_deadline`], the jobs it was running are re-queued on
//! the others; when no node is left, waiting jobs fail at once with
//! [`PoolError::NoNodeLeft`] rather than hang. A job pinned to one node
//! with [`JobSpec::on_node`] runs there only (the `rrpc run` CLI runs a
//! command once on every host this way).
//!
//! ```no_run
//! # async fn run() -> Result<(), rrpc_client::pool::PoolError> {
//! use rrpc_client::pool::Pool;
//! let pool = Pool::connect(["10.0.0.1:18812", "10.0.0.2:18812"]).await?;
//! // factoriz_sum(n) on the servers' roots, results in input order.
//! let sums = pool.map("", "factoriz_sum", (1..=100u64).map(|n| (n,))).await?;
//! assert_eq!(sums.len(), 100);
//! println!("{}", pool.stats());
//! # Ok(())
//! # }
//! ```
//!
//! Every task of the pool (job runs, node watchers) belongs to it: dropping
//! the pool stops them, fails its unfinished jobs with
//! [`PoolError::Shutdown`] and closes its connections.

mod error;
mod job;
mod node;
mod options;
mod progress;
mod scheduler;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rrpc_core::{IntoArgs, Value};
use tokio::runtime::Handle;
use tokio::sync::watch;

pub use error::PoolError;
pub use job::{JobHandle, JobId, JobInfo, JobSpec, JobStatus};
pub use node::NodeSpec;
pub use options::PoolOptions;
pub use stats::{NodeStats, PoolStats};

use job::JobShared;
use node::NodeEntry;
use progress::Progress;
use scheduler::{Ctx, Effects, Outcome, State};

/// The name the issue and dispy users look for.
pub type ClusterPool = Pool;

/// The pool's shared core: the state under one lock, and what every state
/// change needs.
pub(crate) struct Inner {
    state: Mutex<State>,
    options: PoolOptions,
    runtime: Handle,
    me: Weak<Inner>,
    /// Unfinished jobs (queued + running), for [`Pool::wait_all`].
    active: watch::Sender<usize>,
    next_id: AtomicU64,
    progress: Progress,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only pool code runs under this lock, so it is never poisoned by users.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one state change under the lock, then its effects outside it.
    fn update<R>(&self, change: impl FnOnce(&mut State, &Ctx<'_>, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let result = {
            let mut state = self.lock();
            let cx = Ctx {
                pool: &self.me,
                runtime: &self.runtime,
                options: &self.options,
            };
            let result = change(&mut state, &cx, &mut fx);
            let active = state.queue.len() + state.running.len();
            self.active
                .send_if_modified(|n| std::mem::replace(n, active) != active);
            result
        };
        fx.fire(&self.progress);
        result
    }

    fn submit(&self, spec: JobSpec) -> JobHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = JobShared::new(id, spec, self.runtime.clone(), self.me.clone());
        self.update(|state, cx, fx| state.enqueue(shared.clone(), cx, fx));
        JobHandle { shared }
    }

    pub(crate) fn cancel(&self, id: JobId) -> bool {
        self.update(|state, cx, fx| state.cancel(id, cx, fx))
    }

    pub(crate) fn node_lost(&self, index: usize, reason: String) {
        self.update(|state, cx, fx| state.node_lost(index, reason, cx, fx));
    }

    pub(crate) fn attempt_finished(&self, id: JobId, attempt: u64, outcome: Outcome) {
        self.update(|state, cx, fx| state.finished(id, attempt, outcome, cx, fx));
    }

    /// Adds a node; a live one gets a watcher and work at once.
    fn add(&self, entry: NodeEntry) -> usize {
        self.update(|state, cx, fx| {
            let index = state.nodes.len();
            if state.closed {
                return index;
            }
            if let Some(link) = entry.link.clone() {
                let watcher = node::watch(cx.pool.clone(), index, link, cx.options.clone());
                state.tasks.spawn_on(watcher, cx.runtime);
            }
            state.nodes.push(entry);
            state.dispatch(cx, fx);
            index
        })
    }

    fn shutdown(&self) {
        let tasks = self.update(|state, _cx, fx| state.shutdown(fx));
        // Dropping the set aborts every task; outside the lock, as it may
        // drop the tasks' futures here.
        drop(tasks);
        self.progress.finish();
    }
}

/// A pool of rrpc servers that runs jobs for you; see the [module docs](self).
///
/// ```no_run
/// use rrpc_client::pool::{JobSpec, Pool, PoolOptions};
/// # async fn run() -> Result<(), rrpc_client::pool::PoolError> {
/// let pool = Pool::connect_with(
///     ["10.0.0.1:18812", "10.0.0.2:18812", "10.0.0.3:18812"],
///     PoolOptions::default(), // per node: as many jobs as it has CPUs
/// )
/// .await?;
/// let job = pool.submit_job(
///     JobSpec::call("", "factoriz_sum", (600_851_475_143u64,))
///         .not_retryable()
///         .on_status(|info| eprintln!("job {} {:?} on {:?}", info.id, info.status, info.node)),
/// );
/// let value = job.clone().await?;
/// let info = job.info(); // node, attempts, start and end times
/// pool.wait_all().await;
/// println!("{value} from {:?}\n{}", info.node, pool.stats());
/// # Ok(())
/// # }
/// ```
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Connects to every node with the default [`PoolOptions`].
    pub async fn connect<I, N>(nodes: I) -> Result<Pool, PoolError>
    where
        I: IntoIterator<Item = N>,
        N: Into<NodeSpec>,
    {
        Self::connect_with(nodes, PoolOptions::default()).await
    }

    /// Connects to every node (all at once). Nodes that cannot be reached
    /// are logged and listed as lost in the [stats](Self::stats); the pool
    /// fails only if the list is empty ([`PoolError::EmptyCluster`]) or no
    /// node at all is reachable ([`PoolError::Unreachable`]).
    ///
    /// Must be called within a tokio runtime; the pool's tasks run on it.
    pub async fn connect_with<I, N>(nodes: I, options: PoolOptions) -> Result<Pool, PoolError>
    where
        I: IntoIterator<Item = N>,
        N: Into<NodeSpec>,
    {
        let specs: Vec<NodeSpec> = nodes.into_iter().map(Into::into).collect();
        if specs.is_empty() {
            return Err(PoolError::EmptyCluster);
        }
        let connected =
            futures::future::join_all(specs.iter().map(|spec| node::connect(spec, &options))).await;
        let pool = Pool::new(options);
        let mut errors = Vec::new();
        for (spec, result) in specs.iter().zip(connected) {
            match result {
                Ok(found) => {
                    pool.inner.add(NodeEntry::up(found));
                }
                Err(e) => {
                    tracing::warn!(node = %spec.addr, error = %e, "node unreachable");
                    pool.inner.add(NodeEntry::unreachable(&spec.addr, &e));
                    errors.push((spec.addr.clone(), e));
                }
            }
        }
        if errors.len() == specs.len() {
            return Err(PoolError::Unreachable(errors));
        }
        Ok(pool)
    }

    fn new(options: PoolOptions) -> Pool {
        let progress = Progress::new(options.progress);
        let inner = Arc::new_cyclic(|me| Inner {
            state: Mutex::new(State::new()),
            options,
            runtime: Handle::current(),
            me: me.clone(),
            active: watch::Sender::new(0),
            next_id: AtomicU64::new(0),
            progress,
        });
        Pool { inner }
    }

    /// Connects to one more node and puts it to work at once; returns its
    /// index in the [stats](Self::stats).
    pub async fn add_node(&self, node: impl Into<NodeSpec>) -> Result<usize, PoolError> {
        let spec = node.into();
        match node::connect(&spec, &self.inner.options).await {
            Ok(found) => Ok(self.inner.add(NodeEntry::up(found))),
            Err(source) => Err(PoolError::Connect {
                addr: spec.addr,
                source,
            }),
        }
    }

    /// Submits `service.method(args)` as a job; `service` is a dotted path
    /// from the node's root, `""` for the root itself.
    pub fn submit(&self, service: &str, method: &str, args: impl IntoArgs) -> JobHandle {
        self.submit_job(JobSpec::call(service, method, args))
    }

    /// Submits a job described by a [`JobSpec`] (retries, not retryable,
    /// deadline, status callback, or a closure over a typed proxy).
    pub fn submit_job(&self, spec: JobSpec) -> JobHandle {
        self.inner.submit(spec)
    }

    /// Runs `service.method(input)` for every input and returns the results
    /// in input order. Stops at the first failure: the rest of its jobs are
    /// cancelled and that error is returned.
    ///
    /// Only a window of inputs (twice the cluster's capacity, at least 16)
    /// is in the pool at a time, so the inputs may be a long iterator.
    pub async fn map<I>(
        &self,
        service: &str,
        method: &str,
        inputs: I,
    ) -> Result<Vec<Value>, PoolError>
    where
        I: IntoIterator,
        I::Item: IntoArgs,
    {
        let specs = inputs
            .into_iter()
            .map(|args| JobSpec::call(service, method, args));
        self.in_order(specs, true).await.into_iter().collect()
    }

    /// Runs every job and returns each outcome in input order (failures
    /// included), with the same window as [`map`](Self::map).
    pub async fn map_jobs<I>(&self, jobs: I) -> Vec<Result<Value, PoolError>>
    where
        I: IntoIterator<Item = JobSpec>,
    {
        self.in_order(jobs, false).await
    }

    async fn in_order<I>(&self, jobs: I, stop_on_error: bool) -> Vec<Result<Value, PoolError>>
    where
        I: IntoIterator<Item = JobSpec>,
    {
        let window = (self.inner.lock().capacity() * 2).max(16);
        let mut jobs = jobs.into_iter();
        let mut results: Vec<Option<Result<Value, PoolError>>> = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut handles: HashMap<usize, JobHandle> = HashMap::new();
        loop {
            while in_flight.len() < window {
                let Some(spec) = jobs.next() else { break };
                let index = results.len();
                results.push(None);
                let handle = self.submit_job(spec);
                handles.insert(index, handle.clone());
                in_flight.push(async move { (index, handle.await) });
            }
            let Some((index, result)) = in_flight.next().await else {
                break;
            };
            handles.remove(&index);
            if stop_on_error {
                if let Err(e) = result {
                    for handle in handles.values() {
                        handle.cancel();
                    }
                    return vec![Err(e)];
                }
            }
            results[index] = Some(result);
        }
        // Every slot was filled: the loop ends only when no job is in flight.
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or(Err(PoolError::Cancelled(i as JobId))))
            .collect()
    }

    /// Cancels a job by id; false if it already finished (or is unknown).
    pub fn cancel(&self, id: JobId) -> bool {
        self.inner.cancel(id)
    }

    /// Cancels every unfinished job; returns how many.
    pub fn cancel_all(&self) -> usize {
        self.inner.update(|state, cx, fx| {
            let ids = state.unfinished();
            ids.into_iter()
                .filter(|id| state.cancel(*id, cx, fx))
                .count()
        })
    }

    /// Waits until no job is queued or running.
    pub async fn wait_all(&self) {
        let mut active = self.inner.active.subscribe();
        // The sender lives in `inner`, which we hold: this cannot fail.
        let _ = active.wait_for(|n| *n == 0).await;
    }

    /// Jobs queued or running now.
    pub fn active(&self) -> usize {
        *self.inner.active.borrow()
    }

    /// Nodes that are up now.
    pub fn live_nodes(&self) -> usize {
        self.inner.lock().up_nodes()
    }

    /// The per-node table and totals; `Display` prints it like dispy.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        let totals = &state.totals;
        let end = if state.running.is_empty() {
            totals.last_end
        } else {
            Some(Instant::now())
        };
        let wall = match (totals.first_start, end) {
            (Some(start), Some(end)) => end.saturating_duration_since(start),
            _ => Duration::ZERO,
        };
        PoolStats {
            nodes: state
                .nodes
                .iter()
                .map(|n| NodeStats {
                    node: n.addr.clone(),
                    cpus: n.cpus,
                    concurrency: n.concurrency,
                    jobs: n.done,
                    running: n.running,
                    failures: n.failures,
                    node_time: n.busy,
                    lost: match &n.health {
                        node::Health::Up => None,
                        node::Health::Lost(why) => Some(why.clone()),
                    },
                })
                .collect(),
            done: totals.done,
            failed: totals.failed,
            cancelled: totals.cancelled,
            queued: state.queue.len(),
            running: state.running.len(),
            job_time: totals.job_time,
            wall,
        }
    }

    /// Stops the pool now: unfinished jobs fail with
    /// [`PoolError::Shutdown`], tasks stop, connections close. Dropping the
    /// pool does the same.
    pub fn close(&self) {
        self.inner.shutdown();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Pool")
            .field("nodes", &state.nodes.len())
            .field("live_nodes", &state.up_nodes())
            .field("queued", &state.queue.len())
            .field("running", &state.running.len())
            .finish()
    }
}
