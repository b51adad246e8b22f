"""Cluster membership on the agent: init, admitting joiners, joining, leaving, removing
members, labels, and rotating the join secret and the WireGuard key.

Mixed into `Agent` (agent.py): it uses the agent's store, keys, clock, transport and
reconcile; kept apart so each file reads as one concern.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time

from nacl.public import PrivateKey

from meshnet import join as handshake
from meshnet.api.peer import PeerError
from meshnet.discovery import browse, find_members, parse_addr
from meshnet.errors import Conflict, HostError, JoinRefused, MeshnetError, NotFound, NotMember
from meshnet.host import links
from meshnet.host import overlay as host_overlay
from meshnet.host.ipsec import IpsecTransit
from meshnet.host.wireguard import choose
from meshnet.keys import WIREGUARD_FILE as WIREGUARD_KEY_FILE
from meshnet.keys import NodeKeys, b64, unb64, write_secret
from meshnet.plan import transit
from meshnet.plan.overlay import OverlayState
from meshnet.rows import Row
from meshnet.store.models import Cluster, Node
from meshnet.token import JoinToken, cluster_tag, secret_hash

log = logging.getLogger("meshnet.agent")

SECRET_FILE = "cluster.secret"
REDISCOVER_INTERVAL = 5.0  # seconds between mDNS looks for unreachable members


class Membership:
    def _apply_secret(self, row: Row) -> None:
        """A rotated join secret: from now on only the new token admits anyone."""
        try:
            secret = unb64(row.data["secret"], 32)
        except ValueError:
            log.warning("ignored a malformed join secret from %s", row.owner)
            return
        cluster = self.cluster()
        if cluster is None:
            return
        write_secret(self.cfg.state_dir / SECRET_FILE, (b64(secret) + "\n").encode())
        self.store.save_cluster(Cluster(id=cluster.id, secret_hash=secret_hash(secret),
                                        created=cluster.created, settings=cluster.settings))
        log.warning("the join token was rotated by %s; the old token no longer admits anyone",
                    row.owner)

    async def rotate_token(self) -> dict:
        self.require_cluster()
        await self.write_row("secret", "join", {"secret": b64(os.urandom(32))})
        return self.token_info()

    async def rotate_keys(self) -> dict:
        """A new WireGuard key without an outage: peers learn the new public key first
        (the row is pushed through the tunnel, still on the old key, and acknowledged);
        only then does the device switch, so a transfer sees a brief re-handshake."""
        me = self.me()
        if me is None:
            raise NotMember("this node is not in a cluster")
        keys = NodeKeys(self.keys.identity, PrivateKey.generate())
        old = self.keys.wireguard_pub
        # The file first: after a crash anywhere below, _come_up republishes the key in it.
        write_secret(self.cfg.state_dir / WIREGUARD_KEY_FILE, (keys.wireguard_private + "\n").encode())
        async with self._host_lock:  # no reconcile may switch the device before peers know
            await self.write_own(wg_pub=keys.wireguard_pub)
            self.keys = keys
        await self.reconcile()
        log.warning("rotated the WireGuard key: %s... -> %s...", old[:8], keys.wireguard_pub[:8])
        return {"old": old, "new": keys.wireguard_pub}

    async def _follow_own_address(self) -> None:
        """This host's address changed while the agent was down (a new DHCP lease): take
        the one the host has now and publish it, so peers (and mDNS) find us there."""
        me = self.me()
        if me is None or me.state != "active":
            return
        ip, port = parse_addr(me.endpoint)
        try:
            await asyncio.to_thread(links.underlay_for, ip)
            return
        except HostError:
            pass
        new = await asyncio.to_thread(links.default_address)
        if new is None:
            log.error("this host no longer has %s and no other address to advertise", ip)
            return
        log.warning("this host's address changed from %s to %s; publishing the new one", ip, new)
        await self.write_own(endpoint=f"{new}:{port}", control=f"{new}:{parse_addr(me.control)[1]}")

    async def _rediscover_loop(self) -> None:
        """Members we cannot reach may have moved (every stored address changed, say):
        look for them on the LAN by mDNS, by node id, and point their peer there. WireGuard
        roaming then tells the other side where we are."""
        while True:
            await asyncio.sleep(REDISCOVER_INTERVAL)
            cluster, me = self.cluster(), self.me()
            if cluster is None or me is None or not self.cfg.mdns:
                continue
            peers = {n.id: n for n in self.peers()}
            for node_id, ep in list(self.found_endpoints.items()):
                if node_id not in peers or peers[node_id].endpoint == ep:
                    del self.found_endpoints[node_id]  # gone, or its row caught up
            lost = [n for n in peers.values() if not self.liveness.alive(n.id)]
            if not lost:
                continue
            try:
                heard = await browse(cluster_tag(bytes.fromhex(cluster.id)), parse_addr(me.endpoint)[0], 3.0)
            except Exception as e:  # mDNS is a convenience; never let it stop the loop
                log.debug("mDNS browse failed: %s", e)
                continue
            for node_id, ip, _port in heard:
                n = peers.get(node_id)
                if n is None or self.liveness.alive(node_id):
                    continue
                ep = f"{ip}:{parse_addr(n.endpoint)[1]}"
                if ep != n.endpoint and self.found_endpoints.get(node_id) != ep:
                    log.warning("found %s again at %s by mDNS (stored: %s)", n.name, ip, n.endpoint)
                    self.found_endpoints[node_id] = ep
                    self.changed.set()

    async def _advertise(self, addr: str | None) -> str:
        try:
            ip = parse_addr(addr, self.cfg.listen_port)[0] if addr else None
        except ValueError as e:
            raise MeshnetError(f"bad --advertise-addr: {e}") from None
        if ip is None:
            ip = await asyncio.to_thread(links.default_address)
            if ip is None:
                raise MeshnetError("no address to advertise: pass --advertise-addr IP")
        await asyncio.to_thread(links.underlay_for, ip)  # must be one of ours
        return ip

    async def init(self, advertise: str | None, transit_cidr: str, network_pool: str,
                   encryption: str = "wireguard") -> dict:
        if self.cluster() is not None:
            raise Conflict(f"already a member of cluster {self.cluster().id}; run `meshnet leave` first")
        if encryption not in ("wireguard", "ipsec"):
            raise MeshnetError(f"unknown encryption {encryption!r}: wireguard or ipsec")
        routes = await asyncio.to_thread(links.routed_networks)
        for cidr, what, flag in ((transit_cidr, "transit range", "--transit-cidr"),
                                 (network_pool, "network pool", "--network-pool")):
            try:
                net = ipaddress.ip_network(cidr)
            except ValueError:
                raise MeshnetError(f"invalid {what} {cidr!r}: expected a CIDR like 10.249.0.0/16") from None
            for routed, dev in routes:
                if dev != self.cfg.interface and net.overlaps(ipaddress.ip_network(routed)):
                    raise Conflict(f"{what} {cidr} overlaps {routed} routed on {dev}; "
                                   f"choose another with {flag}")
        ip = await self._advertise(advertise)
        token = JoinToken.generate()
        write_secret(self.cfg.state_dir / SECRET_FILE, (b64(token.secret) + "\n").encode())
        self.store.save_cluster(Cluster(
            id=token.cluster_hex, secret_hash=secret_hash(token.secret), created=time.time(),
            settings={"transit_cidr": transit_cidr, "network_pool": network_pool,
                      "encryption": encryption}))
        first = transit.allocate(transit_cidr, [])
        self.merge([self._own_row(**self._node_data(ip, first))], "self")
        await self._come_up()
        return self.token_info()

    def token_info(self) -> dict:
        me, token = self.me(), self.token()
        return {"token": token.encode(), "cluster_id": token.cluster_hex,
                "join_command": f"meshnet join --token {token.encode()} {me.control if me else ''}".strip()}

    def admit(self, envelope: object) -> dict:
        """Answer a join request from the underlay (refusals raise JoinRefused)."""
        if self.cluster() is None:
            raise JoinRefused("this node is not in a cluster")
        token = self.token()
        opened = handshake.open_request(envelope, token, self.nonces, time.time())
        if opened.kind == "hello":
            reply = {"cluster_id": token.cluster_hex, "settings": self.cluster().settings,
                     "rows": [r.to_json() for r in self.store.rows()]}
            return handshake.seal_response(token, opened, reply)
        try:
            row = Row.from_json(opened.payload.get("row"))
        except ValueError as e:
            raise JoinRefused(f"malformed node row: {e}") from None
        if row.kind != "node" or row.deleted:
            raise JoinRefused("a join registers the joiner's own node row")
        net = ipaddress.ip_network(self.cluster().settings["transit_cidr"])
        try:
            outside = ipaddress.ip_address(row.data["transit_ip"]) not in net
        except ValueError:
            raise JoinRefused(f"malformed transit address {row.data['transit_ip']!r}") from None
        if outside:
            raise JoinRefused(f"transit address {row.data['transit_ip']} is outside {net}")
        for n in transit.active(self.store.nodes()):
            if n.transit_ip == row.data["transit_ip"] and n.id != row.id:
                raise JoinRefused(f"transit address {n.transit_ip} is taken by {n.name}; retry")
        if self.store.revoked(row.id):  # the token holder may bring a removed node back
            lift = Row("revocation", row.id, self.node_id, self.hlc.now(), True,
                       {"name": row.data["name"], "reason": "joined again"}).signed(self.keys)
            self.merge([lift], "self")
            self._spawn(self.push([lift]))
        changed = self.merge([row], f"joiner {row.data['name']}")
        if not changed and (existing := self.store.node(row.id)) and existing.version != row.version:
            raise JoinRefused("node row refused (bad signature or stale version)")
        log.info("admitted %s (%s) at %s", row.data["name"], row.id, row.data["transit_ip"])
        self._spawn(self.push([row], exclude={row.id}))
        return handshake.seal_response(token, opened, {"rows": [r.to_json() for r in self.store.rows()]})

    async def _exchange(self, host: str, port: int, token: JoinToken, kind: str, payload: dict) -> dict:
        req = handshake.seal_request(token, kind, payload)
        url = f"http://{host}:{port}/join/v1"
        resp = await self._http.post(url, json=req.envelope, timeout=10, close=True)
        if resp.status_code == 403:
            raise JoinRefused(f"join refused by {host}:{port}: {resp.json().get('error')}")
        if resp.status_code != 200:
            raise MeshnetError(f"join via {host}:{port} failed: HTTP {resp.status_code}: {resp.text[:200]}")
        return handshake.open_response(resp.json(), token, req)

    async def join(self, token_text: str, addrs: list[str], advertise: str | None) -> dict:
        token = JoinToken.parse(token_text)
        if (cluster := self.cluster()) is not None:
            raise Conflict(f"already a member of cluster {cluster.id}; run `meshnet leave` first")
        ip = await self._advertise(advertise)
        try:
            candidates = [parse_addr(a, self.cfg.listen_port) for a in addrs]
        except ValueError as e:
            raise MeshnetError(str(e)) from None
        if not candidates:
            candidates = await find_members(token.tag, ip)
            if not candidates:
                raise MeshnetError("no member of this cluster answered on the LAN (mDNS); "
                                   "give one: meshnet join --token TOKEN HOST[:PORT]")
        errors = []
        for host, port in candidates:
            try:
                return await self._join_via(token, host, port, ip)
            except (PeerError, OSError) as e:
                errors.append(f"{host}:{port}: {e or type(e).__name__}")
        raise MeshnetError("could not reach a member: " + "; ".join(errors))

    async def _join_via(self, token: JoinToken, host: str, port: int, ip: str) -> dict:
        hello = await self._exchange(host, port, token, "hello", {
            "id": self.node_id, "name": self.name, "identity_pub": self.keys.identity_pub})
        try:
            settings = hello["settings"]
            cidr = settings["transit_cidr"]
            rows = [Row.from_json(r) for r in hello["rows"]]
        except (KeyError, TypeError, ValueError) as e:
            raise JoinRefused(f"malformed join reply from {host}:{port}: {e}") from None
        if hello.get("cluster_id") != token.cluster_hex:
            raise JoinRefused(f"{host}:{port} answered for another cluster")
        others = [_RowNode(r) for r in rows if r.kind == "node" and r.id != self.node_id]
        own = self._own_row(**self._node_data(ip, transit.allocate(cidr, others)))
        reply = await self._exchange(host, port, token, "register", {"row": own.to_json()})
        # Admitted: only now is anything stored.
        write_secret(self.cfg.state_dir / SECRET_FILE, (b64(token.secret) + "\n").encode())
        self.store.save_cluster(Cluster(id=token.cluster_hex, secret_hash=secret_hash(token.secret),
                                        created=time.time(), settings=settings))
        self.merge([own], "self")
        self.merge([Row.from_json(r) for r in reply.get("rows", [])], f"{host}:{port}")
        await self._come_up()
        me = self.me()
        log.info("joined cluster %s via %s:%d as %s", token.cluster_hex, host, port, me.transit_ip)
        self._spawn(self.push([own]))
        return {"cluster_id": token.cluster_hex, "transit_ip": me.transit_ip,
                "members": len(transit.active(self.store.nodes()))}

    async def leave(self) -> dict:
        cluster = self.require_cluster()
        await self.supervisor.stop_all()
        await self.write_own(state="left")  # tells every peer to drop us
        self.liveness.leave()
        await asyncio.sleep(0.3)  # let the "left" gossip go out before the tunnel goes
        await self._teardown()
        log.info("left cluster %s", cluster.id)
        return {"left": cluster.id}

    async def _teardown(self) -> None:
        """Stop being a member locally: announcement, overlay, tunnel, cluster state."""
        if self._mdns_task is not None:
            self._mdns_task.cancel()
        await self.advertiser.stop()
        for key in list(self.resolver.keys()):
            await self.resolver.remove(key)
        async with self._host_lock:
            cluster = self.cluster()
            if self.backend is None and cluster and cluster.settings.get("encryption") == "ipsec":
                self.backend = IpsecTransit("0.0.0.0", "0.0.0.0")  # delete() needs no addresses
            backend = self.backend or choose(self.cfg.wireguard, self.cfg.wireguard_go,
                                             self.cfg.interface)
            try:
                await asyncio.to_thread(host_overlay.ensure, OverlayState())
                await asyncio.to_thread(backend.delete, self.cfg.interface)
            except HostError as e:
                log.warning("could not remove the tunnel or overlay: %s", e)
            self.backend = None
            self.stats = {}
            self.store.forget_cluster()
            (self.cfg.state_dir / SECRET_FILE).unlink(missing_ok=True)

    async def revoke(self, ref: str) -> dict:
        """`meshnet node rm`: every member drops the node, refuses its rows from now on,
        and frees its addresses and slots. It may join again with the token."""
        self.require_cluster()
        node = self.find_node(ref)
        if node.id == self.node_id:
            raise Conflict("this is the local node: use `meshnet leave`")
        row = Row("revocation", node.id, self.node_id, self.hlc.now(), False,
                  {"name": node.name, "reason": f"removed by {self.name}"}).signed(self.keys)
        # Tell the removed node first, while its tunnel still exists, so it leaves too.
        await self.push([row], exclude={n.id for n in self.peers()}, also=[node])
        self.merge([row], "self")
        await self.push([row])
        log.warning("revoked %s (%s)", node.name, node.id)
        return {"removed": node.name, "id": node.id}

    def find_node(self, ref: str) -> Node:
        for n in self.store.nodes():
            if ref in (n.name, n.id):
                return n
        matches = [n for n in self.store.nodes() if n.id.startswith(ref)] if len(ref) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"no member {ref!r} (see `meshnet node ls`)")

    async def update_labels(self, ref: str, add: dict, remove: list) -> dict:
        """Labels for placement constraints. A node owns its row, so another node's labels
        are changed by asking that node over the tunnel."""
        self.require_cluster()
        node = self.find_node(ref) if ref else self.me()
        if node is None:
            raise NotMember("this node is not in a cluster")
        if node.id != self.node_id:
            try:
                r = await self._http.post(self._peer_url(node, "/peer/v1/labels"),
                                          json={"add": add, "remove": remove})
            except PeerError as e:
                raise MeshnetError(f"could not reach {node.name} to change its labels: {e}") from None
            if r.status_code != 200:
                raise MeshnetError(f"{node.name} refused the label change: {r.text[:200]}")
            return r.json()
        labels = {k: v for k, v in {**node.labels, **add}.items() if k not in remove}
        await self.write_own(labels=labels)
        return {"name": self.name, "labels": labels}

    async def _check_revoked(self) -> None:
        if self.cluster() is not None and self.store.revoked(self.node_id):
            log.warning("this node was removed from the cluster; tearing down")
            await self.supervisor.stop_all()
            await self._teardown()


class _RowNode:
    """A node row seen as a NodeLike, for planning before anything is stored."""

    def __init__(self, row: Row) -> None:
        self.id, self.version, self.deleted = row.id, row.version, row.deleted
        self.transit_ip = row.data.get("transit_ip", "")
        self.state = row.data.get("state", "")
