//! How a client program proves itself to servers and checks them: the
//! shared secret and TLS, from the same flags in every client binary.
//!
//! Client binaries (`rrpc`, `vmctl shutdown-block`, the example drivers)
//! flatten [`ClientSecurityArgs`] into their command line:
//!
//! | flag | meaning |
//! | --- | --- |
//! | `--secret-file PATH` | prove the secret in PATH (else `RRPC_SECRET`, if set) |
//! | `--tls-ca PATH` | speak TLS, trusting servers whose certificate this CA signed |
//! | `--tls-cert PATH --tls-key PATH` | the client certificate, for servers that require one |
//! | `--tls-name NAME` | the name to check on the server's certificate (default: its address) |
//!
//! ```no_run
//! use clap::Parser;
//! use rrpc_client::security::ClientSecurityArgs;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     addr: String,
//!     #[command(flatten)]
//!     security: ClientSecurityArgs,
//! }
//!
//! # async fn run() -> Result<(), rrpc_client::Error> {
//! let cli = Cli::parse();
//! let security = cli.security.load()?;
//! let conn = security
//!     .connect(cli.addr.as_str(), std::time::Duration::from_secs(10))
//!     .await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use rrpc_core::handshake::Secret;
use rrpc_core::{Connection, Error};
use tokio::net::ToSocketAddrs;

use crate::tls::TlsClient;
use crate::ConnectOptions;

/// The client's security flags (flatten them into a clap command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientSecurityArgs {
    /// File holding the servers' shared secret (or set RRPC_SECRET; never
    /// pass a secret on the command line, where `ps` shows it).
    #[arg(long, global = true, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Speak TLS, trusting this CA certificate (PEM).
    #[arg(long, global = true, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one; needs --tls-key.
    #[arg(long, global = true, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name to check on the server's certificate (default: its address).
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_name: Option<String>,
}

impl ClientSecurityArgs {
    /// Reads the secret (`--secret-file`, else `RRPC_SECRET`) and the TLS
    /// files.
    pub fn load(&self) -> Result<ClientSecurity, Error> {
        let secret = Secret::from_file_or_env(self.secret_file.as_deref())?;
        let tls = match &self.tls_ca {
            Some(ca) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                let tls = TlsClient::from_pem_files(ca, identity)?;
                Some(match &self.tls_name {
                    Some(name) => tls.server_name(name.clone()),
                    None => tls,
                })
            }
            None => None,
        };
        Ok(ClientSecurity { secret, tls })
    }
}

/// How a client connects: the secret it proves and the TLS it speaks.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// The shared secret to prove (a client with a secret also refuses a
    /// server without one).
    pub secret: Option<Secret>,
    /// Speak TLS with this set-up (default: plain TCP).
    pub tls: Option<TlsClient>,
}

impl ClientSecurity {
    /// No secret, plain TCP.
    pub fn none() -> ClientSecurity {
        ClientSecurity::default()
    }

    /// `options` with the secret set into its connection settings (the
    /// others kept) and TLS when configured.
    pub fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        options.config.secret = self.secret.clone();
        options.tls = self.tls.clone();
        options
    }

    /// Default connect options with this security, and `timeout` for the
    /// TCP connection and for each handshake (TLS's and rrpc's).
    pub fn connect_options(&self, timeout: Duration) -> ConnectOptions {
        let mut options = ConnectOptions::default().connect_timeout(timeout);
        options.config = options.config.with_handshake_timeout(timeout);
        self.apply(options)
    }

    /// Connects to `addr` (TCP, TLS if configured, the handshake), all of it
    /// within `timeout` ([`Error::Timeout`] otherwise).
    pub async fn connect(
        &self,
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> Result<Connection, Error> {
        tokio::time::timeout(
            timeout,
            crate::connect_with(addr, self.connect_options(timeout)),
        )
        .await
        .map_err(|_| Error::Timeout(timeout))?
    }
}
