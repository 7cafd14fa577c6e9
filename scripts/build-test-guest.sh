#!/bin/sh
# Build vmctl's tiny test guest: Debian's stock kernel (taken from the
# linux-image .deb without installing it) and a busybox-static initramfs.
#
# Outputs in OUTDIR (default: <repo>/target/test-guest):
#   vmlinux    uncompressed ELF kernel; QEMU boots it through its PVH entry
#              point, which skips firmware and in-guest decompression (about
#              twice as fast under TCG as the bzImage)
#   vmlinuz    the bzImage it came from (fallback)
#   initrd.gz  the initramfs with /init described below
#
# The guest's /init (kernel command line switches in brackets):
#   * mounts proc/sys/devtmpfs, loads virtio net/blk, the ACPI button and evdev;
#   * reads its MAC from eth0 and derives the IPv4 address by vmctl's rule
#     MAC 52:54:AA:BB:CC:DD -> AA.BB.CC.DD (decimal), gateway AA.BB.CC.1;
#     [ipfrommac=1] also configures eth0 with it (/24, default route);
#   * [writedisk=1] writes a marker to the start of /dev/vda and prints
#     "GUEST-DISK-WRITTEN";
#   * opens the power button's evdev node, and only THEN prints
#     "GUEST-READY mac=<mac> ip=<ip> uptime=<s>" (evdev queues events only for
#     readers that have it open: announcing readiness first loses an early
#     system_powerdown);
#   * on the ACPI power button (QMP system_powerdown) prints
#     "GUEST-POWERBUTTON" and powers off; [poweroffafter=N] powers off on its
#     own after N seconds instead of waiting forever.
#
# Skips all work when the outputs exist and were built by this version of the
# script. Needs apt sources with an up-to-date list (apt-get update), busybox-
# static, xz-utils and gzip (scripts/install-qemu.sh installs them). Root is not
# needed.
#
# usage: scripts/build-test-guest.sh [OUTDIR]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../target/test-guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAMP="$OUT/.build-stamp"
WANT=$(cksum < "$0" | cut -d' ' -f1)

if [ -s "$OUT/vmlinux" ] && [ -s "$OUT/initrd.gz" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  echo "build-test-guest: up to date in $OUT"
  exit 0
fi

BB=/bin/busybox
if ! [ -x "$BB" ] || ! "$BB" --list | grep -qx cpio; then
  echo "build-test-guest: needs busybox-static at $BB (run scripts/install-qemu.sh)" >&2
  exit 1
fi
for tool in xz gzip dpkg-deb apt-get apt-cache od; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-test-guest: needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. The kernel package behind the linux-image-amd64 metapackage.
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$KPKG" ]; then
  echo "build-test-guest: cannot resolve linux-image-amd64 (run apt-get update first)" >&2
  exit 1
fi
KVER=${KPKG#linux-image-}
DEB=$(ls "$OUT/${KPKG}"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$DEB" ]; then
  rm -f "$OUT"/linux-image-*.deb
  echo "build-test-guest: downloading $KPKG"
  (cd "$WORK" && apt-get download -q "$KPKG" 2>&1 | grep -v 'unsandboxed' || true)
  mv "$WORK/${KPKG}"_*.deb "$OUT/" 2>/dev/null || { echo "build-test-guest: apt-get download $KPKG failed" >&2; exit 1; }
  DEB=$(ls "$OUT/${KPKG}"_*.deb | head -1)
fi

# Load order matters: virtio_ring before virtio, failover before net_failover.
MODS="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover
drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk
drivers/acpi/button drivers/input/evdev"
WANTED="./boot/vmlinuz-$KVER"
for m in $MODS; do WANTED="$WANTED ./lib/modules/$KVER/kernel/$m.ko"; done
# shellcheck disable=SC2086
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK" $WANTED
cp "$WORK/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

# 2. vmlinux from the bzImage payload. The x86 boot header gives its place:
#    setup_sects (u8 at 0x1f1; 0 means 4), payload_offset (u32 at 0x248) and
#    payload_length (u32 at 0x24c); the payload starts after the setup code,
#    at (setup_sects + 1) * 512 + payload_offset.
u8() { od -An -tu1 -j "$1" -N1 "$OUT/vmlinuz" | tr -d ' '; }
u32() { od -An -tu4 -j "$1" -N4 "$OUT/vmlinuz" | tr -d ' '; }
SETUP=$(u8 $((0x1f1))); [ "$SETUP" -eq 0 ] && SETUP=4
POFF=$(u32 $((0x248))); PLEN=$(u32 $((0x24c)))
START=$(( (SETUP + 1) * 512 + POFF ))
tail -c +$((START + 1)) "$OUT/vmlinuz" | head -c "$PLEN" > "$WORK/payload"
MAGIC=$(od -An -tx1 -N6 "$WORK/payload" | tr -d ' ')
case "$MAGIC" in
  fd377a585a00) xz -dc --single-stream < "$WORK/payload" > "$WORK/vmlinux" 2>/dev/null || true ;;
  1f8b*) gzip -dc < "$WORK/payload" > "$WORK/vmlinux" 2>/dev/null || true ;;
  28b52ffd*) zstd -dc < "$WORK/payload" > "$WORK/vmlinux" 2>/dev/null || true ;;
  *) echo "build-test-guest: unknown kernel payload compression (magic $MAGIC)" >&2; exit 1 ;;
esac
if [ "$(od -An -tx1 -N4 "$WORK/vmlinux" | tr -d ' ')" != 7f454c46 ]; then
  echo "build-test-guest: vmlinux extraction from $OUT/vmlinuz failed" >&2
  exit 1
fi
mv "$WORK/vmlinux" "$OUT/vmlinux"

# 3. The initramfs.
R=$WORK/root
mkdir -p "$R/bin" "$R/lib/modules" "$R/proc" "$R/sys" "$R/dev" "$R/tmp"
cp "$BB" "$R/bin/busybox"
ORDER=""
for m in $MODS; do
  cp "$WORK/lib/modules/$KVER/kernel/$m.ko" "$R/lib/modules/"
  ORDER="$ORDER ${m##*/}"
done

{
  echo '#!/bin/busybox sh'
  echo "MODULES=\"$ORDER\""
  cat <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $MODULES; do insmod "/lib/modules/$m.ko" 2>/dev/null; done

# cmdline KEY -> its value ("" when absent)
cmdline() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}" ;; esac; done; }

# Wait up to ~2 s for the power button's input device.
PB=""
i=0
while [ $i -lt 200 ] && [ -z "$PB" ]; do
  for e in /sys/class/input/event*; do
    if [ -r "$e/device/name" ] && grep -q 'Power Button' "$e/device/name" && [ -e "/dev/input/${e##*/}" ]; then
      PB=/dev/input/${e##*/}
    fi
  done
  [ -n "$PB" ] || usleep 10000
  i=$((i + 1))
done

# Network identity from the MAC: 52:54:AA:BB:CC:DD -> AA.BB.CC.DD, gateway AA.BB.CC.1
MAC=$(cat /sys/class/net/eth0/address 2>/dev/null || echo none)
IP=none
if [ "$MAC" != none ]; then
  set -- $(echo "$MAC" | tr ':' ' ')
  IP=$(printf '%d.%d.%d.%d' "0x$3" "0x$4" "0x$5" "0x$6")
  if [ "$(cmdline ipfrommac)" = 1 ]; then
    GW=$(printf '%d.%d.%d.1' "0x$3" "0x$4" "0x$5")
    ip link set lo up
    ip link set eth0 up
    ip addr add "$IP/24" dev eth0
    ip route add default via "$GW" dev eth0
  fi
fi

if [ "$(cmdline writedisk)" = 1 ]; then
  if [ -b /dev/vda ] && echo "VMCTL-GUEST-WAS-HERE" | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null; then
    echo "GUEST-DISK-WRITTEN"
  else
    echo "GUEST-DISK-WRITE-FAILED"
  fi
fi

# Open the button BEFORE announcing readiness (see the header of the build script).
[ -n "$PB" ] && exec 3<"$PB"
echo "GUEST-READY mac=$MAC ip=$IP uptime=$(cut -d' ' -f1 /proc/uptime)"

AFTER=$(cmdline poweroffafter)
if [ -n "$AFTER" ]; then
  sleep "$AFTER"
  echo "GUEST-POWEROFF-TIMER"
elif [ -n "$PB" ]; then
  dd of=/dev/null bs=24 count=1 <&3 2>/dev/null
  echo "GUEST-POWERBUTTON"
else
  echo "GUEST-NO-POWERBUTTON: sleeping forever"
  while :; do sleep 3600; done
fi
sync
poweroff -f
EOF
} > "$R/init"
chmod +x "$R/init"
(cd "$R" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -9 > "$OUT/initrd.gz")

echo "$WANT" > "$STAMP"
echo "build-test-guest: built $KPKG into $OUT"
ls -l "$OUT/vmlinux" "$OUT/vmlinuz" "$OUT/initrd.gz"
