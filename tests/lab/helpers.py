"""Small helpers for lab tests: run things on hosts, read the cluster as a host sees it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meshnet.lab import Lab

MESHNET = [sys.executable, "-m", "meshnet"]


def sh(lab: Lab, k: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return lab.exec(k, list(argv), capture_output=True, text=True, timeout=timeout)


def meshnet(lab: Lab, k: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return sh(lab, k, *MESHNET, *argv, timeout=timeout)


def nodes(lab: Lab, k: int) -> list[dict]:
    return lab.client(k).get("/v1/nodes")["nodes"]


def transit_ips(lab: Lab, k: int) -> dict[str, str]:
    return {n["name"]: n["transit_ip"] for n in nodes(lab, k) if n["state"] == "active"}


def ping(lab: Lab, k: int, ip: str, count: int = 1, size: int = 56, timeout: int = 2,
         pattern: str | None = None) -> bool:
    extra = ["-p", pattern] if pattern else []
    argv = ["ping", "-c", str(count), "-s", str(size), "-W", str(timeout), *extra, ip]
    return sh(lab, k, *argv).returncode == 0


def wg_peers(lab: Lab, k: int) -> set[str]:
    out = sh(lab, k, "wg", "show", "mnet0", "peers")
    return set(out.stdout.split()) if out.returncode == 0 else set()


@contextlib.contextmanager
def capture(prefix: list[str], ifname: str, path: Path, bpf: str = "ip"):
    """tcpdump on `ifname` (in the namespaces `prefix` enters) into `path` while the block runs.

    Waits until tcpdump says it is listening, so nothing sent inside the block is missed,
    and gives it a moment at the end to write the last packets. On the lab LAN, capture
    on "any" (every bridge port): a bridge device itself sees only flooded frames, not
    the unicast it forwards from port to port once it has learned the MACs.
    """
    proc = subprocess.Popen([*prefix, "tcpdump", "-i", ifname, "-n", "-U", "-w", str(path), bpf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        while not said or "listening on" not in said[-1]:  # "tcpdump: listening on IF, ..."
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"tcpdump did not start on {ifname}: {' '.join(said)}")
            said.append(line.strip())
        time.sleep(0.5)  # "listening" comes a moment before the socket sees packets
        yield path
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_pcap(path: Path) -> list[str]:
    """One line per packet, as tcpdump -q prints them."""
    return subprocess.run(["tcpdump", "-r", str(path), "-n", "-q"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def between_hosts(lines: list[str]) -> list[str]:
    """Packets of the mesh itself: drops LAN discovery (mDNS on 5353, its IGMP joins), the
    one protocol besides WireGuard that meshnet speaks on the LAN (it carries only the
    cluster's hash, the node id and the join port)."""
    return [ln for ln in lines if ".5353 " not in ln and ".5353:" not in ln and "igmp" not in ln]


# A TCP sink: `SINK BIND_IP PORT` prints "ready" once listening, then "<bytes> <sha256>".
SINK = ("import hashlib,socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(1);print('ready',flush=True);c,_=s.accept()\n"
        "h=hashlib.sha256();n=0\n"
        "while True:\n b=c.recv(1<<16)\n if not b: break\n h.update(b);n+=len(b)\n"
        "print(n,h.hexdigest(),flush=True)")
# `SOURCE DST PORT CHUNKS PAUSE` sends CHUNKS x 64 KiB of pseudo-random bytes, pausing PAUSE s
# between chunks, and prints "<bytes> <sha256>".
SOURCE = ("import hashlib,random,socket,sys,time;r=random.Random(7);h=hashlib.sha256();n=0\n"
          "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=30)\n"
          "for _ in range(int(sys.argv[3])):\n b=r.randbytes(1<<16);c.sendall(b);h.update(b);n+=len(b)\n"
          " time.sleep(float(sys.argv[4]))\n"
          "c.close();print(n,h.hexdigest(),flush=True)")


def bulk_transfer(lab: Lab, a: int, src_ep: str, b: int, dst_ep: str, dst_ip: str, port: int,
                  chunks: int = 256) -> None:
    """Send `chunks` x 64 KiB from endpoint `src_ep` on host a to `dst_ep` on host b, and
    check that every byte arrived intact (count and SHA-256 on both ends)."""
    sink = subprocess.Popen([*lab.enter(b), *MESHNET, "exec", dst_ep, "--", "python3", "-c",
                             SINK, "0.0.0.0", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        sent = subprocess.run([*lab.enter(a), *MESHNET, "exec", src_ep, "--", "python3", "-c", SOURCE,
                               dst_ip, str(port), str(chunks), "0"], capture_output=True, text=True,
                              timeout=120)
        assert sent.returncode == 0, sent.stderr
        got, _ = sink.communicate(timeout=60)
    finally:
        sink.kill()
    assert got.split() == sent.stdout.split() and int(got.split()[0]) == chunks << 16


def assert_only_wireguard_on_lan(lab: Lab, name: str, send: Callable[[bytes], None]) -> None:
    """Capture the lab LAN while `send(marker)` sends traffic carrying `marker`: every
    packet between hosts is WireGuard (UDP 51820) and the marker is never seen in clear."""
    pcap = lab.dir / f"{name}-lan.pcap"
    marker = f"{name}-plain".encode()
    with capture(["ip", "netns", "exec", lab.lan_ns], "any", pcap):
        send(marker)
    mesh = between_hosts(read_pcap(pcap))
    assert mesh and all(".51820 >" in ln for ln in mesh), [ln for ln in mesh if ".51820 >" not in ln][:5]
    assert marker not in pcap.read_bytes()


# An HTTP server on :8000 that answers with its task name ($MESHNET_TASK).
WHOAMI = ("import http.server,os\n"
          "class H(http.server.BaseHTTPRequestHandler):\n"
          " def do_GET(s):\n"
          "  b=os.environ['MESHNET_TASK'].encode();s.send_response(200);s.end_headers();s.wfile.write(b)\n"
          "http.server.ThreadingHTTPServer(('0.0.0.0',8000),H).serve_forever()")


def ep_exec(lab: Lab, k: int, name: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run argv inside endpoint `name` on host k (`meshnet exec`)."""
    return meshnet(lab, k, "exec", name, "--", *argv, timeout=timeout)


def ep_ping(lab: Lab, k: int, name: str, ip: str, *extra: str) -> subprocess.CompletedProcess:
    return ep_exec(lab, k, name, "ping", "-c", "1", "-W", "2", *extra, ip)


def make_endpoint(lab: Lab, k: int, network: str, name: str, **kw) -> dict:
    return lab.client(k).post("/v1/endpoints", {"network": network, "name": name, **kw})
