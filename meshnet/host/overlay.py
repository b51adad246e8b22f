"""The kernel applier for meshnet.plan.overlay: read the overlay data plane, apply ops.

What is ours is recognised by name only: bridges `mnb-*`, VXLAN devices `mnv-*`, host-side
veths `mnh-*` (and `mnr-*` for routed networks); FDB entries with a `dst` and permanent
neighbour entries on `mnv-*` and `mnr-*`; routes with protocol 109; the nftables table
`inet meshnet-l3` (host/firewall.py).

`read()` reports what the kernel has, in the plan's dataclasses, so that an item equals
its desired counterpart only when the kernel object is exactly right. Facts the
dataclasses do not carry (a device is down, has an address, a VXLAN device learns or
does not proxy ARP, an endpoint's veth is down on one side) are folded into `mtu = 0`:
such an item differs from every desired item, so `diff` replaces it.

Endpoints are read back without help from the caller: when the applier creates a host
veth it writes the endpoint's id, namespace path and ownership into the veth's alias
(`meshnet-endpoint id=... owns=1 netns=/run/netns/...`, see `endpoint_alias`). For each
`mnh-*` veth, `read()` parses that alias, follows the veth to its peer inside that
namespace and reads the peer's name, address, MAC and MTU there. A veth without a
readable alias comes back as a stale placeholder (only `host_veth` and `bridge` filled,
`netns` empty), so `diff` removes it and removal deletes only the veth.

`apply()` is idempotent per op, and replaces in place where it can: `diff` turns a
changed item into Remove(old) + Add(new); when the batch also adds a device of the same
name (or an endpoint with the same host veth, or another endpoint in the same namespace),
the Remove keeps the device (or the namespace) and the Add converges it. So a drifted
endpoint gets a new veth but keeps its namespace and the processes in it.
An Add that has to recreate a VXLAN device loses its FDB entries; `ensure()` reads
again and repeats until nothing is left to do.

Calls are synchronous netlink (pyroute2): run them from a thread, not inside an event loop.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import states as nud

from meshnet.errors import HostError
from meshnet.host import firewall
from meshnet.host.cmd import run
from meshnet.host.netns import in_netns
from meshnet.plan.overlay import (
    Add,
    Bridge,
    Endpoint,
    Fdb,
    L3Filter,
    Neigh,
    Op,
    OverlayState,
    Route,
    Vxlan,
    diff,
)

log = logging.getLogger(__name__)

BRIDGE_PREFIX, VXLAN_PREFIX, VETH_PREFIX, ROUTED_PREFIX = "mnb-", "mnv-", "mnh-", "mnr-"
# Routes meshnet adds carry this protocol number (`ip route ... proto 109`), so they are
# told apart from everyone else's; /etc/iproute2/rt_protos leaves 109 unassigned.
RTPROT_MESHNET = 109
MAIN_TABLE = 254
ALIAS_TAG = "meshnet-endpoint"
NETNS_DIRS = ("/run/netns", "/var/run/netns")
IFF_UP = 0x1
AF_INET = 2
AF_INET6 = 10
IN6_ADDR_GEN_MODE_NONE = 1
# Benign answers to an idempotent op: it is already there / already gone.
_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL)


# --- pure helpers -----------------------------------------------------------------------

def endpoint_alias(ep: Endpoint) -> str:
    """The alias written on an endpoint's host veth; `parse_endpoint_alias` reverses it."""
    return f"{ALIAS_TAG} id={ep.id} owns={int(ep.owns_netns)} netns={ep.netns}"


def parse_endpoint_alias(alias: str | None) -> tuple[str, bool, str] | None:
    """(id, owns_netns, netns path) from a host veth alias, or None if it is not ours."""
    if not alias or not alias.startswith(ALIAS_TAG + " "):
        return None
    rest = alias[len(ALIAS_TAG) + 1:]
    head, sep, netns = rest.partition(" netns=")
    fields = dict(f.split("=", 1) for f in head.split() if "=" in f)
    if not sep or not netns or "id" not in fields or fields.get("owns") not in ("0", "1"):
        return None
    return fields["id"], fields["owns"] == "1", netns


def netns_name(path: str) -> str:
    """The `ip netns` name of a namespace path meshnet may create: /run/netns/<name>."""
    directory, name = os.path.split(path)
    if directory not in NETNS_DIRS or not name or name in (".", ".."):
        raise HostError(f"cannot create namespace {path!r}: meshnet makes namespaces only "
                        "as /run/netns/<name>")
    return name


@dataclass(frozen=True)
class _Reused:
    """Names that Add ops of one batch (re)create: a Remove of the same keeps them."""

    devices: frozenset[str]
    netns: frozenset[str]


def reused_by_adds(ops: Iterable[Op]) -> _Reused:
    devices, netns = set(), set()
    for op in ops:
        if not isinstance(op, Add):
            continue
        item = op.item
        if isinstance(item, Bridge | Vxlan):
            devices.add(item.name)
        elif isinstance(item, Endpoint):
            devices.add(item.host_veth)
            netns.add(item.netns)
        elif isinstance(item, L3Filter):
            devices.add(firewall.L3_TABLE)  # replaced atomically: never removed in between
    return _Reused(frozenset(devices), frozenset(netns))


def describe(op: Op) -> str:
    """A one-line description of an op for error messages."""
    verb = "add" if isinstance(op, Add) else "remove"
    i = op.item
    if isinstance(i, Bridge):
        what = f"bridge {i.name} (mtu {i.mtu})"
    elif isinstance(i, Vxlan):
        what = f"VXLAN {i.name} (vni {i.vni}, local {i.local}, mtu {i.mtu}, bridge {i.bridge})"
    elif isinstance(i, Fdb):
        what = f"FDB entry {i.mac} dst {i.dst} on {i.dev}"
    elif isinstance(i, Neigh):
        what = f"neighbour {i.ip} -> {i.mac} on {i.dev}"
    elif isinstance(i, Route):
        what = f"route {i.dst} dev {i.dev}" + ("" if i.ok else " (forwarding off)")
    elif isinstance(i, L3Filter):
        what = f"routed-network filter ({len(i.rules)} endpoint(s), transit {i.transit})"
    elif not i.id:
        what = f"veth {i.host_veth} (not made by this applier, or its alias was lost)"
    else:
        what = (f"endpoint {i.id} ({i.host_veth} on {i.bridge or 'routed'} -> {i.ifname} "
                f"{i.address} in {i.netns or '?'})")
    return f"{verb} {what}"


# --- reading ----------------------------------------------------------------------------

def _kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def _info_data(link) -> dict:
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    if not data:
        return {}
    return {k: v for k, v in data["attrs"] if k != "UNKNOWN"}


def _up(link) -> bool:
    return bool(link["flags"] & IFF_UP)


def _sysctl(path: str) -> str | None:
    try:
        with open(f"/proc/sys/net/ipv4/{path}") as f:
            return f.read().strip()
    except OSError:
        return None


def _set_sysctl(path: str, value: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv4/{path}", "w") as f:
            f.write(value)
    except OSError as e:
        raise HostError(f"cannot set net.ipv4.{path.replace('/', '.')} = {value}: {e}") from e


# A routed endpoint's host veth forwards, answers ARP for the rest of the subnet at once
# (proxy ARP without the default random delay of up to 0.8 s).
_ROUTED_SYSCTLS = (("conf/{}/forwarding", "1"), ("conf/{}/proxy_arp", "1"), ("neigh/{}/proxy_delay", "0"))


def _routed_sysctls_ok(ifname: str) -> bool:
    return all(_sysctl(path.format(ifname)) == value for path, value in _ROUTED_SYSCTLS)


def _ns_route(path: str) -> IPRoute:
    """A netlink socket inside the namespace at `path`, opened from this thread (setns
    there and back): a socket keeps the namespace it was made in. pyroute2's own
    `IPRoute(netns=...)` took ~6 ms a namespace here, this ~1 ms, and read() opens one
    per endpoint."""
    with in_netns(path):
        return IPRoute()


def _is_netns(path: str) -> bool:
    """Whether `path` is a live namespace file (nsfs), not a leftover empty file."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def _vxlan_ok(data: dict, vni: int | None = None, local: str | None = None,
              port: int | None = None) -> bool:
    """The VXLAN device is configured the way meshnet makes them (and, if given, with
    this vni / local address / port, which cannot be changed on a live device)."""
    return (data.get("IFLA_VXLAN_LEARNING") == 0 and data.get("IFLA_VXLAN_PROXY") == 1
            and data.get("IFLA_VXLAN_UDP_CSUM") == 1
            and data.get("IFLA_VXLAN_GROUP") in (None, "0.0.0.0")
            and (vni is None or data.get("IFLA_VXLAN_ID") == vni)
            and (local is None or data.get("IFLA_VXLAN_LOCAL") == local)
            and (port is None or data.get("IFLA_VXLAN_PORT") == port))


def read() -> OverlayState:
    """The overlay data plane this host has now (see the module docstring)."""
    with IPRoute() as ipr:
        links = list(ipr.get_links())
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in links}
        addrs: dict[int, list] = {}
        for a in ipr.get_addr():
            addrs.setdefault(a["index"], []).append(a)
        bridges, vxlans, veths = set(), set(), []
        entry_devs: dict[int, str] = {}
        for ln in links:
            name, kind, idx = ln.get_attr("IFLA_IFNAME"), _kind(ln), ln["index"]
            mtu, master = ln.get_attr("IFLA_MTU"), names.get(ln.get_attr("IFLA_MASTER"), "")
            bare = _up(ln) and not addrs.get(idx)
            if name.startswith(BRIDGE_PREFIX) and kind == "bridge":
                bridges.add(Bridge(name, mtu if bare else 0))
            elif name.startswith(VXLAN_PREFIX) and kind == "vxlan":
                data = _info_data(ln)
                ok = bare and _vxlan_ok(data)
                vxlans.add(Vxlan(name, data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_LOCAL") or "",
                                 mtu if ok else 0, master, data.get("IFLA_VXLAN_PORT"),
                                 names.get(data.get("IFLA_VXLAN_LINK"), "")))
                entry_devs[idx] = name
            elif name.startswith(VETH_PREFIX) and kind == "veth":
                veths.append((ln, master, bare))
            elif name.startswith(ROUTED_PREFIX) and kind == "veth":
                veths.append((ln, master, bare and _routed_sysctls_ok(name)))
                entry_devs[idx] = name  # it carries permanent neighbour entries too
        fdb, neigh = set(), set()
        if entry_devs:
            for m in ipr.fdb("dump"):
                dst = m.get_attr("NDA_DST")
                if m["ifindex"] in entry_devs and dst and m["state"] & nud["permanent"]:
                    fdb.add(Fdb(entry_devs[m["ifindex"]], m.get_attr("NDA_LLADDR"), dst))
            for m in ipr.get_neighbours(family=AF_INET):
                mac = m.get_attr("NDA_LLADDR")
                if m["ifindex"] in entry_devs and mac and m["state"] & nud["permanent"]:
                    neigh.add(Neigh(entry_devs[m["ifindex"]], m.get_attr("NDA_DST"), mac))
        routes = set()
        for r in ipr.get_routes(family=AF_INET, table=MAIN_TABLE):
            if r["proto"] != RTPROT_MESHNET or r.get_attr("RTA_DST") is None:
                continue
            dev = names.get(r.get_attr("RTA_OIF"), "")
            ok = dev.startswith(ROUTED_PREFIX) or _sysctl(f"conf/{dev}/forwarding") == "1"
            routes.add(Route(f"{r.get_attr('RTA_DST')}/{r['dst_len']}", dev, ok))
    endpoints = {_read_endpoint(ln, master, bare) for ln, master, bare in veths}
    found = firewall.read_l3_filter()
    return OverlayState(frozenset(bridges), frozenset(vxlans), frozenset(fdb), frozenset(neigh),
                        frozenset(endpoints), frozenset(routes), frozenset([found] if found else []))


def _read_endpoint(host, master: str, host_ok: bool) -> Endpoint:
    name = host.get_attr("IFLA_IFNAME")
    tag = parse_endpoint_alias(host.get_attr("IFLA_IFALIAS"))
    if tag is None:
        return Endpoint("", "", False, name, "", "", "", 0, master)
    ep_id, owns, path = tag
    stale = Endpoint(ep_id, path, owns, name, "", "", "", 0, master)
    if not _is_netns(path):
        return stale
    peer_index = host.get_attr("IFLA_LINK")
    try:
        with _ns_route(path) as ns:
            peers = [ln for ln in ns.get_links() if ln["index"] == peer_index]
            if not peers or _kind(peers[0]) != "veth" or peers[0].get_attr("IFLA_LINK") != host["index"]:
                return stale
            peer = peers[0]
            cidrs = sorted(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                           for a in ns.get_addr(index=peer_index, family=AF_INET))
            lo = ns.link_lookup(ifname="lo")
            lo_ok = not owns or (lo and _up(ns.get_links(lo[0])[0]))
    except (NetlinkError, OSError, HostError) as e:
        log.debug("cannot read endpoint %s in %s: %s", name, path, e)
        return stale
    mtu = host.get_attr("IFLA_MTU")
    ok = host_ok and _up(peer) and lo_ok and peer.get_attr("IFLA_MTU") == mtu
    return Endpoint(ep_id, path, owns, name, peer.get_attr("IFLA_IFNAME"), ",".join(cidrs),
                    peer.get_attr("IFLA_ADDRESS"), mtu if ok else 0, master)


# --- applying ---------------------------------------------------------------------------

def apply(ops: list[Op]) -> None:
    """Carry out `ops` in order; each is idempotent (see the module docstring)."""
    reused = reused_by_adds(ops)
    with IPRoute() as ipr:
        for op in ops:
            try:
                if isinstance(op, Add):
                    _ADD[type(op.item)](ipr, op.item)
                else:
                    _REMOVE[type(op.item)](ipr, op.item, reused)
            except NetlinkError as e:
                raise HostError(f"could not {describe(op)}: {e}") from e


def ensure(want: OverlayState, passes: int = 3) -> list[Op]:
    """Make the kernel match `want`; the ops applied ([] when it already did)."""
    done: list[Op] = []
    for _ in range(passes):
        ops = diff(read(), want)
        if not ops:
            return done
        log.info("overlay: %s", "; ".join(describe(op) for op in ops))
        apply(ops)
        done += ops
    left = diff(read(), want)
    if left:
        raise HostError(f"overlay did not converge after {passes} passes: still "
                        f"{len(left)} ops, first: {describe(left[0])}")
    return done


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _delete(ipr: IPRoute, ifname: str) -> None:
    idx = _index(ipr, ifname)
    if idx is not None:
        try:
            ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code not in _GONE:
                raise


def _bare_up(ipr: IPRoute, idx: int, mtu: int, master: int | None = None) -> None:
    """No addresses (and no IPv6 link-local ever), this MTU, this master, up."""
    ipr.link("set", index=idx, IFLA_AF_SPEC={"attrs": [["AF_INET6", {"attrs": [
        ["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]})
    for a in ipr.get_addr(index=idx):
        ipr.addr("del", index=idx, address=a.get_attr("IFA_ADDRESS"), prefixlen=a["prefixlen"])
    link = ipr.get_links(idx)[0]
    if link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=idx, mtu=mtu)
    if master is not None and link.get_attr("IFLA_MASTER") != master:
        ipr.link("set", index=idx, master=master)
    if not _up(link):
        ipr.link("set", index=idx, state="up")


def _add_bridge(ipr: IPRoute, br: Bridge) -> None:
    idx = _index(ipr, br.name)
    if idx is not None and _kind(ipr.get_links(idx)[0]) != "bridge":
        _delete(ipr, br.name)
        idx = None
    if idx is None:
        ipr.link("add", ifname=br.name, kind="bridge", mtu=br.mtu)
        idx = _index(ipr, br.name)
    _bare_up(ipr, idx, br.mtu)


def _remove_device(ipr: IPRoute, item: Bridge | Vxlan, reused: _Reused) -> None:
    if item.name not in reused.devices:
        _delete(ipr, item.name)


def _add_vxlan(ipr: IPRoute, vx: Vxlan) -> None:
    master = _index(ipr, vx.bridge)
    if master is None:
        raise HostError(f"cannot add VXLAN {vx.name}: its bridge {vx.bridge} does not exist")
    idx = _index(ipr, vx.name)
    if idx is not None:
        link = ipr.get_links(idx)[0]
        if _kind(link) != "vxlan" or not _vxlan_ok(_info_data(link), vx.vni, vx.local, vx.port):
            _delete(ipr, vx.name)  # vni, local and port are fixed for a device's life
            idx = None
    lower = {}
    if vx.dev:
        lower_idx = _index(ipr, vx.dev)
        if lower_idx is None:
            raise HostError(f"cannot add VXLAN {vx.name}: its transit interface {vx.dev} does not exist")
        lower = {"vxlan_link": lower_idx}
        if idx is not None and _info_data(ipr.get_links(idx)[0]).get("IFLA_VXLAN_LINK") != lower_idx:
            _delete(ipr, vx.name)  # bound to another (or no) lower device
            idx = None
    if idx is None:
        ipr.link("add", ifname=vx.name, kind="vxlan", vxlan_id=vx.vni, vxlan_local=vx.local,
                 vxlan_port=vx.port, vxlan_learning=0, vxlan_proxy=1, vxlan_udp_csum=1, mtu=vx.mtu,
                 **lower)
        idx = _index(ipr, vx.name)
    _bare_up(ipr, idx, vx.mtu, master)


def _vx_index(ipr: IPRoute, dev: str, adding: bool) -> int | None:
    idx = _index(ipr, dev)
    if idx is None and adding:
        raise HostError(f"device {dev} does not exist")
    return idx


def _add_fdb(ipr: IPRoute, f: Fdb) -> None:
    idx = _vx_index(ipr, f.dev, True)
    ipr.fdb("append", ifindex=idx, lladdr=f.mac, dst=f.dst)


def _remove_entry(ipr: IPRoute, dev: str, remove) -> None:
    """Remove an FDB entry, neighbour entry or route of a device; one already gone is fine."""
    idx = _vx_index(ipr, dev, False)
    if idx is None:
        return
    try:
        remove(idx)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def _remove_fdb(ipr: IPRoute, f: Fdb, reused: _Reused) -> None:
    _remove_entry(ipr, f.dev, lambda idx: ipr.fdb("del", ifindex=idx, lladdr=f.mac, dst=f.dst))


def _add_neigh(ipr: IPRoute, n: Neigh) -> None:
    idx = _vx_index(ipr, n.dev, True)
    ipr.neigh("replace", ifindex=idx, dst=n.ip, lladdr=n.mac, state=nud["permanent"])


def _remove_neigh(ipr: IPRoute, n: Neigh, reused: _Reused) -> None:
    _remove_entry(ipr, n.dev, lambda idx: ipr.neigh("del", ifindex=idx, dst=n.ip, lladdr=n.mac))


def _add_route(ipr: IPRoute, r: Route) -> None:
    idx = _vx_index(ipr, r.dev, True)
    ipr.route("replace", dst=r.dst, oif=idx, proto=RTPROT_MESHNET, scope=253, table=MAIN_TABLE)
    if not r.dev.startswith(ROUTED_PREFIX):
        _set_sysctl(f"conf/{r.dev}/forwarding", "1")


def _remove_route(ipr: IPRoute, r: Route, reused: _Reused) -> None:
    _remove_entry(ipr, r.dev, lambda idx: ipr.route("del", dst=r.dst, oif=idx, proto=RTPROT_MESHNET,
                                                    scope=253, table=MAIN_TABLE))
    idx = _index(ipr, r.dev)
    if idx is None or r.dev.startswith(ROUTED_PREFIX):
        return
    if not any(x["proto"] == RTPROT_MESHNET and x.get_attr("RTA_OIF") == idx
               for x in ipr.get_routes(family=AF_INET, table=MAIN_TABLE)):
        _set_sysctl(f"conf/{r.dev}/forwarding", "0")  # the last routed network here is gone


def _add_filter(_ipr: IPRoute, f: L3Filter) -> None:
    firewall.set_l3_filter(f)


def _remove_filter(_ipr: IPRoute, _f: L3Filter, reused: _Reused) -> None:
    if firewall.L3_TABLE not in reused.devices:
        firewall.remove_l3_filter()


def _ensure_netns(path: str) -> None:
    name = netns_name(path)
    if not _is_netns(path):
        if os.path.lexists(path):  # an empty file left by a namespace that is gone
            run(["ip", "netns", "delete", name], check=False)
            if os.path.lexists(path):
                os.unlink(path)
        run(["ip", "netns", "add", name])
    with _ns_route(path) as ns:
        lo = ns.link_lookup(ifname="lo")
        if lo:
            ns.link("set", index=lo[0], state="up")


def _add_endpoint(ipr: IPRoute, ep: Endpoint) -> None:
    idx = _index(ipr, ep.host_veth)
    if idx is not None:
        link = ipr.get_links(idx)[0]
        master = link.get_attr("IFLA_MASTER")
        mname = ipr.get_links(master)[0].get_attr("IFLA_IFNAME") if master else ""
        bare = _up(link) and not list(ipr.get_addr(index=idx))
        if _kind(link) == "veth" and _read_endpoint(link, mname, bare) == ep:
            return  # exactly there already
        _delete(ipr, ep.host_veth)  # rebuilt below; its peer goes with it
    bridge = _index(ipr, ep.bridge) if ep.bridge else None
    if ep.bridge and bridge is None:
        raise HostError(f"cannot add endpoint {ep.id}: its bridge {ep.bridge} does not exist")
    if ep.owns_netns:
        _ensure_netns(ep.netns)
    elif not _is_netns(ep.netns):
        raise HostError(f"cannot add endpoint {ep.id}: namespace {ep.netns} does not exist")
    iface = ipaddress.ip_interface(ep.address)
    with _ns_route(ep.netns) as ns:
        clash = ns.link_lookup(ifname=ep.ifname)
        if clash:
            if not ep.owns_netns:
                raise HostError(f"cannot add endpoint {ep.id}: {ep.ifname} already exists in "
                                f"{ep.netns}, which meshnet does not own")
            ns.link("del", index=clash[0])
        fd = os.open(ep.netns, os.O_RDONLY)
        try:
            ipr.link("add", ifname=ep.host_veth, kind="veth", mtu=ep.mtu,
                     peer={"ifname": ep.ifname, "net_ns_fd": fd, "address": ep.mac, "mtu": ep.mtu})
        finally:
            os.close(fd)
        peer = ns.link_lookup(ifname=ep.ifname)
        if not peer:
            raise HostError(f"endpoint {ep.id}: {ep.ifname} did not appear in {ep.netns}")
        ns.addr("add", index=peer[0], address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ns.link("set", index=peer[0], state="up")
    idx = _index(ipr, ep.host_veth)
    ipr.link("set", index=idx, ifalias=endpoint_alias(ep))
    if not ep.bridge:
        for path, value in _ROUTED_SYSCTLS:
            _set_sysctl(path.format(ep.host_veth), value)
    _bare_up(ipr, idx, ep.mtu, bridge)


def _remove_endpoint(ipr: IPRoute, ep: Endpoint, reused: _Reused) -> None:
    if ep.host_veth not in reused.devices:
        _delete(ipr, ep.host_veth)
    if ep.owns_netns and ep.netns and ep.netns not in reused.netns and os.path.lexists(ep.netns):
        run(["ip", "netns", "delete", netns_name(ep.netns)])


_ADD = {Bridge: _add_bridge, Vxlan: _add_vxlan, Fdb: _add_fdb, Neigh: _add_neigh, Endpoint: _add_endpoint,
        Route: _add_route, L3Filter: _add_filter}
_REMOVE = {Bridge: _remove_device, Vxlan: _remove_device, Fdb: _remove_fdb, Neigh: _remove_neigh,
           Endpoint: _remove_endpoint, Route: _remove_route, L3Filter: _remove_filter}
