"""Services on the agent: specs as replicated rows, placement, and what users see.

A service is a cluster-scoped row (any member may create, scale, update or remove it);
its tasks are rows owned by the nodes that run them (see tasks.py). Placement is
computed by every node from the same rows and its view of who is alive (sched.py).
"""

from __future__ import annotations

import datetime
import secrets
from typing import TYPE_CHECKING

from meshnet import sched
from meshnet.errors import Conflict, MeshnetError, NotFound
from meshnet.plan import networks as plan_networks
from meshnet.plan.transit import active
from meshnet.store.models import Endpoint, Service, Task

if TYPE_CHECKING:
    from meshnet.agent import Agent

MODES = ("vip", "dnsrr")
RESTART = ("any", "on-failure", "none")


def _iso_ms(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")


def _data(obj) -> dict:
    return {k: getattr(obj, k) for k in obj.DATA}


class Services:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.store = agent.store

    # -- reading ------------------------------------------------------------------------

    def live(self) -> list[Service]:
        """Per name, the earliest created service wins (concurrent creates settle alike)."""
        seen: dict[str, Service] = {}
        for s in sorted(self.store.objects(Service), key=lambda s: (s.created, s.id)):
            seen.setdefault(s.name, s)
        return sorted(seen.values(), key=lambda s: s.name)

    def get(self, ref: str) -> Service:
        for s in self.live():
            if ref in (s.name, s.id):
                return s
        raise NotFound(f"no service {ref!r} (see `meshnet service ls`)")

    def alive_nodes(self) -> set[str]:
        members = [n.id for n in active(self.store.nodes())]
        return self.agent.liveness.alive_ids(self.agent.node_id, members)

    def placement(self, s: Service) -> dict[int, str]:
        cands = [sched.Candidate(n.id, n.name, n.labels) for n in active(self.store.nodes())]
        return sched.place(s.id, s.replicas, s.constraints, cands, self.alive_nodes())

    def tasks(self, s: Service | None = None) -> list[Task]:
        return [t for t in self.store.objects(Task) if s is None or t.service == s.id]

    # -- writing ------------------------------------------------------------------------

    async def create(self, spec: dict) -> dict:
        self.agent.require_cluster()
        name = plan_networks.check_name(str(spec.get("name") or ""), "service")
        if any(s.name == name for s in self.live()):
            raise Conflict(f"service {name!r} already exists")
        nets = [self.agent.overlay.network(n) for n in spec.get("networks") or []]
        if not nets:
            raise MeshnetError("a service needs at least one --network")
        data = self._validate({
            "name": name, "networks": [n.id for n in nets],
            "replicas": spec.get("replicas", 1), "endpoint_mode": spec.get("endpoint_mode") or "vip",
            "env": spec.get("env") or {}, "restart": spec.get("restart") or "any",
            "constraints": spec.get("constraints") or [], "command": spec.get("command") or [],
            "vips": {}, "created": self.agent.hlc.now(), "spec": 1})
        if data["endpoint_mode"] == "vip":
            data["vips"] = {n.id: await self.agent.overlay.reserve_address(n) for n in nets}
        sid = secrets.token_hex(12)
        await self.agent.write_row("service", sid, data)
        return self.inspect(sid)

    def _validate(self, d: dict) -> dict:
        r = d["replicas"]
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise MeshnetError(f"replicas must be a whole number >= 0, not {r!r}")
        if d["endpoint_mode"] not in MODES:
            raise MeshnetError(f"endpoint mode must be vip or dnsrr, not {d['endpoint_mode']!r}")
        if d["restart"] not in RESTART:
            raise MeshnetError(f"restart condition must be any, on-failure or none, not {d['restart']!r}")
        cmd = d["command"]
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) and c for c in cmd):
            raise MeshnetError("a service needs a command: meshnet service create ... -- CMD [ARGS]")
        if not isinstance(d["env"], dict) or not all(isinstance(v, str) for v in d["env"].values()):
            raise MeshnetError("env must map names to strings")
        for c in d["constraints"]:
            sched.parse_constraint(str(c))
        return d

    async def update(self, ref: str, changes: dict) -> dict:
        s = self.get(ref)
        data = _data(s)
        for key in ("replicas", "env", "restart", "constraints", "command", "endpoint_mode"):
            if key in changes and changes[key] is not None:
                data[key] = changes[key]
        if data["endpoint_mode"] != s.endpoint_mode:
            raise MeshnetError("the endpoint mode of a service cannot change: remove and create it")
        self._validate(data)
        if any(data[k] != getattr(s, k) for k in ("env", "command")):
            data["spec"] = s.spec + 1  # tasks restart with the new spec
        await self.agent.write_row("service", s.id, data)
        return self.inspect(s.id)

    async def scale(self, ref: str, replicas: object) -> dict:
        return await self.update(ref, {"replicas": replicas})

    async def remove(self, ref: str) -> str:
        s = self.get(ref)
        await self.agent.write_row("service", s.id, _data(s), deleted=True)
        return s.name

    # -- views ----------------------------------------------------------------------------

    def _running(self, s: Service) -> int:
        alive = self.alive_nodes()
        return sum(t.state == "running" and t.node in alive for t in self.tasks(s))

    def views(self) -> list[dict]:
        return [{"id": s.id, "name": s.name, "mode": "replicated", "endpoint_mode": s.endpoint_mode,
                 "replicas": s.replicas, "running": self._running(s),
                 "command": s.command} for s in self.live()]

    def inspect(self, ref: str) -> dict:
        s = self.get(ref)
        nets = {n.id: n.name for n in self.agent.overlay.live_networks()}
        names = {n.id: n.name for n in self.store.nodes(include_deleted=True)}
        return {"ID": s.id, "Name": s.name, "CreatedAt": _iso_ms(s.created >> 16),
                "Spec": {"Mode": {"Replicated": {"Replicas": s.replicas}},
                         "Command": s.command, "Env": [f"{k}={v}" for k, v in sorted(s.env.items())],
                         "RestartPolicy": {"Condition": s.restart},
                         "Placement": {"Constraints": s.constraints},
                         "Networks": [nets.get(n, n) for n in s.networks],
                         "EndpointSpec": {"Mode": s.endpoint_mode}, "Version": s.spec},
                "Endpoint": {"VirtualIPs": [{"Network": nets.get(n, n), "Addr": ip}
                                            for n, ip in sorted(s.vips.items())]},
                "Placement": {str(k): names.get(v, v) for k, v in self.placement(s).items()},
                "Running": self._running(s)}

    def ps(self, ref: str) -> list[dict]:
        s = self.get(ref)
        names = {n.id: n.name for n in self.store.nodes(include_deleted=True)}
        eps = {e.id: e for e in self.store.objects(Endpoint)}
        alive = self.alive_nodes()
        out = []
        for t in sorted(self.tasks(s), key=lambda t: (t.slot, t.node)):
            ips = [eps[e].ip for e in t.endpoints.values() if e in eps]
            state = t.state if t.node in alive else f"{t.state} (node down)"
            out.append({"task": f"{s.name}.{t.slot}", "id": t.id, "node": names.get(t.node, t.node),
                        "state": state, "ip": ",".join(ips), "since": _iso_ms(t.since),
                        "error": t.error, "restarts": t.restarts})
        return out
