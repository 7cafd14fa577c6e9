//! The scheduler: the queue of waiting jobs, the jobs running on each node,
//! and every change of state — submit, dispatch, finish, cancel, node loss.
//!
//! All of it happens under the pool's one lock, synchronously, so a job is
//! dispatched the moment a slot frees up (no scheduler task to wake). User
//! code (status callbacks) and connection closes are collected as
//! [`Effects`] and run after the lock is released.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rrpc_core::{Connection, Error, Value};
use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinSet};

use super::error::PoolError;
use super::job::{JobId, JobInfo, JobShared, StatusCallback};
use super::node::{NodeEntry, NodeLink};
use super::progress::Progress;
use super::{Inner, PoolOptions};

/// The outcome of one run: the call's result, or a panic's message.
pub(crate) type Outcome = Result<Result<Value, Error>, String>;

/// A job running on a node.
pub(crate) struct Running {
    job: Arc<JobShared>,
    node: usize,
    /// Tells this run apart from a later run of the same job.
    attempt: u64,
    abort: AbortHandle,
    started: Instant,
}

/// Pool-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) done: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    /// Summed run time of the jobs done.
    pub(crate) job_time: Duration,
    pub(crate) first_start: Option<Instant>,
    pub(crate) last_end: Option<Instant>,
}

/// Everything the pool's lock protects.
pub(crate) struct State {
    pub(crate) closed: bool,
    pub(crate) nodes: Vec<NodeEntry>,
    /// Jobs waiting for a node. Bounded by `PoolOptions::max_queued`
    /// (`Pool::map` keeps only a window of its jobs in it).
    pub(crate) queue: VecDeque<Arc<JobShared>>,
    pub(crate) running: HashMap<JobId, Running>,
    /// Every task of the pool: job runs and node watchers. Dropping the set
    /// aborts them; finished runs are reaped as jobs finish.
    pub(crate) tasks: JoinSet<()>,
    pub(crate) totals: Totals,
    next_attempt: u64,
    /// The last node lost and why, for "no node left" errors.
    last_loss: Option<(String, String)>,
}

/// What a state change needs besides the state.
pub(crate) struct Ctx<'a> {
    pub(crate) pool: &'a Weak<Inner>,
    pub(crate) runtime: &'a Handle,
    pub(crate) options: &'a PoolOptions,
}

/// Work left for after the lock is released.
#[derive(Default)]
pub(crate) struct Effects {
    statuses: Vec<(StatusCallback, JobInfo)>,
    submitted: u64,
    finished: u64,
    close: Vec<Connection>,
}

impl Effects {
    /// Queues a status callback with the job's snapshot (taken only when
    /// the job has a callback: the hot path stays allocation-free).
    fn status(&mut self, job: &JobShared) {
        if let Some(callback) = &job.spec.on_status {
            self.statuses.push((callback.clone(), job.info()));
        }
    }

    /// Runs the status callbacks (in order), moves the progress bar and
    /// closes the connections of lost nodes.
    pub(crate) fn fire(self, progress: &Progress) {
        for (callback, info) in self.statuses {
            if std::panic::catch_unwind(AssertUnwindSafe(|| callback(&info))).is_err() {
                tracing::error!(job = info.id, "a job status callback panicked");
            }
        }
        progress.update(self.submitted, self.finished);
        for conn in self.close {
            conn.close();
        }
    }
}

/// The node a job should go to: one with a free slot and the lowest load
/// (running / concurrency), so idle nodes come first; among equals, the one
/// that has started the fewest jobs.
pub(crate) fn pick(nodes: &[NodeEntry]) -> Option<usize> {
    pick_among(nodes, None)
}

/// Like [`pick`], among the nodes at `pinned` only when it is given (a job
/// pinned to a node by [`JobSpec::on_node`](super::JobSpec::on_node)).
pub(crate) fn pick_among(nodes: &[NodeEntry], pinned: Option<&str>) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.has_room() && pinned.is_none_or(|addr| n.addr == addr))
        .min_by(|(ia, a), (ib, b)| {
            (a.running * b.concurrency)
                .cmp(&(b.running * a.concurrency))
                .then(a.started.cmp(&b.started))
                .then(ia.cmp(ib))
        })
        .map(|(i, _)| i)
}

impl State {
    pub(crate) fn new() -> Self {
        State {
            closed: false,
            nodes: Vec::new(),
            queue: VecDeque::new(),
            running: HashMap::new(),
            tasks: JoinSet::new(),
            totals: Totals::default(),
            next_attempt: 0,
            last_loss: None,
        }
    }

    pub(crate) fn up_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_up()).count()
    }

    /// Jobs the live nodes can run at once.
    pub(crate) fn capacity(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.concurrency)
            .sum()
    }

    fn no_node_reason(&self) -> String {
        match &self.last_loss {
            Some((node, why)) => {
                format!("every node of the cluster is lost (the last, {node}, with: {why})")
            }
            None => "the cluster has no live node".to_owned(),
        }
    }

    /// Why a job pinned to `addr` cannot run, or `None` if a live node has
    /// that address.
    fn pinned_unavailable(&self, addr: &str) -> Option<String> {
        let mut reason = None;
        for node in self.nodes.iter().filter(|n| n.addr == addr) {
            match &node.health {
                super::node::Health::Up => return None,
                super::node::Health::Lost(why) => reason = Some(why.clone()),
            }
        }
        Some(reason.unwrap_or_else(|| "no node of the pool has this address".to_owned()))
    }

    /// Queues a new job, or fails it at once when it cannot run.
    pub(crate) fn enqueue(&mut self, job: Arc<JobShared>, cx: &Ctx<'_>, fx: &mut Effects) {
        fx.submitted += 1;
        let refused = if self.closed {
            Some(PoolError::Shutdown(job.id))
        } else if self.up_nodes() == 0 {
            Some(PoolError::NoNodeLeft {
                job: job.id,
                reason: self.no_node_reason(),
            })
        } else if let Some((addr, reason)) = job
            .spec
            .node
            .as_deref()
            .and_then(|addr| Some((addr, self.pinned_unavailable(addr)?)))
        {
            Some(PoolError::PinnedNodeLost {
                job: job.id,
                node: addr.to_owned(),
                reason,
            })
        } else if self.queue.len() >= cx.options.max_queued {
            Some(PoolError::QueueFull {
                job: job.id,
                limit: cx.options.max_queued,
            })
        } else {
            None
        };
        if let Some(err) = refused {
            return self.finish(&job, Err(err), None, fx);
        }
        fx.status(&job);
        self.queue.push_back(job);
        self.dispatch(cx, fx);
    }

    /// Starts queued jobs, in queue order, while some node has a free slot.
    /// A pinned job whose node is full stays queued without holding up the
    /// jobs behind it.
    pub(crate) fn dispatch(&mut self, cx: &Ctx<'_>, fx: &mut Effects) {
        let mut at = 0;
        while at < self.queue.len() {
            let pinned = self.queue[at].spec.node.as_deref();
            let Some(index) = pick_among(&self.nodes, pinned) else {
                if pinned.is_some() && pick(&self.nodes).is_some() {
                    // Its node is full, but others have room for later jobs.
                    at += 1;
                    continue;
                }
                break;
            };
            let node = &mut self.nodes[index];
            let Some(link) = node.link.clone() else {
                break;
            };
            let Some(job) = self.queue.remove(at) else {
                break;
            };
            node.running += 1;
            node.started += 1;
            job.started(&node.addr);
            fx.status(&job);
            let attempt = self.next_attempt;
            self.next_attempt += 1;
            let started = Instant::now();
            self.totals.first_start.get_or_insert(started);
            let timeout = job.spec.timeout.unwrap_or(cx.options.job_timeout);
            let run = run_attempt(cx.pool.clone(), job.clone(), attempt, link, timeout);
            let abort = self.tasks.spawn_on(run, cx.runtime);
            self.running.insert(
                job.id,
                Running {
                    job,
                    node: index,
                    attempt,
                    abort,
                    started,
                },
            );
        }
    }

    /// A run ended. Stale runs (cancelled, or re-queued after a node loss)
    /// are ignored; a lost connection means the node is lost.
    pub(crate) fn finished(
        &mut self,
        id: JobId,
        attempt: u64,
        outcome: Outcome,
        cx: &Ctx<'_>,
        fx: &mut Effects,
    ) {
        let index = match self.running.get(&id) {
            Some(run) if run.attempt == attempt => run.node,
            _ => return,
        };
        if let Ok(Err(e)) = &outcome {
            if e.is_connection_lost() {
                return self.node_lost(index, e.to_string(), cx, fx);
            }
        }
        let Some(run) = self.running.remove(&id) else {
            return;
        };
        let elapsed = run.started.elapsed();
        let node = &mut self.nodes[index];
        node.running = node.running.saturating_sub(1);
        let result = match outcome {
            Ok(Ok(value)) => {
                node.done += 1;
                node.busy += elapsed;
                self.totals.job_time += elapsed;
                Ok(value)
            }
            Ok(Err(source)) => {
                node.failures += 1;
                Err(PoolError::Failed {
                    job: id,
                    node: node.addr.clone(),
                    source,
                })
            }
            Err(message) => {
                node.failures += 1;
                Err(PoolError::Panicked { job: id, message })
            }
        };
        self.totals.last_end = Some(Instant::now());
        while self.tasks.try_join_next().is_some() {}
        self.finish(&run.job, result, Some(elapsed), fx);
        self.dispatch(cx, fx);
    }

    /// Node `index` is lost: its running jobs go back to the queue (or fail,
    /// when not retryable, out of retries or pinned to it), queued jobs
    /// pinned to it fail; with no node left, every queued job fails.
    pub(crate) fn node_lost(
        &mut self,
        index: usize,
        reason: String,
        cx: &Ctx<'_>,
        fx: &mut Effects,
    ) {
        let Some(node) = self.nodes.get_mut(index) else {
            return;
        };
        if !node.is_up() {
            return;
        }
        node.health = super::node::Health::Lost(reason.clone());
        if let Some(link) = node.link.take() {
            fx.close.push(link.conn.clone());
        }
        let addr = node.addr.clone();
        self.last_loss = Some((addr.clone(), reason.clone()));
        let mut lost: Vec<JobId> = self
            .running
            .iter()
            .filter(|(_, r)| r.node == index)
            .map(|(id, _)| *id)
            .collect();
        lost.sort_unstable();
        // Re-queue at the front, in their original order.
        for id in lost.into_iter().rev() {
            let Some(run) = self.running.remove(&id) else {
                continue;
            };
            run.abort.abort();
            let node = &mut self.nodes[index];
            node.running = node.running.saturating_sub(1);
            node.failures += 1;
            let job = run.job;
            let attempts = job.attempts();
            let retries = job.spec.retries.unwrap_or(cx.options.retries);
            let err = if !job.spec.retryable {
                Some(PoolError::NotRetried {
                    job: id,
                    node: addr.clone(),
                    reason: reason.clone(),
                })
            } else if job.spec.node.is_some() {
                // Pinned here: it may not move, and this node is gone.
                Some(PoolError::PinnedNodeLost {
                    job: id,
                    node: addr.clone(),
                    reason: reason.clone(),
                })
            } else if attempts > retries {
                Some(PoolError::RetriesExhausted {
                    job: id,
                    attempts,
                    node: addr.clone(),
                    reason: reason.clone(),
                })
            } else {
                None
            };
            match err {
                Some(err) => {
                    job.lost(&addr);
                    self.finish(&job, Err(err), None, fx);
                }
                None => {
                    tracing::info!(job = id, node = %addr, "node lost: job re-queued");
                    job.requeued(&addr);
                    fx.status(&job);
                    self.queue.push_front(job);
                }
            }
        }
        self.fail_stranded_pinned(fx);
        if self.up_nodes() == 0 {
            let reason = self.no_node_reason();
            for job in std::mem::take(&mut self.queue) {
                let err = PoolError::NoNodeLeft {
                    job: job.id,
                    reason: reason.clone(),
                };
                self.finish(&job, Err(err), None, fx);
            }
        }
        self.dispatch(cx, fx);
    }

    /// Fails the queued jobs pinned to a node that is no longer up.
    fn fail_stranded_pinned(&mut self, fx: &mut Effects) {
        if !self.queue.iter().any(|j| j.spec.node.is_some()) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for job in std::mem::take(&mut self.queue) {
            let stranded = job
                .spec
                .node
                .as_deref()
                .and_then(|addr| Some((addr.to_owned(), self.pinned_unavailable(addr)?)));
            match stranded {
                Some((node, reason)) => {
                    let err = PoolError::PinnedNodeLost {
                        job: job.id,
                        node,
                        reason,
                    };
                    self.finish(&job, Err(err), None, fx);
                }
                None => kept.push_back(job),
            }
        }
        self.queue = kept;
    }

    /// Cancels a queued or running job; false if it already finished.
    pub(crate) fn cancel(&mut self, id: JobId, cx: &Ctx<'_>, fx: &mut Effects) -> bool {
        if let Some(pos) = self.queue.iter().position(|j| j.id == id) {
            if let Some(job) = self.queue.remove(pos) {
                self.finish(&job, Err(PoolError::Cancelled(id)), None, fx);
                return true;
            }
        }
        let Some(run) = self.running.remove(&id) else {
            return false;
        };
        // Dropping the run's call tells the node to cancel it.
        run.abort.abort();
        let node = &mut self.nodes[run.node];
        node.running = node.running.saturating_sub(1);
        let elapsed = run.started.elapsed();
        self.finish(&run.job, Err(PoolError::Cancelled(id)), Some(elapsed), fx);
        self.dispatch(cx, fx);
        true
    }

    /// The ids of every unfinished job.
    pub(crate) fn unfinished(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.queue.iter().map(|j| j.id).collect();
        ids.extend(self.running.keys());
        ids
    }

    /// Stops everything: unfinished jobs fail with `Shutdown`, connections
    /// close, and the task set is handed back to be dropped (aborting every
    /// task) outside the lock.
    pub(crate) fn shutdown(&mut self, fx: &mut Effects) -> JoinSet<()> {
        self.closed = true;
        for job in std::mem::take(&mut self.queue) {
            self.finish(&job, Err(PoolError::Shutdown(job.id)), None, fx);
        }
        for (id, run) in std::mem::take(&mut self.running) {
            run.abort.abort();
            self.finish(&run.job, Err(PoolError::Shutdown(id)), None, fx);
        }
        for node in &mut self.nodes {
            if let Some(link) = node.link.take() {
                fx.close.push(link.conn.clone());
                node.health = super::node::Health::Lost("the pool was shut down".to_owned());
            }
            node.running = 0;
        }
        std::mem::take(&mut self.tasks)
    }

    fn finish(
        &mut self,
        job: &Arc<JobShared>,
        result: Result<Value, PoolError>,
        duration: Option<Duration>,
        fx: &mut Effects,
    ) {
        match &result {
            Ok(_) => self.totals.done += 1,
            Err(PoolError::Cancelled(_)) => self.totals.cancelled += 1,
            Err(_) => self.totals.failed += 1,
        }
        if job.complete(result, duration) {
            fx.finished += 1;
            fx.status(job);
        }
    }
}

/// One run of a job on a node; reports back to the pool unless the pool is gone.
async fn run_attempt(
    pool: Weak<Inner>,
    job: Arc<JobShared>,
    attempt: u64,
    link: Arc<NodeLink>,
    timeout: Duration,
) {
    let outcome = AssertUnwindSafe(link.run(&job.spec.work, timeout))
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned())
        });
    drop(link);
    if let Some(pool) = pool.upgrade() {
        pool.attempt_finished(job.id, attempt, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::node::Health;

    fn node(concurrency: usize, running: usize, started: u64) -> NodeEntry {
        let mut n = NodeEntry::unreachable("test", &Error::Closed);
        n.health = Health::Up;
        n.concurrency = concurrency;
        n.running = running;
        n.started = started;
        n
    }

    #[test]
    fn idle_nodes_come_first() {
        let nodes = [node(4, 1, 9), node(2, 0, 9), node(4, 3, 0)];
        assert_eq!(pick(&nodes), Some(1));
    }

    #[test]
    fn the_lowest_load_wins_and_full_or_lost_nodes_are_skipped() {
        let mut lost = node(8, 0, 0);
        lost.health = Health::Lost("gone".into());
        // 1/4 beats 1/2; the full node and the lost one are never picked.
        let nodes = [node(2, 2, 0), lost, node(2, 1, 0), node(4, 1, 5)];
        assert_eq!(pick(&nodes), Some(3));
        assert_eq!(pick(&[node(1, 1, 0)]), None);
    }

    #[test]
    fn a_pinned_job_only_goes_to_its_node() {
        let mut nodes = [node(2, 0, 0), node(2, 1, 0), node(2, 0, 0)];
        nodes[1].addr = "b".into();
        // The busier node, as it is the only one at that address.
        assert_eq!(pick_among(&nodes, Some("b")), Some(1));
        nodes[1].running = 2;
        assert_eq!(pick_among(&nodes, Some("b")), None);
        assert_eq!(pick_among(&nodes, Some("nowhere")), None);
        assert_eq!(pick_among(&nodes, None), Some(0));
    }

    #[test]
    fn ties_go_to_the_node_that_started_fewer_jobs() {
        let nodes = [node(2, 0, 5), node(2, 0, 3), node(2, 0, 3)];
        assert_eq!(pick(&nodes), Some(1));
    }
}
