"""Bad input, everywhere (issue 8, item 7): every row of docs/bad-input.md.

Each case runs one command with one invalid input and checks that it exits non-zero
(1: meshnet refused it; 2: a usage error from the option parser), prints exactly one
line on stderr with the expected text, and changed nothing: the networks, services,
endpoints and nodes (with their row versions) read the same before and after.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from meshnet.lab import Lab
from tests.lab.conftest import unique_name
from tests.lab.helpers import MESHNET, meshnet

LONG = "a" * 64
NOSOCK = "--socket /nonexistent/x.sock"
UNREACHABLE = "no meshnet agent answers on /nonexistent/x.sock"
NAME_RULE = "1-63 of letters, digits, '_', '.', '-', starting with a letter or digit"

# (where, command, exit code, expected text in the one stderr line). `where` is the lab
# host (1, 2) or "root" (the machine, for `meshnet lab`); {lab} is the test lab's name.
CASES = [
    # -- cluster ----------------------------------------------------------------------
    (1, "init --transit-cidr 10.300.0.0/16", 1,
     "invalid transit range '10.300.0.0/16': expected a CIDR like 10.249.0.0/16"),
    (1, "init --network-pool 10.10.0.1/16", 1,
     "invalid network pool '10.10.0.1/16': expected a CIDR like 10.249.0.0/16"),
    (1, "init", 1, "already a member of cluster"),
    (1, "init extra", 2, "Got unexpected extra argument (extra)"),
    (1, "join --token garbage 10.248.0.11", 1,
     "malformed join token: expected mnet1-<cluster>-<secret>-<check>"),
    (1, "join --token {token} 10.248.0.11", 1, "already a member of cluster"),
    (1, "join 10.248.0.11", 2, "Missing option '--token'"),
    (1, "token --bogus", 2, "No such option '--bogus'"),
    (1, "token rotate extra", 2, "Got unexpected extra argument (extra)"),
    (1, "keys rotate extra", 2, "Got unexpected extra argument (extra)"),
    (1, "keys bogus", 2, "No such command 'bogus'."),
    (1, "leave extra", 2, "Got unexpected extra argument (extra)"),
    (1, "status --format xml", 2, "Invalid value for '--format': 'xml' is not one of 'table', 'json'."),
    (1, "doctor --format xml", 2, "Invalid value for '--format': 'xml' is not one of 'table', 'json'."),
    (1, "bogus", 2, "No such command 'bogus'."),
    # -- node -------------------------------------------------------------------------
    (1, "node ls --format xml", 2, "Invalid value for '--format'"),
    (1, "node rm nosuch", 1, "no member 'nosuch' (see `meshnet node ls`)"),
    (1, "node rm h1", 1, "this is the local node: use `meshnet leave`"),
    (1, "node rm ''", 2, "Invalid value for 'NAMES...': '' is not a name"),
    (1, "node update --label novalue", 1, "invalid label 'novalue': expected KEY=VALUE"),
    (1, "node update nosuch --label a=b", 1, "no member 'nosuch'"),
    (1, f"node update {LONG} --label a=b", 1, f"no member '{LONG}'"),
    (1, "node update bad/name --label a=b", 1, "no member 'bad/name'"),
    # -- network ----------------------------------------------------------------------
    (1, "network create --subnet 10.300.0.0/24 n2", 1,
     "invalid subnet '10.300.0.0/24': '10.300.0.0/24' does not appear to be an IPv4 or IPv6 network"),
    (1, "network create --subnet notacidr n2", 1, "invalid subnet 'notacidr'"),
    (1, "network create --subnet 10.20.0.1/24 n2", 1,
     "invalid subnet '10.20.0.1/24': 10.20.0.1/24 has host bits set"),
    (1, "network create --subnet 10.30.0.0/30 n2", 1, "subnet 10.30.0.0/30 is too small: use /29 or larger"),
    (1, "network create --subnet 10.10.0.0/25 n2", 1,
     "subnet 10.10.0.0/25 overlaps network 'binet' (10.10.0.0/24)"),
    (1, "network create --subnet 10.249.0.0/24 n2", 1,
     "subnet 10.249.0.0/24 overlaps the cluster's transit range 10.249.0.0/16"),
    (1, "network create --subnet 10.21.0.0/24 --gateway 1.2.3.4 n2", 1,
     "gateway 1.2.3.4 is not a host address of 10.21.0.0/24"),
    (1, "network create binet", 1, "network 'binet' already exists"),
    (1, "network create -o mode=l4 n2", 1,
     "invalid network mode 'l4': l2 (bridged, the default) or l3 (routed)"),
    (1, "network create -o vlan=7 n2", 1,
     "unknown network option 'vlan': the only option is mode (l2 or l3)"),
    (1, "network create -o mode n2", 1, "invalid option 'mode': expected KEY=VALUE"),
    (1, f"network create {LONG}", 1, f"invalid network name '{LONG}': {NAME_RULE}"),
    (1, "network create bad/name", 1, f"invalid network name 'bad/name': {NAME_RULE}"),
    (1, "network create 'bad name'", 1, f"invalid network name 'bad name': {NAME_RULE}"),
    (1, "network create ''", 1, f"invalid network name '': {NAME_RULE}"),
    (1, "network create -d bridge n2", 1, "unknown driver 'bridge': meshnet networks are 'overlay'"),
    (1, "network create --label nolabel n2", 1, "invalid label 'nolabel': expected KEY=VALUE"),
    (1, "network ls --format xml", 2, "Invalid value for '--format'"),
    (1, "network inspect nosuch", 1, "no network 'nosuch' (see `meshnet network ls`)"),
    (1, "network inspect ..", 2, "Invalid value for 'NAMES...': '..' is not a name"),
    (1, "network rm nosuch", 1, "no network 'nosuch' (see `meshnet network ls`)"),
    (1, "network rm binet", 1, "network 'binet' has 2 endpoint(s) attached"),
    (1, "network rm", 2, "Missing argument 'NAMES...'."),
    # -- service ----------------------------------------------------------------------
    (1, "service create --name s2 --network nosuch -- sleep 1", 1, "no network 'nosuch'"),
    (1, "service create --name bisvc --network binet -- sleep 1", 1, "service 'bisvc' already exists"),
    (1, "service create --name s2 --network binet --replicas -1 -- sleep 1", 1,
     "replicas must be a whole number >= 0, not -1"),
    (1, "service create --name s2 --network binet", 1,
     "a service needs a command: meshnet service create ... -- CMD [ARGS]"),
    (1, f"service create --name {LONG} --network binet -- sleep 1", 1,
     f"invalid service name '{LONG}': {NAME_RULE}"),
    (1, "service create --name bad/x --network binet -- sleep 1", 1, "invalid service name 'bad/x'"),
    (1, "service create --name s2 --network binet --constraint foo -- sleep 1", 1,
     "invalid constraint 'foo': expected node.name==X, node.id!=X or node.labels.KEY==VALUE"),
    (1, "service create --name s2 --network binet --env X -- sleep 1", 1,
     "invalid label 'X': expected KEY=VALUE"),
    (1, "service create --name s2 --network binet --replicas abc -- sleep 1", 2,
     "Invalid value for '--replicas': 'abc' is not a valid integer."),
    (1, "service create --network binet -- sleep 1", 2, "Missing option '--name'."),
    (1, "service create --name s2 --network binet --endpoint-mode bogus -- sleep 1", 2,
     "Invalid value for '--endpoint-mode': 'bogus' is not one of 'vip', 'dnsrr'."),
    (1, "service ls --format xml", 2, "Invalid value for '--format'"),
    (1, "service ps nosuch", 1, "no service 'nosuch' (see `meshnet service ls`)"),
    (1, "service ps .", 2, "Invalid value for 'NAME': '.' is not a name"),
    (1, "service inspect nosuch", 1, "no service 'nosuch'"),
    (1, "service scale bisvc=-1", 1, "replicas must be a whole number >= 0, not -1"),
    (1, "service scale nosuch=2", 1, "no service 'nosuch'"),
    (1, "service scale bisvc", 1, "invalid scale 'bisvc': expected NAME=N with N a whole number"),
    (1, "service scale =3", 1, "invalid scale '=3'"),
    (1, "service update --replicas -2 bisvc", 1, "replicas must be a whole number >= 0, not -2"),
    (1, "service update --command '' bisvc", 1, "a service needs a command"),
    (1, "service update --command 'a \"b' bisvc", 2,
     "Invalid value for --command: 'a \"b': No closing quotation"),
    (1, "service update --constraint bad bisvc", 1, "invalid constraint 'bad'"),
    (1, "service update --replicas 2 nosuch", 1, "no service 'nosuch'"),
    (1, "service rm nosuch", 1, "no service 'nosuch'"),
    (1, "service logs nosuch", 1, "no service 'nosuch'"),
    (1, "service logs --tail -1 bisvc", 2, "Invalid value for '--tail': -1 is not in the range x>=0."),
    # -- endpoints --------------------------------------------------------------------
    (1, "run --network nosuch -- true", 1, "no network 'nosuch'"),
    (1, "run --network binet", 2, "Missing argument 'ARGV...'."),
    (1, "run --network binet --name biep -- true", 1, "endpoint 'biep' already exists"),
    (1, f"run --network binet --name {LONG} -- true", 1, f"invalid endpoint name '{LONG}': {NAME_RULE}"),
    (1, "run --network binet --name bad/x -- true", 1, "invalid endpoint name 'bad/x'"),
    (1, "run --network binet --ip 999.1.1.1 -- true", 1, "invalid IP address '999.1.1.1'"),
    (1, "run --network binet --ip 10.99.0.5 -- true", 1, "10.99.0.5 is not in binet's subnet 10.10.0.0/24"),
    (1, "run --network binet -d --rm -- true", 2, "--rm and -d do not go together"),
    (1, "exec nosuch -- true", 1,
     "no endpoint 'nosuch' (see `meshnet endpoint ls` or `meshnet service ps`)"),
    (1, "exec biep", 2, "Missing argument 'ARGV...'."),
    (2, "exec biep -- true", 1, "endpoint 'biep' runs on h1, not here: run this there"),
    (1, "attach --network binet", 2, "give exactly one of --pid and --netns"),
    (1, "attach --network nosuch --pid 1", 1, "no network 'nosuch'"),
    (1, "attach --network binet --pid 4194305", 1, "no process 4194305"),
    (1, "attach --network binet --netns nosuchns", 1, "no network namespace 'nosuchns'"),
    (1, "attach --network binet --netns bogus/../x", 1, "no network namespace 'bogus/../x'"),
    (1, "detach nosuch", 1, "no endpoint 'nosuch'"),
    (2, "detach biep", 1, "endpoint 'biep' lives on h1; remove it there"),
    (1, "endpoint ls --format xml", 2, "Invalid value for '--format'"),
    (1, "endpoint rm nosuch", 1, "no endpoint 'nosuch'"),
    (2, "endpoint rm biep", 1, "endpoint 'biep' lives on h1; remove it there"),
    # -- lab (on the machine) ---------------------------------------------------------
    ("root", "lab up --hosts 0 --name bifresh", 1, "a lab has 1 to 200 hosts"),
    ("root", f"lab up --name {LONG}", 1, f"invalid lab name '{LONG}': 1-12 of a-z, 0-9"),
    ("root", "lab up --name bad/x", 1, "invalid lab name 'bad/x': 1-12 of a-z, 0-9"),
    ("root", "lab up --hosts 2 --name {lab}", 1, "lab '{lab}' exists: `meshnet lab down --name {lab}` first"),
    ("root", "lab exec --name {lab} h9 -- true", 1, "lab '{lab}' has no host 'h9' (hosts: h1, h2)"),
    ("root", "lab exec --name {lab} h1", 2, "Missing argument 'ARGV...'."),
    ("root", "lab restart --name {lab} h9", 1, "lab '{lab}' has no host 'h9'"),
    ("root", "lab ls --format xml", 2, "Invalid value for '--format'"),
    ("root", "lab down --name bad/x", 1, "invalid lab name 'bad/x'"),
] + [  # -- no agent on the socket: every command that talks to it -----------------------
    (1, f"{NOSOCK} {cmd}", 1, UNREACHABLE) for cmd in (
        "init", "join --token {token} 10.248.0.11", "token", "token rotate", "keys rotate", "leave",
        "status", "doctor", "node ls", "node rm h2", "node update --label a=b", "network create n2",
        "network ls", "network inspect binet", "network rm binet",
        "service create --name s2 --network binet -- sleep 1", "service ls", "service ps bisvc",
        "service inspect bisvc", "service scale bisvc=2", "service update --replicas 2 bisvc",
        "service rm bisvc", "service logs bisvc", "run --network binet -- true", "exec biep -- true",
        "attach --network binet --netns x", "detach biep", "endpoint ls", "endpoint rm biep")
]


def _snapshot(lab: Lab, k: int) -> dict:
    """The replicated state as host k serves it, without the live counters."""
    c = lab.client(k)
    nodes = [{f: n[f] for f in ("id", "name", "version", "state", "labels", "transit_ip", "endpoint")}
             for n in c.get("/v1/nodes")["nodes"]]
    services = [{f: v for f, v in s.items() if f != "running"} for s in c.get("/v1/services")["services"]]
    return {"nodes": nodes, "services": services, "networks": c.get("/v1/networks")["networks"],
            "endpoints": c.get("/v1/endpoints")["endpoints"]}


@pytest.fixture(scope="module")
def cluster():
    """Two hosts in a cluster, with network binet, service bisvc and endpoint biep (on h1)."""
    lab = Lab(unique_name("bi"))
    try:
        lab.up(2)
        token = lab.form_cluster()
        c = lab.client(1)
        c.post("/v1/networks", {"name": "binet"})
        c.post("/v1/services", {"name": "bisvc", "networks": ["binet"], "replicas": 1,
                                "command": ["sleep", "infinity"]})
        c.post("/v1/endpoints", {"network": "binet", "name": "biep"})
        deadline = time.monotonic() + 30
        while True:  # settled: both hosts see the task and both endpoints
            snaps = [_snapshot(lab, k) for k in (1, 2)]
            running = c.get("/v1/services")["services"][0]["running"]
            for s in snaps:
                s["endpoints"] = [{f: v for f, v in e.items() if f != "local"} for e in s["endpoints"]]
            if running == 1 and all(len(s["endpoints"]) == 2 for s in snaps) and snaps[0] == snaps[1]:
                break
            assert time.monotonic() < deadline, f"lab did not settle: {snaps}"
            time.sleep(0.3)
        yield lab, token
    finally:
        lab.down()


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("meshnet: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(("where", "command", "code", "expected"), CASES,
                         ids=[f"h{w}: {c}" if w != "root" else c for w, c, _, _ in CASES])
def test_bad_input(cluster, where, command: str, code: int, expected: str) -> None:
    lab, token = cluster
    fill = {"lab": lab.name, "token": token}
    argv = [a.replace("{lab}", lab.name).replace("{token}", token) for a in shlex.split(command)]
    expected = expected.format(**fill)
    k = 1 if where == "root" else where
    before = _snapshot(lab, k)
    if where == "root":
        proc = subprocess.run([*MESHNET, *argv], capture_output=True, text=True, timeout=60)
    else:
        proc = meshnet(lab, where, *argv)
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert expected in _one_line(proc)
    assert proc.stdout == ""
    assert _snapshot(lab, k) == before
    if "bifresh" in command:
        assert not Lab("bifresh").dir.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GARBAGE = b"\x00garbage, not SQLite\xff" * 200
# (files in the state dir before the start, extra agent options, exit code, expected text)
AGENT_CASES = [
    ({"meshnet.db": GARBAGE}, "", 1,
     "state database {dir}/meshnet.db is unreadable or corrupt: file is not a database"),
    ({"identity.key": b"garbage\n"}, "", 1, "corrupt key file in {dir}: "),
    ({"identity.key": b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n", "wireguard.key": b"c2hvcnQ=\n"},
     "", 1,
     "corrupt key file in {dir}: expected 32 bytes, got 5"),
    ({}, "--listen 127.0.0.1:99999", 2, "Invalid value for --listen: bad port in address '127.0.0.1:99999'"),
    ({}, "--wireguard bogus", 2, "Invalid value for '--wireguard': 'bogus' is not one of"),
    ({}, "--wireguard-port -1", 2,
     "Invalid value for '--wireguard-port': -1 is not in the range 1<=x<=65535."),
    ({}, "--status-addr 0.0.0.0:{port}", 1,
     "the status page on 0.0.0.0 (not loopback) needs a token: pass --status-token (or bind 127.0.0.1)"),
    ({}, "--socket-group nosuchgroup", 2, "Invalid value for --socket-group: no group 'nosuchgroup'"),
    ({}, f"--name {LONG}", 2, f"Invalid value for --name: invalid node name '{LONG}'"),
    ({}, "--name bad/name", 2, "Invalid value for --name: invalid node name 'bad/name'"),
    ({}, "--interface abcdefghijklmnopq", 2, "Invalid value for --interface: 'abcdefghijklmnopq' is not"),
    ({}, "--dns-forward 999.1.1.1", 2, "Invalid value for --dns-forward: '999.1.1.1' is not IP[:PORT]"),
]


@pytest.mark.parametrize(("files", "options", "code", "expected"), AGENT_CASES,
                         ids=[" ".join(f) or o for f, o, _, _ in AGENT_CASES])
def test_agent_bad_start(tmp_path: Path, files: dict, options: str, code: int, expected: str) -> None:
    """`meshnet agent` on a corrupt state dir or with a bad option: exits at once with one
    line, no traceback, and writes nothing (the state dir holds only what it held)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for name, data in files.items():
        (state / name).write_bytes(data)
    port = _free_port()
    sock = tmp_path / "run" / "agent.sock"
    argv = [*MESHNET, "--socket", str(sock), "agent", "--state-dir", str(state),
            "--listen", f"127.0.0.1:{port}", "--no-mdns", "--status-addr", "off",
            *shlex.split(options.format(port=_free_port()))]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert time.monotonic() - start < 15
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert expected.format(dir=state) in _one_line(proc)
    assert sorted(p.name for p in state.iterdir()) == sorted(files)
    for name, data in files.items():
        assert (state / name).read_bytes() == data
    assert not sock.exists()

