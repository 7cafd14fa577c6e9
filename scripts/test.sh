#!/usr/bin/env bash
# The project's test command (the README shows it; .ci/run calls it).
# Installs the system packages the real-component tests need when they are
# missing, then checks formatting and lints, runs every test, and runs the
# examples that prove the contracts.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# Real-component prerequisites (each script is idempotent and quick when done).
for setup in scripts/setup-*.sh; do
    [ -e "$setup" ] || continue
    say "setup: $setup"
    bash "$setup"
done

say "format"
cargo fmt --all -- --check

say "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --doc --locked

say "examples"
cargo build --release --locked --workspace --examples --bins
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/examples/tour"
"$bin/examples/classic_session"
"$bin/examples/factorize"
"$bin/examples/job_cluster"
"$bin/examples/typed_factorize"
"$bin/examples/exec_proxy"
"$bin/examples/bench" --quick
"$bin/examples/vm_driver"    # real QEMU: two in-process node agents, tiny guests
"$bin/examples/cluster_driver"  # local queues, in-process integrator, real vmctl launch-job + QEMU
"$bin/examples/cluster_driver" --stand-in --users 3  # the same with the named stand-in launch job
"$bin/examples/cluster_driver" --stand-in --users 2 --secure  # every connection with a secret and TLS

# The article's session against a separately started rrpc-server.
say "classic_session against a running rrpc-server"
ready=$(mktemp)
"$bin/rrpc-server" --port 0 >"$ready" 2>/dev/null &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; rm -f "$ready"' EXIT
for _ in $(seq 1 100); do
    grep -q 'rrpc-server listening on' "$ready" && break
    sleep 0.1
done
addr=$(sed -n 's/^rrpc-server listening on //p' "$ready")
[ -n "$addr" ] || { echo "rrpc-server printed no ready line"; exit 1; }
"$bin/examples/classic_session" --connect "$addr"
"$bin/examples/exec_proxy" --connect "$addr"
kill -TERM "$server_pid"
wait "$server_pid"
trap - EXIT
rm -f "$ready"

# The toolbox's 1 GiB upload and download with matching SHA-256 digests in
# bounded memory (ignored by default: it moves 2 GiB; release mode keeps it short).
say "1 GiB transfer through fs"
cargo test --release --locked -p rrpc-server --test big_transfer -- --ignored --nocapture

say "all checks passed"
