"""The embedded resolver's answers (like Docker's 127.0.0.11), as pure functions of a query's
wire bytes and the endpoint's DnsView. No sockets here; dns/server.py does the I/O.

Rules, in order:
- not a query (shorter than a header, or the QR bit set) -> None; the server drops it
  (`is_query` tells the two kinds of None apart);
- a header but an unparseable body, or not exactly one question -> FORMERR; opcode other
  than QUERY -> NOTIMP;
- a name in view.a (case-insensitive, trailing dot or not): A (or ANY) -> every address,
  TTL 0, the order rotated on every query (round robin); any other type -> NODATA;
- PTR under in-addr.arpa: an address in view.ptr -> its name; another address inside one
  of view.subnets -> NXDOMAIN; anything else is forwarded;
- names that look internal but are unknown -> NXDOMAIN, never forwarded: every single
  label, "tasks.X", and "X.N" (N a number: a service slot or an endpoint name);
- everything else -> None: the server forwards it to view.forwarders.

UDP replies larger than 512 bytes (or the client's EDNS size, at most 1232) carry as many
addresses as fit and the TC bit, so the client retries over TCP and gets them all.

Fast path: a Responder keeps the wire replies it built, keyed by the query bytes after the
id (flags, question, EDNS), and only patches the id in. dnslib (≈50 µs a query) runs once per
distinct question and view.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
import weakref

from dnslib import EDNS0, QTYPE, RR, A, DNSHeader, DNSRecord
from dnslib.dns import PTR

from meshnet.dns.view import DnsView

TTL = 0                  # a scale (or a dead task) is seen by the next query
UDP_MIN = 512
UDP_MAX = 1232           # the EDNS size we answer with (DNS flag day 2020)
CACHE_MAX = 4096         # prebuilt replies per Responder; cleared when full
ROTATIONS_MAX = 16       # above this many addresses, rotations are built per query

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
_T_A, _T_PTR, _T_ANY = QTYPE.A, QTYPE.PTR, QTYPE.ANY
_FORWARD = None


def is_query(data: bytes) -> bool:
    """Something that deserves a reply: a full header with the QR bit clear."""
    return len(data) >= 12 and not data[2] & 0x80


def rcode(reply: bytes) -> int:
    return reply[3] & 0x0F if len(reply) >= 4 else -1


def error_reply(query: bytes, code: int) -> bytes:
    """A bare reply (no question) with `code`: id, opcode and RD copied from the query."""
    if len(query) < 12:
        raise ValueError("not a DNS header")
    flags = 0x8000 | (query[2] & 0x79) << 8 | 0x0080 | code   # QR, opcode+RD, RA, rcode
    return query[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def answer(query: bytes, view: DnsView, tcp: bool = False) -> bytes | None:
    """The reply to `query` from `view`, or None when it must be forwarded (or dropped, when
    `is_query(query)` is false). Never raises. Round robin state and the reply cache live in
    a Responder kept per view object (so pass the same view object while it is current)."""
    return responder_for(view).answer(query, tcp)


_responders: dict[int, Responder] = {}


def responder_for(view: DnsView) -> Responder:
    r = _responders.get(id(view))
    if r is None or r.view is not view:
        r = _responders[id(view)] = Responder(view)
        weakref.finalize(view, _responders.pop, id(view), None)
    return r


class Responder:
    """Answers for one view: the rules above plus the prebuilt-reply cache and round robin."""

    def __init__(self, view: DnsView):
        self.view = view
        self.names = {_norm(k): tuple(v) for k, v in view.a.items()}
        self.ptr = {k: _norm(v) for k, v in view.ptr.items()}
        self.subnets = []
        for s in view.subnets:
            try:
                self.subnets.append(ipaddress.IPv4Network(s, strict=False))
            except ValueError:
                continue
        # key: query bytes after the id, + b"T" for TCP -> [reply tails without the id, next index]
        self._cache: dict[bytes, list | None] = {}
        self._rr = itertools.count()
        self._cacheable = True

    def answer(self, query: bytes, tcp: bool = False) -> bytes | None:
        if not is_query(query):
            return None
        query = bytes(query)
        key = query[2:] + b"T" if tcp else query[2:]
        hit = self._cache.get(key, 0)
        if hit is None:
            return None
        if hit:
            tails, n = hit
            hit[1] = n + 1
            return query[:2] + tails[n % len(tails)]
        self._cacheable = True
        try:
            tails = self._build(query, tcp)
        except Exception:  # dnslib raises many kinds on hostile bytes; never let one out
            tails = [error_reply(query, FORMERR)[2:]]
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        if self._cacheable:
            self._cache[key] = None if tails is None else [tails, 1]
        return None if tails is None else query[:2] + tails[0]

    # -- the slow path (dnslib) --------------------------------------------------------------

    def _build(self, query: bytes, tcp: bool) -> list[bytes] | None:
        """Reply tails (bytes after the id): one per rotation, or None to forward."""
        opcode = (query[2] >> 3) & 0x0F
        if opcode != 0:
            return [error_reply(query, NOTIMP)[2:]]
        if struct.unpack("!H", query[4:6])[0] != 1:
            return [error_reply(query, FORMERR)[2:]]
        req = DNSRecord.parse(query)
        q = req.q
        name = _norm(str(q.qname))
        opt = next((r for r in req.ar if r.rtype == QTYPE.OPT), None)
        limit = 65535 if tcp else min(max(UDP_MIN, opt.rclass if opt else UDP_MIN), UDP_MAX)

        if name in self.names:
            addrs = self.names[name]
            if q.qtype not in (_T_A, _T_ANY) or not addrs:
                return [self._reply(req, opt, NOERROR, [], limit)]
            if len(addrs) > ROTATIONS_MAX:    # N rotations of N records: too many to keep
                self._cacheable = False
                k = next(self._rr) % len(addrs)
                return [self._reply(req, opt, NOERROR, _a_rrs(q.qname, addrs[k:] + addrs[:k]), limit)]
            rots = [addrs[k:] + addrs[:k] for k in range(len(addrs))]
            return [self._reply(req, opt, NOERROR, _a_rrs(q.qname, r), limit) for r in rots]

        if name.endswith(".in-addr.arpa"):
            ip = _ptr_ip(name)
            if ip is None:
                return _FORWARD
            target = self.ptr.get(ip)
            if target is not None:
                rrs = [RR(q.qname, _T_PTR, rdata=PTR(target + "."), ttl=TTL)] \
                    if q.qtype in (_T_PTR, _T_ANY) else []
                return [self._reply(req, opt, NOERROR, rrs, limit)]
            addr = ipaddress.IPv4Address(ip)
            if any(addr in net for net in self.subnets):
                return [self._reply(req, opt, NXDOMAIN, [], limit)]
            return _FORWARD

        if _looks_internal(name):
            return [self._reply(req, opt, NXDOMAIN, [], limit)]
        return _FORWARD

    @staticmethod
    def _reply(req: DNSRecord, opt, code: int, rrs: list, limit: int) -> bytes:
        h = DNSHeader(id=0, qr=1, aa=1, ra=1, rd=req.header.rd, rcode=code)
        out = DNSRecord(h, q=req.q)
        if opt is not None:
            out.add_ar(EDNS0(udp_len=UDP_MAX))
        for rr in rrs:
            out.add_answer(rr)
        wire = out.pack()
        while len(wire) > limit and out.rr:        # UDP: keep what fits, set TC
            drop = max(1, (len(wire) - limit + 15) // 16)
            out.rr = out.rr[:-drop] if drop < len(out.rr) else []
            out.header.tc = 1
            wire = out.pack()
        return bytes(wire[2:])


def _a_rrs(qname, addrs) -> list:
    return [RR(qname, _T_A, rdata=A(ip), ttl=TTL) for ip in addrs]


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _ptr_ip(name: str) -> str | None:
    """"4.3.2.1.in-addr.arpa" -> "1.2.3.4"; None unless a full IPv4 address."""
    labels = name[: -len(".in-addr.arpa")].split(".")
    if len(labels) != 4 or not all(lb.isdigit() and len(lb) <= 3 and int(lb) < 256 for lb in labels):
        return None
    return ".".join(str(int(lb)) for lb in reversed(labels))


def _looks_internal(name: str) -> bool:
    if not name:
        return False                     # the root zone
    labels = name.split(".")
    if len(labels) == 1:
        return True                      # Docker never forwards a single label
    return len(labels) == 2 and (labels[0] == "tasks" or labels[1].isdigit())
