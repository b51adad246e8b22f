"""Finding members: a seed list, or mDNS on the LAN (`_meshnet._tcp.local.`).

Each member advertises its join listener. The TXT record carries only a hash of the
cluster id (`c`) and the node id, never the secret, so a joiner can pick out members of
its own cluster among others on the same LAN.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshnet.config import CONTROL_PORT

log = logging.getLogger(__name__)

SERVICE = "_meshnet._tcp.local."


def parse_addr(text: str, default_port: int = CONTROL_PORT) -> tuple[str, int]:
    """'10.0.0.1', '10.0.0.1:7946' or '[fd00::1]:7946' -> (host, port)."""
    text = text.strip()
    port: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}: expected [v6] or [v6]:port")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
    if not host:
        raise ValueError(f"no host in address {text!r}")
    if port is None:
        return host, default_port
    # digits only (int() would take "+80", " 80", "7_946") and a port a socket can use
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port in address {text!r}")
    return host, int(port)


class Advertiser:
    """Announces this member on the LAN while it is part of a cluster."""

    def __init__(self) -> None:
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    async def start(self, name: str, node_id: str, tag: str, ip: str, port: int) -> None:
        await self.stop()
        self._zc = AsyncZeroconf(interfaces=[ip])
        self._info = AsyncServiceInfo(
            SERVICE, f"{name}-{node_id[:8]}.{SERVICE}", addresses=[socket.inet_aton(ip)],
            port=port, properties={"c": tag, "id": node_id},
            server=f"{name}-{node_id[:8]}.local.",
        )
        await self._zc.async_register_service(self._info)
        log.info("advertising %s:%d on mDNS", ip, port)

    async def stop(self) -> None:
        if self._zc is not None:
            try:
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
            finally:
                await self._zc.async_close()
        self._zc, self._info = None, None


async def find_members(tag: str, ip: str | None, timeout: float = 6.0) -> list[tuple[str, int]]:
    """Members of the cluster with this tag: the first that answers within `timeout` s."""
    return [(a, port) for _, a, port in await browse(tag, ip, timeout, first=True)]


async def browse(tag: str, ip: str | None, timeout: float,
                 first: bool = False) -> list[tuple[str, str, int]]:
    """(node id, address, port) of the members with this tag heard within `timeout` s
    (or as soon as one is heard, with `first`)."""
    zc = AsyncZeroconf(interfaces=[ip] if ip else None)
    found: list[tuple[str, str, int]] = []
    names: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf, service_type, name, state_change) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.put_nowait(name)

    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE, handlers=[on_change])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not (first and found) and loop.time() < deadline:
            try:
                name = await asyncio.wait_for(names.get(), deadline - loop.time())
            except TimeoutError:
                break
            info = AsyncServiceInfo(SERVICE, name)
            if not await info.async_request(zc.zeroconf, 2000):
                continue
            props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            if props.get("c") != tag:
                continue
            found += [(props.get("id", ""), a, info.port) for a in info.parsed_addresses() if ":" not in a]
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return found
