"""HTTP handlers. Two apps:

- local: the JSON API on the root-only unix socket (CLI, status page later);
- control: on the underlay listen address. `/join/v1` takes sealed join requests from
  anyone; `/peer/v1/*` (replication) answers only members, recognised by their transit
  source address, which WireGuard's allowed-IPs bind to their keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING

from aiohttp import web

from meshnet import join as handshake
from meshnet.config import NETWORK_POOL, TRANSIT_CIDR
from meshnet.errors import JoinRefused, MeshnetError, NotFound
from meshnet.ratelimit import RateLimit
from meshnet.rows import Row

if TYPE_CHECKING:
    from meshnet.agent import Agent

AGENT = web.AppKey("agent", object)
log = logging.getLogger(__name__)
JOIN_READ_TIMEOUT = 5.0  # seconds to receive a join request body


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except MeshnetError as e:
        return _error(e.status, str(e))
    except json.JSONDecodeError:
        return _error(400, "request body is not valid JSON")
    except web.HTTPException:
        raise
    except Exception as e:  # a bug: say what, keep the agent serving
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(e).__name__}: {e}")


async def _body(request: web.Request) -> dict:
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        raise MeshnetError("request body must be a JSON object")
    return body


def make_apps(agent: Agent) -> tuple[web.Application, web.Application]:
    local = web.Application(middlewares=[errors_middleware])
    control = web.Application(middlewares=[errors_middleware], client_max_size=handshake.MAX_ENVELOPE)

    async def status(_req: web.Request) -> web.Response:
        return web.json_response(agent.status())

    async def init(req: web.Request) -> web.Response:
        b = await _body(req)
        return web.json_response(await agent.init(
            b.get("advertise_addr"), b.get("transit_cidr") or TRANSIT_CIDR,
            b.get("network_pool") or NETWORK_POOL, b.get("encryption") or "wireguard"))

    async def join(req: web.Request) -> web.Response:
        b = await _body(req)
        if not isinstance(b.get("token"), str):
            raise MeshnetError("a join needs a token")
        return web.json_response(await agent.join(b["token"], list(b.get("addrs") or []),
                                                  b.get("advertise_addr")))

    async def token(_req: web.Request) -> web.Response:
        return web.json_response(agent.token_info())

    async def token_rotate(_req: web.Request) -> web.Response:
        return web.json_response(await agent.rotate_token())

    async def keys_rotate(_req: web.Request) -> web.Response:
        return web.json_response(await agent.rotate_keys())

    async def doctor(_req: web.Request) -> web.Response:
        return web.json_response({"checks": await agent.doctor()})

    async def nodes(_req: web.Request) -> web.Response:
        agent.require_cluster()
        await agent.refresh_stats()
        return web.json_response({"nodes": agent.node_views()})

    async def leave(_req: web.Request) -> web.Response:
        return web.json_response(await agent.leave())

    async def node_rm(req: web.Request) -> web.Response:
        return web.json_response(await agent.revoke(req.match_info["ref"]))

    async def node_labels(req: web.Request) -> web.Response:
        b = await _body(req)
        add, remove = b.get("add") or {}, b.get("remove") or []
        if not isinstance(add, dict) or not isinstance(remove, list):
            raise MeshnetError("labels: add must be an object and remove a list")
        ref = req.match_info.get("ref", "")
        return web.json_response(await agent.update_labels(
            "" if ref == "self" else ref, {str(k): str(v) for k, v in add.items()},
            [str(k) for k in remove]))

    ov = agent.overlay

    async def networks(_req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response({"networks": ov.network_views()})

    async def network_create(req: web.Request) -> web.Response:
        b = await _body(req)
        if not isinstance(b.get("name"), str):
            raise MeshnetError("a network needs a name")
        labels = b.get("labels") or {}
        if not isinstance(labels, dict):
            raise MeshnetError("labels must be an object")
        options = b.get("options") or {}
        if not isinstance(options, dict):
            raise MeshnetError("options must be an object")
        return web.json_response(await ov.create_network(
            b["name"], b.get("driver") or "overlay", b.get("subnet"), b.get("gateway"),
            {str(k): str(v) for k, v in labels.items()}, {str(k): str(v) for k, v in options.items()}))

    async def network_inspect(req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response(ov.inspect(req.match_info["ref"]))

    async def network_rm(req: web.Request) -> web.Response:
        agent.require_cluster()
        force = req.query.get("force") in ("1", "true")
        return web.json_response({"removed": await ov.remove_network(req.match_info["ref"], force)})

    async def endpoints(_req: web.Request) -> web.Response:
        agent.require_cluster()
        names = ov._node_names()
        nets = {n.id: n for n in ov.live_networks()}
        return web.json_response({"endpoints": [ov.endpoint_view(e, names, nets)
                                                for e in ov.live_endpoints()]})

    async def endpoint_create(req: web.Request) -> web.Response:
        b = await _body(req)
        if not isinstance(b.get("network"), str):
            raise MeshnetError("an endpoint needs a network")
        agent.require_cluster()
        ov.network(b["network"])  # an unknown network is the first thing to say
        netns = b.get("netns")
        if isinstance(b.get("pid"), int):
            netns = f"/proc/{b['pid']}/ns/net"
            if not os.path.exists(netns):
                raise NotFound(f"no process {b['pid']}")
        elif isinstance(netns, str):  # a name (ip netns) or an absolute path that exists
            netns = netns if "/" in netns else f"/run/netns/{netns}"
            if not netns.startswith("/") or not os.path.exists(netns):
                raise NotFound(f"no network namespace {b['netns']!r}")
        return web.json_response(await ov.create_endpoint(b["network"], b.get("name"), b.get("ip"),
                                                          netns))

    async def endpoint_get(req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response(ov.endpoint_view(ov.endpoint(req.match_info["ref"])))

    async def endpoint_rm(req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response({"removed": await ov.remove_endpoint(req.match_info["ref"])})

    sv = agent.services

    async def services(_req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response({"services": sv.views()})

    async def service_create(req: web.Request) -> web.Response:
        return web.json_response(await sv.create(await _body(req)))

    async def service_inspect(req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response(sv.inspect(req.match_info["ref"]))

    async def service_update(req: web.Request) -> web.Response:
        return web.json_response(await sv.update(req.match_info["ref"], await _body(req)))

    async def service_rm(req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response({"removed": await sv.remove(req.match_info["ref"])})

    async def service_ps(req: web.Request) -> web.Response:
        agent.require_cluster()
        return web.json_response({"tasks": sv.ps(req.match_info["ref"])})

    async def service_logs(req: web.Request) -> web.Response:
        agent.require_cluster()
        s = sv.get(req.match_info["ref"])
        tail = int(req.query["tail"]) if req.query.get("tail", "").isdigit() else None
        offsets = json.loads(req.query.get("offsets") or "{}")
        return web.json_response({"logs": await agent.gather_logs(s, tail, offsets)})

    local.add_routes([
        web.get("/v1/services", services), web.post("/v1/services", service_create),
        web.get("/v1/services/{ref}", service_inspect), web.patch("/v1/services/{ref}", service_update),
        web.delete("/v1/services/{ref}", service_rm), web.get("/v1/services/{ref}/ps", service_ps),
        web.get("/v1/services/{ref}/logs", service_logs),
    ])
    local.add_routes([
        web.get("/v1/networks", networks), web.post("/v1/networks", network_create),
        web.get("/v1/networks/{ref}", network_inspect), web.delete("/v1/networks/{ref}", network_rm),
        web.get("/v1/endpoints", endpoints), web.post("/v1/endpoints", endpoint_create),
        web.get("/v1/endpoints/{ref}", endpoint_get), web.delete("/v1/endpoints/{ref}", endpoint_rm),
    ])
    local.add_routes([
        web.get("/v1/status", status), web.post("/v1/init", init), web.post("/v1/join", join),
        web.get("/v1/token", token), web.get("/v1/nodes", nodes), web.post("/v1/leave", leave),
        web.post("/v1/token/rotate", token_rotate), web.post("/v1/keys/rotate", keys_rotate),
        web.get("/v1/doctor", doctor),
        web.delete("/v1/nodes/{ref}", node_rm), web.post("/v1/nodes/{ref}/labels", node_labels),
    ])

    join_limit = RateLimit()

    async def join_request(req: web.Request) -> web.Response:
        """Open to the underlay: rate limited per source, bounded in size (client_max_size)
        and in time, and every refusal is logged once with its cause."""
        source = req.remote or "?"
        wait = join_limit.allow(source, time.monotonic())
        if wait:
            return _error(429, f"too many join attempts from {source}; retry in {wait:.0f} s")
        try:
            body = await asyncio.wait_for(req.read(), JOIN_READ_TIMEOUT)
            return web.json_response(agent.admit(json.loads(body)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("join from %s refused: malformed join request", source)
            raise JoinRefused("malformed join request") from None
        except TimeoutError:
            return _error(408, "join request body not received in time")
        except web.HTTPRequestEntityTooLarge:
            log.warning("join from %s refused: request too large", source)
            raise
        except JoinRefused as e:
            log.warning("join from %s refused: %s", source, e)
            raise

    def member_only(handler):
        async def wrapped(req: web.Request) -> web.Response:
            peer = req.remote or ""
            if not agent.is_peer_address(peer):
                return _error(403, f"{peer} is not a member's transit address")
            return await handler(req)
        return wrapped

    async def rows(req: web.Request) -> web.Response:
        b = await _body(req)
        try:
            incoming = [Row.from_json(r) for r in b.get("rows", [])]
        except (ValueError, TypeError) as e:
            raise MeshnetError(f"malformed rows: {e}") from None
        agent.merge(incoming, req.remote or "?")
        return web.json_response({"ok": True, "rows": agent.overlay.claims_for(incoming)})

    async def sync(req: web.Request) -> web.Response:
        b = await _body(req)
        digest = b.get("digest")
        if not isinstance(digest, dict):
            raise MeshnetError("sync needs a digest object")
        return web.json_response(agent.answer_sync(digest))

    async def ping(_req: web.Request) -> web.Response:
        return web.json_response({"id": agent.node_id, "time": time.time()})

    async def logs(req: web.Request) -> web.Response:
        b = await _body(req)
        s = sv.get(str(b.get("service", "")))
        tail = b.get("tail") if isinstance(b.get("tail"), int) else None
        offsets = b.get("offsets") if isinstance(b.get("offsets"), dict) else {}
        return web.json_response({"logs": agent.supervisor.logs_of(s, tail, offsets)})

    async def peer_labels(req: web.Request) -> web.Response:
        b = await _body(req)
        add, remove = b.get("add") or {}, b.get("remove") or []
        if not isinstance(add, dict) or not isinstance(remove, list):
            raise MeshnetError("labels: add must be an object and remove a list")
        return web.json_response(await agent.update_labels(
            "", {str(k): str(v) for k, v in add.items()}, [str(k) for k in remove]))

    control.add_routes([
        web.post("/peer/v1/labels", member_only(peer_labels)),
        web.get("/peer/v1/ping", member_only(ping)),
        web.post("/peer/v1/logs", member_only(logs)),
        web.post("/join/v1", join_request),
        web.post("/peer/v1/rows", member_only(rows)),
        web.post("/peer/v1/sync", member_only(sync)),
    ])
    local[AGENT] = control[AGENT] = agent
    return local, control
