//! The shared secret and TLS of vmctl's services, and of the connections
//! they make to each other.
//!
//! vmctl's services take `rrpc-server`'s flags ([`ServerSecurityArgs`]:
//! `--secret-file`/`RRPC_SECRET`, `--tls-cert`, `--tls-key`,
//! `--tls-client-ca`, `--allow-unauthenticated`), and its pure clients
//! (`vmctl shutdown-block`) take the `rrpc` client's ([`ClientSecurityArgs`]:
//! `--secret-file`/`RRPC_SECRET`, `--tls-ca`, `--tls-cert`, `--tls-key`,
//! `--tls-name`).
//!
//! The integrator service and the VM-launch job are both: they serve, and
//! they call another service (the integrator calls the agents to power
//! blocks down; a launch job registers with the integrator). They prove the
//! same shared secret they require (one secret per cluster), and
//! [`PeerTlsArgs`] says how they speak TLS to the other service:
//! `--tls-ca` (trust it, and speak TLS), `--tls-client-cert` and
//! `--tls-client-key` (for services that require client certificates) and
//! `--tls-name`.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use rrpc_client::security::{ClientSecurity, ClientSecurityArgs};
use rrpc_client::tls::TlsClient;
use rrpc_core::handshake::Secret;
pub use rrpc_server::security::{ServerSecurity, ServerSecurityArgs};

/// Security flags could not be turned into a set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The server side (secret, certificate, key, client CA).
    #[error(transparent)]
    Server(#[from] rrpc_server::security::SecurityError),
    /// The client side (secret, CA, client certificate).
    #[error(transparent)]
    Client(#[from] rrpc_core::Error),
    /// The flags do not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// How a vmctl service speaks TLS when it calls another vmctl service
/// (flatten into a clap command line). Its shared secret is the one it
/// serves with.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PeerTlsArgs {
    /// Call the other vmctl services (agents, the integrator) over TLS,
    /// trusting this CA certificate (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// The client certificate (PEM) to present to services that require
    /// one (--tls-client-ca there); needs --tls-client-key.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_client_key",
        requires = "tls_ca"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-client-cert.
    #[arg(long, value_name = "PATH", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// The name to check on the other services' certificates (default:
    /// the address connected to).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_name: Option<String>,
}

impl PeerTlsArgs {
    /// The client side: prove `secret`, speak TLS when `--tls-ca` is given.
    pub fn client(&self, secret: Option<Secret>) -> Result<ClientSecurity, rrpc_core::Error> {
        let tls = match &self.tls_ca {
            Some(ca) => {
                let identity = self
                    .tls_client_cert
                    .as_deref()
                    .zip(self.tls_client_key.as_deref());
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

/// A service's security flags: how it serves, and how it calls the others.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceSecurityArgs {
    /// How it serves.
    #[command(flatten)]
    pub server: ServerSecurityArgs,
    /// How it calls the other services.
    #[command(flatten)]
    pub peers: PeerTlsArgs,
}

/// What [`ServiceSecurityArgs::load`] gives.
#[derive(Debug, Clone, Default)]
pub struct ServiceSecurity {
    /// How the service serves.
    pub server: ServerSecurity,
    /// How it calls the other services.
    pub client: ClientSecurity,
}

impl ServiceSecurityArgs {
    /// Reads the secret and every TLS file.
    pub fn load(&self) -> Result<ServiceSecurity, SecurityError> {
        let server = self.server.load()?;
        let client = self.peers.client(server.secret.clone())?;
        Ok(ServiceSecurity { server, client })
    }

    /// The flags with which a `vmctl` client run by this service (the
    /// shutdown job's `vmctl shutdown-block`) reaches this service: the
    /// secret file (never the secret; with `RRPC_SECRET` alone the child
    /// must inherit the variable), the CA, the client certificate and the
    /// name to check, paths made absolute.
    pub fn client_flags(&self) -> Result<Vec<OsString>, SecurityError> {
        let mut flags = Vec::new();
        let mut path = |flag: &str, p: &Path| -> Result<(), SecurityError> {
            let abs = std::path::absolute(p)
                .map_err(|e| SecurityError::Invalid(format!("--{flag} {}: {e}", p.display())))?;
            flags.push(OsString::from(format!("--{flag}")));
            flags.push(abs.into_os_string());
            Ok(())
        };
        if let Some(p) = &self.server.secret_file {
            path("secret-file", p)?;
        }
        if let Some(p) = &self.peers.tls_ca {
            path("tls-ca", p)?;
        }
        if let (Some(cert), Some(key)) = (&self.peers.tls_client_cert, &self.peers.tls_client_key) {
            path("tls-cert", cert)?;
            path("tls-key", key)?;
        }
        if let Some(name) = &self.peers.tls_name {
            flags.push("--tls-name".into());
            flags.push(name.into());
        }
        Ok(flags)
    }

    /// Why a client run by this service could not reach it, if one could
    /// not: the service speaks TLS but trusts no CA to hand on
    /// (`--tls-ca`), or requires client certificates but has none
    /// (`--tls-client-cert`).
    pub fn unreachable_by_own_clients(&self) -> Option<String> {
        if self.server.tls_cert.is_some() && self.peers.tls_ca.is_none() {
            return Some(
                "it serves TLS (--tls-cert), so its clients need --tls-ca: the CA that \
                 signed its certificate"
                    .into(),
            );
        }
        if self.server.tls_client_ca.is_some() && self.peers.tls_client_cert.is_none() {
            return Some(
                "it requires client certificates (--tls-client-ca), so its clients need \
                 --tls-client-cert and --tls-client-key"
                    .into(),
            );
        }
        None
    }
}

/// Prints the loud warning (to stderr) when `host` serves the network with
/// no authentication and `--allow-unauthenticated` was not given; `what`
/// says what a stranger could do there.
pub fn warn_if_open(security: &ServerSecurity, host: IpAddr, what: &str) {
    if let Some(warning) = security.open_warning(host, what) {
        eprintln!("vmctl: WARNING: {warning}");
    }
}
