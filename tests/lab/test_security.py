"""Security in a lab: join rate limit, token and key rotation, forged rows, fail closed, doctor."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from meshnet.keys import NodeKeys, unb64
from meshnet.lab import Lab
from meshnet.rows import Row
from tests.conftest import wait_for
from tests.lab.conftest import cluster_lab
from tests.lab.helpers import (
    SINK,
    SOURCE,
    between_hosts,
    capture,
    meshnet,
    ping,
    read_pcap,
    sh,
    transit_ips,
    wg_peers,
)


@pytest.fixture(scope="module")
def lab():
    with cluster_lab("sec", 4, members=[1, 2, 3]) as lb:
        yield lb

def post_join(lab: Lab, k: int, target: int, body: str) -> tuple[int, str]:
    code = ("import sys,httpx;r=httpx.post(sys.argv[1],content=sys.stdin.buffer.read(),timeout=5);"
            "print(r.status_code);print(r.text)")
    out = lab.exec(k, [sys.executable, "-c", code, f"http://{lab.ip(target)}:7946/join/v1"], input=body,
                   capture_output=True, text=True, timeout=60)
    status, _, text = out.stdout.partition("\n")
    return int(status), text


def test_join_attempts_are_rate_limited_per_source(lab):
    code = ("import httpx,sys\n"
            "with httpx.Client(timeout=5) as c:\n"
            " for _ in range(int(sys.argv[2])):\n"
            "  r=c.post(sys.argv[1],content=b'{}');print(r.status_code,r.text.replace(chr(10),' '))")
    out = sh(lab, 4, sys.executable, "-c", code, f"http://{lab.ip(2)}:7946/join/v1", "20")
    codes = [int(line.split()[0]) for line in out.stdout.splitlines()]
    assert codes[:10] == [403] * 10  # malformed: refused, and counted
    assert codes[-1] == 429 and "too many join attempts" in out.stdout.splitlines()[-1]
    assert post_join(lab, 1, 2, "{}")[0] == 403  # another source is not limited


def test_oversized_join_request_is_refused(lab):
    status, _ = post_join(lab, 3, 1, "x" * (2 << 20))
    assert status == 413


def test_token_rotate_stops_the_old_token_only(lab):
    old = lab.token
    out = meshnet(lab, 2, "token", "rotate")
    assert out.returncode == 0, out.stderr
    new = lab.client(2).get("/v1/token")["token"]
    assert new != old
    wait_for("every member to hold the new token",
             lambda: all(lab.client(k).get("/v1/token")["token"] == new for k in (1, 2, 3)))
    refused = meshnet(lab, 4, "join", "--token", old, "--advertise-addr", lab.ip(4), lab.ip(1))
    assert refused.returncode == 1 and "wrong token" in refused.stderr
    ips = transit_ips(lab, 1)
    assert ping(lab, 1, ips["h3"]) and ping(lab, 3, ips["h2"])  # members unaffected
    lab.token = new


def test_keys_rotate_keeps_a_running_transfer(lab):
    ips = transit_ips(lab, 1)
    old_key = sh(lab, 2, "wg", "show", "mnet0", "public-key").stdout.strip()
    sink = subprocess.Popen([*lab.enter(1), sys.executable, "-c", SINK, ips["h1"], "5001"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        # About 8 s of paced sending, so the rotation lands in the middle of the transfer.
        source = subprocess.Popen([*lab.enter(2), sys.executable, "-c", SOURCE, ips["h1"], "5001", "160",
                                   "0.05"], stdout=subprocess.PIPE, text=True)
        wait_for("the transfer to be under way", lambda: int(sh(lab, 2, "sh", "-c",
                 "wg show mnet0 transfer | awk '{s+=$3} END {print s+0}'").stdout.strip() or 0) > 2 << 20)
        out = meshnet(lab, 2, "keys", "rotate")
        assert out.returncode == 0, out.stderr
        sent, _ = source.communicate(timeout=60)
        got, _ = sink.communicate(timeout=30)
    finally:
        sink.kill()
    assert source.returncode == 0
    assert got.split() == sent.split() and int(got.split()[0]) == 160 << 16
    new_key = sh(lab, 2, "wg", "show", "mnet0", "public-key").stdout.strip()
    assert new_key != old_key
    for k in (1, 3):
        wait_for(f"h{k} to use h2's new key", lambda k=k: new_key in wg_peers(lab, k) and old_key not in
                 wg_peers(lab, k))
    assert ping(lab, 3, ips["h2"])


def forged(lab: Lab, forger: int, row: Row) -> tuple[int, dict]:
    """Push rows to h1 from `forger`'s transit address, as a malicious member would."""
    ips = transit_ips(lab, 1)
    code = ("import sys,httpx;r=httpx.post(sys.argv[1],content=sys.argv[2],timeout=5);"
            "print(r.status_code);print(r.text)")
    body = json.dumps({"rows": [row.to_json()]})
    out = sh(lab, forger, sys.executable, "-c", code, f"http://{ips['h1']}:7946/peer/v1/rows", body)
    status, _, text = out.stdout.partition("\n")
    return int(status), json.loads(text)


def member_keys(lab: Lab, k: int) -> NodeKeys:
    lib = lab.host_dir(k) / "lib"
    return NodeKeys(SigningKey(unb64((lib / "identity.key").read_text().strip(), 32)),
                    PrivateKey(unb64((lib / "wireguard.key").read_text().strip(), 32)))


def test_a_member_cannot_forge_or_overwrite_another_members_rows(lab):
    h1 = next(n for n in lab.client(1).get("/v1/nodes")["nodes"] if n["name"] == "h1")
    evil = member_keys(lab, 3)
    # 1. h3 signs a change to h1's node row with its own key (owner claims h1): bad signature.
    data = {"name": "h1", "identity_pub": evil.identity_pub, "wg_pub": evil.wireguard_pub,
            "endpoint": "10.248.0.13:51820", "control": "10.248.0.13:7946",
            "transit_ip": h1["transit_ip"], "state": "left", "labels": {}}
    fake = Row("node", h1["id"], h1["id"], h1["version"] + (1 << 40), False, data).signed(evil)
    forged(lab, 3, fake)
    # 2. h3 takes ownership of h1's row outright (owner h3, signed by h3): not its row.
    stolen = Row("node", h1["id"], evil.node_id, h1["version"] + (1 << 40), True, data).signed(evil)
    forged(lab, 3, stolen)
    # 3. an endpoint "owned" by h1 but signed by h3.
    ep = Row("endpoint", "feedfacefeedface", h1["id"], 1 << 60, False, {
        "name": "evil", "network": "x", "node": h1["id"], "ip": "10.10.9.9", "mac": "02:00:00:00:00:01",
        "netns": "/run/netns/x", "owns_netns": True, "ifname": "eth0", "created": 1}).signed(evil)
    forged(lab, 3, ep)
    after = next(n for n in lab.client(1).get("/v1/nodes")["nodes"] if n["name"] == "h1")
    assert (after["version"], after["state"]) == (h1["version"], "active")
    assert "evil" not in [e["name"] for e in lab.client(1).get("/v1/endpoints")["endpoints"]]
    log = (lab.host_dir(1) / "agent.log").read_text()
    assert ("bad signature" in log and "may not overwrite" in log) or "node id does not match" in log
    # 4. the peer API answers members only: the outsider h4 (not a member) cannot even ask.
    code = "import httpx;print(httpx.post('http://10.248.0.11:7946/peer/v1/rows',json={'rows':[]}).status_code)"
    assert sh(lab, 4, sys.executable, "-c", code).stdout.strip() == "403"


def test_rules_and_tunnel_removed_nothing_leaks(lab):
    """Someone deletes the nftables guard and the tunnel on h2 (agent running), with a route
    that would carry VXLAN over the LAN: no overlay packet crosses in the clear, and the
    agent restores both and reports the problem."""
    c1 = lab.client(1)
    c1.post("/v1/networks", {"name": "leaknet"})
    e1 = c1.post("/v1/endpoints", {"network": "leaknet", "name": "lk1"})
    e2 = lab.client(2).post("/v1/endpoints", {"network": "leaknet", "name": "lk2"})
    wait_for("lk2 to reach lk1", lambda: meshnet(lab, 2, "exec", "lk2", "--", "ping", "-c1", "-W1",
                                                   e1["ip"]).returncode == 0)
    pcap = lab.dir / "leak2.pcap"
    try:
        with capture(["ip", "netns", "exec", lab.lan_ns], "any", pcap, "udp port 4789"):
            assert sh(lab, 2, "nft", "delete", "table", "inet", "meshnet").returncode == 0
            assert sh(lab, 2, "ip", "link", "del", "mnet0").returncode == 0
            sh(lab, 2, "ip", "route", "add", "10.249.0.0/16", "dev", "eth0")
            for _ in range(5):
                meshnet(lab, 2, "exec", "lk2", "--", "ping", "-c1", "-W1", e1["ip"])
    finally:
        sh(lab, 2, "ip", "route", "del", "10.249.0.0/16", "dev", "eth0")
    assert between_hosts(read_pcap(pcap)) == []
    wait_for("h2's agent to restore the tunnel and the guard", lambda: sh(
        lab, 2, "nft", "list", "table", "inet", "meshnet").returncode == 0 and sh(
        lab, 2, "ip", "link", "show", "mnet0").returncode == 0, timeout=30)
    wait_for("lk2 to reach lk1 again", lambda: meshnet(lab, 2, "exec", "lk2", "--", "ping", "-c1", "-W1",
                                                         e1["ip"]).returncode == 0, timeout=30)
    status = lab.client(2).get("/v1/status")
    assert any("VXLAN guard" in p for p in status["problems"])
    doctor = meshnet(lab, 2, "doctor")
    assert doctor.returncode == 1 and "recent problem" in doctor.stdout
    assert "PROBLEM" in meshnet(lab, 2, "status").stdout
    assert e2["node"] == "h2"


def test_doctor_on_a_healthy_host(lab):
    out = meshnet(lab, 3, "doctor", "--format", "json")
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert out.returncode == 0, out.stdout
    for name in ("vxlan guard", "mtu", "backend", "clock skew", "state permissions", "api socket"):
        assert checks[name]["status"] == "ok", checks[name]


def test_file_permissions(lab):
    lib = lab.host_dir(1) / "lib"
    assert oct(lib.stat().st_mode & 0o777) == "0o700"
    for f in ("identity.key", "wireguard.key", "cluster.secret"):
        assert oct((lib / f).stat().st_mode & 0o777) == "0o600", f
    assert oct(lab.socket(1).stat().st_mode & 0o777) == "0o600"


def test_killed_agent_keeps_its_tunnel_for_others(lab):
    ips = transit_ips(lab, 1)
    lab.stop_agent(3, signal.SIGKILL)
    try:
        assert ping(lab, 1, ips["h3"])  # the data plane does not depend on the agent
    finally:
        lab.start_agent(3)
