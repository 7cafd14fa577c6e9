#!/bin/bash
# A personal HTCondor for vmctl's tests, in the trixie chroot that
# scripts/setup-condor.sh builds. Must run as root (chroot, mounts).
#
#   condor-local.sh start      # mount proc/sys/dev, start condor_master, wait for a slot
#   condor-local.sh run CMD…   # run CMD inside the chroot as the non-root user `tester`
#   condor-local.sh prefix     # print the command prefix that does what `run` does
#   condor-local.sh stop       # condor_off, wait for condor_master to exit, unmount
#
# Env: CONDOR_ROOT (default /var/tmp/rrpc-condor-trixie),
#      CONDOR_OWNER_PID: when set, a watchdog stops condor once that process is gone.
set -euo pipefail
R=${CONDOR_ROOT:-/var/tmp/rrpc-condor-trixie}
PIDFILE=$R/run/rrpc-condor-master.pid
WATCHDOG=$R/run/rrpc-condor-watchdog.pid
SELF=$(readlink -f "$0")
log() { printf '[condor-local %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

require() {
  [ -x "$R/usr/bin/condor_submit" ] && [ -f "$R/.rrpc-setup-done" ] || {
    log "no HTCondor chroot in $R: run scripts/setup-condor.sh as root"
    exit 1
  }
}

mounts_up() {
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  mountpoint -q "$R/sys" || mount -t sysfs sys "$R/sys"
  mountpoint -q "$R/dev" || mount --bind /dev "$R/dev"
  mountpoint -q "$R/dev/pts" || mount --bind /dev/pts "$R/dev/pts"
  cp /etc/hosts "$R/etc/hosts" # the host name must resolve inside the chroot
}
mounts_down() {
  for m in dev/pts dev sys proc; do
    if mountpoint -q "$R/$m"; then umount "$R/$m" || umount -l "$R/$m"; fi
  done
}
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

slots() { chroot "$R" condor_status -af Name 2>/dev/null | grep -c slot || true; }

do_start() {
  local t0
  t0=$(date +%s%N)
  require
  mounts_up
  mkdir -p "$R/run"
  if ! pid_alive "$PIDFILE"; then
    # -f: stay in the foreground, so the pid we record is condor_master's.
    setsid chroot "$R" condor_master -f </dev/null >/dev/null 2>&1 &
    echo $! >"$PIDFILE"
  fi
  if [ -n "${CONDOR_OWNER_PID:-}" ] && ! pid_alive "$WATCHDOG"; then
    CONDOR_ROOT=$R setsid bash -c '
      while kill -0 "$1" 2>/dev/null; do sleep 1; done
      CONDOR_WATCHDOG=1 exec "$2" stop' watchdog "$CONDOR_OWNER_PID" "$SELF" \
      </dev/null >/dev/null 2>&1 &
    echo $! >"$WATCHDOG"
  fi
  for _ in $(seq 1 240); do
    [ "$(slots)" -gt 0 ] && break
    pid_alive "$PIDFILE" || { log "condor_master exited"; tail -20 "$R/var/log/condor/MasterLog" >&2 || true; exit 1; }
    sleep 0.25
  done
  [ "$(slots)" -gt 0 ] || { log "no slot after 60 s"; tail -20 "$R/var/log/condor/MasterLog" >&2 || true; exit 1; }
  log "ready in $(ms_since "$t0") ms ($(chroot "$R" condor_version | head -1))"
}

do_stop() {
  local t0 p
  t0=$(date +%s%N)
  if [ -z "${CONDOR_WATCHDOG:-}" ] && pid_alive "$WATCHDOG"; then kill "$(cat "$WATCHDOG")" 2>/dev/null || true; fi
  rm -f "$WATCHDOG"
  if pid_alive "$PIDFILE"; then
    p=$(cat "$PIDFILE")
    chroot "$R" condor_off -master >/dev/null 2>&1 || kill "$p" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then log "condor_master ($p) did not stop; SIGKILL"; kill -9 "$p" || true; fi
  fi
  rm -f "$PIDFILE"
  mounts_down
  log "stopped in $(ms_since "$t0") ms"
}

case "${1:-}" in
  start) do_start ;;
  stop) do_stop ;;
  run)
    shift
    require
    exec chroot "$R" runuser -u tester -- "$@"
    ;;
  prefix) echo "chroot $R runuser -u tester --" ;;
  *)
    echo "usage: $0 start|stop|run CMD...|prefix" >&2
    exit 2
    ;;
esac
