"""The per-host agent: wires the store, keys, transit tunnel, replication and APIs.

One asyncio loop. Blocking work (netlink, wireguard-go, SQLite writes) is short and
runs in worker threads where it must (pyroute2's sync API runs its own event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import logging
import os
import random
import signal
import socket
import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx
from aiohttp import web
from nacl.public import PrivateKey
from sqlalchemy.exc import SQLAlchemyError

from meshnet import doctor as host_checks
from meshnet import join as handshake
from meshnet.config import WIREGUARD_OVERHEAD, AgentConfig
from meshnet.discovery import Advertiser, browse, find_members, parse_addr
from meshnet.dns.server import Resolver
from meshnet.errors import Conflict, HostError, JoinRefused, MeshnetError, NotFound, NotMember
from meshnet.events import Events
from meshnet.gossip.transport import SwimTransport
from meshnet.hlc import HLC
from meshnet.host import firewall, lb, links, netns_files
from meshnet.host import overlay as host_overlay
from meshnet.host.ipsec import IpsecTransit
from meshnet.host.wireguard import Backend, choose
from meshnet.keys import WIREGUARD_FILE as WIREGUARD_KEY_FILE
from meshnet.keys import NodeKeys, b64, load_or_create, unb64, write_secret
from meshnet.overlay import Overlay
from meshnet.plan import dns as plan_dns
from meshnet.plan import transit
from meshnet.plan.overlay import VXLAN_PORT, OverlayState
from meshnet.plan.wireguard import PeerStats, desired, diff
from meshnet.rows import Row
from meshnet.services import Services
from meshnet.store import Store
from meshnet.store.models import Cluster, Node
from meshnet.tasks import Supervisor
from meshnet.token import JoinToken, cluster_tag, secret_hash

log = logging.getLogger("meshnet.agent")

SECRET_FILE = "cluster.secret"
REDISCOVER_INTERVAL = 5.0  # seconds between mDNS looks for unreachable members
PEER_TIMEOUT = 3.0


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.keys: NodeKeys = load_or_create(cfg.state_dir)  # a corrupt key stops us before the store
        self.store = Store(cfg.state_dir / "meshnet.db")      # file is made
        self.hlc = HLC()
        self.backend: Backend | None = None
        self.nonces = handshake.NonceCache()
        self.advertiser = Advertiser()
        self.stats: dict[str, PeerStats] = {}
        self.name = cfg.name or socket.gethostname()
        self._host_lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._http: httpx.AsyncClient | None = None
        self.transit_mtu: int | None = None
        self.overlay = Overlay(self)
        self.liveness = SwimTransport(self.node_id, cfg.listen_port, cfg.interface, self._member_event)
        self.services = Services(self)
        self.supervisor = Supervisor(self)
        self.resolver = Resolver()
        self._lb_applied: dict[str, dict] = {}
        self._guard_installed = False
        self.problems: list[tuple[float, str]] = []  # recent host problems, shown by status
        self._mdns_task: asyncio.Task | None = None
        self.found_endpoints: dict[str, str] = {}  # node id -> underlay endpoint heard by mDNS
        self.events = Events()  # recent events, for the status page
        self.counters: Counter[str] = Counter()  # replication counters, for /metrics
        self.reach: dict[str, dict] = {}  # peer id -> status page probe (api/status.py)

    # -- state helpers ------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.keys.node_id

    def cluster(self) -> Cluster | None:
        return self.store.cluster()

    def require_cluster(self) -> Cluster:
        cluster = self.cluster()
        if cluster is None:
            raise NotMember("this node is not in a cluster: run `meshnet init` or `meshnet join`")
        return cluster

    def me(self) -> Node | None:
        return self.store.node(self.node_id)

    def token(self) -> JoinToken:
        cluster = self.require_cluster()
        secret = unb64((self.cfg.state_dir / SECRET_FILE).read_text().strip(), 32)
        return JoinToken(bytes.fromhex(cluster.id), secret)

    def _own_row(self, **data) -> Row:
        return Row("node", self.node_id, self.node_id, self.hlc.now(), False, data).signed(self.keys)

    def _node_data(self, ip: str, transit_ip: str, state: str = "active") -> dict:
        return {"name": self.name, "identity_pub": self.keys.identity_pub,
                "wg_pub": self.keys.wireguard_pub, "endpoint": f"{ip}:{self.cfg.wireguard_port}",
                "control": f"{ip}:{self.cfg.listen_port}", "transit_ip": transit_ip,
                "state": state, "labels": {}}

    def merge(self, rows: list[Row], source: str) -> list[Row]:
        for r in rows:
            self.hlc.observe(r.version)
        changed, refused = self.store.merge(rows)
        for why in refused:
            log.warning("refused a row from %s: %s", source, why)
        if source != "self":
            self.counters["received_rows"] += 1
            self.counters["rows_received"] += len(rows)
            self.counters["rows_applied"] += len(changed)
            self.counters["lag_sum_ms"] += sum(max(0, time.time() * 1000 - (r.version >> 16))
                                               for r, _ in changed)
        self.events.rows_changed(changed, {n.id: n.name for n in self.store.nodes()})
        for r, _ in changed:
            if r.kind == "secret" and not r.deleted:
                self._apply_secret(r)
        if any(r.kind in ("node", "revocation") for r, _ in changed):
            self._sync_members()
        if changed:
            self.changed.set()
        return [r for r, _ in changed]

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

    def problem(self, message: str) -> None:
        """Report a host problem loudly: log, status, page, doctor (kept for 10 minutes)."""
        log.error("%s", message)
        now = time.time()
        self.problems = [(t, m) for t, m in self.problems if now - t < 600] + [(now, message)]

    async def doctor(self) -> list[dict]:
        me = self.me()
        checks = await asyncio.to_thread(host_checks.kernel)
        backend = self.backend.name if self.backend else None
        checks.append(await asyncio.to_thread(host_checks.backend, backend, self.cfg.interface,
                                              self.cfg.wireguard_go))
        if me is not None:
            checks.append(await asyncio.to_thread(host_checks.rules, self.cfg.interface))
            checks += await asyncio.to_thread(host_checks.mtu, self.cfg.interface, self.transit_mtu,
                                              parse_addr(me.endpoint)[0])
            checks.append(host_checks.skew(await self._clock_offsets()))
        checks += host_checks.permissions(self.cfg.state_dir, self.cfg.socket_path)
        now = time.time()
        checks += [host_checks.Check("recent problem", "fail", f"{now - t:.0f} s ago: {m}")
                   for t, m in self.problems if now - t < 600]
        return [c.to_json() for c in checks]

    async def _clock_offsets(self) -> dict[str, float]:
        """Each peer's clock minus ours, from the time in its ping reply (midpoint of the RTT)."""
        async def one(n: Node) -> tuple[str, float] | None:
            t0 = time.time()
            try:
                r = await self._http.get(self._peer_url(n, "/peer/v1/ping"), timeout=2.0)
                theirs = r.json().get("time")
            except (httpx.HTTPError, ValueError, AttributeError):
                return None
            t1 = time.time()
            return (n.name, theirs - (t0 + t1) / 2) if isinstance(theirs, (int, float)) else None

        results = await asyncio.gather(*(one(n) for n in self.peers()))
        return dict(r for r in results if r is not None)

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

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await asyncio.to_thread(self.store.upgrade)
        except Exception as e:  # a store we cannot upgrade: one line, not a traceback
            from alembic.util import CommandError  # imported only when a migration ran

            if not isinstance(e, SQLAlchemyError | CommandError):
                raise
            raise _corrupt_store(self.cfg.state_dir / "meshnet.db", e) from None
        self.hlc.observe(self.store.max_version())
        self._http = httpx.AsyncClient(timeout=PEER_TIMEOUT)
        # Not loop.add_signal_handler: it routes signals through a wakeup fd that children
        # forked without exec (pyroute2 forks one per namespace it enters) share with us,
        # so a signal to such a child would stop the agent. Check the pid instead.
        loop, me = asyncio.get_running_loop(), os.getpid()

        def on_signal(_sig, _frame) -> None:
            if os.getpid() == me:
                loop.call_soon_threadsafe(self._stop.set)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        from meshnet.api import status as status_page
        from meshnet.api.server import make_apps  # the API depends on the agent, not back

        local_app, control_app = make_apps(self)
        status_page.add_local_routes(local_app, self)
        runners = [web.AppRunner(local_app, access_log=None),
                   web.AppRunner(control_app, access_log=None)]
        for r in runners:
            await r.setup()
        self.cfg.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.cfg.socket_path.unlink(missing_ok=True)
        old_umask = os.umask(0o077)  # the socket is root's only
        try:
            await web.UnixSite(runners[0], str(self.cfg.socket_path)).start()
        finally:
            os.umask(old_umask)
        if self.cfg.socket_group:  # root and this group only (e.g. `meshnet`)
            try:
                gid = grp.getgrnam(self.cfg.socket_group).gr_gid
            except KeyError:
                raise MeshnetError(f"no group {self.cfg.socket_group!r} for the API socket") from None
            os.chown(self.cfg.socket_path, 0, gid)
            os.chmod(self.cfg.socket_path, 0o660)
        else:
            os.chmod(self.cfg.socket_path, 0o600)
        await web.TCPSite(runners[1], self.cfg.listen_host, self.cfg.listen_port,
                          reuse_address=True).start()
        log.info("agent %s (%s) listening on %s and %s:%d", self.name, self.node_id,
                 self.cfg.socket_path, self.cfg.listen_host, self.cfg.listen_port)
        if self.cluster() is not None:
            await self._come_up()
        self._spawn(self._reconcile_loop())
        self._spawn(self._anti_entropy_loop())
        self._spawn(self.liveness.run())
        self._spawn(self._rediscover_loop())
        if (status_runner := await status_page.start(self, local_app)) is not None:
            runners.append(status_runner)
        await self._stop.wait()
        log.info("agent stopping")
        for t in list(self._tasks):
            t.cancel()
        await self.advertiser.stop()
        await self.resolver.close()  # tasks keep running: a restarted agent adopts them
        self.liveness.close()
        for r in runners:
            await r.cleanup()
        await self._http.aclose()
        self.cfg.socket_path.unlink(missing_ok=True)
        self.store.close()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _come_up(self) -> None:
        """Bring this member's tunnel and mDNS announcement up (after init, join or restart)."""
        me = self.me()
        if me is not None and me.state == "active" and me.wg_pub != self.keys.wireguard_pub:
            log.warning("publishing this node's WireGuard key again (a rotation was interrupted)")
            await self.write_own(wg_pub=self.keys.wireguard_pub)
        await self._follow_own_address()
        await self.reconcile()
        if self.cfg.mdns:
            # Registering probes the LAN for about a second: do not make a join wait for it.
            self._mdns_task = self._spawn(self._advertise_mdns())

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

    async def _advertise_mdns(self) -> None:
        me, cluster = self.me(), self.cluster()
        if me is None or cluster is None:
            return
        ip, port = parse_addr(me.control)
        try:
            await self.advertiser.start(self.name, self.node_id, cluster_tag(bytes.fromhex(cluster.id)),
                                        ip, port)
        except Exception as e:  # mDNS is a convenience; a member works without it
            log.warning("mDNS announcement failed: %s", e)

    # -- transit reconcile --------------------------------------------------------------

    async def reconcile(self) -> None:
        async with self._host_lock:
            await asyncio.to_thread(self._reconcile_sync)

    def _reconcile_sync(self) -> None:
        cluster, me = self.cluster(), self.me()
        if cluster is None or me is None or me.state != "active":
            return
        if self.backend is None and cluster.settings.get("encryption") == "ipsec":
            self.backend = IpsecTransit(parse_addr(me.endpoint)[0], me.transit_ip)  # docs/ipsec.md
            log.info("WireGuard backend: %s", self.backend.name)
        if isinstance(self.backend, IpsecTransit):  # a changed address re-derives the SAs
            self.backend.local_underlay = parse_addr(me.endpoint)[0]
        if self.backend is None:
            self.backend = choose(self.cfg.wireguard, self.cfg.wireguard_go, self.cfg.interface,
                                  self.cfg.state_dir / "wireguard-go.log")
            log.info("WireGuard backend: %s", self.backend.name)
        ifname = self.cfg.interface
        if not self.backend.exists(ifname):
            self.backend.create(ifname)
        current, _ = self.backend.read(ifname)
        want = desired(self.node_id, self.keys.wireguard_private, self.cfg.wireguard_port,
                       self.store.nodes(), self.found_endpoints)
        ops = diff(current, want)
        if ops:
            log.info("WireGuard %s: %d change(s): %s", ifname, len(ops),
                     ", ".join(type(o).__name__ for o in ops))
            self.backend.apply(ifname, ops)
        prefix = ipaddress.ip_network(cluster.settings["transit_cidr"]).prefixlen
        underlay_ip, _ = parse_addr(me.endpoint)
        _, underlay_mtu = links.underlay_for(underlay_ip)
        self.transit_mtu = underlay_mtu - WIREGUARD_OVERHEAD
        links.ensure_address_mtu_up(ifname, f"{me.transit_ip}/{prefix}", self.transit_mtu)
        _, stats = self.backend.read(ifname)
        self.stats = {s.public_key: s for s in stats}
        # Fail closed first: VXLAN may leave only through the tunnel.
        if firewall.ensure_vxlan_guard(ifname, VXLAN_PORT) and self._guard_installed:
            self.problem("the nftables VXLAN guard was missing or altered; it has been restored")
        self._guard_installed = True
        ops = host_overlay.ensure(self.overlay.desired(self.transit_mtu))
        if ops:
            log.info("overlay: %d change(s): %s", len(ops), ", ".join(
                f"{type(o).__name__} {type(o.item).__name__}" for o in ops[:8]))

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.cfg.reconcile_interval)
            self.changed.clear()
            try:
                await self._check_revoked()
                self._sync_members()
                await self._resolve_transit_clash()
                member = self.cluster() is not None and self.me() is not None
                if member:
                    await self.overlay.tidy()
                    # Names first: they only need the rows, not the kernel pass below, so a
                    # scale or a death reaches DNS and the VIPs a second or two sooner.
                    await self._reconcile_names()
                await self.reconcile()
                if member:
                    await self.supervisor.reconcile()
                    await self._reconcile_names()
            except MeshnetError as e:
                log.error("reconcile failed: %s", e)
                self.events.add("reconcile-error", f"reconcile failed: {e}", level="error")
            except Exception as e:
                log.exception("reconcile failed")
                self.events.add("reconcile-error", f"reconcile failed: {type(e).__name__}: {e}",
                                level="error")

    async def _reconcile_names(self) -> None:
        """DNS views and VIP load balancing for every local endpoint namespace."""
        me, alive = self.node_id, self.services.alive_nodes()
        eps, svcs = self.overlay.live_endpoints(), self.services.live()
        tasks = self.services.tasks()
        subnets = {n.id: n.subnet for n in self.overlay.live_networks()}
        views = plan_dns.views(me, eps, svcs, tasks, alive, self._forwarders(), subnets)
        for path, backends in plan_dns.vip_backends(me, eps, svcs, tasks, alive).items():
            if self._lb_applied.get(path) != backends and os.path.exists(path):
                await asyncio.to_thread(lb.apply, path, backends)
                self._lb_applied[path] = backends
        for path in set(self._lb_applied) - set(views):
            del self._lb_applied[path]
        serving = set(self.resolver.keys())
        for path, view in views.items():
            if path in serving:
                self.resolver.update(path, view)
            elif os.path.exists(path):
                await self.resolver.add(path, path, view)
        for path in serving - set(views):
            await self.resolver.remove(path)

    def _forwarders(self) -> tuple[str, ...]:
        own = [s for s in netns_files.host_nameservers() if not s.startswith("127.0.0.11")]
        return tuple(self.cfg.dns_forward or own)

    async def gather_logs(self, s, tail: int | None, offsets: dict) -> list[dict]:
        """Every node's logs of a service's tasks; offsets are keyed "node/task"."""
        def mine(node: str) -> dict:
            return {k.split("/", 1)[1]: v for k, v in offsets.items()
                    if isinstance(v, int) and k.startswith(node + "/")}

        async def one(n: Node) -> list[dict]:
            try:
                r = await self._http.post(self._peer_url(n, "/peer/v1/logs"), json={
                    "service": s.id, "tail": tail, "offsets": mine(n.name)})
                return r.json().get("logs", []) if r.status_code == 200 else []
            except (httpx.HTTPError, ValueError):
                return [{"task": "?", "node": n.name, "size": 0, "lines": [], "error": "unreachable"}]

        remote = await asyncio.gather(*(one(n) for n in self.peers()))
        return self.supervisor.logs_of(s, tail, mine(self.name)) + [x for xs in remote for x in xs]

    def _sync_members(self) -> None:
        """SWIM probes exactly the active members (right after a join, not a reconcile later)."""
        self.liveness.set_members({n.id: n.transit_ip for n in self.peers()}
                                  if self.cluster() is not None else {})

    def _member_event(self, e) -> None:
        """SWIM changed its mind about a member: placement, DNS and the page follow."""
        name = next((n.name for n in self.store.nodes(include_deleted=True) if n.id == e.node), e.node)
        self.events.add("member-" + str(e.status), f"{name} is {e.status}")
        self.changed.set()

    async def _resolve_transit_clash(self) -> None:
        cluster, me = self.cluster(), self.me()
        if cluster is None or me is None or me.state != "active":
            return
        nodes = self.store.nodes()
        if transit.must_move(me, nodes):
            ip = transit.allocate(cluster.settings["transit_cidr"],
                                  [n for n in nodes if n.id != me.id])
            log.warning("transit address %s is claimed by an earlier node; moving to %s",
                        me.transit_ip, ip)
            await self.write_own(transit_ip=ip)

    async def write_own(self, **changes) -> Row:
        me = self.me()
        assert me is not None
        data = {k: getattr(me, k) for k in Node.DATA} | changes
        return await self.write_row("node", self.node_id, data)

    async def write_row(self, kind: str, row_id: str, data: dict, deleted: bool = False,
                        push: bool = True) -> Row:
        """Write a row as this node (signed), store it, and push it to every member."""
        row = Row(kind, row_id, self.node_id, self.hlc.now(), deleted, data).signed(self.keys)
        self.merge([row], "self")
        if push:
            await self.push([row])
        return row

    # -- replication ------------------------------------------------------------------

    def peers(self) -> list[Node]:
        return [n for n in transit.active(self.store.nodes()) if n.id != self.node_id]

    def _peer_url(self, n: Node, path: str) -> str:
        return f"http://{n.transit_ip}:{parse_addr(n.control)[1]}{path}"

    async def push(self, rows: list[Row], exclude: set[str] = frozenset(),
                   also: list[Node] = ()) -> list[dict]:
        """Send new rows to every member now and return their answers; anti-entropy
        repairs what does not arrive."""
        body = {"rows": [r.to_json() for r in rows]}

        async def one(n: Node) -> dict | None:
            try:
                resp = await self._http.post(self._peer_url(n, "/peer/v1/rows"), json=body)
                reply = resp.json()
                return reply if isinstance(reply, dict) else None
            except (httpx.HTTPError, ValueError) as e:
                log.debug("push to %s failed: %s", n.name, e)
                return None

        targets = [n for n in self.peers() if n.id not in exclude] + list(also)
        self.counters["sent_push"] += len(targets)
        replies = await asyncio.gather(*(one(n) for n in targets))
        return [r for r in replies if r is not None]

    async def _anti_entropy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.anti_entropy_interval * random.uniform(0.75, 1.25))
            peers = self.peers() if self.cluster() is not None else []
            if peers:
                try:
                    await self.sync_with(random.choice(peers))
                except (httpx.HTTPError, ValueError) as e:
                    log.debug("anti-entropy failed: %s", e)
                except Exception:  # never let one bad exchange end the loop
                    log.exception("anti-entropy failed")

    async def sync_with(self, peer: Node) -> None:
        """One anti-entropy round: trade per-owner digests, each side sends what differs."""
        self.counters["sent_sync"] += 1
        resp = await self._http.post(self._peer_url(peer, "/peer/v1/sync"),
                                     json={"digest": self.store.digest()})
        resp.raise_for_status()
        body = resp.json()
        if not isinstance(body, dict) or not isinstance(body.get("rows", []), list):
            raise ValueError(f"malformed sync reply from {peer.name}")
        self.merge([Row.from_json(r) for r in body.get("rows", [])], peer.name)
        want = {o for o in body.get("want", []) if isinstance(o, str)}
        if want:
            rows = self.store.rows(owners=want)
            self.counters["sent_sync_rows"] += 1
            await self._http.post(self._peer_url(peer, "/peer/v1/rows"),
                                  json={"rows": [r.to_json() for r in rows]})

    def answer_sync(self, their_digest: dict) -> dict:
        self.counters["received_sync"] += 1
        mine = self.store.digest()
        differ = {o for o in set(mine) | set(their_digest) if mine.get(o) != their_digest.get(o)}
        rows = self.store.rows(owners={o for o in differ if o in mine})
        return {"rows": [r.to_json() for r in rows], "want": sorted(o for o in differ
                                                                      if o in their_digest)}

    def is_peer_address(self, ip: str) -> bool:
        return any(n.transit_ip == ip for n in self.peers())

    # -- cluster membership: init, admit, join, leave -------------------------------------

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
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(url, json=req.envelope)
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
            except (httpx.HTTPError, OSError) as e:
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
            except httpx.HTTPError as e:
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

    # -- views ---------------------------------------------------------------------------

    async def refresh_stats(self) -> None:
        """Read handshake ages and byte counters from the device now."""
        if self.backend is None or self.cluster() is None:
            return
        try:
            _, stats = await asyncio.to_thread(self.backend.read, self.cfg.interface)
        except MeshnetError as e:
            log.warning("could not read %s: %s", self.cfg.interface, e)
            return
        self.stats = {s.public_key: s for s in stats}

    def _health(self, n: Node) -> tuple[str, float | None]:
        """(alive | suspect | dead | left, wall time of the change) as SWIM sees it."""
        if n.state != "active":
            return n.state, (n.version >> 16) / 1000
        status, since = self.liveness.status(n.id)
        return status, None if since is None else time.time() - (time.monotonic() - since)

    def node_views(self) -> list[dict]:
        now = time.time()
        out = []
        for n in self.store.nodes():
            s = self.stats.get(n.wg_pub)
            hs = s.last_handshake if s else 0.0
            out.append({
                "id": n.id, "name": n.name, "transit_ip": n.transit_ip, "endpoint": n.endpoint,
                "control": n.control, "state": n.state, "labels": n.labels, "version": n.version,
                "self": n.id == self.node_id, "last_handshake": hs or None,
                "health": self._health(n)[0], "health_since": self._health(n)[1],
                "last_seen_age": self.liveness.last_seen_age(n.id),
                "handshake_age": round(now - hs, 1) if hs else None,
                "rx_bytes": s.rx_bytes if s else 0, "tx_bytes": s.tx_bytes if s else 0,
            })
        return out

    def status(self) -> dict:
        cluster, me = self.cluster(), self.me()
        return {
            "node_id": self.node_id, "name": self.name, "member": cluster is not None,
            "cluster_id": cluster.id if cluster else None,
            "transit_ip": me.transit_ip if me else None,
            "interface": self.cfg.interface,
            "backend": self.backend.name if self.backend else None,
            "members": len(transit.active(self.store.nodes())) if cluster else 0,
            "transit_mtu": self.transit_mtu,
            "problems": [m for t, m in self.problems if time.time() - t < 600],
        }


class _RowNode:
    """A node row seen as a NodeLike, for planning before anything is stored."""

    def __init__(self, row: Row) -> None:
        self.id, self.version, self.deleted = row.id, row.version, row.deleted
        self.transit_ip = row.data.get("transit_ip", "")
        self.state = row.data.get("state", "")


def _corrupt_store(path: Path, e: Exception) -> MeshnetError:
    why = str(getattr(e, "orig", None) or e).splitlines()[0]
    return MeshnetError(f"state database {path} is unreadable or corrupt: {why} "
                        "(move it aside to start without cluster state, then join again)")


def _check_store(path: Path) -> None:
    """Refuse a state database SQLite cannot read before anything else starts (a MeshnetError:
    the CLI prints it as one line and exits 1)."""
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            result = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as e:
        raise _corrupt_store(path, e) from None
    if result != [("ok",)]:
        raise _corrupt_store(path, ValueError("; ".join(str(r[0]) for r in result[:3])))


def run(cfg: AgentConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_store(Path(cfg.state_dir) / "meshnet.db")
    asyncio.run(Agent(cfg).run())
