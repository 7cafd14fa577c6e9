//! The integrator as an rrpc service: the `integrator` object that
//! `vmctl integrator` serves.
//!
//! | method | what it does |
//! | --- | --- |
//! | `status()` | the last cycle (pending and running jobs, VM-launch jobs, the decision with its reason, shutdowns), the VMs by state, the registered blocks, the policy |
//! | `run_cycle()` | runs one cycle now and returns its report |
//! | `set_policy({max_nodes, min_idle_vms, vms_per_node})` | changes the policy from the next cycle on (omitted fields stay) |
//! | `register_vm(block, index, ip)` | a VM of `block` tells it is up and ready |
//! | `register_agent(block, addr)` | where the node agent of `block` listens (for its shutdown) |
//! | `unregister_block(block)` | the block's VMs are gone (the VM-launch job ended) |
//! | `shutdown_block(block)` | what the shutdown job calls: powers the block's VMs down through its agent, unless a user job got there first |
//! | `subscribe(callback)` | calls `callback(event)` on every decision and fleet change |
//!
//! The service keeps only the registrations and the last report: every
//! cycle still recounts the jobs from the batch systems, so restarting the
//! service never submits twice (the VMs register again as they are seen).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rrpc_core::{
    to_value, Args, CallContext, ErrorKind, Member, Namespace, Proxy, Remote, RemoteError, Reply,
    Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{jitter, BlockStatus, CycleReport, Fleet, Integrator, Observation, Policy};
use crate::batch::{Batch, BatchError};
use crate::security::ClientSecurity;
use crate::task::AbortOnDrop;

/// The prefix of the line `vmctl integrator` prints once it accepts connections.
pub const READY_LINE: &str = "vmctl integrator listening on";
/// The most subscriptions at once.
pub const MAX_SUBSCRIBERS: usize = 32;
/// Events queued for one subscriber before further ones are dropped.
pub const SUBSCRIBER_QUEUE: usize = 64;
/// The most registered blocks, and VMs per block.
pub const MAX_BLOCKS: usize = 1024;
/// The most VMs one block may register.
pub const MAX_VMS_PER_BLOCK: usize = 1024;
/// How long a block's power-down may take.
const POWER_DOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// One registered VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    /// Its index in the block.
    pub index: u32,
    /// Its IP.
    pub ip: String,
}

/// One registered block of VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockView {
    /// The block's name.
    pub block: String,
    /// Where its node agent listens, if it said.
    pub agent: Option<String>,
    /// Its ready VMs.
    pub vms: Vec<VmView>,
    /// Of those, how many count as running a user job.
    pub vms_busy: u32,
}

/// The VMs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmCounts {
    /// Registered and ready.
    pub ready: u32,
    /// Of those, running a user job.
    pub busy: u32,
    /// Of those, idle.
    pub idle: u32,
    /// Blocks powered down by a shutdown job so far.
    pub blocks_shut_down: u32,
}

/// What `status()` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Cycles run so far.
    pub cycles: u64,
    /// The last cycle's report.
    pub last: Option<CycleReport>,
    /// The last cycle's error, if it failed.
    pub last_error: Option<String>,
    /// The policy now.
    pub policy: Policy,
    /// The VMs by state.
    pub vms: VmCounts,
    /// The registered blocks.
    pub blocks: Vec<BlockView>,
}

/// What a subscriber's callback receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// `cycle`, `cycle_failed`, `registered`, `unregistered`, `shutdown`,
    /// `shutdown_dropped` or `policy`.
    pub kind: String,
    /// The event in words.
    pub detail: String,
    /// The cycle's report (`cycle` events).
    pub report: Option<CycleReport>,
    /// The VMs by state after the event.
    pub vms: VmCounts,
}

/// What `shutdown_block` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownOutcome {
    /// The block.
    pub block: String,
    /// True when its VMs were powered down.
    pub done: bool,
    /// Why, or why not.
    pub reason: String,
}

#[derive(Debug, Default)]
struct BlockEntry {
    agent: Option<String>,
    vms: BTreeMap<u32, String>,
}

#[derive(Debug, Default)]
struct RegistryState {
    blocks: BTreeMap<String, BlockEntry>,
    shut_down: u32,
}

/// The VMs' registrations: the [`Fleet`] of the service. Registrations say
/// which VMs are up, not which of them runs a user job, so the user jobs
/// running in the experiment's queue are counted against the blocks in name
/// order: a block is only called idle when the running jobs fit in the
/// blocks before it. Cheap to clone; clones share the registrations.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<RegistryState>>);

impl Registry {
    fn lock(&self) -> MutexGuard<'_, RegistryState> {
        // The data stays consistent even if a holder panicked.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that VM `index` of `block` is ready at `ip`.
    pub fn register_vm(&self, block: &str, index: u32, ip: IpAddr) -> Result<(), String> {
        check_block(block)?;
        let mut s = self.lock();
        if !s.blocks.contains_key(block) && s.blocks.len() >= MAX_BLOCKS {
            return Err(format!("already {MAX_BLOCKS} blocks registered"));
        }
        let entry = s.blocks.entry(block.to_owned()).or_default();
        if !entry.vms.contains_key(&index) && entry.vms.len() >= MAX_VMS_PER_BLOCK {
            return Err(format!("block {block} already has {MAX_VMS_PER_BLOCK} VMs"));
        }
        entry.vms.insert(index, ip.to_string());
        Ok(())
    }

    /// Records where the agent of `block` listens.
    pub fn register_agent(&self, block: &str, addr: String) -> Result<(), String> {
        check_block(block)?;
        let mut s = self.lock();
        if !s.blocks.contains_key(block) && s.blocks.len() >= MAX_BLOCKS {
            return Err(format!("already {MAX_BLOCKS} blocks registered"));
        }
        s.blocks.entry(block.to_owned()).or_default().agent = Some(addr);
        Ok(())
    }

    /// Forgets `block`; true if it was known.
    pub fn unregister(&self, block: &str) -> bool {
        self.lock().blocks.remove(block).is_some()
    }

    fn agent_of(&self, block: &str) -> Option<Option<String>> {
        self.lock().blocks.get(block).map(|b| b.agent.clone())
    }

    fn note_shutdown(&self, block: &str) {
        let mut s = self.lock();
        s.blocks.remove(block);
        s.shut_down += 1;
    }

    /// The blocks with the running user jobs counted against them.
    pub fn views(&self, user_running: u32) -> (Vec<BlockView>, VmCounts) {
        let s = self.lock();
        let mut left = user_running;
        let mut counts = VmCounts {
            blocks_shut_down: s.shut_down,
            ..VmCounts::default()
        };
        let views = s
            .blocks
            .iter()
            .map(|(name, b)| {
                let ready = u32::try_from(b.vms.len()).unwrap_or(u32::MAX);
                let busy = left.min(ready);
                left -= busy;
                counts.ready += ready;
                counts.busy += busy;
                BlockView {
                    block: name.clone(),
                    agent: b.agent.clone(),
                    vms: b
                        .vms
                        .iter()
                        .map(|(i, ip)| VmView {
                            index: *i,
                            ip: ip.clone(),
                        })
                        .collect(),
                    vms_busy: busy,
                }
            })
            .collect();
        counts.idle = counts.ready - counts.busy;
        (views, counts)
    }
}

impl Fleet for Registry {
    async fn blocks(&self, observation: &Observation) -> Result<Vec<BlockStatus>, BatchError> {
        let (views, _) = self.views(observation.user_running);
        Ok(views
            .into_iter()
            .map(|v| BlockStatus {
                block: v.block,
                vms_ready: u32::try_from(v.vms.len()).unwrap_or(u32::MAX),
                vms_busy: v.vms_busy,
            })
            .collect())
    }
}

/// A block name: 1 to 64 letters, digits, `.`, `_` or `-` (it becomes part
/// of a job name).
fn check_block(block: &str) -> Result<(), String> {
    if block.is_empty()
        || block.len() > 64
        || !block
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "bad block name {block:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

struct Subscriber {
    events: mpsc::Sender<Value>,
    _task: AbortOnDrop,
}

#[derive(Default)]
struct Shared {
    cycles: u64,
    last: Option<CycleReport>,
    last_error: Option<String>,
}

/// The `integrator` object. Owns the periodic loop (when started) and every
/// subscription task.
pub struct IntegratorService<E, C> {
    integrator: tokio::sync::Mutex<Integrator<E, C, Registry>>,
    registry: Registry,
    policy: Mutex<Policy>,
    shared: Mutex<Shared>,
    subscribers: Mutex<Vec<Subscriber>>,
    looping: Mutex<Option<AbortOnDrop>>,
    agent_security: Mutex<ClientSecurity>,
}

impl<E, C> std::fmt::Debug for IntegratorService<E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegratorService").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode<T: Serialize>(value: &T) -> Result<Value, RemoteError> {
    to_value(value).map_err(|e| RemoteError::internal(format!("cannot encode a reply: {e}")))
}

impl<E: Batch + 'static, C: Batch + 'static> IntegratorService<E, C> {
    /// Wraps an integrator; the service's registrations become its fleet.
    pub fn new(integrator: Integrator<E, C>) -> Arc<Self> {
        let registry = Registry::default();
        let integrator = integrator.with_fleet(registry.clone());
        let policy = integrator.config().policy.clone();
        Arc::new(IntegratorService {
            integrator: tokio::sync::Mutex::new(integrator),
            registry,
            policy: Mutex::new(policy),
            shared: Mutex::new(Shared::default()),
            subscribers: Mutex::new(Vec::new()),
            looping: Mutex::new(None),
            agent_security: Mutex::new(ClientSecurity::none()),
        })
    }

    /// How the service connects to the node agents to power blocks down:
    /// the shared secret it proves and the TLS it speaks (default: none).
    pub fn set_agent_security(&self, security: ClientSecurity) {
        *lock(&self.agent_security) = security;
    }

    /// The server root: a namespace exporting the service as `integrator`.
    pub fn root(self: &Arc<Self>) -> Namespace {
        Namespace::new("vmctl-integrator").with("integrator", Value::Object(self.clone()))
    }

    /// The registrations.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Starts cycling every jittered `period` (the service owns the loop;
    /// it ends when the service is dropped or [`stop_loop`](Self::stop_loop)).
    pub fn start_loop(self: &Arc<Self>, period: Duration, jitter_fraction: f64) {
        let me: Weak<Self> = Arc::downgrade(self);
        let task = AbortOnDrop::new(tokio::spawn(async move {
            loop {
                match me.upgrade() {
                    Some(s) => {
                        let _ = s.run_cycle().await;
                    }
                    None => return,
                }
                tokio::time::sleep(jitter::next_period(period, jitter_fraction)).await;
            }
        }));
        *lock(&self.looping) = Some(task);
    }

    /// Stops the periodic loop.
    pub fn stop_loop(&self) {
        lock(&self.looping).take();
    }

    /// Runs one cycle now (cycles never overlap), records it and tells the
    /// subscribers.
    pub async fn run_cycle(&self) -> Result<CycleReport, BatchError> {
        let result = self.integrator.lock().await.cycle().await;
        let (kind, detail, report) = {
            let mut s = lock(&self.shared);
            s.cycles += 1;
            match &result {
                Ok(r) => {
                    s.last = Some(r.clone());
                    s.last_error = None;
                    ("cycle", r.decision.reason().to_owned(), Some(r.clone()))
                }
                Err(e) => {
                    tracing::warn!(target: "vmctl::integrator", error = %e, "cycle failed");
                    s.last_error = Some(e.to_string());
                    ("cycle_failed", e.to_string(), None)
                }
            }
        };
        self.publish(kind, detail, report);
        result
    }

    /// The status now.
    pub fn status(&self) -> Status {
        let s = lock(&self.shared);
        let running = s.last.as_ref().map_or(0, |r| r.observation.user_running);
        let (blocks, vms) = self.registry.views(running);
        Status {
            cycles: s.cycles,
            last: s.last.clone(),
            last_error: s.last_error.clone(),
            policy: lock(&self.policy).clone(),
            vms,
            blocks,
        }
    }

    fn counts(&self) -> VmCounts {
        let running = lock(&self.shared)
            .last
            .as_ref()
            .map_or(0, |r| r.observation.user_running);
        self.registry.views(running).1
    }

    /// Changes the policy from the next cycle on.
    pub async fn set_policy(&self, policy: Policy) -> Result<Policy, BatchError> {
        self.integrator.lock().await.set_policy(policy.clone())?;
        *lock(&self.policy) = policy.clone();
        self.publish(
            "policy",
            format!(
                "policy: {} VM(s) per node, at most {} node(s), idle pool {}",
                policy.vms_per_node, policy.max_nodes, policy.min_idle_vms
            ),
            None,
        );
        Ok(policy)
    }

    /// Sets (or clears) the job that shuts an idle VM block down.
    pub async fn set_shutdown_job(
        &self,
        job: Option<crate::batch::JobSpec>,
    ) -> Result<(), BatchError> {
        self.integrator.lock().await.set_shutdown_job(job)
    }

    /// A VM says it is ready.
    pub fn register_vm(&self, block: &str, index: u32, ip: IpAddr) -> Result<(), String> {
        self.registry.register_vm(block, index, ip)?;
        self.publish(
            "registered",
            format!("VM {index} of block {block} is ready at {ip}"),
            None,
        );
        Ok(())
    }

    /// The agent of `block` says where it listens.
    pub fn register_agent(&self, block: &str, addr: String) -> Result<(), String> {
        self.registry.register_agent(block, addr)
    }

    /// `block`'s VMs are gone.
    pub fn unregister_block(&self, block: &str) -> bool {
        let known = self.registry.unregister(block);
        if known {
            self.publish(
                "unregistered",
                format!("block {block} is gone (its VM-launch job ended)"),
                None,
            );
        }
        known
    }

    /// What the shutdown job calls: unless user jobs now wait or run on the
    /// block (a real job got there first: the shutdown is dropped), powers
    /// the block's VMs down through its agent and forgets the block.
    pub async fn shutdown_block(&self, block: &str, grace: Duration) -> ShutdownOutcome {
        let outcome = self.try_shutdown(block, grace).await;
        let kind = if outcome.done {
            "shutdown"
        } else {
            "shutdown_dropped"
        };
        self.publish(kind, format!("block {block}: {}", outcome.reason), None);
        outcome
    }

    async fn try_shutdown(&self, block: &str, grace: Duration) -> ShutdownOutcome {
        let no = |reason: String| ShutdownOutcome {
            block: block.to_owned(),
            done: false,
            reason,
        };
        let agent = match self.registry.agent_of(block) {
            None => return no("no such block is registered".into()),
            Some(None) => return no("its agent never said where it listens".into()),
            Some(Some(a)) => a,
        };
        let observation = {
            let integrator = self.integrator.lock().await;
            match integrator.observe().await {
                Ok(o) => o,
                Err(e) => return no(format!("cannot recount the jobs: {e}")),
            }
        };
        if observation.user_pending > 0 {
            return no(format!(
                "dropped: {} user job(s) now wait for VMs",
                observation.user_pending
            ));
        }
        let busy = self
            .registry
            .views(observation.user_running)
            .0
            .into_iter()
            .find(|b| b.block == block)
            .map_or(0, |b| b.vms_busy);
        if busy > 0 {
            return no(format!(
                "dropped: a user job got there first ({busy} VM(s) busy)"
            ));
        }
        let security = lock(&self.agent_security).clone();
        match power_down(&agent, grace, &security).await {
            Ok(n) => {
                self.registry.note_shutdown(block);
                ShutdownOutcome {
                    block: block.to_owned(),
                    done: true,
                    reason: format!("{n} VM(s) powered down through the agent at {agent}"),
                }
            }
            Err(PowerDownError::Unreachable(e)) => {
                // Its agent is gone, so are its VMs (a launch job that was
                // killed outright never unregisters): forget the block, or
                // every cycle would submit another shutdown job for it.
                self.registry.unregister(block);
                no(format!(
                    "the agent at {agent} is unreachable ({e}): the block is forgotten"
                ))
            }
            Err(PowerDownError::Failed(e)) => no(format!("the agent at {agent}: {e}")),
        }
    }

    /// Calls `callback(event)` on every event from a task the service owns,
    /// until the callback's connection closes.
    pub fn subscribe(&self, callback: Proxy) -> Result<(), RemoteError> {
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| !s.events.is_closed());
        if subs.len() >= MAX_SUBSCRIBERS {
            return Err(RemoteError::new(
                ErrorKind::Refused,
                format!("the integrator already has {MAX_SUBSCRIBERS} subscriptions"),
            ));
        }
        let (tx, mut rx) = mpsc::channel::<Value>(SUBSCRIBER_QUEUE);
        let task = AbortOnDrop::new(tokio::spawn(async move {
            let conn = callback.connection().clone();
            let closed = conn.closed();
            tokio::pin!(closed);
            loop {
                let event = tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => e,
                        None => return,
                    },
                    _ = &mut closed => return,
                };
                tokio::select! {
                    result = callback.invoke((event,)) => {
                        if let Err(e) = result {
                            if e.is_connection_lost() || conn.is_closed() {
                                tracing::debug!("integrator subscriber gone: {e}");
                                return;
                            }
                            tracing::warn!("integrator subscriber callback failed: {e}");
                        }
                    }
                    _ = &mut closed => return,
                }
            }
        }));
        subs.push(Subscriber {
            events: tx,
            _task: task,
        });
        Ok(())
    }

    /// Live subscriptions (those whose connection closed are gone).
    pub fn subscriber_count(&self) -> usize {
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| !s.events.is_closed());
        subs.len()
    }

    fn publish(&self, kind: &str, detail: String, report: Option<CycleReport>) {
        let event = Event {
            kind: kind.into(),
            detail,
            report,
            vms: self.counts(),
        };
        let value = match to_value(&event) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("cannot encode an integrator event: {e}");
                return;
            }
        };
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| match s.events.try_send(value.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "an integrator subscriber is {SUBSCRIBER_QUEUE} events behind: event dropped"
                );
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

enum PowerDownError {
    /// No connection to the agent.
    Unreachable(String),
    /// The agent answered with an error.
    Failed(String),
}

/// Powers every VM of the agent at `addr` down; returns how many.
async fn power_down(
    addr: &str,
    grace: Duration,
    security: &ClientSecurity,
) -> Result<usize, PowerDownError> {
    let conn = match security.connect(addr, Duration::from_secs(10)).await {
        Ok(conn) => conn,
        Err(rrpc_core::Error::Timeout(_)) => {
            return Err(PowerDownError::Unreachable(
                "connecting timed out".to_owned(),
            ))
        }
        Err(e @ rrpc_core::Error::Io(_)) => {
            return Err(PowerDownError::Unreachable(format!("cannot connect: {e}")))
        }
        // Something answers there: a secret or TLS set-up that does not
        // match the agent's is an error to fix, not a vanished agent, so
        // the block is kept.
        Err(e) => return Err(PowerDownError::Failed(format!("cannot connect: {e}"))),
    };
    let result = async {
        let node = conn
            .root()
            .get("node")
            .await
            .map_err(|e| e.to_string())?
            .into_proxy()
            .map_err(|e| format!("`node` is not an object: {e}"))?;
        let reports = node
            .call("power_down_all", (grace.as_secs_f64(),))
            .timeout(POWER_DOWN_TIMEOUT)
            .await
            .map_err(|e| format!("power_down_all failed: {e}"))?;
        match reports {
            Value::List(l) => Ok(l.len()),
            other => Err(format!(
                "power_down_all returned {}, not a list",
                other.type_name()
            )),
        }
    }
    .await;
    conn.close();
    result.map_err(PowerDownError::Failed)
}

/// `set_policy`'s argument: any of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyChange {
    vms_per_node: Option<u32>,
    max_nodes: Option<u32>,
    min_idle_vms: Option<u32>,
}

fn batch_err(e: BatchError) -> RemoteError {
    RemoteError::new(ErrorKind::Refused, e.to_string())
}

impl<E: Batch + 'static, C: Batch + 'static> Remote for IntegratorService<E, C> {
    fn type_name(&self) -> &str {
        "Integrator"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            "status" => encode(&self.status()).into(),
            "run_cycle" => Reply::future(async move {
                let report = self.run_cycle().await.map_err(batch_err)?;
                encode(&report)
            }),
            "set_policy" => {
                let change: PolicyChange = match args.take(0, "policy") {
                    Ok(c) => c,
                    Err(e) => return Reply::err(e),
                };
                Reply::future(async move {
                    let mut p = lock(&self.policy).clone();
                    p.vms_per_node = change.vms_per_node.unwrap_or(p.vms_per_node);
                    p.max_nodes = change.max_nodes.unwrap_or(p.max_nodes);
                    p.min_idle_vms = change.min_idle_vms.unwrap_or(p.min_idle_vms);
                    let p = self.set_policy(p).await.map_err(batch_err)?;
                    encode(&p)
                })
            }
            "register_vm" => (|| {
                let block: String = args.take(0, "block")?;
                let index: u32 = args.take(1, "index")?;
                let ip: String = args.take(2, "ip")?;
                let ip: IpAddr = ip.parse().map_err(|e| {
                    RemoteError::bad_argument(format!("argument 2 (`ip`): {ip:?}: {e}"))
                })?;
                self.register_vm(&block, index, ip)
                    .map_err(RemoteError::bad_argument)
            })()
            .into(),
            "register_agent" => (|| {
                let block: String = args.take(0, "block")?;
                let addr: String = args.take(1, "addr")?;
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(RemoteError::bad_argument(format!(
                        "argument 1 (`addr`): {addr:?} is not HOST:PORT"
                    )));
                }
                self.register_agent(&block, addr)
                    .map_err(RemoteError::bad_argument)
            })()
            .into(),
            "unregister_block" => match args.take::<String>(0, "block") {
                Ok(b) => Reply::ready(self.unregister_block(&b)),
                Err(e) => Reply::err(e),
            },
            "shutdown_block" => {
                let block = match args.take::<String>(0, "block") {
                    Ok(b) => b,
                    Err(e) => return Reply::err(e),
                };
                let grace = match args.take_opt::<f64>(1, "grace") {
                    Ok(g) => g.unwrap_or(30.0),
                    Err(e) => return Reply::err(e),
                };
                let grace = match Duration::try_from_secs_f64(grace) {
                    Ok(g) if g <= POWER_DOWN_TIMEOUT => g,
                    _ => {
                        return Reply::err(RemoteError::bad_argument(format!(
                            "argument 1 (`grace`): {grace} is not between 0 and {} seconds",
                            POWER_DOWN_TIMEOUT.as_secs()
                        )))
                    }
                };
                Reply::future(async move { encode(&self.shutdown_block(&block, grace).await) })
            }
            "subscribe" => {
                let callback = match args.take_proxy(0, "callback") {
                    Ok(callback) => callback,
                    Err(e) => return Reply::err(e),
                };
                self.subscribe(callback).into()
            }
            _ => Reply::err(RemoteError::no_such_method("Integrator", method)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method(
                "status",
                "status() -> {cycles, last, last_error, policy, vms: {ready, busy, idle, blocks_shut_down}, blocks}",
            ),
            Member::method(
                "run_cycle",
                "run_cycle() -> {observation, decision, submitted, shutdowns, shutdown_jobs, dry_run}",
            ),
            Member::method(
                "set_policy",
                "set_policy({vms_per_node, max_nodes, min_idle_vms}) -> policy",
            ),
            Member::method("register_vm", "register_vm(block: str, index: int, ip: str)"),
            Member::method("register_agent", "register_agent(block: str, addr: str)"),
            Member::method("unregister_block", "unregister_block(block: str) -> bool"),
            Member::method(
                "shutdown_block",
                "shutdown_block(block: str, grace: float = 30) -> {block, done, reason}",
            ),
            Member::method(
                "subscribe",
                "subscribe(callback: fn({kind, detail, report, vms}))",
            ),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn running_jobs_count_against_the_blocks_in_name_order() {
        let r = Registry::default();
        for (block, n) in [("b", 2u32), ("a", 2)] {
            for i in 0..n {
                r.register_vm(block, i, "10.0.2.15".parse().unwrap())
                    .unwrap();
            }
        }
        let obs = |running| Observation {
            user_running: running,
            ..Observation::default()
        };
        let busy = |running| -> Vec<u32> {
            futures::executor::block_on(r.blocks(&obs(running)))
                .unwrap()
                .iter()
                .map(|b| b.vms_busy)
                .collect()
        };
        assert_eq!(busy(0), [0, 0]);
        assert_eq!(busy(3), [2, 1]);
        assert_eq!(busy(9), [2, 2]);
        let (_, counts) = r.views(3);
        assert_eq!((counts.ready, counts.busy, counts.idle), (4, 3, 1));
        assert!(r.unregister("a"));
        assert!(!r.unregister("a"));
    }

    #[test]
    fn bad_registrations_are_refused() {
        let r = Registry::default();
        let ip: IpAddr = "10.0.2.15".parse().unwrap();
        assert!(r.register_vm("", 0, ip).is_err());
        assert!(r.register_vm("a/b", 0, ip).is_err());
        assert!(r.register_vm(&"x".repeat(65), 0, ip).is_err());
        assert!(r.register_vm("ok-1.x_y", 0, ip).is_ok());
    }
}
