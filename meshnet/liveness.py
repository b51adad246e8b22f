"""Who is alive, as this node sees it: a direct probe of every member over the transit
network every second; a member not heard from for `dead_after` seconds is down.

This is the simple detector placement and DNS need today; SWIM (indirect probes,
suspicion, incarnations) replaces it without changing `alive()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Liveness:
    dead_after: float = 4.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(default_factory=time.monotonic)
    last_ok: dict[str, float] = field(default_factory=dict)

    def heard(self, node_id: str) -> None:
        self.last_ok[node_id] = self.clock()

    def alive(self, node_id: str) -> bool:
        """Alive if heard lately; a node we have not probed yet gets the benefit of the
        doubt until `dead_after` has passed since we started."""
        now = self.clock()
        last = self.last_ok.get(node_id, self.started)
        return now - last <= self.dead_after

    def alive_ids(self, me: str, members: Iterable[str]) -> set[str]:
        return {m for m in members if m == me or self.alive(m)}

    def last_seen_age(self, node_id: str) -> float | None:
        last = self.last_ok.get(node_id)
        return None if last is None else round(self.clock() - last, 1)
