//! The embedded default: an in-process queue that runs jobs as child
//! processes of this process, at most `max_running` at a time, each in its
//! own process group. Cancelling a job sends SIGTERM to its group and, after
//! a grace period, SIGKILL; dropping the backend kills every job.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::watch;

use super::runner::kill_group;
use super::script::{self, StageDir};
use super::spec::{JobId, JobInfo, JobQuery, JobSpec, JobState};
use super::{Batch, BatchError, ARRAY_INDEX_ENV};
use crate::task::AbortOnDrop;

/// How the local backend runs jobs.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// At most this many jobs run at once.
    pub max_running: usize,
    /// Where job scripts are written.
    pub spool: PathBuf,
    /// The working directory of jobs that name none.
    pub workdir: PathBuf,
    /// How long a cancelled job has between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The queue name jobs report when they name none.
    pub default_queue: String,
    /// How long finished jobs stay listed (like Slurm's `MinJobAge`).
    pub keep_finished: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            max_running: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            spool: std::env::temp_dir().join(format!(
                "vmctl-local-{}-{}",
                std::process::id(),
                SPOOL_SEQ.fetch_add(1, Ordering::Relaxed)
            )),
            workdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            kill_grace: Duration::from_secs(5),
            default_queue: "local".into(),
            keep_finished: Duration::from_secs(300),
        }
    }
}

/// Makes every default spool directory of a process distinct.
static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// The local backend. Cheap to clone; every clone shares one queue.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LocalConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Every job (array tasks one by one), by submission order.
    jobs: BTreeMap<(u64, u32), Job>,
}

#[derive(Debug)]
struct Job {
    spec: Arc<JobSpec>,
    script: PathBuf,
    id: JobId,
    array: Option<(JobId, u32)>,
    state: JobState,
    raw: String,
    exit_code: Option<i32>,
    /// When it finished (finished jobs are forgotten after `keep_finished`).
    finished_at: Option<Instant>,
    /// Tells the supervising task to cancel the job.
    cancel: Option<watch::Sender<bool>>,
    /// The supervising task (owns the child).
    task: Option<AbortOnDrop>,
}

impl LocalBackend {
    /// A backend with this configuration (creates the spool directory).
    pub fn new(config: LocalConfig) -> Result<Self, BatchError> {
        if config.max_running == 0 {
            return Err(BatchError::InvalidSpec(
                "max_running must be at least 1".into(),
            ));
        }
        std::fs::create_dir_all(&config.spool)
            .map_err(|e| BatchError::io(format!("create {}", config.spool.display()), e))?;
        Ok(LocalBackend {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent data: keep going.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config.spool);
    }
}

impl Batch for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn submit(&self, spec: &JobSpec) -> Result<JobId, BatchError> {
        spec.validate()?;
        if spec.resources.nodes.is_some_and(|n| n > 1) {
            return Err(BatchError::Unsupported {
                backend: "local",
                feature: "more than one node per job".into(),
            });
        }
        let body = script::render(spec, &format!("${{{ARRAY_INDEX_ENV}:-0}}"), false);
        let (script, _) =
            StageDir::here(&self.inner.config.spool).write(&spec.name, "sh", &body)?;
        let spec = Arc::new(spec.clone());
        let id = {
            let mut st = self.lock();
            for dep in &spec.after_ok {
                if !st.jobs.values().any(|j| j.id == *dep || parent_is(j, dep)) {
                    return Err(BatchError::NotFound(dep.0.clone()));
                }
            }
            st.next_id += 1;
            let n = st.next_id;
            let tasks = spec.array.unwrap_or(1);
            for index in 0..tasks {
                let (id, array) = match spec.array {
                    Some(_) => (
                        JobId(format!("{n}_{index}")),
                        Some((JobId(n.to_string()), index)),
                    ),
                    None => (JobId(n.to_string()), None),
                };
                st.jobs.insert(
                    (n, index),
                    Job {
                        spec: spec.clone(),
                        script: script.clone(),
                        id,
                        array,
                        state: JobState::Pending,
                        raw: "PENDING".into(),
                        exit_code: None,
                        finished_at: None,
                        cancel: None,
                        task: None,
                    },
                );
            }
            JobId(n.to_string())
        };
        pump(&self.inner);
        Ok(id)
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<JobInfo>, BatchError> {
        let st = self.lock();
        Ok(st
            .jobs
            .values()
            .map(|j| JobInfo {
                id: j.id.clone(),
                name: j.spec.name.clone(),
                state: j.state,
                raw_state: j.raw.clone(),
                queue: Some(
                    j.spec
                        .queue
                        .clone()
                        .unwrap_or_else(|| self.inner.config.default_queue.clone()),
                ),
                array: j.array.clone(),
                exit_code: j.exit_code,
                comment: j.spec.comment.clone(),
            })
            .filter(|j| query.matches(j))
            .collect())
    }

    async fn cancel(&self, id: &JobId) -> Result<(), BatchError> {
        let mut found = false;
        {
            let mut st = self.lock();
            for job in st.jobs.values_mut() {
                if job.id != *id && !parent_is(job, id) {
                    continue;
                }
                found = true;
                match job.state {
                    JobState::Pending => {
                        job.state = JobState::Cancelled;
                        job.raw = "CANCELLED".into();
                        job.finished_at = Some(Instant::now());
                    }
                    JobState::Running => {
                        if let Some(tx) = &job.cancel {
                            let _ = tx.send(true);
                        }
                    }
                    _ => {}
                }
            }
        }
        if !found {
            return Err(BatchError::NotFound(id.0.clone()));
        }
        pump(&self.inner);
        Ok(())
    }
}

fn parent_is(job: &Job, id: &JobId) -> bool {
    job.array.as_ref().is_some_and(|(p, _)| p == id)
}

/// Starts every pending job whose dependencies are met while there is room;
/// cancels jobs whose dependencies can never be met.
fn pump(inner: &Arc<Inner>) {
    let mut st = lock(inner);
    let keep = inner.config.keep_finished;
    st.jobs
        .retain(|_, j| j.finished_at.is_none_or(|t| t.elapsed() < keep));
    let keys: Vec<(u64, u32)> = st.jobs.keys().copied().collect();
    for key in keys {
        let running = st
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .count();
        let Some(job) = st.jobs.get(&key) else {
            continue;
        };
        if job.state != JobState::Pending {
            continue;
        }
        let mut ready = true;
        let mut never = false;
        for dep in &job.spec.after_ok {
            for other in st
                .jobs
                .values()
                .filter(|o| o.id == *dep || parent_is(o, dep))
            {
                match other.state {
                    JobState::Completed => {}
                    JobState::Pending | JobState::Running => ready = false,
                    _ => never = true,
                }
            }
        }
        let Some(job) = st.jobs.get_mut(&key) else {
            continue;
        };
        if never {
            job.state = JobState::Cancelled;
            job.raw = "DEPENDENCY_NEVER_SATISFIED".into();
            job.finished_at = Some(Instant::now());
            continue;
        }
        if !ready || running >= inner.config.max_running {
            continue;
        }
        start(inner, job);
    }
}

/// Starts `job`'s process and the task that supervises it.
fn start(inner: &Arc<Inner>, job: &mut Job) {
    let index = job.array.as_ref().map_or(0, |(_, i)| *i);
    let id_for_paths = job
        .array
        .as_ref()
        .map_or(job.id.0.clone(), |(p, _)| p.0.clone());
    let spec = &job.spec;
    let open = |p: &Path| -> std::io::Result<File> {
        let path = script::placeholders(p, &id_for_paths, &index.to_string());
        let path = if Path::new(&path).is_relative() {
            spec.workdir
                .clone()
                .unwrap_or_else(|| inner.config.workdir.clone())
                .join(path)
        } else {
            PathBuf::from(path)
        };
        File::create(path)
    };
    let stdio = || -> std::io::Result<(Stdio, Stdio)> {
        let out = match &spec.stdout {
            Some(p) => Some(open(p)?),
            None => None,
        };
        let err = match (&spec.stderr, &out) {
            (Some(p), _) => Stdio::from(open(p)?),
            (None, Some(f)) => Stdio::from(f.try_clone()?),
            (None, None) => Stdio::null(),
        };
        Ok((out.map_or_else(Stdio::null, Stdio::from), err))
    };
    let spawned = stdio().and_then(|(out, err)| {
        Command::new(&job.script)
            .current_dir(spec.workdir.as_ref().unwrap_or(&inner.config.workdir))
            .env(ARRAY_INDEX_ENV, index.to_string())
            .env("BATCH_JOB_ID", job.id.0.clone())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "local job did not start");
            job.state = JobState::Failed;
            job.raw = format!("LAUNCH_FAILED: {e}");
            job.finished_at = Some(Instant::now());
            return;
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let (tx, mut rx) = watch::channel(false);
    job.state = JobState::Running;
    job.raw = "RUNNING".into();
    job.cancel = Some(tx);
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let wall = spec.wall_time;
    let grace = inner.config.kill_grace;
    let id = job.id.clone();
    job.task = Some(AbortOnDrop::new(tokio::spawn(async move {
        // Kills the whole group if this task is aborted (backend dropped).
        let guard = GroupGuard(pgid);
        let limit = async {
            match wall {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let (outcome, exit) = tokio::select! {
            status = child.wait() => (None, status.ok()),
            _ = rx.wait_for(|c| *c) => (Some((JobState::Cancelled, "CANCELLED")), None),
            () = limit => (Some((JobState::Failed, "TIMEOUT")), None),
        };
        let exit = match (outcome, exit) {
            (None, exit) => exit,
            (Some(_), _) => {
                kill_group(pgid, Signal::SIGTERM);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s.ok(),
                    Err(_) => {
                        kill_group(pgid, Signal::SIGKILL);
                        child.wait().await.ok()
                    }
                }
            }
        };
        // Leftovers of a finished job (background children) go with it.
        drop(guard);
        let Some(inner) = weak.upgrade() else { return };
        {
            let mut st = lock(&inner);
            if let Some(job) = st.jobs.values_mut().find(|j| j.id == id) {
                job.cancel = None;
                job.finished_at = Some(Instant::now());
                let code = exit.and_then(|s| s.code());
                job.exit_code = code;
                (job.state, job.raw) = match (outcome, exit) {
                    (Some((state, raw)), _) => (state, raw.to_owned()),
                    (None, Some(s)) if s.success() => (JobState::Completed, "COMPLETED".into()),
                    (None, Some(s)) => match code {
                        Some(c) => (JobState::Failed, format!("FAILED (exit {c})")),
                        None => (JobState::Failed, format!("FAILED ({s})")),
                    },
                    (None, None) => (JobState::Unknown, "LOST".into()),
                };
                tracing::debug!(job = %id, state = %job.raw, "local job finished");
            }
        }
        pump(&inner);
    })));
}

/// SIGKILLs a process group when dropped.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0, Signal::SIGKILL);
    }
}
