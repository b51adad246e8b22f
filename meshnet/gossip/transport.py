"""Runs the pure SWIM core (gossip/swim.py) inside the agent: UDP on the transit
interface, a timer, and the member list kept in step with the store.

The socket is bound to the WireGuard interface (SO_BINDTODEVICE), so it only hears
datagrams that came through the tunnel, whose source address WireGuard has already
bound to a member's key; the source address is then mapped to the member's id. The
SWIM messages carry no authentication of their own and must never be read off the LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable

from meshnet.gossip.swim import Event, Outgoing, Status, Swim, SwimConfig

log = logging.getLogger(__name__)
POLL = 1.0  # seconds between checks that the tunnel interface is still the one we bound to


class SwimTransport:
    """The failure detector as the agent sees it."""

    def __init__(self, me: str, port: int, ifname: str, on_change: Callable[[Event], None],
                 config: SwimConfig | None = None) -> None:
        self.me, self.port, self.ifname = me, port, ifname
        self._loop: asyncio.AbstractEventLoop | None = None
        self.swim = Swim(me, config, now=time.monotonic(), on_event=self._event)
        self._on_change = on_change
        self._sock: socket.socket | None = None
        self._addr_of: dict[str, str] = {}  # node id -> transit address
        self._id_of: dict[str, str] = {}  # transit address -> node id
        self._wake = asyncio.Event()
        self.sent = self.received = self.dropped = 0

    # -- what the agent asks --------------------------------------------------------------

    def alive(self, node: str) -> bool:
        return node == self.me or self.swim.alive(node)

    def alive_ids(self, me: str, members: Iterable[str]) -> set[str]:
        return {m for m in members if self.alive(m)}

    def last_seen_age(self, node: str) -> float | None:
        return self.swim.last_seen_age(node)

    def status(self, node: str) -> tuple[str, float | None]:
        """(alive | suspect | dead | left, loop time it began) for `node`."""
        st = self.swim.state(node)
        if node == self.me or st is None:
            return "alive", None
        return str(st.status), st.since

    # -- members ------------------------------------------------------------------------

    def set_members(self, members: dict[str, str]) -> None:
        """node id -> transit address of every other active member."""
        now = self._now()
        for node in set(self._addr_of) - set(members):
            self.swim.remove_member(node)
        self.swim.add_members([n for n in members if n not in self._addr_of], now)
        self._addr_of = dict(members)
        self._id_of = {ip: n for n, ip in members.items()}
        self._wake.set()

    # -- running ------------------------------------------------------------------------

    @staticmethod
    def _now() -> float:
        return time.monotonic()  # the loop's clock too

    def _event(self, e: Event) -> None:
        log.info("member %s is %s (incarnation %d)", e.node, e.status, e.incarnation)
        self._on_change(e)

    async def run(self) -> None:
        """Tick at SWIM's deadlines; (re)open the socket whenever the tunnel is (re)made."""
        self._loop = asyncio.get_running_loop()
        index = None
        while True:
            current = _ifindex(self.ifname)
            if current != index:
                self._close()
                if current is not None:
                    self._open()
                index = current
            self._send(self.swim.tick(self._now()))
            # Sleep until SWIM's next timer (a message in, or new members, wake us earlier),
            # at most POLL to notice a re-made tunnel: no fixed 10 Hz tick on an idle agent.
            deadline = self.swim.next_deadline()
            delay = POLL if deadline is None else min(POLL, max(0.0, deadline - self._now()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay if index is not None else 1.0)

    def leave(self) -> None:
        self._send(self.swim.leave(self._now()))

    def close(self) -> None:
        self._close()

    def _open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            s.bind(("0.0.0.0", self.port))
            s.setblocking(False)
        except OSError as e:
            s.close()
            log.warning("SWIM socket on %s:%d: %s", self.ifname, self.port, e)
            return
        self._sock = s
        self._loop.add_reader(s.fileno(), self._readable)
        log.info("SWIM on %s udp/%d", self.ifname, self.port)

    def _close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        for _ in range(64):  # drain a burst, then let the loop breathe
            try:
                data, (ip, _port) = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("SWIM recv: %s", e)
                return
            node = self._id_of.get(ip)
            if node is None:
                self.dropped += 1
                continue
            try:
                out = self.swim.receive_bytes(data, node, self._now())
            except ValueError as e:
                self.dropped += 1
                log.debug("SWIM: bad message from %s: %s", node, e)
                continue
            self.received += 1
            self._send(out)
            self._wake.set()

    def _send(self, out: list[Outgoing]) -> None:
        if self._sock is None:
            return
        for o in out:
            ip = self._addr_of.get(o.dst)
            if ip is None:
                continue
            try:
                self._sock.sendto(o.msg.encode(), (ip, self.port))
                self.sent += 1
            except OSError as e:
                log.debug("SWIM send to %s: %s", o.dst, e)


def _ifindex(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


__all__ = ["Status", "SwimTransport"]
