"""The WireGuard device a node should have, and the steps from what it has to that.

Shared by both appliers (kernel via pyroute2, userspace via the wireguard-go UAPI):
they read the device into a `Device`, and apply the `Op`s that `diff` returns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshnet.config import KEEPALIVE
from meshnet.plan.transit import NodeLike, active


@dataclass(frozen=True)
class Peer:
    public_key: str  # base64, as `wg` prints it
    endpoint: str | None  # "ip:port"
    allowed_ips: tuple[str, ...]
    keepalive: int = KEEPALIVE


@dataclass(frozen=True)
class Device:
    private_key: str
    listen_port: int
    peers: dict[str, Peer] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerStats:
    """What the device reports about a peer (read back, never desired)."""

    public_key: str
    endpoint: str | None
    last_handshake: float  # Unix time, 0 for never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class SetDevice:
    private_key: str
    listen_port: int


@dataclass(frozen=True)
class RemovePeer:
    public_key: str


@dataclass(frozen=True)
class SetPeer:
    peer: Peer


Op = SetDevice | RemovePeer | SetPeer


class PeerNode(NodeLike):
    wg_pub: str
    endpoint: str


def desired(me_id: str, private_key: str, listen_port: int, nodes: Iterable[PeerNode],
            endpoints: dict[str, str] | None = None,
            routed: dict[str, list[str]] | None = None) -> Device:
    """A peer for every other active member, allowed its own transit address and the
    addresses of its endpoints on routed networks (`routed`, by node id).
    `endpoints` overrides a member's stored underlay endpoint (found again by mDNS after
    its address changed)."""
    peers = {}
    endpoints, routed = endpoints or {}, routed or {}
    for n in active(nodes):
        if n.id == me_id:
            continue
        host = ipaddress.ip_address(n.transit_ip)
        allowed = sorted({f"{host}/{host.max_prefixlen}", *routed.get(n.id, ())})
        peers[n.wg_pub] = Peer(n.wg_pub, endpoints.get(n.id, n.endpoint), tuple(allowed))
    return Device(private_key, listen_port, peers)


def diff(current: Device | None, want: Device) -> list[Op]:
    """The fewest ops that turn `current` into `want`; [] when they already match."""
    ops: list[Op] = []
    if current is None or (current.private_key, current.listen_port) != (
        want.private_key, want.listen_port
    ):
        ops.append(SetDevice(want.private_key, want.listen_port))
    have = current.peers if current else {}
    ops += [RemovePeer(k) for k in sorted(have) if k not in want.peers]
    ops += [SetPeer(p) for k, p in sorted(want.peers.items()) if have.get(k) != p]
    return ops
