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

use crate::tls::TlsServer;

/// An rrpc server: what it exports (its root object) and how it serves.
#[derive(Clone)]
pub struct Server {
    root: Arc<dyn Remote>,
    config: Config,
    grace: Duration,
    max_connections: usize,
    max_connections_per_peer: usize,
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
            max_connections: 1024,
            max_connections_per_peer: 64,
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
        self.max_connections = total;
        self.max_connections_per_peer = per_peer;
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
        Ok(Listening {
            listener,
            server: self,
            handle: ServerHandle {
                local_addr,
                shutdown: CancellationToken::new(),
                connections: Arc::new(DashMap::new()),
                admitted: Arc::new(Admitted::default()),
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
    admitted: Arc<Admitted>,
}

/// Connections admitted (handshaking or serving), in total and per address.
#[derive(Debug, Default)]
struct Admitted {
    per_peer: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives the slot back.
struct Slot {
    admitted: Arc<Admitted>,
    peer: IpAddr,
}

impl Admitted {
    fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        total: usize,
        per_peer: usize,
    ) -> Result<Slot, String> {
        let mut map = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let all: usize = map.values().sum();
        if all >= total {
            return Err(format!("the server is at its limit of {total} connections"));
        }
        let mine = map.entry(peer).or_insert(0);
        if *mine >= per_peer {
            return Err(format!(
                "too many connections from {peer} (limit {per_peer})"
            ));
        }
        *mine += 1;
        Ok(Slot {
            admitted: self.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .admitted
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
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
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
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

async fn serve_connection(server: Server, handle: ServerHandle, mut stream: tokio::net::TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let admitted = handle.admitted.admit(
        peer,
        server.max_connections,
        server.max_connections_per_peer,
    );
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(reason) => {
            tracing::warn!("connection refused: {reason}");
            let _ = handshake::refuse(&mut stream, &server.config, &reason).await;
            return;
        }
    };
    let established = match &server.tls {
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
    };
    let conn = match established {
        Ok(conn) => conn,
        Err(Error::AuthFailed(why)) => {
            tracing::warn!("authentication failed for {peer}: {why}");
            return;
        }
        Err(e) => {
            tracing::warn!("handshake with {peer} failed: {e}");
            return;
        }
    };
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
