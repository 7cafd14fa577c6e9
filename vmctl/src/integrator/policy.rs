//! How many VM-launch jobs to submit: a pure function of what one cycle
//! observed and the policy, with the reason for every decision.

use serde::{Deserialize, Serialize};

/// The integrator's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// VMs one VM-launch job starts (one whole node; from the plan).
    pub vms_per_node: u32,
    /// At most this many VM-launch jobs pending or running at once.
    pub max_nodes: u32,
    /// VM slots kept beyond the user jobs, for jobs still to come.
    pub min_idle_vms: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            vms_per_node: 1,
            max_nodes: 1,
            min_idle_vms: 0,
        }
    }
}

/// What one cycle saw, counted from scratch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// User jobs waiting in the experiment's queue.
    pub user_pending: u32,
    /// User jobs running in the experiment's queue (each holds a VM).
    pub user_running: u32,
    /// VM-launch jobs waiting in the cluster's queue.
    pub launch_pending: u32,
    /// VM-launch jobs running on the cluster.
    pub launch_running: u32,
}

/// One decision of a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Submit this many VM-launch jobs.
    Submit {
        /// How many.
        count: u32,
        /// Why.
        reason: String,
    },
    /// Submit nothing.
    Hold {
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// The number of jobs to submit.
    pub fn count(&self) -> u32 {
        match self {
            Decision::Submit { count, .. } => *count,
            Decision::Hold { .. } => 0,
        }
    }
    /// The reason.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Submit { reason, .. } | Decision::Hold { reason } => reason,
        }
    }
}

/// Decides how many VM-launch jobs to submit.
///
/// Every user job, pending or running, needs a VM slot, plus the idle pool:
/// `needed = ceil((pending + running + min_idle) / vms_per_node)` nodes.
/// Every VM-launch job that is pending or running already provides a node.
/// The difference is submitted, never beyond `max_nodes`. Because only
/// counts from the batch systems go in, a restarted integrator decides the
/// same and never submits twice for the same demand.
pub fn decide(policy: &Policy, obs: &Observation) -> Decision {
    let vpn = policy.vms_per_node.max(1);
    let active = obs.launch_pending + obs.launch_running;
    let demand = obs.user_pending + obs.user_running + policy.min_idle_vms;
    if demand == 0 {
        return Decision::Hold {
            reason: format!(
                "no user jobs and no idle pool wanted; {active} VM-launch job(s) active"
            ),
        };
    }
    let needed = demand.div_ceil(vpn);
    let seen = format!(
        "{} user job(s) pending and {} running + idle pool of {} = {demand} VM slot(s) = {needed} node(s) at {vpn} VM(s) per node",
        obs.user_pending, obs.user_running, policy.min_idle_vms
    );
    if needed <= active {
        return Decision::Hold {
            reason: format!(
                "{seen}; {active} VM-launch job(s) already pending ({}) or running ({})",
                obs.launch_pending, obs.launch_running
            ),
        };
    }
    let want = needed - active;
    let room = policy.max_nodes.saturating_sub(active);
    if room == 0 {
        return Decision::Hold {
            reason: format!(
                "{seen}; {active} VM-launch job(s) active, which is the maximum of {} node(s)",
                policy.max_nodes
            ),
        };
    }
    let count = want.min(room);
    let capped = if count < want {
        format!(" (capped by max_nodes {}: {want} wanted)", policy.max_nodes)
    } else {
        String::new()
    };
    Decision::Submit {
        count,
        reason: format!("{seen}; {active} VM-launch job(s) active; submit {count}{capped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(up: u32, ur: u32, lp: u32, lr: u32) -> Observation {
        Observation {
            user_pending: up,
            user_running: ur,
            launch_pending: lp,
            launch_running: lr,
        }
    }

    #[test]
    fn submits_what_the_queue_needs() {
        let p = Policy {
            vms_per_node: 4,
            max_nodes: 10,
            min_idle_vms: 0,
        };
        assert_eq!(decide(&p, &obs(0, 0, 0, 0)).count(), 0);
        assert_eq!(decide(&p, &obs(1, 0, 0, 0)).count(), 1);
        assert_eq!(decide(&p, &obs(9, 0, 0, 0)).count(), 3);
        // Jobs already submitted count, pending or running.
        assert_eq!(decide(&p, &obs(9, 0, 2, 1)).count(), 0);
        assert_eq!(decide(&p, &obs(9, 4, 1, 1)).count(), 2);
    }

    #[test]
    fn respects_max_nodes_and_the_idle_pool() {
        let p = Policy {
            vms_per_node: 2,
            max_nodes: 3,
            min_idle_vms: 3,
        };
        let d = decide(&p, &obs(0, 0, 0, 0));
        assert_eq!(d.count(), 2, "{d:?}");
        let d = decide(&p, &obs(100, 0, 1, 0));
        assert_eq!(d.count(), 2);
        assert!(
            d.reason().contains("capped by max_nodes 3"),
            "{}",
            d.reason()
        );
        let d = decide(&p, &obs(100, 0, 1, 2));
        assert_eq!(d.count(), 0);
        assert!(d.reason().contains("maximum"), "{}", d.reason());
    }

    #[test]
    fn every_decision_has_a_reason() {
        let p = Policy::default();
        for o in [obs(0, 0, 0, 0), obs(3, 0, 0, 0), obs(3, 1, 1, 0)] {
            assert!(!decide(&p, &o).reason().is_empty());
        }
    }
}

/// One node's block of VMs, as the VMs' registrations show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatus {
    /// The block's name (letters, digits, `.`, `_`, `-`).
    pub block: String,
    /// VMs up and registered.
    pub vms_ready: u32,
    /// Of those, VMs running a user job.
    pub vms_busy: u32,
}

impl BlockStatus {
    /// Ready VMs with no user job.
    pub fn idle(&self) -> u32 {
        self.vms_ready.saturating_sub(self.vms_busy)
    }
}

/// A decision to shut a block of VMs down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    /// The block.
    pub block: String,
    /// Why.
    pub reason: String,
}

/// Decides which wholly idle VM blocks to shut down: none while user jobs
/// wait; never a block that already has a shutdown job (`shutting_down`);
/// and never below the idle pool of `min_idle_vms`. Blocks are considered
/// in name order, so repeated cycles pick the same ones.
pub fn decide_shutdown(
    policy: &Policy,
    obs: &Observation,
    blocks: &[BlockStatus],
    shutting_down: &[String],
) -> Vec<Shutdown> {
    if obs.user_pending > 0 {
        return Vec::new();
    }
    let mut candidates: Vec<&BlockStatus> = blocks
        .iter()
        .filter(|b| !shutting_down.contains(&b.block))
        .collect();
    candidates.sort_by(|a, b| a.block.cmp(&b.block));
    let mut idle_left: u32 = candidates.iter().map(|b| b.idle()).sum();
    let mut out = Vec::new();
    for b in candidates {
        if b.vms_busy > 0 || b.vms_ready == 0 {
            continue;
        }
        let after = idle_left - b.idle();
        if after < policy.min_idle_vms {
            continue;
        }
        idle_left = after;
        out.push(Shutdown {
            block: b.block.clone(),
            reason: format!(
                "no user jobs pending; block {} has {} VM(s), all idle; {after} idle VM(s) remain (pool minimum {})",
                b.block, b.vms_ready, policy.min_idle_vms
            ),
        });
    }
    out
}

#[cfg(test)]
mod shutdown_tests {
    use super::*;

    fn block(name: &str, ready: u32, busy: u32) -> BlockStatus {
        BlockStatus {
            block: name.into(),
            vms_ready: ready,
            vms_busy: busy,
        }
    }

    #[test]
    fn only_wholly_idle_blocks_when_nothing_waits() {
        let p = Policy {
            vms_per_node: 2,
            max_nodes: 4,
            min_idle_vms: 0,
        };
        let blocks = [block("b2", 2, 1), block("b1", 2, 0), block("b3", 0, 0)];
        let idle = Observation::default();
        let d = decide_shutdown(&p, &idle, &blocks, &[]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].block, "b1");
        assert!(d[0].reason.contains("all idle"), "{}", d[0].reason);
        // Waiting user jobs keep every VM.
        let busy = Observation {
            user_pending: 1,
            ..Observation::default()
        };
        assert!(decide_shutdown(&p, &busy, &blocks, &[]).is_empty());
        // A block with a shutdown job already is left alone.
        assert!(decide_shutdown(&p, &idle, &blocks, &["b1".into()]).is_empty());
    }

    #[test]
    fn the_idle_pool_is_kept() {
        let p = Policy {
            vms_per_node: 2,
            max_nodes: 4,
            min_idle_vms: 2,
        };
        let blocks = [block("a", 2, 0), block("b", 2, 0), block("c", 2, 0)];
        let d = decide_shutdown(&p, &Observation::default(), &blocks, &[]);
        let names: Vec<&str> = d.iter().map(|s| s.block.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
