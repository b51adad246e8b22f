"""Simulated hosts on one machine, for the demo, the tests and the benchmarks.

Host hK of lab NAME is:
- a network namespace `mnl-NAME-hK` with eth0 on the lab LAN (10.248.0.(10+K)/24);
- a holder process (`sleep infinity`) owning a private mount and UTS namespace, where
  /var/lib/meshnet, /run/meshnet, /run/wireguard, /run/netns and /etc/netns are bind
  mounts of the host's own directories under /run/meshnet-lab/NAME/hK, and the
  hostname is hK;
- an agent started into the holder's namespaces, so it can be killed and restarted
  while the host (its mounts, links and wireguard-go) stays.
The LAN is a bridge in its own namespace `mnl-NAME-lan`: the root namespace gets no
links, addresses or routes, so a lab cannot clash with the machine it runs on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshnet.api.client import Client
from meshnet.config import STATUS_PORT
from meshnet.errors import MeshnetError, NotFound
from meshnet.host.cmd import run

LAB_ROOT = Path("/run/meshnet-lab")
LAN_PREFIX = "10.248.0"
NAME_RE = re.compile(r"^[a-z0-9]{1,12}$")
# Each host's own copies; /run/netns and /etc/netns too, so endpoint namespaces a host
# makes are its own and vanish with the lab.
MOUNTS = {"lib": "/var/lib/meshnet", "run": "/run/meshnet", "wg": "/run/wireguard",
          "netns": "/run/netns", "etcnetns": "/etc/netns"}


def _wait(what: str, ok, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise MeshnetError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Lab:
    name: str = "lab"

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise MeshnetError(f"invalid lab name {self.name!r}: 1-12 of a-z, 0-9")

    # -- naming ----------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return LAB_ROOT / self.name

    @property
    def lan_ns(self) -> str:
        return f"mnl-{self.name}-lan"

    def ns(self, k: int) -> str:
        return f"mnl-{self.name}-h{k}"

    def host_dir(self, k: int) -> Path:
        return self.dir / f"h{k}"

    def ip(self, k: int) -> str:
        return f"{LAN_PREFIX}.{10 + k}"

    def socket(self, k: int) -> Path:
        return self.host_dir(k) / "run" / "agent.sock"

    def client(self, k: int, timeout: float = 60) -> Client:
        return Client(self.socket(k), timeout=timeout)

    def hosts(self) -> list[int]:
        try:
            return json.loads((self.dir / "lab.json").read_text())["hosts"]
        except (OSError, ValueError, KeyError):
            return []

    def _pid(self, k: int, what: str) -> int | None:
        try:
            return int((self.host_dir(k) / f"{what}.pid").read_text())
        except (OSError, ValueError):
            return None

    def host_index(self, host: str) -> int:
        m = re.fullmatch(r"h(\d+)", host)
        if not m or int(m.group(1)) not in self.hosts():
            raise NotFound(f"lab {self.name!r} has no host {host!r} (hosts: "
                           f"{', '.join(f'h{k}' for k in self.hosts()) or 'none'})")
        return int(m.group(1))

    # -- up ----------------------------------------------------------------------------

    def up(self, hosts: int, agent_args: list[str] | None = None,
           status_port_base: int | None = None) -> None:
        """Build the lab. With `status_port_base`, also forward 127.0.0.1:(base+K) in the
        root namespace to hK's status page (0: ports the kernel picks); see `forward`."""
        if hosts < 1 or hosts > 200:
            raise MeshnetError("a lab has 1 to 200 hosts")
        if self.dir.exists() or self.lan_ns in _netns_list():
            raise MeshnetError(f"lab {self.name!r} exists: `meshnet lab down --name {self.name}` first")
        self.dir.mkdir(parents=True)
        (self.dir / "lab.json").write_text(json.dumps({"hosts": list(range(1, hosts + 1)),
                                                       "agent_args": agent_args or []}))
        try:
            run(["ip", "netns", "add", self.lan_ns])
            run(["ip", "-n", self.lan_ns, "link", "add", "lan0", "type", "bridge"])
            run(["ip", "-n", self.lan_ns, "link", "set", "lan0", "up"])
            for k in range(1, hosts + 1):
                self._make_host(k)
            for k in range(1, hosts + 1):
                self.start_agent(k, wait=False)
            for k in range(1, hosts + 1):
                self.wait_agent(k)
            if status_port_base is not None:
                self.forward(status_port_base)
        except BaseException:
            self.down()
            raise

    def _make_host(self, k: int) -> None:
        ns, hd = self.ns(k), self.host_dir(k)
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", self.lan_ns, "link", "add", f"h{k}", "type", "veth",
             "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", self.lan_ns, "link", "set", f"h{k}", "master", "lan0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{self.ip(k)}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # A LAN host has a multicast route (mDNS needs it; there is no default route).
        run(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
        binds = []
        for sub, target in MOUNTS.items():
            (hd / sub).mkdir(parents=True, mode=0o700)
            Path(target).mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {hd / sub} {target}")
        script = " && ".join([*binds, f"hostname h{k}", f"touch {hd}/ready", "exec sleep infinity"])
        holder = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--propagation", "private",
             "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        (hd / "holder.pid").write_text(str(holder.pid))
        _wait(f"host h{k} namespaces", lambda: (hd / "ready").exists(), 10)

    def enter(self, k: int) -> list[str]:
        """argv prefix that runs a command on host hK (its net, mount and UTS namespaces)."""
        holder = self._pid(k, "holder")
        if not _alive(holder):
            raise MeshnetError(f"host h{k} of lab {self.name!r} is gone (holder process died)")
        return ["nsenter", "-t", str(holder), "-m", "-u", "-n", "--"]

    def start_agent(self, k: int, wait: bool = True) -> int:
        if _alive(self._pid(k, "agent")):
            raise MeshnetError(f"the agent on h{k} is already running")
        args = json.loads((self.dir / "lab.json").read_text()).get("agent_args", [])
        log = open(self.host_dir(k) / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            proc = subprocess.Popen([*self.enter(k), sys.executable, "-m", "meshnet", "agent", *args],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        (self.host_dir(k) / "agent.pid").write_text(str(proc.pid))
        if wait:
            self.wait_agent(k)
        return proc.pid

    def wait_agent(self, k: int, timeout: float = 30) -> None:
        def ready() -> bool:
            if not _alive(self._pid(k, "agent")):
                tail = (self.host_dir(k) / "agent.log").read_text()[-600:]
                raise MeshnetError(f"the agent on h{k} exited:\n{tail}")
            try:
                self.client(k, timeout=2).get("/v1/status")
                return True
            except MeshnetError:
                return False

        _wait(f"the agent on h{k}", ready, timeout)

    def stop_agent(self, k: int, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        pid = self._pid(k, "agent")
        if not _alive(pid):
            return
        os.kill(pid, sig)
        _wait(f"the agent on h{k} to exit", lambda: not _alive(pid), timeout)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def form_cluster(self, members: list[int] | None = None, **init) -> str:
        """The first host runs init (with `init` options, e.g. encryption="ipsec"), the
        others join through it (default: every host); returns the token."""
        hosts = members or self.hosts()
        out = self.client(hosts[0]).post("/v1/init", {"advertise_addr": self.ip(hosts[0]), **init})
        for k in hosts[1:]:
            self.client(k).post("/v1/join", {"token": out["token"], "addrs": [self.ip(hosts[0])],
                                             "advertise_addr": self.ip(k)})
        return out["token"]

    def exec(self, k: int, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter(k), *argv], **kw)

    # -- status pages ------------------------------------------------------------------

    def forward(self, base: int = STATUS_PORT, timeout: float = 10) -> dict[int, int | str]:
        """Start the lab's forwarder (meshnet/labfwd.py): 127.0.0.1:(base+K) in the root
        namespace to hK's status page. A port already taken is skipped; the answer says
        which port each host got, or why not."""
        out = self.dir / "forward.json"
        out.unlink(missing_ok=True)
        specs = [f"{k}:{base + k if base else 0}:/run/netns/{self.ns(k)}" for k in self.hosts()]
        log = self.dir / "forward.log"
        with open(log, "ab") as f:
            proc = subprocess.Popen([sys.executable, "-m", "meshnet.labfwd", str(out),
                                     str(STATUS_PORT), *specs], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
        (self.dir / "forward.pid").write_text(str(proc.pid))
        _wait("the status forwarder", lambda: out.exists() or proc.poll() is not None, timeout)
        if not out.exists():
            raise MeshnetError(f"the status forwarder exited: {log.read_text()[-400:]}")
        return self.status_ports()

    def status_ports(self) -> dict[int, int | str]:
        """{K: root-namespace port of hK's status page, or why there is none}."""
        try:
            return {int(k): v for k, v in json.loads((self.dir / "forward.json").read_text()).items()}
        except (OSError, ValueError):
            return {}

    def _forward_pid(self) -> int | None:
        try:
            return int((self.dir / "forward.pid").read_text())
        except (OSError, ValueError):
            return None

    # -- down --------------------------------------------------------------------------

    def down(self) -> None:
        """Remove every namespace, process and file of the lab, even half-built or crashed."""
        namespaces = [n for n in _netns_list() if n.startswith(f"mnl-{self.name}-")]
        pids: set[int] = set()
        for k in self.hosts():
            pids |= {p for p in (self._pid(k, "agent"), self._pid(k, "holder")) if p}
        if fwd := self._forward_pid():
            pids.add(fwd)
        for ns in namespaces:
            out = run(["ip", "netns", "pids", ns], check=False).stdout
            pids |= {int(p) for p in out.split()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        for ns in namespaces:
            run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def _netns_list() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def labs() -> list[dict]:
    names = {p.name for p in LAB_ROOT.iterdir()} if LAB_ROOT.exists() else set()
    names |= {n.split("-")[1] for n in _netns_list() if n.startswith("mnl-") and n.count("-") >= 2}
    out = []
    for name in sorted(names):
        lab = Lab(name)
        hosts = lab.hosts()
        out.append({"name": name, "hosts": len(hosts),
                    "agents_running": sum(_alive(lab._pid(k, "agent")) for k in hosts),
                    "dir": str(lab.dir)})
    return out
