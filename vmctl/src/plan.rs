//! How many VMs fit on this node, and how big each one is.
//!
//! The rule comes from the dynamic-cluster article: a "VM launch job" takes a
//! whole physical node, finds out how many CPUs and how much memory it has,
//! keeps about 20 % of the memory for the host itself, and starts as many VMs
//! as fit, sharing the rest of the memory equally between them.
//!
//! ```
//! use vmctl::plan::{NodeResources, PlanRequest, VmSize};
//!
//! let node = NodeResources { cpus: 8, memory_mib: 16 * 1024 };
//! let plan = PlanRequest::new(VmSize::Cpus(4)).plan(&node).unwrap();
//! assert_eq!(plan.vms, 2);
//! assert_eq!(plan.cpus_per_vm, 4);
//! assert_eq!(plan.memory_per_vm_mib, 6553); // (16384 - 20 %) / 2
//! println!("{}", plan.explain());
//! ```

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The host memory kept back for the node's own system by default (20 %).
pub const DEFAULT_RESERVE: f64 = 0.20;

/// The smallest memory a planned VM may get by default, in MiB.
pub const DEFAULT_MIN_VM_MEMORY_MIB: u64 = 64;

/// Errors from reading the node's resources or from planning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A system file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A system file did not hold what was expected.
    #[error("cannot parse {path}: {what}")]
    Parse {
        /// The file.
        path: String,
        /// What was missing or malformed.
        what: String,
    },
    /// The request itself is invalid (zero sizes, reserve out of range…).
    #[error("invalid plan request: {0}")]
    InvalidRequest(String),
    /// Not a single VM of the requested size fits on the node.
    #[error("no VM fits on this node: {0}")]
    NothingFits(String),
}

/// What a node has to give: its CPUs and its total memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// Logical CPUs usable by this process.
    pub cpus: u32,
    /// Total physical memory in MiB (`MemTotal` of `/proc/meminfo`).
    pub memory_mib: u64,
}

impl NodeResources {
    /// Reads this node's resources: CPUs from
    /// [`std::thread::available_parallelism`] (falling back to counting
    /// `processor` lines in `/proc/cpuinfo`), memory from `/proc/meminfo`.
    pub fn detect() -> Result<Self, PlanError> {
        let cpus = match std::thread::available_parallelism() {
            Ok(n) => u32::try_from(n.get()).unwrap_or(u32::MAX),
            Err(_) => count_cpuinfo_processors(&read_to_string("/proc/cpuinfo")?),
        };
        if cpus == 0 {
            return Err(PlanError::Parse {
                path: "/proc/cpuinfo".into(),
                what: "no processor entries".into(),
            });
        }
        let memory_mib =
            parse_meminfo_total_mib(&read_to_string("/proc/meminfo")?).ok_or_else(|| {
                PlanError::Parse {
                    path: "/proc/meminfo".into(),
                    what: "no MemTotal line".into(),
                }
            })?;
        Ok(Self { cpus, memory_mib })
    }
}

fn read_to_string(path: &str) -> Result<String, PlanError> {
    std::fs::read_to_string(Path::new(path)).map_err(|source| PlanError::Read {
        path: path.into(),
        source,
    })
}

/// Counts `processor : N` lines of a `/proc/cpuinfo` text.
pub fn count_cpuinfo_processors(cpuinfo: &str) -> u32 {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parses `MemTotal:  N kB` of a `/proc/meminfo` text into MiB.
pub fn parse_meminfo_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let factor_kib = match words.next().unwrap_or("kB") {
        "kB" | "KB" | "kb" => 1,
        "mB" | "MB" => 1024,
        "gB" | "GB" => 1024 * 1024,
        _ => return None,
    };
    Some(value.saturating_mul(factor_kib) / 1024)
}

/// The size of one VM, given either way the article does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmSize {
    /// Each VM gets this many CPUs; the number of VMs is `node CPUs / N` and
    /// the usable memory is shared equally.
    Cpus(u32),
    /// Each VM needs at least this much memory (MiB); as many VMs as fit in
    /// the usable memory, but never more VMs than CPUs. The CPUs and the
    /// usable memory are then shared equally.
    MemoryMib(u64),
}

/// A planning request: the VM size plus the host reserve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// How big each VM is.
    pub size: VmSize,
    /// The fraction of the node's memory kept for the host, in `[0, 1)`.
    pub reserve: f64,
    /// The least memory a VM may get, in MiB; planning fails below it.
    pub min_vm_memory_mib: u64,
}

impl PlanRequest {
    /// A request with the default 20 % reserve and 64 MiB minimum.
    pub fn new(size: VmSize) -> Self {
        Self {
            size,
            reserve: DEFAULT_RESERVE,
            min_vm_memory_mib: DEFAULT_MIN_VM_MEMORY_MIB,
        }
    }

    /// Sets the host memory reserve fraction.
    pub fn reserve(mut self, reserve: f64) -> Self {
        self.reserve = reserve;
        self
    }

    /// Computes the plan for `node`.
    pub fn plan(&self, node: &NodeResources) -> Result<Plan, PlanError> {
        if !(0.0..1.0).contains(&self.reserve) {
            return Err(PlanError::InvalidRequest(format!(
                "reserve must be a fraction in [0, 1), got {}",
                self.reserve
            )));
        }
        if node.cpus == 0 || node.memory_mib == 0 {
            return Err(PlanError::InvalidRequest(format!(
                "the node reports {} CPUs and {} MiB",
                node.cpus, node.memory_mib
            )));
        }
        // Rounded up, so that the reserve is never smaller than asked.
        let reserve_mib = (node.memory_mib as f64 * self.reserve).ceil() as u64;
        let usable_mib = node.memory_mib.saturating_sub(reserve_mib);

        let (vms, cpus_per_vm) = match self.size {
            VmSize::Cpus(0) => {
                return Err(PlanError::InvalidRequest("CPUs per VM must be > 0".into()))
            }
            VmSize::Cpus(per_vm) => {
                let vms = node.cpus / per_vm;
                if vms == 0 {
                    return Err(PlanError::NothingFits(format!(
                        "a VM needs {per_vm} CPUs but the node has {}",
                        node.cpus
                    )));
                }
                (vms, per_vm)
            }
            VmSize::MemoryMib(0) => {
                return Err(PlanError::InvalidRequest(
                    "memory per VM must be > 0 MiB".into(),
                ))
            }
            VmSize::MemoryMib(per_vm) => {
                let by_memory = usable_mib / per_vm;
                if by_memory == 0 {
                    return Err(PlanError::NothingFits(format!(
                        "a VM needs {per_vm} MiB but only {usable_mib} MiB of {} MiB \
                         remain after the {:.0} % host reserve",
                        node.memory_mib,
                        self.reserve * 100.0
                    )));
                }
                let vms = u32::try_from(by_memory).unwrap_or(u32::MAX).min(node.cpus);
                (vms, node.cpus / vms)
            }
        };

        let memory_per_vm_mib = usable_mib / u64::from(vms);
        if memory_per_vm_mib < self.min_vm_memory_mib {
            return Err(PlanError::NothingFits(format!(
                "{vms} VMs would get {memory_per_vm_mib} MiB each, less than the \
                 minimum of {} MiB",
                self.min_vm_memory_mib
            )));
        }
        Ok(Plan {
            node: *node,
            request: *self,
            vms,
            cpus_per_vm,
            memory_per_vm_mib,
            reserve_mib,
            usable_mib,
        })
    }
}

/// The outcome of planning: how many VMs and how big.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The node planned for.
    pub node: NodeResources,
    /// The request.
    pub request: PlanRequest,
    /// How many VMs to start.
    pub vms: u32,
    /// CPUs given to each VM.
    pub cpus_per_vm: u32,
    /// Memory given to each VM, in MiB.
    pub memory_per_vm_mib: u64,
    /// Memory kept back for the host, in MiB.
    pub reserve_mib: u64,
    /// Memory shared between the VMs (`node memory - reserve`), in MiB.
    pub usable_mib: u64,
}

impl Plan {
    /// Describes the plan in words, one sentence per step.
    pub fn explain(&self) -> String {
        let size = match self.request.size {
            VmSize::Cpus(n) => format!("VMs of {n} CPU(s) each were asked for"),
            VmSize::MemoryMib(m) => format!("VMs of at least {m} MiB each were asked for"),
        };
        let idle_cpus = self.node.cpus - self.vms * self.cpus_per_vm;
        let idle = if idle_cpus > 0 {
            format!(" ({idle_cpus} CPU(s) stay idle)")
        } else {
            String::new()
        };
        format!(
            "The node has {cpus} CPU(s) and {mem} MiB of memory. {size}. \
             {reserve} MiB ({pct:.0} %) of the memory is kept for the host, \
             leaving {usable} MiB to share. {vms} VM(s) fit{idle}; each gets \
             {per_cpus} CPU(s) and {per_mem} MiB.",
            cpus = self.node.cpus,
            mem = self.node.memory_mib,
            reserve = self.reserve_mib,
            pct = self.request.reserve * 100.0,
            usable = self.usable_mib,
            vms = self.vms,
            per_cpus = self.cpus_per_vm,
            per_mem = self.memory_per_vm_mib,
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} x VM({} CPU, {} MiB), reserve {} MiB",
            self.vms, self.cpus_per_vm, self.memory_per_vm_mib, self.reserve_mib
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NODE: NodeResources = NodeResources {
        cpus: 8,
        memory_mib: 10_000,
    };

    #[test]
    fn cpus_divide_the_node_and_memory_is_shared_after_the_reserve() {
        let p = PlanRequest::new(VmSize::Cpus(2)).plan(&NODE).unwrap();
        assert_eq!(p.vms, 4);
        assert_eq!(p.cpus_per_vm, 2);
        assert_eq!(p.reserve_mib, 2_000);
        assert_eq!(p.usable_mib, 8_000);
        assert_eq!(p.memory_per_vm_mib, 2_000);
    }

    #[test]
    fn cpus_that_do_not_divide_leave_cpus_idle() {
        let p = PlanRequest::new(VmSize::Cpus(3)).plan(&NODE).unwrap();
        assert_eq!(p.vms, 2);
        assert_eq!(p.memory_per_vm_mib, 4_000);
        assert!(
            p.explain().contains("2 CPU(s) stay idle"),
            "{}",
            p.explain()
        );
    }

    #[test]
    fn reserve_is_rounded_up_and_can_be_zero() {
        let node = NodeResources {
            cpus: 1,
            memory_mib: 1_001,
        };
        let p = PlanRequest::new(VmSize::Cpus(1)).plan(&node).unwrap();
        assert_eq!(p.reserve_mib, 201); // 200.2 rounded up
        assert_eq!(p.memory_per_vm_mib, 800);
        let p = PlanRequest::new(VmSize::Cpus(1))
            .reserve(0.0)
            .plan(&node)
            .unwrap();
        assert_eq!(p.memory_per_vm_mib, 1_001);
    }

    #[test]
    fn memory_size_fits_by_memory_and_shares_the_rest() {
        // 8000 MiB usable / 3000 = 2 VMs, 4 CPUs and 4000 MiB each.
        let p = PlanRequest::new(VmSize::MemoryMib(3_000))
            .plan(&NODE)
            .unwrap();
        assert_eq!((p.vms, p.cpus_per_vm, p.memory_per_vm_mib), (2, 4, 4_000));
    }

    #[test]
    fn memory_size_never_plans_more_vms_than_cpus() {
        let p = PlanRequest::new(VmSize::MemoryMib(100))
            .plan(&NODE)
            .unwrap();
        assert_eq!((p.vms, p.cpus_per_vm, p.memory_per_vm_mib), (8, 1, 1_000));
    }

    #[test]
    fn nothing_fits_is_a_clear_error() {
        let e = PlanRequest::new(VmSize::Cpus(16)).plan(&NODE).unwrap_err();
        assert!(matches!(e, PlanError::NothingFits(_)), "{e}");
        assert!(e.to_string().contains("needs 16 CPUs"), "{e}");

        let e = PlanRequest::new(VmSize::MemoryMib(9_000))
            .plan(&NODE)
            .unwrap_err();
        assert!(e.to_string().contains("only 8000 MiB"), "{e}");

        let tiny = NodeResources {
            cpus: 64,
            memory_mib: 1_000,
        };
        let e = PlanRequest::new(VmSize::Cpus(1)).plan(&tiny).unwrap_err();
        assert!(e.to_string().contains("less than the minimum"), "{e}");
    }

    #[test]
    fn invalid_requests_are_rejected() {
        for req in [
            PlanRequest::new(VmSize::Cpus(0)),
            PlanRequest::new(VmSize::MemoryMib(0)),
            PlanRequest::new(VmSize::Cpus(1)).reserve(1.0),
            PlanRequest::new(VmSize::Cpus(1)).reserve(-0.1),
            PlanRequest::new(VmSize::Cpus(1)).reserve(f64::NAN),
        ] {
            let e = req.plan(&NODE).unwrap_err();
            assert!(matches!(e, PlanError::InvalidRequest(_)), "{req:?}: {e}");
        }
    }

    #[test]
    fn explain_names_the_numbers() {
        let p = PlanRequest::new(VmSize::Cpus(4)).plan(&NODE).unwrap();
        let text = p.explain();
        for part in [
            "8 CPU(s)",
            "10000 MiB",
            "2000 MiB (20 %)",
            "2 VM(s) fit",
            "4000 MiB",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
    }

    #[test]
    fn proc_files_parse() {
        let meminfo = "MemTotal:       24608768 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_meminfo_total_mib(meminfo), Some(24_032));
        assert_eq!(parse_meminfo_total_mib("MemFree: 1 kB"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nflags\t: fpu\n";
        assert_eq!(count_cpuinfo_processors(cpuinfo), 2);
    }

    #[test]
    fn this_node_is_detected() {
        let node = NodeResources::detect().unwrap();
        assert!(node.cpus >= 1 && node.memory_mib >= 1, "{node:?}");
    }
}
