//! `rrpc-server`: the slave server to run on every host of an ad-hoc cluster.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rrpc_core::Config;
use rrpc_server::admission::AdmissionLimits;
use rrpc_server::security::ServerSecurityArgs;
use rrpc_server::services::{stock_root, Service, ToolboxOptions};
use rrpc_server::tls::ClusterCerts;
use rrpc_server::Server;

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
    /// The shared secret and TLS.
    #[command(flatten)]
    security: ServerSecurityArgs,
    /// Most connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most connections from one address.
    #[arg(long, default_value_t = 64)]
    max_connections_per_peer: usize,
    /// Most handshakes open at once; past it a new one evicts the oldest
    /// handshake of the address with the most of them.
    #[arg(long, default_value_t = AdmissionLimits::default().pending)]
    max_pending: usize,
    /// Most handshakes open at once from one address; past it a new one
    /// evicts that address's oldest.
    #[arg(long, default_value_t = AdmissionLimits::default().pending_per_peer)]
    max_pending_per_peer: usize,
    /// Failed authentications from one address that lock it out.
    #[arg(long, default_value_t = AdmissionLimits::default().auth_failures)]
    auth_failures: u32,
    /// Seconds failed authentications are counted over, and a lockout lasts.
    #[arg(long, default_value_t = AdmissionLimits::default().lockout.as_secs_f64())]
    auth_lockout: f64,
    /// Close a connection after this many seconds without calls (0: never).
    #[arg(long, default_value_t = 0.0)]
    idle_timeout: f64,
    /// Declare a silent client dead after this many seconds (keep-alive
    /// pings are sent after a third of it).
    #[arg(long, default_value_t = 30.0)]
    keepalive_timeout: f64,
    /// Generate a cluster CA plus server and client certificates into DIR
    /// (ca.pem, server.pem/.key, client.pem/.key), then exit.
    #[arg(long, value_name = "DIR")]
    generate_certs: Option<std::path::PathBuf>,
    /// Host names or addresses the generated server certificate is valid
    /// for (repeatable; localhost and 127.0.0.1 are always included).
    #[arg(long = "cert-name", value_name = "NAME")]
    cert_names: Vec<String>,
    /// Services to expose (comma-separated: fs, proc, sys, script); default all.
    #[arg(long, value_delimiter = ',', value_name = "SERVICES")]
    expose: Option<Vec<Service>>,
    /// Do not expose the file service (`fs`, and the root's `open`).
    #[arg(long)]
    no_fs: bool,
    /// Do not expose the process service (`proc`).
    #[arg(long)]
    no_proc: bool,
    /// Do not expose the system service (`sys`).
    #[arg(long)]
    no_sys: bool,
    /// Do not expose the script engine (`script`).
    #[arg(long)]
    no_script: bool,
    /// Confine the file service to this directory: paths outside it are refused.
    #[arg(long, value_name = "DIR")]
    fs_root: Option<PathBuf>,
    /// Refuse every file-service operation that would change a file.
    #[arg(long)]
    read_only: bool,
}

impl Cli {
    fn toolbox(&self) -> ToolboxOptions {
        let mut options = ToolboxOptions::default().read_only(self.read_only);
        if let Some(services) = &self.expose {
            options = options.expose_only(services.iter().copied());
        }
        for (off, service) in [
            (self.no_fs, Service::Fs),
            (self.no_proc, Service::Proc),
            (self.no_sys, Service::Sys),
            (self.no_script, Service::Script),
        ] {
            if off {
                options = options.without(service);
            }
        }
        if let Some(root) = &self.fs_root {
            options = options.fs_root(root);
        }
        options
    }
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

fn config(cli: &Cli) -> Result<Config, String> {
    let mut config = Config::default().with_max_frame_len(cli.max_frame);
    let keepalive = seconds("keepalive-timeout", cli.keepalive_timeout)?;
    config = config.with_keepalive(Some(keepalive / 3), keepalive);
    if cli.idle_timeout > 0.0 {
        config = config.with_idle_timeout(Some(seconds("idle-timeout", cli.idle_timeout)?));
    }
    Ok(config)
}

fn generate_certs(dir: &std::path::Path, names: &[String]) -> ExitCode {
    let written = ClusterCerts::generate(names)
        .map_err(|e| e.to_string())
        .and_then(|certs| certs.write_to(dir).map_err(|e| e.to_string()));
    match written {
        Ok(()) => {
            println!(
                "wrote ca.pem, ca.key, server.pem, server.key, client.pem, client.key to {}",
                dir.display()
            );
            println!("serve:   rrpc-server --tls-cert server.pem --tls-key server.key [--tls-client-ca ca.pem]");
            println!("clients trust ca.pem (and present client.pem/client.key when required)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rrpc-server: cannot generate certificates: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    if let Some(dir) = &cli.generate_certs {
        return generate_certs(dir, &cli.cert_names);
    }
    let security = match cli.security.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rrpc-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (config, grace) = match (config(&cli), seconds("shutdown-grace", cli.shutdown_grace)) {
        (Ok(c), Ok(g)) => (c, g),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rrpc-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admission = match seconds("auth-lockout", cli.auth_lockout) {
        Ok(lockout) => AdmissionLimits {
            total: cli.max_connections,
            per_peer: cli.max_connections_per_peer,
            pending: cli.max_pending,
            pending_per_peer: cli.max_pending_per_peer,
            auth_failures: cli.auth_failures.max(1),
            lockout,
            ..AdmissionLimits::default()
        },
        Err(e) => {
            eprintln!("rrpc-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("{}", security.describe());
    if security.secret.as_ref().is_some_and(|s| s.is_weak()) {
        tracing::warn!(
            "the shared secret is shorter than {} bytes and could be guessed; \
             use a long random one (head -c 32 /dev/urandom | base64)",
            rrpc_core::handshake::MIN_STRONG_SECRET
        );
    }
    if let Some(warning) = security.open_warning(cli.host, "use every exported object") {
        tracing::warn!("{warning}");
    }
    let options = cli.toolbox();
    let root = match stock_root(&options) {
        Ok(root) => root,
        Err(e) => {
            eprintln!("rrpc-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exposed: Vec<&str> = options.expose.iter().map(|s| s.name()).collect();
    tracing::info!(
        services = %exposed.join(","),
        fs_root = ?options.fs_root,
        read_only = options.read_only,
        "toolbox"
    );
    let server = security.apply(
        Server::new(root)
            .with_config(config)
            .with_admission(admission)
            .with_shutdown_grace(grace),
    );
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
