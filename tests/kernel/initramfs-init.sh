#!/bin/busybox sh
# /init of the guest's initramfs (built by tests/kernel/run).
#
# Loads the modules listed in /etc/modules.order (already in insmod order),
# mounts the Debian rootfs, the project checkout, the results dir and the
# kernel's module tree over 9p, then switch_roots into the rootfs and runs
# tests/kernel/guest-run.sh from the checkout as PID 1.
#
# Note: busybox sh runs its own applets whatever PATH says, so the real
# iproute2 `ip` is called by its full path (/usr/sbin/ip).

/bin/busybox --install -s /bin
export PATH=/bin

die() {
    echo "initramfs: $*"
    echo "MESHNET-KERNEL: initramfs failed"
    echo o > /proc/sysrq-trigger
    sleep 10
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

while read -r mod; do
    insmod "$mod" || echo "initramfs: insmod $mod failed"
done < /etc/modules.order

/usr/sbin/ip link set lo up || die "the real ip binary does not run"

opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /newroot
# cache=loose: the host does not touch the rootfs during a run, and it makes
# Python's many small reads (imports) a lot faster over 9p.
mount -t 9p -o "$opts,cache=loose" rootfs /newroot || die "cannot mount rootfs"
mount -t 9p -o "$opts,ro,cache=loose" src /newroot/src || die "cannot mount src"
mount -t 9p -o "$opts" results /newroot/results || die "cannot mount results"
mount -t 9p -o "$opts,ro,cache=loose" modules /newroot/lib/modules \
    || die "cannot mount modules"

mount -o move /dev /newroot/dev
mount -o move /proc /newroot/proc
mount -o move /sys /newroot/sys

exec switch_root /newroot /bin/bash /src/tests/kernel/guest-run.sh
die "switch_root failed"
