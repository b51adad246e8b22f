"""Transit addresses: one per node inside the cluster's transit range, never two alike."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol

from meshnet.errors import MeshnetError


class NodeLike(Protocol):
    id: str
    transit_ip: str
    state: str
    version: int
    deleted: bool


def active(nodes: Iterable[NodeLike]) -> list[NodeLike]:
    return [n for n in nodes if not n.deleted and n.state == "active"]


def allocate(cidr: str, nodes: Iterable[NodeLike]) -> str:
    """The lowest free host address of the range (first is .1)."""
    net = ipaddress.ip_network(cidr)
    used = {n.transit_ip for n in active(nodes)}
    for host in net.hosts():
        if str(host) not in used:
            return str(host)
    raise MeshnetError(f"transit range {cidr} is full ({len(used)} nodes)")


def must_move(me: NodeLike, nodes: Iterable[NodeLike]) -> bool:
    """Two nodes that joined through different members at once may pick the same address.

    The earlier claim (lower version, then lower id) keeps it; the other moves. Every
    node computes the same answer, and only the loser (the owner of its row) acts.
    """
    rivals = [n for n in active(nodes) if n.transit_ip == me.transit_ip and n.id != me.id]
    return any((n.version, n.id) < (me.version, me.id) for n in rivals)
