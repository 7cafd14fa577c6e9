//! How a server program is protected: the shared secret, TLS, and the
//! warning when it serves the network unauthenticated.
//!
//! Every server binary of the project (`rrpc-server`, `vmctl agent`,
//! `vmctl integrator`, `vmctl launch-job`) takes the same flags, by
//! flattening [`ServerSecurityArgs`] into its command line:
//!
//! | flag | meaning |
//! | --- | --- |
//! | `--secret-file PATH` | clients must prove they know the secret in PATH (else `RRPC_SECRET`, if set) |
//! | `--tls-cert PATH --tls-key PATH` | serve TLS only, with this certificate chain and key |
//! | `--tls-client-ca PATH` | also require client certificates signed by this CA |
//! | `--allow-unauthenticated` | serve a non-loopback address with neither, deliberately |
//!
//! The secret is never taken from an argument, where `ps` would show it.
//!
//! ```no_run
//! use clap::Parser;
//! use rrpc_server::security::ServerSecurityArgs;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[arg(long, default_value = "127.0.0.1")]
//!     host: std::net::IpAddr,
//!     #[command(flatten)]
//!     security: ServerSecurityArgs,
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cli = Cli::parse();
//! let security = cli.security.load()?;
//! if let Some(warning) = security.open_warning(cli.host, "use every exported object") {
//!     eprintln!("WARNING: {warning}");
//! }
//! let server = security.apply(rrpc_server::Server::new(rrpc_server::demo::namespace()));
//! let listening = server.bind((cli.host, 18812)).await?;
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use rrpc_core::handshake::{Secret, SECRET_ENV};

use crate::tls::{TlsError, TlsServer};
use crate::Server;

/// The server's security flags (flatten them into a clap command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerSecurityArgs {
    /// File holding the shared secret clients must prove they know. The
    /// secret can also come from the RRPC_SECRET environment variable; it is
    /// never taken from the command line, where `ps` would show it.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Serve a non-loopback address without authentication, deliberately
    /// (silences the warning).
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The security flags could not be turned into a set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The shared secret could not be read (or is empty).
    #[error("{0}")]
    Secret(rrpc_core::Error),
    /// The TLS certificate, key or CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl ServerSecurityArgs {
    /// Reads the secret (`--secret-file`, else `RRPC_SECRET`) and the TLS
    /// files.
    pub fn load(&self) -> Result<ServerSecurity, SecurityError> {
        let secret =
            Secret::from_file_or_env(self.secret_file.as_deref()).map_err(SecurityError::Secret)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsServer::from_pem_files(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?),
            _ => None,
        };
        Ok(ServerSecurity {
            secret,
            tls,
            allow_unauthenticated: self.allow_unauthenticated,
        })
    }
}

/// How a server is protected: what [`ServerSecurityArgs::load`] gives.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// The shared secret clients must prove they know.
    pub secret: Option<Secret>,
    /// TLS (the server then speaks TLS only).
    pub tls: Option<TlsServer>,
    /// Serving the network without authentication is deliberate.
    pub allow_unauthenticated: bool,
}

impl ServerSecurity {
    /// No secret, no TLS.
    pub fn none() -> ServerSecurity {
        ServerSecurity::default()
    }

    /// Sets the secret into `server`'s connection settings (keeping the
    /// others) and makes it speak TLS when configured.
    pub fn apply(&self, server: Server) -> Server {
        let mut config = server.config().clone();
        config.secret = self.secret.clone();
        let server = server.with_config(config);
        match &self.tls {
            Some(tls) => server.with_tls(tls.clone()),
            None => server,
        }
    }

    /// True when a client must prove who it is: by the shared secret, or by
    /// a client certificate signed by the CA of `--tls-client-ca`.
    pub fn authenticates_clients(&self) -> bool {
        self.secret.is_some()
            || self
                .tls
                .as_ref()
                .is_some_and(TlsServer::requires_client_certificates)
    }

    /// The warning to show when serving `host` lets anyone in: `host` is
    /// not a loopback address, clients are not authenticated, and
    /// `--allow-unauthenticated` was not given. `what` says what a stranger
    /// could then do ("start and stop VMs").
    pub fn open_warning(&self, host: IpAddr, what: &str) -> Option<String> {
        if host.is_loopback() || self.authenticates_clients() || self.allow_unauthenticated {
            return None;
        }
        Some(format!(
            "serving on {host} WITHOUT AUTHENTICATION: anyone who can reach this address can \
             {what} with this user's rights. Set a secret (--secret-file or {SECRET_ENV}), \
             or require client certificates (--tls-client-ca), or pass \
             --allow-unauthenticated on an isolated network."
        ))
    }

    /// One line for the log saying how clients get in.
    pub fn describe(&self) -> &'static str {
        match (&self.secret, &self.tls) {
            (Some(_), Some(tls)) if tls.requires_client_certificates() => {
                "TLS only, client certificates and the shared secret required"
            }
            (Some(_), Some(_)) => "TLS only, clients must prove the shared secret",
            (Some(_), None) => "clients must prove the shared secret (no TLS: traffic is readable)",
            (None, Some(tls)) if tls.requires_client_certificates() => {
                "TLS only, client certificates required"
            }
            (None, Some(_)) => "TLS only, no client authentication",
            (None, None) => "no authentication, no TLS",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::ClusterCerts;

    #[test]
    fn only_an_unauthenticated_non_loopback_server_is_warned_about() {
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        let open = ServerSecurity::none();
        assert!(open
            .open_warning("127.0.0.1".parse().unwrap(), "x")
            .is_none());
        assert!(open.open_warning("::1".parse().unwrap(), "x").is_none());
        let warning = open.open_warning(lan, "start VMs").unwrap();
        assert!(
            warning.contains("10.1.2.3 WITHOUT AUTHENTICATION"),
            "{warning}"
        );
        assert!(warning.contains("start VMs"), "{warning}");
        assert!(warning.contains("--allow-unauthenticated"), "{warning}");

        let deliberate = ServerSecurity {
            allow_unauthenticated: true,
            ..ServerSecurity::none()
        };
        assert!(deliberate.open_warning(lan, "x").is_none());
        let with_secret = ServerSecurity {
            secret: Some(Secret::new("s").unwrap()),
            ..ServerSecurity::none()
        };
        assert!(with_secret.open_warning(lan, "x").is_none());

        // TLS alone lets anyone in; TLS with client certificates does not.
        let certs = ClusterCerts::generate(&[]).unwrap();
        let (cert, key, ca) = (
            certs.server_cert.as_bytes(),
            certs.server_key.as_bytes(),
            certs.ca_cert.as_bytes(),
        );
        let tls_only = ServerSecurity {
            tls: Some(TlsServer::from_pem(cert, key, None).unwrap()),
            ..ServerSecurity::none()
        };
        assert!(tls_only.open_warning(lan, "x").is_some());
        let mutual = ServerSecurity {
            tls: Some(TlsServer::from_pem(cert, key, Some(ca)).unwrap()),
            ..ServerSecurity::none()
        };
        assert!(mutual.open_warning(lan, "x").is_none());
    }

    #[test]
    fn the_secret_file_wins_and_a_bad_one_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let args = ServerSecurityArgs {
            secret_file: Some(file),
            ..ServerSecurityArgs::default()
        };
        let security = args.load().unwrap();
        assert!(security.secret.is_some());
        assert!(security.tls.is_none());

        let missing = ServerSecurityArgs {
            secret_file: Some(dir.path().join("nope")),
            ..ServerSecurityArgs::default()
        };
        let err = missing.load().unwrap_err().to_string();
        assert!(err.contains("cannot read the secret file"), "{err}");

        let no_key = ServerSecurityArgs {
            tls_cert: Some(dir.path().join("server.pem")),
            tls_key: Some(dir.path().join("server.key")),
            ..ServerSecurityArgs::default()
        };
        let err = no_key.load().unwrap_err().to_string();
        assert!(err.contains("server.pem"), "{err}");
    }

    #[test]
    fn apply_keeps_the_other_settings() {
        let server = Server::new(crate::demo::namespace())
            .with_config(rrpc_core::Config::default().with_max_frame_len(4096));
        let security = ServerSecurity {
            secret: Some(Secret::new("s").unwrap()),
            ..ServerSecurity::none()
        };
        let server = security.apply(server);
        assert!(server.config().secret.is_some());
        assert_eq!(server.config().max_frame_len, 4096);
    }
}
