"""HTTP handlers. Two apps:

- local: the JSON API on the root-only unix socket (CLI, status page later);
- control: on the underlay listen address. `/join/v1` takes sealed join requests from
  anyone; `/peer/v1/*` (replication) answers only members, recognised by their transit
  source address, which WireGuard's allowed-IPs bind to their keys.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from meshnet import join as handshake
from meshnet.config import NETWORK_POOL, TRANSIT_CIDR
from meshnet.errors import JoinRefused, MeshnetError
from meshnet.rows import Row

if TYPE_CHECKING:
    from meshnet.agent import Agent

AGENT = web.AppKey("agent", object)
log = logging.getLogger(__name__)


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
            b.get("network_pool") or NETWORK_POOL))

    async def join(req: web.Request) -> web.Response:
        b = await _body(req)
        if not isinstance(b.get("token"), str):
            raise MeshnetError("a join needs a token")
        return web.json_response(await agent.join(b["token"], list(b.get("addrs") or []),
                                                  b.get("advertise_addr")))

    async def token(_req: web.Request) -> web.Response:
        return web.json_response(agent.token_info())

    async def nodes(_req: web.Request) -> web.Response:
        agent.require_cluster()
        await agent.refresh_stats()
        return web.json_response({"nodes": agent.node_views()})

    async def leave(_req: web.Request) -> web.Response:
        return web.json_response(await agent.leave())

    local.add_routes([
        web.get("/v1/status", status), web.post("/v1/init", init), web.post("/v1/join", join),
        web.get("/v1/token", token), web.get("/v1/nodes", nodes), web.post("/v1/leave", leave),
    ])

    async def join_request(req: web.Request) -> web.Response:
        try:
            envelope = await req.json()
            return web.json_response(agent.admit(envelope))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise JoinRefused("malformed join request") from None

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
        return web.json_response({"ok": True})

    async def sync(req: web.Request) -> web.Response:
        b = await _body(req)
        digest = b.get("digest")
        if not isinstance(digest, dict):
            raise MeshnetError("sync needs a digest object")
        return web.json_response(agent.answer_sync(digest))

    control.add_routes([
        web.post("/join/v1", join_request),
        web.post("/peer/v1/rows", member_only(rows)),
        web.post("/peer/v1/sync", member_only(sync)),
    ])
    local[AGENT] = control[AGENT] = agent
    return local, control
