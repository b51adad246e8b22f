"""Overlay networks across a 3-host lab: VXLAN inside WireGuard, IPAM, isolation, replication."""

from __future__ import annotations

import json
import signal
from itertools import permutations

import pytest

from meshnet.lab import Lab
from tests.conftest import wait_for
from tests.lab.conftest import cluster_lab, unique_name
from tests.lab.helpers import (
    assert_only_wireguard_on_lan,
    bulk_transfer,
    capture,
    ep_ping,
    make_endpoint,
    meshnet,
    read_pcap,
    sh,
)


@pytest.fixture(scope="module")
def lab():
    with cluster_lab("o", 3) as lb:
        yield lb

def api(lab: Lab, k: int):
    return lab.client(k)


@pytest.fixture(scope="module")
def appnet(lab):
    """`appnet` created on h1, one endpoint on each host."""
    out = meshnet(lab, 1, "network", "create", "-d", "overlay", "--label", "env=test", "appnet")
    assert out.returncode == 0, out.stderr
    eps = {k: make_endpoint(lab, k, "appnet", f"web{k}") for k in (1, 2, 3)}
    for k in (1, 2, 3):
        wait_for(f"h{k} to see 3 endpoints on appnet",
                 lambda k=k: len(api(lab, k).get("/v1/networks/appnet")["Containers"]) == 3)
    return eps


def test_network_ls_and_create_errors(lab, appnet):
    out = meshnet(lab, 2, "network", "ls")
    assert out.returncode == 0
    assert "appnet" in out.stdout and "overlay" in out.stdout and "swarm" in out.stdout
    cases = {
        ("network", "create", "appnet"): "already exists",
        ("network", "create", "--subnet", "10.10.0.0/33", "x1"): "invalid subnet",
        ("network", "create", "--subnet", "10.10.0.5/24", "x2"): "host bits set",
        ("network", "create", "--subnet", "10.10.0.0/16", "x3"): "overlaps network 'appnet'",
        ("network", "create", "--subnet", "10.248.0.0/24", "x4"): "routed on this host via eth0",
        ("network", "create", "--subnet", "10.249.3.0/24", "x5"): "transit range",
        ("network", "create", "bad/name"): "invalid network name",
        ("network", "inspect", "nosuch"): "no network 'nosuch'",
        ("run", "--network", "nosuch", "--", "true"): "no network 'nosuch'",
    }
    for argv, message in cases.items():
        out = meshnet(lab, 3, *argv)
        assert out.returncode == 1, (argv, out.stdout)
        assert message in out.stderr and out.stderr.count("\n") == 1, (argv, out.stderr)
    assert [n["name"] for n in api(lab, 1).get("/v1/networks")["networks"]] == ["appnet"]


def test_inspect_is_the_same_everywhere(lab, appnet):
    views = [json.loads(meshnet(lab, k, "network", "inspect", "appnet").stdout)[0] for k in (1, 2, 3)]
    assert views[0] == views[1] == views[2]
    v = views[0]
    assert v["Scope"] == "swarm" and v["Driver"] == "overlay" and v["Labels"] == {"env": "test"}
    assert int(v["Options"]["com.docker.network.driver.overlay.vxlanid_list"]) >= 4097
    assert v["IPAM"]["Config"][0]["Subnet"].startswith("10.10.")
    assert sorted(c["Name"] for c in v["Containers"].values()) == ["web1", "web2", "web3"]
    assert sorted(c["Node"] for c in v["Containers"].values()) == ["h1", "h2", "h3"]
    assert sorted(p["Name"] for p in v["Peers"]) == ["h1", "h2", "h3"]
    ips = [c["IPv4Address"] for c in v["Containers"].values()]
    assert len(set(ips)) == 3 and all(ip.endswith("/24") for ip in ips)
    assert v["IPAM"]["Config"][0]["Gateway"] not in {ip.split("/")[0] for ip in ips}


def test_every_pair_pings_and_moves_bulk_data(lab, appnet):
    for a, b in permutations((1, 2, 3), 2):
        wait_for(f"web{a} to ping web{b}",
                 lambda a=a, b=b: ep_ping(lab, a, f"web{a}", appnet[b]["ip"]).returncode == 0)
    for a, b in ((1, 2), (2, 3), (3, 1)):
        bulk_transfer(lab, a, f"web{a}", b, f"web{b}", appnet[b]["ip"], 5001)  # 16 MiB intact


def test_mtu_edge(lab, appnet):
    mtu = api(lab, 1).get("/v1/status")["transit_mtu"] - 50
    assert sh(lab, 1, "ip", "netns", "exec", f"mne-{appnet[1]['id'][:12]}", "cat",
              "/sys/class/net/eth0/mtu").stdout.strip() == str(mtu)
    largest = mtu - 28  # IPv4 + ICMP headers
    ok = ep_ping(lab, 1, "web1", appnet[2]["ip"], "-M", "do", "-s", str(largest))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = ep_ping(lab, 1, "web1", appnet[2]["ip"], "-M", "do", "-s", str(largest + 1))
    assert too_big.returncode != 0
    assert "message too long" in (too_big.stdout + too_big.stderr).lower()


def test_isolation_between_networks(lab, appnet):
    assert meshnet(lab, 2, "network", "create", "othernet").returncode == 0
    other = {k: make_endpoint(lab, k, "othernet", f"oth{k}") for k in (1, 2)}
    wait_for("oth1 to reach oth2", lambda: ep_ping(lab, 1, "oth1", other[2]["ip"]).returncode == 0)
    # Same host and across hosts: nothing crosses between networks.
    for target in (appnet[1]["ip"], appnet[2]["ip"], appnet[3]["ip"]):
        assert ep_ping(lab, 1, "oth1", target).returncode != 0
    assert ep_ping(lab, 1, "web1", other[1]["ip"]).returncode != 0
    # No address on the bridges and no route into an overlay on the host.
    addrs = sh(lab, 1, "ip", "-o", "addr", "show").stdout
    assert "mnb-" not in addrs and "mnv-" not in addrs
    assert "10.10." not in sh(lab, 1, "ip", "route", "show").stdout


def test_only_wireguard_on_the_lan_and_vxlan_guard(lab, appnet):
    def send(marker: bytes) -> None:
        for target in (2, 3):
            assert ep_ping(lab, 1, "web1", appnet[target]["ip"], "-c", "3", "-i", "0.2",
                           "-p", marker.hex()).returncode == 0
    assert_only_wireguard_on_lan(lab, "overlay", send)
    rules = sh(lab, 1, "nft", "list", "table", "inet", "meshnet").stdout
    assert "4789" in rules and "mnet0" in rules and "drop" in rules


def test_tunnel_down_stops_overlay_rather_than_leaking(lab, appnet):
    """With the tunnel gone and a route that would carry VXLAN over the LAN, nothing leaks."""
    pcap = lab.dir / "leak.pcap"
    lab.stop_agent(3, signal.SIGKILL)  # nobody repairs h3 during the test
    transit = lab.client(1).get("/v1/nodes")["nodes"]
    ip1 = next(n["transit_ip"] for n in transit if n["name"] == "h1")
    try:
        assert sh(lab, 3, "ip", "link", "del", "mnet0").returncode == 0
        # The worst case: a route to the transit range out of the LAN interface.
        sh(lab, 3, "ip", "route", "add", "10.249.0.0/16", "dev", "eth0")
        with capture(["ip", "netns", "exec", lab.lan_ns], "any", pcap, "udp port 4789"):
            assert ep_ping(lab, 3, "web3", appnet[1]["ip"]).returncode != 0
        leaked = read_pcap(pcap)
        assert leaked == [], f"VXLAN left h3 in the clear: {leaked[:3]}"
        assert ip1
    finally:
        sh(lab, 3, "ip", "route", "del", "10.249.0.0/16", "dev", "eth0")
        lab.start_agent(3)
    wait_for("web3 to reach web1 again after the agent rebuilt the tunnel",
             lambda: ep_ping(lab, 3, "web3", appnet[1]["ip"]).returncode == 0, timeout=30)


def test_agent_restart_with_endpoints_alive(lab, appnet):
    before = api(lab, 1).get("/v1/networks/appnet")
    lab.stop_agent(2, signal.SIGKILL)
    # Someone deletes a link by hand while the agent is down.
    assert sh(lab, 2, "ip", "link", "del", f"mnh-{appnet[2]['id'][:10]}").returncode == 0
    lab.start_agent(2)
    for a, b in ((2, 1), (1, 2), (3, 2)):
        wait_for(f"web{a} to ping web{b} after the restart",
                 lambda a=a, b=b: ep_ping(lab, a, f"web{a}", appnet[b]["ip"]).returncode == 0)
    after = [api(lab, k).get("/v1/networks/appnet") for k in (1, 2, 3)]
    assert after[0]["Containers"] == after[1]["Containers"] == after[2]["Containers"]
    assert after[0]["Containers"] == before["Containers"]  # nothing lost, nothing doubled


def test_concurrent_endpoints_never_share_an_address(lab, appnet):
    import concurrent.futures as cf

    def make(k: int, i: int) -> dict:
        return make_endpoint(lab, k, "appnet", f"burst{k}x{i}")

    with cf.ThreadPoolExecutor(9) as pool:
        made = list(pool.map(lambda a: make(*a), [(k, i) for k in (1, 2, 3) for i in range(4)]))
    assert len({m["ip"] for m in made}) == len(made)
    for k in (1, 2, 3):
        wait_for(f"h{k} to see every burst endpoint", lambda k=k: len(
            [c for c in api(lab, k).get("/v1/networks/appnet")["Containers"].values()
             if c["Name"].startswith("burst")]) == 12)
    ips = [c["IPv4Address"] for c in api(lab, 2).get("/v1/networks/appnet")["Containers"].values()]
    assert len(ips) == len(set(ips))
    # Addresses come back when endpoints go.
    freed = made[0]
    assert api(lab, 1).delete(f"/v1/endpoints/{freed['name']}")["removed"] == freed["name"]
    again = make_endpoint(lab, 1, "appnet", "reuse")
    assert again["ip"] == freed["ip"]
    for m in [*made[1:], again]:
        k = int(m["name"][5]) if m["name"].startswith("burst") else 1
        api(lab, k).delete(f"/v1/endpoints/{m['name']}")


def test_same_name_created_at_once_settles_on_one(lab):
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda k: meshnet(lab, k, "network", "create", "racenet"), (1, 2, 3)))
    assert any(r.returncode == 0 for r in results)

    def settled() -> bool:
        views = [[n for n in api(lab, k).get("/v1/networks")["networks"] if n["name"] == "racenet"]
                 for k in (1, 2, 3)]
        return all(len(v) == 1 for v in views) and len({v[0]["id"] for v in views}) == 1

    wait_for("every node to keep the same single racenet", settled)


def test_node_down_during_create_catches_up(lab, appnet):
    lab.stop_agent(3)
    try:
        assert meshnet(lab, 1, "network", "create", "latenet").returncode == 0
        make_endpoint(lab, 1, "latenet", "late1")
    finally:
        lab.start_agent(3)
    wait_for("h3 to learn latenet and its endpoint",
             lambda: len(api(lab, 3).get("/v1/networks/latenet")["Containers"]) == 1)


def test_rm_refused_with_endpoints_then_forced_and_propagates(lab, appnet):
    assert meshnet(lab, 1, "network", "create", "tmpnet").returncode == 0
    tmp2 = make_endpoint(lab, 2, "tmpnet", "tmp2")
    wait_for("h1 to see tmp2", lambda: len(api(lab, 1).get("/v1/networks/tmpnet")["Containers"]) == 1)
    out = meshnet(lab, 1, "network", "rm", "tmpnet")
    assert out.returncode == 1 and "endpoint(s) attached" in out.stderr
    out = meshnet(lab, 3, "network", "rm", "--force", "tmpnet")
    assert out.returncode == 0, out.stderr
    for k in (1, 2, 3):
        wait_for(f"h{k} to drop tmpnet", lambda k=k: "tmpnet" not in
                 [n["name"] for n in api(lab, k).get("/v1/networks")["networks"]])
    wait_for("h2 to remove tmp2's namespace", lambda: f"mne-{tmp2['id'][:12]}" not in
             sh(lab, 2, "ip", "netns", "list").stdout)
    eps = [e["name"] for e in api(lab, 2).get("/v1/endpoints")["endpoints"]]
    assert "tmp2" not in eps


def test_attach_and_detach_an_existing_namespace(lab, appnet):
    ns = "ctr" + unique_name("")
    assert sh(lab, 1, "ip", "netns", "add", ns).returncode == 0
    try:
        out = meshnet(lab, 1, "attach", "--network", "appnet", "--netns", ns, "--name", "ctr1")
        assert out.returncode == 0, out.stderr
        ip = out.stdout.split()[1]
        inside = sh(lab, 1, "ip", "netns", "exec", ns, "ip", "-o", "addr").stdout
        assert ip in inside
        wait_for("the attached namespace to reach web2", lambda: sh(
            lab, 1, "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", appnet[2]["ip"]).returncode == 0)
        assert meshnet(lab, 1, "detach", "ctr1").returncode == 0
        assert ip not in sh(lab, 1, "ip", "netns", "exec", ns, "ip", "-o", "addr").stdout
    finally:
        sh(lab, 1, "ip", "netns", "del", ns)
