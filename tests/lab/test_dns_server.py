"""dns/server.py against real namespaces (root): the agent-side Resolver serves 127.0.0.11:53
inside a namespace `mndns<hex>` and real clients there (glibc, getent, raw UDP/TCP) ask it.

The Resolver runs on its own asyncio loop in a background thread of this process (the test
process plays the agent; its namespace is the "root" one). A fake upstream DNS server on
127.0.0.1:<random> in that root namespace stands in for the host's resolvers: an endpoint
namespace has no route to it, so an answer from it proves the forward left from the agent's
side. Namespaces and /etc/netns files are removed in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from meshnet.dns.server import Resolver
from meshnet.dns.view import DnsView

# Sent from inside the namespace: one query, prints rcode/answers/tc/elapsed as JSON.
ASK = r"""
import json, socket, struct, sys, time
from dnslib import DNSRecord
name, qtype, proto = sys.argv[1:4]
q = DNSRecord.question(name, qtype).pack()
t0 = time.monotonic()
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(8)
        s.connect(("127.0.0.11", 53))    # connected: an ICMP "port unreachable" is reported
        s.send(q)
        data = s.recv(65535)
    else:
        s = socket.create_connection(("127.0.0.11", 53), timeout=8)
        s.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
        data = s.recv(n, socket.MSG_WAITALL)
except OSError as e:
    print(json.dumps({"error": type(e).__name__}))
    sys.exit(0)
r = DNSRecord.parse(data)
assert r.header.id == DNSRecord.parse(q).header.id
print(json.dumps({"rcode": r.header.rcode, "answers": [str(x.rdata) for x in r.rr], "tc": r.header.tc,
                  "elapsed": time.monotonic() - t0}))
"""


def sh(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


class LoopThread:
    """An asyncio loop in a background thread, as the agent's loop would be."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        async def wrap():
            return fn(*args)
        return self.run(wrap())

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class FakeUpstream:
    """A tiny DNS server on 127.0.0.1 (UDP and TCP, one port) in this process's namespace:
    `external.example` A 192.0.2.7, anything else NXDOMAIN. Counts what it was asked."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []
        for _ in range(20):
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.bind(("127.0.0.1", 0))
            self.port = self.tcp.getsockname()[1]
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.udp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.tcp.close()
                self.udp.close()
        self.tcp.listen(8)
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def _reply(self, data: bytes, proto: str) -> bytes:
        q = DNSRecord.parse(data)
        self.asked.append((str(q.q.qname), proto))
        r = q.reply()
        if str(q.q.qname).lower() == "external.example." and q.q.qtype == QTYPE.A:
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
        else:
            r.header.rcode = 3
        return r.pack()

    def _serve_udp(self):
        with contextlib.suppress(OSError):
            while True:
                data, addr = self.udp.recvfrom(65535)
                if not data:                     # shut down by close()
                    return
                self.udp.sendto(self._reply(data, "udp"), addr)

    def _serve_tcp(self):
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.tcp.accept()
                with conn:
                    n = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
                    out = self._reply(conn.recv(n, socket.MSG_WAITALL), "tcp")
                    conn.sendall(struct.pack("!H", len(out)) + out)

    def close(self):
        for s in (self.tcp, self.udp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def netns():
    name = f"mndns{secrets.token_hex(3)}"
    etc = Path("/etc/netns") / name
    try:
        sh("ip", "netns", "add", name)
        # An endpoint's overlay address on a veth (both ends inside): getaddrinfo's
        # AI_ADDRCONFIG (getent ahosts) wants a non-loopback IPv4 address.
        sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        sh("ip", "-n", name, "addr", "add", "10.10.1.2/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "peer0", "up")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.11\noptions ndots:0 timeout:3 attempts:1\n")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(etc, ignore_errors=True)


@pytest.fixture
def upstream():
    up = FakeUpstream()
    try:
        yield up
    finally:
        up.close()


@pytest.fixture
def agent():
    lt = LoopThread()
    resolver = lt.call(Resolver)
    try:
        yield lt, resolver
    finally:
        with contextlib.suppress(Exception):
            lt.run(resolver.close())
        lt.stop()


def ask(ns: str, name: str, qtype: str = "A", proto: str = "udp") -> dict:
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", ASK, name, qtype, proto, timeout=30)
    return json.loads(out.stdout)


def listeners_of_this_process(prefix: list[str]) -> list[str]:
    """ss lines for sockets on 127.0.0.11:53 held by this process (in the namespace `prefix` enters)."""
    out = sh(*prefix, "ss", "-Hlnutp", "src", "127.0.0.11", "sport", "=", ":53").stdout.splitlines()
    return [ln for ln in out if f"pid={os.getpid()}," in ln]


def view(upstream_port: int, **a) -> DnsView:
    return DnsView(
        a={"backend": ("10.10.1.3", "10.10.1.4"), "tasks.backend": ("10.10.1.3", "10.10.1.4"),
           "backend.1": ("10.10.1.3",), **a},
        ptr={"10.10.1.3": "backend.1", "10.10.1.4": "backend.2"},
        forwarders=(f"127.0.0.1:{upstream_port}",),
        subnets=("10.10.1.0/24",),
    )


def test_resolver_in_a_namespace(netns, upstream, agent):
    lt, resolver = agent
    path = f"/run/netns/{netns}"
    lt.run(resolver.add("ep1", path, view(upstream.port)))
    lt.run(resolver.add("ep1", path, view(upstream.port)))           # idempotent

    # Served inside the namespace (UDP and TCP), and nothing of ours in the root namespace.
    assert len(listeners_of_this_process(["ip", "netns", "exec", netns])) == 2
    assert listeners_of_this_process([]) == []

    # glibc through /etc/netns/NS/resolv.conf, as any program in the endpoint would ask.
    out = sh("ip", "netns", "exec", netns, "python3", "-c",
             "import socket;print(socket.gethostbyname('backend'))").stdout.split()
    assert out[0] in ("10.10.1.3", "10.10.1.4")
    assert set(sh("ip", "netns", "exec", netns, "getent", "ahostsv4", "tasks.backend").stdout.split()) \
        >= {"10.10.1.3", "10.10.1.4"}
    assert sh("ip", "netns", "exec", netns, "getent", "hosts", "backend.1").stdout.split() == \
        ["10.10.1.3", "backend.1"]
    assert sh("ip", "netns", "exec", netns, "getent", "hosts", "10.10.1.4").stdout.split() == \
        ["10.10.1.4", "backend.2"]
    assert sh("ip", "netns", "exec", netns, "getent", "hosts", "nope", check=False).returncode == 2

    # Raw queries over UDP and TCP.
    for proto in ("udp", "tcp"):
        r = ask(netns, "backend", "A", proto)
        assert r["rcode"] == 0 and sorted(r["answers"]) == ["10.10.1.3", "10.10.1.4"], r
        assert ask(netns, "BACKEND.", "AAAA", proto) | {"elapsed": 0} == \
            {"rcode": 0, "answers": [], "tc": 0, "elapsed": 0}
        assert ask(netns, "nope", "A", proto)["rcode"] == 3
        assert ask(netns, "tasks.nope", "A", proto)["rcode"] == 3
        assert ask(netns, "3.1.10.10.in-addr.arpa", "PTR", proto)["answers"] == ["backend.1."]
        assert ask(netns, "99.1.10.10.in-addr.arpa", "PTR", proto)["rcode"] == 3
    firsts = {ask(netns, "backend")["answers"][0] for _ in range(4)}
    assert firsts == {"10.10.1.3", "10.10.1.4"}                        # round robin
    while ask(netns, "backend")["answers"][0] != "10.10.1.3":
        pass
    lt.call(resolver.update, "ep1", view(upstream.port))                # equal view: rotation goes on
    assert ask(netns, "backend")["answers"][0] == "10.10.1.4"
    assert not upstream.asked                                          # none of that left

    # External names go to the upstream in the agent's namespace, over the client's transport.
    for proto in ("udp", "tcp"):
        r = ask(netns, "external.example", "A", proto)
        assert r["rcode"] == 0 and r["answers"] == ["192.0.2.7"], r
        assert ask(netns, "missing.example", "A", proto)["rcode"] == 3     # upstream's NXDOMAIN relayed
    assert ("external.example.", "udp") in upstream.asked and ("external.example.", "tcp") in upstream.asked
    assert sh("ip", "netns", "exec", netns, "getent", "ahostsv4", "external.example").stdout.split()[0] == \
        "192.0.2.7"
    assert resolver.queries > 20 and resolver.nxdomain >= 4 and resolver.forward_errors == 0

    # update() changes the answers from the next query on.
    lt.call(resolver.update, "ep1", view(upstream.port, backend=("10.10.1.9",)))
    assert ask(netns, "backend")["answers"] == ["10.10.1.9"]
    lt.call(resolver.update, "ep1", DnsView(a={"db": ("10.10.1.20",)}, forwarders=view(1).forwarders))
    assert ask(netns, "backend")["rcode"] == 3
    assert ask(netns, "db", proto="tcp")["answers"] == ["10.10.1.20"]

    # remove() closes both sockets; add() after it serves again.
    lt.run(resolver.remove("ep1"))
    assert listeners_of_this_process(["ip", "netns", "exec", netns]) == []
    assert ask(netns, "db", proto="udp") == {"error": "ConnectionRefusedError"}
    assert ask(netns, "db", proto="tcp") == {"error": "ConnectionRefusedError"}
    assert resolver.keys() == []
    lt.run(resolver.add("ep1", path, view(upstream.port)))
    assert ask(netns, "backend.1")["answers"] == ["10.10.1.3"]


def test_dead_forwarders_give_servfail_quickly(netns, agent):
    lt, resolver = agent
    refused = free_udp_port()                                   # nothing listens: ICMP refused
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # listens, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        dead = DnsView(a={"backend": ("10.10.1.3",)}, forwarders=(f"127.0.0.1:{refused}",))
        lt.run(resolver.add("ep", f"/run/netns/{netns}", dead))
        for proto in ("udp", "tcp"):
            r = ask(netns, "external.example", "A", proto)
            assert r["rcode"] == 2 and r["elapsed"] < 1, r
        lt.call(resolver.update, "ep", DnsView(forwarders=(f"127.0.0.1:{silent.getsockname()[1]}",)))
        t0 = time.monotonic()
        r = ask(netns, "external.example", "A", "udp")
        assert r["rcode"] == 2 and 1.5 < r["elapsed"] < 3, r
        assert time.monotonic() - t0 < 5
        lt.call(resolver.update, "ep", DnsView())                 # no forwarders at all
        assert ask(netns, "external.example")["rcode"] == 2
        assert resolver.forward_errors == 4
        # Garbage does not stop it.
        sh("ip", "netns", "exec", netns, sys.executable, "-c",
           "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
           "[s.sendto(b, ('127.0.0.11',53)) for b in (b'', b'x', b'\\x00'*12, b'\\xff'*40)]")
        lt.call(resolver.update, "ep", dead)
        assert ask(netns, "backend")["answers"] == ["10.10.1.3"]
    finally:
        silent.close()


def test_add_fails_cleanly_on_a_missing_namespace(agent):
    lt, resolver = agent
    with pytest.raises(Exception, match="mndnsmissing"):
        lt.run(resolver.add("x", "/run/netns/mndnsmissing", DnsView()))
    assert resolver.keys() == []
    assert listeners_of_this_process([]) == []
