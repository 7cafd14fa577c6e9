//! The `rrpc` command-line client: look at a server's objects (`ls`), call
//! them (`call`), time round trips (`ping`), move files (`upload`,
//! `download`), and run shell commands over many hosts (`run`).
//!
//! The binary (`src/bin/rrpc.rs`) only calls [`main`]; everything is here.

mod files;
mod inspect;
pub mod json;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The port `rrpc-server` listens on by default (RPyC's classic port).
pub const DEFAULT_PORT: u16 = 18812;

/// An error for the person at the terminal.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// rrpc command-line client: use rrpc servers from the shell.
#[derive(Debug, Parser)]
#[command(name = "rrpc", version, about, long_about = None)]
pub struct Cli {
    /// Seconds to wait for a server to accept a connection.
    #[arg(long, global = true, default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Seconds a call may take unless its command sets its own limit
    /// (`call --timeout`, `run --timeout`).
    #[arg(long, global = true, default_value_t = 30.0)]
    pub call_timeout: f64,
    #[command(flatten)]
    pub security: crate::security::ClientSecurityArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// What `rrpc` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List what an object offers: `rrpc ls ADDR [PATH]` (e.g. `fs`).
    Ls {
        /// Server address, HOST[:PORT].
        addr: String,
        /// Dotted path from the root (empty: the root).
        path: Option<String>,
    },
    /// Call a method: `rrpc call ADDR fs.listdir '"/tmp"'`; the result is printed as JSON.
    Call {
        /// Server address, HOST[:PORT].
        addr: String,
        /// Dotted path: attributes walked from the root, then the method called.
        path: String,
        /// Arguments. One that starts with `[`, `{`, `"`, a digit or `-`
        /// and a digit, or is `true`/`false`/`null`, is JSON and must be
        /// valid JSON; anything else is a plain string (`/tmp`, `-rf`).
        args: Vec<String>,
        /// Seconds the call may take.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Time round trips to a server.
    Ping {
        /// Server address, HOST[:PORT].
        addr: String,
        /// How many round trips.
        #[arg(short, long, default_value_t = 5)]
        count: u32,
    },
    /// Upload a local file to the server (streamed, SHA-256 checked).
    Upload {
        /// Server address, HOST[:PORT].
        addr: String,
        /// Local file.
        local: PathBuf,
        /// Path on the server.
        remote: String,
    },
    /// Download a file from the server (streamed, SHA-256 checked).
    Download {
        /// Server address, HOST[:PORT].
        addr: String,
        /// Path on the server.
        remote: String,
        /// Local file.
        local: PathBuf,
    },
    /// Run shell commands over hosts, one output file per command.
    ///
    /// With `-- CMD…` the command runs once on every host; with
    /// `--commands FILE` the file's commands (one a line; `#` comments) are
    /// spread over the hosts by the cluster pool, each host kept busy with
    /// up to `--parallel` at once (default: its CPU count); the commands of
    /// a host lost mid-run run again on the others. Exit status: 0 if every
    /// command succeeded, 1 if any failed, 2 if all succeeded but a host was
    /// unreachable or lost.
    Run(run::RunArgs),
}

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rrpc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rrpc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let connect_timeout = seconds(cli.connect_timeout, "--connect-timeout")?;
    // Set once per process, before any connection is made.
    let _ = SECURITY.set(cli.security.load()?);
    let _ = CALL_TIMEOUT.set(seconds(cli.call_timeout, "--call-timeout")?);
    match cli.command {
        Command::Ls { addr, path } => {
            inspect::ls(&addr, path.as_deref(), connect_timeout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            addr,
            path,
            args,
            timeout,
        } => {
            let timeout = seconds(timeout, "--timeout")?;
            inspect::call(&addr, &path, &args, timeout, connect_timeout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping { addr, count } => {
            inspect::ping(&addr, count, connect_timeout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Upload {
            addr,
            local,
            remote,
        } => {
            files::upload(&addr, &local, &remote, connect_timeout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Download {
            addr,
            remote,
            local,
        } => {
            files::download(&addr, &remote, &local, connect_timeout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run::run(args, connect_timeout).await,
    }
}

fn seconds(value: f64, flag: &str) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{flag}: {value} is not a number of seconds").into())
}

/// `HOST[:PORT]` with the default port filled in.
pub fn with_port(addr: &str) -> String {
    let has_port = match addr.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        addr.to_owned()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

/// How every connection of this process authenticates, from the command
/// line (set once per process, before any connection is made).
static SECURITY: std::sync::OnceLock<crate::security::ClientSecurity> = std::sync::OnceLock::new();

/// The default deadline of a call (`--call-timeout`; set once per process).
static CALL_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// The connect options of every connection of this process: the secret and
/// TLS settings from the command line, `timeout` for the TCP connection and
/// for each handshake (rrpc's and TLS's), `--call-timeout` for calls.
fn connect_options(timeout: Duration) -> crate::ConnectOptions {
    let mut options = match SECURITY.get() {
        Some(security) => security.connect_options(timeout),
        None => crate::security::ClientSecurity::none().connect_options(timeout),
    };
    if let Some(call_timeout) = CALL_TIMEOUT.get() {
        options.config = options.config.with_call_timeout(*call_timeout);
    }
    options
}

/// Connects (TCP, TLS if configured, handshake) within `timeout`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<rrpc_core::Connection, CliError> {
    let addr = with_port(addr);
    let options = connect_options(timeout);
    match tokio::time::timeout(timeout, crate::connect_with(addr.as_str(), options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("{addr}: {e}").into()),
        Err(_) => Err(format!("{addr}: no answer within {:.1} s", timeout.as_secs_f64()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn the_default_port_is_filled_in() {
        assert_eq!(with_port("gandalf"), "gandalf:18812");
        assert_eq!(with_port("10.0.0.1:9000"), "10.0.0.1:9000");
        assert_eq!(with_port("[::1]:9000"), "[::1]:9000");
    }
}
