"""The agent's HTTP client: to other members (replication, logs, labels, pings) and to a
join seed. aiohttp's, which the agent loads anyway for its servers; httpx (the CLI's
client) would add about 5 MB to every agent for the same few POSTs."""

from __future__ import annotations

import json

import aiohttp


class PeerError(Exception):
    """A member or seed could not be reached, timed out, or answered with an HTTP error."""


class Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self):
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise PeerError(f"HTTP {self.status_code}: {self.text[:200]}")


class PeerClient:
    """`post`/`get` returning a Response, raising PeerError for anything on the way."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def request(self, method: str, url: str, json: object = None,
                      timeout: float | None = None, close: bool = False) -> Response:
        """`close`: do not keep the connection for reuse (a join seed on the underlay:
        an idle pooled connection there would linger, then close, outside the tunnel)."""
        extra: dict = {} if timeout is None else {"timeout": aiohttp.ClientTimeout(total=timeout)}
        if close:
            extra["headers"] = {"Connection": "close"}
        try:
            async with self._open().request(method, url, json=json, **extra) as r:
                return Response(r.status, await r.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise PeerError(str(e) or type(e).__name__) from e

    async def post(self, url: str, json: object = None, timeout: float | None = None,
                   close: bool = False) -> Response:
        return await self.request("POST", url, json=json, timeout=timeout, close=close)

    async def get(self, url: str, timeout: float | None = None) -> Response:
        return await self.request("GET", url, timeout=timeout)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
