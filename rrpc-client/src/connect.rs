//! Connecting to a server.

use std::sync::Arc;
use std::time::Duration;

use rrpc_core::handshake::Role;

use crate::tls::TlsClient;
use rrpc_core::{Config, Connection, Error, Namespace, Remote};
use tokio::net::{lookup_host, TcpStream, ToSocketAddrs};

/// How to connect: the connection's settings, what this side exports to the
/// server (its root), and the connect deadline.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Settings of the connection.
    pub config: Config,
    /// What the server reaches as `connection.root()` on its side.
    pub root: Arc<dyn Remote>,
    /// How long establishing the TCP connection may take (default 10 s).
    pub connect_timeout: Duration,
    /// Speak TLS, trusting this set-up (default: plain TCP).
    pub tls: Option<TlsClient>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            config: Config::default(),
            root: Arc::new(Namespace::new("client")),
            connect_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("config", &self.config)
            .field("root", &self.root.type_name())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnectOptions {
    /// Sets the connection settings.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets the object the server can reach as this side's root.
    pub fn root(mut self, root: impl Remote) -> Self {
        self.root = Arc::new(root);
        self
    }

    /// Connects over TLS.
    pub fn tls(mut self, tls: TlsClient) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connect deadline.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// Connects to the rrpc server at `addr` with default options.
pub async fn connect(addr: impl ToSocketAddrs) -> Result<Connection, Error> {
    connect_with(addr, ConnectOptions::default()).await
}

/// Connects to the rrpc server at `addr`.
pub async fn connect_with(
    addr: impl ToSocketAddrs,
    options: ConnectOptions,
) -> Result<Connection, Error> {
    let attempt = async {
        let mut last = None;
        for target in lookup_host(addr).await? {
            match TcpStream::connect(target).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(std::io::Error::new(e.kind(), format!("{target}: {e}"))),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the address resolved to nothing",
            )
        }))
    };
    let stream = match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Error::from(e)),
        Err(_) => return Err(Error::Timeout(options.connect_timeout)),
    };
    let Some(tls) = &options.tls else {
        return Connection::over_tcp(stream, options.config, options.root, Role::Client).await;
    };
    let peer = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    let name = tls.name_for(peer)?;
    let session = tokio::time::timeout(
        options.config.handshake_timeout,
        tls.connector().connect(name, stream),
    )
    .await
    .map_err(|_| {
        Error::Tls(format!(
            "no TLS handshake from {peer} within {:?}",
            options.config.handshake_timeout
        ))
    })?
    .map_err(|e| Error::Tls(format!("handshake with {peer}: {e}")))?;
    let (r, w) = tokio::io::split(session);
    Connection::establish(
        r,
        w,
        options.config,
        options.root,
        peer.to_string(),
        Role::Client,
    )
    .await
}
