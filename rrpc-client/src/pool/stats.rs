//! The per-node table (dispy's `cluster.stats()`) and the overall speed-up.

use std::fmt;
use std::time::Duration;

/// One node's line of the table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeStats {
    /// The node's address.
    pub node: String,
    /// CPUs the node reported (or the configured concurrency, or 1).
    pub cpus: usize,
    /// Jobs it runs at once.
    pub concurrency: usize,
    /// Jobs done here.
    pub jobs: u64,
    /// Jobs running here now.
    pub running: usize,
    /// Runs that failed here, including runs cut short by the node's loss.
    pub failures: u64,
    /// Summed run time of the jobs done here.
    pub node_time: Duration,
    /// Why the node is out of the cluster, if it is.
    pub lost: Option<String>,
}

impl NodeStats {
    /// Mean seconds per job done here.
    pub fn sec_per_job(&self) -> f64 {
        if self.jobs == 0 {
            0.0
        } else {
            self.node_time.as_secs_f64() / self.jobs as f64
        }
    }
}

/// A snapshot of the pool's work. `Display` prints the per-node table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolStats {
    /// One line per node, in the order they joined.
    pub nodes: Vec<NodeStats>,
    /// Jobs done.
    pub done: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs running.
    pub running: usize,
    /// Summed run time of the jobs done.
    pub job_time: Duration,
    /// From the first job's start to the last job's end.
    pub wall: Duration,
}

impl PoolStats {
    /// Summed job time over wall time: how many times faster than running
    /// the same jobs one after another.
    pub fn speedup(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.job_time.as_secs_f64() / self.wall.as_secs_f64()
        }
    }
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .nodes
            .iter()
            .map(|n| n.node.len() + if n.lost.is_some() { 7 } else { 0 })
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            f,
            "{:<width$} | CPUs | Jobs | Sec/Job | Node Time Sec | Failures",
            "Node"
        )?;
        writeln!(f, "{}", "-".repeat(width + 52))?;
        for n in &self.nodes {
            let name = match &n.lost {
                Some(_) => format!("{} (lost)", n.node),
                None => n.node.clone(),
            };
            writeln!(
                f,
                "{name:<width$} | {:>4} | {:>4} | {:>7.3} | {:>13.3} | {:>8}",
                n.cpus,
                n.jobs,
                n.sec_per_job(),
                n.node_time.as_secs_f64(),
                n.failures
            )?;
        }
        for n in &self.nodes {
            if let Some(why) = &n.lost {
                writeln!(f, "{} lost: {why}", n.node)?;
            }
        }
        write!(
            f,
            "{} jobs done, {} failed, {} cancelled; {:.3} s of job time in {:.3} s: speed-up {:.2}x",
            self.done,
            self.failed,
            self.cancelled,
            self.job_time.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.speedup()
        )
    }
}
