//! The greeting both peers send before any frame.
//!
//! Each side writes 12 bytes at once, then reads the peer's: the magic
//! `rRPC`, the protocol version (u16, big endian), feature flags (u16) and the
//! largest frame the sender accepts (u32). Because both sides write first,
//! neither waits on the other; a peer that is not rrpc is detected from its
//! first bytes, and a silent one by the handshake deadline.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Config;
use crate::error::Error;
use crate::wire::PROTOCOL_VERSION;

const MAGIC: &[u8; 4] = b"rRPC";
const HELLO_LEN: usize = 12;

/// What the peer told us in its greeting.
#[derive(Debug, Clone, Copy)]
pub struct PeerHello {
    /// The peer's protocol version.
    pub version: u16,
    /// The peer's feature flags (none are defined yet).
    pub flags: u16,
    /// The largest frame the peer accepts.
    pub max_frame_len: usize,
}

fn hello(config: &Config) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out[6..8].copy_from_slice(&0u16.to_be_bytes());
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

/// Sends our greeting and reads the peer's, within the handshake deadline.
pub async fn handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    config: &Config,
) -> Result<PeerHello, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let exchange = async {
        writer.write_all(&hello(config)).await?;
        writer.flush().await?;
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
    };
    match tokio::time::timeout(config.handshake_timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(Error::Handshake(format!(
            "no rrpc greeting from the peer within {:?}",
            config.handshake_timeout
        ))),
    }
}
