//! `rrpc`: the command-line client (see `rrpc --help`).

fn main() -> std::process::ExitCode {
    rrpc_client::cli::main()
}
