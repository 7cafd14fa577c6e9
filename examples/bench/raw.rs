//! The raw baselines: plain tokio TCP against the child's echo and bulk
//! servers, on the same runtime as the rrpc figures. They are the floor
//! the rrpc figures are compared with.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::serve::{BULK_DOWN, CHUNK};

/// Payload of one echo message: about the size of an rrpc null call.
const PAYLOAD: usize = 32;
const FRAME: usize = 4 + PAYLOAD;

fn frame() -> [u8; FRAME] {
    let mut f = [0x5au8; FRAME];
    f[..4].copy_from_slice(&(PAYLOAD as u32).to_be_bytes());
    f
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Round-trip times of `iters` sequential small messages (after `warmup`).
pub async fn pingpong(addr: SocketAddr, warmup: usize, iters: usize) -> Result<Vec<Duration>> {
    let mut stream = connect(addr).await?;
    let msg = frame();
    let mut back = [0u8; FRAME];
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t = Instant::now();
        stream.write_all(&msg).await?;
        stream.read_exact(&mut back).await?;
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    ensure!(back == msg, "the echo server answered garbage");
    Ok(samples)
}

/// Messages per second with `window` messages in flight on one connection,
/// measured for about `duration`.
pub async fn pipelined(addr: SocketAddr, window: usize, duration: Duration) -> Result<f64> {
    let (r, mut w) = connect(addr).await?.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let msg = frame();
    let mut out = Vec::with_capacity(window * FRAME);
    let mut back = [0u8; FRAME];
    let (mut in_flight, mut done) = (0usize, 0u64);
    let start = Instant::now();
    loop {
        // Top the window up in one write, as long as the clock runs.
        if in_flight < window && start.elapsed() < duration {
            out.clear();
            for _ in in_flight..window {
                out.extend_from_slice(&msg);
            }
            w.write_all(&out).await?;
            in_flight = window;
        }
        if in_flight == 0 {
            break;
        }
        // One answer, then every one already buffered.
        loop {
            r.read_exact(&mut back).await?;
            in_flight -= 1;
            done += 1;
            if r.buffer().len() < FRAME || in_flight == 0 {
                break;
            }
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// Aggregate round trips per second of `clients` connections each doing
/// sequential ping-pongs for `duration`.
pub async fn many_clients(addr: SocketAddr, clients: usize, duration: Duration) -> Result<f64> {
    let mut streams = Vec::with_capacity(clients);
    for _ in 0..clients {
        streams.push(connect(addr).await?);
    }
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for mut stream in streams {
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            let msg = frame();
            let mut back = [0u8; FRAME];
            let mut n = 0;
            while start.elapsed() < duration {
                stream.write_all(&msg).await?;
                stream.read_exact(&mut back).await?;
                n += 1;
            }
            total.fetch_add(n, Ordering::Relaxed);
            Ok::<_, std::io::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Times of `iters` TCP connects (the kernel's handshake only).
pub async fn connects(addr: SocketAddr, iters: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let stream = connect(addr).await?;
        samples.push(t.elapsed());
        drop(stream);
    }
    Ok(samples)
}

/// MB/s (10^6 bytes) of one stream moving `total` bytes from the server.
pub async fn bulk(addr: SocketAddr, total: u64) -> Result<f64> {
    let mut stream = connect(addr).await?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    stream.write_u8(BULK_DOWN).await?;
    stream.write_u64(total).await?;
    let mut got = 0u64;
    while got < total {
        let n = stream.read(&mut buf).await?;
        ensure!(n > 0, "the bulk server closed after {got} of {total} bytes");
        got += n as u64;
    }
    Ok(total as f64 / 1e6 / start.elapsed().as_secs_f64())
}
