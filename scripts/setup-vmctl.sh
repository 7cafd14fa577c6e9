#!/usr/bin/env bash
# Prerequisites of vmctl's real-VM tests: QEMU (installed when missing, as
# root) and the tiny test guest (built once into target/test-guest/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-qemu.sh
bash scripts/build-test-guest.sh
