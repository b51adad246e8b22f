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
import signal
import socket
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from meshnet import doctor as host_checks
from meshnet import join as handshake
from meshnet.api.peer import PeerClient, PeerError
from meshnet.config import WIREGUARD_OVERHEAD, AgentConfig
from meshnet.discovery import Advertiser, parse_addr
from meshnet.dns.server import Resolver
from meshnet.errors import MeshnetError, NotMember
from meshnet.events import Events
from meshnet.gossip.transport import SwimTransport
from meshnet.hlc import HLC
from meshnet.host import firewall, lb, links, netns_files
from meshnet.host import overlay as host_overlay
from meshnet.host.ipsec import IpsecTransit
from meshnet.host.wireguard import Backend, choose
from meshnet.keys import NodeKeys, load_or_create, unb64
from meshnet.membership import SECRET_FILE, Membership
from meshnet.overlay import Overlay
from meshnet.plan import dns as plan_dns
from meshnet.plan import transit
from meshnet.plan.overlay import VXLAN_PORT
from meshnet.plan.wireguard import PeerStats, desired, diff
from meshnet.replication import Replication
from meshnet.rows import Row
from meshnet.services import Services
from meshnet.store import Store
from meshnet.store.db import MigrationError
from meshnet.store.models import Cluster, Node
from meshnet.tasks import Supervisor
from meshnet.token import JoinToken, cluster_tag

log = logging.getLogger("meshnet.agent")

PEER_TIMEOUT = 3.0
# A row change applies only what it changes (see _reconcile_sync); every REPAIR_INTERVAL
# the whole kernel state is read back and repaired (hand damage, a flushed ruleset).
# A missing tunnel interface is noticed on every pass, within reconcile_interval.
REPAIR_INTERVAL = 30.0


class Agent(Membership, Replication):
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
        self.names_changed = asyncio.Event()  # DNS views and VIPs are due (_names_loop)
        self._applied: dict[str, object] = {}  # part of the kernel pass -> desired state applied
        self._last_full = 0.0  # monotonic time of the last full kernel pass
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._http: PeerClient | None = None
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
            self.names_changed.set()
        return [r for r, _ in changed]

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
            except (PeerError, ValueError, AttributeError):
                return None
            t1 = time.time()
            return (n.name, theirs - (t0 + t1) / 2) if isinstance(theirs, (int, float)) else None

        results = await asyncio.gather(*(one(n) for n in self.peers()))
        return dict(r for r in results if r is not None)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await asyncio.to_thread(self.store.upgrade)
        except Exception as e:  # a store we cannot upgrade: one line, not a traceback
            if not _store_error(e):
                raise
            raise _corrupt_store(self.cfg.state_dir / "meshnet.db", e) from None
        self.hlc.observe(self.store.max_version())
        self._http = PeerClient(timeout=PEER_TIMEOUT)
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
        self._spawn(self._names_loop())
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

    async def reconcile(self, full: bool = False) -> None:
        """The kernel pass: `full` reads every part back and repairs it; otherwise only the
        parts whose desired state changed since they were last applied."""
        async with self._host_lock:
            await asyncio.to_thread(self._reconcile_sync, full)
        self.names_changed.set()  # new endpoint namespaces get their resolver

    def _tunnel_present(self, ifname: str) -> bool:
        """Cheap: the interface exists (an ioctl, no netlink dump, no UAPI round trip)."""
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return False
        uapi = getattr(self.backend, "uapi_dir", None)  # wireguard-go: its socket too
        return uapi is None or (uapi / f"{ifname}.sock").exists()

    def _reconcile_sync(self, full: bool = True) -> None:
        cluster, me = self.cluster(), self.me()
        if cluster is None or me is None or me.state != "active":
            self._applied.clear()  # a later membership starts with a full pass
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
        applied = self._applied
        full = full or not applied or not self._tunnel_present(ifname)
        if full:
            applied.clear()
            if not self.backend.exists(ifname):
                self.backend.create(ifname)
        want = desired(self.node_id, self.keys.wireguard_private, self.cfg.wireguard_port,
                       self.store.nodes(), self.found_endpoints, self.overlay.allowed_ips())
        # IPsec SAs follow the clock (epochs, grace), so that transit is read on every pass.
        if want != applied.get("transit") or isinstance(self.backend, IpsecTransit):
            current, stats = self.backend.read(ifname)
            ops = diff(current, want)
            if ops:
                log.info("WireGuard %s: %d change(s): %s", ifname, len(ops),
                         ", ".join(type(o).__name__ for o in ops))
                self.backend.apply(ifname, ops)
                _, stats = self.backend.read(ifname)
            self.stats = {s.public_key: s for s in stats}
            applied["transit"] = want
        prefix = ipaddress.ip_network(cluster.settings["transit_cidr"]).prefixlen
        underlay_ip, _ = parse_addr(me.endpoint)
        link = (me.transit_ip, prefix, underlay_ip)
        if link != applied.get("link") or self.transit_mtu is None:
            _, underlay_mtu = links.underlay_for(underlay_ip)
            self.transit_mtu = underlay_mtu - WIREGUARD_OVERHEAD
            links.ensure_address_mtu_up(ifname, f"{me.transit_ip}/{prefix}", self.transit_mtu)
            applied["link"] = link
        if "guard" not in applied:
            # Fail closed first: VXLAN may leave only through the tunnel.
            if firewall.ensure_vxlan_guard(ifname, VXLAN_PORT) and self._guard_installed:
                self.problem("the nftables VXLAN guard was missing or altered; it has been restored")
            self._guard_installed = True
            applied["guard"] = True
        overlay = self.overlay.desired(self.transit_mtu)
        if overlay != applied.get("overlay"):
            ops = host_overlay.ensure(overlay)
            if ops:
                log.info("overlay: %d change(s): %s", len(ops), ", ".join(
                    f"{type(o).__name__} {type(o.item).__name__}" for o in ops[:8]))
            applied["overlay"] = overlay
        if full:
            self._last_full = time.monotonic()

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.cfg.reconcile_interval)
            self.changed.clear()
            try:
                await self._check_revoked()
                self._sync_members()
                await self._resolve_transit_clash()
                if self.cluster() is not None and self.me() is not None:
                    await self.overlay.tidy()
                    # Tasks before the kernel pass: a task start makes its own endpoint (and
                    # pass), so a scale does not wait behind a pass for other nodes' rows.
                    await self.supervisor.reconcile()
                # DNS views follow the rows on their own (_names_loop), without waiting for
                # this kernel pass; the pass reads the kernel back only for what changed,
                # and all of it every REPAIR_INTERVAL.
                await self.reconcile(full=time.monotonic() - self._last_full >= REPAIR_INTERVAL)
            except MeshnetError as e:
                log.error("reconcile failed: %s", e)
                self.events.add("reconcile-error", f"reconcile failed: {e}", level="error")
            except Exception as e:
                log.exception("reconcile failed")
                self.events.add("reconcile-error", f"reconcile failed: {type(e).__name__}: {e}",
                                level="error")

    async def _names_loop(self) -> None:
        """DNS views and VIP backends, as soon as a row or a member's health changed."""
        while True:
            await self.names_changed.wait()
            self.names_changed.clear()
            try:
                if self.cluster() is not None and self.me() is not None:
                    await self._reconcile_names()
            except Exception as e:
                log.exception("DNS views failed")
                self.events.add("reconcile-error", f"DNS views failed: {type(e).__name__}: {e}",
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

    def _sync_members(self) -> None:
        """SWIM probes exactly the active members (right after a join, not a reconcile later)."""
        self.liveness.set_members({n.id: n.transit_ip for n in self.peers()}
                                  if self.cluster() is not None else {})

    def _member_event(self, e) -> None:
        """SWIM changed its mind about a member: placement, DNS and the page follow."""
        name = next((n.name for n in self.store.nodes(include_deleted=True) if n.id == e.node), e.node)
        self.events.add("member-" + str(e.status), f"{name} is {e.status}")
        self.changed.set()
        self.names_changed.set()

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


def _store_error(e: Exception) -> bool:
    """sqlite3's errors and a failed migration (SQLAlchemy's and alembic's too, in case
    they are loaded)."""
    kinds: list[type] = [sqlite3.Error, MigrationError]
    if "sqlalchemy.exc" in sys.modules:
        kinds.append(sys.modules["sqlalchemy.exc"].SQLAlchemyError)
    if "alembic.util" in sys.modules:
        kinds.append(sys.modules["alembic.util"].CommandError)
    return isinstance(e, tuple(kinds))


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
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_store(Path(cfg.state_dir) / "meshnet.db")
    asyncio.run(Agent(cfg).run())
