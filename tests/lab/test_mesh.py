"""A real mesh: hosts in namespaces, agents, wireguard-go tunnels, a capture on the LAN."""

from __future__ import annotations

import signal
import subprocess
import time
from itertools import permutations

import pytest

from meshnet.token import JoinToken
from tests.conftest import wait_for
from tests.lab.conftest import cluster_lab
from tests.lab.helpers import (
    MESHNET,
    between_hosts,
    capture,
    meshnet,
    nodes,
    ping,
    read_pcap,
    sh,
    transit_ips,
    wg_peers,
)

MARK = b"meshnet-plain"  # ping payload pattern (ping takes up to 16 bytes)


@pytest.fixture(scope="module")
def lab():
    """Four hosts: h1..h3 form a cluster, h4 stays outside for the join tests."""
    with cluster_lab("m", 4, members=[1, 2, 3]) as lb:
        yield lb

def test_three_hosts_see_each_other(lab):
    for k in (1, 2, 3):
        wait_for(f"h{k} to list 3 active members",
                 lambda k=k: sorted(transit_ips(lab, k)) == ["h1", "h2", "h3"])
    ids = {n["name"]: n["id"] for n in nodes(lab, 1)}
    for k in (2, 3):
        assert {n["name"]: n["id"] for n in nodes(lab, k)} == ids
    assert len(set(transit_ips(lab, 1).values())) == 3  # unique transit addresses


def test_every_pair_pings_over_transit(lab):
    ips = transit_ips(lab, 1)
    for a, b in permutations((1, 2, 3), 2):
        wait_for(f"h{a} to ping h{b}", lambda a=a, b=b: ping(lab, a, ips[f"h{b}"]), timeout=15)


def test_node_ls_cli_shows_members_and_handshakes(lab):
    out = wait_for("every member alive in node ls", lambda: (o := meshnet(lab, 1, "node", "ls"))
                   and o.stdout.count(" alive ") == 3 and o)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ID", "TRANSIT", "IP"]
    assert len(lines) == 4 and all(" alive " in line for line in lines[1:])
    assert "ago" in out.stdout  # a peer's last handshake is shown
    assert "h1 *" in out.stdout  # this node is marked


def test_lan_capture_shows_only_wireguard(lab):
    """While hosts talk, the LAN carries WireGuard UDP and nothing else between hosts."""
    ips = transit_ips(lab, 1)
    pcap, inner = lab.dir / "lan.pcap", lab.dir / "mnet0.pcap"
    # The LAN, and (as a control that the check can fail) h1's tunnel interface, in clear.
    with capture(["ip", "netns", "exec", lab.lan_ns], "any", pcap), \
            capture(lab.enter(1), "mnet0", inner):
        for a, b in ((1, 2), (2, 3), (3, 1)):
            assert ping(lab, a, ips[f"h{b}"], count=3, size=1000, pattern=MARK.hex())
        # The agents' own traffic (replication) must be inside the tunnel too.
        lab.client(2).get("/v1/nodes")
    assert MARK in inner.read_bytes()
    out = read_pcap(pcap)
    mesh = between_hosts(out)
    assert len(mesh) >= 18  # 3 pings x 3 pairs x request+reply, at least
    others = [p for p in mesh if not (".51820 >" in p and "UDP" in p)]
    assert others == [], f"non-WireGuard packets on the LAN: {others[:5]}"
    assert MARK not in pcap.read_bytes()  # the pings' payload never crosses in clear


@pytest.mark.parametrize("kind", ["wrong secret", "other cluster", "malformed"])
def test_bad_token_is_refused_and_nothing_stored(lab, kind):
    good = JoinToken.parse(lab.token)
    bad = {"wrong secret": JoinToken(good.cluster_id, bytes(32)).encode(),
           "other cluster": JoinToken.generate().encode(),
           "malformed": lab.token[:-3] + "zzz"}[kind]
    before = {n["id"]: n["version"] for n in nodes(lab, 1)}
    out = meshnet(lab, 4, "join", "--token", bad, "--advertise-addr", lab.ip(4), lab.ip(1))
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    expected = {"wrong secret": "wrong token", "other cluster": "another cluster",
                "malformed": "malformed join token"}[kind]
    assert expected in out.stderr
    assert lab.client(4).get("/v1/status")["member"] is False
    assert not (lab.host_dir(4) / "lib" / "cluster.secret").exists()
    assert {n["id"]: n["version"] for n in nodes(lab, 1)} == before


def test_cli_without_agent_says_how_to_start(lab, tmp_path):
    out = subprocess.run([*MESHNET, "--socket", str(tmp_path / "none.sock"), "node", "ls"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "meshnet agent" in out.stderr


def test_agent_sigkill_restart_keeps_membership_and_tunnels(lab):
    ident = lab.client(2).get("/v1/status")["node_id"]
    peers = wg_peers(lab, 2)
    lab.stop_agent(2, signal.SIGKILL)
    # The interface is deleted by hand while the agent is down: a restart must rebuild it.
    assert sh(lab, 2, "ip", "link", "del", "mnet0").returncode == 0
    lab.start_agent(2)
    status = lab.client(2).get("/v1/status")
    assert status["member"] and status["node_id"] == ident
    assert sorted(transit_ips(lab, 2)) == ["h1", "h2", "h3"]
    wait_for("h2's peers to come back", lambda: wg_peers(lab, 2) == peers)
    ips = transit_ips(lab, 1)
    for other in (1, 3):
        wait_for(f"h2 to ping h{other} after restart", lambda o=other: ping(lab, 2, ips[f"h{o}"]))
        wait_for(f"h{other} to ping h2 after restart", lambda o=other: ping(lab, o, ips["h2"]))


def test_join_by_mdns_without_address(lab):
    started = time.monotonic()
    out = meshnet(lab, 4, "join", "--token", lab.token, "--advertise-addr", lab.ip(4))
    assert out.returncode == 0, out.stderr
    ips = transit_ips(lab, 4)
    wait_for("h4 to ping h1 over transit", lambda: ping(lab, 4, ips["h1"], timeout=1), timeout=20)
    print(f"join (mDNS) to first transit ping: {time.monotonic() - started:.2f} s")
    for k in (1, 2, 3):
        wait_for(f"h{k} to see h4", lambda k=k: "h4" in transit_ips(lab, k))
        wait_for(f"h{k} to ping h4", lambda k=k: ping(lab, k, ips["h4"]))


def test_token_command_prints_join_command(lab):
    out = meshnet(lab, 3, "token")
    assert out.returncode == 0
    assert out.stdout.startswith(f"meshnet join --token {lab.token} ")


def test_leave_drops_the_peer_everywhere(lab):
    h4_key = sh(lab, 4, "wg", "show", "mnet0", "public-key").stdout.strip()
    assert h4_key
    out = meshnet(lab, 4, "leave")
    assert out.returncode == 0, out.stderr
    for k in (1, 2, 3):
        wait_for(f"h{k} to drop h4's peer", lambda k=k: h4_key not in wg_peers(lab, k))
        assert "h4" not in transit_ips(lab, k)
    assert sh(lab, 4, "ip", "link", "show", "mnet0").returncode != 0
    assert lab.client(4).get("/v1/status")["member"] is False
    # The same identity can join again.
    out = meshnet(lab, 4, "join", "--token", lab.token, "--advertise-addr", lab.ip(4), lab.ip(2))
    assert out.returncode == 0, out.stderr
    wait_for("h1 to see h4 again", lambda: "h4" in transit_ips(lab, 1))
