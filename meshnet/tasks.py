"""Tasks: the processes of the service slots placed on this node, supervised.

Each task runs in its own endpoint namespace (`ip netns exec`), in its own session so
it outlives an agent crash; its pid and start time are kept in a small file so a
restarted agent adopts it instead of starting a second copy. A task that exits is
restarted per its policy with exponential backoff; one that is no longer placed here
gets SIGTERM, then SIGKILL after the grace period. Output goes to a log file per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshnet.errors import MeshnetError
from meshnet.store.models import Endpoint, Service, Task

if TYPE_CHECKING:
    from meshnet.agent import Agent

log = logging.getLogger(__name__)

GRACE = 5.0  # seconds between SIGTERM and SIGKILL
BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER = 0.5, 10.0, 30.0


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a pid reused apart)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Running:
    task_id: str
    service: str
    slot: int
    spec: int
    pid: int
    started: float
    restarts: int = 0
    stopping: bool = False
    watcher: asyncio.Task | None = None


class Supervisor:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.dir = agent.cfg.state_dir / "tasks"
        self.logs = agent.cfg.state_dir / "logs"
        self.running: dict[str, Running] = {}
        self.backoff_until: dict[str, float] = {}
        self.restarts: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def task_id(self, service: str, slot: int) -> str:
        return f"{service}/{slot}/{self.agent.node_id}"

    def log_path(self, service_name: str, slot: int) -> Path:
        return self.logs / f"{service_name}.{slot}.log"

    # -- reconcile ------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Start what is placed here and not running; stop what runs and is not placed."""
        async with self._lock:
            me = self.agent.node_id
            services = self.agent.services
            want: dict[str, tuple[Service, int]] = {}
            for s in services.live():
                for slot, node in services.placement(s).items():
                    if node == me:
                        want[self.task_id(s.id, slot)] = (s, slot)
            stopping = [(r, tid not in want) for tid, r in list(self.running.items())
                        if not (tid in want and want[tid][0].spec == r.spec) and not r.stopping]
            # Out of DNS and the VIPs first (a "shutdown" row), all at once: the processes'
            # exit and their endpoints' removal come after, one task at a time.
            for r, retire in stopping:
                if retire:
                    await self._report(r.service, r.slot, "shutdown", "")
            for r, retire in stopping:
                await self._stop(r, retire=retire)
            for tid, (s, slot) in want.items():
                if tid in self.running or time.monotonic() < self.backoff_until.get(tid, 0):
                    continue
                try:
                    await self._start(s, slot)
                except MeshnetError as e:
                    log.error("could not start %s.%d: %s", s.name, slot, e)
                    await self._report(s.id, slot, "failed", str(e))
                    self.backoff_until[tid] = time.monotonic() + BACKOFF_MAX
            self._reap(want)
            # Task rows of ours with nothing behind them (after a crash, a move, an rm).
            for t in services.tasks():
                if t.node == me and t.id not in self.running and t.id not in want:
                    await self._retire_rows(t)

    # -- start / stop ---------------------------------------------------------------------

    async def _endpoints(self, s: Service, slot: int) -> dict[str, str]:
        """The task's endpoints (one namespace, an interface per network), made if missing."""
        ov = self.agent.overlay
        base = f"{s.name}.{slot}.{self.agent.node_id[:6]}"
        mine = {e.name: e for e in ov.live_endpoints() if e.node == self.agent.node_id}
        out: dict[str, str] = {}
        netns = None
        for i, net_id in enumerate(s.networks):
            name = base if i == 0 else f"{base}.{i}"
            ep = mine.get(name)
            if ep is None:
                view = await ov.create_endpoint(net_id, name, netns=netns)
                ep = ov.endpoint(view["id"])
            netns = netns or ep.netns
            out[net_id] = ep.id
        return out

    async def _start(self, s: Service, slot: int) -> None:
        tid = self.task_id(s.id, slot)
        endpoints = await self._endpoints(s, slot)
        first = self.agent.store.get(Endpoint, endpoints[s.networks[0]])
        adopted = self._adopt(tid, s.spec)
        if adopted is not None:
            pid = adopted
            log.info("adopted %s.%d (pid %d)", s.name, slot, pid)
        else:
            self.logs.mkdir(parents=True, exist_ok=True)
            env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/root",
                   "MESHNET_SERVICE": s.name, "MESHNET_SLOT": str(slot), "MESHNET_TASK": f"{s.name}.{slot}",
                   **s.env}
            with open(self.log_path(s.name, slot), "ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", Path(first.netns).name, *s.command, env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            pid = proc.pid
            self._remember(tid, pid, s.spec)
            log.info("started %s.%d (pid %d)", s.name, slot, pid)
        r = Running(tid, s.id, slot, s.spec, pid, time.monotonic(), self.restarts.get(tid, 0))
        self.running[tid] = r
        r.watcher = asyncio.create_task(self._watch(r, None if adopted else proc))
        await self._report(s.id, slot, "running", "", endpoints)

    async def _watch(self, r: Running, proc: asyncio.subprocess.Process | None) -> None:
        if proc is not None:
            code = await proc.wait()
        else:  # adopted: not our child, so poll
            while _start_time(r.pid) is not None:
                await asyncio.sleep(0.5)
            code = None
        if r.stopping:
            return
        self.running.pop(r.task_id, None)
        self._forget(r.task_id)
        s = next((x for x in self.agent.services.live() if x.id == r.service), None)
        if s is None:
            return
        error = "exited (adopted task; status unknown)" if code is None else f"exit code {code}"
        healthy = time.monotonic() - r.started > HEALTHY_AFTER
        restarts = 0 if healthy else r.restarts + 1
        again = s.restart == "any" or (s.restart == "on-failure" and code != 0)
        log.warning("%s.%d %s%s", s.name, r.slot, error, "; restarting" if again else "")
        await self._report(s.id, r.slot, "failed" if code else "complete", error, restarts=restarts)
        if again:
            self.restarts[r.task_id] = restarts
            delay = min(BACKOFF_FIRST * 2 ** max(restarts - 1, 0), BACKOFF_MAX)
            self.backoff_until[r.task_id] = time.monotonic() + delay
            asyncio.get_running_loop().call_later(delay, self.agent.changed.set)
        else:
            self.backoff_until[r.task_id] = float("inf")

    async def _stop(self, r: Running, retire: bool) -> None:
        """SIGTERM, then SIGKILL after GRACE; then drop its rows if it is gone for good."""
        r.stopping = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(r.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while _start_time(r.pid) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if _start_time(r.pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.pid, signal.SIGKILL)
        if r.watcher is not None:
            r.watcher.cancel()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(r.pid, os.WNOHANG)
        self.running.pop(r.task_id, None)
        self._forget(r.task_id)
        log.info("stopped task %s", r.task_id)
        if retire:
            t = self.agent.store.get(Task, r.task_id)
            if t is not None:
                await self._retire_rows(t)

    async def _retire_rows(self, t: Task) -> None:
        ov = self.agent.overlay
        for eid in t.endpoints.values():
            e = self.agent.store.get(Endpoint, eid)
            if e is not None and not e.deleted:
                await ov.remove_endpoint(e.id)
        if not t.deleted:
            await self.agent.write_row("task", t.id, {k: getattr(t, k) for k in Task.DATA} |
                                       {"state": "shutdown"}, deleted=True)

    async def stop_all(self) -> None:
        for r in list(self.running.values()):
            await self._stop(r, retire=True)

    # -- rows and adoption ----------------------------------------------------------------

    async def _report(self, service: str, slot: int, state: str, error: str,
                      endpoints: dict | None = None, restarts: int | None = None) -> None:
        tid = self.task_id(service, slot)
        old = self.agent.store.get(Task, tid)
        spec = next((s.spec for s in self.agent.services.live() if s.id == service), 0)
        data = {"service": service, "slot": slot, "node": self.agent.node_id, "state": state,
                "endpoints": endpoints if endpoints is not None else (old.endpoints if old else {}),
                "since": int(time.time() * 1000), "error": error,
                "restarts": restarts if restarts is not None else (old.restarts if old else 0),
                "spec": spec}
        if old is not None and not old.deleted and all(
                getattr(old, k) == data[k] for k in data if k != "since"):
            return
        await self.agent.write_row("task", tid, data)

    def logs_of(self, service: Service, tail: int | None, offsets: dict[str, int]) -> list[dict]:
        """This node's log of every slot of a service that has run here."""
        out = []
        for path in sorted(self.logs.glob(f"{service.name}.*.log")) if self.logs.exists() else []:
            task = path.name[:-4]
            size, lines = read_log(path, tail, offsets.get(task))
            out.append({"task": task, "node": self.agent.name, "size": size, "lines": lines})
        return out

    def _file(self, tid: str) -> Path:
        return self.dir / (tid.replace("/", "_") + ".json")

    def _remember(self, tid: str, pid: int, spec: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file(tid).write_text(json.dumps({"pid": pid, "start": _start_time(pid), "spec": spec}))

    def _forget(self, tid: str) -> None:
        self._file(tid).unlink(missing_ok=True)

    def _adopt(self, tid: str, spec: int) -> int | None:
        """The pid of this task's process left by a previous agent, if it still runs."""
        try:
            saved = json.loads(self._file(tid).read_text())
        except (OSError, ValueError):
            return None
        pid = saved.get("pid")
        if isinstance(pid, int) and saved.get("spec") == spec and _start_time(pid) == saved.get("start"):
            return pid
        if isinstance(pid, int) and _start_time(pid) == saved.get("start"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # an old spec: replace it
        self._forget(tid)
        return None

    def _reap(self, want: dict) -> None:
        """Kill processes a previous agent left for tasks no longer placed here."""
        for f in self.dir.glob("*.json") if self.dir.exists() else []:
            tid = f.stem.replace("_", "/")
            if tid in self.running or tid in want:
                continue
            try:
                saved = json.loads(f.read_text())
            except (OSError, ValueError):
                saved = {}
            pid = saved.get("pid")
            if isinstance(pid, int) and _start_time(pid) == saved.get("start"):
                log.info("killing %s (pid %d): no longer placed here", tid, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            f.unlink(missing_ok=True)


def read_log(path: Path, tail: int | None, offset: int | None, limit: int = 1 << 20) -> tuple[int, list[str]]:
    """(file size, lines): the last `tail` lines, or what was written after `offset`."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if offset is not None:
                f.seek(min(offset, size))
                data = f.read(limit)
                return offset + len(data), data.decode(errors="replace").splitlines()
            f.seek(max(0, size - limit))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0, []
    return size, lines[-tail:] if tail else lines
