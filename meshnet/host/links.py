"""Addresses, MTU and routes through netlink (pyroute2)."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshnet.errors import HostError


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_kind(ifname: str) -> str | None:
    """'wireguard', 'tun', ... or None when the link does not exist."""
    with IPRoute() as ipr:
        idx = link_index(ipr, ifname)
        if idx is None:
            return None
        link = ipr.get_links(idx)[0]
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info else None


def delete_link(ifname: str) -> None:
    with IPRoute() as ipr:
        idx = link_index(ipr, ifname)
        if idx is not None:
            ipr.link("del", index=idx)


def ensure_address_mtu_up(ifname: str, cidr: str, mtu: int) -> None:
    """Give the link exactly this address, this MTU, and bring it up (idempotent)."""
    iface = ipaddress.ip_interface(cidr)
    with IPRoute() as ipr:
        idx = link_index(ipr, ifname)
        if idx is None:
            raise HostError(f"link {ifname} does not exist")
        try:
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
            want = (str(iface.ip), iface.network.prefixlen)
            for addr, plen in have - {want}:
                ipr.addr("del", index=idx, address=addr, prefixlen=plen)
            if want not in have:
                ipr.addr("add", index=idx, address=want[0], prefixlen=want[1])
            link = ipr.get_links(idx)[0]
            if link.get_attr("IFLA_MTU") != mtu:
                ipr.link("set", index=idx, mtu=mtu)
            if not link["flags"] & 1:
                ipr.link("set", index=idx, state="up")
        except NetlinkError as e:
            raise HostError(f"could not configure {ifname} ({cidr}, mtu {mtu}): {e}") from e


def underlay_for(ip: str) -> tuple[str, int]:
    """The interface that holds `ip`, and its MTU."""
    with IPRoute() as ipr:
        for a in ipr.get_addr():
            if a.get_attr("IFA_ADDRESS") == ip:
                link = ipr.get_links(a["index"])[0]
                return link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU")
    raise HostError(f"no interface on this host has address {ip}")


def default_address() -> str | None:
    """The source address of the default route, else the first global IPv4 address."""
    with IPRoute() as ipr:
        try:
            for r in ipr.route("get", dst="192.0.2.1"):  # TEST-NET-1: only asks the table
                src = r.get_attr("RTA_PREFSRC")
                if src:
                    return src
        except NetlinkError:
            pass
        for a in ipr.get_addr(family=2):
            addr = a.get_attr("IFA_ADDRESS")
            if a["scope"] == 0 and not addr.startswith("127."):
                return addr
    return None


def routed_networks() -> list[tuple[str, str]]:
    """(network, device) for every IPv4 route of the main table except the default."""
    out = []
    with IPRoute() as ipr:
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
        for r in ipr.get_routes(family=2, table=254):
            dst = r.get_attr("RTA_DST")
            if dst is None or r["dst_len"] == 0:
                continue
            out.append((f"{dst}/{r['dst_len']}", names.get(r.get_attr("RTA_OIF"), "?")))
    return out
