#!/usr/bin/env bash
# Prerequisites of vmctl's real-VM tests: QEMU (installed when missing, as
# root) and the tiny test guest (built once into target/test-guest/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-qemu.sh
# The guest build resolves Debian's kernel package: make sure apt knows it.
if [ ! -f target/test-guest/vmlinux ] && ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    apt-get update -qq
fi
bash scripts/build-test-guest.sh
