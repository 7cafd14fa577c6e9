//! TLS with a generated cluster CA: the right CA connects, a wrong one is
//! refused, client certificates are enforced when required, and TLS combines
//! with the shared secret.
#![allow(clippy::unwrap_used)]

mod common;

use common::within;
use rrpc_client::tls::TlsClient;
use rrpc_client::{Config, ConnectOptions, Error};
use rrpc_core::handshake::Secret;
use rrpc_server::tls::{ClusterCerts, TlsServer};
use rrpc_server::Server;

async fn tls_server(
    certs: &ClusterCerts,
    mutual: bool,
    config: Config,
) -> (rrpc_server::RunningServer, String) {
    let ca = mutual.then_some(certs.ca_cert.as_bytes());
    let tls = TlsServer::from_pem(
        certs.server_cert.as_bytes(),
        certs.server_key.as_bytes(),
        ca,
    )
    .unwrap();
    let listening = Server::new(rrpc_server::demo::namespace())
        .with_tls(tls)
        .with_config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listening.local_addr().to_string();
    (listening.spawn(), addr)
}

async fn works(conn: &rrpc_client::Connection) {
    let obj = conn
        .root()
        .call("MyClass", (0,))
        .await
        .unwrap()
        .into_proxy()
        .unwrap();
    assert_eq!(obj.call("f", (41,)).await.unwrap().as_i64(), Some(42));
}

#[tokio::test]
async fn a_client_trusting_the_cluster_ca_connects_over_tls() {
    within(30, async {
        let certs = ClusterCerts::generate(&["node1".into()]).unwrap();
        let (_server, addr) = tls_server(&certs, false, Config::default()).await;
        let tls = TlsClient::from_pem(certs.ca_cert.as_bytes(), None).unwrap();
        let conn = rrpc_client::connect_with(&addr, ConnectOptions::default().tls(tls.clone()))
            .await
            .unwrap();
        works(&conn).await;
        // By name too: the certificate lists localhost.
        let by_name = ConnectOptions::default().tls(tls.server_name("localhost"));
        works(&rrpc_client::connect_with(&addr, by_name).await.unwrap()).await;
    })
    .await
}

#[tokio::test]
async fn a_wrong_certificate_or_name_is_refused() {
    within(30, async {
        let certs = ClusterCerts::generate(&[]).unwrap();
        let other = ClusterCerts::generate(&[]).unwrap();
        let (_server, addr) = tls_server(&certs, false, Config::default()).await;
        let stranger = TlsClient::from_pem(other.ca_cert.as_bytes(), None).unwrap();
        let err = rrpc_client::connect_with(&addr, ConnectOptions::default().tls(stranger))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
        assert!(err.to_string().contains("certificate"), "{err}");
        let wrong_name = TlsClient::from_pem(certs.ca_cert.as_bytes(), None)
            .unwrap()
            .server_name("elsewhere.example");
        let err = rrpc_client::connect_with(&addr, ConnectOptions::default().tls(wrong_name))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
        // A plain-TCP client gets a clear handshake error, not a hang.
        let err = rrpc_client::connect(&addr).await.unwrap_err();
        assert!(matches!(err, Error::Handshake(_)), "{err}");
        // The server still serves a proper client.
        let good = TlsClient::from_pem(certs.ca_cert.as_bytes(), None).unwrap();
        works(
            &rrpc_client::connect_with(&addr, ConnectOptions::default().tls(good))
                .await
                .unwrap(),
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    within(30, async {
        let certs = ClusterCerts::generate(&[]).unwrap();
        let (_server, addr) = tls_server(&certs, true, Config::default()).await;
        let anonymous = TlsClient::from_pem(certs.ca_cert.as_bytes(), None).unwrap();
        let refused =
            rrpc_client::connect_with(&addr, ConnectOptions::default().tls(anonymous)).await;
        assert!(refused.is_err(), "a client without a certificate got in");
        let identified = TlsClient::from_pem(
            certs.ca_cert.as_bytes(),
            Some((certs.client_cert.as_bytes(), certs.client_key.as_bytes())),
        )
        .unwrap();
        works(
            &rrpc_client::connect_with(&addr, ConnectOptions::default().tls(identified))
                .await
                .unwrap(),
        )
        .await;
        // A certificate from another cluster does not get in.
        let other = ClusterCerts::generate(&[]).unwrap();
        let foreign = TlsClient::from_pem(
            certs.ca_cert.as_bytes(),
            Some((other.client_cert.as_bytes(), other.client_key.as_bytes())),
        )
        .unwrap();
        let conn = rrpc_client::connect_with(&addr, ConnectOptions::default().tls(foreign)).await;
        // TLS 1.3 reports a rejected client certificate on first use.
        match conn {
            Err(_) => {}
            Ok(conn) => assert!(conn.root().call("MyClass", (0,)).await.is_err()),
        }
    })
    .await
}

#[tokio::test]
async fn tls_and_the_shared_secret_work_together() {
    within(30, async {
        let certs = ClusterCerts::generate(&[]).unwrap();
        let secret = Secret::new("s3cret").unwrap();
        let (_server, addr) =
            tls_server(&certs, false, Config::default().with_secret(secret.clone())).await;
        let tls = TlsClient::from_pem(certs.ca_cert.as_bytes(), None).unwrap();
        let with_secret = ConnectOptions::default()
            .tls(tls.clone())
            .config(Config::default().with_secret(secret));
        works(&rrpc_client::connect_with(&addr, with_secret).await.unwrap()).await;
        let err = rrpc_client::connect_with(&addr, ConnectOptions::default().tls(tls))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AuthFailed(_)), "{err}");
    })
    .await
}

#[test]
fn generated_keys_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    ClusterCerts::generate(&["node1".into()])
        .unwrap()
        .write_to(dir.path())
        .unwrap();
    for (file, mode) in [
        ("ca.key", 0o600),
        ("server.key", 0o600),
        ("client.key", 0o600),
        ("ca.pem", 0o644),
    ] {
        let meta = std::fs::metadata(dir.path().join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    TlsServer::from_pem_files(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        Some(&dir.path().join("ca.pem")),
    )
    .unwrap();
}
