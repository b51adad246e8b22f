"""IPsec (ESP) transit for the WireGuard model: the SAs and policies a peer stands for.

The third applier of meshnet.plan.wireguard's model (see docs/ipsec.md). A `Peer`
(public key, "ip:port" endpoint, allowed transit /32) plus our own private key, underlay
address and transit address is all it takes: both ends compute the same pair of
tunnel-mode SAs from the X25519 shared secret of their WireGuard keys, so there is no
handshake protocol and nothing to exchange beyond the node rows they already share.

Per direction (src -> dst) a keyed BLAKE2b over (src underlay, dst underlay, src public
key, dst public key) gives 24 bytes: a 20-byte AES-GCM key (16 key + 4 salt, as
`rfc4106(gcm(aes))` wants) and a 32-bit SPI, moved out of 0..255 (reserved by RFC 4303).
Pure functions only; meshnet.host.ipsec turns them into `ip xfrm` commands.
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
PERSON = b"meshnet-ipsec-v1"  # BLAKE2b personalisation, at most 16 bytes
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


@dataclass(frozen=True)
class PeerSAs:
    out: SA
    inbound: SA
    policies: tuple[Policy, ...]  # out, in, fwd


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


def direction(shared: bytes, src: str, dst: str, src_pub: str, dst_pub: str) -> tuple[int, bytes]:
    """(SPI, 20-byte key) of the SA that carries src -> dst."""
    info = "\n".join((str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
                      src_pub, dst_pub)).encode()
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
             peer_public_b64: str, peer_endpoint: str, peer_transit: str) -> PeerSAs:
    """The out and in SA and the out/in/fwd policies for one peer, seen from our side."""
    me_pub = public_of(private_b64)
    shared = shared_secret(private_b64, peer_public_b64)
    peer_ip = endpoint_ip(peer_endpoint)
    me_ip = str(ipaddress.ip_address(local_underlay))
    mine, theirs = host_cidr(local_transit), host_cidr(peer_transit)
    spi_out, key_out = direction(shared, me_ip, peer_ip, me_pub, peer_public_b64)
    spi_in, key_in = direction(shared, peer_ip, me_ip, peer_public_b64, me_pub)
    return PeerSAs(
        out=SA(me_ip, peer_ip, spi_out, key_out, mine, theirs),
        inbound=SA(peer_ip, me_ip, spi_in, key_in, theirs, mine),
        policies=(Policy(mine, theirs, "out", me_ip, peer_ip),
                  Policy(theirs, mine, "in", peer_ip, me_ip),
                  Policy(theirs, mine, "fwd", peer_ip, me_ip)),
    )
