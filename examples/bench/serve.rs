//! The server side of the benchmark (`bench --serve`), run as a child
//! process: an rrpc server exporting the `bench` object next to the stock
//! demo objects, a raw TCP echo server and a raw bulk-stream server, all on
//! the same tokio runtime as the client uses.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use rrpc_core::{Args, CallContext, Config, Member, Remote, RemoteError, Reply, Value};
use rrpc_server::{demo, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

/// Size of the chunk `bench.chunk` slices its answers from.
pub const CHUNK: usize = 1024 * 1024;
/// The largest raw echo message accepted.
const MAX_ECHO: u32 = 1024 * 1024;
/// Raw bulk commands: the server sends N bytes, or receives N bytes.
pub const BULK_DOWN: u8 = b'D';
pub const BULK_UP: u8 = b'U';

/// Runs the three servers, prints the ready line, and serves until the
/// parent closes our standard input (or kills us).
pub async fn run() -> Result<()> {
    let mut root = demo::namespace();
    root.insert("bench", Value::object(Bench::new()));
    // The proxy_mem figure holds 100 k objects, conn_mem 1000 connections
    // from one address: lift the limits that protect a production server.
    let config = Config::default().with_max_live_objects(10_000_000);
    let rrpc = Server::new(root)
        .with_config(config)
        .with_connection_limits(100_000, 100_000)
        .bind("127.0.0.1:0")
        .await?;
    let rrpc_addr = rrpc.local_addr();
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let bulk = TcpListener::bind("127.0.0.1:0").await?;
    let (echo_addr, bulk_addr) = (echo.local_addr()?, bulk.local_addr()?);
    let _server = rrpc.spawn();
    tokio::spawn(accept_loop(echo, echo_connection));
    tokio::spawn(accept_loop(bulk, bulk_connection));
    println!("{}", ready_line(rrpc_addr, echo_addr, bulk_addr));

    // The parent owns us: when its end of our stdin closes, we are done.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    Ok(())
}

/// The one line the parent waits for.
pub fn ready_line(rrpc: SocketAddr, echo: SocketAddr, bulk: SocketAddr) -> String {
    format!("bench-server ready rrpc={rrpc} echo={echo} bulk={bulk}")
}

/// The addresses of a ready line (rrpc, echo, bulk).
pub fn parse_ready_line(line: &str) -> Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let rest = line
        .strip_prefix("bench-server ready ")
        .with_context(|| format!("not a ready line: {line:?}"))?;
    let mut addrs = [None; 3];
    for field in rest.split_whitespace() {
        let (key, value) = field.split_once('=').context("malformed ready line")?;
        let slot = match key {
            "rrpc" => 0,
            "echo" => 1,
            "bulk" => 2,
            _ => continue,
        };
        addrs[slot] = Some(value.parse::<SocketAddr>()?);
    }
    match addrs {
        [Some(r), Some(e), Some(b)] => Ok((r, e, b)),
        _ => anyhow::bail!("the ready line lacks an address: {line:?}"),
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        if stream.set_nodelay(true).is_ok() {
            tokio::spawn(serve(stream));
        }
    }
}

/// Echoes length-prefixed messages; replies are flushed once no further
/// request is already buffered (so pipelined requests share writes, as the
/// rrpc writer coalesces frames).
async fn echo_connection(stream: TcpStream) -> std::io::Result<()> {
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let mut msg = Vec::new();
    loop {
        let len = match r.read_u32().await {
            Ok(len) if len <= MAX_ECHO => len,
            _ => return Ok(()),
        };
        msg.resize(len as usize, 0);
        r.read_exact(&mut msg).await?;
        w.write_u32(len).await?;
        w.write_all(&msg).await?;
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

/// One command per connection: `D n` sends n bytes then closes; `U n`
/// receives n bytes then answers with 8 bytes.
async fn bulk_connection(mut stream: TcpStream) -> std::io::Result<()> {
    let cmd = stream.read_u8().await?;
    let total = stream.read_u64().await?;
    let mut buf = vec![0xa5u8; CHUNK];
    let mut left = total;
    match cmd {
        BULK_DOWN => {
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                stream.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            stream.flush().await
        }
        BULK_UP => {
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                let n = stream.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                left -= n as u64;
            }
            stream.write_u64(total).await
        }
        _ => Ok(()),
    }
}

/// The object the rrpc figures call.
struct Bench {
    /// What `chunk` answers with, sliced without copying.
    chunk: Bytes,
}

/// The smallest exported object: what `make` hands out by the thousand.
struct Token;

impl Remote for Token {
    fn type_name(&self) -> &str {
        "T"
    }
}

impl Bench {
    fn new() -> Bench {
        Bench {
            chunk: Bytes::from(vec![0xa5u8; CHUNK]),
        }
    }
}

fn int_arg(args: &Args, index: usize, name: &str) -> Result<i64, RemoteError> {
    args.get(index)
        .and_then(Value::as_i64)
        .ok_or_else(|| RemoteError::bad_argument(format!("argument {index} (`{name}`): an int")))
}

impl Remote for Bench {
    fn type_name(&self) -> &str {
        "Bench"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, mut args: Args) -> Reply {
        match method {
            // The null call: answered inline, no task, no blocking pool.
            "inc" => int_arg(&args, 0, "n").map(|n| n.wrapping_add(1)).into(),
            // Calls the caller's callback once with n and returns its answer.
            "call_back" => {
                let f = args.take_proxy(0, "f");
                let n = int_arg(&args, 1, "n");
                Reply::future(async move { Ok::<_, RemoteError>(f?.invoke((n?,)).await?) })
            }
            // A byte string of `size` bytes (at most 1 MiB), without copying.
            "chunk" => int_arg(&args, 0, "size")
                .map(|size| {
                    let size = usize::try_from(size).unwrap_or(0).min(self.chunk.len());
                    Value::Bytes(self.chunk.slice(..size))
                })
                .into(),
            // Takes a byte string and returns its length.
            "sink" => match args.get(0) {
                Some(Value::Bytes(b)) => Reply::ready(b.len()),
                _ => Reply::err(RemoteError::bad_argument("sink(data: bytes)")),
            },
            // A list of `n` fresh objects, each sent by reference.
            "make" => int_arg(&args, 0, "n")
                .map(|n| {
                    let n = usize::try_from(n).unwrap_or(0).min(1_000_000);
                    Value::List((0..n).map(|_| Value::object(Token)).collect())
                })
                .into(),
            _ => Reply::err(RemoteError::no_such_method("Bench", method)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("inc", "inc(n: int) -> int"),
            Member::method("call_back", "call_back(f: callable, n: int) -> any"),
            Member::method("chunk", "chunk(size: int) -> bytes"),
            Member::method("sink", "sink(data: bytes) -> int"),
            Member::method("make", "make(n: int) -> list[T]"),
        ]
    }
}
