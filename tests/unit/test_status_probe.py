"""The status page's liveness probes run only while someone looks (api/status.py)."""

from __future__ import annotations

import asyncio

from meshnet.api import status


class FakeAgent:
    def __init__(self) -> None:
        self.refreshed = 0

    async def refresh_stats(self) -> None:
        self.refreshed += 1


def test_probes_pause_when_nobody_looks_and_the_first_look_probes_first(monkeypatch):
    rounds: list[str] = []

    async def probe_once(agent) -> None:
        rounds.append("probe")

    monkeypatch.setattr(status, "probe_once", probe_once)
    monkeypatch.setattr(status, "PROBE_INTERVAL", 0.01)

    async def scenario() -> None:
        agent = FakeAgent()
        loop = asyncio.create_task(status.probe_loop(agent))
        await asyncio.sleep(0.05)
        assert rounds == []  # nobody has looked: no probes at all
        await status._refresh(agent)  # a look after a pause: one round before the answer
        assert rounds == ["probe"] and agent.refreshed == 1
        await asyncio.sleep(0.05)
        assert len(rounds) > 2  # and the loop probes while someone looks
        agent._status_seen -= status.PROBE_IDLE_AFTER + 1  # nobody looked for a while
        await asyncio.sleep(0.05)
        paused = len(rounds)
        await asyncio.sleep(0.05)
        assert len(rounds) == paused
        loop.cancel()

    asyncio.run(scenario())
