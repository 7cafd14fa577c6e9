//! One VM as the agent holds it ([`VmEntry`]) and as clients see it
//! ([`VmObject`], sent by reference).
//!
//! The agent's table owns the entries, and an entry owns its [`Vm`] and every
//! task started for it (readiness timing, subscriptions). Clients only get a
//! [`VmObject`], which holds a weak reference: when the agent drops its table
//! the VMs are killed even while clients still hold proxies, and calls
//! through those proxies then fail with a clear error.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rrpc_core::{
    to_value, Args, CallContext, ErrorKind, Member, Proxy, Remote, RemoteError, Reply, Value,
};

use super::report::{EndReport, StateEvent, VmInfo, VmStatus};
use crate::net::VmAddress;
use crate::tapnet::Tap;
use crate::task::AbortOnDrop;
use crate::vm::{PowerDownPolicy, Vm, VmState};

/// The most subscriptions one VM keeps at once.
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// The longest wait a client may ask for, seconds.
const MAX_WAIT_SECS: f64 = 24.0 * 3600.0;

/// A VM in the agent's table.
pub struct VmEntry {
    pub(crate) vm: Vm,
    pub(crate) addr: VmAddress,
    launched: Instant,
    ready_after: Arc<OnceLock<Duration>>,
    /// The tap the agent set up for this VM, until it is torn down.
    tap: Arc<tokio::sync::Mutex<Option<Tap>>>,
    /// The readiness timer and the subscriptions.
    tasks: Mutex<Vec<AbortOnDrop>>,
    /// Stop requests in progress.
    work: Mutex<Vec<AbortOnDrop>>,
    handle: Arc<VmObject>,
}

impl std::fmt::Debug for VmEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmEntry")
            .field("vm", &self.vm)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl VmEntry {
    /// Takes ownership of a launched VM (`launched` is when QEMU was started).
    pub(crate) fn new(
        vm: Vm,
        addr: VmAddress,
        launched: Instant,
        tap: Option<Tap>,
    ) -> Arc<VmEntry> {
        let ready_after = Arc::new(OnceLock::new());
        let mut states = vm.subscribe();
        let cell = Arc::clone(&ready_after);
        let timer = AbortOnDrop::new(tokio::spawn(async move {
            if let Ok(s) = states
                .wait_for(|s| *s == VmState::Ready || s.is_final())
                .await
            {
                if *s == VmState::Ready {
                    let _ = cell.set(launched.elapsed());
                }
            }
        }));
        let mut work = Vec::new();
        let tap = Arc::new(tokio::sync::Mutex::new(tap));
        if let Ok(guard) = tap.try_lock() {
            if guard.is_some() {
                // The tap goes when the VM ends.
                let (tap, mut states) = (Arc::clone(&tap), vm.subscribe());
                work.push(AbortOnDrop::new(tokio::spawn(async move {
                    let _ = states.wait_for(VmState::is_final).await;
                    release(&tap).await;
                })));
            }
        }
        let name = vm.name().to_owned();
        Arc::new_cyclic(|weak| VmEntry {
            vm,
            addr,
            launched,
            ready_after,
            tap,
            tasks: Mutex::new(vec![timer]),
            work: Mutex::new(work),
            handle: Arc::new(VmObject {
                name,
                entry: weak.clone(),
            }),
        })
    }

    /// Tears the VM's tap down now, if it still has one (waits for a
    /// teardown in progress).
    pub(crate) async fn release_tap(&self) {
        release(&self.tap).await;
    }

    /// Takes the VM's tap, if it still has one and no teardown is in
    /// progress, for a blocking clean-up.
    pub(crate) fn take_tap(&self) -> Option<Tap> {
        self.tap.try_lock().ok().and_then(|mut t| t.take())
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The object clients get for this VM (always the same one, so the same
    /// VM arrives as the same proxy).
    pub fn handle(&self) -> Value {
        Value::Object(self.handle.clone())
    }

    /// Time from launch to ready, once ready.
    pub fn ready_after(&self) -> Option<Duration> {
        if self.ready_after.get().is_none() && self.vm.state() == VmState::Ready {
            // Seen before the timer task ran: now is within a scheduling
            // delay of the real moment.
            let _ = self.ready_after.set(self.launched.elapsed());
        }
        self.ready_after.get().copied()
    }

    /// When QEMU was started.
    pub fn launched(&self) -> Instant {
        self.launched
    }

    /// `info()`.
    pub fn info(&self) -> VmInfo {
        let spec = self.vm.spec();
        let state = self.vm.state();
        VmInfo {
            name: spec.name.clone(),
            block: self.addr.block(),
            index: self.addr.index(),
            mac: self.addr.mac().to_string(),
            ip: self.addr.ip().to_string(),
            state: super::report::state_name(&state).to_owned(),
            detail: state.to_string(),
            seconds_to_ready: self.ready_after().map(|d| d.as_secs_f64()),
            pid: self.vm.pid(),
            accel: self.vm.accel().accel.to_string(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
        }
    }

    /// Powers the VM down with `policy` and reports how it ended. The
    /// escalation runs on a task this entry owns, so it goes on to the end
    /// even if the caller stops waiting (a client's call deadline): a VM is
    /// never left half shut down.
    pub async fn power_down(self: &Arc<Self>, policy: &PowerDownPolicy) -> EndReport {
        let policy = policy.clone();
        self.run_owned(move |e| async move { e.vm.power_down(&policy).await })
            .await
    }

    /// `quit` now, then kill after `grace` (on an owned task, like
    /// [`VmEntry::power_down`]).
    pub async fn quit(self: &Arc<Self>, grace: Duration) -> EndReport {
        self.run_owned(move |e| async move { e.vm.quit(grace).await })
            .await
    }

    /// SIGKILL now (on an owned task, like [`VmEntry::power_down`]).
    pub async fn kill(self: &Arc<Self>) -> EndReport {
        self.run_owned(|e| async move { e.vm.kill().await }).await
    }

    /// Runs a stop request on a task owned by this entry and reports it.
    /// The task holds the entry until the request is over; every request is
    /// bounded by its grace periods.
    async fn run_owned<F, Fut>(self: &Arc<Self>, stop: F) -> EndReport
    where
        F: FnOnce(Arc<VmEntry>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<crate::vm::Ended, crate::vm::VmError>>
            + Send
            + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let entry = Arc::clone(self);
        let name = self.vm.name().to_owned();
        let task = AbortOnDrop::new(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = stop(Arc::clone(&entry)).await;
            let report =
                EndReport::from_result(entry.vm.name(), &result, Some(t0.elapsed().as_secs_f64()));
            let _ = tx.send(report);
        }));
        if let Ok(mut work) = self.work.lock() {
            work.retain(|t| !t.is_finished());
            work.push(task);
        }
        rx.await.unwrap_or_else(|_| EndReport {
            name,
            how: super::report::How::Error,
            detail: "the stop request was abandoned: the agent is shutting down".into(),
            seconds: None,
        })
    }

    /// Calls `callback` with the current state and then on every change, from
    /// a task this entry owns. It stops after the final state, when the
    /// callback's connection closes, or when the entry is dropped. Changes
    /// that follow each other faster than the callback returns are merged
    /// (the latest wins); the final state is always delivered.
    pub(crate) fn subscribe(&self, callback: Proxy) -> Result<(), RemoteError> {
        let mut tasks = self
            .tasks
            .lock()
            .map_err(|_| RemoteError::internal("VM task list poisoned"))?;
        tasks.retain(|t| !t.is_finished());
        // The first task is the readiness timer, which may have finished.
        if tasks.len() >= MAX_SUBSCRIPTIONS {
            return Err(RemoteError::new(
                ErrorKind::Refused,
                format!(
                    "VM {} already has {MAX_SUBSCRIPTIONS} subscriptions",
                    self.vm.name()
                ),
            ));
        }
        let mut states = self.vm.subscribe();
        let name = self.vm.name().to_owned();
        tasks.push(AbortOnDrop::new(tokio::spawn(async move {
            let conn = callback.connection().clone();
            let closed = conn.closed();
            tokio::pin!(closed);
            let mut state = states.borrow_and_update().clone();
            loop {
                let event = match to_value(&StateEvent::of(&name, &state)) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(vm = %name, "cannot encode a state event: {e}");
                        return;
                    }
                };
                tokio::select! {
                    result = callback.invoke((event,)) => {
                        if let Err(e) = result {
                            if e.is_connection_lost() || conn.is_closed() {
                                tracing::debug!(vm = %name, "subscriber gone: {e}");
                                return;
                            }
                            tracing::warn!(vm = %name, "subscriber callback failed: {e}");
                        }
                    }
                    _ = &mut closed => return,
                }
                if state.is_final() {
                    return;
                }
                tokio::select! {
                    changed = states.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = &mut closed => return,
                }
                state = states.borrow_and_update().clone();
            }
        })));
        Ok(())
    }
}

/// Tears a tap down once.
async fn release(tap: &tokio::sync::Mutex<Option<Tap>>) {
    let mut guard = tap.lock().await;
    if let Some(t) = guard.take() {
        if let Err(e) = t.teardown().await {
            tracing::warn!(tap = %t.ifname(), "tap teardown failed: {e}");
        }
    }
}

/// The remote face of a VM: `info`, `status`, `wait_ready`, `powerdown`,
/// `quit`, `kill`, `wait`, `console_tail`, `subscribe`, `pause`, `resume`.
#[derive(Debug)]
pub struct VmObject {
    name: String,
    entry: Weak<VmEntry>,
}

impl VmObject {
    fn entry(&self) -> Result<Arc<VmEntry>, RemoteError> {
        self.entry.upgrade().ok_or_else(|| {
            RemoteError::new(
                ErrorKind::NotFound,
                format!(
                    "VM {} is no longer managed by its agent (the agent stopped)",
                    self.name
                ),
            )
        })
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Value, RemoteError> {
    to_value(value).map_err(|e| RemoteError::internal(format!("cannot encode a reply: {e}")))
}

/// Reads optional argument `index` as seconds (a non-negative number).
pub(crate) fn seconds_arg(
    args: &mut Args,
    index: usize,
    name: &str,
) -> Result<Option<Duration>, RemoteError> {
    let Some(secs) = args.take_opt::<f64>(index, name)? else {
        return Ok(None);
    };
    if !(0.0..=MAX_WAIT_SECS).contains(&secs) {
        return Err(RemoteError::bad_argument(format!(
            "argument {index} (`{name}`): {secs} seconds is not within 0..={MAX_WAIT_SECS}"
        )));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

fn vm_err(e: crate::vm::VmError) -> RemoteError {
    use crate::vm::VmError;
    let kind = match &e {
        VmError::Timeout { .. } => ErrorKind::Timeout,
        VmError::NotRunning { .. } | VmError::Crashed { .. } => ErrorKind::Custom("VmEnded".into()),
        _ => ErrorKind::Io,
    };
    RemoteError::new(kind, e.to_string())
}

impl Remote for VmObject {
    fn type_name(&self) -> &str {
        "Vm"
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "name" => Reply::ready(self.name.as_str()),
            _ => Reply::err(RemoteError::no_such_attribute("Vm", name)),
        }
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        let entry = match self.entry() {
            Ok(e) => e,
            Err(e) => return Reply::err(e),
        };
        match method {
            "info" => encode(&entry.info()).into(),
            "console_tail" => Reply::ready(entry.vm.console_tail()),
            "status" => Reply::future(async move {
                let state = entry.vm.state();
                let mut status = VmStatus::of(entry.vm.name(), &state);
                if !state.is_final() {
                    status.qmp_status = entry.vm.query_status().await.ok().map(|s| s.status);
                }
                encode(&status)
            }),
            "wait_ready" => {
                let timeout = match seconds_arg(&mut args, 0, "timeout") {
                    Ok(t) => t.unwrap_or(Duration::from_secs(60)),
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    entry.vm.wait_ready(timeout).await.map_err(vm_err)?;
                    encode(&entry.info())
                })
            }
            "wait" => {
                let timeout = match seconds_arg(&mut args, 0, "timeout") {
                    Ok(t) => t,
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    let wait = entry.vm.wait_stopped();
                    let state = match timeout {
                        None => wait.await,
                        Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| {
                            RemoteError::new(
                                ErrorKind::Timeout,
                                format!(
                                    "VM {} did not stop within {t:?}; it is {}",
                                    entry.vm.name(),
                                    entry.vm.state()
                                ),
                            )
                        })?,
                    };
                    encode(&VmStatus::of(entry.vm.name(), &state))
                })
            }
            "powerdown" => {
                let policy = match seconds_arg(&mut args, 0, "grace") {
                    Ok(Some(g)) => PowerDownPolicy {
                        graceful: g,
                        ..PowerDownPolicy::default()
                    },
                    Ok(None) => PowerDownPolicy::default(),
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move { encode(&entry.power_down(&policy).await) })
            }
            "quit" => {
                Reply::future(async move { encode(&entry.quit(Duration::from_secs(10)).await) })
            }
            "kill" => Reply::future(async move { encode(&entry.kill().await) }),
            "pause" => Reply::future(async move {
                entry.vm.pause().await.map_err(vm_err)?;
                Ok::<_, RemoteError>(())
            }),
            "resume" => Reply::future(async move {
                entry.vm.resume().await.map_err(vm_err)?;
                Ok::<_, RemoteError>(())
            }),
            "subscribe" => {
                let callback = match args.take_proxy(0, "callback") {
                    Ok(callback) => callback,
                    Err(e) => return Reply::err(e),
                };
                entry.subscribe(callback).into()
            }
            _ => Reply::err(RemoteError::no_such_method("Vm", method)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::attribute("name", "str"),
            Member::method(
                "info",
                "info() -> {name, block, index, mac, ip, state, detail, seconds_to_ready, pid, accel, cpus, memory_mib}",
            ),
            Member::method("status", "status() -> {name, state, detail, ended, how, qmp_status}"),
            Member::method("wait_ready", "wait_ready(timeout: float = 60) -> info"),
            Member::method("wait", "wait(timeout: float = None) -> status"),
            Member::method(
                "powerdown",
                "powerdown(grace: float = 60) -> {name, how, detail, seconds}",
            ),
            Member::method("quit", "quit() -> {name, how, detail, seconds}"),
            Member::method("kill", "kill() -> {name, how, detail, seconds}"),
            Member::method("pause", "pause()"),
            Member::method("resume", "resume()"),
            Member::method("console_tail", "console_tail() -> str"),
            Member::method(
                "subscribe",
                "subscribe(callback: fn({vm, state, detail, ended, console_tail}))",
            ),
        ]
    }
}
