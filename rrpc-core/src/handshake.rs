//! The greeting and, when configured, the authentication that open every
//! connection, before any frame.
//!
//! 1. **Hello.** Each side writes 12 bytes at once, then reads the peer's:
//!    the magic `rRPC`, the protocol version (u16, big endian), flags (u16)
//!    and the largest frame the sender accepts (u32). Because both sides
//!    write first, neither waits on the other; a peer that is not rrpc is
//!    detected from its first bytes, and a silent one by the handshake
//!    deadline. A server that refuses the connection (a limit was hit) sets
//!    [`FLAG_REFUSED`] and follows its hello with the reason (u16 length,
//!    UTF-8), then closes.
//! 2. **Authentication** ([`FLAG_AUTH`] on both sides). Each side sends a
//!    fresh 32-byte random nonce. A proof is HMAC-SHA256 of the shared
//!    secret over a label, the prover's role, its own nonce and the peer's.
//!    The client sends its proof first; the server checks it in constant
//!    time and answers one verdict byte, followed by its own proof only when
//!    the client's passed (so a client without the secret learns nothing it
//!    could guess the secret from). The client checks the server's proof and
//!    answers a verdict byte of its own. The secret never crosses the wire;
//!    the nonces make every proof single-use, and the role byte stops a
//!    proof from being reflected back.
//!    Flags that disagree (one side has a secret, the other not) fail the
//!    handshake: a client with a secret never talks to a server without one.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Config;
use crate::error::Error;
use crate::wire::PROTOCOL_VERSION;

const MAGIC: &[u8; 4] = b"rRPC";
const HELLO_LEN: usize = 12;
const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;
const AUTH_LABEL: &[u8] = b"rrpc-auth-v2";
/// The verdict byte for a proof that passed.
const ACCEPTED: u8 = 1;
/// The verdict byte for a proof that failed.
const REJECTED: u8 = 0;
/// Secrets shorter than this are easy to guess; [`Secret::is_weak`] says so.
pub const MIN_STRONG_SECRET: usize = 16;
/// Longest refusal reason sent in a hello.
const MAX_REASON: usize = 1024;

/// Hello flag: the sender authenticates with a shared secret.
pub const FLAG_AUTH: u16 = 1;
/// Hello flag: the sender refuses the connection; a reason follows.
pub const FLAG_REFUSED: u16 = 2;

/// The environment variable servers and clients read the shared secret from
/// when no secret file is given.
pub const SECRET_ENV: &str = "RRPC_SECRET";

/// Which end of the link this side is. Authentication proofs name the role,
/// so one side's proof can never pass for the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that connected.
    Client,
    /// The side that accepted.
    Server,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Client => b'C',
            Role::Server => b'S',
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// A shared secret for challenge–response authentication. Its `Debug` never
/// shows the bytes.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// A secret from raw bytes; surrounding whitespace is kept as given.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, Error> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(Error::AuthFailed("the shared secret is empty".into()));
        }
        Ok(Secret(bytes.into()))
    }

    /// Whether the secret is short enough to be guessed (under
    /// [`MIN_STRONG_SECRET`] bytes); servers warn about such secrets.
    pub fn is_weak(&self) -> bool {
        self.0.len() < MIN_STRONG_SECRET
    }

    /// Reads a secret from a file, dropping one trailing newline.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Secret, Error> {
        let path = path.as_ref();
        let mut bytes = std::fs::read(path).map_err(|e| {
            Error::AuthFailed(format!(
                "cannot read the secret file {}: {e}",
                path.display()
            ))
        })?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Secret::new(bytes)
    }

    /// Reads a secret from environment variable `var`, if it is set.
    pub fn from_env(var: &str) -> Result<Option<Secret>, Error> {
        match std::env::var_os(var) {
            None => Ok(None),
            Some(value) => Secret::new(value.into_encoded_bytes()).map(Some),
        }
    }

    /// The secret a command line asks for: read from `file` when one is
    /// given, else from [`SECRET_ENV`] if it is set, else none. (Never from
    /// an argument: `ps` would show it.)
    pub fn from_file_or_env(file: Option<&std::path::Path>) -> Result<Option<Secret>, Error> {
        match file {
            Some(path) => Secret::from_file(path).map(Some),
            None => Secret::from_env(SECRET_ENV).map_err(|e| match e {
                Error::AuthFailed(why) => Error::AuthFailed(format!("{SECRET_ENV}: {why}")),
                other => other,
            }),
        }
    }

    fn proof(&self, role: Role, own_nonce: &[u8], peer_nonce: &[u8]) -> Hmac<Sha256> {
        // An HMAC key may have any length, so this cannot fail; the fallback
        // only keeps the function total.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        mac.update(AUTH_LABEL);
        mac.update(&[role.byte()]);
        mac.update(own_nonce);
        mac.update(peer_nonce);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// What the peer told us in its greeting.
#[derive(Debug, Clone, Copy)]
pub struct PeerHello {
    /// The peer's protocol version.
    pub version: u16,
    /// The peer's flags.
    pub flags: u16,
    /// The largest frame the peer accepts.
    pub max_frame_len: usize,
}

fn hello(config: &Config, flags: u16) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out[6..8].copy_from_slice(&flags.to_be_bytes());
    let max = u32::try_from(config.max_frame_len).unwrap_or(u32::MAX);
    out[8..12].copy_from_slice(&max.to_be_bytes());
    out
}

/// Fails as soon as the bytes received so far cannot start an rrpc greeting.
fn check_magic(received: &[u8]) -> Result<(), Error> {
    let prefix = &received[..received.len().min(MAGIC.len())];
    if MAGIC.starts_with(prefix) {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(received);
    Err(Error::Handshake(format!(
        "the peer does not speak rrpc (it sent {shown:?})"
    )))
}

/// Parses the peer's greeting.
pub fn parse_hello(bytes: &[u8; HELLO_LEN]) -> Result<PeerHello, Error> {
    check_magic(bytes)?;
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(Error::Handshake(format!(
            "protocol version mismatch: this side speaks version {PROTOCOL_VERSION}, the peer speaks version {version}"
        )));
    }
    Ok(PeerHello {
        version,
        flags: u16::from_be_bytes([bytes[6], bytes[7]]),
        max_frame_len: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
    })
}

async fn read_hello<R: AsyncRead + Unpin>(reader: &mut R) -> Result<PeerHello, Error> {
    let mut buf = [0u8; HELLO_LEN];
    let mut got = 0;
    while got < HELLO_LEN {
        let n = reader.read(&mut buf[got..]).await?;
        got += n;
        check_magic(&buf[..got])?;
        if n == 0 {
            return Err(Error::Handshake(format!(
                "the peer closed the connection during the handshake (after {got} bytes)"
            )));
        }
    }
    parse_hello(&buf)
}

/// Runs the whole handshake as `role`, within the handshake deadline.
pub async fn handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    config: &Config,
    role: Role,
) -> Result<PeerHello, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let exchange = async {
        let flags = if config.secret.is_some() {
            FLAG_AUTH
        } else {
            0
        };
        writer.write_all(&hello(config, flags)).await?;
        writer.flush().await?;
        let peer = read_hello(reader).await?;
        if peer.flags & FLAG_REFUSED != 0 {
            let mut len = [0u8; 2];
            reader.read_exact(&mut len).await?;
            let mut reason = vec![0u8; usize::from(u16::from_be_bytes(len)).min(MAX_REASON)];
            reader.read_exact(&mut reason).await?;
            return Err(Error::Refused(
                String::from_utf8_lossy(&reason).into_owned(),
            ));
        }
        let peer_auth = peer.flags & FLAG_AUTH != 0;
        match (&config.secret, peer_auth) {
            (None, false) => {}
            (Some(secret), true) => authenticate(reader, writer, secret, role).await?,
            (None, true) => {
                return Err(Error::AuthFailed(match role {
                    Role::Client => "the server requires a shared secret, and none is configured".into(),
                    Role::Server => "the client offers a secret this server does not expect".into(),
                }))
            }
            (Some(_), false) => {
                return Err(Error::AuthFailed(match role {
                    Role::Client => "the server does not authenticate, but a shared secret is configured: refusing to talk to it".into(),
                    Role::Server => "the client sent no credentials; this server requires a shared secret".into(),
                }))
            }
        }
        Ok(peer)
    };
    match tokio::time::timeout(config.handshake_timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(Error::Handshake(format!(
            "no rrpc greeting from the peer within {:?}",
            config.handshake_timeout
        ))),
    }
}

/// Runs the challenge–response as `role`. The client proves itself first;
/// the server answers with its own proof only once the client's has passed,
/// so a peer without the secret never obtains a proof over a nonce of its
/// choosing to guess the secret from offline.
async fn authenticate<R, W>(
    reader: &mut R,
    writer: &mut W,
    secret: &Secret,
    role: Role,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut own_nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut own_nonce);
    writer.write_all(&own_nonce).await?;
    writer.flush().await?;
    let mut peer_nonce = [0u8; NONCE_LEN];
    reader.read_exact(&mut peer_nonce).await?;
    if peer_nonce == own_nonce {
        return Err(Error::AuthFailed("the peer echoed our challenge".into()));
    }
    let own_proof = secret
        .proof(role, &own_nonce, &peer_nonce)
        .finalize()
        .into_bytes();
    // `verify_slice` compares in constant time.
    let verify = |proof: &[u8; PROOF_LEN]| {
        secret
            .proof(role.peer(), &peer_nonce, &own_nonce)
            .verify_slice(proof)
            .is_ok()
    };
    match role {
        Role::Client => {
            writer.write_all(&own_proof).await?;
            writer.flush().await?;
            if !read_verdict(reader).await? {
                return Err(Error::AuthFailed(
                    "the server rejected our proof: the shared secrets differ".into(),
                ));
            }
            let mut peer_proof = [0u8; PROOF_LEN];
            reader.read_exact(&mut peer_proof).await?;
            let ok = verify(&peer_proof);
            writer.write_all(&[verdict_byte(ok)]).await?;
            writer.flush().await?;
            if !ok {
                return Err(Error::AuthFailed(
                    "the server's proof does not match our shared secret".into(),
                ));
            }
            Ok(())
        }
        Role::Server => {
            let mut peer_proof = [0u8; PROOF_LEN];
            reader.read_exact(&mut peer_proof).await?;
            if !verify(&peer_proof) {
                // Our own proof is never sent to a client that failed.
                writer.write_all(&[REJECTED]).await?;
                writer.flush().await?;
                return Err(Error::AuthFailed(
                    "the client's proof does not match our shared secret".into(),
                ));
            }
            writer.write_all(&[ACCEPTED]).await?;
            writer.write_all(&own_proof).await?;
            writer.flush().await?;
            if !read_verdict(reader).await? {
                return Err(Error::AuthFailed(
                    "the client rejected our proof: the shared secrets differ".into(),
                ));
            }
            Ok(())
        }
    }
}

/// Reads the peer's verdict on our proof: whether it passed.
async fn read_verdict<R: AsyncRead + Unpin>(reader: &mut R) -> Result<bool, Error> {
    let mut verdict = [0u8; 1];
    reader.read_exact(&mut verdict).await?;
    Ok(verdict[0] == ACCEPTED)
}

fn verdict_byte(ok: bool) -> u8 {
    if ok {
        ACCEPTED
    } else {
        REJECTED
    }
}

/// Refuses a connection as the server: sends a hello flagged
/// [`FLAG_REFUSED`] with `reason`, then closes the writer.
pub async fn refuse<W: AsyncWrite + Unpin>(
    writer: &mut W,
    config: &Config,
    reason: &str,
) -> Result<(), Error> {
    let reason = truncate_utf8(reason, MAX_REASON);
    let mut out = hello(config, FLAG_REFUSED).to_vec();
    // `reason` is at most MAX_REASON bytes, which fits a u16.
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    let send = async {
        writer.write_all(&out).await?;
        writer.shutdown().await
    };
    tokio::time::timeout(config.handshake_timeout, send)
        .await
        .map_err(|_| Error::Handshake("the refused peer does not read".into()))??;
    Ok(())
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn pair(
        client: Config,
        server: Config,
    ) -> (Result<PeerHello, Error>, Result<PeerHello, Error>) {
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        tokio::join!(
            handshake(&mut ar, &mut aw, &client, Role::Client),
            handshake(&mut br, &mut bw, &server, Role::Server),
        )
    }

    fn with_secret(s: &str) -> Config {
        Config::default().with_secret(Secret::new(s).unwrap())
    }

    #[tokio::test]
    async fn matching_secrets_authenticate_both_ways() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let (c, s) = pair(with_secret("hunter2"), with_secret("hunter2")).await;
            assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn different_secrets_fail_on_both_sides() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let (c, s) = pair(with_secret("right"), with_secret("wrong")).await;
            assert!(matches!(c, Err(Error::AuthFailed(_))), "{c:?}");
            assert!(matches!(s, Err(Error::AuthFailed(_))), "{s:?}");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_missing_secret_on_either_side_fails_clearly() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let (c, s) = pair(Config::default(), with_secret("x")).await;
            assert!(c
                .unwrap_err()
                .to_string()
                .contains("requires a shared secret"));
            assert!(matches!(s, Err(Error::AuthFailed(_))));
            let (c, _) = pair(with_secret("x"), Config::default()).await;
            assert!(c.unwrap_err().to_string().contains("does not authenticate"));
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_refused_client_gets_the_reason() {
        // A hang fails the test instead of blocking the run.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let (a, b) = tokio::io::duplex(4096);
            let (mut ar, mut aw) = tokio::io::split(a);
            let (_br, mut bw) = tokio::io::split(b);
            let config = Config::default();
            let (c, s) = tokio::join!(
                handshake(&mut ar, &mut aw, &config, Role::Client),
                refuse(
                    &mut bw,
                    &config,
                    "too many connections from 127.0.0.1 (limit 4)"
                ),
            );
            s.unwrap();
            match c {
                Err(Error::Refused(reason)) => assert!(reason.contains("limit 4"), "{reason}"),
                other => panic!("{other:?}"),
            }
        })
        .await
        .expect("test timed out");
    }

    /// An attacker without the secret greets, sends a nonce of its choosing
    /// and waits: the server must not answer with a proof over that nonce
    /// (an offline-guessing oracle), and a wrong proof gets only a refusal.
    #[tokio::test]
    async fn the_server_proves_nothing_to_a_client_that_has_not_proved_itself() {
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let (attacker, server_end) = tokio::io::duplex(4096);
            let (mut sr, mut sw) = tokio::io::split(server_end);
            let server = tokio::spawn(async move {
                let config = with_secret("a secret long enough to be strong");
                handshake(&mut sr, &mut sw, &config, Role::Server).await
            });
            let (mut ar, mut aw) = tokio::io::split(attacker);
            aw.write_all(&hello(&Config::default(), FLAG_AUTH))
                .await
                .unwrap();
            aw.write_all(&[7u8; NONCE_LEN]).await.unwrap();
            let mut greeting = [0u8; HELLO_LEN + NONCE_LEN];
            ar.read_exact(&mut greeting).await.unwrap();
            // Nothing more comes until the attacker sends a proof.
            let mut more = [0u8; PROOF_LEN];
            let early =
                tokio::time::timeout(std::time::Duration::from_millis(300), ar.read(&mut more))
                    .await;
            assert!(early.is_err(), "the server sent {early:?} before any proof");
            aw.write_all(&[0u8; PROOF_LEN]).await.unwrap();
            let mut rest = Vec::new();
            ar.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, [REJECTED], "only a refusal, never a proof");
            let outcome = server.await.unwrap();
            assert!(matches!(outcome, Err(Error::AuthFailed(_))), "{outcome:?}");
        })
        .await
        .expect("test timed out");
    }

    #[test]
    fn short_secrets_are_weak() {
        assert!(Secret::new("hunter2").unwrap().is_weak());
        assert!(!Secret::new([b'x'; MIN_STRONG_SECRET]).unwrap().is_weak());
    }

    #[test]
    fn a_proof_is_bound_to_role_and_nonces() {
        let s = Secret::new("k").unwrap();
        let p = |role, a: &[u8], b: &[u8]| s.proof(role, a, b).finalize().into_bytes();
        assert_ne!(p(Role::Client, b"a", b"b"), p(Role::Server, b"a", b"b"));
        assert_ne!(p(Role::Client, b"a", b"b"), p(Role::Client, b"b", b"a"));
        assert_eq!(p(Role::Client, b"a", b"b"), p(Role::Client, b"a", b"b"));
        assert_eq!(format!("{s:?}"), "Secret(1 bytes)");
    }
}
