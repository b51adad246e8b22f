"""Membership that holds: labels and constraints, node rm, partitions and heal, crash safety."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from meshnet.errors import MeshnetError
from meshnet.lab import Lab
from tests.conftest import wait_for
from tests.lab.conftest import cluster_lab, unique_name
from tests.lab.helpers import meshnet, ping, sh, transit_ips, wg_peers

SLEEPER = [sys.executable, "-c", "import time; time.sleep(100000)"]


@pytest.fixture
def lab():
    with cluster_lab("mb", 3) as lb:
        yield lb

def running(lab: Lab, k: int, service: str) -> list[dict]:
    return [t for t in lab.client(k).get(f"/v1/services/{service}/ps")["tasks"] if t["state"] == "running"]


def partition(lab: Lab, side_a: list[int], side_b: list[int], heal: bool = False) -> None:
    """Cut (or heal) the lab LAN between two groups of hosts, at the bridge."""
    if heal:
        subprocess.run(["ip", "netns", "exec", lab.lan_ns, "nft", "delete", "table", "bridge", "mnpart"],
                       check=True)
        return
    a = ", ".join(f'"h{k}"' for k in side_a)
    b = ", ".join(f'"h{k}"' for k in side_b)
    rules = (f"table bridge mnpart {{\n chain cut {{\n  type filter hook forward priority 0; policy accept;\n"
             f"  iifname {{ {a} }} oifname {{ {b} }} drop\n"
             f"  iifname {{ {b} }} oifname {{ {a} }} drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", lab.lan_ns, "nft", "-f", "-"], input=rules, text=True, check=True)


def test_labels_drive_placement(lab):
    out = meshnet(lab, 1, "node", "update", "--label", "zone=b", "h2")  # another node's labels
    assert out.returncode == 0, out.stderr
    assert "zone=b" in out.stdout
    wait_for("h3 to see h2's label", lambda: any(
        n["labels"] == {"zone": "b"} for n in lab.client(3).get("/v1/nodes")["nodes"] if n["name"] == "h2"))
    assert meshnet(lab, 3, "network", "create", "pnet").returncode == 0
    out = meshnet(lab, 3, "service", "create", "--name", "pinned", "--network", "pnet", "--replicas", "2",
                  "--constraint", "node.labels.zone==b", "--", *SLEEPER)
    assert out.returncode == 0, out.stderr
    wait_for("both replicas on h2", lambda: sorted(t["node"] for t in running(lab, 1, "pinned"))
             == ["h2", "h2"], timeout=30)
    assert "zone=b" in meshnet(lab, 1, "node", "ls").stdout


def test_node_rm_revokes_everywhere_and_rejoin_works(lab):
    token = lab.client(1).get("/v1/token")["token"]
    h3_key = sh(lab, 3, "wg", "show", "mnet0", "public-key").stdout.strip()
    assert meshnet(lab, 1, "network", "create", "rnet").returncode == 0
    assert meshnet(lab, 1, "service", "create", "--name", "spread", "--network", "rnet", "--replicas", "3",
                   "--", *SLEEPER).returncode == 0
    wait_for("a task on each host", lambda: len({t["node"] for t in running(lab, 1, "spread")}) == 3,
             timeout=30)
    out = meshnet(lab, 2, "node", "rm", "h3")
    assert out.returncode == 0, out.stderr
    for k in (1, 2):
        wait_for(f"h{k} to drop h3", lambda k=k: "h3" not in transit_ips(lab, k)
                 and h3_key not in wg_peers(lab, k))
    wait_for("h3 to tear itself down", lambda: lab.client(3).get("/v1/status")["member"] is False)
    assert sh(lab, 3, "ip", "link", "show", "mnet0").returncode != 0
    wait_for("h3's slot to move", lambda: sorted(t["node"] for t in running(lab, 1, "spread"))
             in (["h1", "h1", "h2"], ["h1", "h2", "h2"]), timeout=30)
    assert meshnet(lab, 1, "node", "rm", "h1").returncode == 1  # self: use leave
    out = meshnet(lab, 3, "join", "--token", token, "--advertise-addr", lab.ip(3), lab.ip(1))
    assert out.returncode == 0, out.stderr
    wait_for("h2 to see h3 again", lambda: "h3" in transit_ips(lab, 2))


def test_partition_both_sides_work_and_heal(lab):
    partition(lab, [1, 2], [3])
    try:
        wait_for("h1 to see h3 down", lambda: any(
            n["name"] == "h3" and n["health"] == "dead" for n in lab.client(1).get("/v1/nodes")["nodes"]))
        # Each side keeps working: networks and services on both sides.
        assert meshnet(lab, 1, "network", "create", "left").returncode == 0
        assert meshnet(lab, 3, "network", "create", "right").returncode == 0
        assert meshnet(lab, 3, "network", "create", "both").returncode == 0
        assert meshnet(lab, 1, "network", "create", "both").returncode == 0  # the same name on both sides
        assert meshnet(lab, 1, "service", "create", "--name", "sides", "--network", "left", "--replicas",
                       "3", "--", *SLEEPER).returncode == 0
        wait_for("3 tasks on the majority side", lambda: len(running(lab, 1, "sides")) == 3, timeout=30)
    finally:
        partition(lab, [1, 2], [3], heal=True)

    def converged() -> bool:
        views = [sorted((n["name"], n["id"]) for n in lab.client(k).get("/v1/networks")["networks"])
                 for k in (1, 2, 3)]
        return views[0] == views[1] == views[2] and [n for n, _ in views[0]] == ["both", "left", "right"]

    wait_for("every node to converge on the same networks", converged, timeout=40)
    wait_for("each slot of 'sides' to run exactly once", lambda: sorted(
        t["task"] for t in running(lab, 3, "sides")) == ["sides.1", "sides.2", "sides.3"], timeout=40)


def test_sigkill_during_writes_keeps_a_consistent_store(lab):
    """Networks are created as fast as the API allows while the agent is SIGKILLed."""
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        c = lab.client(2, timeout=5)
        i = 0
        while not stop.is_set():
            try:
                c.post("/v1/networks", {"name": f"crash{i}", "subnet": f"10.77.{i}.0/24"})
                acked.append(f"crash{i}")
            except MeshnetError:
                pass
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for("a few writes", lambda: len(acked) >= 5, timeout=30)
        lab.stop_agent(2, signal.SIGKILL)
    finally:
        stop.set()
        t.join(timeout=30)
    db = lab.host_dir(2) / "lib" / "meshnet.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    lab.start_agent(2)
    names = {n["name"] for n in lab.client(2).get("/v1/networks")["networks"]}
    assert set(acked) <= names, f"acknowledged but lost: {set(acked) - names}"
    wait_for("h1 to have every acknowledged network", lambda: set(acked) <= {
        n["name"] for n in lab.client(1).get("/v1/networks")["networks"]}, timeout=30)
    links = sh(lab, 2, "ip", "-o", "link", "show").stdout
    assert links.count("mnet0") == 1


def test_two_clusters_on_one_lan_never_mix():
    """mDNS answers carry the cluster's hash: each joiner finds members of its own cluster."""
    lab = Lab(unique_name("mb"))
    try:
        lab.up(4)
        a = lab.client(1).post("/v1/init", {"advertise_addr": lab.ip(1)})
        b = lab.client(3).post("/v1/init", {"advertise_addr": lab.ip(3)})
        assert a["cluster_id"] != b["cluster_id"]
        for k, token in ((2, a["token"]), (4, b["token"])):
            out = meshnet(lab, k, "join", "--token", token, "--advertise-addr", lab.ip(k))
            assert out.returncode == 0, out.stderr
        assert lab.client(2).get("/v1/status")["cluster_id"] == a["cluster_id"]
        assert lab.client(4).get("/v1/status")["cluster_id"] == b["cluster_id"]
        assert sorted(transit_ips(lab, 2)) == ["h1", "h2"]
        assert sorted(transit_ips(lab, 4)) == ["h3", "h4"]
        assert sorted(transit_ips(lab, 1)) == ["h1", "h2"]
    finally:
        lab.down()


def test_every_address_changes_and_mdns_finds_the_members_again(lab):
    """All hosts get new LAN addresses while their agents are down (new DHCP leases): each
    publishes its new address, finds the others by mDNS, and the tunnels come back."""
    ips = transit_ips(lab, 1)
    for k in (1, 2, 3):
        lab.stop_agent(k)
    for k in (1, 2, 3):
        assert sh(lab, k, "ip", "addr", "flush", "dev", "eth0").returncode == 0
        assert sh(lab, k, "ip", "addr", "add", f"10.248.0.{50 + k}/24", "dev", "eth0").returncode == 0
    for k in (1, 2, 3):
        lab.start_agent(k)
    for a, b in ((1, 2), (2, 3), (3, 1)):
        wait_for(f"h{a} to reach h{b} over transit again", lambda a=a, b=b: ping(lab, a, ips[f"h{b}"]),
                 timeout=60)
    wait_for("h2 to see every new endpoint", lambda: sorted(
        n["endpoint"] for n in lab.client(2).get("/v1/nodes")["nodes"]) == [
        f"10.248.0.{50 + k}:51820" for k in (1, 2, 3)], timeout=30)
    logs = "".join((lab.host_dir(k) / "agent.log").read_text() for k in (1, 2, 3))
    assert "by mDNS" in logs and "address changed from" in logs


def test_a_paused_agent_is_suspected_then_refutes(lab):
    """SIGSTOP h3's agent long enough to be suspected, not to be declared dead: after
    SIGCONT it refutes with a higher incarnation and nobody ever saw it dead."""
    h3 = next(n["id"] for n in lab.client(1).get("/v1/nodes")["nodes"] if n["name"] == "h3")
    pid = int((lab.host_dir(3) / "agent.pid").read_text())
    log = lab.host_dir(1) / "agent.log"
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for("h1 to suspect h3", lambda: f"member {h3} is suspect" in log.read_text(), timeout=10)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for("h3 to refute", lambda: re.search(rf"member {h3} is alive \(incarnation [1-9]", log.read_text()),
             timeout=10)
    text = (lab.host_dir(1) / "agent.log").read_text() + (lab.host_dir(2) / "agent.log").read_text()
    assert f"member {h3} is dead" not in text
    wait_for("h2 to see every member alive", lambda: all(
        n["health"] == "alive" for n in lab.client(2).get("/v1/nodes")["nodes"]))
    text = (lab.host_dir(1) / "agent.log").read_text() + (lab.host_dir(2) / "agent.log").read_text()
    assert f"member {h3} is dead" not in text
