"""IPAM: blocks per subnet, earliest claim wins, addresses never handed out twice."""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

from meshnet.plan import ipam


@dataclass
class Claim:
    owner: str
    version: int
    cidr: str
    network: str = "net"
    deleted: bool = False

    @property
    def id(self) -> str:
        return ipam.claim_id(self.network, self.cidr, self.owner)


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(text)


def test_block_sizes():
    assert ipam.block_prefix(net("10.0.0.0/24")) == 29
    assert len(ipam.blocks(net("10.0.0.0/24"))) == 32
    assert ipam.block_prefix(net("10.0.0.0/16")) == 21
    assert len(ipam.blocks(net("10.0.0.0/16"))) == 32
    assert ipam.block_prefix(net("10.0.0.0/29")) == 29
    assert ipam.block_of(net("10.0.0.0/24"), "10.0.0.77") == "10.0.0.72/29"


def test_earliest_live_claim_of_an_active_node_wins_in_any_order():
    claims = [Claim("b", 5, "10.0.0.0/29"), Claim("a", 7, "10.0.0.0/29"),
              Claim("c", 1, "10.0.0.0/29", deleted=True), Claim("d", 2, "10.0.0.8/29"),
              Claim("a", 3, "10.0.0.16/29", network="other")]
    for perm in itertools.permutations(claims):
        assert ipam.owners(perm, "net", {"a", "b", "c", "d"}) == {"10.0.0.0/29": "b", "10.0.0.8/29": "d"}
    # A dead or departed node's blocks are free again.
    assert ipam.owners(claims, "net", {"a", "b"}) == {"10.0.0.0/29": "b"}


def test_free_address_skips_reserved_and_used():
    subnet, gw = net("10.0.0.0/24"), "10.0.0.1"
    assert ipam.free_address(subnet, gw, ["10.0.0.0/29"], []) == "10.0.0.2"
    assert ipam.free_address(subnet, gw, ["10.0.0.0/29"], ["10.0.0.2", "10.0.0.3"]) == "10.0.0.4"
    used = [f"10.0.0.{i}" for i in range(2, 8)]
    assert ipam.free_address(subnet, gw, ["10.0.0.0/29"], used) is None
    assert ipam.free_address(subnet, gw, ["10.0.0.248/29"], []) == "10.0.0.248"
    assert ipam.free_address(subnet, gw, ["10.0.0.248/29"], [f"10.0.0.{i}" for i in range(248, 255)]) is None


def test_free_block():
    subnet = net("10.0.0.0/28")  # two /29 blocks
    assert ipam.free_block(subnet, {}) == "10.0.0.0/29"
    assert ipam.free_block(subnet, {"10.0.0.0/29": "a"}) == "10.0.0.8/29"
    assert ipam.free_block(subnet, {}, skip=["10.0.0.0/29"]) == "10.0.0.8/29"
    assert ipam.free_block(subnet, {"10.0.0.0/29": "a", "10.0.0.8/29": "b"}) is None


def test_nodes_never_share_an_address():
    """Each node allocates only inside the blocks it holds: addresses are disjoint."""
    subnet, gw = net("10.0.0.0/24"), "10.0.0.1"
    claims = [Claim(node, v, b) for v, (node, b) in enumerate(
        [("a", "10.0.0.0/29"), ("b", "10.0.0.8/29"), ("c", "10.0.0.16/29"), ("b", "10.0.0.0/29")])]
    held = ipam.owners(claims, "net", {"a", "b", "c"})
    handed: dict[str, str] = {}
    for node in "abc":
        mine = [b for b, o in held.items() if o == node]
        while (ip := ipam.free_address(subnet, gw, mine, handed)) is not None:
            assert ip not in handed
            handed[ip] = node
    assert len(handed) == 6 + 8 + 8  # block 0 loses the network address and the gateway
