"""SWIM failure detection with Lifeguard, as a pure state machine.

Why pure: the same code runs in the agent (UDP over the transit network) and in a
simulation of 1,000 nodes on a virtual clock, and tests drive it without sockets or
sleeps. The caller owns time and the network: it calls `tick(now)` when
`next_deadline()` is due and `receive(msg, src, now)` for each datagram, and sends the
`Outgoing` messages both return. Nothing here reads a clock or does I/O.

The protocol follows HashiCorp memberlist (see docs/membership.md):
- each protocol period probes one member (round-robin over a shuffled list) with a
  direct ping; no ack within the probe timeout -> ping-req through k members; no ack
  by the end of the period -> suspect;
- a suspicion lasts suspicion_mult * max(1, log10 N) * interval, starting at
  suspicion_max_mult times that and shrinking as independent suspicions confirm it;
- incarnation numbers let a suspected node refute by gossiping alive with a higher one;
- Lifeguard: a local health score (missed acks and nacks, being suspected) stretches this
  node's probe interval, probe timeout and suspicion timeouts, so a slow node does not
  accuse healthy ones; ping-req relays answer nack when the target stays silent; a
  message to a node we suspect carries that suspicion so it can refute at once;
- updates ride on every message (and on gossip messages while there is news), each sent
  about retransmit_mult * ceil(log10(N + 1)) times.
"""

from __future__ import annotations

import heapq
import math
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

# -- states and messages ------------------------------------------------------------------


class Status(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


# Precedence at equal incarnation: a later state in this order overrides an earlier one.
_RANK = {Status.ALIVE: 0, Status.SUSPECT: 1, Status.DEAD: 2, Status.LEFT: 3}
_STATUS_OF = {v: k for k, v in _RANK.items()}

MAX_ID = 64  # bytes of a node id on the wire
MAX_U32 = 0xFFFFFFFF
VERSION = 1


@dataclass(frozen=True, slots=True)
class Update:
    """A claim about one member: `origin` is who suspected / declared it (empty for alive/left)."""

    status: Status
    node: str
    incarnation: int
    origin: str = ""

    def size(self) -> int:
        return 7 + len(self.node.encode()) + len(self.origin.encode())


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # the id the sender meant, so a reused address does not ack for someone else
    updates: tuple[Update, ...] = ()

    def encode(self) -> bytes:
        return _encode(1, self.seq, self.target, self.updates)


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to ping `target` and answer ack (or nack) with this `seq`."""

    seq: int
    target: str
    updates: tuple[Update, ...] = ()

    def encode(self) -> bytes:
        return _encode(2, self.seq, self.target, self.updates)


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    updates: tuple[Update, ...] = ()

    def encode(self) -> bytes:
        return _encode(3, self.seq, None, self.updates)


@dataclass(frozen=True, slots=True)
class Nack:
    """A ping-req relay heard nothing from the target: tells the prober *it* is fine."""

    seq: int
    updates: tuple[Update, ...] = ()

    def encode(self) -> bytes:
        return _encode(4, self.seq, None, self.updates)


@dataclass(frozen=True, slots=True)
class Gossip:
    """Updates only, sent while there is news; needs no answer."""

    updates: tuple[Update, ...] = ()

    def encode(self) -> bytes:
        return _encode(5, None, None, self.updates)


Message = Ping | PingReq | Ack | Nack | Gossip

_HEAD = struct.Struct("!BB")
_U32 = struct.Struct("!I")
_UPD = struct.Struct("!BI")


def _put_str(out: bytearray, s: str, allow_empty: bool = False) -> None:
    b = s.encode()
    if not (0 if allow_empty else 1) <= len(b) <= MAX_ID or not s.isprintable():
        raise ValueError(f"bad id {s!r}")
    out.append(len(b))
    out += b


def _encode(kind: int, seq: int | None, target: str | None, updates: tuple[Update, ...]) -> bytes:
    out = bytearray(_HEAD.pack(VERSION, kind))
    if seq is not None:
        out += _U32.pack(seq & MAX_U32)
    if target is not None:
        _put_str(out, target)
    if len(updates) > 255:
        raise ValueError("at most 255 updates per message")
    out.append(len(updates))
    for u in updates:
        if not 0 <= u.incarnation <= MAX_U32:
            raise ValueError("incarnation out of range")
        out += _UPD.pack(_RANK[u.status], u.incarnation)
        _put_str(out, u.node)
        _put_str(out, u.origin, allow_empty=True)
    return bytes(out)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated message")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def id(self, allow_empty: bool = False) -> str:
        n = self.u8()
        if n > MAX_ID or (n == 0 and not allow_empty):
            raise ValueError("bad id length")
        try:
            s = self.take(n).decode()
        except UnicodeDecodeError as e:
            raise ValueError("id is not UTF-8") from e
        if not s.isprintable():
            raise ValueError("id has control characters")
        return s


def decode(data: bytes) -> Message:
    """Parse one datagram; anything malformed raises ValueError (it comes off the network)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("not bytes")
    r = _Reader(bytes(data))
    version, kind = _HEAD.unpack(r.take(2))
    if version != VERSION:
        raise ValueError(f"unknown version {version}")
    if kind not in (1, 2, 3, 4, 5):
        raise ValueError(f"unknown message type {kind}")
    seq = r.u32() if kind != 5 else 0
    target = r.id() if kind in (1, 2) else ""
    updates = []
    for _ in range(r.u8()):
        rank, inc = _UPD.unpack(r.take(_UPD.size))
        if rank not in _STATUS_OF:
            raise ValueError(f"unknown status {rank}")
        updates.append(Update(_STATUS_OF[rank], r.id(), inc, r.id(allow_empty=True)))
    if r.pos != len(r.data):
        raise ValueError("trailing bytes")
    ups = tuple(updates)
    if kind == 1:
        return Ping(seq, target, ups)
    if kind == 2:
        return PingReq(seq, target, ups)
    if kind == 3:
        return Ack(seq, ups)
    if kind == 4:
        return Nack(seq, ups)
    return Gossip(ups)


@dataclass(frozen=True, slots=True)
class Outgoing:
    dst: str
    msg: Message


@dataclass(frozen=True, slots=True)
class MemberState:
    status: Status
    incarnation: int
    since: float  # the `now` at which this status began


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    node: str
    status: Status
    incarnation: int


# -- configuration ------------------------------------------------------------------------


@dataclass
class SwimConfig:
    """Defaults are for a LAN: a killed node is dead everywhere in ~3-5 s at 3-20 nodes
    (docs/membership.md has the formula and the measurements)."""

    probe_interval: float = 0.4  # one probe per period
    probe_timeout: float = 0.15  # direct ack deadline, then ping-req; relays wait as long (2x < interval)
    indirect_checks: int = 3  # k members asked to ping-req
    suspicion_mult: float = 4.0  # min suspicion = mult * max(1, log10 N) * interval
    suspicion_max_mult: float = 3.0  # a suspicion starts at this times the min, shrinks with confirmations
    retransmit_mult: int = 4  # each update is sent retransmit_mult * ceil(log10(N+1)) times
    gossip_interval: float = 0.2  # extra gossip rounds while there is news (0 = piggyback only)
    gossip_nodes: int = 3
    reconnect_interval: float = 2.0  # ping one dead member this often, so partitions heal
    awareness_max: int = 8  # local health multiplier ceiling (Lifeguard)
    lifeguard: bool = True  # off = plain SWIM: fixed timeouts, no nacks, no buddy
    final_ping: bool = True  # ping a suspect once more before declaring it dead (see _expire_suspicion)
    max_packet: int = 1200  # bytes of one encoded message (fits a 1280 MTU with IP/UDP)
    event_history: int = 1000

    def suspicion_min(self, n: int) -> float:
        """Suspicion timeout once enough members confirm it (before local-health scaling)."""
        return self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval

    def detection_estimate(self, n: int) -> tuple[float, float]:
        """(typical, slow) seconds from a crash to 'dead' everywhere in an n-node cluster: a
        probe finds it within ~2 periods, then the suspicion runs for its min (confirmed) or
        max (unconfirmed) timeout, the final ping waits 2 probe timeouts, then a few gossip
        rounds spread 'dead'."""
        spread = 2 * max(self.gossip_interval, self.probe_interval / 2)
        base = 2 * self.probe_interval + spread + (2 * self.probe_timeout if self.final_ping else 0.0)
        return base + self.suspicion_min(n), base + self.suspicion_max_mult * self.suspicion_min(n)


# -- the state machine --------------------------------------------------------------------


class _Member:
    __slots__ = ("heard", "incarnation", "since", "status")

    def __init__(self, incarnation: int, since: float) -> None:
        self.status = Status.ALIVE
        self.incarnation = incarnation
        self.since = since
        self.heard: float | None = None


class _Suspicion:
    __slots__ = ("checked", "confirmed", "deadline", "k", "max", "min", "start")

    def __init__(self, start: float, k: int, tmin: float, tmax: float, origin: str) -> None:
        self.start, self.k, self.min, self.max = start, k, tmin, tmax
        self.checked = False
        self.confirmed = {origin}
        self.deadline = start + (tmin if k < 1 else tmax)

    def confirm(self, origin: str) -> bool:
        """Another member suspects it too: shrink the timeout (Lifeguard's LHA-suspicion)."""
        n = len(self.confirmed) - 1
        if n >= self.k or origin in self.confirmed:
            return False
        self.confirmed.add(origin)
        frac = math.log(n + 2) / math.log(self.k + 1)
        self.deadline = self.start + max(self.min, self.max - frac * (self.max - self.min))
        return True


class _Probe:
    __slots__ = ("acked", "expected_nacks", "nacks", "seq", "target")

    def __init__(self, target: str, seq: int) -> None:
        self.target, self.seq = target, seq
        self.acked = False
        self.expected_nacks = 0
        self.nacks = 0


class _Bcast:
    __slots__ = ("order", "transmits", "update")

    def __init__(self, update: Update, order: int) -> None:
        self.update, self.order, self.transmits = update, order, 0


class Swim:
    """One node's view of the cluster. Drive it with `tick` / `receive`; send what they return."""

    def __init__(self, me: str, config: SwimConfig | None = None, rng: random.Random | None = None,
                 now: float = 0.0, incarnation: int = 0,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.me = me
        self.cfg = config or SwimConfig()
        self.rng = rng or random.Random()
        self.incarnation = incarnation
        self.left = False
        self.health = 0  # Lifeguard local health score, 0 .. awareness_max - 1
        self.events: deque[Event] = deque(maxlen=self.cfg.event_history)
        self.on_event = on_event
        self.sent = 0  # messages returned for sending, for load figures
        self._now = now
        self._members: dict[str, _Member] = {}
        self._live = 1  # alive or suspect members, self included: the N of the formulas
        self._dead: set[str] = set()
        self._seq = self.rng.randrange(MAX_U32)
        self._probe: _Probe | None = None
        self._probe_list: list[str] = []
        self._probe_idx = 0
        self._relays: dict[int, tuple[str, int]] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._bq: dict[str, _Bcast] = {}
        self._border = 0
        self._timers: list[tuple[float, int, str, object]] = []
        self._tseq = 0
        self._gossip_armed = False
        self._next_reconnect = now + self.cfg.reconnect_interval
        # the first probe at a random offset, so a cluster started at once does not beat in step
        self._timer(now + self.rng.random() * self.cfg.probe_interval, "probe", None)

    # -- membership the caller manages ---------------------------------------------------

    def add_member(self, node: str, incarnation: int = 0, now: float | None = None) -> None:
        """A member the caller knows of (from the store); starts alive. Known ids are left alone."""
        if node == self.me or node in self._members:
            return
        self._members[node] = _Member(incarnation, self._now if now is None else now)
        self._live += 1
        # Into a random slot of what is left of this round (inside-out Fisher-Yates), so nodes
        # that learn members in the same order do not all probe the same one at once.
        pl = self._probe_list
        pl.append(node)
        j = self.rng.randrange(self._probe_idx, len(pl))
        pl[j], pl[-1] = pl[-1], pl[j]

    def add_members(self, nodes: Iterable[str], now: float | None = None) -> None:
        """Many `add_member`s at once (a node starting from its store): one shuffle, not N draws."""
        t = self._now if now is None else now
        new = [n for n in dict.fromkeys(nodes) if n != self.me and n not in self._members]
        for n in new:
            self._members[n] = _Member(0, t)
        self._live += len(new)
        rest = self._probe_list[self._probe_idx:] + new
        self.rng.shuffle(rest)
        self._probe_list[self._probe_idx:] = rest

    def remove_member(self, node: str) -> None:
        """Forget a member entirely (revoked): no probes, no state, its updates ignored."""
        m = self._members.pop(node, None)
        if m is None:
            return
        if m.status in (Status.ALIVE, Status.SUSPECT):
            self._live -= 1
        self._dead.discard(node)
        self._suspicions.pop(node, None)
        self._bq.pop(node, None)

    def leave(self, now: float) -> list[Outgoing]:
        """Announce a graceful leave. Keep calling tick/receive for about a second so the news
        spreads (this node answers pings but probes nobody), then stop."""
        self._now = now
        if self.left:
            return []
        self.left = True
        self._enqueue(Update(Status.LEFT, self.me, self.incarnation))
        self._event(now, self.me, Status.LEFT, self.incarnation)
        return self._gossip_round(max(1, self.cfg.gossip_nodes))

    def rejoin(self, now: float) -> list[Outgoing]:
        """Come back after `leave` with the same identity: a higher incarnation overrides 'left'."""
        self._now = now
        if not self.left:
            return []
        self.left = False
        self._refute(0)
        self._event(now, self.me, Status.ALIVE, self.incarnation)
        return self._gossip_round(max(1, self.cfg.gossip_nodes))

    # -- queries ---------------------------------------------------------------------------

    def state(self, node: str) -> MemberState | None:
        if node == self.me:
            return MemberState(Status.LEFT if self.left else Status.ALIVE, self.incarnation, 0.0)
        m = self._members.get(node)
        return None if m is None else MemberState(m.status, m.incarnation, m.since)

    def members(self) -> dict[str, MemberState]:
        return {n: MemberState(m.status, m.incarnation, m.since) for n, m in self._members.items()}

    def alive(self, node: str) -> bool:
        """Alive or suspect (a suspect is still a member until declared dead). An id this
        instance does not know gets the benefit of the doubt, like the old detector."""
        if node == self.me:
            return not self.left
        m = self._members.get(node)
        return m is None or m.status in (Status.ALIVE, Status.SUSPECT)

    def alive_ids(self, me: str | None = None, members: Iterable[str] | None = None) -> set[str]:
        """The call shape the agent uses (`me` is ignored)."""
        if members is None:
            ids = {n for n, m in self._members.items() if m.status in (Status.ALIVE, Status.SUSPECT)}
            if not self.left:
                ids.add(self.me)
            return ids
        return {n for n in members if self.alive(n)}

    def last_seen_age(self, node: str) -> float | None:
        """Seconds since any message from `node`, as of the last `now` this instance was given."""
        m = self._members.get(node)
        if m is None or m.heard is None:
            return None
        return round(self._now - m.heard, 1)

    def next_deadline(self) -> float | None:
        """When `tick` next has work; call it then (earlier or extra calls are harmless)."""
        return self._timers[0][0] if self._timers else None

    @property
    def health_multiplier(self) -> int:
        return self.health + 1

    # -- driving -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Fire every timer due by `now`: probe starts and ends, ping-req, relays, suspicions."""
        self._now = now
        out: list[Outgoing] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(self._timers)
            if kind == "probe":
                self._end_probe()
                out += self._start_probe(now)
            elif kind == "probe_timeout":
                out += self._indirect(key)
            elif kind == "relay":
                relay = self._relays.pop(key, None)
                if relay is not None and self.cfg.lifeguard:
                    out.append(self._send(relay[0], Nack(relay[1], self._piggyback(relay[0]))))
            elif kind == "suspect":
                out += self._expire_suspicion(key, now)
            elif kind == "gossip":
                self._gossip_armed = False
                out += self._gossip_round(self.cfg.gossip_nodes)
        self._arm_gossip(now)
        return out

    def receive(self, msg: Message, src: str, now: float) -> list[Outgoing]:
        """Handle one message from member `src` (the caller vouches for the sender's id,
        e.g. from the WireGuard peer it arrived through)."""
        self._now = now
        out: list[Outgoing] = []
        m = self._members.get(src)
        if m is not None:
            m.heard = now
        for u in msg.updates:
            self._apply(u, now)
        if isinstance(msg, Ping):
            if msg.target == self.me:
                out.append(self._send(src, Ack(msg.seq, self._piggyback(src))))
        elif isinstance(msg, PingReq):
            seq = self._next_seq()
            self._relays[seq] = (src, msg.seq)
            self._timer(now + self._scaled(self.cfg.probe_timeout), "relay", seq)
            out.append(self._send(msg.target, Ping(seq, msg.target, self._piggyback(msg.target))))
        elif isinstance(msg, Ack):
            p = self._probe
            if p is not None and p.seq == msg.seq:
                p.acked = True
            else:
                relay = self._relays.pop(msg.seq, None)
                if relay is not None:
                    out.append(self._send(relay[0], Ack(relay[1], self._piggyback(relay[0]))))
        elif isinstance(msg, Nack) and self._probe is not None and self._probe.seq == msg.seq:
            self._probe.nacks += 1
        self._arm_gossip(now)
        return out

    def receive_bytes(self, data: bytes, src: str, now: float) -> list[Outgoing]:
        """`receive` for a raw datagram; malformed input raises ValueError."""
        return self.receive(decode(data), src, now)

    # -- probing ----------------------------------------------------------------------------

    def _scaled(self, t: float) -> float:
        return t * (self.health + 1) if self.cfg.lifeguard else t

    def _health(self, delta: int) -> None:
        if self.cfg.lifeguard:
            self.health = min(max(self.health + delta, 0), self.cfg.awareness_max - 1)

    def _next_target(self) -> str | None:
        for _ in range(len(self._probe_list) + 1):
            if self._probe_idx >= len(self._probe_list):
                self._probe_list = list(self._members)
                self.rng.shuffle(self._probe_list)
                self._probe_idx = 0
                if not self._probe_list:
                    return None
            node = self._probe_list[self._probe_idx]
            self._probe_idx += 1
            m = self._members.get(node)
            if m is not None and m.status in (Status.ALIVE, Status.SUSPECT):
                return node
        return None

    def _start_probe(self, now: float) -> list[Outgoing]:
        interval = self._scaled(self.cfg.probe_interval)
        self._timer(now + interval, "probe", None)
        out: list[Outgoing] = []
        if self.left:
            return out
        if self._dead and now >= self._next_reconnect:
            # Partitions heal here: the ping carries our 'dead' claim, so the node refutes, and
            # its ack carries our own 'dead' record if it has one, so we refute too. As in Serf,
            # the chance scales with dead/live, so the cluster sends ~one such ping per dead
            # node per interval, not one per member.
            self._next_reconnect = now + self.cfg.reconnect_interval
            if self.rng.random() < len(self._dead) / max(1, self._live - 1):
                node = self.rng.choice(sorted(self._dead))
                out.append(self._send(node, Ping(self._next_seq(), node, self._piggyback(node))))
        target = self._next_target()
        if target is None:
            return out
        p = self._probe = _Probe(target, self._next_seq())
        self._timer(now + self._scaled(self.cfg.probe_timeout), "probe_timeout", p.seq)
        out.append(self._send(target, Ping(p.seq, target, self._piggyback(target))))
        return out

    def _indirect(self, seq: object) -> list[Outgoing]:
        p = self._probe
        if p is None or p.seq != seq or p.acked:
            return []
        peers = self._random_members(self.cfg.indirect_checks, {p.target},
                                     lambda m: m.status == Status.ALIVE)
        if self.cfg.lifeguard:
            p.expected_nacks = len(peers)
        return [self._send(n, PingReq(p.seq, p.target, self._piggyback(n))) for n in peers]

    def _end_probe(self) -> None:
        """The period is over: an unanswered probe raises suspicion (and maybe our own doubt)."""
        p, self._probe = self._probe, None
        if p is None:
            return
        if p.acked:
            self._health(-1)
            return
        # Nacks say the relays are fine, so a missing one points at us (Lifeguard).
        self._health(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        m = self._members.get(p.target)
        if m is not None and m.status in (Status.ALIVE, Status.SUSPECT):
            self._apply(Update(Status.SUSPECT, p.target, m.incarnation, self.me), self._now)

    def _random_members(self, k: int, exclude: set[str], pred: Callable[[_Member], bool]) -> list[str]:
        """Up to k distinct members passing `pred`: random draws first (O(k) for big clusters),
        a full scan when draws keep missing."""
        picked: list[str] = []
        pool = self._probe_list
        if pool:
            for _ in range(4 * k):
                n = pool[self.rng.randrange(len(pool))]
                m = self._members.get(n)
                if n not in exclude and n not in picked and m is not None and pred(m):
                    picked.append(n)
                    if len(picked) == k:
                        return picked
        rest = [n for n, m in self._members.items() if n not in exclude and n not in picked and pred(m)]
        self.rng.shuffle(rest)
        return picked + rest[:k - len(picked)]

    # -- state changes ------------------------------------------------------------------------

    def _apply(self, u: Update, now: float) -> None:
        if u.node == self.me:
            self._about_me(u)
            return
        m = self._members.get(u.node)
        if m is None:
            return  # membership comes from the caller (signed rows), not from gossip
        if u.status == Status.ALIVE:
            if u.incarnation <= m.incarnation:
                return
            self._set(u.node, m, Status.ALIVE, u.incarnation, now)
            self._enqueue(u)
        elif u.status == Status.SUSPECT:
            if u.incarnation < m.incarnation:
                return
            s = self._suspicions.get(u.node)
            if s is not None:
                if u.incarnation > m.incarnation:
                    m.incarnation = u.incarnation
                if s.confirm(u.origin):
                    self._timer(s.deadline, "suspect", u.node)
                    self._enqueue(u)
                return
            if m.status != Status.ALIVE:
                return
            self._set(u.node, m, Status.SUSPECT, u.incarnation, now)
            self._start_suspicion(u.node, u.origin, now)
            self._enqueue(u)
        else:  # DEAD or LEFT
            if u.incarnation < m.incarnation:
                return
            if m.status == Status.LEFT:
                return
            if m.status == Status.DEAD and u.status == Status.DEAD:
                m.incarnation = u.incarnation
                return
            self._set(u.node, m, u.status, u.incarnation, now)
            self._enqueue(u)

    def _about_me(self, u: Update) -> None:
        if self.left:
            return
        if u.status == Status.ALIVE:
            if u.incarnation > self.incarnation:  # an older life of ours: take the name back
                self._refute(u.incarnation)
        elif u.incarnation >= self.incarnation:
            self._refute(u.incarnation)
            if u.status == Status.SUSPECT:
                self._health(+1)  # being suspected hints that we are the slow one
        elif self.me not in self._bq:
            # A stale accusation: someone missed our refutation after it stopped circulating
            # and would otherwise hold it (and declare us dead) for good. Say it again.
            self._enqueue(Update(Status.ALIVE, self.me, self.incarnation))

    def _refute(self, accused: int) -> None:
        self.incarnation = max(self.incarnation, accused) + 1
        self._enqueue(Update(Status.ALIVE, self.me, self.incarnation))

    def _set(self, node: str, m: _Member, status: Status, inc: int, now: float) -> None:
        was_live = m.status in (Status.ALIVE, Status.SUSPECT)
        is_live = status in (Status.ALIVE, Status.SUSPECT)
        self._live += is_live - was_live
        if status == Status.DEAD:
            self._dead.add(node)
        else:
            self._dead.discard(node)
        if status != Status.SUSPECT:
            self._suspicions.pop(node, None)
        changed = status != m.status
        m.status, m.incarnation = status, inc
        if changed:
            m.since = now
            self._event(now, node, status, inc)

    def _event(self, now: float, node: str, status: Status, inc: int) -> None:
        ev = Event(now, node, status, inc)
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    def _start_suspicion(self, node: str, origin: str, now: float) -> None:
        n = self._live
        tmin = self.cfg.suspicion_min(n)
        k = 0
        if self.cfg.lifeguard:
            tmin *= self.health + 1
            k = int(self.cfg.suspicion_mult) - 2
            if n - 2 < k:
                k = 0  # too few members to expect that many independent confirmations
        s = _Suspicion(now, k, tmin, self.cfg.suspicion_max_mult * tmin, origin)
        self._suspicions[node] = s
        self._timer(s.deadline, "suspect", node)

    def _expire_suspicion(self, key: object, now: float) -> list[Outgoing]:
        node = str(key)
        s = self._suspicions.get(node)
        if s is None or s.deadline > now or self.left:
            return []  # refuted, or confirmations moved the deadline (a later timer exists)
        m = self._members[node]
        if self.cfg.final_ping and not s.checked:
            # Gossip of a refutation reaches each node only ~retransmit_mult*log N times, so at
            # a few % loss some node misses it and would declare a live node dead. One direct
            # ping, carrying our suspicion, makes the node answer with its current 'alive'.
            s.checked = True
            s.deadline = now + 2 * self._scaled(self.cfg.probe_timeout)
            self._timer(s.deadline, "suspect", node)
            return [self._send(node, Ping(self._next_seq(), node, self._piggyback(node)))]
        self._set(node, m, Status.DEAD, m.incarnation, now)
        self._enqueue(Update(Status.DEAD, node, m.incarnation, self.me))
        return []

    # -- dissemination ------------------------------------------------------------------------

    def _enqueue(self, u: Update) -> None:
        """Queue news for piggybacking; a newer claim about a node replaces the older one."""
        self._border += 1
        self._bq[u.node] = _Bcast(u, self._border)

    def _piggyback(self, dst: str) -> tuple[Update, ...]:
        """Updates for one message: what we hold against `dst` first (so it can refute at once),
        then queued news, least-sent and newest first, within the packet budget."""
        budget = self.cfg.max_packet - 8 - 2 * MAX_ID
        picked: list[Update] = []
        m = self._members.get(dst)
        if m is not None and m.status != Status.ALIVE and (
                self.cfg.lifeguard or self.cfg.final_ping or m.status != Status.SUSPECT):
            u = Update(m.status, dst, m.incarnation, self.me if m.status != Status.LEFT else "")
            picked.append(u)
            budget -= u.size()
        if not self._bq:
            return tuple(picked)
        limit = self.cfg.retransmit_mult * math.ceil(math.log10(self._live + 1))
        queue = list(self._bq.values())
        if len(queue) > 1:
            queue.sort(key=lambda b: (b.transmits, -b.order))
        for b in queue:
            if len(picked) >= 255 or budget < 9:
                break
            size = b.update.size()
            if size > budget:
                continue
            budget -= size
            picked.append(b.update)
            b.transmits += 1
            if b.transmits >= limit:
                del self._bq[b.update.node]
        return tuple(picked)

    def _gossip_round(self, fanout: int) -> list[Outgoing]:
        if not self._bq or fanout <= 0:
            return []
        peers = self._random_members(fanout, set(),
                                     lambda m: m.status in (Status.ALIVE, Status.SUSPECT))
        out = []
        for n in peers:
            ups = self._piggyback(n)
            if ups:
                out.append(self._send(n, Gossip(ups)))
        return out

    def _arm_gossip(self, now: float) -> None:
        if self._bq and not self._gossip_armed and self.cfg.gossip_interval > 0:
            self._gossip_armed = True
            self._timer(now + self.cfg.gossip_interval, "gossip", None)

    # -- plumbing ------------------------------------------------------------------------------

    def _timer(self, at: float, kind: str, key: object) -> None:
        self._tseq += 1
        heapq.heappush(self._timers, (at, self._tseq, kind, key))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & MAX_U32
        return self._seq

    def _send(self, dst: str, msg: Message) -> Outgoing:
        self.sent += 1
        return Outgoing(dst, msg)


__all__ = [
    "Ack", "Event", "Gossip", "MemberState", "Message", "Nack", "Outgoing", "Ping", "PingReq",
    "Status", "Swim", "SwimConfig", "Update", "decode",
]
