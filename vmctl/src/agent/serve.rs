//! Serving an agent over rrpc, and stopping it gracefully.

use std::sync::Arc;
use std::time::Duration;

use rrpc_core::{Namespace, Value};
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
    Server::new(root(agent))
        .with_shutdown_grace(Duration::from_secs(5))
        .bind(addr)
        .await
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

/// Completes on SIGINT or SIGTERM. If the handlers cannot be installed it
/// logs why and never completes (the process is then stopped by the default
/// signal action instead).
pub async fn shutdown_signal() -> StopSignal {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot handle SIGTERM: {e}");
            return match tokio::signal::ctrl_c().await {
                Ok(()) => StopSignal::Interrupt,
                Err(_) => std::future::pending().await,
            };
        }
    };
    tokio::select! {
        _ = term.recv() => StopSignal::Terminate,
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => StopSignal::Interrupt,
            Err(e) => {
                tracing::error!("cannot handle SIGINT: {e}");
                term.recv().await;
                StopSignal::Terminate
            }
        },
    }
}
