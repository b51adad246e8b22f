"""Leaderless placement (pure): every node computes the same slots -> node map.

First a *home* for every slot over all eligible members, dead or alive: slots are placed
one after another on the member with the fewest slots of this service so far, ties
broken by a rendezvous hash of (service, slot, node). Then the slots whose home is not
alive go, one by one, to the live member with the fewest slots. So:
- replicas spread evenly (counts differ by at most one) over the eligible members;
- slot k's home depends only on slots 1..k, so scaling up or down never moves a slot;
- a death moves only the dead node's slots, and they go home when it comes back;
- every node with the same view of live members gets the same answer, with no leader.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshnet.errors import MeshnetError

_CONSTRAINT = re.compile(r"^node\.(id|name|labels\.[A-Za-z0-9_.-]+)\s*(==|!=)\s*(.+)$")


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    labels: dict = field(default_factory=dict, hash=False, compare=False)


def parse_constraint(text: str) -> tuple[str, str, str]:
    m = _CONSTRAINT.match(text.strip())
    if not m:
        raise MeshnetError(f"invalid constraint {text!r}: expected node.name==X, node.id!=X "
                           "or node.labels.KEY==VALUE")
    return m.group(1), m.group(2), m.group(3).strip()


def eligible(node: Candidate, constraints: Iterable[str]) -> bool:
    for text in constraints:
        attr, op, want = parse_constraint(text)
        if attr == "id":
            have = node.id
        elif attr == "name":
            have = node.name
        else:
            have = node.labels.get(attr.split(".", 1)[1])
        if (have == want) != (op == "=="):
            return False
    return True


def _score(service: str, slot: int, node: str) -> bytes:
    return hashlib.blake2b(f"{service}/{slot}/{node}".encode(), digest_size=8).digest()


def _spread(service: str, slots: Iterable[int], pool: list[Candidate], counts: dict[str, int],
            out: dict[int, str]) -> None:
    for slot in slots:
        best = min(pool, key=lambda n: (counts[n.id], _score(service, slot, n.id)))
        counts[best.id] += 1
        out[slot] = best.id


def place(service: str, replicas: int, constraints: Iterable[str], nodes: Iterable[Candidate],
          alive: set[str] | None = None) -> dict[int, str]:
    """slot (1..replicas) -> node id. `nodes` are the members (dead ones included, so a
    death does not reshuffle the living); `alive` defaults to all of them. Slots with no
    eligible live node are left out."""
    constraints = list(constraints)
    pool = sorted({n for n in nodes if eligible(n, constraints)}, key=lambda n: n.id)
    alive = {n.id for n in pool} if alive is None else alive
    living = [n for n in pool if n.id in alive]
    if not living:
        return {}
    home: dict[int, str] = {}
    _spread(service, range(1, replicas + 1), pool, {n.id: 0 for n in pool}, home)
    out = {slot: node for slot, node in home.items() if node in alive}
    counts = {n.id: 0 for n in living}
    for node in out.values():
        counts[node] += 1
    _spread(service, [s for s in home if s not in out], living, counts, out)
    return dict(sorted(out.items()))
