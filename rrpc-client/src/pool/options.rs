//! [`PoolOptions`]: how a pool runs its jobs.

use std::time::Duration;

use crate::ConnectOptions;

/// How a pool runs its jobs; every field has a working default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolOptions {
    /// Jobs run at once on each node; `None` (the default) uses the CPU
    /// count the node reports (`sys.cpu_count()`), or 1 if it reports none.
    /// A [`NodeSpec::concurrency`] overrides it for one node.
    pub concurrency: Option<usize>,
    /// How many times a job may be re-run after its node is lost (default 3).
    pub retries: u32,
    /// Deadline of one run of a job (default 24 h): past it the job fails
    /// with a timeout and the node is told to cancel it.
    pub job_timeout: Duration,
    /// How often each node is sent a heartbeat (default 1 s).
    pub heartbeat: Duration,
    /// How long a node may take to answer a heartbeat before it is declared
    /// lost and its jobs are re-queued (default 10 s).
    pub node_deadline: Duration,
    /// Most jobs waiting in the queue; more are refused with
    /// [`PoolError::QueueFull`] (default 1 000 000). [`Pool::map`] only keeps
    /// a window of its inputs queued, so it never hits this.
    pub max_queued: usize,
    /// Whether to draw a progress bar; it is drawn only when stderr is a
    /// terminal (default true).
    pub progress: bool,
    /// How to connect to the nodes.
    pub connect: ConnectOptions,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            concurrency: None,
            retries: 3,
            job_timeout: Duration::from_secs(24 * 3600),
            heartbeat: Duration::from_secs(1),
            node_deadline: Duration::from_secs(10),
            max_queued: 1_000_000,
            progress: true,
            connect: ConnectOptions::default(),
        }
    }
}

impl PoolOptions {
    /// Runs `jobs` jobs at once on every node (at least 1).
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = Some(jobs.max(1));
        self
    }

    /// Sets how many times a job may be re-run after a node loss.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the deadline of one run of a job.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Sets how often nodes get a heartbeat.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Sets how long a node may take to answer before it is declared lost.
    pub fn node_deadline(mut self, deadline: Duration) -> Self {
        self.node_deadline = deadline;
        self
    }

    /// Sets the most jobs waiting in the queue.
    pub fn max_queued(mut self, jobs: usize) -> Self {
        self.max_queued = jobs;
        self
    }

    /// Turns the progress bar on (when on a terminal) or off.
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// Sets how to connect to nodes (connect deadline, call settings).
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connect = options;
        self
    }
}
