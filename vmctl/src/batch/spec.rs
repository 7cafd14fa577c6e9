//! What a job is (the spec a user submits) and what a backend reports about
//! one (its id, name and state).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BatchError;

/// A job's id as its batch system prints it (`42`, `42_3`, `17.0`, `5.server`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub String);

impl JobId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        JobId(s.to_owned())
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Work {
    /// A program and its arguments (no shell).
    Command(Vec<String>),
    /// A shell script. Without a `#!` line it runs under `/bin/sh`; a `#!`
    /// line must name a POSIX shell (the backend adds `export` lines).
    Script(String),
}

/// Resources a job asks for. `None` leaves the batch system's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Whole nodes.
    pub nodes: Option<u32>,
    /// CPUs (per task, one task per job).
    pub cpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
}

/// A job to submit. Output paths may hold `{id}` (the job's id, or the
/// array's id) and `{index}` (the array index); each backend turns them into
/// its own syntax. Built with [`JobSpec::command`] or [`JobSpec::script`]
/// and the setters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's name: letters, digits, `.`, `_`, `-` (how jobs are
    /// recognised again after a restart).
    pub name: String,
    /// What it runs.
    pub work: Work,
    /// What it needs.
    pub resources: Resources,
    /// Its wall-time limit.
    pub wall_time: Option<Duration>,
    /// Partition (Slurm) or queue (PBS).
    pub queue: Option<String>,
    /// Where its stdout goes (discarded when `None`, on every backend).
    pub stdout: Option<PathBuf>,
    /// Where its stderr goes (with stdout when `None`).
    pub stderr: Option<PathBuf>,
    /// Its working directory.
    pub workdir: Option<PathBuf>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Run as an array of this many tasks (indices `0..n`).
    pub array: Option<u32>,
    /// Start only after these jobs completed successfully.
    pub after_ok: Vec<JobId>,
    /// A free-form comment (Slurm `--comment`, HTCondor `+RrpcComment`).
    pub comment: Option<String>,
}

impl JobSpec {
    fn new(name: impl Into<String>, work: Work) -> Self {
        JobSpec {
            name: name.into(),
            work,
            resources: Resources::default(),
            wall_time: None,
            queue: None,
            stdout: None,
            stderr: None,
            workdir: None,
            env: BTreeMap::new(),
            array: None,
            after_ok: Vec::new(),
            comment: None,
        }
    }

    /// A job that runs `argv` (no shell).
    pub fn command<I, S>(name: impl Into<String>, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(
            name,
            Work::Command(argv.into_iter().map(Into::into).collect()),
        )
    }

    /// A job that runs a shell script.
    pub fn script(name: impl Into<String>, script: impl Into<String>) -> Self {
        Self::new(name, Work::Script(script.into()))
    }

    /// Sets the partition or queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    /// Sets the number of nodes.
    pub fn nodes(mut self, nodes: u32) -> Self {
        self.resources.nodes = Some(nodes);
        self
    }
    /// Sets the number of CPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.resources.cpus = Some(cpus);
        self
    }
    /// Sets the memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.resources.memory_mib = Some(mib);
        self
    }
    /// Sets the wall-time limit.
    pub fn wall_time(mut self, limit: Duration) -> Self {
        self.wall_time = Some(limit);
        self
    }
    /// Sets the stdout file.
    pub fn stdout(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout = Some(path.into());
        self
    }
    /// Sets the stderr file.
    pub fn stderr(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Some(path.into());
        self
    }
    /// Sets the working directory.
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    /// Makes the job an array of `n` tasks.
    pub fn array(mut self, n: u32) -> Self {
        self.array = Some(n);
        self
    }
    /// Starts the job only after `id` completed successfully.
    pub fn after_ok(mut self, id: JobId) -> Self {
        self.after_ok.push(id);
        self
    }
    /// Sets the comment.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Checks what every backend relies on.
    pub fn validate(&self) -> Result<(), BatchError> {
        let bad = |m: String| Err(BatchError::InvalidSpec(m));
        if self.name.is_empty() || self.name.len() > 100 {
            return bad(format!(
                "the name must have 1 to 100 characters: {:?}",
                self.name
            ));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(format!(
                "the name {:?} may hold only letters, digits, '.', '_' and '-'",
                self.name
            ));
        }
        match &self.work {
            Work::Command(argv) if argv.is_empty() => return bad("the command is empty".into()),
            Work::Script(s) if s.trim().is_empty() => return bad("the script is empty".into()),
            _ => {}
        }
        for key in self.env.keys() {
            let mut chars = key.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return bad(format!("invalid environment variable name {key:?}"));
            }
        }
        if self.array == Some(0) {
            return bad("an array needs at least one task".into());
        }
        for (what, v) in [
            ("nodes", self.resources.nodes),
            ("cpus", self.resources.cpus),
        ] {
            if v == Some(0) {
                return bad(format!("{what} must be at least 1"));
            }
        }
        if self.wall_time.is_some_and(|t| t.is_zero()) {
            return bad("the wall time must not be zero".into());
        }
        for id in &self.after_ok {
            if id.0.is_empty() || id.0.chars().any(|c| c.is_whitespace() || c == ':') {
                return bad(format!("invalid dependency id {:?}", id.0));
            }
        }
        if let Some(c) = &self.comment {
            if c.contains(['\n', '\r', '"']) {
                return bad("the comment must not hold newlines or double quotes".into());
            }
        }
        Ok(())
    }
}

/// A job's state, common to every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to start (queued, held, waiting for a dependency).
    Pending,
    /// Running (or finishing).
    Running,
    /// Finished successfully.
    Completed,
    /// Finished unsuccessfully (non-zero exit, signal, time limit, node failure).
    Failed,
    /// Cancelled or removed.
    Cancelled,
    /// A state this crate does not know.
    Unknown,
}

impl JobState {
    /// True for pending and running jobs.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Pending | JobState::Running)
    }
}

/// A job as a backend reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's id (`42`, or `42_3` for task 3 of array 42).
    pub id: JobId,
    /// The job's name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// The state as the batch system spells it.
    pub raw_state: String,
    /// Partition or queue, when known.
    pub queue: Option<String>,
    /// The array this job is a task of, and its index.
    pub array: Option<(JobId, u32)>,
    /// The exit code, when finished and known.
    pub exit_code: Option<i32>,
    /// The comment, when known.
    pub comment: Option<String>,
}

/// Which jobs to list. Every filter is also applied to the parsed output, so
/// it holds even where the batch system ignores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    /// Only these ids (an array id matches every task of the array).
    pub ids: Vec<JobId>,
    /// Only jobs with this exact name.
    pub name: Option<String>,
    /// Only jobs whose name starts with this.
    pub name_prefix: Option<String>,
    /// Only jobs in this partition or queue.
    pub queue: Option<String>,
    /// Also finished jobs the batch system still remembers.
    pub include_finished: bool,
}

impl JobQuery {
    /// Every job, finished ones included.
    pub fn all() -> Self {
        JobQuery {
            include_finished: true,
            ..Default::default()
        }
    }
    /// Pending and running jobs only.
    pub fn active() -> Self {
        JobQuery::default()
    }
    /// One job (or array), finished or not.
    pub fn id(id: &JobId) -> Self {
        JobQuery {
            ids: vec![id.clone()],
            include_finished: true,
            ..Default::default()
        }
    }
    /// Restricts to a queue.
    pub fn in_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    /// Restricts to names starting with `prefix`.
    pub fn with_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = Some(prefix.into());
        self
    }

    /// True when `job` passes every filter.
    pub fn matches(&self, job: &JobInfo) -> bool {
        if !self.include_finished && !job.state.is_active() {
            return false;
        }
        if !self.ids.is_empty()
            && !self.ids.iter().any(|id| {
                *id == job.id || job.array.as_ref().is_some_and(|(parent, _)| parent == id)
            })
        {
            return false;
        }
        if self.name.as_ref().is_some_and(|n| *n != job.name) {
            return false;
        }
        if self
            .name_prefix
            .as_ref()
            .is_some_and(|p| !job.name.starts_with(p.as_str()))
        {
            return false;
        }
        if let Some(q) = &self.queue {
            if job.queue.as_deref() != Some(q.as_str()) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_env_are_checked() {
        assert!(JobSpec::command("ok-name_1.x", ["true"]).validate().is_ok());
        assert!(JobSpec::command("bad name", ["true"]).validate().is_err());
        assert!(JobSpec::command("x", Vec::<String>::new())
            .validate()
            .is_err());
        assert!(JobSpec::command("x", ["true"])
            .env("1A", "v")
            .validate()
            .is_err());
        assert!(JobSpec::command("x", ["true"]).array(0).validate().is_err());
    }

    #[test]
    fn an_array_id_matches_its_tasks() {
        let job = JobInfo {
            id: JobId("7_1".into()),
            name: "a".into(),
            state: JobState::Completed,
            raw_state: "COMPLETED".into(),
            queue: Some("exp".into()),
            array: Some((JobId("7".into()), 1)),
            exit_code: Some(0),
            comment: None,
        };
        assert!(JobQuery::id(&JobId("7".into())).matches(&job));
        assert!(!JobQuery::id(&JobId("8".into())).matches(&job));
        assert!(!JobQuery::active().matches(&job));
        assert!(!JobQuery::all().in_queue("cluster").matches(&job));
    }
}
