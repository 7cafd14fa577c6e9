#!/bin/sh
# Install what vmctl's real-VM tests need on Debian (12 "bookworm" or later):
#   * qemu-system-x86 (qemu-system-x86_64), taken from <codename>-backports so
#     that it matches a preinstalled backports qemu-utils: installing the plain
#     bookworm qemu-system-x86 (7.2) would REMOVE qemu-utils 10.x, which
#     declares "Breaks: qemu-system-common (<< 1:8.0)";
#   * busybox-static, xz-utils, gzip: for scripts/build-test-guest.sh.
#
# Idempotent: does nothing when every tool is already there. Must run as root.
# The backports mirror is copied from the configured Debian source, so no host
# name is written here.
#
# usage: scripts/install-qemu.sh
set -eu

have_all() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 &&
    [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx cpio &&
    command -v xz >/dev/null 2>&1 && command -v gzip >/dev/null 2>&1
}

if have_all; then
  echo "install-qemu: already installed: $(qemu-system-x86_64 --version | head -1)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-qemu: must run as root (apt-get install)" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "install-qemu: needs apt-get (Debian)" >&2; exit 1; }

# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$CODENAME" ] || { echo "install-qemu: cannot read VERSION_CODENAME from /etc/os-release" >&2; exit 1; }
BPO_SUITE="$CODENAME-backports"
BPO_FILE=/etc/apt/sources.list.d/vmctl-$BPO_SUITE.sources

# The mirror: the first Debian archive URI configured (deb822 or one-line form).
mirror() {
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed -n 's/^URIs:[[:space:]]*//p' "$f" | tr ' ' '\n' | grep -v -- '-security' | grep '/debian/*$' && return 0
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f" |
      grep -v -- '-security' | grep '/debian/*$' && return 0
  done
  return 1
}

if ! grep -qs -- "$BPO_SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
  URI=$(mirror | head -1) || true
  [ -n "${URI:-}" ] || { echo "install-qemu: no Debian mirror found in the apt sources" >&2; exit 1; }
  echo "install-qemu: adding $BPO_SUITE from $URI"
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$URI" "$BPO_SUITE" > "$BPO_FILE"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Backports have priority 100: only packages asked for with -t come from there.
apt-get install -y -qq --no-install-recommends -t "$BPO_SUITE" qemu-system-x86
apt-get install -y -qq --no-install-recommends busybox-static xz-utils gzip

have_all || { echo "install-qemu: tools still missing after install" >&2; exit 1; }
echo "install-qemu: installed: $(qemu-system-x86_64 --version | head -1)"
