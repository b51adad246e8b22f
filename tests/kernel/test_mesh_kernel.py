"""meshnet's own lab on a real kernel: the agents pick kernel WireGuard and the mesh works.

Runs inside the qemu guest of tests/kernel/run, where `--wireguard auto` finds the
`wireguard` module (on our hosts it falls back to wireguard-go; tests/lab shows that).
Three simulated hosts (meshnet.lab.Lab) form a cluster; the tests check the kernel
device, pings over transit, what netlink reads back (KernelWireGuard.read), that the
reconcile converges and stops changing the device, an overlay network (VXLAN inside
kernel WireGuard), and a leave. On the host these tests are deselected with
`-m "not kernel"`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import threading
import time
from itertools import permutations

import pytest

from meshnet.config import WIREGUARD_PORT
from meshnet.host.wireguard import KernelWireGuard
from meshnet.keys import load_or_create
from meshnet.lab import Lab
from meshnet.plan.wireguard import Device, PeerStats, desired, diff
from meshnet.store import Store
from tests.conftest import wait_for
from tests.lab.helpers import meshnet, nodes, ping, sh, transit_ips, wg_peers

pytestmark = pytest.mark.kernel

HOSTS = (1, 2, 3)
CHANGE_LINE = re.compile(r"WireGuard mnet0: \d+ change\(s\)")
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)

def read_device(lab: Lab, k: int) -> tuple[Device, dict[str, PeerStats]]:
    """mnet0 of host hK as KernelWireGuard.read() sees it through netlink.

    Read from a thread that joins the host's network namespace (setns is per thread),
    not from a `python -c` on the host: a new Python costs seconds under TCG.
    """
    result: dict = {}

    def work() -> None:
        try:
            fd = os.open(f"/run/netns/{lab.ns(k)}", os.O_RDONLY)
            try:
                if LIBC.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {lab.ns(k)} failed")
            finally:
                os.close(fd)
            result["read"] = KernelWireGuard().read("mnet0")
        except BaseException as e:  # handed to the caller
            result["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    if "error" in result:
        raise result["error"]
    device, stats = result["read"]
    return device, {s.public_key: s for s in stats}


def pending_ops(lab: Lab, k: int, device: Device) -> list:
    """What the agent's own reconcile would still apply: diff(read back, desired from its store)."""
    state = lab.host_dir(k) / "lib"
    keys = load_or_create(state)
    store = Store(state / "meshnet.db")
    try:
        want = desired(keys.node_id, keys.wireguard_private, WIREGUARD_PORT, store.nodes())
    finally:
        store.close()
    return diff(device, want)


class GuestLab(Lab):
    """Under TCG an agent needs ~15 s just to import (2 CPUs for 3 agents): give
    `up` more than meshnet.lab's 30 s per agent."""

    def wait_agent(self, k: int, timeout: float = 300) -> None:
        super().wait_agent(k, timeout=timeout)


def change_lines(lab: Lab, k: int) -> int:
    return len(CHANGE_LINE.findall((lab.host_dir(k) / "agent.log").read_text()))


@contextlib.contextmanager
def guest_cluster(prefix: str, **init):
    """A 3-host lab in the guest formed into a cluster (init options passed on), removed
    afterwards; prints how long start-up and forming took under emulation."""
    lb = GuestLab(f"{prefix}{secrets.token_hex(3)}")
    started = time.monotonic()
    try:
        lb.up(len(HOSTS))
        up = time.monotonic()
        lb.form_cluster(**init)
        for k in HOSTS:
            wait_for(f"h{k} to list 3 active members",
                     lambda k=k: sorted(transit_ips(lb, k)) == ["h1", "h2", "h3"], timeout=60)
        print(f"\nlab up in {up - started:.1f} s, cluster formed in {time.monotonic() - up:.1f} s")
        yield lb
    finally:
        lb.down()


@pytest.fixture(scope="module")
def lab():
    with guest_cluster("k") as lb:
        yield lb


def pubkeys(lab: Lab) -> dict[int, str]:
    keys = {}
    for k in HOSTS:
        out = sh(lab, k, "wg", "show", "mnet0", "public-key")
        assert out.returncode == 0, out.stderr
        keys[k] = out.stdout.strip()
    return keys


def test_auto_picks_the_kernel_backend(lab):
    for k in HOSTS:
        assert lab.client(k).get("/v1/status")["backend"] == "kernel"
        out = sh(lab, k, "ip", "-d", "link", "show", "mnet0")
        assert out.returncode == 0, out.stderr
        assert re.search(r"^\s+wireguard\b", out.stdout, re.M), out.stdout
        assert "WireGuard backend: kernel" in (lab.host_dir(k) / "agent.log").read_text()


def test_every_pair_pings_over_transit(lab):
    ips = transit_ips(lab, 1)
    for a, b in permutations(HOSTS, 2):
        wait_for(f"h{a} to ping h{b}", lambda a=a, b=b: ping(lab, a, ips[f"h{b}"]), timeout=30)


def test_wg_show_lists_the_other_peers_with_handshakes(lab):
    keys = pubkeys(lab)
    for k in HOSTS:
        others = {keys[o] for o in HOSTS if o != k}
        assert wg_peers(lab, k) == others
        dump = sh(lab, k, "wg", "show", "mnet0", "dump").stdout.splitlines()
        # First line is the device; then: pub psk endpoint allowed handshake rx tx keepalive.
        peers = {f[0]: f for f in (line.split("\t") for line in dump[1:])}
        assert set(peers) == others
        for o in HOSTS:
            if o == k:
                continue
            f = peers[keys[o]]
            assert f[2] == f"{lab.ip(o)}:51820", f
            assert int(f[4]) > 0 and int(f[5]) > 0 and int(f[6]) > 0, f
            assert f[7] == "25", f


def test_node_views_and_netlink_read_back(lab):
    keys = pubkeys(lab)
    ips = transit_ips(lab, 1)
    for k in HOSTS:
        # Fresh traffic so every counter has moved and the API refreshes its stats.
        for o in HOSTS:
            if o != k:
                assert ping(lab, k, ips[f"h{o}"], timeout=5)
        views = {n["name"]: n for n in nodes(lab, k)}
        device, stats = read_device(lab, k)
        assert device.private_key == load_or_create(lab.host_dir(k) / "lib").wireguard_private
        assert device.listen_port == WIREGUARD_PORT
        assert set(device.peers) == {keys[o] for o in HOSTS if o != k}
        for o in HOSTS:
            v = views[f"h{o}"]
            if o == k:
                assert v["self"]
                continue
            assert v["handshake_age"] is not None and 0 <= v["handshake_age"] < 180, v
            assert v["rx_bytes"] > 0 and v["tx_bytes"] > 0, v
            peer, st = device.peers[keys[o]], stats[keys[o]]
            assert peer.endpoint == f"{lab.ip(o)}:{WIREGUARD_PORT}"
            assert peer.allowed_ips == (f"{ips[f'h{o}']}/32",)
            assert peer.keepalive == 25
            assert st.endpoint == peer.endpoint
            assert abs(time.time() - st.last_handshake) < 180, st  # Unix time, not an age
            assert st.last_handshake == v["last_handshake"]
            # The API read the counters a moment before us; they only grow.
            assert st.rx_bytes >= v["rx_bytes"] > 0 and st.tx_bytes >= v["tx_bytes"] > 0
        assert pending_ops(lab, k, device) == []
    out = meshnet(lab, 1, "node", "ls")
    assert out.returncode == 0, out.stderr
    assert "ago" in out.stdout


def ns_ping(lab: Lab, k: int, ep: dict, ip: str) -> bool:
    """One ping from endpoint `ep` on host k, straight into its namespace: a `meshnet
    exec` costs seconds under TCG."""
    ns = f"mne-{ep['id'][:12]}"
    return sh(lab, k, "ip", "netns", "exec", ns, "ping", "-c1", "-W2", ip).returncode == 0


def test_overlay_network_over_kernel_wireguard(lab):
    c = lab.client(1)
    c.post("/v1/networks", {"name": "kn"})
    eps = {k: lab.client(k).post("/v1/endpoints", {"network": "kn", "name": f"k{k}"})
           for k in HOSTS}
    for k in HOSTS:
        wait_for(f"h{k} to see 3 endpoints on kn",
                 lambda k=k: len(lab.client(k).get("/v1/networks/kn")["Containers"]) == 3,
                 timeout=60)
    for k in HOSTS:
        out = sh(lab, k, "ip", "-d", "link", "show", "type", "vxlan")
        assert "vxlan id" in out.stdout, out.stdout + out.stderr

    for a, b in permutations(HOSTS, 2):
        wait_for(f"k{a} to ping k{b}", lambda a=a, b=b: ns_ping(lab, a, eps[a], eps[b]["ip"]), timeout=60)
    # And once the way a user does it.
    out = meshnet(lab, 1, "exec", "k1", "--", "ping", "-c1", "-W2", eps[3]["ip"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_routed_network_over_kernel_wireguard(lab):
    """A routed (mode=l3) network: the endpoint addresses become allowed IPs set through
    netlink, and IP packets go straight into kernel WireGuard (docs/routed.md)."""
    lab.client(1).post("/v1/networks", {"name": "kr", "options": {"mode": "l3"}})
    eps = {k: lab.client(k).post("/v1/endpoints", {"network": "kr", "name": f"r{k}"}) for k in HOSTS}

    for a, b in permutations(HOSTS, 2):
        wait_for(f"r{a} to ping r{b}", lambda a=a, b=b: ns_ping(lab, a, eps[a], eps[b]["ip"]), timeout=60)
    allowed = sh(lab, 1, "wg", "show", "mnet0", "allowed-ips").stdout
    assert f"{eps[2]['ip']}/32" in allowed and f"{eps[3]['ip']}/32" in allowed, allowed
    assert f"{eps[1]['ip']}/32" not in allowed  # its own endpoint is local, not a peer's
    # Gone again: the endpoints' addresses leave the peers' allowed IPs through netlink.
    for k in HOSTS:
        lab.client(k).delete(f"/v1/endpoints/r{k}")
    lab.client(1).delete("/v1/networks/kr")
    for k in HOSTS:
        wait_for(f"h{k} to drop the routed addresses", lambda k=k: all(
            len(p.allowed_ips) == 1 for p in read_device(lab, k)[0].peers.values()), timeout=60)


def test_reconcile_stops_changing_the_device(lab):
    """After convergence a reconcile pass applies nothing (read back == desired)."""
    before = {k: change_lines(lab, k) for k in HOSTS}
    time.sleep(2 * 5 + 1)  # two reconcile intervals (AgentConfig.reconcile_interval)
    after = {k: change_lines(lab, k) for k in HOSTS}
    assert after == before, "the agents kept changing mnet0:\n" + "\n".join(
        line for k in HOSTS for line in (lab.host_dir(k) / "agent.log").read_text().splitlines()
        if CHANGE_LINE.search(line))
    for k in HOSTS:
        assert pending_ops(lab, k, read_device(lab, k)[0]) == []


def test_leave_drops_the_peer_through_netlink(lab):
    keys = pubkeys(lab)
    lab.client(3).post("/v1/leave", {})
    for k in (1, 2):
        wait_for(f"h{k} to drop h3's peer",
                 lambda k=k: keys[3] not in read_device(lab, k)[0].peers, timeout=30)
        other = 2 if k == 1 else 1
        device, _ = read_device(lab, k)
        assert set(device.peers) == {keys[other]}
        assert pending_ops(lab, k, device) == []
        assert wg_peers(lab, k) == {keys[other]}
        assert "h3" not in transit_ips(lab, k)
    assert sh(lab, 3, "ip", "link", "show", "mnet0").returncode != 0
    assert lab.client(3).get("/v1/status")["member"] is False
    ips = transit_ips(lab, 1)
    assert ping(lab, 1, ips["h2"]) and ping(lab, 2, ips["h1"])
