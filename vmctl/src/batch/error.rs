//! The one error type of the batch backends.

use std::time::Duration;

/// Why a batch operation failed. Errors about a command name the command as
/// it was run (prefix included) and carry its output, truncated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The command could not be started (not installed, not executable…).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// Its stderr and stdout, truncated.
        output: String,
    },
    /// The command did not finish in time and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed; output so far: {output}")]
    Timeout {
        /// The command line.
        command: String,
        /// The timeout.
        after: Duration,
        /// What it printed before it was killed, truncated.
        output: String,
    },
    /// The command succeeded but its output is not what was expected.
    #[error("cannot parse the output of `{command}` ({what}): {output}")]
    Parse {
        /// The command line.
        command: String,
        /// What was wrong.
        what: String,
        /// The output, truncated.
        output: String,
    },
    /// The job description is invalid.
    #[error("invalid job: {0}")]
    InvalidSpec(String),
    /// The backend cannot do what the job asks for.
    #[error("the {backend} backend does not support {feature}")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// What it cannot do.
        feature: String,
    },
    /// No such job.
    #[error("no job {0}")]
    NotFound(String),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl BatchError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BatchError::Io {
            context: context.into(),
            source,
        }
    }
}
