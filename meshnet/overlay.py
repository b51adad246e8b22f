"""Overlay networks and endpoints on the agent: the commands, and reconciling rows.

Decisions are in plan/ (networks, ipam, overlay); the kernel is driven by
host/overlay.py. This module turns API calls into replicated rows and back.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from meshnet.errors import Conflict, MeshnetError, NotFound
from meshnet.host import links, netns_files
from meshnet.plan import ipam
from meshnet.plan import networks as plan_networks
from meshnet.plan import overlay as plan_overlay
from meshnet.plan.transit import active
from meshnet.rows import Row
from meshnet.store.models import Endpoint, IpamBlock, Network, Service

if TYPE_CHECKING:
    from meshnet.agent import Agent

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")


def _iso(version: int) -> str:
    return datetime.datetime.fromtimestamp((version >> 16) / 1000, datetime.UTC).isoformat()


class Overlay:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.store = agent.store
        self._ipam_lock = asyncio.Lock()
        self._reserved: set[str] = set()  # handed out, row not written yet (service VIPs)

    # -- views --------------------------------------------------------------------------

    def live_networks(self) -> list[Network]:
        live, _ = plan_networks.winners(self.store.objects(Network))
        return sorted(live, key=lambda n: n.name)

    def network(self, ref: str) -> Network:
        live = self.live_networks()
        for n in live:
            if n.name == ref or n.id == ref:
                return n
        matches = [n for n in live if n.id.startswith(ref)] if len(ref) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"no network {ref!r} (see `meshnet network ls`)")

    def live_endpoints(self) -> list[Endpoint]:
        nets = {n.id for n in self.live_networks()}
        nodes = {n.id for n in active(self.store.nodes())}
        return sorted((e for e in self.store.objects(Endpoint)
                       if e.network in nets and e.node in nodes), key=lambda e: e.name)

    def endpoint(self, ref: str) -> Endpoint:
        """By endpoint name or id, or by task name `<service>.<slot>` (its first network's
        endpoint, preferring one on this node while a slot moves)."""
        live = self.live_endpoints()
        for e in live:
            if e.name == ref or e.id == ref:
                return e
        tasks = [e for e in live if e.name.startswith(ref + ".") and
                 e.name[len(ref) + 1:].count(".") == 0]  # "<svc>.<slot>.<node6>"
        tasks.sort(key=lambda e: e.node != self.agent.node_id)
        if tasks:
            return tasks[0]
        raise NotFound(f"no endpoint {ref!r} (see `meshnet endpoint ls` or `meshnet service ps`)")

    def _node_names(self) -> dict[str, str]:
        return {n.id: n.name for n in self.store.nodes(include_deleted=True)}

    def endpoint_view(self, e: Endpoint, names: dict[str, str] | None = None,
                      nets: dict[str, Network] | None = None) -> dict:
        names = names or self._node_names()
        nets = nets or {n.id: n for n in self.live_networks()}
        net = nets.get(e.network)
        return {"id": e.id, "name": e.name, "network": net.name if net else e.network,
                "network_id": e.network, "node": names.get(e.node, e.node), "node_id": e.node,
                "ip": e.ip, "mac": e.mac, "netns": e.netns, "created": _iso(e.created),
                "local": e.node == self.agent.node_id}

    def network_views(self) -> list[dict]:
        eps = self.live_endpoints()
        return [{"id": n.id, "name": n.name, "driver": n.driver, "scope": "swarm",
                 "mode": n.mode, "subnet": n.subnet, "gateway": n.gateway, "vni": n.vni, "labels": n.labels,
                 "endpoints": sum(e.network == n.id for e in eps), "created": _iso(n.created)}
                for n in self.live_networks()]

    def inspect(self, ref: str) -> dict:
        """Shaped like `docker network inspect`; built only from replicated rows, so it
        reads the same on every node."""
        n = self.network(ref)
        names = self._node_names()
        eps = [e for e in self.live_endpoints() if e.network == n.id]
        prefix = ipaddress.ip_network(n.subnet).prefixlen
        nodes = {nd.id: nd for nd in self.store.nodes()}
        peers = sorted({e.node for e in eps})
        return {
            "Name": n.name, "Id": n.id, "Created": _iso(n.created), "Scope": "swarm",
            "Driver": n.driver, "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": None,
                     "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
            "Internal": False, "Attachable": True,
            "Containers": {e.id: {"Name": e.name, "EndpointID": e.id, "MacAddress": e.mac,
                                  "IPv4Address": f"{e.ip}/{prefix}", "IPv6Address": "",
                                  "Node": names.get(e.node, e.node)} for e in eps},
            "Options": {"com.docker.network.driver.overlay.vxlanid_list": str(n.vni),
                        "encrypted": self.agent.require_cluster().settings.get("encryption", "wireguard"),
                        "mode": n.mode},
            "Labels": n.labels,
            "Peers": [{"Name": names.get(p, p), "IP": nodes[p].transit_ip if p in nodes else ""}
                      for p in peers],
        }

    # -- networks -----------------------------------------------------------------------

    async def create_network(self, name: str, driver: str = "overlay", subnet: str | None = None,
                             gateway: str | None = None, labels: dict | None = None,
                             options: dict | None = None) -> dict:
        cluster = self.agent.require_cluster()
        plan_networks.check_name(name)
        if driver != "overlay":
            raise MeshnetError(f"unknown driver {driver!r}: meshnet networks are 'overlay'")
        opts = plan_networks.parse_options(options or {}, cluster.settings.get("encryption", "wireguard"))
        live = self.live_networks()
        if any(n.name == name for n in live):
            raise Conflict(f"network {name!r} already exists")
        routes = [(r, dev) for r, dev in await asyncio.to_thread(links.routed_networks)
                  if not dev.startswith(("mnb-", "mnv-", "mnh-", "mnr-"))
                  and dev != self.agent.cfg.interface]  # transit is checked on its own below
        transit = cluster.settings["transit_cidr"]
        if subnet:
            net = plan_networks.parse_subnet(subnet)
            plan_networks.check_subnet_free(net, live, routes, transit)
        else:
            net = plan_networks.pick_subnet(cluster.settings["network_pool"], live, routes, transit)
        gw = plan_networks.gateway_for(net, gateway)
        created = self.agent.hlc.now()
        row_id = secrets.token_hex(12)
        await self.agent.write_row("network", row_id, {
            "name": name, "driver": driver, "subnet": str(net), "gateway": gw,
            "vni": plan_networks.pick_vni(live), "labels": labels or {}, "created": created,
            "options": opts})
        log.info("created network %s (%s) %s", name, row_id, net)
        return self.inspect(row_id)

    async def remove_network(self, ref: str, force: bool = False) -> str:
        n = self.network(ref)
        attached = [e.name for e in self.live_endpoints() if e.network == n.id]
        if attached and not force:
            raise Conflict(f"network {n.name!r} has {len(attached)} endpoint(s) attached "
                           f"({', '.join(attached[:5])}); remove them or use --force")
        await self.agent.write_row("network", n.id, _data(n), deleted=True)
        log.info("removed network %s (%s)", n.name, n.id)
        return n.name

    # -- endpoints ----------------------------------------------------------------------

    async def create_endpoint(self, network: str, name: str | None = None, ip: str | None = None,
                              netns: str | None = None, ifname: str | None = None) -> dict:
        self.agent.require_cluster()
        net = self.network(network)
        name = plan_networks.check_name(name or f"ep-{secrets.token_hex(3)}", "endpoint")
        if any(e.name == name for e in self.live_endpoints()):
            raise Conflict(f"endpoint {name!r} already exists")
        eid = secrets.token_hex(8)
        owns = netns is None
        path = str(NETNS_DIR / f"mne-{eid[:12]}") if owns else netns
        if not owns and any(e.netns == path and e.network == net.id for e in self.live_endpoints()
                            if e.node == self.agent.node_id):
            raise Conflict(f"{path} is already attached to {net.name!r}")
        async with self._ipam_lock:
            addr = await self._allocate(net, ip)
            await self.agent.write_row("endpoint", eid, {
                "name": name, "network": net.id, "node": self.agent.node_id, "ip": addr,
                "mac": plan_overlay.mac_for(addr), "netns": path, "owns_netns": owns,
                "ifname": ifname or ("eth0" if owns else f"mn{net.vni}"),
                "created": self.agent.hlc.now()})
        if owns:
            await asyncio.to_thread(netns_files.write, Path(path).name, name, addr, ["127.0.0.11"])
        await self.agent.reconcile()
        log.info("endpoint %s on %s: %s", name, net.name, addr)
        return self.endpoint_view(self.endpoint(eid))

    async def remove_endpoint(self, ref: str) -> str:
        e = self.endpoint(ref)
        if e.node != self.agent.node_id:
            raise Conflict(f"endpoint {e.name!r} lives on {self._node_names().get(e.node, e.node)}; "
                           "remove it there")
        await self._tombstone_endpoint(e)
        await self.agent.reconcile()
        return e.name

    async def _tombstone_endpoint(self, e: Endpoint) -> None:
        await self.agent.write_row("endpoint", e.id, _data(e), deleted=True)
        if e.owns_netns:
            await asyncio.to_thread(netns_files.remove, Path(e.netns).name)

    def local_endpoint(self, ref: str) -> Endpoint:
        e = self.endpoint(ref)
        if e.node != self.agent.node_id:
            raise Conflict(f"endpoint {e.name!r} runs on {self._node_names().get(e.node, e.node)}, "
                           "not here: run the command there")
        return e

    # -- IPAM ---------------------------------------------------------------------------

    def _used(self, net: Network) -> set[str]:
        """Addresses taken on this network: live endpoints, service VIPs, and reservations
        in flight (an endpoint's address is free again once its row is a tombstone)."""
        used = {e.ip for e in self.store.objects(Endpoint) if e.network == net.id}
        used |= {ip for s in self.store.objects(Service) for n, ip in s.vips.items() if n == net.id}
        return used | self._reserved

    async def reserve_address(self, net: Network) -> str:
        """An address of this network for something that is not an endpoint (a VIP)."""
        async with self._ipam_lock:
            addr = await self._allocate(net, None)
            self._reserved.add(addr)
            return addr

    async def _allocate(self, net: Network, want: str | None) -> str:
        subnet = ipaddress.ip_network(net.subnet)
        me = self.agent.node_id
        if want is not None:
            try:
                addr = ipaddress.ip_address(want)
            except ValueError:
                raise MeshnetError(f"invalid IP address {want!r}") from None
            if addr not in subnet:
                raise MeshnetError(f"{addr} is not in {net.name}'s subnet {subnet}")
            if str(addr) in ipam.reserved(subnet, net.gateway):
                raise MeshnetError(f"{addr} is reserved in {subnet} (network, broadcast or gateway)")
            if str(addr) in self._used(net):
                raise Conflict(f"{addr} is already in use on {net.name!r}")
        lost: set[str] = set()
        for _ in range(8):  # each round either succeeds or loses a block race
            held = self._held(net)
            mine = [b for b, owner in held.items() if owner == me]
            if want is not None:
                block = ipam.block_of(subnet, want)
                holder = held.get(block)
                if holder == me:
                    return want
                if holder is not None:
                    raise Conflict(f"{want} is in {block}, which {self._node_names().get(holder)} "
                                   "hands out: create the endpoint there or pick another address")
            else:
                addr = ipam.free_address(subnet, net.gateway, mine, self._used(net))
                if addr is not None:
                    return addr
                block = ipam.free_block(subnet, held, lost)
                if block is None:
                    raise MeshnetError(f"network {net.name!r} ({subnet}) has no free address left")
            if not await self._claim(net, block):
                lost.add(block)
        raise MeshnetError(f"could not claim an address block on {net.name!r}: too much contention")

    def _held(self, net: Network) -> dict[str, str]:
        live_nodes = {n.id for n in active(self.store.nodes())}
        return ipam.owners(self.store.objects(IpamBlock), net.id, live_nodes)

    async def _claim(self, net: Network, block: str) -> bool:
        """Claim a block, have every reachable member acknowledge it (their answers carry
        their own claims on this network), then keep it only if ours is the earliest."""
        me = self.agent.node_id
        row = await self.agent.write_row("ipam_block", ipam.claim_id(net.id, block, me),
                                         {"network": net.id, "cidr": block}, push=False)
        replies = await self.agent.push([row])
        for reply in replies:
            try:
                self.agent.merge([Row.from_json(r) for r in reply.get("rows", [])], "claim reply")
            except (ValueError, AttributeError) as e:
                log.warning("bad claim reply: %s", e)
        if self._held(net).get(block) == me:
            log.info("claimed %s of %s", block, net.name)
            return True
        log.info("lost the race for %s of %s; releasing it", block, net.name)
        await self.agent.write_row("ipam_block", row.id, row.data, deleted=True)
        return False

    def claims_for(self, rows: list[Row]) -> list[dict]:
        """Answer to a pushed claim: our own live claims on the same networks."""
        nets = {r.data.get("network") for r in rows if r.kind == "ipam_block"}
        if not nets:
            return []
        return [r.to_json() for r in self.store.rows() if r.kind == "ipam_block"
                and r.data.get("network") in nets and not r.deleted]

    # -- reconcile ------------------------------------------------------------------------

    async def tidy(self) -> None:
        """Rows this node must retire: its endpoints on networks that are gone, its claims
        on removed networks, networks that lost a clash (by the node that wrote them)."""
        me = self.agent.node_id
        live_nodes = {n.id for n in active(self.store.nodes())}
        all_nets = self.store.objects(Network)
        live, losers = plan_networks.winners(all_nets)
        live_ids = {n.id for n in live}
        for n in losers:
            actor = n.owner if n.owner in live_nodes else min(live_nodes, default=None)
            if actor == me:
                await self._settle_clash(n, live)
        for e in self.store.objects(Endpoint):
            if e.node != me:
                continue
            gone = e.network not in live_ids
            vanished = not e.owns_netns and not os.path.exists(e.netns)
            if gone or vanished:
                log.info("retiring endpoint %s: %s", e.name,
                         "its network is gone" if gone else f"{e.netns} no longer exists")
                await self._tombstone_endpoint(e)
        for c in self.store.objects(IpamBlock):
            if c.owner == me and c.network not in live_ids:
                await self.agent.write_row("ipam_block", c.id, _data(c), deleted=True)

    async def _settle_clash(self, n: Network, live: list[Network]) -> None:
        """A network that clashes with an earlier one (made on both sides of a partition,
        or at the same moment). The same name means the same intent: the later one goes.
        A VNI, or a subnet it holds no endpoint in yet, is picked again instead."""
        cluster = self.agent.cluster()
        has_endpoints = any(e.network == n.id for e in self.store.objects(Endpoint))
        data = _data(n)
        if any(w.name == n.name for w in live):
            reason = f"the name is taken by {n.name!r} created earlier"
        else:
            if any(w.vni == n.vni for w in live):
                data["vni"] = plan_networks.pick_vni(live)
            subnet = ipaddress.ip_network(n.subnet)
            if any(subnet.overlaps(ipaddress.ip_network(w.subnet)) for w in live):
                if has_endpoints or cluster is None:
                    reason = f"its subnet {n.subnet} overlaps an earlier network and it has endpoints"
                    data = None
                else:
                    routes = await asyncio.to_thread(links.routed_networks)
                    data["subnet"] = str(plan_networks.pick_subnet(
                        cluster.settings["network_pool"], live, routes, cluster.settings["transit_cidr"]))
                    data["gateway"] = plan_networks.gateway_for(ipaddress.ip_network(data["subnet"]), None)
            if data is not None:
                log.warning("network %s (%s) clashed with an earlier one: now VNI %s, subnet %s",
                            n.name, n.id, data["vni"], data["subnet"])
                await self.agent.write_row("network", n.id, data)
                return
        log.warning("network %s (%s) removed: %s", n.name, n.id, reason)
        await self.agent.write_row("network", n.id, _data(n), deleted=True)

    def _views(self) -> tuple[dict[str, str], list[plan_overlay.NetView], list[plan_overlay.EndpointView]]:
        nodes = {n.id: n.transit_ip for n in active(self.store.nodes())}
        nets = [plan_overlay.NetView(n.id, n.vni, ipaddress.ip_network(n.subnet).prefixlen, n.subnet,
                                     n.mode) for n in self.live_networks()]
        eps = [plan_overlay.EndpointView(e.id, e.network, e.node, e.ip, e.mac, e.netns,
                                         e.owns_netns, e.ifname) for e in self.live_endpoints()]
        return nodes, nets, eps

    def desired(self, transit_mtu: int) -> plan_overlay.OverlayState:
        nodes, nets, eps = self._views()
        return plan_overlay.desired(self.agent.node_id, transit_mtu, nodes, nets, eps,
                                    self.agent.cfg.interface)

    def allowed_ips(self) -> dict[str, list[str]]:
        """Endpoint addresses on routed networks, by node: extra WireGuard allowed IPs."""
        return plan_overlay.allowed_ips(*self._views())


def _data(obj) -> dict:
    return {k: getattr(obj, k) for k in obj.DATA}
