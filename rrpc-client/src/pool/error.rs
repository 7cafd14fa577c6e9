//! What a job (or the pool itself) can fail with.

use rrpc_core::{Error, RemoteError};

use super::job::JobId;

/// Why a job failed, or why the pool could not start.
///
/// Node losses are told apart from the job's own failures: a job whose node
/// died is re-run elsewhere when it may be (see [`JobSpec`](super::JobSpec)),
/// and fails with [`NotRetried`](Self::NotRetried) or
/// [`RetriesExhausted`](Self::RetriesExhausted) when it may not.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool was given no node at all.
    #[error("the cluster is empty: no node address was given")]
    EmptyCluster,
    /// Not one of the given nodes could be reached.
    #[error("no node of the cluster could be reached: {}", list_errors(.0))]
    Unreachable(Vec<(String, Error)>),
    /// Connecting to one node failed.
    #[error("cannot connect to node {addr}: {source}")]
    Connect {
        /// The node's address.
        addr: String,
        /// What went wrong.
        source: Error,
    },
    /// Every node of the cluster is lost, so nothing can run the job.
    #[error("no node is left in the cluster to run job {job}: {reason}")]
    NoNodeLeft {
        /// The job.
        job: JobId,
        /// How the cluster came to be empty.
        reason: String,
    },
    /// The job ran and failed: the remote side raised an error, the result
    /// could not be decoded, or the job ran past its own deadline.
    #[error("job {job} failed on {node}: {source}")]
    Failed {
        /// The job.
        job: JobId,
        /// The node it ran on.
        node: String,
        /// The call's error.
        source: Error,
    },
    /// The job's node was lost while it ran, and the job is marked not
    /// retryable, so it was not run again.
    #[error(
        "node {node} was lost while running job {job}, which is marked not retryable: {reason}"
    )]
    NotRetried {
        /// The job.
        job: JobId,
        /// The node that was lost.
        node: String,
        /// How the node was lost.
        reason: String,
    },
    /// The job's node was lost once more than its retry limit allows.
    #[error("job {job} gave up after {attempts} attempts; the last node lost under it was {node}: {reason}")]
    RetriesExhausted {
        /// The job.
        job: JobId,
        /// How many times it was started.
        attempts: u32,
        /// The last node lost while running it.
        node: String,
        /// How that node was lost.
        reason: String,
    },
    /// The job is pinned to one node ([`JobSpec::on_node`](super::JobSpec::on_node))
    /// and that node cannot run it: it is unreachable, not in the pool, or
    /// was lost before or while the job ran. A pinned job is never moved to
    /// another node.
    #[error("job {job} is pinned to node {node}, which cannot run it: {reason}")]
    PinnedNodeLost {
        /// The job.
        job: JobId,
        /// The node it is pinned to.
        node: String,
        /// Why that node cannot run it.
        reason: String,
    },
    /// The job was cancelled before it finished.
    #[error("job {0} was cancelled")]
    Cancelled(JobId),
    /// The pool was dropped or closed before the job finished.
    #[error("the pool was shut down before job {0} finished")]
    Shutdown(JobId),
    /// The pool's queue holds its maximum of waiting jobs.
    #[error("job {job} refused: the pool's queue is full ({limit} jobs waiting)")]
    QueueFull {
        /// The job refused.
        job: JobId,
        /// The queue's limit ([`PoolOptions::max_queued`](super::PoolOptions::max_queued)).
        limit: usize,
    },
    /// The job's client-side code (a [`JobSpec::with`](super::JobSpec::with)
    /// closure) panicked.
    #[error("job {job} panicked on the client side: {message}")]
    Panicked {
        /// The job.
        job: JobId,
        /// The panic message.
        message: String,
    },
}

fn list_errors(errors: &[(String, Error)]) -> String {
    errors
        .iter()
        .map(|(addr, e)| format!("{addr}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl PoolError {
    /// The error the remote side raised, if the job failed with one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            PoolError::Failed { source, .. } => source.remote(),
            _ => None,
        }
    }

    /// Whether the job failed because nodes were lost (not because of
    /// anything it did itself).
    pub fn is_node_loss(&self) -> bool {
        matches!(
            self,
            PoolError::NoNodeLeft { .. }
                | PoolError::NotRetried { .. }
                | PoolError::RetriesExhausted { .. }
                | PoolError::PinnedNodeLost { .. }
        )
    }
}
