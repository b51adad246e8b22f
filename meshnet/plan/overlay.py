"""The overlay data plane a node should have, as plain data, and the ops to get there.

Per network that has an endpoint on this node:
- a bridge `mnb-<vni>` (no IP: nothing routes between networks through the host);
- a VXLAN device `mnv-<vni>` enslaved to it: local = this node's transit address,
  learning off, ARP proxy on, so ARP is answered from the static neighbour table;
- for every endpoint on another node: an FDB entry (its MAC -> its node's transit
  address) and a neighbour entry (its IP -> its MAC) on the VXLAN device;
- an all-zero FDB entry (broadcast/multicast) per *other node that has endpoints on
  this network*, and no others, so nothing floods to nodes that do not need it;
- per local endpoint: a veth pair, host side `mnh-<id>` on the bridge, the other side
  inside the endpoint's namespace with its address, MAC and MTU.

MTU: the endpoint and bridge MTU is the transit MTU minus the 50 bytes of VXLAN over
IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14), so nothing fragments.

A network created with `--opt mode=l3` is routed instead (docs/routed.md): no bridge
and no VXLAN; per local endpoint a veth whose host side `mnr-<id>` answers ARP for the
subnet (proxy ARP) and forwards, a /32 route and a permanent neighbour entry towards
the endpoint; per such network one route for its subnet into the transit interface,
where WireGuard picks the peer by the endpoint addresses it is allowed (see
`allowed_ips`); an nftables filter (`L3Filter`) keeps networks apart. The endpoint MTU
is the transit MTU, and the inner TCP stream reaches the tunnel as large segments
rather than one encapsulated packet per frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
ZERO_MAC = "00:00:00:00:00:00"


def bridge_name(vni: int) -> str:
    return f"mnb-{vni}"


def vxlan_name(vni: int) -> str:
    return f"mnv-{vni}"


def host_veth_name(endpoint_id: str, routed: bool = False) -> str:
    return f"{'mnr' if routed else 'mnh'}-{endpoint_id[:10]}"


def mac_for(ip: str) -> str:
    """A locally administered MAC derived from the (cluster-unique) IPv4 address."""
    octets = [int(x) for x in ip.split(".")]
    return "02:6d:" + ":".join(f"{o:02x}" for o in octets)


@dataclass(frozen=True)
class Bridge:
    name: str
    mtu: int


@dataclass(frozen=True)
class Vxlan:
    name: str
    vni: int
    local: str  # this node's transit address
    mtu: int
    bridge: str
    port: int = VXLAN_PORT
    # The transit interface the device is bound to: encapsulated packets can only leave
    # through it, and deleting it deletes the device (fail closed by construction).
    dev: str = ""


@dataclass(frozen=True)
class Fdb:
    dev: str  # a VXLAN device
    mac: str  # ZERO_MAC for broadcast/multicast
    dst: str  # a remote node's transit address


@dataclass(frozen=True)
class Neigh:
    dev: str  # a VXLAN device
    ip: str
    mac: str


@dataclass(frozen=True)
class Route:
    """An IPv4 route in the main table, tagged with meshnet's protocol number.
    A route into a device that is not an endpoint's veth (the transit interface) also
    needs IPv4 forwarding on that device: `ok` is False when it is off."""

    dst: str  # "ip/prefixlen"
    dev: str
    ok: bool = True


@dataclass(frozen=True)
class L3Filter:
    """The forwarding filter of routed networks: each local endpoint may send only from
    its own address to its own network's subnet, and receive only from that subnet;
    whatever else the transit interface would forward is dropped."""

    transit: str
    rules: tuple[tuple[str, str, str], ...]  # (host veth, endpoint ip, network subnet), sorted


@dataclass(frozen=True)
class Endpoint:
    """A local endpoint: a veth from the network's bridge (or, routed, from the host)
    into a network namespace. `bridge` is "" for a routed endpoint."""

    id: str
    netns: str  # path: /run/netns/<name> for namespaces meshnet made, /proc/<pid>/ns/net ...
    owns_netns: bool  # meshnet made the namespace (and may make it again or remove it)
    host_veth: str
    ifname: str  # the name inside the namespace
    address: str  # "ip/prefixlen"
    mac: str
    mtu: int
    bridge: str


@dataclass(frozen=True)
class OverlayState:
    bridges: frozenset[Bridge] = field(default_factory=frozenset)
    vxlans: frozenset[Vxlan] = field(default_factory=frozenset)
    fdb: frozenset[Fdb] = field(default_factory=frozenset)
    neigh: frozenset[Neigh] = field(default_factory=frozenset)
    endpoints: frozenset[Endpoint] = field(default_factory=frozenset)
    routes: frozenset[Route] = field(default_factory=frozenset)
    filters: frozenset[L3Filter] = field(default_factory=frozenset)  # at most one


Item = Bridge | Vxlan | Fdb | Neigh | Endpoint | Route | L3Filter


@dataclass(frozen=True)
class Add:
    item: Item


@dataclass(frozen=True)
class Remove:
    item: Item


Op = Add | Remove

# Removals go leaves first (entries, then endpoints, then devices); additions go the
# other way, so every op finds what it depends on.
# The filter goes first on the way in and last on the way out, so a routed endpoint
# never forwards without it.
_REMOVE_ORDER = ("fdb", "neigh", "routes", "endpoints", "vxlans", "bridges", "filters")
_ADD_ORDER = ("filters", "bridges", "vxlans", "endpoints", "routes", "fdb", "neigh")


def diff(current: OverlayState, want: OverlayState) -> list[Op]:
    """Ops that turn `current` into `want`; [] when they match. A changed item is
    removed and added again (items are immutable values)."""
    ops: list[Op] = []
    for kind in _REMOVE_ORDER:
        stale = getattr(current, kind) - getattr(want, kind)
        ops += [Remove(i) for i in sorted(stale, key=repr)]
    for kind in _ADD_ORDER:
        missing = getattr(want, kind) - getattr(current, kind)
        ops += [Add(i) for i in sorted(missing, key=repr)]
    return ops


@dataclass(frozen=True)
class NetView:
    """What the planner needs of a network."""

    id: str
    vni: int
    prefixlen: int
    subnet: str = ""
    mode: str = "l2"  # "l3": routed (see the module docstring)


@dataclass(frozen=True)
class EndpointView:
    id: str
    network: str
    node: str
    ip: str
    mac: str
    netns: str
    owns_netns: bool
    ifname: str


def desired(me: str, transit_mtu: int, transit_ips: dict[str, str], networks: Iterable[NetView],
            endpoints: Iterable[EndpointView], transit_if: str = "") -> OverlayState:
    """The data plane of node `me`, from live networks, endpoints and node addresses.

    `transit_ips` maps each *active* node to its transit address; endpoints of nodes
    not in it (dead, left) are left out, as are endpoints of unknown networks.
    """
    mtu = transit_mtu - VXLAN_OVERHEAD
    nets = {n.id: n for n in networks}
    eps = [e for e in endpoints if e.network in nets and e.node in transit_ips]
    local_nets = {e.network for e in eps if e.node == me}
    bridges, vxlans, fdb, neigh, local = set(), set(), set(), set(), set()
    routes, rules = set(), set()
    for net_id in local_nets:
        net = nets[net_id]
        if net.mode == "l3":
            routes.add(Route(net.subnet, transit_if))
            for e in eps:
                if e.network == net_id and e.node == me:
                    veth = host_veth_name(e.id, routed=True)
                    local.add(Endpoint(e.id, e.netns, e.owns_netns, veth, e.ifname,
                                       f"{e.ip}/{net.prefixlen}", e.mac, transit_mtu, ""))
                    routes.add(Route(f"{e.ip}/32", veth))
                    neigh.add(Neigh(veth, e.ip, e.mac))
                    rules.add((veth, e.ip, net.subnet))
            continue
        br, vx = bridge_name(net.vni), vxlan_name(net.vni)
        bridges.add(Bridge(br, mtu))
        vxlans.add(Vxlan(vx, net.vni, transit_ips[me], mtu, br, VXLAN_PORT, transit_if))
        for e in eps:
            if e.network != net_id:
                continue
            if e.node == me:
                local.add(Endpoint(e.id, e.netns, e.owns_netns, host_veth_name(e.id), e.ifname,
                                   f"{e.ip}/{net.prefixlen}", e.mac, mtu, br))
            else:
                dst = transit_ips[e.node]
                fdb.add(Fdb(vx, e.mac, dst))
                fdb.add(Fdb(vx, ZERO_MAC, dst))
                neigh.add(Neigh(vx, e.ip, e.mac))
    filters = {L3Filter(transit_if, tuple(sorted(rules)))} if rules else set()
    return OverlayState(frozenset(bridges), frozenset(vxlans), frozenset(fdb), frozenset(neigh),
                        frozenset(local), frozenset(routes), frozenset(filters))


def allowed_ips(transit_ips: dict[str, str], networks: Iterable[NetView],
                endpoints: Iterable[EndpointView]) -> dict[str, list[str]]:
    """Per active node, the addresses of its endpoints on routed networks: WireGuard
    must accept them from that node's peer and send them to it (VXLAN needs none of
    this: its packets carry only transit addresses)."""
    routed = {n.id for n in networks if n.mode == "l3"}
    out: dict[str, list[str]] = {}
    for e in endpoints:
        if e.network in routed and e.node in transit_ips:
            out.setdefault(e.node, []).append(f"{e.ip}/32")
    return out
