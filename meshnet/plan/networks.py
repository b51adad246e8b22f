"""Overlay network decisions (pure): validation, subnet and VNI choice, name clashes."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Protocol

from meshnet.errors import Conflict, MeshnetError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
VNI_FIRST = 4097  # like Docker's overlay driver; 0-4096 stay free for hand-made VXLANs
VNI_LAST = (1 << 24) - 1
MAX_PREFIX = 29  # the smallest subnet: 8 addresses


class NetLike(Protocol):
    id: str
    name: str
    subnet: str
    vni: int
    created: int
    deleted: bool


def check_name(name: str, what: str = "network") -> str:
    if not NAME_RE.match(name):
        raise MeshnetError(f"invalid {what} name {name!r}: 1-63 of letters, digits, '_', '.', '-', "
                           "starting with a letter or digit")
    return name


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise MeshnetError(f"invalid subnet {text!r}: {e}") from None
    if net.version != 4:
        raise MeshnetError(f"invalid subnet {text}: only IPv4 overlays for now")
    if net.prefixlen > MAX_PREFIX:
        raise MeshnetError(f"subnet {text} is too small: use /{MAX_PREFIX} or larger")
    return net


def parse_labels(pairs: Iterable[str], what: str = "label") -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MeshnetError(f"invalid {what} {pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


NETWORK_MODES = ("l2", "l3")


def parse_options(options: dict, encryption: str = "wireguard") -> dict[str, str]:
    """Validated driver options (today only `mode`: l2, the default, or l3 = routed).
    Only non-default values are kept, so a plain network's row has none."""
    out: dict[str, str] = {}
    for key, value in options.items():
        if key != "mode":
            raise MeshnetError(f"unknown network option {key!r}: the only option is mode (l2 or l3)")
        if value not in NETWORK_MODES:
            raise MeshnetError(f"invalid network mode {value!r}: l2 (bridged, the default) or l3 (routed)")
        if value == "l3" and encryption != "wireguard":
            raise MeshnetError("routed (mode=l3) networks need the WireGuard transit; this cluster "
                               f"uses {encryption}")
        if value != "l2":
            out[key] = value
    return out


def winners(networks: Iterable[NetLike]) -> tuple[list[NetLike], list[NetLike]]:
    """(live, losers): per name, and per VNI, the earliest created (then lowest id) wins.

    Two members may create the same name, or pick the same VNI or subnet, at the same
    moment. Every node sees the same rows and so keeps the same winner; a loser is
    removed (see agent). Deleted rows never count.
    """
    live: list[NetLike] = []
    losers: list[NetLike] = []
    for n in sorted((n for n in networks if not n.deleted), key=lambda n: (n.created, n.id)):
        clash = any(n.name == w.name or n.vni == w.vni or _overlaps(n.subnet, w.subnet)
                    for w in live)
        (losers if clash else live).append(n)
    return live, losers


def _overlaps(a: str, b: str) -> bool:
    return ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b))


def check_subnet_free(subnet: ipaddress.IPv4Network, live: Iterable[NetLike],
                      routes: Iterable[tuple[str, str]], transit_cidr: str) -> None:
    """Refuse a subnet that overlaps another network, the transit range or a host route."""
    for n in live:
        if subnet.overlaps(ipaddress.ip_network(n.subnet)):
            raise Conflict(f"subnet {subnet} overlaps network {n.name!r} ({n.subnet})")
    if subnet.overlaps(ipaddress.ip_network(transit_cidr)):
        raise Conflict(f"subnet {subnet} overlaps the cluster's transit range {transit_cidr}")
    for routed, dev in routes:
        if subnet.overlaps(ipaddress.ip_network(routed)):
            raise Conflict(f"subnet {subnet} overlaps {routed}, routed on this host via {dev}")


def pick_subnet(pool: str, live: Iterable[NetLike], routes: Iterable[tuple[str, str]],
                transit_cidr: str, prefix: int = 24) -> ipaddress.IPv4Network:
    """The first /24 of the pool that is free everywhere we can see."""
    live = list(live)
    routes = list(routes)
    for candidate in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
        try:
            check_subnet_free(candidate, live, routes, transit_cidr)
        except Conflict:
            continue
        return candidate
    raise MeshnetError(f"the network pool {pool} has no free /{prefix} left: give --subnet")


def pick_vni(live: Iterable[NetLike]) -> int:
    used = {n.vni for n in live}
    vni = VNI_FIRST
    while vni in used:
        vni += 1
    if vni > VNI_LAST:
        raise MeshnetError("no VXLAN id left")
    return vni


def gateway_for(subnet: ipaddress.IPv4Network, given: str | None) -> str:
    """The gateway address (reserved, never given to an endpoint): given, or the first host."""
    if not given:
        return str(next(subnet.hosts()))
    try:
        gw = ipaddress.ip_address(given)
    except ValueError:
        raise MeshnetError(f"invalid gateway {given!r}") from None
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise MeshnetError(f"gateway {gw} is not a host address of {subnet}")
    return str(gw)
