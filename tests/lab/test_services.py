"""Services end to end on a 3-host lab: Docker's overlay workflow, placement, DNS, VIPs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from meshnet.lab import Lab
from tests.conftest import wait_for
from tests.lab.conftest import cluster_lab
from tests.lab.helpers import WHOAMI, meshnet

# A fake upstream resolver: ext.example -> 192.0.2.77, everything else NXDOMAIN.
UPSTREAM = ("import socket,dnslib\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.248.0.11',5300))\n"
            "while True:\n"
            " d,a=s.recvfrom(4096);q=dnslib.DNSRecord.parse(d);r=q.reply()\n"
            " if str(q.q.qname)=='ext.example.':\n"
            "  r.add_answer(*dnslib.RR.fromZone('ext.example. 60 A 192.0.2.77'))\n"
            " else: r.header.rcode=3\n"
            " s.sendto(r.pack(),a)")
FORWARDER = "10.248.0.11:5300"


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def py(lab: Lab, k: int, task: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return meshnet(lab, k, "exec", task, "--", sys.executable, "-c", code, timeout=timeout)


def resolve(lab: Lab, k: int, task: str, name: str) -> list[str]:
    out = py(lab, k, task, f"import socket;print(' '.join(sorted(socket.gethostbyname_ex({name!r})[2])))")
    return out.stdout.split() if out.returncode == 0 else []


def ps(lab: Lab, k: int, service: str) -> list[dict]:
    return lab.client(k).get(f"/v1/services/{service}/ps")["tasks"]


def running(lab: Lab, k: int, service: str) -> list[dict]:
    return [t for t in ps(lab, k, service) if t["state"] == "running"]


def where(lab: Lab, k: int, task: str) -> int:
    """The lab host (number) that runs a task, as host k sees it."""
    node = next(t["node"] for t in running(lab, k, task.rsplit(".", 1)[0]) if t["task"] == task)
    return int(node[1:])


@pytest.fixture(scope="module")
def lab():
    with cluster_lab("s", 3, agent_args=["--dns-forward", FORWARDER]) as lb:
        upstream = subprocess.Popen([*lb.enter(1), sys.executable, "-c", UPSTREAM])
        try:
            yield lb
        finally:
            upstream.kill()
            upstream.wait()

@pytest.fixture(scope="module")
def workflow(lab):
    """The Docker overlay lab, step by step, through the CLI."""
    steps = [
        (1, ["network", "create", "-d", "overlay", "appnet"]),
        (2, ["service", "create", "--name", "backend", "--network", "appnet", "--replicas", "2", "--",
             sys.executable, "-c", WHOAMI]),
        (3, ["service", "create", "--name", "frontend", "--network", "appnet", "--replicas", "2", "--",
             sys.executable, "-m", "http.server", "8080"]),
        (1, ["service", "scale", "backend=3", "frontend=3"]),
    ]
    for k, argv in steps:
        out = meshnet(lab, k, *argv)
        assert out.returncode == 0, (argv, out.stderr)
    for svc in ("backend", "frontend"):
        wait_for(f"3 running {svc} tasks", lambda svc=svc: len(running(lab, 1, svc)) == 3, timeout=30)
    return lab


def test_tasks_spread_over_hosts(workflow):
    lab = workflow
    for svc in ("backend", "frontend"):
        out = meshnet(lab, 2, "service", "ps", svc)
        assert out.returncode == 0
        assert sorted(t["node"] for t in running(lab, 2, svc)) == ["h1", "h2", "h3"]
    ls = meshnet(lab, 3, "service", "ls").stdout
    assert "3/3" in ls and "backend" in ls and "frontend" in ls


def test_frontend_reaches_backend_by_name_from_every_task(workflow):
    lab = workflow
    for slot in (1, 2, 3):
        task = f"frontend.{slot}"
        k = where(lab, 1, task)
        wait_for(f"{task} to reach backend by name", lambda k=k, task=task: py(
            lab, k, task, "import urllib.request as u;print(u.urlopen('http://backend:8000/').status)"
        ).stdout.strip() == "200")


def test_dns_names(workflow):
    lab = workflow
    k = where(lab, 1, "frontend.1")
    vip = lab.client(1).get("/v1/services/backend")["Endpoint"]["VirtualIPs"][0]["Addr"]
    assert resolve(lab, k, "frontend.1", "backend") == [vip]
    task_ips = sorted(t["ip"] for t in running(lab, 1, "backend"))
    assert resolve(lab, k, "frontend.1", "tasks.backend") == task_ips
    b2 = next(t["ip"] for t in running(lab, 1, "backend") if t["task"] == "backend.2")
    assert resolve(lab, k, "frontend.1", "backend.2") == [b2]
    ptr = py(lab, k, "frontend.1", f"import socket;print(socket.gethostbyaddr({b2!r})[0])")
    assert ptr.stdout.strip() == "backend.2"
    unknown = py(lab, k, "frontend.1", "import socket;socket.gethostbyname('nosuchservice')")
    assert unknown.returncode != 0 and "Name or service not known" in unknown.stderr


def test_external_name_is_forwarded(workflow):
    lab = workflow
    k = where(lab, 1, "frontend.2")
    assert resolve(lab, k, "frontend.2", "ext.example") == ["192.0.2.77"]


def test_vip_spreads_over_every_backend(workflow):
    lab = workflow
    k = where(lab, 1, "frontend.3")
    code = ("import urllib.request as u,collections\n"
            "c=collections.Counter(u.urlopen('http://backend:8000/').read().decode() for _ in range(30))\n"
            "print(sorted(c))")
    out = py(lab, k, "frontend.3", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(["backend.1", "backend.2", "backend.3"])


def test_scale_is_reflected_in_dns_everywhere(workflow):
    lab = workflow
    assert meshnet(lab, 2, "service", "scale", "backend=2").returncode == 0
    for slot in (1, 2, 3):
        task = f"frontend.{slot}"
        k = where(lab, 1, task)
        wait_for(f"{task} to see 2 backend tasks", lambda k=k, task=task:
                 len(resolve(lab, k, task, "tasks.backend")) == 2, timeout=10)
    assert meshnet(lab, 3, "service", "scale", "backend=3").returncode == 0
    for slot in (1, 2, 3):
        task = f"frontend.{slot}"
        k = where(lab, 1, task)
        wait_for(f"{task} to see 3 backend tasks", lambda k=k, task=task:
                 len(resolve(lab, k, task, "tasks.backend")) == 3, timeout=15)


def test_killed_task_is_restarted(workflow):
    lab = workflow
    k = where(lab, 1, "backend.1")
    files = list((lab.host_dir(k) / "lib" / "tasks").glob("*_1_*.json"))
    pids = [json.loads(f.read_text())["pid"] for f in files]
    backend = lab.client(1).get("/v1/services/backend")["ID"]
    pid = next(json.loads(f.read_text())["pid"] for f in files if f.name.startswith(backend))
    assert pids
    subprocess.run(["kill", "-9", str(pid)], check=True)
    wait_for("backend.1 to run again after a restart", lambda: any(
        t["task"] == "backend.1" and t["state"] == "running" and t["restarts"] >= 1
        for t in ps(lab, 1, "backend")), timeout=20)
    logs = meshnet(lab, 2, "service", "logs", "backend", "--tail", "5")
    assert logs.returncode == 0


def test_dead_host_tasks_move_and_dns_follows(workflow):
    lab = workflow
    victim = where(lab, 1, "backend.2")
    other = next(k for k in (1, 2, 3) if k != victim)
    front = next(f"frontend.{s}" for s in (1, 2, 3) if where(lab, other, f"frontend.{s}") == other)
    dead_ips = {t["ip"] for t in running(lab, other, "backend") if t["node"] == f"h{victim}"}
    lab.stop_agent(victim, signal.SIGKILL)
    try:
        started = time.monotonic()
        wait_for("backend.2 to run on another host", lambda: any(
            t["task"] == "backend.2" and t["node"] != f"h{victim}" and t["state"] == "running"
            for t in ps(lab, other, "backend")), timeout=30)
        wait_for("DNS to drop the dead host's tasks", lambda: (
            ips := set(resolve(lab, other, front, "tasks.backend"))) and not ips & dead_ips
            and len(ips) == 3, timeout=30)
        print(f"agent killed -> backend.2 re-placed and DNS updated in {time.monotonic() - started:.1f} s")
    finally:
        lab.start_agent(victim)

    def settled() -> bool:
        tasks = running(lab, other, "backend")
        slots = [t["task"] for t in tasks if "node down" not in t["state"]]
        return sorted(slots) == ["backend.1", "backend.2", "backend.3"]

    wait_for("every backend slot to run exactly once after the host returns", settled, timeout=40)


def test_names_are_isolated_between_networks(workflow):
    lab = workflow
    assert meshnet(lab, 1, "network", "create", "secret").returncode == 0
    out = meshnet(lab, 1, "service", "create", "--name", "vault", "--network", "secret", "--",
                  sys.executable, "-m", "http.server", "9000")
    assert out.returncode == 0, out.stderr
    wait_for("vault to run", lambda: len(running(lab, 1, "vault")) == 1, timeout=30)
    k = where(lab, 1, "frontend.1")
    assert resolve(lab, k, "frontend.1", "vault") == []
    assert resolve(lab, k, "frontend.1", "tasks.vault") == []
    assert meshnet(lab, 1, "service", "rm", "vault").returncode == 0
    wait_for("vault's task and endpoint to go", lambda: all(
        not e["name"].startswith("vault.") for e in lab.client(2).get("/v1/endpoints")["endpoints"]))


def test_bad_input_is_refused(workflow):
    lab = workflow
    cases = {
        ("service", "create", "--name", "x1", "--network", "nosuch", "--", "true"): "no network 'nosuch'",
        ("service", "create", "--name", "backend", "--network", "appnet", "--", "true"): "already exists",
        ("service", "create", "--name", "x2", "--network", "appnet", "--replicas", "-1", "--", "true"):
            "replicas must be",
        ("service", "create", "--name", "x3", "--network", "appnet"): "needs a command",
        ("service", "scale", "backend=-2"): "replicas must be",
        ("service", "scale", "backend"): "expected NAME=N",
        ("service", "ps", "nosuch"): "no service 'nosuch'",
        ("service", "create", "--name", "x4", "--network", "appnet", "--constraint", "bogus", "--", "true"):
            "invalid constraint",
    }
    for argv, message in cases.items():
        out = meshnet(lab, 2, *argv)
        assert out.returncode == 1, (argv, out.stdout)
        assert message in out.stderr and out.stderr.count("\n") == 1, (argv, out.stderr)


def task_pids(lab: Lab, service_id: str) -> list[int]:
    """Pids of a service's task processes, from each host's task files."""
    return [json.loads(f.read_text())["pid"] for k in (1, 2, 3)
            for f in (lab.host_dir(k) / "lib" / "tasks").glob(f"{service_id}_*.json")]


def test_rm_stops_tasks_everywhere(workflow):
    lab = workflow
    sid = lab.client(1).get("/v1/services/frontend")["ID"]
    pids = task_pids(lab, sid)
    assert len(pids) == 3
    assert meshnet(lab, 3, "service", "rm", "frontend").returncode == 0
    for k in (1, 2, 3):
        wait_for(f"h{k} to drop every frontend endpoint", lambda k=k: all(
            not e["name"].startswith("frontend.") for e in lab.client(k).get("/v1/endpoints")["endpoints"]),
            timeout=20)
    wait_for("every frontend process to exit", lambda: not any(os.path.exists(f"/proc/{p}") and
                                                               b"8080" in _cmdline(str(p)) for p in pids))
    assert task_pids(lab, sid) == []
    assert "frontend" not in meshnet(lab, 1, "service", "ls").stdout
