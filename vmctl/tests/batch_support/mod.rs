//! Shared helpers of the batch-system tests: start a private single-host
//! Slurm or the personal HTCondor with the project's scripts, poll for job
//! states, and fail with a clear message (never pass silently) when the
//! setup script was not run.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use vmctl::batch::{Batch, CommandRunner, JobId, JobInfo, JobQuery, JobState, Prefix, StageDir};

/// Every test's overall limit.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("vmctl=debug")),
        )
        .with_test_writer()
        .try_init();
}

/// Runs `body` on a runtime with [`TEST_TIMEOUT`].
pub fn run<F: Future<Output = ()>>(body: F) {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .expect("the test did not finish within its timeout");
    });
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join(name)
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

fn require_root(what: &str) {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the {what} tests start daemons that need root; run them as root (CI does)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private single-host Slurm (partitions `exp` and `cluster`), started
/// with `scripts/slurm-local.sh` on free ports with its state in a temporary
/// directory, and stopped when dropped.
#[derive(Debug)]
pub struct SlurmCluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl SlurmCluster {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra settings of
    /// `scripts/slurm-local.sh` (`SLURM_KILL_WAIT`, …).
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        for cmd in [
            "sbatch",
            "squeue",
            "scancel",
            "slurmctld",
            "slurmd",
            "munged",
            "qsub",
        ] {
            assert!(
                on_path(cmd),
                "`{cmd}` is not installed: run `scripts/setup-slurm.sh` as root first"
            );
        }
        require_root("Slurm");
        let dir = tempfile::Builder::new()
            .prefix("vmctl-slurm-")
            .tempdir()
            .unwrap();
        let t0 = Instant::now();
        let out = Command::new("bash")
            .arg(script("slurm-local.sh"))
            .arg("start")
            .env("SLURM_BASE", dir.path())
            .env("SLURM_CTLD_PORT", free_port().to_string())
            .env("SLURM_D_PORT", free_port().to_string())
            .env("SLURM_OWNER_PID", std::process::id().to_string())
            .envs(settings.iter().copied())
            .output()
            .expect("run scripts/slurm-local.sh");
        assert!(
            out.status.success(),
            "scripts/slurm-local.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("slurm started in {:?}", t0.elapsed());
        let conf = dir.path().join("etc").join("slurm.conf");
        SlurmCluster { dir, conf }
    }

    /// One cluster per test binary while any test holds it.
    pub fn shared() -> Arc<SlurmCluster> {
        static SHARED: Mutex<Weak<SlurmCluster>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.upgrade() {
            return c;
        }
        let c = Arc::new(SlurmCluster::start());
        *slot = Arc::downgrade(&c);
        c
    }

    /// A runner whose commands find this Slurm.
    pub fn runner(&self) -> CommandRunner {
        CommandRunner::new()
            .env("SLURM_CONF", self.conf.to_string_lossy())
            .timeout(Duration::from_secs(30))
    }

    /// The `slurm.conf` of this cluster.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A directory for the jobs' files.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("slurm-local.sh"))
            .arg("stop")
            .env("SLURM_BASE", self.dir.path())
            .status();
    }
}

/// The personal HTCondor in the chroot of `scripts/setup-condor.sh`,
/// started with `scripts/condor-local.sh` and stopped when dropped.
#[derive(Debug)]
pub struct CondorPool {
    root: PathBuf,
}

pub const CONDOR_USER: &str = "tester";

impl CondorPool {
    pub fn root() -> PathBuf {
        std::env::var_os("CONDOR_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/rrpc-condor-trixie"))
    }

    pub fn start() -> Self {
        let root = Self::root();
        assert!(
            root.join(".rrpc-setup-done").is_file() && root.join("usr/bin/condor_submit").is_file(),
            "no HTCondor chroot in {}: run `scripts/setup-condor.sh` as root first",
            root.display()
        );
        require_root("HTCondor");
        let t0 = Instant::now();
        let out = Command::new("bash")
            .arg(script("condor-local.sh"))
            .arg("start")
            .env("CONDOR_ROOT", &root)
            .env("CONDOR_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("run scripts/condor-local.sh");
        assert!(
            out.status.success(),
            "scripts/condor-local.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("condor started in {:?}", t0.elapsed());
        CondorPool { root }
    }

    /// Commands run inside the chroot as the non-root user.
    pub fn runner(&self) -> CommandRunner {
        CommandRunner::new()
            .prefix(Prefix::argv([
                "chroot".to_owned(),
                self.root.to_string_lossy().into_owned(),
                "runuser".into(),
                "-u".into(),
                CONDOR_USER.into(),
                "--".into(),
            ]))
            .timeout(Duration::from_secs(30))
    }

    /// A fresh stage directory in the user's home, owned by the user.
    pub fn stage(&self, name: &str) -> StageDir {
        let remote = PathBuf::from(format!(
            "/home/{CONDOR_USER}/vmctl-test-{}-{name}",
            std::process::id()
        ));
        let local = self.root.join(remote.strip_prefix("/").unwrap());
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).unwrap();
        let st = Command::new("chroot")
            .arg(&self.root)
            .args(["chown", CONDOR_USER])
            .arg(&remote)
            .status()
            .unwrap();
        assert!(st.success(), "chown the stage directory");
        StageDir { local, remote }
    }
}

impl Drop for CondorPool {
    fn drop(&mut self) {
        let home = self.root.join("home").join(CONDOR_USER);
        let mine = format!("vmctl-test-{}-", std::process::id());
        if let Ok(entries) = std::fs::read_dir(&home) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&mine) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = Command::new("bash")
            .arg(script("condor-local.sh"))
            .arg("stop")
            .env("CONDOR_ROOT", &self.root)
            .status();
    }
}

/// Polls `list` until the jobs of `id` all satisfy `done`; returns them.
pub async fn wait_for<B: Batch>(
    batch: &B,
    id: &JobId,
    expect_tasks: usize,
    within: Duration,
    done: impl Fn(&JobInfo) -> bool,
) -> Vec<JobInfo> {
    let t0 = Instant::now();
    let mut last = Vec::new();
    while t0.elapsed() < within {
        last = batch.list(&JobQuery::id(id)).await.unwrap();
        if last.len() >= expect_tasks && last.iter().all(&done) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("job {id} did not reach the expected state within {within:?}; last seen: {last:#?}");
}

/// Waits until every job of `id` is finished.
pub async fn wait_finished<B: Batch>(batch: &B, id: &JobId, tasks: usize) -> Vec<JobInfo> {
    wait_for(batch, id, tasks, Duration::from_secs(90), |j| {
        !j.state.is_active()
    })
    .await
}

/// Waits until the job is running.
pub async fn wait_running<B: Batch>(batch: &B, id: &JobId) -> JobInfo {
    wait_for(batch, id, 1, Duration::from_secs(90), |j| {
        j.state == JobState::Running
    })
    .await
    .remove(0)
}

/// Reads a file the job wrote, waiting a little for it to appear.
pub async fn read_output(path: &Path) -> String {
    for _ in 0..40 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{} was not written", path.display());
}
