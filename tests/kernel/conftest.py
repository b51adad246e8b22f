"""Fixtures for the `kernel` tests.

These tests need a kernel with WireGuard and ESP, so they run inside the qemu
guest that tests/kernel/run boots. On the host they are deselected by marker
(`pytest -m "not kernel"`); nothing here touches the system at import time.

Every namespace (and the veth named after it) is called `mnk` + a random
suffix and is removed at teardown, also when a test fails.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# Underlay addresses of the two ends of the veth.
UNDERLAY = ("10.201.0.1", "10.201.0.2")


@dataclass(frozen=True)
class Side:
    """One end of the pair: a namespace and its veth (named like the namespace)."""

    ns: str
    addr: str  # underlay IPv4 address on the veth

    def run(self, *cmd: str, timeout: float = 60) -> str:
        return run_in(self.ns, *cmd, timeout=timeout)

    def capture(self, bpf: str = "ip"):
        return capture(self.ns, self.ns, bpf)


def run_in(ns: str, *cmd: str, timeout: float = 60) -> str:
    """Run a command inside namespace `ns`; raise with its output on failure."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        raise AssertionError(f"{' '.join(cmd)} in {ns} exited {proc.returncode}:\n{output}")
    return proc.stdout


@pytest.fixture
def ns_pair() -> Iterator[tuple[Side, Side]]:
    """Two fresh namespaces joined by a veth, with addresses and links up."""
    from pyroute2 import IPRoute, netns

    suffix = secrets.token_hex(4)
    names = (f"mnk{suffix}a", f"mnk{suffix}b")
    created: list[str] = []
    try:
        for name in names:
            netns.create(name)
            created.append(name)
        with IPRoute() as ipr:
            ipr.link("add", ifname=names[0], kind="veth", peer=names[1])
            for name in names:
                (idx,) = ipr.link_lookup(ifname=name)
                ipr.link("set", index=idx, net_ns_fd=name)
        for name, addr in zip(names, UNDERLAY, strict=True):
            with IPRoute(netns=name) as ipr:
                (lo,) = ipr.link_lookup(ifname="lo")
                ipr.link("set", index=lo, state="up")
                (idx,) = ipr.link_lookup(ifname=name)
                ipr.addr("add", index=idx, address=addr, prefixlen=24)
                ipr.link("set", index=idx, state="up")
        yield Side(names[0], UNDERLAY[0]), Side(names[1], UNDERLAY[1])
    finally:
        # Removing a namespace destroys the interfaces and xfrm state in it.
        for name in created:
            netns.remove(name)
        # A veth end that never got moved is still in the current namespace.
        with IPRoute() as ipr:
            for name in names:
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)


@contextmanager
def capture(ns: str, ifname: str, bpf: str = "ip") -> Iterator[list[str]]:
    """Capture packets on `ifname` in `ns` with tcpdump.

    Yields a list that is filled, after the block, with tcpdump's one-line
    summaries of the packets seen (IPv4 only by default, so IPv6 neighbour
    discovery and ARP do not get in the way).
    """
    pcap = Path(f"/tmp/{ns}-{ifname}.pcap")
    # -U writes each packet out at once; -Z root keeps tcpdump from dropping
    # to a user that could not write the file.
    cmd = ["tcpdump", "-Z", "root", "-i", ifname, "-n", "-U", "-w", str(pcap), bpf]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    packets: list[str] = []
    try:
        # tcpdump says "listening on ..." once the capture is armed.
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on" in line, f"tcpdump did not start: {line}"
        yield packets
        time.sleep(0.5)  # let the last packets reach the capture file
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout
    pcap.unlink()
    packets.extend(out.splitlines())
