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
kernel's if_id-tagged states and policies match it (new inbound SA before outbound,
policies, then removal of anything left over), so it is idempotent and also sweeps
SAs of peers that left while the agent was down.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from meshnet.errors import HostError
from meshnet.host.cmd import run
from meshnet.plan.ipsec import AEAD, ICV_BITS, IF_ID, REPLAY_WINDOW, SA, Policy, peer_sas
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
        index = if_id = 0
        for line in block[1:]:
            if line.startswith("dir "):
                if s := _DIR.search(line):
                    direction = s.group(1)
                if s := _INDEX.search(line):
                    index = int(s.group(1))
            elif s := _TMPL.match(line):
                tmpl = s.groups()
            elif s := _IF_ID.match(line):
                if_id = _int(s.group(1))
        if direction:
            out.append(KernelPolicy(src, dst, direction, index, if_id,
                                    tmpl[0] if tmpl else None, tmpl[1] if tmpl else None))
    return out


def _state_ok(have: KernelState | None, want: SA) -> bool:
    return (have is not None and have.src == want.src and have.key == want.key
            and have.mode == "tunnel" and have.if_id == IF_ID)


def _policy_ok(have: KernelPolicy | None, want: Policy) -> bool:
    return (have is not None and have.if_id == IF_ID
            and (have.tmpl_src, have.tmpl_dst) == (want.tmpl_src, want.tmpl_dst))


class IpsecTransit:
    """Backend (see meshnet.host.wireguard.Backend) for ESP over an xfrm interface.

    `local_underlay` is this node's endpoint address (the outer source of its SAs),
    `local_transit` its transit address (the inner source). `underlay_dev` is the
    interface the xfrm link sits on (default: the one holding `local_underlay`).
    `netns` runs every command in that named namespace (`ip -n`), for tests."""

    name = "ipsec"

    def __init__(self, local_underlay: str, local_transit: str, underlay_dev: str | None = None,
                 netns: str | None = None) -> None:
        self.local_underlay = local_underlay
        self.local_transit = local_transit.split("/")[0]
        self.underlay_dev = underlay_dev
        self.netns = netns
        self._private_key = ""
        self._listen_port = 0
        self._peers: dict[str, Peer] = {}
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

    def _expected(self) -> dict[str, tuple[Peer, object]]:
        out = {}
        for pub, p in self._peers.items():
            if not self._private_key or not p.endpoint or not p.allowed_ips:
                continue
            out[pub] = (p, peer_sas(self._private_key, self.local_underlay, self.local_transit,
                                    pub, p.endpoint, p.allowed_ips[0]))
        return out

    def read(self, ifname: str) -> tuple[Device, list[PeerStats]]:
        states = {(s.dst, s.spi): s for s in self.states()}
        pols = {(p.src, p.dst, p.dir): p for p in self.policies()}
        peers: dict[str, Peer] = {}
        stats: list[PeerStats] = []
        for pub, (p, sas) in self._expected().items():
            out, inb = states.get((sas.out.dst, sas.out.spi)), states.get((sas.inbound.dst, sas.inbound.spi))
            if not (_state_ok(out, sas.out) and _state_ok(inb, sas.inbound)):
                continue
            if self._replay_stuck(inb):
                continue
            if not all(_policy_ok(pols.get((w.src, w.dst, w.dir)), w) for w in sas.policies):
                continue
            peers[pub] = p
            stats.append(PeerStats(pub, p.endpoint, 0.0, inb.bytes, out.bytes))
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
                self._peers[op.peer.public_key] = op.peer
        self.sync()

    def sync(self) -> None:
        """Make the kernel's if_id-tagged states and policies exactly what we remember."""
        states = {(s.dst, s.spi): s for s in self.states()}
        pols = {(p.src, p.dst, p.dir): p for p in self.policies()}
        expected = [sas for _, sas in self._expected().values()]
        keep_states, keep_pols = set(), set()
        # Inbound SAs first, so a peer that already sends on its new SA is understood.
        for sa in [s.inbound for s in expected] + [s.out for s in expected]:
            keep_states.add((sa.dst, sa.spi))
            have = states.get((sa.dst, sa.spi))
            if _state_ok(have, sa) and (sa.dst, sa.spi) not in self._stuck:
                continue
            self._seen.pop((sa.dst, sa.spi), None)
            if have is not None:
                self._del_state(have)
            self._add_state(sa)
        for sas in expected:
            for pol in sas.policies:
                keep_pols.add((pol.src, pol.dst, pol.dir))
                if not _policy_ok(pols.get((pol.src, pol.dst, pol.dir)), pol):
                    self._set_policy(pol)
        for key, pol in pols.items():
            if key not in keep_pols:
                self._ip("xfrm", "policy", "delete", "index", str(pol.index), "dir", pol.dir,
                         "if_id", hex(IF_ID), check=False)
        for key, st in states.items():
            if key not in keep_states:
                self._del_state(st)
        self._stuck.clear()

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
        self._ip("xfrm", "policy", "update", "src", pol.src, "dst", pol.dst, "dir", pol.dir,
                 "if_id", hex(IF_ID), "tmpl", "src", pol.tmpl_src, "dst", pol.tmpl_dst,
                 "proto", "esp", "reqid", str(IF_ID), "mode", "tunnel")

    def delete(self, ifname: str) -> None:
        """The link and every state and policy with our if_id."""
        if self._link_kind(ifname) is not None:
            self._ip("link", "del", "dev", ifname)
        self._private_key, self._listen_port = "", 0
        self._peers = {}
        self.sync()
