"""The read-only status page, its JSON API and /metrics, served by every agent on
`--status-addr` (default 127.0.0.1:7947). See docs/api.md.

Routes: `/` (the page), `/static/*` (its assets: no CDN), `/api/overview` (one JSON
document), `/api/events` (Server-Sent Events: the overview again on every change and
every UPDATE_INTERVAL s), `/metrics` (Prometheus text format), `POST /login`.

With a token (required for any address but loopback), `/api/*` and `/metrics` want it as
the `meshnet_status` cookie (set by `POST /login` or by opening `/?token=T`), as
`Authorization: Bearer T`, or as `?token=T`; without it they answer 401.

Also here: the liveness probe. Killing an agent leaves its host's WireGuard device up
(handshakes stay fresh), so every PROBE_INTERVAL s each agent opens a TCP connection to
every peer's control port through the tunnel: the connect time is the RTT, a refusal or
timeout means that agent is down. Only while someone looks (the page, its events,
`meshnet status`, /metrics) and for PROBE_IDLE_AFTER s after: that is N-1 connections
out and in every 2 s, which an idle agent should not pay (SWIM watches the members
anyway). The first look after a pause probes once before it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from meshnet.discovery import parse_addr
from meshnet.errors import MeshnetError
from meshnet.plan.overlay import VXLAN_OVERHEAD

if TYPE_CHECKING:
    from meshnet.agent import Agent

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "meshnet_status"
FRESH = 180.0  # a handshake younger than this is fresh (WireGuard rekeys every 2 min)
UPDATE_INTERVAL = 2.0
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 1.5
PROBE_IDLE_AFTER = 60.0
EVENTS_SHOWN = 50
STATS_MAX_AGE = 1.0

# Extra parts. A section is a GET route of the local API: when the agent has that route,
# the overview carries its answer under the key (and the page shows it); when it has not,
# the key is absent and the page hides that part. Services and DNS, which have richer
# views, are built below from the agent's own objects when it has them.
SECTIONS: dict[str, str] = {}
# Functions adding lines to /metrics: agent -> lines. Task states and DNS counters are
# added when the agent has services and a resolver.
METRICS: list[Callable[[Agent], Iterable[str]]] = []

LOCAL_APP = web.AppKey("local_app", web.Application)
STOPPING = web.AppKey("stopping", asyncio.Event)


# -- binding and tokens ------------------------------------------------------------------

def parse_status_addr(text: str) -> tuple[str, int] | None:
    """'127.0.0.1:7947', '[::1]:7947', 'off' -> (host, port) or None (disabled)."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    from meshnet.config import STATUS_PORT
    return parse_addr(text, STATUS_PORT)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    if not token and not is_loopback(host):
        raise MeshnetError(f"the status page on {host} (not loopback) needs a token: "
                           "pass --status-token (or bind 127.0.0.1)")


def _authorized(req: web.Request, token: str) -> bool:
    given = [req.cookies.get(COOKIE, ""), req.query.get("token", "")]
    auth = req.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given.append(auth[7:].strip())
    return any(g and hmac.compare_digest(g.encode(), token.encode()) for g in given)


def _set_cookie(resp: web.StreamResponse, token: str) -> None:
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")


def _auth_middleware(token: str | None):
    @web.middleware
    async def auth(req: web.Request, handler):
        if token is None:
            return await handler(req)
        if req.path == "/" and "token" in req.query:
            if not _authorized(req, token):
                raise web.HTTPFound("/?login=failed")
            resp = web.HTTPFound("/")  # take the token out of the address bar
            _set_cookie(resp, token)
            raise resp
        if req.path.startswith(("/api/", "/metrics")) and not _authorized(req, token):
            return web.json_response({"error": "this status page needs its token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="meshnet"'})
        return await handler(req)
    return auth


# -- liveness probe ------------------------------------------------------------------------

def _watched_recently(agent: Agent) -> bool:
    return time.monotonic() - getattr(agent, "_status_seen", -PROBE_IDLE_AFTER - 1) <= PROBE_IDLE_AFTER


async def probe_loop(agent: Agent) -> None:
    wake = agent.__dict__.setdefault("_probe_wake", asyncio.Event())
    while True:
        if not _watched_recently(agent):
            wake.clear()
            await wake.wait()
        try:
            await probe_once(agent)
        except Exception:  # never let one bad round end the loop
            log.exception("liveness probe failed")
        await asyncio.sleep(PROBE_INTERVAL)


async def probe_once(agent: Agent) -> None:
    peers = agent.peers() if agent.cluster() is not None else []

    async def one(n) -> None:
        host, port = n.transit_ip, parse_addr(n.control)[1]
        start = time.monotonic()
        ok, why = True, ""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
            rtt = time.monotonic() - start
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except (OSError, TimeoutError) as e:
            ok, rtt, why = False, None, str(e) or type(e).__name__
        now = time.time()
        prev = agent.reach.get(n.id)
        entry = {"up": ok, "rtt": rtt, "checked": now,
                 "since": prev["since"] if prev and prev["up"] == ok else now}
        agent.reach[n.id] = entry
        if prev is not None and prev["up"] != ok:
            if ok:
                agent.events.add("peer-up", f"{n.name}'s agent answers again", node=n.name)
            else:
                agent.events.add("peer-down", f"{n.name}'s agent does not answer: {why}",
                                 level="error", node=n.name)

    await asyncio.gather(*(one(n) for n in peers))
    live = {n.id for n in peers}
    for gone in set(agent.reach) - live:
        agent.reach.pop(gone, None)


# -- the overview ---------------------------------------------------------------------------

def health(view: dict, reach: dict | None) -> str:
    """self | fresh | stale | dead | left, for one member as seen from here."""
    if view["self"]:
        return "self"
    if view["state"] != "active":
        return "left"
    if reach is not None and not reach["up"]:
        return "dead"
    age = view.get("handshake_age")
    if age is None:
        return "dead"
    return "fresh" if age < FRESH else "stale"


async def _refresh(agent: Agent) -> None:
    if not _watched_recently(agent):  # the probes were paused: reach is stale
        agent._status_seen = time.monotonic()
        with contextlib.suppress(Exception):
            await probe_once(agent)
    agent._status_seen = time.monotonic()
    if (wake := getattr(agent, "_probe_wake", None)) is not None:
        wake.set()
    last = getattr(agent, "_stats_read", 0.0)
    if time.monotonic() - last >= STATS_MAX_AGE:
        agent._stats_read = time.monotonic()
        await agent.refresh_stats()


async def _section(local: web.Application | None, socket_path: Path, path: str) -> object | None:
    """The local API's answer at `path`, when the agent has that route."""
    if local is None or not any(getattr(r, "canonical", None) == path for r in local.router.resources()):
        return None
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path)),
                                         timeout=aiohttp.ClientTimeout(total=3)) as s, \
                s.get(f"http://meshnet{path}") as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        log.debug("status section %s: %s", path, e)
        return None


async def overview(agent: Agent, local: web.Application | None = None) -> dict:
    st = agent.status()
    out: dict = {"generated": round(time.time(), 3), "node": {
        "id": st["node_id"], "name": st["name"], "transit_ip": st["transit_ip"],
        "interface": st["interface"], "backend": st["backend"], "transit_mtu": st["transit_mtu"]},
        "cluster": {"id": st["cluster_id"], "member": st["member"], "size": st["members"]},
        "thresholds": {"fresh_handshake": FRESH},
        "problems": st.get("problems", []),
        "members": [], "networks": [], "events": agent.events.recent(limit=EVENTS_SHOWN),
        "events_seq": agent.events.last_seq}
    if agent.cluster() is None:
        return out
    await _refresh(agent)
    members = []
    for v in agent.node_views():
        r = agent.reach.get(v["id"])
        v["backend"] = st["backend"] if v["self"] else None
        v["agent"] = "self" if v["self"] else ("unknown" if r is None else "up" if r["up"] else "down")
        v["rtt_ms"] = round(r["rtt"] * 1000, 2) if r and r["rtt"] is not None else None
        v["health"] = health(v, r)
        members.append(v)
    members.sort(key=lambda m: (m["state"] != "active", ipaddress.ip_address(m["transit_ip"])))
    out["members"] = members
    ov = agent.overlay
    eps = ov.live_endpoints()
    names = ov._node_names()
    transit_mtu = st["transit_mtu"]
    for n in ov.network_views():
        by_host: dict[str, list[dict]] = {}
        for e in eps:
            if e.network == n["id"]:
                by_host.setdefault(names.get(e.node, e.node), []).append({"name": e.name, "ip": e.ip})
        # A routed network's endpoints have the whole transit MTU (docs/routed.md).
        n["mtu"] = (transit_mtu - (VXLAN_OVERHEAD if n["mode"] == "l2" else 0)) if transit_mtu else None
        n["endpoints_by_host"] = dict(sorted(by_host.items()))
        out["networks"].append(n)
    if (services := _services(agent)) is not None:
        out["services"] = services
    if (dns := _dns(agent)) is not None:
        out["dns"] = dns
    for key, path in SECTIONS.items():
        data = await _section(local, agent.cfg.socket_path, path)
        if data is not None:
            out[key] = data
    return out


def _services(agent: Agent) -> list[dict] | None:
    """Every service with its VIPs, networks and tasks (node, state, IP); None without services."""
    sv = getattr(agent, "services", None)
    if sv is None:
        return None
    out = []
    for v in sv.views():
        spec = sv.inspect(v["id"])
        out.append(v | {"networks": spec["Spec"]["Networks"],
                        "vips": {e["Network"]: e["Addr"] for e in spec["Endpoint"]["VirtualIPs"]},
                        "tasks": sv.ps(v["id"])})
    return out


_PROBE = "status-page"  # a pretend node whose one endpoint per network sees what it sees


def _dns(agent: Agent) -> dict | None:
    """The names each network resolves (as plan/dns builds them for endpoints) and the
    resolver's counters; None without the DNS subsystem."""
    resolver = getattr(agent, "resolver", None)
    sv = getattr(agent, "services", None)
    if resolver is None or sv is None:
        return None
    from types import SimpleNamespace

    from meshnet.plan import dns as plan_dns

    nets = agent.overlay.live_networks()
    probes = [SimpleNamespace(id=f"{_PROBE}-{n.id}", name=f"{_PROBE}-{n.id}", network=n.id,
                              node=_PROBE, ip="", netns=n.id) for n in nets]
    views = plan_dns.views(_PROBE, [*agent.overlay.live_endpoints(), *probes], sv.live(),
                           sv.tasks(), sv.alive_nodes(), ())
    records = {}
    for n in nets:
        view = views.get(n.id)
        a = {k: list(v) for k, v in sorted(view.a.items()) if not k.startswith(_PROBE)} if view else {}
        records[n.name] = {k: [ip for ip in v if ip] for k, v in a.items()}
    return {"records": records, "counters": _dns_counters(resolver)}


def _dns_counters(resolver) -> dict:
    return {k: getattr(resolver, k, 0) for k in ("queries", "nxdomain", "forwarded", "forward_errors",
                                                  "dropped")}


def _builtin_metrics(agent: Agent) -> Iterable[str]:
    sv = getattr(agent, "services", None)
    if sv is not None and agent.cluster() is not None:
        states: dict[str, int] = {}
        for t in sv.tasks():
            states[t.state] = states.get(t.state, 0) + 1
        m = _Metrics()
        m.family("meshnet_tasks", "gauge", "Service tasks by state (every node's, as replicated).",
                 [({"state": k}, v) for k, v in sorted(states.items())])
        views = sv.views()
        m.family("meshnet_service_replicas", "gauge", "Desired and running replicas per service.",
                 [({"service": v["name"], "kind": "desired"}, v["replicas"]) for v in views]
                 + [({"service": v["name"], "kind": "running"}, v["running"]) for v in views])
        yield from m.lines
    resolver = getattr(agent, "resolver", None)
    if resolver is not None:
        c = _dns_counters(resolver)
        m = _Metrics()
        m.family("meshnet_dns_queries", "counter", "DNS queries received by 127.0.0.11 in every "
                 "local endpoint namespace.", [({}, c["queries"])], "_total")
        m.family("meshnet_dns_nxdomain", "counter", "NXDOMAIN answered for unknown internal names.",
                 [({}, c["nxdomain"])], "_total")
        m.family("meshnet_dns_forwarded", "counter", "Queries sent on to the upstream resolvers.",
                 [({}, c["forwarded"])], "_total")
        m.family("meshnet_dns_forward_errors", "counter",
                 "Forwarded queries no upstream answered (the client got SERVFAIL).",
                 [({}, c["forward_errors"])], "_total")
        yield from m.lines


# -- metrics ---------------------------------------------------------------------------------

def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: object) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in kv.items()) + "}" if kv else ""


class _Metrics:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[dict, float]],
                suffix: str = "") -> None:
        name += suffix  # text format 0.0.4: a counter's HELP and TYPE name its _total samples
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(**labels)} {_num(value)}")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


async def metrics_text(agent: Agent, local: web.Application | None = None) -> str:
    m = _Metrics()
    c = agent.counters
    st = agent.status()
    m.family("meshnet_info", "gauge", "This node; the value is always 1.",
             [({"node": st["name"], "node_id": st["node_id"], "cluster": st["cluster_id"] or "",
                "backend": st["backend"] or ""}, 1)])
    views: list[dict] = []
    if agent.cluster() is not None:
        await _refresh(agent)
        views = [v for v in agent.node_views() if not v["self"]]
        nodes = agent.store.nodes()
        states = {"active": 0, "left": 0} | {n.state: 0 for n in nodes}
        for n in nodes:
            states[n.state] += 1
        m.family("meshnet_members", "gauge", "Members by state, as this node sees them.",
                 [({"state": s}, k) for s, k in sorted(states.items())])
        counts = {h: 0 for h in ("fresh", "stale", "dead")}
        for v in views:
            if v["state"] == "active":
                counts[health(v, agent.reach.get(v["id"]))] += 1
        m.family("meshnet_peers", "gauge", "Active peers by tunnel/agent health.",
                 [({"health": h}, k) for h, k in counts.items()])
        active_views = [v for v in views if v["state"] == "active"]
        m.family("meshnet_peer_handshake_age_seconds", "gauge",
                 "Seconds since the last WireGuard handshake with the peer (absent: never).",
                 [({"peer": v["name"], "peer_id": v["id"]}, v["handshake_age"]) for v in active_views
                  if v["handshake_age"] is not None])
        m.family("meshnet_peer_receive_bytes", "counter", "Bytes received from the peer.",
                 [({"peer": v["name"], "peer_id": v["id"]}, v["rx_bytes"]) for v in active_views],
                 "_total")
        m.family("meshnet_peer_transmit_bytes", "counter", "Bytes sent to the peer.",
                 [({"peer": v["name"], "peer_id": v["id"]}, v["tx_bytes"]) for v in active_views],
                 "_total")
        reach = [(v, agent.reach.get(v["id"])) for v in active_views]
        m.family("meshnet_peer_up", "gauge", "1 if the peer's agent answered the last probe.",
                 [({"peer": v["name"], "peer_id": v["id"]}, 1 if r["up"] else 0) for v, r in reach if r])
        m.family("meshnet_peer_rtt_seconds", "gauge", "TCP connect time to the peer's agent "
                 "through the tunnel.", [({"peer": v["name"], "peer_id": v["id"]}, round(r["rtt"], 6))
                                        for v, r in reach if r and r["rtt"] is not None])
        ov = agent.overlay
        eps = ov.live_endpoints()
        m.family("meshnet_network_endpoints", "gauge", "Endpoints attached to each network.",
                 [({"network": n.name, "vni": n.vni}, sum(e.network == n.id for e in eps))
                  for n in ov.live_networks()])
    m.family("meshnet_gossip_messages_sent", "counter",
             "Replication messages sent: push (new rows), sync (anti-entropy rounds), "
             "sync_rows (rows a peer asked for).",
             [({"kind": k}, c[f"sent_{k}"]) for k in ("push", "sync", "sync_rows")], "_total")
    m.family("meshnet_gossip_messages_received", "counter",
             "Replication messages received: rows (pushed or answered), sync (digests answered).",
             [({"kind": k}, c[f"received_{k}"]) for k in ("rows", "sync")], "_total")
    m.family("meshnet_replication_rows_received", "counter", "Rows received from peers.",
             [({}, c["rows_received"])], "_total")
    m.family("meshnet_replication_rows_applied", "counter",
             "Rows from peers that changed the local store.", [({}, c["rows_applied"])], "_total")
    m.lines += ["# HELP meshnet_replication_lag_seconds Time from a row's write on its owner to "
                "its arrival here (its HLC time), for rows that changed the store.",
                "# TYPE meshnet_replication_lag_seconds summary",
                f"meshnet_replication_lag_seconds_sum {_num(round(c['lag_sum_ms'] / 1000, 6))}",
                f"meshnet_replication_lag_seconds_count {c['rows_applied']}"]
    m.family("meshnet_events", "counter", "Events recorded since start, by kind.",
             [({"kind": k}, v) for k, v in sorted(agent.events.counts.items())], "_total")
    for fn in [_builtin_metrics, *METRICS]:
        try:
            m.lines += list(fn(agent))
        except Exception:
            log.exception("metrics hook %s failed", getattr(fn, "__name__", fn))
    return "\n".join(m.lines) + "\n"


# -- the apps --------------------------------------------------------------------------------

def add_local_routes(local: web.Application, agent: Agent) -> None:
    """`GET /v1/overview` and `GET /v1/events` on the unix socket (for `meshnet status`)."""

    async def local_overview(_req: web.Request) -> web.Response:
        return web.json_response(await overview(agent, local))

    async def local_events(req: web.Request) -> web.Response:
        since = int(req.query.get("since", "0") or 0)
        return web.json_response({"events": agent.events.recent(since)})

    local.add_routes([web.get("/v1/overview", local_overview), web.get("/v1/events", local_events)])


def make_status_app(agent: Agent, token: str | None, local: web.Application | None = None
                    ) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(token)], client_max_size=4096)
    app[STOPPING] = asyncio.Event()
    if local is not None:
        app[LOCAL_APP] = local

    async def on_shutdown(a: web.Application) -> None:
        a[STOPPING].set()

    app.on_shutdown.append(on_shutdown)

    async def index(_req: web.Request) -> web.Response:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def api_overview(_req: web.Request) -> web.Response:
        return web.json_response(await overview(agent, local),
                                 headers={"Cache-Control": "no-store"})

    async def api_events(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        await resp.prepare(req)
        waiter = agent.events.waiter()
        stopping = app[STOPPING]
        try:
            await resp.write(b"retry: 2000\n\n")
            while not stopping.is_set():
                waiter.clear()
                data = json.dumps(await overview(agent, local), separators=(",", ":"))
                await resp.write(f"event: overview\ndata: {data}\n\n".encode())
                wait_for = [asyncio.ensure_future(waiter.wait()), asyncio.ensure_future(stopping.wait())]
                _, pending = await asyncio.wait(wait_for, timeout=UPDATE_INTERVAL,
                                                return_when=asyncio.FIRST_COMPLETED)
                for p in pending:
                    p.cancel()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            agent.events.forget(waiter)
        return resp

    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(text=await metrics_text(agent, local),
                            content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def login(req: web.Request) -> web.Response:
        form = await req.post()
        given = str(form.get("token", ""))
        if token is None:
            raise web.HTTPSeeOther("/")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPSeeOther("/?login=failed")
        resp = web.HTTPSeeOther("/")
        _set_cookie(resp, token)
        raise resp

    app.add_routes([
        web.get("/", index), web.post("/login", login),
        web.get("/api/overview", api_overview), web.get("/api/events", api_events),
        web.get("/metrics", metrics),
        web.static("/static", STATIC, append_version=False),
    ])
    return app


async def start(agent: Agent, local: web.Application | None = None) -> web.AppRunner | None:
    """Serve the status app on cfg.status_addr (None when it is off) and start the probe."""
    agent._spawn(probe_loop(agent))
    addr = parse_status_addr(agent.cfg.status_addr)
    if addr is None:
        return None
    host, port = addr
    check_bind(host, agent.cfg.status_token)
    runner = web.AppRunner(make_status_app(agent, agent.cfg.status_token, local), access_log=None,
                           shutdown_timeout=2)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        log.error("status page: cannot listen on %s:%d: %s; running without it", host, port, e)
        return None
    log.info("status page on http://%s:%d/", host if ":" not in host else f"[{host}]", port)
    return runner
