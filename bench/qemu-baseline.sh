#!/bin/sh
# The qemu baseline: how long the kernel takes to boot an init that powers off at once.
#
#   bench/qemu-baseline.sh KERNEL [RUNS]
#
# KERNEL is what goes to -kernel: a bzImage (vmlinuz) or the ELF vmlinux that the runner
# extracts (booted through its PVH note). Prints the wall-clock seconds from starting qemu to
# its exit, one line per run (RUNS, default 1). Exits non-zero when the guest did not reach
# its init (a panic, a timeout), printing the console's last lines on stderr.
#
# The initramfs: /bin/busybox (busybox-static) and /init = `busybox poweroff -f`.
# Environment:
#   QEMU            the qemu binary            (default: qemu-system-x86_64)
#   BUSYBOX         a static busybox           (default: /bin/busybox)
#   BASELINE_ACCEL  the -accel value           (default: tcg,thread=multi; pass the runner's choice
#                   when comparing: on this kind of machine /dev/kvm exists but KVM aborts with
#                   "failed to set MSR 0x10a" under -cpu max/host, so TCG is what pods use)
#   BASELINE_MEM    -m                         (default: 512)
#   BASELINE_SMP    -smp, when set             (default: qemu's, 1)
#   BASELINE_MACHINE -machine                  (default: q35; pass the runner's, e.g. q35,hpet=off,…)
#   BASELINE_CPU    -cpu                       (default: max)
#   BASELINE_APPEND the kernel command line    (default: console=ttyS0 panic=-1; it must keep a
#                   serial console, console=ttyS0, for the init's line to be seen)
#   BASELINE_SHOW_INIT=1  print "WALL INIT" per run: INIT is the guest's /proc/uptime when its
#                   init ran (seconds since the kernel started)
#   BASELINE_TIMEOUT seconds before a run is called hung (default: 120)
# The command line is the one below (defaults: q35, -cpu max), -nographic, -no-reboot,
# console=ttyS0 panic=-1, virtio-rng (docs/microvm.md#pitfall-1).
set -eu

usage() { echo "usage: $0 KERNEL [RUNS]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
kernel=$1
runs=${2:-1}
case $runs in ''|*[!0-9]*) usage ;; esac
[ -r "$kernel" ] || { echo "$0: cannot read the kernel '$kernel'" >&2; exit 2; }

qemu=${QEMU:-qemu-system-x86_64}
busybox=${BUSYBOX:-/bin/busybox}
command -v "$qemu" >/dev/null 2>&1 || { echo "$0: $qemu is not installed (Debian: apt-get install qemu-system-x86)" >&2; exit 2; }
command -v cpio >/dev/null 2>&1 || { echo "$0: cpio is not installed (Debian: apt-get install cpio)" >&2; exit 2; }
[ -x "$busybox" ] || { echo "$0: $busybox is missing (Debian: apt-get install busybox-static)" >&2; exit 2; }
accel=${BASELINE_ACCEL:-tcg,thread=multi}

work=$(mktemp -d "${TMPDIR:-/tmp}/qemu-baseline.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/root/bin" "$work/root/dev" "$work/root/proc"
cp "$busybox" "$work/root/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\nread -r up _ < /proc/uptime\n/bin/busybox echo "baseline-init-reached at $up"\n/bin/busybox poweroff -f\n' > "$work/root/init"
chmod 0755 "$work/root/init" "$work/root/bin/busybox"
(cd "$work/root" && find . | cpio -o -H newc --quiet -R 0:0) > "$work/initramfs.cpio"

set -- -machine "${BASELINE_MACHINE:-q35}" -accel "$accel" -cpu "${BASELINE_CPU:-max}" -m "${BASELINE_MEM:-512}"
[ -n "${BASELINE_SMP:-}" ] && set -- "$@" -smp "$BASELINE_SMP"
set -- "$@" -nographic -no-reboot -kernel "$kernel" -initrd "$work/initramfs.cpio" \
    -append "${BASELINE_APPEND:-console=ttyS0 panic=-1}" -device virtio-rng-pci

i=0
while [ "$i" -lt "$runs" ]; do
    i=$((i + 1))
    start=$(date +%s.%N)
    status=0
    timeout "${BASELINE_TIMEOUT:-120}" "$qemu" "$@" </dev/null >"$work/console" 2>&1 || status=$?
    end=$(date +%s.%N)
    if [ "$status" -ne 0 ] || ! grep -q baseline-init-reached "$work/console" || grep -q 'Kernel panic' "$work/console"; then
        echo "$0: run $i failed (qemu status $status); the console's last lines:" >&2
        tail -n 15 "$work/console" | tr -d '\r' >&2
        exit 1
    fi
    if [ -n "${BASELINE_SHOW_INIT:-}" ]; then
        init=$(tr -d '\r' < "$work/console" | sed -n 's/.*baseline-init-reached at \([0-9.]*\).*/\1/p' | head -n 1)
        awk -v s="$start" -v e="$end" -v i="${init:-nan}" 'BEGIN { printf "%.2f %s\n", e - s, i }'
    else
        awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f\n", e - s }'
    fi
done
