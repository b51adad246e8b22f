"""Tunnels a user might pick instead of meshnet, each in its own pair of namespaces.

Every pair is two namespaces `mnbHEX-a` / `mnbHEX-b` joined by a veth pair (the
"underlay", 10.246.0.1 <-> 10.246.0.2); the tunnel's inner addresses are
10.243.0.1 <-> 10.243.0.2. Each context manager yields the argv prefixes that run a
command in side a / side b and the inner address of side b, and removes the
namespaces, processes and files on the way out, also when something failed.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

UNDER = {"a": "10.246.0.1", "b": "10.246.0.2"}
INNER = {"a": "10.243.0.1", "b": "10.243.0.2"}


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


@dataclass
class Pair:
    name: str

    def ns(self, side: str) -> str:
        return f"{self.name}-{side}"

    def enter(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(side)]

    def sh(self, side: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        return _run([*self.enter(side), *argv], **kw)


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    """Two namespaces joined by a veth pair, removed afterwards."""
    p = Pair(f"mnb{secrets.token_hex(3)}")
    procs: list[subprocess.Popen] = []
    p.procs = procs  # type: ignore[attr-defined]
    try:
        for side in ("a", "b"):
            _run(["ip", "netns", "add", p.ns(side)])
            p.sh(side, "ip", "link", "set", "lo", "up")
        _run(["ip", "link", "add", "mnbva", "netns", p.ns("a"), "type", "veth", "peer", "name", "mnbvb",
              "netns", p.ns("b")])
        for side in ("a", "b"):
            p.sh(side, "ip", "addr", "add", f"{UNDER[side]}/24", "dev", f"mnbv{side}")
            p.sh(side, "ip", "link", "set", f"mnbv{side}", "up")
        yield p
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for side in ("a", "b"):
            pids = subprocess.run(["ip", "netns", "pids", p.ns(side)], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", p.ns(side)], capture_output=True)


def _wait_ping(p: Pair, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run([*p.enter("a"), "ping", "-c", "1", "-W", "1", INNER["b"]],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what}: no ping over the tunnel within {timeout:.0f} s")


@contextlib.contextmanager
def nebula() -> Iterator[Pair]:
    """Nebula (Debian's package), two hosts with static_host_map, no lighthouse, allow-all."""
    tmp = Path(tempfile.mkdtemp(prefix="mnb-nebula-"))
    try:
        with pair() as p:
            _run(["nebula-cert", "ca", "-name", "mnbench", "-out-crt", str(tmp / "ca.crt"),
                  "-out-key", str(tmp / "ca.key")])
            for side, peer in (("a", "b"), ("b", "a")):
                _run(["nebula-cert", "sign", "-ca-crt", str(tmp / "ca.crt"), "-ca-key", str(tmp / "ca.key"),
                      "-name", side, "-ip", f"{INNER[side]}/24", "-out-crt", str(tmp / f"{side}.crt"),
                      "-out-key", str(tmp / f"{side}.key")])
                (tmp / f"{side}.yml").write_text(f"""\
pki:
  ca: {tmp / 'ca.crt'}
  cert: {tmp / f'{side}.crt'}
  key: {tmp / f'{side}.key'}
static_host_map:
  "{INNER[peer]}": ["{UNDER[peer]}:4242"]
lighthouse:
  am_lighthouse: false
listen:
  host: 0.0.0.0
  port: 4242
punchy:
  punch: false
tun:
  dev: mnbneb
  mtu: 1300
logging:
  level: warning
firewall:
  outbound: [{{port: any, proto: any, host: any}}]
  inbound: [{{port: any, proto: any, host: any}}]
""")
                p.procs.append(subprocess.Popen([*p.enter(side), "nebula", "-config",
                                                 str(tmp / f"{side}.yml")],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_ping(p, "nebula")
            yield p
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def tinc() -> Iterator[Pair]:
    """tinc 1.0 (Debian's package) in switch mode, a connects to b, keys made with -K."""
    tmp = Path(tempfile.mkdtemp(prefix="mnb-tinc-"))
    try:
        with pair() as p:
            for side in ("a", "b"):
                d = tmp / side
                (d / "hosts").mkdir(parents=True)
                (d / "tinc.conf").write_text(f"Name = {side}\nMode = switch\nInterface = mnbtinc\n"
                                             f"AddressFamily = ipv4\nBindToAddress = {UNDER[side]}\n"
                                             + ("ConnectTo = b\n" if side == "a" else ""))
                (d / "hosts" / side).write_text(f"Address = {UNDER[side]}\nPort = 655\n")
                up = d / "tinc-up"
                up.write_text("#!/bin/sh\nip link set $INTERFACE up\n"
                              f"ip addr add {INNER[side]}/24 dev $INTERFACE\n")
                up.chmod(0o755)
                _run(["tincd", "-c", str(d), "-K", "2048"], stdin=subprocess.DEVNULL)
            for side, peer in (("a", "b"), ("b", "a")):
                shutil.copy(tmp / peer / "hosts" / peer, tmp / side / "hosts" / peer)
            for side in ("a", "b"):
                d = tmp / side
                p.procs.append(subprocess.Popen([*p.enter(side), "tincd", "-c", str(d), "-D",
                                                 f"--pidfile={d / 'pid'}", f"--logfile={d / 'log'}"],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_ping(p, "tinc")
            yield p
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def plain_vxlan(enter_a: list[str], enter_b: list[str], ip_a: str, ip_b: str) -> Iterator[str]:
    """A VXLAN pair with no encryption between two lab hosts' underlay addresses, on its own
    VNI, port and device names (mnbvx0, VNI 4999, port 4799); yields side b's inner address."""
    inner = {"a": "10.242.0.1", "b": "10.242.0.2"}
    sides = (("a", enter_a, ip_a, ip_b), ("b", enter_b, ip_b, ip_a))
    try:
        for side, enter, local, remote in sides:
            _run([*enter, "ip", "link", "add", "mnbvx0", "type", "vxlan", "id", "4999", "local", local,
                  "remote", remote, "dstport", "4799"])
            _run([*enter, "ip", "addr", "add", f"{inner[side]}/24", "dev", "mnbvx0"])
            _run([*enter, "ip", "link", "set", "mnbvx0", "up"])
        yield inner["b"]
    finally:
        for _side, enter, _l, _r in sides:
            subprocess.run([*enter, "ip", "link", "del", "mnbvx0"], capture_output=True)
