"""Recent cluster events as this agent saw them: a small in-memory ring buffer.

Joins, leaves, networks and endpoints created or removed (seen as replicated rows arrive,
so every member records the same ones), peers that stop or start answering, reconcile
errors. Lost on restart; the status page and `meshnet status` show them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque

from meshnet.rows import Outcome, Row

SIZE = 200


class Events:
    def __init__(self, size: int = SIZE) -> None:
        self._ring: deque[dict] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self._waiters: set[asyncio.Event] = set()
        self.counts: Counter[str] = Counter()  # by kind, since start

    def add(self, kind: str, message: str, level: str = "info", **data) -> dict:
        event = {"seq": next(self._seq), "time": round(time.time(), 3), "kind": kind,
                 "level": level, "message": message, **data}
        self._ring.append(event)
        self.counts[kind] += 1
        for w in self._waiters:
            w.set()
        return event

    def recent(self, since: int = 0, limit: int = SIZE) -> list[dict]:
        """Events newer than sequence number `since`, oldest first."""
        out = [e for e in self._ring if e["seq"] > since]
        return out[-limit:] if limit else []

    @property
    def last_seq(self) -> int:
        return self._ring[-1]["seq"] if self._ring else 0

    def waiter(self) -> asyncio.Event:
        """An asyncio.Event set on every new event; `forget` it when done."""
        w = asyncio.Event()
        self._waiters.add(w)
        return w

    def forget(self, w: asyncio.Event) -> None:
        self._waiters.discard(w)

    def rows_changed(self, changed: list[tuple[Row, Outcome]], names: dict[str, str]) -> None:
        """Record the events a merge of replicated rows means (called by Agent.merge)."""
        for row, outcome in changed:
            d, who = row.data, names.get(row.owner, row.owner[:12])
            new = outcome is Outcome.NEW
            if row.kind == "node":
                if new and not row.deleted and d.get("state") == "active":
                    self.add("join", f"{d.get('name')} joined at {d.get('transit_ip')}",
                             node=d.get("name"))
                elif not new and (row.deleted or d.get("state") == "left"):
                    self.add("leave", f"{d.get('name')} left the cluster", node=d.get("name"))
            elif row.kind == "network":
                if row.deleted and not new:
                    self.add("network-rm", f"network {d.get('name')} removed by {who}",
                             network=d.get("name"))
                elif new:
                    self.add("network-create", f"network {d.get('name')} ({d.get('subnet')}, "
                             f"VNI {d.get('vni')}) created by {who}", network=d.get("name"))
            elif row.kind == "endpoint":
                if row.deleted and not new:
                    self.add("endpoint-rm", f"endpoint {d.get('name')} removed from {who}",
                             endpoint=d.get("name"), node=who)
                elif new:
                    self.add("endpoint-add", f"endpoint {d.get('name')} {d.get('ip')} added on {who}",
                             endpoint=d.get("name"), node=who)
