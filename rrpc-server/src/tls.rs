//! TLS for the server (rustls), and certificates for a small cluster.
//!
//! A cluster gets its own certificate authority: [`ClusterCerts::generate`]
//! makes the CA, one server certificate valid for the names given (plus
//! `localhost` and `127.0.0.1`) and one client certificate, all signed by
//! the CA. Servers present the server certificate and may require client
//! certificates signed by the CA; clients trust the CA.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A TLS set-up could not be built.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(String);

fn err(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{what}: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's side of TLS: its certificate and key, and optionally the CA
/// client certificates must be signed by.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("client_certificates_required", &self.mutual)
            .finish()
    }
}

impl TlsServer {
    /// From PEM text: the certificate chain, the private key, and, to require
    /// client certificates, the CA that signs them.
    pub fn from_pem(
        cert_chain: &[u8],
        key: &[u8],
        client_ca: Option<&[u8]>,
    ) -> Result<TlsServer, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("server certificate", e))?;
        if certs.is_empty() {
            return Err(TlsError(
                "server certificate: no certificate in the PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| err("server key", e))?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("protocol versions", e))?;
        let builder = match client_ca {
            Some(ca) => {
                let roots = roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| err("client verifier", e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| err("server certificate and key", e))?;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual: client_ca.is_some(),
        })
    }

    /// From PEM files.
    pub fn from_pem_files(
        cert_chain: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsServer, TlsError> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| err(&format!("reading {}", p.display()), e));
        let ca = client_ca.map(read).transpose()?;
        TlsServer::from_pem(&read(cert_chain)?, &read(key)?, ca.as_deref())
    }

    /// True when clients must present a certificate signed by the CA given.
    pub fn requires_client_certificates(&self) -> bool {
        self.mutual
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn roots(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| err("CA certificate", e))?)
            .map_err(|e| err("CA certificate", e))?;
    }
    if roots.is_empty() {
        return Err(TlsError("CA certificate: no certificate in the PEM".into()));
    }
    Ok(roots)
}

/// A cluster's certificates, as PEM text.
#[derive(Clone)]
pub struct ClusterCerts {
    /// The cluster CA's certificate: what clients (and servers checking
    /// clients) trust.
    pub ca_cert: String,
    /// The CA's private key: keep it offline, it signs new certificates.
    pub ca_key: String,
    /// The servers' certificate.
    pub server_cert: String,
    /// The servers' private key.
    pub server_key: String,
    /// A client certificate, for servers that require one.
    pub client_cert: String,
    /// The client certificate's private key.
    pub client_key: String,
}

impl std::fmt::Debug for ClusterCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCerts { .. }")
    }
}

impl ClusterCerts {
    /// Makes a CA, a server certificate valid for `server_names` (host
    /// names or IP addresses; `localhost` and `127.0.0.1` are always added)
    /// and a client certificate.
    pub fn generate(server_names: &[String]) -> Result<ClusterCerts, TlsError> {
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rrpc cluster CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| err("CA", e))?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names: Vec<String> = server_names.to_vec();
        for default in ["localhost", "127.0.0.1"] {
            if !names.iter().any(|n| n == default) {
                names.push(default.to_owned());
            }
        }
        let leaf = |names: Vec<String>,
                    cn: &str,
                    usage: ExtendedKeyUsagePurpose|
         -> Result<(String, String), TlsError> {
            let mut params = CertificateParams::new(names).map_err(|e| err(cn, e))?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().map_err(|e| err(cn, e))?;
            let cert = params.signed_by(&key, &issuer).map_err(|e| err(cn, e))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) =
            leaf(names, "rrpc server", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert, client_key) = leaf(
            vec!["rrpc-client".to_owned()],
            "rrpc client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(ClusterCerts {
            ca_cert: ca_cert.pem(),
            ca_key: ca_key_pem,
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key`, `client.pem`
    /// and `client.key` into `dir` (created if needed); keys are readable by
    /// their owner only.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        let files = [
            ("ca.pem", &self.ca_cert, 0o644),
            ("ca.key", &self.ca_key, 0o600),
            ("server.pem", &self.server_cert, 0o644),
            ("server.key", &self.server_key, 0o600),
            ("client.pem", &self.client_cert, 0o644),
            ("client.key", &self.client_key, 0o600),
        ];
        for (name, text, mode) in files {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(dir.join(name))?;
            f.write_all(text.as_bytes())?;
        }
        Ok(())
    }
}
