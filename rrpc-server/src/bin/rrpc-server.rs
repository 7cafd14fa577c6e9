//! `rrpc-server`: the slave server to run on every host of an ad-hoc cluster.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rrpc_core::handshake::Secret;
use rrpc_core::{Config, Namespace};
use rrpc_server::{demo, Server};

/// Serve rrpc objects on this host (like RPyC's `rpyc_classic`).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Address to listen on. The default serves this host only; anything
    /// else exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed in the ready line).
    #[arg(long, default_value_t = 18812)]
    port: u16,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_frame: usize,
    /// Seconds an in-flight call may take to finish at shutdown.
    #[arg(long, default_value_t = 10.0)]
    shutdown_grace: f64,
    /// File holding the shared secret clients must prove they know. The
    /// secret can also come from the RRPC_SECRET environment variable; it is
    /// never taken from the command line, where `ps` would show it.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<std::path::PathBuf>,
    /// Serve a non-loopback address without authentication, deliberately
    /// (silences the warning).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Most connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most connections from one address.
    #[arg(long, default_value_t = 64)]
    max_connections_per_peer: usize,
    /// Close a connection after this many seconds without calls (0: never).
    #[arg(long, default_value_t = 0.0)]
    idle_timeout: f64,
    /// Declare a silent client dead after this many seconds (keep-alive
    /// pings are sent after a third of it).
    #[arg(long, default_value_t = 30.0)]
    keepalive_timeout: f64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rrpc-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|e| format!("bad --{flag} {value}: {e}"))
}

fn load_secret(cli: &Cli) -> Result<Option<Secret>, String> {
    if let Some(path) = &cli.secret_file {
        return Secret::from_file(path).map(Some).map_err(|e| e.to_string());
    }
    Secret::from_env("RRPC_SECRET").map_err(|e| format!("RRPC_SECRET: {e}"))
}

fn config(cli: &Cli) -> Result<Config, String> {
    let mut config = Config::default().with_max_frame_len(cli.max_frame);
    config.secret = load_secret(cli)?;
    let keepalive = seconds("keepalive-timeout", cli.keepalive_timeout)?;
    config = config.with_keepalive(Some(keepalive / 3), keepalive);
    if cli.idle_timeout > 0.0 {
        config = config.with_idle_timeout(Some(seconds("idle-timeout", cli.idle_timeout)?));
    }
    Ok(config)
}

async fn run(cli: Cli) -> ExitCode {
    let (config, grace) = match (config(&cli), seconds("shutdown-grace", cli.shutdown_grace)) {
        (Ok(c), Ok(g)) => (c, g),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rrpc-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.secret.is_some() {
        tracing::info!("clients must prove the shared secret");
    } else if !cli.host.is_loopback() && !cli.allow_unauthenticated {
        tracing::warn!(
            "serving on {} WITHOUT AUTHENTICATION: anyone who can reach this address can use \
             every exported object with this user's rights. Set a secret (--secret-file or \
             RRPC_SECRET), or pass --allow-unauthenticated on an isolated network.",
            cli.host
        );
    }
    let mut root = Namespace::new("rrpc-server");
    demo::add_to(&mut root);
    root.insert("demo", rrpc_core::Value::object(demo::namespace()));
    let server = Server::new(root)
        .with_config(config)
        .with_connection_limits(cli.max_connections, cli.max_connections_per_peer)
        .with_shutdown_grace(grace);
    let listening = match server.bind((cli.host, cli.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "rrpc-server: cannot listen on {}:{}: {e}",
                cli.host, cli.port
            );
            return ExitCode::FAILURE;
        }
    };
    // The ready line: scripts and tests wait for it.
    println!("rrpc-server listening on {}", listening.local_addr());
    listening.serve_until(shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
