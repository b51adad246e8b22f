#!/bin/bash
# PID 1 inside the qemu guest, after switch_root into the Debian rootfs.
#
# Runs pytest on the read-only checkout at /src, writes pytest's exit code
# and JUnit XML to /results (a writable 9p share the host reads), powers off.
# Extra pytest arguments come from /results/args (NUL-separated).
set -u

export PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# /src is read-only: keep hypothesis' example database off it.
export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
# The venv has meshnet's dependencies, not meshnet: the checkout is the package,
# also for the agents the lab tests start (`python -m meshnet agent`, from /).
export PYTHONPATH=/src

mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname meshnet-kernel
ip link set lo up

args=()
if [ -s /results/args ]; then
    mapfile -d '' args < /results/args
fi

echo "MESHNET-KERNEL: guest up, kernel $(uname -r), running pytest"
cd /src
# A first argument naming a file (e.g. the bench-only tests/kernel/bench_throughput.py,
# which CI never collects) runs that file instead of the whole tests/kernel.
where=(tests/kernel)
if [ ${#args[@]} -gt 0 ] && [[ ${args[0]} == *.py ]] && [ -f "${args[0]}" ]; then
    where=()
fi
python -m pytest -m kernel -p no:cacheprovider --color=no --junitxml=/results/junit.xml \
    "${where[@]}" "${args[@]}"
rc=$?
echo "$rc" > /results/rc
sync
echo o > /proc/sysrq-trigger
sleep 10
