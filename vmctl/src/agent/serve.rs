//! Serving an agent over rrpc, and stopping it gracefully.

use std::sync::Arc;
use std::time::Duration;

use rrpc_core::{Config, Namespace, Value};
use rrpc_server::security::ServerSecurity;
use rrpc_server::{Listening, Server};
use tokio::net::ToSocketAddrs;

use super::report::EndReport;
use super::NodeAgent;
use crate::vm::PowerDownPolicy;

/// The prefix of the line `vmctl agent` prints once it accepts connections.
pub const READY_LINE: &str = "vmctl agent listening on";

/// The server root: a namespace exporting the agent as `node`.
pub fn root(agent: Arc<NodeAgent>) -> Namespace {
    Namespace::new("vmctl-agent").with("node", Value::Object(agent))
}

/// Binds a server for `agent` on `addr` (`127.0.0.1:0` picks a free port).
pub async fn bind(agent: Arc<NodeAgent>, addr: impl ToSocketAddrs) -> std::io::Result<Listening> {
    bind_with(agent, addr, Config::default()).await
}

/// Like [`bind`], with a connection configuration (e.g. a shared secret
/// clients must prove they know).
pub async fn bind_with(
    agent: Arc<NodeAgent>,
    addr: impl ToSocketAddrs,
    config: Config,
) -> std::io::Result<Listening> {
    server(agent).with_config(config).bind(addr).await
}

/// Like [`bind`], protected as `security` says: the shared secret clients
/// must prove, and TLS.
pub async fn bind_secured(
    agent: Arc<NodeAgent>,
    addr: impl ToSocketAddrs,
    security: &ServerSecurity,
) -> std::io::Result<Listening> {
    security.apply(server(agent)).bind(addr).await
}

/// The agent's server, not bound yet (to set more options first).
pub fn server(agent: Arc<NodeAgent>) -> Server {
    Server::new(root(agent)).with_shutdown_grace(Duration::from_secs(5))
}

/// A power-down policy that fits in `total`: the power button gets 60 %, then
/// `quit` 25 % and SIGKILL the rest (each at least half a second).
pub fn policy_within(total: Duration) -> PowerDownPolicy {
    let part = |f: f64| total.mul_f64(f).max(Duration::from_millis(500));
    PowerDownPolicy {
        graceful: part(0.6),
        quit_grace: part(0.25),
        kill_grace: part(0.15),
        ..PowerDownPolicy::default()
    }
}

/// Serves until `signal` completes, then powers every VM down (power button
/// for `grace`, then `quit`, then kill) while still serving, so subscribed
/// clients see the VMs stop, and finally stops the server.
pub async fn run(
    agent: Arc<NodeAgent>,
    listening: Listening,
    signal: impl std::future::Future,
    grace: Duration,
) -> Vec<EndReport> {
    let server = listening.spawn();
    signal.await;
    tracing::info!("stopping: powering every VM down");
    let policy = PowerDownPolicy {
        graceful: grace,
        ..PowerDownPolicy::default()
    };
    let reports = agent.power_down_all(&policy).await;
    server.stop().await;
    reports
}

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, `scancel`, pre-emption).
    Terminate,
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        })
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed at once (call
/// it early: a signal that arrives before is not lost, it is delivered when
/// the future is first polled). Must be called inside a Tokio runtime. If a
/// handler cannot be installed, that signal keeps its default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = StopSignal> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot handle {name}: {e}");
            None
        }
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM");
    let mut int = install(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            _ = recv(&mut term) => StopSignal::Terminate,
            _ = recv(&mut int) => StopSignal::Interrupt,
        }
    }
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
