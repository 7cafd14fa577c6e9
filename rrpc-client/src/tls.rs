//! TLS for the client (rustls): trust a cluster CA, optionally present a
//! client certificate.

use std::path::Path;
use std::sync::Arc;

use rrpc_core::Error;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

/// How a client speaks TLS: the CA it trusts, its own certificate if the
/// server asks for one, and the name to check on the server's certificate.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsClient {
    /// Trusts the CA in `ca_pem`; presents `identity` (certificate chain PEM,
    /// key PEM) when the server requires client certificates.
    pub fn from_pem(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<TlsClient, Error> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.map_err(|e| tls_err("CA certificate", e))?)
                .map_err(|e| tls_err("CA certificate", e))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls(
                "CA certificate: no certificate in the PEM".into(),
            ));
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_err("protocol versions", e))?
                .with_root_certificates(roots);
        let config = match identity {
            Some((chain, key)) => {
                let certs = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_err("client certificate", e))?;
                let key =
                    PrivateKeyDer::from_pem_slice(key).map_err(|e| tls_err("client key", e))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| tls_err("client certificate and key", e))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// From PEM files: the CA, and optionally a client certificate and key.
    pub fn from_pem_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsClient, Error> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| tls_err(&format!("reading {}", p.display()), e))
        };
        let ca = read(ca)?;
        match identity {
            Some((cert, key)) => TlsClient::from_pem(&ca, Some((&read(cert)?, &read(key)?))),
            None => TlsClient::from_pem(&ca, None),
        }
    }

    /// The name to check on the server's certificate (default: the IP
    /// address connected to).
    pub fn server_name(mut self, name: impl Into<String>) -> TlsClient {
        self.server_name = Some(name.into());
        self
    }

    pub(crate) fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    pub(crate) fn name_for(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<ServerName<'static>, Error> {
        match &self.server_name {
            Some(name) => ServerName::try_from(name.clone()).map_err(|e| tls_err("server name", e)),
            None => Ok(ServerName::IpAddress(addr.ip().into())),
        }
    }
}
