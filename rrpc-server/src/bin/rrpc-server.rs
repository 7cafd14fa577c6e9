//! `rrpc-server`: the slave server to run on every host of an ad-hoc cluster.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
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

async fn run(cli: Cli) -> ExitCode {
    if !cli.host.is_loopback() {
        tracing::warn!(
            "serving on {} WITHOUT AUTHENTICATION: anyone who can reach this address can use \
             every exported object. Run it on an isolated network only.",
            cli.host
        );
    }
    let grace = match Duration::try_from_secs_f64(cli.shutdown_grace) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("rrpc-server: bad --shutdown-grace: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut root = Namespace::new("rrpc-server");
    demo::add_to(&mut root);
    root.insert("demo", rrpc_core::Value::object(demo::namespace()));
    let server = Server::new(root)
        .with_config(Config::default().with_max_frame_len(cli.max_frame))
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
