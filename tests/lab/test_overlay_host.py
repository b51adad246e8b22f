"""meshnet.host.overlay and meshnet.host.firewall against a real kernel (root).

Two "nodes" are two namespaces joined by a veth pair (192.0.2.1/24 - 192.0.2.2/24, used
as transit addresses; no WireGuard here). The applier runs inside a node through
`nsenter --net` (network namespace only: endpoint namespaces it creates with
`ip netns add` then land in the shared /run/netns, where the test can reach them).
Every namespace is named `mnov<hex>...` and removed in `finally`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshnet.plan.overlay import EndpointView, NetView, mac_for

ROOT = Path(__file__).resolve().parents[2]
IPS = {"n1": "192.0.2.1", "n2": "192.0.2.2"}
NET1 = NetView("net1", 4101, 24)
NET2 = NetView("net2", 4102, 24)

RUNNER = """
import json, sys
from meshnet.plan.overlay import desired, NetView, EndpointView
from meshnet.host import overlay, firewall
spec = json.load(sys.stdin)
if "eval" in spec:
    print(json.dumps(eval(spec["eval"])))
else:
    want = desired(spec["me"], spec["mtu"], spec["ips"], [NetView(**n) for n in spec["nets"]],
                   [EndpointView(**e) for e in spec["eps"]])
    print(json.dumps([overlay.describe(op) for op in overlay.ensure(want)]))
"""


def sh(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


@dataclass
class Lab:
    prefix: str
    nets: list[NetView] = field(default_factory=lambda: [NET1])
    eps: list[EndpointView] = field(default_factory=list)
    ips: dict[str, str] = field(default_factory=lambda: dict(IPS))

    def ns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def run_py(self, node: str, spec: dict) -> object:
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns(node)}", sys.executable, "-c", RUNNER],
                              input=json.dumps(spec), capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.returncode == 0, f"applier on {node} failed:\n{proc.stderr}"
        return json.loads(proc.stdout)

    def ensure(self, node: str) -> list[str]:
        return self.run_py(node, {"me": node, "mtu": 1500, "ips": self.ips,
                                  "nets": [n.__dict__ for n in self.nets],
                                  "eps": [e.__dict__ for e in self.eps]})

    def ensure_all(self) -> None:
        for node in IPS:
            self.ensure(node)

    def call(self, node: str, expr: str) -> object:
        return self.run_py(node, {"eval": expr})

    def endpoint(self, name: str, net: NetView, node: str, ip: str) -> EndpointView:
        ep = EndpointView(f"{name}{self.prefix[4:]}", net.id, node, ip, mac_for(ip),
                          f"/run/netns/{self.prefix}{name}", True, "eth0")
        self.eps.append(ep)
        return ep

    def in_node(self, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns(node), *argv, check=check)

    def ping(self, ep: EndpointView, ip: str, *extra: str) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", Path(ep.netns).name, "ping", "-c", "1", "-W", "2", *extra, ip,
                  check=False)


def _cleanup(prefix: str) -> None:
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.fixture
def lab():
    prefix = f"mnov{secrets.token_hex(3)}"
    lab = Lab(prefix)
    try:
        for node in IPS:
            sh("ip", "netns", "add", lab.ns(node))
            sh("ip", "-n", lab.ns(node), "link", "set", "lo", "up")
        sh("ip", "-n", lab.ns("n1"), "link", "add", "u0", "type", "veth", "peer", "name", "u0",
           "netns", lab.ns("n2"))
        for node, ip in IPS.items():
            sh("ip", "-n", lab.ns(node), "addr", "add", f"{ip}/24", "dev", "u0")
            sh("ip", "-n", lab.ns(node), "link", "set", "u0", "up")
        yield lab
    finally:
        _cleanup(prefix)
        assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


@pytest.fixture
def pair(lab):
    """One network, one endpoint on each node, applied."""
    a = lab.endpoint("a", NET1, "n1", "10.61.1.2")
    b = lab.endpoint("b", NET1, "n2", "10.61.1.3")
    assert lab.ensure("n1") and lab.ensure("n2")
    return lab, a, b


def fdb_entries(lab: Lab, node: str, dev: str) -> set[tuple[str, str]]:
    rows = json.loads(lab.in_node(node, "bridge", "-j", "fdb", "show", "dev", dev).stdout)
    return {(r["mac"], r["dst"]) for r in rows if "dst" in r}


def neigh_entries(lab: Lab, node: str, dev: str) -> set[tuple[str, str, tuple]]:
    rows = json.loads(lab.in_node(node, "ip", "-j", "neigh", "show", "dev", dev).stdout)
    return {(r["dst"], r["lladdr"], tuple(r["state"])) for r in rows}


def test_two_nodes_ping_and_second_ensure_is_a_no_op(pair):
    lab, a, b = pair
    assert lab.ping(a, b.ip).returncode == 0
    assert lab.ping(b, a.ip).returncode == 0
    assert lab.ensure("n1") == [] and lab.ensure("n2") == []
    link = json.loads(lab.in_node("n1", "ip", "-d", "-j", "link", "show", "mnv-4101").stdout)[0]
    data = link["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["port"], data["learning"], data["proxy"], data["udp_csum"],
            link["master"], link["mtu"]) == (4101, "192.0.2.1", 4789, False, True, True, "mnb-4101", 1450)
    addrs = json.loads(lab.in_node("n1", "ip", "-j", "addr", "show", "dev", "mnb-4101").stdout)[0]
    assert addrs["addr_info"] == [] and addrs["mtu"] == 1450


def test_static_entries_only_and_no_arp_crosses(pair):
    lab, a, b = pair
    # a third live node without endpoints on the network: no all-zero entry for it
    lab.ips["n3"] = "192.0.2.3"
    lab.ensure("n1")
    assert fdb_entries(lab, "n1", "mnv-4101") == {(b.mac, "192.0.2.2"), ("00:00:00:00:00:00", "192.0.2.2")}
    assert neigh_entries(lab, "n1", "mnv-4101") == {(b.ip, b.mac, ("PERMANENT",))}
    assert fdb_entries(lab, "n2", "mnv-4101") == {(a.mac, "192.0.2.1"), ("00:00:00:00:00:00", "192.0.2.1")}
    assert neigh_entries(lab, "n2", "mnv-4101") == {(a.ip, a.mac, ("PERMANENT",))}

    # Capture VXLAN on n2's side of the underlay while a asks for an unknown address, then
    # for a known one: the ARP proxy answers (or swallows) every ARP request locally.
    cap = subprocess.Popen(["ip", "netns", "exec", lab.ns("n2"), "tcpdump", "-l", "-n", "-i", "u0",
                            "-c", "50", "udp", "port", "4789"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # tcpdump attaches
        sh("ip", "netns", "exec", Path(a.netns).name, "ip", "neigh", "flush", "dev", "eth0")
        assert lab.ping(a, "10.61.1.99").returncode != 0
        assert lab.ping(a, b.ip).returncode == 0
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
    assert "ARP" not in out, out
    assert "10.61.1.99" not in out, out
    assert f"{a.ip} > {b.ip}: ICMP echo request" in out, out  # unicast, inside VXLAN
    neigh_a = sh("ip", "netns", "exec", Path(a.netns).name, "ip", "neigh", "show", b.ip).stdout
    assert b.mac in neigh_a  # answered by n1's proxy from the static table


def test_largest_df_ping_and_local_message_too_long(pair):
    lab, a, b = pair
    assert lab.ping(a, b.ip, "-M", "do", "-s", "1422").returncode == 0
    big = lab.ping(a, b.ip, "-M", "do", "-s", "1423")
    assert big.returncode != 0
    assert "message too long" in (big.stdout + big.stderr).lower(), big


@pytest.mark.parametrize("damage", [
    ("n1", "link", "del", "mnb-4101"),
    ("n1", "link", "del", "HOSTVETH"),
    ("EP", "link", "del", "eth0"),
    ("EP", "link", "set", "eth0", "down"),
    ("n1", "link", "set", "mnv-4101", "type", "vxlan", "learning"),
    ("n1", "neigh", "del", "10.61.1.3", "dev", "mnv-4101"),
])
def test_hand_damage_is_repaired(pair, damage):
    lab, a, b = pair
    where, *argv = damage
    argv = [x.replace("HOSTVETH", f"mnh-{a.id[:10]}") for x in argv]
    ns = Path(a.netns).name if where == "EP" else lab.ns(where)
    netns_before = os.stat(a.netns).st_ino
    sh("ip", "-n", ns, *argv)
    assert lab.ensure("n1") != []
    assert lab.ping(a, b.ip).returncode == 0
    assert lab.ensure("n1") == []
    assert os.stat(a.netns).st_ino == netns_before  # the endpoint kept its namespace


def test_transit_mtu_change_rebuilds_veths_but_keeps_namespaces(pair):
    lab, a, b = pair
    before = os.stat(a.netns).st_ino
    for node in IPS:
        lab.run_py(node, {"me": node, "mtu": 1400, "ips": lab.ips, "nets": [NET1.__dict__],
                          "eps": [e.__dict__ for e in lab.eps]})
    assert os.stat(a.netns).st_ino == before
    assert '"mtu":1350' in sh("ip", "-n", Path(a.netns).name, "-j", "link", "show", "eth0").stdout
    assert lab.ping(a, b.ip, "-M", "do", "-s", "1322").returncode == 0
    assert lab.ping(a, b.ip, "-M", "do", "-s", "1323").returncode != 0


def test_foreign_veth_with_our_prefix_is_removed(pair):
    lab, a, b = pair
    lab.in_node("n1", "ip", "link", "add", "mnh-stray", "type", "veth", "peer", "name", "strayp")
    ops = lab.ensure("n1")
    assert len(ops) == 1 and ops[0].startswith("remove veth mnh-stray")
    assert "stray" not in lab.in_node("n1", "ip", "-o", "link").stdout
    assert lab.ping(a, b.ip).returncode == 0


def test_networks_are_isolated(lab):
    a = lab.endpoint("a", NET1, "n1", "10.61.1.2")
    c = lab.endpoint("c", NET2, "n1", "10.61.2.2")
    lab.nets.append(NET2)
    lab.ensure("n1")
    # a tries hard: it believes c's subnet is on its own link
    sh("ip", "netns", "exec", Path(a.netns).name, "ip", "route", "add", "10.61.2.0/24", "dev", "eth0")
    assert lab.ping(a, c.ip).returncode != 0
    routes = lab.in_node("n1", "ip", "route", "show", "table", "all").stdout
    assert "10.61." not in routes
    for dev in ("mnb-4101", "mnb-4102"):
        shown = json.loads(lab.in_node("n1", "ip", "-j", "addr", "show", "dev", dev).stdout)
        assert shown[0]["addr_info"] == []


def test_removing_endpoints_removes_veths_namespaces_and_idle_networks(lab):
    a = lab.endpoint("a", NET1, "n1", "10.61.1.2")
    a2 = lab.endpoint("d", NET1, "n1", "10.61.1.4")
    c = lab.endpoint("c", NET2, "n1", "10.61.2.2")
    b = lab.endpoint("b", NET1, "n2", "10.61.1.3")
    lab.nets.append(NET2)
    lab.ensure_all()
    assert lab.ping(a2, b.ip).returncode == 0

    lab.eps.remove(a2)
    lab.eps.remove(c)
    ops = lab.ensure("n1")
    assert any("remove endpoint" in op for op in ops)
    links = lab.in_node("n1", "ip", "-o", "link").stdout
    assert f"mnh-{a2.id[:10]}" not in links and f"mnh-{a.id[:10]}" in links
    assert "mnb-4102" not in links and "mnv-4102" not in links and "mnb-4101" in links
    assert not Path(a2.netns).exists() and not Path(c.netns).exists() and Path(a.netns).exists()
    assert lab.ping(a, b.ip).returncode == 0

    # the remote side: b leaves, n1 drops its entries (and the all-zero one for n2)
    lab.eps.remove(b)
    lab.ensure_all()
    assert fdb_entries(lab, "n1", "mnv-4101") == set()
    assert neigh_entries(lab, "n1", "mnv-4101") == set()
    assert "mnb-4101" not in lab.in_node("n2", "ip", "-o", "link").stdout

    lab.eps.remove(a)
    lab.ensure("n1")
    assert "mn" not in lab.in_node("n1", "ip", "-o", "link").stdout.replace("mnov", "")
    assert not Path(a.netns).exists()


def test_firewall_guard_drops_vxlan_off_the_transit_interface(pair):
    lab, a, b = pair
    assert lab.ping(a, b.ip).returncode == 0
    assert lab.call("n1", "firewall.vxlan_guard_present('mnet0', 4789)") is False
    assert lab.call("n1", "firewall.ensure_vxlan_guard('mnet0', 4789)") is True
    assert lab.call("n1", "firewall.ensure_vxlan_guard('mnet0', 4789)") is False  # idempotent
    assert lab.call("n1", "firewall.vxlan_guard_present('mnet0', 4789)") is True
    assert lab.call("n1", "firewall.vxlan_guard_present('u0', 4789)") is False

    # overlay traffic would leave through u0 (not the transit interface): dropped on the way out
    assert lab.ping(a, b.ip).returncode != 0
    assert lab.call("n1", "firewall.vxlan_guard_counters()")["output"] > 0
    # a hand-made datagram to the peer's VXLAN port is refused to the sender (EPERM)
    send = "__import__('socket').socket(2, 2).sendto(b'x' * 20, ('192.0.2.2', 4789))"
    with pytest.raises(AssertionError, match="PermissionError"):
        lab.call("n1", send)

    # the receiving side: n1 unguarded, n2 guarded; VXLAN arriving on u0 is dropped on input
    lab.call("n1", "firewall.remove_vxlan_guard()")
    assert lab.call("n2", "firewall.ensure_vxlan_guard('mnet0', 4789)") is True
    assert lab.ping(a, b.ip).returncode != 0
    assert lab.call("n2", "firewall.vxlan_guard_counters()")["input"] > 0
    lab.call("n2", "firewall.remove_vxlan_guard()")
    assert lab.ping(a, b.ip).returncode == 0

    # with u0 as the transit interface the same overlay works
    assert lab.call("n1", "firewall.ensure_vxlan_guard('u0', 4789)") is True
    assert lab.call("n1", "firewall.vxlan_guard_present('u0', 4789)") is True
    assert lab.ping(a, b.ip).returncode == 0

    lab.call("n1", "firewall.remove_vxlan_guard()")
    lab.call("n1", "firewall.remove_vxlan_guard()")  # absent: still fine
    assert lab.call("n1", "firewall.vxlan_guard_present('u0', 4789)") is False
    assert lab.in_node("n1", "nft", "list", "tables").stdout.strip() == ""
