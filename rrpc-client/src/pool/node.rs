//! One node of the cluster: its connection, its concurrency, its health, and
//! the watcher that declares it lost when it dies or stops answering.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rrpc_core::{Connection, Error, Proxy, Value};

use super::job::Work;
use super::{Inner, PoolOptions};

/// A node to connect to: its address and, optionally, how many jobs it runs
/// at once (default: the pool's setting, else the CPU count the node reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// `host:port` of an rrpc server.
    pub addr: String,
    /// Jobs run at once on this node; `None` for the pool's default.
    pub concurrency: Option<usize>,
}

impl NodeSpec {
    /// The node at `addr`, with the default concurrency.
    pub fn new(addr: impl Into<String>) -> Self {
        NodeSpec {
            addr: addr.into(),
            concurrency: None,
        }
    }

    /// Runs at most `jobs` jobs at once on this node (at least 1).
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = Some(jobs.max(1));
        self
    }
}

impl From<&str> for NodeSpec {
    fn from(addr: &str) -> Self {
        NodeSpec::new(addr)
    }
}

impl From<String> for NodeSpec {
    fn from(addr: String) -> Self {
        NodeSpec::new(addr)
    }
}

impl From<&String> for NodeSpec {
    fn from(addr: &String) -> Self {
        NodeSpec::new(addr.clone())
    }
}

impl From<SocketAddr> for NodeSpec {
    fn from(addr: SocketAddr) -> Self {
        NodeSpec::new(addr.to_string())
    }
}

/// A connected node, shared by the jobs running on it.
pub(crate) struct NodeLink {
    pub(crate) addr: String,
    pub(crate) conn: Connection,
    root: Proxy,
    /// Service proxies resolved from dotted paths, so a job costs one call.
    services: Mutex<HashMap<String, Proxy>>,
}

/// What connecting to a node found out.
pub(crate) struct Connected {
    pub(crate) link: Arc<NodeLink>,
    pub(crate) cpus: usize,
    pub(crate) concurrency: usize,
}

/// Connects to `spec` and learns its CPU count: `sys.cpu_count()` when the
/// server has it, else the configured concurrency, else 1.
pub(crate) async fn connect(spec: &NodeSpec, options: &PoolOptions) -> Result<Connected, Error> {
    let conn = crate::connect_with(spec.addr.as_str(), options.connect.clone()).await?;
    let root = conn.root();
    let configured = spec.concurrency.or(options.concurrency);
    let reported = cpu_count(&root, options.node_deadline).await;
    let cpus = reported.or(configured).unwrap_or(1).max(1);
    let concurrency = configured.unwrap_or(cpus).max(1);
    tracing::debug!(node = %spec.addr, cpus, concurrency, "node connected");
    Ok(Connected {
        link: Arc::new(NodeLink {
            addr: spec.addr.clone(),
            conn,
            root,
            services: Mutex::default(),
        }),
        cpus,
        concurrency,
    })
}

async fn cpu_count(root: &Proxy, deadline: Duration) -> Option<usize> {
    let sys = root
        .get("sys")
        .timeout(deadline)
        .await
        .ok()?
        .into_proxy()
        .ok()?;
    let n: u64 = sys
        .call("cpu_count", ())
        .timeout(deadline)
        .await
        .ok()?
        .decode()
        .ok()?;
    usize::try_from(n).ok().filter(|n| *n > 0)
}

impl NodeLink {
    /// The proxy of the service at the dotted `path` (`""`: the root).
    async fn service(&self, path: &str, timeout: Duration) -> Result<Proxy, Error> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(found) = self.cached(path) {
            return Ok(found);
        }
        let mut obj = self.root.clone();
        for name in path.split('.') {
            obj = obj.get(name).timeout(timeout).await?.into_proxy()?;
        }
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), obj.clone());
        Ok(obj)
    }

    fn cached(&self, path: &str) -> Option<Proxy> {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    /// Runs one attempt of a job's work here, within `timeout`.
    pub(crate) async fn run(&self, work: &Work, timeout: Duration) -> Result<Value, Error> {
        match work {
            Work::Call {
                service,
                method,
                args,
            } => {
                let target = self.service(service, timeout).await?;
                target.call(method, args.clone()).timeout(timeout).await
            }
            Work::With(f) => tokio::time::timeout(timeout, f(self.root.clone()))
                .await
                .unwrap_or(Err(Error::Timeout(timeout))),
        }
    }
}

/// A node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    Up,
    Lost(String),
}

/// The pool's record of one node (kept after it is lost, for the stats).
pub(crate) struct NodeEntry {
    pub(crate) addr: String,
    /// `None` once lost (or if it was never reached).
    pub(crate) link: Option<Arc<NodeLink>>,
    pub(crate) cpus: usize,
    pub(crate) concurrency: usize,
    pub(crate) health: Health,
    /// Jobs running here now.
    pub(crate) running: usize,
    /// Jobs ever started here (spreads ties between idle nodes).
    pub(crate) started: u64,
    pub(crate) done: u64,
    pub(crate) failures: u64,
    /// Summed run time of the jobs done here.
    pub(crate) busy: Duration,
}

impl NodeEntry {
    pub(crate) fn up(connected: Connected) -> Self {
        NodeEntry {
            addr: connected.link.addr.clone(),
            link: Some(connected.link),
            cpus: connected.cpus,
            concurrency: connected.concurrency,
            health: Health::Up,
            running: 0,
            started: 0,
            done: 0,
            failures: 0,
            busy: Duration::ZERO,
        }
    }

    pub(crate) fn unreachable(addr: &str, err: &Error) -> Self {
        NodeEntry {
            addr: addr.to_owned(),
            link: None,
            cpus: 0,
            concurrency: 0,
            health: Health::Lost(format!("unreachable: {err}")),
            running: 0,
            started: 0,
            done: 0,
            failures: 0,
            busy: Duration::ZERO,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.health == Health::Up
    }

    pub(crate) fn has_room(&self) -> bool {
        self.is_up() && self.running < self.concurrency
    }
}

/// The name of the attribute a heartbeat reads; any answer, even "no such
/// attribute", proves the node is alive and serving.
const HEARTBEAT_PROBE: &str = "__rrpc_pool_heartbeat__";

/// Watches node `index`: declares it lost the moment its connection dies,
/// or when a heartbeat gets no answer within the pool's node deadline.
pub(crate) async fn watch(
    pool: Weak<Inner>,
    index: usize,
    link: Arc<NodeLink>,
    options: PoolOptions,
) {
    let reason = loop {
        tokio::select! {
            reason = link.conn.closed() => break reason.to_string(),
            () = tokio::time::sleep(options.heartbeat) => {}
        }
        let probe = link
            .root
            .get(HEARTBEAT_PROBE)
            .timeout(options.node_deadline);
        match probe.await {
            Ok(_) | Err(Error::Remote(_)) => {}
            Err(Error::Timeout(d)) => {
                break format!("it did not answer a heartbeat within {d:?}");
            }
            Err(other) => break other.to_string(),
        }
    };
    tracing::warn!(node = %link.addr, %reason, "node lost");
    if let Some(pool) = pool.upgrade() {
        pool.node_lost(index, reason);
    }
}
