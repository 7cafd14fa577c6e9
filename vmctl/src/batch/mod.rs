//! Batch systems behind one interface: submit a job, list jobs with their
//! state, cancel a job.
//!
//! | backend | commands | notes |
//! | --- | --- | --- |
//! | [`SlurmBackend`] | `sbatch --parsable`, `squeue --json` (or `squeue -h -o`), `scancel` | tolerates the JSON of Slurm 22.05 … 24.x |
//! | [`PbsBackend`] | `qsub`, `qstat -f`, `qdel` | PBS/Torque, and Slurm's Torque wrappers |
//! | [`CondorBackend`] | `condor_submit -terse`, `condor_q -json`, `condor_rm` | submit description in a staged file |
//! | [`LocalBackend`] | none: child processes of this process | the embedded default, for users with no batch system |
//!
//! Every command-line backend runs its commands through a [`CommandRunner`]:
//! a configurable prefix (`ssh host`, `chroot … runuser -u user --`), a
//! timeout, and bounded output capture. A command that fails, hangs or prints
//! something unparsable gives a [`BatchError`] naming the command and its
//! (truncated) output.
//!
//! ```no_run
//! use vmctl::batch::{Backend, Batch, JobQuery, JobSpec, LocalBackend, LocalConfig};
//! # async fn demo() -> Result<(), vmctl::batch::BatchError> {
//! let batch = Backend::Local(LocalBackend::new(LocalConfig::default())?);
//! let id = batch
//!     .submit(&JobSpec::command("hello", ["echo", "hello"]).stdout("/tmp/hello-{id}.out"))
//!     .await?;
//! for job in batch.list(&JobQuery::all()).await? {
//!     println!("{} {} {:?} ({})", job.id, job.name, job.state, job.raw_state);
//! }
//! batch.cancel(&id).await?;
//! # Ok(()) }
//! ```

pub mod cli;
mod condor;
mod error;
mod local;
mod pbs;
pub mod runner;
mod script;
mod slurm;
mod spec;

use std::future::Future;
use std::sync::Arc;

pub use condor::{CondorBackend, CondorConfig};
pub use error::BatchError;
pub use local::{LocalBackend, LocalConfig};
pub use pbs::{PbsBackend, PbsConfig};
pub use runner::{CommandOutput, CommandRunner, Prefix};
pub use script::StageDir;
pub use slurm::{SlurmBackend, SlurmConfig, SqueueFormat};
pub use spec::{JobId, JobInfo, JobQuery, JobSpec, JobState, Resources, Work};

/// The name of the environment variable that holds a job's index within its
/// array (0 for a job that is not an array), on every backend.
pub const ARRAY_INDEX_ENV: &str = "BATCH_ARRAY_INDEX";

/// What every batch backend can do.
pub trait Batch: Send + Sync {
    /// A short name for messages: `slurm`, `pbs`, `condor`, `local`.
    fn kind(&self) -> &'static str;

    /// Submits `job` and returns its id (for an array, the array's id).
    fn submit(&self, job: &JobSpec) -> impl Future<Output = Result<JobId, BatchError>> + Send;

    /// The jobs that match `query`, with their states.
    fn list(
        &self,
        query: &JobQuery,
    ) -> impl Future<Output = Result<Vec<JobInfo>, BatchError>> + Send;

    /// Cancels a job (an array id cancels every task of the array).
    fn cancel(&self, id: &JobId) -> impl Future<Output = Result<(), BatchError>> + Send;
}

/// One of the backends, chosen at run time.
#[derive(Debug)]
pub enum Backend {
    /// Slurm.
    Slurm(SlurmBackend),
    /// PBS/Torque (or Slurm's Torque wrappers).
    Pbs(PbsBackend),
    /// HTCondor.
    Condor(CondorBackend),
    /// Child processes on this machine.
    Local(LocalBackend),
}

impl Batch for Backend {
    fn kind(&self) -> &'static str {
        match self {
            Backend::Slurm(b) => b.kind(),
            Backend::Pbs(b) => b.kind(),
            Backend::Condor(b) => b.kind(),
            Backend::Local(b) => b.kind(),
        }
    }

    async fn submit(&self, job: &JobSpec) -> Result<JobId, BatchError> {
        match self {
            Backend::Slurm(b) => b.submit(job).await,
            Backend::Pbs(b) => b.submit(job).await,
            Backend::Condor(b) => b.submit(job).await,
            Backend::Local(b) => b.submit(job).await,
        }
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<JobInfo>, BatchError> {
        match self {
            Backend::Slurm(b) => b.list(query).await,
            Backend::Pbs(b) => b.list(query).await,
            Backend::Condor(b) => b.list(query).await,
            Backend::Local(b) => b.list(query).await,
        }
    }

    async fn cancel(&self, id: &JobId) -> Result<(), BatchError> {
        match self {
            Backend::Slurm(b) => b.cancel(id).await,
            Backend::Pbs(b) => b.cancel(id).await,
            Backend::Condor(b) => b.cancel(id).await,
            Backend::Local(b) => b.cancel(id).await,
        }
    }
}

/// A shared backend is a backend (one Slurm can hold both queues).
impl<T: Batch> Batch for Arc<T> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn submit(&self, job: &JobSpec) -> impl Future<Output = Result<JobId, BatchError>> + Send {
        (**self).submit(job)
    }
    fn list(
        &self,
        query: &JobQuery,
    ) -> impl Future<Output = Result<Vec<JobInfo>, BatchError>> + Send {
        (**self).list(query)
    }
    fn cancel(&self, id: &JobId) -> impl Future<Output = Result<(), BatchError>> + Send {
        (**self).cancel(id)
    }
}
