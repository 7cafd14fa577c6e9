//! Before authentication, a short leash: silent sockets cannot lock anyone
//! out, and an address that keeps failing authentication is locked out
//! itself — each tried against a real server, as an attacker would.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::within;
use rrpc_client::{Config, ConnectOptions, Connection, Error};
use rrpc_core::handshake::{Role, Secret};
use rrpc_core::Namespace;
use rrpc_server::admission::AdmissionLimits;
use rrpc_server::{RunningServer, Server};
use tokio::net::{TcpSocket, TcpStream};

async fn serve(server: Server) -> (RunningServer, SocketAddr) {
    let listening = server.bind("127.0.0.1:0").await.unwrap();
    let addr = listening.local_addr();
    (listening.spawn(), addr)
}

/// A TCP connection to `to` from the loopback address `127.0.0.<from>`.
async fn connect_from(from: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, from], 0)))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// An rrpc client connection from `127.0.0.<from>`.
async fn rrpc_from(from: u8, to: SocketAddr, config: Config) -> Result<Connection, Error> {
    let stream = connect_from(from, to).await;
    Connection::over_tcp(
        stream,
        config,
        Arc::new(Namespace::new("client")),
        Role::Client,
    )
    .await
}

/// Connects until it works or `deadline` passes; the last error otherwise.
async fn connect_within(addr: SocketAddr, deadline: Duration) -> Result<Connection, Error> {
    let until = Instant::now() + deadline;
    loop {
        match rrpc_client::connect(addr).await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn silent_sockets_from_one_address_do_not_lock_that_address_out() {
    within(30, async {
        let (_running, addr) = serve(Server::new(rrpc_server::demo::namespace())).await;
        // More silent sockets than the per-address limit (64), all from the
        // address the real client uses; each stays open, saying nothing.
        let mut silent = Vec::new();
        for _ in 0..80 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let conn = connect_within(addr, Duration::from_secs(3))
            .await
            .expect("a client that completes its handshake must get in");
        assert!(conn.root().call("MyClass", (0,)).await.is_ok());
        drop(silent);
    })
    .await
}

#[tokio::test]
async fn silent_sockets_from_many_addresses_do_not_lock_out_everyone() {
    within(30, async {
        // A server for 96 connections; six addresses open 16 silent sockets
        // each, enough to fill it if handshakes counted like served clients.
        let server = Server::new(rrpc_server::demo::namespace()).with_connection_limits(96, 64);
        let (_running, addr) = serve(server).await;
        let mut silent = Vec::new();
        for from in 2..8 {
            for _ in 0..16 {
                silent.push(connect_from(from, addr).await);
            }
        }
        let conn = connect_within(addr, Duration::from_secs(3))
            .await
            .expect("a client from another address must get in");
        assert!(conn.root().call("MyClass", (0,)).await.is_ok());
        drop(silent);
    })
    .await
}

#[tokio::test]
async fn an_address_that_keeps_failing_authentication_is_locked_out_alone() {
    within(30, async {
        let right = Secret::new("the right secret, long enough").unwrap();
        let wrong = Secret::new("a wrong guess").unwrap();
        let server = Server::new(rrpc_server::demo::namespace())
            .with_config(Config::default().with_secret(right.clone()))
            .with_admission(AdmissionLimits {
                auth_failures: 3,
                ..AdmissionLimits::default()
            });
        let (_running, addr) = serve(server).await;
        let with = |secret: &Secret| {
            ConnectOptions::default().config(Config::default().with_secret(secret.clone()))
        };
        for _ in 0..3 {
            let err = rrpc_client::connect_with(addr, with(&wrong))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::AuthFailed(_)), "{err}");
        }
        // Now even the right secret is refused from that address, saying why.
        let err = rrpc_client::connect_with(addr, with(&right))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{err}");
        assert!(
            err.to_string()
                .contains("too many failed authentications from 127.0.0.1"),
            "{err}"
        );
        // Another address is not affected.
        let other = rrpc_from(9, addr, Config::default().with_secret(right))
            .await
            .unwrap();
        assert!(other.root().call("MyClass", (0,)).await.is_ok());
    })
    .await
}
