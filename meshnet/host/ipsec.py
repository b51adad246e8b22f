"""The IPsec (ESP) applier of the WireGuard model: an xfrm interface plus ESP tunnel-mode SAs.

`mnet0` is an xfrm interface (`ip link add mnet0 type xfrm dev UNDERLAY if_id 0x6d6e`)
carrying the transit address. Each `Peer` becomes two SAs (out, in) between the two
underlay addresses and three policies (out, in, fwd) between the two transit /32s, all
tagged with our if_id; meshnet.plan.ipsec derives keys and SPIs from the X25519 shared
secret of the two WireGuard keys. See docs/ipsec.md.

Everything goes through `ip xfrm` / `ip link` (meshnet.host.cmd.run): pyroute2's xfrm
support is thin. The kernel keeps no public keys, so the applier remembers the peers it
applied and `read` reports one only while the kernel still holds exactly its SAs and
policies: a hand-deleted or altered SA makes the peer "missing", and the next reconcile
puts it back. `apply` is declarative: after updating what it remembers it makes the
kernel's if_id-tagged states and policies match it (new inbound SAs, then new outbound
SAs, then the out policies, whose template names the outbound SPI: that update is the
switch; then removal of anything left over), so it is idempotent and also sweeps SAs of
peers that left while the agent was down.

Rotation (meshnet.plan.ipsec.plan): what a peer should have depends on the time (the
epoch, and the switch and grace of a new key pair), so `read` compares the kernel with
the plan *now*; when an epoch boundary, a switch or the end of a grace has passed, the
peer reads as missing and the next reconcile's `SetPeer` makes `sync` catch up.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshnet.errors import HostError
from meshnet.host.cmd import run
from meshnet.plan.ipsec import (
    AEAD,
    ICV_BITS,
    IF_ID,
    REPLAY_WINDOW,
    SA,
    Keying,
    PeerPlan,
    Policy,
    Schedule,
    host_cidr,
    plan,
    rekey,
)
from meshnet.plan.wireguard import Device, Op, Peer, PeerStats, RemovePeer, SetDevice, SetPeer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelState:
    src: str
    dst: str
    spi: int
    key: bytes | None
    mode: str
    if_id: int
    sel_src: str | None
    sel_dst: str | None
    bytes: int
    packets: int
    # Packets dropped as replays: behind the window ("stats: replay-window N") or seen
    # before within it ("replay N").
    replay: int = 0


@dataclass(frozen=True)
class KernelPolicy:
    src: str
    dst: str
    dir: str
    index: int
    if_id: int
    tmpl_src: str | None
    tmpl_dst: str | None
    tmpl_spi: int = 0  # 0: any SA between tmpl_src and tmpl_dst


def _blocks(text: str) -> list[list[str]]:
    """`ip xfrm` output cut into one block per state/policy (each starts at column 0)."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            blocks.append([line.strip()])
        elif blocks:
            blocks[-1].append(line.strip())
    return blocks


def _int(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


_SPI = re.compile(r"\bspi (0x[0-9a-f]+)")
_IF_ID = re.compile(r"^if_id (0x[0-9a-f]+|\d+)")
_AEAD = re.compile(r"^aead \S+ 0x([0-9a-f]+)")
_MODE = re.compile(r"\bmode (\w+)")
_SEL = re.compile(r"^sel src (\S+) dst (\S+)")
_CUR = re.compile(r"^(\d+)\(bytes\), (\d+)\(packets\)")
_REPLAY = re.compile(r"^replay-window (\d+) replay (\d+) failed \d+")
_SRCDST = re.compile(r"^src (\S+) dst (\S+)")
_DIR = re.compile(r"\bdir (\w+)")
_INDEX = re.compile(r"\bindex (\d+)")
_TMPL = re.compile(r"^tmpl src (\S+) dst (\S+)")


def parse_states(text: str) -> list[KernelState]:
    """ESP states from `ip -s xfrm state` (byte/packet counters need -s)."""
    out = []
    for block in _blocks(text):
        m = _SRCDST.match(block[0])
        if not m:
            continue
        src, dst = m.groups()
        spi = key = mode = sel = None
        if_id = nbytes = npackets = replay = 0
        current = False
        esp = False
        for line in block[1:]:
            if line.startswith("proto "):
                esp = line.startswith("proto esp ")
                if s := _SPI.search(line):
                    spi = int(s.group(1), 16)
                if s := _MODE.search(line):
                    mode = s.group(1)
            elif s := _AEAD.match(line):
                key = bytes.fromhex(s.group(1))
            elif s := _SEL.match(line):
                sel = s.groups()
            elif s := _IF_ID.match(line):
                if_id = _int(s.group(1))
            elif line.startswith("lifetime current:"):
                current = True
                continue
            elif current and (s := _CUR.match(line)):
                nbytes, npackets = int(s.group(1)), int(s.group(2))
            elif s := _REPLAY.match(line):
                replay = int(s.group(1)) + int(s.group(2))
            current = False
        if esp and spi is not None:
            out.append(KernelState(src, dst, spi, key, mode or "", if_id,
                                   sel[0] if sel else None, sel[1] if sel else None,
                                   nbytes, npackets, replay))
    return out


def parse_policies(text: str) -> list[KernelPolicy]:
    """Policies from `ip -s xfrm policy` (the index needs -s)."""
    out = []
    for block in _blocks(text):
        m = _SRCDST.match(block[0])
        if not m:
            continue
        src, dst = m.groups()
        direction = tmpl = None
        index = if_id = tmpl_spi = 0
        for line in block[1:]:
            if line.startswith("dir "):
                if s := _DIR.search(line):
                    direction = s.group(1)
                if s := _INDEX.search(line):
                    index = int(s.group(1))
            elif s := _TMPL.match(line):
                tmpl = s.groups()
            elif tmpl and line.startswith("proto ") and (s := _SPI.search(line)):
                tmpl_spi = int(s.group(1), 16)
            elif s := _IF_ID.match(line):
                if_id = _int(s.group(1))
        if direction:
            out.append(KernelPolicy(src, dst, direction, index, if_id,
                                    tmpl[0] if tmpl else None, tmpl[1] if tmpl else None, tmpl_spi))
    return out


def _state_ok(have: KernelState | None, want: SA) -> bool:
    return (have is not None and have.src == want.src and have.key == want.key
            and have.mode == "tunnel" and have.if_id == IF_ID)


def _policy_ok(have: KernelPolicy | None, want: Policy) -> bool:
    return (have is not None and have.if_id == IF_ID
            and (have.tmpl_src, have.tmpl_dst, have.tmpl_spi) == (want.tmpl_src, want.tmpl_dst, want.spi))


class IpsecTransit:
    """Backend (see meshnet.host.wireguard.Backend) for ESP over an xfrm interface.

    `local_underlay` is this node's endpoint address (the outer source of its SAs),
    `local_transit` its transit address (the inner source). `underlay_dev` is the
    interface the xfrm link sits on (default: the one holding `local_underlay`).
    `netns` runs every command in that named namespace (`ip -n`), for tests.
    `schedule` sets the rotation period, grace and switch delay (every member must use
    the same period); `clock` gives the wall time (tests use a short period instead)."""

    name = "ipsec"

    def __init__(self, local_underlay: str, local_transit: str, underlay_dev: str | None = None,
                 netns: str | None = None, schedule: Schedule | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.local_underlay = local_underlay
        self.local_transit = local_transit.split("/")[0]
        self.underlay_dev = underlay_dev
        self.netns = netns
        self._private_key = ""
        self._listen_port = 0
        self._peers: dict[str, Peer] = {}
        self.schedule = schedule or Schedule()
        self.clock = clock
        self._keyings: dict[str, tuple[Keying, ...]] = {}  # peer transit /32 -> key pairs in use
        self._retired: dict[tuple[str, str], int] = {}  # (peer transit /32, rx|tx) -> bytes of removed SAs
        self._seen: dict[tuple[str, int], tuple[int, int]] = {}  # inbound SA -> (packets, replays)
        self._stuck: set[tuple[str, int]] = set()

    # -- commands ----------------------------------------------------------------------

    def _ip(self, *args: str, check: bool = True):
        argv = ["ip", *(["-n", self.netns] if self.netns else []), *args]
        return run(argv, check=check)

    def _link_kind(self, ifname: str) -> str | None:
        proc = self._ip("-d", "-j", "link", "show", "dev", ifname, check=False)
        if proc.returncode != 0:
            return None
        try:
            info = json.loads(proc.stdout)[0].get("linkinfo") or {}
        except (ValueError, IndexError) as e:
            raise HostError(f"unreadable `ip -j link show {ifname}`: {e}") from None
        return info.get("info_kind")

    def states(self) -> list[KernelState]:
        return [s for s in parse_states(self._ip("-s", "xfrm", "state").stdout) if s.if_id == IF_ID]

    def policies(self) -> list[KernelPolicy]:
        return [p for p in parse_policies(self._ip("-s", "xfrm", "policy").stdout) if p.if_id == IF_ID]

    # -- Backend -----------------------------------------------------------------------

    def exists(self, ifname: str) -> bool:
        return self._link_kind(ifname) == "xfrm"

    def create(self, ifname: str) -> None:
        kind = self._link_kind(ifname)
        if kind == "xfrm":
            return
        if kind is not None:  # e.g. a WireGuard mnet0 from before: the name is ours
            self._ip("link", "del", "dev", ifname)
        dev = self.underlay_dev
        if dev is None:
            from meshnet.host.links import underlay_for
            dev = underlay_for(self.local_underlay)[0]
        self._ip("link", "add", ifname, "type", "xfrm", "dev", dev, "if_id", hex(IF_ID))

    def _usable(self, p: Peer) -> bool:
        return bool(self._private_key and p.endpoint and p.allowed_ips)

    def _expected(self, now: float) -> dict[str, tuple[Peer, PeerPlan]]:
        out = {}
        for pub, p in self._peers.items():
            keyings = self._keyings.get(host_cidr(p.allowed_ips[0])) if p.allowed_ips else None
            if not self._usable(p) or not keyings:
                continue
            out[pub] = (p, plan(keyings, self.local_underlay, self.local_transit, p.endpoint,
                                p.allowed_ips[0], now, self.schedule))
        return out

    def read(self, ifname: str) -> tuple[Device, list[PeerStats]]:
        """The peers whose SAs and policies are exactly what the plan wants now."""
        all_states = self.states()
        states = {(s.dst, s.spi): s for s in all_states}
        pols = {(p.src, p.dst, p.dir): p for p in self.policies()}
        peers: dict[str, Peer] = {}
        stats: list[PeerStats] = []
        for pub, (p, pl) in self._expected(self.clock()).items():
            wanted = [pl.out, *pl.inbound]
            if not all(_state_ok(states.get((w.dst, w.spi)), w) for w in wanted):
                continue
            pair = {pl.out.src, pl.out.dst}
            extra = {(s.dst, s.spi) for s in all_states if {s.src, s.dst} == pair} - {
                (w.dst, w.spi) for w in wanted}
            if extra:  # an SA whose grace is over, or one of an old epoch or key
                continue
            inbound = [states[(w.dst, w.spi)] for w in pl.inbound]
            if any([self._replay_stuck(s) for s in inbound]):
                continue
            if not all(_policy_ok(pols.get((w.src, w.dst, w.dir)), w) for w in pl.policies):
                continue
            peers[pub] = p
            transit = host_cidr(p.allowed_ips[0])
            rx = sum(s.bytes for s in inbound) + self._retired.get((transit, "rx"), 0)
            tx = states[(pl.out.dst, pl.out.spi)].bytes + self._retired.get((transit, "tx"), 0)
            stats.append(PeerStats(pub, p.endpoint, 0.0, rx, tx))
        return Device(self._private_key, self._listen_port, peers), stats

    def _replay_stuck(self, inb: KernelState) -> bool:
        """Whether the peer restarted its outbound SA: same key and SPI (derived), but its
        sequence numbers start over, so our replay window drops everything it sends. Seen
        as replays growing while no packet gets through since the last read; the inbound
        SA is then made again (a fresh window). See docs/ipsec.md, "Replay window"."""
        key = (inb.dst, inb.spi)
        before = self._seen.get(key)
        self._seen[key] = (inb.packets, inb.replay)
        if key in self._stuck:
            return True
        if before is not None and inb.replay > before[1] and inb.packets == before[0]:
            log.warning("ESP SA 0x%08x from %s: only replays since the last read; the peer "
                        "restarted its SA, resetting ours", inb.spi, inb.src)
            self._stuck.add(key)
            return True
        return False

    def apply(self, ifname: str, ops: list[Op]) -> None:
        if not ops:
            return
        for op in ops:
            if isinstance(op, SetDevice):
                self._private_key, self._listen_port = op.private_key, op.listen_port
            elif isinstance(op, RemovePeer):
                self._peers.pop(op.public_key, None)
            elif isinstance(op, SetPeer):
                # A transit address is one peer's: a new public key for it replaces the old
                # one even without a RemovePeer (read hides a peer whose SAs are not right,
                # so diff cannot ask to remove it).
                for pub, p in list(self._peers.items()):
                    if pub != op.peer.public_key and p.allowed_ips[:1] == op.peer.allowed_ips[:1]:
                        del self._peers[pub]
                self._peers[op.peer.public_key] = op.peer
        self.sync()

    def _rekey(self, now: float) -> None:
        """Remember which key pairs each peer uses (and since when): a new private key or
        a peer's new public key starts a switch (meshnet.plan.ipsec.rekey)."""
        keyings = {}
        for pub, p in self._peers.items():
            if self._usable(p):
                transit = host_cidr(p.allowed_ips[0])
                keyings[transit] = rekey(self._keyings.get(transit, ()), self._private_key, pub,
                                         now, self.schedule)
        self._keyings = keyings

    def sync(self) -> None:
        """Make the kernel's if_id-tagged states and policies what the plan wants now."""
        now = self.clock()
        self._rekey(now)
        states = {(s.dst, s.spi): s for s in self.states()}
        pols = {(p.src, p.dst, p.dir): p for p in self.policies()}
        expected = [pl for _, pl in self._expected(now).values()]
        keep_states, keep_pols = set(), set()
        # Inbound SAs first, so a peer that already sends on its new SA is understood; then
        # the new outbound SAs, unused until the out policy names them (the switch, below).
        for sa in [sa for pl in expected for sa in pl.inbound] + [pl.out for pl in expected]:
            if (sa.dst, sa.spi) in keep_states:
                continue
            keep_states.add((sa.dst, sa.spi))
            have = states.get((sa.dst, sa.spi))
            if _state_ok(have, sa) and (sa.dst, sa.spi) not in self._stuck:
                continue
            self._seen.pop((sa.dst, sa.spi), None)
            if have is not None:
                self._del_state(have)
            self._add_state(sa)
        for pl in expected:
            for pol in pl.policies:
                keep_pols.add((pol.src, pol.dst, pol.dir))
                have = pols.get((pol.src, pol.dst, pol.dir))
                if not _policy_ok(have, pol):
                    if pol.dir == "out" and have is not None and have.tmpl_spi:
                        log.info("ESP to %s: outbound SA 0x%08x -> 0x%08x", pol.tmpl_dst,
                                 have.tmpl_spi, pol.spi)
                    self._set_policy(pol)
        for key, pol in pols.items():
            if key not in keep_pols:
                self._ip("xfrm", "policy", "delete", "index", str(pol.index), "dir", pol.dir,
                         "if_id", hex(IF_ID), check=False)
        # Last, the SAs no longer wanted: the old outbound one (nothing names it now), old
        # inbound ones after their grace, and those of removed peers. Their bytes still count.
        for key, st in states.items():
            if key not in keep_states:
                self._retire(st)
                self._del_state(st)
        self._stuck.clear()

    def _retire(self, st: KernelState) -> None:
        inbound = st.dst == self.local_underlay
        transit = st.sel_src if inbound else st.sel_dst
        if transit:
            key = (transit, "rx" if inbound else "tx")
            self._retired[key] = self._retired.get(key, 0) + st.bytes

    def _add_state(self, sa: SA) -> None:
        self._ip("xfrm", "state", "add", "src", sa.src, "dst", sa.dst, "proto", "esp",
                 "spi", f"0x{sa.spi:08x}", "reqid", str(IF_ID), "mode", "tunnel",
                 "replay-window", str(REPLAY_WINDOW),
                 "aead", AEAD, "0x" + sa.key.hex(), str(ICV_BITS),
                 "if_id", hex(IF_ID), "sel", "src", sa.inner_src, "dst", sa.inner_dst)

    def _del_state(self, st: KernelState) -> None:
        self._ip("xfrm", "state", "delete", "src", st.src, "dst", st.dst, "proto", "esp",
                 "spi", f"0x{st.spi:08x}", check=False)

    def _set_policy(self, pol: Policy) -> None:
        spi = ["spi", f"0x{pol.spi:08x}"] if pol.spi else []
        self._ip("xfrm", "policy", "update", "src", pol.src, "dst", pol.dst, "dir", pol.dir,
                 "if_id", hex(IF_ID), "tmpl", "src", pol.tmpl_src, "dst", pol.tmpl_dst,
                 "proto", "esp", *spi, "reqid", str(IF_ID), "mode", "tunnel")

    def delete(self, ifname: str) -> None:
        """The link and every state and policy with our if_id."""
        if self._link_kind(ifname) is not None:
            self._ip("link", "del", "dev", ifname)
        self._private_key, self._listen_port = "", 0
        self._peers = {}
        self._retired = {}
        self.sync()
