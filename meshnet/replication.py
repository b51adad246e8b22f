"""Replication on the agent: writing our own rows, pushing them to every member at once,
and anti-entropy (per-owner digests) so a member that missed something catches up.

Mixed into `Agent` (agent.py), like membership.py.
"""

from __future__ import annotations

import asyncio
import logging
import random

from meshnet.api.peer import PeerError
from meshnet.discovery import parse_addr
from meshnet.plan import transit
from meshnet.rows import Row
from meshnet.store.models import Node

log = logging.getLogger("meshnet.agent")


class Replication:
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
            except (PeerError, ValueError) as e:
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
                except (PeerError, ValueError) as e:
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
            except (PeerError, ValueError):
                return [{"task": "?", "node": n.name, "size": 0, "lines": [], "error": "unreachable"}]

        remote = await asyncio.gather(*(one(n) for n in self.peers()))
        return self.supervisor.logs_of(s, tail, mine(self.name)) + [x for xs in remote for x in xs]
