"""The IPsec (ESP) transit backend on a real kernel: the applier alone, then meshnet's lab.

Runs inside the qemu guest of tests/kernel/run (Debian's kernel has ESP and xfrm
interfaces; the host's has neither). First `IpsecTransit` between two namespaces
(create, apply the model's ops, ping, a hand-deleted SA, remove, delete); then a 3-host
`meshnet.lab.Lab` whose h1 inits with `encryption: ipsec` and the others join: backend,
pings, a LAN capture with only ESP, an overlay network, SA counters, convergence and a
leave. On the host these tests are deselected with `-m "not kernel"`.
"""

from __future__ import annotations

import base64
import re
import subprocess
import time
from itertools import permutations

import pytest
from nacl.public import PrivateKey

from meshnet.host.ipsec import IpsecTransit, parse_policies, parse_states
from meshnet.plan.ipsec import IF_ID
from meshnet.plan.wireguard import Device, Peer, RemovePeer, diff
from tests.conftest import wait_for
from tests.kernel.test_mesh_kernel import change_lines, guest_cluster
from tests.lab.helpers import between_hosts, capture, nodes, ping, read_pcap, sh, transit_ips

pytestmark = pytest.mark.kernel

HOSTS = (1, 2, 3)
TRANSIT = ("10.249.0.1", "10.249.0.2")


def keypair() -> tuple[str, str]:
    k = PrivateKey.generate()
    return base64.b64encode(bytes(k)).decode(), base64.b64encode(bytes(k.public_key)).decode()


def ns_ping(ns: str, ip: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W2", ip],
                          capture_output=True).returncode == 0


def test_ipsec_applier_between_two_namespaces(ns_pair) -> None:
    a, b = ns_pair
    keys = {a.ns: keypair(), b.ns: keypair()}
    sides = []
    for side, peer, mine, theirs in ((a, b, TRANSIT[0], TRANSIT[1]), (b, a, TRANSIT[1], TRANSIT[0])):
        t = IpsecTransit(side.addr, mine, underlay_dev=side.ns, netns=side.ns)
        assert not t.exists("mnet0")
        t.create("mnet0")
        t.create("mnet0")  # idempotent
        assert t.exists("mnet0")
        side.run("ip", "addr", "add", f"{mine}/16", "dev", "mnet0")
        side.run("ip", "link", "set", "mnet0", "mtu", "1420", "up")
        pub = keys[peer.ns][1]
        want = Device(keys[side.ns][0], 51820, {pub: Peer(pub, f"{peer.addr}:51820", (f"{theirs}/32",))})
        ops = diff(t.read("mnet0")[0], want)
        t.apply("mnet0", ops)
        assert diff(t.read("mnet0")[0], want) == []
        t.apply("mnet0", ops)  # applying the same ops twice is harmless
        assert diff(t.read("mnet0")[0], want) == []
        sides.append((side, t, want, pub))
    print(a.run("ip", "-s", "xfrm", "state"))
    print(a.run("ip", "-s", "xfrm", "policy"))
    print(a.run("ip", "-d", "link", "show", "mnet0"))
    assert "xfrm" in a.run("ip", "-d", "link", "show", "mnet0")
    with a.capture() as packets:
        a.run("ping", "-c", "3", "-W", "5", TRANSIT[1])
    assert packets, "nothing captured on the veth"
    for line in packets:
        assert "ESP(spi=" in line, line
    for _side, t, _, pub in sides:
        (st,) = t.read("mnet0")[1]
        assert st.public_key == pub and st.last_handshake == 0.0
        assert st.rx_bytes > 0 and st.tx_bytes > 0, st
        for s in t.states():
            assert s.if_id == IF_ID and s.mode == "tunnel", s
        # The outbound SA and one inbound SA (this epoch's) carry the pings; the next
        # epoch's inbound SA waits (docs/ipsec.md, "Rotation").
        outs = [s for s in t.states() if s.src == _side.addr]
        assert len(outs) == 1 and outs[0].packets >= 3, outs
        assert max(s.packets for s in t.states() if s.dst == _side.addr) >= 3
    # A hand-deleted SA: the peer reads as missing, and the diff puts it back.
    side, t, want, pub = sides[0]
    out_sa = next(s for s in t.states() if s.src == side.addr)
    side.run("ip", "xfrm", "state", "delete", "src", out_sa.src, "dst", out_sa.dst, "proto", "esp",
             "spi", hex(out_sa.spi))
    assert not ns_ping(a.ns, TRANSIT[1])  # no SA: dropped, never sent in clear
    ops = diff(t.read("mnet0")[0], want)
    assert [type(o).__name__ for o in ops] == ["SetPeer"]
    t.apply("mnet0", ops)
    # The re-made SA starts its sequence numbers over: b's replay window drops them, b sees
    # replays and no progress, reports the peer missing, and makes its inbound SA again.
    _, tb, want_b, _ = sides[1]
    assert diff(tb.read("mnet0")[0], want_b) == []
    assert not ns_ping(a.ns, TRANSIT[1])
    ops = diff(tb.read("mnet0")[0], want_b)
    assert [type(o).__name__ for o in ops] == ["SetPeer"]
    tb.apply("mnet0", ops)
    assert diff(tb.read("mnet0")[0], want_b) == []
    assert ns_ping(a.ns, TRANSIT[1])
    # RemovePeer drops its SAs and policies, and traffic stops.
    t.apply("mnet0", [RemovePeer(pub)])
    assert t.states() == [] and t.policies() == []
    assert not ns_ping(a.ns, TRANSIT[1])
    # delete(): the link and everything tagged with our if_id.
    tb.delete("mnet0")
    assert not tb.exists("mnet0") and tb.states() == [] and tb.policies() == []


# -- the lab -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab():
    with guest_cluster("i", encryption="ipsec") as lb:
        yield lb


def states(lab, k: int):
    out = sh(lab, k, "ip", "-s", "xfrm", "state")
    assert out.returncode == 0, out.stderr
    return [s for s in parse_states(out.stdout) if s.if_id == IF_ID]


def sa_counts_ok(lab, k: int, peers: int) -> bool:
    """Per peer one outbound SA, and inbound ones for this and the next epoch (plus the
    previous epoch's during the grace after an hourly boundary): docs/ipsec.md."""
    ss = states(lab, k)
    outs = [s for s in ss if s.src == lab.ip(k)]
    return len(outs) == peers and 2 * peers <= len(ss) - len(outs) <= 3 * peers


def test_ipsec_backend_everywhere(lab):
    for k in HOSTS:
        status = lab.client(k).get("/v1/status")
        assert status["backend"] == "ipsec", status
        assert status["transit_mtu"] == 1500 - 80, status
        out = sh(lab, k, "ip", "-d", "link", "show", "mnet0")
        assert out.returncode == 0, out.stderr
        assert re.search(r"^\s+xfrm\b", out.stdout, re.M), out.stdout
        assert "WireGuard backend: ipsec" in (lab.host_dir(k) / "agent.log").read_text()
        doctor = {c["name"]: c for c in lab.client(k).get("/v1/doctor")["checks"]}
        assert doctor["backend"]["status"] == "ok" and "ipsec" in doctor["backend"]["detail"], doctor
        wait_for(f"h{k} to hold its SAs", lambda k=k: sa_counts_ok(lab, k, 2), timeout=30)


def test_ipsec_every_pair_pings_over_transit(lab):
    ips = transit_ips(lab, 1)
    for a, b in permutations(HOSTS, 2):
        wait_for(f"h{a} to ping h{b}", lambda a=a, b=b: ping(lab, a, ips[f"h{b}"]), timeout=30)


def test_ipsec_lan_capture_shows_only_esp(lab):
    ips = transit_ips(lab, 1)
    mark = b"meshnet-ipsecmrk"  # ping -p takes at most 16 bytes
    pcap = lab.dir / "lan.pcap"
    with capture(["ip", "netns", "exec", lab.lan_ns], "any", pcap):
        for a, b in ((1, 2), (2, 3), (3, 1)):
            assert ping(lab, a, ips[f"h{b}"], count=3, size=1000, pattern=mark.hex())
        lab.client(2).get("/v1/nodes")
    mesh = between_hosts(read_pcap(pcap))
    assert len(mesh) >= 18, mesh
    others = [p for p in mesh if "ESP" not in p]
    assert others == [], f"non-ESP packets on the LAN: {others[:5]}"
    assert mark not in pcap.read_bytes()


def test_ipsec_overlay_network(lab):
    lab.client(1).post("/v1/networks", {"name": "in"})
    eps = {k: lab.client(k).post("/v1/endpoints", {"network": "in", "name": f"i{k}"}) for k in HOSTS}
    for k in HOSTS:
        wait_for(f"h{k} to see 3 endpoints on in",
                 lambda k=k: len(lab.client(k).get("/v1/networks/in")["Containers"]) == 3, timeout=60)

    def ep_ping(a: int, ip: str) -> bool:
        ns = f"mne-{eps[a]['id'][:12]}"
        return sh(lab, a, "ip", "netns", "exec", ns, "ping", "-c1", "-W2", ip).returncode == 0

    for a, b in permutations(HOSTS, 2):
        wait_for(f"i{a} to ping i{b}", lambda a=a, b=b: ep_ping(a, eps[b]["ip"]), timeout=60)


def test_ipsec_sa_counters_and_a_deleted_sa_comes_back(lab):
    for k in HOSTS:
        ss = states(lab, k)
        for s in ss:
            assert s.mode == "tunnel", (k, s)
        for o in HOSTS:
            if o != k:  # both directions with every peer carry packets
                assert any(s.packets > 0 for s in ss if s.src == lab.ip(k) and s.dst == lab.ip(o)), ss
                assert any(s.packets > 0 for s in ss if s.src == lab.ip(o) and s.dst == lab.ip(k)), ss
    views = {n["name"]: n for n in nodes(lab, 1)}
    for o in (2, 3):
        assert views[f"h{o}"]["rx_bytes"] > 0 and views[f"h{o}"]["tx_bytes"] > 0, views
        assert views[f"h{o}"]["last_handshake"] is None  # ESP has no handshake
    victim = next(s for s in states(lab, 1) if s.src == lab.ip(1))
    out = sh(lab, 1, "ip", "xfrm", "state", "delete", "src", victim.src, "dst", victim.dst,
             "proto", "esp", "spi", hex(victim.spi))
    assert out.returncode == 0, out.stderr
    wait_for("h1's reconcile to restore the SA",
             lambda: any(s.spi == victim.spi for s in states(lab, 1)), timeout=30)
    ips = transit_ips(lab, 1)
    peer = next(k for k in HOSTS if lab.ip(k) == victim.dst)
    # The peer drops the restarted SA's packets as replays until its reconcile notices
    # (two reads, 5 s apart) and makes its inbound SA again.
    wait_for("h1 to ping again", lambda: ping(lab, 1, ips[f"h{peer}"]), timeout=45)


def test_ipsec_reconcile_converges(lab):
    before = {k: change_lines(lab, k) for k in HOSTS}
    time.sleep(2 * 5 + 1)
    assert {k: change_lines(lab, k) for k in HOSTS} == before


def out_spis(lab, k: int) -> dict[str, int]:
    """Peer underlay address -> the SPI h{k}'s out policy sends with."""
    out = sh(lab, k, "ip", "-s", "xfrm", "policy")
    return {p.tmpl_dst: p.tmpl_spi for p in parse_policies(out.stdout) if p.dir == "out" and p.if_id == IF_ID}


def test_ipsec_keys_rotate_is_hitless(lab):
    """`meshnet keys rotate` on h1 under a 10/s ping from h2: the peers learn the new key
    first, both sides switch SAs after the delay (10 s), no ping is lost (docs/ipsec.md)."""
    ips = transit_ips(lab, 2)
    before = {k: out_spis(lab, k) for k in (1, 2)}
    pinger = subprocess.Popen([*lab.enter(2), "ping", "-q", "-i", "0.1", "-W", "2", "-c", "350",
                               ips["h1"]], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    # What `meshnet keys rotate` posts (a CLI process costs seconds of imports under TCG).
    rotated = lab.client(1).post("/v1/keys/rotate")
    assert rotated["old"] != rotated["new"]
    pinged = pinger.communicate(timeout=120)[0]
    # Both ends switched while the ping ran.
    after = {k: out_spis(lab, k) for k in (1, 2)}
    m = re.search(r"(\d+) packets transmitted, (\d+) received", pinged)
    assert m and m.group(1) == m.group(2) == "350", pinged
    assert after[1][lab.ip(2)] != before[1][lab.ip(2)] and after[2][lab.ip(1)] != before[2][lab.ip(1)]
    assert after[2][lab.ip(3)] == before[2][lab.ip(3)]  # h2-h3 keys did not change


def test_ipsec_leave_removes_the_sas(lab):
    lab.client(3).post("/v1/leave", {})
    for k in (1, 2):
        wait_for(f"h{k} to drop h3's SAs",
                 lambda k=k: all(lab.ip(3) not in (s.src, s.dst) for s in states(lab, k)), timeout=30)
        # One outbound SA left; the inbound ones may still include those of h1's previous
        # key (its grace is 60 s), all from the one remaining peer.
        assert len([s for s in states(lab, k) if s.src == lab.ip(k)]) == 1
        assert "h3" not in transit_ips(lab, k)
    assert sh(lab, 3, "ip", "link", "show", "mnet0").returncode != 0
    assert states(lab, 3) == []
    pols = sh(lab, 3, "ip", "xfrm", "policy").stdout
    assert "if_id 0x6d6e" not in pols, pols
    ips = transit_ips(lab, 1)
    assert ping(lab, 1, ips["h2"]) and ping(lab, 2, ips["h1"])
