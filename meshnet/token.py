"""Join tokens: `mnet1-<cluster id>-<secret>-<check>`, like Docker's SWMTKN-1-...

The check digits catch a mistyped token before any network traffic, so a typo gets
"malformed token" rather than a confusing refusal from a member.
"""

from __future__ import annotations

import base64
import hmac
import os
from dataclasses import dataclass

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from meshnet.errors import TokenError

PREFIX = "mnet1"
CLUSTER_ID_BYTES = 16
SECRET_BYTES = 32


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str, size: int) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    raw = base64.b32decode(padded)
    if len(raw) != size:
        raise ValueError("wrong length")
    return raw


def _hash(data: bytes, person: bytes, size: int = 32, key: bytes = b"") -> bytes:
    return blake2b(data, digest_size=size, key=key, person=person, encoder=RawEncoder)


def cluster_tag(cluster_id: bytes) -> str:
    """What may be shown in public (mDNS TXT, handshake header): a hash, never the id or secret."""
    return _hash(cluster_id, b"mnet-cluster-tag", 8).hex()


def secret_hash(secret: bytes) -> str:
    return _hash(secret, b"mnet-secret-hash").hex()


@dataclass(frozen=True)
class JoinToken:
    cluster_id: bytes
    secret: bytes

    @classmethod
    def generate(cls, cluster_id: bytes | None = None) -> JoinToken:
        return cls(cluster_id or os.urandom(CLUSTER_ID_BYTES), os.urandom(SECRET_BYTES))

    @property
    def cluster_hex(self) -> str:
        return self.cluster_id.hex()

    @property
    def tag(self) -> str:
        return cluster_tag(self.cluster_id)

    def _check(self) -> str:
        return _hash(self.cluster_id + self.secret, b"mnet-token-check", 3).hex()

    def encode(self) -> str:
        return f"{PREFIX}-{_b32(self.cluster_id)}-{_b32(self.secret)}-{self._check()}"

    def mac_key(self) -> bytes:
        return _hash(self.secret, b"mnet-join-mac")

    def box_key(self) -> bytes:
        return _hash(self.secret, b"mnet-join-box")

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        parts = text.strip().split("-")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise TokenError(f"malformed join token: expected {PREFIX}-<cluster>-<secret>-<check>")
        try:
            token = cls(_unb32(parts[1], CLUSTER_ID_BYTES), _unb32(parts[2], SECRET_BYTES))
        except (ValueError, base64.binascii.Error):
            raise TokenError("malformed join token: bad characters or length") from None
        # bytes: compare_digest refuses non-ASCII str, and argv may carry lone surrogates
        given = parts[3].lower().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(token._check().encode(), given):
            raise TokenError("malformed join token: check digits do not match (typo?)")
        return token
