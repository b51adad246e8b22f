"""Emulated single-stream TCP throughput: overlay (VXLAN) over kernel WireGuard, over IPsec,
and unencrypted, all in one guest run. A benchmark, not a CI test.

The file name does not match `test_*.py`, so `tests/kernel/run` (and CI) never collects
it; bench/kernel_throughput.py runs it by naming it:

    tests/kernel/run tests/kernel/bench_throughput.py -k kernel_throughput_figures -s

Two namespaces (`ns_pair`) joined by a veth are the two hosts. Each path carries one TCP
stream (tests/kernel/tcpstream.py, 8 s flat out) between two overlay addresses:

- `veth`: the raw underlay, for reference;
- `vxlan`: VXLAN over the veth, unencrypted;
- `vxlan/wireguard`: VXLAN over kernel WireGuard (`wg0`, transit MTU 1420);
- `vxlan/ipsec`: VXLAN over meshnet's IPsec transit (`IpsecTransit`, xfrm `mnet0`,
  ESP tunnel mode, AES-128-GCM, transit MTU 1420).

Every VXLAN gets MTU 1370 (1420 - 50), so the three overlays carry the same payload
per packet. The result is printed as one `MESHNET-BENCH {json}` line.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from meshnet.host.ipsec import IpsecTransit
from meshnet.plan.wireguard import Device, Peer, diff

pytestmark = pytest.mark.kernel

STREAM = str(Path(__file__).with_name("tcpstream.py"))
SECONDS = 8
TRANSIT_MTU = 1420
VXLAN_MTU = TRANSIT_MTU - 50


def keypair() -> tuple[str, str]:
    k = PrivateKey.generate()
    return base64.b64encode(bytes(k)).decode(), base64.b64encode(bytes(k.public_key)).decode()


def stream(src, dst, addr: str, port: int) -> dict:
    recv = subprocess.Popen(["ip", "netns", "exec", dst.ns, "python3", STREAM, "recv", addr, str(port),
                             "nohash"], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None and recv.stdout.readline().strip() == "listening"
    sent = json.loads(src.run("python3", STREAM, "send", addr, str(port), str(SECONDS), "0", "nohash",
                              timeout=SECONDS + 120))
    got = json.loads(recv.communicate(timeout=60)[0])
    assert got["bytes"] == sent["bytes"] > 0, (sent, got)
    return {"bytes": got["bytes"], "seconds": round(got["seconds"], 3),
            "mbit_s": round(got["bytes"] * 8 / got["seconds"] / 1e6, 2)}


def vxlan(side, name: str, vni: int, local: str, remote: str, dev: str, addr: str) -> None:
    side.run("ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", local, "remote", remote,
             "dev", dev, "dstport", "4789")
    side.run("ip", "addr", "add", f"{addr}/24", "dev", name)
    side.run("ip", "link", "set", name, "mtu", str(VXLAN_MTU), "up")


def test_kernel_throughput_figures(ns_pair) -> None:
    a, b = ns_pair
    sides = (a, b)
    # Unencrypted VXLAN on the veth.
    for i, (s, o) in enumerate(((a, b), (b, a))):
        vxlan(s, "vxp", 41, s.addr, o.addr, s.ns, f"10.250.1.{i + 1}")
    # Kernel WireGuard, and VXLAN on it.
    wg_keys = [keypair(), keypair()]
    wg_transit = ("10.249.1.1", "10.249.1.2")
    for i, s in enumerate(sides):
        o = 1 - i
        Path(f"/tmp/{s.ns}.wgkey").write_text(wg_keys[i][0] + "\n")
        s.run("ip", "link", "add", "wg0", "type", "wireguard")
        s.run("wg", "set", "wg0", "private-key", f"/tmp/{s.ns}.wgkey", "listen-port", "51820",
              "peer", wg_keys[o][1], "endpoint", f"{sides[o].addr}:51820",
              "allowed-ips", f"{wg_transit[o]}/32")
        s.run("ip", "addr", "add", f"{wg_transit[i]}/24", "dev", "wg0")
        s.run("ip", "link", "set", "wg0", "mtu", str(TRANSIT_MTU), "up")
    for i, s in enumerate(sides):
        vxlan(s, "vxw", 42, wg_transit[i], wg_transit[1 - i], "wg0", f"10.250.2.{i + 1}")
    # meshnet's IPsec transit, and VXLAN on it.
    ip_keys = [keypair(), keypair()]
    ip_transit = ("10.249.2.1", "10.249.2.2")
    transits = []
    for i, s in enumerate(sides):
        o = 1 - i
        t = IpsecTransit(s.addr, ip_transit[i], underlay_dev=s.ns, netns=s.ns)
        t.create("mnet0")
        transits.append(t)
        s.run("ip", "addr", "add", f"{ip_transit[i]}/24", "dev", "mnet0")
        s.run("ip", "link", "set", "mnet0", "mtu", str(TRANSIT_MTU), "up")
        pub = ip_keys[o][1]
        peer = Peer(pub, f"{sides[o].addr}:51820", (f"{ip_transit[o]}/32",))
        want = Device(ip_keys[i][0], 51820, {pub: peer})
        t.apply("mnet0", diff(t.read("mnet0")[0], want))
        assert diff(t.read("mnet0")[0], want) == []
    for i, s in enumerate(sides):
        vxlan(s, "vxi", 43, ip_transit[i], ip_transit[1 - i], "mnet0", f"10.250.3.{i + 1}")
    paths = {"veth": b.addr, "vxlan": "10.250.1.2", "vxlan/wireguard": "10.250.2.2",
             "vxlan/ipsec": "10.250.3.2"}
    for addr in paths.values():  # ARP, handshakes: out of the timed part
        deadline = time.monotonic() + 30
        while subprocess.run(["ip", "netns", "exec", a.ns, "ping", "-c1", "-W1", addr],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, f"no ping to {addr}"
    results = {}
    for port, (name, addr) in enumerate(paths.items(), start=5301):
        results[name] = stream(a, b, addr, port)
        print(name, results[name], flush=True)
    # The encrypted paths really were encrypted: WireGuard and ESP counters moved.
    assert int(a.run("cat", "/sys/class/net/wg0/statistics/tx_bytes")) > results["vxlan/wireguard"]["bytes"]
    (esp_out,) = [s for s in transits[0].states() if s.src == a.addr]
    assert esp_out.bytes > results["vxlan/ipsec"]["bytes"], esp_out
    print("MESHNET-BENCH " + json.dumps({"seconds": SECONDS, "results": results}), flush=True)
