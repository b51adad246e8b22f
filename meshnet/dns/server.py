"""The embedded resolver's sockets: UDP and TCP on 127.0.0.11:53 inside each endpoint's
network namespace, all served by the agent's own asyncio loop and process.

The listening sockets are created inside the endpoint namespace (host/netns.in_netns, on the
loop's thread, with no await in between) and then handed to the loop; a socket keeps the
namespace it was created in. Forwarding sockets are opened afterwards, on the same thread
back in the agent's own namespace: that is how an endpoint without any route out still
gets answers from the host's resolvers.

Answers come from dns/answers.py; a name it does not know is forwarded to view.forwarders
in order (UDP, or TCP for a TCP query; FORWARD_TIMEOUT each); when none answers the client
gets SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from meshnet.dns.answers import NXDOMAIN, SERVFAIL, Responder, error_reply, is_query, rcode
from meshnet.dns.view import DnsView
from meshnet.host import cmd
from meshnet.host.netns import in_netns

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"
PORT = 53
FORWARD_TIMEOUT = 2.0
MAX_FORWARDS = 256          # forwards in flight per endpoint; beyond that, SERVFAIL at once
TCP_IDLE = 10.0             # a TCP client silent this long is closed
MAX_TCP_CLIENTS = 64        # per endpoint


@dataclass
class _Endpoint:
    key: str
    netns_path: str
    responder: Responder
    udp: asyncio.DatagramTransport | None = None
    tcp: asyncio.AbstractServer | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)
    tcp_clients: int = 0


class Resolver:
    """127.0.0.11:53 in many namespaces. Counters (plain ints) are read by the metrics page."""

    def __init__(self, address: str = ADDRESS, port: int = PORT,
                 forward_timeout: float = FORWARD_TIMEOUT):
        self.address, self.port, self.forward_timeout = address, port, forward_timeout
        self._eps: dict[str, _Endpoint] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._logged: set[str] = set()
        self.queries = 0          # every query received (UDP and TCP)
        self.nxdomain = 0         # NXDOMAIN we answered ourselves (unknown internal names)
        self.forwarded = 0        # queries sent on to view.forwarders
        self.forward_errors = 0   # forwarded queries no forwarder answered (client got SERVFAIL)
        self.dropped = 0          # packets that were not queries, or arrived with no one to serve them

    # -- lifecycle ---------------------------------------------------------------------------

    async def add(self, key: str, netns_path: str, view: DnsView) -> None:
        """Serve `view` on 127.0.0.11:53 inside the namespace at `netns_path`. Idempotent per
        key: a second call only updates the view (a new path means remove and add again).
        Raises HostError/OSError when the namespace cannot be entered or the port bound."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            ep = self._eps.get(key)
            if ep is not None and ep.netns_path == netns_path:
                self._set_view(ep, view)
                return
            if ep is not None:
                await self._close(ep)
            await asyncio.to_thread(cmd.run, ["nsenter", f"--net={netns_path}", "ip", "link", "set",
                                              "lo", "up"])
            ep = _Endpoint(key, netns_path, Responder(view))
            udp_sock, tcp_sock = self._bind(netns_path)   # no await: the thread is in another netns
            loop = asyncio.get_running_loop()
            try:
                ep.udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self, ep), sock=udp_sock)
                ep.tcp = await asyncio.start_server(lambda r, w: self._tcp_client(ep, r, w), sock=tcp_sock)
            except BaseException:
                if ep.udp is not None:
                    ep.udp.close()
                udp_sock.close()
                tcp_sock.close()
                raise
            self._eps[key] = ep
            log.info("dns: serving %s:%d in %s (%s)", self.address, self.port, netns_path, key)

    def update(self, key: str, view: DnsView) -> None:
        """Answer from `view` from the next query on. Cheap when nothing changed; KeyError for an
        unknown key."""
        ep = self._eps.get(key)
        if ep is None:
            raise KeyError(f"dns: no resolver for {key}")
        self._set_view(ep, view)

    @staticmethod
    def _set_view(ep: _Endpoint, view: DnsView) -> None:
        # An equal view keeps its Responder: the built replies and the round-robin position
        # survive a reconcile that changed nothing.
        if ep.responder.view is not view and ep.responder.view != view:
            ep.responder = Responder(view)

    async def remove(self, key: str) -> None:
        """Close the sockets in that namespace; unknown keys are fine."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            ep = self._eps.pop(key, None)
            if ep is not None:
                await self._close(ep)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and key not in self._eps:
            del self._locks[key]

    async def close(self) -> None:
        for key in list(self._eps):
            await self.remove(key)

    def keys(self) -> list[str]:
        return list(self._eps)

    def _bind(self, netns_path: str) -> tuple[socket.socket, socket.socket]:
        with in_netns(netns_path):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for s in (udp, tcp):
                s.setblocking(False)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((self.address, self.port))
            tcp.bind((self.address, self.port))
            tcp.listen(64)
        except OSError:
            udp.close()
            tcp.close()
            raise
        return udp, tcp

    async def _close(self, ep: _Endpoint) -> None:
        if ep.udp is not None:
            ep.udp.close()
        if ep.tcp is not None:
            ep.tcp.close()
        for t in list(ep.tasks):
            t.cancel()
        if ep.tasks:
            await asyncio.gather(*ep.tasks, return_exceptions=True)
        if ep.tcp is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ep.tcp.wait_closed(), 1)
        log.info("dns: stopped in %s (%s)", ep.netns_path, ep.key)

    # -- queries -----------------------------------------------------------------------------

    def _local(self, ep: _Endpoint, data: bytes, tcp: bool) -> bytes | None:
        """Our own reply, or None to forward. Counts it."""
        self.queries += 1
        reply = ep.responder.answer(data, tcp)
        if reply is not None and rcode(reply) == NXDOMAIN:
            self.nxdomain += 1
        return reply

    def _spawn(self, ep: _Endpoint, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        ep.tasks.add(task)
        task.add_done_callback(ep.tasks.discard)

    async def _forward(self, ep: _Endpoint, query: bytes, tcp: bool) -> bytes:
        """The first forwarder's answer, with the client's id; SERVFAIL when none answers."""
        forwarders = ep.responder.view.forwarders
        self.forwarded += 1
        ask = os.urandom(2) + query[2:]         # our own id upstream: a guessed id cannot poison
        for fw in forwarders:
            try:
                addr = _parse_forwarder(fw)
            except (ValueError, OSError) as e:
                self._once(f"bad forwarder {fw}", "dns: forwarder %r ignored: %s", fw, e)
                continue
            try:
                async with asyncio.timeout(self.forward_timeout):
                    reply = await (_ask_tcp(addr, ask) if tcp else _ask_udp(addr, ask))
                return query[:2] + reply[2:]
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                why = type(e).__name__ if isinstance(e, TimeoutError) else str(e) or type(e).__name__
                self._once(f"forward {fw} {type(e).__name__}",
                           "dns: forwarder %s did not answer (%s; said once per kind)", fw, why)
        if not forwarders:
            self._once("no forwarders", "dns: a name to forward but no forwarders in the view of %s", ep.key)
        self.forward_errors += 1
        return error_reply(query, SERVFAIL)

    async def _forward_udp(self, ep: _Endpoint, transport: asyncio.DatagramTransport, data: bytes,
                           addr) -> None:
        reply = await self._forward(ep, data, tcp=False)
        if not transport.is_closing():
            transport.sendto(reply, addr)

    async def _tcp_client(self, ep: _Endpoint, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if ep.tcp_clients >= MAX_TCP_CLIENTS or task is None:
            writer.close()
            return
        ep.tcp_clients += 1
        ep.tasks.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(TCP_IDLE):
                        n = struct.unpack("!H", await reader.readexactly(2))[0]
                        data = await reader.readexactly(n)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                if not is_query(data):
                    self.dropped += 1
                    return
                reply = self._local(ep, data, tcp=True)
                if reply is None:
                    reply = await self._forward(ep, data, tcp=True)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except ConnectionError:
            pass
        except Exception as e:  # never let a client take the resolver down
            self._once(f"tcp {type(e).__name__}", "dns: TCP client in %s failed: %r", ep.key, e)
        finally:
            ep.tcp_clients -= 1
            ep.tasks.discard(task)
            writer.close()

    def _once(self, kind: str, msg: str, *args) -> None:
        if kind in self._logged:
            log.debug(msg, *args)
        else:
            self._logged.add(kind)
            log.warning(msg, *args)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, ep: _Endpoint):
        self.resolver, self.ep = resolver, ep
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        r, ep = self.resolver, self.ep
        if not is_query(data):
            r.dropped += 1
            return
        try:
            reply = r._local(ep, data, tcp=False)
            if reply is not None:
                self.transport.sendto(reply, addr)
            elif len(ep.tasks) >= MAX_FORWARDS:
                r.forward_errors += 1
                r._once("forward backlog", "dns: %d forwards in flight in %s; answering SERVFAIL",
                        len(ep.tasks), ep.key)
                self.transport.sendto(error_reply(data, SERVFAIL), addr)
            else:
                r._spawn(ep, r._forward_udp(ep, self.transport, data, addr))
        except Exception as e:  # never let a packet take the resolver down
            r._once(f"udp {type(e).__name__}", "dns: UDP query in %s failed: %r", ep.key, e)

    def error_received(self, exc: Exception) -> None:
        self.resolver._once(f"udp error {type(exc).__name__}", "dns: UDP socket in %s: %s",
                            self.ep.key, exc)


def _parse_forwarder(text: str) -> tuple[int, str, int]:
    """"1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353" -> (family, host, port)."""
    host, port = text, PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else PORT
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socket.inet_pton(family, host)          # OSError on a name: forwarders are addresses
    if not 0 < port < 65536:
        raise ValueError(f"port {port}")
    return family, host, port


async def _ask_udp(addr: tuple[int, str, int], query: bytes) -> bytes:
    family, host, port = addr
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as s:   # opened here: the agent's own namespace
        s.setblocking(False)
        s.connect((host, port))
        await loop.sock_sendall(s, query)
        while True:                          # ignore strays; the caller's timeout ends this
            reply = await loop.sock_recv(s, 65535)
            if len(reply) >= 12 and reply[:2] == query[:2] and reply[2] & 0x80:
                return reply


async def _ask_tcp(addr: tuple[int, str, int], query: bytes) -> bytes:
    _, host, port = addr
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        n = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = await reader.readexactly(n)
        if len(reply) < 12 or reply[:2] != query[:2]:
            raise ValueError("reply does not match the query")
        return reply
    finally:
        writer.close()
