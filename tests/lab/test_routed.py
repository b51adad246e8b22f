"""Routed (mode=l3) networks across a 3-host lab: no VXLAN, endpoint routes inside
WireGuard, the forwarding filter that keeps networks apart, repair, removal."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import permutations

import pytest

from meshnet.host.firewall import L3_TABLE, l3_filter_in_listing, l3_ruleset
from meshnet.lab import Lab
from meshnet.plan.overlay import L3Filter
from tests.conftest import wait_for
from tests.lab.conftest import cluster_lab, unique_name
from tests.lab.helpers import (
    WHOAMI,
    assert_only_wireguard_on_lan,
    bulk_transfer,
    ep_exec,
    ep_ping,
    make_endpoint,
    meshnet,
    sh,
)


@pytest.fixture(scope="module")
def lab():
    with cluster_lab("r", 3) as lb:
        yield lb


def forwarding(lab: Lab, k: int, ifname: str = "mnet0") -> str:
    return sh(lab, k, "cat", f"/proc/sys/net/ipv4/conf/{ifname}/forwarding").stdout.strip()


@pytest.fixture(scope="module")
def rnet(lab):
    """`rnet` (routed) created on h1, one endpoint on each host, all reachable."""
    out = meshnet(lab, 1, "network", "create", "-o", "mode=l3", "rnet")
    assert out.returncode == 0, out.stderr
    eps = {k: make_endpoint(lab, k, "rnet", f"r{k}") for k in (1, 2, 3)}
    for a, b in permutations((1, 2, 3), 2):
        wait_for(f"r{a} to ping r{b}",
                 lambda a=a, b=b: ep_ping(lab, a, f"r{a}", eps[b]["ip"]).returncode == 0)
    return eps


def test_routed_pings_bulk_data_and_no_vxlan(lab, rnet):
    views = [json.loads(meshnet(lab, k, "network", "inspect", "rnet").stdout)[0] for k in (1, 2, 3)]
    assert views[0] == views[1] == views[2] and views[0]["Options"]["mode"] == "l3"
    assert "l3" in meshnet(lab, 2, "network", "ls").stdout
    for k in (1, 2, 3):
        links = sh(lab, k, "ip", "-o", "link", "show").stdout
        assert "mnv-" not in links and "mnb-" not in links  # no VXLAN, no bridge
        assert f"mnr-{rnet[k]['id'][:10]}" in links
        assert forwarding(lab, k) == "1"
    for a, b in ((1, 2), (2, 3), (3, 1)):
        bulk_transfer(lab, a, f"r{a}", b, f"r{b}", rnet[b]["ip"], 5002)


def test_mtu_is_the_transit_mtu(lab, rnet):
    mtu = lab.client(1).get("/v1/status")["transit_mtu"]
    assert sh(lab, 1, "ip", "netns", "exec", f"mne-{rnet[1]['id'][:12]}", "cat",
              "/sys/class/net/eth0/mtu").stdout.strip() == str(mtu)
    ok = ep_ping(lab, 1, "r1", rnet[2]["ip"], "-M", "do", "-s", str(mtu - 28))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = ep_ping(lab, 1, "r1", rnet[2]["ip"], "-M", "do", "-s", str(mtu - 27))
    assert too_big.returncode != 0 and "message too long" in (too_big.stdout + too_big.stderr).lower()


def test_isolation_spoofing_and_the_host(lab, rnet):
    assert meshnet(lab, 2, "network", "create", "-o", "mode=l3", "rnet2").returncode == 0
    assert meshnet(lab, 3, "network", "create", "lnet").returncode == 0
    other = {"o1": make_endpoint(lab, 1, "rnet2", "o1"), "o2": make_endpoint(lab, 2, "rnet2", "o2"),
             "l3": make_endpoint(lab, 3, "lnet", "l3")}
    wait_for("o1 to reach o2", lambda: ep_ping(lab, 1, "o1", other["o2"]["ip"]).returncode == 0)
    for target in (other["o1"]["ip"], other["o2"]["ip"], other["l3"]["ip"]):
        assert ep_ping(lab, 1, "r1", target).returncode != 0, target
    for target in (rnet[1]["ip"], rnet[2]["ip"]):
        assert ep_ping(lab, 2, "o2", target).returncode != 0, target
    # An endpoint that takes an address of another network's subnet gets nowhere with it.
    subnet2 = lab.client(1).get("/v1/networks/rnet2")["IPAM"]["Config"][0]["Subnet"]
    fake = subnet2.rsplit(".", 1)[0] + ".200"
    ns = f"mne-{rnet[1]['id'][:12]}"
    inside = ("ip", "netns", "exec", ns, "ip")
    assert sh(lab, 1, *inside, "addr", "add", f"{fake}/32", "dev", "eth0").returncode == 0
    assert sh(lab, 1, *inside, "route", "add", subnet2, "dev", "eth0").returncode == 0
    assert ep_ping(lab, 1, "r1", other["o2"]["ip"], "-I", fake).returncode != 0
    # Nothing on the host itself answers a routed endpoint (its transit address included).
    transit = lab.client(1).get("/v1/status")["transit_ip"]
    assert sh(lab, 1, *inside, "route", "add", f"{transit}/32", "dev", "eth0").returncode == 0
    assert ep_ping(lab, 1, "r1", transit).returncode != 0
    sh(lab, 1, *inside, "addr", "del", f"{fake}/32", "dev", "eth0")
    assert ep_ping(lab, 1, "r1", rnet[3]["ip"]).returncode == 0  # and it still works


def test_only_wireguard_on_the_lan(lab, rnet):
    def send(marker: bytes) -> None:
        for target in (2, 3):
            assert ep_ping(lab, 1, "r1", rnet[target]["ip"], "-c", "3", "-i", "0.2",
                           "-p", marker.hex()).returncode == 0
    assert_only_wireguard_on_lan(lab, "routed", send)


def test_hand_damage_is_repaired(lab, rnet):
    veth = f"mnr-{rnet[2]['id'][:10]}"
    assert sh(lab, 2, "ip", "route", "del", f"{rnet[2]['ip']}/32", "dev", veth).returncode == 0
    assert sh(lab, 2, "nft", "delete", "table", "inet", L3_TABLE).returncode == 0
    assert sh(lab, 2, "sh", "-c", f"echo 0 > /proc/sys/net/ipv4/conf/{veth}/proxy_arp").returncode == 0
    assert sh(lab, 2, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/mnet0/forwarding").returncode == 0
    wait_for("h2 to repair its routed endpoint", lambda: (
        sh(lab, 2, "nft", "list", "table", "inet", L3_TABLE).returncode == 0
        and forwarding(lab, 2) == "1"
        and ep_ping(lab, 1, "r1", rnet[2]["ip"]).returncode == 0
        and ep_ping(lab, 3, "r3", rnet[2]["ip"]).returncode == 0), timeout=60)


def test_service_vip_and_names_on_a_routed_network(lab, rnet):
    out = meshnet(lab, 2, "service", "create", "--name", "rwho", "--network", "rnet", "--replicas", "3",
                  "--", sys.executable, "-c", WHOAMI)
    assert out.returncode == 0, out.stderr
    code = ("import urllib.request as u,collections\n"
            "get=lambda: u.urlopen('http://rwho:8000/',timeout=5).read().decode()\n"
            "print(sorted(collections.Counter(get() for _ in range(30))))")

    def spread() -> bool:
        got = ep_exec(lab, 1, "r1", sys.executable, "-c", code)
        return got.returncode == 0 and got.stdout.strip() == str(["rwho.1", "rwho.2", "rwho.3"])
    wait_for("r1 to reach every rwho task through the VIP", spread, timeout=60)
    assert meshnet(lab, 2, "service", "rm", "rwho").returncode == 0


def test_bad_options(lab):
    cases = {("-o", "mode=l4"): "invalid network mode 'l4'",
             ("-o", "color=red"): "unknown network option 'color'",
             ("-o", "mode"): "invalid option 'mode'"}
    for argv, message in cases.items():
        out = meshnet(lab, 1, "network", "create", *argv, "badopt")
        assert out.returncode == 1 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert "badopt" not in meshnet(lab, 1, "network", "ls").stdout


def test_remove_leaves_nothing(lab, rnet):
    for k in (1, 2, 3):
        assert meshnet(lab, k, "endpoint", "rm", f"r{k}").returncode == 0
    for name in ("o1", "o2", "l3"):
        for k in (1, 2, 3):
            meshnet(lab, k, "endpoint", "rm", name)
    for net in ("rnet", "rnet2", "lnet"):
        meshnet(lab, 1, "network", "rm", net)

    def clean(k: int) -> bool:
        links = sh(lab, k, "ip", "-o", "link", "show").stdout
        routes = sh(lab, k, "ip", "route", "show", "proto", "109").stdout
        table = sh(lab, k, "nft", "list", "table", "inet", L3_TABLE)
        return ("mnr-" not in links and not routes.strip() and table.returncode != 0
                and forwarding(lab, k) == "0")
    for k in (1, 2, 3):
        wait_for(f"h{k} to drop every routed piece", lambda k=k: clean(k))


def test_filter_reads_back_exactly():
    """The nft script and its read-back agree, in a namespace of our own."""
    ns = unique_name("mnl-rf")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        want = L3Filter("mnet0", (("mnr-aaaa", "10.7.0.2", "10.7.0.0/24"),
                                  ("mnr-bbbb", "10.8.0.9", "10.8.0.0/24")))
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=l3_ruleset(want),
                       text=True, check=True)

        def listing() -> dict:
            return json.loads(subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table",
                                              "inet", L3_TABLE], capture_output=True, text=True,
                                             check=True).stdout)
        assert l3_filter_in_listing(listing()) == want
        subprocess.run(["ip", "netns", "exec", ns, "nft", "insert", "rule", "inet", L3_TABLE,
                        "from_endpoint", "accept"], check=True)
        assert l3_filter_in_listing(listing()) != want  # an extra rule is noticed
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
