//! vmctl: run KVM/QEMU virtual machines as batch jobs.
//!
//! vmctl follows the "dynamic and virtual clusters" design: a VM launch job
//! takes a whole node, works out how many VMs fit ([`plan`]), gives each one a MAC from which the guest derives
//! its network ([`net`]), starts QEMU with the base image in snapshot mode
//! ([`qemu`], [`accel`]), watches it through QMP ([`qmp`]) and its serial
//! console ([`console`]), and powers it down at the end: ACPI power button,
//! then `quit`, then kill ([`vm`]). The node agent ([`agent`]) serves all of
//! it over rrpc, so one driver program controls the VMs of every node; the
//! VM-launch job ([`launch_job`]) is what a batch job runs on its node; and
//! [`tapnet`] sets up the tap devices and routes of the real cluster.
//!
//! ```
//! use vmctl::net::VmAddress;
//! use vmctl::plan::{NodeResources, PlanRequest, VmSize};
//!
//! let node = NodeResources { cpus: 8, memory_mib: 32 * 1024 };
//! let plan = PlanRequest::new(VmSize::Cpus(2)).plan(&node)?;
//! for index in 0..plan.vms {
//!     let addr = VmAddress::new(7, index)?;
//!     println!("vm{index}: {} MiB, mac {}, ip {}", plan.memory_per_vm_mib, addr.mac(), addr.ip());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod accel;
pub mod agent;
pub mod batch;
pub mod console;
pub mod integrator;
pub mod launch_job;
pub mod net;
pub mod plan;
pub mod qemu;
pub mod qmp;
pub mod security;
pub mod tapnet;
pub mod task;
pub mod vm;
pub mod walltime;

pub use accel::Accel;
pub use qemu::VmSpec;
pub use vm::{Ended, PowerDownPolicy, Vm, VmOptions, VmState};
