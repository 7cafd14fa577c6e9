//! The accept loop and graceful shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rrpc_core::handshake::{self, Role};
use rrpc_core::{Config, Connection, Error, Remote};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::{AdmissionLimits, Gate};
use crate::tls::TlsServer;

/// An rrpc server: what it exports (its root object) and how it serves.
#[derive(Clone)]
pub struct Server {
    root: Arc<dyn Remote>,
    config: Config,
    grace: Duration,
    admission: AdmissionLimits,
    tls: Option<TlsServer>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("root", &self.root.type_name())
            .field("config", &self.config)
            .field("grace", &self.grace)
            .finish()
    }
}

impl Server {
    /// A server exporting `root` (usually a [`Namespace`](rrpc_core::Namespace)).
    pub fn new(root: impl Remote) -> Server {
        Server::from_arc(Arc::new(root))
    }

    /// A server exporting an already shared root.
    pub fn from_arc(root: Arc<dyn Remote>) -> Server {
        Server {
            root,
            config: Config::default(),
            grace: Duration::from_secs(10),
            admission: AdmissionLimits::default(),
            tls: None,
        }
    }

    /// Sets the per-connection settings.
    pub fn with_config(mut self, config: Config) -> Server {
        self.config = config;
        self
    }

    /// Sets how many connections are served at once (default 1024) and how
    /// many of them may come from one address (default 64); more are
    /// refused in the handshake, with the reason.
    pub fn with_connection_limits(mut self, total: usize, per_peer: usize) -> Server {
        self.admission.total = total;
        self.admission.per_peer = per_peer;
        self
    }

    /// Sets every admission limit at once: connections, pending handshakes
    /// and the lockout after failed authentications (see [`AdmissionLimits`]).
    pub fn with_admission(mut self, limits: AdmissionLimits) -> Server {
        self.admission = limits;
        self
    }

    /// Serves TLS only.
    pub fn with_tls(mut self, tls: TlsServer) -> Server {
        self.tls = Some(tls);
        self
    }

    /// The per-connection settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets how long shutdown waits for in-flight calls (default 10 s).
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Server {
        self.grace = grace;
        self
    }

    /// Binds the listening socket (`port 0` picks a free port).
    pub async fn bind(self, addr: impl ToSocketAddrs) -> std::io::Result<Listening> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let gate = Arc::new(Gate::new(self.admission));
        Ok(Listening {
            listener,
            server: self,
            handle: ServerHandle {
                local_addr,
                shutdown: CancellationToken::new(),
                connections: Arc::new(DashMap::new()),
                gate,
            },
        })
    }
}

/// Counters of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Open connections.
    pub connections: usize,
    /// Objects held by clients through proxies, over all connections.
    pub live_objects: usize,
    /// Requests being served, over all connections.
    pub running_requests: usize,
}

/// A handle to a running server: its address, its counters, and its stop switch.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    connections: Arc<DashMap<u64, Connection>>,
    gate: Arc<Gate>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts a graceful shutdown: no new connections or calls; in-flight
    /// calls finish (up to the grace period), then connections close.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The server's counters now.
    pub fn stats(&self) -> ServerStats {
        let mut stats = ServerStats {
            connections: 0,
            live_objects: 0,
            running_requests: 0,
        };
        for conn in self.connections.iter() {
            let s = conn.value().stats();
            stats.connections += 1;
            stats.live_objects += s.exported_objects;
            stats.running_requests += s.running_requests;
        }
        stats
    }
}

/// A bound server, ready to serve.
#[derive(Debug)]
pub struct Listening {
    listener: TcpListener,
    server: Server,
    handle: ServerHandle,
}

impl Listening {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// A handle for stats and shutdown.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves until `signal` completes or [`ServerHandle::shutdown`] is
    /// called, then shuts down gracefully and returns.
    pub async fn serve_until(self, signal: impl Future) {
        let shutdown = self.handle.shutdown.clone();
        let serve = self.serve();
        tokio::pin!(serve);
        tokio::select! {
            _ = &mut serve => return,
            _ = signal => shutdown.cancel(),
        }
        serve.await;
    }

    /// Serves until [`ServerHandle::shutdown`] is called, then shuts down
    /// gracefully and returns.
    pub async fn serve(self) {
        let Listening {
            listener,
            server,
            handle,
        } = self;
        let tasks = TaskTracker::new();
        let mut reserve = Reserve::new();
        tracing::info!(addr = %handle.local_addr, "serving");
        loop {
            let accepted = tokio::select! {
                _ = handle.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let server = server.clone();
                    let handle = handle.clone();
                    let span = tracing::info_span!("client", %peer);
                    tasks.spawn(serve_connection(server, handle, stream).instrument(span));
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    // Spend the reserve on the waiting client to tell it why,
                    // rather than leave it hanging in the backlog.
                    tracing::warn!("accept failed: {e}");
                    reserve.refuse_one(&listener, &server.config).await;
                }
                Err(e) => {
                    // A client that left before it was accepted, and the like.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        tracing::info!(
            "shutting down: draining {} connection(s)",
            handle.connections.len()
        );
        tasks.close();
        tasks.wait().await;
        tracing::info!("stopped");
    }

    /// Runs the server on a task of its own; for tests and embedding.
    pub fn spawn(self) -> RunningServer {
        let handle = self.handle();
        let task = tokio::spawn(self.serve());
        RunningServer {
            handle,
            task: Some(task),
        }
    }
}

/// Whether an accept failed for want of file descriptors.
fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}

/// A file descriptor held in reserve: when the process runs out, it is
/// closed to accept one waiting client and refuse it with the reason, then
/// taken again.
struct Reserve(Option<std::fs::File>);

/// What a client turned away for want of descriptors is told.
const OUT_OF_DESCRIPTORS: &str =
    "the server is out of file descriptors; try again later (its operator may raise `ulimit -n`)";

impl Reserve {
    fn new() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    async fn refuse_one(&mut self, listener: &TcpListener, config: &Config) {
        if self.0.take().is_none() {
            // No reserve to spend (it could not be taken again): back off.
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else if let Ok(Ok((mut stream, peer))) =
            tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
        {
            tracing::warn!(%peer, "connection refused: out of file descriptors");
            let mut config = config.clone();
            config.handshake_timeout = config.handshake_timeout.min(Duration::from_secs(1));
            let _ = handshake::refuse(&mut stream, &config, OUT_OF_DESCRIPTORS).await;
        }
        *self = Reserve::new();
    }
}

async fn serve_connection(server: Server, handle: ServerHandle, mut stream: tokio::net::TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let admission = match handle.gate.admit(peer) {
        Ok(admission) => admission,
        Err(refusal) => {
            tracing::warn!("connection refused: {refusal}");
            let _ = handshake::refuse(&mut stream, &server.config, &refusal.to_string()).await;
            return;
        }
    };
    let establish = async {
        match &server.tls {
            None => {
                Connection::over_tcp(
                    stream,
                    server.config.clone(),
                    server.root.clone(),
                    Role::Server,
                )
                .await
            }
            Some(tls) => accept_tls(&server, tls, stream, peer).await,
        }
    };
    let established = tokio::select! {
        established = establish => established,
        _ = admission.evicted() => {
            tracing::debug!("pending handshake evicted by newer ones");
            return;
        }
    };
    let conn = match established {
        Ok(conn) => conn,
        Err(Error::AuthFailed(why)) => {
            tracing::warn!("authentication failed for {peer}: {why}");
            handle.gate.auth_failed(peer);
            return;
        }
        Err(e) => {
            tracing::warn!("handshake with {peer} failed: {e}");
            return;
        }
    };
    admission.authenticated();
    tracing::debug!("connected");
    handle.connections.insert(conn.id(), conn.clone());
    tokio::select! {
        reason = conn.closed() => tracing::debug!("disconnected: {reason}"),
        _ = handle.shutdown.cancelled() => conn.drain_and_close(server.grace).await,
    }
    handle.connections.remove(&conn.id());
    conn.join().await;
}

async fn accept_tls(
    server: &Server,
    tls: &TlsServer,
    stream: tokio::net::TcpStream,
    peer: IpAddr,
) -> Result<Connection, Error> {
    let label = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| peer.to_string());
    stream.set_nodelay(true)?;
    let deadline = server.config.handshake_timeout;
    let session = tokio::time::timeout(deadline, tls.acceptor().accept(stream))
        .await
        .map_err(|_| Error::Tls(format!("no TLS handshake within {deadline:?}")))?
        .map_err(|e| Error::Tls(e.to_string()))?;
    let (r, w) = tokio::io::split(session);
    Connection::establish(
        r,
        w,
        server.config.clone(),
        server.root.clone(),
        label,
        Role::Server,
    )
    .await
}

/// A server running on its own task.
#[derive(Debug)]
pub struct RunningServer {
    handle: ServerHandle,
    task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// A handle for stats and shutdown.
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// Shuts down gracefully and waits until the server has stopped.
    pub async fn stop(mut self) {
        self.handle.shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Dropping the handle stops the server (graceful, not awaited).
        self.handle.shutdown();
    }
}
