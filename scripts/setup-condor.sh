#!/bin/sh
# Prerequisites of vmctl's HTCondor tests on Debian 12: a real HTCondor in a
# Debian 13 "trixie" chroot (bookworm has no htcondor package, and the PyPI
# wheel holds bindings only, no daemons). The chroot gets htcondor, a
# personal-condor configuration that works in a chroot, and a non-root user
# `tester` (condor refuses to queue jobs submitted by root).
#
# First run: debootstrap (~40 s) + htcondor (~20 s), about 520 MB. Later runs
# see the finished chroot and exit at once. Must run as root.
# Start/stop/use it with scripts/condor-local.sh.
#
# Env: CONDOR_ROOT (default /var/tmp/rrpc-condor-trixie)
#
# usage: scripts/setup-condor.sh
set -eu
R=${CONDOR_ROOT:-/var/tmp/rrpc-condor-trixie}
DONE=$R/.rrpc-setup-done
BOOTSTRAPPED=$R/.rrpc-debootstrap-done
LOG=${R%/}.setup.log
CONFIG_VERSION=1
say() { echo "setup-condor: $*" >&2; }

if [ -f "$DONE" ] && [ "$(cat "$DONE")" = "$CONFIG_VERSION" ] && [ -x "$R/usr/bin/condor_submit" ]; then
  echo "setup-condor: already set up in $R ($(chroot "$R" condor_version | head -1))"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  say "must run as root (debootstrap, chroot)"
  exit 1
fi
# One setup at a time (a second caller waits, then finds the work done).
exec 9>"${R%/}.lock"
flock 9
if [ -f "$DONE" ] && [ "$(cat "$DONE")" = "$CONFIG_VERSION" ] && [ -x "$R/usr/bin/condor_submit" ]; then
  say "already set up in $R"
  exit 0
fi
trap 'say "FAILED; the last lines of $LOG:"; tail -20 "$LOG" >&2 || true' EXIT
: >"$LOG"
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-cache show debootstrap >/dev/null 2>&1 || apt-get update -qq
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

mounts_up() {
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  mountpoint -q "$R/sys" || mount -t sysfs sys "$R/sys"
  mountpoint -q "$R/dev" || mount --bind /dev "$R/dev"
  mountpoint -q "$R/dev/pts" || mount --bind /dev/pts "$R/dev/pts"
}
mounts_down() {
  for m in dev/pts dev sys proc; do
    if mountpoint -q "$R/$m"; then umount "$R/$m"; fi
  done
}

# A chroot finished by an earlier version of this script counts as bootstrapped.
if [ -f "$DONE" ] && [ -x "$R/usr/bin/apt-get" ]; then touch "$BOOTSTRAPPED"; fi
if [ ! -f "$BOOTSTRAPPED" ]; then
  # The mirror of the host's configured Debian source (deb822 or one-line form).
  URI=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$URI" ] || URI=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
  [ -n "$URI" ] || URI=http://deb.debian.org/debian
  # A half-finished chroot from an interrupted run is thrown away.
  for m in dev/pts dev sys proc; do
    if mountpoint -q "$R/$m"; then umount "$R/$m" || umount -l "$R/$m"; fi
  done
  rm -rf --one-file-system "$R"
  say "debootstrap trixie into $R from $URI (about 40 s)"
  debootstrap --variant=minbase trixie "$R" "$URI" >>"$LOG" 2>&1
  touch "$BOOTSTRAPPED"
fi
# Nothing may start services inside the chroot during the install.
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod +x "$R/usr/sbin/policy-rc.d"
trap 'mounts_down; say "FAILED; the last lines of $LOG:"; tail -20 "$LOG" >&2 || true' EXIT
mounts_up
if [ ! -x "$R/usr/bin/condor_submit" ]; then
  say "apt-get install htcondor in the chroot (about 20 s)"
  chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends htcondor >>"$LOG" 2>&1
fi
chroot "$R" sh -c 'id tester >/dev/null 2>&1 || useradd -m tester'
cat >"$R/etc/condor/config.d/99-rrpc-personal.config" <<'CONF'
# Single-host "personal condor" for rrpc's tests, inside a chroot.
use ROLE: Personal
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
# Without this condor_submit may talk over the host's IPv6 address and be refused.
ENABLE_IPV6 = False
ALLOW_ADMINISTRATOR = $(CONDOR_HOST) $(IP_ADDRESS)
ALLOW_WRITE = $(CONDOR_HOST) $(IP_ADDRESS)
# No usable cgroup hierarchy or namespaces in a chroot.
BASE_CGROUP =
USE_PID_NAMESPACES = False
# The default bind-mounts /tmp,/var/tmp per job via unshare(CLONE_NEWNS), which
# fails with EINVAL in a chroot and puts every job on hold.
MOUNT_UNDER_SCRATCH =
NUM_CPUS = 2
# Fast turnaround for tests.
SCHEDD_INTERVAL = 5
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 1
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
UPDATE_INTERVAL = 2
MASTER_UPDATE_INTERVAL = 5
CONF
echo "$CONFIG_VERSION" >"$DONE"
mounts_down
trap - EXIT
say "ready in $R ($(chroot "$R" condor_version | head -1))"
