//! The remote face of [`NodeAgent`]: the `node` object's methods.

use std::sync::Arc;

use rrpc_core::{to_value, Args, CallContext, Member, Remote, RemoteError, Reply, Value};

use super::{vm_object, LaunchSpec, NodeAgent};
use crate::plan::VmSize;
use crate::vm::PowerDownPolicy;

fn encode<T: serde::Serialize>(value: &T) -> Result<Value, RemoteError> {
    to_value(value).map_err(|e| RemoteError::internal(format!("cannot encode a reply: {e}")))
}

/// Reads `plan`'s size argument: `{"vm_cpus": N}`, `{"vm_mem_mib": M}` or N.
fn size_arg(args: &mut Args) -> Result<VmSize, RemoteError> {
    let value = args.take_value(0, "size")?;
    if let Some(n) = value.as_i64() {
        let n = u32::try_from(n)
            .map_err(|_| RemoteError::bad_argument(format!("{n} CPUs is out of range")))?;
        return Ok(VmSize::Cpus(n));
    }
    let field = |key: &str| -> Result<Option<u64>, RemoteError> {
        match value.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|n| u64::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    RemoteError::bad_argument(format!("`{key}` must be a non-negative integer"))
                }),
        }
    };
    match (field("vm_cpus")?, field("vm_mem_mib")?) {
        (Some(c), None) => u32::try_from(c)
            .map(VmSize::Cpus)
            .map_err(|_| RemoteError::bad_argument(format!("{c} CPUs is out of range"))),
        (None, Some(m)) => Ok(VmSize::MemoryMib(m)),
        _ => Err(RemoteError::bad_argument(
            "argument 0 (`size`): give {\"vm_cpus\": N} or {\"vm_mem_mib\": M} (or a CPU count)",
        )),
    }
}

impl Remote for NodeAgent {
    fn type_name(&self) -> &str {
        "Node"
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "block" => Reply::ready(self.block),
            _ => Reply::err(RemoteError::no_such_attribute("Node", name)),
        }
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            "resources" => encode(&self.resources_report()).into(),
            "plan" => (|| {
                let size = size_arg(&mut args)?;
                let reserve = args.take_opt::<f64>(1, "reserve")?;
                encode(&self.plan(size, reserve)?)
            })()
            .into(),
            "launch" => {
                let request = match args.take_opt::<LaunchSpec>(0, "spec") {
                    Ok(r) => r.unwrap_or_default(),
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    let entry = self.launch(request).await?;
                    Ok::<_, RemoteError>(entry.handle())
                })
            }
            "list" => Reply::ready(Value::List(self.vms().iter().map(|e| e.handle()).collect())),
            "power_down_all" => {
                let policy = match vm_object::seconds_arg(&mut args, 0, "grace") {
                    Ok(Some(g)) => PowerDownPolicy {
                        graceful: g,
                        ..PowerDownPolicy::default()
                    },
                    Ok(None) => PowerDownPolicy::default(),
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move { encode(&self.power_down_all(&policy).await) })
            }
            _ => Reply::err(RemoteError::no_such_method("Node", method)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::attribute("block", "int"),
            Member::method(
                "resources",
                "resources() -> {block, cpus, memory_mib, reserve, usable_mib, memory_in_use_mib, live_vms, accel, accel_reason}",
            ),
            Member::method(
                "plan",
                "plan(size: {vm_cpus: int} | {vm_mem_mib: int} | int, reserve: float = 0.2) -> {vms, cpus_per_vm, memory_per_vm_mib, reserve_mib, usable_mib, explain}",
            ),
            Member::method(
                "launch",
                "launch(spec: {name, cpus, memory_mib, kernel, initrd, append, image, image_format, second_image, network, nic_model, ready_pattern, cpu_model, vnc_display} = {}) -> Vm",
            ),
            Member::method("list", "list() -> [Vm]"),
            Member::method(
                "power_down_all",
                "power_down_all(grace: float = 60) -> [{name, how, detail, seconds}]",
            ),
        ]
    }
}
