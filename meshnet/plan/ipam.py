"""Address management without a lock (pure).

A network's subnet is cut into blocks (about 32 of them). A node hands out addresses
only from blocks it has claimed, one owned row per claim, so two nodes never hand out
the same address; inside its blocks the node is the only writer. Two nodes may claim
the same block at the same moment: the earliest claim (version, then owner) wins on
every node. A claimer only uses a block after every reachable member has acknowledged
its claim and answered with its own claims on that network (see agent), which closes
the race: a rival's earlier claim is always in its answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol

BLOCKS_LOG2 = 5  # 2**5 = 32 blocks per subnet
MIN_BLOCK_PREFIX = 29


class ClaimLike(Protocol):
    id: str
    owner: str
    version: int
    network: str
    cidr: str
    deleted: bool


def block_prefix(subnet: ipaddress.IPv4Network) -> int:
    return max(subnet.prefixlen, min(subnet.prefixlen + BLOCKS_LOG2, MIN_BLOCK_PREFIX))


def blocks(subnet: ipaddress.IPv4Network) -> list[ipaddress.IPv4Network]:
    return list(subnet.subnets(new_prefix=block_prefix(subnet)))


def claim_id(network: str, cidr: str, owner: str) -> str:
    return f"{network}/{cidr}/{owner}"


def owners(claims: Iterable[ClaimLike], network: str, active: set[str]) -> dict[str, str]:
    """block cidr -> the node that holds it (earliest live claim of an active node)."""
    best: dict[str, ClaimLike] = {}
    for c in claims:
        if c.deleted or c.network != network or c.owner not in active:
            continue
        cur = best.get(c.cidr)
        if cur is None or (c.version, c.owner) < (cur.version, cur.owner):
            best[c.cidr] = c
    return {cidr: c.owner for cidr, c in best.items()}


def reserved(subnet: ipaddress.IPv4Network, gateway: str) -> set[str]:
    return {str(subnet.network_address), str(subnet.broadcast_address), gateway}


def free_address(subnet: ipaddress.IPv4Network, gateway: str, mine: Iterable[str],
                 used: Iterable[str]) -> str | None:
    """The lowest address of my blocks that is neither reserved nor in use."""
    taken = reserved(subnet, gateway) | set(used)
    for cidr in sorted(mine, key=lambda c: ipaddress.ip_network(c)):
        for ip in ipaddress.ip_network(cidr):
            if str(ip) not in taken:
                return str(ip)
    return None


def free_block(subnet: ipaddress.IPv4Network, held: dict[str, str], skip: Iterable[str] = ()) -> str | None:
    """The first block nobody holds (and that we have not just lost)."""
    skip = set(skip)
    for b in blocks(subnet):
        if str(b) not in held and str(b) not in skip:
            return str(b)
    return None


def block_of(subnet: ipaddress.IPv4Network, ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    prefix = block_prefix(subnet)
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
