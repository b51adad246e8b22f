"""The CLI's only door to the agent: httpx over the agent's unix socket.

httpx is imported on first use: the agent process loads the CLI's modules too (it is
started as `meshnet agent`) and talks to its peers with aiohttp (api/peer.py)."""

from __future__ import annotations

from pathlib import Path

from meshnet.config import SOCKET_PATH
from meshnet.errors import AgentUnavailable, MeshnetError


class Client:
    def __init__(self, socket_path: Path = SOCKET_PATH, timeout: float = 60) -> None:
        import httpx

        self.socket_path = socket_path
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)),
                                  base_url="http://meshnet", timeout=timeout)

    def _call(self, method: str, path: str, body: dict | None = None,
              params: dict | None = None) -> dict:
        import httpx

        try:
            resp = self._http.request(method, path, json=body, params=params)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError):
            raise AgentUnavailable(
                f"no meshnet agent answers on {self.socket_path}: start it with "
                "`meshnet agent` (or `systemctl start meshnet`)") from None
        except httpx.TimeoutException:
            raise AgentUnavailable(f"the agent on {self.socket_path} did not answer in time") from None
        except httpx.TransportError as e:
            raise AgentUnavailable(f"lost the connection to the agent on {self.socket_path}: {e}") from None
        try:
            data = resp.json()
        except ValueError:
            raise MeshnetError(f"agent answered HTTP {resp.status_code}: {resp.text[:200]}") from None
        if resp.status_code >= 400:
            raise MeshnetError(data.get("error") or f"agent answered HTTP {resp.status_code}")
        return data

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def post(self, path: str, body: dict | None = None) -> dict:
        return self._call("POST", path, body or {})

    def patch(self, path: str, body: dict) -> dict:
        return self._call("PATCH", path, body)

    def delete(self, path: str, **params: str) -> dict:
        return self._call("DELETE", path, params=params or None)
