//! Jobs: what to run ([`JobSpec`]), where a job stands ([`JobStatus`],
//! [`JobInfo`]) and the [`JobHandle`] the caller keeps — an async result in
//! the manner of [`AsyncResult`](rrpc_core::AsyncResult): `ready`, `value`,
//! `wait`, `error`, `add_callback`, and `.await`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use rrpc_core::{Error, IntoArgs, Proxy, Value};
use tokio::runtime::Handle;

use super::error::PoolError;
use super::Inner;

/// A job's number in its pool: 0, 1, 2… in submission order.
pub type JobId = u64;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Waiting for a free node (again, after its node was lost).
    Queued,
    /// Running on a node.
    Running,
    /// Finished with a result.
    Done,
    /// Finished with an error.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobStatus {
    /// Whether the job has finished (done, failed or cancelled).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A snapshot of a job: its status, node and times (dispy's job attributes).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job's number in its pool.
    pub id: JobId,
    /// Where it stands.
    pub status: JobStatus,
    /// The node of its latest run, if it has started.
    pub node: Option<String>,
    /// How many times it was started (more than 1 after a node loss).
    pub attempts: u32,
    /// Nodes that were lost while running it, in order.
    pub lost_on: Vec<String>,
    /// When it was submitted.
    pub submitted: SystemTime,
    /// When its latest run started.
    pub started: Option<SystemTime>,
    /// When it finished.
    pub ended: Option<SystemTime>,
    /// How long its latest run took, once finished.
    pub duration: Option<Duration>,
}

type WithFn = dyn Fn(Proxy) -> BoxFuture<'static, Result<Value, Error>> + Send + Sync;
pub(crate) type StatusCallback = Arc<dyn Fn(&JobInfo) + Send + Sync>;

/// What a job runs on its node.
#[derive(Clone)]
pub(crate) enum Work {
    /// `service.method(args)`, with `service` a dotted path from the root.
    Call {
        service: String,
        method: String,
        args: Vec<Value>,
    },
    /// A closure given the node's root proxy (typed proxies, several calls…).
    With(Arc<WithFn>),
}

/// A job before submission: the work, and how to treat it when things fail.
///
/// ```no_run
/// # async fn run(pool: &rrpc_client::pool::Pool) {
/// use rrpc_client::pool::JobSpec;
/// let job = pool.submit_job(
///     JobSpec::call("", "factoriz_sum", (600_851_475_143u64,))
///         .not_retryable()
///         .on_status(|info| println!("job {} is {:?}", info.id, info.status)),
/// );
/// println!("{:?}", job.await);
/// # }
/// ```
#[derive(Clone)]
pub struct JobSpec {
    pub(crate) work: Work,
    pub(crate) retries: Option<u32>,
    pub(crate) retryable: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) on_status: Option<StatusCallback>,
    /// The only node the job may run on (its address as given to the pool).
    pub(crate) node: Option<String>,
}

impl JobSpec {
    /// A call of `method` on the service at `service`, a dotted path of
    /// attributes from the node's root (`""` is the root itself, `"sys"` its
    /// `sys` attribute, `"demo.tools"` an attribute of that).
    pub fn call(
        service: impl Into<String>,
        method: impl Into<String>,
        args: impl IntoArgs,
    ) -> Self {
        Self::from_work(Work::Call {
            service: service.into(),
            method: method.into(),
            args: args.into_args(),
        })
    }

    /// A job written as a closure over the node's root proxy: for typed
    /// proxies, or several calls in one job. It may run more than once (on
    /// another node after a node loss), so it is `Fn`.
    pub fn with<F, Fut>(f: F) -> Self
    where
        F: Fn(Proxy) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Error>> + Send + 'static,
    {
        Self::from_work(Work::With(Arc::new(move |root| Box::pin(f(root)))))
    }

    fn from_work(work: Work) -> Self {
        JobSpec {
            work,
            retries: None,
            retryable: true,
            timeout: None,
            on_status: None,
            node: None,
        }
    }

    /// How many times the job may be re-run after its node is lost
    /// (default: the pool's [`PoolOptions::retries`](super::PoolOptions::retries)).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Marks the job as one that must not run twice (it has side effects):
    /// if its node is lost while it runs, it fails instead of re-running.
    pub fn not_retryable(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// The job's own deadline per run (default: the pool's
    /// [`PoolOptions::job_timeout`](super::PoolOptions::job_timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Pins the job to one node: it runs on the node whose address is `addr`
    /// (exactly as given to [`Pool::connect`](super::Pool::connect) or
    /// [`Pool::add_node`](super::Pool::add_node)), never on another, waiting
    /// for a free slot there while unpinned jobs go on to other nodes.
    ///
    /// As it cannot move, a pinned job fails with
    /// [`PoolError::PinnedNodeLost`] when that node is unreachable, not in
    /// the pool, or lost before or while the job runs; it is then not re-run
    /// elsewhere. Use it to run something once on every node:
    ///
    /// ```no_run
    /// # async fn run(pool: &rrpc_client::pool::Pool, addrs: &[&str]) {
    /// use rrpc_client::pool::JobSpec;
    /// let jobs: Vec<_> = addrs
    ///     .iter()
    ///     .map(|addr| pool.submit_job(JobSpec::call("sys", "cpu_count", ()).on_node(*addr)))
    ///     .collect();
    /// for job in jobs {
    ///     println!("{:?} on {:?}", job.clone().await, job.info().node);
    /// }
    /// # }
    /// ```
    pub fn on_node(mut self, addr: impl Into<String>) -> Self {
        self.node = Some(addr.into());
        self
    }

    /// Calls `callback` at each change of the job's status, in order. It runs
    /// on the thread that made the change: keep it short, and do not block.
    pub fn on_status(mut self, callback: impl Fn(&JobInfo) + Send + Sync + 'static) -> Self {
        self.on_status = Some(Arc::new(callback));
        self
    }
}

impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("JobSpec");
        match &self.work {
            Work::Call {
                service,
                method,
                args,
            } => d
                .field("service", service)
                .field("method", method)
                .field("args", args),
            Work::With(_) => d.field("work", &"closure"),
        };
        d.field("retries", &self.retries)
            .field("retryable", &self.retryable)
            .field("timeout", &self.timeout)
            .field("node", &self.node)
            .finish()
    }
}

type Callback = Box<dyn FnOnce(&JobHandle) + Send>;

/// The state of one job, shared by the pool and every handle.
pub(crate) struct JobShared {
    pub(crate) id: JobId,
    pub(crate) spec: JobSpec,
    slot: Mutex<Slot>,
    ready: Condvar,
    runtime: Handle,
    pool: Weak<Inner>,
}

struct Slot {
    info: JobInfo,
    result: Option<Result<Value, PoolError>>,
    wakers: Vec<Waker>,
    callbacks: Vec<Callback>,
}

impl JobShared {
    pub(crate) fn new(id: JobId, spec: JobSpec, runtime: Handle, pool: Weak<Inner>) -> Arc<Self> {
        Arc::new(JobShared {
            id,
            spec,
            slot: Mutex::new(Slot {
                info: JobInfo {
                    id,
                    status: JobStatus::Queued,
                    node: None,
                    attempts: 0,
                    lost_on: Vec::new(),
                    submitted: SystemTime::now(),
                    started: None,
                    ended: None,
                    duration: None,
                },
                result: None,
                wakers: Vec::new(),
                callbacks: Vec::new(),
            }),
            ready: Condvar::new(),
            runtime,
            pool,
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // No user code runs under this lock, so it is never poisoned by it.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn info(&self) -> JobInfo {
        self.slot().info.clone()
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.slot().info.attempts
    }

    /// Back in the queue after `lost` was lost under it.
    pub(crate) fn requeued(&self, lost: &str) {
        let mut slot = self.slot();
        slot.info.status = JobStatus::Queued;
        slot.info.lost_on.push(lost.to_owned());
    }

    /// Started on `node`.
    pub(crate) fn started(&self, node: &str) {
        let mut slot = self.slot();
        slot.info.status = JobStatus::Running;
        slot.info.node = Some(node.to_owned());
        slot.info.attempts += 1;
        slot.info.started = Some(SystemTime::now());
    }

    /// Records a node lost under the job without re-running it.
    pub(crate) fn lost(&self, node: &str) {
        self.slot().info.lost_on.push(node.to_owned());
    }

    /// Stores the outcome and wakes every waiter; the callbacks run on the
    /// blocking pool. Returns false if the job had already finished.
    pub(crate) fn complete(
        self: &Arc<Self>,
        outcome: Result<Value, PoolError>,
        duration: Option<Duration>,
    ) -> bool {
        let (wakers, callbacks) = {
            let mut slot = self.slot();
            if slot.result.is_some() {
                return false;
            }
            slot.info.status = match &outcome {
                Ok(_) => JobStatus::Done,
                Err(PoolError::Cancelled(_)) => JobStatus::Cancelled,
                Err(_) => JobStatus::Failed,
            };
            slot.info.ended = Some(SystemTime::now());
            slot.info.duration = duration;
            slot.result = Some(outcome);
            (
                std::mem::take(&mut slot.wakers),
                std::mem::take(&mut slot.callbacks),
            )
        };
        self.ready.notify_all();
        wakers.into_iter().for_each(Waker::wake);
        for callback in callbacks {
            self.run_callback(callback);
        }
        true
    }

    fn run_callback(self: &Arc<Self>, callback: Callback) {
        let handle = JobHandle {
            shared: self.clone(),
        };
        // Not kept: a callback runs to its end on its own.
        drop(self.runtime.spawn_blocking(move || callback(&handle)));
    }
}

/// The caller's handle on a submitted job. Clones share the job.
///
/// Like [`AsyncResult`](rrpc_core::AsyncResult): poll it with
/// [`ready`](Self::ready), block on it with [`value`](Self::value) or
/// [`wait`](Self::wait), give it callbacks, or `.await` it.
#[derive(Clone)]
pub struct JobHandle {
    pub(crate) shared: Arc<JobShared>,
}

impl JobHandle {
    /// The job's number in its pool.
    pub fn id(&self) -> JobId {
        self.shared.id
    }

    /// Where the job stands.
    pub fn status(&self) -> JobStatus {
        self.shared.slot().info.status
    }

    /// A snapshot of the job: status, node, attempts, times.
    pub fn info(&self) -> JobInfo {
        self.shared.info()
    }

    /// Whether the job has finished.
    pub fn ready(&self) -> bool {
        self.shared.slot().result.is_some()
    }

    /// The outcome, if the job has finished.
    pub fn result(&self) -> Option<Result<Value, PoolError>> {
        self.shared.slot().result.clone()
    }

    /// The outcome, blocking the thread until the job finishes. In async
    /// code, `.await` the handle instead.
    pub fn value(&self) -> Result<Value, PoolError> {
        let mut slot = self.shared.slot();
        loop {
            if let Some(result) = &slot.result {
                return result.clone();
            }
            slot = self
                .shared
                .ready
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits at most `timeout` for the job to finish; returns whether it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let slot = self.shared.slot();
        let (slot, _) = self
            .shared
            .ready
            .wait_timeout_while(slot, timeout, |s| s.result.is_none())
            .unwrap_or_else(|p| p.into_inner());
        slot.result.is_some()
    }

    /// The error, if the job finished with one.
    pub fn error(&self) -> Option<PoolError> {
        match &self.shared.slot().result {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Runs `callback` when the job finishes, on the blocking pool; at once
    /// if it already has.
    pub fn add_callback<F>(&self, callback: F)
    where
        F: FnOnce(&JobHandle) + Send + 'static,
    {
        let mut slot = self.shared.slot();
        if slot.result.is_some() {
            drop(slot);
            self.shared.run_callback(Box::new(callback));
        } else {
            slot.callbacks.push(Box::new(callback));
        }
    }

    /// Cancels the job: a queued job never runs, a running one is stopped
    /// (the node is told to cancel the call). Returns whether the job was
    /// still unfinished.
    pub fn cancel(&self) -> bool {
        match self.shared.pool.upgrade() {
            Some(pool) => pool.cancel(self.shared.id),
            None => false,
        }
    }
}

impl Future for JobHandle {
    type Output = Result<Value, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.shared.slot();
        match &slot.result {
            Some(result) => Poll::Ready(result.clone()),
            None => {
                if !slot.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    slot.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.shared.slot();
        f.debug_struct("JobHandle")
            .field("id", &self.shared.id)
            .field("status", &slot.info.status)
            .field("node", &slot.info.node)
            .finish()
    }
}
