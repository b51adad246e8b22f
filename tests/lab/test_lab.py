"""The lab itself: hosts are isolated, and `lab down` leaves nothing behind."""

from __future__ import annotations

import subprocess

from meshnet.lab import Lab, labs
from tests.lab.helpers import sh


def _netns() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_hosts_have_own_hostname_and_state_dirs(make_lab):
    lab = make_lab(2, "l")
    assert sh(lab, 1, "hostname").stdout.strip() == "h1"
    assert sh(lab, 2, "hostname").stdout.strip() == "h2"
    # Each host's /var/lib/meshnet is its own: the identity keys differ.
    ids = {lab.client(k).get("/v1/status")["node_id"] for k in (1, 2)}
    assert len(ids) == 2
    assert any(entry["name"] == lab.name and entry["agents_running"] == 2 for entry in labs())


def test_down_leaves_nothing(make_lab):
    lab: Lab = make_lab(2, "d")
    lab.form_cluster()
    pids = [int((lab.host_dir(k) / f"{w}.pid").read_text()) for k in (1, 2) for w in ("agent", "holder")]
    wg_pids = subprocess.run(["ip", "netns", "pids", lab.ns(1)], capture_output=True,
                             text=True).stdout.split()
    assert len(wg_pids) >= 3  # holder, agent, wireguard-go
    lab.down()
    assert not [n for n in _netns() if n.startswith(f"mnl-{lab.name}-")]
    assert not lab.dir.exists()
    with open("/proc/mounts") as f:
        assert str(lab.dir) not in f.read()
    for pid in pids + [int(p) for p in wg_pids]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().split(")")[-1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z", f"process {pid} survived lab down"
    assert not lab.socket(1).exists()


def test_two_labs_at_once(make_lab):
    a, b = make_lab(1, "a"), make_lab(1, "b")
    assert a.lan_ns != b.lan_ns
    assert a.client(1).get("/v1/status")["node_id"] != b.client(1).get("/v1/status")["node_id"]
