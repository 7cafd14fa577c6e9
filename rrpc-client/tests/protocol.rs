//! Bad peers: malformed frames, other protocols, other versions, silence.
//! The server answers each clearly and keeps serving everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{start, within};
use rrpc_client::{Config, ConnectOptions, Error};
use rrpc_core::wire::{self, DecodeLimits, Message, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: DecodeLimits = DecodeLimits::new(64, 10_000);

fn hello(version: u16) -> Vec<u8> {
    let mut h = b"rRPC".to_vec();
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&(1u32 << 20).to_be_bytes());
    h
}

/// Connects raw, greets, and returns the stream after the server's greeting.
async fn raw_session(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&hello(PROTOCOL_VERSION)).await.unwrap();
    let mut theirs = [0u8; 12];
    s.read_exact(&mut theirs).await.unwrap();
    assert_eq!(&theirs[..4], b"rRPC");
    s
}

/// Reads frames until EOF and returns the goodbye reason, if one came.
async fn goodbye_reason(s: &mut TcpStream) -> Option<String> {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    let mut at = 0;
    while at + 4 <= rest.len() {
        let len = u32::from_be_bytes(rest[at..at + 4].try_into().unwrap()) as usize;
        let payload = &rest[at + 4..at + 4 + len];
        if let Ok(Message::Goodbye { reason }) = wire::decode(payload, LIMITS) {
            return Some(reason.into_owned());
        }
        at += 4 + len;
    }
    None
}

#[tokio::test]
async fn a_malformed_frame_is_refused_and_other_clients_keep_working() {
    within(20, async {
        let t = start().await;
        let good = rrpc_client::connect(&t.addr).await.unwrap();
        let obj = good
            .root()
            .call("MyClass", (0,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let slow = obj.call_async("f", (41,));

        let mut bad = raw_session(&t.addr).await;
        bad.write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
            .await
            .unwrap();
        let reason = goodbye_reason(&mut bad)
            .await
            .expect("a goodbye naming the cause");
        assert!(
            reason.contains("protocol violation") && reason.contains("malformed"),
            "{reason}"
        );

        // A frame claiming to be huge is refused before it is read.
        let mut huge = raw_session(&t.addr).await;
        huge.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let reason = goodbye_reason(&mut huge)
            .await
            .expect("a goodbye naming the cause");
        assert!(reason.contains("accepts at most"), "{reason}");

        // A well-formed request for an object that does not exist.
        let mut stray = raw_session(&t.addr).await;
        let mut frame = Vec::new();
        wire::encode_into(
            &Message::Request {
                id: 1,
                target: 999,
                timeout_ms: 1000,
                op: wire::Op::Dir,
            },
            &mut frame,
        )
        .unwrap();
        stray.write_all(&frame).await.unwrap();
        let mut len = [0u8; 4];
        stray.read_exact(&mut len).await.unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        stray.read_exact(&mut payload).await.unwrap();
        match wire::decode(&payload, LIMITS).unwrap() {
            Message::Reply {
                id: 1,
                result: Err(e),
            } => assert_eq!(e.kind, "NoSuchObject"),
            other => panic!("unexpected {other:?}"),
        }

        // The well-behaved client never noticed.
        assert_eq!(slow.await.unwrap().as_i64(), Some(42));
        assert_eq!(obj.call("f", (1,)).await.unwrap().as_i64(), Some(2));
    })
    .await
}

#[tokio::test]
async fn deeply_nested_values_are_refused_alone() {
    within(20, async {
        let t = start().await;
        let good = rrpc_client::connect(&t.addr).await.unwrap();
        let mut v = rrpc_client::Value::Unit;
        for _ in 0..500 {
            v = rrpc_client::Value::List(vec![v]);
        }
        let err = good.root().call("echo", (v,)).await.unwrap_err();
        // The request is refused with the reason; the connection survives.
        assert_eq!(
            err.remote_kind(),
            Some(&rrpc_client::ErrorKind::Refused),
            "{err}"
        );
        assert!(err.to_string().contains("nested too deeply"), "{err}");
        assert_eq!(
            good.root().call("add1", (1,)).await.unwrap().as_i64(),
            Some(2)
        );
    })
    .await
}

async fn fake_server(greeting: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(greeting).await;
        // Keep the socket open so only the greeting tells.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    addr
}

#[tokio::test]
async fn a_peer_that_is_not_rrpc_is_named_as_such() {
    within(20, async {
        let addr = fake_server(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        let err = rrpc_client::connect(&addr).await.unwrap_err();
        assert!(matches!(err, Error::Handshake(_)), "{err}");
        assert!(err.to_string().contains("does not speak rrpc"), "{err}");
    })
    .await
}

#[tokio::test]
async fn a_peer_speaking_another_version_is_refused() {
    within(20, async {
        let addr = fake_server(b"rRPC\x00\x63\x00\x00\x00\x10\x00\x00").await;
        let err = rrpc_client::connect(&addr).await.unwrap_err();
        assert!(err.to_string().contains("version mismatch"), "{err}");
        assert!(err.to_string().contains("version 99"), "{err}");
    })
    .await
}

#[tokio::test]
async fn a_silent_peer_fails_the_handshake_by_its_deadline() {
    within(20, async {
        let addr = fake_server(b"").await;
        let options = ConnectOptions::default()
            .config(Config::default().with_handshake_timeout(Duration::from_millis(300)));
        let err = rrpc_client::connect_with(&addr, options).await.unwrap_err();
        assert!(err.to_string().contains("no rrpc greeting"), "{err}");
    })
    .await
}

#[tokio::test]
async fn the_server_drops_a_client_that_never_greets() {
    within(20, async {
        let listening = rrpc_server::Server::new(rrpc_server::demo::namespace())
            .with_config(Config::default().with_handshake_timeout(Duration::from_millis(300)))
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let addr = listening.local_addr();
        let server = listening.spawn();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        // The server's greeting, then EOF once the deadline passes.
        silent.read_to_end(&mut buf).await.unwrap();
        assert_eq!(&buf[..4], b"rRPC");
        server.stop().await;
    })
    .await
}

/// Reads one reply: its id, and its payload (a success) or its error kind;
/// anything else fails the test.
async fn read_reply(s: &mut TcpStream) -> (u64, Result<Vec<u8>, String>) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).await.unwrap();
    match wire::decode(&payload, LIMITS).unwrap() {
        Message::Reply { id, result: Ok(_) } => (id, Ok(payload)),
        Message::Reply { id, result: Err(e) } => (id, Err(e.kind.into_owned())),
        other => panic!("unexpected {other:?}"),
    }
}

/// One message as a frame.
fn frame(msg: Message<'_>) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_into(&msg, &mut frame).unwrap();
    frame
}

/// Asks the server, over a raw session, for `root.worker`; its object id.
async fn raw_worker(s: &mut TcpStream) -> u64 {
    s.write_all(&frame(Message::Request {
        id: 1,
        target: 0,
        timeout_ms: 5000,
        op: wire::Op::GetAttr {
            name: "worker".into(),
        },
    }))
    .await
    .unwrap();
    let (id, reply) = read_reply(s).await;
    assert_eq!(id, 1);
    match wire::decode(&reply.unwrap(), LIMITS).unwrap() {
        Message::Reply {
            result: Ok(wire::WireValue::SenderRef { id, .. }),
            ..
        } => id,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_request_whose_caller_never_cancels_is_stopped_at_its_deadline() {
    within(20, async {
        let t = start().await;
        let mut s = raw_session(&t.addr).await;
        let worker = raw_worker(&mut s).await;
        // worker.work(1500) with a deadline of 200 ms, and no cancel ever.
        let started = std::time::Instant::now();
        s.write_all(&frame(Message::Request {
            id: 2,
            target: worker,
            timeout_ms: 200,
            op: wire::Op::Call {
                method: "work".into(),
                args: vec![wire::WireValue::Int(1500)],
            },
        }))
        .await
        .unwrap();
        let (id, reply) = read_reply(&mut s).await;
        let took = started.elapsed();
        assert_eq!(id, 2);
        assert_eq!(reply.unwrap_err(), "Timeout");
        // Stopped by the server's own clock: after the deadline (plus its
        // grace), long before the work would have ended.
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(1200), "{took:?}");
        let handle = t.server.handle().clone();
        assert!(common::eventually(2, || handle.stats().running_requests == 0).await);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            t.work.completed.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the work ran on after its deadline"
        );
    })
    .await
}

#[tokio::test]
async fn a_request_id_already_running_is_a_protocol_violation() {
    within(20, async {
        let t = start().await;
        let good = rrpc_client::connect(&t.addr).await.unwrap();
        let mut s = raw_session(&t.addr).await;
        let worker = raw_worker(&mut s).await;
        // Two requests numbered 7 while the first still runs.
        let work = |id| {
            frame(Message::Request {
                id,
                target: worker,
                timeout_ms: 5000,
                op: wire::Op::Call {
                    method: "work".into(),
                    args: vec![wire::WireValue::Int(1000)],
                },
            })
        };
        s.write_all(&[work(7), work(7)].concat()).await.unwrap();
        let reason = goodbye_reason(&mut s)
            .await
            .expect("a goodbye naming the cause");
        assert!(reason.contains("already in use"), "{reason}");
        // Closing the connection stopped the request it had started.
        let handle = t.server.handle().clone();
        assert!(common::eventually(2, || handle.stats().running_requests == 0).await);
        // Everyone else is served.
        assert_eq!(
            good.root().call("add1", (1,)).await.unwrap().as_i64(),
            Some(2)
        );
    })
    .await
}
