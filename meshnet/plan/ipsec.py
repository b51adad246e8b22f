"""IPsec (ESP) transit for the WireGuard model: the SAs and policies a peer stands for.

The third applier of meshnet.plan.wireguard's model (see docs/ipsec.md). A `Peer`
(public key, "ip:port" endpoint, allowed transit /32) plus our own private key, underlay
address and transit address is all it takes: both ends compute the same pair of
tunnel-mode SAs from the X25519 shared secret of their WireGuard keys, so there is no
handshake protocol and nothing to exchange beyond the node rows they already share.

Per direction (src -> dst) and epoch a keyed BLAKE2b over (src underlay, dst underlay,
src public key, dst public key, epoch) gives 24 bytes: a 20-byte AES-GCM key (16 key +
4 salt, as `rfc4106(gcm(aes))` wants) and a 32-bit SPI, moved out of 0..255 (reserved by
RFC 4303).

Rotation (docs/ipsec.md, "Rotation"): the epoch is `floor(wall time / period)`, so both
ends move to new SAs at the same moment without talking. `plan` says which SAs should
exist at a given moment: the outbound SA of the current epoch, and inbound SAs for the
current and the next epoch plus, for a grace period after a boundary, the previous one.
A new key pair (`meshnet keys rotate` on either end) is a new `Keying`: its inbound SAs
come at once, the outbound switches `delay` seconds later, and the old key's inbound SAs
stay `grace` seconds more. Pure functions only; meshnet.host.ipsec turns them into
`ip xfrm` commands.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

IF_ID = 0x6D6E  # "mn": marks every SA and policy of ours, and the xfrm interface
AEAD = "rfc4106(gcm(aes))"
ICV_BITS = 128
KEY_BYTES = 20
REPLAY_WINDOW = 32
SPI_MIN = 256  # 1..255 are reserved by IANA, 0 means "no SA"
PERSON = b"meshnet-ipsec-v2"  # BLAKE2b personalisation, at most 16 bytes (v2: with epoch)
ROTATE_PERIOD = 3600.0  # seconds per epoch: every SA gets a new SPI and key hourly
GRACE = 60.0  # seconds an old inbound SA is kept after the outbound switch
SWITCH_DELAY = 10.0  # seconds between learning a new key pair and sending with it
# ESP in tunnel mode over IPv4 with AES-GCM: 20 outer IP + 8 ESP header + 8 IV + 16 ICV
# + 0..3 padding + 2 trailer = at most 57 bytes. The transit MTU keeps WireGuard's 80.
ESP_OVERHEAD = 57


@dataclass(frozen=True)
class SA:
    """One direction of a peer pair: an ESP state in tunnel mode."""

    src: str  # outer (underlay) addresses
    dst: str
    spi: int
    key: bytes  # 20 bytes: AES-128 key + 4-byte salt
    inner_src: str  # transit addresses, "a.b.c.d/32"
    inner_dst: str


@dataclass(frozen=True)
class Policy:
    """An xfrm policy: traffic inner_src -> inner_dst (dir) goes through tmpl_src -> tmpl_dst."""

    src: str  # selector, "a.b.c.d/32"
    dst: str
    dir: str  # out | in | fwd
    tmpl_src: str
    tmpl_dst: str
    spi: int = 0  # out: the SA traffic goes through (switching it switches the SA); in/fwd: 0, any


@dataclass(frozen=True)
class PeerSAs:
    out: SA
    inbound: SA
    policies: tuple[Policy, ...]  # out, in, fwd


@dataclass(frozen=True)
class Schedule:
    """When SAs change. Both ends of a pair must use the same `period`."""

    period: float = ROTATE_PERIOD
    grace: float = GRACE
    delay: float = SWITCH_DELAY


@dataclass(frozen=True)
class Keying:
    """A key pair used with one peer: our private key, its public key, and since when
    (local time; 0 for "from the start", which switches at once)."""

    private_key: str
    peer_public: str
    since: float = 0.0


@dataclass(frozen=True)
class PeerPlan:
    """What should exist for one peer at a moment: one outbound SA, the inbound SAs
    (current and next epoch, plus old ones during their grace) and the three policies,
    the out one naming the outbound SA's SPI."""

    out: SA
    inbound: tuple[SA, ...]
    policies: tuple[Policy, ...]


def _raw(key_b64: str) -> bytes:
    raw = base64.b64decode(key_b64, validate=True)
    if len(raw) != 32:
        raise ValueError("expected a 32-byte X25519 key in base64")
    return raw


def public_of(private_b64: str) -> str:
    return base64.b64encode(crypto_scalarmult_base(_raw(private_b64))).decode()


def shared_secret(private_b64: str, peer_public_b64: str) -> bytes:
    """X25519(ours, theirs): the same 32 bytes on both ends."""
    return crypto_scalarmult(_raw(private_b64), _raw(peer_public_b64))


def direction(shared: bytes, src: str, dst: str, src_pub: str, dst_pub: str,
              epoch: int = 0) -> tuple[int, bytes]:
    """(SPI, 20-byte key) of the SA that carries src -> dst during `epoch`."""
    info = "\n".join((str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
                      src_pub, dst_pub, str(epoch))).encode()
    out = hashlib.blake2b(info, digest_size=KEY_BYTES + 4, key=shared, person=PERSON).digest()
    spi = SPI_MIN + int.from_bytes(out[KEY_BYTES:], "big") % (2**32 - SPI_MIN)
    return spi, out[:KEY_BYTES]


def host_cidr(ip: str) -> str:
    addr = ipaddress.ip_address(ip.split("/")[0])
    return f"{addr}/{addr.max_prefixlen}"


def endpoint_ip(endpoint: str) -> str:
    """The address of an "ip:port" (IPv6 in brackets) endpoint."""
    if endpoint.startswith("["):
        host = endpoint[1:].partition("]")[0]
    elif endpoint.count(":") == 1:
        host = endpoint.rpartition(":")[0]
    else:  # a bare address
        host = endpoint
    return str(ipaddress.ip_address(host))


def peer_sas(private_b64: str, local_underlay: str, local_transit: str,
             peer_public_b64: str, peer_endpoint: str, peer_transit: str, epoch: int = 0) -> PeerSAs:
    """The out and in SA of `epoch` and the out/in/fwd policies for one peer, seen from
    our side (the out policy names the out SA's SPI)."""
    me_pub = public_of(private_b64)
    shared = shared_secret(private_b64, peer_public_b64)
    peer_ip = endpoint_ip(peer_endpoint)
    me_ip = str(ipaddress.ip_address(local_underlay))
    mine, theirs = host_cidr(local_transit), host_cidr(peer_transit)
    spi_out, key_out = direction(shared, me_ip, peer_ip, me_pub, peer_public_b64, epoch)
    spi_in, key_in = direction(shared, peer_ip, me_ip, peer_public_b64, me_pub, epoch)
    return PeerSAs(
        out=SA(me_ip, peer_ip, spi_out, key_out, mine, theirs),
        inbound=SA(peer_ip, me_ip, spi_in, key_in, theirs, mine),
        policies=(Policy(mine, theirs, "out", me_ip, peer_ip, spi_out),
                  Policy(theirs, mine, "in", peer_ip, me_ip),
                  Policy(theirs, mine, "fwd", peer_ip, me_ip)),
    )


def epoch_at(now: float, period: float) -> int:
    return int(now // period)


def rekey(keyings: tuple[Keying, ...], private_key: str, peer_public: str, now: float,
          sched: Schedule) -> tuple[Keying, ...]:
    """The keyings to remember after (re)applying a peer at `now`: unchanged keys keep
    theirs; a changed key pair becomes the newest, the one before it stays until its grace
    ends, anything older goes. The first keying of a peer switches at once (since 0)."""
    keyings = prune(keyings, now, sched)
    if keyings and (keyings[-1].private_key, keyings[-1].peer_public) == (private_key, peer_public):
        return keyings
    new = Keying(private_key, peer_public, now if keyings else 0.0)
    return (keyings[-1], new) if keyings else (new,)


def prune(keyings: tuple[Keying, ...], now: float, sched: Schedule) -> tuple[Keying, ...]:
    """Drop the previous keying once the current one has sent for `grace` seconds."""
    if len(keyings) >= 2 and now >= keyings[-1].since + sched.delay + sched.grace:
        return keyings[-1:]
    return keyings[-2:]


def plan(keyings: tuple[Keying, ...], local_underlay: str, local_transit: str, peer_endpoint: str,
         peer_transit: str, now: float, sched: Schedule) -> PeerPlan:
    """The SAs and policies one peer should have at `now` (see the module docstring).

    Epochs: out = e = floor(now / period); in = e, e + 1 (a peer whose clock or reconcile
    runs ahead is understood), and e - 1 during the first `grace` seconds of e (one that
    runs behind). Keyings: out uses the newest once `delay` has passed since it came,
    the previous one before; in holds both until `grace` after that switch."""
    keyings = prune(keyings, now, sched)
    if not keyings:
        raise ValueError("a peer needs at least one keying")
    cur = keyings[-1]
    prev = keyings[-2] if len(keyings) == 2 else None
    switch = cur.since + sched.delay
    sender = prev if prev is not None and now < switch else cur
    e = epoch_at(now, sched.period)
    epochs = [e, e + 1] + ([e - 1] if now - e * sched.period < sched.grace else [])

    def sas(k: Keying, epoch: int) -> PeerSAs:
        return peer_sas(k.private_key, local_underlay, local_transit, k.peer_public,
                        peer_endpoint, peer_transit, epoch)

    now_sas = sas(sender, e)
    inbound: dict[int, SA] = {}
    for k in (cur, prev) if prev is not None else (cur,):
        for ep in epochs:
            sa = sas(k, ep).inbound
            inbound.setdefault(sa.spi, sa)
    return PeerPlan(now_sas.out, tuple(inbound.values()), now_sas.policies)
