"""Many real `Swim` instances on one virtual clock and an in-memory lossy network.

Why: detection time, false positives and gossip load only show at scale and under loss,
and a seeded discrete-event simulation reproduces them exactly, in seconds, for 1,000
nodes. One heap holds message deliveries and each node's next timer (from
`Swim.next_deadline`), so the cost follows the messages sent, not N^2 per tick.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable

from meshnet.gossip.swim import Event, Outgoing, Status, Swim, SwimConfig, decode

# (src, dst, now, rng) -> delay in seconds, or None to drop the message
LinkFn = Callable[[str, str, float, random.Random], "float | None"]

_TICK, _MSG = 0, 1


class Sim:
    """A cluster of `n` nodes (ids n0000, n0001, ...) that all know each other.

    `loss` and `delay` (uniform low..high) apply to every message; `connected(src, dst)`
    cuts links (partitions); `link`, when set, decides every other message instead (a slow
    node: heavy loss and delay on its links, `standard()` elsewhere). With `wire=True` every
    message goes through encode/decode, as on the network, and bytes are counted.
    """

    def __init__(self, n: int, config: SwimConfig | None = None, seed: int = 0, loss: float = 0.0,
                 delay: tuple[float, float] = (0.0005, 0.002), wire: bool = False,
                 configs: dict[str, SwimConfig] | None = None) -> None:
        self.cfg = config or SwimConfig()
        self.rng = random.Random(seed)
        self.now = 0.0
        self.loss = loss
        self.delay = delay
        self.wire = wire
        self.connected: Callable[[str, str], bool] | None = None
        self.link: LinkFn | None = None
        self.ids = [f"n{i:04d}" for i in range(n)]
        self.nodes: dict[str, Swim] = {}
        self.down: set[str] = set()
        self.sent = 0
        self.dropped = 0
        self.bytes = 0
        self.max_bytes = 0
        self.log: list[tuple[str, Event]] = []  # (observer, event), in time order
        self.listeners: list[Callable[[str, Event], None]] = []
        self._q: list[tuple[float, int, int, str, str, object]] = []
        self._qseq = 0
        self._tick_at: dict[str, float] = {}
        configs = configs or {}
        for i in self.ids:
            self._start(i, configs.get(i, self.cfg))

    # -- cluster control ----------------------------------------------------------------------

    def _start(self, node: str, cfg: SwimConfig, incarnation: int = 0) -> None:
        sw = Swim(node, cfg, random.Random(self.rng.random()), now=self.now, incarnation=incarnation,
                  on_event=lambda ev, node=node: self._on_event(node, ev))
        sw.add_members(self.ids, now=self.now)
        self.nodes[node] = sw
        self._tick_at.pop(node, None)
        self._schedule(node)

    def _on_event(self, observer: str, ev: Event) -> None:
        self.log.append((observer, ev))
        for fn in self.listeners:
            fn(observer, ev)

    def kill(self, node: str) -> None:
        """Crash: the node neither sends, receives nor runs timers from now on."""
        self.down.add(node)

    def restart(self, node: str, cfg: SwimConfig | None = None) -> None:
        """A crashed node comes back as a fresh process (incarnation 0, everyone alive)."""
        self.down.discard(node)
        self._start(node, cfg or self.nodes[node].cfg)

    def leave(self, node: str) -> None:
        self._dispatch(node, self.nodes[node].leave(self.now))
        self._schedule(node)

    def live(self) -> list[str]:
        return [i for i in self.ids if i not in self.down]

    # -- running ------------------------------------------------------------------------------

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> float:
        """Advance the clock by `seconds` (or until `until()` holds, checked after each
        event); returns the virtual time reached."""
        end = self.now + seconds
        q = self._q
        while q and q[0][0] <= end:
            t, _, kind, a, b, payload = heapq.heappop(q)
            self.now = t
            if kind == _TICK:
                if a in self.down or self._tick_at.get(a) != t:
                    continue
                del self._tick_at[a]
                self._dispatch(a, self.nodes[a].tick(t))
                self._schedule(a)
            else:
                if b in self.down:
                    self.dropped += 1
                    continue
                msg = decode(payload) if self.wire else payload  # type: ignore[arg-type]
                self._dispatch(b, self.nodes[b].receive(msg, a, t))  # type: ignore[arg-type]
                self._schedule(b)
            if until is not None and until():
                return self.now
        self.now = max(self.now, end)
        return self.now

    def _schedule(self, node: str) -> None:
        due = self.nodes[node].next_deadline()
        if due is None:
            return
        due = max(due, self.now)
        cur = self._tick_at.get(node)
        if cur is None or due < cur:
            self._tick_at[node] = due
            self._push(due, _TICK, node, "", None)

    def _push(self, t: float, kind: int, a: str, b: str, payload: object) -> None:
        self._qseq += 1
        heapq.heappush(self._q, (t, self._qseq, kind, a, b, payload))

    def _dispatch(self, src: str, out: Iterable[Outgoing]) -> None:
        for o in out:
            self.sent += 1
            payload: object = o.msg
            if self.wire:
                data = o.msg.encode()
                self.bytes += len(data)
                self.max_bytes = max(self.max_bytes, len(data))
                payload = data
            d = self._link(src, o.dst)
            if d is None or o.dst not in self.nodes:
                self.dropped += 1
                continue
            self._push(self.now + d, _MSG, src, o.dst, payload)

    def _link(self, src: str, dst: str) -> float | None:
        if self.connected is not None and not self.connected(src, dst):
            return None
        if self.link is not None:
            return self.link(src, dst, self.now, self.rng)
        return self.standard()

    def standard(self) -> float | None:
        """The default link: `loss`, then a uniform `delay` (for `link` functions to fall back on)."""
        if self.loss and self.rng.random() < self.loss:
            return None
        return self.rng.uniform(*self.delay)

    # -- observations ---------------------------------------------------------------------------

    def status(self, observer: str, node: str) -> Status | None:
        st = self.nodes[observer].state(node)
        return None if st is None else st.status

    def all_see(self, node: str, status: Status, observers: Iterable[str] | None = None) -> bool:
        obs = self.live() if observers is None else observers
        return all(self.status(o, node) == status for o in obs if o != node)

    def send_stats(self) -> int:
        return sum(sw.sent for sw in self.nodes.values())


__all__ = ["LinkFn", "Sim"]
